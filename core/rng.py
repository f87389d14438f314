"""Sampling randomness that does not depend on how the batch is split across ranks.

A 2-process run must equal the 1-process run with the same global batch (docs/design.md,
"Reproducibility across ranks").
Samplers therefore draw their noise through :class:`BatchRNG`: every draw is made for the
*global* batch from a generator seeded by ``(seed, iteration)`` and each rank keeps its own rows
(rank-major, the layout of :class:`ContiguousInfiniteSampler`). The extra cost is drawing
``world_size`` times more uniforms than needed, negligible next to a forward pass.
"""
from __future__ import annotations

import hashlib
import itertools
from typing import Iterator, Optional, Sequence

import torch
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import Registry
from torch import Tensor
from torch.utils.data import Sampler as TorchSampler

from . import dist as vdist

__all__ = ['BatchRNG', 'ContiguousInfiniteSampler', 'DATA_SAMPLERS']

DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS, scope='vargo',
                         locations=['vargo.core.rng'])


class BatchRNG:
    """Uniform / normal draws for a rank's rows of a global batch.

    Args:
        seed: base seed of the run.
        iteration: the RL iteration (each iteration gets an independent stream).
        local_batch: rows on this rank.
        rank, world_size: this rank's position (default: from torch.distributed).
        device: where the draws are returned.
        stream: name of an extra stream of the same iteration ('' : the sampler's own stream);
            named streams are seeded by ``(seed, iteration, stream)`` through SHA-256, so they
            are independent of the sampler's stream and of each other
            (:meth:`vargo.core.context.IterationContext.stream`).
    """

    def __init__(self, seed: int, iteration: int, local_batch: int, *,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 device: torch.device | str = 'cpu', stream: str = ''):
        self.rank = vdist.rank() if rank is None else rank
        self.world_size = vdist.world_size() if world_size is None else world_size
        self.local_batch = local_batch
        self.device = torch.device(device)
        self.generator = torch.Generator(device='cpu')
        if stream:
            key = f'{int(seed)}/{int(iteration)}/{stream}'.encode()
            self.generator.manual_seed(
                int.from_bytes(hashlib.sha256(key).digest()[:8], 'little') % (2 ** 63))
        else:
            self.generator.manual_seed(
                (int(seed) * 1_000_003 + int(iteration) * 7919) % (2 ** 63))
        self._rows = slice(self.rank * local_batch, (self.rank + 1) * local_batch)

    def rand(self, *shape: int) -> Tensor:
        """``[local_batch, *shape]`` uniforms in [0, 1)."""
        full = torch.rand((self.local_batch * self.world_size, *shape), generator=self.generator)
        return full[self._rows].to(self.device)

    def randn(self, *shape: int) -> Tensor:
        """``[local_batch, *shape]`` standard normals."""
        full = torch.randn((self.local_batch * self.world_size, *shape), generator=self.generator)
        return full[self._rows].to(self.device)

    def rand_shared(self, *shape: int) -> Tensor:
        """Uniforms shared by the whole global batch (e.g. one random order per iteration)."""
        return torch.rand(shape, generator=self.generator).to(self.device)


@DATA_SAMPLERS.register_module()
class ContiguousInfiniteSampler(TorchSampler):
    """Infinite, seeded, shuffled index stream; each rank takes a contiguous block of every
    global batch, so the global batch (rank-major) is the same for any number of ranks.

    Args:
        dataset: the dataset (only its length is used).
        batch_size: conditions per rank per iteration (the dataloader's batch size).
        shuffle: reshuffle at every pass over the dataset.
        seed: shuffling seed (default 0).
    """

    def __init__(self, dataset: Sequence, *, batch_size: int, shuffle: bool = True,
                 seed: Optional[int] = None):
        self.size = len(dataset)
        if self.size == 0:
            raise ValueError('the condition dataset is empty')
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = 0 if seed is None else int(seed)
        self.rank, self.world_size = vdist.rank(), vdist.world_size()

    def _global_stream(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=g).tolist()
            else:
                yield from range(self.size)

    def __iter__(self) -> Iterator[int]:
        stream = self._global_stream()
        per_global = self.batch_size * self.world_size
        lo = self.rank * self.batch_size
        while True:
            block = list(itertools.islice(stream, per_global))
            yield from block[lo:lo + self.batch_size]

    def __len__(self) -> int:
        return self.size
