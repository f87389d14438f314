"""``VMRSampler``: the update schedule of VMR (value as middle return, VAR RL Done Right,
arXiv 2601.02256; docs/methods/var_rl.md, section 1) as a wrapper around any sampler that
completes partial rollouts (``NextScaleSampler``, ``ARSampler``, ``MaskedSampler``).

The decode steps are split at ``m = split_step``. Iterations cycle through ``prefix_updates``
prefix updates, then ``suffix_updates`` suffix updates (the paper: 3 then 1); the phase depends
only on ``ctx.iteration``, so a resumed run repeats the schedule exactly. *Our formulation* (the
paper does not spell the updates out):

* prefix phase: the inner sampler's rollout of ``G`` samples per condition (noise ``ctx.rng``)
  with ``action_mask &= step < m``: only prefix actions are trained. The reward
  (:class:`~vargo.components.rewards.vmr.VMRReward`) scores each sample by the soft value of its
  prefix, ``V = eta log mean_k exp(R_k / eta)`` over on-policy completions.
* suffix phase: one shared prefix per condition (an inner rollout with ``group_size=1``, noise
  from the named stream ``ctx.stream('vmr/shared_prefix', local_batch=len(cond))``), completed
  ``G`` times (``prefix=..., stop_at_step=m``, noise ``ctx.rng``): a group is ``G`` suffixes of one
  prefix, the prefix actions are out of ``action_mask``, the reward is the terminal one.

Every draw comes from ``ctx.rng`` or a named ``ctx`` stream (rank-invariant, seeded by seed,
iteration and name), so 2 ranks sample the rows of 1 rank and a resumed iteration redraws the
same samples. Direct calls with ``ctx=None`` are iteration 0 (the shared prefix, if any, then
draws from torch's global generator). Calls with ``prefix=`` are passed to the inner sampler
unchanged (what the reward's completions use). Attributes the wrapper lacks (``decode_images``,
``num_steps_of``, ``num_actions``, ``release_cache``, ...) are the inner sampler's.
"""
from __future__ import annotations

from typing import Optional

from vargo.core.interfaces import Policy, Sampler
from vargo.core.registry import SAMPLERS, ConfigError, checked_build
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, LogprobSpec, Rollout

from .checks import check_int

__all__ = ['VMRSampler', 'VMR_PHASES', 'SHARED_PREFIX_STREAM']

VMR_PHASES = ('prefix', 'suffix')
#: the named ctx stream of the suffix phase's shared prefixes
SHARED_PREFIX_STREAM = 'vmr/shared_prefix'


@SAMPLERS.register_module()
class VMRSampler(Sampler):
    """Alternates VMR prefix and suffix updates around an inner sampler (see the module doc).

    Args:
        sampler: the inner ``SAMPLERS`` config (or a built sampler); it must complete partial
            rollouts (``rollout(..., prefix=, stop_at_step=)`` and ``num_steps_of(policy)``).
        split_step: m, the decode steps of the prefix (VAR: scales; raster: tokens, e.g.
            ``k * row_width`` for a split at token row k; MAR: AR steps); ``0 < m < S``,
            checked against the policy when the algorithm is built.
        prefix_updates: prefix-phase iterations per cycle (paper: 3).
        suffix_updates: suffix-phase iterations per cycle (paper: 1); the cycle starts with
            the prefix updates.
    """

    def __init__(self, *, sampler, split_step: int, prefix_updates: int = 3,
                 suffix_updates: int = 1):
        check_int('VMRSampler', 'split_step', split_step, lo=1,
                  hint='the decode steps of the prefix (VAR: scales), 0 < m < steps of a rollout')
        check_int('VMRSampler', 'prefix_updates', prefix_updates, lo=0,
                  hint='prefix-phase iterations per cycle (paper: 3)')
        check_int('VMRSampler', 'suffix_updates', suffix_updates, lo=0,
                  hint='suffix-phase iterations per cycle (paper: 1)')
        if prefix_updates + suffix_updates < 1:
            raise ValueError('VMRSampler prefix_updates=0 and suffix_updates=0 leave no '
                             'iteration in the cycle; set at least one >= 1 (paper: 3 and 1)')
        if isinstance(sampler, dict) and sampler.get('type') in ('VMRSampler', VMRSampler):
            raise ConfigError('VMRSampler sampler= is another VMRSampler; wrap the family '
                              "sampler once, e.g. sampler=dict(type='NextScaleSampler', ...)")
        inner = sampler if isinstance(sampler, Sampler) else checked_build(sampler, SAMPLERS)
        if not callable(getattr(inner, 'num_steps_of', None)):
            raise ConfigError(f'VMRSampler sampler={type(inner).__name__} cannot complete '
                              f'partial rollouts (no num_steps_of); use NextScaleSampler, '
                              f'ARSampler or MaskedSampler')
        self.inner = inner
        self.split_step = int(split_step)
        self.prefix_updates = int(prefix_updates)
        self.suffix_updates = int(suffix_updates)

    def __repr__(self) -> str:
        """The inner sampler and the settings."""
        return (f'VMRSampler({self.inner!r}, split_step={self.split_step}, '
                f'prefix_updates={self.prefix_updates}, suffix_updates={self.suffix_updates})')

    def __getattr__(self, name: str):
        """The inner sampler's attribute (only called for names the wrapper lacks)."""
        if name == 'inner' or name.startswith('__'):
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ---- schedule ---------------------------------------------------------------------------
    def phase(self, iteration: int) -> str:
        """``'prefix'`` if ``iteration mod (P + S) < P`` else ``'suffix'`` (P, S: the updates of
        each phase per cycle; prefix updates first)."""
        cycle = self.prefix_updates + self.suffix_updates
        return 'prefix' if int(iteration) % cycle < self.prefix_updates else 'suffix'

    def phase_of(self, ctx) -> str:
        """The phase of the iteration of ``ctx`` (None: iteration 0)."""
        return self.phase(0 if ctx is None else ctx.iteration)

    # ---- delegation -------------------------------------------------------------------------
    def evaluation_sampler(self) -> Sampler:
        """The wrapped sampler: evaluation and previews draw whole samples, no VMR schedule."""
        return self.inner.evaluation_sampler()

    def logprob_spec(self) -> LogprobSpec:
        """The inner sampler's spec."""
        return self.inner.logprob_spec()

    def check_policy(self, policy: Policy) -> None:
        """The inner sampler's check, and ``0 < split_step < S`` decode steps of ``policy``."""
        self.inner.check_policy(policy)
        steps = int(self.inner.num_steps_of(policy))
        if not 0 < self.split_step < steps:
            unit = getattr(self.inner, 'step_unit', 'steps')
            raise ValueError(f'VMRSampler split_step={self.split_step} must be in (0, {steps}): '
                             f'{type(policy).__name__} is decoded in {steps} {unit}; set '
                             f'split_step between 1 and {steps - 1}')

    # ---- rollouts ---------------------------------------------------------------------------
    def rollout(self, policy: Policy, cond: Conditions, *, group_size: int,
                rng: Optional[BatchRNG] = None, prefix: Optional[Rollout] = None,
                stop_at_step: Optional[int] = None, ctx=None) -> Rollout:
        """The rollout of the iteration's phase (module doc); with ``prefix`` the inner
        sampler's completion, unchanged."""
        if prefix is not None or stop_at_step is not None:
            return self.inner.rollout(policy, cond, group_size=group_size, rng=rng,
                                      prefix=prefix, stop_at_step=stop_at_step, ctx=ctx)
        m = self.split_step
        if self.phase_of(ctx) == 'prefix':
            out = self.inner.rollout(policy, cond, group_size=group_size, rng=rng, ctx=ctx)
            out.action_mask = out.action_mask & (out.steps() < m).to(out.action_mask.device)
            return out
        shared = self.shared_prefixes(policy, cond, ctx)
        return self.inner.rollout(policy, shared.cond, group_size=group_size, rng=rng,
                                  prefix=shared, stop_at_step=m, ctx=ctx)

    def shared_prefixes(self, policy: Policy, cond: Conditions, ctx=None) -> Rollout:
        """One rollout per condition (images not decoded), whose first ``split_step`` steps the
        suffix phase completes; noise ``ctx.stream('vmr/shared_prefix', local_batch=len(cond))``
        (``ctx=None``: torch's global generator)."""
        rng = None if ctx is None else ctx.stream(SHARED_PREFIX_STREAM, local_batch=len(cond))
        decodes = getattr(self.inner, 'decode_images', None)
        if decodes:
            self.inner.decode_images = False      # only its tokens are used
        try:
            return self.inner.rollout(policy, cond, group_size=1, rng=rng, ctx=ctx)
        finally:
            if decodes:
                self.inner.decode_images = decodes
