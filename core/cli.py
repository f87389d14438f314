"""Command-line validation shared by the tools (``tools/eval.py``, ``tools/sample.py``,
``tools/fid_stats.py``).

Every mistake on a tool's command line ends the same way: one line ``error: <argument>: <what is
wrong with the value>; <the fix>`` on stderr and exit code 2, never a traceback.

* :class:`ArgumentParser`: argparse whose errors are that one line (argparse's own prints the
  usage and ``prog: error: argument ...``); ``argument --num: ...`` becomes ``--num: ...``.
* ``type=`` helpers, checked while the command line is parsed (before anything is built):
  :func:`positive_int`, :func:`non_negative_int`, :func:`int_at_least`, :func:`cfg_scale`
  (a finite number > 0; 1 = no guidance), :func:`non_empty_text`, :func:`existing_file`,
  :func:`existing_path` and :func:`checkpoint_file` (an existing file that starts like a torch
  checkpoint). :class:`CfgOptionsAction` is MMEngine's ``DictAction`` with a malformed
  ``KEY=VALUE`` reported the same way.
* Checks that need the config or the built policy: :func:`check_cfg_scale` (a value from a
  config), :func:`check_conditions` (``--classes`` / ``--prompts`` against the policy's
  conditioning) and :func:`load_policy_checkpoint` (a checkpoint's policy weights; every failure
  to load is a :class:`UsageError` naming the file).
* :func:`fail` prints an exception as the ``error:`` line and returns 2 (``return fail(e)`` in a
  tool's ``main``).
* :func:`apply_heap_setting` is the first step of every tool that builds models
  (:mod:`vargo.core.heap`).

The one exception to "one line": a ``FileNotFoundError`` listing several missing files of a
config (each with where it is published) keeps one file per line after the ``error:`` line, as
``tools/train.py`` prints it.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import sys
from typing import Optional, Sequence

from mmengine.config import DictAction

__all__ = ['UsageError', 'ArgumentParser', 'CfgOptionsAction', 'int_at_least', 'positive_int',
           'non_negative_int', 'cfg_scale', 'non_empty_text', 'existing_file', 'existing_path',
           'checkpoint_file', 'check_cfg_scale', 'policy_conditioning', 'check_conditions',
           'load_policy_checkpoint', 'one_line', 'fail', 'apply_heap_setting', 'CHECKPOINT_HELP']

#: how the tools describe the checkpoint they accept
CHECKPOINT_HELP = 'a checkpoint written by tools/train.py (work_dirs/<config>/iter_N.pth)'
_ZIP_MAGIC = b'PK\x03\x04'            # torch.save's format since torch 1.6
_PICKLE_MAGIC = b'\x80\x02'           # the legacy format: a protocol-2 pickle stream


class UsageError(ValueError):
    """A bad argument or configuration value; the tools report it as one ``error:`` line and
    exit with code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line ``error: ...`` (exit code 2).

    Sub-parsers made by :meth:`add_subparsers` are of this class too.
    """

    def error(self, message: str):
        message = re.sub(r'^argument ([^:]+): ', r'\1: ', message)
        if 'required' in message or 'unrecognized' in message or 'invalid choice' in message:
            message += f' (see {self.prog} --help)'
        sys.exit(fail(message))


class CfgOptionsAction(DictAction):
    """MMEngine's ``DictAction`` (``--cfg-options KEY=VALUE ...``); an item without ``=`` is an
    argument error instead of a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if '=' not in v or v.startswith('=')]
        if bad:
            raise argparse.ArgumentError(
                self, f'{" ".join(bad)} is not KEY=VALUE; write e.g. sampler.cfg_scale=1.0')
        super().__call__(parser, namespace, values, option_string)


# ---- type= helpers -------------------------------------------------------------------------------
def int_at_least(minimum: int, why: str = ''):
    """A ``type=`` that accepts integers ``>= minimum`` (``why`` is added to the message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f'must be an integer >= {minimum}{f" ({why})" if why else ""}, got {text}')
        return value

    parse.__name__ = f'int_at_least_{minimum}'
    return parse


positive_int = int_at_least(1)
positive_int.__name__ = 'positive_int'
non_negative_int = int_at_least(0)
non_negative_int.__name__ = 'non_negative_int'


def cfg_scale(text) -> float:
    """A ``type=`` for a classifier-free guidance scale: a finite number > 0 (1 = no guidance;
    0 and negative scales are rejected, as every tool does)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f'must be a finite number > 0 (1 = no guidance, e.g. 1.5 or 4.0), got {text}')
    return value


def non_empty_text(text: str) -> str:
    """A ``type=`` for a prompt: any text but empty or whitespace only."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f'an empty prompt ({text!r}) is not allowed; give the '
                                         f'text, e.g. "a red circle"')
    return text


def existing_file(text: str) -> str:
    """A ``type=`` for a file that must exist (not a directory)."""
    path = os.path.expanduser(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f'{text} is a directory; give a file')
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f'{text} does not exist; give the path of an existing '
                                         f'file')
    return text


def existing_path(text: str, what: str = 'an existing file or directory') -> str:
    """A ``type=`` for a file or directory that must exist (``what`` describes it in the
    message: ``type=lambda t: existing_path(t, 'an image folder')``)."""
    if not os.path.exists(os.path.expanduser(text)):
        raise argparse.ArgumentTypeError(f'{text} does not exist; give {what}')
    return text


def checkpoint_file(text: str) -> str:
    """A ``type=`` for a checkpoint: an existing file whose first bytes are those of a torch
    file (a zip archive, or a legacy pickle stream), so a config or a text file given by mistake
    is refused before anything is loaded."""
    path = os.path.expanduser(text)
    if os.path.isdir(path):
        found = sorted((f for f in os.listdir(path) if f.endswith('.pth')),
                       key=lambda f: os.path.getmtime(os.path.join(path, f)))
        example = os.path.join(text, found[-1] if found else 'iter_N.pth')
        raise argparse.ArgumentTypeError(f'{text} is a directory; give a checkpoint file in it, '
                                         f'e.g. {example}')
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f'{text}: checkpoint not found; give the path of '
                                         f'{CHECKPOINT_HELP}')
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
    except OSError as e:
        raise argparse.ArgumentTypeError(f'{text} cannot be read ({e.strerror}); give a readable '
                                         f'checkpoint file') from e
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise argparse.ArgumentTypeError(f'{text} is not a checkpoint written by tools/train.py '
                                         f'(not a torch file); give one, e.g. '
                                         f'work_dirs/<config>/iter_N.pth')
    return text


# ---- checks after parsing ------------------------------------------------------------------------
def check_cfg_scale(value, where: str) -> None:
    """Raise :class:`UsageError` unless ``value`` (a CFG scale from ``where``, e.g.
    ``'sampler.cfg_scale'``) is a finite number > 0, as :func:`cfg_scale` requires."""
    try:
        cfg_scale(value)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f'{where}: {e}') from None


def family_sampler_cfg(sampler_cfg):
    """The config dict of the sampler that draws the samples: ``sampler_cfg`` itself, or for a
    wrapper sampler (one that holds its sampler's config under ``sampler``) the innermost one,
    where settings such as ``cfg_scale`` live."""
    while isinstance(sampler_cfg.get('sampler'), dict):
        sampler_cfg = sampler_cfg['sampler']
    return sampler_cfg


def evaluation_sampler_cfg(sampler_cfg):
    """A copy of :func:`family_sampler_cfg` ``(sampler_cfg)`` with its class's training-only
    settings switched off (:attr:`~vargo.core.interfaces.Sampler.TRAINING_ONLY`): the config of
    the sampler that :meth:`~vargo.core.interfaces.Sampler.evaluation_sampler` returns, which is
    what evaluations draw with and record in their protocol."""
    import copy

    from vargo.core.registry import SAMPLERS
    drawing = copy.deepcopy(family_sampler_cfg(sampler_cfg))
    cls = SAMPLERS.get(drawing.get('type')) if isinstance(drawing.get('type'), str) \
        else drawing.get('type')
    for name, value in (getattr(cls, 'TRAINING_ONLY', None) or {}).items():
        drawing[name] = value
    return drawing


def policy_conditioning(policy) -> tuple[str, Optional[int]]:
    """``('text', None)`` for a policy conditioned on prompts, ``('class', num_classes)`` for a
    class-conditional one (``num_classes`` None when the policy does not say).

    Read from the policy's attributes: ``task == 't2i'`` means text-conditional; the number of
    classes is ``policy.num_classes`` or ``policy.cfg.num_classes``.
    """
    if getattr(policy, 'task', None) == 't2i':
        return 'text', None
    num = getattr(policy, 'num_classes', None)
    if num is None:
        num = getattr(getattr(policy, 'cfg', None), 'num_classes', None)
    return 'class', (int(num) if num is not None else None)


def _shown(values: Sequence, limit: int = 6) -> str:
    items = [repr(v) if isinstance(v, str) else str(v) for v in values]
    return ' '.join(items[:limit]) + (' ...' if len(items) > limit else '')


def check_conditions(policy_or_num_classes, classes: Optional[Sequence[int]] = None,
                     prompts: Optional[Sequence[str]] = None) -> None:
    """Check ``--classes`` / ``--prompts`` against what the policy is conditioned on.

    Args:
        policy_or_num_classes: a built policy (see :func:`policy_conditioning`), the number of
            classes of a class-conditional one, or ``'text'`` for a text-conditional one.
        classes: class ids given on the command line (None: not given).
        prompts: prompts given on the command line (None: not given).

    Raises:
        UsageError: class ids for a text-conditional policy, prompts for a class-conditional
            one, a class id outside ``[0, num_classes)``, or an empty prompt.
    """
    if isinstance(policy_or_num_classes, str) and policy_or_num_classes == 'text':
        kind, num = 'text', None
    elif isinstance(policy_or_num_classes, int):
        kind, num = 'class', policy_or_num_classes
    else:
        kind, num = policy_conditioning(policy_or_num_classes)
    if classes is not None:
        if kind == 'text':
            raise UsageError(f'--classes {_shown(classes)}: this config\'s policy is '
                             f'text-conditional; give --prompts "..." instead')
        bad = [c for c in classes if c < 0 or (num is not None and c >= num)]
        if bad:
            valid = f'0..{num - 1}' if num is not None else '>= 0'
            raise UsageError(f'--classes {_shown(classes)}: {_shown(bad)} out of range; this '
                             f'policy has {num} classes, give ids in {valid}')
    if prompts is not None:
        if kind == 'class':
            valid = f' in 0..{num - 1}' if num is not None else ''
            raise UsageError(f'--prompts {_shown(prompts)}: this config\'s policy is '
                             f'class-conditional; give --classes with ids{valid} instead')
        for text in prompts:
            try:
                non_empty_text(text)
            except argparse.ArgumentTypeError as e:
                raise UsageError(f'--prompts: {e}') from None


def one_line(message, per_line: int = 500) -> str:
    """``message`` on one line: its lines stripped, lists of keys (``keys (N): a, b, c, ...``)
    cut to their first three, each line cut to ``per_line`` characters, and joined (``;``
    between them, a space after a line ending in ``:``)."""
    out = ''
    for ln in str(message).splitlines():
        ln = re.sub(r'(keys \(\d+\): (?:[^,;]+, ){3})[^;]*', r'\1...', ln.strip())
        if not ln:
            continue
        if len(ln) > per_line:
            ln = ln[:per_line - 4].rstrip(' ,') + ' ...'
        out += ln if not out else (' ' if out.endswith(':') else '; ') + ln
    return out


def _load_failure(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if 'Unsupported' in ln), lines[0] if lines else '')
    return f'{type(exc).__name__}: {detail}' if detail else type(exc).__name__


def load_policy_checkpoint(policy, path: str, *, argument: str = 'checkpoint') -> None:
    """:func:`vargo.core.checkpoint.load_policy_from_checkpoint`, every failure a
    :class:`UsageError` (one line naming ``argument`` and the file): no ``policy.*`` weights,
    keys that do not match the policy, or a file ``torch.load(weights_only=True)`` refuses or
    cannot read."""
    from .checkpoint import load_policy_from_checkpoint
    try:
        load_policy_from_checkpoint(policy, path)
    except ValueError as e:            # NoPolicyWeights and the checkpoint module's own errors
        raise UsageError(f'{argument}: {one_line(e)}') from e
    except (pickle.UnpicklingError, EOFError, OSError, AttributeError, TypeError,
            RuntimeError) as e:        # RuntimeError: StateDictMismatch, or torch.load's own
        from .checkpoint import StateDictMismatch
        if isinstance(e, StateDictMismatch):
            raise UsageError(f'{argument}: {one_line(e)}') from e
        raise UsageError(f'{argument}: {path} could not be loaded ({one_line(_load_failure(e))}'
                         f'); give {CHECKPOINT_HELP}') from e


def fail(error) -> int:
    """Print ``error`` (an exception or a message) as one line ``error: ...`` on stderr (see
    :func:`one_line`; a ``FileNotFoundError`` listing several missing files keeps one file per
    line); return 2, the tools' exit code for a mistake."""
    text = str(error)
    if not (isinstance(error, FileNotFoundError) and '\n' in text.strip()):
        text = one_line(text)
    print(f'error: {text}', file=sys.stderr)
    return 2


def apply_heap_setting() -> dict:
    """The tools' start: :func:`vargo.core.heap.keep_freed_memory` (README "Heap"); a bad
    ``VARGO_HEAP`` ends the tool with the one ``error:`` line and exit code 2."""
    from .heap import keep_freed_memory
    try:
        return keep_freed_memory()
    except ValueError as e:
        sys.exit(fail(e))
