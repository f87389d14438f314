"""A composite reward head: named sub-heads combined into one score (one advantage stream).

Two modes, for sub-heads ``k`` with weights ``w_k`` and raw scores ``R^k_i``:

* ``'sum_then_normalize'``: ``R_i = sum_k w_k R^k_i``, the weighted sum of raw scores; the
  advantage estimator then normalises the sum within the group. This is LOO-FID's composite
  (arXiv 2603.23086; official code ``rewards_comp = w_clip * r_clip + w_hps * r_hps``, then
  group normalisation into ``A_comp``). The scales of the heads matter: a head with a larger
  spread dominates the sum.
* ``'normalize_then_sum'``: ``R_i = sum_k w_k z^k_i`` with ``z^k_i = (R^k_i - mean_G R^k) /
  (std_G R^k + eps)`` each head's score normalised within the sample's group (the samples
  sharing ``rollout.group_ids``, contiguous), so every head contributes in units of its own
  within-group spread whatever its scale (the per-reward normalisation of e.g. Flow-GRPO's
  multi-reward runs). The estimator normalises the sum again.

Group statistics follow :mod:`vargo.components.advantages.group_norm`: unbiased std,
``eps = 1e-4``, statistics in float64, a group with no spread (all scorable scores equal, or
fewer than 2 of them) gives ``z = 0`` exactly.

NaN = unscorable: a sample that any sub-head cannot score (NaN) is unscorable for the composite
(its score is NaN, so the estimator gives it advantage 0 and leaves it out of the group
statistics), and in ``'normalize_then_sum'`` it is left out of every head's group statistics, so
all heads are normalised over the same samples. ``R * 0`` for a zero weight keeps NaN.

Sub-heads are built through ``REWARD_HEADS`` with :func:`~vargo.core.registry.checked_build`
(a misspelled type or keyword fails at build time). Stateful sub-heads (e.g. LOO-FID's moments)
are checkpointed through the composite (:meth:`CompositeReward.state_dict`); the composite is
distribution-level (or needs the reference) when a sub-head is. Sub-heads must return scalar
scores: per-step rewards cannot be mixed with other heads' scalars here (configure such a head
as its own stream).

Metrics, per sub-head ``k`` (logged as ``reward/<composite>/<k>/...``): ``<k>/mean`` and
``<k>/std`` of the scorable raw scores, ``<k>/frac_nan``, ``<k>/strict`` when the sub-head
reports it, and every metric of the sub-head as ``<k>/<metric>``; plus ``frac_unscorable``.

Example: LOO-FID's two advantage streams (docs/methods/loo_fid.md), ``A_comp`` from CLIP + HPS
(weight 1) and ``A_fid`` (weight 2). Each top-level reward head is one stream of
``GroupNormAdvantage``, so CLIP and HPS become one stream through a composite head::

    rewards = dict(
        comp=dict(type='CompositeReward', mode='sum_then_normalize',
                  heads=dict(clip=dict(type='ClipScoreReward', arch='ViT-L-14',
                                       weights_tag='openai', class_names='imagenet',
                                       checkpoint='checkpoints/clip/open_clip_model.safetensors'),
                             hps=dict(type='HPSv2Reward', class_names='imagenet',
                                      checkpoint='checkpoints/hps/HPS_v2.1_compressed.pt')),
                  weights=dict(clip=1.0, hps=1.0)),
        fid=dict(type='LooFidReward', ...))
    advantage = dict(type='GroupNormAdvantage', std_scope='group',
                     stream_weights=dict(comp=1.0, fid=2.0))
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from vargo.core.interfaces import RewardHead, Stateful
from vargo.core.registry import REWARD_HEADS, ConfigError, checked_build
from vargo.core.types import RewardContext, RewardOutput, Rollout

__all__ = ['CompositeReward', 'COMPOSITE_MODES', 'normalize_within_groups']

COMPOSITE_MODES = ('sum_then_normalize', 'normalize_then_sum')


def normalize_within_groups(scores: Tensor, group_ids: Tensor, eps: float = 1e-4) -> Tensor:
    """``z_i = (R_i - mean_G R) / (std_G R + eps)`` within the groups of ``group_ids``.

    Args:
        scores: ``[B]`` float, NaN = unscorable (left out of the statistics, ``z`` NaN).
        group_ids: ``[B]`` ids; a group is a run of equal consecutive ids.
        eps: added to the unbiased std.

    Returns:
        ``[B]`` float64: NaN where ``scores`` is NaN, exactly 0 in groups without spread (all
        scorable scores equal, or fewer than 2).

    Examples:
        >>> normalize_within_groups(torch.tensor([1., 3., 2., 2.]), torch.tensor([0, 0, 1, 1]),
        ...                         eps=0.0)
        tensor([-0.7071,  0.7071,  0.0000,  0.0000], dtype=torch.float64)
    """
    x = scores.detach().to(torch.float64)
    _, inverse, counts = torch.unique_consecutive(group_ids.to(x.device), return_inverse=True,
                                                  return_counts=True)
    n_groups = counts.numel()
    valid = ~torch.isnan(x)
    x0 = torch.where(valid, x, torch.zeros_like(x))
    n = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, valid.to(x.dtype))
    mean = torch.zeros_like(n).index_add_(0, inverse, x0) / n.clamp_min(1)          # [N]
    dev = torch.where(valid, x - mean[inverse], torch.zeros_like(x))               # [B]
    var = torch.zeros_like(n).index_add_(0, inverse, dev * dev) / (n - 1).clamp_min(1)
    hi = torch.full_like(n, -math.inf).scatter_reduce(
        0, inverse, torch.where(valid, x, torch.full_like(x, -math.inf)), 'amax')
    lo = torch.full_like(n, math.inf).scatter_reduce(
        0, inverse, torch.where(valid, x, torch.full_like(x, math.inf)), 'amin')
    flat = (n < 2) | (hi == lo)                                                     # [N]
    z = dev / (var.sqrt()[inverse] + eps)
    z = torch.where(flat[inverse], torch.zeros_like(z), z)
    return torch.where(valid, z, torch.full_like(z, math.nan))


@REWARD_HEADS.register_module()
class CompositeReward(RewardHead, Stateful):
    """Weighted combination of named reward heads into one score (see the module docstring).

    Args:
        heads: named ``REWARD_HEADS`` configs, e.g. ``dict(clip=dict(type='ClipScoreReward',
            ...), hps=dict(type='HPSv2Reward', ...))`` (already built heads are accepted too).
        mode: ``'sum_then_normalize'`` (weighted sum of raw scores; LOO-FID) or
            ``'normalize_then_sum'`` (each head normalised within its group first). Defines the
            method, so it has no default.
        weights: weight of each head (finite floats), default 1.0 for heads not named; naming a
            head that is not in ``heads`` is an error.
        eps: added to the within-group std in ``'normalize_then_sum'`` (1e-4, as GRPO).

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float32, metrics)``; NaN where any sub-head gave NaN.

    Examples:
        >>> import torch
        >>> from vargo.core.types import Conditions, Rollout
        >>> head = CompositeReward(mode='sum_then_normalize', weights=dict(dark=2.0), heads=dict(
        ...     dark=dict(type='JpegCompressibilityReward'),
        ...     busy=dict(type='JpegIncompressibilityReward')))
        >>> roll = Rollout(cond=Conditions(class_ids=torch.zeros(2, dtype=torch.long)),
        ...     group_ids=torch.zeros(2, dtype=torch.long), actions=torch.zeros(2, 1).long(),
        ...     logp_old=torch.zeros(2, 1), action_mask=torch.ones(2, 1, dtype=torch.bool),
        ...     action_step=torch.arange(1), action_pos=torch.zeros(1, 2).long(),
        ...     images=torch.rand(2, 3, 16, 16))
        >>> out = head(roll, None)          # 2 * (-size_kB) + 1 * (+size_kB) = -size_kB
        >>> from vargo.components.rewards.jpeg import jpeg_size_kb
        >>> bool(torch.allclose(out.scores, -jpeg_size_kb(roll.images, 95)))
        True
    """

    def __init__(self, *, heads: dict, mode: str, weights: Optional[dict] = None,
                 eps: float = 1e-4) -> None:
        if mode not in COMPOSITE_MODES:
            raise ValueError(f'CompositeReward mode={mode!r} is not one of '
                             f'{list(COMPOSITE_MODES)}: sum_then_normalize sums raw scores '
                             f'(LOO-FID), normalize_then_sum normalises each head per group first')
        if not isinstance(heads, dict) or not heads:
            raise ConfigError(f'CompositeReward heads must be a non-empty dict of named reward '
                              f'head configs (heads=dict(clip=dict(type=...), ...)), got '
                              f'{heads!r}')
        weights = {} if weights is None else weights
        if not isinstance(weights, dict):
            raise TypeError(f'CompositeReward weights must be a dict mapping head names to '
                            f'floats, got {type(weights).__name__}')
        unknown = sorted(set(weights) - set(heads))
        if unknown:
            raise ConfigError(f'CompositeReward weights name head(s) {unknown} that are not in '
                              f'heads {sorted(heads)}; fix the name or remove the entry')
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f'CompositeReward weights[{name!r}]={w!r} must be a finite float')
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) \
                or not math.isfinite(eps) or eps < 0:
            raise ValueError(f'CompositeReward eps={eps!r} must be a finite float >= 0')
        self.mode = mode
        self.eps = float(eps)
        self.heads: dict[str, RewardHead] = {}
        for name, cfg in heads.items():
            if cfg is None:
                continue  # a child config may remove a head with name=None
            if '/' in str(name):
                raise ConfigError(f'CompositeReward head name {name!r} must not contain "/" '
                                  f'(it separates metric namespaces)')
            self.heads[name] = cfg if isinstance(cfg, RewardHead) else \
                checked_build(cfg, REWARD_HEADS)
        if not self.heads:
            raise ConfigError('CompositeReward has no heads left (all entries are None)')
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.heads}
        self.distribution_level = any(h.distribution_level for h in self.heads.values())
        self.needs_reference = any(getattr(h, 'needs_reference', False)
                                   for h in self.heads.values())

    def __repr__(self) -> str:
        parts = ', '.join(f'{k}: {self.weights[k]} x {h!r}' for k, h in self.heads.items())
        return f'CompositeReward(mode={self.mode!r}, {{{parts}}})'

    # -- stateful sub-heads are checkpointed through the composite --------------------------
    def state_dict(self) -> dict:
        return {name: h.state_dict() for name, h in self.heads.items() if isinstance(h, Stateful)}

    def load_state_dict(self, state: dict) -> None:
        for name, s in state.items():
            head = self.heads.get(name)
            if not isinstance(head, Stateful):
                raise KeyError(f'checkpoint holds state of composite sub-head {name!r}, which is '
                               f'not a stateful head of this composite (heads: {sorted(self.heads)})')
            head.load_state_dict(s)

    def combine(self, scores: dict[str, Tensor], group_ids: Tensor) -> Tensor:
        """``[B]`` composite of the sub-heads' ``[B]`` scores (pure; see the module docstring)."""
        stacked = torch.stack([scores[k].detach().to(torch.float64) for k in self.heads])  # [K, B]
        unscorable = torch.isnan(stacked).any(0)                                          # [B]
        stacked = stacked.masked_fill(unscorable.unsqueeze(0), math.nan)
        if self.mode == 'normalize_then_sum':
            stacked = torch.stack([normalize_within_groups(s, group_ids, self.eps)
                                   for s in stacked])
        w = torch.tensor([self.weights[k] for k in self.heads], dtype=torch.float64,
                         device=stacked.device)
        return (w.unsqueeze(1) * stacked).sum(0)                       # NaN stays NaN

    def __call__(self, rollout: Rollout, ctx: Optional[RewardContext] = None) -> RewardOutput:
        outs: dict[str, RewardOutput] = {}
        metrics: dict[str, float] = {}
        regions = None
        for name, head in self.heads.items():
            out = head(rollout, ctx)
            s = out.scores
            if s.dim() != 1 or s.shape[0] != rollout.batch_size:
                raise ValueError(f'composite sub-head {name!r} returned scores of shape '
                                 f'{tuple(s.shape)}; expected [B] = [{rollout.batch_size}]')
            if torch.isinf(s).any():
                raise ValueError(f'composite sub-head {name!r} returned infinite scores; mark '
                                 f'unscorable samples with NaN instead')
            if out.per_step is not None:
                raise ValueError(f'composite sub-head {name!r} returned per-step rewards, which '
                                 f'a composite cannot mix with scalar scores; configure it as '
                                 f'its own top-level reward head (its own advantage stream)')
            if out.regions is not None:
                if regions is not None:
                    raise ValueError('more than one composite sub-head reports regions; keep '
                                     'one of them as its own top-level reward head')
                regions = out.regions
            outs[name] = out
            for k, v in out.metrics.items():
                metrics[f'{name}/{k}'] = float(v)
            ok = ~torch.isnan(s)
            sf = s[ok].double()
            metrics[f'{name}/mean'] = float(sf.mean()) if sf.numel() else math.nan
            metrics[f'{name}/std'] = float(sf.std()) if sf.numel() > 1 else 0.0
            metrics[f'{name}/frac_nan'] = 1.0 - float(ok.double().mean())
            if out.strict is not None:
                metrics[f'{name}/strict'] = float(out.strict.double().mean())
        device = next(iter(outs.values())).scores.device
        combined = self.combine({k: o.scores.to(device) for k, o in outs.items()},
                                rollout.group_ids.to(device))
        metrics['frac_unscorable'] = float(torch.isnan(combined).double().mean())
        return RewardOutput(scores=combined.to(torch.float32), metrics=metrics, regions=regions)
