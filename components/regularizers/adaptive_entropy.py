"""LOO-FID's adaptive entropy bonus: a scheduled coefficient steered to a target entropy.

docs/methods/loo_fid.md (arXiv 2603.23086; official code bugrabaran/ar-policy-tuning, ``grpo.py``,
``grpo_train_step``). A stateless controller: the coefficient is a function of the training
progress ``p`` and of the current minibatch's normalised entropy only.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from vargo.core.context import IterationContext
from vargo.core.interfaces import Regularizer
from vargo.core.objective import AGGREGATIONS, aggregate
from vargo.core.registry import REGULARIZERS
from vargo.core.types import PolicyEval, Rollout, TokenWeights

__all__ = ['AdaptiveEntropyRegularizer', 'adaptive_entropy_coef']


def adaptive_entropy_coef(h_norm: float, progress: float, *, base_coef: float, min_coef: float,
                          max_coef: float, target: float, deadband: float, gain: float,
                          warmup_frac: float, decay_start_frac: float) -> float:
    """The controller's coefficient ``c`` (see :class:`AdaptiveEntropyRegularizer`).

    Example:
        >>> kw = dict(base_coef=2.2e-3, min_coef=7e-5, max_coef=4e-3, target=0.78,
        ...           deadband=0.015, gain=3.0, warmup_frac=0.05, decay_start_frac=0.85)
        >>> adaptive_entropy_coef(0.78, 0.5, **kw)   # on target, plateau: the base coefficient
        0.0022
        >>> round(adaptive_entropy_coef(0.68, 0.5, **kw), 7)   # too little entropy: 2.2e-3 e^0.3
        0.0029697
    """
    p = min(max(float(progress), 0.0), 1.0)
    if p < warmup_frac:
        sched = base_coef * p / warmup_frac
    elif p < decay_start_frac:
        sched = base_coef
    else:
        t = (p - decay_start_frac) / max(1.0 - decay_start_frac, 1e-8)
        sched = base_coef * 0.5 * (1.0 + math.cos(math.pi * t))
    err = target - h_norm
    if abs(err) > deadband:
        sched *= math.exp(gain * err)
    return min(max(sched, min_coef), max_coef)


def _check_float(name: str, value, lo: float = 0.0, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f'AdaptiveEntropyRegularizer {name}={value!r} must be a finite float in '
                         f'[{lo}, {hi}]')
    return float(value)


@REGULARIZERS.register_module()
class AdaptiveEntropyRegularizer(Regularizer):
    """Entropy bonus ``loss = -c * Hbar`` with LOO-FID's scheduled, entropy-steered ``c``.

    With ``H_{i,t}`` the entropy of the policy's full next-token distribution (all ``V`` codes):

    * ``Hbar = mean_i mean_t H_{i,t}`` over the minibatch's active tokens (each sample's token
      mean, then the mean over samples, as the official code), and ``H_norm = clamp(Hbar / ln V,
      0, 1)``, computed detached: ``c`` is a constant for the gradient;
    * schedule of the training progress ``p`` in [0, 1]: ``sched = base * p / warm`` for
      ``p < warm``, ``base`` for ``p < decay_start``, then
      ``base * (1 + cos(pi * (p - decay_start) / (1 - decay_start))) / 2`` (cosine to 0);
    * steering: ``err = target - H_norm``; if ``|err| > deadband``: ``sched *= exp(gain * err)``
      (more bonus below the target entropy, less above);
    * ``c = clamp(sched, min_coef, max_coef)``; ``loss = -c * aggregate(H, mask, weights.pg,
      aggregation)``. With ``aggregation='sample_mean_of_token_means'`` (the official reduction)
      and no token selector, that is exactly ``-c * Hbar``.

    Stateless: nothing is carried between calls (every rank and micro-batch computes ``c`` from
    its own ``Hbar``, as the official code does per slice). Defaults are the paper's
    (``train.sh``/``grpo.py``).

    Args:
        vocab_size: ``V``, the size of the full token vocabulary (LlamaGen VQ-16: 16384).
        aggregation: how the bonus reduces ``[B, A]`` entropies, a name in
            :data:`~vargo.core.objective.AGGREGATIONS` (official: ``'sample_mean_of_token_means'``).
        base_coef: ``base`` (2.2e-3).
        min_coef, max_coef: clamp of ``c`` (7e-5, 4e-3).
        target: target normalised entropy (0.78).
        deadband: no steering while ``|err| <= deadband`` (0.015).
        gain: steering gain ``k`` in ``exp(k * err)`` (3.0).
        warmup_frac: ``warm``, end of the linear warm-up (0.05).
        decay_start_frac: start of the cosine decay (0.85).

    Returns (of ``__call__``): ``{'loss', 'coef': c, 'h_norm': H_norm, 'mean': Hbar}``.

    Example:
        >>> reg = AdaptiveEntropyRegularizer(vocab_size=16,
        ...                                  aggregation='sample_mean_of_token_means')
        >>> reg.coef(h_norm=0.78, progress=0.5)
        0.0022
    """

    needs_reference = False

    def __init__(self, *, vocab_size: int, aggregation: str, base_coef: float = 2.2e-3,
                 min_coef: float = 7e-5, max_coef: float = 4e-3, target: float = 0.78,
                 deadband: float = 0.015, gain: float = 3.0, warmup_frac: float = 0.05,
                 decay_start_frac: float = 0.85) -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f'AdaptiveEntropyRegularizer vocab_size={vocab_size!r} must be an '
                             f'int >= 2 (the full codebook size V, e.g. 16384 for LlamaGen '
                             f'VQ-16): H_norm = Hbar / ln V')
        if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
            raise ValueError(f'AdaptiveEntropyRegularizer aggregation={aggregation!r} is not one '
                             f'of {sorted(AGGREGATIONS)} (the paper: '
                             f"'sample_mean_of_token_means')")
        self.vocab_size = vocab_size
        self.aggregation = aggregation
        self.base_coef = _check_float('base_coef', base_coef)
        self.min_coef = _check_float('min_coef', min_coef)
        self.max_coef = _check_float('max_coef', max_coef)
        if self.min_coef > self.max_coef:
            raise ValueError(f'AdaptiveEntropyRegularizer min_coef={min_coef} > max_coef='
                             f'{max_coef}: the clamp needs min_coef <= max_coef')
        self.target = _check_float('target', target, 0.0, 1.0)
        self.deadband = _check_float('deadband', deadband)
        self.gain = _check_float('gain', gain)
        self.warmup_frac = _check_float('warmup_frac', warmup_frac, 0.0, 1.0)
        self.decay_start_frac = _check_float('decay_start_frac', decay_start_frac, 0.0, 1.0)
        if self.warmup_frac > self.decay_start_frac:
            raise ValueError(f'AdaptiveEntropyRegularizer warmup_frac={warmup_frac} > '
                             f'decay_start_frac={decay_start_frac}: the schedule needs '
                             f'0 <= warmup_frac <= decay_start_frac <= 1')

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(vocab_size={self.vocab_size}, '
                f'aggregation={self.aggregation!r}, base_coef={self.base_coef}, '
                f'target={self.target})')

    def coef(self, h_norm: float, progress: float) -> float:
        """The coefficient ``c`` for a normalised entropy and a training progress."""
        return adaptive_entropy_coef(
            h_norm, progress, base_coef=self.base_coef, min_coef=self.min_coef,
            max_coef=self.max_coef, target=self.target, deadband=self.deadband, gain=self.gain,
            warmup_frac=self.warmup_frac, decay_start_frac=self.decay_start_frac)

    def __call__(self, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval], rollout: Rollout,
                 weights: TokenWeights, *, progress: float,
                 ctx: Optional[IterationContext] = None) -> dict[str, Tensor]:
        """Adaptive entropy term of one (micro-)batch; needs ``policy_eval.entropy [B, A]``."""
        if policy_eval.entropy is None:
            raise ValueError('AdaptiveEntropyRegularizer needs per-action entropies but '
                             'policy_eval.entropy is None: evaluate the policy with '
                             'with_entropy=True (continuous-token families such as MAR have no '
                             'categorical entropy; remove this regularizer for them)')
        ent = policy_eval.entropy                                            # [B, A]
        mask = rollout.action_mask
        with torch.no_grad():
            m = mask.to(ent.dtype)
            per_sample = (ent.detach() * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B]
            h_bar = per_sample.mean() if per_sample.numel() else ent.new_zeros(())
            h_norm = float((h_bar / math.log(self.vocab_size)).clamp(0.0, 1.0))
        c = self.coef(h_norm, progress)
        loss = -c * aggregate(ent, mask, weights.pg, self.aggregation, ctx)
        return {'loss': loss, 'coef': torch.tensor(c, dtype=torch.float64),
                'h_norm': torch.tensor(h_norm, dtype=torch.float64),
                'mean': h_bar}
