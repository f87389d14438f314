"""The evaluation protocol: everything an evaluation's numbers depend on besides the weights.

``tools/eval.py`` writes it as the ``"protocol"`` object of every ``eval.json`` (a plain JSON
dict, built from the config's ``eval_cfg`` as resolved with the command line's overrides):

* ``sampler``: the type and every setting of the sampler that drew the samples (constructor
  defaults filled in; ``cfg_scale`` is the scale used, a list with ``--cfg-scales``);
* ``sampling``: ``seed``, ``samples_per_condition``, ``max_conditions``, ``batch_conditions``
  (the batching sets the noise of each condition);
* ``splits``: the condition dataset config of every evaluated split;
* ``scored_heads``: the class of each reward head scored (``<name>: <class>``) and
  ``metric_heads``: the configs of ``eval_cfg.metric_heads``;
* ``fidelity``: None, or the feature extractor (name, layer, weights file and its sha256), the
  metrics and, per split, the reference (statistics files with their sha256 and key prefix,
  or the real images: a dataset config, a config file with its sha256, or a folder with the
  sha256 of its listing);
* ``vargo_commit``: ``git rev-parse HEAD`` of the vargo checkout (``+dirty`` when tracked files
  differ from it), None outside a git checkout.

Two evaluations are comparable when their protocols are equal up to :data:`NOT_COMPARED`
(:func:`identity`): the commit, and sampler settings that only set what a rollout records for
training (the log-prob spec, MAR's update subsets and extra chains), not what it draws.
Paths inside the repository are written relative to it, so two checkouts agree.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import subprocess
from typing import Iterable, Optional

__all__ = ['REPO_ROOT', 'NOT_COMPARED', 'file_sha256', 'file_record', 'folder_record',
           'shown_path', 'vargo_commit', 'plain', 'resolved_settings', 'identity',
           'differences', 'format_protocol', 'group_protocols', 'PROTOCOL_VERSION']

PROTOCOL_VERSION = 1
#: the checkout this module belongs to (core/ is one level below it)
# realpath: a checkout reached through a symlinked package directory still finds its git root
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
#: protocol keys (``a.b`` paths) left out when two protocols are compared
#: (``packed_weights``: the same products summed in another order, not another distribution)
NOT_COMPARED = ('vargo_commit', 'sampler.logprob_cfg', 'sampler.decode_images',
                'sampler.record_predictions', 'sampler.loss_ar_steps',
                'sampler.loss_diffusion_steps', 'sampler.mte_chains', 'sampler.mte_top_fraction',
                'sampler.packed_weights')
#: a file or folder is compared by its content hash, not by where it was: ``{'path': ...,
#: 'sha256': ...}`` compares the sha256 only (two checkouts, one file)
LOCATION_KEYS = {'path': 'sha256', 'folder': 'listing_sha256'}


#: files at least this large (checkpoints) have their hash cached while their stat is unchanged;
#: smaller ones (statistics, configs, small weights) are hashed on every call
SHA256_CACHE_MIN_BYTES = 64 << 20


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    return _hash_file(path)


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes.

    Files of :data:`SHA256_CACHE_MIN_BYTES` and more (checkpoints) are hashed once while their
    size, mtime, ctime and inode are unchanged; smaller files are hashed every time, so a small
    file rewritten within the file system's timestamp granularity is never reported stale.
    """
    path = os.path.abspath(os.path.expanduser(str(path)))
    st = os.stat(path)
    if st.st_size < SHA256_CACHE_MIN_BYTES:
        return _hash_file(path)
    return _cached_sha256(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def shown_path(path: str) -> str:
    """``path`` relative to the repository when it lies inside it, else as given."""
    full = os.path.realpath(os.path.expanduser(str(path)))     # through symlinked packages
    if os.path.commonpath([full, REPO_ROOT]) == REPO_ROOT:
        return os.path.relpath(full, REPO_ROOT)
    return str(path)


def file_record(path: str, **extra) -> dict:
    """``{'path': shown path, 'sha256': ..., **extra}`` of an existing file."""
    return {'path': shown_path(path), 'sha256': file_sha256(path), **extra}


def folder_record(path: str) -> dict:
    """A folder of images: its path, file count and the sha256 of its listing (relative
    names and sizes, sorted), which changes when a file is added, removed or resized."""
    lines = []
    for root, _, files in os.walk(os.path.expanduser(str(path))):
        for name in files:
            full = os.path.join(root, name)
            lines.append(f'{os.path.relpath(full, path)}\t{os.path.getsize(full)}\n')
    digest = hashlib.sha256(''.join(sorted(lines)).encode()).hexdigest()
    return {'folder': shown_path(path), 'files': len(lines), 'listing_sha256': digest}


def vargo_commit() -> Optional[str]:
    """The vargo checkout's commit (:func:`git_commit` of the repository root)."""
    return git_commit(REPO_ROOT)


def git_commit(root: str) -> Optional[str]:
    """The commit of the git work tree at ``root`` (``+dirty`` if tracked files changed);
    None without git or outside a work tree."""
    def git(*args):
        return subprocess.run(['git', *args], cwd=root, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        head = git('rev-parse', 'HEAD')
        dirty = git('status', '--porcelain', '--untracked-files=no')
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ('+dirty' if dirty else '')


def plain(value):
    """``value`` as JSON data: config dicts become dicts, tuples lists, other objects text."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def resolved_settings(cfg: dict, cls) -> dict:
    """``cfg`` (a component config) with the unset keyword defaults of ``cls`` (if known)
    filled in, as JSON data; ``type`` first."""
    out = {'type': plain(cfg.get('type', getattr(cls, '__name__', None)))}
    out.update({k: plain(v) for k, v in cfg.items() if k != 'type'})
    if cls is None:
        return out
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name not in out and name != 'self' and param.default is not inspect.Parameter.empty:
            out[name] = plain(param.default)
    return out


def _flatten(value, prefix: str = '') -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f'{prefix}{k}.'))
        return out
    return {prefix[:-1]: value}


def _compared(protocol: dict) -> dict:
    flat = _flatten(protocol)

    def located(key: str) -> bool:       # a location whose content hash is recorded beside it
        head, _, last = key.rpartition('.')
        digest = LOCATION_KEYS.get(last)
        return digest is not None and (f'{head}.{digest}' if head else digest) in flat

    return {k: v for k, v in flat.items()
            if not located(k) and not any(k == p or k.startswith(p + '.') for p in NOT_COMPARED)}


def identity(protocol: dict) -> str:
    """Canonical text of the compared part of ``protocol`` (equal text: comparable runs)."""
    return json.dumps(_compared(protocol), sort_keys=True)


def differences(protocols: Iterable[dict]) -> list[str]:
    """The compared keys (``a.b`` paths) whose values are not the same in all ``protocols``."""
    flat = [_compared(p) for p in protocols]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]


def group_protocols(labelled: Iterable[tuple[str, Optional[dict]]]
                    ) -> tuple[list[tuple[dict, list[str]]], list[str]]:
    """``[(protocol, labels)]`` per distinct protocol (first seen first) and the labels whose
    evaluation recorded none."""
    groups: dict[str, tuple[dict, list[str]]] = {}
    missing = []
    for label, protocol in labelled:
        if not protocol:
            missing.append(label)
            continue
        groups.setdefault(identity(protocol), (protocol, []))[1].append(label)
    return list(groups.values()), missing


def _settings(d: dict, skip=('type',)) -> str:
    return ', '.join(f'{k}={json.dumps(v)}' for k, v in d.items() if k not in skip)


def _reference_lines(split: str, ref: dict) -> list[str]:
    lines = []
    stats = ref.get('fid_statistics')
    if stats:
        prefix = f' (keys {stats["prefix"]}*)' if stats.get('prefix') else ''
        lines.append(f'  reference {split}: FID statistics {stats["path"]}{prefix} '
                     f'sha256 {stats["sha256"]}')
    images = ref.get('real_images')
    if images:
        lines.append(f'  reference {split}: real images {_settings(images, skip=())}')
    return lines


def format_protocol(protocol: Optional[dict]) -> list[str]:
    """The protocol as indented text lines (printed under the tools' tables)."""
    if not protocol:
        return ['evaluation protocol: not recorded (eval.json written before tools/eval.py '
                'recorded it); the comparison cannot be checked']
    sampler = protocol.get('sampler', {})
    s = protocol.get('sampling', {})
    lines = ['evaluation protocol:',
             f'  sampler {sampler.get("type")}: {_settings(sampler)}',
             f'  seed {s.get("seed")}, {s.get("samples_per_condition")} samples per condition, '
             f'max_conditions={json.dumps(s.get("max_conditions"))}, '
             f'{s.get("batch_conditions")} conditions per batch']
    for name, ds in (protocol.get('splits') or {}).items():
        lines.append(f'  split {name}: {ds.get("type")}({_settings(ds)})')
    heads = dict(protocol.get('scored_heads') or {})
    heads.update({k: v.get('type') for k, v in (protocol.get('metric_heads') or {}).items()})
    if heads:
        lines.append('  scored heads: ' + ', '.join(f'{k}={v}' for k, v in heads.items()))
    fid = protocol.get('fidelity')
    if fid:
        ex = fid.get('extractor', {})
        weights = ex.get('weights')
        w = (f'weights {weights["path"]} sha256 {weights["sha256"]}' if weights
             else 'no weights file')
        settings = _settings(fid.get('settings') or {})
        lines.append(f'  extractor {ex.get("name")} (layer {ex.get("feature_layer")}, {w}); '
                     f'metrics {", ".join(fid.get("metrics") or [])}'
                     + (f' ({settings})' if settings else ''))
        for split, ref in (fid.get('references') or {}).items():
            lines += _reference_lines(split, ref)
    else:
        lines.append('  fidelity: not measured')
    lines.append(f'  vargo commit {protocol.get("vargo_commit") or "unknown"}')
    return lines
