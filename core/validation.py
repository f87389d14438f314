"""Check a prepared training config completely before MMEngine's Runner exists.

MMEngine's ``Runner.__init__`` creates the work dir and its ``<timestamp>/`` log dir and logs the
environment and the whole config before it builds the model, and ``Runner.train`` builds the loop,
the dataloader, the optimizer and the param schedulers only when training starts. A mistake
found there comes after some 200 lines of log and leaves directories behind. Here everything is
built or checked first, and every mistake is one :class:`~vargo.core.registry.ConfigError` whose
message is one line that starts with the config key, names the bad value and the fix::

    optim_wrapper.optimizer.lr=-0.1 (a float) must be a positive finite number (the learning
    rate); e.g. lr=1e-4

(one line; wrapped here).

Steps (:func:`prebuild` runs them in this order; ``VargoRunner.from_cfg`` and
``tools/train.py --dry-run`` use it):

1. :func:`check_config` - no model needed: every key's type and range, every registry ``type``
   (with the closest registered name), the keywords of each class, the loop settings, the hooks
   (built), the log processor (built), the dataset and dataloader (built), and the cheap
   components (sampler, advantage, token selectors, regularizers, objective) built one by one
   so their errors name their key.
2. seeding exactly as the Runner would (:func:`seed_like_runner`), then :func:`build_model`:
   the :class:`~vargo.core.algorithm.RLAlgorithm` with the policy and reward heads, once (an
   error names the component it came from).
3. :func:`check_with_model`: the optimizer wrapper on the model's parameters, the param
   schedulers on it, and the dataset's conditions against the policy (class ids in range,
   prompts for text-conditional policies).

Any other exception while building a piece becomes a ``ConfigError`` naming the piece's key (the
last line of defence; the explicit checks come first). Its ``unexpected`` attribute is True when
the original exception was not a ``ValueError`` (a check missing in a component).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import numbers
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from .config import ConfigFileNotFoundError
from .registry import (ADVANTAGE_ESTIMATORS, DATASETS, HOOKS, LOOPS, MODELS, POLICIES,
                       REGULARIZERS, REWARD_HEADS, SAMPLERS, TOKEN_SELECTORS, ConfigError,
                       _accepted_keywords, _required_keywords, checked_build, closest)

__all__ = ['Validated', 'check_config', 'build_model', 'check_with_model', 'seed_like_runner',
           'capture_rng_states', 'restore_rng_states', 'prebuild', 'validate_training_config',
           'drop_disabled_hooks']

#: default_hooks names MMEngine's Runner knows; ``None`` removes one of these
MMENGINE_DEFAULT_HOOKS = ('runtime_info', 'timer', 'sampler_seed', 'logger', 'param_scheduler',
                          'checkpoint')
#: dataset items checked against the policy (class ids in range)
MAX_CHECKED_ITEMS = 100_000


@dataclass
class Checked:
    """What :func:`check_config` built (throw-away instances; the Runner builds its own)."""

    dataloader: Any = None
    hooks: dict = field(default_factory=dict)
    seed: Optional[int] = None


@dataclass
class Validated:
    """Everything :func:`prebuild` built. ``model`` is handed to the Runner; the other pieces are
    throw-away instances that prove the config builds (the Runner builds its own)."""

    model: Any
    optim_wrapper: Any = None
    param_schedulers: list = field(default_factory=list)
    dataloader: Any = None
    hooks: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------
def _flat(msg: Any) -> str:
    """One line: the lines of ``msg`` joined."""
    return ' '.join(part.strip() for part in str(msg).splitlines() if part.strip())


def _what(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + '...'
    name = type(value).__name__
    return f'{text} ({"an" if name[:1] in "aeiou" else "a"} {name})'


def _fail(key: str, value: Any, problem: str, fix: str = '') -> None:
    raise ConfigError(f'{key}={_what(value)} {problem}' + (f'; {fix}' if fix else ''))


def _describe(err: BaseException) -> str:
    msg = _flat(err) or type(err).__name__
    if isinstance(err, ValueError):
        return msg
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        msg = _flat(err.args[0])  # str(KeyError) is the repr of its message
    return f'{type(err).__name__}: {msg}'


#: a component's message about one of its settings: ``[ClassName ]setting=value ...``
_SETTING_MSG = re.compile(r'^(?:[A-Z][A-Za-z0-9_]* )?([A-Za-z_][A-Za-z0-9_]*)=(.*)$')


def _keyed(key: str, msg: str, node: Any = None) -> str:
    """``msg`` about the piece at ``key``, starting with the key: a message about one setting
    of ``node`` (``"KLRegularizer beta=-1 must ..."``) becomes ``"<key>.beta=-1 must ..."``."""
    m = _SETTING_MSG.match(msg)
    if m and isinstance(node, dict) and m.group(1) in node:
        return f'{key}.{m.group(1)}={m.group(2)}'
    return f'{key}: {msg}'


@contextlib.contextmanager
def at(key: str, node: Any = None) -> Iterator[None]:
    """Turn any exception raised while building the piece at config ``key`` (whose config is
    ``node``) into a one-line :class:`ConfigError` that starts with ``key`` (missing-file errors
    keep their list)."""
    try:
        yield
    except ConfigFileNotFoundError:
        raise
    except ConfigError as err:
        msg = _flat(err)
        if msg.startswith(key.split('.')[0].split('[')[0]):
            if msg == str(err):
                raise
            raise _keep_flags(ConfigError(msg), err) from err
        raise _keep_flags(ConfigError(_keyed(key, msg, node)), err) from err
    except FileNotFoundError as err:
        raise ConfigFileNotFoundError(f'{key}: {_flat(err)}') from err
    except Exception as err:  # last line of defence: the explicit checks come first
        text = _describe(err)
        new = ConfigError(_keyed(key, text, node) if isinstance(err, ValueError)
                          else f'{key}: {text}')
        new.unexpected = not isinstance(err, ValueError)
        raise new from err


def _keep_flags(new: ConfigError, old: ConfigError) -> ConfigError:
    new.unexpected = getattr(old, 'unexpected', False)
    return new


# ------------------------------------------------------------------------------------------
# value checks
# ------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(key: str, v: Any, lo: int, fix: str = '', hi: Optional[int] = None) -> None:
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        rng = f'an int >= {lo}' if hi is None else f'an int in [{lo}, {hi}]'
        _fail(key, v, f'must be {rng}', fix)


def _real(key: str, v: Any, *, lo: float = -math.inf, hi: float = math.inf,
          lo_open: bool = False, hi_open: bool = False, what: str = '', fix: str = '') -> None:
    ok = _is_real(v) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and (
        v < hi if hi_open else v <= hi)
    if not ok:
        if lo == 0 and lo_open and hi == math.inf:
            rng = 'a positive finite number'
        elif lo == 0 and hi == math.inf:
            rng = 'a finite number >= 0'
        else:
            rng = (f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}"
                   f"{')' if hi_open else ']'}")
        _fail(key, v, f'must be {rng}' + (f' ({what})' if what else ''), fix)


def _bool(key: str, v: Any) -> None:
    if not isinstance(v, bool):
        _fail(key, v, 'must be True or False')


def _dict(key: str, v: Any, example: str = '') -> None:
    if not isinstance(v, dict):
        _fail(key, v, 'must be a dict' + (f', e.g. {example}' if example else ''))


def _str(key: str, v: Any, choices=None) -> None:
    if not isinstance(v, str) or (choices is not None and v not in choices):
        hint = closest(v, choices) if isinstance(v, str) and choices else None
        _fail(key, v, 'must be ' + (f'one of {", ".join(repr(c) for c in choices)}'
                                    if choices else 'a string'),
              f'did you mean {hint!r}?' if hint else '')


def _keys(key: str, node: dict, accepted, owner: str) -> None:
    for k in node:
        if k not in accepted:
            hint = closest(str(k), [a for a in accepted])
            raise ConfigError(f'{key}.{k} is not a setting of {owner}'
                              + (f'; did you mean {key}.{hint}?' if hint else '')
                              + f' ({owner} accepts: {", ".join(sorted(accepted)) or "nothing"})')


# ------------------------------------------------------------------------------------------
# registry types and keywords
# ------------------------------------------------------------------------------------------
def _vargo_child(root):
    return root._children.get('vargo', root)


def _registry_names(registry) -> list[str]:
    names, reg = set(), registry
    while reg is not None:
        names |= set(reg.module_dict)
        reg = reg.parent
    return sorted(names)


def _resolve(key: str, node: Any, registry, kind: str, example: str = ''):
    """The class named by ``node['type']`` in ``registry`` (or its MMEngine parent)."""
    if not isinstance(node, dict):
        _fail(key, node, f'must be a dict with a "type" key (a {kind} config)',
              f'e.g. {key}={example}' if example else '')
    if 'type' not in node:
        raise ConfigError(f'{key} has no "type": name a {kind} type'
                          + (f', e.g. {key}={example}' if example else '')
                          + f' ({kind} types: {", ".join(_registry_names(registry))})')
    name = node['type']
    if not isinstance(name, str):
        if inspect.isclass(name) or callable(name):
            return name
        _fail(f'{key}.type', name, f'must be the name of a registered {kind} type')
    registry.import_from_location()
    try:
        with DefaultScope.overwrite_default_scope('vargo'):
            cls = registry.get(name)
    except Exception:  # e.g. a malformed scope prefix
        cls = None
    if cls is not None and not inspect.isclass(cls) and not (
            inspect.isfunction(cls) and kind == 'collate function'):
        cls = None  # MMEngine also resolves dotted import paths, e.g. 'abc' to the module abc
    if cls is None:
        names = _registry_names(registry)
        hint = closest(name.split('.')[-1], names)
        raise ConfigError(f'{key}.type={name!r} is not a registered {kind} type'
                          + (f'; did you mean {hint!r}?' if hint else '')
                          + f' ({kind} types: {", ".join(names) or "(none)"})')
    return cls


def _signature_keywords(cls, drop=()) -> Optional[set[str]]:
    """Keywords ``cls`` accepts, following ``**kwargs`` up the MRO; None if unknowable."""
    if not inspect.isclass(cls):
        return _accepted_keywords(cls)
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            return names - set(drop)
        if '__init__' not in vars(klass):
            continue
        try:
            params = inspect.signature(vars(klass)['__init__']).parameters.values()
        except (TypeError, ValueError):
            return None
        var_kw = False
        for p in params:
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                var_kw = True
            elif p.name != 'self' and p.kind is not inspect.Parameter.VAR_POSITIONAL:
                names.add(p.name)
        if not var_kw:
            return names - set(drop)
    return None


def _signature_defaults(cls) -> dict:
    """``name -> (default, None allowed)`` of the keywords of ``cls`` (following ``**kwargs``
    up the MRO)."""
    out: dict = {}
    for klass in (cls.__mro__ if inspect.isclass(cls) else ()):
        if klass is object or '__init__' not in vars(klass):
            continue
        try:
            params = inspect.signature(vars(klass)['__init__']).parameters.values()
        except (TypeError, ValueError):
            break
        for p in params:
            if p.default is not inspect.Parameter.empty:
                note = str(p.annotation)
                out.setdefault(p.name, (p.default, 'Optional' in note or 'None' in note))
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return out


def _check_by_defaults(key: str, node: dict, cls, skip=()) -> None:
    """A setting whose default is a bool, an int or a float must be one too (a float: finite).
    The ranges are the class's own checks, made when it is built."""
    defaults = _signature_defaults(cls)
    for k, v in node.items():
        if k in skip or k not in defaults:
            continue
        d, none_ok = defaults[k]
        if v is None and none_ok:
            continue
        if isinstance(d, bool):
            _bool(f'{key}.{k}', v)
        elif isinstance(d, int) and not _is_int(v):
            _fail(f'{key}.{k}', v, 'must be an int', f'{cls.__name__}\'s default is {d!r}')
        elif isinstance(d, float) and not (_is_real(v) and math.isfinite(v)):
            _fail(f'{key}.{k}', v, 'must be a finite number',
                  f'{cls.__name__}\'s default is {d!r}')


def _check_keywords(key: str, node: dict, cls, *, drop=(), extra=()) -> None:
    accepted = _signature_keywords(cls, drop)
    if accepted is None:
        return
    accepted = (set(accepted) - set(drop)) | set(extra) | {'type', '_scope_'}
    _keys(key, node, accepted, getattr(cls, '__name__', str(cls)))


def _explicit_keywords(cls) -> set[str]:
    sig = inspect.signature(vars(cls)['__init__'] if inspect.isclass(cls) else cls)
    return {p.name for p in sig.parameters.values() if p.name != 'self' and p.kind not in (
        inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}


def check_component(key: str, node: Any, registry, example: str = ''):
    """Static check of a vargo component config: its type, keywords and required settings."""
    cls = _resolve(key, node, registry, registry.name, example)
    accepted = _accepted_keywords(cls)
    if accepted is not None:
        _check_keywords(key, node, cls)
        missing = sorted(_required_keywords(cls) - set(node))
        if missing:
            raise ConfigError(f'{key} ({cls.__name__}) is missing required setting(s) '
                              f'{", ".join(f"{key}.{m}" for m in missing)}: set them in the '
                              f'config (they define the method, so there is no silent default)')
    return cls


# ------------------------------------------------------------------------------------------
# 1. checks that need no model
# ------------------------------------------------------------------------------------------
_RUNNER_TYPES = {
    'work_dir': str, 'resume': bool, 'log_level': (str, int), 'default_scope': str,
}


def _check_runtime(cfg: Config) -> None:
    for key, types in _RUNNER_TYPES.items():
        if key in cfg and cfg[key] is not None and not isinstance(cfg[key], types):
            _fail(key, cfg[key], f'must be a {getattr(types, "__name__", "str or int")}')
    if cfg.get('default_scope', 'vargo') != 'vargo':
        _fail('default_scope', cfg.default_scope, "must be 'vargo' (vargo's registries)",
              "inherit configs/_base_/default_runtime.py")
    level = cfg.get('log_level', 'INFO')
    if isinstance(level, str) and level.upper() not in logging._nameToLevel:
        _str('log_level', level, ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'))
    if cfg.get('experiment_name') is not None and not isinstance(cfg.experiment_name, str):
        _fail('experiment_name', cfg.experiment_name, 'must be a string or None')
    load_from = cfg.get('load_from')
    if load_from is not None:
        if not isinstance(load_from, str):
            _fail('load_from', load_from, 'must be a checkpoint path or None')
        if not os.path.isfile(os.path.expanduser(load_from)):
            raise ConfigFileNotFoundError(f'load_from={load_from!r}: no such checkpoint file; '
                                          f'fix the path or set load_from=None')
    rnd = cfg.get('randomness', dict(seed=None))
    _dict('randomness', rnd, 'dict(seed=0, deterministic=False)')
    _keys('randomness', rnd, {'seed', 'deterministic', 'diff_rank_seed'}, 'randomness')
    if rnd.get('seed') is not None:
        _int('randomness.seed', rnd['seed'], 0, 'or None for a random seed', hi=2 ** 32 - 1)
    for k in ('deterministic', 'diff_rank_seed'):
        if k in rnd:
            _bool(f'randomness.{k}', rnd[k])
    env = cfg.get('env_cfg', {})
    _dict('env_cfg', env)
    _keys('env_cfg', env, {'cudnn_benchmark', 'mp_cfg', 'dist_cfg', 'resource_limit'}, 'env_cfg')
    for k in ('mp_cfg', 'dist_cfg'):
        if k in env:
            _dict(f'env_cfg.{k}', env[k])
    if 'mp_cfg' in env:
        _keys('env_cfg.mp_cfg', env.mp_cfg, {'mp_start_method', 'opencv_num_threads'}, 'mp_cfg')
        if 'mp_start_method' in env.mp_cfg:
            _str('env_cfg.mp_cfg.mp_start_method', env.mp_cfg.mp_start_method,
                 ('fork', 'spawn', 'forkserver'))
    scale = cfg.get('auto_scale_lr')
    if scale is not None:
        _dict('auto_scale_lr', scale, 'dict(enable=False, base_batch_size=16)')
        _keys('auto_scale_lr', scale, {'enable', 'base_batch_size'}, 'auto_scale_lr')
        if 'enable' in scale:
            _bool('auto_scale_lr.enable', scale.enable)
        if 'base_batch_size' in scale:
            _int('auto_scale_lr.base_batch_size', scale.base_batch_size, 1)
    for part in ('val', 'test'):
        for k in (f'{part}_dataloader', f'{part}_cfg', f'{part}_evaluator'):
            if cfg.get(k) is not None:
                _fail(k, cfg[k], 'is not used: vargo trains without a validation loop',
                      f'remove {k} (tools/eval.py evaluates checkpoints)')
    model = cfg.get('model', {})
    check_component('model', model, MODELS)
    if 'logp_mismatch_tol' in model:
        _real('model.logp_mismatch_tol', model.logp_mismatch_tol, lo=0.0,
              what='tolerance of the on-policy check', fix='e.g. 1e-3')
    if model.get('data_preprocessor') is not None:
        _dict('model.data_preprocessor', model.data_preprocessor)


def _check_loop(cfg: Config) -> None:
    from .loop import GRPOLoop
    tc = cfg.train_cfg
    cls = _resolve('train_cfg', tc, LOOPS, 'loop', "dict(type='GRPOLoop', ...)")
    if not (inspect.isclass(cls) and issubclass(cls, GRPOLoop)):
        _fail('train_cfg.type', tc['type'], 'is not an RL loop',
              "vargo trains with train_cfg.type='GRPOLoop'")
    _check_keywords('train_cfg', tc, cls, drop=('runner', 'dataloader'))
    if 'max_iters' not in tc:
        raise ConfigError('train_cfg.max_iters (RL iterations) is not set; e.g. '
                          'train_cfg.max_iters=60')
    _int('train_cfg.max_iters', tc.max_iters, 1,
         'set the number of RL iterations, e.g. train_cfg.max_iters=60')
    if 'mu' in tc and (not _is_int(tc.mu) or tc.mu < 1):
        # the text of GRPOLoop's own check, with the key
        raise ConfigError(f'train_cfg.mu={_what(tc.mu)}: the number of inner epochs must be an '
                          f'int >= 1; set train_cfg.mu=1 (on-policy) or more')
    if 'shuffle_minibatches' in tc:
        _bool('train_cfg.shuffle_minibatches', tc.shuffle_minibatches)
    if tc.get('seed') is not None:
        _int('train_cfg.seed', tc.seed, 0, 'or None for the runner seed')
    if 'val_begin' in tc:
        _int('train_cfg.val_begin', tc.val_begin, 0)
    if 'val_interval' in tc:
        _int('train_cfg.val_interval', tc.val_interval, 1)
    try:  # the loop's fault-handling settings, where the loop has them
        from .faults import FAULT_SETTINGS, check_fault_settings
    except ImportError:
        return
    settings = {k: tc[k] for k in FAULT_SETTINGS if k in tc}
    if settings:
        with at('train_cfg', tc):
            check_fault_settings(**settings)


def _vargo_registry(name: str):
    import mmengine.registry as mmreg
    return _vargo_child(getattr(mmreg, name))


def _check_optim_static(cfg: Config) -> None:
    ow = cfg.get('optim_wrapper')
    if ow is None:
        raise ConfigError("optim_wrapper is not set; e.g. optim_wrapper=dict(optimizer=dict("
                          "type='AdamW', lr=1e-4))")
    _dict('optim_wrapper', ow, "dict(optimizer=dict(type='AdamW', lr=1e-4))")
    node = dict(ow)
    node.setdefault('type', 'OptimWrapper')
    wcls = _resolve('optim_wrapper', node, _vargo_registry('OPTIM_WRAPPERS'), 'optim_wrapper')
    _check_keywords('optim_wrapper', node, wcls, drop=('optimizer',),
                    extra=('optimizer', 'paramwise_cfg', 'constructor', 'dtype'))
    if 'constructor' in ow:
        return
    if 'optimizer' not in ow:
        raise ConfigError("optim_wrapper.optimizer is not set; e.g. optim_wrapper.optimizer="
                          "dict(type='AdamW', lr=1e-4)")
    opt = ow.optimizer
    ocls = _resolve('optim_wrapper.optimizer', opt, _vargo_registry('OPTIMIZERS'), 'optimizer',
                    "dict(type='AdamW', lr=1e-4)")
    _check_keywords('optim_wrapper.optimizer', opt, ocls, drop=('params',))
    _check_by_defaults('optim_wrapper.optimizer', opt, ocls, skip=('lr',))
    if 'lr' in opt:
        _real('optim_wrapper.optimizer.lr', opt.lr, lo=0.0, lo_open=True,
              what='the learning rate', fix='e.g. lr=1e-4' + (
                  ' without quotes' if isinstance(opt.lr, str) else ''))
    if 'weight_decay' in opt:
        _real('optim_wrapper.optimizer.weight_decay', opt.weight_decay, lo=0.0,
              fix='e.g. weight_decay=0.0')
    if 'eps' in opt and opt.eps is not None:
        _real('optim_wrapper.optimizer.eps', opt.eps, lo=0.0, lo_open=True, fix='e.g. eps=1e-8')
    if 'momentum' in opt:
        _real('optim_wrapper.optimizer.momentum', opt.momentum, lo=0.0, fix='e.g. momentum=0.9')
    if 'betas' in opt:
        betas = opt.betas
        if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(
                _is_real(b) and 0 <= b < 1 for b in betas):
            _fail('optim_wrapper.optimizer.betas', betas, 'must be a pair of numbers in [0, 1)',
                  'e.g. betas=(0.9, 0.95)')
    clip = ow.get('clip_grad')
    if clip is not None:
        _dict('optim_wrapper.clip_grad', clip, 'dict(max_norm=1.0), or None')
        if 'type' in clip:
            _str('optim_wrapper.clip_grad.type', clip.type, ('norm', 'value'))
        if clip.get('type', 'norm') == 'norm':
            if 'max_norm' not in clip:
                raise ConfigError('optim_wrapper.clip_grad has no max_norm; e.g. '
                                  'clip_grad=dict(max_norm=1.0), or clip_grad=None')
            _real('optim_wrapper.clip_grad.max_norm', clip.max_norm, lo=0.0, lo_open=True,
                  fix='e.g. max_norm=1.0')
            if 'norm_type' in clip:
                _real('optim_wrapper.clip_grad.norm_type', clip.norm_type, lo=0.0,
                      lo_open=True)
        elif 'clip_value' in clip:
            _real('optim_wrapper.clip_grad.clip_value', clip.clip_value, lo=0.0, lo_open=True)
    if 'accumulative_counts' in ow:
        _int('optim_wrapper.accumulative_counts', ow.accumulative_counts, 1)
    if ow.get('paramwise_cfg') is not None:
        _dict('optim_wrapper.paramwise_cfg', ow.paramwise_cfg)


def _scheduler_list(cfg: Config) -> list[tuple[str, Any]]:
    ps = cfg.get('param_scheduler')
    if ps is None:
        return []
    if isinstance(ps, dict):
        return [('param_scheduler', ps)]
    if not isinstance(ps, (list, tuple)):
        _fail('param_scheduler', ps, 'must be a list of scheduler dicts or None',
              "e.g. [dict(type='ConstantLR', factor=1.0, by_epoch=False)]")
    return [(f'param_scheduler[{i}]', s) for i, s in enumerate(ps)]


def _check_schedulers_static(cfg: Config) -> None:
    reg = _vargo_registry('PARAM_SCHEDULERS')
    for key, s in _scheduler_list(cfg):
        cls = _resolve(key, s, reg, 'param_scheduler',
                       "dict(type='ConstantLR', factor=1.0, by_epoch=False)")
        _check_keywords(key, s, cls, drop=('optimizer', 'param_name'))
        _check_by_defaults(key, s, cls)
        if s.get('by_epoch', True) is not False:
            _fail(f'{key}.by_epoch', s.get('by_epoch', True),
                  '(MMEngine\'s default when unset) schedules by epochs, and a vargo run is one '
                  'epoch of RL iterations', f'set {key}.by_epoch=False')
        for k in ('begin', 'end'):
            if k in s:
                _int(f'{key}.{k}', s[k], 0, 'an RL iteration')
        if 'begin' in s and 'end' in s and s.end <= s.begin:
            _fail(f'{key}.end', s.end, f'must be > {key}.begin={s.begin}')


#: smallest values of the count settings of vargo's hooks
_HOOK_MINIMUMS = {'ImageGridHook': dict(max_images=1, preview_conditions=0, preview_seed=0)}


def _check_hook_settings(key: str, hook: dict, cls) -> None:
    from mmengine.hooks import CheckpointHook, LoggerHook
    if 'priority' in hook:
        from mmengine.runner import get_priority
        try:
            get_priority(hook.priority)
        except (TypeError, ValueError, KeyError):
            _fail(f'{key}.priority', hook.priority, 'is not a hook priority',
                  "use a name such as 'NORMAL' or 'LOW', or an int in [0, 100]")
    _check_by_defaults(key, hook, cls, skip=('interval',))  # explicit checks below
    is_ckpt = inspect.isclass(cls) and issubclass(cls, CheckpointHook)
    if 'interval' in hook:
        every = is_ckpt or (inspect.isclass(cls) and issubclass(cls, LoggerHook))
        _int(f'{key}.interval', hook.interval, 1 if every else 0,
             f'set the iterations between two checkpoints, e.g. {key}.interval=50, or disable '
             f'the hook with {key}=None' if is_ckpt else
             f'set the iterations between two runs of the hook, e.g. {key}.interval=10')
    for setting, lo in _HOOK_MINIMUMS.get(getattr(cls, '__name__', ''), {}).items():
        if setting in hook:
            _int(f'{key}.{setting}', hook[setting], lo)
    if getattr(cls, '__name__', '') == 'CurvesHook' and 'keys' in hook and (
            isinstance(hook['keys'], str) or not isinstance(hook['keys'], (list, tuple))
            or not all(isinstance(k, str) for k in hook['keys'])):
        _fail(f'{key}.keys', hook['keys'], 'must be a list of scalar name prefixes',
              "e.g. keys=('reward/', 'kl/')")
    if is_ckpt:
        from .hooks import AtomicCheckpointHook
        if not issubclass(cls, AtomicCheckpointHook):
            _fail(f'{key}.type', hook['type'], "(MMEngine's) writes last_checkpoint "
                  'non-atomically and deletes old checkpoints before the new one is on disk',
                  "use type='AtomicCheckpointHook' (same settings)")
        # CheckpointHook passes unknown keywords to Runner.save_checkpoint, which takes none
        accepted = set()
        for klass in cls.__mro__:
            if '__init__' in vars(klass):
                accepted |= _explicit_keywords(klass)
            if klass is CheckpointHook:
                break
        _keys(key, hook, accepted | {'type', '_scope_', 'priority'}, cls.__name__)
        if 'interval' not in hook:
            raise ConfigError(f'{key}.interval is not set (MMEngine\'s default -1 saves no '
                              f'periodic checkpoint); set it, e.g. {key}.interval=50, or '
                              f'disable the hook with {key}=None')
        if hook.get('by_epoch', True) is not False:
            _fail(f'{key}.by_epoch', hook.get('by_epoch', True),
                  "(MMEngine's default when unset) saves per epoch and a vargo run is one epoch",
                  f'set {key}.by_epoch=False')
        if 'max_keep_ckpts' in hook and not (
                _is_int(hook.max_keep_ckpts) and (hook.max_keep_ckpts == -1
                                                  or hook.max_keep_ckpts >= 1)):
            _fail(f'{key}.max_keep_ckpts', hook.max_keep_ckpts, 'must be -1 (keep all) or an '
                  'int >= 1')
        for k in ('save_last', 'save_optimizer', 'save_param_scheduler'):
            if k in hook:
                _bool(f'{key}.{k}', hook[k])
    else:
        _check_keywords(key, hook, cls, extra=('priority',))


def _hook_list(cfg: Config) -> list[tuple[str, Any]]:
    out = []
    dh = cfg.get('default_hooks')
    if dh is not None:
        _dict('default_hooks', dh, "dict(checkpoint=dict(type='CheckpointHook', interval=50))")
        out += [(f'default_hooks.{name}', h) for name, h in dh.items() if h is not None]
    ch = cfg.get('custom_hooks')
    if ch is not None:
        if not isinstance(ch, (list, tuple)):
            _fail('custom_hooks', ch, 'must be a list of hook dicts', "e.g. [dict(type='...')]")
        out += [(f'custom_hooks[{i}]', h) for i, h in enumerate(ch)]
    return out


def _build_hooks(cfg: Config) -> dict:
    hooks = {}
    for key, h in _hook_list(cfg):
        cls = _resolve(key, h, HOOKS, 'hook')
        _check_hook_settings(key, h, cls)
        node = {k: v for k, v in h.items() if k != 'priority'}
        with at(key, node), DefaultScope.overwrite_default_scope('vargo'):
            hooks[key] = HOOKS.build(copy.deepcopy(node))
    return hooks


def _check_logging(cfg: Config) -> None:
    lp = cfg.get('log_processor')
    if lp is not None:
        _dict('log_processor', lp, 'dict(by_epoch=False, window_size=1)')
        node = dict(lp)
        node.setdefault('type', 'LogProcessor')
        cls = _resolve('log_processor', node, _vargo_registry('LOG_PROCESSORS'), 'log_processor')
        _check_keywords('log_processor', node, cls)
        if 'window_size' in lp and lp.window_size != 'global':
            _int('log_processor.window_size', lp.window_size, 1, "or 'global'")
        with at('log_processor', node), DefaultScope.overwrite_default_scope('vargo'):
            _vargo_registry('LOG_PROCESSORS').build(node)
    vis = cfg.get('visualizer')
    if vis is not None:
        _dict('visualizer', vis,
              "dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')])")
        node = dict(vis)
        node.setdefault('type', 'Visualizer')
        cls = _resolve('visualizer', node, _vargo_registry('VISUALIZERS'), 'visualizer')
        _check_keywords('visualizer', node, cls)
        backends = vis.get('vis_backends')
        if backends is not None:
            if isinstance(backends, dict):
                backends = [backends]
            if not isinstance(backends, (list, tuple)):
                _fail('visualizer.vis_backends', vis.vis_backends, 'must be a list of dicts')
            for i, b in enumerate(backends):
                bcls = _resolve(f'visualizer.vis_backends[{i}]', b,
                                _vargo_registry('VISBACKENDS'), 'vis_backend')
                _check_keywords(f'visualizer.vis_backends[{i}]', b, bcls)


def _build_dataloader(cfg: Config, seed: Optional[int]):
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader

    from .rng import DATA_SAMPLERS
    dl = cfg.get('train_dataloader')
    if dl is None:
        raise ConfigError("train_dataloader is not set: a vargo config needs the condition "
                          "dataset (inherit one from configs/_base_/datasets/)")
    _dict('train_dataloader', dl, "dict(dataset=dict(type=...), sampler=dict("
          "type='ContiguousInfiniteSampler'))")
    accepted = (_accepted_keywords(DataLoader) or set()) | {
        'dataset', 'sampler', 'batch_sampler', 'collate_fn', 'num_batch_per_epoch',
        'worker_init_fn', 'disable_subprocess_warning'}
    _keys('train_dataloader', dl, accepted, 'train_dataloader')
    ds_cfg = dl.get('dataset')
    check_component('train_dataloader.dataset', ds_cfg, DATASETS)
    sampler = dl.get('sampler')
    if sampler is None:
        raise ConfigError("train_dataloader.sampler is not set; e.g. train_dataloader.sampler="
                          "dict(type='ContiguousInfiniteSampler', shuffle=True)")
    scls = _resolve('train_dataloader.sampler', sampler, DATA_SAMPLERS, 'data sampler',
                    "dict(type='ContiguousInfiniteSampler', shuffle=True)")
    _check_keywords('train_dataloader.sampler', sampler, scls, drop=('dataset',),
                    extra=('seed',))
    _check_by_defaults('train_dataloader.sampler', sampler, scls)
    if sampler.get('seed') is not None:
        _int('train_dataloader.sampler.seed', sampler.seed, 0, 'or None for the run seed')
    if 'collate_fn' in dl and not callable(dl.collate_fn):
        fcls = _resolve('train_dataloader.collate_fn', dl.collate_fn,
                        _vargo_registry('FUNCTIONS'), 'collate function',
                        "dict(type='default_collate')")
        _check_keywords('train_dataloader.collate_fn', dl.collate_fn, fcls,
                        drop=('data_batch',))
    if 'num_workers' in dl:
        _int('train_dataloader.num_workers', dl.num_workers, 0, 'e.g. num_workers=0')
    for k in ('pin_memory', 'persistent_workers', 'drop_last'):
        if k in dl:
            _bool(f'train_dataloader.{k}', dl[k])
    with at('train_dataloader.dataset', ds_cfg), DefaultScope.overwrite_default_scope('vargo'):
        dataset = DATASETS.build(copy.deepcopy(ds_cfg))
    with at('train_dataloader.dataset'):
        n = len(dataset)
    if not n:
        raise ConfigError(f'train_dataloader.dataset ({type(dataset).__name__}) is empty: the '
                          f'run needs at least one condition')
    node = copy.deepcopy(dl)
    node['dataset'] = dataset
    randomness = cfg.get('randomness') or {}
    with at('train_dataloader', dl), DefaultScope.overwrite_default_scope('vargo'):
        loader = Runner.build_dataloader(node, seed=seed,
                                         diff_rank_seed=randomness.get('diff_rank_seed', False))
    return loader


def _check_components(cfg: Config) -> None:
    from .objective import ObjectiveConfig
    model = cfg.model
    check_component('policy', model.get('policy'), POLICIES)
    for name, reg in (('sampler', SAMPLERS), ('advantage', ADVANTAGE_ESTIMATORS)):
        check_component(name, model.get(name), reg)
        with at(name, model[name]):
            checked_build(copy.deepcopy(model[name]), reg)
    for family, reg in (('rewards', REWARD_HEADS), ('token_selectors', TOKEN_SELECTORS),
                        ('regularizers', REGULARIZERS)):
        group = model.get(family)
        if group is None:
            continue
        if not isinstance(group, dict):
            _fail(family, group, 'must be a dict of named components',
                  f'e.g. {family}=dict(name=dict(type=...)); named dicts let a child config '
                  f'override one entry')
        for name, node in group.items():
            if node is None:
                continue
            key = f'{family}.{name}'
            check_component(key, node, reg)
            if family != 'rewards':  # reward heads may load models: built once, in the model
                with at(key, node):
                    checked_build(copy.deepcopy(node), reg)
    if not any(v is not None for v in (model.get('rewards') or {}).values()):
        raise ConfigError("rewards is empty: configure at least one reward head, e.g. "
                          "rewards=dict(jpeg=dict(type='JpegCompressibilityReward'))")
    obj = model.get('objective')
    _dict('objective', obj, "dict(clip_eps=0.2, ratio_level='token', "
          "aggregation='sample_mean_of_token_means')")
    fields = ('clip_eps', 'ratio_level', 'aggregation')
    _keys('objective', obj, fields, 'objective')
    missing = [k for k in fields if k not in obj]
    if missing:
        raise ConfigError(f'objective is missing {", ".join(f"objective.{k}" for k in missing)}: '
                          f'these define the method, so they have no default')
    with at('objective', obj):
        ObjectiveConfig(**obj)
    for name, node in (model.get('token_selectors') or {}).items():
        if node is None:
            continue
        with DefaultScope.overwrite_default_scope('vargo'):
            wanted = getattr(checked_build(copy.deepcopy(node), TOKEN_SELECTORS),
                             'aggregation', None)
        if wanted is not None and wanted != obj['aggregation']:
            raise ConfigError(f'objective.aggregation={obj["aggregation"]!r} does not fit '
                              f'token_selectors.{name} ({node["type"]}), which is meant for '
                              f'aggregation={wanted!r}; set objective.aggregation={wanted!r}')


def check_config(cfg: Config, *, seed: Optional[int] = None) -> Checked:
    """Everything that needs no model (see the module docstring); raises :class:`ConfigError`.

    ``cfg`` is a prepared config (:func:`vargo.core.runner.prepare_config`)."""
    _check_runtime(cfg)
    _check_loop(cfg)
    _check_optim_static(cfg)
    _check_schedulers_static(cfg)
    hooks = _build_hooks(cfg)
    _check_logging(cfg)
    _check_components(cfg)
    if seed is None:
        seed = (cfg.get('randomness') or {}).get('seed')
    loader = _build_dataloader(cfg, seed)
    return Checked(dataloader=loader, hooks=hooks, seed=seed)


# ------------------------------------------------------------------------------------------
# 2. seeding and the model
# ------------------------------------------------------------------------------------------
def seed_like_runner(cfg: Config) -> int:
    """Seed python, numpy and torch as ``Runner.__init__`` will (``set_random_seed`` with
    ``cfg.randomness``). A missing seed is drawn (synchronised over ranks) and written into
    ``cfg.randomness`` so the Runner uses the same one. Returns the seed."""
    from mmengine.dist import sync_random_seed
    from mmengine.runner import set_random_seed
    randomness = dict(cfg.get('randomness') or dict(seed=None))
    if randomness.get('seed') is None:
        randomness['seed'] = sync_random_seed()
        cfg.randomness = randomness
    set_random_seed(seed=randomness['seed'],
                    deterministic=randomness.get('deterministic', False),
                    diff_rank_seed=randomness.get('diff_rank_seed', False))
    return randomness['seed']


def capture_rng_states() -> dict:
    states = {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(),
              'python': random.getstate()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states['torch'])
    np.random.set_state(states['numpy'])
    random.setstate(states['python'])
    if 'cuda' in states:
        torch.cuda.set_rng_state_all(states['cuda'])


def _component_keys(model_cfg: dict) -> dict:
    """class -> config keys of the components in ``model_cfg``."""
    out: dict = {}
    single = (('policy', POLICIES), ('sampler', SAMPLERS), ('advantage', ADVANTAGE_ESTIMATORS))
    named = (('rewards', REWARD_HEADS), ('token_selectors', TOKEN_SELECTORS),
             ('regularizers', REGULARIZERS))
    entries = [(k, model_cfg.get(k), r) for k, r in single]
    for family, reg in named:
        for name, node in (model_cfg.get(family) or {}).items():
            entries.append((f'{family}.{name}', node, reg))
    for key, node, reg in entries:
        if not isinstance(node, dict):
            continue
        t = node.get('type')
        cls = reg.get(t) if isinstance(t, str) else t
        if cls is not None:
            out.setdefault(cls, []).append(key)
    return out


def _failing_key(err: BaseException, model_cfg: dict) -> Optional[str]:
    """The config key of the outermost component whose constructor is in ``err``'s traceback."""
    keys = _component_keys(model_cfg)
    tb = err.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get('self')
        if obj is not None and type(obj) in keys:
            return ' or '.join(keys[type(obj)])
        tb = tb.tb_next
    return None


def build_model(cfg: Config):
    """The :class:`RLAlgorithm` of ``cfg.model`` (built once); an error names its component."""
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:  # what Runner.__init__ does for a dict model
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    try:
        with DefaultScope.overwrite_default_scope('vargo'):
            return MODELS.build(model_cfg)
    except Exception as err:
        key = _failing_key(err, model_cfg)
        if key is None and isinstance(err, ConfigError):
            raise ConfigError(_flat(err)) from err  # RLAlgorithm's own checks name their keys
        with at(key or 'model'):
            raise err


# ------------------------------------------------------------------------------------------
# 3. checks with the model
# ------------------------------------------------------------------------------------------
def _compact(node: Any) -> str:
    """``dict(type='X', a=1)`` for a config dict (shortened)."""
    if not isinstance(node, dict):
        return repr(node)
    text = 'dict(' + ', '.join(f'{k}={v!r}' for k, v in node.items()) + ')'
    return text if len(text) <= 120 else text[:117] + '...'


def _check_conditions(loader, policy, ds_cfg=None) -> None:
    from .types import Conditions
    dataset = loader.dataset
    ds_name, pol_name = type(dataset).__name__, type(policy).__name__
    if ds_cfg is not None:
        ds_name = _compact(ds_cfg)
    n = min(len(dataset), MAX_CHECKED_ITEMS)
    class_ids, prompt = [], None
    with at('train_dataloader.dataset'):
        for i in range(n):
            item = dataset[i]
            if not isinstance(item, dict) or not ({'class_id', 'prompt'} & set(item)):
                raise ConfigError(
                    f'train_dataloader.dataset={ds_name}: item {i} is {_what(item)}: a '
                    f'condition dataset yields dicts with a "class_id" and/or a "prompt"')
            if 'prompt' in item:
                prompt = item['prompt']
                break  # text conditions: the first one is encoded below
            class_ids.append(item['class_id'])
    was_training = policy.training
    policy.eval()
    try:
        if prompt is not None:
            cond = Conditions(prompts=[prompt])
        else:
            cond = Conditions(class_ids=torch.as_tensor(class_ids, dtype=torch.long))
        with torch.no_grad():
            policy.encode_conditions(cond)
    except Exception as err:
        raise ConfigError(f'train_dataloader.dataset={ds_name} does not fit the policy '
                          f'({pol_name}): {_describe(err)}; make the dataset\'s conditions '
                          f'match the policy (e.g. its num_classes)') from err
    finally:
        policy.train(was_training)


def check_with_model(cfg: Config, model, checked: Checked) -> Validated:
    """Build the optimizer wrapper and the param schedulers on ``model`` and check the dataset's
    conditions against its policy."""
    from mmengine.optim import build_optim_wrapper
    reg = _vargo_registry('PARAM_SCHEDULERS')
    with at('optim_wrapper', cfg.optim_wrapper), DefaultScope.overwrite_default_scope('vargo'):
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    schedulers = []
    epoch_length = len(checked.dataloader)
    for key, s in _scheduler_list(cfg):
        node = copy.deepcopy(s)
        node.setdefault('end', cfg.train_cfg.max_iters)  # what Runner.train does
        with at(key, node), DefaultScope.overwrite_default_scope('vargo'):
            schedulers.append(reg.build(node, default_args=dict(optimizer=optim_wrapper,
                                                                epoch_length=epoch_length)))
    _check_conditions(checked.dataloader, model.policy, cfg.train_dataloader.get('dataset'))
    from .sharding import check_model_wrapper_cfg
    check_model_wrapper_cfg(cfg.get('model_wrapper_cfg'), model,
                            amp=cfg.optim_wrapper.get('type') == 'AmpOptimWrapper'
                            and cfg.get('launcher', 'none') != 'none')
    return Validated(model=model, optim_wrapper=optim_wrapper, param_schedulers=schedulers,
                     dataloader=checked.dataloader, hooks=checked.hooks)


# ------------------------------------------------------------------------------------------
# all steps
# ------------------------------------------------------------------------------------------
def drop_disabled_hooks(cfg: Config) -> None:
    """Remove ``default_hooks`` entries set to None that MMEngine's Runner does not know (it
    asserts on them); None on one of its own names removes its default hook, as before."""
    dh = cfg.get('default_hooks')
    if isinstance(dh, dict):
        for name in [n for n, h in dh.items() if h is None and n not in MMENGINE_DEFAULT_HOOKS]:
            dh.pop(name)


def _init_distributed(cfg: Config) -> None:
    """Initialise the process group as ``Runner.setup_env`` would, so a drawn seed is the same
    on every rank (on CPU, ``prepare_config`` already initialised gloo)."""
    from mmengine.dist import init_dist, is_distributed
    launcher = cfg.get('launcher', 'none')
    if launcher != 'none' and not is_distributed():
        init_dist(launcher, **(cfg.get('env_cfg') or {}).get('dist_cfg', {}))


def prebuild(cfg: Config) -> tuple[Validated, dict]:
    """Check ``cfg`` and build the model exactly as ``Runner.__init__`` would (seeded by
    ``cfg.randomness``). Returns the pieces and the RNG states right after the model was built:
    restore them after the Runner exists (it seeds again) and the run is bit-identical to a
    Runner that built the model itself."""
    drop_disabled_hooks(cfg)
    checked = check_config(cfg)
    _init_distributed(cfg)
    checked.seed = seed_like_runner(cfg)
    model = build_model(cfg)
    states = capture_rng_states()
    validated = check_with_model(cfg, model, checked)
    return validated, states


def validate_training_config(cfg: Config, model=None) -> Validated:
    """Check a prepared config completely (``tools/train.py --dry-run``); build the model unless
    ``model`` is given. Raises :class:`ConfigError` with a one-line message."""
    if model is None:
        return prebuild(cfg)[0]
    drop_disabled_hooks(cfg)
    checked = check_config(cfg)
    return check_with_model(cfg, model, checked)
