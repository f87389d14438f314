"""The GRPO-family objective as small pure functions (docs/methods/grpo.md).

Everything acts on the action axis: ``[B, A]`` tensors of per-action log-probs, advantages,
weights and masks. Nothing here knows a model or a paper's component; papers differ only in
which of these functions and options their config selects.

* :func:`importance_ratio` - token-level ``rho = exp(l - l_old)`` (PPO/GRPO) or sequence-level
  ``rho = exp(mean_t(l - l_old))`` (GSPO, arXiv 2507.18071; LOO-FID's released code).
* :func:`clipped_surrogate` - ``-min(rho*A, clip(rho, 1-eps_lo, 1+eps_hi)*A)`` (PPO, arXiv
  1707.06347 eq. 7) or ``-rho*A`` when clipping is disabled.
* :func:`kl_estimate` - Schulman's k1/k2/k3 estimators of KL(pi_theta || pi_ref).
* :data:`AGGREGATIONS` - how ``[B, A]`` per-action terms become one scalar.
* :class:`ObjectiveConfig` + :func:`policy_loss` - the above composed for several advantage
  streams with their own weights (LOO-FID: ``A_comp + 2*A_fid`` as two surrogate terms).
"""
from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

__all__ = ['importance_ratio', 'clipped_surrogate', 'kl_estimate', 'AGGREGATIONS', 'aggregate',
           'ObjectiveConfig', 'policy_loss', 'masked_mean']


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over ``mask`` (0 if the mask is empty, never NaN)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


# ----------------------------------------------------------------------------------------
# importance ratios
# ----------------------------------------------------------------------------------------
def importance_ratio(logp: Tensor, logp_old: Tensor, mask: Tensor, level: str) -> Tensor:
    """Per-action importance ratios ``[B, A]``.

    Args:
        logp: ``[B, A]`` current log-probs (with grad).
        logp_old: ``[B, A]`` log-probs at sampling time.
        mask: ``[B, A]`` bool, actions that count.
        level: ``'token'``: ``rho_{i,t} = exp(l_{i,t} - l_old_{i,t})``;
            ``'sequence'``: ``rho_i = exp(mean_t (l_{i,t} - l_old_{i,t}))`` over the sample's
            masked actions, broadcast to all its actions (GSPO, arXiv 2507.18071 eq. 7).
    """
    log_ratio = (logp - logp_old).masked_fill(~mask, 0.0)
    if level == 'token':
        return torch.exp(log_ratio)
    if level == 'sequence':
        n = mask.sum(dim=1, keepdim=True).clamp_min(1)
        seq = log_ratio.sum(dim=1, keepdim=True) / n
        return torch.exp(seq).expand_as(logp)
    raise ValueError(f"ratio_level={level!r} is not one of 'token', 'sequence'")


# ----------------------------------------------------------------------------------------
# surrogate
# ----------------------------------------------------------------------------------------
def clipped_surrogate(ratio: Tensor, adv: Tensor,
                      clip_eps: Optional[tuple[float, float]]) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's pessimistic clipped surrogate, as a per-action loss ``[B, A]``.

    ``L = -min(rho*A, clip(rho, 1 - eps_lo, 1 + eps_hi)*A)`` (arXiv 1707.06347 eq. 7; asymmetric
    bounds as DAPO, arXiv 2503.14476 eq. 10). ``clip_eps=None`` gives the unclipped ``-rho*A``
    (STAGE and MAR-GRPO run on-policy with ``mu=1``, where ``rho == 1`` in value).

    Note the official LOO-FID code takes ``torch.min`` of the *negated* terms, which is the
    optimistic bound; this is the correct pessimistic one.

    Returns:
        (loss ``[B, A]``, dict with ``clipped_low``/``clipped_high`` bool ``[B, A]`` marking the
        actions whose gradient the clip removed).
    """
    unclipped = ratio * adv
    if clip_eps is None:
        zeros = torch.zeros_like(ratio, dtype=torch.bool)
        return -unclipped, {'clipped_low': zeros, 'clipped_high': zeros}
    lo, hi = clip_eps
    clipped = torch.clamp(ratio, 1.0 - lo, 1.0 + hi) * adv
    loss = -torch.minimum(unclipped, clipped)
    with torch.no_grad():
        clipped_low = (ratio < 1.0 - lo) & (adv < 0)
        clipped_high = (ratio > 1.0 + hi) & (adv > 0)
    return loss, {'clipped_low': clipped_low, 'clipped_high': clipped_high}


# ----------------------------------------------------------------------------------------
# KL estimators
# ----------------------------------------------------------------------------------------
def kl_estimate(logp: Tensor, logp_ref: Tensor, estimator: str) -> Tensor:
    """Per-action estimate of KL(pi_theta || pi_ref) from samples of pi_theta.

    With ``d = l_ref - l`` (http://joschu.net/blog/kl-approx.html):
    ``k1 = -d`` (unbiased, can be negative), ``k2 = d^2 / 2`` (biased, low variance),
    ``k3 = exp(d) - d - 1`` (unbiased, always >= 0, 0 iff equal; GRPO arXiv 2402.03300 eq. 4).
    """
    d = logp_ref - logp
    if estimator == 'k1':
        return -d
    if estimator == 'k2':
        return 0.5 * d * d
    if estimator == 'k3':
        return torch.expm1(d) - d
    raise ValueError(f"kl estimator {estimator!r} is not one of 'k1', 'k2', 'k3'")


# ----------------------------------------------------------------------------------------
# aggregation: [B, A] per-action terms -> scalar
# ----------------------------------------------------------------------------------------
def sample_mean_of_token_means(x: Tensor, mask: Tensor, weight: Tensor, ctx: dict) -> Tensor:
    """Mean over samples of each sample's token mean (GRPO, arXiv 2402.03300 eq. 3).

    ``(1/B) sum_i (1/|o_i|) sum_t w_{i,t} x_{i,t}``. ``ctx['num_samples']`` replaces ``B`` when
    the minibatch is a micro-batch of a larger optimizer batch.
    """
    m = mask.to(x.dtype)
    per_sample = (x * weight * m).sum(1) / m.sum(1).clamp_min(1.0)
    return per_sample.sum() / ctx.get('num_samples', x.shape[0])


def token_mean(x: Tensor, mask: Tensor, weight: Tensor, ctx: dict) -> Tensor:
    """Mean over all active tokens of the batch (BNPO/AR-GRPO; DAPO arXiv 2503.14476 eq. 12).

    ``sum_{i,t} w x / N_tokens``; ``ctx['num_tokens']`` gives the active-token count of the whole
    optimizer batch (all ranks for DAPO's global normalisation), default the local count.
    """
    m = mask.to(x.dtype)
    denom = ctx.get('num_tokens', m.sum().clamp_min(1.0))
    return (x * weight * m).sum() / denom


def global_token_mean(x: Tensor, mask: Tensor, weight: Tensor, ctx: dict) -> Tensor:
    """DAPO's token mean over the active tokens of *all ranks* (arXiv 2503.14476 eq. 12).

    ``world_size * sum_{i,t in rank} w x / N_global`` with ``N_global = ctx['global_num_tokens']``
    (the minibatch's active actions summed over ranks; the loop all-reduces it,
    :meth:`vargo.core.context.IterationContext.for_minibatch`) and ``world_size =
    ctx['world_size']``: DDP averages the ranks' gradients, so the factor makes the averaged
    gradient that of ``sum_{all ranks} w x / N_global``, the single-process loss over the
    concatenated batch, whatever each rank's own count. Without ``global_num_tokens`` it falls
    back to ``ctx['num_tokens']``, then to the local count (:func:`token_mean`).
    """
    denom = ctx.get('global_num_tokens')
    if denom is None:
        return token_mean(x, mask, weight, ctx)
    m = mask.to(x.dtype)
    total = (x * weight * m).sum()
    world = int(ctx.get('world_size', 1))
    if world != 1:
        total = total * world
    return total / max(float(denom), 1.0)


def token_sum_over_constant(x: Tensor, mask: Tensor, weight: Tensor, ctx: dict) -> Tensor:
    """Token sum divided by a constant (Dr.GRPO, arXiv 2503.20783 section 3.1).

    ``sum_{i,t} w x / (B_total * A_max)`` with ``ctx['constant']`` (default ``B * A``): no length
    normalisation bias.
    """
    m = mask.to(x.dtype)
    const = ctx.get('constant', float(x.shape[0] * x.shape[1]))
    return (x * weight * m).sum() / const


def weighted_token_mean(x: Tensor, mask: Tensor, weight: Tensor, ctx: dict) -> Tensor:
    """Weighted token mean ``sum(w x) / (sum(w) + 1e-6)`` over the batch (STAGE, arXiv
    2509.25027 eq. 6: the advantage weights also normalise the policy term)."""
    m = mask.to(x.dtype)
    wm = weight * m
    denom = ctx.get('weight_sum', wm.sum())
    return (x * wm).sum() / (denom + 1e-6)


def group_weighted_token_mean(x: Tensor, mask: Tensor, weight: Tensor, ctx: dict) -> Tensor:
    """Mean over groups of each group's weighted token mean:
    ``(1/N_groups) sum_g sum_{i in g, t} w x / (sum_{i in g, t} w + 1e-6)`` (STAGE's official
    runs put one group on each GPU, so the weighted mean is taken per group, then averaged over
    GPUs). Rows are contiguous whole groups of ``ctx['group_size']`` samples (the runner's
    minibatches always are); ``ctx['num_groups']`` replaces the local group count when the
    minibatch is a micro-batch of a larger optimizer batch.
    """
    g = ctx.get('group_size')
    if not g:
        raise ValueError("aggregation 'group_weighted_token_mean' needs ctx['group_size'] (the "
                         "runner passes it; pass it when calling policy_loss directly)")
    b = x.shape[0]
    if b % g:
        raise ValueError(f'group_weighted_token_mean: {b} rows are not whole groups of {g}')
    wm = (weight * mask.to(x.dtype)).reshape(b // g, -1)
    num = (x.reshape(b // g, -1) * wm).sum(1)
    per_group = num / (wm.sum(1) + 1e-6)
    return per_group.sum() / ctx.get('num_groups', b // g)


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, Tensor, dict], Tensor]] = {
    'sample_mean_of_token_means': sample_mean_of_token_means,
    'token_mean': token_mean,
    'token_sum_over_constant': token_sum_over_constant,
    'global_token_mean': global_token_mean,
    'weighted_token_mean': weighted_token_mean,
    'group_weighted_token_mean': group_weighted_token_mean,
}


def aggregate(x: Tensor, mask: Tensor, weight: Optional[Tensor], mode: str,
              ctx=None) -> Tensor:
    """Reduce per-action terms ``[B, A]`` to a scalar with one of :data:`AGGREGATIONS`.

    ``ctx``: a dict of totals, or a :class:`vargo.core.context.IterationContext` (its
    :meth:`~vargo.core.context.IterationContext.aggregation_totals`), or None.
    """
    try:
        fn = AGGREGATIONS[mode]
    except KeyError:
        raise ValueError(f'aggregation={mode!r} is not one of {sorted(AGGREGATIONS)}') from None
    if weight is None:
        weight = torch.ones_like(x)
    if ctx is not None and not isinstance(ctx, dict):
        ctx = ctx.aggregation_totals()
    return fn(x, mask, weight, ctx or {})


# ----------------------------------------------------------------------------------------
# composed policy loss
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectiveConfig:
    """The settings that define a method's surrogate; all explicit (no silent defaults).

    Args:
        clip_eps: ``(eps_lo, eps_hi)``, a single eps for both, or None (no clip).
        ratio_level: ``'token'`` or ``'sequence'``.
        aggregation: one of :data:`AGGREGATIONS`, for the policy term.
    """

    clip_eps: Union[None, float, tuple[float, float]]
    ratio_level: str
    aggregation: str

    def __post_init__(self):
        eps = self.clip_eps
        if eps is not None:
            def real(e):
                return isinstance(e, numbers.Real) and not isinstance(e, bool)
            if real(eps):
                eps = (eps, eps)
            if not isinstance(eps, (tuple, list)) or len(eps) != 2 or not all(
                    real(e) and math.isfinite(e) and e > 0 for e in eps):
                raise ValueError(f'clip_eps={self.clip_eps!r} must be a positive float (PPO/GRPO '
                                 f'0.2), a pair (eps_lo, eps_hi) of positive floats, or None to '
                                 f'disable clipping')
            object.__setattr__(self, 'clip_eps', tuple(float(e) for e in eps))
        if not isinstance(self.ratio_level, str) or self.ratio_level not in ('token', 'sequence'):
            raise ValueError(f"ratio_level={self.ratio_level!r} is not one of 'token', 'sequence'")
        if not isinstance(self.aggregation, str) or self.aggregation not in AGGREGATIONS:
            hint = (difflib.get_close_matches(self.aggregation, list(AGGREGATIONS), n=1)
                    if isinstance(self.aggregation, str) else [])
            raise ValueError(f'aggregation={self.aggregation!r} is not one of '
                             f'{sorted(AGGREGATIONS)}'
                             + (f'; did you mean {hint[0]!r}?' if hint else ''))


def policy_loss(cfg: ObjectiveConfig, logp: Tensor, logp_old: Tensor,
                streams: dict[str, Tensor], stream_weights: dict[str, float], mask: Tensor,
                weight: Optional[Tensor] = None, ctx=None
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """The policy-gradient loss: ``sum_s c_s * aggregate(surrogate(rho, A_s) * w)``.

    Args:
        cfg: the surrogate's settings.
        logp, logp_old: ``[B, A]``.
        streams: advantage streams, each ``[B, A]``.
        stream_weights: loss weight ``c_s`` of each stream.
        mask: ``[B, A]`` bool.
        weight: ``[B, A]`` per-action weights from token selectors, or None.
        ctx: aggregation context: a dict of totals over the optimizer batch, or the loop's
            :class:`vargo.core.context.IterationContext` (see :func:`aggregate`).

    Returns:
        (scalar loss, detached metrics: ``clip_frac``, ``clip_frac_low``, ``clip_frac_high``,
        ``ratio_mean``, ``ratio_max``, ``ratio_min``).
    """
    if ctx is not None and not isinstance(ctx, dict):
        ctx = ctx.aggregation_totals()
    ratio = importance_ratio(logp, logp_old, mask, cfg.ratio_level)
    total = logp.new_zeros(())
    clipped_any = torch.zeros_like(mask)
    clipped_low = torch.zeros_like(mask)
    clipped_high = torch.zeros_like(mask)
    for name, adv in streams.items():
        per_action, info = clipped_surrogate(ratio, adv, cfg.clip_eps)
        total = total + stream_weights[name] * aggregate(per_action, mask, weight,
                                                         cfg.aggregation, ctx)
        clipped_low |= info['clipped_low']
        clipped_high |= info['clipped_high']
    clipped_any = clipped_low | clipped_high
    with torch.no_grad():
        r = ratio.detach()[mask] if mask.any() else ratio.detach().new_ones(1)
        metrics = {
            'clip_frac': masked_mean(clipped_any.float(), mask),
            'clip_frac_low': masked_mean(clipped_low.float(), mask),
            'clip_frac_high': masked_mean(clipped_high.float(), mask),
            'ratio_mean': r.mean(), 'ratio_max': r.max(), 'ratio_min': r.min(),
        }
    return total, metrics
