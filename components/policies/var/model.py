"""The VAR transformer (official ``models/var.py`` / ``models/basic_var.py`` without the VQVAE
proxy): its config, the official sizes, the AdaLN blocks, keyed as the official files (the key
table, sizes and measured parity are in the package doc, :mod:`vargo.components.policies.var`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...modules.kv_cache import StaticKVCache, write_and_read
from ...modules.packed_linear import linear_gelu_tanh, linear_with_bias
from ...tokenizers.msvq import PATCH_NUMS_256

__all__ = ['VAR_ARCHS', 'VARConfig', 'VARTransformer']

#: official sizes (``build_vae_var``: width 64 d, heads d; d36 is the 512-px shared-AdaLN model)
VAR_ARCHS: dict[str, dict] = {
    'd16': dict(depth=16),                    # 310M
    'd20': dict(depth=20),                    # 600M
    'd24': dict(depth=24),                    # 1.0B
    'd30': dict(depth=30),                    # 2.0B
    'd36': dict(depth=36, shared_aln=True),   # 2.3B, 512 px
}


@dataclass(frozen=True)
class VARConfig:
    """Hyper-parameters of a VAR transformer (official ``VAR.__init__`` arguments).

    Attributes:
        depth, embed_dim, num_heads: blocks, width C (= cond dim D), heads.
        mlp_ratio: FFN hidden = ``round(C * mlp_ratio)`` (4).
        norm_eps: LayerNorm eps (1e-6).
        shared_aln: one AdaLN projection for all blocks (``shared_ada_lin`` + per-block
            ``ada_gss``; d36) instead of per-block ``ada_lin``.
        attn_l2_norm: l2-normalised q, k with a learned per-head scale (all official models).
        drop_path_rate: stochastic depth of the last block (linear from 0), pretraining only.
        patch_nums: scale sides, coarse to fine.
        vocab_size, Cvae: codebook size V and code dimension.
        num_classes: classes; the embedding has one more row, the null class.
    """

    depth: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = True
    drop_path_rate: float = 0.0
    patch_nums: tuple = PATCH_NUMS_256
    vocab_size: int = 4096
    Cvae: int = 32
    num_classes: int = 1000

    ARCH_FIELDS = ('depth', 'embed_dim', 'num_heads', 'mlp_ratio', 'norm_eps', 'shared_aln',
                   'attn_l2_norm', 'drop_path_rate')

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f'embed_dim={self.embed_dim} is not divisible by '
                             f'num_heads={self.num_heads}')
        if len(self.patch_nums) < 2:
            raise ValueError(f'patch_nums={self.patch_nums} needs >= 2 scales')

    @property
    def L(self) -> int:
        """L = sum pn^2, the tokens of all scales."""
        return sum(p * p for p in self.patch_nums)

    @property
    def first_l(self) -> int:
        """pn_0^2, the start positions (tokens of scale 0)."""
        return self.patch_nums[0] ** 2

    @property
    def num_scales(self) -> int:
        """S, the scales."""
        return len(self.patch_nums)

    @property
    def head_dim(self) -> int:
        """C / heads."""
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        """FFN hidden width ``round(C mlp_ratio)``."""
        return round(self.embed_dim * self.mlp_ratio)

    @classmethod
    def from_arch(cls, arch: Union[str, dict], **fields) -> 'VARConfig':
        """Config from an official name (``'d16'`` ... ``'d36'``) or a dict of
        :attr:`ARCH_FIELDS` (``embed_dim`` / ``num_heads`` default to the official rule
        ``64 depth`` / ``depth``; ``drop_path_rate`` to ``0.1 depth / 24``)."""
        if isinstance(arch, str):
            if arch not in VAR_ARCHS:
                raise ValueError(f'unknown VAR arch {arch!r}; official sizes: '
                                 f'{", ".join(VAR_ARCHS)} (or a dict such as '
                                 f'dict(depth=2, embed_dim=64, num_heads=4))')
            arch = dict(VAR_ARCHS[arch])
        arch = dict(arch)
        unknown = sorted(set(arch) - set(cls.ARCH_FIELDS))
        if unknown:
            raise ValueError(f'arch keys {unknown} are not architecture fields; allowed: '
                             f'{", ".join(cls.ARCH_FIELDS)}')
        if 'depth' not in arch:
            raise ValueError(f'arch {arch} needs depth')
        d = int(arch['depth'])
        arch.setdefault('embed_dim', 64 * d)
        arch.setdefault('num_heads', d)
        if arch.get('drop_path_rate') is None:
            arch['drop_path_rate'] = 0.1 * d / 24
        return cls(**arch, **fields)


# ---------------------------------------------------------------------------------------------
# Modules (official key names)
# ---------------------------------------------------------------------------------------------

def _drop_path(x: Tensor, p: float, active: bool) -> Tensor:
    """timm ``drop_path``: zero whole samples with probability ``p``, rescale the rest."""
    if not active or p == 0.0:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep.div_(1 - p)


class SelfAttention(nn.Module):
    """Official ``SelfAttention``: fused qkv with q/v biases, optional l2-normalised q, k with a
    learned per-head scale ``exp(min(scale_mul, log 100))`` (then softmax scale 1), else scale
    ``0.25 / sqrt(head_dim)``."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        c, self.num_heads, self.head_dim = cfg.embed_dim, cfg.num_heads, cfg.head_dim
        self.attn_l2_norm = cfg.attn_l2_norm
        if self.attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, self.num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer('zero_k_bias', torch.zeros(c))
        self.proj = nn.Linear(c, c)

    def forward(self, x: Tensor, attn_bias: Optional[Tensor], kv: Optional[Tensor] = None,
                start: int = 0) -> Tensor:
        """``x [B, l, C]`` at positions ``start .. start + l - 1``.

        Args:
            attn_bias: additive ``[1, 1, l, keys]`` mask or None (all keys visible).
            kv: this block's cache ``[2, B, H, L, hd]``: keys/values are written at ``start``
                and attention covers cache positions ``0 .. start + l - 1``.
        """
        b, l, c = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        # F.linear with the weight's packed copy while a sampler packs it (decoding)
        qkv = linear_with_bias(self.mat_qkv, x, bias).view(b, l, 3, self.num_heads,
                                                           self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                        # [B, H, l, hd]
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if kv is not None:
            k, v = write_and_read(kv, k, v, start)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, l, c))


class FFN(nn.Module):
    """``fc2(gelu_tanh(fc1 x))`` (official ``FFN``)."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x: Tensor) -> Tensor:
        # the GELU fused into fc1's packed kernel while a sampler packs it (decoding)
        return self.fc2(linear_gelu_tanh(self.fc1, x))


class AdaLNSelfAttn(nn.Module):
    """Official ``AdaLNSelfAttn``: ``x += attn(ln(x)(1 + scale1) + shift1) gamma1;
    x += ffn(ln(x)(1 + scale2) + shift2) gamma2`` (non-affine LayerNorm, eps 1e-6)."""

    def __init__(self, cfg: VARConfig, drop_path: float):
        super().__init__()
        c = self.C = cfg.embed_dim
        self.drop_path_p = drop_path
        self.attn = SelfAttention(cfg)
        self.ffn = FFN(c, cfg.ffn_hidden)
        self.ln_wo_grad = nn.LayerNorm(c, eps=cfg.norm_eps, elementwise_affine=False)
        self.shared_aln = cfg.shared_aln
        if self.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, c) / c ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cfg.embed_dim, 6 * c))

    def forward(self, x: Tensor, cond: Tensor, attn_bias: Optional[Tensor], *,
                kv: Optional[Tensor] = None, start: int = 0, drop_path: bool = False) -> Tensor:
        """``cond``: ``[B, D]`` class embedding, or ``[B, 1, 6, C]`` (shared AdaLN output)."""
        if self.shared_aln:
            g1, g2, s1, s2, b1, b2 = (self.ada_gss + cond).unbind(2)              # [B, 1, C]
        else:
            g1, g2, s1, s2, b1, b2 = self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)
        dp = drop_path and self.training
        h = self.attn(self.ln_wo_grad(x).mul(s1.add(1)).add_(b1), attn_bias, kv, start)
        x = x + _drop_path(h.mul_(g1), self.drop_path_p, dp)
        h = self.ffn(self.ln_wo_grad(x).mul(s2.add(1)).add_(b2))
        return x + _drop_path(h.mul(g2), self.drop_path_p, dp)


class AdaLNBeforeHead(nn.Module):
    """Official ``AdaLNBeforeHead``: ``ln(x)(1 + scale) + shift`` from ``ada_lin(cond)``."""

    def __init__(self, c: int, d: int, eps: float):
        super().__init__()
        self.C = c
        self.ln_wo_grad = nn.LayerNorm(c, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * c))

    def forward(self, x: Tensor, cond_BD: Tensor) -> Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


class SharedAdaLin(nn.Linear):
    """``Linear(D, 6C)`` viewed as ``[B, 1, 6, C]`` (official ``SharedAdaLin``)."""

    def forward(self, cond_BD: Tensor) -> Tensor:
        c = self.weight.shape[0] // 6
        return super().forward(cond_BD).view(-1, 1, 6, c)


class VARTransformer(nn.Module):
    """The VAR transformer (official ``VAR`` without the VQVAE proxy), keyed as the official files.

    Shapes: ``B`` batch, ``L = sum pn^2`` tokens, ``C`` width, ``V`` codebook, ``Cvae`` code dim.
    """

    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.cfg = cfg
        c, pns = cfg.embed_dim, cfg.patch_nums
        self.num_classes = cfg.num_classes
        init_std = math.sqrt(1 / c / 3)
        self.word_embed = nn.Linear(cfg.Cvae, c)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, c)
        self.pos_start = nn.Parameter(torch.empty(1, cfg.first_l, c))
        self.pos_1LC = nn.Parameter(torch.empty(1, cfg.L, c))
        self.lvl_embed = nn.Embedding(len(pns), c)
        self.shared_ada_lin = (nn.Sequential(nn.SiLU(), SharedAdaLin(c, 6 * c))
                               if cfg.shared_aln else nn.Identity())
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device='cpu').tolist()
        self.blocks = nn.ModuleList([AdaLNSelfAttn(cfg, dpr[i]) for i in range(cfg.depth)])
        lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(pns)])
        self.register_buffer('lvl_1L', lvl.view(1, cfg.L))
        bias = torch.where(lvl[:, None] >= lvl[None, :], 0.0, -torch.inf)
        self.register_buffer('attn_bias_for_masking', bias.reshape(1, 1, cfg.L, cfg.L))
        self.head_nm = AdaLNBeforeHead(c, c, cfg.norm_eps)
        self.head = nn.Linear(c, cfg.vocab_size)
        self.begin_ends = []
        cur = 0
        for p in pns:
            self.begin_ends.append((cur, cur + p * p))
            cur += p * p
        self.init_weights(init_std=init_std)

    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5,
                     init_head: float = 0.02, init_std: float = -1.0) -> None:
        """Official ``init_weights`` (``build_vae_var`` defaults): truncated normals of std
        ``sqrt(1 / 3C)``, zero biases, head x0.02, AdaLN gains x1e-5 and the rest x0.5,
        attention / FFN output projections / ``sqrt(2 depth)``."""
        c = self.cfg.embed_dim
        if init_std < 0:
            init_std = (1 / c / 3) ** 0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=init_std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=init_std)
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=init_std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        for blk in self.blocks:
            blk.attn.proj.weight.div_(math.sqrt(2 * self.cfg.depth))
            blk.ffn.fc2.weight.div_(math.sqrt(2 * self.cfg.depth))
            if blk.shared_aln:
                blk.ada_gss[:, :, 2:].mul_(init_adaln)
                blk.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                blk.ada_lin[-1].weight[2 * c:].mul_(init_adaln)
                blk.ada_lin[-1].weight[:2 * c].mul_(init_adaln_gamma)
                blk.ada_lin[-1].bias.zero_()

    # ---- pieces shared by teacher forcing and sampling ------------------------------------
    def class_condition(self, labels: Tensor) -> Tensor:
        """``cond_BD [B, C]`` (= the start token's embedding ``sos``) of labels ``[B]`` (value
        ``num_classes`` is the null class)."""
        return self.class_emb(labels)

    def lvl_pos(self, lo: int, hi: int) -> Tensor:
        """``[1, hi - lo, C]`` level + position embedding of positions ``lo .. hi - 1``."""
        return self.lvl_embed(self.lvl_1L[:, lo:hi]) + self.pos_1LC[:, lo:hi]

    def _sos(self, cond_BD: Tensor) -> Tensor:
        """``[B, pn_0^2, C]`` start tokens ``cond_BD + pos_start`` (no level/position)."""
        b, fl = cond_BD.shape[0], self.cfg.first_l
        return cond_BD.unsqueeze(1).expand(b, fl, -1) + self.pos_start.expand(b, fl, -1)

    def start_tokens(self, cond_BD: Tensor) -> Tensor:
        """``[B, pn_0^2, C]`` inputs of the first scale: ``sos + pos_start + lvl_pos``."""
        return self._sos(cond_BD) + self.lvl_pos(0, self.cfg.first_l)

    def scale_tokens(self, var_input: Tensor, lo: int, hi: int) -> Tensor:
        """``word_embed(var_input [B, hi - lo, Cvae]) + lvl_pos`` of positions ``lo .. hi-1``."""
        return self.word_embed(var_input.float()) + self.lvl_pos(lo, hi)

    def inputs(self, cond_BD: Tensor, var_input: Tensor) -> Tensor:
        """Teacher-forcing inputs ``[B, pn_0^2 + l, C]`` of ``var_input [B, l, Cvae]`` (the
        first ``l`` positions after the start tokens)."""
        x = torch.cat([self._sos(cond_BD), self.word_embed(var_input.float())], dim=1)
        return x + self.lvl_pos(0, x.shape[1])

    def blocks_forward(self, x: Tensor, cond_BD: Tensor, attn_bias: Optional[Tensor], *,
                       cache: Optional[StaticKVCache] = None, start: int = 0,
                       drop_path: bool = False) -> Tensor:
        """Run the blocks on ``x [B, l, C]`` at positions ``start ..`` (AdaLN condition from
        ``cond_BD [B, C]``); with ``cache`` the keys/values are written into it."""
        cond = self.shared_ada_lin(cond_BD)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cond, attn_bias, kv=None if cache is None else cache.kv[i], start=start,
                    drop_path=drop_path)
        return x

    def head_hidden(self, x: Tensor, cond_BD: Tensor) -> Tensor:
        """``head_nm(x, cond)`` in fp32 ``[B, l, C]`` (the head's input)."""
        return self.head_nm(x.float(), cond_BD)

    def logits(self, h: Tensor) -> Tensor:
        """fp32 logits ``[B, l, V]`` of head inputs ``h`` (official ``get_logits``)."""
        return self.head(h).float()

    def new_cache(self, batch: int, dtype: Optional[torch.dtype] = None) -> StaticKVCache:
        """A static cache of ``batch`` rows and all ``L`` positions (keys stored after the l2
        normalisation, as the official ``kv_caching``), in the head's dtype by default."""
        w, cfg = self.head.weight, self.cfg
        return StaticKVCache(num_layers=cfg.depth, batch=batch, num_heads=cfg.num_heads,
                             max_len=cfg.L, head_dim=cfg.head_dim, dtype=dtype or w.dtype,
                             device=w.device)

    # ---- teacher-forced forward -----------------------------------------------------------
    def forward(self, labels: Tensor, var_input: Tensor, *, drop_path: bool = False,
                return_hidden: bool = False) -> Tensor:
        """Teacher-forced logits (official ``VAR.forward`` without label dropout).

        Args:
            labels: ``[B]`` class ids (``num_classes`` = null class).
            var_input: ``[B, L - pn_0^2, Cvae]`` (``idxBl_to_var_input``).
            drop_path: apply stochastic depth (pretraining, training mode only).
            return_hidden: return the head inputs ``[B, L, C]`` instead of the logits.

        Returns:
            ``[B, L, V]`` fp32 logits; row ``i`` is the distribution of token ``i``.
        """
        cond_BD = self.class_condition(labels)
        x = self.inputs(cond_BD, var_input)
        n = x.shape[1]
        x = self.blocks_forward(x, cond_BD, self.attn_bias_for_masking[:, :, :n, :n],
                                drop_path=drop_path)
        h = self.head_hidden(x, cond_BD)
        return h if return_hidden else self.logits(h)
