"""The action axis of raster-order token models (LlamaGen, the VQGAN transformer, Janus-Pro)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ['register_raster_action_axis']


def register_raster_action_axis(module: nn.Module, grid: int) -> None:
    """Register the non-persistent buffers ``action_step [T]`` (step ``t`` = token ``t``) and
    ``action_pos [T, 2]`` (its ``(row, col)`` cell), ``T = grid * grid``, on ``module``.

    Examples:
        >>> m = nn.Module(); register_raster_action_axis(m, 2)
        >>> m.action_step.tolist(), m.action_pos.tolist()
        ([0, 1, 2, 3], [[0, 0], [0, 1], [1, 0], [1, 1]])
    """
    rows = torch.arange(grid).repeat_interleave(grid)
    cols = torch.arange(grid).repeat(grid)
    module.register_buffer('action_step', torch.arange(grid * grid), persistent=False)
    module.register_buffer('action_pos', torch.stack([rows, cols], dim=1), persistent=False)
