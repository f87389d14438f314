"""VAR: next-scale prediction over a multi-scale residual VQVAE (FoundationVision/VAR).

The transformer follows ``models/var.py`` and ``models/basic_var.py`` of the official code
and keeps its state-dict key names, so the official
``var_d{16,20,24,30,36}.pth`` (https://huggingface.co/FoundationVision/var) load *strictly*:

=============================================  ============================================
official key                                   module
=============================================  ============================================
``class_emb.weight``                           ``[num_classes + 1, C]``; row ``num_classes``
                                               is the CFG null class; also the AdaLN condition
``pos_start``                                  ``[1, pn_0^2, C]`` start-token position
``pos_1LC``, ``lvl_embed.weight``              absolute positions ``[1, L, C]``, per-scale
                                               level embedding ``[S, C]``
``lvl_1L``, ``attn_bias_for_masking``          buffers: scale of each position, the
                                               block-causal additive mask ``[1, 1, L, L]``
``word_embed.{weight,bias}``                   Cvae -> C input projection
``blocks.N.attn.mat_qkv.weight``, ``q_bias``,  fused qkv (k has no bias: ``zero_k_bias``
``v_bias``, ``zero_k_bias``, ``proj.*``        buffer), output projection
``blocks.N.attn.scale_mul_1H11``               per-head logit scale of the l2-normalised
                                               q, k (``attn_l2_norm``, all official models)
``blocks.N.ffn.fc{1,2}.*``                     GELU(tanh) MLP, hidden ``round(4 C)``
``blocks.N.ada_lin.1.*`` (or ``ada_gss`` and   AdaLN: gamma1, gamma2, scale1, scale2, shift1,
``shared_ada_lin.1.*`` with shared AdaLN)      shift2 from the class embedding
``head_nm.ada_lin.1.*``, ``head.*``            AdaLN before the head, logits ``[L, V]``
=============================================  ============================================

Sizes (``build_vae_var``): depth ``d``, width ``64 d``, heads ``d``, drop-path ``0.1 d / 24``;
d16 310,283,520 / d20 600,917,136 / d24 1,033,399,360 / d30 2,010,020,356 parameters (the
README's 310M / 600M / 1.0B / 2.0B) and d36 (512 px, ``PATCH_NUMS_512``, shared AdaLN)
2,353,893,904; the VQVAE (108,948,355) is not part of these files.

Faithful details:

* Teacher forcing (``VAR.forward``): input ``[sos (pn_0^2 positions), word_embed(
  idxBl_to_var_input(ids))] + lvl_embed + pos_1LC`` with ``sos = class_emb(label) + pos_start``;
  position ``i`` of the output predicts token ``i`` of the concatenated per-scale ids (the
  inputs of scale ``s`` are the area-downsampled partial sum of scales ``< s``), attention is
  block-causal (a token sees its own and all coarser scales).
* Sampling (``autoregressive_infer_cfg``): one doubled batch ``[cond; null]``, the CFG *ramp*
  ``logits = (1 + t) cond - t uncond`` with ``t = cfg * si / (S - 1)`` (scale 0 unguided), top-k
  then top-p with VAR's rule (:func:`var_truncation_keep_mask`), softmax, multinomial.

Deviations and conventions:

* CFG scale convention: vargo's ``cfg_scale`` is the guidance weight ``s`` of
  ``uncond + s (cond - uncond)`` at the *last* scale, so ``cfg_scale = 1 + cfg_official`` (the
  README's FID setting ``cfg=1.5`` is ``cfg_scale=2.5``, the demo's ``cfg=4`` is ``5``) and
  ``cfg_scale=1`` means no guidance, as everywhere in vargo. Scale ``si`` is guided with
  ``1 + (cfg_scale - 1) si / (S - 1)``, exactly the official ramp.
* ``temperature`` (not in the official sampler) divides the guided logits; 1 reproduces it.
* Teacher-forced evaluation never drops labels or paths (the official ``forward`` drops labels
  with probability ``cond_drop_rate`` even in eval mode); :meth:`VARPolicy.pretrain_loss` does
  both, in training mode.
* With CFG in ``logprob_cfg='rollout'`` mode, :meth:`VARPolicy.evaluate` mixes the ``head_nm``
  outputs before the (affine) head instead of the logits: the same distribution up to float
  rounding, with one ``[B, L, V]`` logits tensor instead of three and half the head FLOPs.
* ``more_smooth`` (gumbel visualisation sampling) and progressive training are not implemented;
  attention uses ``F.scaled_dot_product_attention`` (the official CPU path) and a static KV cache.

Parity with the official code (measured 2026-11 on CPU, fp32, the official ``VQVAE`` / ``VAR``
classes built with random weights and their state dicts loaded strictly into these modules):

* official ch160 / V4096 / Cvae32 VQVAE, 256 px (10 scales, 2 images) and 64 px (scales 1-2-3-4,
  4 images): multi-scale encode ids identical (1360 and 120 ids), ``idxBl_to_img`` max |diff|
  9.9e-6, ``img_to_reconstructed_img`` 1.3e-5, ``idxBl_to_var_input`` identical (0.0);
* teacher-forced logits identical (max |diff| 0.0; depth 2 and 4 with per-block AdaLN, depth 2
  with shared AdaLN);
* ``autoregressive_infer_cfg`` vs :class:`NextScaleSampler` (``rng=None``, same torch seed):
  100% identical tokens (2 x 680 at 256 px with cfg 1.5, top-k 900, top-p 0.96; 4 x 120 at 64
  px with (cfg, top-k, top-p) = (1.5, 900, 0.96), (4, 0, off), (0, 50, off)), images max |diff|
  4e-6;
* meta-device builds of d16 / d20 / d24 / d30 / d36 have the official parameter counts and the
  same sorted ``key:shape`` list (sha256 pinned in ``tests/test_var.py``).

The sampler's ``logp_old`` and :meth:`VARPolicy.evaluate` agree to float rounding (max |diff|
1e-4 on logits of magnitude ~100 with the CFG ramp; ~1e-6 on the tiny test models).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vargo.core.interfaces import Policy
from vargo.core.registry import POLICIES
from vargo.core.types import Conditions, FamilyExtras, LogprobSpec, PolicyEval, Rollout

from ..tokenizers.msvq import PATCH_NUMS_256, PATCH_NUMS_512, MultiScaleVQVAE, build_msvq
from .frozen import exclude_frozen_submodules
from ..modules.categorical import categorical_logp_entropy, var_truncation_keep_mask
from .llamagen import CheckpointKeyError, load_official_state_dict, strict_load

__all__ = ['VAR_ARCHS', 'VARConfig', 'VARTransformer', 'VARPolicy', 'VARExtras', 'VARKVCache',
           'VAR_FILE_SOURCES', 'var_truncation_keep_mask', 'cfg_ramp', 'CheckpointKeyError']

#: official sizes (``build_vae_var``: width 64 d, heads d; d36 is the 512-px shared-AdaLN model)
VAR_ARCHS: dict[str, dict] = {
    'd16': dict(depth=16),                    # 310M
    'd20': dict(depth=20),                    # 600M
    'd24': dict(depth=24),                    # 1.0B
    'd30': dict(depth=30),                    # 2.0B
    'd36': dict(depth=36, shared_aln=True),   # 2.3B, 512 px
}

_HF = 'https://huggingface.co/FoundationVision/var/resolve/main/'
#: where the official files are published (VAR README)
VAR_FILE_SOURCES: dict[str, str] = {
    **{f'var_d{d}.pth': f'{_HF}var_d{d}.pth' for d in (16, 20, 24, 30, 36)},
    'vae_ch160v4096z32.pth': f'{_HF}vae_ch160v4096z32.pth',
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
        return sum(p * p for p in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
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


class VARKVCache:
    """Static key/value cache of one sampling batch: ``kv [depth, 2, B, H, L, head_dim]``
    (keys stored after the l2 normalisation, as the official ``kv_caching``)."""

    def __init__(self, cfg: VARConfig, batch: int, dtype: torch.dtype, device: torch.device):
        self.batch = batch
        self.kv = torch.zeros(cfg.depth, 2, batch, cfg.num_heads, cfg.L, cfg.head_dim,
                              dtype=dtype, device=device)


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
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(b, l, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                        # [B, H, l, hd]
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if kv is not None:
            kv[0, :, :, start:start + l] = k
            kv[1, :, :, start:start + l] = v
            k, v = kv[0, :, :, :start + l], kv[1, :, :, :start + l]
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
        return self.fc2(F.gelu(self.fc1(x), approximate='tanh'))


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
                       cache: Optional[VARKVCache] = None, start: int = 0,
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

    def new_cache(self, batch: int, dtype: Optional[torch.dtype] = None) -> VARKVCache:
        w = self.head.weight
        return VARKVCache(self.cfg, batch, dtype or w.dtype, w.device)

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


# ---------------------------------------------------------------------------------------------
# The sampling distribution
# ---------------------------------------------------------------------------------------------

def cfg_ramp(cfg_scale: float, patch_nums: Sequence[int],
             device: Optional[torch.device] = None) -> Tensor:
    """``[S]`` float64 guidance ``t_si = (cfg_scale - 1) si / (S - 1)`` of each scale: the
    official ramp ``logits = (1 + t) cond - t uncond`` with ``t = cfg * ratio``
    (``autoregressive_infer_cfg``; ``cfg = cfg_scale - 1``)."""
    s = len(patch_nums)
    return (cfg_scale - 1.0) * torch.arange(s, dtype=torch.float64, device=device) / (s - 1)


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------

@dataclass
class VARExtras(FamilyExtras):
    """Next-scale rollout extras: the shared scale schedule (the per-scale ids are
    ``actions[:, begin:end]``, see :meth:`VARPolicy.scale_ids`)."""

    patch_nums: tuple = PATCH_NUMS_256


_FROZEN = ('vae',)


@POLICIES.register_module()
class VARPolicy(Policy):
    """VAR as a vargo policy: one action per token, tokens grouped by scale.

    Rollout conventions: ``actions [B, L]`` long, the per-scale id grids flattened in raster
    order and concatenated coarse to fine (``L = sum pn^2``, 680 at 256 px); ``action_step [L]``
    = scale index; ``action_pos [L, 3]`` = (scale, row, col); images decoded by the VQVAE.

    Args:
        arch: an official size (``'d16'``, ``'d20'``, ``'d24'``, ``'d30'``, ``'d36'``) or a dict of
            :attr:`VARConfig.ARCH_FIELDS` (e.g. ``dict(depth=2, embed_dim=64, num_heads=4)``).
        patch_nums: scale sides; None = the official schedule of the arch (256 px, d36: 512 px).
        image_size: optional check: must equal ``patch_nums[-1] * tokenizer downsample``.
        num_classes: classes (ImageNet 1000).
        vocab_size: V, must equal the tokenizer's codebook size.
        checkpoint: official ``var_d*.pth`` (or a file with this transformer's keys), loaded
            strictly; None keeps the official random init.
        tokenizer: ``'vae_ch160v4096z32'`` (official) or a dict of
            :class:`~vargo.components.tokenizers.msvq.MultiScaleVQVAE` arguments.
        tokenizer_checkpoint: official ``vae_ch160v4096z32.pth`` (or a file with the same keys),
            loaded strictly; None keeps a random tokenizer (tests only).
        class_dropout_prob: label dropout of :meth:`pretrain_loss` (official ``cond_drop_rate``
            0.1); never used by :meth:`evaluate`.

    Attributes:
        file_sources: official file name -> where it is published.
    """

    file_sources: dict[str, str] = VAR_FILE_SOURCES

    def __init__(self, *, arch: Union[str, dict] = 'd16',
                 patch_nums: Optional[Sequence[int]] = None, image_size: Optional[int] = None,
                 num_classes: int = 1000, vocab_size: int = 4096,
                 checkpoint: Optional[str] = None,
                 tokenizer: Union[str, dict] = 'vae_ch160v4096z32',
                 tokenizer_checkpoint: Optional[str] = None, class_dropout_prob: float = 0.1):
        super().__init__()
        if patch_nums is None:
            patch_nums = PATCH_NUMS_512 if arch == 'd36' else PATCH_NUMS_256
        patch_nums = tuple(int(p) for p in patch_nums)
        self.class_dropout_prob = class_dropout_prob

        self.vae: MultiScaleVQVAE = build_msvq(tokenizer, patch_nums=patch_nums)
        if self.vae.vocab_size != vocab_size:
            raise ValueError(f'tokenizer codebook has {self.vae.vocab_size} codes, but '
                             f'vocab_size={vocab_size}')
        if image_size is not None and image_size != self.vae.image_size:
            raise ValueError(f'image_size={image_size} but patch_nums[-1]={patch_nums[-1]} x '
                             f'tokenizer downsample {self.vae.downsample} = '
                             f'{self.vae.image_size}: change patch_nums or the tokenizer ch_mult')
        if tokenizer_checkpoint is not None:
            strict_load(self.vae, _load(tokenizer_checkpoint, 'VAR VQVAE'),
                        what=f'VAR VQVAE file {tokenizer_checkpoint!r}')
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self.image_size = self.vae.image_size

        self.cfg = VARConfig.from_arch(arch, patch_nums=patch_nums, vocab_size=vocab_size,
                                       Cvae=self.vae.Cvae, num_classes=num_classes)
        self.var = VARTransformer(self.cfg)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

        steps, pos = [], []
        for s, p in enumerate(patch_nums):
            r, c = torch.meshgrid(torch.arange(p), torch.arange(p), indexing='ij')
            steps.append(torch.full((p * p,), s))
            pos.append(torch.stack([torch.full((p * p,), s), r.flatten(), c.flatten()], -1))
        self.register_buffer('action_step', torch.cat(steps), persistent=False)
        self.register_buffer('action_pos', torch.cat(pos), persistent=False)
        exclude_frozen_submodules(self, _FROZEN)
        self.train(True)

    # ---- sizes ------------------------------------------------------------------------------
    @property
    def patch_nums(self) -> tuple:
        return self.cfg.patch_nums

    @property
    def num_actions(self) -> int:
        """A = L, the tokens of all scales."""
        return self.cfg.L

    @property
    def num_steps(self) -> int:
        """S, the scales (generation steps)."""
        return self.cfg.num_scales

    @property
    def device(self) -> torch.device:
        return self.var.head.weight.device

    def train(self, mode: bool = True) -> 'VARPolicy':
        super().train(mode)
        self.vae.eval()
        return self

    def trainable_parameters(self):
        return [p for p in self.var.parameters() if p.requires_grad]

    def load_checkpoint(self, path: str) -> None:
        """Load an official ``var_d*.pth`` into the transformer, strictly."""
        strict_load(self.var, _load(path, 'VAR transformer'), what=f'VAR transformer file {path!r}')

    # ---- conditions -------------------------------------------------------------------------
    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Check class ids and move them to the model's device."""
        if cond.class_ids is None:
            raise ValueError('a VAR policy is class-conditional: it needs Conditions.class_ids')
        ids = cond.class_ids.to(self.device)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.num_classes):
            raise ValueError(f'class ids must be in [0, {self.cfg.num_classes}), got '
                             f'[{int(ids.min())}, {int(ids.max())}]')
        return dataclasses.replace(cond, class_ids=ids)

    def labels(self, cond: Conditions, *, with_null: bool) -> Tensor:
        """``[B]`` labels, or ``[2B]`` ``[labels; null]`` (the official CFG batch order)."""
        ids = cond.class_ids
        if with_null:
            ids = torch.cat([ids, torch.full_like(ids, self.cfg.num_classes)])
        return ids

    # ---- tokens ---------------------------------------------------------------------------------
    def scale_ids(self, actions: Tensor) -> list[Tensor]:
        """Per-scale id grids ``[B, pn, pn]`` of concatenated ``actions [B, L]``."""
        return [a.view(a.shape[0], p, p)
                for a, p in zip(self.vae.split_scales(actions), self.patch_nums)]

    @torch.no_grad()
    def var_input(self, actions: Tensor) -> Tensor:
        """Teacher-forcing input ``[B, L - pn_0^2, Cvae]`` of ``actions [B, L]`` (frozen VQVAE)."""
        return self.vae.ids_to_var_input(actions)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Tokens ``[B, L]`` of images ``[B, 3, H, W]`` in [0, 1] (for pretraining)."""
        return self.vae.encode(images.to(self.device))

    def rollout_axes(self) -> tuple[Tensor, Tensor]:
        """``(action_step [L], action_pos [L, 3])``."""
        return self.action_step, self.action_pos

    # ---- the Policy interface -----------------------------------------------------------------
    def evaluate(self, rollout: Rollout, *, spec: LogprobSpec,
                 with_entropy: bool = True) -> PolicyEval:
        """Teacher-forced log-probs ``[B, L]`` of ``rollout.actions`` and entropies ``[B, L]``
        under ``spec``, in ONE forward (no label dropout, no drop-path, whatever the mode).

        ``spec.mode='none'``: ``log_softmax(cond_logits / temperature)``, full vocabulary.
        ``spec.mode='rollout'``: the sampling distribution exactly: a doubled ``[cond; null]``
        batch when ``cfg_scale != 1`` with the per-scale CFG ramp (:func:`cfg_ramp`, mixed on
        the head inputs, see the module doc), ``/ temperature``, VAR's top-k / top-p kept set
        renormalised; the entropy is that distribution's.
        """
        if spec.cfg_interval is not None:
            raise ValueError(f'cfg_interval={spec.cfg_interval} is not a VAR setting: VAR guides '
                             f'with its per-scale ramp; use cfg_interval=None')
        cond = self.encode_conditions(rollout.cond)
        tokens = rollout.actions.to(self.device)                            # [B, L]
        b, l = tokens.shape
        if l != self.cfg.L:
            raise ValueError(f'rollout has {l} actions per sample, this VAR has L={self.cfg.L}')
        use_cfg = spec.uses_cfg
        x_in = self.var_input(tokens)
        labels = self.labels(cond, with_null=use_cfg)
        if use_cfg:
            x_in = torch.cat([x_in, x_in])
        h = self.var(labels, x_in, return_hidden=True)                     # [B2, L, C]
        if use_cfg:
            t = cfg_ramp(spec.cfg_scale, self.patch_nums, self.device)[self.action_step]
            t = t.to(h.dtype)[None, :, None]                                # [1, L, 1]
            h = h[:b] * (1 + t) - h[b:] * t
        logits = self.var.logits(h)                                         # [B, L, V]
        truncate = spec.mode == 'rollout'
        logp, ent = categorical_logp_entropy(
            logits.view(1, b * l, -1), tokens.reshape(-1), temperature=spec.temperature,
            top_k=spec.top_k if truncate else 0, top_p=spec.top_p if truncate else 1.0,
            with_entropy=with_entropy, keep_fn=var_truncation_keep_mask)
        return PolicyEval(logp=logp.view(b, l), entropy=None if ent is None else ent.view(b, l))

    def flops_per_sample(self, spec: Optional[LogprobSpec] = None) -> int:
        """Matmul FLOPs of one teacher-forced :meth:`evaluate` forward, per sample (2 per
        multiply-add; backward is twice this).

        * per block on all L positions: ``2 L C 3C`` (qkv) + ``2 L C^2`` (proj) + ``2 * 2 L C
          hidden`` (FFN); AdaLN ``2 C 6C`` once per sample (not per position);
        * attention over the block-causal pairs ``P = sum_s pn_s^2 * (tokens up to scale s)``
          (the dense kernel computes all ``L^2``; counted: the visible pairs): ``4 C P``;
        * ``word_embed`` ``2 (L - pn_0^2) Cvae C``; head_nm ``2 C 2C``; head ``2 L C V`` (once:
          CFG is mixed before the head).

        With ``spec.uses_cfg`` the transformer terms count twice.
        """
        cfg = self.cfg
        c, l, hid = cfg.embed_dim, cfg.L, cfg.ffn_hidden
        pairs, seen = 0, 0
        for p in cfg.patch_nums:
            seen += p * p
            pairs += p * p * seen
        ada = 0 if cfg.shared_aln else 2 * c * 6 * c
        block = 2 * l * c * 3 * c + 2 * l * c * c + 4 * l * c * hid + 4 * c * pairs + ada
        body = (cfg.depth * block + 2 * (l - cfg.first_l) * cfg.Cvae * c + 2 * c * 2 * c
                + (2 * c * 6 * c if cfg.shared_aln else 0))
        copies = 2 if spec is not None and spec.uses_cfg else 1
        return copies * body + 2 * l * c * cfg.vocab_size

    @torch.no_grad()
    def decode(self, rollout: Rollout, *, chunk: int = 16) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] of the rollout's tokens (``chunk`` at a time)."""
        tokens = rollout.actions.to(self.device)
        return torch.cat([self.vae.decode(tokens[i:i + chunk])
                          for i in range(0, tokens.shape[0], chunk)], dim=0)

    def embed_actions(self, rollout: Rollout) -> Tensor:
        """``[B, L, Cvae]`` VQVAE codebook vectors of the sampled tokens (not normalised: VAR's
        codebook has ``using_znorm=False``; normalise for cosine similarities)."""
        with torch.no_grad():
            return self.vae.codebook()[rollout.actions.to(self.device)]

    # ---- pretraining (Shapes) -------------------------------------------------------------------
    def pretrain_loss(self, tokens: Tensor, cond: Conditions) -> Tensor:
        """Teacher-forced cross-entropy of ``tokens [B, L]`` averaged over all tokens (official
        ``trainer.py``, uniform ``loss_weight``, no label smoothing), with labels replaced by
        the null class with probability ``class_dropout_prob`` and drop-path, in training mode."""
        cond = self.encode_conditions(cond)
        tokens = tokens.to(self.device)
        labels = cond.class_ids
        if self.training and self.class_dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=self.device) < self.class_dropout_prob
            labels = torch.where(drop, self.cfg.num_classes, labels)
        logits = self.var(labels, self.var_input(tokens), drop_path=self.training)
        return F.cross_entropy(logits.flatten(0, 1), tokens.reshape(-1))


def _load(path: str, what: str) -> dict[str, Tensor]:
    if not os.path.isfile(path) and not str(path).endswith('.safetensors'):
        name = os.path.basename(str(path))
        source = VAR_FILE_SOURCES.get(name)
        where = (f'it is published at {source}' if source else
                 f'official VAR files are {sorted(VAR_FILE_SOURCES)} '
                 f'(https://huggingface.co/FoundationVision/var)')
        raise FileNotFoundError(f'{what} file {path!r} not found: {where}. Download it there, or '
                                f'use a Shapes config (configs/*/*_shapes.py) that needs no '
                                f'download.')
    return load_official_state_dict(path, what=what)
