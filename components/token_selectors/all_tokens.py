"""The trivial token selector: every active action counts fully in both loss terms."""
from __future__ import annotations

from typing import Optional

from vargo.core.context import IterationContext
from vargo.core.interfaces import Policy, TokenSelector
from vargo.core.registry import TOKEN_SELECTORS
from vargo.core.types import Advantages, PolicyEval, Rollout, TokenWeights

__all__ = ['AllTokensSelector']


@TOKEN_SELECTORS.register_module()
class AllTokensSelector(TokenSelector):
    """Weight 1 on every action of ``rollout.action_mask`` and 0 elsewhere, for the policy and
    the KL term alike (plain GRPO, arXiv 2402.03300: every generated token is trained).

    Selectors compose by multiplication, so this is the identity of that product on the active
    actions; it takes no settings.

    Examples:
        >>> import torch
        >>> from vargo.core.types import Conditions, PolicyEval, Rollout
        >>> mask = torch.tensor([[True, False]])
        >>> r = Rollout(Conditions(), torch.zeros(1, dtype=torch.long),
        ...             torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2), mask,
        ...             torch.arange(2), torch.zeros(2, 2, dtype=torch.long))
        >>> AllTokensSelector()(r, PolicyEval(torch.zeros(1, 2)), None, None,
        ...                     policy=None, group_size=1).pg
        tensor([[1., 0.]])
    """

    def __init__(self) -> None:
        # An explicit (empty) signature lets the registry reject any keyword by name.
        pass

    def __call__(self, rollout: Rollout, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval],
                 adv: Advantages, *, policy: Policy, group_size: int,
                 ctx: Optional[IterationContext] = None) -> TokenWeights:
        """Returns :class:`TokenWeights` with ``pg = kl = action_mask`` as float32 ``[B, A]``."""
        w = rollout.action_mask.float()                                  # [B, A]
        return TokenWeights(pg=w, kl=w.clone())
