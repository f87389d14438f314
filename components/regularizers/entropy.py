"""Constant-coefficient entropy bonus on the policy's per-action entropies."""
from __future__ import annotations

import math
from typing import Optional

from torch import Tensor

from vargo.core.context import IterationContext
from vargo.core.interfaces import Regularizer
from vargo.core.objective import AGGREGATIONS, aggregate, masked_mean
from vargo.core.registry import REGULARIZERS
from vargo.core.types import PolicyEval, Rollout, TokenWeights

__all__ = ['EntropyRegularizer']


@REGULARIZERS.register_module()
class EntropyRegularizer(Regularizer):
    """Entropy bonus ``loss = -coef * aggregate(H, mask, weights.pg)``.

    ``H_{i,t}`` is the entropy of the policy's full next-action distribution at action ``t``
    (``policy_eval.entropy``, discrete families only). Minimising the loss raises the entropy when
    ``coef > 0`` (the classic bonus, PPO arXiv 1707.06347 eq. 9's ``c2 S[pi]``); ``coef < 0`` is an
    entropy penalty. The bonus uses the policy term's per-action weights ``weights.pg`` so that
    actions a token selector removes from the policy gradient are not pushed by the bonus either
    (with :class:`AllTokensSelector` this is the plain masked entropy). LOO-FID's adaptive,
    scheduled coefficient (arXiv 2603.23086) is a separate component.

    Args:
        coef: entropy coefficient ``c``, a finite float.
        aggregation: a name in :data:`~vargo.core.objective.AGGREGATIONS`.

    Returns (of ``__call__``):
        ``{'loss': -coef * aggregate(H, mask, weights.pg, aggregation), 'mean': masked mean
        entropy (detached, unweighted)}``.
    """

    needs_reference = False

    def __init__(self, *, coef: float, aggregation: str) -> None:
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not math.isfinite(coef):
            raise ValueError(f'EntropyRegularizer coef={coef!r} must be a finite float '
                             f'(> 0 rewards entropy, < 0 penalises it)')
        if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
            raise ValueError(f'EntropyRegularizer aggregation={aggregation!r} is not one of '
                             f'{sorted(AGGREGATIONS)}')
        self.coef = float(coef)
        self.aggregation = aggregation

    def __repr__(self) -> str:
        return f'{type(self).__name__}(coef={self.coef}, aggregation={self.aggregation!r})'

    def __call__(self, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval], rollout: Rollout,
                 weights: TokenWeights, *, progress: float,
                 ctx: Optional[IterationContext] = None) -> dict[str, Tensor]:
        """Entropy term of one (micro-)batch; ``policy_eval.entropy`` ``[B, A]`` is required.

        ``ctx`` is the optional aggregation context (the minibatch's
        :class:`~vargo.core.context.IterationContext`, or a dict of totals).
        """
        if policy_eval.entropy is None:
            raise ValueError('EntropyRegularizer needs per-action entropies but '
                             'policy_eval.entropy is None: evaluate the policy with '
                             'with_entropy=True (continuous-token families such as MAR have no '
                             'categorical entropy; remove this regularizer for them)')
        ent = policy_eval.entropy                                           # [B, A]
        mask = rollout.action_mask
        loss = -self.coef * aggregate(ent, mask, weights.pg, self.aggregation, ctx)
        return {'loss': loss, 'mean': masked_mean(ent.detach(), mask)}
