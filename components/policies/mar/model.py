"""The MAR transformer and its diffusion head (``models/mar.py`` and ``models/diffloss.py`` of
LTH14/mar), with the official state-dict key names, so the released ``checkpoint-last.pth``
files load *strictly* into :class:`MARTransformer` (:mod:`.loading`):

================================================  =============================================
official key                                      module
================================================  =============================================
``class_emb.weight`` ``[num_classes, C]``,        class embedding; the CFG null condition is the
``fake_latent`` ``[1, C]``                        learned ``fake_latent`` (no null class row)
``z_proj.*``, ``z_proj_ln.*``                     token -> encoder width, LayerNorm (eps 1e-6)
``encoder_pos_embed_learned`` ``[1, buf+N, C]``   encoder positions (``buffer_size`` class slots)
``encoder_blocks.N.{norm1,attn.qkv,attn.proj,     timm ``Block`` (qkv bias, GELU MLP x4)
norm2,mlp.fc1,mlp.fc2}.*``, ``encoder_norm.*``
``decoder_embed.*``, ``mask_token``,              MAE decoder: mask tokens at masked positions
``decoder_pos_embed_learned``,
``decoder_blocks.N.*``, ``decoder_norm.*``
``diffusion_pos_embed_learned`` ``[1, N, C]``     added to the decoder output: ``z``
``diffloss.net.{time_embed,cond_embed,            ``SimpleMLPAdaLN`` head: ``input_proj``,
input_proj,res_blocks.N,final_layer}.*``          AdaLN res-blocks, final layer ``-> 2 D``
================================================  =============================================

Sizes (official ``mar_base/large/huge`` with the README's DiffLoss ``(depth, width)``):
``mar_base`` C=768, 12+12 blocks, head (6, 1024): 207,924,768 parameters; ``mar_large``
C=1024, 16+16, head (8, 1280): 478,326,304; ``mar_huge`` C=1280, 20+20, head (12, 1536):
942,403,104 (README: 208M / 479M / 943M). Measured on the meta device, equal to the official
classes' counts, with the same ``key:shape`` lists.

Deviations (same numbers): the encoder's class slots are concatenated instead of written in place
(autograd friendly); attention uses ``F.scaled_dot_product_attention`` as timm's fused path;
dropout is applied only when the caller asks (``dropout=True``, pretraining) in training mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['MAR_ARCHS', 'HEAD_TYPES', 'HEAD_SAMPLERS', 'MARConfig', 'Attention', 'Mlp', 'Block',
           'TimestepEmbedder', 'ResBlock', 'FinalLayer', 'SimpleMLPAdaLN', 'DiffLoss',
           'MARTransformer']

#: head parametrisations (:attr:`MARConfig.head_type`) and the head samplers each accepts
HEAD_TYPES = ('ddpm', 'flow')
HEAD_SAMPLERS = {'ddpm': 'ddpm', 'flow': 'flow_sde'}

#: official sizes (``mar_base/large/huge``) with the README's DiffLoss depth and width
MAR_ARCHS: dict[str, dict] = {
    'mar_base': dict(embed_dim=768, depth=12, num_heads=12, diffloss_d=6, diffloss_w=1024),
    'mar_large': dict(embed_dim=1024, depth=16, num_heads=16, diffloss_d=8, diffloss_w=1280),
    'mar_huge': dict(embed_dim=1280, depth=20, num_heads=16, diffloss_d=12, diffloss_w=1536),
}

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MARConfig:
    """Hyper-parameters of a MAR transformer + head (official ``MAR.__init__`` arguments).

    Attributes:
        embed_dim, depth, num_heads: encoder width/blocks/heads; the decoder uses
            ``decoder_embed_dim`` etc. (equal to the encoder's in every official size).
        mlp_ratio, norm_eps: block MLP ratio (4) and LayerNorm eps (1e-6, ``mar_*``).
        img_size, vae_stride, patch_size: image side, tokenizer downsample, tokens per patch
            side (official 256, 16, 1): ``N = (img_size / vae_stride / patch_size)^2``.
        vae_embed_dim: latent channels (16); a token has ``D = vae_embed_dim patch_size^2``.
        num_classes, buffer_size: classes and class-embedding slots (official 1000, 64).
        diffloss_d, diffloss_w: head residual blocks and width.
        attn_dropout, proj_dropout: pretraining dropout (0.1).
        head_type: ``'ddpm'`` (official: eps-prediction with the learned-range variance, the
            head outputs ``2 D`` channels) or ``'flow'`` (rectified-flow velocity
            ``v = eps - x0`` of ``x_s = (1 - s) x0 + s eps``, ``D`` output channels; sampled
            with :class:`~vargo.components.modules.diffusion.FlowSDESchedule`, NOVA-style).
    """

    embed_dim: int
    depth: int
    num_heads: int
    diffloss_d: int
    diffloss_w: int
    decoder_embed_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_num_heads: Optional[int] = None
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    img_size: int = 256
    vae_stride: int = 16
    patch_size: int = 1
    vae_embed_dim: int = 16
    num_classes: int = 1000
    buffer_size: int = 64
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    head_type: str = 'ddpm'

    ARCH_FIELDS = ('embed_dim', 'depth', 'num_heads', 'diffloss_d', 'diffloss_w',
                   'decoder_embed_dim', 'decoder_depth', 'decoder_num_heads', 'mlp_ratio',
                   'norm_eps')

    def __post_init__(self):
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f'head_type={self.head_type!r} is not one of {HEAD_TYPES}: '
                             f"'ddpm' (the official eps head) or 'flow' (a velocity head)")
        for name, default in (('decoder_embed_dim', self.embed_dim), ('decoder_depth', self.depth),
                              ('decoder_num_heads', self.num_heads)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        for w, h, what in ((self.embed_dim, self.num_heads, 'encoder'),
                           (self.decoder_embed_dim, self.decoder_num_heads, 'decoder')):
            if w % h:
                raise ValueError(f'{what} width {w} is not divisible by its {h} heads')
        side = self.img_size // self.vae_stride
        if self.img_size % self.vae_stride or side % self.patch_size:
            raise ValueError(f'img_size={self.img_size} must be a multiple of vae_stride='
                             f'{self.vae_stride} x patch_size={self.patch_size}')

    @property
    def seq_h(self) -> int:
        return self.img_size // self.vae_stride // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.seq_h ** 2

    @property
    def token_dim(self) -> int:
        return self.vae_embed_dim * self.patch_size ** 2

    @property
    def head_out_channels(self) -> int:
        """``2 D`` (eps and the variance interpolation) for DDPM, ``D`` (velocity) for flow."""
        return self.token_dim * (2 if self.head_type == 'ddpm' else 1)

    @classmethod
    def from_arch(cls, arch: Union[str, dict], **fields) -> 'MARConfig':
        """Config from an official name (``'mar_base'``, ``'mar_large'``, ``'mar_huge'``) or a
        dict of :attr:`ARCH_FIELDS` (e.g. ``dict(embed_dim=32, depth=1, num_heads=2,
        diffloss_d=1, diffloss_w=32)``)."""
        if isinstance(arch, str):
            if arch not in MAR_ARCHS:
                raise ValueError(f'unknown MAR arch {arch!r}; official sizes: '
                                 f'{", ".join(MAR_ARCHS)} (or a dict such as dict(embed_dim=32, '
                                 f'depth=1, num_heads=2, diffloss_d=1, diffloss_w=32))')
            arch = MAR_ARCHS[arch]
        arch = dict(arch)
        unknown = sorted(set(arch) - set(cls.ARCH_FIELDS))
        if unknown:
            raise ValueError(f'arch keys {unknown} are not architecture fields; allowed: '
                             f'{", ".join(cls.ARCH_FIELDS)}')
        return cls(**arch, **fields)


# ---------------------------------------------------------------------------------------------
# Transformer (official key names)
# ---------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """timm ``Attention`` (``qkv_bias=True``, no q/k norm):
    ``proj(softmax(q k^T / sqrt(hd)) v)``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_drop: float, proj_drop: float) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=attn_drop)
        return F.dropout(self.proj(x.transpose(1, 2).reshape(b, n, c)), proj_drop, proj_drop > 0)


class Mlp(nn.Module):
    """timm ``Mlp``: ``fc2(drop(gelu(fc1 x)))`` then dropout."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, drop: float) -> Tensor:
        x = F.dropout(F.gelu(self.fc1(x)), drop, drop > 0)
        return F.dropout(self.fc2(x), drop, drop > 0)


class Block(nn.Module):
    """timm ``Block`` as MAR builds it: ``x += attn(norm1 x); x += mlp(norm2 x)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, attn_drop: float = 0.0, proj_drop: float = 0.0) -> Tensor:
        x = x + self.attn(self.norm1(x), attn_drop, proj_drop)
        return x + self.mlp(self.norm2(x), proj_drop)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Official ``TimestepEmbedder``: sinusoidal features of ``t`` (256, cos then sin,
    ``max_period`` 1e4) through ``Linear - SiLU - Linear``."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.frequency_embedding_size = freq_dim

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: int = 10000) -> Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32)
                          / half).to(t.device)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class ResBlock(nn.Module):
    """Official ``ResBlock``: ``x + gate * mlp(modulate(ln(x), shift, scale))`` from AdaLN(y)."""

    def __init__(self, c: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(c, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c, 3 * c))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    """Official ``FinalLayer`` (DiT): ``linear(modulate(ln(x), shift, scale))``."""

    def __init__(self, c: int, out: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(c, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c, 2 * c))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """Official ``SimpleMLPAdaLN`` (the DiffLoss MLP): ``[n, D] x [n] x [n, Cz] -> [n, 2 D]``
    (eps, then the variance interpolation ``v`` in [-1, 1]); ``out_channels = D`` for a flow
    head (the velocity)."""

    def __init__(self, in_channels: int, model_channels: int, z_channels: int, num_res_blocks: int,
                 out_channels: Optional[int] = None):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = FinalLayer(model_channels, out_channels or 2 * in_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Official init: xavier-uniform linears, N(0, 0.02) time MLP, zero AdaLN and output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for blk in self.res_blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        for p in (self.final_layer.adaLN_modulation[-1].weight,
                  self.final_layer.adaLN_modulation[-1].bias,
                  self.final_layer.linear.weight, self.final_layer.linear.bias):
            nn.init.zeros_(p)

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """``x [n, D]``, original (un-respaced) timesteps ``t [n]``, condition ``c [n, Cz]``."""
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for blk in self.res_blocks:
            x = blk(x, y)
        return self.final_layer(x, y)


class DiffLoss(nn.Module):
    """Holds the head under the official name ``diffloss.net`` (the diffusions are plain
    :class:`~vargo.components.modules.diffusion.DiffusionSchedule` objects, not state)."""

    def __init__(self, target_channels: int, z_channels: int, depth: int, width: int,
                 out_channels: Optional[int] = None):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, z_channels, depth, out_channels)


class MARTransformer(nn.Module):
    """The official ``MAR`` module (MAE encoder/decoder + DiffLoss head), keyed as the files.

    Shapes: ``B`` batch, ``N`` tokens, ``D`` token channels, ``C`` widths, ``buf`` buffer size.
    """

    def __init__(self, cfg: MARConfig):
        super().__init__()
        self.cfg = cfg
        c, cd, n, buf = cfg.embed_dim, cfg.decoder_embed_dim, cfg.seq_len, cfg.buffer_size
        self.buffer_size = buf
        self.class_emb = nn.Embedding(cfg.num_classes, c)
        self.fake_latent = nn.Parameter(torch.zeros(1, c))
        self.z_proj = nn.Linear(cfg.token_dim, c)
        self.z_proj_ln = nn.LayerNorm(c, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n + buf, c))
        self.encoder_blocks = nn.ModuleList([Block(c, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps)
                                             for _ in range(cfg.depth)])
        self.encoder_norm = nn.LayerNorm(c, eps=cfg.norm_eps)
        self.decoder_embed = nn.Linear(c, cd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cd))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n + buf, cd))
        self.decoder_blocks = nn.ModuleList([
            Block(cd, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.norm_eps)
            for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(cd, eps=cfg.norm_eps)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, n, cd))
        self.initialize_weights()
        self.diffloss = DiffLoss(cfg.token_dim, cd, cfg.diffloss_d, cfg.diffloss_w,
                                 cfg.head_out_channels)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Official ``initialize_weights``: N(0, 0.02) embeddings/tokens/positions,
        xavier-uniform linears with zero bias, LayerNorms (1, 0)."""
        if self.class_emb.weight.is_meta:
            return
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token,
                  self.encoder_pos_embed_learned, self.decoder_pos_embed_learned,
                  self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def head(self) -> SimpleMLPAdaLN:
        return self.diffloss.net

    # ---- pieces -------------------------------------------------------------------------------
    def class_embedding(self, labels: Tensor, *, null: Optional[Tensor] = None) -> Tensor:
        """``[B, C]``: ``class_emb(labels)``; rows where ``null`` (bool ``[B]``) is True are the
        learned ``fake_latent`` (the CFG / label-dropout condition), mixed as the official
        ``drop * fake + (1 - drop) * emb``."""
        emb = self.class_emb(labels)
        if null is not None:
            d = null.to(emb.dtype).unsqueeze(-1)
            emb = d * self.fake_latent + (1 - d) * emb
        return emb

    def null_embedding(self, batch: int) -> Tensor:
        """``[B, C]`` copies of ``fake_latent`` (the unconditional class embedding)."""
        return self.fake_latent.expand(batch, -1)

    def forward_mae_encoder(self, x: Tensor, mask: Tensor, class_embedding: Tensor, *,
                            dropout: bool = False) -> Tensor:
        """Official ``forward_mae_encoder`` (label dropout done by the caller).

        Args:
            x: ``[B, N, D]`` tokens (masked positions are dropped, their values unused).
            mask: ``[B, N]`` bool, True = masked (unknown); the same count in every row.
            class_embedding: ``[B, C]``, written into the ``buffer_size`` leading slots.

        Returns:
            ``[B, buf + N_visible, C]`` encoder output.
        """
        x = self.z_proj(x)
        b, _, c = x.shape
        x = torch.cat([class_embedding.unsqueeze(1).expand(b, self.buffer_size, c).to(x.dtype), x],
                      dim=1)
        keep = torch.cat([mask.new_ones(b, self.buffer_size), ~mask], dim=1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        x = x[keep].reshape(b, -1, c)
        ad, pd = self._drops(dropout)
        for blk in self.encoder_blocks:
            x = blk(x, ad, pd)
        return self.encoder_norm(x)

    def forward_mae_decoder(self, x: Tensor, mask: Tensor, *, dropout: bool = False) -> Tensor:
        """Official ``forward_mae_decoder``: ``[B, buf + N_visible, C] -> z [B, N, C_dec]``."""
        x = self.decoder_embed(x)
        b = x.shape[0]
        keep = torch.cat([mask.new_ones(b, self.buffer_size), ~mask], dim=1)
        pad = self.mask_token.to(x.dtype).expand(b, keep.shape[1], -1).clone()
        pad[keep] = x.reshape(-1, x.shape[-1])
        x = pad + self.decoder_pos_embed_learned
        ad, pd = self._drops(dropout)
        for blk in self.decoder_blocks:
            x = blk(x, ad, pd)
        x = self.decoder_norm(x)
        return x[:, self.buffer_size:] + self.diffusion_pos_embed_learned

    def forward(self, tokens: Tensor, mask: Tensor, class_embedding: Tensor, *,
                dropout: bool = False) -> Tensor:
        """``z [B, N, C_dec]`` of every position given the unmasked ``tokens [B, N, D]``."""
        x = self.forward_mae_encoder(tokens, mask, class_embedding, dropout=dropout)
        return self.forward_mae_decoder(x, mask, dropout=dropout)

    def _drops(self, dropout: bool) -> tuple[float, float]:
        if dropout and self.training:
            return self.cfg.attn_dropout, self.cfg.proj_dropout
        return 0.0, 0.0
