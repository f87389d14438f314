"""Checkpoint IO: data-only loading, atomic and durable writes, strict state-dict loading.

Safety. Every file vargo loads (official weights, its own training checkpoints, anything a user
hands a tool) goes through ``torch.load(weights_only=True)`` with torch's default allow-list of
data types (tensors, numbers, strings, lists, tuples, dicts) and nothing else: no callable that
can reach arbitrary attributes (``getattr``) is ever allow-listed, so a crafted pickle cannot run
code. vargo's own checkpoints are written to load under that list: MMEngine's message hub
(``HistoryBuffer`` objects holding numpy arrays) and any numpy value are stored as plain
tensors, numbers, lists and dicts (:func:`to_plain`) and converted back on load
(:func:`from_plain`). Checkpoints written by vargo before this format (``vargo_checkpoint_format``
absent) still load: :func:`load_training_checkpoint` retries them with exactly the classes
MMEngine pickled (``HistoryBuffer``, numeric numpy arrays, scalars and dtypes) and a ``getattr``
stand-in that only returns ``HistoryBuffer``'s own statistics methods, within that one load.

Durability. :func:`atomic_save` / :func:`atomic_write_bytes` write a temporary file in the target
directory, fsync it, rename it into place and fsync the directory, so a crash at any moment leaves
either the old file or the complete new one; :func:`remove_stale_temp_files` deletes what a killed
write left behind.

Strictness. :func:`load_state_dict_strict` raises listing every missing, unexpected and
shape-mismatched key (official loaders use ``strict=False`` and hide mismatches).
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import tempfile
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from .registry import ConfigError

__all__ = ['safe_load', 'atomic_save', 'atomic_write_bytes', 'load_state_dict_strict',
           'StateDictMismatch', 'CheckpointKeyError', 'read_state_dict', 'official_file_missing', 'CheckpointError', 'CheckpointRefused',
           'check_state_dict_keys', 'require_file', 'AtomicLocalBackend',
           'to_plain', 'from_plain', 'load_training_checkpoint', 'remove_stale_temp_files',
           'CHECKPOINT_FORMAT', 'TEMP_PREFIX', 'data_only_copy', 'load_policy_from_checkpoint', 'NoPolicyWeights']

#: version of vargo's training-checkpoint layout (stored as ``vargo_checkpoint_format``)
CHECKPOINT_FORMAT = 2
#: prefix of the temporary files of atomic writes (removed at start if a write was killed)
TEMP_PREFIX = '.tmp_vargo_'


class CheckpointError(ConfigError):
    """A file given as a checkpoint cannot be used (refused, unreadable, or does not match);
    the message names the file and what to do."""


class StateDictMismatch(RuntimeError):
    """The keys of a checkpoint do not match the module's."""


def require_file(path: str, *, what: str, source: Optional[str] = None) -> str:
    """Return ``path`` if it exists, else raise FileNotFoundError naming where to get it."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        msg = f'{what} not found: {path}'
        if source:
            msg += f'\n  the official file is published at {source}'
        raise FileNotFoundError(msg)
    return path


class CheckpointRefused(CheckpointError):
    """A file holds pickled objects other than plain data (possible code execution): refused."""


def _describe_load_error(path: str, err: BaseException) -> CheckpointError:
    text = str(err)
    refused = re.search(r'GLOBAL ([\w.]+)|unrecognized function (\S+)|GLOBAL (\S+) whose module',
                        text)
    if isinstance(err, pickle.UnpicklingError) and refused:
        what = next(g for g in refused.groups() if g)
        return CheckpointRefused(
            f'{path}: refused to load: it holds {what}, which is not plain data (vargo loads '
            f'files with torch.load(weights_only=True) and allows only tensors, numbers, strings, '
            f'lists and dicts, so no code in a file can run); use a checkpoint written by vargo '
            f'or an official release, or convert yours to a plain state dict of tensors')
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return CheckpointError(f'{path}: cannot be read as a torch checkpoint ({type(err).__name__}: '
                           f'{first[:200]}); the file is truncated (e.g. a killed write) or is '
                           f'not a checkpoint')


def safe_load(path: str, map_location: Any = 'cpu', *, allow: tuple = ()) -> Any:
    """``torch.load(path, weights_only=True)``: torch's data-only allow-list, never code.

    Args:
        path: the file.
        map_location: as ``torch.load``.
        allow: extra plain-data classes this one load may instantiate (e.g. the
            ``argparse.Namespace`` official LlamaGen/MAR files carry); never a callable.

    Raises:
        FileNotFoundError: no such file.
        CheckpointRefused: the file holds anything but plain data (a crafted pickle).
        CheckpointError: the file is truncated or not a torch checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such checkpoint file')
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            OSError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise _describe_load_error(path, err) from err


@contextlib.contextmanager
def data_only_copy(path: str) -> Iterator[str]:
    """Yield the path of a private copy of ``path`` whose bytes were checked to be plain data
    (:func:`safe_load`), for a library that loads its file with ``weights_only=False``
    (torch-fidelity's built-in feature extractors). The copy is what the library reads, so the
    file cannot change between the check and the load; it is deleted afterwards.

    Raises:
        CheckpointRefused / CheckpointError: as :func:`safe_load`.
    """
    with open(path, 'rb') as f:
        data = f.read()
    try:
        torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            OSError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise _describe_load_error(path, err) from err
    fd, tmp = tempfile.mkstemp(prefix='vargo_checked_', suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        yield tmp
    finally:
        os.remove(tmp)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` durably and atomically.

    Temp file (``TEMP_PREFIX``) in the same directory -> fsync -> rename over ``path`` -> fsync
    of the directory: after a crash ``path`` is either the old file or the complete new one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
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
    _fsync_dir(directory)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically and durably (see :func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete the temporary files killed atomic writes left in ``directory``; return their names."""
    if not os.path.isdir(directory):
        return []
    stale = sorted(n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX))
    for name in stale:
        try:
            os.remove(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    return stale


# ----------------------------------------------------------------------------------------
# the plain checkpoint format
# ----------------------------------------------------------------------------------------
_TAG = '__vargo_type__'


def to_plain(obj: Any, where: str = 'checkpoint') -> Any:
    """``obj`` with every non-plain value replaced by plain data that loads under
    ``weights_only=True`` with no extra allow-list.

    ``HistoryBuffer`` -> ``{'__vargo_type__': 'HistoryBuffer', 'log': tensor, 'count': tensor,
    'max_length': int}``; numpy array -> ``{'__vargo_type__': 'ndarray', 'data': tensor}``;
    numpy scalar -> Python scalar. Anything else that is not a tensor, number, string, bytes,
    None, list, tuple or dict raises TypeError naming where it is (so a new stateful component
    that stores an object fails when its first checkpoint is written, not when it is loaded).
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if isinstance(obj, np.generic):  # before the Python types: np.float64 subclasses float
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype,
                                       torch.device, torch.Size)):
        return obj
    if isinstance(obj, HistoryBuffer):
        return {_TAG: 'HistoryBuffer', 'log': torch.from_numpy(np.asarray(obj._log_history).copy()),
                'count': torch.from_numpy(np.asarray(obj._count_history).copy()),
                'max_length': int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f'{where}: numpy object arrays cannot be stored in a checkpoint')
        return {_TAG: 'ndarray', 'data': torch.from_numpy(obj.copy())}
    if isinstance(obj, dict):
        items = [(k, to_plain(v, f'{where}.{k}')) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, (list, tuple)):
        out = [to_plain(v, f'{where}[{i}]') for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    raise TypeError(f'{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be stored '
                    f'in a vargo checkpoint (only tensors, numbers, strings, lists, tuples and '
                    f'dicts load without allowing code); convert it in the state_dict() that '
                    f'returns it')


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(obj, dict):
        tag = obj.get(_TAG)
        if tag == 'HistoryBuffer':
            from mmengine.logging.history_buffer import HistoryBuffer
            buf = HistoryBuffer(max_length=int(obj['max_length']))
            buf._log_history = obj['log'].numpy()
            buf._count_history = obj['count'].numpy()
            return buf
        if tag == 'ndarray':
            return obj['data'].numpy()
        items = [(k, from_plain(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    return obj


def _legacy_globals() -> list:
    """The classes checkpoints of vargo's first format (MMEngine's pickled message hub) need,
    each restricted to data: numeric numpy dtypes only, and a ``getattr`` that only returns
    ``HistoryBuffer``'s own statistics methods (pickle stores ``HistoryBuffer.min`` as
    ``getattr(HistoryBuffer, 'min')``)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    def history_buffer_method(obj, name):
        # pickle stored HistoryBuffer.min etc. (its statistics methods) as getattr(class, name)
        if obj is not HistoryBuffer or name not in ('min', 'max', 'current', 'mean'):
            raise pickle.UnpicklingError(f'legacy checkpoint: getattr({obj!r:.40}, {name!r}) '
                                         f'refused')
        return getattr(obj, name)

    def numeric_dtype(spec, *args):
        dtype = np.dtype(spec, *args)
        if dtype.hasobject:
            raise pickle.UnpicklingError('legacy checkpoint: numpy object dtype refused')
        return dtype

    allowed = [HistoryBuffer, np.ndarray, np._core.multiarray._reconstruct,
               np._core.multiarray.scalar, (history_buffer_method, 'builtins.getattr'),
               (numeric_dtype, 'numpy.dtype')]
    for name in ('Float64DType', 'Float32DType', 'Int64DType', 'Int32DType', 'BoolDType'):
        cls = getattr(np.dtypes, name, None)
        if cls is not None:
            allowed.append(cls)
    return allowed


def _load_vargo_file(path: str, map_location: Any) -> Any:
    """:func:`safe_load`, retrying a refused file as vargo's first checkpoint format."""
    try:
        return safe_load(path, map_location)
    except CheckpointRefused as refused:
        # vargo's first format pickled MMEngine's HistoryBuffer objects: retry with exactly
        # those classes, restricted (see _legacy_globals); anything else stays refused
        try:
            ckpt = safe_load(path, map_location, allow=tuple(_legacy_globals()))
        except CheckpointError:
            raise refused from None
        if not isinstance(ckpt, dict) or 'message_hub' not in ckpt:
            raise refused from None
        return ckpt


def load_training_checkpoint(path: str, map_location: Any = 'cpu') -> dict:
    """Load a checkpoint written by ``tools/train.py`` (any vargo format), data only.

    Returns the checkpoint with MMEngine's message-hub objects restored (:func:`from_plain`),
    ready for ``Runner.resume``.

    Raises:
        CheckpointRefused: the file holds non-data objects (see :func:`safe_load`).
        CheckpointError: unreadable/truncated, or not a training checkpoint.
    """
    ckpt = _load_vargo_file(path, map_location)
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt or 'meta' not in ckpt:
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f'{path}: not a checkpoint written by tools/train.py (top-level '
                              f'keys: {keys}; expected meta, state_dict, optimizer, message_hub)')
    return from_plain(ckpt)


def check_state_dict_keys(own: dict, given: dict, *, source: str, owner: str,
                          ignore: tuple[str, ...] = (), hint: str = '') -> None:
    """Raise :class:`StateDictMismatch` (one line) naming every key of ``given`` missing from,
    unexpected for, or shaped differently from ``own`` (a module's ``state_dict()``)."""
    missing = sorted(k for k in set(own) - set(given) if k not in ignore)
    unexpected = sorted(k for k in set(given) - set(own) if k not in ignore)
    shapes = sorted(f'{k} file {tuple(given[k].shape)} vs model {tuple(own[k].shape)}'
                    for k in set(own) & set(given)
                    if hasattr(given[k], 'shape') and given[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f'{source} does not match {owner}:']
        for what, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                           ('shape mismatches', shapes)):
            if keys:
                parts.append(f'{what} ({len(keys)}): {", ".join(keys[:20])}'
                             + (' ...' if len(keys) > 20 else '') + ';')
        parts.append(hint or 'check that the config (model size, task, vocabulary) is the one '
                             'the checkpoint was trained with')
        raise StateDictMismatch(' '.join(parts))


def load_state_dict_strict(module: nn.Module, state_dict: dict, *, source: str = 'checkpoint',
                           ignore: tuple[str, ...] = (),
                           drop: Optional[Callable[[str], bool]] = None,
                           hint: str = '') -> list[str]:
    """Load ``state_dict`` into ``module``; raise listing every missing, unexpected and
    shape-mismatched key (:func:`check_state_dict_keys`) before anything is loaded.

    The one strict loader of vargo: vargo's own checkpoints and every family's official files
    load through it.

    Args:
        module: the target.
        state_dict: the weights.
        source: a description of where the weights come from (for the message).
        ignore: key names both sides may lack (e.g. non-persistent caches).
        drop: keys of the file that are derived, not learned (an official file's RoPE table or
            KV cache): removed before the check, and returned.
        hint: the fix named at the end of a mismatch message (default: check the config's
            model size, task and vocabulary).

    Returns:
        the dropped keys, sorted.
    """
    dropped = sorted(k for k in state_dict if drop is not None and drop(k))
    if dropped:
        state_dict = {k: v for k, v in state_dict.items() if k not in set(dropped)}
    check_state_dict_keys(module.state_dict(), state_dict, source=source,
                          owner=type(module).__name__, ignore=ignore, hint=hint)
    filtered = {k: v for k, v in state_dict.items() if k not in ignore}
    result = module.load_state_dict(filtered, strict=False)
    bad = [k for k in result.missing_keys if k not in ignore]
    if bad:
        raise StateDictMismatch(f'{source}: keys not loaded: {bad}')
    return dropped


#: the name the family loaders used for :class:`StateDictMismatch` (kept for user code)
CheckpointKeyError = StateDictMismatch


def official_file_missing(path: str, *, what: str, sources: dict[str, str], family: str,
                          listing: str) -> FileNotFoundError:
    """``FileNotFoundError`` naming ``path`` and where it comes from: for a ``.safetensors``
    file, where vargo ships its Shapes base models and how they are rebuilt; otherwise where the
    official release publishes it (``sources``: file name -> URL; ``listing`` says where the
    family's files are listed)."""
    if str(path).endswith('.safetensors'):
        return FileNotFoundError(
            f'{what} file {path!r} not found. The Shapes base models are shipped in '
            f'components/benchmarks/weights/ (relative paths are relative to the working '
            f'directory: run from the repository root) and are rebuilt by '
            f'tools/pretrain_shapes.py (the command is in each model card, <name>.md).')
    name = os.path.basename(str(path))
    source = sources.get(name)
    where = (f'it is published at {source}' if source else
             f'official {family} files are {sorted(sources)} ({listing})')
    return FileNotFoundError(f'{what} file {path!r} not found: {where}. Download it there, or '
                             f'use a Shapes config (configs/*/*_shapes.py) that needs no '
                             f'download.')


def read_state_dict(path: str, *, what: str, containers: tuple[str, ...] = ('model', 'module',
                                                                             'state_dict'),
                    missing: Optional[Callable[[str], Exception]] = None,
                    hint: str = '') -> dict:
    """The state dict of a weights file, read so that no code in it can run.

    ``.safetensors``: the raw state dict (tensors keep their stored dtype). Otherwise
    :func:`safe_load` (``weights_only``; the ``argparse.Namespace`` official training files
    carry under ``"args"`` is the one class allowed), then the first of ``containers`` that holds
    a dict (``{"model": ...}`` of DDP files, ``{"module": ...}`` of DeepSpeed, ...), else the
    file itself if it is a dict of tensors.

    Args:
        path: the file.
        what: what it is, for messages ("LlamaGen GPT").
        containers: the top-level keys to look in, in order.
        missing: builds the error raised when the file does not exist (default: a plain
            ``FileNotFoundError`` naming it).
        hint: appended to the message when no state dict is found.
    """
    import argparse
    if not os.path.isfile(path):
        raise (missing(path) if missing is not None else
               FileNotFoundError(f'{what} file {path!r} not found'))
    if str(path).endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    ckpt = safe_load(path, 'cpu', allow=(argparse.Namespace,))
    for key in containers:
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor)
                                               for v in ckpt.values()):
        return ckpt
    top = sorted(ckpt)[:20] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise StateDictMismatch(f'{what} file {path!r} holds neither a state dict nor a dict with '
                            f'{" / ".join(repr(c) for c in containers)}; top-level keys: {top}'
                            + (f'; {hint}' if hint else ''))


class NoPolicyWeights(ValueError):
    """A file given as a training checkpoint holds no ``policy.*`` weights."""


def load_policy_from_checkpoint(policy: nn.Module, path: str) -> None:
    """Load the ``policy.*`` weights of a ``tools/train.py`` checkpoint into ``policy``, strictly
    (the frozen reference is never stored; tokenizers and text encoders are not in the policy's
    state dict).

    Raises:
        NoPolicyWeights: the file holds no ``policy.*`` keys (not a tools/train.py checkpoint).
        StateDictMismatch: the keys do not match the policy (names every missing/unexpected one).
        CheckpointError: the file is refused (not plain data), truncated or not a checkpoint.
    """
    state = _load_vargo_file(path, 'cpu')
    if not isinstance(state, dict):
        raise NoPolicyWeights(f'{path} holds a {type(state).__name__}, not policy weights: pass '
                              f'a checkpoint written by tools/train.py')
    state = state.get('state_dict', state)
    policy_state = {k[len('policy.'):]: v for k, v in state.items() if k.startswith('policy.')}
    if not policy_state:
        raise NoPolicyWeights(f'{path} holds no policy weights (keys policy.*): pass a '
                              f'checkpoint written by tools/train.py')
    load_state_dict_strict(policy, policy_state, source=path)


from mmengine.fileio import LocalBackend, register_backend  # noqa: E402


@register_backend('vargo_atomic', force=True)
class AtomicLocalBackend(LocalBackend):
    """MMEngine file backend whose writes are atomic and durable (:func:`atomic_write_bytes`).

    ``Runner.save_checkpoint`` writes the checkpoint file through the hook's file backend; with
    ``backend_args=dict(backend='vargo_atomic')`` an interrupted save never leaves a truncated
    ``iter_N.pth`` behind. (The ``last_checkpoint`` pointer and the deletion of old checkpoints
    are :class:`vargo.core.hooks.AtomicCheckpointHook`'s.)
    """

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(obj, str(filepath))

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write_bytes(obj.encode(encoding), str(filepath))
