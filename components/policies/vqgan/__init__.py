"""The VQGAN transformer of CompVis/taming-transformers: a minGPT over VQGAN f16 codes in raster
order, conditioned on the class as its first token (the class-conditional ImageNet "cin" model).

The transformer follows ``taming/modules/transformer/mingpt.py`` (``GPT``), the tokenizer
``taming/models/vqgan.py`` (:mod:`vargo.components.tokenizers.vqgan`), the conditioning
``taming/models/cond_transformer.py`` (``Net2NetTransformer`` with the ``Labelator`` cond stage),
all with the official state-dict key names, so the official files load *strictly*:

=============================================  ============================================
official key (``transformer.`` prefix)          module
=============================================  ============================================
``tok_emb.weight``                             token embedding ``[V, C]``, image codes *and*
                                               class tokens (class ``c`` is token id ``c``)
``pos_emb``                                    learned absolute positions ``[1, block_size, C]``
``blocks.N.ln1.*``, ``blocks.N.ln2.*``         pre-norm LayerNorms (eps 1e-5)
``blocks.N.attn.{key,query,value,proj}.*``     attention projections, with biases
``blocks.N.attn.mask``                         causal mask buffer ``[1, 1, block_size,
                                               block_size]`` (checked lower-triangular, dropped,
                                               recomputed)
``blocks.N.mlp.0.*``, ``blocks.N.mlp.2.*``     MLP ``Linear(C, 4C)``-GELU(erf)-``Linear(4C, C)``
``ln_f.*``, ``head.weight``                    final LayerNorm, logits (no bias)
``first_stage_model.*``                        the VQGAN (``encoder``, ``decoder``,
                                               ``quantize.embedding.weight``, ``quant_conv``,
                                               ``post_quant_conv``)
=============================================  ============================================

The official cin release (folder ``2021-04-03T19-39-50_cin_transformer``, README link
https://k00.fr/s511rwcv) is a pytorch-lightning 1.0 ``checkpoints/last.ckpt``: its state dict
holds ``transformer.*`` and ``first_stage_model.*`` (the ``Labelator`` has no weights). Lightning
pickles the ``ModelCheckpoint`` callback *class* as a dict key, which ``torch.load(weights_only=
True)`` refuses; :func:`.loading.read_official_state_dict` reads the file data-only with that class
name (and ``EarlyStopping``'s) mapped to an inert stand-in, and nothing else allowed. Standalone
VQGAN releases (``vqgan_imagenet_f16_16384``) also carry their training losses (``loss.*``: LPIPS
and discriminator), which are dropped with a log line. Any other missing, unexpected or
mis-shaped key raises :class:`~vargo.core.checkpoint.StateDictMismatch` naming it (the official
``init_from_ckpt`` uses ``strict=False``). The weights do not fix every setting (``n_head`` has
no tensor of its own): when the release folder's ``configs/*-project.yaml`` sits next to
``checkpoints/``, it is read (YAML, data only) and every differing ``transformer_config`` /
``first_stage_config`` field fails with one line (:func:`.loading.check_release_config`).

Faithful details:

* Sequence and teacher forcing (``Net2NetTransformer.forward``): ``[c, z_0 .. z_{T-2}]``, one
  forward, row ``t`` of the logits predicts ``z_t`` (``logits[:, c_len - 1:]``); ``block_size``
  is T (256 for the cin model: 1 class token + 255 fed codes).
* Sampling (``scripts/sample_fast.py`` -> ``mingpt.sample_with_past``, the README's FID setting
  ``-k 600 -t 1.0 -p 0.92``): logits / temperature, then transformers 4.3.1's
  ``top_k_top_p_filtering`` (taming's ``environment.yaml``): top-k keeps every logit >= the k-th
  largest, then top-p drops tokens whose descending cumulative probability exceeds p, shifted by
  one -- exactly :func:`~vargo.components.modules.categorical.truncation_keep_mask`, so the shared
  ``ARSampler`` is the official sampler. ``Net2NetTransformer.sample`` (uncached, top-k only) is
  the same rule without top-p.
* minGPT has no KV cache of its own for ``forward``; the official ``forward_with_past`` concatenates
  keys/values per step. Here a static cache (:class:`~vargo.components.modules.kv_cache.
  StaticKVCache`) is written in place and attention covers the cached slice; it gives the logits of
  the uncached forward (``tests/test_vqgan.py``).
* Images: ``decode_to_img`` of the indices, mapped to [0, 1] as ``sample_fast.py`` saves them
  (``(x + 1) / 2`` clipped).

Deviations (none changes a number under the official settings beyond float rounding):

* attention uses ``F.scaled_dot_product_attention`` (the official explicit softmax(q k^T /
  sqrt(d)) v);
* ``top_p=1`` is off here; the official filter also runs at ``p = 1.0`` and then drops the tail
  tokens after the fp32 cumulative sum rounds above 1 (measured on random logits over 16384
  codes: with top-k 250 / 600, 1 row in 3072 lost 5 tokens of total mass 1.5e-7; without top-k,
  up to 3.4e-6 of mass);
* no classifier-free guidance: the cin model was trained without a null class, so a sampler with
  ``cfg_scale != 1`` is refused with one line;
* dropouts default to 0 (as the official constructor; RL needs the teacher-forced log-prob to
  equal the sampler's); ``pkeep`` token corruption and ``n_unmasked`` are not implemented (the
  cin model uses neither).

Parity with the official code, measured 2026-12 on CPU in fp32 by a harness kept outside the
repository (the official code is not part of it): the official modules imported from a checkout
of CompVis/taming-transformers at commit 3ba01b2 (``Net2NetTransformer`` built from its configs
with ``instantiate_from_config``; ``pytorch_lightning.LightningModule`` stubbed by
``torch.nn.Module``; ``transformers.top_k_top_p_filtering`` taken from the transformers 4.3.1
wheel, ``pip download transformers==4.3.1 --no-deps``), random weights written into a crafted
Lightning ``last.ckpt`` (with the ``ModelCheckpoint`` class key) and loaded strictly by vargo, the
two run side by side with the same inputs and ``torch.manual_seed``; a 3-layer, width-64
transformer over a 512-code VQGAN (ch 32, ch_mult (1, 1, 2), attention at 8 px, 32-px images):

* official cin sizes built on the meta device: transformer 1,410,640,896 parameters, 821 keys (48
  masks included), VQGAN 76,073,859 parameters, 343 keys; the sha256 of the sorted ``key:shape``
  lines of the official state dicts equals vargo's (pinned in ``tests/test_vqgan.py``);
* teacher-forced logits (official ``Net2NetTransformer.forward`` from images and labels): max
  |diff| 1.0e-5 at logit scale 21; the encoded targets identical;
* tokenizer: encode indices identical (the code vectors differ by 1.2e-7, the official
  straight-through rounding), ``decode_to_img`` bit-identical (max |diff| 0.0), [0, 1] images
  bit-identical;
* sampling: ``ARSampler`` (no ``BatchRNG``: ``torch.multinomial`` on the global generator) gives
  ``sample_with_past``'s tokens for the same ``torch.manual_seed`` in 15 of 15 runs (8 x 64
  tokens; no truncation, top-k 100, top-k 50 + top-p 0.9, top-k 200 + top-p 0.92 + temperature
  0.8, temperature 1.3) and ``Net2NetTransformer.sample``'s in 4 of 4 (top-k 100, none);
  ``evaluate`` reproduced the recorded ``logp_old`` within 1.2e-5.

``tests/fixtures/vqgan_official_parity.json`` holds the official numbers on the seeded tiny model
of ``tests/test_vqgan.py`` (teacher-forced logits, encode indices, decoded images, the tokens of
three sampler settings), so the parity stays pinned without the official code.

The policy (:class:`VQGANTransformerPolicy`) holds the transformer (``transformer``) and the frozen
VQGAN (``vq``, left out of the policy's ``state_dict``).

Modules: :mod:`.model` (minGPT), :mod:`.loading` (official files, strict loading), :mod:`.policy`
(:class:`VQGANTransformerPolicy`, including the raster decoding protocol ``ARSampler`` drives).
"""
from vargo.core.checkpoint import StateDictMismatch

from .loading import (LIGHTNING_CALLBACK_KEYS, TAMING_FILE_SOURCES, check_release_config,
                      load_first_stage, load_transformer, read_official_state_dict,
                      split_net2net)
from .model import MINGPT_ARCHS, MinGPT, MinGPTConfig, derived_mask_keys
from .policy import VQGANTransformerPolicy

__all__ = ['MINGPT_ARCHS', 'MinGPT', 'MinGPTConfig', 'VQGANTransformerPolicy', 'StateDictMismatch',
           'TAMING_FILE_SOURCES', 'LIGHTNING_CALLBACK_KEYS', 'read_official_state_dict',
           'split_net2net', 'load_transformer', 'load_first_stage', 'derived_mask_keys',
           'check_release_config']
