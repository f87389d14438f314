"""KL penalty to the frozen reference policy, per action (docs/methods/grpo.md)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from vargo.core.context import IterationContext
from vargo.core.interfaces import Regularizer
from vargo.core.objective import AGGREGATIONS, aggregate, kl_estimate, masked_mean
from vargo.core.registry import REGULARIZERS
from vargo.core.types import PolicyEval, Rollout, TokenWeights

__all__ = ['KLRegularizer', 'KL_ESTIMATORS', 'KL_LEVELS', 'check_kl_settings']

KL_ESTIMATORS = ('k1', 'k2', 'k3')
KL_LEVELS = ('token', 'sequence')


def check_kl_settings(owner, beta, aggregation: str, *, typical: str) -> None:
    """Raise ``ValueError`` naming ``owner``'s class unless ``beta`` is a finite number >= 0 and
    ``aggregation`` a name in :data:`~vargo.core.objective.AGGREGATIONS`."""
    name = type(owner).__name__
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) \
            or not math.isfinite(beta) or beta < 0:
        raise ValueError(f'{name} beta={beta!r} must be a finite float >= 0 (e.g. {typical}; '
                         f'remove the regularizer to disable KL)')
    if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
        raise ValueError(f'{name} aggregation={aggregation!r} is not one of '
                         f'{sorted(AGGREGATIONS)}')


@REGULARIZERS.register_module()
class KLRegularizer(Regularizer):
    """``beta * aggregate(KL_hat(pi_theta || pi_ref))`` over the actions, KL-weighted per action.

    With ``d = l_ref - l`` per action (Schulman, http://joschu.net/blog/kl-approx.html):
    ``k1 = -d``, ``k2 = d^2 / 2``, ``k3 = exp(d) - d - 1`` (GRPO, arXiv 2402.03300 eq. 4, the
    default of every paper here: unbiased and always >= 0). The per-action estimates are reduced
    with the same aggregation functions as the policy term
    (:data:`vargo.core.objective.AGGREGATIONS`), weighted by ``weights.kl`` from the token
    selectors (STAGE's ``m_{i,t}``, arXiv 2509.25027).

    ``level='sequence'`` estimates the KL of whole samples from their mean log-ratio instead:
    ``d_i = sum_t w_t (l_ref - l)_t / sum_t w_t`` (``w = weights.kl`` on active actions), then
    ``k(d_i)`` and the mean over samples -- the LOO-FID official code's penalty
    (``kl = exp(d) - d - 1`` on sequence-mean log-probs, ar-policy-tuning ``grpo.py``), matching
    its sequence-level importance ratio. It requires
    ``aggregation='sample_mean_of_token_means'`` (one value per sample, averaged).

    The reference log-probs are treated as constants (the reference is frozen); the gradient flows
    into ``policy_eval.logp`` only.

    Args:
        beta: KL coefficient, finite and >= 0 (GRPO 0.04; STAGE 0.01-0.03; LOO-FID 3.0).
        estimator: ``'k1'``, ``'k2'`` or ``'k3'``.
        aggregation: a name in :data:`~vargo.core.objective.AGGREGATIONS`.
        level: ``'token'`` (per action, the default of GRPO and STAGE) or ``'sequence'``.

    Returns (of ``__call__``):
        ``{'loss': beta * aggregate(kl, mask, weights.kl, aggregation), 'mean': masked mean of
        the per-action estimate (detached, unweighted)}``.
    """

    needs_reference = True

    def __init__(self, *, beta: float, estimator: str, aggregation: str,
                 level: str = 'token') -> None:
        check_kl_settings(self, beta, aggregation, typical='0.04 as GRPO')
        if not isinstance(estimator, str) or estimator not in KL_ESTIMATORS:
            raise ValueError(f'KLRegularizer estimator={estimator!r} is not one of '
                             f'{list(KL_ESTIMATORS)} (k3 is the GRPO choice)')
        if not isinstance(level, str) or level not in KL_LEVELS:
            raise ValueError(f'KLRegularizer level={level!r} is not one of {list(KL_LEVELS)}')
        if level == 'sequence' and aggregation != 'sample_mean_of_token_means':
            raise ValueError(f"KLRegularizer level='sequence' gives one KL per sample, averaged "
                             f"over samples: set aggregation='sample_mean_of_token_means' (got "
                             f"{aggregation!r})")
        self.beta = float(beta)
        self.estimator = estimator
        self.aggregation = aggregation
        self.level = level

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(beta={self.beta}, estimator={self.estimator!r}, '
                f'aggregation={self.aggregation!r}, level={self.level!r})')

    def __call__(self, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval], rollout: Rollout,
                 weights: TokenWeights, *, progress: float,
                 ctx: Optional[IterationContext] = None) -> dict[str, Tensor]:
        """KL term of one (micro-)batch.

        Args:
            policy_eval: ``logp`` ``[B, A]`` with grad.
            ref_eval: the frozen reference's evaluation of the same rollout (required).
            rollout: for ``action_mask`` ``[B, A]``.
            weights: ``weights.kl`` ``[B, A]`` per-action KL weights.
            progress: training progress in [0, 1] (unused: beta is constant).
            ctx: the minibatch's :class:`~vargo.core.context.IterationContext` (or a dict of
                totals), the aggregation context as for :func:`~vargo.core.objective.policy_loss`.
        """
        if ref_eval is None:
            raise ValueError('KLRegularizer needs the reference policy evaluation (ref_eval is '
                             'None): the runner must evaluate the frozen reference for '
                             'regularizers with needs_reference=True')
        mask = rollout.action_mask
        if self.level == 'sequence':
            w = weights.kl * mask
            denom = w.sum(dim=1, keepdim=True).clamp_min(1e-12)
            seq_logp = (policy_eval.logp * w).sum(dim=1, keepdim=True) / denom        # [B, 1]
            seq_ref = (ref_eval.logp.detach() * w).sum(dim=1, keepdim=True) / denom
            kl_seq = kl_estimate(seq_logp, seq_ref, self.estimator)                  # [B, 1]
            # a per-sample constant row: the per-sample token mean of it is kl_seq itself
            kl = kl_seq.expand_as(policy_eval.logp)
            loss = self.beta * aggregate(kl, mask, torch.ones_like(w), self.aggregation, ctx)
            return {'loss': loss, 'mean': masked_mean(kl.detach(), mask)}
        kl = kl_estimate(policy_eval.logp, ref_eval.logp.detach(), self.estimator)  # [B, A]
        loss = self.beta * aggregate(kl, mask, weights.kl, self.aggregation, ctx)
        return {'loss': loss, 'mean': masked_mean(kl.detach(), mask)}
