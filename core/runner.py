"""Building MMEngine's Runner for a vargo config (used by tools/train.py and the tests)."""
from __future__ import annotations

import os
import os.path as osp
import re
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from . import dist as vdist
from .checkpoint import (CheckpointError, CheckpointRefused, StateDictMismatch,
                         check_state_dict_keys, load_state_dict_strict, load_training_checkpoint,
                         remove_stale_temp_files)
from .config import assemble, check_files, check_work_dir
from .registry import ConfigError

__all__ = ['load_config', 'prepare_config', 'build_runner', 'VargoRunner']


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def prepare_config(cfg: Config, *, config_path: str, work_dir: Optional[str] = None,
                   resume: Optional[str] = None, amp: bool = False, launcher: str = 'none',
                   check_missing_files: bool = True) -> Config:
    """Everything tools/train.py does to a config before the Runner exists.

    Args:
        resume: None (new run), ``'auto'`` (latest checkpoint in the work dir) or a path.
    """
    assemble(cfg)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        if not osp.isfile(resume):
            raise FileNotFoundError(f'--resume {resume}: no such checkpoint file')
        cfg.resume = True
        cfg.load_from = resume
    if amp:
        if not torch.cuda.is_available():
            raise ConfigError('--amp needs a GPU: on CPU vargo trains in fp32 (bf16 matmuls are '
                              'slower than fp32 on CPUs without AMX); drop --amp')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('dtype', 'bfloat16')
    if check_missing_files:
        check_files(cfg, shapes_hint=cfg.get('_shapes_alternative'))
    check_work_dir(cfg.work_dir, bool(cfg.get('resume')))
    if launcher != 'none':
        # MMEngine's pytorch launcher calls torch.cuda.set_device; on CPU initialise gloo first.
        if vdist.init_cpu_process_group() or (vdist.is_distributed() and not torch.cuda.is_available()):
            cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=False)
    return cfg


_ITER_FILE = re.compile(r'^iter_(\d+)\.pth$')


def checkpoints_newest_first(work_dir: str) -> list[str]:
    """``iter_N.pth`` files of ``work_dir``, highest N first, then the pointer's target if it
    names another file."""
    from .hooks import read_pointer
    found = []
    if osp.isdir(work_dir):
        for name in os.listdir(work_dir):
            m = _ITER_FILE.match(name)
            if m:
                found.append((int(m.group(1)), osp.join(work_dir, name)))
    paths = [p for _, p in sorted(found, reverse=True)]
    pointed = read_pointer(work_dir)
    if pointed and osp.abspath(pointed) not in {osp.abspath(p) for p in paths}:
        paths.append(pointed)
    return paths


class VargoRunner(Runner):
    """MMEngine's Runner with vargo's checkpoint handling.

    * Loading (``--resume``, ``load_from``) reads files data-only
      (:func:`vargo.core.checkpoint.load_training_checkpoint`) and checks every key and shape
      against the model before anything is changed (:class:`CheckpointError` names them).
    * ``--resume auto`` takes the newest checkpoint of the work dir that loads, saying which it
      skipped and why; it refuses (instead of skipping) a file that holds non-data objects or
      does not match the model, and a work dir whose checkpoints all fail to load.
    * Saving: every checkpoint is plain data (:class:`vargo.core.hooks.PlainCheckpointHook`,
      registered here); temporary files of killed saves are removed when training starts.
    """

    _preloaded: Optional[tuple[str, dict]] = None

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        from mmengine.hooks import CheckpointHook

        from .hooks import AtomicCheckpointHook, PlainCheckpointHook
        super().register_hooks(default_hooks, custom_hooks)
        for hook in self.hooks:
            if isinstance(hook, CheckpointHook) and not isinstance(hook, AtomicCheckpointHook):
                raise ConfigError(
                    f"default_hooks.checkpoint: type='{type(hook).__name__}' (MMEngine's) writes "
                    f'last_checkpoint non-atomically and deletes old checkpoints before the new '
                    f"one is on disk; use type='AtomicCheckpointHook' (same settings)")
        self.register_hook(PlainCheckpointHook())

    # -- loading ---------------------------------------------------------------------------
    def _model_for_loading(self):
        model = self.model
        return model.module if hasattr(model, 'module') else model

    def _read_checked(self, filename: str, map_location='cpu') -> dict:
        """Load ``filename`` data-only and check its keys and shapes against the model."""
        ckpt = load_training_checkpoint(filename, map_location)
        state = {re.sub(r'^module\.', '', k): v for k, v in ckpt['state_dict'].items()}
        ckpt['state_dict'] = state
        model = self._model_for_loading()
        try:
            check_state_dict_keys(model.state_dict(), state, source=filename,
                                  owner=type(model).__name__)
        except StateDictMismatch as err:
            raise CheckpointError(str(err)) from None
        return ckpt

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = True,
                        revise_keys=None):
        """Load a vargo checkpoint's weights (strictly) and its hook state; returns it.

        ``strict`` and ``revise_keys`` are MMEngine's arguments and are ignored: keys are always
        checked strictly, and a DDP ``module.`` prefix is always stripped.
        """
        if self._preloaded is not None and self._preloaded[0] == filename:
            ckpt = self._preloaded[1]
            self._preloaded = None
        else:
            ckpt = self._read_checked(filename, map_location)
        self.call_hook('after_load_checkpoint', checkpoint=ckpt)
        load_state_dict_strict(self._model_for_loading(), ckpt['state_dict'], source=filename)
        self._has_loaded = True
        self.logger.info(f'Loaded checkpoint {filename}')
        return ckpt

    def _find_resumable(self) -> Optional[str]:
        """The newest checkpoint of the work dir that loads and matches the model (kept
        preloaded for :meth:`load_checkpoint`), or None if the work dir has none."""
        candidates = checkpoints_newest_first(self.work_dir)
        skipped = []
        for path in candidates:
            try:
                ckpt = self._read_checked(path)
            except CheckpointRefused:
                raise
            except FileNotFoundError:
                skipped.append(f'{osp.basename(path)} (named by last_checkpoint, missing)')
                continue
            except CheckpointError as err:
                if 'does not match' in str(err):
                    raise
                skipped.append(f'{osp.basename(path)} ({str(err).split(": ", 1)[-1][:160]})')
                continue
            for note in skipped:
                self.logger.warning(f'--resume auto: skipped {note}')
            self._preloaded = (path, ckpt)
            return path
        if skipped:
            raise CheckpointError(
                f'--resume auto: no checkpoint in {self.work_dir} loads: {"; ".join(skipped)}. '
                f'Remove or repair them, or pass --resume PATH')
        return None

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return None
        if self._resume and self._load_from is None:
            path = self._find_resumable()
            if path is None:
                msg = (f'--resume auto: no checkpoint in {self.work_dir}; starting a new run from '
                       f'the initial weights')
                self.logger.warning(msg)
                return None
            self.logger.info(f'--resume auto: resuming from {path}')
            self.resume(path)
        elif self._resume:
            self.resume(self._load_from)
        elif self._load_from is not None:
            self.load_checkpoint(self._load_from)
        self._has_loaded = True

    def train(self):
        removed = remove_stale_temp_files(self.work_dir)
        if removed:
            self.logger.info(f'removed {len(removed)} temporary file(s) of interrupted saves '
                             f'from {self.work_dir}: {", ".join(removed)}')
        return super().train()


def build_runner(cfg: Config) -> VargoRunner:
    """vargo's Runner for a prepared config (see :func:`prepare_config`)."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    return VargoRunner.from_cfg(cfg)
