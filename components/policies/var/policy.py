"""VARPolicy: VAR as a vargo policy (teacher-forced log-probs, pretraining loss, decoding) and the
per-scale CFG ramp of its sampling distribution; the next-scale decoding members come from
:class:`~vargo.components.policies.var.decoding.VARNextScaleDecoding`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from vargo.core.interfaces import Policy
from vargo.core.registry import POLICIES
from vargo.core.types import Conditions, FamilyExtras, LogprobSpec, PolicyEval, Rollout

from ...modules.onednn_linear import onednn_linears_option
from ...modules.categorical import categorical_logp_entropy, var_truncation_keep_mask
from ...modules.conv_layout import (decode_channels_last, decode_chunk_size,
                                    decode_in_chunks)
from ...tokenizers.msvq import PATCH_NUMS_256, PATCH_NUMS_512, MultiScaleVQVAE, build_msvq
from ..frozen import exclude_frozen_submodules
from .decoding import VARNextScaleDecoding
from .loading import VAR_FILE_SOURCES, load_var_file
from .model import VARConfig, VARTransformer

__all__ = ['VARPolicy', 'VARExtras', 'cfg_ramp']


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
class VARPolicy(VARNextScaleDecoding, Policy):
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

        onednn_linears: run the training forward and backward of the transformer's large
            ``nn.Linear`` layers on oneDNN (CPU fp32; the same gradients up to summation order;
            :func:`~vargo.components.modules.onednn_linear.use_onednn_linears`). ``'auto'`` (the
            default) turns it on unless the CPU is Intel's: VAR-d16's update ran 1.15x as fast
            with it on an AMD EPYC, 0.89x on an Intel Xeon (README, "Performance");
            ``tools/benchmark.py --linear-kernels-ab`` measures it. True / False force it.
            Grad-free forwards are unaffected.

    Attributes:
        file_sources: official file name -> where it is published.
    """

    file_sources: dict[str, str] = VAR_FILE_SOURCES

    def __init__(self, *, arch: Union[str, dict] = 'd16',
                 patch_nums: Optional[Sequence[int]] = None, image_size: Optional[int] = None,
                 num_classes: int = 1000, vocab_size: int = 4096,
                 checkpoint: Optional[str] = None,
                 tokenizer: Union[str, dict] = 'vae_ch160v4096z32',
                 tokenizer_checkpoint: Optional[str] = None, class_dropout_prob: float = 0.1,
                 onednn_linears: Union[bool, str] = 'auto'):
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
            load_var_file(self.vae, tokenizer_checkpoint, what='VAR VQVAE')
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self.image_size = self.vae.image_size

        self.cfg = VARConfig.from_arch(arch, patch_nums=patch_nums, vocab_size=vocab_size,
                                       Cvae=self.vae.Cvae, num_classes=num_classes)
        self.var = VARTransformer(self.cfg)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

        onednn_linears_option('VARPolicy', self.var, onednn_linears)

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
        """The scale sides, coarse to fine."""
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
        """Where the transformer's parameters live."""
        return self.var.head.weight.device

    def train(self, mode: bool = True) -> 'VARPolicy':
        """Set the mode; the frozen VQVAE stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    def trainable_parameters(self):
        """The transformer's parameters that require grad (never the VQVAE's)."""
        return [p for p in self.var.parameters() if p.requires_grad]

    def load_checkpoint(self, path: str) -> None:
        """Load an official ``var_d*.pth`` into the transformer, strictly."""
        load_var_file(self.var, path, what='VAR transformer')

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

    def rollout_extras(self) -> VARExtras:
        """The rollout's :class:`VARExtras` (its scale schedule)."""
        return VARExtras(tuple(self.patch_nums))

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
    def decode(self, rollout: Rollout, *, chunk: Optional[int] = None) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] of the rollout's tokens (``chunk`` at a time; default
        :func:`~vargo.components.modules.conv_layout.decode_chunk_size`)."""
        return decode_in_chunks(self.vae.decode, rollout.actions.to(self.device),
                                chunk or decode_chunk_size(self.image_size))

    def decode_with_step_inputs(self, rollout: Rollout) -> tuple[Tensor, list[Tensor]]:
        """Decode differentiably from each scale's code vectors (for MP's saliency source,
        :class:`~vargo.components.token_selectors.mask_propagation.MaskPropagationSelector`).

        With ``e_s [B, Cvae, pn_s, pn_s]`` the code vectors of scale ``s``'s tokens (a leaf
        tensor that requires grad), exactly as :meth:`decode` computes:

            f_hat = sum_s Phi_s(up_s(e_s))     up_s: bicubic to the last grid (identity at the last)
            image = (clamp(decoder(post_quant_conv(f_hat)), -1, 1) + 1) / 2

        Returns:
            ``(images [B, 3, H, W]`` in [0, 1] with a graph to the inputs, equal to
            ``decode(rollout)``; ``inputs``: the S leaves ``e_s``, coarse to fine).
        """
        q = self.vae.quantize
        tokens = rollout.actions.to(self.device)
        last = self.patch_nums[-1]
        inputs = []
        f_hat = q.embedding.weight.new_zeros(tokens.shape[0], q.Cvae, last, last)  # as decode
        for si, (ids, pn) in enumerate(zip(self.vae.split_scales(tokens), self.patch_nums)):
            e = q.embedding(ids).detach().transpose(1, 2).reshape(ids.shape[0], q.Cvae, pn, pn)
            e.requires_grad_(True)
            inputs.append(e)
            h = e if si == q.num_scales - 1 else F.interpolate(e, size=(last, last),
                                                               mode='bicubic')
            f_hat = f_hat + q.phi(si)(h)
        x = decode_channels_last(lambda f: self.vae.decoder(self.vae.post_quant_conv(f)),
                                 f_hat).clamp(-1, 1)                    # as fhat_to_img
        return (x + 1) * 0.5, inputs

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
