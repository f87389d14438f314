"""Restrict both loss terms to the actions the policy evaluation actually recomputed."""
from __future__ import annotations

from typing import Optional

from vargo.core.context import IterationContext
from vargo.core.interfaces import Policy, TokenSelector
from vargo.core.registry import TOKEN_SELECTORS
from vargo.core.types import Advantages, PolicyEval, Rollout, TokenWeights

__all__ = ['EvaluatedActionsSelector']


@TOKEN_SELECTORS.register_module()
class EvaluatedActionsSelector(TokenSelector):
    """Weight 1 on the actions ``policy_eval.extras['evaluated']`` marks, 0 elsewhere.

    Policies whose evaluation recomputes only a subset of a rollout's actions (MAR: the
    (AR step, diffusion step) pairs of ``extras.selection``, MAR-GRPO's 12 x 10 per update,
    arXiv 2604.06966) return the other actions' ``logp_old`` unchanged (ratio 1, no gradient),
    and their KL inputs (MAR: the Gaussian means) as zeros. This selector zeroes both loss
    weights outside the subset, so nothing but the evaluated actions enters either term.

    Normalisation is the aggregation's: ``sample_mean_of_token_means`` and ``token_mean`` still
    divide by the active-action count, i.e. the terms are the evaluated actions' sum over all
    actions (the full-rollout loss estimated from a uniform subset, times the evaluated
    fraction, logged as ``select/evaluated/frac``); ``weighted_token_mean`` divides by the
    weight sum and gives the mean over the evaluated actions (MAR-GRPO's official
    normalisation).

    Raises ``KeyError`` naming the fix when the policy's evaluation has no ``'evaluated'`` mask.
    """

    def __init__(self) -> None:
        pass

    def __call__(self, rollout: Rollout, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval],
                 adv: Advantages, *, policy: Policy, group_size: int,
                 ctx: Optional[IterationContext] = None) -> TokenWeights:
        """Returns :class:`TokenWeights` ``pg = kl = evaluated * action_mask`` ``[B, A]``."""
        if 'evaluated' not in policy_eval.extras:
            raise KeyError(f"EvaluatedActionsSelector needs policy_eval.extras['evaluated'], "
                           f"which {type(policy).__name__}.evaluate does not return: it "
                           f"evaluates every action, so drop this selector (use "
                           f"AllTokensSelector)")
        w = (policy_eval.extras['evaluated'].bool() & rollout.action_mask).float()
        frac = w.sum() / rollout.action_mask.sum().clamp_min(1)
        return TokenWeights(pg=w, kl=w.clone(), metrics={'evaluated/frac': float(frac)})
