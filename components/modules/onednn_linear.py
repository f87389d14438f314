"""``nn.Linear`` layers whose training forward and backward run on oneDNN (CPU, fp32).

The update (a teacher-forced forward and its backward) spends most of its time in the linear
layers' matrix products. Through ``F.linear``'s autograd PyTorch runs them as ``aten::mm`` /
``addmm`` (MKL's SGEMM on x86), which on this project's AMD machines reached 48-64% of the
GEMM peak in the update profiles; oneDNN's inner product, which picks the CPU's widest vector
kernels, runs the same shapes near the peak (README, "Performance"). :class:`OneDnnLinear` is an
``nn.Linear`` (same parameters, state-dict keys, initialisation and ``repr`` fields) whose
forward, with autograd on, is :class:`OneDnnLinearFunction`, three inner products
``A B^T`` of oneDNN:

* forward ``y = x W^T + b`` (``A = x``, ``B = W``),
* grad-input ``dx = dy W`` (``A = dy``, ``B = W^T``),
* grad-weight ``dW = dy^T x`` (``A = dy^T``, ``B = x^T``), grad-bias ``db = sum_rows dy``,

where ``W^T``, ``dy^T`` and ``x^T`` are passed as strided views: oneDNN reads them in place, so
the backward makes no transposed copy (an earlier version copied ``W^T`` in every backward,
which cost more than it saved on VAR-d16's adaptive-LayerNorm layers, 25 MB weights applied to
2 rows). The gradients equal ``F.linear``'s up to float summation order (about 1e-6 relative).
Without autograd it calls ``F.linear`` (the grad-free decode has its own path,
:mod:`~vargo.components.modules.packed_linear`); other dtypes, devices and tensor subclasses
(FSDP's DTensors) also keep ``F.linear``.

:func:`use_onednn_linears` turns the large ``nn.Linear`` layers of a module into
:class:`OneDnnLinear` in place (a class change: no copy, no new parameters), leaving layers
with fewer than :data:`MIN_WEIGHT_ELEMENTS` weight elements on ``F.linear`` so that small models
(the Shapes benchmark's) compute exactly as before. The families' policies call it on
their trainable model when built (their ``onednn_linears`` option). Which kernel is faster
depends on the CPU: MKL's SGEMM is Intel's own, and ``tools/benchmark.py --linear-kernels-ab``
(README, "Performance") measured the update 1.04-1.15x faster with oneDNN on a 2-core AMD EPYC
(GPT-B, VAR-d16, MAR-B, a cin-width VQGAN transformer) but 0.80-0.89x as fast on a 2-core Intel
Xeon (GPT-B, VAR-d16, a 1B-width Janus-Pro language model). So LlamaGen, VAR, MAR and the VQGAN
transformer default to ``'auto'`` (:func:`onednn_linears_auto`: on unless the CPU is Intel's),
and Janus-Pro to False.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['MIN_WEIGHT_ELEMENTS', 'OneDnnLinear', 'OneDnnLinearFunction', 'onednn_linear',
           'onednn_linear_supported', 'onednn_linears_option', 'onednn_linears_auto', 'cpu_vendor',
           'use_onednn_linears']

#: layers whose weight has fewer elements keep ``F.linear`` in training: the Shapes benchmark's
#: models (width 128, at most 2^17 weight elements per layer) train bit-exactly as before, and
#: every measured gain was on layers of 768 x 768 (2^19.2) and up
MIN_WEIGHT_ELEMENTS = 1 << 18


def onednn_linear_supported() -> bool:
    """Whether this torch build has oneDNN's linear on the CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return hasattr(torch.ops.mkldnn, '_linear_pointwise')
    except RuntimeError:            # an op namespace that fails to resolve
        return False


def _inner_product(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``x [N, in] @ weight[out, in]^T + bias`` by oneDNN's inner product (no autograd); either
    operand may be a strided view (a transpose), which oneDNN reads in place."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')


class OneDnnLinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` for ``x [N, in]`` with oneDNN products (module doc); backward
    ``dx = dy W``, ``dW = dy^T x`` (transposed operands as views, no copies), ``db = sum_n dy``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _inner_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _inner_product(grad_out, weight.t(), None)
        if ctx.needs_input_grad[1]:
            gw = _inner_product(grad_out.t(), x.t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum(0)
        return gx, gw, gb


def _onednn_applies(x: Tensor, weight: Tensor) -> bool:
    """Whether a call may take the oneDNN training path: autograd on and recording this call
    (the input or the weight needs a gradient), plain fp32 CPU tensors."""
    return (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.device.type == 'cpu' and weight.device.type == 'cpu'
            and type(x) is torch.Tensor and type(weight.detach()) is torch.Tensor)


def onednn_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)`` with the oneDNN training products when autograd records
    the call and the tensors are plain fp32 CPU tensors, else ``F.linear`` itself; any leading
    dims."""
    if not _onednn_applies(x, weight):
        return F.linear(x, weight, bias)
    y = OneDnnLinearFunction.apply(x.reshape(-1, x.shape[-1]).contiguous(), weight, bias)
    return y.view(*x.shape[:-1], y.shape[-1])


class OneDnnLinear(nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`onednn_linear` (module doc); made from an
    existing layer by :func:`use_onednn_linears`, never constructed directly by the models."""

    def forward(self, x: Tensor) -> Tensor:
        return onednn_linear(x, self.weight, self.bias)


def use_onednn_linears(module: nn.Module, min_weight_elements: Optional[int] = None) -> int:
    """Turn every ``nn.Linear`` in ``module`` with at least ``min_weight_elements`` weight
    elements (default :data:`MIN_WEIGHT_ELEMENTS`) into :class:`OneDnnLinear`, in place;
    returns how many layers changed (0 when this torch build has no oneDNN linear)."""
    if not onednn_linear_supported():
        return 0
    floor = MIN_WEIGHT_ELEMENTS if min_weight_elements is None else int(min_weight_elements)
    changed = 0
    for m in module.modules():
        if type(m) is nn.Linear and m.weight.numel() >= floor:
            m.__class__ = OneDnnLinear
            changed += 1
    return changed


def cpu_vendor() -> str:
    """The CPU's vendor string (``/proc/cpuinfo``'s ``vendor_id``, e.g. ``GenuineIntel``,
    ``AuthenticAMD``), or ``''`` where it cannot be read."""
    from vargo.core.run_report import cpuinfo_field
    return cpuinfo_field('vendor_id')


def onednn_linears_auto(vendor: Optional[str] = None) -> bool:
    """The ``'auto'`` choice of the ``onednn_linears`` option: True unless the CPU is Intel's
    (``vendor``, default :func:`cpu_vendor`), where ``F.linear`` (MKL) measured faster."""
    return (cpu_vendor() if vendor is None else vendor) != 'GenuineIntel'


def onednn_linears_option(owner: str, module: nn.Module, enabled) -> int:
    """A policy's ``onednn_linears`` option: True, False or ``'auto'``
    (:func:`onednn_linears_auto`), checked (one-line error naming ``owner``), then
    :func:`use_onednn_linears` on ``module`` (the trainable model) when on; returns how many
    layers changed."""
    if isinstance(enabled, str) and enabled == 'auto':
        enabled = onednn_linears_auto()
    if not isinstance(enabled, bool):
        raise ValueError(f'{owner} onednn_linears={enabled!r} must be True (oneDNN products for '
                         f'the large linear layers in training, CPU fp32), False (F.linear) or '
                         f"'auto' (on unless the CPU is Intel's)")
    return use_onednn_linears(module) if enabled else 0
