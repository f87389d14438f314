"""``VMRReward``: VMR's value as middle return (VAR RL Done Right, arXiv 2601.02256;
docs/methods/var_rl.md, section 1) as a wrapper around a per-sample reward head.

The phase and the split ``m`` come from ``ctx.sampler``, which must be the
:class:`~vargo.components.samplers.vmr.VMRSampler` (it alternates the phases by iteration):

* suffix phase: the inner head's output, unchanged (the terminal reward ``R``; the rollout is
  ``G`` completions of one shared prefix).
* prefix phase: every sample's prefix (its first ``m`` decode steps) is scored by the soft value
  of ``K`` on-policy completions,

      V = eta * log( (1/K) sum_{k=1..K} exp(R_k / eta) )                 (:func:`soft_value`)

  and ``scores = V`` (the rollout's ``action_mask`` covers the prefix actions only). With
  ``include_rollout=True`` (default, *our choice*) the rollout's own finished sample is one of
  the ``K`` completions (it is an on-policy completion of its prefix), so ``K - 1`` more are
  sampled: with the paper's ``K = 2`` one extra completion per sample, half the cost of
  ``include_rollout=False``, which samples ``K`` fresh completions and leaves the rollout's own
  ``R`` out of ``V``. The completions are
  ``ctx.sampler.rollout(ctx.policy, rollout.cond, group_size=K', prefix=rollout,
  stop_at_step=m, rng=ctx.stream('vmr/completions', local_batch=B K'))``: a named rank-invariant
  stream, so 2 ranks draw the rows of 1 rank and a resumed iteration redraws them exactly.

NaN (an unscorable sample or completion) propagates: a prefix with any NaN ``R_k`` gets
``V = NaN`` (advantage 0, out of the group statistics). ``regions``/``strict``/``weights`` of the
rollout's own image are passed on in both phases; an inner head returning ``per_step`` rewards
is refused in the prefix phase. Distribution-level inner heads are refused at build (a
completion batch is not the iteration's batch).

Metrics (``reward/<head>/...``): the inner head's metrics on the rollout, ``vmr/prefix_phase``
(1 prefix, 0 suffix), ``vmr/terminal_mean`` (the rollout's own ``R``), and in the prefix phase
``vmr/value_mean``, ``vmr/completion_reward_mean``, ``vmr/completion_seconds`` (sampling and
scoring the completions).
"""
from __future__ import annotations

import math
import numbers
import time
from typing import Optional

import torch
from torch import Tensor

from vargo.core.interfaces import RewardHead, Stateful
from vargo.core.registry import REWARD_HEADS, ConfigError, checked_build
from vargo.core.types import RewardContext, RewardOutput, Rollout

__all__ = ['VMRReward', 'soft_value', 'COMPLETION_STREAM']

#: the named ctx stream of the prefix phase's completions
COMPLETION_STREAM = 'vmr/completions'


def soft_value(rewards: Tensor, eta: float = 1.0) -> Tensor:
    """``V = eta * log( (1/K) sum_k exp(R_k / eta) )`` over the last dim of ``rewards [..., K]``.

    Computed as ``max_k R_k + eta * log mean_k exp((R_k - max R) / eta)`` in float64 (no
    overflow for any ``R / eta``); ``eta = inf`` gives the mean exactly, ``eta = 0`` the max
    (the limits of the soft maximum). NaN in any ``R_k`` gives NaN. Returns ``[...]`` float64.
    """
    r = rewards.detach().to(torch.float64)
    eta = float(eta)
    if math.isinf(eta):
        return r.mean(-1)
    top = r.max(-1).values                       # NaN if any R_k is NaN
    if eta == 0.0:
        return top
    k = r.shape[-1]
    return top + eta * (torch.logsumexp((r - top.unsqueeze(-1)) / eta, dim=-1) - math.log(k))


def _check_eta(eta) -> float:
    """``eta`` a real number > 0 (``float('inf')`` allowed: the mean)."""
    ok = isinstance(eta, numbers.Real) and not isinstance(eta, bool) and not math.isnan(eta) \
        and eta > 0
    if not ok:
        raise ValueError(f'VMRReward eta={eta!r} must be a number > 0 (paper: 1.0; '
                         f"float('inf') averages the completions, small eta takes their max)")
    return float(eta)


@REWARD_HEADS.register_module()
class VMRReward(RewardHead, Stateful):
    """The VMR reward: soft value of prefix completions in the prefix phase, the inner head's
    terminal reward in the suffix phase (see the module doc).

    Args:
        head: the inner per-sample ``REWARD_HEADS`` config (or a built head), e.g.
            ``dict(type='ShapesEvalReward', task='c2i')``.
        num_completions: K, completions per prefix in ``V`` (paper: 2).
        eta: temperature of the soft value (paper: 1.0); ``float('inf')``: the mean.
        include_rollout: count the rollout's own sample as one of the K completions (sample
            K - 1 more) rather than sampling K fresh ones.
    """

    def __init__(self, *, head, num_completions: int = 2, eta: float = 1.0,
                 include_rollout: bool = True) -> None:
        if isinstance(num_completions, bool) or not isinstance(num_completions, numbers.Integral) \
                or num_completions < 1:
            raise ValueError(f'VMRReward num_completions={num_completions!r} must be an int >= 1 '
                             f'(K completions per prefix; paper: 2)')
        if not isinstance(include_rollout, bool):
            raise ValueError(f'VMRReward include_rollout={include_rollout!r} must be True or '
                             f"False (True: the rollout's own sample is one of the K)")
        self.eta = _check_eta(eta)
        if isinstance(head, dict) and head.get('type') in ('VMRReward', VMRReward):
            raise ConfigError('VMRReward head= is another VMRReward; wrap the per-sample head '
                              "once, e.g. head=dict(type='ShapesEvalReward', task='c2i')")
        inner = head if isinstance(head, RewardHead) else checked_build(head, REWARD_HEADS)
        if inner.distribution_level:
            raise ConfigError(f'VMRReward head={type(inner).__name__} is distribution-level; '
                              f'VMR needs a per-sample head (its completions are scored as a '
                              f'batch of their own): wrap a per-sample head')
        self.head = inner
        self.num_completions = int(num_completions)
        self.include_rollout = include_rollout
        self.needs_reference = bool(getattr(inner, 'needs_reference', False))

    def evaluation_head(self) -> RewardHead:
        """The wrapped head: evaluation scores finished samples with their terminal reward."""
        return self.head.evaluation_head()

    def __repr__(self) -> str:
        """The inner head and the settings."""
        return (f'VMRReward({self.head!r}, num_completions={self.num_completions}, '
                f'eta={self.eta}, include_rollout={self.include_rollout})')

    @property
    def extra_completions(self) -> int:
        """Completions sampled per prefix: ``K - 1`` with ``include_rollout``, else ``K``."""
        return self.num_completions - int(self.include_rollout)

    # -- a stateful inner head is checkpointed through the wrapper -----------------------------
    def state_dict(self) -> dict:
        """The inner head's state (empty if it has none)."""
        return self.head.state_dict() if isinstance(self.head, Stateful) else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore the inner head's state."""
        if isinstance(self.head, Stateful):
            self.head.load_state_dict(state)

    # -- scoring ---------------------------------------------------------------------------
    @staticmethod
    def _sampler(ctx) -> object:
        """``ctx.sampler`` if it is a VMR sampler (has ``phase`` and ``split_step``)."""
        sampler = getattr(ctx, 'sampler', None)
        if not (callable(getattr(sampler, 'phase', None)) and hasattr(sampler, 'split_step')):
            raise ValueError(f'VMRReward needs the VMRSampler as the sampler (ctx.sampler is '
                             f'{type(sampler).__name__}); set sampler=dict(type=\'VMRSampler\', '
                             f'sampler=<the family sampler>, split_step=m)')
        return sampler

    def _score(self, rollout: Rollout, ctx) -> RewardOutput:
        """The inner head's output, checked to be one score per sample."""
        out = self.head(rollout, ctx)
        if out.scores.dim() != 1 or out.scores.shape[0] != rollout.batch_size:
            raise ValueError(f'VMRReward inner head {type(self.head).__name__} returned scores '
                             f'of shape {tuple(out.scores.shape)}; expected [{rollout.batch_size}]')
        return out

    def completions(self, rollout: Rollout, ctx) -> Rollout:
        """``extra_completions`` completions of every sample's prefix (sample ``j``'s at rows
        ``j K' .. j K' + K' - 1``), noise ``ctx.stream('vmr/completions', local_batch=B K')``."""
        sampler = self._sampler(ctx)
        k = self.extra_completions
        rng = ctx.stream(COMPLETION_STREAM, local_batch=rollout.batch_size * k)
        return sampler.rollout(ctx.policy, rollout.cond, group_size=k, prefix=rollout,
                               stop_at_step=sampler.split_step, rng=rng, ctx=ctx)

    def __call__(self, rollout: Rollout, ctx: Optional[RewardContext] = None) -> RewardOutput:
        """Suffix phase: the inner output; prefix phase: ``scores = V = eta log mean_k
        exp(R_k / eta)`` over the rollout's own R (with ``include_rollout``) and the
        completions' (module doc)."""
        sampler = self._sampler(ctx)
        phase = sampler.phase(ctx.iteration)
        own = self._score(rollout, ctx)
        metrics = dict(own.metrics)
        terminal = own.scores.detach().double()
        ok = ~torch.isnan(terminal)
        metrics['vmr/prefix_phase'] = float(phase == 'prefix')
        metrics['vmr/terminal_mean'] = float(terminal[ok].mean()) if ok.any() else math.nan
        if phase != 'prefix':
            own.metrics = metrics
            return own
        if own.per_step is not None:
            raise ValueError(f'VMRReward inner head {type(self.head).__name__} returned per-step '
                             f'rewards; the prefix value replaces its scores, so wrap a head '
                             f'with per-sample scores only')
        b, k = rollout.batch_size, self.extra_completions
        t0 = time.perf_counter()
        parts = [terminal.unsqueeze(1)] if self.include_rollout else []
        if k:
            done = self.completions(rollout, ctx)
            comp = self._score(done, ctx).scores.detach().double().view(b, k)
            parts.append(comp.to(terminal.device))
            okc = ~torch.isnan(comp)
            metrics['vmr/completion_reward_mean'] = (float(comp[okc].mean()) if okc.any()
                                                     else math.nan)
        seconds = time.perf_counter() - t0
        value = soft_value(torch.cat(parts, dim=1), self.eta)          # [B]
        okv = ~torch.isnan(value)
        metrics['vmr/value_mean'] = float(value[okv].mean()) if okv.any() else math.nan
        metrics['vmr/completion_seconds'] = seconds
        return RewardOutput(scores=value.to(torch.float32), metrics=metrics,
                            regions=own.regions, strict=own.strict, weights=own.weights)
