"""``GRPOLoop``: one RL iteration per MMEngine iteration.

    conditions --repeat G--> rollout (no grad) -> rewards -> advantages (all ranks)
      -> reference evaluation (once per rollout, if a component needs it)
      -> for epoch in range(mu): for minibatch of whole groups: optimizer step
      -> hooks (logging, image grids, checkpoints)

The loop is an ``IterBasedTrainLoop``, so MMEngine's optim_wrapper, param schedulers,
``default_hooks``, visualizer and checkpointing work unchanged; ``max_iters`` counts RL
iterations and param schedulers step once per RL iteration. Everything model- or paper-specific
lives in the components held by :class:`vargo.core.algorithm.RLAlgorithm`.
"""
from __future__ import annotations

import time
import warnings
from typing import Optional

import torch
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop

from . import dist as vdist
from .algorithm import MiniBatch, RLAlgorithm
from .registry import LOOPS, ConfigError
from .rng import BatchRNG
from .types import Conditions, Rollout

__all__ = ['GRPOLoop', 'conditions_from_batch']


def conditions_from_batch(batch) -> Conditions:
    """A collated dataloader batch (``class_id`` and/or ``prompt``) -> :class:`Conditions`."""
    if not isinstance(batch, dict) or not ({'class_id', 'prompt'} & set(batch)):
        raise TypeError('the condition dataset must yield dicts with a "class_id" and/or a '
                        f'"prompt" entry, got {type(batch).__name__}')
    class_ids = batch.get('class_id')
    if class_ids is not None:
        class_ids = torch.as_tensor(class_ids, dtype=torch.long)
    prompts = batch.get('prompt')
    return Conditions(class_ids=class_ids, prompts=list(prompts) if prompts is not None else None)


def _unwrap(model) -> RLAlgorithm:
    return model.module if hasattr(model, 'module') else model


@LOOPS.register_module()
class GRPOLoop(IterBasedTrainLoop):
    """Rollout -> rewards -> advantages -> ``mu`` epochs of minibatch updates, per iteration.

    Args:
        runner, dataloader: given by MMEngine's Runner.
        max_iters: RL iterations.
        samples_per_rank: rollout samples per rank per iteration (a multiple of G; the
            dataloader yields ``samples_per_rank // G`` conditions, see core/config.py).
        mu: inner epochs over each rollout (1 = on-policy).
        minibatch_samples: samples per optimizer step on each rank, whole groups (None: the
            whole rollout, one optimizer step per epoch).
        shuffle_minibatches: reshuffle the group order every epoch.
        seed: base seed of the sampling noise (default: the runner's seed).
        val_begin, val_interval: MMEngine validation schedule (unused without a val loop).
    """

    def __init__(self, runner, dataloader, *, max_iters: int, samples_per_rank: int, mu: int = 1,
                 minibatch_samples: Optional[int] = None, shuffle_minibatches: bool = True,
                 seed: Optional[int] = None, val_begin: int = 1, val_interval: int = 10 ** 9):
        super().__init__(runner, dataloader, max_iters=max_iters, val_begin=val_begin,
                         val_interval=val_interval)
        if mu < 1:
            raise ConfigError(f'mu={mu}: the number of inner epochs must be >= 1')
        self.mu = int(mu)
        self.samples_per_rank = int(samples_per_rank)
        self.minibatch_samples = minibatch_samples
        self.shuffle_minibatches = shuffle_minibatches
        self.seed = seed
        g = self.algorithm.group_size
        if self.samples_per_rank % g or (minibatch_samples is not None and (
                minibatch_samples % g or self.samples_per_rank % minibatch_samples)):
            raise ConfigError(
                f'samples_per_rank={samples_per_rank} and minibatch_samples={minibatch_samples} '
                f'must be multiples of group_size={g} (and minibatch_samples must divide '
                f'samples_per_rank) so every optimizer step sees whole groups')
        self.last_rollout: Optional[Rollout] = None

    @property
    def algorithm(self) -> RLAlgorithm:
        return _unwrap(self.runner.model)

    def _seed(self) -> int:
        if self.seed is not None:
            return self.seed
        return int(getattr(self.runner, 'seed', 0) or 0)

    def run_iter(self, data_batch) -> None:
        self.runner.call_hook('before_train_iter', batch_idx=self._iter, data_batch=data_batch)
        algo = self.algorithm
        metrics: dict[str, float] = {}

        # 1. rollout
        t0 = time.perf_counter()
        cond = conditions_from_batch(data_batch)
        rng = BatchRNG(self._seed(), self._iter, len(cond) * algo.group_size, device=algo.device)
        rollout = algo.generate(cond, rng)
        t1 = time.perf_counter()
        # 2. rewards and advantages (statistics over all ranks)
        rewards = algo.score(rollout, self._iter)
        adv = algo.compute_advantages(rewards, rollout)
        metrics.update(adv.metrics)
        t2 = time.perf_counter()
        # 3. updates
        groups = rollout.group_slices(algo.group_size)  # [n_groups, G]
        n_groups = groups.shape[0]
        per_step = (self.minibatch_samples or rollout.batch_size) // algo.group_size
        ref_eval = algo.reference_eval(rollout, per_step)
        model = self.runner.model
        step_logs: list[dict] = []
        for epoch in range(self.mu):
            order = torch.randperm(n_groups) if self.shuffle_minibatches else torch.arange(n_groups)
            for k, chunk in enumerate(order.split(per_step)):
                idx = groups[chunk].flatten().to(algo.device)
                mb_rollout = rollout.index(idx)
                mb = MiniBatch(
                    rollout=mb_rollout, adv=adv.index(idx),
                    ref_eval=None if ref_eval is None else ref_eval.index(idx),
                    ctx={'num_samples': int(idx.numel()), 'group_size': algo.group_size,
                         'progress': self._iter / max(1, self._max_iters)},
                    check_on_policy=(epoch == 0 and k == 0))
                log_vars = model.train_step({'minibatch': mb}, optim_wrapper=self.runner.optim_wrapper)
                step_logs.append({k2: float(v) for k2, v in log_vars.items()})
        t3 = time.perf_counter()

        # on-policy check (first minibatch of the first epoch)
        first = step_logs[0]
        mismatch = first.get('policy/logp_mismatch_max')
        if mismatch is not None and mismatch > algo.logp_mismatch_tol:
            msg = (f'iteration {self._iter}: teacher-forced log-probs differ from the sampler\'s '
                   f'by up to {mismatch:.3g} (tolerance {algo.logp_mismatch_tol:g}). The update '
                   f'is not on-policy: check that the policy evaluation uses the sampler\'s '
                   f'logprob_cfg/temperature/top-k/top-p, that dropout is off, and the dtype.')
            warnings.warn(msg)
            print_log(msg, logger='current', level=30)
        for key in ('policy/logp_mismatch_max', 'policy/logp_mismatch_mean'):
            if key in first:
                metrics[key] = first[key]
        # average the per-step logs
        keys = {k for d in step_logs for k in d if not k.startswith('policy/logp_mismatch')}
        for key in keys:
            vals = [d[key] for d in step_logs if key in d]
            metrics[key] = sum(vals) / len(vals)
        metrics['time/rollout'] = t1 - t0
        metrics['time/reward'] = t2 - t1
        metrics['time/update'] = t3 - t2
        metrics['num_optimizer_steps'] = float(len(step_logs))
        self.last_rollout = rollout
        self.runner.call_hook('after_train_iter', batch_idx=self._iter, data_batch=data_batch,
                              outputs=metrics)
        self._iter += 1

