"""Constructor checks shared by the samplers: every setting is checked for type and range when
the sampler is built, so a bad value fails before training with a message that names it.

Each check raises ``ValueError`` (``"<Sampler> <setting>=<value> ...; <fix>"``) or returns the
value unchanged; nothing is converted, so the numbers a sampler uses are the configured ones.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ['check_real', 'check_int', 'check_bool', 'check_choice', 'check_sampling']

LOGPROB_MODES = ('none', 'rollout')


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _what(v: Any) -> str:
    name = type(v).__name__
    return f'{v!r} ({"an" if name[:1] in "aeiou" else "a"} {name})'


def check_real(owner: str, name: str, value, *, lo: float = -math.inf, hi: float = math.inf,
               lo_open: bool = False, hint: str = '') -> Any:
    """A finite real number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    ok = _is_real(value) and math.isfinite(value) and (
        value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        if hi == math.inf:
            rng = f"> {lo:g}" if lo_open else f">= {lo:g}"
        else:
            rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ValueError(f'{owner} {name}={_what(value)} must be a finite number {rng}'
                         + (f'; {hint}' if hint else ''))
    return value


def check_int(owner: str, name: str, value, *, lo: int, hint: str = '') -> Any:
    """An int (not a bool, not a float) ``>= lo``."""
    if not _is_int(value) or value < lo:
        raise ValueError(f'{owner} {name}={_what(value)} must be an int >= {lo}'
                         + (f'; {hint}' if hint else ''))
    return value


def check_bool(owner: str, name: str, value) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f'{owner} {name}={_what(value)} must be True or False')
    return value


def check_choice(owner: str, name: str, value, allowed) -> Any:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f'{owner} {name}={_what(value)} is not one of '
                         f'{", ".join(repr(a) for a in allowed)}')
    return value


def check_sampling(owner: str, *, cfg_scale, temperature, logprob_cfg, top_k=0,
                   top_p=1.0) -> None:
    """The settings every sampler shares (see :class:`vargo.core.types.LogprobSpec`)."""
    check_real(owner, 'cfg_scale', cfg_scale, lo=0.0,
               hint='it is the guidance weight w of uncond + w (cond - uncond): 1 = no '
                    'guidance, > 1 = stronger guidance (LlamaGen 4.0)')
    check_real(owner, 'temperature', temperature, lo=0.0, lo_open=True,
               hint='1.0 samples the model distribution')
    check_int(owner, 'top_k', top_k, lo=0, hint='0 disables top-k truncation')
    check_real(owner, 'top_p', top_p, lo=0.0, hi=1.0, lo_open=True,
               hint='1.0 disables nucleus truncation')
    check_choice(owner, 'logprob_cfg', logprob_cfg, LOGPROB_MODES)
