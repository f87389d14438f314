"""The LlamaGen policy: the transformer, the frozen VQ tokenizer and (t2i) text encoder, the
Policy interface (teacher-forced log-probs, decoding images) and the raster decoding protocol
that ``ARSampler`` drives."""
from __future__ import annotations

import dataclasses
from typing import Hashable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from vargo.core.interfaces import Policy
from vargo.core.registry import POLICIES
from vargo.core.types import Conditions, LogprobSpec, PolicyEval, Rollout

from ...modules.conv_layout import decode_chunk_size, decode_in_chunks
from ...modules.onednn_linear import onednn_linears_option
from ...modules.raster import register_raster_action_axis
from ...modules.categorical import logp_entropy_under_spec
from ...modules.kv_cache import StaticKVCache
from ...tokenizers.vq import VQModel, build_vq
from ..frozen import exclude_frozen_submodules
from .flops import teacher_forced_flops
from .loading import LLAMAGEN_FILE_SOURCES, load_official
from .model import GPTConfig, LlamaGenGPT

__all__ = ['LlamaGenPolicy']


_FROZEN = ('vq', 'text_encoder')


@POLICIES.register_module()
class LlamaGenPolicy(Policy):
    """LlamaGen as a vargo policy: raster-order tokens, one token per action.

    Rollout conventions: ``actions [B, T]`` long (``T = (image_size / downsample)^2``),
    ``action_step = arange(T)``, ``action_pos [T, 2]`` = (row, col), images decoded by the VQ.

    Args:
        arch: an official size (``'GPT-B'``, ``'GPT-L'``, ``'GPT-XL'``, ``'GPT-XXL'``,
            ``'GPT-XXXL'``, ``'GPT-1B'``, ``'GPT-3B'``, ``'GPT-7B'``) or a dict of
            :attr:`GPTConfig.ARCH_FIELDS` (e.g. ``dict(dim=64, n_layer=2, n_head=4)``,
            optionally ``base='GPT-B'``).
        task: ``'c2i'`` (class-conditional) or ``'t2i'`` (text-conditional).
        image_size: output resolution (official 256, 384, 512).
        downsample: VQ downsampling factor (16 for VQ-16); T = (image_size / downsample)^2.
        num_classes: classes of a c2i model (ImageNet 1000).
        vocab_size: V, must equal the tokenizer's codebook size.
        cls_token_num: condition positions C; None = 1 (c2i) or the text encoder's length /
            120 (t2i).
        caption_dim: text feature width (t2i); None = the text encoder's width / 2048.
        uncond_rows: rows of the t2i null caption buffer ``cls_embedding.uncond_embedding``
            (official 120 for every ``cls_token_num``; CFG uses its first ``cls_token_num``
            rows). The Shapes t2i base model was saved with 12 (its ``cls_token_num``): its
            config sets ``uncond_rows=12``.
        checkpoint: official ``c2i_*.pt`` / ``t2i_*.pt`` (or any file with this transformer's
            keys), loaded strictly; None keeps the official random init.
        tokenizer: VQ preset name (``'VQ-16'``, ``'VQ-8'``) or a dict of
            :class:`~vargo.components.tokenizers.vq.VQModel` arguments (optionally
            ``preset=...``).
        tokenizer_checkpoint: official ``vq_ds16_c2i.pt`` / ``vq_ds16_t2i.pt`` (or a file with
            the same keys), loaded strictly; None keeps a random tokenizer (tests only).
        text_encoder: t2i only: dict for
            :func:`~vargo.components.tokenizers.text.build_text_encoder`, e.g.
            ``dict(type='flan-t5', path='checkpoints/flan-t5-xl')`` or ``dict(type='word-t5',
            vocabulary=[...], d_model=64, num_layers=2, num_heads=4, d_ff=128, max_length=16)``;
            None if conditions always arrive with ``text_emb`` filled.
        class_dropout_prob: probability of replacing the condition by the null one in
            :meth:`pretrain_loss` (official 0.1); not used by RL.
        dropout: token / residual / FFN dropout of the transformer (official pretraining 0.1;
            must be 0 for RL so the teacher-forced log-prob equals the sampler's).

        onednn_linears: run the training forward and backward of the transformer's large
            ``nn.Linear`` layers on oneDNN (CPU fp32; the same gradients up to summation order;
            :func:`~vargo.components.modules.onednn_linear.use_onednn_linears`). ``'auto'`` (the
            default) turns it on unless the CPU is Intel's: GPT-B's update ran 1.04-1.10x as
            fast with it on an AMD EPYC, 0.88x on an Intel Xeon (README, "Performance"). True /
            False force it. Grad-free forwards are unaffected.

    Attributes:
        file_sources: official file name -> where it is published.
    """

    file_sources: dict[str, str] = LLAMAGEN_FILE_SOURCES

    def __init__(self, *, arch: Union[str, dict] = 'GPT-B', task: str = 'c2i',
                 image_size: int = 256, downsample: int = 16, num_classes: int = 1000,
                 vocab_size: int = 16384, cls_token_num: Optional[int] = None,
                 caption_dim: Optional[int] = None, checkpoint: Optional[str] = None,
                 tokenizer: Union[str, dict] = 'VQ-16', tokenizer_checkpoint: Optional[str] = None,
                 text_encoder: Optional[dict] = None, class_dropout_prob: float = 0.1,
                 dropout: float = 0.0, uncond_rows: int = 120,
                 onednn_linears: Union[bool, str] = 'auto'):
        super().__init__()
        if task not in ('c2i', 't2i'):
            raise ValueError(f"task={task!r} is not one of 'c2i', 't2i'")
        if image_size % downsample:
            raise ValueError(f'image_size={image_size} is not a multiple of '
                             f'downsample={downsample}')
        self.task, self.image_size, self.downsample = task, image_size, downsample
        self.class_dropout_prob = class_dropout_prob
        grid = image_size // downsample

        # frozen VQ tokenizer
        self.vq: VQModel = build_vq(tokenizer)
        if self.vq.downsample != downsample:
            raise ValueError(f'tokenizer downsamples by {self.vq.downsample}, but '
                             f'downsample={downsample}')
        if self.vq.codebook_size != vocab_size:
            raise ValueError(f'tokenizer codebook has {self.vq.codebook_size} codes, but '
                             f'vocab_size={vocab_size}')
        if tokenizer_checkpoint is not None:
            load_official(self.vq, tokenizer_checkpoint, what='VQ tokenizer')

        # frozen text encoder (t2i)
        self.text_encoder = None
        if text_encoder is not None:
            if task != 't2i':
                raise ValueError('text_encoder is only used by task="t2i"')
            from ...tokenizers.text import build_text_encoder
            self.text_encoder = build_text_encoder(text_encoder)
        if task == 't2i':
            enc = self.text_encoder
            cls_token_num = cls_token_num or (enc.max_length if enc is not None else 120)
            caption_dim = caption_dim or (enc.dim if enc is not None else 2048)
            if enc is not None and (enc.max_length, enc.dim) != (cls_token_num, caption_dim):
                raise ValueError(f'text encoder gives {enc.max_length} tokens of {enc.dim} dims '
                                 f'but the GPT expects cls_token_num={cls_token_num}, '
                                 f'caption_dim={caption_dim}')
        else:
            cls_token_num = cls_token_num or 1
            caption_dim = caption_dim or 2048
        for p in self.vq.parameters():
            p.requires_grad_(False)

        arch_fields = GPTConfig.from_arch(arch).arch_dict()
        if dropout:
            arch_fields.update(token_dropout_p=dropout, resid_dropout_p=dropout,
                               ffn_dropout_p=dropout)
        self.cfg = GPTConfig(**arch_fields, vocab_size=vocab_size, block_size=grid * grid,
                             cls_token_num=cls_token_num, task=task, num_classes=num_classes,
                             caption_dim=caption_dim, uncond_rows=uncond_rows)
        self.gpt = LlamaGenGPT(self.cfg)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

        onednn_linears_option('LlamaGenPolicy', self.gpt, onednn_linears)

        # action axis
        register_raster_action_axis(self, grid)
        exclude_frozen_submodules(self, _FROZEN)
        self.train(True)

    # ---- sizes ------------------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        """A = T, the image tokens per sample."""
        return self.cfg.block_size

    @property
    def grid_size(self) -> int:
        return self.cfg.grid_size

    @property
    def cls_token_num(self) -> int:
        return self.cfg.cls_token_num

    @property
    def device(self) -> torch.device:
        return self.gpt.tok_embeddings.weight.device

    def train(self, mode: bool = True) -> 'LlamaGenPolicy':
        super().train(mode)
        self.vq.eval()                       # frozen modules never leave eval mode
        if self.text_encoder is not None:
            self.text_encoder.eval()
        return self

    def trainable_parameters(self):
        return [p for p in self.gpt.parameters() if p.requires_grad]

    # ---- checkpoints ----------------------------------------------------------------------
    def load_checkpoint(self, path: str) -> None:
        """Load an official ``c2i_*.pt`` / ``t2i_*.pt`` into the transformer, strictly."""
        dropped = load_official(self.gpt, path, what='LlamaGen GPT')
        if dropped:
            from mmengine.logging import print_log
            print_log(f'{path}: dropped derived tensors {dropped} (recomputed here)',
                      logger='current')

    # ---- conditions ---------------------------------------------------------------------
    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Check class ids (c2i) or fill ``text_emb`` / ``text_mask`` (t2i), on the model's device.

        For t2i the features are arranged as the GPT consumes them (``sample_t2i.py``'s default
        left padding): the ``n`` real tokens of a caption (EOS included) occupy the *last*
        ``n`` of the C positions, the padding positions before them are zero, and ``text_mask``
        ``[B, C]`` is True on the real ones. Conditions that already carry ``text_emb`` are
        assumed to be in this arrangement and are returned unchanged.
        """
        dev = self.device
        if self.task == 'c2i':
            if cond.class_ids is None:
                raise ValueError('a c2i LlamaGen policy needs Conditions.class_ids')
            ids = cond.class_ids.to(dev)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.num_classes):
                raise ValueError(f'class ids must be in [0, {self.cfg.num_classes}), got '
                                 f'[{int(ids.min())}, {int(ids.max())}]')
            return dataclasses.replace(cond, class_ids=ids)
        if cond.text_emb is not None:
            mask = cond.text_mask
            if mask is None:
                mask = torch.ones(cond.text_emb.shape[:2], dtype=torch.bool)
            return dataclasses.replace(cond, text_emb=cond.text_emb.to(dev),
                                       text_mask=mask.to(dev).bool())
        if cond.prompts is None:
            raise ValueError('a t2i LlamaGen policy needs Conditions.prompts or text_emb')
        if self.text_encoder is None:
            raise ValueError('Conditions carry prompts but the policy has no text_encoder: set '
                             'text_encoder=dict(type="flan-t5", path=...) (or "word-t5")')
        emb, mask = self.text_encoder(cond.prompts)                 # right-padded
        emb, mask = emb.to(dev), mask.to(dev)
        emb, mask = _left_pad(emb, mask)
        return dataclasses.replace(cond, text_emb=emb, text_mask=mask)

    def condition_inputs(self, cond: Conditions, *, with_null: bool
                         ) -> tuple[Tensor, Optional[Tensor]]:
        """GPT inputs of encoded conditions, optionally followed by the CFG null conditions.

        Returns:
            ``(emb [B2, C, dim], cond_mask [B2, C] bool or None)`` with ``B2 = 2B`` (rows
            ``[cond; null]``, the official order) if ``with_null`` else ``B``. The null caption
            uses its caption's mask (``generate.py``).
        """
        if self.task == 'c2i':
            b = cond.class_ids.shape[0]
            emb = self.gpt.condition_embeddings(class_ids=cond.class_ids)
            mask = None
        else:
            b = cond.text_emb.shape[0]
            emb = self.gpt.condition_embeddings(text_emb=cond.text_emb)
            mask = cond.text_mask
        if with_null:
            null = self.gpt.condition_embeddings(null=True, batch=b)
            emb = torch.cat([emb, null.to(emb.dtype)], dim=0)
            mask = None if mask is None else torch.cat([mask, mask], dim=0)
        return emb, mask

    # ---- the Policy interface ---------------------------------------------------------------
    def evaluate(self, rollout: Rollout, *, spec: LogprobSpec,
                 with_entropy: bool = True) -> PolicyEval:
        """Teacher-forced log-probs ``[B, T]`` of ``rollout.actions`` and entropies ``[B, T]``
        under ``spec``, in ONE forward.

        ``spec.mode='none'``: ``log_softmax(cond_logits / temperature)``, full vocabulary.
        ``spec.mode='rollout'``: the sampling distribution exactly -- one doubled
        ``[cond; null]`` batch when ``cfg_scale != 1``, CFG mix on the tokens inside
        ``cfg_interval``, ``/ temperature``, top-k / top-p kept set renormalised; the entropy is
        that distribution's.
        """
        cond = self.encode_conditions(rollout.cond)
        tokens = rollout.actions.to(self.device)                           # [B, T]
        b, t = tokens.shape
        use_cfg = spec.uses_cfg
        emb, mask = self.condition_inputs(cond, with_null=use_cfg)
        inp = tokens[:, :-1]
        if use_cfg:
            inp = torch.cat([inp, inp], dim=0)
        logits = self.gpt(emb, inp, cond_mask=mask)                        # [B2, T, V]
        g = 2 if use_cfg else 1
        logp, ent = logp_entropy_under_spec(logits.view(g, b * t, -1), tokens, spec,
                                            with_entropy=with_entropy)
        return PolicyEval(logp=logp, entropy=ent)

    def flops_per_sample(self, spec: Optional[LogprobSpec] = None) -> int:
        """Matmul FLOPs of one teacher-forced :meth:`evaluate` forward, per sample (see
        :func:`~vargo.components.policies.llamagen.flops.teacher_forced_flops`); with
        ``spec.uses_cfg`` the doubled ``[cond; null]`` batch counts twice (None: no doubling)."""
        return teacher_forced_flops(self.cfg, doubled=spec is not None and spec.uses_cfg)

    @torch.no_grad()
    def decode(self, rollout: Rollout, *, chunk: Optional[int] = None) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] of the rollout's tokens (VQ decoder, ``chunk``
        images at a time; default
        :func:`~vargo.components.modules.conv_layout.decode_chunk_size`)."""
        return decode_in_chunks(self.vq.decode, rollout.actions.to(self.device),
                                chunk or decode_chunk_size(self.image_size))

    def embed_actions(self, rollout: Rollout) -> Tensor:
        """``[B, T, 8]`` L2-normalised VQ codebook vectors of the sampled tokens (STAGE's
        q_{i,t}, docs/methods/stage.md)."""
        with torch.no_grad():
            return self.vq.quantize.codebook()[rollout.actions.to(self.device)]

    def rollout_axes(self) -> tuple[Tensor, Tensor]:
        """``(action_step [T], action_pos [T, 2])`` of the raster order."""
        return self.action_step, self.action_pos

    # ---- raster decoding (the protocol ARSampler drives) --------------------------------------
    def decoding_cache_key(self, batch: int) -> Hashable:
        """What fixes the KV cache's shape for ``batch`` rows (equal keys: the cache is reused,
        also by a frozen reference of the same architecture)."""
        w, cfg = self.gpt.tok_embeddings.weight, self.cfg
        return (batch, cfg.n_layer, cfg.kv_heads, cfg.head_dim,
                cfg.cls_token_num + cfg.block_size, w.dtype, w.device)

    def decoding_modules(self) -> list[torch.nn.Module]:
        """The transformer: what ``prefill`` and ``decode_step`` run (its linear layers use
        packed weights during a rollout, see ``ARSampler(packed_weights=...)``)."""
        return [self.gpt]

    def new_decoding_cache(self, batch: int) -> StaticKVCache:
        """A static KV cache for ``batch`` rows over the C condition and T token positions."""
        return self.gpt.new_cache(batch)

    def prefill(self, cond: Conditions, given: Optional[Tensor], cache: StaticKVCache, *,
                with_null: bool) -> Tensor:
        """Run the condition positions (``[cond; null]`` with ``with_null``) and the kept tokens
        ``given [B, m]`` (or None) from position 0, filling ``cache`` (caption padding keys
        masked); return fp32 logits ``[B2, m + 1, V]``, row ``j`` predicting token ``j``."""
        emb, cond_mask = self.condition_inputs(cond, with_null=with_null)   # [B2, C, dim]
        x = emb
        if given is not None and given.shape[1]:
            g2 = torch.cat([given, given]) if with_null else given
            x = torch.cat([emb, self.gpt.tok_embeddings(g2).to(emb.dtype)], dim=1)
        return self.gpt.prefill(x, cache, cond_mask=cond_mask)

    def decode_step(self, tokens: Tensor, index: int, cache: StaticKVCache) -> Tensor:
        """Feed token ``index`` (``tokens [B2]``; sequence position ``C + index``) and return
        the fp32 logits ``[B2, V]`` of token ``index + 1``."""
        return self.gpt.decode_step(tokens, self.cfg.cls_token_num + index, cache)

    # ---- pretraining (Shapes) ------------------------------------------------------------------
    def pretrain_loss(self, tokens: Tensor, cond: Conditions) -> Tensor:
        """Next-token cross-entropy of ``tokens [B, T]`` (official ``train_c2i.py`` /
        ``train_t2i.py``), with the condition replaced by the null one with probability
        ``class_dropout_prob`` in training mode (the official label / caption dropout)."""
        cond = self.encode_conditions(cond)
        tokens = tokens.to(self.device)
        b = tokens.shape[0]
        emb, mask = self.condition_inputs(cond, with_null=False)
        if self.training and self.class_dropout_prob > 0:
            drop = torch.rand(b, device=self.device) < self.class_dropout_prob
            null = self.gpt.condition_embeddings(null=True, batch=b)
            emb = torch.where(drop[:, None, None], null.to(emb.dtype), emb)
        logits = self.gpt(emb, tokens[:, :-1], cond_mask=mask)               # [B, T, V]
        return F.cross_entropy(logits.flatten(0, 1), tokens.reshape(-1))


def _left_pad(emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Right-padded ``[B, L, D]`` / ``[B, L]`` -> left-padded with zeroed padding (as
    ``sample_t2i.py``: rotate the real tokens to the end, flip the mask, multiply by it)."""
    b, length = mask.shape
    n_valid = mask.sum(dim=1, keepdim=True)                                 # [B, 1]
    pos = torch.arange(length, device=mask.device).expand(b, -1)
    src = (pos + n_valid) % length                                          # rotate by n_valid
    out = emb.gather(1, src[..., None].expand(-1, -1, emb.shape[-1]))
    new_mask = pos >= (length - n_valid)
    return out * new_mask[..., None], new_mask
