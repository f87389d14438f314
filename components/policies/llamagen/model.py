"""The LlamaGen transformer (official ``autoregressive/models/gpt.py``), keyed as the official
state dicts: config and sizes, 2-D RoPE, the blocks, the condition embedders, the teacher-forced
forward and cached decoding (the key table and parity notes are in the package doc).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...modules.kv_cache import StaticKVCache, write_and_read

__all__ = ['GPT_ARCHS', 'GPTConfig', 'LlamaGenGPT', 'find_multiple', 'rope_2d_tables',
           'apply_rope']

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
            k, v = write_and_read(kv, k, v, start)
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
                  dtype: Optional[torch.dtype] = None) -> StaticKVCache:
        """A static KV cache for ``batch`` rows and up to ``max_len`` (default C + T) positions."""
        w, cfg = self.tok_embeddings.weight, self.cfg
        return StaticKVCache(num_layers=cfg.n_layer, batch=batch, num_heads=cfg.kv_heads,
                             max_len=max_len or cfg.cls_token_num + cfg.block_size,
                             head_dim=cfg.head_dim, dtype=dtype or w.dtype, device=w.device)

    def prefill(self, x: Tensor, cache: StaticKVCache, *,
                cond_mask: Optional[Tensor] = None) -> Tensor:
        """Run ``x [B, S, dim]`` (condition embeddings, then any given token embeddings) from
        position 0, filling the cache.

        Returns:
            ``[B, S - C + 1, V]`` fp32 logits of positions ``C - 1 .. S - 1`` (the distributions
            of tokens ``0 .. S - C``).
        """
        c, s = self.cfg.cls_token_num, x.shape[1]
        cache.set_key_mask(cond_mask)
        mask = None if cond_mask is None else self.attention_mask(cond_mask, s)
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask=mask, is_causal=mask is None, kv=cache.kv[i], start=0)
        return self.output(self.norm(x[:, c - 1:])).float()

    def decode_step(self, tokens: Tensor, pos: int, cache: StaticKVCache) -> Tensor:
        """One cached step: token ids ``[B]`` at sequence position ``pos`` -> logits ``[B, V]``
        (fp32) of the next token."""
        x = self.tok_embeddings(tokens).unsqueeze(1)                     # [B, 1, dim]
        cos, sin = self.rope_cos[pos:pos + 1], self.rope_sin[pos:pos + 1]
        mask = None if cache.key_ok is None else cache.key_ok[..., : pos + 1]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask=mask, kv=cache.kv[i], start=pos)
        return self.output(self.norm(x[:, 0])).float()
