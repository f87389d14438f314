"""Reward-hacking monitor: cheap statistics of samples drawn on fixed conditions and seeds.

A policy that games its reward often changes its images in ways any person would notice at a
glance: colours wash out or saturate, images become flat or noisy, a group's samples become
copies of each other. :class:`RewardHackingMonitorHook` measures that every ``interval``
iterations on the SAME conditions and noise every time (so a change is the policy's, not the
draw's), logs it under ``monitor/`` and warns once per statistic when it moves past a threshold
from its first measurement.

Statistics of ``[N, 3, H, W]`` images in [0, 1] (:func:`image_statistics`), ``N = groups x G``:

* ``saturation``: mean over pixels of the HSV saturation ``S = (max_c - min_c) / max_c``,
  with ``S = 0`` where the value ``max_c < 0.1`` (near black, where ``S`` is decoder noise);
  0 for any grey image.
* ``colour_entropy``: each channel quantised to ``bins`` levels (``bins**3`` colours), ``p`` the
  colour histogram of one image, ``H = -sum p log2 p`` bits, averaged over images; 0 for a
  single-coloured image, at most ``3 log2 bins``.
* ``edge_density``: luma ``Y = 0.299 R + 0.587 G + 0.114 B``, forward differences
  ``gx, gy`` on the ``(H-1) x (W-1)`` grid, the fraction of pixels with
  ``sqrt(gx^2 + gy^2) > edge_threshold``; 0 for a flat image.
* ``duplicate_rate``: over every pair ``(i < j)`` of samples of the same condition (group), the
  fraction with ``mean |x_i - x_j| < duplicate_tolerance``; 1 when a group's samples are equal.

Rules (:func:`crossed`): ``dict(direction='up'|'down'|'either', delta=d, relative=r)`` fires when
the change ``v - v0`` from the first measurement ``v0`` (divided by ``|v0|`` if ``relative``) is
above ``d`` (up), below ``-d`` (down) or beyond ``d`` in size (either).
"""
from __future__ import annotations

import math
import numbers
import random
from typing import Mapping, Optional

import numpy as np
import torch
from mmengine.hooks import Hook

from . import dist as vdist
from .registry import HOOKS

__all__ = ['image_statistics', 'saturation', 'colour_entropy', 'edge_density', 'duplicate_rate',
           'crossed', 'warning_line', 'DEFAULT_RULES', 'HEAD_RULE', 'RewardHackingMonitorHook',
           'WARNING_TAG']

#: every warning line starts with this (tools/report.py collects them from the log)
WARNING_TAG = 'reward-hacking monitor:'

#: default thresholds per statistic (relative to / above the first measurement)
DEFAULT_RULES = {
    'saturation': dict(direction='either', delta=0.5, relative=True),
    'colour_entropy': dict(direction='down', delta=0.5, relative=True),
    'edge_density': dict(direction='either', delta=0.5, relative=True),
    'duplicate_rate': dict(direction='up', delta=0.3, relative=False),
}
#: default threshold of a held-out head's mean score (higher is better, as for rewards)
HEAD_RULE = dict(direction='down', delta=0.5, relative=True)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _check_rule(name: str, rule) -> None:
    if rule is None:
        return
    if not isinstance(rule, dict) or set(rule) - {'direction', 'delta', 'relative'}:
        raise ValueError(f'RewardHackingMonitorHook rules[{name!r}]={rule!r} must be None or a '
                         f"dict(direction='up'|'down'|'either', delta=<number>, "
                         f'relative=True|False)')
    if rule.get('direction', 'either') not in ('up', 'down', 'either'):
        raise ValueError(f"RewardHackingMonitorHook rules[{name!r}].direction="
                         f"{rule.get('direction')!r} is not one of 'up', 'down', 'either'")
    delta = rule.get('delta', 0.5)
    if not _is_real(delta):
        raise ValueError(f'RewardHackingMonitorHook rules[{name!r}].delta={delta!r} must be a '
                         f'finite number (the change that triggers the warning)')
    if not isinstance(rule.get('relative', True), bool):
        raise ValueError(f"RewardHackingMonitorHook rules[{name!r}].relative="
                         f"{rule.get('relative')!r} must be True or False")


def _check_settings(*, interval, num_conditions, seed, heads, rules, colour_bins,
                    edge_threshold, duplicate_tolerance) -> None:
    """One-line ``ValueError`` naming the first bad setting of the monitor and its fix."""
    for name, value, lo in (('interval', interval, 1), ('num_conditions', num_conditions, 1),
                            ('colour_bins', colour_bins, 2)):
        if not _is_int(value) or value < lo:
            raise ValueError(f'RewardHackingMonitorHook {name}={value!r} must be an int >= {lo}')
    if not _is_int(seed):
        raise ValueError(f'RewardHackingMonitorHook seed={seed!r} must be an int')
    for name, value in (('edge_threshold', edge_threshold),
                        ('duplicate_tolerance', duplicate_tolerance)):
        if not _is_real(value) or value < 0:
            raise ValueError(f'RewardHackingMonitorHook {name}={value!r} must be a finite number '
                             f'>= 0')
    if heads is not None and (not isinstance(heads, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and 'type' in v for k, v in heads.items())):
        raise ValueError(f'RewardHackingMonitorHook heads={heads!r} must be None or a dict of '
                         f'name -> reward head config (dict(type=...))')
    if rules is not None:
        if not isinstance(rules, dict):
            raise ValueError(f'RewardHackingMonitorHook rules={rules!r} must be None or a dict of '
                             f'statistic -> rule dict')
        for name, rule in rules.items():
            _check_rule(name, rule)


def saturation(images: torch.Tensor, min_value: float = 0.1) -> float:
    """Mean HSV saturation ``(max - min) / max`` over all pixels (0 where max < min_value)."""
    x = images.float()
    hi, lo = x.max(dim=1).values, x.min(dim=1).values
    s = torch.where(hi >= min_value, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi))
    return float(s.mean())


def colour_entropy(images: torch.Tensor, bins: int = 4) -> float:
    """Mean over images of the entropy (bits) of the ``bins**3``-colour histogram."""
    q = (images.float().clamp(0, 1) * bins).long().clamp_max(bins - 1)      # [N, 3, H, W]
    code = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]                       # [N, H, W]
    counts = torch.stack([torch.bincount(c.flatten(), minlength=bins ** 3) for c in code])
    p = counts.double() / counts.sum(dim=1, keepdim=True)
    h = -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(dim=1)
    return float(h.mean()) + 0.0   # + 0.0: no -0.0


def edge_density(images: torch.Tensor, threshold: float = 0.1) -> float:
    """Fraction of pixels whose luma gradient magnitude exceeds ``threshold``."""
    x = images.float()
    y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]                 # [N, H, W]
    gx = y[:, :-1, 1:] - y[:, :-1, :-1]
    gy = y[:, 1:, :-1] - y[:, :-1, :-1]
    return float(((gx ** 2 + gy ** 2).sqrt() > threshold).float().mean())


def duplicate_rate(images: torch.Tensor, group_size: int, tolerance: float = 0.02) -> float:
    """Fraction of same-group sample pairs with mean absolute difference below ``tolerance``."""
    g = int(group_size)
    if g < 2:
        return 0.0
    x = images.float().flatten(1)
    x = x[:len(x) // g * g].view(-1, g, x.shape[1])                          # [B, G, D]
    dist = torch.cdist(x.double(), x.double(), p=1) / x.shape[-1]          # [B, G, G]
    i, j = torch.triu_indices(g, g, offset=1)
    return float((dist[:, i, j] < tolerance).float().mean())


def image_statistics(images: torch.Tensor, group_size: int, *, colour_bins: int = 4,
                     edge_threshold: float = 0.1, duplicate_tolerance: float = 0.02
                     ) -> dict[str, float]:
    """The four statistics of the module docstring, by name."""
    return {'saturation': saturation(images),
            'colour_entropy': colour_entropy(images, colour_bins),
            'edge_density': edge_density(images, edge_threshold),
            'duplicate_rate': duplicate_rate(images, group_size, duplicate_tolerance)}


def crossed(value: float, first: float, rule: Mapping) -> bool:
    """Whether ``value`` moved past ``rule`` from the first measurement ``first``."""
    if not (math.isfinite(value) and math.isfinite(first)):
        return False
    change = value - first
    if rule.get('relative', False):
        if abs(first) < 1e-12:
            return False   # no scale to be relative to
        change /= abs(first)
    d = float(rule['delta'])
    direction = rule.get('direction', 'either')
    if direction == 'up':
        return change > d
    if direction == 'down':
        return change < -d
    return abs(change) > d


def describe_rule(rule: Mapping) -> str:
    word = {'up': 'rise', 'down': 'fall'}.get(rule.get('direction', 'either'), 'change')
    size = (f'{100 * float(rule["delta"]):g}% of the first value' if rule.get('relative')
            else f'{float(rule["delta"]):g} absolute')
    return f'{word} > {size}'


def warning_line(name: str, value: float, first: float, first_iter: int, iteration: int,
                 rule: Mapping) -> str:
    """The one log line of a crossed threshold."""
    return (f'{WARNING_TAG} monitor/{name} = {value:.4g} at iteration {iteration}, first '
            f'measured {first:.4g} at iteration {first_iter}; threshold {describe_rule(rule)} '
            f'crossed: possible reward hacking or collapse, look at the samples in grids/')


@HOOKS.register_module()
class RewardHackingMonitorHook(Hook):
    """Samples fixed conditions with fixed seeds every ``interval`` iterations, logs the image
    statistics of the module docstring (and held-out heads) under ``monitor/`` and warns once
    per statistic that crosses its rule.

    Args:
        interval: measure every ``interval`` iterations, and before the first (the baseline).
        num_conditions: the training dataset's first ``num_conditions`` items, each sampled
            ``group_size`` times with the evaluation sampler.
        seed: seed of the monitor's :class:`~vargo.core.rng.BatchRNG` (the same every call;
            torch's, numpy's and Python's global RNG states are restored afterwards, so the
            training streams are untouched).
        heads: optional held-out reward heads, ``dict(name=dict(type=...))`` (REWARD_HEADS);
            logged as ``monitor/<name>`` (mean score) and ``monitor/<name>/<metric>``.
        rules: per-statistic thresholds overriding :data:`DEFAULT_RULES` (a head's default is
            :data:`HEAD_RULE`; key ``<name>`` or ``<name>/<metric>``); None disables one.
        colour_bins, edge_threshold, duplicate_tolerance: the statistics' settings.
    """

    priority = 'LOW'

    def __init__(self, *, interval: int = 20, num_conditions: int = 8, seed: int = 4321,
                 heads: Optional[dict] = None, rules: Optional[dict] = None,
                 colour_bins: int = 4, edge_threshold: float = 0.1,
                 duplicate_tolerance: float = 0.02):
        _check_settings(interval=interval, num_conditions=num_conditions, seed=seed,
                        heads=heads, rules=rules, colour_bins=colour_bins,
                        edge_threshold=edge_threshold, duplicate_tolerance=duplicate_tolerance)
        self.interval = int(interval)
        self.num_conditions = int(num_conditions)
        self.seed = int(seed)
        self.head_cfgs = dict(heads or {})
        self.rules = {**DEFAULT_RULES, **{k: HEAD_RULE for k in self.head_cfgs}, **(rules or {})}
        self.rules['seconds'] = None   # the monitor's own cost, logged, never a warning
        self.settings = dict(colour_bins=int(colour_bins), edge_threshold=float(edge_threshold),
                             duplicate_tolerance=float(duplicate_tolerance))
        from .registry import REWARD_HEADS, checked_build
        py_state, np_state = random.getstate(), np.random.get_state()
        try:        # building a head may initialise weights: never from the training RNG
            with torch.random.fork_rng(devices=[]):
                self._heads = {}
                if self.head_cfgs:
                    REWARD_HEADS.import_from_location()
                for name, cfg in self.head_cfgs.items():                 # bad heads fail here
                    kind = cfg.get('type')
                    if not isinstance(kind, str) or kind not in REWARD_HEADS.module_dict:
                        raise ValueError(
                            f'RewardHackingMonitorHook heads[{name!r}].type={kind!r} is not a '
                            f'registered reward head; one of: '
                            f'{", ".join(sorted(REWARD_HEADS.module_dict))}')
                    self._heads[name] = checked_build(cfg, REWARD_HEADS)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        self._cond = None
        self._first: dict[str, tuple[float, int]] = {}
        self._warned: set[str] = set()

    # -- what is measured ------------------------------------------------------------------
    def _setup(self, runner) -> None:
        from torch.utils.data import default_collate

        from .loop import conditions_from_batch
        dataset = runner.train_loop.dataloader.dataset
        items = [dataset[i] for i in range(min(self.num_conditions, len(dataset)))]
        self._cond = conditions_from_batch(default_collate(items))

    def measure(self, runner) -> dict[str, float]:
        """Draw the fixed samples and compute every statistic; global RNG states untouched."""
        from .hooks import _algo
        from .rng import BatchRNG
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                if self._cond is None:
                    self._setup(runner)
                algo = _algo(runner)
                g = algo.group_size
                rng = BatchRNG(self.seed, 0, len(self._cond) * g, rank=0, world_size=1,
                               device=algo.device)
                rollout = algo.generate(self._cond, rng)
                images = rollout.images.detach().float().cpu().clamp(0, 1)
                stats = image_statistics(images, g, **self.settings)
                ctx = algo.reward_context(runner.iter)
                for name, head in self._heads.items():
                    with torch.no_grad():
                        out = head(rollout, ctx)
                    scores = out.scores.float()
                    stats[name] = float(scores[~scores.isnan()].mean()) if scores.numel() else \
                        float('nan')
                    stats.update({f'{name}/{k}': float(v) for k, v in out.metrics.items()})
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return stats

    # -- logging and warnings --------------------------------------------------------------
    def record(self, runner, stats: Mapping[str, float], step: int) -> list[str]:
        """Log ``stats`` under ``monitor/`` at ``step``; the warning lines newly raised."""
        hub = runner.message_hub
        lines = []
        for name, value in stats.items():
            hub.update_scalar(f'monitor/{name}', value)
            if name not in self._first:
                self._first[name] = (value, step)
                continue
            rule = self.rules.get(name)
            first, first_step = self._first[name]
            if rule and name not in self._warned and crossed(value, first, rule):
                self._warned.add(name)
                lines.append(warning_line(name, value, first, first_step, step, rule))
        if vdist.rank() == 0:
            runner.visualizer.add_scalars({f'monitor/{k}': v for k, v in stats.items()},
                                          step=step)
            for line in lines:
                runner.logger.warning(line)
        return lines

    def _resume_baseline(self, runner) -> None:
        # the message hub (saved in checkpoints) holds every earlier measurement
        for key, buf in runner.message_hub.log_scalars.items():
            if key.startswith('monitor/') and len(buf.data[0]):
                self._first.setdefault(key[len('monitor/'):], (float(buf.data[0][0]), 0))

    def _run(self, runner, step: int) -> None:
        import time
        t0 = time.perf_counter()
        stats = self.measure(runner)
        stats['seconds'] = time.perf_counter() - t0
        self.record(runner, stats, step)

    def before_train(self, runner) -> None:
        if self.interval <= 0:
            return
        if runner.iter == 0:
            self._run(runner, 0)
        else:
            self._resume_baseline(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.interval > 0 and self.every_n_train_iters(runner, self.interval):
            self._run(runner, runner.iter + 1)
