"""MAR's KL-16 VAE (continuous tokens), with the official state-dict key names.

Faithful to ``models/vae.py`` of LTH14/mar (itself latent-diffusion's KL autoencoder). The official
``kl16.ckpt`` (``{"model": state_dict}``, published by the MAR code (``util/download.py``, link in
:data:`KL_VAE_FILE_SOURCES`; the README also points to the Hugging Face mirror
https://huggingface.co/jadechoghari/mar) loads unchanged and strictly into ``KLVAE()`` with the
default arguments (official ``AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))``; 66,456,019
parameters, 312 entries).

Structure (official names):

* ``encoder``: ``conv_in``; ``down.{level}.block.{i}`` ResnetBlocks (2 per level),
  ``down.{level}.attn.{i}`` AttnBlocks at the levels whose resolution is in
  ``attn_resolutions`` (official encoder default ``(16,)``: the last level of the 256-px model),
  ``down.{level}.downsample.conv`` (stride 2 after (0, 1, 0, 1) padding); ``mid.{block_1, attn_1,
  block_2}``; ``norm_out``, ``conv_out`` to ``2 * z_channels`` (mean and log-variance);
* ``decoder``: ``conv_in``, ``mid.*``, ``up.{level}.block.{i}`` (3 per level, indexed by level:
  the official ``insert(0, ...)``), ``up.{level}.upsample.conv`` (nearest x2 + conv), no
  attention in the up path (decoder ``attn_resolutions=()``), ``norm_out``, ``conv_out``;
* ``quant_conv`` 1x1 ``2 z -> 2 embed_dim``, ``post_quant_conv`` 1x1 ``embed_dim -> embed_dim``.

ResnetBlock: ``x + conv2(swish(norm2(conv1(swish(norm1 x)))))`` (``nin_shortcut`` 1x1 when the
channels change), GroupNorm(32, eps 1e-6), swish ``x * sigmoid(x)``. AttnBlock: single head,
separate 1x1 ``q``, ``k``, ``v``, ``proj_out`` convs, ``softmax(q^T k / sqrt(C))``, computed with
the official ``bmm`` expressions so the outputs are bit-identical to the official module.

Why not diffusers' ``AutoencoderKL``: its ``DownEncoderBlock2D`` has no attention, but MAR's
encoder attends at resolution 16 in the last down level (encoder ``attn_resolutions=(16,)``);
``AttnDownEncoderBlock2D`` has attention but uses ``Linear`` projections and
``scaled_dot_product_attention`` (same function, different rounding) and a converter would need
to reshape every 1x1 conv. Our own module keeps the official keys (strict loading without a
converter) and is bit-identical to ``models/vae.py`` (``tests/test_kl_vae.py``; parity measured
against the official module: max |diff| 0.0 on encode and decode).

Conventions: :meth:`KLVAE.encode_latents` / :meth:`KLVAE.decode_latents` take images in [0, 1]
(vargo's convention) and latents already multiplied by ``scale_factor`` (0.2325, the official
``engine_mar.py``: ``posterior.sample().mul_(0.2325)`` / ``vae.decode(tokens / 0.2325)``), which is
what the MAR transformer sees. Training (losses, discriminator) is not implemented: vargo uses a
frozen tokenizer. ``ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``resolution``
and the GroupNorm group count are arguments so tiny models can be built for tests and Shapes.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.conv_layout import decode_channels_last
from ..modules.decoder_ops import add_residual

__all__ = ['KLVAE', 'KL_VAE_PRESETS', 'KL_VAE_FILE_SOURCES', 'build_kl_vae',
           'DiagonalGaussian']

#: official configurations (``AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))``)
KL_VAE_PRESETS: dict[str, dict] = {
    'kl16': dict(embed_dim=16, ch_mult=(1, 1, 2, 2, 4), ch=128, num_res_blocks=2,
                 resolution=256, enc_attn_resolutions=(16,), dec_attn_resolutions=(),
                 num_groups=32, scale_factor=0.2325),
}

#: where the official file is published (MAR README / util/download.py; HF mirror)
KL_VAE_FILE_SOURCES: dict[str, str] = {
    'kl16.ckpt': ('https://www.dropbox.com/scl/fi/hhmuvaiacrarfg28qxhwz/kl16.ckpt?rlkey='
                  'l44xipsezc8atcffdp4q7mwmh&dl=0 (also https://huggingface.co/jadechoghari/mar)'),
}


def _swish(x: Tensor) -> Tensor:
    """The official ``nonlinearity`` ``x * sigmoid(x)`` (``F.silu`` rounds differently), with
    autograd off as ``sigmoid(x) *= x``: one allocation instead of two, the same products
    (:func:`~vargo.components.modules.decoder_ops.add_residual` says why
    allocations matter here)."""
    if torch.is_grad_enabled():
        return x * torch.sigmoid(x)
    return torch.sigmoid(x).mul_(x)


class ResnetBlock(nn.Module):
    """Official ``ResnetBlock`` without time embedding (``temb_channels=0``)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return add_residual(x, h)


class AttnBlock(nn.Module):
    """Official ``AttnBlock``: single-head spatial self-attention with 1x1 conv projections."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        w_ = torch.bmm(q.reshape(b, c, h * w).permute(0, 2, 1), k.reshape(b, c, h * w))
        w_ = torch.softmax(w_ * (int(c) ** (-0.5)), dim=2)
        out = torch.bmm(v.reshape(b, c, h * w), w_.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode='constant', value=0))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


class Encoder(nn.Module):
    """Official ``Encoder`` (``double_z=True``): ``[B, 3, H, W] -> [B, 2 z, H / 2^(L-1), ...]``."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int, groups: int):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        cur = resolution
        self.down = nn.ModuleList()
        block_in = ch
        for lvl in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[lvl], ch * ch_mult[lvl]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, groups))
                block_in = block_out
                if cur in attn_resolutions:
                    attn.append(AttnBlock(block_in, groups))
            down = nn.Module()
            down.block, down.attn = block, attn
            if lvl != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                cur //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, groups)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, groups)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for lvl, down in enumerate(self.down):
            for i in range(self.num_res_blocks):
                h = down.block[i](h)
                if len(down.attn) > 0:
                    h = down.attn[i](h)
            if lvl != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Official ``Decoder``: ``[B, z, h, w] -> [B, 3, h 2^(L-1), w 2^(L-1)]`` in about [-1, 1]."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int, groups: int):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        cur = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, groups)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, groups)
        ups = []
        for lvl in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[lvl]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, groups))
                block_in = block_out
                if cur in attn_resolutions:
                    attn.append(AttnBlock(block_in, groups))
            up = nn.Module()
            up.block, up.attn = block, attn
            if lvl != 0:
                up.upsample = Upsample(block_in)
                cur *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, 3, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for lvl in reversed(range(self.num_resolutions)):
            up = self.up[lvl]
            for i in range(self.num_res_blocks + 1):
                h = up.block[i](h)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            if lvl != 0:
                h = up.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class DiagonalGaussian:
    """Official ``DiagonalGaussianDistribution``: ``moments [B, 2 D, h, w]`` -> mean and
    log-variance clamped to [-30, 20]."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator).to(self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean


class KLVAE(nn.Module):
    """MAR's KL VAE (official ``AutoencoderKL(embed_dim, ch_mult)``), keyed as ``kl16.ckpt``.

    Args:
        embed_dim: latent channels D (16; also ``z_channels``).
        ch_mult: channel multipliers per level; the downsample factor is ``2^(len - 1)``.
        ch: base channels (128).
        num_res_blocks: residual blocks per encoder level (decoder: one more).
        resolution: the constructor resolution that places attention (256; attention sits at
            the levels whose ``resolution / 2^level`` is in the attention resolutions).
        enc_attn_resolutions, dec_attn_resolutions: official ``(16,)`` and ``()``.
        num_groups: GroupNorm groups (32).
        scale_factor: latent scale the MAR transformer sees (0.2325).

    Shapes: images ``[B, 3, H, W]``, latents ``[B, D, H / f, W / f]`` with ``f = downsample``.
    """

    def __init__(self, *, embed_dim: int = 16, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 ch: int = 128, num_res_blocks: int = 2, resolution: int = 256,
                 enc_attn_resolutions: Sequence[int] = (16,),
                 dec_attn_resolutions: Sequence[int] = (), num_groups: int = 32,
                 scale_factor: float = 0.2325):
        super().__init__()
        for c in {ch * m for m in ch_mult}:
            if c % num_groups:
                raise ValueError(f'KL VAE channels {c} (ch={ch} x ch_mult={tuple(ch_mult)}) are '
                                 f'not divisible by num_groups={num_groups}: change ch or '
                                 f'num_groups')
        kw = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                  resolution=resolution, z_channels=embed_dim, groups=num_groups)
        self.encoder = Encoder(attn_resolutions=tuple(enc_attn_resolutions), **kw)
        self.decoder = Decoder(attn_resolutions=tuple(dec_attn_resolutions), **kw)
        self.quant_conv = nn.Conv2d(2 * embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)
        self.embed_dim = embed_dim
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.scale_factor = float(scale_factor)

    # ---- official API (images in [-1, 1], unscaled latents) ---------------------------------
    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Official ``encode``: the posterior of images ``x [B, 3, H, W]`` in [-1, 1]."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """Official ``decode``: images (about [-1, 1]) of unscaled latents ``z [B, D, h, w]``."""
        return decode_channels_last(lambda x: self.decoder(self.post_quant_conv(x)), z)

    # ---- vargo API (images in [0, 1], scaled latents) ---------------------------------------
    @torch.no_grad()
    def encode_latents(self, images: Tensor, *, sample: bool = False,
                       generator: Optional[torch.Generator] = None) -> Tensor:
        """Scaled latents ``[B, D, h, w]`` of images ``[B, 3, H, W]`` in [0, 1]: the posterior
        mean (``sample=False``, MAR's cached latents) or a sample (``engine_mar.py``), times
        ``scale_factor``."""
        post = self.encode(images * 2 - 1)
        z = post.sample(generator) if sample else post.mode()
        return z * self.scale_factor

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] of scaled latents (``(decode(z / s) + 1) / 2``,
        clamped)."""
        return ((self.decode(latents / self.scale_factor) + 1) / 2).clamp(0, 1)


def build_kl_vae(cfg: Union[str, dict, None]) -> KLVAE:
    """A :class:`KLVAE` from a preset name (``'kl16'``) or a dict of arguments (optionally with
    ``preset=...`` to start from)."""
    if cfg is None:
        cfg = 'kl16'
    if isinstance(cfg, str):
        cfg = dict(preset=cfg)
    cfg = dict(cfg)
    preset = cfg.pop('preset', None)
    if preset is not None:
        if preset not in KL_VAE_PRESETS:
            raise ValueError(f'unknown KL VAE preset {preset!r}; presets: '
                             f'{sorted(KL_VAE_PRESETS)} (or a dict of KLVAE arguments)')
        cfg = {**KL_VAE_PRESETS[preset], **cfg}
    return KLVAE(**cfg)
