"""Packed ``nn.Linear`` weights for grad-free decoding on a CPU.

A cached decode step multiplies a few rows (``B`` or ``2 B`` with CFG) by every weight matrix of
the model: each weight is read once per step, so the step's speed is the speed of small-M
matrix products over weights that stream from memory. In ``nn.Linear``'s layout PyTorch's CPU
``addmm``/``mm`` path (MKL) reached about a third to a half of the GEMM peak on those shapes on
this project's machines; oneDNN's inner product on a weight reordered *once* into its blocked
layout ran them 1.5-2.2x faster (``tools/bench_official.py --family llamagen --plain-too``
times a whole rollout both ways; README, "Performance").

:class:`PackedLinears` keeps such reordered copies of the ``nn.Linear`` weights of given modules
and, inside :meth:`PackedLinears.active`, routes those layers' forwards through them. A copy is
used only while its weight is unchanged (the tensor's version counter and storage are checked
on every call, so an optimizer step or a loaded state dict falls back to ``F.linear`` until the
next :meth:`refresh` repacks it) and only with autograd off. State dicts, parameters and the
training forward are untouched. Outputs equal ``F.linear``'s up to float summation order
(about 1e-6 relative); each output row depends only on its input row, whatever the batch size.

Costs: one extra copy of the packed weights (released with :meth:`release`) and one reorder per
weight after each change (one pass over the weights per rollout).

Small weights stay on ``F.linear``: oneDNN's per-call overhead outweighs the gain below about
2^18 weight elements at decode batch sizes (measured at 16 rows, 1 thread, on a 2-core AMD EPYC
next to other jobs: packed / plain time 4.2x at 128 x 128, 1.4x at 256 x 256, 0.8x at 512 x 512,
0.45-0.65x from 768 x 768 to 1024 x 1024 and GPT-B's 768 x 2304), so :data:`MIN_WEIGHT_ELEMENTS` sets which layers are packed; the
Shapes benchmark's models (width 128) therefore decode exactly as without packing.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .onednn_linear import OneDnnLinear, onednn_linear, onednn_linear_supported

__all__ = ['MIN_WEIGHT_ELEMENTS', 'PackedLinears', 'packed_linear', 'packed_linear_supported']

#: weights with fewer elements are not packed (see the module doc)
MIN_WEIGHT_ELEMENTS = 1 << 18


def packed_linear_supported() -> bool:
    """Whether this torch build has oneDNN's reordered-weight linear on the CPU: its linear
    (:func:`~vargo.components.modules.onednn_linear.onednn_linear_supported`) and the reorder."""
    return onednn_linear_supported() and hasattr(torch.ops.mkldnn, '_reorder_linear_weight')


class _Pack:
    """One layer's packed weight and what it was packed from."""

    __slots__ = ('module', 'packed', 'version', 'ptr', 'forward')

    def __init__(self, module: nn.Linear, rows: int):
        w = module.weight
        self.module = module
        self.version, self.ptr = w._version, w.data_ptr()
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows)
        self.forward = self._make_forward()

    def fresh(self) -> bool:
        w = self.module.weight
        return w._version == self.version and w.data_ptr() == self.ptr

    def usable(self, x: Tensor) -> bool:
        """Whether a call on ``x`` may read the packed copy: no autograd, fp32, fresh weight."""
        return not torch.is_grad_enabled() and x.dtype == torch.float32 and self.fresh()

    def _make_forward(self) -> Callable[[Tensor], Tensor]:
        module, pack = self.module, self

        def forward(x: Tensor) -> Tensor:
            if not pack.usable(x):
                return F.linear(x, module.weight, module.bias)
            return packed_linear(x, pack.packed, module.bias)
        forward.pack = pack
        return forward


def linear_with_bias(module: nn.Linear, x: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.linear(x, module.weight, bias)``: ``module``'s weight with another bias (VAR's
    query-key-value projection adds a bias built per call), through the packed copy while
    :meth:`PackedLinears.active` routes ``module`` (same rules as its forward: fresh weight,
    no autograd, fp32), else through the oneDNN training products when ``module`` is a
    :class:`~vargo.components.modules.onednn_linear.OneDnnLinear`
    (:func:`~vargo.components.modules.onednn_linear.onednn_linear`), else ``F.linear``."""
    pack = _routed_pack(module, x)
    if pack is not None:
        return packed_linear(x, pack.packed, bias)
    if isinstance(module, OneDnnLinear):
        return onednn_linear(x, module.weight, bias)
    return F.linear(x, module.weight, bias)


def linear_gelu_tanh(module: nn.Linear, x: Tensor) -> Tensor:
    """``gelu(module(x), approximate='tanh')`` (VAR's MLP): with the GELU fused into the packed
    kernel while :meth:`PackedLinears.active` routes ``module`` (its forward's rules), which
    saves writing and reading the hidden activations once more; equal to the unfused result up to rounding."""
    pack = _routed_pack(module, x)
    if pack is None:
        return F.gelu(module(x), approximate='tanh')
    return packed_linear(x, pack.packed, module.bias, 'gelu', 'tanh')


def _routed_pack(module: nn.Linear, x: Tensor) -> Optional[_Pack]:
    """``module``'s pack if a grad-free fp32 call may use it now (routed, fresh), else None."""
    pack = getattr(module.__dict__.get('forward'), 'pack', None)
    return pack if pack is not None and pack.usable(x) else None


def packed_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor],
                  post_op: str = 'none', algorithm: str = '') -> Tensor:
    """``x [..., in] @ W^T + bias`` with ``packed`` = oneDNN's reordered ``W`` (no autograd);
    ``post_op`` (oneDNN's fused epilogue, e.g. ``'gelu'`` with ``algorithm='tanh'``) is applied
    to the result inside the same kernel."""
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]).contiguous(), packed,
                                           None if bias is None else bias.detach(), post_op, [],
                                           algorithm)
    return y.view(*x.shape[:-1], y.shape[-1])


class PackedLinears:
    """Reordered copies of the ``nn.Linear`` weights of some modules, used in grad-free
    forwards inside :meth:`active` (see the module doc).

    Args:
        enabled: False makes every method a no-op (plain ``F.linear`` everywhere).
        min_weight_elements: layers whose weight has fewer elements keep ``F.linear``
            (default :data:`MIN_WEIGHT_ELEMENTS`, read when the instance is made).

    Only fp32 CPU weights are packed; other layers keep ``F.linear``. Copying or pickling an
    instance gives an empty one (packs are a cache, rebuilt by :meth:`refresh`).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
        >>> packs = PackedLinears(min_weight_elements=0)
        >>> x = torch.randn(3, 8)
        >>> with torch.no_grad():
        ...     packs.refresh([net], rows=3)
        ...     with packs.active():
        ...         y = net(x)
        >>> bool(torch.allclose(y, net(x), atol=1e-5))
        True
    """

    def __init__(self, enabled: bool = True, min_weight_elements: Optional[int] = None):
        self.enabled = bool(enabled) and packed_linear_supported()
        self.min_weight_elements = int(MIN_WEIGHT_ELEMENTS if min_weight_elements is None
                                       else min_weight_elements)
        self._packs: dict[int, _Pack] = {}

    def __deepcopy__(self, memo) -> 'PackedLinears':
        return PackedLinears(self.enabled, self.min_weight_elements)

    def __getstate__(self) -> dict:
        return {'enabled': self.enabled, 'min_weight_elements': self.min_weight_elements}

    def __setstate__(self, state: dict) -> None:
        self.enabled, self._packs = state['enabled'], {}
        self.min_weight_elements = state['min_weight_elements']

    def _eligible(self, modules: Iterable[nn.Module]) -> Iterator[nn.Linear]:
        seen = set()
        for root in modules:
            for m in root.modules():
                # OneDnnLinear: an nn.Linear with oneDNN's training products, same forward
                w = m.weight if type(m) in (nn.Linear, OneDnnLinear) else None
                # large plain CPU fp32 weights only (not FSDP's sharded DTensors, not bf16)
                if w is not None and id(m) not in seen and type(w.detach()) is torch.Tensor \
                        and w.device.type == 'cpu' and w.dtype == torch.float32 \
                        and w.numel() >= self.min_weight_elements:
                    seen.add(id(m))
                    yield m

    def refresh(self, modules: Iterable[nn.Module], rows: int) -> int:
        """Pack the eligible ``nn.Linear`` layers of ``modules`` whose weight changed since it
        was last packed (or that were never packed); forget layers no longer listed. ``rows``
        is the expected number of input rows (oneDNN's layout hint). Returns how many layers
        were (re)packed."""
        if not self.enabled:
            return 0
        keep, repacked = {}, 0
        for m in self._eligible(modules):
            pack = self._packs.get(id(m))
            if pack is None or pack.module is not m or not pack.fresh():
                pack = _Pack(m, max(int(rows), 1))
                repacked += 1
            keep[id(m)] = pack
        self._packs = keep
        return repacked

    def prepare(self, policy: nn.Module, rows: int) -> 'PackedLinears':
        """Refresh the packs of ``policy``'s optional ``decoding_modules()`` for ``rows`` input
        rows (all packs released when it has none or packing is off); returns ``self``, to be
        entered with :meth:`active` around the rollout."""
        fn = getattr(policy, 'decoding_modules', None) if self.enabled else None
        modules = list(fn()) if fn is not None else []
        if modules:
            self.refresh(modules, rows)
        else:
            self.release()
        return self

    def release(self) -> None:
        """Free every packed copy."""
        self._packs = {}

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed copies."""
        return sum(p.packed.numel() * p.packed.element_size() for p in self._packs.values())

    def __len__(self) -> int:
        return len(self._packs)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Route the packed layers' forwards through their packed weights for the duration
        (a layer whose weight changed since packing, a forward with autograd on or a
        non-fp32 input uses ``F.linear``)."""
        packs = list(self._packs.values())
        for p in packs:
            p.module.forward = p.forward
        try:
            yield
        finally:
            for p in packs:
                p.module.__dict__.pop('forward', None)
