"""PANW: per-action normalisation weighting by the area of each generation step (VAR RL Done
Right, arXiv 2601.02256; docs/methods/var_rl.md, section 2).

A next-scale model decides ``n_t = h_t w_t`` tokens at scale ``t`` (1 at the first scale, 256 at
the last of a 256-px VAR), so a token mean lets the fine scales dominate the gradient. PANW
weights every token of step ``t`` by ``n_t^(-alpha)``; normalised over a sample's active actions
(the segment the update trains) this is the paper's

    w_t = n_t^(-alpha) / sum_{t' in segment} n_{t'}^(1 - alpha)      (sum over the segment = 1)

up to the segment's token count. vargo scales the weights to a mean of 1 over the active actions
instead of a sum of 1, so ``alpha = 0`` gives every weight exactly 1 and leaves any aggregation
unchanged (the token-uniform objective), and under a per-sample token mean
(``sample_mean_of_token_means``) the loss is exactly the paper's weighted sum. ``alpha = 1``
gives every active step the same total weight (the step-uniform objective).
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from vargo.core.context import IterationContext
from vargo.core.interfaces import Policy, TokenSelector
from vargo.core.registry import TOKEN_SELECTORS
from vargo.core.types import Advantages, PolicyEval, Rollout, TokenWeights

__all__ = ['ScaleAreaReweightSelector', 'step_sizes', 'area_weights']


def step_sizes(steps: Tensor) -> Tensor:
    """``[B, A]`` number of actions that share each action's generation step (``n_t``, the area
    ``h_t w_t`` of a VAR scale), counted over all actions of the sample, masked or not."""
    num = int(steps.max()) + 1 if steps.numel() else 1
    counts = torch.zeros(steps.shape[0], num, dtype=torch.float32, device=steps.device)
    counts.scatter_add_(1, steps, torch.ones_like(steps, dtype=torch.float32))
    return counts.gather(1, steps)


def area_weights(steps: Tensor, mask: Tensor, alpha: float) -> Tensor:
    """PANW weights ``[B, A]``: ``n_t^(-alpha)`` on active actions, scaled to a mean of 1 over
    each sample's active actions (0 on inactive ones and on samples without any).

    Args:
        steps: ``[B, A]`` generation step of each action.
        mask: ``[B, A]`` bool, the active actions (the segment being trained).
        alpha: 0 = every token equal, 1 = every step equal.
    """
    m = mask.to(torch.float32)
    raw = step_sizes(steps).pow(-float(alpha)) * m
    mean = raw.sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.where(mean > 0, raw / mean.clamp_min(torch.finfo(raw.dtype).tiny), raw)


@TOKEN_SELECTORS.register_module()
class ScaleAreaReweightSelector(TokenSelector):
    """Weights every action of generation step ``t`` by ``n_t^(-alpha)`` (PANW), mean 1 over a
    sample's active actions (see the module doc for the normalisation).

    Args:
        alpha: the exponent, in [0, 1] (paper: 0.6-0.8 best, 0.7 in its configs; 0 = token-
            uniform, 1 = step-uniform).
        kl: also weight the KL term (default False: the paper reweights the policy term; the KL
            keeps weight 1 on every active action).

    Examples:
        >>> import torch
        >>> steps = torch.tensor([[0, 1, 1, 1]])          # scale 0: 1 token, scale 1: 3 tokens
        >>> area_weights(steps, torch.ones(1, 4, dtype=torch.bool), alpha=1.0)
        tensor([[2.0000, 0.6667, 0.6667, 0.6667]])
    """

    def __init__(self, *, alpha: float, kl: bool = False) -> None:
        if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) \
                or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f'ScaleAreaReweightSelector alpha={alpha!r} must be a number in '
                             f'[0, 1] (0 = every token equal, 1 = every scale equal; the paper '
                             f'uses 0.7)')
        if not isinstance(kl, bool):
            raise ValueError(f'ScaleAreaReweightSelector kl={kl!r} must be True or False')
        self.alpha, self.kl = float(alpha), kl

    def __call__(self, rollout: Rollout, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval],
                 adv: Advantages, *, policy: Policy, group_size: int,
                 ctx: Optional[IterationContext] = None) -> TokenWeights:
        """``pg [B, A]`` PANW weights of the active actions; ``kl`` the same or the mask."""
        mask = rollout.action_mask
        w = area_weights(rollout.steps().to(mask.device), mask, self.alpha)
        ones = mask.to(w.dtype)
        active = w[mask]
        metrics = {} if active.numel() == 0 else {'panw/weight_max': float(active.max()),
                                                   'panw/weight_min': float(active.min())}
        return TokenWeights(pg=w, kl=w.clone() if self.kl else ones, metrics=metrics)
