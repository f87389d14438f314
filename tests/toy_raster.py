"""A minimal raster-order policy driven by the shared ARSampler (tests only).

One causal self-attention layer over ``[class, x_0 .. x_{T-2}]`` (one condition position, the
null class is row ``num_classes`` of the class table), learned position embeddings and its own
key/value cache. It implements :class:`vargo.core.interfaces.Policy` and the
:class:`~vargo.components.samplers.ar_sampler.RasterDecoding` protocol without importing any
family: the example of what a new raster family provides to be sampled by ``ARSampler``.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vargo.components.modules.categorical import logp_entropy_under_spec
from vargo.core.interfaces import Policy
from vargo.core.types import Conditions, LogprobSpec, PolicyEval, Rollout


class ToyRasterCache:
    """Keys and values ``[B, 1 + T, D]`` of the one attention layer."""

    def __init__(self, batch: int, length: int, dim: int, device: torch.device):
        self.k = torch.zeros(batch, length, dim, device=device)
        self.v = torch.zeros(batch, length, dim, device=device)


class ToyRasterPolicy(Policy):
    """``side x side`` tokens of ``vocab_size`` codes, raster order, one attention layer."""

    def __init__(self, *, num_classes: int = 4, side: int = 3, vocab_size: int = 8,
                 dim: int = 16):
        super().__init__()
        self.side, self.vocab_size, self.num_classes = side, vocab_size, num_classes
        self.num_actions = side * side
        self.class_emb = nn.Embedding(num_classes + 1, dim)
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Parameter(torch.randn(1 + self.num_actions, dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab_size)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    # ---- the model -----------------------------------------------------------------------
    def _layer(self, x: Tensor, start: int, cache: ToyRasterCache = None) -> Tensor:
        """Logits ``[B, S, V]`` of inputs ``x [B, S, D]`` at positions ``start ..``; with a
        cache the keys/values are stored and attention covers positions ``0 .. start+S-1``."""
        s = x.shape[1]
        h = x + self.pos_emb[start:start + s]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        if cache is not None:
            cache.k[:, start:start + s], cache.v[:, start:start + s] = k, v
            k, v = cache.k[:, :start + s], cache.v[:, :start + s]
        att = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None or start == 0)
        return self.head(h + att).float()

    def _class_inputs(self, cond: Conditions, with_null: bool) -> Tensor:
        """``[B2, 1, D]`` class embeddings, followed by the null class's with ``with_null``."""
        ids = cond.class_ids
        if with_null:
            ids = torch.cat([ids, torch.full_like(ids, self.num_classes)])
        return self.class_emb(ids).unsqueeze(1)

    def teacher_forced_logits(self, cond: Conditions, tokens: Tensor, *,
                              with_null: bool) -> Tensor:
        """``[B2, T_in + 1, V]`` logits of a full causal forward (no cache)."""
        if with_null:
            tokens = torch.cat([tokens, tokens])
        x = torch.cat([self._class_inputs(cond, with_null), self.tok_emb(tokens)], dim=1)
        return self._layer(x, 0)

    # ---- Policy --------------------------------------------------------------------------
    def encode_conditions(self, cond: Conditions) -> Conditions:
        return dataclasses.replace(cond, class_ids=cond.class_ids.to(self.device))

    def evaluate(self, rollout: Rollout, *, spec: LogprobSpec,
                 with_entropy: bool = True) -> PolicyEval:
        """Teacher-forced log-probs and entropies ``[B, T]`` under ``spec`` (one forward)."""
        cond = self.encode_conditions(rollout.cond)
        tokens = rollout.actions.to(self.device)
        b, t = tokens.shape
        logits = self.teacher_forced_logits(cond, tokens[:, :-1], with_null=spec.uses_cfg)
        logp, ent = logp_entropy_under_spec(logits.view(2 if spec.uses_cfg else 1, b * t, -1),
                                            tokens, spec, with_entropy=with_entropy)
        return PolicyEval(logp=logp, entropy=ent)

    def decode(self, rollout: Rollout) -> Tensor:
        """Grey ``[B, 3, side, side]`` images, brightness = token / (V - 1)."""
        b = rollout.actions.shape[0]
        img = rollout.actions.float().div(self.vocab_size - 1).view(b, 1, self.side, self.side)
        return img.expand(-1, 3, -1, -1)

    def rollout_axes(self) -> tuple[Tensor, Tensor]:
        t = torch.arange(self.num_actions, device=self.device)
        return t, torch.stack([t // self.side, t % self.side], dim=1)

    # ---- RasterDecoding ------------------------------------------------------------------
    def decoding_cache_key(self, batch: int):
        return batch, self.num_actions, self.device

    def new_decoding_cache(self, batch: int) -> ToyRasterCache:
        return ToyRasterCache(batch, 1 + self.num_actions, self.pos_emb.shape[1], self.device)

    def prefill(self, cond: Conditions, given, cache: ToyRasterCache, *,
                with_null: bool) -> Tensor:
        x = self._class_inputs(cond, with_null)
        if given is not None:
            g2 = torch.cat([given, given]) if with_null else given
            x = torch.cat([x, self.tok_emb(g2)], dim=1)
        return self._layer(x, 0, cache)

    def decode_step(self, tokens: Tensor, index: int, cache: ToyRasterCache) -> Tensor:
        return self._layer(self.tok_emb(tokens).unsqueeze(1), 1 + index, cache)[:, 0]
