"""Small torch.distributed helpers that degrade to no-ops in a single process."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ['is_distributed', 'rank', 'world_size', 'all_gather_cat', 'all_reduce_sum',
           'all_gather_object', 'init_cpu_process_group']


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_cat(x: Tensor, group=None) -> Tensor:
    """Concatenate equal-shaped tensors of every rank along dim 0 (rank-major)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: Tensor, group=None) -> Tensor:
    """Sum of ``x`` over ranks (a new tensor; ``x`` is untouched)."""
    if not is_distributed():
        return x.clone()
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
    return y


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def init_cpu_process_group() -> bool:
    """Initialise gloo from torchrun's environment when no GPU is present.

    MMEngine's ``launcher='pytorch'`` calls ``torch.cuda.set_device``, which fails on CPU; on
    CPU vargo initialises gloo itself and tells the Runner it is already distributed. Returns
    True if a process group was created.
    """
    if is_distributed() or 'RANK' not in os.environ or torch.cuda.is_available():
        return False
    dist.init_process_group(backend='gloo')
    return True
