"""MAR: masked autoregressive generation of continuous tokens with a diffusion head (LTH14/mar).

The transformer follows ``models/mar.py``, the head ``models/diffloss.py`` and the diffusion
math ``diffusion/{gaussian_diffusion,respace}.py`` of the official code (the RL view of its
actions: docs/methods/mar_grpo.md), with the official state-dict key names, so the released
``checkpoint-last.pth`` files (``{"model": ..., "model_ema": ..., "optimizer": ..., "args":
...}``) load *strictly* into :class:`MARTransformer` from either ``"model"`` or ``"model_ema"``
(``checkpoint_key``):

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

The generative process (official ``MAR.sample_tokens`` + ``DiffLoss.sample`` +
``GaussianDiffusion.p_sample_loop``; the sampler is :class:`~vargo.components.samplers.masked.
MaskedSampler`): a random order per sample; at AR step ``i`` the encoder sees the committed
tokens, the decoder gives every position a latent ``z_i [N, C]``; the tokens the cosine schedule
commits at step ``i`` are sampled by the diffusion head's reverse chain conditioned on their
``z_i``. The head's chain is the DDPM ancestral sampler of a 1000-step cosine schedule respaced
to ``num_sampling_steps`` (``space_timesteps``), eps-prediction with the *learned-range*
variance (``learn_sigma``):

* ``eps, v = net(x_t, t, z).split(D)`` (with CFG: ``eps = eps_u + w (eps_c - eps_u)`` on eps
  only, ``v`` from the conditional half, as ``forward_with_cfg``);
* ``log s^2 = (v + 1) / 2 * log beta_t + (1 - (v + 1) / 2) * log beta~_t`` (``beta~`` the clipped
  posterior variance);
* ``x0^ = sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps`` (no clipping);
* ``mu = c1_t x0^ + c2_t x_t`` (posterior mean coefficients);
* ``x_{t-1} = mu + s * tau * n``, ``n ~ N(0, I)``, ``tau`` the temperature; at ``t = 0`` no noise.

A flow head (``head_type='flow'``, not an official release; NOVA-style) predicts the velocity
``v = eps - x0`` of ``x_s = (1 - s) x0 + s eps`` with ``D`` outputs and is sampled with
Flow-GRPO's SDE step (:class:`FlowSDESchedule`, ``MaskedSampler(head_sampler='flow_sde')``); its
transitions are actions exactly as the DDPM ones.

The policy (MAR-GRPO, arXiv 2604.06966): an *action* is one stochastic transition
``x_t -> x_{t-1}`` (``t >= 1``) of one token's chain, with the Gaussian log-density
``log N(x_{t-1}; mu_theta(x_t, t, z), (s_t tau)^2 I)`` summed over the token's ``D`` channels
(:func:`gaussian_transition_logp`). ``A = N x K`` actions per sample, ``K = num_sampling_steps
- 1`` (the ``t = 0`` step is deterministic and not an action), token-major: action
``a = j K + k`` is transition ``k`` (``k = 0`` leaves pure noise, respaced timestep
``t = K - k``) of the token at raster position ``j``. ``action_step [B, A]`` is the AR step that
committed the token (random orders: per sample); ``action_pos [A, 2]`` its (row, col). The
transformer gets gradients through ``z``; the mask order and schedule carry no log-prob.
The variance ``s_t`` of that density is, with ``MARPolicy(logprob_sigma='recomputed')`` (the
default), the learned-range variance recomputed from the head's ``v`` output at evaluation time,
so gradients flow through it too; with ``'stored'`` it is the one the sampler drew the action
with (``MARExtras.log_variance``, detached), so only the mean ``mu_theta`` gets gradients, as in
the official MAR-GRPO code (``gaussdiffusion_training`` / ``harmon_single_denoise_with_logp`` of
its Harmon port take the rollout's ``std_dev_t``). A flow head's variance is a schedule constant:
both settings give the same numbers.

Deviations from the official code and why:

* dropout (``attn_dropout = proj_dropout = 0.1``) is applied only by :meth:`MARPolicy.
  pretrain_loss` in training mode; :meth:`MARPolicy.evaluate` never drops (the log-prob of the
  rollout's actions must not depend on dropout noise, and must equal the sampler's);
* the encoder's class slots are concatenated instead of written in place (same numbers, autograd
  friendly); attention uses ``F.scaled_dot_product_attention`` as timm's fused path;
* the official ``.cuda()`` calls and numpy orders: the sampler draws orders and noise from a
  :class:`~vargo.core.rng.BatchRNG` (or, with ``rng=None``, numpy's and torch's global generators
  in the official call order, which reproduces ``sample_tokens`` exactly).

Parity with the official code (measured 2026-11 on CPU, fp32: the official classes of
LTH14/mar built at a tiny size (64 px, C=64, 2+2 blocks, buffer 4, head (2, 64) with
perturbed weights so AdaLN/outputs are non-zero), their state dicts loaded strictly here):

* the MAE encoder/decoder latent ``z`` for given tokens / mask / class: max |diff| 0.0;
* ``p_mean_variance`` (mean, log-variance, x0) for every respaced step, with and without CFG
  (``forward_with_cfg``): 0.0; respaced coefficients and ``timestep_map`` for 10 / 25 / 100 steps
  bit-equal to ``create_diffusion``;
* full ``sample_tokens`` vs :class:`MaskedSampler` with ``rng=None`` and the same numpy/torch
  seeds (5 AR steps, 10 head steps; cfg 1 / 3 linear, temperature 0.9 / 2 constant): latents
  max |diff| 0.0;
* meta-device ``mar_base/large/huge``: parameter counts and ``key:shape`` lists equal.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vargo.core.checkpoint import safe_load
from vargo.core.interfaces import Policy
from vargo.core.registry import POLICIES
from vargo.core.types import Conditions, FamilyExtras, LogprobSpec, PolicyEval, Rollout

from ..tokenizers.kl_vae import KL_VAE_FILE_SOURCES, KLVAE, build_kl_vae
from .frozen import exclude_frozen_submodules
from .llamagen import CheckpointKeyError, strict_load

__all__ = ['MAR_ARCHS', 'MAR_FILE_SOURCES', 'MARConfig', 'MARTransformer', 'SimpleMLPAdaLN',
           'DiffusionSchedule', 'FlowSDESchedule', 'HEAD_TYPES', 'space_timesteps', 'cosine_betas',
           'gaussian_transition_logp', 'mask_schedule', 'cfg_scales', 'MARExtras', 'MARSelection',
           'MARPolicy', 'LOGPROB_SIGMAS', 'load_mar_state_dict', 'CheckpointKeyError']

#: variances :meth:`MARPolicy.evaluate` can score with (``MARPolicy.logprob_sigma``)
LOGPROB_SIGMAS = ('recomputed', 'stored')

#: head parametrisations (:attr:`MARConfig.head_type`) and the head samplers each accepts
HEAD_TYPES = ('ddpm', 'flow')
HEAD_SAMPLERS = {'ddpm': 'ddpm', 'flow': 'flow_sde'}

#: official sizes (``mar_base/large/huge``) with the README's DiffLoss depth and width
MAR_ARCHS: dict[str, dict] = {
    'mar_base': dict(embed_dim=768, depth=12, num_heads=12, diffloss_d=6, diffloss_w=1024),
    'mar_large': dict(embed_dim=1024, depth=16, num_heads=16, diffloss_d=8, diffloss_w=1280),
    'mar_huge': dict(embed_dim=1280, depth=20, num_heads=16, diffloss_d=12, diffloss_w=1536),
}

_DBX = 'https://www.dropbox.com/scl/fi/'
#: where the official files are published (LTH14/mar README and util/download.py; the same
#: files are mirrored at https://huggingface.co/jadechoghari/mar). The three checkpoints are all
#: named ``checkpoint-last.pth`` upstream; vargo's configs expect them renamed as below.
MAR_FILE_SOURCES: dict[str, str] = {
    'mar_base.pth': f'{_DBX}f6dpuyjb7fudzxcyhvrhk/checkpoint-last.pth?rlkey='
                    'a6i4bo71vhfo4anp33n9ukujb&dl=0 (pretrained_models/mar/mar_base/'
                    'checkpoint-last.pth, rename to mar_base.pth)',
    'mar_large.pth': f'{_DBX}pxacc5b2mrt3ifw4cah6k/checkpoint-last.pth?rlkey='
                     'm48ovo6g7ivcbosrbdaz0ehqt&dl=0 (rename to mar_large.pth)',
    'mar_huge.pth': f'{_DBX}1qmfx6fpy3k7j9vcjjs3s/checkpoint-last.pth?rlkey='
                    '4lae281yzxb406atp32vzc83o&dl=0 (rename to mar_huge.pth)',
    **KL_VAE_FILE_SOURCES,
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
            with :class:`FlowSDESchedule`, NOVA-style).
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
    :class:`DiffusionSchedule` objects, not state)."""

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


# ---------------------------------------------------------------------------------------------
# Diffusion math (diffusion/gaussian_diffusion.py, respace.py)
# ---------------------------------------------------------------------------------------------

def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Official ``get_named_beta_schedule('cosine')`` (``betas_for_alpha_bar``), float64:
    ``beta_i = min(1 - abar((i + 1) / T) / abar(i / T), 0.999)``,
    ``abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2``."""
    def abar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta)
                     for i in range(num_steps)])


def space_timesteps(num_timesteps: int, section_counts: Union[int, str, Sequence[int]]) -> set:
    """Official ``space_timesteps``: the retained steps of ``num_timesteps`` when each of
    ``len(section_counts)`` equal portions is strided to its count (``'100'`` -> 100 steps with
    stride ``999 / 99`` rounded half-to-even, exactly as the official float loop); ``'ddimN'``
    uses a fixed integer stride."""
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        if section_counts.startswith('ddim'):
            want = int(section_counts[len('ddim'):])
            for i in range(1, num_timesteps):
                if len(range(0, num_timesteps, i)) == want:
                    return set(range(0, num_timesteps, i))
            raise ValueError(f'cannot create exactly {want} steps of {num_timesteps} with an '
                             f'integer stride')
        section_counts = [int(x) for x in section_counts.split(',')]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f'cannot divide a section of {size} steps into {count}')
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return set(steps)


class DiffusionSchedule:
    """The respaced DDPM of MAR's ``gen_diffusion`` (``create_diffusion(num_sampling_steps,
    'cosine')``: eps-prediction, learned-range variance, 1000 training steps).

    Coefficients are computed in float64 as ``GaussianDiffusion.__init__`` from the respaced
    betas ``1 - abar_i / abar_prev`` of the retained steps and used as float32 (the official
    ``_extract_into_tensor``). Index ``t`` (0 .. T-1) is a respaced step; ``timestep_map[t]`` is
    the original step the network sees.

    We compute from the betas ourselves rather than with diffusers' ``DDPMScheduler``: its
    ``set_timesteps`` spacing ("leading"/"trailing"/"linspace") differs from ``space_timesteps``'s
    rounded fractional stride, it has no learned-range variance, and it keeps ``float32``
    ``alphas_cumprod``, so its coefficients differ from the official ones.

    Args:
        num_sampling_steps: respacing (int, or the official string, e.g. ``'100'``).
        num_train_steps: original steps (1000).
    """

    #: the head sampler this schedule implements (:class:`MaskedSampler` ``head_sampler``)
    head_sampler = 'ddpm'

    def __init__(self, num_sampling_steps: Union[int, str], *, num_train_steps: int = 1000):
        base = cosine_betas(num_train_steps)
        use = space_timesteps(num_train_steps, num_sampling_steps)
        ac_base = np.cumprod(1.0 - base, axis=0)
        last, betas, tmap = 1.0, [], []
        for i, ac in enumerate(ac_base):
            if i in use:
                betas.append(1 - ac / last)
                last = ac
                tmap.append(i)
        betas = np.array(betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        post_logvar = (np.log(np.append(post_var[1], post_var[1:])) if len(post_var) > 1
                       else np.array([np.log(betas[0])]))
        f32 = {
            'betas': betas,
            'alphas_cumprod': ac,
            'sqrt_alphas_cumprod': np.sqrt(ac),
            'sqrt_one_minus_alphas_cumprod': np.sqrt(1.0 - ac),
            'sqrt_recip_alphas_cumprod': np.sqrt(1.0 / ac),
            'sqrt_recipm1_alphas_cumprod': np.sqrt(1.0 / ac - 1),
            'posterior_variance': post_var,
            'posterior_log_variance_clipped': post_logvar,
            'posterior_mean_coef1': betas * np.sqrt(ac_prev) / (1.0 - ac),
            'posterior_mean_coef2': (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            'log_betas': np.log(betas),
        }
        self._np = f32
        self.timestep_map = torch.tensor(tmap, dtype=torch.long)
        self._cache: dict = {}

    def coef(self, name: str, device) -> Tensor:
        """``[T]`` float32 coefficient ``name`` on ``device`` (cached)."""
        key = (name, str(device))
        if key not in self._cache:
            self._cache[key] = torch.from_numpy(self._np[name]).to(device).float()
        return self._cache[key]

    def head_time(self, t: Tensor, device) -> Tensor:
        """The timestep the head sees at respaced steps ``t``: ``timestep_map[t]`` (long)."""
        return self.timestep_map.to(device)[t]

    def p_mean_variance(self, model_out: Tensor, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Official ``p_mean_variance`` (LEARNED_RANGE, EPSILON, ``clip_denoised=False``).

        Args:
            model_out: ``[n, 2 D]`` head output (``eps`` then ``v``; with CFG, ``eps`` already
                guided, as ``forward_with_cfg`` returns it).
            x: ``[n, D]`` state ``x_t``.
            t: ``[n]`` long respaced steps.

        Returns:
            ``mean [n, D]`` (mu of ``p(x_{t-1} | x_t)``), ``log_variance [n, D]``,
            ``pred_xstart [n, D]``.
        """
        d = x.shape[-1]
        eps, v = model_out[..., :d], model_out[..., d:]
        dev = x.device

        def ex(name):
            return self.coef(name, dev)[t].unsqueeze(-1)

        frac = (v + 1) / 2
        log_var = frac * ex('log_betas') + (1 - frac) * ex('posterior_log_variance_clipped')
        x0 = ex('sqrt_recip_alphas_cumprod') * x - ex('sqrt_recipm1_alphas_cumprod') * eps
        mean = ex('posterior_mean_coef1') * x0 + ex('posterior_mean_coef2') * x
        return {'mean': mean, 'log_variance': log_var, 'pred_xstart': x0}


class FlowSDESchedule:
    """Flow-GRPO's SDE sampler (arXiv 2505.05470, ``sde_step_with_logprob`` of yifan123/flow_grpo)
    for a velocity head (:attr:`MARConfig.head_type` ``'flow'``), on a uniform time grid.

    Convention (rectified flow, as SD3 / Flow-GRPO): ``x_s = (1 - s) x0 + s eps``, ``s = 1`` pure
    noise, the head predicts ``v = dx_s / ds = eps - x0`` (:meth:`MARPolicy.pretrain_loss`: MSE
    to ``eps - x0`` at ``s ~ U(0, 1)``); CFG mixes the velocity, ``v = v_u + w (v_c - v_u)``.
    With ``T = num_sampling_steps``, respaced step ``t`` (``T - 1`` first, 0 last, as the DDPM
    chain) goes from ``s = (t + 1) / T`` to ``s' = t / T``, ``dt = s' - s = -1 / T``; the head
    sees the time ``1000 s``. For ``t >= 1`` the step is Gaussian (an action):

    .. math::

        \sigma_t = a \sqrt{s / (1 - \min(s, 1 - 1/T))}, \qquad
        \mu = x (1 + \frac{\sigma_t^2}{2 s} dt) + v (1 + \frac{\sigma_t^2 (1 - s)}{2 s}) dt,
        \qquad x_{s'} = \mu + \sigma_t \sqrt{-dt}\, \tau\, n

    (``a`` = ``noise_level``, Flow-GRPO's 0.7; ``s = 1`` takes the next grid point ``1 - 1/T``
    in the denominator as Flow-GRPO's ``sigma_max``; ``tau`` the temperature; ``n ~ N(0, I)``).
    Equivalently ``mu = x + [v + sigma_t^2 / (2 s) (x + (1 - s) v)] dt``: the Euler step plus
    the score correction that keeps the marginals of the ODE. The last step (``t = 0``, ``s =
    1 / T -> 0``) is the deterministic Euler step ``x0 = x - s v`` (not an action; Flow-GRPO
    also noises its last step, we keep it deterministic as the DDPM chain, so both heads have
    ``K = T - 1`` actions per token). Coefficients are computed in float64, used as float32.

    Args:
        num_sampling_steps: T (>= 2).
        noise_level: ``a`` (> 0).
    """

    head_sampler = 'flow_sde'

    def __init__(self, num_sampling_steps: int, noise_level: float = 0.7):
        big_t = int(num_sampling_steps)
        if big_t < 2:
            raise ValueError(f'num_sampling_steps={num_sampling_steps} must be >= 2')
        if not noise_level > 0:
            raise ValueError(f'sde_noise_level={noise_level} must be > 0 (Flow-GRPO uses 0.7)')
        self.num_timesteps, self.noise_level = big_t, float(noise_level)
        s = (np.arange(big_t, dtype=np.float64) + 1) / big_t             # time at respaced t
        dt = -1.0 / big_t
        sigma = self.noise_level * np.sqrt(s / (1 - np.minimum(s, 1 - 1.0 / big_t)))
        c_x = 1 + sigma ** 2 / (2 * s) * dt
        c_v = (1 + sigma ** 2 * (1 - s) / (2 * s)) * dt
        c_x[0], c_v[0] = 1.0, -s[0]                                       # t = 0: Euler to 0
        self._np = {'time': s, 'sigma': sigma, 'std': sigma * math.sqrt(-dt), 'coef_x': c_x,
                    'coef_v': c_v, 'log_variance': np.log(sigma ** 2 * -dt)}
        self._cache: dict = {}

    coef = DiffusionSchedule.coef

    def head_time(self, t: Tensor, device) -> Tensor:
        """The time the head sees at respaced steps ``t``: ``1000 s`` (float)."""
        return 1000.0 * self.coef('time', device)[t]

    def p_mean_variance(self, model_out: Tensor, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The SDE step of respaced steps ``t [n]`` from ``x [n, D]`` given the (guided)
        velocity ``model_out [n, D]``: ``mean`` (``mu``; at ``t = 0`` the Euler step),
        ``log_variance`` (``log(sigma_t^2 (-dt))``, before the temperature), ``pred_xstart``
        (``x - s v``)."""
        dev = x.device

        def ex(name):
            return self.coef(name, dev)[t].unsqueeze(-1)

        v = model_out[..., :x.shape[-1]]
        return {'mean': ex('coef_x') * x + ex('coef_v') * v,
                'log_variance': ex('log_variance').expand_as(x),
                'pred_xstart': x - ex('time') * v}


def gaussian_transition_logp(x_prev: Tensor, mean: Tensor, log_variance: Tensor,
                             temperature: float = 1.0) -> Tensor:
    """``log N(x_prev; mean, (exp(log_variance / 2) tau)^2 I)`` summed over the last dim.

    The density of the official ``p_sample`` step ``x_{t-1} = mean + exp(0.5 logvar) n tau``:
    ``sum_d [-(x - mu)^2 / (2 s^2) - log s - log(2 pi) / 2]`` with ``log s = logvar / 2 + log tau``.
    Shapes: ``[..., D] -> [...]``.
    """
    log_s = 0.5 * log_variance + math.log(temperature)
    z = (x_prev - mean) * torch.exp(-log_s)
    return (-0.5 * z * z - log_s - 0.5 * math.log(2 * math.pi)).sum(-1)


# ---------------------------------------------------------------------------------------------
# Mask schedule and CFG
# ---------------------------------------------------------------------------------------------

def mask_schedule(seq_len: int, num_iter: int) -> tuple[list[int], list[float]]:
    """Official ``sample_tokens`` cosine schedule.

    At step ``i`` the ``rem[i]`` first positions of the order are masked;
    ``mask_len = max(1, min(rem[i] - 1, floor(N cos(pi/2 (i + 1) / num_iter))))`` of them stay
    masked; the rest are committed (all of them at the last step).

    Returns:
        ``(rem, mask_lens)``: ``rem`` has ``num_iter + 1`` entries (``rem[0] = N``, last 0);
        step ``i`` commits ``rem[i] - rem[i + 1]`` tokens (possibly 0 when ``num_iter > N``);
        ``mask_lens[i]`` is the float32 ``mask_len`` the linear CFG schedule uses.
    """
    rem, lens = [seq_len], []
    for step in range(num_iter):
        ratio = np.cos(math.pi / 2.0 * (step + 1) / num_iter)
        ml = float(torch.tensor([np.floor(seq_len * ratio)], dtype=torch.float32))
        ml = max(1.0, min(float(rem[-1] - 1), ml))
        lens.append(ml)
        rem.append(0 if step >= num_iter - 1 else int(ml))
    return rem, lens


def cfg_scales(cfg: float, schedule: str, seq_len: int, num_iter: int) -> list[float]:
    """Guidance weight of each AR step (official, after Muse): ``'linear'``:
    ``1 + (cfg - 1) (N - mask_len_i) / N`` (float32, as the official tensor arithmetic);
    ``'constant'``: ``cfg``."""
    if schedule == 'constant':
        return [float(cfg)] * num_iter
    if schedule != 'linear':
        raise ValueError(f"cfg_schedule={schedule!r} is not one of 'linear', 'constant'")
    _, lens = mask_schedule(seq_len, num_iter)
    out = []
    for ml in lens:
        t = torch.tensor([ml], dtype=torch.float32)
        out.append(float(1 + (cfg - 1) * (seq_len - t) / seq_len))
    return out


# ---------------------------------------------------------------------------------------------
# Rollout extras and policy
# ---------------------------------------------------------------------------------------------

@dataclass
class MARSelection:
    """The (AR step, diffusion step) pairs a policy update evaluates (MAR-GRPO samples 12 x 10).

    Attributes:
        ar_steps: AR steps (0 .. num_iter - 1); steps that commit no token are skipped.
        diffusion_steps: transition indices ``k`` (0 .. K - 1, ``k = 0`` leaves pure noise).
    """

    ar_steps: Sequence[int]
    diffusion_steps: Sequence[int]

    @classmethod
    def sample(cls, extras: 'MARExtras', num_ar_steps: int, num_diffusion_steps: int,
               generator: Optional[torch.Generator] = None) -> 'MARSelection':
        """Random ``num_ar_steps`` AR steps (among those committing tokens) and
        ``num_diffusion_steps`` transitions, without replacement (sorted)."""
        rem, _ = mask_schedule(extras.seq_len, extras.num_iter)
        live = [i for i in range(extras.num_iter) if rem[i] > rem[i + 1]]
        k = extras.num_transitions
        ar = torch.randperm(len(live), generator=generator)[:num_ar_steps].sort().values
        di = torch.randperm(k, generator=generator)[:num_diffusion_steps].sort().values
        return cls([live[i] for i in ar.tolist()], di.tolist())


@dataclass
class MARExtras(FamilyExtras):
    """What a MAR rollout records (batch-major fields first).

    Attributes:
        orders: ``[B, N]`` the generation order (a permutation of raster positions; the first
            ``rem[i]`` entries are masked at step ``i``).
        commit_step: ``[B, N]`` AR step that committed each token.
        tokens: ``[B, N, D]`` final (scaled) latents, what the transformer sees and decodes.
        z: ``[B, N, C]`` conditional AR latent of each token at its commit step (the latent of
            every step that conditions an action; detached).
        z_uncond: ``[B, N, C]`` unconditional latent at the commit step (CFG rollouts), or None.
        x_t: ``[B, A, D]`` chain state before each transition (``actions`` is the state after).
        x0_pred: ``[B, S, N, D]`` each AR step's ``t = 0`` head sample for every token (still
            masked tokens: a fresh full chain from that step's latent; committed tokens: their
            value), or None when the sampler does not record predictions.
        log_variance: ``[B, A, D]`` the log-variance ``log s_t^2`` (before the temperature) each
            transition was sampled and scored with (DDPM: the head's learned range at rollout
            time; flow: the schedule's), for ``MARPolicy(logprob_sigma='stored')``; None when
            not recorded.
        num_iter, num_sampling_steps, seq_len: the schedule (shared).
        cfg_schedule, cfg_scale: guidance of the rollout (shared).
        head_sampler, sde_noise_level: the head's chain (``'ddpm'``, or ``'flow_sde'`` with
            Flow-GRPO's noise level ``a``; :class:`FlowSDESchedule`) (shared).
        selection: the (AR step, diffusion step) pairs :meth:`MARPolicy.evaluate` recomputes when
            called without ``select`` (None: all pairs).
    """

    orders: Optional[Tensor] = None
    commit_step: Optional[Tensor] = None
    tokens: Optional[Tensor] = None
    z: Optional[Tensor] = None
    z_uncond: Optional[Tensor] = None
    x_t: Optional[Tensor] = None
    x0_pred: Optional[Tensor] = None
    log_variance: Optional[Tensor] = None
    num_iter: int = 64
    num_sampling_steps: int = 100
    seq_len: int = 256
    cfg_schedule: str = 'linear'
    cfg_scale: float = 1.0
    head_sampler: str = 'ddpm'
    sde_noise_level: Optional[float] = None
    selection: Optional[MARSelection] = None

    batch_fields: ClassVar[tuple[str, ...]] = ('orders', 'commit_step', 'tokens', 'z', 'z_uncond',
                                               'x_t', 'x0_pred', 'log_variance')

    @property
    def num_transitions(self) -> int:
        """K = num_sampling_steps - 1 stochastic transitions per token."""
        return self.num_sampling_steps - 1


_FROZEN = ('vae',)


def load_mar_state_dict(path: str, key: str, *, what: str) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` of an official MAR file and its ``key`` entry
    (``'model'`` or ``'model_ema'``); a ``.safetensors`` file is a raw state dict."""
    if not os.path.isfile(path):
        name = os.path.basename(str(path))
        source = MAR_FILE_SOURCES.get(name)
        where = (f'it is published at {source}' if source else
                 f'official MAR files are {sorted(MAR_FILE_SOURCES)} (LTH14/mar README)')
        raise FileNotFoundError(f'{what} file {path!r} not found: {where}. Download it there, or '
                                f'use a Shapes config (configs/*/*_shapes.py) that needs no '
                                f'download.')
    if str(path).endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    ckpt = safe_load(path, 'cpu', allow=(argparse.Namespace,))
    if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
        return ckpt[key]
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        return ckpt
    top = sorted(ckpt)[:20] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointKeyError(f'{what} file {path!r} has no {key!r} entry (top-level keys: {top}); '
                             f"set checkpoint_key to 'model' or 'model_ema'")


@POLICIES.register_module()
class MARPolicy(Policy):
    """MAR as a vargo policy: the diffusion head's reverse chains are the actions.

    Rollout conventions (see the module doc): ``actions [B, A, D]`` = ``x_{t-1}`` of each
    stochastic transition, ``A = N K``, token-major; ``logp_old [B, A]``; ``action_step [B, A]``
    = commit step of the token; ``action_pos [A, 2]`` = (row, col); ``extras``
    (:class:`MARExtras`).

    Args:
        arch: ``'mar_base'``, ``'mar_large'``, ``'mar_huge'`` or a dict of
            :attr:`MARConfig.ARCH_FIELDS`.
        image_size: image side (256).
        num_classes: classes (1000).
        buffer_size: class-embedding slots (64).
        patch_size: tokens per patch side (1 in every release).
        checkpoint: official ``checkpoint-last.pth`` (or a file with these keys), loaded
            strictly from ``checkpoint_key``; None keeps the official random init.
        checkpoint_key: ``'model_ema'`` (the weights the official evaluation samples with) or
            ``'model'`` (the raw training weights).
        tokenizer: ``'kl16'`` or a dict of :class:`~vargo.components.tokenizers.kl_vae.KLVAE`
            arguments (optionally ``preset='kl16'``).
        tokenizer_checkpoint: official ``kl16.ckpt`` (``{"model": ...}``), loaded strictly;
            None keeps a random tokenizer (tests only).
        fix_head: freeze the diffusion head (MAR-GRPO ``fix_head``): gradients still flow
            *through* it into the transformer via ``z``.
        head_type: ``'ddpm'`` (official eps head, sampled with ``head_sampler='ddpm'``) or
            ``'flow'`` (velocity head, pretrained by flow matching and sampled with
            ``head_sampler='flow_sde'``; no official checkpoint), see :class:`MARConfig`.
        label_drop_prob, mask_ratio_min, diffusion_batch_mul, attn_dropout, proj_dropout:
            pretraining settings of :meth:`pretrain_loss` (official 0.1, 0.7, 4, 0.1, 0.1).
        logprob_sigma: the variance :meth:`evaluate` scores a transition with.
            ``'recomputed'`` (default, vargo's original behaviour): the DDPM head's learned-range
            ``log s_t^2`` recomputed from its ``v`` output, so the log-prob has gradients through
            the variance too (the ``v`` rows of the head's output layer, the head's shared layers
            and, via ``z``, the transformer). ``'stored'`` (official MAR-GRPO): the rollout's recorded
            ``extras.log_variance`` (what the sampler drew the action with), no gradient through
            the variance; only the mean is trained by the log-prob. The entropy follows the same
            variance. Flow heads: the same numbers either way (the variance is a constant).
    """

    file_sources: dict[str, str] = MAR_FILE_SOURCES

    def __init__(self, *, arch: Union[str, dict] = 'mar_base', image_size: int = 256,
                 num_classes: int = 1000, buffer_size: int = 64, patch_size: int = 1,
                 checkpoint: Optional[str] = None, checkpoint_key: str = 'model_ema',
                 tokenizer: Union[str, dict] = 'kl16', tokenizer_checkpoint: Optional[str] = None,
                 fix_head: bool = False, label_drop_prob: float = 0.1,
                 mask_ratio_min: float = 0.7, diffusion_batch_mul: int = 4,
                 attn_dropout: float = 0.1, proj_dropout: float = 0.1, head_type: str = 'ddpm',
                 logprob_sigma: str = 'recomputed'):
        super().__init__()
        if not isinstance(logprob_sigma, str) or logprob_sigma not in LOGPROB_SIGMAS:
            raise ValueError(f'logprob_sigma={logprob_sigma!r} is not one of {LOGPROB_SIGMAS}: '
                             f"'stored' scores with the rollout's variance (official MAR-GRPO), "
                             f"'recomputed' with the head's current one")
        self.logprob_sigma = logprob_sigma
        if checkpoint_key not in ('model', 'model_ema'):
            raise ValueError(f"checkpoint_key={checkpoint_key!r} is not one of 'model', "
                             f"'model_ema' (the two weight sets of an official MAR file)")
        self.checkpoint_key = checkpoint_key
        self.vae: KLVAE = build_kl_vae(tokenizer)
        if tokenizer_checkpoint is not None:
            strict_load(self.vae, load_mar_state_dict(tokenizer_checkpoint, 'model',
                                                      what='MAR KL-16 VAE'),
                        what=f'MAR KL-16 VAE file {tokenizer_checkpoint!r}')
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self.cfg = MARConfig.from_arch(
            arch, img_size=image_size, vae_stride=self.vae.downsample, patch_size=patch_size,
            vae_embed_dim=self.vae.embed_dim, num_classes=num_classes, buffer_size=buffer_size,
            attn_dropout=attn_dropout, proj_dropout=proj_dropout, head_type=head_type)
        self.image_size = image_size
        self.mar = MARTransformer(self.cfg)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        self.fix_head = bool(fix_head)
        if self.fix_head:
            for p in self.mar.diffloss.parameters():
                p.requires_grad_(False)
        self.label_drop_prob = label_drop_prob
        self.mask_ratio_min = mask_ratio_min
        self.diffusion_batch_mul = diffusion_batch_mul
        h = self.cfg.seq_h
        r, c = torch.meshgrid(torch.arange(h), torch.arange(h), indexing='ij')
        self.register_buffer('token_pos', torch.stack([r.flatten(), c.flatten()], -1),
                             persistent=False)
        self._schedules: dict = {}
        exclude_frozen_submodules(self, _FROZEN)
        self.train(True)

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """N tokens per image."""
        return self.cfg.seq_len

    @property
    def token_dim(self) -> int:
        """D channels per token."""
        return self.cfg.token_dim

    @property
    def device(self) -> torch.device:
        return self.mar.fake_latent.device

    @property
    def head_type(self) -> str:
        """``'ddpm'`` or ``'flow'`` (:attr:`MARConfig.head_type`)."""
        return self.cfg.head_type

    def schedule(self, num_sampling_steps: int, *, head_sampler: str = 'ddpm',
                 sde_noise_level: Optional[float] = None
                 ) -> Union[DiffusionSchedule, FlowSDESchedule]:
        """The head chain of ``num_sampling_steps`` steps (cached): the respaced DDPM
        (``head_sampler='ddpm'``, DDPM head) or Flow-GRPO's SDE with noise level
        ``sde_noise_level`` (``'flow_sde'``, flow head)."""
        n = int(num_sampling_steps)
        if n < 2:
            raise ValueError(f'num_sampling_steps={num_sampling_steps} must be >= 2 (the last '
                             f'step is deterministic; actions are the other steps)')
        want = HEAD_SAMPLERS[self.head_type]
        if head_sampler != want:
            other = next(h for h, s in HEAD_SAMPLERS.items() if s == head_sampler) \
                if head_sampler in HEAD_SAMPLERS.values() else None
            fix = (f"or build the policy with head_type={other!r}" if other else
                   f"the head samplers are {sorted(HEAD_SAMPLERS.values())}")
            raise ValueError(f'head_sampler={head_sampler!r} cannot sample this MAR policy\'s '
                             f'head_type={self.head_type!r} head: set the sampler\'s '
                             f'head_sampler={want!r}, {fix}')
        key = n if head_sampler == 'ddpm' else (head_sampler, n, float(sde_noise_level))
        if key not in self._schedules:
            self._schedules[key] = (DiffusionSchedule(n) if head_sampler == 'ddpm' else
                                    FlowSDESchedule(n, sde_noise_level))
        return self._schedules[key]

    def train(self, mode: bool = True) -> 'MARPolicy':
        super().train(mode)
        self.vae.eval()
        return self

    def trainable_parameters(self):
        return [p for p in self.mar.parameters() if p.requires_grad]

    def load_checkpoint(self, path: str) -> None:
        """Load an official ``checkpoint-last.pth`` (``checkpoint_key`` entry), strictly."""
        strict_load(self.mar, load_mar_state_dict(path, self.checkpoint_key,
                                                  what='MAR transformer'),
                    what=f'MAR transformer file {path!r} [{self.checkpoint_key!r}]')

    # ---- conditions ----------------------------------------------------------------------------
    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Check class ids and move them to the model's device."""
        if cond.class_ids is None:
            raise ValueError('a MAR policy is class-conditional: it needs Conditions.class_ids')
        ids = cond.class_ids.to(self.device)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.num_classes):
            raise ValueError(f'class ids must be in [0, {self.cfg.num_classes}), got '
                             f'[{int(ids.min())}, {int(ids.max())}]')
        return dataclasses.replace(cond, class_ids=ids)

    def rollout_axes(self, k: int) -> Tensor:
        """``action_pos [N K, 2]`` of ``k`` transitions per token."""
        return self.token_pos.repeat_interleave(k, dim=0)

    # ---- latents <-> images ------------------------------------------------------------------
    def patchify(self, latents: Tensor) -> Tensor:
        """Official ``patchify``: ``[B, C, H, W] -> [B, N, C p^2]``."""
        b, c, h, w = latents.shape
        p = self.cfg.patch_size
        x = latents.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum('nchpwq->nhwcpq', x).reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """Official ``unpatchify``: ``[B, N, D] -> [B, C, H, W]``."""
        b, p, c, h = tokens.shape[0], self.cfg.patch_size, self.cfg.vae_embed_dim, self.cfg.seq_h
        x = tokens.reshape(b, h, h, c, p, p)
        return torch.einsum('nhwcpq->nchpwq', x).reshape(b, c, h * p, h * p)

    @torch.no_grad()
    def encode_images(self, images: Tensor, *, sample: bool = False) -> Tensor:
        """Tokens ``[B, N, D]`` (scaled latents) of images in [0, 1] (pretraining)."""
        return self.patchify(self.vae.encode_latents(images.to(self.device), sample=sample))

    @torch.no_grad()
    def decode_tokens(self, tokens: Tensor, *, chunk: int = 16) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] of tokens ``[B, N, D]``."""
        lat = self.unpatchify(tokens.to(self.device))
        return torch.cat([self.vae.decode_latents(lat[i:i + chunk])
                          for i in range(0, lat.shape[0], chunk)], dim=0)

    @torch.no_grad()
    def decode(self, rollout: Rollout, *, chunk: int = 16) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] of the rollout's final tokens."""
        return self.decode_tokens(rollout.extras.tokens, chunk=chunk)

    # ---- the head's transition ---------------------------------------------------------------
    def head_transition(self, x: Tensor, t: Tensor, z: Tensor, sched: DiffusionSchedule, *,
                        z_uncond: Optional[Tensor] = None, cfg: float = 1.0
                        ) -> dict[str, Tensor]:
        """``p(x_{t-1} | x_t, z)`` of the head (official ``p_mean_variance`` on ``net`` or
        ``net.forward_with_cfg``; for a flow head the SDE step of :class:`FlowSDESchedule`).

        Args:
            x: ``[n, D]`` states ``x_t``; t: ``[n]`` long respaced steps; z: ``[n, C]``.
            sched: :meth:`schedule`'s chain (DDPM or flow SDE).
            z_uncond: ``[n, C]`` unconditional latents for CFG (None: no guidance).
            cfg: guidance weight ``w`` (float or ``[n, 1]``): ``eps = eps_u + w (eps_c -
                eps_u)`` (flow: the velocity); the DDPM variance comes from the conditional half.

        Returns:
            ``mean``, ``log_variance``, ``pred_xstart`` (``[n, D]``), and with CFG also
            ``mean_cond`` (the mean from the conditional eps alone, for ``logprob_cfg='none'``).
        """
        net, d = self.mar.head, x.shape[-1]
        tt = sched.head_time(t, x.device)
        if z_uncond is None:
            return sched.p_mean_variance(net(x, tt, z), x, t)
        n = x.shape[0]
        out = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([z, z_uncond]))
        eps_c, eps_u = out[:n, :d], out[n:, :d]
        guided = torch.cat([eps_u + cfg * (eps_c - eps_u), out[:n, d:]], dim=1)
        res = sched.p_mean_variance(guided, x, t)
        res['mean_cond'] = sched.p_mean_variance(out[:n], x, t)['mean']
        return res

    # ---- the Policy interface -------------------------------------------------------------------
    def evaluate(self, rollout: Rollout, *, spec: LogprobSpec, with_entropy: bool = True,
                 select: Optional[MARSelection] = None) -> PolicyEval:
        """Teacher-forced log-probs ``[B, A]`` of the selected (AR step, diffusion step) pairs.

        For each selected AR step ``i`` the transformer runs once (batch ``B``, or ``2B`` with
        CFG under ``spec.mode='rollout'``) on the rollout's committed tokens with the mask of
        step ``i`` (``commit_step >= i``), giving ``z_i`` *with gradients*; the head then
        evaluates the selected transitions ``k`` of the tokens committed at ``i``:
        ``log N(x_{t-1}; mu_theta(x_t, t, z_i), (s_t tau)^2)`` (:func:`gaussian_transition_logp`;
        ``tau = spec.temperature``; ``s_t`` recomputed or the rollout's, :attr:`logprob_sigma`).
        ``spec.mode='none'``: conditional mean; ``'rollout'``: the guided mean of the sampling
        distribution (weight of step ``i`` from :func:`cfg_scales` with the rollout's schedule),
        variance from the conditional half.

        Args:
            rollout: a :class:`MaskedSampler` rollout (or a minibatch of one).
            spec: the sampler's :class:`LogprobSpec`.
            with_entropy: also return the Gaussian entropy of each evaluated transition,
                ``sum_d (log s + (1 + log 2 pi) / 2)``.
            select: the pairs to evaluate; None: ``rollout.extras.selection``, else all.

        Returns:
            :class:`PolicyEval` with ``logp [B, A]`` (actions outside the selection carry the
            detached ``logp_old``: ratio 1, no gradient) and ``extras``: ``'evaluated' [B, A]``
            bool (multiply loss weights by it), ``'mean' [B, A, D]`` the Gaussian means (zero
            outside the selection; MAR-GRPO's KL on means).
        """
        ex: MARExtras = rollout.extras
        if not isinstance(ex, MARExtras):
            raise TypeError(f'MARPolicy.evaluate needs a MAR rollout (extras MARExtras), got '
                            f'{type(ex).__name__}')
        if spec.cfg_interval is not None:
            raise ValueError(f'cfg_interval={spec.cfg_interval} is not a MAR setting; MAR guides '
                             f'with cfg_schedule (linear / constant): use cfg_interval=None')
        select = select if select is not None else ex.selection
        sched = self.schedule(ex.num_sampling_steps, head_sampler=ex.head_sampler,
                              sde_noise_level=ex.sde_noise_level)
        kk = ex.num_transitions
        cond = self.encode_conditions(rollout.cond)
        dev = self.device
        b, n, d = ex.tokens.shape
        tokens = ex.tokens.to(dev)
        commit = ex.commit_step.to(dev)
        x_t = ex.x_t.to(dev).view(b, n, kk, d)
        x_prev = rollout.actions.to(dev).view(b, n, kk, d)
        ar_steps = range(ex.num_iter) if select is None else [int(i) for i in select.ar_steps]
        ks = (torch.arange(kk, device=dev) if select is None
              else torch.as_tensor(list(select.diffusion_steps), dtype=torch.long, device=dev))
        if ks.numel() and (int(ks.min()) < 0 or int(ks.max()) >= kk):
            raise ValueError(f'diffusion_steps {ks.tolist()} must be in [0, {kk}) (K = '
                             f'num_sampling_steps - 1 transitions per token)')
        use_cfg = spec.uses_cfg
        weights = cfg_scales(spec.cfg_scale, ex.cfg_schedule, n, ex.num_iter) if use_cfg else None
        logp = rollout.logp_old.to(dev).detach().view(b, n, kk)
        stored_lv = None
        if self.logprob_sigma == 'stored':
            if ex.log_variance is None:
                raise ValueError("logprob_sigma='stored' scores with the rollout's recorded "
                                 "variances but extras.log_variance is None: draw the rollout "
                                 "with MaskedSampler, or use logprob_sigma='recomputed'")
            stored_lv = ex.log_variance.to(dev).detach().view(b, n, kk, d)
        mean_all = torch.zeros(b, n, kk, d, device=dev)
        ent = torch.zeros(b, n, kk, device=dev) if with_entropy else None
        evaluated = torch.zeros(b, n, kk, dtype=torch.bool, device=dev)
        labels = cond.class_ids
        for i in ar_steps:
            if not 0 <= i < ex.num_iter:
                raise ValueError(f'AR step {i} is not in [0, {ex.num_iter})')
            sel = commit == i                                                 # [B, N]
            n_i = int(sel[0].sum())
            if n_i == 0 or ks.numel() == 0:
                continue
            mask = commit >= i
            emb = self.mar.class_embedding(labels)
            if use_cfg:
                z = self.mar(torch.cat([tokens, tokens]), torch.cat([mask, mask]),
                             torch.cat([emb, self.mar.null_embedding(b)]))
                zc, zu = z[:b][sel], z[b:][sel]                               # [B n_i, C]
            else:
                zc, zu = self.mar(tokens, mask, emb)[sel], None
            nk = ks.numel()
            xs = x_t[sel][:, ks].reshape(-1, d)                               # [B n_i nk, D]
            xp = x_prev[sel][:, ks].reshape(-1, d)
            t = (kk - ks).repeat(b * n_i)
            zc = zc.repeat_interleave(nk, dim=0)
            zu = None if zu is None else zu.repeat_interleave(nk, dim=0)
            out = self.head_transition(xs, t, zc, sched, z_uncond=zu,
                                       cfg=weights[i] if use_cfg else 1.0)
            mu = out['mean']
            # 'stored' (official MAR-GRPO): the sampler's std_dev_t, no gradient via the variance
            lv = (out['log_variance'] if stored_lv is None
                  else stored_lv[sel][:, ks].reshape(-1, d))
            lp = gaussian_transition_logp(xp, mu, lv, spec.temperature)
            bi, ji = sel.nonzero(as_tuple=True)
            bi = bi.repeat_interleave(nk)
            ji = ji.repeat_interleave(nk)
            ki = ks.repeat(b * n_i)
            logp = logp.index_put((bi, ji, ki), lp)
            mean_all = mean_all.index_put((bi, ji, ki), mu)
            evaluated[bi, ji, ki] = True
            if ent is not None:
                log_s = 0.5 * lv + math.log(spec.temperature)
                ent = ent.index_put((bi, ji, ki),
                                    (log_s + 0.5 * (1 + math.log(2 * math.pi))).sum(-1))
        return PolicyEval(logp=logp.view(b, n * kk),
                          entropy=None if ent is None else ent.view(b, n * kk),
                          extras={'evaluated': evaluated.view(b, n * kk),
                                  'mean': mean_all.view(b, n * kk, d)})

    def flops_per_sample(self, spec: Optional[LogprobSpec] = None,
                         rollout: Optional[Rollout] = None, *, num_iter: int = 64,
                         num_sampling_steps: int = 100) -> int:
        """Matmul FLOPs of one :meth:`evaluate` forward per sample (2 per multiply-add; backward
        is twice this), for the (AR step, transition) pairs it evaluates: the rollout's
        ``extras.selection`` (all pairs when None; the schedule from ``rollout.extras``, else
        ``num_iter`` / ``num_sampling_steps``).

        Per evaluated AR step ``i`` (``n_i`` tokens committed, ``v_i = N - rem_i`` visible):

        * encoder: ``z_proj`` ``2 N D C``; per block on ``L = buf + v_i`` rows ``6 L C^2``
          (qkv) + ``2 L C^2`` (proj) + ``4 L C h`` (MLP, ``h = mlp_ratio C``) + ``4 L^2 C``
          (attention); ``decoder_embed`` ``2 L C C_d``;
        * decoder: the same per block on ``buf + N`` rows at width ``C_d``;
        * head, per evaluated transition (``n_i k`` rows): time MLP ``2 (256 W + W^2)``, cond
          and input projections ``2 W (C_d + D)``, per res-block ``4 W^2 + 6 W^2``, final layer
          ``4 W^2 + 2 W out``.

        With ``spec.uses_cfg`` everything counts twice (the doubled batch).
        """
        cfg = self.cfg
        sel = None
        if rollout is not None:
            ex: MARExtras = rollout.extras
            num_iter, num_sampling_steps, sel = ex.num_iter, ex.num_sampling_steps, ex.selection
        n, d, buf = cfg.seq_len, cfg.token_dim, cfg.buffer_size
        c, cd, w = cfg.embed_dim, cfg.decoder_embed_dim, cfg.diffloss_w
        kk = int(num_sampling_steps) - 1
        nk = kk if sel is None else len(sel.diffusion_steps)
        steps = range(num_iter) if sel is None else sel.ar_steps
        rem, _ = mask_schedule(n, num_iter)

        def blocks(rows, width, depth):
            hid = int(width * cfg.mlp_ratio)
            return depth * (8 * rows * width * width + 4 * rows * width * hid
                            + 4 * rows * rows * width)

        head_row = (2 * (256 * w + w * w) + 2 * w * (cd + d) + cfg.diffloss_d * 10 * w * w
                    + 4 * w * w + 2 * w * cfg.head_out_channels)
        total = 0
        for i in steps:
            n_i = rem[i] - rem[i + 1]
            if n_i == 0 or nk == 0:
                continue
            enc_rows = buf + n - rem[i]
            total += (2 * n * d * c + blocks(enc_rows, c, cfg.depth) + 2 * enc_rows * c * cd
                      + blocks(buf + n, cd, cfg.decoder_depth) + n_i * nk * head_row)
        return total * (2 if spec is not None and spec.uses_cfg else 1)

    # ---- pretraining ---------------------------------------------------------------------------
    def pretrain_loss(self, tokens: Tensor, cond: Conditions) -> Tensor:
        """Official ``MAR.forward`` loss on ``tokens [B, N, D]`` (scaled latents): random
        orders, a truncated-normal masking ratio (mode 1, std 0.25, >= ``mask_ratio_min``),
        label dropout to ``fake_latent``, dropout in training mode, and the DiffLoss (eps MSE +
        the learned-variance VLB term, ``training_losses`` with ``LossType.MSE``) on the masked
        tokens, each repeated ``diffusion_batch_mul`` times with independent ``t`` and noise.
        A flow head (``head_type='flow'``) uses the flow-matching MSE instead
        (:meth:`_flow_loss`)."""
        cond = self.encode_conditions(cond)
        x = tokens.to(self.device)
        b, n, d = x.shape
        dev = x.device
        orders = torch.rand(b, n, device=dev).argsort(dim=1)
        lo = torch.special.ndtr(torch.tensor((self.mask_ratio_min - 1.0) / 0.25,
                                             dtype=torch.float64))
        u = lo + (0.5 - lo) * torch.rand((), dtype=torch.float64)
        rate = float(1.0 + 0.25 * torch.special.ndtri(u))
        num_masked = int(math.ceil(n * rate))
        mask = torch.zeros(b, n, dtype=torch.bool, device=dev)
        mask.scatter_(1, orders[:, :num_masked], True)
        drop = (torch.rand(b, device=dev) < self.label_drop_prob) if self.training else None
        emb = self.mar.class_embedding(cond.class_ids, null=drop)
        z = self.mar(x, mask, emb, dropout=True)
        m = self.diffusion_batch_mul
        target = x.reshape(b * n, d).repeat(m, 1)
        zz = z.reshape(b * n, -1).repeat(m, 1)
        w = mask.reshape(b * n).repeat(m).float()
        if self.head_type == 'flow':
            loss = self._flow_loss(target, zz)
        else:
            loss = self._diffusion_loss(target, zz)
        return (loss * w).sum() / w.sum()

    def _flow_loss(self, x0: Tensor, z: Tensor) -> Tensor:
        """Flow-matching MSE of a velocity head: ``s ~ U(0, 1)``, ``x_s = (1 - s) x0 + s eps``,
        ``|net(x_s, 1000 s, z) - (eps - x0)|^2`` averaged over channels: ``[n]`` (the time
        convention of :class:`FlowSDESchedule`; uniform ``s``, no logit-normal shift)."""
        s = torch.rand(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        x_s = (1 - s).unsqueeze(-1) * x0 + s.unsqueeze(-1) * noise
        v = self.mar.head(x_s, 1000.0 * s, z)
        return ((v - (noise - x0)) ** 2).mean(-1)

    def _diffusion_loss(self, x0: Tensor, z: Tensor) -> Tensor:
        """Official ``training_losses`` (1000-step cosine, MSE + VLB with frozen mean): ``[n]``."""
        sched = self.schedule(1000)
        dev = x0.device
        t = torch.randint(0, sched.num_timesteps, (x0.shape[0],), device=dev)
        noise = torch.randn_like(x0)

        def ex(name):
            return sched.coef(name, dev)[t].unsqueeze(-1)

        x_t = ex('sqrt_alphas_cumprod') * x0 + ex('sqrt_one_minus_alphas_cumprod') * noise
        out = self.mar.head(x_t, t, z)
        d = x0.shape[-1]
        eps, v = out[:, :d], out[:, d:]
        frozen = torch.cat([eps.detach(), v], dim=1)
        p = sched.p_mean_variance(frozen, x_t, t)
        true_mean = ex('posterior_mean_coef1') * x0 + ex('posterior_mean_coef2') * x_t
        true_logvar = ex('posterior_log_variance_clipped')
        kl = 0.5 * (-1.0 + p['log_variance'] - true_logvar
                    + torch.exp(true_logvar - p['log_variance'])
                    + (true_mean - p['mean']) ** 2 * torch.exp(-p['log_variance']))
        kl = kl.mean(-1) / math.log(2.0)
        nll = -_discretized_gaussian_loglik(x0, p['mean'], 0.5 * p['log_variance']).mean(-1)
        vb = torch.where(t == 0, nll / math.log(2.0), kl)
        return ((noise - eps) ** 2).mean(-1) + vb


def _discretized_gaussian_loglik(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Official ``discretized_gaussian_log_likelihood`` (bins of 2/255 on [-1, 1])."""
    def cdf(v):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    c = x - means
    inv = torch.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv * (c + 1.0 / 255.0)), cdf(inv * (c - 1.0 / 255.0))
    log_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_one_minus, log_delta))
