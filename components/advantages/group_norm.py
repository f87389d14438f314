"""Group-normalised advantages: GRPO's baseline estimator and its Dr.GRPO / batch-std variants.

docs/methods/grpo.md documents the method. For a group of ``G`` samples that share one condition
(contiguous rows of the batch), the advantage of sample ``i`` is

    A_i = (R_i - mean_G R) / (std_G R + eps)        std unbiased, eps = 1e-4

(GRPO, arXiv 2402.03300 section 4.1.2, eq. 3's outcome supervision). Two variants change only the
denominator:

* ``std_scope='batch'``: ``A_i = (R_i - mean_G R) / (std_B R + eps)``, the unbiased std of all
  rewards of the (gathered, all-ranks) batch; the group mean is still the baseline. This keeps
  the relative scale of groups ("Tricks or Traps", arXiv 2508.08221; TRL's
  ``scale_rewards='batch'``).
* ``std_scope='none'``: ``A_i = R_i - mean_G R`` (Dr.GRPO, arXiv 2503.20783 section 3.1: the std
  division up-weights near-uniform groups, a question-level difficulty bias).

Conventions (the same for every scope):

* NaN reward = unscorable sample: left out of the group's (and the batch's) mean and std, and its
  advantage is exactly 0. A group with fewer than 2 scorable samples has no baseline: all its
  advantages are 0.
* Zero-spread group (all scorable rewards equal, tested exactly with max == min rather than
  ``std < tol``): every advantage is exactly 0 (not ``0 / eps`` noise, and no NaN), and the group
  is counted in ``frac_reward_zero_std``.
* Each reward head is its own advantage stream with its own loss weight (LOO-FID trains on
  ``A_comp`` with weight 1 and ``A_fid`` with weight 2): heads are normalised separately, never
  summed here (a head that combines rewards before normalising is a composite reward head).
* Per-step rewards: when a head reports ``per_step`` ``[B, A]`` (VAR-RL's VMR: the prefix
  actions carry the completion value ``V_m``, the suffix actions the terminal ``R``), each action
  column ``t`` is normalised within the group exactly as above, ``A_{i,t} = (r_{i,t} -
  mean_G r_{:,t}) / (std r_{:,t} + eps)``, and ``scores`` is used only to mark unscorable samples
  (a NaN score makes the whole row 0); a NaN ``r_{i,t}`` makes only that entry unscorable.
  Without ``per_step`` the scalar advantage is broadcast over the sample's ``A`` actions.

Statistics are computed in float64 (rewards such as FID differences are small differences of
large numbers); the streams are returned in float32. Fully vectorised over a ``[B // G, G, C]``
view, no Python loop over groups.

Metrics (``<head>/...`` per head, plus one summary):

* ``<head>/frac_reward_zero_std``: fraction of groups (of (group, action) cells with per-step
  rewards) with no spread, including groups with fewer than 2 scorable samples;
* ``<head>/frac_reward_nan``: fraction of unscorable rewards;
* ``<head>/reward_std``: mean within-group std over the groups with spread;
* ``<head>/adv_abs_mean``: mean ``|A|`` over scorable entries;
* ``frac_reward_zero_std``: fraction of groups that give no learning signal in any stream
  (TRL's metric of the same name when there is one head).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from vargo.core.context import IterationContext
from vargo.core.interfaces import AdvantageEstimator
from vargo.core.registry import ADVANTAGE_ESTIMATORS
from vargo.core.types import Advantages, RewardOutput

__all__ = ['GroupNormAdvantage', 'STD_SCOPES', 'group_normalize']

STD_SCOPES = ('group', 'batch', 'none')


def _nan_std(x: Tensor, valid: Tensor, mean: Tensor, dim) -> tuple[Tensor, Tensor]:
    """Unbiased std over ``valid`` entries along ``dim`` (two-pass), and the valid count."""
    n = valid.sum(dim=dim, keepdim=True)
    dev = torch.where(valid, x - mean, torch.zeros_like(x))
    var = (dev * dev).sum(dim=dim, keepdim=True) / (n - 1).clamp_min(1)
    return var.sqrt(), n


def group_normalize(values: Tensor, group_size: int, std_scope: str, eps: float
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Normalise ``values`` ``[B, C]`` within contiguous groups of ``group_size`` rows, per column.

    Args:
        values: ``[B, C]`` float rewards, NaN = unscorable (``C = 1`` for scalar rewards, ``C = A``
            for per-step rewards).
        group_size: G; ``B % G == 0`` (checked by the caller).
        std_scope: ``'group'``, ``'batch'`` or ``'none'`` (see the module docstring).
        eps: added to the std before dividing.

    Returns:
        (advantages ``[B, C]`` with exact zeros on unscorable entries and zero-spread cells,
        zero-spread mask ``[B // G, C]`` bool, within-group std ``[B // G, C]``).
    """
    b, c = values.shape
    x = values.view(b // group_size, group_size, c)                     # [N, G, C]
    valid = ~torch.isnan(x)
    x0 = torch.where(valid, x, torch.zeros_like(x))
    n = valid.sum(dim=1, keepdim=True)                                  # [N, 1, C]
    mean = x0.sum(dim=1, keepdim=True) / n.clamp_min(1)                 # [N, 1, C]
    std_g, _ = _nan_std(x0, valid, mean, dim=1)                         # [N, 1, C]

    hi = torch.where(valid, x, torch.full_like(x, -math.inf)).amax(dim=1, keepdim=True)
    lo = torch.where(valid, x, torch.full_like(x, math.inf)).amin(dim=1, keepdim=True)
    zero_spread = (n < 2) | (hi == lo)                                  # [N, 1, C]

    centered = x0 - mean                                                # [N, G, C]
    if std_scope == 'group':
        adv = centered / (std_g + eps)
    elif std_scope == 'batch':
        flat, flat_valid = x0.view(b, c), valid.view(b, c)
        n_b = flat_valid.sum(dim=0, keepdim=True)
        mean_b = flat.sum(dim=0, keepdim=True) / n_b.clamp_min(1)       # [1, C]
        std_b, _ = _nan_std(flat, flat_valid, mean_b, dim=0)            # [1, C]
        adv = centered / (std_b.unsqueeze(0) + eps)
    elif std_scope == 'none':
        adv = centered
    else:
        raise ValueError(f'std_scope={std_scope!r} is not one of {list(STD_SCOPES)}')

    keep = valid & ~zero_spread                                         # [N, G, C]
    adv = torch.where(keep, adv, torch.zeros_like(adv))
    return adv.view(b, c), zero_spread.squeeze(1), std_g.squeeze(1)


@ADVANTAGE_ESTIMATORS.register_module()
class GroupNormAdvantage(AdvantageEstimator):
    """GRPO's group-normalised advantage, one stream per reward head (see the module docstring).

    ``A_i = (R_i - mean_G R) / (std R + eps)`` (GRPO, arXiv 2402.03300); ``std_scope='none'``
    drops the division (Dr.GRPO, arXiv 2503.20783 section 3.1); ``std_scope='batch'`` divides by
    the batch std instead of the group std.

    Args:
        std_scope: ``'group'`` (GRPO), ``'batch'`` or ``'none'`` (Dr.GRPO). Defines the method, so
            it has no default.
        eps: added to the std, 1e-4 by default (GRPO's; TRL and flow_grpo use 1e-4).
        stream_weights: loss weight of each head's stream, e.g. ``dict(comp=1.0, fid=2.0)``;
            heads not listed get 1.0, ``None`` gives every head 1.0. Naming a head that is not
            among the rewards is an error (it is usually a typo or a removed head).

    Examples:
        >>> import torch
        >>> from vargo.core.types import RewardOutput
        >>> est = GroupNormAdvantage(std_scope='none')
        >>> adv = est({'score': RewardOutput(torch.tensor([1., 3., 5., 5.]))},
        ...           group_size=2, num_actions=3)
        >>> adv.streams['score']
        tensor([[-1., -1., -1.],
                [ 1.,  1.,  1.],
                [ 0.,  0.,  0.],
                [ 0.,  0.,  0.]])
        >>> adv.metrics['frac_reward_zero_std']
        0.5
    """

    def __init__(self, *, std_scope: str, eps: float = 1e-4,
                 stream_weights: Optional[dict[str, float]] = None) -> None:
        if std_scope not in STD_SCOPES:
            raise ValueError(f'std_scope={std_scope!r} is not one of {list(STD_SCOPES)}: '
                             f"'group' divides by the group's std (GRPO), 'batch' by the batch's "
                             f"std, 'none' does not divide (Dr.GRPO)")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) \
                or not math.isfinite(eps) or eps < 0:
            raise ValueError(f'eps={eps!r} must be a finite float >= 0 (GRPO uses 1e-4)')
        if stream_weights is not None:
            if not isinstance(stream_weights, dict):
                raise TypeError(f'stream_weights must be a dict mapping reward-head names to '
                                f'loss weights, got {type(stream_weights).__name__}')
            for name, w in stream_weights.items():
                if isinstance(w, bool) or not isinstance(w, (int, float)) \
                        or not math.isfinite(w) or w < 0:
                    raise ValueError(f'stream_weights[{name!r}]={w!r} must be a finite float '
                                     f'>= 0 (negate the reward in its head to minimise it)')
        self.std_scope = std_scope
        self.eps = float(eps)
        self.stream_weights = None if stream_weights is None else \
            {k: float(v) for k, v in stream_weights.items()}

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(std_scope={self.std_scope!r}, eps={self.eps}, '
                f'stream_weights={self.stream_weights})')

    def _check(self, rewards: dict[str, RewardOutput], group_size: int, num_actions: int) -> int:
        if not rewards:
            raise ValueError('GroupNormAdvantage got no rewards: configure a reward head')
        if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) \
                or group_size < 2:
            raise ValueError(f'group_size={group_size!r}: GRPO needs G >= 2 samples per condition '
                             f'(the baseline of a sample is the mean reward of its group; a group '
                             f'of one has no baseline and every advantage would be 0)')
        if isinstance(num_actions, bool) or not isinstance(num_actions, numbers.Integral) \
                or num_actions < 1:
            raise ValueError(f'num_actions={num_actions!r} must be a positive int (A)')
        if self.stream_weights is not None:
            unknown = sorted(set(self.stream_weights) - set(rewards))
            if unknown:
                raise ValueError(f'stream_weights names reward head(s) {unknown} that are not '
                                 f'among the rewards; available heads: {sorted(rewards)}. Fix '
                                 f'the name or remove the entry.')
        batch = None
        for name, out in rewards.items():
            s = out.scores
            if s.dim() != 1:
                raise ValueError(f'reward head {name!r} returned scores of shape '
                                 f'{tuple(s.shape)}; expected [B]')
            if batch is None:
                batch = int(s.shape[0])
            elif int(s.shape[0]) != batch:
                raise ValueError(f'reward heads disagree on the batch size: {name!r} scored '
                                 f'{s.shape[0]} samples, an earlier head {batch}')
            if torch.isinf(s).any():
                raise ValueError(f'reward head {name!r} returned infinite scores; mark unscorable '
                                 f'samples with NaN instead')
            if out.per_step is not None:
                if tuple(out.per_step.shape) != (batch, num_actions):
                    raise ValueError(f'reward head {name!r} returned per_step of shape '
                                     f'{tuple(out.per_step.shape)}; expected [B, A] = '
                                     f'{(batch, num_actions)}')
                if torch.isinf(out.per_step).any():
                    raise ValueError(f'reward head {name!r} returned infinite per_step rewards; '
                                     f'mark unscorable entries with NaN instead')
        if batch % group_size:
            raise ValueError(f'batch of B={batch} rewards is not a whole number of groups of '
                             f'G={group_size}: groups are G contiguous samples of one condition, '
                             f'so B must be (number of conditions) x G')
        return batch

    def __call__(self, rewards: dict[str, RewardOutput], *, group_size: int,
                 num_actions: int, ctx: Optional[IterationContext] = None) -> Advantages:
        """Advantage streams ``{head: [B, A]}`` from the gathered rewards of all ranks.

        Args:
            rewards: ``{head name: RewardOutput}``, scores ``[B]`` (NaN = unscorable), optional
                ``per_step`` ``[B, A]``; groups are ``group_size`` contiguous rows.
            group_size: G >= 2.
            ctx: the iteration's context (unused: the estimate depends on the rewards only).
            num_actions: A, the width of each stream.

        Returns:
            :class:`Advantages` with one float32 ``[B, A]`` stream per head, its loss weight, and
            the metrics of the module docstring.
        """
        batch = self._check(rewards, group_size, num_actions)
        group_size, num_actions = int(group_size), int(num_actions)
        num_groups = batch // group_size
        streams: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        metrics: dict[str, float] = {}
        no_signal = None                                              # [N] bool
        for name, out in rewards.items():
            scores = out.scores.detach().to(torch.float64)             # [B]
            if out.per_step is None:
                values = scores.unsqueeze(1)                           # [B, 1]
            else:
                values = out.per_step.detach().to(device=scores.device, dtype=torch.float64)
                values = values.masked_fill(torch.isnan(scores).unsqueeze(1), math.nan)  # [B, A]
            adv, zero_spread, std_g = group_normalize(values, group_size, self.std_scope,
                                                      self.eps)           # [B, C], [N, C], [N, C]
            group_dead = zero_spread.all(dim=1)                        # [N]
            no_signal = group_dead if no_signal is None else no_signal & group_dead
            valid = ~torch.isnan(values)                               # [B, C]
            spread = ~zero_spread
            metrics[f'{name}/frac_reward_zero_std'] = zero_spread.double().mean().item()
            metrics[f'{name}/frac_reward_nan'] = 1.0 - valid.double().mean().item()
            metrics[f'{name}/reward_std'] = std_g[spread].mean().item() if spread.any() else 0.0
            metrics[f'{name}/adv_abs_mean'] = adv[valid].abs().mean().item() if valid.any() else 0.0

            streams[name] = adv.to(torch.float32).expand(batch, num_actions).contiguous()  # [B, A]
            weights[name] = 1.0 if self.stream_weights is None else \
                self.stream_weights.get(name, 1.0)
        metrics['frac_reward_zero_std'] = no_signal.double().mean().item() if num_groups else 0.0
        return Advantages(streams=streams, weights=weights, metrics=metrics)
