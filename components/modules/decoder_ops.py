"""Elementwise steps of the image decoders without new allocations when autograd is off.

A 256 px decoder's activations are tens to hundreds of MB. glibc serves allocations that large
with fresh ``mmap`` pages and returns them to the OS when freed, so every out-of-place
elementwise op pays a page fault per 4 KB of its output before it writes a byte, which can cost
several times the op itself. In the two-pass operator profiles with these steps in place
(``tools/benchmark.py --op-profile``; README, "Operator profiles") the swish is 1-3% of a
VQ-16, KL-16 or VAR decode. Written in place the results are the same
bits: the same kernels, and ``h + x`` equals ``x + h`` exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['add_residual']


def add_residual(x: Tensor, h: Tensor) -> Tensor:
    """``x + h`` for a residual block whose branch output ``h`` is a fresh tensor nothing else
    holds: added into ``h`` with autograd off, out of place with it on (training)."""
    return x + h if torch.is_grad_enabled() else h.add_(x)
