"""The interfaces every registered component implements; registries check them at build time.

A component is an ordinary class registered in one of the six component registries of
:mod:`vargo.core.registry`. The abstract base classes below fix the call signatures the shared
runner relies on; all batches are the dataclasses of :mod:`vargo.core.types`.

Every component is told about the current iteration the same way: the loop's
:class:`vargo.core.context.IterationContext` is passed as ``ctx`` (the keyword ``ctx=`` for
samplers, advantage estimators, token selectors and regularizers; the second positional argument
of a reward head, as before). It carries the iteration and progress, named rank-invariant RNG
streams, the group structure and the all-rank totals of the minibatch. Direct calls (tests,
tools) may leave it out: ``ctx=None`` must keep working (reward heads get ``RewardContext()``).
"""
from __future__ import annotations

import abc
import copy
from typing import Optional

import torch
from torch import Tensor, nn

from .rng import BatchRNG
from .context import IterationContext
from .types import (Advantages, Conditions, LogprobSpec, PolicyEval, RewardContext,
                    RewardOutput, Rollout, TokenWeights)

__all__ = ['Policy', 'Sampler', 'RewardHead', 'AdvantageEstimator', 'TokenSelector',
           'Regularizer', 'Stateful']


class Stateful:
    """Mixin for components with state that must survive a checkpoint (EMA moments, ...)."""

    def state_dict(self) -> dict:  # pragma: no cover - overridden
        return {}

    def load_state_dict(self, state: dict) -> None:  # pragma: no cover - overridden
        pass


class Policy(nn.Module, abc.ABC):
    """A generator whose actions have log-probabilities.

    Subclasses own their tokenizer/decoder and condition encoder. ``num_actions`` is A.
    """

    @abc.abstractmethod
    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Fill what the model needs from ``cond`` (e.g. text embeddings); no grad."""

    @abc.abstractmethod
    def evaluate(self, rollout: Rollout, *, spec: LogprobSpec,
                 with_entropy: bool = True) -> PolicyEval:
        """Teacher-forced log-probs ``[B, A]`` (and entropy) of the rollout's actions in one forward."""

    @abc.abstractmethod
    def decode(self, rollout: Rollout) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] for the rollout's actions."""

    def embed_actions(self, rollout: Rollout) -> Tensor:
        """``[B, A, D]`` codebook vectors of the sampled tokens (discrete families)."""
        raise TypeError(f'{type(self).__name__} has no codebook: token selectors that compare '
                        f'action embeddings need a discrete-token policy')

    def trainable_parameters(self):
        """Parameters the optimiser updates (frozen tokenizers and text encoders excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def shard_units(self) -> list[nn.Module]:
        """Sub-modules to shard one by one for sharded training (``model_wrapper_cfg=dict(
        type='VargoFSDP')``, :mod:`vargo.core.sharding`): the transformer blocks, then the
        modules holding the other trainable parameters (token embedding, final norm).

        Together they must hold every trainable parameter; none may contain another; each must
        be entered only through its ``forward`` (its parameters are gathered around it), and
        none may share a parameter with a module outside it. The default, none, means the
        policy cannot be sharded (a one-line error when a config asks for it).
        """
        return []


class Sampler(abc.ABC):
    """Owns the generation procedure of one policy family."""

    @abc.abstractmethod
    def rollout(self, policy: Policy, cond: Conditions, *, group_size: int,
                rng: Optional['BatchRNG'] = None, prefix: Optional[Rollout] = None,
                stop_at_step: Optional[int] = None,
                ctx: Optional[IterationContext] = None) -> Rollout:
        """Sample ``group_size`` samples per condition (``cond`` has one row per group).

        All sampling noise is drawn from ``rng`` (a :class:`vargo.core.rng.BatchRNG`; None:
        one seeded from torch's global generator), so a run split over N ranks samples exactly
        what the single-process run samples. ``prefix``/``stop_at_step`` give partial rollouts
        (see :mod:`vargo.core.types`). ``ctx`` is the iteration's context when the loop calls
        (``ctx.iteration``, e.g. to alternate strategies), None on direct calls; ``ctx.rng`` is
        ``rng``.
        """

    @abc.abstractmethod
    def logprob_spec(self) -> LogprobSpec:
        """The distribution ``logp_old`` is recorded under (policy evaluation must match it)."""

    #: settings that serve training iterations only (recorded extras, extra actions for the
    #: loss), as ``{name: value that switches it off}``: the evaluation sampler has these values,
    #: and tools record them so in the evaluation protocol (``vargo.core.cli.
    #: evaluation_sampler_cfg``). Each name is a constructor argument and an attribute.
    TRAINING_ONLY: dict = {}

    def evaluation_sampler(self) -> 'Sampler':
        """The sampler that draws samples outside training iterations (evaluation, previews,
        ``tools/sample.py``): this one with its :attr:`TRAINING_ONLY` settings switched off
        (itself when they already are), or for a wrapper that changes what training iterations
        sample (a schedule of partial rollouts) the sampler it wraps."""
        off = {k: v for k, v in self.TRAINING_ONLY.items() if getattr(self, k) != v}
        if not off:
            return self
        twin = copy.copy(self)
        for name, value in off.items():
            setattr(twin, name, value)
        return twin

    def check_policy(self, policy: Policy) -> None:
        """Raise ``ValueError`` naming the fix when this sampler cannot sample ``policy``.

        Called once when an algorithm is built, so a mismatched policy/sampler pair fails before
        any model is run. The default accepts every policy.
        """


class RewardHead(abc.ABC):
    """Scores decoded samples: ``head(rollout, ctx) -> RewardOutput``.

    ``ctx`` is the iteration's :class:`~vargo.core.context.IterationContext` (``RewardContext``
    is the same class): ``ctx.policy``, ``ctx.reference``, ``ctx.sampler``, ``ctx.iteration``,
    ``ctx.process_group``, and ``ctx.stream(name)`` for any randomness the head needs.
    """

    #: distribution-level heads see the whole batch of all ranks and may keep state
    distribution_level: bool = False

    def evaluation_head(self) -> 'RewardHead':
        """The head that scores samples outside training iterations (``tools/eval.py``): this
        one, or for a wrapper that changes what training iterations are rewarded with (VMR's
        prefix values) the head it wraps."""
        return self

    @abc.abstractmethod
    def __call__(self, rollout: Rollout, ctx: RewardContext) -> RewardOutput:
        ...


class AdvantageEstimator(abc.ABC):
    """Turns rewards (one ``RewardOutput`` per named head) into advantage streams ``[B, A]``.

    The runner passes the rewards of *all ranks* (gathered, groups contiguous, rank-major) and
    keeps the rows of its own samples, so batch-wide statistics are global.
    """

    @abc.abstractmethod
    def __call__(self, rewards: dict[str, RewardOutput], *, group_size: int,
                 num_actions: int, ctx: Optional[IterationContext] = None) -> Advantages:
        ...


class TokenSelector(abc.ABC):
    """Per-action weights for the policy and KL terms; composed by multiplication."""

    @abc.abstractmethod
    def __call__(self, rollout: Rollout, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval],
                 adv: Advantages, *, policy: Policy, group_size: int,
                 ctx: Optional[IterationContext] = None) -> TokenWeights:
        """``adv.rewards[head]`` holds each reward head's output for these rows (``regions``,
        ``per_step``, ``weights``); ``ctx`` is the minibatch's context."""

    #: the aggregation this selector's weights are meant for, or None (keep the objective's)
    aggregation: Optional[str] = None


class Regularizer(abc.ABC):
    """Returns named terms: ``out["loss"]`` is added to the objective; every other entry is
    logged (detached) under the regularizer's name. Nothing else is ever backpropagated."""

    @abc.abstractmethod
    def __call__(self, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval], rollout: Rollout,
                 weights: TokenWeights, *, progress: float,
                 ctx: Optional[IterationContext] = None) -> dict[str, Tensor]:
        """``progress`` is the fraction of training done (``ctx.progress``); ``ctx`` the
        minibatch's context, which :func:`vargo.core.objective.aggregate` accepts as its
        aggregation context (totals over the optimizer batch and all ranks)."""

    #: whether this regularizer needs the frozen reference's evaluation
    needs_reference: bool = False
