"""LlamaGen: a Llama-style raster-order GPT over VQ-16 tokens (FoundationVision/LlamaGen).

The transformer follows ``autoregressive/models/gpt.py`` of the official code and keeps its
state-dict key names, so the official ``c2i_*.pt`` / ``t2i_*.pt`` files load *strictly*:

=============================================  ============================================
official key                                   module
=============================================  ============================================
``cls_embedding.embedding_table.weight``       class embedding, ``num_classes + 1`` rows
                                               (row ``num_classes`` is the CFG null class)
``cls_embedding.cap_proj.fc{1,2}.weight``      caption MLP (t2i): Linear-GELU(tanh)-Linear
``cls_embedding.uncond_embedding``             t2i null caption ``[120, 2048]`` (a buffer;
                                               ``uncond_rows`` rows, official 120)
``tok_embeddings.weight``                      image-token embedding ``[V, dim]``
``layers.N.attention.wqkv.weight``             fused q, k, v projection (no biases anywhere)
``layers.N.attention.wo.weight``               attention output projection
``layers.N.feed_forward.w{1,2,3}.weight``      SwiGLU ``w2(silu(w1 x) * w3 x)``, hidden size
                                               ``find_multiple(int(2 * 4 * dim / 3), 256)``
``layers.N.attention_norm.weight``,            RMSNorm (computed in fp32, eps 1e-5)
``layers.N.ffn_norm.weight``, ``norm.weight``
``output.weight``                              logits ``[V, dim]`` (returned in fp32)
=============================================  ============================================

The official ``freqs_cis`` is a plain attribute (not in its state dict); here the RoPE tables are
non-persistent buffers. Files that do contain derived tensors (``freqs_cis``, KV caches,
``causal_mask``; the commented-out ``model_weight.pop('freqs_cis')`` of ``sample_c2i.py`` hints
that some did) are accepted and those keys are dropped with a log line; every other missing or unexpected key raises :class:`CheckpointKeyError`
listing them (the official loader uses ``strict=False`` and hides mismatches).

Faithful details (all from ``gpt.py`` / ``generate.py`` / ``sample_t2i.py``):

* 2-D RoPE (``precompute_freqs_cis_2d``): half of each head's channel pairs rotate with the token's
  row, half with its column; the ``cls_token_num`` condition positions get all-zero cos/sin rows,
  so their q and k are exactly 0 (reproduced: the condition tokens attend uniformly, and every
  query's score on a condition key is 0).
* Teacher forcing: input ``[cond (C positions), x_0 .. x_{T-2}]``; the output at position
  ``C - 1 + t`` predicts ``x_t`` (``logits[:, cls_token_num - 1:]`` in ``Transformer.forward``).
* t2i conditioning: 120 FLAN-T5-XL features, *left*-padded with zeros (``sample_t2i.py``;
  ``dataset/t2i.py`` at training time); padding keys are masked for every query except the
  padding position itself (the ``eye`` fix of ``generate``); the CFG null caption
  (``uncond_embedding``) uses the *same* mask as its caption (``generate`` concatenates
  ``[emb_masks, emb_masks]``). The null caption buffer has 120 rows whatever ``cls_token_num``
  is (``CaptionEmbedder(..., token_num=120)``; ``uncond_rows`` here); the model keeps the first
  ``cls_token_num`` positions of the projected condition (``Transformer.forward``:
  ``self.cls_embedding(cond_idx, ...)[:, :self.cls_token_num]``), so CFG uses rows
  ``0 .. cls_token_num - 1`` of ``uncond_embedding``.
* CFG (``generate.py``): one doubled batch ``[cond; uncond]``, ``logits = uncond + (cond -
  uncond) * cfg_scale``, then ``/ temperature``, then top-k, then top-p, softmax, multinomial.

Deviations (none changes a number under the official settings beyond float rounding):

* CFG is applied whenever ``cfg_scale != 1`` (official: only ``> 1``, so 0 < scale < 1 and 0,
  i.e. unconditional sampling, are possible here);
* ``cfg_interval`` is a pair of fractions of the sequence (see :func:`cfg_active_steps`); the
  official integer ``--cfg-interval k`` (guide tokens 0..k+1) is ``(0, (k + 2) / T)``;
* dropouts default to 0 (official pretraining: 0.1 token/residual/FFN dropout; RL needs the
  teacher-forced log-prob to equal the sampler's) and drop-path is not implemented;
* attention uses ``F.scaled_dot_product_attention`` and KV caches are sliced, not masked.

Parity with the official code (measured 2026-11 on CPU, fp32, random weights loaded strictly into
both): teacher-forced logits max |diff| 2.9e-6 (GPT-B c2i and t2i with padded captions); the
sampler reproduces ``generate()`` token for token (GPT-B, 8 x 256 tokens, CFG 4; small models with
top-k 2000, top-k 100 + top-p 0.9, temperature 0.8 + cfg_interval, t2i CFG 7.5 + top-k 1000);
VQ-16 decode max |diff| 7e-6 with identical encode indices. Speed (GPT-B, batch 8, CFG 4, 2
cores): about 50-70 ms per decode step against 90-160 ms for the official loop (weights are read
once per step, the step is memory-bound); the teacher-forced update (8 x 256 tokens, log-prob and
entropy over 16384 codes, forward + backward) runs at about 80-90% of the fp32 GEMM peak.

The policy (:class:`LlamaGenPolicy`) holds the transformer (``gpt``), the frozen VQ tokenizer
(``vq``) and, for t2i, a frozen text encoder (``text_encoder``). Frozen modules are left out of the
policy's ``state_dict`` (they are loaded from their own files at construction).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vargo.core.checkpoint import safe_load
from vargo.core.interfaces import Policy
from vargo.core.registry import POLICIES
from vargo.core.types import Conditions, LogprobSpec, PolicyEval, Rollout

from ..modules.categorical import (categorical_logp_entropy, cfg_active_steps, cfg_mix,
                                   truncation_keep_mask)
from ..tokenizers.vq import VQModel, build_vq
from .frozen import exclude_frozen_submodules

__all__ = [
    'GPT_ARCHS', 'GPTConfig', 'LlamaGenGPT', 'LlamaGenPolicy', 'KVCache', 'CheckpointKeyError',
    'find_multiple', 'rope_2d_tables', 'apply_rope', 'cfg_active_steps', 'cfg_mix',
    'truncation_keep_mask', 'categorical_logp_entropy', 'load_official_state_dict',
    'strict_load', 'LLAMAGEN_FILE_SOURCES',
]

# ---------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------

#: official sizes (``GPT_models`` of gpt.py); parameter counts for c2i, V=16384, 256 px.
GPT_ARCHS: dict[str, dict] = {
    'GPT-B': dict(dim=768, n_layer=12, n_head=12),        # 111M
    'GPT-L': dict(dim=1024, n_layer=24, n_head=16),       # 343M
    'GPT-XL': dict(dim=1280, n_layer=36, n_head=20),      # 775M
    'GPT-XXL': dict(dim=1536, n_layer=48, n_head=24),     # 1.4B
    'GPT-XXXL': dict(dim=2560, n_layer=48, n_head=40),    # 3.9B
    'GPT-1B': dict(dim=2048, n_layer=22, n_head=32),      # 1.2B
    'GPT-3B': dict(dim=3200, n_layer=24, n_head=32),      # 3.1B
    'GPT-7B': dict(dim=4096, n_layer=32, n_head=32),      # 6.6B
}

#: where the official files are published (LlamaGen README; FLAN-T5-XL on the HF hub)
_HF_C2I = 'https://huggingface.co/FoundationVision/LlamaGen/resolve/main/'
_HF_T2I = 'https://huggingface.co/peizesun/llamagen_t2i/resolve/main/'
LLAMAGEN_FILE_SOURCES: dict[str, str] = {
    **{f'c2i_{s}.pt': f'{_HF_C2I}c2i_{s}.pt'
       for s in ('B_256', 'B_384', 'L_256', 'L_384', 'XL_384', 'XXL_384', '3B_384')},
    'vq_ds16_c2i.pt': f'{_HF_C2I}vq_ds16_c2i.pt',
    'vq_ds8_c2i.pt': f'{_HF_C2I}vq_ds8_c2i.pt',
    'vq_ds16_t2i.pt': f'{_HF_T2I}vq_ds16_t2i.pt',
    't2i_XL_stage1_256.pt': f'{_HF_T2I}t2i_XL_stage1_256.pt',
    't2i_XL_stage2_512.pt': f'{_HF_T2I}t2i_XL_stage2_512.pt',
    'flan-t5-xl': 'https://huggingface.co/google/flan-t5-xl',
}


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of ``k`` that is >= ``n`` (official ``find_multiple``)."""
    return n if n % k == 0 else n + k - n % k


@dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of a LlamaGen transformer (the official ``ModelArgs`` field names).

    Attributes:
        dim, n_layer, n_head: width, depth and heads (see :data:`GPT_ARCHS`).
        n_kv_head: key/value heads (grouped-query attention), None = ``n_head`` (all official).
        multiple_of, ffn_dim_multiplier: SwiGLU hidden size rule.
        rope_base, norm_eps: RoPE base 10000, RMSNorm eps 1e-5.
        token_dropout_p, resid_dropout_p, ffn_dropout_p: dropouts (official pretraining 0.1;
            default 0 here, see module doc).
        vocab_size: V (codebook size, 16384).
        block_size: image tokens T = (image_size / downsample)^2.
        cls_token_num: condition positions C (c2i: 1, t2i: 120).
        task: ``'c2i'`` or ``'t2i'``.
        num_classes: classes (c2i); the embedding has one more row, the null class.
        caption_dim: text feature width (t2i, FLAN-T5-XL: 2048).
        uncond_rows: rows of the t2i null caption ``uncond_embedding`` (official 120 for every
            ``cls_token_num``; must be >= ``cls_token_num``, the first ``cls_token_num`` rows are
            used).
        initializer_range: std of the normal init of linears and embeddings (0.02).
    """

    dim: int
    n_layer: int
    n_head: int
    n_kv_head: Optional[int] = None
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    token_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    ffn_dropout_p: float = 0.0
    vocab_size: int = 16384
    block_size: int = 256
    cls_token_num: int = 1
    task: str = 'c2i'
    num_classes: int = 1000
    caption_dim: int = 2048
    uncond_rows: int = 120
    initializer_range: float = 0.02

    #: fields an ``arch`` dict may set
    ARCH_FIELDS = ('dim', 'n_layer', 'n_head', 'n_kv_head', 'multiple_of', 'ffn_dim_multiplier',
                   'rope_base', 'norm_eps', 'token_dropout_p', 'resid_dropout_p', 'ffn_dropout_p',
                   'initializer_range')

    def __post_init__(self):
        if self.dim % self.n_head:
            raise ValueError(f'dim={self.dim} is not divisible by n_head={self.n_head}')
        if self.head_dim % 4:
            raise ValueError(f'head_dim={self.head_dim} must be a multiple of 4 (2-D RoPE)')
        if self.n_head % self.kv_heads:
            raise ValueError(f'n_head={self.n_head} is not a multiple of '
                             f'n_kv_head={self.n_kv_head}')
        if self.task not in ('c2i', 't2i'):
            raise ValueError(f"task={self.task!r} is not one of 'c2i', 't2i'")
        grid = math.isqrt(self.block_size)
        if grid * grid != self.block_size:
            raise ValueError(f'block_size={self.block_size} is not a square number of tokens')
        if isinstance(self.uncond_rows, bool) or not isinstance(self.uncond_rows, int) \
                or self.uncond_rows < 1:
            raise ValueError(f'uncond_rows={self.uncond_rows!r} must be a positive int (rows of '
                             f'the t2i null caption; official 120)')
        if self.task == 't2i' and not self.cls_token_num <= self.uncond_rows:
            raise ValueError(f'uncond_rows={self.uncond_rows} is smaller than cls_token_num='
                             f'{self.cls_token_num}: the null caption needs a row per caption '
                             f'position (official 120 rows, the first cls_token_num used)')

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    @classmethod
    def from_arch(cls, arch: Union[str, dict], **fields) -> 'GPTConfig':
        """Config from an official size name or an ``arch`` dict (e.g. ``dict(dim=64,
        n_layer=2, n_head=4)``; a dict may start from a size with ``base='GPT-B'``)."""
        if isinstance(arch, str):
            if arch not in GPT_ARCHS:
                raise ValueError(f'unknown LlamaGen arch {arch!r}; official sizes: '
                                 f'{", ".join(GPT_ARCHS)} (or a dict such as '
                                 f'dict(dim=64, n_layer=2, n_head=4))')
            arch = dict(GPT_ARCHS[arch])
        else:
            arch = dict(arch)
            base = arch.pop('base', None)
            if base is not None:
                arch = {**cls.from_arch(base).arch_dict(), **arch}
        unknown = sorted(set(arch) - set(cls.ARCH_FIELDS))
        if unknown:
            raise ValueError(f'arch keys {unknown} are not architecture fields; allowed: '
                             f'{", ".join(cls.ARCH_FIELDS)}')
        return cls(**arch, **fields)

    def arch_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.ARCH_FIELDS}


# ---------------------------------------------------------------------------------------------
# Rotary embedding
# ---------------------------------------------------------------------------------------------

def rope_2d_tables(grid_size: int, head_dim: int, base: float, cls_token_num: int
                   ) -> tuple[Tensor, Tensor]:
    """Interleaved cos / signed-sin tables ``[C + grid^2, head_dim]`` of LlamaGen's 2-D RoPE.

    Same angles as the official ``precompute_freqs_cis_2d``: ``head_dim / 2`` rotation pairs,
    the first half rotating with the row index, the second half with the column index,
    frequencies ``base^(-2i / (head_dim / 2))``; the first ``cls_token_num`` rows are zero (the
    official zero rows for condition positions). The official table ``[S, head_dim/2, 2]`` of
    (cos, sin) pairs is laid out here as ``cos = [c0, c0, c1, c1, ...]`` and
    ``sin = [-s0, s0, -s1, s1, ...]`` so that :func:`apply_rope` is two multiplies and an add.
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))  # [hd/4]
    angles = torch.outer(torch.arange(grid_size), freqs)                             # [g, hd/4]
    grid = torch.cat([angles[:, None, :].expand(-1, grid_size, -1),                  # row
                      angles[None, :, :].expand(grid_size, -1, -1)], dim=-1)         # col
    grid = grid.flatten(0, 1)                                                         # [g*g, hd/2]
    cos = torch.cat([torch.zeros(cls_token_num, half), torch.cos(grid)])
    sin = torch.cat([torch.zeros(cls_token_num, half), torch.sin(grid)])
    cos_i = cos.repeat_interleave(2, dim=-1)                                          # [S, hd]
    sin_i = torch.stack([-sin, sin], dim=-1).flatten(-2)                              # [S, hd]
    return cos_i, sin_i


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs of ``x [..., S, n, head_dim]`` by position (official
    ``apply_rotary_emb``: ``(x0 c - x1 s, x1 c + x0 s)``, computed in fp32).

    ``cos``/``sin`` are ``[S, head_dim]`` rows of :func:`rope_2d_tables`; they broadcast over the
    head axis ``n``.
    """
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)     # (x1, x0) pairs
    cos, sin = cos[:, None, :], sin[:, None, :]                  # [S, 1, hd]
    return (xf * cos).addcmul_(swapped, sin).type_as(x)


# ---------------------------------------------------------------------------------------------
# Modules (official key names)
# ---------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, the normalisation computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:   # one fused kernel
            return F.rms_norm(x, (x.shape[-1],), self.weight, eps=self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)`` (keys ``w1``, ``w2``, ``w3``)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVCache:
    """Static key/value cache of one generation batch, allocated once per shape.

    Attributes:
        kv: ``[n_layer, 2, B, n_kv_head, max_len, head_dim]``.
        key_ok: ``[B, 1, 1, max_len]`` bool attention mask over keys (t2i: False on caption
            padding), or None when every key is visible (c2i).
    """

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, dtype: torch.dtype,
                 device: torch.device):
        self.batch, self.max_len = batch, max_len
        self.kv = torch.zeros(cfg.n_layer, 2, batch, cfg.kv_heads, max_len, cfg.head_dim,
                              dtype=dtype, device=device)
        self.key_ok: Optional[Tensor] = None
        self._key_ok_buf = torch.ones(batch, 1, 1, max_len, dtype=torch.bool, device=device)

    def set_condition_mask(self, cond_mask: Optional[Tensor]) -> None:
        """Mask caption padding keys (``cond_mask [B, C]`` True on real tokens) or clear it."""
        if cond_mask is None:
            self.key_ok = None
            return
        self._key_ok_buf.fill_(True)
        self._key_ok_buf[:, 0, 0, : cond_mask.shape[1]] = cond_mask
        self.key_ok = self._key_ok_buf


class Attention(nn.Module):
    """Multi-head causal self-attention with a fused ``wqkv`` and 2-D RoPE on q and k."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim, self.dim = (cfg.n_head, cfg.kv_heads, cfg.head_dim,
                                                           cfg.dim)
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q ``[B, S, H, D]``, k and v ``[B, S, Hkv, D]`` of ``x [B, S, dim]``, RoPE applied."""
        b, s, _ = x.shape
        qkv = self.wqkv(x)
        if self.n_kv == self.n_head:     # q and k are adjacent: rotate them in one go
            qkv = qkv.view(b, s, 3, self.n_head, self.head_dim)
            qk = apply_rope(qkv[:, :, :2].reshape(b, s, 2 * self.n_head, self.head_dim), cos, sin)
            q, k = qk.view(b, s, 2, self.n_head, self.head_dim).unbind(2)
            return q, k, qkv[:, :, 2]
        kv_size = self.n_kv * self.head_dim
        q, k, v = qkv.split([self.dim, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(b, s, self.n_head, self.head_dim), cos, sin)
        k = apply_rope(k.view(b, s, self.n_kv, self.head_dim), cos, sin)
        return q, k, v.view(b, s, self.n_kv, self.head_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, *, mask: Optional[Tensor] = None,
                is_causal: bool = False, kv: Optional[Tensor] = None, start: int = 0) -> Tensor:
        """Attention of ``x [B, S, dim]`` at positions ``start .. start + S - 1``.

        Args:
            cos, sin: ``[S, head_dim]`` RoPE rows of these positions.
            mask: bool ``[B, 1, S, L]`` (True = attend) or None.
            is_causal: causal attention over ``x`` itself (teacher forcing, no cache).
            kv: this layer's cache ``[2, B, Hkv, max_len, D]``: the new keys/values are written at
                ``start`` and attention covers cache positions ``0 .. start + S - 1``.
        """
        b, s, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)   # [B, H, S, D]
        if kv is not None:
            kv[0, :, :, start:start + s] = k
            kv[1, :, :, start:start + s] = v
            k, v = kv[0, :, :, :start + s], kv[1, :, :, :start + s]
        if self.n_kv != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, s, self.dim)))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``h = x + attn(norm(x)); out = h + ffn(norm(h))``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, **attn_kwargs) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, **attn_kwargs)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class embedding with ``num_classes + 1`` rows; row ``num_classes`` is the null class."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)


class CaptionMLP(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))`` without biases (official ``MLP``)."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate='tanh'))


class CaptionEmbedder(nn.Module):
    """Caption features ``[B, C, caption_dim]`` -> ``[B, C, dim]``; ``uncond_embedding``
    ``[token_num, caption_dim]`` (a buffer, ``randn / sqrt(caption_dim)`` at init; official
    ``token_num=120`` whatever ``C`` is) is the null caption, its first ``C`` rows used."""

    def __init__(self, caption_dim: int, dim: int, token_num: int):
        super().__init__()
        self.cap_proj = CaptionMLP(caption_dim, dim, dim)
        self.register_buffer('uncond_embedding', torch.randn(token_num, caption_dim)
                             / caption_dim ** 0.5)


class LlamaGenGPT(nn.Module):
    """The LlamaGen transformer (official ``Transformer``), keyed as the official state dicts.

    Args:
        cfg: the :class:`GPTConfig`.

    Shapes: ``B`` batch, ``C`` condition positions, ``T`` image tokens, ``V`` vocabulary.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.task == 'c2i':
            self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim)
        else:
            self.cls_embedding = CaptionEmbedder(cfg.caption_dim, cfg.dim, cfg.uncond_rows)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        self.layers = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_2d_tables(cfg.grid_size, cfg.head_dim, cfg.rope_base, cfg.cls_token_num)
        self.register_buffer('rope_cos', cos, persistent=False)    # [C + T, head_dim]
        self.register_buffer('rope_sin', sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: N(0, 0.02) for linears and embeddings, zero output layer."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=self.cfg.initializer_range)
        nn.init.zeros_(self.output.weight)

    # ---- conditions --------------------------------------------------------------------
    def condition_embeddings(self, *, class_ids: Optional[Tensor] = None,
                             text_emb: Optional[Tensor] = None, null: bool = False,
                             batch: Optional[int] = None) -> Tensor:
        """``[B, C, dim]`` embeddings of the conditions (or of the null condition).

        Args:
            class_ids: ``[B]`` long (c2i); the value ``num_classes`` is the null class.
            text_emb: ``[B, C, caption_dim]`` left-padded caption features (t2i).
            null: the CFG null condition for ``batch`` samples instead.
        """
        if self.cfg.task == 'c2i':
            table = self.cls_embedding.embedding_table
            if null:
                return table.weight[self.cfg.num_classes].expand(batch, 1, -1)
            return table(class_ids).unsqueeze(1)
        proj = self.cls_embedding.cap_proj
        if null:
            # the first C rows: official generate.py feeds the whole 120-row buffer as the null
            # caption and gpt.py Transformer.forward keeps `cls_embedding(...)[:, :cls_token_num]`
            # (cap_proj is row-wise, so projecting the C rows alone gives the same numbers)
            null_rows = self.cls_embedding.uncond_embedding[: self.cfg.cls_token_num]
            return proj(null_rows).unsqueeze(0).expand(batch, -1, -1)
        return proj(text_emb[:, : self.cfg.cls_token_num])

    def attention_mask(self, cond_mask: Tensor, seq_len: int) -> Tensor:
        """bool ``[B, 1, S, S]``: causal, caption padding keys hidden except from themselves
        (``dataset/t2i.py`` / ``generate``'s ``eye`` fix)."""
        b, c = cond_mask.shape
        key_ok = torch.ones(b, seq_len, dtype=torch.bool, device=cond_mask.device)
        key_ok[:, :c] = cond_mask
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=cond_mask.device).tril_()
        mask = causal & key_ok[:, None, :]
        mask |= torch.eye(seq_len, dtype=torch.bool, device=cond_mask.device)
        return mask.unsqueeze(1)

    # ---- teacher-forced forward ----------------------------------------------------------
    def forward(self, cond_emb: Tensor, tokens: Tensor, *,
                cond_mask: Optional[Tensor] = None) -> Tensor:
        """Teacher-forced logits.

        Args:
            cond_emb: ``[B, C, dim]`` condition embeddings (:meth:`condition_embeddings`).
            tokens: ``[B, T_in]`` image tokens fed as inputs (``x_0 .. x_{T_in - 1}``).
            cond_mask: ``[B, C]`` bool caption mask (t2i) or None.

        Returns:
            ``[B, T_in + 1, V]`` fp32 logits; row ``t`` is the distribution of token ``t``.
        """
        c = self.cfg.cls_token_num
        x = torch.cat([cond_emb, self.tok_embeddings(tokens)], dim=1)    # [B, C + T_in, dim]
        x = self.tok_dropout(x)
        s = x.shape[1]
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        mask = None if cond_mask is None else self.attention_mask(cond_mask, s)
        for layer in self.layers:
            x = layer(x, cos, sin, mask=mask, is_causal=mask is None)
        return self.output(self.norm(x[:, c - 1:])).float()

    # ---- cached generation ----------------------------------------------------------------
    def new_cache(self, batch: int, max_len: Optional[int] = None,
                  dtype: Optional[torch.dtype] = None) -> KVCache:
        """A static KV cache for ``batch`` rows and up to ``max_len`` (default C + T) positions."""
        w = self.tok_embeddings.weight
        return KVCache(self.cfg, batch, max_len or self.cfg.cls_token_num + self.cfg.block_size,
                       dtype or w.dtype, w.device)

    def prefill(self, x: Tensor, cache: KVCache, *, cond_mask: Optional[Tensor] = None) -> Tensor:
        """Run ``x [B, S, dim]`` (condition embeddings, then any given token embeddings) from
        position 0, filling the cache.

        Returns:
            ``[B, S - C + 1, V]`` fp32 logits of positions ``C - 1 .. S - 1`` (the distributions
            of tokens ``0 .. S - C``).
        """
        c, s = self.cfg.cls_token_num, x.shape[1]
        cache.set_condition_mask(cond_mask)
        mask = None if cond_mask is None else self.attention_mask(cond_mask, s)
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask=mask, is_causal=mask is None, kv=cache.kv[i], start=0)
        return self.output(self.norm(x[:, c - 1:])).float()

    def decode_step(self, tokens: Tensor, pos: int, cache: KVCache) -> Tensor:
        """One cached step: token ids ``[B]`` at sequence position ``pos`` -> logits ``[B, V]``
        (fp32) of the next token."""
        x = self.tok_embeddings(tokens).unsqueeze(1)                     # [B, 1, dim]
        cos, sin = self.rope_cos[pos:pos + 1], self.rope_sin[pos:pos + 1]
        mask = None if cache.key_ok is None else cache.key_ok[..., : pos + 1]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask=mask, kv=cache.kv[i], start=pos)
        return self.output(self.norm(x[:, 0])).float()


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

class CheckpointKeyError(KeyError):
    """A state dict does not match the module (missing / unexpected keys, shape mismatches)."""

    def __str__(self) -> str:   # KeyError quotes its message; print it plainly
        return str(self.args[0]) if self.args else ''


#: tensors some official files hold that are derived, not learned (see module doc)
DERIVED_KEYS = ('freqs_cis', 'causal_mask')


def _is_derived(key: str) -> bool:
    return key in DERIVED_KEYS or '.kv_cache.' in key


def _torch_load(path: str) -> dict:
    # official training checkpoints carry their argparse.Namespace under "args": allow only it
    return safe_load(path, 'cpu', allow=(argparse.Namespace,))


def missing_file_error(path: str, what: str, hint: str = '') -> FileNotFoundError:
    """FileNotFoundError naming the file and where the official release publishes it."""
    name = os.path.basename(str(path))
    source = LLAMAGEN_FILE_SOURCES.get(name)
    where = (f'it is published at {source}' if source else
             f'official LlamaGen files are listed in {sorted(LLAMAGEN_FILE_SOURCES)} '
             f'(LlamaGen README)')
    return FileNotFoundError(f'{what} file {path!r} not found: {where}. Download it there, or '
                             f'use a Shapes config (configs/*/*_shapes.py) that needs no '
                             f'download.{hint}')


def load_official_state_dict(path: str, *, what: str) -> dict[str, Tensor]:
    """The state dict of an official LlamaGen file: ``{"model": ...}`` (DDP), ``{"module":
    ...}`` (DeepSpeed), ``{"state_dict": ...}`` or a raw state dict (FSDP ``consolidated``), as
    ``sample_c2i.py`` accepts them; loaded with ``weights_only=True``.

    A ``.safetensors`` file (the shipped Shapes models, ``tools/pretrain_shapes.py``) is a raw
    state dict; its tensors keep their stored dtype (float16 for the larger Shapes files) and
    ``load_state_dict`` casts them into the module's float32 parameters.
    """
    is_safetensors = str(path).endswith('.safetensors')
    if not os.path.isfile(path):
        if is_safetensors:
            raise FileNotFoundError(
                f'{what} file {path!r} not found. The Shapes base models are shipped in '
                f'components/benchmarks/weights/ (relative paths are relative to the working '
                f'directory: run from the repository root) and are rebuilt by '
                f'tools/pretrain_shapes.py (the command is in each model card, <name>.md).')
        raise missing_file_error(path, what)
    if is_safetensors:
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    ckpt = _torch_load(path)
    for key in ('model', 'module', 'state_dict'):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if isinstance(ckpt, dict) and all(isinstance(v, Tensor) for v in ckpt.values()):
        return ckpt
    raise CheckpointKeyError(f'{what} file {path!r} holds neither a state dict nor a dict with '
                             f'"model" / "module" / "state_dict"; top-level keys: '
                             f'{sorted(ckpt)[:20] if isinstance(ckpt, dict) else type(ckpt)}')


def strict_load(module: nn.Module, state: dict[str, Tensor], *, what: str) -> list[str]:
    """``module.load_state_dict(state)`` that fails listing every missing / unexpected key and
    shape mismatch; derived tensors (``freqs_cis``, KV caches, ``causal_mask``) are dropped.

    Returns:
        the dropped derived keys.
    """
    state = dict(state)
    dropped = [k for k in state if _is_derived(k)]
    for k in dropped:
        state.pop(k)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        raise CheckpointKeyError(
            f'{what} does not match the model (no key is ever skipped silently):\n'
            f'  missing keys ({len(missing)}): {missing}\n'
            f'  unexpected keys ({len(unexpected)}): {unexpected}\n'
            f'  shape mismatches ({len(shapes)}): {shapes}\n'
            f'Check the arch / task / image_size / vocab_size / num_classes settings against the '
            f'file.')
    module.load_state_dict(state, strict=True)
    return dropped


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------

_FROZEN = ('vq', 'text_encoder')


@POLICIES.register_module()
class LlamaGenPolicy(Policy):
    """LlamaGen as a vargo policy: raster-order tokens, one token per action.

    Rollout conventions: ``actions [B, T]`` long (``T = (image_size / downsample)^2``),
    ``action_step = arange(T)``, ``action_pos [T, 2]`` = (row, col), images decoded by the VQ.

    Args:
        arch: an official size (``'GPT-B'``, ``'GPT-L'``, ``'GPT-XL'``, ``'GPT-XXL'``,
            ``'GPT-XXXL'``, ``'GPT-1B'``, ``'GPT-3B'``, ``'GPT-7B'``) or a dict of
            :attr:`GPTConfig.ARCH_FIELDS` (e.g. ``dict(dim=64, n_layer=2, n_head=4)``,
            optionally ``base='GPT-B'``).
        task: ``'c2i'`` (class-conditional) or ``'t2i'`` (text-conditional).
        image_size: output resolution (official 256, 384, 512).
        downsample: VQ downsampling factor (16 for VQ-16); T = (image_size / downsample)^2.
        num_classes: classes of a c2i model (ImageNet 1000).
        vocab_size: V, must equal the tokenizer's codebook size.
        cls_token_num: condition positions C; None = 1 (c2i) or the text encoder's length /
            120 (t2i).
        caption_dim: text feature width (t2i); None = the text encoder's width / 2048.
        uncond_rows: rows of the t2i null caption buffer ``cls_embedding.uncond_embedding``
            (official 120 for every ``cls_token_num``; CFG uses its first ``cls_token_num``
            rows). The Shapes t2i base model was saved with 12 (its ``cls_token_num``): its
            config sets ``uncond_rows=12``.
        checkpoint: official ``c2i_*.pt`` / ``t2i_*.pt`` (or any file with this transformer's
            keys), loaded strictly; None keeps the official random init.
        tokenizer: VQ preset name (``'VQ-16'``, ``'VQ-8'``) or a dict of
            :class:`~vargo.components.tokenizers.vq.VQModel` arguments (optionally
            ``preset=...``).
        tokenizer_checkpoint: official ``vq_ds16_c2i.pt`` / ``vq_ds16_t2i.pt`` (or a file with
            the same keys), loaded strictly; None keeps a random tokenizer (tests only).
        text_encoder: t2i only: dict for
            :func:`~vargo.components.tokenizers.text.build_text_encoder`, e.g.
            ``dict(type='flan-t5', path='checkpoints/flan-t5-xl')`` or ``dict(type='word-t5',
            vocabulary=[...], d_model=64, num_layers=2, num_heads=4, d_ff=128, max_length=16)``;
            None if conditions always arrive with ``text_emb`` filled.
        class_dropout_prob: probability of replacing the condition by the null one in
            :meth:`pretrain_loss` (official 0.1); not used by RL.
        dropout: token / residual / FFN dropout of the transformer (official pretraining 0.1;
            must be 0 for RL so the teacher-forced log-prob equals the sampler's).

    Attributes:
        file_sources: official file name -> where it is published.
    """

    file_sources: dict[str, str] = LLAMAGEN_FILE_SOURCES

    def __init__(self, *, arch: Union[str, dict] = 'GPT-B', task: str = 'c2i',
                 image_size: int = 256, downsample: int = 16, num_classes: int = 1000,
                 vocab_size: int = 16384, cls_token_num: Optional[int] = None,
                 caption_dim: Optional[int] = None, checkpoint: Optional[str] = None,
                 tokenizer: Union[str, dict] = 'VQ-16', tokenizer_checkpoint: Optional[str] = None,
                 text_encoder: Optional[dict] = None, class_dropout_prob: float = 0.1,
                 dropout: float = 0.0, uncond_rows: int = 120):
        super().__init__()
        if task not in ('c2i', 't2i'):
            raise ValueError(f"task={task!r} is not one of 'c2i', 't2i'")
        if image_size % downsample:
            raise ValueError(f'image_size={image_size} is not a multiple of '
                             f'downsample={downsample}')
        self.task, self.image_size, self.downsample = task, image_size, downsample
        self.class_dropout_prob = class_dropout_prob
        grid = image_size // downsample

        # frozen VQ tokenizer
        self.vq: VQModel = build_vq(tokenizer)
        if self.vq.downsample != downsample:
            raise ValueError(f'tokenizer downsamples by {self.vq.downsample}, but '
                             f'downsample={downsample}')
        if self.vq.codebook_size != vocab_size:
            raise ValueError(f'tokenizer codebook has {self.vq.codebook_size} codes, but '
                             f'vocab_size={vocab_size}')
        if tokenizer_checkpoint is not None:
            strict_load(self.vq, load_official_state_dict(tokenizer_checkpoint,
                                                          what='VQ tokenizer'),
                        what=f'VQ tokenizer file {tokenizer_checkpoint!r}')

        # frozen text encoder (t2i)
        self.text_encoder = None
        if text_encoder is not None:
            if task != 't2i':
                raise ValueError('text_encoder is only used by task="t2i"')
            from ..tokenizers.text import build_text_encoder
            self.text_encoder = build_text_encoder(text_encoder)
        if task == 't2i':
            enc = self.text_encoder
            cls_token_num = cls_token_num or (enc.max_length if enc is not None else 120)
            caption_dim = caption_dim or (enc.dim if enc is not None else 2048)
            if enc is not None and (enc.max_length, enc.dim) != (cls_token_num, caption_dim):
                raise ValueError(f'text encoder gives {enc.max_length} tokens of {enc.dim} dims '
                                 f'but the GPT expects cls_token_num={cls_token_num}, '
                                 f'caption_dim={caption_dim}')
        else:
            cls_token_num = cls_token_num or 1
            caption_dim = caption_dim or 2048
        for p in self.vq.parameters():
            p.requires_grad_(False)

        arch_fields = GPTConfig.from_arch(arch).arch_dict()
        if dropout:
            arch_fields.update(token_dropout_p=dropout, resid_dropout_p=dropout,
                               ffn_dropout_p=dropout)
        self.cfg = GPTConfig(**arch_fields, vocab_size=vocab_size, block_size=grid * grid,
                             cls_token_num=cls_token_num, task=task, num_classes=num_classes,
                             caption_dim=caption_dim, uncond_rows=uncond_rows)
        self.gpt = LlamaGenGPT(self.cfg)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

        # action axis
        rows = torch.arange(grid).repeat_interleave(grid)
        cols = torch.arange(grid).repeat(grid)
        self.register_buffer('action_step', torch.arange(grid * grid), persistent=False)
        self.register_buffer('action_pos', torch.stack([rows, cols], dim=1), persistent=False)
        exclude_frozen_submodules(self, _FROZEN)
        self.train(True)

    # ---- sizes ------------------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        """A = T, the image tokens per sample."""
        return self.cfg.block_size

    @property
    def grid_size(self) -> int:
        return self.cfg.grid_size

    @property
    def cls_token_num(self) -> int:
        return self.cfg.cls_token_num

    @property
    def device(self) -> torch.device:
        return self.gpt.tok_embeddings.weight.device

    def train(self, mode: bool = True) -> 'LlamaGenPolicy':
        super().train(mode)
        self.vq.eval()                       # frozen modules never leave eval mode
        if self.text_encoder is not None:
            self.text_encoder.eval()
        return self

    def trainable_parameters(self):
        return [p for p in self.gpt.parameters() if p.requires_grad]

    # ---- checkpoints ----------------------------------------------------------------------
    def load_checkpoint(self, path: str) -> None:
        """Load an official ``c2i_*.pt`` / ``t2i_*.pt`` into the transformer, strictly."""
        dropped = strict_load(self.gpt, load_official_state_dict(path, what='LlamaGen GPT'),
                              what=f'LlamaGen GPT file {path!r}')
        if dropped:
            from mmengine.logging import print_log
            print_log(f'{path}: dropped derived tensors {dropped} (recomputed here)',
                      logger='current')

    # ---- conditions ---------------------------------------------------------------------
    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Check class ids (c2i) or fill ``text_emb`` / ``text_mask`` (t2i), on the model's device.

        For t2i the features are arranged as the GPT consumes them (``sample_t2i.py``'s default
        left padding): the ``n`` real tokens of a caption (EOS included) occupy the *last*
        ``n`` of the C positions, the padding positions before them are zero, and ``text_mask``
        ``[B, C]`` is True on the real ones. Conditions that already carry ``text_emb`` are
        assumed to be in this arrangement and are returned unchanged.
        """
        dev = self.device
        if self.task == 'c2i':
            if cond.class_ids is None:
                raise ValueError('a c2i LlamaGen policy needs Conditions.class_ids')
            ids = cond.class_ids.to(dev)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.num_classes):
                raise ValueError(f'class ids must be in [0, {self.cfg.num_classes}), got '
                                 f'[{int(ids.min())}, {int(ids.max())}]')
            return dataclasses.replace(cond, class_ids=ids)
        if cond.text_emb is not None:
            mask = cond.text_mask
            if mask is None:
                mask = torch.ones(cond.text_emb.shape[:2], dtype=torch.bool)
            return dataclasses.replace(cond, text_emb=cond.text_emb.to(dev),
                                       text_mask=mask.to(dev).bool())
        if cond.prompts is None:
            raise ValueError('a t2i LlamaGen policy needs Conditions.prompts or text_emb')
        if self.text_encoder is None:
            raise ValueError('Conditions carry prompts but the policy has no text_encoder: set '
                             'text_encoder=dict(type="flan-t5", path=...) (or "word-t5")')
        emb, mask = self.text_encoder(cond.prompts)                 # right-padded
        emb, mask = emb.to(dev), mask.to(dev)
        emb, mask = _left_pad(emb, mask)
        return dataclasses.replace(cond, text_emb=emb, text_mask=mask)

    def condition_inputs(self, cond: Conditions, *, with_null: bool
                         ) -> tuple[Tensor, Optional[Tensor]]:
        """GPT inputs of encoded conditions, optionally followed by the CFG null conditions.

        Returns:
            ``(emb [B2, C, dim], cond_mask [B2, C] bool or None)`` with ``B2 = 2B`` (rows
            ``[cond; null]``, the official order) if ``with_null`` else ``B``. The null caption
            uses its caption's mask (``generate.py``).
        """
        if self.task == 'c2i':
            b = cond.class_ids.shape[0]
            emb = self.gpt.condition_embeddings(class_ids=cond.class_ids)
            mask = None
        else:
            b = cond.text_emb.shape[0]
            emb = self.gpt.condition_embeddings(text_emb=cond.text_emb)
            mask = cond.text_mask
        if with_null:
            null = self.gpt.condition_embeddings(null=True, batch=b)
            emb = torch.cat([emb, null.to(emb.dtype)], dim=0)
            mask = None if mask is None else torch.cat([mask, mask], dim=0)
        return emb, mask

    # ---- the Policy interface ---------------------------------------------------------------
    def evaluate(self, rollout: Rollout, *, spec: LogprobSpec,
                 with_entropy: bool = True) -> PolicyEval:
        """Teacher-forced log-probs ``[B, T]`` of ``rollout.actions`` and entropies ``[B, T]``
        under ``spec``, in ONE forward.

        ``spec.mode='none'``: ``log_softmax(cond_logits / temperature)``, full vocabulary.
        ``spec.mode='rollout'``: the sampling distribution exactly -- one doubled
        ``[cond; null]`` batch when ``cfg_scale != 1``, CFG mix on the tokens inside
        ``cfg_interval``, ``/ temperature``, top-k / top-p kept set renormalised; the entropy is
        that distribution's.
        """
        cond = self.encode_conditions(rollout.cond)
        tokens = rollout.actions.to(self.device)                           # [B, T]
        b, t = tokens.shape
        use_cfg = spec.uses_cfg
        emb, mask = self.condition_inputs(cond, with_null=use_cfg)
        inp = tokens[:, :-1]
        if use_cfg:
            inp = torch.cat([inp, inp], dim=0)
        logits = self.gpt(emb, inp, cond_mask=mask)                        # [B2, T, V]
        g = 2 if use_cfg else 1
        logits = logits.view(g, b * t, -1)                                  # [g, B*T, V]
        rows = None
        if use_cfg and spec.cfg_interval is not None:
            rows = cfg_active_steps(spec.cfg_interval, t, self.device).repeat(b)
        truncate = spec.mode == 'rollout'
        logp, ent = categorical_logp_entropy(
            logits, tokens.reshape(-1), cfg_scale=spec.cfg_scale, rows=rows,
            temperature=spec.temperature, top_k=spec.top_k if truncate else 0,
            top_p=spec.top_p if truncate else 1.0, with_entropy=with_entropy)
        return PolicyEval(logp=logp.view(b, t),
                          entropy=None if ent is None else ent.view(b, t))

    def flops_per_sample(self, spec: Optional[LogprobSpec] = None) -> int:
        """Matmul FLOPs of one teacher-forced :meth:`evaluate` forward, per sample.

        Two FLOPs per multiply-add, over the ``S = C + T - 1`` input positions (``C`` condition
        positions, then tokens ``x_0 .. x_{T-2}``):

        * linears, per layer, on all S positions: ``2 S dim (n_head + 2 n_kv_head) head_dim``
          (``wqkv``) + ``2 S dim^2`` (``wo``) + ``3 * 2 S dim ffn_hidden`` (SwiGLU ``w1, w3, w2``);
        * attention, per layer, ``QK^T`` and ``AV`` over the causal pairs only (query ``i`` sees
          ``i + 1`` keys: ``S (S + 1) / 2`` pairs, ``2 head_dim`` FLOPs per pair, head and
          product): ``2 dim S (S + 1)``; t2i caption-padding keys are counted (the masked kernel
          computes them);
        * the output head on the T positions that predict a token: ``2 T dim V``;
        * t2i: the caption MLP on the C caption positions, ``2 C (caption_dim dim + dim^2)``
          (the null caption's projection is made once per batch and not counted).

        Not counted: embedding lookups, RMSNorm, RoPE, softmax, log-softmax and entropy (no
        matmul). With ``spec.uses_cfg`` :meth:`evaluate` runs the doubled ``[cond; null]`` batch,
        so the transformer terms count twice. The backward pass costs twice the forward's matmul
        FLOPs (input and weight gradients), so a forward + backward update is ``3 *`` this.

        Args:
            spec: the :class:`LogprobSpec` of the evaluation (None: no CFG doubling).

        Returns:
            FLOPs per sample, an int (GPT-B c2i 256 px: 51,141,672,960, about 51.1 GFLOP).
        """
        cfg = self.cfg
        c, t, d = cfg.cls_token_num, cfg.block_size, cfg.dim
        s = c + t - 1
        linears = 2 * s * d * ((cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim + d
                               + 3 * cfg.ffn_hidden)
        attention = 2 * d * s * (s + 1)
        transformer = cfg.n_layer * (linears + attention) + 2 * t * d * cfg.vocab_size
        caption = 2 * c * (cfg.caption_dim * d + d * d) if cfg.task == 't2i' else 0
        copies = 2 if spec is not None and spec.uses_cfg else 1
        return copies * transformer + caption

    @torch.no_grad()
    def decode(self, rollout: Rollout, *, chunk: int = 16) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] of the rollout's tokens (VQ decoder, ``chunk``
        images at a time)."""
        tokens = rollout.actions.to(self.device)
        return torch.cat([self.vq.decode(tokens[i:i + chunk])
                          for i in range(0, tokens.shape[0], chunk)], dim=0)

    def embed_actions(self, rollout: Rollout) -> Tensor:
        """``[B, T, 8]`` L2-normalised VQ codebook vectors of the sampled tokens (STAGE's
        q_{i,t}, docs/methods/stage.md)."""
        with torch.no_grad():
            return self.vq.quantize.codebook()[rollout.actions.to(self.device)]

    def rollout_axes(self) -> tuple[Tensor, Tensor]:
        """``(action_step [T], action_pos [T, 2])`` of the raster order."""
        return self.action_step, self.action_pos

    # ---- pretraining (Shapes) ------------------------------------------------------------------
    def pretrain_loss(self, tokens: Tensor, cond: Conditions) -> Tensor:
        """Next-token cross-entropy of ``tokens [B, T]`` (official ``train_c2i.py`` /
        ``train_t2i.py``), with the condition replaced by the null one with probability
        ``class_dropout_prob`` in training mode (the official label / caption dropout)."""
        cond = self.encode_conditions(cond)
        tokens = tokens.to(self.device)
        b = tokens.shape[0]
        emb, mask = self.condition_inputs(cond, with_null=False)
        if self.training and self.class_dropout_prob > 0:
            drop = torch.rand(b, device=self.device) < self.class_dropout_prob
            null = self.gpt.condition_embeddings(null=True, batch=b)
            emb = torch.where(drop[:, None, None], null.to(emb.dtype), emb)
        logits = self.gpt(emb, tokens[:, :-1], cond_mask=mask)               # [B, T, V]
        return F.cross_entropy(logits.flatten(0, 1), tokens.reshape(-1))


def _left_pad(emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Right-padded ``[B, L, D]`` / ``[B, L]`` -> left-padded with zeroed padding (as
    ``sample_t2i.py``: rotate the real tokens to the end, flip the mask, multiply by it)."""
    b, length = mask.shape
    n_valid = mask.sum(dim=1, keepdim=True)                                 # [B, 1]
    pos = torch.arange(length, device=mask.device).expand(b, -1)
    src = (pos + n_valid) % length                                          # rotate by n_valid
    out = emb.gather(1, src[..., None].expand(-1, -1, emb.shape[-1]))
    new_mask = pos >= (length - n_valid)
    return out * new_mask[..., None], new_mask
