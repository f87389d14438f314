"""LlamaGen: a Llama-style raster-order GPT over VQ-16 tokens (FoundationVision/LlamaGen).

The transformer follows ``autoregressive/models/gpt.py`` of the official code and keeps its
state-dict key names, so the official ``c2i_*.pt`` / ``t2i_*.pt`` files load *strictly*:

=============================================  ============================================
official key                                   module
=============================================  ============================================
``cls_embedding.embedding_table.weight``       class embedding, ``num_classes + 1`` rows
                                               (row ``num_classes`` is the CFG null class)
``cls_embedding.cap_proj.fc{1,2}.weight``      caption MLP (t2i): Linear-GELU(tanh)-Linear
``cls_embedding.uncond_embedding``             t2i null caption ``[120, 2048]`` (a buffer;
                                               ``uncond_rows`` rows, official 120)
``tok_embeddings.weight``                      image-token embedding ``[V, dim]``
``layers.N.attention.wqkv.weight``             fused q, k, v projection (no biases anywhere)
``layers.N.attention.wo.weight``               attention output projection
``layers.N.feed_forward.w{1,2,3}.weight``      SwiGLU ``w2(silu(w1 x) * w3 x)``, hidden size
                                               ``find_multiple(int(2 * 4 * dim / 3), 256)``
``layers.N.attention_norm.weight``,            RMSNorm (computed in fp32, eps 1e-5)
``layers.N.ffn_norm.weight``, ``norm.weight``
``output.weight``                              logits ``[V, dim]`` (returned in fp32)
=============================================  ============================================

The official ``freqs_cis`` is a plain attribute (not in its state dict); here the RoPE tables are
non-persistent buffers. Files that do contain derived tensors (``freqs_cis``, KV caches,
``causal_mask``; the commented-out ``model_weight.pop('freqs_cis')`` of ``sample_c2i.py`` hints
that some did) are accepted and those keys are dropped with a log line; every other missing or
unexpected key raises :class:`~vargo.core.checkpoint.StateDictMismatch` (``CheckpointKeyError``)
listing them (the official loader uses ``strict=False`` and hides mismatches).

Faithful details (all from ``gpt.py`` / ``generate.py`` / ``sample_t2i.py``):

* 2-D RoPE (``precompute_freqs_cis_2d``): half of each head's channel pairs rotate with the token's
  row, half with its column; the ``cls_token_num`` condition positions get all-zero cos/sin rows,
  so their q and k are exactly 0 (reproduced: the condition tokens attend uniformly, and every
  query's score on a condition key is 0).
* Teacher forcing: input ``[cond (C positions), x_0 .. x_{T-2}]``; the output at position
  ``C - 1 + t`` predicts ``x_t`` (``logits[:, cls_token_num - 1:]`` in ``Transformer.forward``).
* t2i conditioning: 120 FLAN-T5-XL features, *left*-padded with zeros (``sample_t2i.py``;
  ``dataset/t2i.py`` at training time); padding keys are masked for every query except the
  padding position itself (the ``eye`` fix of ``generate``); the CFG null caption
  (``uncond_embedding``) uses the *same* mask as its caption (``generate`` concatenates
  ``[emb_masks, emb_masks]``). The null caption buffer has 120 rows whatever ``cls_token_num``
  is (``CaptionEmbedder(..., token_num=120)``; ``uncond_rows`` here); the model keeps the first
  ``cls_token_num`` positions of the projected condition (``Transformer.forward``:
  ``self.cls_embedding(cond_idx, ...)[:, :self.cls_token_num]``), so CFG uses rows
  ``0 .. cls_token_num - 1`` of ``uncond_embedding``.
* CFG (``generate.py``): one doubled batch ``[cond; uncond]``, ``logits = uncond + (cond -
  uncond) * cfg_scale``, then ``/ temperature``, then top-k, then top-p, softmax, multinomial.

Deviations (none changes a number under the official settings beyond float rounding):

* CFG is applied whenever ``cfg_scale != 1`` (official: only ``> 1``, so 0 < scale < 1 and 0,
  i.e. unconditional sampling, are possible here);
* ``cfg_interval`` is a pair of fractions of the sequence (see :func:`cfg_active_steps`); the
  official integer ``--cfg-interval k`` (guide tokens 0..k+1) is ``(0, (k + 2) / T)``;
* dropouts default to 0 (official pretraining: 0.1 token/residual/FFN dropout; RL needs the
  teacher-forced log-prob to equal the sampler's) and drop-path is not implemented;
* attention uses ``F.scaled_dot_product_attention`` and KV caches are sliced, not masked;
* on a CPU the large linear layers train through oneDNN
  (``onednn_linears``, :mod:`~vargo.components.modules.onednn_linear`) and decode through
  packed copies of their weights (``ARSampler(packed_weights=True)``).

Parity with the official code (measured 2026-11 on CPU, fp32, random weights loaded strictly into
both): teacher-forced logits max |diff| 2.9e-6 (GPT-B c2i and t2i with padded captions); the
sampler reproduces ``generate()`` token for token (GPT-B, 8 x 256 tokens, CFG 4; small models with
top-k 2000, top-k 100 + top-p 0.9, temperature 0.8 + cfg_interval, t2i CFG 7.5 + top-k 1000);
VQ-16 decode max |diff| 7e-6 with identical encode indices. Speed (GPT-B, batch 8, CFG 4, 2
cores): about 50-70 ms per decode step against 90-160 ms for the official loop (weights are read
once per step, the step is memory-bound); the teacher-forced update (8 x 256 tokens, log-prob and
entropy over 16384 codes, forward + backward) runs at about 80-90% of the fp32 GEMM peak.

The policy (:class:`LlamaGenPolicy`) holds the transformer (``gpt``), the frozen VQ tokenizer
(``vq``) and, for t2i, a frozen text encoder (``text_encoder``). Frozen modules are left out of the
policy's ``state_dict`` (they are loaded from their own files at construction).

Modules: :mod:`.model` (the transformer), :mod:`.loading` (official files, strict loading),
:mod:`.policy` (:class:`LlamaGenPolicy`, including the raster decoding protocol ``ARSampler``
drives), :mod:`.flops` (matmul FLOPs of a teacher-forced forward).
"""
from vargo.core.checkpoint import CheckpointKeyError

from .flops import teacher_forced_flops
from .loading import (DERIVED_KEYS, LLAMAGEN_FILE_SOURCES, is_derived_key, load_official,
                      load_official_state_dict)
from .model import GPT_ARCHS, GPTConfig, LlamaGenGPT, apply_rope, find_multiple, rope_2d_tables
from .policy import LlamaGenPolicy

__all__ = [
    'GPT_ARCHS', 'GPTConfig', 'LlamaGenGPT', 'LlamaGenPolicy', 'CheckpointKeyError',
    'find_multiple', 'rope_2d_tables', 'apply_rope', 'load_official_state_dict', 'load_official',
    'LLAMAGEN_FILE_SOURCES', 'DERIVED_KEYS', 'is_derived_key', 'teacher_forced_flops',
]
