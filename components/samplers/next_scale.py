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

Policy protocol (what :class:`NextScaleSampler` needs; :class:`~vargo.components.policies.var.
VARPolicy` has it): ``num_actions``, ``num_steps``, ``patch_nums``, ``device``,
``encode_conditions``, ``labels(cond, with_null)``, ``rollout_axes()``, ``decode(rollout)``, a
transformer ``policy.var`` (``class_condition``, ``start_tokens``, ``inputs``, ``scale_tokens``,
``blocks_forward``, ``head_hidden``, ``logits``, ``new_cache``, ``begin_ends``,
``attn_bias_for_masking``) and the VQVAE ``policy.vae``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vargo.core.interfaces import Policy
from vargo.core.registry import SAMPLERS
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, LogprobSpec, Rollout

from ..modules.categorical import (categorical_logp_entropy, inverse_cdf_sample,
                                   var_truncation_keep_mask)
from ..policies.var import VARExtras, VARKVCache
from .cached import KVCachedSampler
from .checks import check_bool, check_sampling

__all__ = ['NextScaleSampler']


def _ramp(cfg_scale: float, num_scales: int) -> list[float]:
    # official order of operations: ratio = si / (S - 1), t = cfg * ratio
    return [(cfg_scale - 1.0) * (si / (num_scales - 1)) for si in range(num_scales)]


@SAMPLERS.register_module()
class NextScaleSampler(KVCachedSampler):
    """Samples VAR token pyramids scale by scale and records their log-probs.

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

    Examples:
        >>> sampler = NextScaleSampler(cfg_scale=2.5, temperature=1.0, top_k=900, top_p=0.96,
        ...                            logprob_cfg='none')
        >>> sampler.logprob_spec().top_k
        900
    """

    def __init__(self, *, cfg_scale: float, temperature: float, top_k: int, top_p: float,
                 logprob_cfg: str, decode_images: bool = True):
        check_sampling('NextScaleSampler', cfg_scale=cfg_scale, temperature=temperature,
                       logprob_cfg=logprob_cfg, top_k=top_k, top_p=top_p)
        check_bool('NextScaleSampler', 'decode_images', decode_images)
        super().__init__(LogprobSpec(mode=logprob_cfg, cfg_scale=float(cfg_scale),
                                     cfg_interval=None, temperature=float(temperature),
                                     top_k=int(top_k), top_p=float(top_p)),
                         decode_images=decode_images)

    def _get_cache(self, var, batch: int) -> VARKVCache:
        w, cfg = var.head.weight, var.cfg
        key = (batch, cfg.depth, cfg.num_heads, cfg.head_dim, cfg.L, w.dtype, w.device)
        return self._cache_for(key, lambda: var.new_cache(batch))

    @torch.no_grad()
    def rollout(self, policy: Policy, cond: Conditions, *, group_size: int,
                rng: Optional[BatchRNG] = None, prefix: Optional[Rollout] = None,
                stop_at_step: Optional[int] = None, ctx=None) -> Rollout:
        """Sample ``group_size`` token pyramids per condition.

        Args:
            policy: a VAR policy (see the module doc).
            cond: one row per group (without ``prefix``), or one row per prefix sample.
            group_size: G; the samples of a group are contiguous (``group_ids``).
            rng: the noise source (one uniform per sample and token, ``rng.rand(L)``; its
                ``local_batch`` must be ``len(cond) * G``), or None for ``torch.multinomial``
                on torch's global generator (reproduces the official sampler).
            prefix: a rollout to continue: sample ``j`` of ``prefix`` is completed G times, its
                first ``stop_at_step`` *scales* kept (``action_mask`` False there, ``logp_old``
                recomputed teacher-forced under :meth:`logprob_spec`), the rest sampled; the
                completions of one prefix sample form group ``j``.
            stop_at_step: with ``prefix``: the number of scales kept (default
                ``prefix.prefix_steps``); 0 < stop_at_step < S.

        Returns:
            a :class:`Rollout` of ``B = len(cond) * G`` samples: ``actions [B, L]`` long (scales
            concatenated coarse to fine, raster order inside a scale), ``logp_old [B, L]``,
            ``action_mask [B, L]``, ``action_step [L]`` (scale), ``action_pos [L, 3]`` (scale,
            row, col), ``images [B, 3, H, W]`` in [0, 1] (if ``decode_images``),
            ``extras`` (:class:`VARExtras`), ``prefix_steps``, ``logp_old_cfg``.
        """
        if group_size < 1:
            raise ValueError(f'group_size={group_size} must be >= 1')
        num_scales, num_tokens = policy.num_steps, policy.num_actions
        dev = policy.device
        if prefix is None:
            if stop_at_step is not None:
                raise ValueError('stop_at_step is the number of scales kept from a prefix and '
                                 'needs prefix=<a Rollout>: sample full rollouts, then complete '
                                 'them with rollout(..., prefix=rollout, stop_at_step=m)')
            kept = 0
        else:
            kept = prefix.prefix_steps if stop_at_step is None else int(stop_at_step)
            if not 0 < kept < num_scales:
                raise ValueError(f'stop_at_step={kept} must be in (0, {num_scales}) scales to keep '
                                 f'from the prefix rollout')
            if len(cond) != prefix.batch_size:
                raise ValueError(f'cond has {len(cond)} rows but the prefix rollout has '
                                 f'{prefix.batch_size} samples: pass prefix.cond')
        kept_tokens = policy.var.begin_ends[kept][0] if kept else 0
        was_training = policy.training
        policy.eval()
        try:
            cond_rep = policy.encode_conditions(cond).repeat_interleave(group_size)
            given = None
            if prefix is not None:
                given = (prefix.actions[:, :kept_tokens].to(dev)
                         .repeat_interleave(group_size, dim=0))
            uniforms = None
            if rng is not None:
                if rng.local_batch != len(cond_rep):
                    raise ValueError(f'rng draws for {rng.local_batch} samples but the rollout has '
                                     f'{len(cond_rep)} (= {len(cond)} conditions x G='
                                     f'{group_size}); build BatchRNG with local_batch='
                                     f'{len(cond_rep)}')
                uniforms = rng.rand(num_tokens).to(dev)                          # [B, L]
            tokens, logp = self._generate(policy, cond_rep, given, kept, uniforms)
        finally:
            policy.train(was_training)
        b = tokens.shape[0]
        step, pos = policy.rollout_axes()
        action_mask = (step >= kept).unsqueeze(0).expand(b, -1).clone()
        out = Rollout(cond=cond_rep,
                      group_ids=torch.arange(len(cond), device=dev).repeat_interleave(group_size),
                      actions=tokens, logp_old=logp, action_mask=action_mask, action_step=step,
                      action_pos=pos, images=None, extras=VARExtras(tuple(policy.patch_nums)),
                      prefix_steps=kept, logp_old_cfg=self._spec.mode)
        if self.decode_images:
            out.images = policy.decode(out)
        return out

    def _generate(self, policy: Policy, cond: Conditions, given: Optional[Tensor], kept: int,
                  uniforms: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Tokens ``[B, L]`` and log-probs ``[B, L]``; the first ``kept`` scales are ``given``
        (``[B, kept tokens]``), the rest sampled (noise ``uniforms [B, L]`` or multinomial)."""
        spec = self._spec
        var, quant = policy.var, policy.vae.quantize
        pns, num_scales = tuple(policy.patch_nums), len(policy.patch_nums)
        c_vae = quant.Cvae
        use_cfg = spec.cfg_scale != 1.0
        labels = policy.labels(cond, with_null=use_cfg)
        cond_BD = var.class_condition(labels)                                 # [B2, C]
        b2 = labels.shape[0]
        b = b2 // 2 if use_cfg else b2
        dev = cond_BD.device
        ramp = _ramp(spec.cfg_scale, num_scales)
        cache = self._get_cache(var, b2)
        num_tokens = var.cfg.L
        tokens = torch.empty(b, num_tokens, dtype=torch.long, device=dev)
        logp = torch.empty(b, num_tokens, dtype=torch.float32, device=dev)
        f_hat = cond_BD.new_zeros(b, c_vae, pns[-1], pns[-1])

        def double(x):
            return torch.cat([x, x]) if use_cfg else x

        if kept:
            n_given = given.shape[1]
            ms = [given[:, lo:hi] for lo, hi in var.begin_ends[:kept]]
            nxt = []
            for si in range(kept):          # f_hat of the given scales, and their next inputs
                h = quant.embedding(ms[si]).transpose(1, 2).reshape(b, c_vae, pns[si], pns[si])
                f_hat, nm = quant.get_next_autoregressive_input(si, f_hat, h)
                nxt.append(nm.view(b, c_vae, -1).transpose(1, 2))
            x = var.inputs(cond_BD, double(torch.cat(nxt[:-1], dim=1)) if kept > 1
                           else cond_BD.new_zeros(b2, 0, c_vae))
            bias = var.attn_bias_for_masking[:, :, :n_given, :n_given]
            hid = var.blocks_forward(x, cond_BD, bias, cache=cache, start=0)
            logits = var.logits(var.head_hidden(hid, cond_BD))               # [B2, n, V]
            tokens[:, :n_given] = given
            logp[:, :n_given] = self._given_logp(logits, given, b, use_cfg, ramp,
                                                 policy.action_step[:n_given])
            lo, hi = var.begin_ends[kept]
            x = double(var.scale_tokens(nxt[-1], lo, hi))
        else:
            x = var.start_tokens(cond_BD)
        for si in range(kept, num_scales):
            lo, hi = var.begin_ends[si]
            hid = var.blocks_forward(x, cond_BD, None, cache=cache, start=lo)
            logits = var.logits(var.head_hidden(hid, cond_BD))               # [B2, l, V]
            tok, lp = self._sample(logits, b, use_cfg, ramp[si],
                                   None if uniforms is None else uniforms[:, lo:hi])
            tokens[:, lo:hi] = tok
            logp[:, lo:hi] = lp
            pn = pns[si]
            h = quant.embedding(tok).transpose(1, 2).reshape(b, c_vae, pn, pn)
            f_hat, nm = quant.get_next_autoregressive_input(si, f_hat, h)
            if si != num_scales - 1:
                lo2, hi2 = var.begin_ends[si + 1]
                x = double(var.scale_tokens(nm.view(b, c_vae, -1).transpose(1, 2), lo2, hi2))
        return tokens, logp

    def _sample(self, logits: Tensor, b: int, use_cfg: bool, t: float,
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
