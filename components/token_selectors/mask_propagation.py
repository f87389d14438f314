"""MP, mask propagation (VAR RL Done Right, arXiv 2601.02256; docs/methods/var_rl.md section 3).

Inspired by ReFL (arXiv 2304.05977): only the image regions that decide the reward should get
the update, at every scale. The paper gives three sentences and no code; the grids, the
renormalisation and both mask sources below are *our formulation*.

Grids. Actions are grouped into grids by their ``action_pos``: with 3 columns ``(scale, row,
col)`` (VAR) the first column names the grid; with 2 columns ``(row, col)`` (raster LlamaGen,
MAR) all actions form one grid. A grid's size is ``(max row + 1, max col + 1)`` of its actions.

Mask of a grid ``g`` of size ``h_g x w_g``, for an image mask ``M [H, W]``:

    M_g         = adaptive_max_pool2d(M, (h_g, w_g))      a cell is in the mask if any pixel
                                                           of it is (source 'regions')
    gate_{b,a}  = 1 if M_g[row_a, col_a] else eps_bg       eps_bg = ``background``
    w_{b,a}     = gate_{b,a} * n / sum_{a' in U} gate_{b,a'}    for a in U, active actions

with the renormalisation group ``U``: all active actions of sample ``b`` (``'per_sample'``: the
mean weight of a sample is 1), the active actions of the same generation step
(``'per_step'``: every step keeps its total weight, so a product with PANW's per-scale weights
keeps PANW's balance between scales), or none (``'none'``: ``w = gate``). ``n = |U|``. A group
whose gates sum to 0 (``background=0`` and no active action in the mask) keeps weight 1.

A sample whose mask is empty (or a head that returned ``regions=None``) gets weight 1 on every
active action: no mask is no information, not "nothing matters". The selector weights the
policy term; ``kl=True`` gives the KL term the same weights (default: 1 on active actions).

Mask sources (both our formulation):

* ``source='regions'``: ``M = adv.rewards[head].regions >= 0.5`` (``RewardOutput.regions
  [B, H, W]`` of the reward head named ``head``, e.g. ``ShapesEvalReward(regions=True)``).
* ``source='saliency'``: for a differentiable reward ``R`` (``saliency_reward``, a reward head
  config whose head has ``differentiable_scores(images, rollout, ctx) -> [B]``, e.g.
  :class:`~vargo.components.rewards.differentiable.ColourMassReward`) and the policy's
  differentiable decode from per-step inputs ``e_t [B, C, h_t, w_t]`` (VAR: the code vectors of
  scale ``t``, :meth:`VARPolicy.decode_with_step_inputs`):

      sal_t[b, r, c] = sum_channels | dR_b / de_t[b, :, r, c] |
      M_t[b]         = sal_t[b] >= quantile_q(sal_t[b])        per sample and scale

  so the grid masks come straight from the saliency (no pooling). A sample whose saliency is 0
  at every scale has an empty mask.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from vargo.core.context import IterationContext
from vargo.core.interfaces import Policy, TokenSelector
from vargo.core.registry import REWARD_HEADS, TOKEN_SELECTORS, ConfigError
from vargo.core.types import Advantages, PolicyEval, Rollout, TokenWeights

__all__ = ['MaskPropagationSelector', 'action_grids', 'propagate_mask', 'grid_masks_to_actions',
           'saliency_grid_masks', 'gate_weights']

RENORMALIZE = ('per_sample', 'per_step', 'none')


def action_grids(pos: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor, dict[int, tuple[int, int]]]:
    """Grid of every action (module docstring, "Grids").

    Args:
        pos: ``[A, k]`` or ``[B, A, k]`` long action positions, ``k`` = 2 or 3.
        batch: B.

    Returns:
        ``(grid [B, A], row [B, A], col [B, A], sizes)``, ``sizes[g] = (h_g, w_g)``, grids in
        increasing order.
    """
    if pos.dim() == 2:
        pos = pos.unsqueeze(0).expand(batch, -1, -1)
    if pos.shape[-1] not in (2, 3):
        raise ValueError(f'action_pos has {pos.shape[-1]} columns; mask propagation reads '
                         f'(row, col) or (scale, row, col)')
    grid = pos[..., 0] if pos.shape[-1] == 3 else torch.zeros_like(pos[..., 0])
    row, col = pos[..., -2], pos[..., -1]
    sizes = {}
    for g in torch.unique(grid).tolist():
        sel = grid == g
        sizes[int(g)] = (int(row[sel].max()) + 1, int(col[sel].max()) + 1)
    return grid, row, col, sizes


def grid_masks_to_actions(masks: dict[int, Tensor], grid: Tensor, row: Tensor, col: Tensor
                          ) -> Tensor:
    """``[B, A]`` bool: the cell of each action in its grid's mask ``masks[g] [B, h_g, w_g]``."""
    out = torch.zeros(grid.shape, dtype=torch.bool, device=grid.device)
    bidx = torch.arange(grid.shape[0], device=grid.device).unsqueeze(1).expand_as(grid)
    for g, m in masks.items():
        sel = grid == g
        out[sel] = m.to(grid.device)[bidx[sel], row[sel], col[sel]].bool()
    return out


def propagate_mask(mask: Tensor, pos: Tensor) -> Tensor:
    """``[B, A]`` bool: is the cell of each action in the image mask ``mask [B, H, W]``?

    ``M_g = adaptive_max_pool2d(M, (h_g, w_g))`` for every grid (module docstring).

    Examples:
        >>> m = torch.zeros(1, 4, 4); m[0, 0, 0] = 1           # one pixel, top-left
        >>> pos = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]])
        >>> propagate_mask(m, pos).int().tolist()                # scales 1x1 and 2x2
        [[1, 1, 0, 0, 0]]
    """
    grid, row, col, sizes = action_grids(pos.to(mask.device), mask.shape[0])
    m = (mask.float() > 0).float().unsqueeze(1)                                # [B, 1, H, W]
    pooled = {g: F.adaptive_max_pool2d(m, hw)[:, 0] > 0 for g, hw in sizes.items()}
    return grid_masks_to_actions(pooled, grid, row, col)


def saliency_grid_masks(inputs: list[Tensor], scores: Tensor, quantile: float
                        ) -> tuple[list[Tensor], Tensor]:
    """Per-step saliency masks (module docstring, source 'saliency').

    Args:
        inputs: the S per-step inputs ``e_t [B, C, h_t, w_t]`` the scores were computed from.
        scores: ``[B]`` differentiable scores.
        quantile: q in [0, 1].

    Returns:
        (S masks ``[B, h_t, w_t]`` bool, ``empty [B]`` bool: zero saliency at every step).
    """
    grads = torch.autograd.grad(scores.sum(), inputs, allow_unused=True)
    masks, total = [], 0.0
    for e, g in zip(inputs, grads):
        sal = torch.zeros(e.shape[0], *e.shape[2:], device=e.device) if g is None else \
            g.detach().abs().sum(1).float()                                   # [B, h, w]
        thr = torch.quantile(sal.flatten(1), quantile, dim=1)                 # [B]
        masks.append(sal >= thr.view(-1, 1, 1))
        total = total + sal.flatten(1).sum(1)
    return masks, torch.as_tensor(total == 0)


def gate_weights(in_mask: Tensor, active: Tensor, empty: Tensor, *, background: float,
                 renormalize: str, steps: Optional[Tensor] = None) -> Tensor:
    """``[B, A]`` float32 weights (module docstring): gate, empty-mask fallback, renormalise.

    Args:
        in_mask: ``[B, A]`` bool, the action's cell is in the mask.
        active: ``[B, A]`` bool, ``rollout.action_mask``.
        empty: ``[B]`` bool, samples without a mask (weight 1 everywhere).
        background: eps_bg, the gate outside the mask.
        renormalize: ``'per_sample'``, ``'per_step'`` or ``'none'``.
        steps: ``[B, A]`` long generation step of each action (``'per_step'`` only).

    Examples:
        >>> w = gate_weights(torch.tensor([[True, False, False, False]]),
        ...                  torch.ones(1, 4, dtype=torch.bool), torch.tensor([False]),
        ...                  background=0.0, renormalize='per_sample')
        >>> w.tolist()
        [[4.0, 0.0, 0.0, 0.0]]
    """
    act = active.float()
    gate = torch.where(in_mask, torch.ones_like(act), torch.full_like(act, background))
    gate = torch.where(empty.view(-1, 1), torch.ones_like(gate), gate) * act
    if renormalize == 'none':
        return gate
    if renormalize == 'per_sample':
        group = torch.zeros_like(active, dtype=torch.long)
    else:
        group = steps.to(active.device).long()
    n = int(group.max()) + 1 if group.numel() else 1
    sums = torch.zeros(gate.shape[0], n, device=gate.device).scatter_add_(1, group, gate)
    counts = torch.zeros_like(sums).scatter_add_(1, group, act)
    s, c = sums.gather(1, group), counts.gather(1, group)                     # [B, A]
    return torch.where(s > 0, gate * c / s.clamp_min(1e-30), act)


@TOKEN_SELECTORS.register_module()
class MaskPropagationSelector(TokenSelector):
    """MP's token weights: 1 inside the propagated mask, ``background`` outside, renormalised
    (equations, grids and both mask sources in the module docstring; our formulation).

    Args:
        source: ``'regions'`` (the ``regions`` a reward head returned) or ``'saliency'`` (the
            saliency of a differentiable reward with respect to each step's input).
        head: ``source='regions'``: the name of the reward head (a key of the config's
            ``rewards``) whose ``RewardOutput.regions [B, H, W]`` is the mask.
        background: eps_bg, the weight of a token outside the mask before renormalisation
            (paper: about 0 to 0.1).
        renormalize: ``'per_sample'`` (mean weight 1 over a sample's active actions),
            ``'per_step'`` (mean 1 within each generation step: keeps each VAR scale's total,
            use it with PANW) or ``'none'``.
        kl: also weight the KL term (default False: the KL term keeps weight 1).
        saliency_reward: ``source='saliency'``: a REWARD_HEADS config of a head with
            ``differentiable_scores(images, rollout, ctx) -> [B]`` (e.g.
            ``dict(type='ColourMassReward', colour='red')``).
        quantile: ``source='saliency'``: a cell of step t is in the mask when its saliency is
            at least the q-quantile of step t's cells in that sample.

    Returns (of ``__call__``):
        ``TokenWeights(pg [B, A], kl [B, A])`` float32 (0 on inactive actions) and the metrics
        ``mask_propagation/mask_fraction`` (mean over samples of the fraction of active actions
        in the mask), ``.../mask_fraction_min``, ``.../mask_fraction_max`` and
        ``.../empty_fraction`` (samples without a mask, weighted 1 everywhere).
    """

    def __init__(self, *, source: str = 'regions', head: Optional[str] = None,
                 background: float = 0.05, renormalize: str = 'per_sample', kl: bool = False,
                 saliency_reward: Optional[dict] = None, quantile: float = 0.8) -> None:
        if source not in ('regions', 'saliency'):
            raise ConfigError(f"MaskPropagationSelector source={source!r} is not one of "
                              f"'regions', 'saliency'")
        if renormalize not in RENORMALIZE:
            raise ConfigError(f'MaskPropagationSelector renormalize={renormalize!r} is not one '
                              f'of {RENORMALIZE}')
        if not 0.0 <= background <= 1.0:
            raise ConfigError(f'MaskPropagationSelector background={background} must be in '
                              f'[0, 1] (paper: about 0 to 0.1)')
        if not 0.0 <= quantile <= 1.0:
            raise ConfigError(f'MaskPropagationSelector quantile={quantile} must be in [0, 1]')
        self.reward = None
        if source == 'regions':
            if not head:
                raise ConfigError("MaskPropagationSelector(source='regions') needs head=<the "
                                  "name of a reward head that returns regions>, e.g. a "
                                  "ShapesEvalReward with regions=True")
            if saliency_reward is not None:
                raise ConfigError("MaskPropagationSelector: saliency_reward is for "
                                  "source='saliency'; remove it or set source='saliency'")
        else:
            if saliency_reward is None:
                raise ConfigError("MaskPropagationSelector(source='saliency') needs "
                                  "saliency_reward=dict(type=..., ...), a differentiable reward "
                                  "head, e.g. dict(type='ColourMassReward', colour='red')")
            self.reward = REWARD_HEADS.build(saliency_reward)
            if not callable(getattr(self.reward, 'differentiable_scores', None)):
                raise ConfigError(f'MaskPropagationSelector saliency_reward '
                                  f'{type(self.reward).__name__} has no '
                                  f'differentiable_scores(images, rollout, ctx); use a '
                                  f'differentiable head such as ColourMassReward')
        self.source, self.head, self.background = source, head, float(background)
        self.renormalize, self.kl, self.quantile = renormalize, bool(kl), float(quantile)

    # ---- masks ------------------------------------------------------------------------------
    def region_mask(self, rollout: Rollout, adv: Advantages) -> tuple[Tensor, Tensor]:
        """``(in_mask [B, A], empty [B])`` from the head's regions."""
        b, device = rollout.batch_size, rollout.action_mask.device
        rewards = getattr(adv, 'rewards', None) or {}
        if self.head not in rewards:
            raise ValueError(f'MaskPropagationSelector head={self.head!r} is not a reward head '
                             f'of this run; heads: {sorted(rewards)}')
        regions = rewards[self.head].regions
        if regions is None:
            none = torch.zeros(b, rollout.num_actions, dtype=torch.bool, device=device)
            return none, torch.ones(b, dtype=torch.bool, device=device)
        if regions.dim() != 3 or regions.shape[0] != b:
            raise ValueError(f'reward head {self.head!r} returned regions of shape '
                             f'{tuple(regions.shape)}; expected [B={b}, H, W]')
        mask = regions.to(device).float() >= 0.5
        return propagate_mask(mask, rollout.action_pos.to(device)), ~mask.flatten(1).any(1)

    def saliency_mask(self, rollout: Rollout, policy: Policy,
                      ctx: Optional[IterationContext]) -> tuple[Tensor, Tensor]:
        """``(in_mask [B, A], empty [B])`` from the reward's saliency per step input."""
        decode = getattr(policy, 'decode_with_step_inputs', None)
        if decode is None:
            raise ValueError(f"MaskPropagationSelector(source='saliency') needs "
                             f"{type(policy).__name__}.decode_with_step_inputs(rollout) -> "
                             f"(images, per-step inputs); VARPolicy has it, else use "
                             f"source='regions'")
        device = rollout.action_mask.device
        with torch.enable_grad():
            images, inputs = decode(rollout)
            scores = self.reward.differentiable_scores(images, rollout, ctx)
            masks, empty = saliency_grid_masks(list(inputs), scores, self.quantile)
        grid, row, col, sizes = action_grids(rollout.action_pos.to(device), rollout.batch_size)
        if len(masks) != len(sizes):
            raise ValueError(f'{type(policy).__name__}.decode_with_step_inputs returned '
                             f'{len(masks)} inputs but the actions form {len(sizes)} grids')
        by_grid = {}
        for (g, hw), m in zip(sorted(sizes.items()), masks):
            if tuple(m.shape[1:]) != hw:
                raise ValueError(f'step input {g} is {tuple(m.shape[1:])} cells but its actions '
                                 f'form a {hw} grid')
            by_grid[g] = m
        return grid_masks_to_actions(by_grid, grid, row, col), empty.to(device)

    # ---- the selector -----------------------------------------------------------------------
    def __call__(self, rollout: Rollout, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval],
                 adv: Advantages, *, policy: Policy, group_size: int,
                 ctx: Optional[IterationContext] = None) -> TokenWeights:
        active = rollout.action_mask
        steps = rollout.steps().to(active.device)
        if self.renormalize == 'per_step' and rollout.action_step.dim() == 1:
            if torch.unique(rollout.action_step).numel() == rollout.action_step.numel():
                raise ValueError("MaskPropagationSelector renormalize='per_step' on a rollout "
                                 "with one action per generation step (raster order) undoes the "
                                 "mask; use renormalize='per_sample'")
        if self.source == 'regions':
            in_mask, empty = self.region_mask(rollout, adv)
        else:
            in_mask, empty = self.saliency_mask(rollout, policy, ctx)
        w = gate_weights(in_mask, active, empty, background=self.background,
                         renormalize=self.renormalize, steps=steps)
        act = active.float()
        with torch.no_grad():
            frac = (in_mask & active).float().sum(1) / act.sum(1).clamp_min(1.0)   # [B]
            metrics = {
                'mask_propagation/mask_fraction': float(frac.mean()),
                'mask_propagation/mask_fraction_min': float(frac.min()),
                'mask_propagation/mask_fraction_max': float(frac.max()),
                'mask_propagation/empty_fraction': float(empty.float().mean()),
            }
        return TokenWeights(pg=w, kl=w.clone() if self.kl else act, metrics=metrics)
