"""Faults during a run: what is detected, what is skipped, and how a run stops.

:class:`vargo.core.loop.GRPOLoop` checks every iteration, at the place each fault arises:

* **a reward head raises** -> :class:`RunAborted` (``kind='reward_head_error'``) naming the
  head (config name and class), the iteration and the rows it was scoring, raised ``from`` the
  head's exception, before anything of the iteration is applied;
* **a reward head returns NaN for every sample** -> a warning per iteration, and
  :class:`RunAborted` (``'reward_all_nan'``) after ``train_cfg.max_all_nan_reward_iters``
  such iterations in a row;
* **a non-finite loss** (backward and step skipped) or **gradient norm** (gradients zeroed, step
  skipped) -> the optimizer step is skipped on every rank (:func:`guarded_update`), a warning,
  the count in the iteration's ``nonfinite/skipped_steps`` scalar, and :class:`RunAborted`
  (``'nonfinite_steps'``) after ``train_cfg.max_consecutive_nonfinite_steps`` skips in a row;
* **non-finite parameters after a step** (nothing to skip any more) -> :class:`RunAborted`
  (``'nonfinite_params'``);
* **a non-finite rollout** (log-probs of sampled actions, or images), or **a sampler that fails
  on a diverged policy** (huge finite weights overflow the logits; samplers then fail deep
  inside, e.g. an index error of inverse-CDF sampling) -> :class:`RunAborted`
  (``'nonfinite_rollout'`` / ``'diverged_policy'``). A sampler error on a policy whose weights
  look sane is re-raised unchanged, with a note naming the iteration and the sampler.

Every check runs once per rollout or once per optimizer step (one host sync each); nothing runs
inside a sampler's decode loop. Under DDP the flags are reduced over ranks, so all ranks skip
or stop together. Every :class:`RunAborted` happens before the iteration's checkpoint, so the
last checkpoint on disk is the state before the fault.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import Tensor

from . import dist as vdist
from .registry import ConfigError

__all__ = ['RunAborted', 'FAULT_SETTINGS', 'check_fault_settings', 'StepOutcome',
           'guarded_update', 'all_ranks_true', 'optimizer_params', 'WeightStats',
           'weight_stats', 'rollout_nonfinite', 'last_checkpoint', 'lr_hint']


class RunAborted(RuntimeError):
    """The run stopped on a fault it cannot continue past.

    ``str(err)`` is one line naming the cause, the iteration and the fix; the original exception
    (if any) is chained as ``__cause__``. Command-line tools print it as a single
    ``error: <message>`` line and exit non-zero (the traceback only with ``--debug``).

    Attributes:
        kind: ``'reward_head_error'``, ``'reward_all_nan'``, ``'nonfinite_steps'``,
            ``'nonfinite_params'``, ``'nonfinite_rollout'``, ``'diverged_policy'`` or
            ``'rollout_failed'`` (the sampler failed on another rank).
        iteration: the 1-based iteration that failed (as in the logs), or None.
        checkpoint: the last checkpoint written by the run (intact), or None.
    """

    def __init__(self, message: str, *, kind: str, iteration: Optional[int] = None,
                 checkpoint: Optional[str] = None):
        super().__init__(message)
        self.kind = kind
        self.iteration = iteration
        self.checkpoint = checkpoint


#: ``train_cfg`` settings of :class:`vargo.core.loop.GRPOLoop` and their defaults
FAULT_SETTINGS = {
    # stop after this many optimizer steps in a row were skipped (non-finite loss or gradient)
    'max_consecutive_nonfinite_steps': 5,
    # stop after this many iterations in a row in which a reward head scored no sample
    'max_all_nan_reward_iters': 3,
}


def check_fault_settings(**settings) -> None:
    """Raise :class:`ConfigError` unless each setting is a positive int or None (never stop)."""
    for key, value in settings.items():
        if key not in FAULT_SETTINGS:
            raise ConfigError(f'unknown fault setting {key!r} (known: {sorted(FAULT_SETTINGS)})')
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f'train_cfg.{key}={value!r}: must be an int >= 1 (the run stops when that many '
                f'happen in a row) or None (never stop, only warn); default '
                f'{FAULT_SETTINGS[key]}')


# ----------------------------------------------------------------------------------------
# cross-rank agreement
# ----------------------------------------------------------------------------------------
def all_ranks_true(ok: Tensor) -> bool:
    """Whether the boolean scalar ``ok`` holds on every rank (one host sync; one all-reduce
    under torch.distributed, so every rank gets the same answer)."""
    bad = (~ok.detach().reshape(())).to(torch.float32).reshape(1)
    if vdist.is_distributed():
        bad = vdist.all_reduce_sum(bad)
    return bool(bad.item() == 0)


# ----------------------------------------------------------------------------------------
# the guarded optimizer step
# ----------------------------------------------------------------------------------------
@dataclass
class StepOutcome:
    """What :func:`guarded_update` did.

    ``skipped``: ``None`` (applied), ``'loss'`` (non-finite loss: no backward, no step) or
    ``'grad_norm'`` (non-finite gradient norm: gradients zeroed, no step).
    ``params_finite``: False when the parameters are non-finite after an applied step.
    """

    skipped: Optional[str] = None
    value: float = 0.0                 # this rank's loss or gradient norm (when skipped)
    other_rank: bool = False           # skipped for a non-finite value on another rank only
    params_finite: bool = True
    param_absmax: float = 0.0


def optimizer_params(optim_wrapper) -> list[Tensor]:
    """The trainable parameters the wrapper's optimizer updates."""
    return [p for group in optim_wrapper.optimizer.param_groups for p in group['params']
            if p.requires_grad]


def _stacked_norms(tensors: list[Tensor], ord: float) -> Tensor:
    # the norm of a sharded tensor (a DTensor of sharded training) is reduced over the ranks
    # (a collective: every rank computes the same norms)
    norms = [n.full_tensor() if hasattr(n, 'full_tensor') else n
             for n in torch._foreach_norm(tensors, ord)]
    dev = norms[0].device
    return torch.stack([n.to(dev) for n in norms])


def grad_norm(params: Iterable[Tensor]) -> Tensor:
    """Total 2-norm of the gradients (as ``clip_grad_norm_`` computes it); read-only."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(_stacked_norms(grads, 2.0))


def param_absmax(params: list[Tensor]) -> Tensor:
    """``max |w|`` over ``params`` (NaN if any is NaN); read-only."""
    if not params:
        return torch.zeros(())
    return _stacked_norms([p.detach() for p in params], math.inf).max()


def guarded_update(optim_wrapper, loss: Tensor) -> StepOutcome:
    """``optim_wrapper.update_params(loss)`` that skips non-finite steps on all ranks together.

    The same calls as MMEngine's ``OptimWrapper.update_params`` (``scale_loss``, ``backward``,
    ``should_update``, ``step``, ``zero_grad``), with three read-only checks in between, so a
    finite step is bit-identical to it:

    1. the loss (before backward): non-finite on any rank -> no backward, no step;
    2. the gradient norm (before ``step``, so before ``clip_grad``): non-finite on any rank ->
       ``zero_grad`` and no step. Skipped under an ``AmpOptimWrapper``, whose loss scaler
       skips steps with non-finite gradients itself (and must see them to lower its scale);
    3. ``max |w|`` after the step: reported, the caller stops the run if it is not finite.

    Under DDP the gradients are already all-reduced when checked; the flags are reduced too.
    """
    finite = torch.isfinite(loss.detach()).all()
    if not all_ranks_true(finite):
        return StepOutcome(skipped='loss', value=float(loss.detach()),
                           other_rank=bool(finite))
    optim_wrapper.backward(optim_wrapper.scale_loss(loss))
    if not optim_wrapper.should_update():
        return StepOutcome()
    params = optimizer_params(optim_wrapper)
    if not hasattr(optim_wrapper, 'loss_scaler'):
        norm = grad_norm(params)
        finite = torch.isfinite(norm)
        if not all_ranks_true(finite):
            optim_wrapper.zero_grad()
            return StepOutcome(skipped='grad_norm', value=float(norm), other_rank=bool(finite))
    optim_wrapper.step()
    optim_wrapper.zero_grad()
    wmax = param_absmax(params)
    finite = all_ranks_true(torch.isfinite(wmax))
    return StepOutcome(params_finite=finite, param_absmax=float(wmax))


# ----------------------------------------------------------------------------------------
# diagnosis
# ----------------------------------------------------------------------------------------
#: a policy whose largest trainable weight grew beyond this factor (of max(1, initial)) diverged
DIVERGED_GROWTH = 1e3


@dataclass
class WeightStats:
    """``max |w|`` of the policy's trainable weights now and at the start (the reference)."""

    absmax: float
    initial_absmax: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.absmax)

    @property
    def diverged(self) -> bool:
        return not self.finite or self.absmax > DIVERGED_GROWTH * max(1.0, self.initial_absmax)

    def describe(self) -> str:
        now = 'non-finite values' if not self.finite else f'|w| = {self.absmax:.3g}'
        return (f"the policy's trainable weights reach {now} "
                f'({self.initial_absmax:.3g} at the start)')


def weight_stats(algo) -> WeightStats:
    """:class:`WeightStats` of ``algo.policy`` against ``algo.reference`` (same names)."""
    ref = dict(algo.reference.named_parameters())
    named = [(n, p) for n, p in algo.policy.named_parameters() if p.requires_grad]
    now = param_absmax([p for _, p in named])
    init = param_absmax([ref[n] for n, _ in named if n in ref])
    return WeightStats(absmax=float(now), initial_absmax=float(init))


def rollout_nonfinite(rollout) -> Tensor:
    """``[2]`` counts: non-finite log-probs of the sampled actions (in ``action_mask``) and
    non-finite image values (0 without images). One tensor, read on the host once."""
    logp = rollout.logp_old
    mask = rollout.action_mask.to(logp.device)
    bad_logp = (~torch.isfinite(logp) & mask).sum()
    images = rollout.images
    if images is None:
        bad_img = torch.zeros((), dtype=bad_logp.dtype, device=bad_logp.device)
    else:
        bad_img = (~torch.isfinite(images)).sum().to(bad_logp.device)
    return torch.stack([bad_logp, bad_img.to(bad_logp.dtype)])


def last_checkpoint(work_dir: Optional[str]) -> Optional[str]:
    """The checkpoint MMEngine's ``last_checkpoint`` file of ``work_dir`` names, or None."""
    if not work_dir:
        return None
    path = os.path.join(work_dir, 'last_checkpoint')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        ckpt = f.read().strip()
    if not ckpt:
        return None
    return ckpt if os.path.isabs(ckpt) else os.path.join(work_dir, ckpt)


def lr_hint(optim_wrapper) -> str:
    """What to lower, with the current values: the learning rate and ``clip_grad``."""
    lrs = sorted({float(g['lr']) for g in optim_wrapper.optimizer.param_groups})
    lr = ', '.join(f'{v:g}' for v in lrs)
    hint = f'lower optim_wrapper.optimizer.lr (now {lr})'
    clip = getattr(optim_wrapper, 'clip_grad_kwargs', None) or {}
    adaptive = 'adam' in type(optim_wrapper.optimizer).__name__.lower()
    if 'max_norm' in clip:
        hint += f' or optim_wrapper.clip_grad.max_norm (now {clip["max_norm"]:g})'
    elif not clip:
        hint += ' or set optim_wrapper.clip_grad=dict(max_norm=1.0)'
    if adaptive:
        hint += (f' (with {type(optim_wrapper.optimizer).__name__} a step moves each weight by '
                 f'about lr whatever the gradient, so lower lr first)')
    return hint
