"""STAGE's entropy reward (arXiv 2509.25027, docs/methods/stage.md), as a wrapper around a head.

For every sample ``i`` of a group, with ``Hbar`` the mean over its tokens of the entropy of the
teacher-forced *conditional* next-token distribution (full vocabulary, temperature 1, no CFG),
under the trained policy and under the frozen reference:

    e_i = 1 / (1 + (Hbar_ref,i - Hbar_theta,i)^2)                   in (0, 1]
    M   = { i : R_i = max_{k in group} R_k }                         tied at the group's max
    R_i <- R_i + lambda (e_i - mean_{k in M} e_k)    for i in M,     lambda = 0.4

Among the samples that are equally best for the main reward, the ones whose entropy stays
closest to the reference's are preferred, which resists the entropy collapse of GRPO on
near-binary rewards. Centring over ``M`` keeps the mean reward of ``M`` (and hence the group
baseline) unchanged; the other samples are untouched. Computed under ``no_grad``.

Official code (``krennic999/STAGE``, ``src/grpo/src/open_r1/trainer/grpo_trainer.py``,
``compute_loss``, ``if self.entropy_reward``): ``reward_entropy * (rewards == rewards.max())``
over the per-GPU batch, which is one group (one prompt x 8 images per GPU), then ``+ 0.4 *
(reward_entropy - mean over the nonzero entries)``; the entropies are those of the
teacher-forced conditional forward (``_get_per_token_logps(..., return_entropy=True)``, no CFG,
no temperature) of the policy and of the reference. The released runs enable it for GenEval
only (``run_training_geneval.py``: ``--entropy_reward True``; the HPS and OCR scripts pass
False, and the code path only exists in the GenEval/OCR reward branch).

Why a reward-head wrapper (and not an advantage estimator or core): the bonus changes the
*reward* before group normalisation, exactly where the official code adds it; it needs the
policy's and the reference's entropies, which :class:`~vargo.core.types.RewardContext` provides
to reward heads (an advantage estimator sees only rewards); and as a wrapper it composes with
any base head (``StageEntropyBonus(base=dict(type='HPSv2Reward', ...), weight=0.4)``), keeping
core free of paper knowledge. The advantage estimator stays the plain group normalisation.

Cost: the entropies are needed only for samples in a tie of two or more (a lone maximum gets
``e_i - e_i = 0`` exactly), so the head evaluates the policy and the reference on those samples
only; with a continuous reward (HPS) ties almost never occur and the head costs nothing. Those
are two extra teacher-forced forwards of the tied samples (the loop's reference evaluation uses
the sampler's log-prob spec, possibly CFG-mixed, and comes after the rewards).

Metrics (``reward/<head>/...``): the base head's metrics, plus ``entropy_bonus/base_mean`` (raw
base score), ``entropy_bonus/frac_tied`` (samples in a tie of >= 2 at their group's max),
``entropy_bonus/abs_mean`` (mean ``|bonus|`` over them) and, when any were evaluated,
``entropy_bonus/entropy_policy``, ``entropy_bonus/entropy_ref`` and ``entropy_bonus/e_mean``.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from vargo.core.interfaces import RewardHead, Stateful
from vargo.core.registry import REWARD_HEADS, ConfigError, checked_build
from vargo.core.types import LogprobSpec, RewardContext, RewardOutput, Rollout

__all__ = ['StageEntropyBonus', 'tied_at_group_max', 'tied_max_bonus']


def _groups(group_ids: Tensor) -> tuple[Tensor, int]:
    """``(inverse [B], number of groups)`` of contiguous runs of equal ``group_ids``."""
    _, inverse = torch.unique_consecutive(group_ids, return_inverse=True)
    return inverse, int(inverse.max()) + 1 if inverse.numel() else 0


def tied_at_group_max(scores: Tensor, group_ids: Tensor) -> Tensor:
    """``[B]`` bool: scorable samples tied (exactly) at their group's max, in ties of >= 2.

    Examples:
        >>> tied_at_group_max(torch.tensor([1., 1., 0., 2., 1., float('nan')]),
        ...                   torch.tensor([0, 0, 0, 1, 1, 1])).tolist()
        [True, True, False, False, False, False]
    """
    x = scores.detach().double()
    inverse, n = _groups(group_ids.to(x.device))
    valid = ~torch.isnan(x)
    masked = torch.where(valid, x, torch.full_like(x, -math.inf))
    gmax = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device).scatter_reduce(
        0, inverse, masked, 'amax')
    tied = valid & (x == gmax[inverse])
    n_tied = torch.zeros(n, dtype=torch.long, device=x.device).index_add_(0, inverse, tied.long())
    return tied & (n_tied[inverse] >= 2)


def tied_max_bonus(e: Tensor, eligible: Tensor, group_ids: Tensor, weight: float) -> Tensor:
    """``[B]`` float64 bonus ``weight * (e_i - mean_{k in M} e_k)`` on ``eligible`` samples
    (``M`` = the eligible samples of ``i``'s group), 0 elsewhere.

    Args:
        e: ``[B]`` entropy rewards (values off ``eligible`` are ignored).
        eligible: ``[B]`` bool, from :func:`tied_at_group_max`.
        group_ids: ``[B]`` contiguous group ids.
        weight: lambda (STAGE 0.4).

    Examples:
        >>> tied_max_bonus(torch.tensor([0.5, 1.0, 0.2]), torch.tensor([True, True, False]),
        ...                torch.zeros(3, dtype=torch.long), 0.4).tolist()
        [-0.1, 0.1, 0.0]
    """
    e = torch.where(eligible, e.double(), torch.zeros_like(e, dtype=torch.float64))
    inverse, n = _groups(group_ids.to(e.device))
    k = torch.zeros(n, dtype=e.dtype, device=e.device).index_add_(0, inverse, eligible.double())
    total = torch.zeros(n, dtype=e.dtype, device=e.device).index_add_(0, inverse, e)
    mean = total / k.clamp_min(1.0)
    return torch.where(eligible, weight * (e - mean[inverse]), torch.zeros_like(e))


@REWARD_HEADS.register_module()
class StageEntropyBonus(RewardHead, Stateful):
    """A base reward plus STAGE's centred entropy reward on the samples tied at the group max.

    See the module docstring for the equations, the official code and why this is a wrapper.

    Args:
        base: the main reward, a ``REWARD_HEADS`` config (or a built head); scalar scores.
        weight: lambda of the bonus (STAGE 0.4). Finite and >= 0.
        chunk_samples: samples per teacher-forced evaluation (bounds memory).

    Returns (of ``__call__``):
        ``RewardOutput`` with the base's scores plus the bonus (float32), its ``strict`` and
        ``regions``, and the metrics of the module docstring.
    """

    def __init__(self, *, base: Union[dict, RewardHead], weight: float,
                 chunk_samples: int = 64) -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight < 0:
            raise ValueError(f'StageEntropyBonus weight={weight!r} must be a finite float >= 0 '
                             f'(STAGE uses 0.4)')
        if isinstance(chunk_samples, bool) or not isinstance(chunk_samples, int) \
                or chunk_samples < 1:
            raise ValueError(f'StageEntropyBonus chunk_samples={chunk_samples!r} must be a '
                             f'positive int')
        if base is None:
            raise ConfigError("StageEntropyBonus needs a base reward head, e.g. "
                              "base=dict(type='HPSv2Reward', ...)")
        self.base = base if isinstance(base, RewardHead) else checked_build(base, REWARD_HEADS)
        self.weight = float(weight)
        self.chunk_samples = chunk_samples
        self.distribution_level = self.base.distribution_level
        self.needs_reference = getattr(self.base, 'needs_reference', False)

    def __repr__(self) -> str:
        return f'StageEntropyBonus(weight={self.weight}, base={self.base!r})'

    def evaluation_head(self) -> RewardHead:
        """The base head's: the bonus shapes training advantages and is no measure of the
        samples, so ``tools/eval.py`` reports the base reward (and its summary, e.g. GenEval's
        table) without it."""
        return self.base.evaluation_head()

    def state_dict(self) -> dict:
        return {'base': self.base.state_dict()} if isinstance(self.base, Stateful) else {}

    def load_state_dict(self, state: dict) -> None:
        if 'base' in state:
            if not isinstance(self.base, Stateful):
                raise KeyError('checkpoint holds state for the base head of StageEntropyBonus, '
                               f'but {type(self.base).__name__} keeps none')
            self.base.load_state_dict(state['base'])

    @torch.no_grad()
    def mean_entropy(self, policy, rollout: Rollout) -> Tensor:
        """``[B]`` mean over active actions of the conditional full-vocabulary entropy."""
        spec = LogprobSpec(mode='none')
        was_training = policy.training
        policy.eval()
        try:
            outs = []
            for start in range(0, rollout.batch_size, self.chunk_samples):
                idx = torch.arange(start, min(start + self.chunk_samples, rollout.batch_size))
                sub = rollout.index(idx)
                ev = policy.evaluate(sub, spec=spec, with_entropy=True)
                if ev.entropy is None:
                    raise TypeError(f'{type(policy).__name__}.evaluate returned no entropy: '
                                    f'the STAGE entropy reward needs a discrete-token policy')
                m = sub.action_mask.to(ev.entropy.device).double()
                outs.append((ev.entropy.double() * m).sum(1) / m.sum(1).clamp_min(1.0))
        finally:
            policy.train(was_training)
        return torch.cat(outs)

    @torch.no_grad()
    def __call__(self, rollout: Rollout, ctx: Optional[RewardContext]) -> RewardOutput:
        out = self.base(rollout, ctx)
        if out.per_step is not None:
            raise ValueError('StageEntropyBonus adds a scalar bonus; its base head returned '
                             'per-step rewards, which it does not support')
        scores = out.scores
        eligible = tied_at_group_max(scores, rollout.group_ids)               # [B]
        bonus = torch.zeros_like(scores, dtype=torch.float64)
        valid = ~torch.isnan(scores)
        metrics = dict(out.metrics)
        metrics['entropy_bonus/base_mean'] = float(scores[valid].double().mean()) \
            if valid.any() else math.nan
        metrics['entropy_bonus/frac_tied'] = float(eligible.double().mean())
        if eligible.any() and self.weight > 0:
            if ctx is None or ctx.policy is None or ctx.reference is None:
                raise ValueError('StageEntropyBonus needs the policy and the frozen reference in '
                                 'the reward context (RewardContext.policy / .reference)')
            idx = eligible.nonzero().flatten().cpu()
            sub = rollout.index(idx)
            h_pol = self.mean_entropy(ctx.policy, sub)
            h_ref = self.mean_entropy(ctx.reference, sub)
            e_sub = 1.0 / (1.0 + (h_ref - h_pol) ** 2)                           # [M]
            e = torch.zeros_like(bonus)
            e[idx.to(e.device)] = e_sub.to(e.device)
            bonus = tied_max_bonus(e, eligible.to(e.device), rollout.group_ids, self.weight)
            metrics['entropy_bonus/entropy_policy'] = float(h_pol.mean())
            metrics['entropy_bonus/entropy_ref'] = float(h_ref.mean())
            metrics['entropy_bonus/e_mean'] = float(e_sub.mean())
        metrics['entropy_bonus/abs_mean'] = float(bonus[eligible.to(bonus.device)].abs().mean()) \
            if eligible.any() else 0.0
        new = (scores.double() + bonus.to(scores.device)).to(scores.dtype)
        return RewardOutput(scores=new, metrics=metrics, regions=out.regions, strict=out.strict)
