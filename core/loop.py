"""``GRPOLoop``: one RL iteration per MMEngine iteration.

    one IterationContext per iteration (core/context.py), handed to every component
    conditions --repeat G--> rollout (no grad) -> rewards -> advantages (all ranks)
      -> reference evaluation (once per rollout, if a component needs it)
      -> for epoch in range(mu): for minibatch of whole groups: optimizer step
      -> hooks (logging, image grids, checkpoints)

The loop is an ``IterBasedTrainLoop``, so MMEngine's optim_wrapper, param schedulers,
``default_hooks``, visualizer and checkpointing work unchanged; ``max_iters`` counts RL
iterations and param schedulers step once per RL iteration. Everything model- or paper-specific
lives in the components held by :class:`vargo.core.algorithm.RLAlgorithm`.

Faults (a reward head that raises or scores nothing, non-finite losses, gradients, parameters or
rollouts) are detected where they arise and either skip one optimizer step or stop the run with
:class:`vargo.core.faults.RunAborted`; see :mod:`vargo.core.faults`.
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
from .faults import (FAULT_SETTINGS, RunAborted, StepOutcome, check_fault_settings,
                     last_checkpoint, lr_hint, rollout_nonfinite, weight_stats)
from .registry import LOOPS, ConfigError
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
        max_consecutive_nonfinite_steps: stop the run when this many optimizer steps in a row
            were skipped for a non-finite loss or gradient norm (None: never stop).
        max_all_nan_reward_iters: stop the run when a reward head returned NaN for every sample
            in this many iterations in a row (None: never stop, only warn).
        val_begin, val_interval: MMEngine validation schedule (unused without a val loop).
    """

    def __init__(self, runner, dataloader, *, max_iters: int, samples_per_rank: int, mu: int = 1,
                 minibatch_samples: Optional[int] = None, shuffle_minibatches: bool = True,
                 seed: Optional[int] = None,
                 max_consecutive_nonfinite_steps: Optional[int] = FAULT_SETTINGS[
                     'max_consecutive_nonfinite_steps'],
                 max_all_nan_reward_iters: Optional[int] = FAULT_SETTINGS[
                     'max_all_nan_reward_iters'],
                 val_begin: int = 1, val_interval: int = 10 ** 9):
        check_fault_settings(max_consecutive_nonfinite_steps=max_consecutive_nonfinite_steps,
                             max_all_nan_reward_iters=max_all_nan_reward_iters)
        super().__init__(runner, dataloader, max_iters=max_iters, val_begin=val_begin,
                         val_interval=val_interval)
        if mu < 1:
            raise ConfigError(f'mu={mu}: the number of inner epochs must be >= 1')
        self.max_consecutive_nonfinite_steps = max_consecutive_nonfinite_steps
        self.max_all_nan_reward_iters = max_all_nan_reward_iters
        self._skipped_in_a_row = 0          # optimizer steps skipped in a row
        self._all_nan_in_a_row: dict[str, int] = {}   # reward head -> all-NaN iterations in a row
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

        # 1. rollout (a diverged policy stops the run here, see _check_rollout)
        t0 = time.perf_counter()
        cond = conditions_from_batch(data_batch)
        ctx = algo.iteration_context(self._iter, max_iters=self._max_iters, seed=self._seed(),
                                     num_conditions=len(cond))
        try:
            rollout, failure = algo.generate(cond, ctx), None
        except RunAborted:
            raise
        except Exception as err:   # diagnosed (and re-raised) by _check_rollout
            rollout, failure = None, err
        self._check_rollout(rollout, failure)
        t1 = time.perf_counter()
        # 2. rewards and advantages (statistics over all ranks)
        rewards = self._score(rollout, ctx)
        adv = algo.compute_advantages(rewards, rollout, ctx)
        metrics.update(adv.metrics)
        t2 = time.perf_counter()
        # 3. updates
        groups = rollout.group_slices(algo.group_size)  # [n_groups, G]
        n_groups = groups.shape[0]
        per_step = (self.minibatch_samples or rollout.batch_size) // algo.group_size
        ref_eval = algo.reference_eval(rollout, per_step)
        model = self.runner.model
        n_steps = self.mu * len(range(0, n_groups, per_step))
        step_logs: list[dict] = []
        applied_logs: list[dict] = []
        skipped = 0
        for epoch in range(self.mu):
            order = torch.randperm(n_groups) if self.shuffle_minibatches else torch.arange(n_groups)
            for k, chunk in enumerate(order.split(per_step)):
                idx = groups[chunk].flatten().to(algo.device)
                mb_rollout = rollout.index(idx)
                mb = MiniBatch(
                    rollout=mb_rollout, adv=adv.index(idx),
                    ref_eval=None if ref_eval is None else ref_eval.index(idx),
                    ctx=ctx.for_minibatch(mb_rollout.action_mask),
                    check_on_policy=(epoch == 0 and k == 0))
                log_vars, outcome = algo.guarded_train_step(
                    model, {'minibatch': mb}, self.runner.optim_wrapper)
                logs = {k2: float(v) for k2, v in log_vars.items()}
                step_logs.append(logs)
                step_no = len(step_logs)
                if outcome.skipped:
                    skipped += 1
                    self._step_skipped(outcome, step_no, n_steps)
                else:
                    applied_logs.append(logs)
                    self._skipped_in_a_row = 0
                    if not outcome.params_finite:
                        self._params_nonfinite(outcome, step_no, n_steps)
        t3 = time.perf_counter()

        # on-policy check (first minibatch of the first epoch)
        first = step_logs[0]
        mismatch = first.get('policy/logp_mismatch_max')
        if mismatch is not None and mismatch > algo.logp_mismatch_tol:
            self._warn(f'{self._where()}: teacher-forced log-probs differ from the sampler\'s '
                       f'by up to {mismatch:.3g} (tolerance {algo.logp_mismatch_tol:g}). The '
                       f'update is not on-policy: check that the policy evaluation uses the '
                       f'sampler\'s logprob_cfg/temperature/top-k/top-p, that dropout is off, '
                       f'and the dtype.')
        for key in ('policy/logp_mismatch_max', 'policy/logp_mismatch_mean'):
            if key in first:
                metrics[key] = first[key]
        # average the per-step logs (of the applied steps; of all if every step was skipped)
        averaged = applied_logs or step_logs
        keys = {k for d in averaged for k in d if not k.startswith('policy/logp_mismatch')}
        for key in keys:
            vals = [d[key] for d in averaged if key in d]
            metrics[key] = sum(vals) / len(vals)
        metrics['time/rollout'] = t1 - t0
        metrics['time/reward'] = t2 - t1
        metrics['time/update'] = t3 - t2
        metrics['num_optimizer_steps'] = float(len(applied_logs))
        metrics['nonfinite/skipped_steps'] = float(skipped)
        self.last_rollout = rollout
        self.runner.call_hook('after_train_iter', batch_idx=self._iter, data_batch=data_batch,
                              outputs=metrics)
        self._iter += 1

    # -- faults (see vargo.core.faults) ---------------------------------------------------
    def _where(self) -> str:
        return f'iteration {self._iter + 1}/{self._max_iters}'

    def _abort(self, message: str, kind: str, cause: Optional[BaseException] = None,
               then: str = ''):
        """Log ``message`` (with the last checkpoint and ``then``, what to do next) and raise
        :class:`RunAborted` from ``cause``."""
        ckpt = last_checkpoint(getattr(self.runner, 'work_dir', None))
        if then:
            message += f'; {then}'
        message += (f'. The run stopped; its last checkpoint, {ckpt}, is intact' if ckpt else
                    '. The run stopped before writing any checkpoint')
        self.runner.logger.error(message)
        raise RunAborted(message, kind=kind, iteration=self._iter + 1,
                         checkpoint=ckpt) from cause

    def _warn(self, message: str) -> None:
        warnings.warn(message)
        print_log(message, logger='current', level=30)

    #: what to do after lowering the learning rate
    _RESTART = ('then start the run again (--resume would restore the checkpoint\'s optimizer '
                'state, its learning rate included)')

    def _diverged(self, stats) -> str:
        return (f'{stats.describe()}: the policy diverged; '
                f'{lr_hint(self.runner.optim_wrapper)}')

    def _check_rollout(self, rollout: Optional[Rollout], failure: Optional[Exception]) -> None:
        """Stop on a rollout with non-finite log-probs of sampled actions or images, or on a
        sampler that failed on a diverged policy (one host sync; all ranks agree).

        A sampler error on a policy that has not diverged is re-raised unchanged, with a note.
        """
        algo = self.algorithm
        dev = algo.device
        if rollout is not None:
            bad = torch.cat([rollout_nonfinite(rollout).to(dev), torch.zeros(1, device=dev,
                                                                              dtype=torch.long)])
        else:
            bad = torch.tensor([0, 0, 1], device=dev)
        if vdist.is_distributed():
            bad = vdist.all_reduce_sum(bad)
        n_logp, n_img, n_failed = (int(v) for v in bad.tolist())
        if not (n_logp or n_img or n_failed):
            return
        sampler = type(algo.sampler).__name__
        stats = weight_stats(algo)   # the same on every rank (DDP keeps the weights equal)
        if n_failed:
            messages = vdist.all_gather_object(
                None if failure is None else f'{type(failure).__name__}: '
                + ' '.join(str(failure).split()))
            rank, what = next((r, m) for r, m in enumerate(messages) if m is not None)
            if stats.diverged:
                on_rank = f' on rank {rank}' if vdist.is_distributed() else ''
                self._abort(f'{self._where()}: the rollout failed in {sampler}{on_rank} ({what}) '
                            f'and {self._diverged(stats)}', 'diverged_policy', failure,
                            self._RESTART)
            if failure is not None:
                failure.add_note(f'vargo: the rollout of {self._where()} failed in {sampler}; '
                                 f'{stats.describe()} (the policy has not diverged)')
                raise failure
            self._abort(f'{self._where()}: the rollout failed in {sampler} on rank {rank} '
                        f'({what}); see that rank\'s error', 'rollout_failed')
        found = ' and '.join(part for part in (
            f'{n_logp} non-finite log-probs of sampled actions' if n_logp else '',
            f'{n_img} non-finite image values' if n_img else '') if part)
        if stats.diverged:
            cause = self._diverged(stats)
        else:
            cause = (f'{stats.describe()}; check the sampler settings (temperature, cfg_scale, '
                     f'top-k/top-p) and the policy dtype')
        self._abort(f'{self._where()}: the rollout of {sampler} has {found}; {cause}',
                    'nonfinite_rollout', then=self._RESTART if stats.diverged else '')

    def _score(self, rollout: Rollout, ctx) -> dict:
        """Reward every sample; a raising head or heads that scored no sample (all ranks agree)."""
        algo = self.algorithm
        try:
            rewards, failure = algo.score(rollout, ctx), None
        except RunAborted as err:
            rewards, failure = None, err
        names = list(algo.reward_heads)
        flags = [1.0 if failure is not None else 0.0]
        if rewards is not None:
            counts = [(~torch.isnan(rewards[n].scores.float())).sum().float().to(algo.device)
                      for n in names]
            flags_t = torch.cat([torch.tensor(flags, device=algo.device), torch.stack(counts)])
        else:
            flags_t = torch.tensor(flags + [0.0] * len(names), device=algo.device)
        if vdist.is_distributed():
            flags_t = vdist.all_reduce_sum(flags_t)
        flags = flags_t.tolist()
        if flags[0]:
            prefix = f'iteration {self._iter + 1}: '    # -> 'iteration i/max_iters: '
            messages = vdist.all_gather_object(
                None if failure is None else str(failure).removeprefix(prefix))
            rank, msg = next((r, m) for r, m in enumerate(messages) if m is not None)
            on_rank = f'on rank {rank}, ' if vdist.is_distributed() else ''
            self._abort(f'{self._where()}: {on_rank}{msg}', 'reward_head_error',
                        None if failure is None else failure.__cause__,
                        'fix the head, then continue the run with --resume')
        n = rollout.batch_size * vdist.world_size()
        for name, scored in zip(names, flags[1:]):
            if scored:
                self._all_nan_in_a_row[name] = 0
                continue
            streak = self._all_nan_in_a_row.get(name, 0) + 1
            self._all_nan_in_a_row[name] = streak
            head = f'reward head {name!r} ({type(algo.reward_heads[name]).__name__})'
            limit = self.max_all_nan_reward_iters
            if limit is not None and streak >= limit:
                self._abort(f'{self._where()}: {head} returned NaN for every sample in {streak} '
                            f'iterations in a row (train_cfg.max_all_nan_reward_iters={limit}); '
                            f'NaN marks an unscorable sample, so the head gives the policy no '
                            f'signal: check the head (its inputs and model files)',
                            'reward_all_nan')
            stop = (f'the run stops after {limit} such iterations in a row '
                    f'(train_cfg.max_all_nan_reward_iters)' if limit is not None else
                    'train_cfg.max_all_nan_reward_iters=None: the run does not stop')
            self._warn(f'{self._where()}: {head} returned NaN for all {n} samples ({streak} '
                       f'iteration(s) in a row); their advantage from this head is 0; {stop}')
        return rewards

    def _step_skipped(self, outcome: StepOutcome, step: int, n_steps: int) -> None:
        self._skipped_in_a_row += 1
        streak, limit = self._skipped_in_a_row, self.max_consecutive_nonfinite_steps
        what = 'loss' if outcome.skipped == 'loss' else 'gradient norm'
        what = (f'{what} on another rank (this rank\'s: {outcome.value:g})' if outcome.other_rank
                else f'{what} ({outcome.value:g})')
        done = ('backward and optimizer step not run' if outcome.skipped == 'loss' else
                'gradients zeroed, optimizer step not run')
        where = f'{self._where()}, optimizer step {step}/{n_steps}'
        if limit is not None and streak >= limit:
            stats = weight_stats(self.algorithm)
            cause = (self._diverged(stats) if stats.diverged else
                     f'{stats.describe()}; {lr_hint(self.runner.optim_wrapper)}, or check the '
                     f'loss terms (objective, regularizers) for a division by zero or log(0)')
            self._abort(f'{where}: non-finite {what}; {streak} optimizer '
                        f'steps in a row were skipped (train_cfg.max_consecutive_nonfinite_steps='
                        f'{limit}); {cause}', 'nonfinite_steps', then=self._RESTART)
        ranks = ' on every rank' if vdist.is_distributed() else ''
        self._warn(f'{where}: non-finite {what}; the step is skipped{ranks} ({done}; '
                   f'parameters unchanged); {streak} skipped in a row'
                   + (f', the run stops at {limit} (train_cfg.max_consecutive_nonfinite_steps)'
                      if limit is not None else ''))

    def _params_nonfinite(self, outcome: StepOutcome, step: int, n_steps: int) -> None:
        self._abort(f'{self._where()}, optimizer step {step}/{n_steps}: the parameters are '
                    f'non-finite after the optimizer step (max |w| = {outcome.param_absmax:g}); '
                    f'a step cannot be undone; {lr_hint(self.runner.optim_wrapper)}',
                    'nonfinite_params', then=self._RESTART)
