"""The rollout template every sampler shares, and the build-time check of decoding protocols.

A sampler drives a model only through a *decoding protocol*: a ``typing.Protocol`` naming the
methods and attributes the sampler calls (``ARSampler.protocol`` is
:class:`~vargo.components.samplers.ar_sampler.RasterDecoding`, ``NextScaleSampler``'s is
:class:`~vargo.components.samplers.next_scale.NextScaleDecoding`, ``MaskedSampler``'s is
:class:`~vargo.components.samplers.masked.MaskedDecoding`). A policy implements a protocol by
having those members; it never imports the sampler. :meth:`RolloutSampler.check_policy` runs when
the algorithm is built, so a sampler paired with a policy of another kind fails before any model
runs, with one line naming the missing members and the samplers the policy does implement.

:meth:`RolloutSampler.rollout` is the template of every rollout (the iteration's order of events):

1. check ``group_size`` and the prefix (``prefix``/``stop_at_step``: a partial rollout to
   complete, see :class:`vargo.core.types.Rollout`);
2. put the policy in eval mode (restored afterwards, also on error);
3. encode the conditions and repeat each ``group_size`` times (groups contiguous);
4. check that ``rng`` draws for exactly this many samples;
5. :meth:`RolloutSampler._sample` (the family's generation loop) returns the Rollout;
6. set ``group_ids`` and decode the images (``decode_images``).
"""
from __future__ import annotations

import abc
from typing import ClassVar, Optional

import torch

from vargo.core.interfaces import Policy, Sampler
from vargo.core.registry import SAMPLERS
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, Rollout

__all__ = ['RolloutSampler', 'protocol_members', 'missing_members', 'check_protocol']


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The names a ``typing.Protocol`` class declares (methods, properties and annotated
    attributes of the class and its protocol bases), sorted."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass in (object,) or klass.__module__ == 'typing':
            continue
        names.update(getattr(klass, '__annotations__', {}))
        names.update(k for k in vars(klass) if not k.startswith('_'))
    return tuple(sorted(names))


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (empty: ``obj`` implements it)."""
    return [name for name in protocol_members(protocol) if not hasattr(obj, name)]


def _samplers_for(policy: object) -> list[str]:
    """Names of the registered samplers whose protocol ``policy`` implements."""
    names = []
    for name, cls in sorted(SAMPLERS.module_dict.items()):
        proto = getattr(cls, 'protocol', None)
        if proto is not None and not missing_members(policy, proto):
            names.append(name)
    return names


def check_protocol(sampler: object, policy: object, protocol: type) -> None:
    """Raise ``ValueError`` (one line) when ``policy`` lacks a member of ``protocol``: the
    sampler, the policy, the missing members and the samplers that can drive the policy."""
    missing = missing_members(policy, protocol)
    if not missing:
        return
    s, p = type(sampler).__name__, type(policy).__name__
    usable = _samplers_for(policy)
    fix = (f'use {" or ".join(usable)} (the sampler{"s" if len(usable) > 1 else ""} {p} '
           f'implements) as sampler.type' if usable else
           f'implement {protocol.__name__} on {p} (see {type(sampler).__module__})')
    raise ValueError(f'{s} cannot drive {p}: it lacks the {protocol.__name__} decoding protocol '
                     f'({", ".join(missing)}); {fix}')


class RolloutSampler(Sampler):
    """A sampler built on the shared rollout template (see the module doc).

    Subclasses set :attr:`protocol` and :attr:`step_unit` and implement :meth:`num_steps_of`
    and :meth:`_sample`; they may extend :meth:`_check_prefix`.
    """

    #: the decoding protocol a policy must implement to be driven by this sampler
    protocol: ClassVar[type]
    #: what one decode step is called in messages ('tokens', 'scales', 'AR steps')
    step_unit: ClassVar[str] = 'steps'

    def __init__(self, *, decode_images: bool):
        self.decode_images = decode_images

    def check_policy(self, policy: Policy) -> None:
        """Raise ``ValueError`` naming the fix when ``policy`` does not implement
        :attr:`protocol` (run when the algorithm is built, and by every rollout)."""
        check_protocol(self, policy, self.protocol)

    @abc.abstractmethod
    def num_steps_of(self, policy: Policy) -> int:
        """Decode steps of a rollout of ``policy`` (what ``stop_at_step`` counts)."""

    @abc.abstractmethod
    def _sample(self, policy: Policy, cond: Conditions, *, rng: Optional[BatchRNG],
                prefix: Optional[Rollout], kept: int, group_size: int) -> Rollout:
        """The family's generation loop: one sample per row of ``cond`` (already repeated G
        times and encoded; the policy in eval mode, no grad). ``prefix`` (``len(cond) / G``
        rows, one per group) and ``kept`` > 0 when completing a partial rollout. Returns the
        Rollout without ``group_ids`` and ``images`` (the template sets them)."""

    def _check_prefix(self, policy: Policy, prefix: Rollout, kept: int, rows: int) -> None:
        """Raise ``ValueError`` when ``prefix`` cannot be completed keeping ``kept`` steps."""
        num_steps = self.num_steps_of(policy)
        if not 0 < kept < num_steps:
            raise ValueError(f'stop_at_step={kept} must be in (0, {num_steps}) {self.step_unit} '
                             f'to keep from the prefix rollout')
        if rows != prefix.batch_size:
            raise ValueError(f'cond has {rows} rows but the prefix rollout has '
                             f'{prefix.batch_size} samples: pass prefix.cond')

    @torch.no_grad()
    def rollout(self, policy: Policy, cond: Conditions, *, group_size: int,
                rng: Optional[BatchRNG] = None, prefix: Optional[Rollout] = None,
                stop_at_step: Optional[int] = None, ctx=None) -> Rollout:
        """Sample ``group_size`` samples per condition, or complete a prefix rollout.

        Args:
            policy: a policy implementing :attr:`protocol`.
            cond: one row per group (without ``prefix``), or one row per prefix sample.
            group_size: G; the samples of a group are contiguous (``group_ids``).
            rng: the noise source (its ``local_batch`` must be ``len(cond) * G``), or None for
                the official draws on the global generators.
            prefix: a rollout to continue: sample ``j`` of ``prefix`` is completed G times, its
                first ``stop_at_step`` decode steps kept (out of ``action_mask``, ``logp_old``
                recomputed teacher-forced under :meth:`logprob_spec`); the completions of one
                prefix sample form group ``j``.
            stop_at_step: with ``prefix``: the decode steps kept (default
                ``prefix.prefix_steps``); ``0 < stop_at_step <`` :meth:`num_steps_of`.
            ctx: the iteration's context (unused by the template).
        """
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f'group_size={group_size!r} must be an int >= 1')
        if prefix is None:
            if stop_at_step is not None:
                raise ValueError(f'stop_at_step is the number of {self.step_unit} kept from a '
                                 f'prefix and needs prefix=<a Rollout>: sample full rollouts, '
                                 f'then complete them with rollout(..., prefix=rollout, '
                                 f'stop_at_step=m)')
            kept = 0
        else:
            kept = prefix.prefix_steps if stop_at_step is None else int(stop_at_step)
            self._check_prefix(policy, prefix, kept, len(cond))
        self.check_policy(policy)
        was_training = policy.training
        policy.eval()
        try:
            cond_rep = policy.encode_conditions(cond).repeat_interleave(group_size)
            if rng is not None and rng.local_batch != len(cond_rep):
                raise ValueError(f'rng draws for {rng.local_batch} samples but the rollout has '
                                 f'{len(cond_rep)} (= {len(cond)} conditions x G={group_size}); '
                                 f'build BatchRNG with local_batch={len(cond_rep)}')
            out = self._sample(policy, cond_rep, rng=rng, prefix=prefix, kept=kept,
                               group_size=group_size)
        finally:
            policy.train(was_training)
        out.group_ids = torch.arange(len(cond), device=out.actions.device
                                     ).repeat_interleave(group_size)
        if self.decode_images:
            out.images = policy.decode(out)
        return out
