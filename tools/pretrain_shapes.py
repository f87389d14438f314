"""Pretrain the Shapes tokenizer and base models and write their weights and model cards.

    python tools/pretrain_shapes.py vq            [--config C] [--steps N] [--batch-size B] ...
    python tools/pretrain_shapes.py text-encoder  [--config T2I_CONFIG]
    python tools/pretrain_shapes.py llamagen-c2i  [--config C2I_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py llamagen-t2i  [--config T2I_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py msvq          [--config VAR_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py var-c2i       [--config VAR_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py kl-vae        [--config MAR_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py mar-c2i       [--config MAR_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py vqgan         [--config VQGAN_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py vqgan-c2i     [--config VQGAN_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py janus-vq      [--config JANUS_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py janus-t2i     [--config JANUS_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py eval          --config CONFIG [--cfg-scales 1 2 3]

The Shapes benchmark (README.md, "The Shapes benchmark") ships its own small tokenizer and base
models, since no pretrained weights can be downloaded. This tool makes them, reproducibly from
``--seed`` (same machine and thread count), in minutes on 2 CPU cores. Run it from the repository
root: the paths in the configs are relative to it.

Architectures come from the configs
-----------------------------------
The tool reads every architecture setting from a policy ``_base_`` config through mmengine
(``configs/_base_/policies/llamagen_shapes_{c2i,t2i}.py``): ``policy.tokenizer`` is the VQ,
``policy.arch`` / ``task`` / ``image_size`` / ``downsample`` / ``vocab_size`` / ``num_classes``
the GPT, ``policy.text_encoder`` the T5 -- so the shipped weights and the configs cannot
disagree (the weights are written to the paths the config names and re-loaded through it,
strictly, before evaluation). ``--out`` writes elsewhere (then the evaluation loads that file).

Subcommands
-----------
``vq``
    LlamaGen's ``VQModel`` (:mod:`vargo.components.tokenizers.vq`, official key names) trained
    as LlamaGen's ``vq_loss`` does without its GAN and perceptual terms (pointless at 32 px):
    ``rec + codebook + beta * commit`` with L2-normalised codes and encoder outputs
    (``codebook_l2_norm``), ``codebook = ||sg(z) - z_q||^2``, ``commit = ||z - sg(z_q)||^2``,
    ``beta = 0.25``, straight-through gradients. ``rec`` is L1 or L2 on images in [-1, 1]
    (``--rec-loss``). Batches are half single-object (c2i) and half kind-balanced prompt (t2i)
    images. Dead codes (unused for ``--restart-every`` steps) are re-initialised to encoder
    outputs of the current batch (a standard VQ remedy; LlamaGen relies on the low-dimensional
    L2-normalised codebook alone). Evaluated by ShapesEval of the reconstructions of
    ground-truth 'eval' images: the ceiling of every reward computed on VQ-decoded images.
``text-encoder``
    The frozen word-level T5 of the t2i config (``policy.text_encoder``): random weights from
    ``T5Config`` under the config's ``seed``, not trained, written to the config's
    ``text_encoder.checkpoint`` so the t2i model never depends on transformers' init code.
``llamagen-c2i`` / ``llamagen-t2i``
    The LlamaGen GPT trained with :meth:`LlamaGenPolicy.pretrain_loss` (next-token
    cross-entropy, condition dropped to the null one with ``class_dropout_prob``, for CFG) on the
    VQ tokens of freshly rendered training images, encoded on the fly by the config's frozen VQ.
    Evaluated by sampling with the config's ``sampler`` (ShapesEval of the 'train' conditions,
    and for t2i of the held-out 'eval' prompts; FID when the feature extractor is available).
``msvq`` / ``var-c2i``
    VAR's multi-scale residual VQVAE and the class-conditional VAR transformer of a VAR config
    (``configs/_base_/policies/var_shapes_c2i.py``): see ``MSVQPretrainer`` (VAR's multi-scale
    VQ loss, foreground-weighted reconstruction; evaluated as ``vq``) and ``VARC2IPretrainer``
    (:meth:`VARPolicy.pretrain_loss` on the VQVAE's tokens of fresh c2i images; evaluated as
    ``llamagen-c2i``) in ``vargo.components.benchmarks.pretrain.var``.
``kl-vae`` / ``mar-c2i``
    MAR's KL VAE and the class-conditional MAR of a MAR config
    (``configs/_base_/policies/mar_shapes_c2i.py``): see ``KLVAEPretrainer`` (reconstruction of
    a posterior sample, foreground-weighted as the VQ trainers, plus a small KL term; evaluated
    as ``vq``, plus the latent statistics that set the config's ``scale_factor``) and
    ``MARC2IPretrainer`` (:meth:`MARPolicy.pretrain_loss` on the VAE's latents of fresh c2i
    images, EMA weights shipped; evaluated as ``var-c2i`` with the config's ``MaskedSampler``)
    in ``vargo.components.benchmarks.pretrain.mar``.
``vqgan`` / ``vqgan-c2i``
    taming-transformers' VQGAN and the class-conditional minGPT over its codes of a
    VQGAN-transformer config (``configs/_base_/policies/vqgan_shapes_c2i.py``): see
    ``VQGANPretrainer`` (taming's ``VQModel`` architecture and keys, ``VectorQuantizer2``'s loss
    on a Euclidean codebook without the LPIPS and GAN terms, foreground-weighted reconstruction,
    dead-code restarts; evaluated as ``vq``) and ``VQGANC2IPretrainer``
    (:meth:`VQGANTransformerPolicy.pretrain_loss`, the official ``Net2NetTransformer`` loss, on
    the VQGAN's codes of fresh c2i images; no label dropout: the model has no null class, so
    ``--cfg-scales`` other than 1 are refused; evaluated as ``llamagen-c2i``) in
    ``vargo.components.benchmarks.pretrain.vqgan``.
``janus-vq`` / ``janus-t2i``
    Janus-Pro's architecture at Shapes size (``configs/_base_/policies/janus_shapes_t2i.py``,
    transformers' ``JanusForConditionalGeneration`` built from ``policy.arch``): see
    ``JanusVQPretrainer`` (transformers' ``JanusVQVAE``, which is LlamaGen's VQ architecture,
    trained with the ``vq`` loss and quantised as the official Janus VQ: nearest code by cosine)
    and ``JanusT2IPretrainer`` (:meth:`JanusPolicy.pretrain_loss`: the image tokens after the
    prompt in Janus-Pro's chat template, the prompt replaced by its pad-token twin with
    probability ``--prompt-dropout`` for CFG; the language model and the generation embedding,
    aligner and head train; evaluated as ``llamagen-t2i``) in
    ``vargo.components.benchmarks.pretrain.janus``.
``eval``
    Re-evaluate the weights a config names (optionally at several CFG scales) and rewrite the
    evaluation part of the model card (``--vq``: the config's tokenizer); the pretrainer is the
    one registered for the config's ``policy.type``.

The code is the package ``vargo.components.benchmarks.pretrain`` (this file is its command
line): shared modules (``common``: paths, seeds, the image stream, LR schedule, weights IO;
``loop``: the ``Pretrainer`` interface, the subcommand registry and the training loop;
``evaluation``: reconstruction and sampling evaluations; ``records``: the JSON record and the
model card; ``tokenizer`` / ``generator``: what the tokenizer and generator trainers share; ``cli``:
this command line) and one module per family (``llamagen``, ``var``, ``mar``, ``vqgan``,
``janus``), each
registering its pretrainers (a ``Pretrainer`` subclass with ``build``, ``step``, ``weights`` and
``evaluate``). Shared plumbing: a seeded stream of freshly rendered ``ShapesImageDataset`` train
images (image ``i`` of step ``s`` is item ``s * B + i``; no image repeats), AdamW, linear warm-up
then a cosine or constant learning rate, gradient clipping, ``torch.set_num_threads``, a tqdm
progress bar, the loss log and the model card.

Outputs, next to ``--out`` (``<name>.safetensors``):

* ``<name>.safetensors``: the weights (float16 when float32 would exceed ``--max-fp32-mb``; the
  metadata records ``stored_dtype``; loading casts to the float32 modules);
* ``<name>.json``: the run (command, seed, steps, wall time, settings), the evaluation and the
  loss log (one row per ``--log-every`` steps: mean losses, learning rate, gradient norm);
* ``<name>.md``: the model card rendered from the JSON.

With a constant learning rate (``--lr-schedule constant``) a run of N steps is exactly the first
N steps of a longer run (data and noise are a prefix; the evaluations run under a forked RNG), so
``--eval-every`` during one long run shows where to stop, and ``--steps`` of that value
reproduces the chosen model.

Threads: ``--threads`` (default 2) sets ``torch.set_num_threads``. On a machine whose cores are
busy with other jobs, use ``--threads 1``: two OpenMP threads then wait for each other at every
barrier and a step can take 5-30x longer (measured here: a VQ step 0.4 s with 1 thread against
1-12 s with 2 next to other training jobs; 0.16 s with 2 threads on an idle machine). Bitwise
reproduction needs the thread count of the model card's command.
"""
from __future__ import annotations

import os

# before torch loads OpenMP: idle threads sleep, not spin (README "Threads on a shared machine")
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from vargo.components.benchmarks.pretrain.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(description=__doc__.splitlines()[0]))
