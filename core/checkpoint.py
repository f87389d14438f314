"""Checkpoint IO: safe ``torch.load``, atomic writes, strict state-dict loading.

* ``torch.load`` is always called with ``weights_only=True``. MMEngine 0.10.7 stores a
  ``HistoryBuffer`` and numpy scalars in its checkpoints, which torch >= 2.6 refuses to unpickle;
  :func:`allow_mmengine_checkpoints` allow-lists exactly those classes (ENVIRONMENT.md) instead of
  disabling the safety check.
* :func:`atomic_save` writes to a temporary file in the same directory and renames it, so a
  crash mid-write never leaves a truncated checkpoint behind.
* :func:`load_state_dict_strict` loads a state dict and raises an error listing every missing and
  unexpected key (official loaders use ``strict=False`` and hide mismatches).
"""
from __future__ import annotations

import io
import os
import tempfile
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

__all__ = ['allow_mmengine_checkpoints', 'safe_load', 'atomic_save', 'load_state_dict_strict',
           'StateDictMismatch', 'require_file', 'AtomicLocalBackend']


class StateDictMismatch(RuntimeError):
    """The keys of a checkpoint do not match the module's."""


def allow_mmengine_checkpoints() -> None:
    """Allow-list the classes MMEngine's resume needs under ``weights_only=True``."""
    from mmengine.logging.history_buffer import HistoryBuffer
    safe = [HistoryBuffer, np.ndarray, np.dtype, np._core.multiarray._reconstruct,
            np._core.multiarray.scalar, getattr]
    for name in ('Float64DType', 'Float32DType', 'Int64DType', 'Int32DType', 'BoolDType'):
        cls = getattr(np.dtypes, name, None)
        if cls is not None:
            safe.append(cls)
    torch.serialization.add_safe_globals(safe)


def require_file(path: str, *, what: str, source: Optional[str] = None) -> str:
    """Return ``path`` if it exists, else raise FileNotFoundError naming where to get it."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        msg = f'{what} not found: {path}'
        if source:
            msg += f'\n  the official file is published at {source}'
        raise FileNotFoundError(msg)
    return path


def safe_load(path: str, map_location: Any = 'cpu') -> Any:
    """``torch.load(path, weights_only=True)`` (never unpickles arbitrary objects)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically (temp file in the same directory + rename)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _atomic_write(buffer.getvalue(), path)


def load_state_dict_strict(module: nn.Module, state_dict: dict, *, source: str = 'checkpoint',
                           ignore: tuple[str, ...] = ()) -> None:
    """Load ``state_dict`` into ``module``; raise listing every missing/unexpected key.

    Args:
        module: the target.
        state_dict: the weights.
        source: a description of where the weights come from (for the message).
        ignore: key names both sides may lack (e.g. non-persistent caches).
    """
    own = set(module.state_dict().keys())
    given = set(state_dict.keys())
    missing = sorted(k for k in own - given if k not in ignore)
    unexpected = sorted(k for k in given - own if k not in ignore)
    if missing or unexpected:
        lines = [f'{source} does not match {type(module).__name__}:']
        if missing:
            lines.append(f'  missing keys ({len(missing)}): {", ".join(missing[:20])}'
                         + (' ...' if len(missing) > 20 else ''))
        if unexpected:
            lines.append(f'  unexpected keys ({len(unexpected)}): {", ".join(unexpected[:20])}'
                         + (' ...' if len(unexpected) > 20 else ''))
        lines.append('  check that the architecture settings (size, task, vocabulary) match '
                     'the checkpoint.')
        raise StateDictMismatch('\n'.join(lines))
    filtered = {k: v for k, v in state_dict.items() if k not in ignore}
    result = module.load_state_dict(filtered, strict=False)
    bad = [k for k in result.missing_keys if k not in ignore]
    if bad:
        raise StateDictMismatch(f'{source}: keys not loaded: {bad}')


class NoPolicyWeights(ValueError):
    """A file given as a training checkpoint holds no ``policy.*`` weights."""


def load_policy_from_checkpoint(policy: nn.Module, path: str) -> None:
    """Load the ``policy.*`` weights of a ``tools/train.py`` checkpoint into ``policy``, strictly
    (the frozen reference is never stored; tokenizers and text encoders are not in the policy's
    state dict).

    Raises:
        NoPolicyWeights: the file holds no ``policy.*`` keys (not a tools/train.py checkpoint).
        StateDictMismatch: the keys do not match the policy (names every missing/unexpected one).
    """
    allow_mmengine_checkpoints()
    state = safe_load(path)
    state = state.get('state_dict', state)
    policy_state = {k[len('policy.'):]: v for k, v in state.items() if k.startswith('policy.')}
    if not policy_state:
        raise NoPolicyWeights(f'{path} holds no policy weights (keys policy.*): pass a '
                              f'checkpoint written by tools/train.py')
    load_state_dict_strict(policy, policy_state, source=path)


def _atomic_write(data: bytes, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp_', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


from mmengine.fileio import LocalBackend, register_backend  # noqa: E402


@register_backend('vargo_atomic', force=True)
class AtomicLocalBackend(LocalBackend):
    """MMEngine file backend whose writes are atomic (temp file + fsync + rename).

    MMEngine's checkpoint hook writes through a file backend; with
    ``backend_args=dict(backend='vargo_atomic')`` an interrupted save never leaves a truncated
    ``iter_N.pth`` or ``last_checkpoint`` behind.
    """

    def put(self, obj: bytes, filepath) -> None:
        _atomic_write(obj, str(filepath))

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        _atomic_write(obj.encode(encoding), str(filepath))
