"""LlamaGen's VQ image tokenizer (VQ-16 / VQ-8), with the official state-dict key names.

Faithful to ``tokenizer/tokenizer_image/vq_model.py`` of FoundationVision/LlamaGen: a taming-style
convolutional encoder/decoder (GroupNorm(32, eps 1e-6), swish, residual blocks, one single-head
attention block per block of the lowest level and in the middle, strided conv downsampling with
(0, 1, 0, 1) padding, nearest-neighbour x2 upsampling followed by a conv), a 1x1 ``quant_conv`` to
the 8-d code space, a vector quantizer whose codebook is L2-normalised (``codebook_l2_norm``) and
a 1x1 ``post_quant_conv`` back. VQ-16 (``ch_mult=(1, 1, 2, 2, 4)``, 16384 codes of 8 dims) has
about 72M parameters (``vq_ds16_c2i.pt`` / ``vq_ds16_t2i.pt``).

Key names are those of the official module, e.g. ``encoder.conv_blocks.0.res.0.norm1.weight``,
``encoder.mid.1.q.weight``, ``decoder.conv_blocks.0.upsample.conv.weight``,
``quantize.embedding.weight``, ``quantize.codebook_used`` (a 65536-long usage buffer the official
training keeps; it is in the official files, so it is a buffer here too), ``quant_conv.weight``.

Deviations (none change the function):

* attention blocks use ``F.scaled_dot_product_attention`` (the same single-head softmax(q k^T /
  sqrt(c)) v as the official bmm code, faster);
* the GroupNorm group count is a constructor argument (official: 32) so tiny test models with
  fewer than 32 channels can be built;
* the training losses (commitment, codebook, entropy) are not implemented: vargo only encodes and
  decodes with a frozen tokenizer.

Value ranges: the official model works on images in [-1, 1]. :meth:`VQModel.encode` and
:meth:`VQModel.decode` use vargo's convention, images in [0, 1]; :meth:`VQModel.decode_code`
returns the raw decoder output (about [-1, 1]) exactly as the official ``decode_code``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.conv_layout import decode_channels_last
from ..modules.decoder_ops import add_residual

__all__ = ['VQModel', 'VQ_PRESETS', 'build_vq']

#: official presets (``VQ_models`` in tokenizer/tokenizer_image/vq_model.py); the rest of the
#: arguments take the official ``ModelArgs`` defaults.
VQ_PRESETS: dict[str, dict] = {
    'VQ-16': dict(ch_mult=(1, 1, 2, 2, 4)),   # downsample 16, ~72M parameters
    'VQ-8': dict(ch_mult=(1, 2, 2, 4)),       # downsample 8, ~70M parameters
}


def _swish(x: Tensor) -> Tensor:
    """``x * sigmoid(x)`` (official ``nonlinearity``) as one fused kernel, of a fresh tensor
    (every caller passes a norm's output): in place with autograd off, which saves a large
    allocation's page faults (``components/modules/decoder_ops.py``); the same bits."""
    return F.silu(x, inplace=not torch.is_grad_enabled())



class ResnetBlock(nn.Module):
    """norm-swish-conv twice plus a (1x1 ``nin_shortcut``) skip; keys as the official block."""

    def __init__(self, in_channels: int, out_channels: int, *, norm_groups: int, dropout: float):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = nn.GroupNorm(norm_groups, in_channels, eps=1e-6, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels, eps=1e-6, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return add_residual(x, h)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q/k/v/proj_out (official ``AttnBlock``)."""

    def __init__(self, channels: int, *, norm_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6, affine=True)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        # [B, 1, HW, C]: one head of width C, scale C^-0.5 as the official bmm code
        q, k, v = (m(h).flatten(2).transpose(1, 2).unsqueeze(1) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after asymmetric (0, 1, 0, 1) zero padding (official, taming)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 upsampling then a 3x3 conv (official)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


class Encoder(nn.Module):
    """Image [B, 3, H, W] -> features [B, z_channels, H / 2^(L-1), W / 2^(L-1)]."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 norm_groups: int, dropout: float, in_channels: int = 3):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for level in range(self.num_resolutions):
            stage = nn.Module()
            stage.res, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[level], ch * ch_mult[level]
            for _ in range(num_res_blocks):
                stage.res.append(ResnetBlock(block_in, block_out, norm_groups=norm_groups,
                                             dropout=dropout))
                block_in = block_out
                if level == self.num_resolutions - 1:   # attention only at the lowest resolution
                    stage.attn.append(AttnBlock(block_in, norm_groups=norm_groups))
            if level != self.num_resolutions - 1:
                stage.downsample = Downsample(block_in)
            self.conv_blocks.append(stage)
        self.mid = nn.ModuleList([
            ResnetBlock(block_in, block_in, norm_groups=norm_groups, dropout=dropout),
            AttnBlock(block_in, norm_groups=norm_groups),
            ResnetBlock(block_in, block_in, norm_groups=norm_groups, dropout=dropout)])
        self.norm_out = nn.GroupNorm(norm_groups, block_in, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.conv_blocks):
            for i in range(self.num_res_blocks):
                h = stage.res[i](h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if level != self.num_resolutions - 1:
                h = stage.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Features [B, z_channels, h, w] -> image [B, 3, h * 2^(L-1), w * 2^(L-1)] (about [-1, 1])."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 norm_groups: int, dropout: float, out_channels: int = 3):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.ModuleList([
            ResnetBlock(block_in, block_in, norm_groups=norm_groups, dropout=dropout),
            AttnBlock(block_in, norm_groups=norm_groups),
            ResnetBlock(block_in, block_in, norm_groups=norm_groups, dropout=dropout)])
        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(self.num_resolutions)):   # lowest resolution first
            stage = nn.Module()
            stage.res, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.res.append(ResnetBlock(block_in, block_out, norm_groups=norm_groups,
                                             dropout=dropout))
                block_in = block_out
                if level == self.num_resolutions - 1:
                    stage.attn.append(AttnBlock(block_in, norm_groups=norm_groups))
            if level != 0:
                stage.upsample = Upsample(block_in)
            self.conv_blocks.append(stage)
        self.norm_out = nn.GroupNorm(norm_groups, block_in, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for i_stage, stage in enumerate(self.conv_blocks):
            for i in range(self.num_res_blocks + 1):
                h = stage.res[i](h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if i_stage != self.num_resolutions - 1:
                h = stage.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantizer; with ``l2_norm`` both z and codes are L2-normalised.

    Keys: ``embedding.weight`` ``[n_e, e_dim]`` and (``show_usage``) the ``codebook_used``
    buffer ``[65536]`` that the official training fills; it is kept for strict key
    compatibility and never updated here.
    """

    def __init__(self, n_e: int, e_dim: int, *, l2_norm: bool, show_usage: bool):
        super().__init__()
        self.n_e, self.e_dim, self.l2_norm = n_e, e_dim, l2_norm
        self.embedding = nn.Embedding(n_e, e_dim)
        # official init: U(-1/n_e, 1/n_e), then L2-normalised rows
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        if l2_norm:
            self.embedding.weight.data = F.normalize(self.embedding.weight.data, p=2, dim=-1)
        if show_usage:
            self.register_buffer('codebook_used', torch.zeros(65536))

    def codebook(self) -> Tensor:
        """``[n_e, e_dim]`` the code vectors actually used (L2-normalised if ``l2_norm``)."""
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codes of ``z`` ``[B, C, h, w]``: (z_q ``[B, C, h, w]``, indices ``[B, h*w]``).

        Distances ``|z|^2 + |e|^2 - 2 z.e`` as the official ``VectorQuantizer.forward``.
        """
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)       # [B*h*w, C], raster order
        emb = self.codebook()
        if self.l2_norm:
            flat = F.normalize(flat, p=2, dim=-1)
        d = (flat.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1)) - 2 * flat @ emb.t()
        idx = d.argmin(dim=1)
        z_q = emb[idx].view(b, h, w, c).permute(0, 3, 1, 2)
        return z_q, idx.view(b, h * w)

    def get_codebook_entry(self, indices: Tensor, shape: Optional[Sequence[int]] = None) -> Tensor:
        """Code vectors of ``indices``; with ``shape=(B, C, h, w)`` returned channel-first."""
        z_q = self.codebook()[indices]
        if shape is not None:
            b, c, h, w = shape
            z_q = z_q.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return z_q


class VQModel(nn.Module):
    """LlamaGen VQ tokenizer (official ``VQModel``), encode/decode only.

    Args:
        ch: base channel width (official 128).
        ch_mult: channel multipliers per resolution level; downsample = 2^(len - 1)
            (VQ-16: ``(1, 1, 2, 2, 4)``, VQ-8: ``(1, 2, 2, 4)``).
        num_res_blocks: residual blocks per encoder level (decoder: one more), official 2.
        z_channels: encoder output / decoder input width (official 256).
        codebook_size: number of codes V (official 16384).
        codebook_embed_dim: code dimension (official 8).
        codebook_l2_norm: L2-normalise codes and encoder outputs (official True).
        codebook_show_usage: keep the ``quantize.codebook_used`` buffer (official True; the
            official files contain it).
        norm_groups: GroupNorm groups (official 32; smaller for tiny test models).
        dropout: dropout in residual blocks (official 0).

    Examples:
        >>> vq = VQModel(ch=32, ch_mult=(1, 2), z_channels=32, codebook_size=64,
        ...              codebook_embed_dim=8, norm_groups=8)
        >>> idx = vq.encode(torch.rand(2, 3, 16, 16))
        >>> idx.shape, vq.decode(idx).shape
        (torch.Size([2, 64]), torch.Size([2, 3, 16, 16]))
    """

    def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, codebook_size: int = 16384,
                 codebook_embed_dim: int = 8, codebook_l2_norm: bool = True,
                 codebook_show_usage: bool = True, norm_groups: int = 32, dropout: float = 0.0):
        super().__init__()
        self.ch_mult = tuple(ch_mult)
        self.codebook_size = codebook_size
        self.codebook_embed_dim = codebook_embed_dim
        self.downsample = 2 ** (len(self.ch_mult) - 1)
        common = dict(ch=ch, ch_mult=self.ch_mult, num_res_blocks=num_res_blocks,
                      z_channels=z_channels, norm_groups=norm_groups, dropout=dropout)
        self.encoder = Encoder(**common)
        self.decoder = Decoder(**common)
        self.quantize = VectorQuantizer(codebook_size, codebook_embed_dim,
                                        l2_norm=codebook_l2_norm, show_usage=codebook_show_usage)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    # ---- official-style API (images in [-1, 1]) ------------------------------------------
    def encode_raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Official ``encode`` of images in [-1, 1]: (z_q ``[B, C, h, w]``, ids ``[B, h*w]``)."""
        return self.quantize.quantize(self.quant_conv(self.encoder(x)))

    def decode_latent(self, quant: Tensor) -> Tensor:
        """Official ``decode``: code vectors ``[B, C, h, w]`` -> images (about [-1, 1])."""
        return decode_channels_last(lambda q: self.decoder(self.post_quant_conv(q)), quant)

    def decode_code(self, indices: Tensor, shape: Sequence[int]) -> Tensor:
        """Official ``decode_code``: ids ``[B, h*w]`` and ``shape=(B, C, h, w)`` -> images."""
        return self.decode_latent(self.quantize.get_codebook_entry(indices, shape))

    # ---- vargo API (images in [0, 1]) ----------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        """Token ids ``[B, h*w]`` (raster order) of images ``[B, 3, H, W]`` in [0, 1]."""
        return self.encode_raw(images * 2 - 1)[1]

    def decode(self, indices: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] from token ids ``[B, h*w]`` (square grid).

        Mapped as torchvision ``save_image(normalize=True, value_range=(-1, 1))`` does in the
        official sample scripts: clamp to [-1, 1], then (x + 1) / 2.
        """
        b, n = indices.shape
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f'{n} tokens per image is not a square grid')
        raw = self.decode_code(indices, (b, self.codebook_embed_dim, side, side))
        return (raw.clamp(-1, 1) + 1) / 2


def build_vq(cfg) -> VQModel:
    """A :class:`VQModel` from a preset name (``'VQ-16'``, ``'VQ-8'``) or a dict of arguments.

    A dict may name a preset under ``preset`` and override any argument, e.g.
    ``dict(preset='VQ-16', codebook_size=16384)``.
    """
    if isinstance(cfg, str):
        cfg = dict(preset=cfg)
    cfg = dict(cfg)
    preset = cfg.pop('preset', None)
    if preset is not None:
        if preset not in VQ_PRESETS:
            raise ValueError(f'unknown VQ preset {preset!r}; presets: {sorted(VQ_PRESETS)}')
        cfg = {**VQ_PRESETS[preset], **cfg}
    return VQModel(**cfg)
