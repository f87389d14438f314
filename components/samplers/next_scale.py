"""Next-scale sampling with a static KV cache (VAR family).

Faithful to ``VAR.autoregressive_infer_cfg`` of FoundationVision/VAR (docs/methods/var_rl.md):
the start tokens (class embedding + ``pos_start`` + level/position embeddings) predict scale
0; each scale's tokens are sampled at once (conditionally independent given coarser scales);
their code vectors are added to ``f_hat`` through the scale's Phi
(``get_next_autoregressive_input``) and the area-downsampled ``f_hat`` is the next scale's input.
CFG is ONE doubled batch ``[cond; null]`` with the official ramp ``logits = (1 + t) cond - t
uncond``, ``t = (cfg_scale - 1) si / (S - 1)`` (vargo's ``cfg_scale`` is ``1 + cfg`` of the
official code, see :mod:`vargo.components.policies.var`); then ``/ temperature``, top-k then
top-p with VAR's rule, softmax, a draw per token. With the same weights, settings and torch seed
and ``rng=None`` the tokens equal the official sampler's up to float rounding of the logits.

Noise: with ``rng`` (a :class:`vargo.core.rng.BatchRNG`) one uniform per sample and token
(``rng.rand(L)``) is drawn for the *global* batch before the loop and turned into a token by
inverse-CDF sampling, so a batch split over ranks samples what one process samples; without
``rng`` the official ``torch.multinomial`` draw on torch's global generator is used.

Speed (not numbers) differs from the official loop: the KV cache is allocated once per batch
shape (keys/values written in place, no ``torch.cat`` per scale) and reused across rollouts.

Policy protocol: :class:`NextScaleDecoding` (what :class:`NextScaleSampler` calls; a policy
implements it by having its members and never imports the sampler;
:class:`~vargo.components.policies.var.VARPolicy` does). The sampler holds the loop and the
sampling distribution (CFG ramp, truncation, draws, log-probs); the policy holds the model: the
scale schedule, the class condition, the transformer's inputs and logits, the residual canvas
``f_hat`` of the VQVAE and the rollout's family extras. The rollout preamble (group size, prefix
checks, eval mode, conditions, ``rng`` check, ``group_ids``, decoding) is the shared template of
:class:`~vargo.components.samplers.base.RolloutSampler`.
"""
from __future__ import annotations

from typing import Any, Hashable, Optional, Protocol, Sequence

import torch
from torch import Tensor

from vargo.core.interfaces import Policy
from vargo.core.registry import SAMPLERS
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, FamilyExtras, LogprobSpec, Rollout

from ..modules.categorical import (categorical_logp_entropy, inverse_cdf_sample,
                                   var_truncation_keep_mask)
from .cached import KVCachedSampler
from .checks import check_bool, check_sampling

__all__ = ['NextScaleSampler', 'NextScaleDecoding']


class NextScaleDecoding(Protocol):
    """The decoding protocol of next-scale policies (what :class:`NextScaleSampler` calls;
    :class:`~vargo.components.policies.var.VARPolicy` implements it, and a new next-scale family
    implements it to be sampled by ``NextScaleSampler``).

    Tokens are concatenated scale by scale, coarse to fine (``L`` in all; scale ``si`` holds
    positions ``scale_spans[si]``). With ``with_null`` the batch is doubled ``[cond; null]``
    (CFG); ``B2`` is the doubled size, ``B`` the sample count. The *canvas* is the policy's
    running sum of the sampled scales (VAR: the VQVAE's ``f_hat``), from which the next scale's
    input is derived.
    """

    #: L, the tokens of a sample (all scales)
    num_actions: int
    #: S, the scales (what ``stop_at_step`` counts)
    num_steps: int
    #: where the policy's parameters live
    device: torch.device
    #: ``(begin, end)`` token positions of each scale, coarse to fine
    scale_spans: Sequence[tuple[int, int]]

    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Check ``cond`` and move what the model needs to its device; no grad."""

    def rollout_axes(self) -> tuple[Tensor, Tensor]:
        """``action_step [L]`` (the scale of each token) and ``action_pos [L, k]``."""

    def rollout_extras(self) -> Optional[FamilyExtras]:
        """The family extras of a rollout (shared by all its samples), or None."""

    def decode(self, rollout: Rollout) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] of the rollout's tokens."""

    def decoding_cache_key(self, batch: int) -> Hashable:
        """What determines the cache's shape for ``batch`` rows (equal keys: reuse it)."""

    def new_decoding_cache(self, batch: int) -> Any:
        """A cache for ``batch`` rows (``2 B`` with CFG) and all ``L`` positions."""

    def scale_condition(self, cond: Conditions, *, with_null: bool) -> Tensor:
        """The condition vectors ``[B2, D]`` every scale is conditioned on (conditional rows
        first)."""

    def start_inputs(self, cond_BD: Tensor) -> Tensor:
        """Transformer inputs ``[B2, l_0, C]`` of scale 0 (the start tokens)."""

    def new_canvas(self, batch: int, like: Tensor) -> Tensor:
        """An empty canvas for ``batch`` samples (dtype and device of ``like``)."""

    def add_scale(self, si: int, canvas: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Add scale ``si``'s token ids ``[B, l_si]`` to ``canvas`` (in place); return the
        canvas and the next scale's input ``[B, l_{si+1}, Cvae]`` (unused after the last)."""

    def scale_inputs(self, si: int, scale_input: Tensor) -> Tensor:
        """Transformer inputs ``[B, l_si, C]`` of scale ``si`` from its input
        ``[B, l_si, Cvae]`` (as :meth:`add_scale` returns it)."""

    def prefix_inputs(self, cond_BD: Tensor, scale_input: Optional[Tensor]) -> Tensor:
        """Transformer inputs ``[B2, l_0 + n, C]`` of the start tokens followed by the inputs
        ``[B2, n, Cvae]`` of the next scales (None: the start tokens only)."""

    def scale_logits(self, x: Tensor, cond_BD: Tensor, cache: Any, *, start: int,
                     block_causal: bool = False) -> Tensor:
        """fp32 logits ``[B2, l, V]`` of inputs ``x [B2, l, C]`` at positions ``start ..
        start + l - 1``, writing their keys and values into ``cache``; ``block_causal``: the
        positions span several scales and see only their own and coarser ones (a prefix
        prefill), else they all see each other and the cache."""


def _ramp(cfg_scale: float, num_scales: int) -> list[float]:
    """The guidance ``t`` of each scale as host floats, in the official order of operations
    (``ratio = si / (S - 1)``, ``t = cfg * ratio``)."""
    return [(cfg_scale - 1.0) * (si / (num_scales - 1)) for si in range(num_scales)]


@SAMPLERS.register_module()
class NextScaleSampler(KVCachedSampler):
    """Samples VAR token pyramids scale by scale and records their log-probs (a policy
    implementing :class:`NextScaleDecoding`).

    Args:
        cfg_scale: guidance weight at the last scale (``1 + cfg`` of the official code; 1 = no
            guidance, no doubled batch). Scale ``si`` uses ``1 + (cfg_scale - 1) si / (S - 1)``.
        temperature: softmax temperature (> 0; 1 = official).
        top_k: keep the k most likely tokens (0 = off).
        top_p: nucleus threshold (1 = off; the official ``top_p=0`` "off" is 1 here).
        logprob_cfg: which distribution ``logp_old`` is recorded under (docs/methods/grpo.md):
            ``'none'`` = ``log_softmax(cond_logits / temperature)`` (the papers' choice),
            ``'rollout'`` = exactly the distribution sampled from.
        decode_images: decode ``rollout.images`` with the policy's VQVAE.
        packed_weights: run the ``nn.Linear`` layers of the policy's ``decoding_modules()`` on
            weights packed once per rollout (CPU, fp32; see
            :class:`~vargo.components.samplers.cached.KVCachedSampler`).

    Examples:
        >>> sampler = NextScaleSampler(cfg_scale=2.5, temperature=1.0, top_k=900, top_p=0.96,
        ...                            logprob_cfg='none')
        >>> sampler.logprob_spec().top_k
        900
    """

    protocol = NextScaleDecoding
    step_unit = 'scales'

    def __init__(self, *, cfg_scale: float, temperature: float, top_k: int, top_p: float,
                 logprob_cfg: str, decode_images: bool = True, packed_weights: bool = True):
        check_sampling('NextScaleSampler', cfg_scale=cfg_scale, temperature=temperature,
                       logprob_cfg=logprob_cfg, top_k=top_k, top_p=top_p)
        check_bool('NextScaleSampler', 'decode_images', decode_images)
        check_bool('NextScaleSampler', 'packed_weights', packed_weights)
        super().__init__(LogprobSpec(mode=logprob_cfg, cfg_scale=float(cfg_scale),
                                     cfg_interval=None, temperature=float(temperature),
                                     top_k=int(top_k), top_p=float(top_p)),
                         decode_images=decode_images, packed_weights=packed_weights)

    def num_steps_of(self, policy: Policy) -> int:
        """The scales of a rollout of ``policy`` (what ``stop_at_step`` counts)."""
        return policy.num_steps

    def _sample(self, policy: Policy, cond: Conditions, *, rng: Optional[BatchRNG],
                prefix: Optional[Rollout], kept: int, group_size: int) -> Rollout:
        """Token pyramids of ``cond`` (one per row): the first ``kept`` scales taken from
        ``prefix`` (each sample repeated ``group_size`` times, ``action_mask`` False there,
        ``logp_old`` recomputed teacher-forced under :meth:`logprob_spec`), the rest sampled
        with noise ``rng.rand(L)`` or ``torch.multinomial``.

        Returns a :class:`Rollout` with ``actions [B, L]`` long (scales concatenated coarse to
        fine, raster order inside a scale), ``logp_old [B, L]``, ``action_mask [B, L]``, the
        policy's ``rollout_axes()`` and ``rollout_extras()``, ``prefix_steps``, ``logp_old_cfg``.
        """
        dev = policy.device
        given = None
        if prefix is not None:
            kept_tokens = policy.scale_spans[kept][0]
            given = (prefix.actions[:, :kept_tokens].to(dev)
                     .repeat_interleave(group_size, dim=0))
        uniforms = None if rng is None else rng.rand(policy.num_actions).to(dev)   # [B, L]
        rows = len(cond) * (2 if self._spec.cfg_scale != 1.0 else 1)
        with self._packs.prepare(policy, rows).active():
            tokens, logp = self._generate(policy, cond, given, kept, uniforms)
        b = tokens.shape[0]
        step, pos = policy.rollout_axes()
        action_mask = (step >= kept).unsqueeze(0).expand(b, -1).clone()
        return Rollout(cond=cond, group_ids=torch.arange(b, device=dev), actions=tokens,
                       logp_old=logp, action_mask=action_mask, action_step=step,
                       action_pos=pos, images=None, extras=policy.rollout_extras(),
                       prefix_steps=kept, logp_old_cfg=self._spec.mode)

    def _generate(self, policy: Policy, cond: Conditions, given: Optional[Tensor], kept: int,
                  uniforms: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Tokens ``[B, L]`` and log-probs ``[B, L]``; the first ``kept`` scales are ``given``
        (``[B, kept tokens]``), the rest sampled (noise ``uniforms [B, L]`` or multinomial)."""
        spec = self._spec
        spans, num_scales = policy.scale_spans, policy.num_steps
        use_cfg = spec.cfg_scale != 1.0
        cond_BD = policy.scale_condition(cond, with_null=use_cfg)            # [B2, D]
        b2 = cond_BD.shape[0]
        b = b2 // 2 if use_cfg else b2
        dev = cond_BD.device
        ramp = _ramp(spec.cfg_scale, num_scales)
        cache = self._get_cache(policy, b2)
        num_tokens = policy.num_actions
        tokens = torch.empty(b, num_tokens, dtype=torch.long, device=dev)
        logp = torch.empty(b, num_tokens, dtype=torch.float32, device=dev)
        canvas = policy.new_canvas(b, cond_BD)

        def double(x):
            return torch.cat([x, x]) if use_cfg else x

        if kept:
            n_given = given.shape[1]
            nxt = []
            for si in range(kept):          # the canvas of the given scales, and their next inputs
                lo, hi = spans[si]
                canvas, inp = policy.add_scale(si, canvas, given[:, lo:hi])
                nxt.append(inp)
            x = policy.prefix_inputs(cond_BD, double(torch.cat(nxt[:-1], dim=1)) if kept > 1
                                     else None)
            logits = policy.scale_logits(x, cond_BD, cache, start=0, block_causal=True)
            tokens[:, :n_given] = given
            logp[:, :n_given] = self._given_logp(logits, given, b, use_cfg, ramp,
                                                 policy.rollout_axes()[0][:n_given])
            x = double(policy.scale_inputs(kept, nxt[-1]))
        else:
            x = policy.start_inputs(cond_BD)
        for si in range(kept, num_scales):
            lo, hi = spans[si]
            logits = policy.scale_logits(x, cond_BD, cache, start=lo)           # [B2, l, V]
            tok, lp = self._draw_scale(logits, b, use_cfg, ramp[si],
                                       None if uniforms is None else uniforms[:, lo:hi])
            tokens[:, lo:hi] = tok
            logp[:, lo:hi] = lp
            canvas, inp = policy.add_scale(si, canvas, tok)
            if si != num_scales - 1:
                x = double(policy.scale_inputs(si + 1, inp))
        return tokens, logp

    def _draw_scale(self, logits: Tensor, b: int, use_cfg: bool, t: float,
                u: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """One scale: ids ``[B, l]`` and their log-probs ``[B, l]`` under the recorded spec
        (``u [B, l]`` uniforms for inverse-CDF sampling, or None for ``torch.multinomial``)."""
        spec = self._spec
        l, v = logits.shape[1], logits.shape[2]
        cond = logits[:b]
        if use_cfg:   # the official expression (scale 0: t = 0 gives cond exactly)
            z = (1 + t) * cond - t * logits[b:]
        else:
            z = cond.clone()
        if spec.temperature != 1.0:
            z.div_(spec.temperature)
        z = z.view(b * l, v)
        keep = var_truncation_keep_mask(z, spec.top_k, spec.top_p)
        if keep is not None:
            z.masked_fill_(~keep, float('-inf'))
        probs = torch.softmax(z, dim=-1)
        if u is None:
            tok = torch.multinomial(probs, num_samples=1, replacement=True)       # [B*l, 1]
        else:
            tok = inverse_cdf_sample(probs, u.reshape(b * l, 1))
        if spec.mode == 'none':
            z = cond.reshape(b * l, v) / spec.temperature
        lp = z.gather(1, tok)[:, 0] - torch.logsumexp(z, dim=-1)
        return tok.view(b, l), lp.view(b, l)

    def _given_logp(self, logits: Tensor, given: Tensor, b: int, use_cfg: bool,
                    ramp: list[float], steps: Tensor) -> Tensor:
        """Teacher-forced log-probs ``[B, n]`` of the kept prefix tokens under
        :meth:`logprob_spec` (the distribution ``policy.evaluate`` computes)."""
        spec = self._spec
        n = given.shape[1]
        rollout_mode = spec.mode == 'rollout'
        z = logits[:b]
        if use_cfg and rollout_mode:
            t = torch.tensor(ramp, dtype=z.dtype, device=z.device)[steps][None, :, None]
            z = (1 + t) * z - t * logits[b:]
        lp, _ = categorical_logp_entropy(
            z.reshape(1, b * n, -1), given.reshape(-1), temperature=spec.temperature,
            top_k=spec.top_k if rollout_mode else 0, top_p=spec.top_p if rollout_mode else 1.0,
            with_entropy=False, keep_fn=var_truncation_keep_mask)
        return lp.view(b, n)
