"""Raster-order autoregressive sampling with a static KV cache (LlamaGen family).

Faithful to ``autoregressive/models/generate.py`` of FoundationVision/LlamaGen
(docs/methods/grpo.md): prefill the condition positions, then one token per step; CFG as ONE
doubled batch ``[cond; null]`` with ``logits = uncond + (cond - uncond) * cfg_scale``;
``/ temperature``; top-k then top-p filtering; ``softmax``; ``torch.multinomial``. With the same
seed, weights and settings the tokens equal the official ``generate()``'s up to float rounding of
the logits.

Noise: with ``rng`` (a :class:`vargo.core.rng.BatchRNG`, the runner's) one uniform per sample and
token is drawn for the *global* batch before the loop and turned into a token by inverse-CDF
sampling (same distribution as ``torch.multinomial``), so a batch split over ranks samples exactly
what one process samples; without ``rng`` the official ``torch.multinomial`` draw is used.

What is different from the official loop (speed, not numbers): the KV cache is allocated once per
batch shape and reused across rollouts; attention reads the cache *slice* of the filled
positions (no mask over the whole cache, no per-step mask indexing); the RoPE rows are views of a
precomputed table; the CFG input is written in place into a preallocated ``[2B]`` buffer; the
per-step CFG decision comes from a host list computed before the loop, so the loop holds no host
synchronisation.

Policy protocol: :class:`ARSampler` calls only the members of :class:`RasterDecoding`
(``num_actions``, ``device``, ``encode_conditions``, ``rollout_axes``, ``decode``,
``decoding_cache_key``, ``new_decoding_cache``, ``prefill``, ``decode_step``); the condition
positions, embeddings and cache layout are the policy's business.
:class:`~vargo.components.policies.llamagen.LlamaGenPolicy` implements it; a new raster family
implements it to be sampled here (``tests/toy_raster.py`` is a minimal example). The rollout
template (group and prefix checks, eval mode, conditions, ``group_ids``, images) is
:class:`~vargo.components.samplers.base.RolloutSampler`'s.
"""
from __future__ import annotations

from typing import Any, ClassVar, Hashable, Optional, Protocol, Sequence

import torch
from torch import Tensor

from vargo.core.interfaces import Policy
from vargo.core.registry import SAMPLERS
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, LogprobSpec, Rollout

from ..modules.categorical import (categorical_logp_entropy, cfg_active_steps, cfg_mix,
                                   inverse_cdf_sample, truncation_keep_mask)
from .cached import KVCachedSampler
from .checks import check_bool, check_real, check_sampling

__all__ = ['ARSampler', 'RasterDecoding']


class RasterDecoding(Protocol):
    """The decoding protocol of raster-order autoregressive policies (what :class:`ARSampler`
    calls; :class:`~vargo.components.policies.llamagen.LlamaGenPolicy` implements it, and a
    new raster family implements it to be sampled by ``ARSampler``).

    Positions are token indices ``0 .. T - 1``; the condition positions are the policy's own
    business. With ``with_null`` the batch is doubled ``[cond; null]`` (CFG).
    """

    #: T, the tokens of a sample
    num_actions: int
    #: where the policy's parameters live
    device: torch.device

    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Fill what the model needs from ``cond`` (text features, ...); no grad."""

    def rollout_axes(self) -> tuple[Tensor, Tensor]:
        """``action_step [T]`` and ``action_pos [T, 2]`` of a rollout."""

    def decode(self, rollout: Rollout) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1]."""

    def decoding_cache_key(self, batch: int) -> Hashable:
        """What determines the cache's shape for ``batch`` rows (equal keys: reuse it)."""

    def new_decoding_cache(self, batch: int) -> Any:
        """A cache for ``batch`` rows (``2 B`` with CFG) and every position."""

    def prefill(self, cond: Conditions, given: Optional[Tensor], cache: Any, *,
                with_null: bool) -> Tensor:
        """Run the condition positions and the kept tokens ``given [B, m]`` (or None), filling
        ``cache``; return fp32 logits ``[B2, m + 1, V]`` (row ``j`` predicts token ``j``;
        ``B2 = 2 B`` with ``with_null``: conditional rows first)."""

    def decode_step(self, tokens: Tensor, index: int, cache: Any) -> Tensor:
        """Feed token ``index`` (``tokens [B2]``), return fp32 logits ``[B2, V]`` of token
        ``index + 1``."""

    # optional: decoding_modules() -> list[nn.Module], the modules prefill/decode_step run;
    # their nn.Linear layers then use packed weights during a rollout (ARSampler's
    # packed_weights). A policy without it decodes with plain F.linear.


@SAMPLERS.register_module()
class ARSampler(KVCachedSampler):
    """Samples raster-order token sequences and records their log-probs.

    Args:
        cfg_scale: classifier-free guidance scale (1 = no guidance, no doubled batch).
        temperature: softmax temperature (> 0).
        top_k: keep the k most likely tokens (0 = off).
        top_p: nucleus threshold (1 = off).
        logprob_cfg: which distribution ``logp_old`` is recorded under (docs/methods/grpo.md):
            ``'none'`` = ``log_softmax(cond_logits / temperature)`` (the papers' choice),
            ``'rollout'`` = exactly the distribution sampled from.
        cfg_interval: ``(lo, hi)`` fractions of the token sequence where CFG is applied (see
            :func:`~vargo.components.modules.categorical.cfg_active_steps`), None = everywhere.
        decode_images: decode ``rollout.images`` with the policy's ``decode``.
        packed_weights: run the ``nn.Linear`` layers of the policy's ``decoding_modules()`` on
            weights packed once per rollout for small-batch products (CPU, fp32; see
            :class:`~vargo.components.samplers.cached.KVCachedSampler`); False = plain
            ``F.linear``.

    Examples:
        >>> sampler = ARSampler(cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0,
        ...                     logprob_cfg='none')
        >>> sampler.logprob_spec().mode
        'none'
    """

    #: what a policy must implement to be sampled here
    protocol: ClassVar[type] = RasterDecoding
    step_unit: ClassVar[str] = 'tokens'

    def __init__(self, *, cfg_scale: float, temperature: float, top_k: int, top_p: float,
                 logprob_cfg: str, cfg_interval: Optional[Sequence[float]] = None,
                 decode_images: bool = True, packed_weights: bool = True):
        check_sampling('ARSampler', cfg_scale=cfg_scale, temperature=temperature,
                       logprob_cfg=logprob_cfg, top_k=top_k, top_p=top_p)
        check_bool('ARSampler', 'decode_images', decode_images)
        check_bool('ARSampler', 'packed_weights', packed_weights)
        if cfg_interval is not None:
            if isinstance(cfg_interval, (str, bytes)) or not hasattr(cfg_interval, '__len__') \
                    or len(cfg_interval) != 2:
                raise ValueError(f'ARSampler cfg_interval={cfg_interval!r} must be (lo, hi) with '
                                 f'0 <= lo <= hi <= 1 (fractions of the token sequence), or None')
            for x in cfg_interval:
                check_real('ARSampler', 'cfg_interval', x, lo=0.0, hi=1.0)
            cfg_interval = tuple(float(x) for x in cfg_interval)
            if len(cfg_interval) != 2 or not 0 <= cfg_interval[0] <= cfg_interval[1] <= 1:
                raise ValueError(f'cfg_interval={cfg_interval} must be (lo, hi) with '
                                 f'0 <= lo <= hi <= 1 (fractions of the token sequence)')
        super().__init__(LogprobSpec(mode=logprob_cfg, cfg_scale=float(cfg_scale),
                                     cfg_interval=cfg_interval, temperature=float(temperature),
                                     top_k=int(top_k), top_p=float(top_p)),
                         decode_images=decode_images, packed_weights=packed_weights)

    def num_steps_of(self, policy: Policy) -> int:
        """T, the tokens of a sample (what ``stop_at_step`` counts)."""
        return policy.num_actions

    def _sample(self, policy: Policy, cond: Conditions, *, rng: Optional[BatchRNG],
                prefix: Optional[Rollout], kept: int, group_size: int) -> Rollout:
        """The raster generation loop (see :meth:`RolloutSampler._sample`).

        Noise: with ``rng`` one uniform per sample and token, ``rng.rand(T)``, drawn before the
        loop and turned into tokens by inverse-CDF sampling (a batch split over ranks samples
        what the single process samples); None: ``torch.multinomial`` on torch's global
        generator, which reproduces the official ``generate()`` token for token. With
        ``prefix`` its first ``kept`` tokens are kept (``action_mask`` False, ``logp_old``
        recomputed teacher-forced under :meth:`logprob_spec`).
        """
        num_steps = policy.num_actions
        dev = policy.device
        given = None
        if prefix is not None:
            given = prefix.actions[:, :kept].to(dev).repeat_interleave(group_size, dim=0)
        uniforms = None if rng is None else rng.rand(num_steps).to(dev)       # [B, T]
        tokens, logp = self._generate(policy, cond, given, num_steps, uniforms)
        action_mask = torch.ones(tokens.shape[0], num_steps, dtype=torch.bool, device=dev)
        action_mask[:, :kept] = False
        step, pos = policy.rollout_axes()
        groups = torch.arange(len(cond) // group_size, device=dev).repeat_interleave(group_size)
        return Rollout(cond=cond, group_ids=groups, actions=tokens, logp_old=logp,
                       action_mask=action_mask, action_step=step, action_pos=pos, images=None,
                       extras=None, prefix_steps=kept, logp_old_cfg=self._spec.mode)

    def _generate(self, policy: Policy, cond: Conditions, given: Optional[Tensor],
                  num_steps: int, uniforms: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Tokens ``[B, T]`` and their log-probs ``[B, T]`` (``given [B, m]`` kept; noise from
        ``uniforms [B, T]`` or, if None, from ``torch.multinomial``)."""
        spec = self._spec
        b2 = 2 * len(cond) if spec.cfg_scale != 1.0 else len(cond)
        guided = cfg_active_steps(spec.cfg_interval, num_steps).tolist()   # host list, no syncs
        cache = self._get_cache(policy, b2)
        with self._packs.prepare(policy, b2).active():
            return self._decode_loop(policy, cond, given, num_steps, uniforms, cache, b2,
                                     guided)

    def _decode_loop(self, policy: Policy, cond: Conditions, given: Optional[Tensor],
                     num_steps: int, uniforms: Optional[Tensor], cache: Any, b2: int,
                     guided: list) -> tuple[Tensor, Tensor]:
        """Prefill, then one cached step per token (see :meth:`_generate`)."""
        spec = self._spec
        use_cfg = spec.cfg_scale != 1.0
        b = len(cond)
        dev = policy.device
        kept = 0 if given is None else given.shape[1]
        tokens = torch.empty(b, num_steps, dtype=torch.long, device=dev)
        logp = torch.empty(b, num_steps, dtype=torch.float32, device=dev)
        logits = policy.prefill(cond, given, cache, with_null=use_cfg)  # [B2, kept + 1, V]
        if kept:
            tokens[:, :kept] = given
            logp[:, :kept] = self._given_logp(logits[:, :kept], given, use_cfg, num_steps)
        step_logits = logits[:, kept]                                     # [B2, V]
        inp = torch.empty(b2, dtype=torch.long, device=dev)
        for t in range(kept, num_steps):
            tok, lp = self._draw(step_logits, b, use_cfg, guided[t],
                                 None if uniforms is None else uniforms[:, t:t + 1])
            tokens[:, t] = tok
            logp[:, t] = lp
            if t + 1 < num_steps:
                inp[:b] = tok
                if use_cfg:
                    inp[b:] = tok
                step_logits = policy.decode_step(inp, t, cache)
        return tokens, logp

    def _draw(self, logits: Tensor, b: int, use_cfg: bool, guided: bool,
                u: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """One step: token ids ``[B]`` and their log-probs ``[B]`` under the recorded spec
        (``u [B, 1]`` uniforms for inverse-CDF sampling, or None for ``torch.multinomial``)."""
        spec = self._spec
        cond = logits[:b]
        if use_cfg and guided:
            z = cfg_mix(cond, logits[b:], spec.cfg_scale).div_(spec.temperature)
        else:   # outside the CFG interval the official loop uses the conditional logits
            z = cond / spec.temperature
        keep = truncation_keep_mask(z, spec.top_k, spec.top_p)
        if keep is not None:
            z.masked_fill_(~keep, float('-inf'))
        probs = torch.softmax(z, dim=-1)
        if u is None:
            tok = torch.multinomial(probs, num_samples=1)                       # [B, 1]
        else:
            tok = inverse_cdf_sample(probs, u)
        if spec.mode == 'none' and (keep is not None or (use_cfg and guided)):
            z = cond / spec.temperature       # score under the conditional, untruncated logits
        lp = z.gather(1, tok)[:, 0] - torch.logsumexp(z, dim=-1)
        return tok[:, 0], lp

    def _given_logp(self, logits: Tensor, given: Tensor, use_cfg: bool, num_steps: int
                    ) -> Tensor:
        """Teacher-forced log-probs ``[B, m]`` of kept prefix tokens, under :meth:`logprob_spec`
        (the same computation as ``policy.evaluate``)."""
        spec = self._spec
        b, m = given.shape
        rollout_mode = spec.mode == 'rollout'
        if use_cfg and rollout_mode:
            lg = torch.stack([logits[:b], logits[b:]]).reshape(2, b * m, -1)
            rows = cfg_active_steps(spec.cfg_interval, num_steps, logits.device)[:m].repeat(b)
        else:
            lg, rows = logits[:b].reshape(1, b * m, -1), None
        lp, _ = categorical_logp_entropy(
            lg, given.reshape(-1), cfg_scale=spec.cfg_scale, rows=rows,
            temperature=spec.temperature, top_k=spec.top_k if rollout_mode else 0,
            top_p=spec.top_p if rollout_mode else 1.0, with_entropy=False)
        return lp.view(b, m)
