"""taming-transformers' minGPT (``taming/modules/transformer/mingpt.py``, class ``GPT``), keyed as
the official state dicts: config and sizes, the blocks, the teacher-forced forward and cached
decoding (the key table and parity notes are in the package doc).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...modules.kv_cache import StaticKVCache, write_and_read

__all__ = ['MINGPT_ARCHS', 'MinGPTConfig', 'MinGPT', 'derived_mask_keys']

#: official sizes; ``'cin'`` is the class-conditional ImageNet transformer (1.4B, the
#: ``2021-04-03T19-39-50_cin_transformer`` release: ``vocab_size=16384, block_size=256``)
MINGPT_ARCHS: dict[str, dict] = {
    'cin': dict(n_layer=48, n_head=24, n_embd=1536),
}


@dataclass(frozen=True)
class MinGPTConfig:
    """Hyper-parameters of taming's minGPT (the official ``GPT`` argument names).

    Attributes:
        vocab_size: V, the shared vocabulary of image codes and class tokens (the cin model feeds
            the class id through ``tok_emb``: ``num_classes <= V``).
        block_size: rows of ``pos_emb`` (cin: 256 = 1 class token + 255 fed image tokens).
        n_layer, n_head, n_embd: depth, heads, width.
        embd_pdrop, resid_pdrop, attn_pdrop: dropouts (official constructor default 0).
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0

    #: fields an ``arch`` dict may set
    ARCH_FIELDS = ('n_layer', 'n_head', 'n_embd', 'embd_pdrop', 'resid_pdrop', 'attn_pdrop')

    def __post_init__(self):
        for name in ('vocab_size', 'block_size', 'n_layer', 'n_head', 'n_embd'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f'minGPT {name}={v!r} must be a positive int')
        if self.n_embd % self.n_head:
            raise ValueError(f'minGPT n_embd={self.n_embd} is not divisible by '
                             f'n_head={self.n_head}: pick n_head dividing n_embd')

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_arch(cls, arch: Union[str, dict], **fields) -> 'MinGPTConfig':
        """Config from an official size name (``'cin'``) or an ``arch`` dict (e.g.
        ``dict(n_layer=2, n_head=4, n_embd=64)``; ``base='cin'`` starts from a size)."""
        if isinstance(arch, str):
            if arch not in MINGPT_ARCHS:
                raise ValueError(f'unknown minGPT arch {arch!r}; official sizes: '
                                 f'{", ".join(MINGPT_ARCHS)} (or a dict such as '
                                 f'dict(n_layer=2, n_head=4, n_embd=64))')
            arch = dict(MINGPT_ARCHS[arch])
        else:
            arch = dict(arch)
            base = arch.pop('base', None)
            if base is not None:
                arch = {**cls.from_arch(base, vocab_size=1, block_size=1).arch_dict(), **arch}
        unknown = sorted(set(arch) - set(cls.ARCH_FIELDS))
        if unknown:
            raise ValueError(f'arch keys {unknown} are not minGPT architecture fields; allowed: '
                             f'{", ".join(cls.ARCH_FIELDS)}')
        return cls(**arch, **fields)

    def arch_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.ARCH_FIELDS}


def derived_mask_keys(n_layer: int) -> list[str]:
    """The official causal-mask buffers ``blocks.{i}.attn.mask`` (``[1, 1, block_size,
    block_size]`` lower-triangular ones): in every official state dict, recomputed here."""
    return [f'blocks.{i}.attn.mask' for i in range(n_layer)]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate ``key``/``query``/``value`` projections
    and ``proj`` (all with biases), as the official module."""

    def __init__(self, cfg: MinGPTConfig):
        super().__init__()
        self.n_head, self.head_dim, self.n_embd = cfg.n_head, cfg.head_dim, cfg.n_embd
        self.key = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.query = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.value = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_pdrop = cfg.attn_pdrop
        self.resid_drop = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x: Tensor, *, kv: Optional[Tensor] = None, start: int = 0) -> Tensor:
        """Attention of ``x [B, S, C]`` at positions ``start .. start + S - 1``: causal over
        ``x`` itself, and with a cache (``kv [2, B, H, max_len, D]``) over the cached positions
        ``0 .. start - 1`` too (the new keys/values are written at ``start``)."""
        b, s, _ = x.shape
        shape = (b, s, self.n_head, self.head_dim)
        k = self.key(x).view(shape).transpose(1, 2)                     # [B, H, S, D]
        q = self.query(x).view(shape).transpose(1, 2)
        v = self.value(x).view(shape).transpose(1, 2)
        if kv is not None:
            k, v = write_and_read(kv, k, v, start)
        if s == 1:
            causal, mask = False, None          # one query sees every key so far
        elif k.shape[2] == s:
            causal, mask = True, None
        else:                                   # S queries after `start` cached positions
            causal = False
            mask = torch.ones(s, k.shape[2], dtype=torch.bool, device=x.device).tril_(start)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.attn_pdrop if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, s, self.n_embd)))


class Block(nn.Module):
    """Pre-norm block ``x + attn(ln1 x)``, then ``x + mlp(ln2 x)``; ``mlp`` is the official
    ``Sequential(Linear(C, 4C), GELU, Linear(4C, C), Dropout)`` (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, cfg: MinGPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd),
                                 nn.Dropout(cfg.resid_pdrop))

    def forward(self, x: Tensor, **attn_kwargs) -> Tensor:
        x = x + self.attn(self.ln1(x), **attn_kwargs)
        return x + self.mlp(self.ln2(x))


class MinGPT(nn.Module):
    """taming's minGPT (official ``GPT``) with learned absolute position embeddings.

    The sequence is ``[condition tokens, x_0 .. x_{T-2}]`` of token ids embedded by ``tok_emb``
    (the cin model's condition is the class id as one token); position ``p`` adds
    ``pos_emb[0, p]``.

    Args:
        cfg: the :class:`MinGPTConfig`.
    """

    def __init__(self, cfg: MinGPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.n_embd))
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official ``_init_weights``: N(0, 0.02) linears and embeddings, zero biases, unit
        LayerNorms; ``pos_emb`` starts at zero."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.pos_emb)

    def _check_length(self, end: int) -> None:
        if end > self.cfg.block_size:
            raise ValueError(f'minGPT block_size={self.cfg.block_size} is exhausted: position '
                             f'{end - 1} requested (condition tokens + fed image tokens); set '
                             f'block_size >= condition tokens + image tokens - 1')

    def _head(self, x: Tensor) -> Tensor:
        return self.head(self.ln_f(x)).float()

    # ---- teacher-forced forward ----------------------------------------------------------
    def forward(self, idx: Tensor) -> Tensor:
        """Official ``GPT.forward``: fp32 logits ``[B, S, V]`` of token ids ``idx [B, S]``
        (row ``p`` predicts position ``p + 1``)."""
        s = idx.shape[1]
        self._check_length(s)
        x = self.drop(self.tok_emb(idx) + self.pos_emb[:, :s])
        for block in self.blocks:
            x = block(x)
        return self._head(x)

    # ---- cached generation ---------------------------------------------------------------
    def new_cache(self, batch: int, max_len: Optional[int] = None,
                  dtype: Optional[torch.dtype] = None) -> StaticKVCache:
        """A static KV cache for ``batch`` rows and ``max_len`` (default ``block_size``)
        positions (official ``forward_with_past`` concatenates per step instead)."""
        w, cfg = self.tok_emb.weight, self.cfg
        return StaticKVCache(num_layers=cfg.n_layer, batch=batch, num_heads=cfg.n_head,
                             max_len=max_len or cfg.block_size, head_dim=cfg.head_dim,
                             dtype=dtype or w.dtype, device=w.device)

    def forward_cached(self, idx: Tensor, start: int, cache: StaticKVCache) -> Tensor:
        """Feed ``idx [B, S]`` at positions ``start .. start + S - 1`` over the cached positions
        before them, writing their keys/values; fp32 logits ``[B, S, V]``."""
        s = idx.shape[1]
        self._check_length(start + s)
        x = self.drop(self.tok_emb(idx) + self.pos_emb[:, start:start + s])
        for i, block in enumerate(self.blocks):
            x = block(x, kv=cache.kv[i], start=start)
        return self._head(x)
