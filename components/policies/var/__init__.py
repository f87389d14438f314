"""VAR: next-scale prediction over a multi-scale residual VQVAE (FoundationVision/VAR).

The transformer follows ``models/var.py`` and ``models/basic_var.py`` of the official code
and keeps its state-dict key names, so the official
``var_d{16,20,24,30,36}.pth`` (https://huggingface.co/FoundationVision/var) load *strictly*:

=============================================  ============================================
official key                                   module
=============================================  ============================================
``class_emb.weight``                           ``[num_classes + 1, C]``; row ``num_classes``
                                               is the CFG null class; also the AdaLN condition
``pos_start``                                  ``[1, pn_0^2, C]`` start-token position
``pos_1LC``, ``lvl_embed.weight``              absolute positions ``[1, L, C]``, per-scale
                                               level embedding ``[S, C]``
``lvl_1L``, ``attn_bias_for_masking``          buffers: scale of each position, the
                                               block-causal additive mask ``[1, 1, L, L]``
``word_embed.{weight,bias}``                   Cvae -> C input projection
``blocks.N.attn.mat_qkv.weight``, ``q_bias``,  fused qkv (k has no bias: ``zero_k_bias``
``v_bias``, ``zero_k_bias``, ``proj.*``        buffer), output projection
``blocks.N.attn.scale_mul_1H11``               per-head logit scale of the l2-normalised
                                               q, k (``attn_l2_norm``, all official models)
``blocks.N.ffn.fc{1,2}.*``                     GELU(tanh) MLP, hidden ``round(4 C)``
``blocks.N.ada_lin.1.*`` (or ``ada_gss`` and   AdaLN: gamma1, gamma2, scale1, scale2, shift1,
``shared_ada_lin.1.*`` with shared AdaLN)      shift2 from the class embedding
``head_nm.ada_lin.1.*``, ``head.*``            AdaLN before the head, logits ``[L, V]``
=============================================  ============================================

Sizes (``build_vae_var``): depth ``d``, width ``64 d``, heads ``d``, drop-path ``0.1 d / 24``;
d16 310,283,520 / d20 600,917,136 / d24 1,033,399,360 / d30 2,010,020,356 parameters (the
README's 310M / 600M / 1.0B / 2.0B) and d36 (512 px, ``PATCH_NUMS_512``, shared AdaLN)
2,353,893,904; the VQVAE (108,948,355) is not part of these files.

Faithful details:

* Teacher forcing (``VAR.forward``): input ``[sos (pn_0^2 positions), word_embed(
  idxBl_to_var_input(ids))] + lvl_embed + pos_1LC`` with ``sos = class_emb(label) + pos_start``;
  position ``i`` of the output predicts token ``i`` of the concatenated per-scale ids (the
  inputs of scale ``s`` are the area-downsampled partial sum of scales ``< s``), attention is
  block-causal (a token sees its own and all coarser scales).
* Sampling (``autoregressive_infer_cfg``): one doubled batch ``[cond; null]``, the CFG *ramp*
  ``logits = (1 + t) cond - t uncond`` with ``t = cfg * si / (S - 1)`` (scale 0 unguided), top-k
  then top-p with VAR's rule (:func:`var_truncation_keep_mask`), softmax, multinomial.

Deviations and conventions:

* CFG scale convention: vargo's ``cfg_scale`` is the guidance weight ``s`` of
  ``uncond + s (cond - uncond)`` at the *last* scale, so ``cfg_scale = 1 + cfg_official`` (the
  README's FID setting ``cfg=1.5`` is ``cfg_scale=2.5``, the demo's ``cfg=4`` is ``5``) and
  ``cfg_scale=1`` means no guidance, as everywhere in vargo. Scale ``si`` is guided with
  ``1 + (cfg_scale - 1) si / (S - 1)``, exactly the official ramp.
* ``temperature`` (not in the official sampler) divides the guided logits; 1 reproduces it.
* Teacher-forced evaluation never drops labels or paths (the official ``forward`` drops labels
  with probability ``cond_drop_rate`` even in eval mode); :meth:`VARPolicy.pretrain_loss` does
  both, in training mode.
* With CFG in ``logprob_cfg='rollout'`` mode, :meth:`VARPolicy.evaluate` mixes the ``head_nm``
  outputs before the (affine) head instead of the logits: the same distribution up to float
  rounding, with one ``[B, L, V]`` logits tensor instead of three and half the head FLOPs.
* ``more_smooth`` (gumbel visualisation sampling) and progressive training are not implemented;
  attention uses ``F.scaled_dot_product_attention`` (the official CPU path) and a static KV cache.

Parity with the official code (measured 2026-11 on CPU, fp32, the official ``VQVAE`` / ``VAR``
classes built with random weights and their state dicts loaded strictly into these modules):

* official ch160 / V4096 / Cvae32 VQVAE, 256 px (10 scales, 2 images) and 64 px (scales 1-2-3-4,
  4 images): multi-scale encode ids identical (1360 and 120 ids), ``idxBl_to_img`` max |diff|
  9.9e-6, ``img_to_reconstructed_img`` 1.3e-5, ``idxBl_to_var_input`` identical (0.0);
* teacher-forced logits identical (max |diff| 0.0; depth 2 and 4 with per-block AdaLN, depth 2
  with shared AdaLN);
* ``autoregressive_infer_cfg`` vs :class:`NextScaleSampler` (``rng=None``, same torch seed):
  100% identical tokens (2 x 680 at 256 px with cfg 1.5, top-k 900, top-p 0.96; 4 x 120 at 64
  px with (cfg, top-k, top-p) = (1.5, 900, 0.96), (4, 0, off), (0, 50, off)), images max |diff|
  4e-6;
* meta-device builds of d16 / d20 / d24 / d30 / d36 have the official parameter counts and the
  same sorted ``key:shape`` list (sha256 pinned in ``tests/test_var.py``).

The sampler's ``logp_old`` and :meth:`VARPolicy.evaluate` agree to float rounding (max |diff|
1e-4 on logits of magnitude ~100 with the CFG ramp; ~1e-6 on the tiny test models).

Modules: :mod:`.model` (config, official sizes, the transformer), :mod:`.loading` (official
files, strict loading through :mod:`vargo.core.checkpoint`), :mod:`.decoding` (the
``NextScaleDecoding`` members :class:`~vargo.components.samplers.NextScaleSampler` drives) and
:mod:`.policy` (:class:`VARPolicy`, the CFG ramp, :class:`VARExtras`: the policy builds a
rollout's extras itself through ``rollout_extras()``, so the sampler never imports this family).
"""
from __future__ import annotations

from vargo.core.checkpoint import CheckpointKeyError

from ...modules.categorical import var_truncation_keep_mask
from .decoding import VARNextScaleDecoding
from .loading import VAR_FILE_SOURCES, load_var_file, read_var_file
from .model import VAR_ARCHS, VARConfig, VARTransformer
from .policy import VARExtras, VARPolicy, cfg_ramp

__all__ = ['VAR_ARCHS', 'VARConfig', 'VARTransformer', 'VARPolicy', 'VARExtras',
           'VARNextScaleDecoding', 'VAR_FILE_SOURCES', 'read_var_file', 'load_var_file',
           'var_truncation_keep_mask', 'cfg_ramp', 'CheckpointKeyError']
