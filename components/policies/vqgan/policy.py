"""The VQGAN-transformer policy: taming's minGPT over VQGAN codes, the frozen VQGAN tokenizer, the
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
from ...tokenizers.vqgan import VQGAN, build_vqgan
from ..frozen import exclude_frozen_submodules
from .loading import (TAMING_FILE_SOURCES, check_release_config, load_first_stage,
                      load_transformer, read_official_state_dict, split_net2net)
from .model import MinGPT, MinGPTConfig

__all__ = ['VQGANTransformerPolicy']

_FROZEN = ('vq',)


def _log(msg: str) -> None:
    from mmengine.logging import print_log
    print_log(msg, logger='current')


@POLICIES.register_module()
class VQGANTransformerPolicy(Policy):
    """taming-transformers' class-conditional VQGAN transformer as a vargo policy: raster-order
    VQGAN codes, one token per action, the class id as the first token.

    Rollout conventions: ``actions [B, T]`` long (``T = (image_size / downsample)^2``),
    ``action_step = arange(T)``, ``action_pos [T, 2]`` = (row, col), images decoded by the VQGAN.
    The model has no unconditional (null) class: samplers must use ``cfg_scale=1``.

    Args:
        arch: an official size (``'cin'``: 48 layers, 24 heads, width 1536) or a dict of
            :attr:`MinGPTConfig.ARCH_FIELDS` (e.g. ``dict(n_layer=2, n_head=4, n_embd=64)``,
            optionally ``base='cin'``).
        image_size: output resolution (official 256).
        num_classes: classes (ImageNet 1000); class ``c`` is fed as token id ``c`` (official
            ``Labelator``), so ``num_classes <= vocab_size``.
        vocab_size: V, must equal the tokenizer's codebook size (16384).
        block_size: rows of the position table; None = ``T`` (1 class token + ``T - 1`` fed
            image tokens, the official cin ``block_size=256``).
        checkpoint: the official cin ``checkpoints/last.ckpt`` (``transformer.*`` and
            ``first_stage_model.*``: both are loaded, strictly) or a file with the bare
            transformer keys; None keeps the official random init.
        tokenizer: VQGAN preset (``'f16-16384'``, ``'f16-1024'``) or a dict of
            :class:`~vargo.components.tokenizers.vqgan.VQGAN` arguments (optionally
            ``preset=...``).
        tokenizer_checkpoint: a standalone VQGAN file (``vqgan_imagenet_f16_16384/checkpoints/
            last.ckpt``, or a file with the bare VQGAN keys), loaded strictly; None = the first
            stage held by ``checkpoint`` if it has one, else a random tokenizer (tests only).
        dropout: embedding / residual / attention dropout (official constructor default 0; must
            be 0 for RL so the teacher-forced log-prob equals the sampler's).
        onednn_linears: run the training forward and backward of the transformer's large
            ``nn.Linear`` layers on oneDNN (CPU fp32; the same gradients up to summation order;
            :func:`~vargo.components.modules.onednn_linear.use_onednn_linears`). ``'auto'`` (the
            default) turns it on unless the CPU is Intel's: the update of a 12-layer transformer
            of the cin model's width (1536) ran 1.10x as fast with it on an AMD EPYC (README,
            "Performance"); ``tools/benchmark.py --linear-kernels-ab`` measures it. True / False
            force it. Grad-free forwards are unaffected.

    Attributes:
        file_sources: official release folder -> where it is published.

    A release folder's ``configs/*-project.yaml`` next to ``checkpoints/`` is read (YAML, data
    only) and compared with these settings when its checkpoint is loaded: a differing field (e.g.
    ``n_head``, which no tensor fixes) fails with one line.
    """

    file_sources: dict[str, str] = TAMING_FILE_SOURCES

    def __init__(self, *, arch: Union[str, dict] = 'cin', image_size: int = 256,
                 num_classes: int = 1000, vocab_size: int = 16384,
                 block_size: Optional[int] = None, checkpoint: Optional[str] = None,
                 tokenizer: Union[str, dict] = 'f16-16384',
                 tokenizer_checkpoint: Optional[str] = None, dropout: float = 0.0,
                 onednn_linears: Union[bool, str] = 'auto'):
        super().__init__()
        self.vq: VQGAN = build_vqgan(tokenizer)
        if self.vq.codebook_size != vocab_size:
            raise ValueError(f'tokenizer codebook has {self.vq.codebook_size} codes, but '
                             f'vocab_size={vocab_size}: set vocab_size to the codebook size')
        if image_size % self.vq.downsample:
            raise ValueError(f'image_size={image_size} is not a multiple of the tokenizer\'s '
                             f'downsample factor {self.vq.downsample}')
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                or not 0 < num_classes <= vocab_size:
            raise ValueError(f'num_classes={num_classes!r} must be an int in [1, vocab_size='
                             f'{vocab_size}]: the class id is fed as a token id (Labelator)')
        for p in self.vq.parameters():
            p.requires_grad_(False)
        self.image_size, self.num_classes = image_size, num_classes
        grid = image_size // self.vq.downsample
        self.grid_size = grid
        fields = MinGPTConfig.from_arch(arch, vocab_size=1, block_size=1).arch_dict()
        if dropout:
            fields.update(embd_pdrop=dropout, resid_pdrop=dropout, attn_pdrop=dropout)
        self.cfg = MinGPTConfig(**fields, vocab_size=vocab_size,
                                block_size=block_size or grid * grid)
        if self.cfg.block_size < grid * grid:
            raise ValueError(f'block_size={self.cfg.block_size} is smaller than 1 class token + '
                             f'{grid * grid - 1} fed image tokens: set block_size >= '
                             f'{grid * grid} (or None)')
        self.transformer = MinGPT(self.cfg)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint, tokenizer=tokenizer_checkpoint is None)
        if tokenizer_checkpoint is not None:
            self.load_tokenizer(tokenizer_checkpoint)

        onednn_linears_option('VQGANTransformerPolicy', self.transformer, onednn_linears)
        register_raster_action_axis(self, grid)
        exclude_frozen_submodules(self, _FROZEN)
        self.train(True)

    # ---- sizes --------------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        """A = T, the image tokens per sample."""
        return self.grid_size * self.grid_size

    @property
    def device(self) -> torch.device:
        return self.transformer.tok_emb.weight.device

    def train(self, mode: bool = True) -> 'VQGANTransformerPolicy':
        super().train(mode)
        self.vq.eval()                     # the frozen tokenizer never leaves eval mode
        return self

    def trainable_parameters(self):
        return [p for p in self.transformer.parameters() if p.requires_grad]

    # ---- checkpoints --------------------------------------------------------------------
    def load_checkpoint(self, path: str, *, tokenizer: bool = True) -> None:
        """Load an official cin ``last.ckpt`` (or a bare transformer file) strictly; with
        ``tokenizer`` also its first stage, if it holds one."""
        state = read_official_state_dict(path, what='VQGAN transformer')
        checked = check_release_config(
            path, transformer=dict(vocab_size=self.cfg.vocab_size,
                                   block_size=self.cfg.block_size, n_layer=self.cfg.n_layer,
                                   n_head=self.cfg.n_head, n_embd=self.cfg.n_embd),
            first_stage=self._tokenizer_fields() if tokenizer else None)
        if checked:
            _log(f'{path}: architecture checked against {checked}')
        gpt, first = split_net2net(state, source=f'VQGAN transformer file {path!r}')
        dropped = load_transformer(self.transformer, gpt,
                                   source=f'VQGAN transformer file {path!r} (transformer.*)')
        if first is not None and tokenizer:
            dropped += load_first_stage(self.vq, first,
                                        source=f'VQGAN transformer file {path!r} '
                                               f'(first_stage_model.*)')
        elif tokenizer:
            _log(f'{path} holds no first stage (first_stage_model.*): the VQGAN tokenizer keeps '
                 f'its random weights; set tokenizer_checkpoint to a VQGAN file')
        if dropped:
            _log(f'{path}: dropped {len(dropped)} derived / training-only tensors (causal masks, '
                 f'first-stage losses), e.g. {dropped[0]}')

    def _tokenizer_fields(self) -> dict:
        """The tokenizer's official ``first_stage_config`` values (for the release check)."""
        vq = self.vq
        return dict(n_embed=vq.codebook_size, embed_dim=vq.embed_dim, **vq.ddconfig)

    def load_tokenizer(self, path: str) -> None:
        """Load a standalone VQGAN file (or the first stage of a cin file) strictly."""
        state = read_official_state_dict(path, what='VQGAN tokenizer')
        check_release_config(path, transformer={}, first_stage=self._tokenizer_fields())
        if any(k.startswith('first_stage_model.') for k in state):
            _, state = split_net2net(state, source=f'VQGAN tokenizer file {path!r}')
        load_first_stage(self.vq, state, source=f'VQGAN tokenizer file {path!r}')

    # ---- conditions ---------------------------------------------------------------------
    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Check the class ids and move them to the model's device."""
        if cond.class_ids is None:
            raise ValueError('the VQGAN transformer is class-conditional: Conditions need '
                             'class_ids')
        ids = cond.class_ids.to(self.device)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_classes):
            raise ValueError(f'class ids must be in [0, {self.num_classes}), got '
                             f'[{int(ids.min())}, {int(ids.max())}]')
        return dataclasses.replace(cond, class_ids=ids)

    @staticmethod
    def _no_cfg(what: str) -> ValueError:
        return ValueError(f'{what}: the taming VQGAN transformer has no unconditional (null) '
                          f'class to guide with: set the sampler\'s cfg_scale=1.0')

    def sequence(self, cond: Conditions, tokens: Optional[Tensor]) -> Tensor:
        """Token ids ``[B, 1 + m]``: the class token, then ``tokens [B, m]`` (or nothing)."""
        c = cond.class_ids.view(-1, 1)
        return c if tokens is None else torch.cat([c, tokens], dim=1)

    # ---- the Policy interface -----------------------------------------------------------
    def evaluate(self, rollout: Rollout, *, spec: LogprobSpec,
                 with_entropy: bool = True) -> PolicyEval:
        """Teacher-forced log-probs and entropies ``[B, T]`` of ``rollout.actions`` under
        ``spec`` (temperature; top-k / top-p kept set in ``'rollout'`` mode), in ONE forward."""
        if spec.uses_cfg:
            raise self._no_cfg(f'evaluate with cfg_scale={spec.cfg_scale}')
        cond = self.encode_conditions(rollout.cond)
        tokens = rollout.actions.to(self.device)                       # [B, T]
        b, t = tokens.shape
        logits = self.transformer(self.sequence(cond, tokens[:, :-1]))  # [B, T, V]
        logp, ent = logp_entropy_under_spec(logits.view(1, b * t, -1), tokens, spec,
                                            with_entropy=with_entropy)
        return PolicyEval(logp=logp, entropy=ent)

    def flops_per_sample(self, spec: Optional[LogprobSpec] = None) -> int:
        """Matmul FLOPs of one teacher-forced :meth:`evaluate` forward, per sample (two per
        multiply-add; the conventions of LlamaGen's ``teacher_forced_flops``): over the ``S = T``
        input positions, per layer ``2 S C (4 C)`` for ``key, query, value, proj``, ``2 S C (8 C)``
        for the MLP and ``2 C S (S + 1)`` for ``QK^T`` and ``AV`` over the causal pairs; the head
        ``2 T C V``. Embeddings, norms and softmaxes are not counted; ``spec`` is accepted for the
        interface (no guidance: never doubled)."""
        s, c, cfg = self.num_actions, self.cfg.n_embd, self.cfg
        per_layer = 2 * s * c * 12 * c + 2 * c * s * (s + 1)
        return cfg.n_layer * per_layer + 2 * s * c * cfg.vocab_size

    @torch.no_grad()
    def decode(self, rollout: Rollout, *, chunk: Optional[int] = None) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] of the rollout's tokens (VQGAN decoder, ``chunk``
        images at a time; default
        :func:`~vargo.components.modules.conv_layout.decode_chunk_size`)."""
        return decode_in_chunks(self.vq.decode, rollout.actions.to(self.device),
                                chunk or decode_chunk_size(self.image_size))

    def embed_actions(self, rollout: Rollout) -> Tensor:
        """``[B, T, embed_dim]`` L2-normalised VQGAN code vectors of the sampled tokens (STAGE's
        q_{i,t}, docs/methods/stage.md)."""
        with torch.no_grad():
            book = F.normalize(self.vq.quantize.embedding.weight, dim=-1)
            return book[rollout.actions.to(self.device)]

    def rollout_axes(self) -> tuple[Tensor, Tensor]:
        """``(action_step [T], action_pos [T, 2])`` of the raster order."""
        return self.action_step, self.action_pos

    # ---- raster decoding (the protocol ARSampler drives) -------------------------------------
    def decoding_cache_key(self, batch: int) -> Hashable:
        """What fixes the KV cache's shape for ``batch`` rows."""
        w, cfg = self.transformer.tok_emb.weight, self.cfg
        return (batch, cfg.n_layer, cfg.n_head, cfg.head_dim, self.num_actions, w.dtype,
                w.device)

    def new_decoding_cache(self, batch: int) -> StaticKVCache:
        """A static KV cache for ``batch`` rows over the class token and ``T - 1`` fed tokens."""
        return self.transformer.new_cache(batch, max_len=self.num_actions)

    def decoding_modules(self) -> list[torch.nn.Module]:
        """The transformer: what ``prefill`` and ``decode_step`` run (its linear layers use
        packed weights during a rollout, see ``ARSampler(packed_weights=...)``)."""
        return [self.transformer]

    def prefill(self, cond: Conditions, given: Optional[Tensor], cache: StaticKVCache, *,
                with_null: bool) -> Tensor:
        """Run the class token and the kept tokens ``given [B, m]`` (or None) from position 0,
        filling ``cache``; fp32 logits ``[B, m + 1, V]``, row ``j`` predicting token ``j``."""
        if with_null:
            raise self._no_cfg('sampling with a null condition (cfg_scale != 1)')
        g = given if given is not None and given.shape[1] else None
        return self.transformer.forward_cached(self.sequence(cond, g), 0, cache)

    def decode_step(self, tokens: Tensor, index: int, cache: StaticKVCache) -> Tensor:
        """Feed token ``index`` (``tokens [B]``, sequence position ``1 + index``) and return the
        fp32 logits ``[B, V]`` of token ``index + 1``."""
        return self.transformer.forward_cached(tokens.view(-1, 1), 1 + index, cache)[:, 0]

    # ---- pretraining --------------------------------------------------------------------
    def pretrain_loss(self, tokens: Tensor, cond: Conditions) -> Tensor:
        """Next-token cross-entropy of ``tokens [B, T]`` given the class token (official
        ``Net2NetTransformer.shared_step`` with ``pkeep=1``)."""
        cond = self.encode_conditions(cond)
        tokens = tokens.to(self.device)
        logits = self.transformer(self.sequence(cond, tokens[:, :-1]))
        return F.cross_entropy(logits.flatten(0, 1), tokens.reshape(-1))
