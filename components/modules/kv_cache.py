"""A static key/value cache for cached decoding (raster and next-scale transformers).

One tensor ``kv [num_layers, 2, B, H, max_len, head_dim]`` allocated once per batch shape and
written in place (no ``torch.cat`` per step); attention reads the *slice* of filled positions
(:func:`write_and_read`), so no mask over the whole cache is needed. An optional key mask hides
padding keys (a left-padded caption).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ['StaticKVCache', 'write_and_read']


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
