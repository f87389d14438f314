"""A static key/value cache for cached decoding (raster and next-scale transformers).

One tensor ``kv [num_layers, 2, B, H, max_len, head_dim]`` allocated once per batch shape and
written in place (no ``torch.cat`` per step); attention reads the *slice* of filled positions
(:func:`write_and_read`), so no mask over the whole cache is needed. An optional key mask hides
padding keys (a left-padded caption).

:func:`cached_attention` is the attention over such a cache: ``F.scaled_dot_product_attention``
except for one grad-free query per row on a CPU (a raster decode step), where it computes
``softmax(q k^T / sqrt(D)) v`` as two batched products. PyTorch's CPU SDPA kernel (blocked,
online softmax) ran that shape at a third to a half of the speed of reading the keys and values
once (a decode step of GPT-B reads up to 50 MB of them per layer); the two products stream them
once each. Grouped-query caches are read in place (no repeated copy of the keys and values).
Models narrower than :data:`MIN_DECODE_ATTENTION_WIDTH` (query heads x head size) keep SDPA:
their steps take microseconds either way, and the Shapes benchmark's models (width 128) so
sample exactly the tokens of their recorded runs.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['MIN_DECODE_ATTENTION_WIDTH', 'StaticKVCache', 'cached_attention', 'write_and_read']

#: query heads x head size below which decode steps keep SDPA (module doc)
MIN_DECODE_ATTENTION_WIDTH = 512


class StaticKVCache:
    """Keys and values of every layer for one generation batch.

    Attributes:
        kv: ``[num_layers, 2, B, H, max_len, head_dim]``; ``kv[i]`` is layer ``i``'s cache.
        batch, max_len: its batch size and number of positions.
        key_ok: ``[B, 1, 1, max_len]`` bool attention mask over keys (False on padding), or None
            when every key is visible.
    """

    def __init__(self, *, num_layers: int, batch: int, num_heads: int, max_len: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device):
        self.batch, self.max_len = batch, max_len
        self.kv = torch.zeros(num_layers, 2, batch, num_heads, max_len, head_dim, dtype=dtype,
                              device=device)
        self.key_ok: Optional[Tensor] = None
        self._key_ok_buf: Optional[Tensor] = None

    def set_key_mask(self, visible: Optional[Tensor]) -> None:
        """Hide keys: ``visible [B, n]`` is True on the real keys among the first ``n``
        positions (the rest stay visible); None clears the mask."""
        if visible is None:
            self.key_ok = None
            return
        if self._key_ok_buf is None:
            self._key_ok_buf = torch.ones(self.batch, 1, 1, self.max_len, dtype=torch.bool,
                                          device=self.kv.device)
        self._key_ok_buf.fill_(True)
        self._key_ok_buf[:, 0, 0, : visible.shape[1]] = visible
        self.key_ok = self._key_ok_buf


def write_and_read(kv: Tensor, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
    """Write ``k, v [B, H, l, D]`` at positions ``start .. start + l - 1`` of one layer's cache
    ``kv [2, B, H, max_len, D]`` and return the keys and values of positions ``0 .. start + l -
    1`` (views of the cache)."""
    end = start + k.shape[2]
    kv[0, :, :, start:end] = k
    kv[1, :, :, start:end] = v
    return kv[0, :, :, :end], kv[1, :, :, :end]


def cached_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Optional[Tensor] = None,
                     is_causal: bool = False, dropout_p: float = 0.0) -> Tensor:
    """``softmax(q k^T / sqrt(D) + mask) v``: ``q [B, H, S, D]`` over ``k, v [B, Hkv, L, D]``
    (``H`` a multiple of ``Hkv``: query head ``h`` reads key/value head ``h // (H / Hkv)``);
    ``mask`` bool, broadcastable to ``[B, H, S, L]``, True = attend.

    ``F.scaled_dot_product_attention`` (after repeating grouped keys and values), except for a
    grad-free CPU call with ``S = 1``, no causal flag and no dropout (a decode step) of a model
    at least :data:`MIN_DECODE_ATTENTION_WIDTH` wide, which runs as two batched products over
    the keys and values in place (module doc); the two agree up to float summation order.
    """
    b, h, s, d = q.shape
    groups = h // k.shape[1]
    if s != 1 or is_causal or dropout_p or q.device.type != 'cpu' or torch.is_grad_enabled() \
            or h * d < MIN_DECODE_ATTENTION_WIDTH:
        if groups != 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              dropout_p=dropout_p)
    qg = q.reshape(b, k.shape[1], groups, d)                       # one row per query head
    scores = torch.matmul(qg, k.transpose(-1, -2)).mul_(d ** -0.5)  # [B, Hkv, groups, L]
    if mask is not None:
        scores = scores.view(b, h, 1, -1).masked_fill_(~mask, float('-inf'))
        scores = scores.view(b, k.shape[1], groups, -1)
    out = torch.matmul(torch.softmax(scores, dim=-1), v)          # [B, Hkv, groups, D]
    return out.view(b, h, 1, d)
