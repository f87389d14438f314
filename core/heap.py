"""Keep freed memory on the C heap, so the next iteration's tensors do not page-fault again.

A training step allocates and frees the same large activations every iteration. With glibc's
default settings, blocks above a (dynamic) size threshold are handed back to the kernel when they
are freed (``munmap``, or trimming the top of the heap), and the next step's tensors of the same
size touch fresh zero pages: one page fault per 4 KiB, on the thread that writes the first
element, in the middle of a matrix product. :func:`keep_freed_memory` sets glibc's mmap
threshold to its maximum (32 MiB) and turns trimming off, once, so blocks up to 32 MiB come from
the heap and the heap never shrinks: freed activations are reused as they are.

Measured with ``tools/benchmark.py`` (README, "Heap"): the GPT-B update (8 x 256 tokens, 1
thread) +14% on an Intel Xeon (AVX-512), +3-8% on an AMD EPYC (single runs); the peak resident
memory grows by a few percent, and memory freed after a peak stays with the process instead of
going back to the system (the next peak reuses it).

The tools that build models call it at start (through
:func:`vargo.core.cli.apply_heap_setting`). It changes nothing where the C library is not
glibc, when the user set glibc's own variables (``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_``: theirs are kept), or when ``VARGO_HEAP=glibc`` asks for glibc's
defaults. It never changes a result: only where freed memory goes.
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional

__all__ = ['keep_freed_memory', 'heap_setting', 'HEAP_ENV', 'MMAP_THRESHOLD']

#: environment variable: ``keep`` (the default) or ``glibc`` (leave glibc's settings alone)
HEAP_ENV = 'VARGO_HEAP'
#: glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: the largest mmap threshold glibc accepts on 64-bit systems (half its 64 MiB heap size)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: mallopt's M_TRIM_THRESHOLD value that disables trimming (mallopt(3))
_NEVER_TRIM = -1
_GLIBC_VARIABLES = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')

_applied: Optional[dict] = None


def _glibc() -> Optional[ctypes.CDLL]:
    """The running process's C library if it is glibc (it has ``gnu_get_libc_version``), else
    None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD) -> dict:
    """Set glibc's mmap threshold to ``mmap_threshold`` bytes and turn heap trimming off
    (``mallopt(M_MMAP_THRESHOLD, n)``, ``mallopt(M_TRIM_THRESHOLD, -1)``) unless the user chose
    otherwise.

    Returns what was done, for logs and benchmark records: ``{'setting': 'keep',
    'mmap_threshold': n, 'trim': False}`` when applied, else ``{'setting': ..., 'reason':
    ...}`` with setting ``glibc`` (``VARGO_HEAP=glibc``), ``user`` (glibc's own variables set) or
    ``unavailable`` (not glibc). Idempotent: a second call returns the first call's record.
    """
    global _applied
    if _applied is not None:
        return dict(_applied)
    choice = os.environ.get(HEAP_ENV, 'keep').strip().lower()
    if choice not in ('keep', 'glibc'):
        raise ValueError(f'{HEAP_ENV}={os.environ[HEAP_ENV]!r} is not a heap setting; '
                         f'use {HEAP_ENV}=keep (the default) or {HEAP_ENV}=glibc')
    if not 0 < int(mmap_threshold) <= MMAP_THRESHOLD:
        raise ValueError(f'mmap_threshold={mmap_threshold} is out of range; glibc accepts '
                         f'1 to {MMAP_THRESHOLD} bytes')
    user_set = [name for name in _GLIBC_VARIABLES if name in os.environ]
    libc = None if choice == 'glibc' or user_set else _glibc()
    if choice == 'glibc':
        record = dict(setting='glibc', reason=f'{HEAP_ENV}=glibc')
    elif user_set:
        record = dict(setting='user', reason=' and '.join(user_set) + ' set in the environment')
    elif libc is None:
        record = dict(setting='unavailable', reason='the C library is not glibc')
    else:
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1,
              libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1)
        if not all(ok):
            raise RuntimeError(f'mallopt refused M_MMAP_THRESHOLD={mmap_threshold} or '
                               f'M_TRIM_THRESHOLD={_NEVER_TRIM}; set {HEAP_ENV}=glibc to skip it')
        record = dict(setting='keep', mmap_threshold=int(mmap_threshold), trim=False)
    _applied = record
    return dict(record)


def heap_setting() -> Optional[dict]:
    """The record of this process's :func:`keep_freed_memory` call, or None if none was made."""
    return None if _applied is None else dict(_applied)
