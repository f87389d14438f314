"""Sharded data-parallel training: PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``) as an
MMEngine model wrapper, ``VargoFSDP``, selected by the config::

    model_wrapper_cfg = dict(type='VargoFSDP', mixed_precision='bf16',
                             activation_checkpointing=True)

(``configs/_base_/sharding/fsdp_bf16.py``), run with
``torchrun --nproc_per_node=N tools/train.py CONFIG --launcher pytorch``.

Where each piece lives (docs/design.md, "Sharded training"):

* the policy names its FSDP units: :meth:`vargo.core.interfaces.Policy.shard_units` (the
  transformer blocks and the modules holding its other trainable parameters); core knows no
  model, and a policy that names none cannot be sharded (a one-line error at start-up);
* this module: :class:`VargoFSDP` shards the policy's units and the frozen reference's (the same
  units of its copy, forward-only), mixed precision, activation checkpointing; the conversion of
  checkpoints between the full state (the file, identical to a single-process checkpoint) and
  this rank's shards; :func:`check_model_wrapper_cfg` (start-up checks, every launcher);
* :class:`vargo.core.runner.VargoRunner`: builds the wrapper before the whole model is moved to
  the device, gathers the full state on every rank before rank 0 writes a checkpoint
  (:meth:`VargoFSDP.gather_for_checkpoint`), and hands this rank's shards of a loaded one to the
  model and the optimizer (:meth:`VargoFSDP.shard_checkpoint`);
* :mod:`vargo.core.faults`: gradient norm and ``max |w|`` of sharded tensors are global values.

The loop and :class:`~vargo.core.algorithm.RLAlgorithm` do not change: the loss goes through the
wrapper's forward, FSDP reduce-scatters (averages) the gradients in backward, as DDP averages
them; MMEngine builds the optimizer after the wrapper, over the sharded parameters (DTensors);
``clip_grad`` uses ``torch.nn.utils.clip_grad_norm_``, which reduces DTensor norms.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional

import torch
from mmengine.registry import MODEL_WRAPPERS
from torch import nn

from . import dist as vdist
from .registry import ConfigError

__all__ = ['VargoFSDP', 'check_model_wrapper_cfg', 'check_shard_units', 'is_sharding_wrapper']

_MIXED_PRECISION = {None: None, 'bf16': torch.bfloat16}


def _dtensor_type():
    from torch.distributed.tensor import DTensor
    return DTensor


def is_sharding_wrapper(model_wrapper_cfg) -> bool:
    """Whether ``model_wrapper_cfg`` selects a wrapper that shards the model itself (it takes the
    model where it was built and places it on the device; a single process trains unsharded)."""
    if not isinstance(model_wrapper_cfg, dict):
        return False
    kind = model_wrapper_cfg.get('type')
    cls = MODEL_WRAPPERS.get(kind) if isinstance(kind, str) else kind
    return bool(getattr(cls, 'shards_module', False))


def _check_settings(mixed_precision, activation_checkpointing, reshard_after_forward,
                    gather_for_rollout) -> None:
    if mixed_precision not in _MIXED_PRECISION:
        raise ConfigError(f'model_wrapper_cfg.mixed_precision={mixed_precision!r}: must be None '
                          f'(fp32) or \'bf16\' (parameters gathered and computed in bf16, '
                          f'gradients reduced and weights kept in fp32)')
    for key, value in (('activation_checkpointing', activation_checkpointing),
                       ('reshard_after_forward', reshard_after_forward),
                       ('gather_for_rollout', gather_for_rollout)):
        if not isinstance(value, bool):
            raise ConfigError(f'model_wrapper_cfg.{key}={value!r}: must be True or False')


def check_shard_units(policy: nn.Module) -> list[nn.Module]:
    """The policy's FSDP units (:meth:`~vargo.core.interfaces.Policy.shard_units`), checked:
    sub-modules of the policy, none inside another, together holding every trainable parameter,
    none sharing a parameter with a module outside it. Raises :class:`ConfigError` (one line)."""
    name = type(policy).__name__
    units = list(policy.shard_units() or [])
    if not units:
        raise ConfigError(f'model_wrapper_cfg VargoFSDP: {name} names no shard units '
                          f'({name}.shard_units() returns none), so it cannot be sharded; '
                          f'implement shard_units() (its transformer blocks and the modules '
                          f'holding its other trainable parameters, see JanusPolicy.shard_units) '
                          f'or remove model_wrapper_cfg')
    where = {id(m): n or '(the policy itself)' for n, m in policy.named_modules()}
    for unit in units:
        if id(unit) not in where:
            raise ConfigError(f'model_wrapper_cfg VargoFSDP: {name}.shard_units() returned a '
                              f'{type(unit).__name__} that is not a sub-module of the policy')
    if len({id(u) for u in units}) != len(units):
        raise ConfigError(f'model_wrapper_cfg VargoFSDP: {name}.shard_units() lists a module '
                          f'twice')
    unit_ids = {id(u) for u in units}
    owner: dict[int, str] = {}       # parameter -> the unit holding it
    for unit in units:
        for p in unit.parameters():
            owner[id(p)] = where[id(unit)]
    for unit in units:
        inner = [where[id(m)] for m in unit.modules() if m is not unit and id(m) in unit_ids]
        if inner:
            raise ConfigError(f'model_wrapper_cfg VargoFSDP: shard unit {where[id(unit)]!r} of '
                              f'{name} holds other units ({", ".join(inner[:3])}); each unit is '
                              f'sharded on its own, so units must not contain one another')
    uncovered = [n for n, p in policy.named_parameters() if p.requires_grad and id(p) not in owner]
    if uncovered:
        raise ConfigError(f'model_wrapper_cfg VargoFSDP: trainable parameter(s) of {name} in no '
                          f'shard unit ({", ".join(uncovered[:5])}'
                          + (' ...' if len(uncovered) > 5 else '') + '); FSDP would not reduce '
                          'their gradients: add the modules holding them to shard_units()')
    for mod_name, module in policy.named_modules():
        if id(module) in unit_ids:
            continue
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in owner and not mod_name.startswith(owner[id(p)] + '.'):
                raise ConfigError(f'model_wrapper_cfg VargoFSDP: {mod_name}.{p_name} of {name} '
                                  f'is the same tensor as a parameter of shard unit '
                                  f'{owner[id(p)]!r} (tied weights); sharding would untie them: '
                                  f'make the module holding it a shard unit or untie them')
    return units


def check_model_wrapper_cfg(model_wrapper_cfg, model, *, amp: bool = False) -> None:
    """Start-up check of a sharding ``model_wrapper_cfg`` against the built model (any launcher,
    so a single-process or ``--dry-run`` start already names the mistake); ``amp``: the optimizer
    wrapper is MMEngine's ``AmpOptimWrapper`` (``--amp``) in a distributed run, which shards."""
    if not is_sharding_wrapper(model_wrapper_cfg):
        return
    settings = {k: v for k, v in model_wrapper_cfg.items() if k != 'type'}
    accepted = {'mixed_precision', 'activation_checkpointing', 'reshard_after_forward',
                'gather_for_rollout'}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise ConfigError(f'model_wrapper_cfg: VargoFSDP got unknown setting(s) {unknown}; it '
                          f'accepts {sorted(accepted)}')
    _check_settings(settings.get('mixed_precision'),
                    settings.get('activation_checkpointing', False),
                    settings.get('reshard_after_forward', True),
                    settings.get('gather_for_rollout', True))
    if amp:
        raise ConfigError('--amp with model_wrapper_cfg VargoFSDP: a sharded run computes in bf16 '
                          'through model_wrapper_cfg.mixed_precision=\'bf16\' (fp32 weights, '
                          'fp32 gradient reduction); drop --amp')
    check_shard_units(model.policy)


def _checkpointed(forward):
    """``forward`` whose activations are recomputed in backward (non-reentrant
    ``torch.utils.checkpoint``) when it runs with gradients."""
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def _shard_units(units: list[nn.Module], mesh, *, param_dtype: Optional[torch.dtype],
                 checkpoint: bool, reshard_after_forward: bool) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    for unit in units:
        dtype = next(iter(unit.parameters())).dtype
        # computed in param_dtype inside the unit; outputs cast back to the unit's own dtype, so
        # the code around the unit (frozen heads, the policy's arithmetic) sees what it sees
        # unsharded; gradients reduced in fp32
        mp = MixedPrecisionPolicy() if param_dtype is None else MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32, output_dtype=dtype)
        if checkpoint:
            unit.forward = _checkpointed(unit.forward)
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp)


@contextlib.contextmanager
def _gathered(units: list[nn.Module], reshard_after_forward: bool) -> Iterator[None]:
    """The units stay gathered from their first forward to the end of the context (one
    all-gather per unit per rollout instead of one per decoding step), then are resharded."""
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(reshard_after_forward, recurse=False)


def _move_unsharded(modules: list[nn.Module], device: torch.device) -> None:
    """Move every parameter and buffer that is not a shard to ``device``, keeping tensors the
    modules share (the reference shares the policy's frozen parts) shared."""
    dtensor = _dtensor_type()
    moved: dict[int, torch.Tensor] = {}
    for module in modules:
        for m in module.modules():
            for table in (m._parameters, m._buffers):
                for key, t in table.items():
                    if t is None or isinstance(t, dtensor) or t.device == device:
                        continue
                    if isinstance(t, nn.Parameter):
                        t.data = t.data.to(device)   # the same Parameter object everywhere
                    else:
                        table[key] = moved.setdefault(id(t), t.to(device))


@MODEL_WRAPPERS.register_module()
class VargoFSDP(nn.Module):
    """Fully sharded data parallel (PyTorch FSDP2) over the policy and its frozen reference.

    Each of the policy's :meth:`~vargo.core.interfaces.Policy.shard_units` becomes an FSDP unit
    (``fully_shard``): its parameters are split over the ranks, gathered for its forward and
    backward and freed after them; its gradients are reduce-scattered (averaged over the ranks,
    as DDP averages them). The frozen reference is sharded the same way (forward-only, freed
    after every forward). Parameters outside the units (the frozen tokenizer and heads) stay
    whole on every rank, shared by the policy and the reference as before.

    Args:
        module: the :class:`~vargo.core.algorithm.RLAlgorithm` (given by the Runner).
        mixed_precision: None (fp32) or ``'bf16'``: parameters gathered and computed in bf16
            inside the units (their outputs cast back to fp32), gradients reduced in fp32; the
            optimizer keeps fp32 weights and states.
        activation_checkpointing: recompute each block's activations in backward instead of
            storing them (the units that hold no other unit; ``torch.utils.checkpoint``).
        reshard_after_forward: free the policy's gathered parameters after each forward (True,
            ZeRO-3) or keep them until backward (False: less communication, more memory).
        gather_for_rollout: keep the policy gathered for a whole rollout (its units' parameters
            in the compute dtype on every rank while it samples; one all-gather per unit per
            rollout); False: gathered and freed again at every decoding step.
    """

    #: the wrapper takes the model where it was built and places it on the device itself
    shards_module = True

    def __init__(self, module: nn.Module, *, mixed_precision: Optional[str] = None,
                 activation_checkpointing: bool = False, reshard_after_forward: bool = True,
                 gather_for_rollout: bool = True):
        super().__init__()
        _check_settings(mixed_precision, activation_checkpointing, reshard_after_forward,
                        gather_for_rollout)
        from torch.distributed.device_mesh import init_device_mesh
        policy, reference = module.policy, module.reference
        units = check_shard_units(policy)
        index = {id(m): n for n, m in policy.named_modules()}
        ref_modules = dict(reference.named_modules())
        ref_units = [ref_modules[index[id(u)]] for u in units]
        device = (torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available()
                  else torch.device('cpu'))
        self.mesh = init_device_mesh(device.type, (vdist.world_size(),))
        param_dtype = _MIXED_PRECISION[mixed_precision]
        _shard_units(units, self.mesh, param_dtype=param_dtype,
                     checkpoint=activation_checkpointing,
                     reshard_after_forward=reshard_after_forward)
        _shard_units(ref_units, self.mesh, param_dtype=param_dtype, checkpoint=False,
                     reshard_after_forward=True)
        _move_unsharded([module, reference], device)
        if hasattr(module, 'data_preprocessor'):
            module.data_preprocessor.to(device)   # (MMEngine's record of its device)
        if gather_for_rollout:
            module.rollout_context = functools.partial(_gathered, units, reshard_after_forward)
        self.module = module
        self.mixed_precision = mixed_precision
        self.activation_checkpointing = activation_checkpointing

    # -- the model-wrapper interface (forward goes through the wrapper, as through DDP) -------
    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train_step(self, data, optim_wrapper):
        return self.module.guarded_train_step(self, data, optim_wrapper)[0]

    def val_step(self, data):
        return self.module.val_step(data)

    def test_step(self, data):
        return self.module.test_step(data)

    # -- checkpoints: the file holds the full state, as a single process writes it ------------
    @contextlib.contextmanager
    def gather_for_checkpoint(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """Within this context ``module.state_dict()`` and ``optimizer.state_dict()`` return the
        full tensors in place of this rank's shards (on rank 0; the tensors on CPU), exactly
        what a single process would save. A collective: every rank enters it (in the same
        order of tensors), then rank 0 writes the file."""
        dtensor = _dtensor_type()
        keep = vdist.rank() == 0

        def full(t):
            whole = t.full_tensor()
            return whole.cpu() if keep else None

        model_full = {k: full(v) for k, v in self.module.state_dict().items()
                      if isinstance(v, dtensor)}
        params = [p for g in optimizer.param_groups for p in g['params']]
        optim_full = {}
        for i, p in enumerate(params):
            state = optimizer.state.get(p, {})
            for key in sorted(state):
                if isinstance(state[key], dtensor):
                    optim_full[i, key] = full(state[key])

        def model_hook(module, state_dict, prefix, local_metadata):
            for k, v in model_full.items():
                if prefix + k in state_dict:
                    state_dict[prefix + k] = v

        def optim_hook(opt, state_dict):
            for (i, key), v in optim_full.items():
                state_dict['state'][i] = {**state_dict['state'][i], key: v}
            return state_dict

        handles = [self.module._register_state_dict_hook(model_hook)]
        handles.append(optimizer.register_state_dict_post_hook(optim_hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def shard_checkpoint(self, checkpoint: dict,
                         optimizer: Optional[torch.optim.Optimizer] = None) -> dict:
        """``checkpoint`` (a full one, as a single process writes it) with every tensor of a
        sharded parameter, and of its optimizer state, replaced by this rank's shard (no
        communication: every rank reads the file)."""
        dtensor = _dtensor_type()
        from torch.distributed.tensor import distribute_tensor

        def shard(value, like):
            if not isinstance(like, dtensor) or value.shape != like.shape:
                return value
            return distribute_tensor(value.to(like.device), like.device_mesh, like.placements,
                                     src_data_rank=None)

        own = self.module.state_dict()
        checkpoint['state_dict'] = {k: shard(v, own[k]) if k in own else v
                                    for k, v in checkpoint['state_dict'].items()}
        saved = checkpoint.get('optimizer')
        if optimizer is not None and saved is not None:
            params = [p for g in optimizer.param_groups for p in g['params']]
            state = {}
            for i, entry in saved['state'].items():
                like = params[i] if isinstance(i, int) and i < len(params) else None
                state[i] = {k: shard(v, like) if torch.is_tensor(v) else v
                            for k, v in entry.items()}
            checkpoint['optimizer'] = {**saved, 'state': state}
        return checkpoint
