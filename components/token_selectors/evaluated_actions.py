"""Restrict both loss terms to the actions the policy evaluation actually recomputed."""
from __future__ import annotations

from typing import Optional

from vargo.core.interfaces import Policy, TokenSelector
from vargo.core.registry import TOKEN_SELECTORS
from vargo.core.types import Advantages, PolicyEval, Rollout, TokenWeights

__all__ = ['EvaluatedActionsSelector']


@TOKEN_SELECTORS.register_module()
class EvaluatedActionsSelector(TokenSelector):
    """Weight 1 on the actions ``policy_eval.extras['evaluated']`` marks, 0 elsewhere.

    Policies whose evaluation recomputes only a subset of a rollout's actions (MAR: the
    (AR step, diffusion step) pairs of ``extras.selection``, MAR-GRPO's 12 x 10 per update,
    arXiv 2604.06966) return the other actions' ``logp_old`` unchanged (ratio 1, no gradient).
    Without this selector those actions would still count in the aggregation's denominator and
    dilute the update by the evaluated fraction; with it the policy and KL terms are means over
    the evaluated actions, an unbiased estimate of the full-rollout loss when the subset is drawn
    uniformly.

    Raises ``KeyError`` naming the fix when the policy's evaluation has no ``'evaluated'`` mask.
    """

    def __init__(self) -> None:
        pass

    def __call__(self, rollout: Rollout, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval],
                 adv: Advantages, *, policy: Policy, group_size: int) -> TokenWeights:
        """Returns :class:`TokenWeights` ``pg = kl = evaluated * action_mask`` ``[B, A]``."""
        if 'evaluated' not in policy_eval.extras:
            raise KeyError(f"EvaluatedActionsSelector needs policy_eval.extras['evaluated'], "
                           f"which {type(policy).__name__}.evaluate does not return: it "
                           f"evaluates every action, so drop this selector (use "
                           f"AllTokensSelector)")
        w = (policy_eval.extras['evaluated'].bool() & rollout.action_mask).float()
        frac = w.sum() / rollout.action_mask.sum().clamp_min(1)
        return TokenWeights(pg=w, kl=w.clone(), metrics={'evaluated/frac': float(frac)})
