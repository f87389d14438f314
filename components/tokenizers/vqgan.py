"""The VQGAN image tokenizer of CompVis/taming-transformers, with the official state-dict names.

Faithful to ``taming/models/vqgan.py`` (``VQModel``) with ``VectorQuantizer2`` and the
``Encoder`` / ``Decoder`` of ``taming/modules/diffusionmodules/model.py``. The ImageNet f16
tokenizers (``vqgan_imagenet_f16_16384``, and the first stage of the class-conditional ``cin``
transformer) are ``ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
resolution=256, z_channels=256, embed_dim=256`` with 16384 (or 1024) codes; 16 x 16 tokens for a
256-px image.

Official keys (the ``first_stage_model.`` prefix of a cin checkpoint removed):

* ``encoder.conv_in``, ``encoder.down.{level}.block.{i}.{norm1,conv1,norm2,conv2,nin_shortcut}``,
  ``encoder.down.{level}.attn.{i}.{norm,q,k,v,proj_out}`` (at the levels whose resolution is in
  ``attn_resolutions``), ``encoder.down.{level}.downsample.conv``, ``encoder.mid.{block_1,
  attn_1, block_2}``, ``encoder.norm_out``, ``encoder.conv_out`` (to ``z_channels``:
  ``double_z=False``);
* ``decoder.conv_in``, ``decoder.mid.*``, ``decoder.up.{level}.block.{i}`` (one more block per
  level, indexed by level: the official ``insert(0, ...)``), ``decoder.up.{level}.attn.{i}``,
  ``decoder.up.{level}.upsample.conv``, ``decoder.norm_out``, ``decoder.conv_out``;
* ``quantize.embedding.weight`` ``[n_embed, embed_dim]``, ``quant_conv`` (1x1 ``z_channels ->
  embed_dim``), ``post_quant_conv`` (1x1 back).

The building blocks are those of MAR's KL VAE (:mod:`.kl_vae`, itself latent-diffusion's copy of
the same taming modules, computed with the official expressions: swish ``x * sigmoid(x)``,
attention with the official ``bmm`` code), so encode and decode are bit-identical to taming's.
The only structural difference, the encoder's ``conv_out`` width (taming's VQGAN has
``double_z=False``), is :class:`Encoder` here.

The quantizer picks the nearest code with the official distance expression ``|z|^2 + |e|^2 - 2 z
e`` (no L2 normalisation, unlike LlamaGen's VQ). The official ``encode`` returns ``z + (e -
z).detach()`` (the straight-through estimator, equal to ``e`` up to one rounding); vargo's
:meth:`VQGAN.encode_raw` returns the code vectors ``e`` themselves (the same indices).

Why not diffusers' ``VQModel``: its blocks rename every key (``down_blocks.N.resnets.M``,
``attentions`` with ``to_q``/``to_k``/``to_v`` linears instead of 1x1 convs), so the official files
would need a converter, and its attention runs another kernel (different rounding); this module
loads the official files unchanged and matches them bit for bit.

Not implemented (vargo only encodes and decodes with a frozen tokenizer): the training losses
(LPIPS + discriminator, ``loss.*`` keys of a standalone VQGAN checkpoint, which the loader of the
family drops), index remapping (``remap``), Gumbel and EMA quantizers.

Value ranges: the official model works on images in [-1, 1]; :meth:`VQGAN.encode` /
:meth:`VQGAN.decode` take and give vargo's [0, 1] (decoded images are clamped, as
``scripts/sample_fast.py`` saves them: ``((x + 1) / 2 * 255).clip(0, 255)``).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn

from ..modules.conv_layout import decode_channels_last
from .kl_vae import Decoder
from .kl_vae import Encoder as _KLEncoder

__all__ = ['VQGAN', 'VQGAN_PRESETS', 'build_vqgan']

_F16 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
            resolution=256, z_channels=256, embed_dim=256)

#: official configurations (``configs/imagenet_vqgan.yaml`` and the released log folders)
VQGAN_PRESETS: dict[str, dict] = {
    'f16-16384': dict(_F16, n_embed=16384),   # vqgan_imagenet_f16_16384 / cin first stage
    'f16-1024': dict(_F16, n_embed=1024),     # vqgan_imagenet_f16_1024
}


class Encoder(_KLEncoder):
    """Official taming ``Encoder`` with ``double_z=False``: ``[B, 3, H, W] -> [B, z_channels,
    H / 2^(L-1), W / 2^(L-1)]`` (the KL VAE's encoder with a ``z_channels``-wide ``conv_out``)."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int, groups: int):
        super().__init__(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                         attn_resolutions=attn_resolutions, resolution=resolution,
                         z_channels=z_channels, groups=groups)
        block_in = ch * ch_mult[-1]
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)


class VectorQuantizer(nn.Module):
    """Official ``VectorQuantizer2`` (inference): nearest code by ``|z|^2 + |e|^2 - 2 z e``.

    Keys: ``embedding.weight`` ``[n_e, e_dim]`` (official init ``U(-1/n_e, 1/n_e)``).
    """

    def __init__(self, n_e: int, e_dim: int):
        super().__init__()
        self.n_e, self.e_dim = n_e, e_dim
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codes of ``z [B, C, h, w]``: (code vectors ``[B, C, h, w]``, indices
        ``[B, h*w]`` in raster order)."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        book = self.embedding.weight
        d = (flat.pow(2).sum(dim=1, keepdim=True) + book.pow(2).sum(dim=1)
             - 2 * torch.einsum('bd,dn->bn', flat, book.t()))
        idx = d.argmin(dim=1)
        return self.get_codebook_entry(idx, (b, h, w, c)), idx.view(b, h * w)

    def get_codebook_entry(self, indices: Tensor, shape: Sequence[int]) -> Tensor:
        """Official ``get_codebook_entry``: code vectors of ``indices`` laid out as ``shape =
        (B, h, w, C)``, returned channel-first ``[B, C, h, w]``."""
        return self.embedding(indices.reshape(-1)).view(*shape).permute(0, 3, 1, 2).contiguous()


class VQGAN(nn.Module):
    """taming-transformers' VQGAN (official ``VQModel``), encode/decode only, official keys.

    Args:
        n_embed: codebook size (16384 for the cin model).
        embed_dim: code dimension (256).
        ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels: the official
            ``ddconfig`` (the downsample factor is ``2^(len(ch_mult) - 1)``; attention sits at the
            levels whose ``resolution / 2^level`` is in ``attn_resolutions``).
        norm_groups: GroupNorm groups (official 32; smaller for tiny test models).

    Examples:
        >>> vq = VQGAN(n_embed=64, embed_dim=8, ch=16, ch_mult=(1, 2), num_res_blocks=1,
        ...            attn_resolutions=(8,), resolution=16, z_channels=8, norm_groups=4)
        >>> ids = vq.encode(torch.rand(2, 3, 16, 16))
        >>> ids.shape, vq.decode(ids).shape
        (torch.Size([2, 64]), torch.Size([2, 3, 16, 16]))
    """

    def __init__(self, *, n_embed: int = 16384, embed_dim: int = 256, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), resolution: int = 256,
                 z_channels: int = 256, norm_groups: int = 32):
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        for c in sorted({ch * m for m in ch_mult}):
            if c % norm_groups:
                raise ValueError(f'VQGAN channels {c} (ch={ch} x ch_mult={ch_mult}) are not '
                                 f'divisible by norm_groups={norm_groups}: change ch or '
                                 f'norm_groups')
        kw = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                  attn_resolutions=tuple(attn_resolutions), resolution=resolution,
                  z_channels=z_channels, groups=norm_groups)
        self.encoder = Encoder(**kw)
        self.decoder = Decoder(**kw)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.codebook_size, self.embed_dim = n_embed, embed_dim
        #: the official ``ddconfig`` fields of this model (what a release's project.yaml sets)
        self.ddconfig = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                             attn_resolutions=tuple(attn_resolutions), resolution=resolution,
                             z_channels=z_channels)
        self.downsample = 2 ** (len(ch_mult) - 1)

    # ---- official API (images in [-1, 1]) ------------------------------------------------
    def encode_raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Official ``encode`` of images in [-1, 1]: (code vectors ``[B, embed_dim, h, w]``,
        indices ``[B, h*w]``)."""
        return self.quantize.quantize(self.quant_conv(self.encoder(x)))

    def decode_latent(self, quant: Tensor) -> Tensor:
        """Official ``decode``: code vectors ``[B, embed_dim, h, w]`` -> images (about [-1, 1])."""
        return decode_channels_last(lambda q: self.decoder(self.post_quant_conv(q)), quant)

    def decode_code(self, indices: Tensor, side: int) -> Tensor:
        """Official ``Net2NetTransformer.decode_to_img``: indices ``[B, side*side]`` -> images
        (about [-1, 1])."""
        b = indices.shape[0]
        quant = self.quantize.get_codebook_entry(indices, (b, side, side, self.embed_dim))
        return self.decode_latent(quant)

    # ---- vargo API (images in [0, 1]) ----------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Token ids ``[B, h*w]`` (raster order) of images ``[B, 3, H, W]`` in [0, 1]."""
        return self.encode_raw(images * 2 - 1)[1]

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] of token ids ``[B, h*w]`` (a square grid)."""
        n = indices.shape[1]
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f'{n} tokens per image is not a square grid')
        return ((self.decode_code(indices, side) + 1) / 2).clamp(0, 1)


def build_vqgan(cfg: Union[str, dict, None]) -> VQGAN:
    """A :class:`VQGAN` from a preset name (``'f16-16384'``, ``'f16-1024'``) or a dict of
    arguments (optionally ``preset=...`` to start from)."""
    if cfg is None:
        cfg = 'f16-16384'
    if isinstance(cfg, str):
        cfg = dict(preset=cfg)
    cfg = dict(cfg)
    preset = cfg.pop('preset', None)
    if preset is not None:
        if preset not in VQGAN_PRESETS:
            raise ValueError(f'unknown VQGAN preset {preset!r}; presets: {sorted(VQGAN_PRESETS)} '
                             f'(or a dict of VQGAN arguments)')
        cfg = {**VQGAN_PRESETS[preset], **cfg}
    return VQGAN(**cfg)
