"""Test-only components that inject faults into toy runs (tests/test_run_faults.py).

* ``FaultyReward``: ToyPolicy image brightness (like ``ToyBrightnessReward``), raising at one
  iteration (``fail_at_iter``, 0-based; None: never).
* ``AllNaNReward``: NaN for every sample.
* ``NaNLossOnce``: a regularizer adding 0 to the loss, and NaN at its ``at_call``-th call
  (0-based; one call per optimizer step), optionally on one rank only.
* ``ScaledLogpLoss``: a regularizer with huge but finite gradients.
* ``StrictToySampler``: ToySampler that fails on non-finite probabilities (as real samplers do on
  a diverged policy), or at one call (``fail_at_call``).
* ``ParamTraceHook``: records the policy's trainable weights and the optimizer step count after
  every iteration.
"""
from __future__ import annotations

from typing import Optional

import torch
from mmengine.hooks import Hook

import toy_components  # noqa: F401  (registers the toy family)
from vargo.core import dist as vdist
from vargo.core.interfaces import Regularizer, RewardHead
from vargo.core.registry import HOOKS, REGULARIZERS, REWARD_HEADS
from vargo.core.types import RewardOutput


@REWARD_HEADS.register_module(force=True)
class FaultyReward(RewardHead):
    """Mean image brightness; raises ``ValueError`` at iteration ``fail_at_iter`` (0-based)."""

    def __init__(self, *, fail_at_iter: Optional[int] = None):
        self.fail_at_iter = fail_at_iter

    def __call__(self, rollout, ctx):
        if self.fail_at_iter is not None and ctx.iteration == self.fail_at_iter:
            raise ValueError('injected failure: cannot score these images')
        return RewardOutput(scores=rollout.images.float().mean(dim=(1, 2, 3)))


@REWARD_HEADS.register_module(force=True)
class AllNaNReward(RewardHead):
    """NaN for every sample (an unscorable batch)."""

    def __call__(self, rollout, ctx):
        return RewardOutput(scores=torch.full((rollout.batch_size,), float('nan')))


@REGULARIZERS.register_module(force=True)
class NaNLossOnce(Regularizer):
    """Adds 0 to the loss, and NaN at call ``at_call`` (0-based) on rank ``rank`` (None: all)."""

    def __init__(self, *, at_call: int, rank: Optional[int] = None):
        self.at_call = at_call
        self.rank = rank
        self.calls = 0

    def __call__(self, policy_eval, ref_eval, rollout, weights, *, progress, ctx=None):
        hit = self.calls == self.at_call and (self.rank is None or vdist.rank() == self.rank)
        self.calls += 1
        value = float('nan') if hit else 0.0
        return {'loss': torch.tensor(value, device=policy_eval.logp.device),
                'injected_nan': torch.tensor(float(hit))}


@HOOKS.register_module(force=True)
class ParamTraceHook(Hook):
    """``self.trace[i]``: (trainable weights, Adam step count) after iteration ``i + 1``."""

    priority = 'LOWEST'

    def __init__(self):
        self.trace = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        weights = {k: v.detach().clone() for k, v in model.policy.named_parameters()
                   if v.requires_grad}
        steps = [float(s['step']) for s in runner.optim_wrapper.optimizer.state.values()
                 if 'step' in s]
        self.trace.append((weights, max(steps) if steps else 0.0))


@REGULARIZERS.register_module(force=True)
class ScaledLogpLoss(Regularizer):
    """``scale`` x the mean log-prob of the sampled actions: huge but finite gradients."""

    def __init__(self, *, scale: float):
        self.scale = scale

    def __call__(self, policy_eval, ref_eval, rollout, weights, *, progress, ctx=None):
        return {'loss': self.scale * policy_eval.logp.mean()}


from toy_components import ToySampler  # noqa: E402
from vargo.core.registry import SAMPLERS  # noqa: E402


@SAMPLERS.register_module(force=True)
class StrictToySampler(ToySampler):
    """ToySampler drawing with ``torch.multinomial``, which raises on non-finite probabilities
    (as real samplers fail on a diverged policy); raises at call ``fail_at_call`` (0-based)."""

    def __init__(self, *, fail_at_call: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.fail_at_call = fail_at_call
        self.calls = 0

    @torch.no_grad()
    def rollout(self, policy, cond, *, group_size, rng=None, prefix=None, stop_at_step=None,
                ctx=None):
        call, self.calls = self.calls, self.calls + 1
        if call == self.fail_at_call:
            raise RuntimeError('injected sampler failure')
        probs = torch.softmax(policy.logits(cond.class_ids) / self.spec.temperature, -1)
        torch.multinomial(probs.flatten(0, 1), 1)   # raises on inf/NaN probabilities
        return super().rollout(policy, cond, group_size=group_size, rng=rng, prefix=prefix,
                               stop_at_step=stop_at_step)
