"""Config checking and assembly: everything that can be wrong is found before training.

A vargo config has the component families (docs/design.md, "Configs") as top-level keys
(``policy``, ``sampler``, ``rewards``, ``advantage``, ``token_selectors``, ``objective``,
``regularizers``, ``group_size``) beside MMEngine's Runner keys. :func:`assemble` checks it and
moves the components into ``model`` (an ``RLAlgorithm``), injecting the shared quantities once:

* ``group_size`` -> ``model.group_size``;
* ``train_cfg.samples_per_rank`` (rollout samples per rank per iteration) ->
  ``train_dataloader.batch_size = samples_per_rank // group_size`` conditions.

Checks (each a :class:`~vargo.core.registry.ConfigError` naming the fix): unknown top-level keys
(MMEngine ignores them silently), ``group_size < 2``, batch sizes that are not whole groups, and
missing files (:func:`missing_files`).
"""
from __future__ import annotations

import numbers
import os
from typing import Any, Iterator, Optional

from mmengine.config import Config, ConfigDict

from .registry import ALL_REGISTRIES, COMPONENT_REGISTRIES, ConfigError, closest

__all__ = ['RUNNER_KEYS', 'COMPONENT_KEYS', 'assemble', 'missing_files', 'check_files',
           'check_work_dir', 'ConfigFileNotFoundError']


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A file the config (or the command line) names does not exist; a :class:`ConfigError`
    and a ``FileNotFoundError``."""


def _int_setting(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _what(value) -> str:
    return f'{value!r} (a {type(value).__name__})'

RUNNER_KEYS = {
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler', 'val_evaluator',
    'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor', 'load_from',
    'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer',
    'default_scope', 'randomness', 'experiment_name', 'model_wrapper_cfg', 'custom_imports',
}
COMPONENT_KEYS = {'policy', 'sampler', 'rewards', 'advantage', 'token_selectors', 'objective',
                  'regularizers', 'group_size'}
#: documentation-only keys a config may carry (ignored by the runner)
META_KEYS = {'checkpoints_root', 'eval_cfg'}


def _check_top_level(cfg: Config) -> None:
    allowed = RUNNER_KEYS | COMPONENT_KEYS | META_KEYS
    for key in cfg.keys():
        if key.startswith('_') or key in allowed:
            continue
        hint = closest(key, allowed)
        raise ConfigError(
            f'{key}: unknown top-level config key {key!r}'
            + (f'; did you mean {hint!r}?' if hint else '')
            + ' (vargo rejects unknown keys because MMEngine would ignore them silently; prefix '
              'private helper variables with "_")')


def assemble(cfg: Config) -> Config:
    """Check ``cfg`` and build the Runner-ready config (in place; returned for chaining)."""
    _check_top_level(cfg)
    for key in ('policy', 'sampler', 'rewards', 'advantage', 'objective', 'group_size'):
        if key not in cfg:
            raise ConfigError(f'{key} is not set: a vargo config needs policy, sampler, '
                              f'rewards, advantage, objective and group_size (inherit them from '
                              f'configs/_base_/)')
    group_size = cfg.group_size
    if not _int_setting(group_size):
        hint = ''
        if isinstance(group_size, (float, str)):
            try:
                as_float = float(group_size)
                if as_float.is_integer():
                    hint = f'; write group_size={int(as_float)}'
            except ValueError:
                pass
        raise ConfigError(f'group_size={_what(group_size)} must be an int >= 2 (samples per '
                          f'condition){hint or "; e.g. group_size=8"}')
    if group_size < 2:
        raise ConfigError(f'group_size={group_size!r}: GRPO needs at least 2 samples per '
                          f'condition to estimate a group baseline; set group_size >= 2')
    train_cfg = cfg.get('train_cfg')
    if train_cfg is None:
        raise ConfigError('train_cfg is not set: a vargo config needs train_cfg=dict('
                          "type='GRPOLoop', max_iters=..., samples_per_rank=...) (inherit it "
                          'from configs/_base_/schedules/)')
    if not isinstance(train_cfg, dict):
        raise ConfigError(f'train_cfg={_what(train_cfg)} must be a dict(type=\'GRPOLoop\', '
                          f'max_iters=..., samples_per_rank=...)')
    samples = train_cfg.get('samples_per_rank')
    if samples is None:
        raise ConfigError('train_cfg.samples_per_rank (rollout samples per rank per iteration) '
                          'is not set; set it to a multiple of group_size')
    if not _int_setting(samples) or samples < 1:
        raise ConfigError(f'train_cfg.samples_per_rank={_what(samples)} must be a positive int '
                          f'(rollout samples per rank per iteration), a multiple of '
                          f'group_size={group_size}, e.g. {4 * group_size}')
    if samples % group_size:
        lo = max(group_size, samples // group_size * group_size)
        raise ConfigError(f'train_cfg.samples_per_rank={samples} is not divisible by '
                          f'group_size={group_size}: every group of G samples must stay whole on '
                          f'one rank; use {lo} or {lo + group_size}')
    mb = train_cfg.get('minibatch_samples')
    if mb is not None and (not _int_setting(mb) or mb < 1):
        raise ConfigError(f'train_cfg.minibatch_samples={_what(mb)} must be None (one optimizer '
                          f'step per epoch) or a positive int, a multiple of group_size='
                          f'{group_size} that divides samples_per_rank={samples}')
    if mb is not None and (mb % group_size or samples % mb):
        raise ConfigError(f'train_cfg.minibatch_samples={mb} must be a multiple of group_size='
                          f'{group_size} that divides samples_per_rank={samples} (optimizer '
                          f'steps see whole groups)')
    model = cfg.get('model') or {}
    if not isinstance(model, dict):
        raise ConfigError(f'model={_what(model)} must be a dict of RLAlgorithm settings (e.g. '
                          f'model=dict(logp_mismatch_tol=1e-3)); the components are top-level '
                          f'keys')
    model = dict(model)
    model.setdefault('type', 'RLAlgorithm')
    for key in COMPONENT_KEYS:
        if key in cfg:
            model[key] = cfg[key]
    cfg.model = model
    if isinstance(cfg.get('train_dataloader'), dict):
        cfg.train_dataloader.batch_size = samples // group_size
        sampler = cfg.train_dataloader.get('sampler')
        if isinstance(sampler, dict) and sampler.get('type') == 'ContiguousInfiniteSampler':
            sampler['batch_size'] = samples // group_size
    return cfg


# ----------------------------------------------------------------------------------------
# files a config names
# ----------------------------------------------------------------------------------------
_FILE_KEYS = ('checkpoint', 'path', 'pretrained', 'file', 'dir')


def _is_file_key(key: str) -> bool:
    return any(key == k or key.endswith('_' + k) for k in _FILE_KEYS)


def _component_class(type_name: Any):
    if not isinstance(type_name, str):
        return type_name
    if not type_name or '.' in type_name:
        return None  # scoped names are resolved (and checked) when the component is built
    for reg in ALL_REGISTRIES.values():
        reg.import_from_location()
        cls = reg.get(type_name)
        if cls is not None:
            return cls
    return None


def _walk(node: Any, owner: Any = None, trail: str = '') -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, (dict, ConfigDict)):
        cls = _component_class(node['type']) if 'type' in node else None
        owner = cls or owner   # an unregistered nested 'type' (e.g. 'flan-t5') keeps its owner
        for k, v in node.items():
            path = f'{trail}.{k}' if trail else str(k)
            if isinstance(v, str) and _is_file_key(str(k)):
                yield path, v, owner
            elif (isinstance(v, (list, tuple)) and v and _is_file_key(str(k))
                  and all(isinstance(x, str) for x in v)):   # several files, e.g. metadata_file
                for i, x in enumerate(v):
                    yield f'{path}[{i}]', x, owner
            else:
                yield from _walk(v, owner, path)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, owner, f'{trail}[{i}]')


def missing_files(cfg: Config, keys: tuple[str, ...] = tuple(COMPONENT_KEYS) + ('model',)
                  ) -> list[tuple[str, str, Optional[str]]]:
    """``(config key, path, where it is published)`` of every file the components name that
    does not exist. A component class may map file basenames to their official source in a
    ``file_sources`` class attribute."""
    out, seen = [], set()
    if 'model' in cfg and isinstance(cfg.model, dict) and 'policy' in cfg.model:
        keys = ('model',)  # assembled: the components live in model
    for key in keys:
        if key not in cfg:
            continue
        for where, path, owner in _walk(cfg[key], trail=key):
            if _exists(path) or path in seen:
                continue
            seen.add(path)
            where = where[len('model.'):] if where.startswith('model.') else where
            sources = getattr(owner, 'file_sources', {}) or {}
            out.append((where, path, _source_of(sources, path)))
    return out


def _source_of(sources: dict, path: str) -> Optional[str]:
    """Where ``path`` is published: the ``file_sources`` entry of its basename, else of its
    nearest enclosing folder that has one (releases whose files share a name, e.g.
    ``<release>/checkpoints/last.ckpt``)."""
    parts = os.path.normpath(str(path).rstrip('/')).split(os.sep)
    for part in reversed(parts):
        if part in sources:
            return sources[part]
    return None


def _exists(path: str) -> bool:
    try:
        return os.path.exists(os.path.expanduser(path))
    except (ValueError, OSError):  # e.g. an embedded NUL character
        return False


def check_files(cfg: Config, shapes_hint: Optional[str] = None) -> None:
    """Raise :class:`ConfigFileNotFoundError` (a FileNotFoundError) naming every missing file
    and where it is published."""
    missing = missing_files(cfg)
    if not missing:
        return
    lines = ['the config names files that do not exist:']
    for where, path, source in missing:
        lines.append(f'  {where} = {path}')
        if source:
            lines.append(f'      published at {source}')
    lines.append('Download the official files to those paths (or override them with '
                 '--cfg-options).')
    if shapes_hint:
        lines.append(f'To try vargo without them: {shapes_hint}')
    raise ConfigFileNotFoundError('\n'.join(lines))


def check_work_dir(work_dir: str, resume: bool) -> None:
    """Refuse to start a new run in a work dir that holds another run's checkpoints."""
    last = os.path.join(work_dir, 'last_checkpoint')
    if resume or not os.path.exists(last):
        return
    with open(last) as f:
        ckpt = f.read().strip()
    raise ConfigError(f'work_dir={work_dir!r} holds checkpoints of an earlier run (last: {ckpt}). '
                      f'Pass --resume to continue it, or --work-dir DIR to start a new run '
                      f'elsewhere; vargo does not overwrite checkpoints.')
