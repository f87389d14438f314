"""VAR's multi-scale residual VQVAE, with the official state-dict key names.

Faithful to ``models/vqvae.py``, ``models/quant.py`` and ``models/basic_vae.py`` of
FoundationVision/VAR. The official ``vae_ch160v4096z32.pth`` (published at
https://huggingface.co/FoundationVision/var) loads unchanged and strictly into
``MultiScaleVQVAE()`` with the default arguments (V=4096, Cvae=32, ch=160, 108,948,355
parameters, 324 state-dict entries).

Structure (official names):

* ``encoder`` / ``decoder``: the latent-diffusion vq-f16 convnets (``ch_mult=(1, 1, 2, 2, 4)``,
  two residual blocks per level (decoder three), single-head self-attention at the lowest
  resolution and in the middle with a *fused* 1x1 ``qkv`` conv, GroupNorm(32, eps 1e-6), swish,
  stride-2 conv downsampling after (0, 1, 0, 1) padding, nearest x2 + conv upsampling). Keys
  ``encoder.down.{level}.block.{i}.*``, ``encoder.down.{level}.attn.{i}.qkv.weight``,
  ``encoder.mid.{block_1,attn_1,block_2}.*``, ``decoder.up.{level}.*`` (indexed by level, the
  official ``insert(0, ...)``);
* ``quant_conv`` / ``post_quant_conv``: 3x3 convs Cvae -> Cvae;
* ``quantize.embedding.weight`` ``[V, Cvae]``: the codebook (not normalised, ``using_znorm``
  False);
* ``quantize.quant_resi``: the Phi convs, ``phi(h) = (1 - r) h + r conv3x3(h)`` with
  ``r = quant_resi = 0.5``. ``share_quant_resi=4`` (official): four Phis shared across the
  scales, scale ``si`` uses the one whose tick in ``linspace(1/12, 11/12, 4)`` is nearest to
  ``si / (S - 1)`` (``PhiPartiallyShared``, keys ``quantize.quant_resi.qresi_ls.{k}.*``);
  ``share_quant_resi=1``: one Phi (``quantize.quant_resi.qresi.*``); ``0``: one per scale
  (``quantize.quant_resi.{k}.*``);
* ``quantize.ema_vocab_hit_SV`` ``[S, V]``: a training statistic kept for strict key
  compatibility (as the official ``load_state_dict``, a file whose copy has another number of
  scales is accepted for that key only).

Multi-scale residual quantisation (``VectorQuantizer2.f_to_idxBl_or_fhat``): with ``f`` the
``[B, Cvae, h, w]`` latent and ``f_hat = 0``, for each scale ``pn``: area-downsample the residual
``f - f_hat`` to ``pn x pn`` (not at the last scale), take the nearest codes (squared distance,
the official ``addmm`` formula), upsample their vectors bicubically to ``h x w`` (not at the last
scale), apply the scale's Phi, add to ``f_hat``. Decoding accumulates ``f_hat`` the same way from
ids (``embed_to_fhat``); teacher forcing feeds VAR the area-downsampled partial sums
(``idxBl_to_var_input``); sampling does it one scale at a time
(``get_next_autoregressive_input``).

Deviations (none change the function):

* self-attention uses ``F.scaled_dot_product_attention`` (the same single-head
  ``softmax(q k^T / sqrt(C)) v`` as the official bmm code);
* ``ch_mult``, ``num_res_blocks`` and the GroupNorm group count are arguments (official: fixed
  ``(1, 1, 2, 2, 4)``, 2, 32) so tiny models (tests, Shapes) can be built;
* training (``forward``, losses, EMA hit counts) is not implemented: vargo only encodes and
  decodes with a frozen tokenizer. ``more_smooth`` (gumbel) decoding is not implemented.

Value ranges: the official model works on images in [-1, 1]; :meth:`MultiScaleVQVAE.encode` and
:meth:`MultiScaleVQVAE.decode` use vargo's convention, images in [0, 1] (``fhat_to_img`` clamps
to [-1, 1], then ``(x + 1) / 2`` as ``autoregressive_infer_cfg``).

Token layout: a sample's tokens are the scales' id grids flattened in raster order and
concatenated, ``[B, L]`` with ``L = sum(pn^2)`` (680 for ``(1, 2, 3, 4, 5, 6, 8, 10, 13,
16)``); :meth:`MultiScaleVQVAE.split_scales` gives the per-scale ``[B, pn^2]`` list (the
official ``ms_idx_Bl``).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.conv_layout import decode_channels_last
from .vq import Downsample, ResnetBlock, Upsample, _swish

__all__ = ['MultiScaleVQVAE', 'MSVQ_PRESETS', 'build_msvq', 'Phi', 'PATCH_NUMS_256',
           'PATCH_NUMS_512']

#: official scale schedules (``utils/arg_util.py``: ``--pn 256`` / ``--pn 512``)
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)

#: official tokenizer (``build_vae_var`` defaults); ``vae_ch160v4096z32.pth``
MSVQ_PRESETS: dict[str, dict] = {
    'vae_ch160v4096z32': dict(vocab_size=4096, z_channels=32, ch=160),
}


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a fused 1x1 ``qkv`` conv (official ``AttnBlock``
    of ``basic_vae.py``)."""

    def __init__(self, channels: int, *, norm_groups: int):
        super().__init__()
        self.C = channels
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6, affine=True)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.C, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))
        return x + self.proj_out(out.squeeze(1).transpose(1, 2).reshape(b, self.C, h, w))


class _Mid(nn.Module):
    def __init__(self, channels: int, *, norm_groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, norm_groups=norm_groups, dropout=dropout)
        self.attn_1 = AttnBlock(channels, norm_groups=norm_groups)
        self.block_2 = ResnetBlock(channels, channels, norm_groups=norm_groups, dropout=dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image ``[B, 3, H, W]`` (in [-1, 1]) -> latent ``[B, Cvae, H / 2^(n-1), W / 2^(n-1)]``
    (official ``Encoder``, ``double_z=False``, ``using_sa=using_mid_sa=True``)."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 norm_groups: int, dropout: float, in_channels: int = 3):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for level in range(self.num_resolutions):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[level], ch * ch_mult[level]
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, norm_groups=norm_groups,
                                               dropout=dropout))
                block_in = block_out
                if level == self.num_resolutions - 1:
                    stage.attn.append(AttnBlock(block_in, norm_groups=norm_groups))
            if level != self.num_resolutions - 1:
                stage.downsample = Downsample(block_in)
            self.down.append(stage)
        self.mid = _Mid(block_in, norm_groups=norm_groups, dropout=dropout)
        self.norm_out = nn.GroupNorm(norm_groups, block_in, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for i in range(self.num_res_blocks):
                h = stage.block[i](h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != self.num_resolutions - 1:
                h = stage.downsample(h)
        return self.conv_out(_swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latent ``[B, Cvae, h, w]`` -> image ``[B, 3, h 2^(n-1), w 2^(n-1)]`` (about [-1, 1];
    official ``Decoder``; ``up`` is indexed by level, lowest resolution last)."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 norm_groups: int, dropout: float, out_channels: int = 3):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in, norm_groups=norm_groups, dropout=dropout)
        stages = []
        for level in reversed(range(self.num_resolutions)):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, norm_groups=norm_groups,
                                               dropout=dropout))
                block_in = block_out
                if level == self.num_resolutions - 1:
                    stage.attn.append(AttnBlock(block_in, norm_groups=norm_groups))
            if level != 0:
                stage.upsample = Upsample(block_in)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = nn.GroupNorm(norm_groups, block_in, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(range(self.num_resolutions)):
            stage = self.up[level]
            for i in range(self.num_res_blocks + 1):
                h = stage.block[i](h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Phi(nn.Conv2d):
    """``(1 - r) h + r conv3x3(h)`` (official ``Phi``, a Conv2d subclass: keys ``weight``,
    ``bias``)."""

    def __init__(self, channels: int, quant_resi: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h: Tensor) -> Tensor:
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


class _PhiShared(nn.Module):           # share_quant_resi == 1: key ``qresi``
    def __init__(self, phi: nn.Module):
        super().__init__()
        self.qresi = phi


class _PhiPartiallyShared(nn.Module):  # share_quant_resi >= 2: keys ``qresi_ls.{k}``
    def __init__(self, phis: list):
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)


def _phi_ticks(k: int) -> np.ndarray:
    # official PhiPartiallyShared / PhiNonShared ticks
    if k == 4:
        return np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
    return np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)


class MultiScaleQuantizer(nn.Module):
    """The codebook, the Phi convs and the multi-scale residual (de)quantisation (official
    ``VectorQuantizer2``, inference paths only).

    Args:
        vocab_size, z_channels: V and Cvae.
        patch_nums: the side of each scale's token grid, coarse to fine (>= 2 scales).
        quant_resi: Phi residual ratio r (official 0.5; ~0 makes Phi the identity).
        share_quant_resi: 0 = a Phi per scale, 1 = one Phi, k >= 2 = k shared Phis (official 4).
        default_qresi_counts: number of Phis when ``share_quant_resi == 0`` (0 = one per scale).
        using_znorm: cosine nearest-code search (official False).
    """

    def __init__(self, *, vocab_size: int, z_channels: int, patch_nums: Sequence[int],
                 quant_resi: float, share_quant_resi: int, default_qresi_counts: int,
                 using_znorm: bool):
        super().__init__()
        self.vocab_size, self.Cvae, self.using_znorm = vocab_size, z_channels, using_znorm
        self.patch_nums = tuple(int(p) for p in patch_nums)
        s = len(self.patch_nums)

        def make():
            return Phi(z_channels, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            k = default_qresi_counts or s
            self.quant_resi = nn.ModuleList([make() for _ in range(k)])
            phis, ticks = list(self.quant_resi), _phi_ticks(k)
        elif share_quant_resi == 1:
            self.quant_resi = _PhiShared(make())
            phis, ticks = [self.quant_resi.qresi], np.zeros(1)
        else:
            self.quant_resi = _PhiPartiallyShared([make() for _ in range(share_quant_resi)])
            phis, ticks = list(self.quant_resi.qresi_ls), _phi_ticks(share_quant_resi)
        # Phi of scale si: the official ``quant_resi[si / (S - 1)]`` lookup, resolved once
        choice = [int(np.argmin(np.abs(ticks - si / (s - 1)))) for si in range(s)]
        self._phi_of_scale = [phis[c] for c in choice]
        self.phi_index = tuple(choice)
        self.register_buffer('ema_vocab_hit_SV', torch.zeros(s, vocab_size))
        self.embedding = nn.Embedding(vocab_size, z_channels)

    def phi(self, si: int) -> nn.Module:
        """The Phi conv of scale ``si``."""
        return self._phi_of_scale[si]

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def scale_slices(self) -> list[slice]:
        """Slices of each scale's tokens in the concatenated ``[B, L]`` layout."""
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append(slice(cur, cur + pn * pn))
            cur += pn * pn
        return out

    def _nearest(self, z: Tensor) -> Tensor:
        """Nearest code ids ``[N]`` of ``z [N, Cvae]`` (official distance formula)."""
        w = self.embedding.weight
        if self.using_znorm:
            return torch.argmax(F.normalize(z, dim=-1) @ F.normalize(w.T, dim=0), dim=1)
        d = z.square().sum(dim=1, keepdim=True) + w.square().sum(dim=1)
        d.addmm_(z, w.T, alpha=-2, beta=1)
        return torch.argmin(d, dim=1)

    def _h(self, idx: Tensor, si: int, hw: tuple[int, int]) -> Tensor:
        """Phi(upsampled code vectors) ``[B, Cvae, H, W]`` of scale ``si``'s ids ``[B, pn^2]``."""
        b, pn = idx.shape[0], self.patch_nums[si]
        h = self.embedding(idx).transpose(1, 2).reshape(b, self.Cvae, pn, pn)
        if si != self.num_scales - 1:
            h = F.interpolate(h, size=hw, mode='bicubic')
        return self.phi(si)(h)

    def f_to_idxBl_or_fhat(self, f: Tensor, to_fhat: bool) -> list[Tensor]:
        """Per-scale ids ``[B, pn^2]`` (or partial sums ``f_hat`` ``[B, Cvae, H, W]``) of a
        latent ``f [B, Cvae, H, W]`` (official ``f_to_idxBl_or_fhat``)."""
        b, c, hh, ww = f.shape
        if (self.patch_nums[-1],) * 2 != (hh, ww):
            raise ValueError(f'latent is {hh}x{ww} but the last scale is {self.patch_nums[-1]}: '
                             f'image side must be {self.patch_nums[-1]} x the downsampling')
        f_rest = f.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        out = []
        for si, pn in enumerate(self.patch_nums):
            z = f_rest if si == self.num_scales - 1 else F.interpolate(f_rest, size=(pn, pn),
                                                                      mode='area')
            idx = self._nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, pn * pn)
            h = self._h(idx, si, (hh, ww))
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(f_hat.clone() if to_fhat else idx)
        return out

    def idxBl_to_fhat(self, ms_idx: Sequence[Tensor], last_one: bool = True
                      ) -> Union[Tensor, list[Tensor]]:
        """``f_hat [B, Cvae, H, W]`` (or every partial sum) of per-scale ids (official
        ``embed_to_fhat(all_to_max_scale=True)`` of ``embedding(ids)``)."""
        hw = (self.patch_nums[-1],) * 2
        f_hat = self.embedding.weight.new_zeros(ms_idx[0].shape[0], self.Cvae, *hw)
        sums = []
        for si in range(self.num_scales):
            f_hat = f_hat + self._h(ms_idx[si], si, hw)
            sums.append(f_hat)
        return f_hat if last_one else sums

    def idxBl_to_var_input(self, ms_idx: Sequence[Tensor]) -> Tensor:
        """Teacher-forcing input ``[B, L - pn_0^2, Cvae]`` (official ``idxBl_to_var_input``):
        for each scale ``si < S - 1`` the partial sum ``f_hat`` after scale ``si``,
        area-downsampled to the next scale's grid, flattened in raster order."""
        b, c = ms_idx[0].shape[0], self.Cvae
        hw = (self.patch_nums[-1],) * 2
        f_hat = self.embedding.weight.new_zeros(b, c, *hw)
        nxt = []
        for si in range(self.num_scales - 1):
            f_hat = f_hat + self._h(ms_idx[si], si, hw)
            pn = self.patch_nums[si + 1]
            down = F.interpolate(f_hat, size=(pn, pn), mode='area')
            nxt.append(down.view(b, c, -1).transpose(1, 2))
        return torch.cat(nxt, dim=1)

    def get_next_autoregressive_input(self, si: int, f_hat: Tensor, h: Tensor
                                      ) -> tuple[Tensor, Tensor]:
        """One sampling step (official ``get_next_autoregressive_input``): add scale ``si``'s
        code vectors ``h [B, Cvae, pn, pn]`` to ``f_hat [B, Cvae, H, W]`` (in place) and return
        ``(f_hat, next scale's input map [B, Cvae, pn', pn'])`` (``f_hat`` at the last scale)."""
        hw = self.patch_nums[-1]
        if si != self.num_scales - 1:
            f_hat.add_(self.phi(si)(F.interpolate(h, size=(hw, hw), mode='bicubic')))
            pn = self.patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(pn, pn), mode='area')
        f_hat.add_(self.phi(si)(h))
        return f_hat, f_hat


class MultiScaleVQVAE(nn.Module):
    """VAR's multi-scale VQVAE (official ``VQVAE``, ``test_mode=True``): encode / decode only.

    Args:
        vocab_size: V (official 4096).
        z_channels: Cvae, the code dimension (official 32).
        ch: base channel width (official 160).
        ch_mult: channel multipliers per level; downsample = 2^(len - 1) (official
            ``(1, 1, 2, 2, 4)``, 16).
        num_res_blocks: residual blocks per encoder level (decoder: one more), official 2.
        patch_nums: scale sides, coarse to fine; the last is the latent side (image side /
            downsample). Official 256 px: :data:`PATCH_NUMS_256`.
        quant_resi, share_quant_resi, default_qresi_counts, using_znorm: see
            :class:`MultiScaleQuantizer` (official 0.5, 4, 0, False).
        quant_conv_ks: kernel of ``quant_conv`` / ``post_quant_conv`` (official 3).
        norm_groups: GroupNorm groups (official 32; smaller for tiny models).
        dropout: residual-block dropout (official 0).

    Examples:
        >>> vae = MultiScaleVQVAE(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2),
        ...                       patch_nums=(1, 2, 4), norm_groups=4)
        >>> ids = vae.encode(torch.rand(2, 3, 8, 8))
        >>> ids.shape, vae.decode(ids).shape
        (torch.Size([2, 21]), torch.Size([2, 3, 8, 8]))
    """

    def __init__(self, *, vocab_size: int = 4096, z_channels: int = 32, ch: int = 160,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 patch_nums: Sequence[int] = PATCH_NUMS_256, quant_resi: float = 0.5,
                 share_quant_resi: int = 4, default_qresi_counts: int = 0,
                 using_znorm: bool = False, quant_conv_ks: int = 3, norm_groups: int = 32,
                 dropout: float = 0.0):
        super().__init__()
        patch_nums = tuple(int(p) for p in patch_nums)
        if len(patch_nums) < 2 or any(b <= a for a, b in zip(patch_nums, patch_nums[1:])):
            raise ValueError(f'patch_nums={patch_nums} must be >= 2 increasing scale sides, e.g. '
                             f'{PATCH_NUMS_256}')
        if share_quant_resi < 0:
            raise ValueError(f'share_quant_resi={share_quant_resi} must be 0 (one Phi per scale), '
                             f'1 (one shared Phi) or k >= 2 (k shared Phis; official 4)')
        for c in (ch * m for m in (1,) + tuple(ch_mult)):
            if c % norm_groups:
                raise ValueError(f'channel width {c} (ch={ch} x ch_mult={tuple(ch_mult)}) is not '
                                 f'divisible by norm_groups={norm_groups}')
        self.V = self.vocab_size = vocab_size
        self.Cvae = z_channels
        self.ch_mult = tuple(ch_mult)
        self.downsample = 2 ** (len(self.ch_mult) - 1)
        self.patch_nums = patch_nums
        common = dict(ch=ch, ch_mult=self.ch_mult, num_res_blocks=num_res_blocks,
                      z_channels=z_channels, norm_groups=norm_groups, dropout=dropout)
        self.encoder = Encoder(**common)
        self.decoder = Decoder(**common)
        self.quantize = MultiScaleQuantizer(
            vocab_size=vocab_size, z_channels=z_channels, patch_nums=patch_nums,
            quant_resi=quant_resi, share_quant_resi=share_quant_resi,
            default_qresi_counts=default_qresi_counts, using_znorm=using_znorm)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1,
                                         quant_conv_ks // 2)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    @property
    def num_tokens(self) -> int:
        """L = sum of pn^2."""
        return sum(p * p for p in self.patch_nums)

    def split_scales(self, ids: Tensor) -> list[Tensor]:
        """``[B, L]`` concatenated ids -> the per-scale list ``[B, pn^2]`` (``ms_idx_Bl``)."""
        if ids.shape[-1] != self.num_tokens:
            raise ValueError(f'{ids.shape[-1]} tokens per sample, expected L={self.num_tokens} '
                             f'for patch_nums={self.patch_nums}')
        return [ids[:, s] for s in self.quantize.scale_slices()]

    # ---- official-style API (images in [-1, 1]) ------------------------------------------
    def img_to_idxBl(self, x: Tensor) -> list[Tensor]:
        """Per-scale ids ``[B, pn^2]`` of images ``[B, 3, H, W]`` in [-1, 1] (official)."""
        return self.quantize.f_to_idxBl_or_fhat(self.quant_conv(self.encoder(x)), to_fhat=False)

    def img_to_fhat(self, x: Tensor) -> list[Tensor]:
        """Every partial sum ``f_hat [B, Cvae, h, w]`` of the residual quantisation of ``x``."""
        return self.quantize.f_to_idxBl_or_fhat(self.quant_conv(self.encoder(x)), to_fhat=True)

    def fhat_to_img(self, f_hat: Tensor) -> Tensor:
        """Official ``fhat_to_img``: decoder output clamped to [-1, 1]."""
        return decode_channels_last(lambda f: self.decoder(self.post_quant_conv(f)),
                                    f_hat).clamp_(-1, 1)

    def idxBl_to_img(self, ms_idx: Sequence[Tensor]) -> Tensor:
        """Official ``idxBl_to_img(same_shape=True, last_one=True)``: images in [-1, 1]."""
        return self.fhat_to_img(self.quantize.idxBl_to_fhat(ms_idx))

    def idxBl_to_var_input(self, ms_idx: Sequence[Tensor]) -> Tensor:
        """Official ``idxBl_to_var_input`` (see :class:`MultiScaleQuantizer`)."""
        return self.quantize.idxBl_to_var_input(ms_idx)

    # ---- vargo API (images in [0, 1], concatenated ids) ------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Concatenated ids ``[B, L]`` of images ``[B, 3, H, W]`` in [0, 1]."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f'images are {tuple(images.shape[-2:])}, this tokenizer encodes '
                             f'{self.image_size}x{self.image_size} (patch_nums[-1]='
                             f'{self.patch_nums[-1]} x downsample {self.downsample})')
        return torch.cat(self.img_to_idxBl(images * 2 - 1), dim=1)

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] of concatenated ids ``[B, L]``."""
        return self.idxBl_to_img(self.split_scales(ids)).add_(1).mul_(0.5)

    def ids_to_var_input(self, ids: Tensor) -> Tensor:
        """Teacher-forcing input ``[B, L - pn_0^2, Cvae]`` of concatenated ids ``[B, L]``."""
        return self.quantize.idxBl_to_var_input(self.split_scales(ids))

    def codebook(self) -> Tensor:
        """``[V, Cvae]`` code vectors (not normalised)."""
        return self.quantize.embedding.weight

    # ---- loading -----------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # official VQVAE.load_state_dict: a hit-count table of another number of scales is
        # replaced by this model's own (it is a training statistic, unused here)
        key = f'{prefix}quantize.ema_vocab_hit_SV'
        own = self.quantize.ema_vocab_hit_SV
        if key in state_dict and state_dict[key].shape != own.shape:
            state_dict[key] = own.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def build_msvq(cfg: Union[str, dict, None], *, patch_nums: Sequence[int]) -> MultiScaleVQVAE:
    """A :class:`MultiScaleVQVAE` from a preset name (``'vae_ch160v4096z32'``) or a dict of
    arguments (optionally ``preset=...``); ``patch_nums`` comes from the policy."""
    if cfg is None:
        cfg = 'vae_ch160v4096z32'
    if isinstance(cfg, str):
        cfg = dict(preset=cfg)
    cfg = dict(cfg)
    preset = cfg.pop('preset', None)
    if preset is not None:
        if preset not in MSVQ_PRESETS:
            raise ValueError(f'unknown VAR tokenizer preset {preset!r}; presets: '
                             f'{sorted(MSVQ_PRESETS)} (or a dict of MultiScaleVQVAE arguments)')
        cfg = {**MSVQ_PRESETS[preset], **cfg}
    if 'patch_nums' in cfg and tuple(cfg['patch_nums']) != tuple(patch_nums):
        raise ValueError(f'tokenizer patch_nums={tuple(cfg["patch_nums"])} differ from the '
                         f'policy patch_nums={tuple(patch_nums)}: set them on the policy only')
    cfg['patch_nums'] = tuple(patch_nums)
    return MultiScaleVQVAE(**cfg)
