"""Building MMEngine's Runner for a vargo config (used by tools/train.py and the tests)."""
from __future__ import annotations

import ast
import copy
import importlib
import os
import os.path as osp
import re
import warnings
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from . import dist as vdist
from .checkpoint import (CheckpointError, CheckpointRefused, StateDictMismatch,
                         check_state_dict_keys, load_state_dict_strict, load_training_checkpoint,
                         remove_stale_temp_files)
from .config import ConfigFileNotFoundError, assemble, check_files, check_work_dir
from .registry import ConfigError
from .sharding import is_sharding_wrapper

__all__ = ['load_config', 'prepare_config', 'build_runner', 'VargoRunner', 'read_checked',
           'find_resumable', 'CheckpointMismatch', 'checkpoints_newest_first']


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    rel = osp.relpath(path)
    return path if rel.startswith('..') else rel


def _base_entries(tree: ast.Module) -> list[str]:
    """The literal ``_base_`` entries of a parsed config file (none if it computes them)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return []
            if isinstance(value, str):
                return [value]
            if isinstance(value, (list, tuple)):
                return [v for v in value if isinstance(v, str)]
    return []


def check_config_sources(path: str, _stack: tuple = (), _done: Optional[set] = None) -> None:
    """Check a config file and its ``_base_`` files before MMEngine reads them: Python syntax
    (naming the file and line), ``_base_`` entries that do not exist, and ``_base_`` cycles
    (MMEngine would recurse until a RecursionError). Raises :class:`ConfigError`."""
    done = set() if _done is None else _done
    path = osp.abspath(path)
    if path in _stack:
        cycle = _stack[_stack.index(path):] + (path,)
        raise ConfigError(f'_base_ cycle: {" -> ".join(_shown(p) for p in cycle)}; a config '
                          f'cannot inherit itself: remove one of these _base_ entries')
    if path in done or not path.endswith('.py'):
        return
    with open(path, encoding='utf-8') as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as err:
        where = f'{_shown(path)}, line {err.lineno}' + (
            f', column {err.offset}' if err.offset else '')
        code = (err.text or '').strip()
        raise ConfigError(f'{where}: invalid Python syntax ({err.msg})'
                          + (f' in {code!r}' if code else '') + '; fix the config file') from None
    for entry in _base_entries(tree):
        if '::' in entry or '{{' in entry:
            continue  # a package config or a predefined variable: MMEngine resolves it
        base = osp.join(osp.dirname(path), osp.expanduser(entry))
        if not osp.isfile(base):
            raise ConfigFileNotFoundError(f'{_shown(path)}: _base_ entry {entry!r} does not '
                                          f'exist ({_shown(base)}); fix the path')
        check_config_sources(base, _stack + (path,), done)
    done.add(path)


def import_custom_modules(cfg: Config) -> None:
    """Import ``cfg.custom_imports`` (what ``Config.fromfile`` would), naming a module that
    cannot be imported."""
    custom = cfg.get('custom_imports')
    if not custom:
        return
    if not isinstance(custom, dict) or 'imports' not in custom:
        raise ConfigError(f'custom_imports={custom!r} must be dict(imports=[\'module\', ...], '
                          f'allow_failed_imports=False)')
    imports = custom['imports']
    if isinstance(imports, str):
        imports = [imports]
    if not isinstance(imports, (list, tuple)) or not all(isinstance(m, str) for m in imports):
        raise ConfigError(f'custom_imports.imports={imports!r} must be a list of module names')
    allow_failed = custom.get('allow_failed_imports', False)
    for name in imports:
        try:
            importlib.import_module(name)
        except ImportError as err:
            if allow_failed:
                warnings.warn(f'custom_imports: {name!r} was not imported ({err})')
                continue
            raise ConfigError(f'custom_imports.imports: module {name!r} cannot be imported '
                              f'({err}); fix the name, install the module or add its directory '
                              f'to PYTHONPATH') from err


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config file, merge ``--cfg-options`` and import ``custom_imports``; every problem
    is a one-line :class:`ConfigError` naming the file (or the option, or the module)."""
    if not isinstance(path, str) or not osp.isfile(path):
        raise ConfigFileNotFoundError(f'config file not found: {path}')
    check_config_sources(path)
    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except ConfigError:
        raise
    except Exception as err:  # the config's own code failed (NameError, ...)
        msg = ' '.join(str(err).split())
        raise ConfigError(f'{path}: the config could not be read: {type(err).__name__}: '
                          f'{msg}') from err
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except Exception as err:
            msg = ' '.join(str(err).split())
            raise ConfigError(f'--cfg-options: {msg}; options must name existing keys of the '
                              f'config (list entries by index, e.g. param_scheduler.0.type=...)'
                              ) from err
    import_custom_modules(cfg)
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
    if not isinstance(cfg.work_dir, str) or not cfg.work_dir:
        raise ConfigError(f'work_dir={cfg.work_dir!r} must be a directory path (or pass '
                          f'--work-dir DIR)')
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        if not osp.isfile(resume):
            raise ConfigFileNotFoundError(f'--resume {resume}: no such checkpoint file')
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
        if (vdist.init_cpu_process_group() or (vdist.is_distributed() and not
                                                torch.cuda.is_available())) and \
                not is_sharding_wrapper(cfg.get('model_wrapper_cfg')):
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


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint whose keys or shapes do not match the model."""


def read_checked(filename: str, model, map_location='cpu') -> dict:
    """Load a training checkpoint data-only and check its keys and shapes against ``model``
    (an ``RLAlgorithm``, unwrapped), without changing anything.

    Raises:
        CheckpointRefused / CheckpointError: not plain data / unreadable (see
            :func:`vargo.core.checkpoint.load_training_checkpoint`).
        CheckpointMismatch: every missing, unexpected and mis-shaped key, one line.
    """
    ckpt = load_training_checkpoint(filename, map_location)
    state = {re.sub(r'^module\.', '', k): v for k, v in ckpt['state_dict'].items()}
    ckpt['state_dict'] = state
    try:
        check_state_dict_keys(model.state_dict(), state, source=filename,
                              owner=type(model).__name__)
    except StateDictMismatch as err:
        raise CheckpointMismatch(str(err)) from None
    return ckpt


def find_resumable(work_dir: str, model) -> tuple[Optional[tuple[str, dict]], list[str]]:
    """``((path, checkpoint), skipped)``: the newest checkpoint of ``work_dir`` that loads and
    matches ``model``, and a note per newer one that could not be read; ``(None, [])`` when the
    work dir holds no checkpoint.

    Raises:
        CheckpointRefused: a candidate holds non-data objects (never skipped silently).
        CheckpointMismatch: the newest readable checkpoint does not match the model.
        CheckpointError: checkpoints exist but none can be read.
    """
    skipped = []
    for path in checkpoints_newest_first(work_dir):
        try:
            return (path, read_checked(path, model)), skipped
        except (CheckpointRefused, CheckpointMismatch):
            raise
        except FileNotFoundError:
            skipped.append(f'{osp.basename(path)} (named by last_checkpoint, missing)')
        except CheckpointError as err:
            skipped.append(f'{osp.basename(path)} ({str(err).split(": ", 1)[-1][:160]})')
    if skipped:
        raise CheckpointError(f'--resume auto: no checkpoint in {work_dir} loads: '
                              f'{"; ".join(skipped)}. Remove or repair them, or pass --resume PATH')
    return None, []


class RunConfig(Config):
    """A run's config, whose text is formatted once.

    MMEngine formats ``pretty_text`` with yapf (about 2 CPU-s for a config with nested model
    settings) each time it logs the config, dumps it to the work dir and writes a checkpoint's
    meta. The config does not change once the Runner is built, so the first text is kept.
    """

    @classmethod
    def frozen(cls, cfg: Config) -> 'RunConfig':
        """``cfg`` (not copied) as a RunConfig."""
        out = cls.__new__(cls)
        for key, value in cfg.__dict__.items():
            object.__setattr__(out, key, value)
        return out

    @property
    def pretty_text(self) -> str:
        text = self.__dict__.get('_run_pretty_text')
        if text is None:
            text = super().pretty_text
            object.__setattr__(self, '_run_pretty_text', text)
        return text


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

    _preloaded: Optional[tuple[str, dict]] = None   # (path, checkpoint) read by from_cfg
    _resume_skipped: tuple[str, ...] = ()           # unreadable checkpoints auto-resume skipped

    # -- building: the whole config is checked and the model built before __init__ ---------
    @classmethod
    def from_cfg(cls, cfg: Config) -> 'VargoRunner':
        """Check ``cfg`` completely and build the model, then the Runner around that model.

        MMEngine's ``Runner.__init__`` creates the work dir and the ``<timestamp>/`` log dir and
        logs the environment and config before it builds anything; ``train()`` builds the loop,
        dataloader, optimizer and schedulers. :func:`vargo.core.validation.prebuild` checks and
        builds all of them first (so a mistake is one line, with no directory left behind),
        seeding exactly as ``__init__`` does before it builds the model. The model is built once
        and handed to ``__init__``; the RNG states right after its build are restored once the
        Runner exists (``__init__`` seeds again), so training draws what it drew before.
        """
        from .validation import prebuild, restore_rng_states
        cfg = copy.deepcopy(cfg)
        validated, rng_states = prebuild(cfg)
        model = validated.model
        del validated  # the throw-away optimizer, schedulers, dataloader and hooks
        # the checkpoint to resume or load from is read and checked now, before the Runner
        # creates any directory: a refused or mismatching file is one error line
        preloaded, skipped = None, []
        if cfg.get('resume') and cfg.get('load_from') is None:
            preloaded, skipped = find_resumable(cfg['work_dir'], model)
        elif cfg.get('load_from'):
            preloaded = (cfg['load_from'], read_checked(cfg['load_from'], model))
        runner = cls(
            model=model,
            work_dir=cfg['work_dir'],
            train_dataloader=cfg.get('train_dataloader'),
            val_dataloader=cfg.get('val_dataloader'),
            test_dataloader=cfg.get('test_dataloader'),
            train_cfg=cfg.get('train_cfg'),
            val_cfg=cfg.get('val_cfg'),
            test_cfg=cfg.get('test_cfg'),
            auto_scale_lr=cfg.get('auto_scale_lr'),
            optim_wrapper=cfg.get('optim_wrapper'),
            param_scheduler=cfg.get('param_scheduler'),
            val_evaluator=cfg.get('val_evaluator'),
            test_evaluator=cfg.get('test_evaluator'),
            default_hooks=cfg.get('default_hooks'),
            custom_hooks=cfg.get('custom_hooks'),
            data_preprocessor=cfg.get('data_preprocessor'),
            load_from=cfg.get('load_from'),
            resume=cfg.get('resume', False),
            launcher=cfg.get('launcher', 'none'),
            env_cfg=cfg.get('env_cfg', dict(dist_cfg=dict(backend='nccl'))),
            log_processor=cfg.get('log_processor'),
            log_level=cfg.get('log_level', 'INFO'),
            visualizer=cfg.get('visualizer'),
            default_scope=cfg.get('default_scope', 'mmengine'),
            randomness=cfg.get('randomness', dict(seed=None)),
            experiment_name=cfg.get('experiment_name'),
            cfg=RunConfig.frozen(cfg),
        )
        restore_rng_states(rng_states)
        runner._preloaded, runner._resume_skipped = preloaded, tuple(skipped)
        return runner

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        # (a non-atomic CheckpointHook is refused by core.validation before the Runner exists)
        from .hooks import PlainCheckpointHook
        super().register_hooks(default_hooks, custom_hooks)
        self.register_hook(PlainCheckpointHook())

    # -- sharded training (a wrapper with ``shards_module``, core/sharding.py) --------------
    def wrap_model(self, model_wrapper_cfg, model):
        """MMEngine's, except that a sharding wrapper gets the model where it was built (it
        places it on the device unit by unit, so the whole model is never on one device); a
        single process trains the model unsharded."""
        if not is_sharding_wrapper(model_wrapper_cfg):
            return super().wrap_model(model_wrapper_cfg, model)
        if not self.distributed:
            self.logger.info(f'model_wrapper_cfg {model_wrapper_cfg.get("type")}: one process, '
                             f'the model is trained unsharded')
            return super().wrap_model(None, model)
        from mmengine.registry import MODEL_WRAPPERS
        return MODEL_WRAPPERS.build(copy.deepcopy(model_wrapper_cfg),
                                    default_args=dict(module=model))

    def _init_model_weights(self) -> None:
        if not getattr(self.model, 'shards_module', False):
            return super()._init_model_weights()
        # every rank built the same weights (the same seed) and kept its shards of them;
        # MMEngine's broadcast of whole tensors does not apply to shards
        if hasattr(self.model.module, 'init_weights'):
            self.model.module.init_weights()

    def save_checkpoint(self, *args, **kwargs):
        """MMEngine's (rank 0 writes the file); a sharding wrapper first gathers the full state
        on every rank, so the file is the one a single process writes."""
        gather = getattr(self.model, 'gather_for_checkpoint', None)
        if gather is None:
            return super().save_checkpoint(*args, **kwargs)
        with gather(self.optim_wrapper.optimizer):
            return super().save_checkpoint(*args, **kwargs)

    # -- loading ---------------------------------------------------------------------------
    def _model_for_loading(self):
        model = self.model
        return model.module if hasattr(model, 'module') else model

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = True,
                        revise_keys=None):
        """Load a vargo checkpoint's weights (strictly) and its hook state; returns it.

        ``strict`` and ``revise_keys`` are MMEngine's arguments and are ignored: keys are always
        checked strictly, and a DDP ``module.`` prefix is always stripped. A checkpoint
        :meth:`from_cfg` already read and checked is not read again.
        """
        model = self._model_for_loading()
        if self._preloaded is not None and self._preloaded[0] == filename:
            ckpt = self._preloaded[1]
            self._preloaded = None
        else:
            ckpt = read_checked(filename, model, map_location)
        shard = getattr(self.model, 'shard_checkpoint', None)
        if shard is not None:  # this rank's shards of the full (single-process) state
            optim_wrapper = getattr(self, 'optim_wrapper', None)
            ckpt = shard(ckpt, getattr(optim_wrapper, 'optimizer', None))
        self.call_hook('after_load_checkpoint', checkpoint=ckpt)
        load_state_dict_strict(model, ckpt['state_dict'], source=filename)
        self._has_loaded = True
        self.logger.info(f'Loaded checkpoint {filename}')
        return ckpt

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return None
        if self._resume and self._load_from is None:
            for note in self._resume_skipped:
                self.logger.warning(f'--resume auto: skipped {note}')
            if self._preloaded is None:
                self.logger.warning(f'--resume auto: no checkpoint in {self.work_dir}; starting '
                                    f'a new run from the initial weights')
                return None
            self.logger.info(f'--resume auto: resuming from {self._preloaded[0]}')
            self.resume(self._preloaded[0])
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
    """vargo's Runner for a prepared config (see :func:`prepare_config`); the config is checked
    completely and the model built before the Runner exists (:meth:`VargoRunner.from_cfg`), so
    a mistake raises :class:`ConfigError` before any directory or log is written."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    return VargoRunner.from_cfg(cfg)
