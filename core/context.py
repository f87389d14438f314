"""``IterationContext``: what every component may know about the current RL iteration.

:class:`vargo.core.loop.GRPOLoop` builds one context per iteration
(:meth:`vargo.core.algorithm.RLAlgorithm.iteration_context`) and hands the same object to the
sampler (``ctx=``), every reward head (second positional argument), the advantage estimator,
the token selectors and the regularizers (``ctx=``). For each optimizer step the loop derives a
minibatch view (:meth:`IterationContext.for_minibatch`) that adds the all-rank totals of that
minibatch (one all-reduce).

It replaces the untyped ``ctx`` dict of earlier versions and :class:`RewardContext`, which is now
an alias of this class: ``policy``, ``reference``, ``sampler``, ``iteration`` and
``process_group`` are still attributes, and ``RewardContext()`` (all defaults) still builds an
empty context for tests that call a head directly.

Randomness: ``rng`` is the sampler's per-iteration :class:`~vargo.core.rng.BatchRNG`.
Components that need more randomness (a reward head that samples completions, a selector that
subsamples actions) draw it from :meth:`IterationContext.stream` with a name of their own: the
stream is seeded by ``(seed, iteration, name)`` only, draws for the *global* batch and keeps
this rank's rows, so a 2-process run equals the 1-process run and a resumed run draws exactly
what the uninterrupted run drew (nothing is carried between iterations). Never use torch's
global generator in a component.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from . import dist as vdist
from .rng import BatchRNG

__all__ = ['IterationContext', 'RewardContext']


@dataclass
class IterationContext:
    """The current RL iteration, seen by every component (see the module docstring).

    Attributes:
        iteration: 0-based RL iteration.
        max_iters: RL iterations of the run (0: unknown).
        seed: base seed of the run's sampling noise.
        rng: the sampler's :class:`BatchRNG` of this iteration, or None.
        group_size: G, samples per condition.
        local_samples: rollout samples on this rank (``num_groups * group_size``).
        rank, world_size: this process's position.
        policy: the trained policy (read-only for rewards).
        reference: the frozen reference policy, or None.
        sampler: the sampler, for components that complete partial rollouts.
        process_group: the torch.distributed group for distribution-level heads (None: the
            default group when distributed).
        minibatch_samples: samples of the current minibatch on this rank (minibatch view only).
        global_minibatch_samples: samples of the current minibatch over all ranks (all-reduced).
        global_active_actions: active actions (``action_mask``) of the current minibatch over
            all ranks (all-reduced); DAPO's ``global_token_mean`` divides by it.
    """

    iteration: int = 0
    max_iters: int = 0
    seed: int = 0
    rng: Optional[BatchRNG] = None
    group_size: int = 1
    local_samples: int = 0
    rank: int = 0
    world_size: int = 1
    policy: Any = None
    reference: Any = None
    sampler: Any = None
    process_group: Any = None
    minibatch_samples: Optional[int] = None
    global_minibatch_samples: Optional[int] = None
    global_active_actions: Optional[float] = None

    # ---- iteration and progress --------------------------------------------------------
    @property
    def step(self) -> int:
        """1-based iteration (``step`` of ``max_iters``, as logs print it)."""
        return self.iteration + 1

    @property
    def progress(self) -> float:
        """Fraction of training done before this iteration, in [0, 1]."""
        return min(1.0, max(0.0, self.iteration / max(1, self.max_iters)))

    # ---- group structure ---------------------------------------------------------------
    @property
    def num_groups(self) -> int:
        """Groups on this rank."""
        return self.local_samples // max(1, self.group_size)

    @property
    def sample_offset(self) -> int:
        """Global index of this rank's first sample (ranks hold contiguous blocks, rank-major)."""
        return self.rank * self.local_samples

    @property
    def global_samples(self) -> int:
        """Rollout samples of this iteration over all ranks (every rank holds the same number)."""
        return self.local_samples * self.world_size

    # ---- randomness --------------------------------------------------------------------
    def stream(self, name: str, local_batch: Optional[int] = None,
               device: torch.device | str | None = None) -> BatchRNG:
        """A rank-invariant random stream of this iteration, keyed by ``name``.

        Rows are rank-major over the global batch of ``local_batch * world_size`` rows (default
        ``local_batch``: this rank's samples), so row ``i`` of the global batch gets the same
        numbers for any number of ranks. Calling it twice with one name restarts the stream;
        use distinct names (e.g. ``'rewards.loo_fid/completions'``) for independent streams.
        """
        if not name:
            raise ValueError('IterationContext.stream needs a non-empty name (the empty name is '
                             "the sampler's own stream, ctx.rng)")
        if device is None:
            device = self.rng.device if self.rng is not None else 'cpu'
        return BatchRNG(self.seed, self.iteration,
                        self.local_samples if local_batch is None else int(local_batch),
                        rank=self.rank, world_size=self.world_size, device=device, stream=name)

    # ---- minibatch totals --------------------------------------------------------------
    def for_minibatch(self, action_mask: Tensor) -> 'IterationContext':
        """A copy carrying the all-rank totals of a minibatch with this rank's ``action_mask``
        ``[b, A]`` (one all-reduce when distributed; every rank must call it)."""
        local = torch.stack([torch.tensor(float(action_mask.shape[0]), dtype=torch.float64),
                             action_mask.sum().to('cpu', torch.float64)]).to(action_mask.device)
        if vdist.is_distributed():
            local = vdist.all_reduce_sum(local, group=self.process_group)
        n_samples, n_active = local.tolist()
        return dataclasses.replace(self, minibatch_samples=int(action_mask.shape[0]),
                                   global_minibatch_samples=int(n_samples),
                                   global_active_actions=float(n_active))

    def aggregation_totals(self) -> dict:
        """The totals :func:`vargo.core.objective.aggregate` reads (its ``ctx`` dict)."""
        out: dict = {'group_size': self.group_size, 'world_size': self.world_size}
        if self.minibatch_samples is not None:
            out['num_samples'] = self.minibatch_samples
        if self.global_active_actions is not None:
            out['global_num_tokens'] = self.global_active_actions
        return out


#: the reward heads' context of earlier versions: the same object
RewardContext = IterationContext
