"""Janus-Pro (deepseek-ai/Janus; STAGE's own system) as a raster-order text-to-image policy
over transformers' Janus classes (``JanusForConditionalGeneration``, ``JanusConfig``): no
architecture is copied here.

What follows the official generation code (``generation_inference.py`` of deepseek-ai/Janus,
and the same loop in STAGE's ``grpo_trainer.py``):

* prompt: the ``deepseek`` SFT template ``"<|User|>: {prompt}\\n\\n<|Assistant|>:"`` with an
  empty system prompt, tokenised with BOS, then the image-start token ``<begin_of_image>``;
* CFG: for every prompt an unconditional twin, the same tokens with everything strictly between
  BOS and the image-start token replaced by the pad token; ``logits = uncond + w (cond -
  uncond)`` from the generation head, ``softmax(logits / temperature)``, multinomial; no top-k /
  top-p. Janus-Pro's defaults are ``w = 5``, temperature 1 (``ARSampler(cfg_scale=5,
  temperature=1, top_k=0, top_p=1)``);
* image tokens enter the language model through the generation embedding and aligner; 576 tokens
  (24 x 24) decode through the VQ-16 decoder to 384 px, ``clamp((x + 1) / 2, 0, 1)``;
* training (STAGE): only the language model trains; the understanding encoder and aligner, the
  VQ, the generation embedding, aligner and head are frozen (and, with the unused text head, left
  out of the policy's state dict); log-probs and entropies are the teacher-forced conditional
  ``log_softmax`` of the generation head (``logprob_cfg='none'``).

Deviations (no number changes beyond float rounding under the official settings):

* batches of prompts of different lengths are left-padded with masked pad tokens and position
  ids ``0 .. L-1`` over the padded sequence (transformers' own Janus ``generate`` does the same);
  with rotary positions and masked padding each row computes what the official one-prompt loop
  computes. STAGE pads on the right and appends the image-start token after the padding, with an
  all-ones mask on the unconditional rows; we do not reproduce that;
* the unconditional prompt uses its prompt's mask (official: one prompt, no padding, the same);
* STAGE's trainer writes the roles ``User`` / ``Assistant`` (``roles=('User', 'Assistant')``);
  Janus-Pro's README ``<|User|>`` / ``<|Assistant|>`` (the default).

Decoding: ``ARSampler`` drives :class:`JanusPolicy` through the raster decoding protocol with
transformers' ``StaticCache`` (what transformers' Janus ``generate`` allocates), held in a
:class:`JanusDecodingCache` with the 2-D attention mask and position ids, reused across rollouts
of the same batch size.

Parity (tests/test_janus.py, tiny random Janus from a ``JanusConfig``, CPU fp32): with the same
weights and seed, ``ARSampler`` (``rng=None``: ``torch.multinomial`` as transformers) returns
exactly the tokens of ``JanusForConditionalGeneration.generate(generation_mode='image')``, the
CFG-mixed next-token distributions of the two agree to float rounding, and ``evaluate``
reproduces the sampler's ``logp_old``.

Files: a local directory in transformers' format (deepseek-community/Janus-Pro-1B or -7B on the
Hugging Face hub), loaded with ``local_files_only`` and strict key checks
(:mod:`.loading`). Without a directory the model is built from ``arch`` with a small
word-level tokenizer (:mod:`.model`): at random (tests and benchmarks), or with a ``checkpoint``
of its generation parts and a ``tokenizer_checkpoint`` of its VQ, both loaded data-only and
strictly -- the Shapes-size Janus (``configs/_base_/policies/janus_shapes_t2i.py``), pretrained by
``tools/pretrain_shapes.py janus-vq`` / ``janus-t2i``. :class:`JanusImageTokenizer` encodes images
as the official Janus VQ does (nearest L2-normalised code; transformers' ``JanusVQVAE.encode``
compares un-normalised vectors, which only matters when encoding, never when generating).
"""
from .image_tokenizer import JanusImageTokenizer
from .loading import JANUS_FILE_SOURCES, check_local_dir, load_pretrained
from .model import (JANUS_PRO_ARCHS, JanusSpecialTokens, build_janus_config,
                    word_level_tokenizer)
from .policy import FROZEN_PARTS, GENERATION_PARTS, JanusDecodingCache, JanusPolicy

__all__ = ['JanusPolicy', 'JanusDecodingCache', 'JANUS_FILE_SOURCES', 'JANUS_PRO_ARCHS',
           'JanusSpecialTokens', 'build_janus_config', 'word_level_tokenizer', 'check_local_dir',
           'load_pretrained', 'FROZEN_PARTS', 'GENERATION_PARTS', 'JanusImageTokenizer']
