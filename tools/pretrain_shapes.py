"""Pretrain the Shapes tokenizer and base models and write their weights and model cards.

    python tools/pretrain_shapes.py vq            [--config C] [--steps N] [--batch-size B] ...
    python tools/pretrain_shapes.py text-encoder  [--config T2I_CONFIG]
    python tools/pretrain_shapes.py llamagen-c2i  [--config C2I_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py llamagen-t2i  [--config T2I_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py msvq          [--config VAR_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py var-c2i       [--config VAR_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py kl-vae        [--config MAR_CONFIG] [--steps N] ...
    python tools/pretrain_shapes.py mar-c2i       [--config MAR_CONFIG] [--steps N] ...
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
    (``configs/_base_/policies/var_shapes_c2i.py``): see :class:`MSVQPretrainer` (VAR's
    multi-scale VQ loss, foreground-weighted reconstruction; evaluated as ``vq``) and
    :class:`VARC2IPretrainer` (:meth:`VARPolicy.pretrain_loss` on the VQVAE's tokens of fresh
    c2i images; evaluated as ``llamagen-c2i``).
``kl-vae`` / ``mar-c2i``
    MAR's KL VAE and the class-conditional MAR of a MAR config
    (``configs/_base_/policies/mar_shapes_c2i.py``): see :class:`KLVAEPretrainer` (reconstruction
    of a posterior sample, foreground-weighted as the VQ trainers, plus a small KL term;
    evaluated as ``vq``, plus the latent statistics that set the config's ``scale_factor``) and
    :class:`MARC2IPretrainer` (:meth:`MARPolicy.pretrain_loss` on the VAE's latents of fresh c2i
    images, EMA weights shipped; evaluated as ``var-c2i`` with the config's ``MaskedSampler``).
``eval``
    Re-evaluate the weights a config names (optionally at several CFG scales) and rewrite the
    evaluation part of the model card (``--vq``: the config's tokenizer).

Shared plumbing (what ``var``, ``mar`` and ``vqgan`` subcommands reuse: a subclass of
:class:`Pretrainer` with ``build``, ``step``, ``weights`` and ``evaluate``, registered in
:data:`SUBCOMMANDS`): a seeded stream of freshly rendered ``ShapesImageDataset`` train images
(image ``i`` of step ``s`` is item ``s * B + i``; no image repeats), AdamW, linear warm-up then a
cosine or constant learning rate, gradient clipping, ``torch.set_num_threads``, a tqdm progress
bar, the loss log and the model card.

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

import abc
import argparse
import json
import math
import os
import shlex
import sys
import time
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_C2I = 'configs/_base_/policies/llamagen_shapes_c2i.py'
CONFIG_T2I = 'configs/_base_/policies/llamagen_shapes_t2i.py'
#: seed offsets keep the streams of one --seed independent (model init uses the seed itself)
DATA_SEED_OFFSET = 100
EVAL_SEED_OFFSET = 200
WEIGHTS_FORMAT = 'vargo-shapes-pretrain-v1'


# ================================================================================================
# shared plumbing
# ================================================================================================
class ShapesStream:
    """Freshly rendered training images: step ``s`` gets items ``s*B .. s*B + B - 1`` of
    ``ShapesImageDataset(split='train', task=task, seed=seed)`` (never repeated, a prefix of
    any longer run)."""

    def __init__(self, task: str, seed: int, batch_size: int, steps: int):
        from vargo.components.datasets.shapes import ShapesImageDataset
        self.batch_size = batch_size
        self.dataset = ShapesImageDataset(split='train', task=task,
                                          num_samples=max(1, steps * batch_size), seed=seed)

    def batch(self, step: int) -> tuple[Tensor, list]:
        """``(images [B, 3, 32, 32] in {0, 1}, conditions)``: class ids or prompts."""
        items = [self.dataset[step * self.batch_size + i] for i in range(self.batch_size)]
        images = torch.stack([it['image'] for it in items])
        key = 'class_id' if self.dataset.task == 'c2i' else 'prompt'
        return images, [it[key] for it in items]


def lr_lambda(schedule: str, warmup: int, steps: int) -> Callable[[int], float]:
    """Multiplier of the base LR at step ``s``: linear warm-up over ``warmup`` steps, then
    constant or cosine to 0 at ``steps``."""
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if schedule == 'constant':
            return 1.0
        progress = (s - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def fp32_megabytes(state: dict[str, Tensor]) -> float:
    return sum(v.numel() for v in state.values() if v.is_floating_point()) * 4 / 1e6


def save_weights(state: dict[str, Tensor], path: str, *, dtype: str, max_fp32_mb: float,
                 metadata: dict[str, str]) -> str:
    """Write ``state`` as safetensors, atomically; float16 if ``dtype='auto'`` and float32 would
    exceed ``max_fp32_mb``. Tied tensors are written as separate copies. Returns the dtype."""
    from safetensors.torch import save_file
    if dtype == 'auto':
        dtype = 'float16' if fp32_megabytes(state) > max_fp32_mb else 'float32'
    out = {}
    for k, v in state.items():
        v = v.detach().to('cpu')
        if v.is_floating_point():
            v = v.to(getattr(torch, dtype))
            if dtype == 'float16' and not torch.isfinite(v).all():
                raise ValueError(f'{k} overflows float16; use --weights-dtype float32')
        out[k] = v.clone().contiguous()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f'.tmp_{os.path.basename(path)}')
    save_file(out, tmp, metadata={**metadata, 'format': WEIGHTS_FORMAT, 'stored_dtype': dtype,
                                  'trained_dtype': 'float32'})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return dtype


def write_json(obj: Any, path: str) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write('\n')
    os.replace(tmp, path)


def stem(path: str) -> str:
    return path[:-len('.safetensors')] if path.endswith('.safetensors') else path


def rel(path: str) -> str:
    """``path`` relative to the repository root when inside it (for configs and cards)."""
    ap = os.path.abspath(path)
    return os.path.relpath(ap, ROOT) if ap.startswith(ROOT + os.sep) else ap


def load_cfg(path: str):
    from mmengine.config import Config
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config {path!r} not found (run from the repository root)')
    return Config.fromfile(path)


def command_line(argv: Sequence[str]) -> str:
    return 'python tools/pretrain_shapes.py ' + ' '.join(shlex.quote(a) for a in argv)


class Pretrainer(abc.ABC):
    """One subcommand: what to build, one optimisation step, what to save, how to evaluate.

    Subclasses set ``name`` (the subcommand), ``default_config``, ``defaults`` (argparse
    defaults of the shared options) and implement :meth:`build`, :meth:`step`,
    :meth:`weights`, :meth:`default_out` and :meth:`evaluate`.
    """

    name = ''
    help = ''
    default_config = CONFIG_C2I
    defaults: dict[str, Any] = {}

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        """Subcommand-specific options (the shared ones are added by :func:`parse_args`)."""

    def __init__(self, args: argparse.Namespace, cfg):
        self.args, self.cfg = args, cfg

    @abc.abstractmethod
    def default_out(self) -> str:
        """Where the weights go without ``--out`` (a path the config names)."""

    @abc.abstractmethod
    def build(self) -> list[nn.Parameter]:
        """Build the trained modules (seeded); return the parameters to optimise."""

    @abc.abstractmethod
    def step(self, step: int) -> tuple[Tensor, dict[str, float]]:
        """``(loss to backpropagate, scalars to log)`` of training step ``step``."""

    def after_update(self, step: int) -> dict[str, float]:
        """Hook after the optimiser step (e.g. VQ dead-code restarts); extra scalars."""
        return {}

    @abc.abstractmethod
    def weights(self) -> dict[str, Tensor]:
        """The state dict to ship."""

    @abc.abstractmethod
    def evaluate(self, path: str, quick: bool = False) -> dict[str, Any]:
        """Evaluate the weights written at ``path`` (loaded back through the config)."""

    def card_details(self) -> dict[str, Any]:
        """Architecture / data facts for the card."""
        return {}


def train(trainer: Pretrainer, argv: Sequence[str]) -> dict[str, Any]:
    """The shared training loop: AdamW, warm-up + cosine/constant LR, clipping, tqdm, the loss
    log, optional periodic quick evaluations, then save, reload, evaluate and write the card."""
    from tqdm import tqdm
    args = trainer.args
    out = args.out or trainer.default_out()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    params = trainer.build()
    n_params = sum(p.numel() for p in params)
    # weight decay on matrices only, as LlamaGen's configure_optimizers (not norms, biases)
    groups = [{'params': [p for p in params if p.dim() >= 2]},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2),
                            weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.lr_schedule, args.warmup,
                                                             args.steps))
    log: list[dict[str, float]] = []
    evals: list[dict[str, Any]] = []
    acc: dict[str, float] = {}
    n_acc = 0
    t0 = time.time()
    bar = tqdm(range(args.steps), desc=trainer.name, dynamic_ncols=True, mininterval=2.0,
               disable=args.no_progress)
    for s in bar:
        loss, scalars = trainer.step(s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(nn.utils.clip_grad_norm_(params, args.grad_clip))
        opt.step()
        sched.step()
        scalars = {**scalars, **trainer.after_update(s), 'grad_norm': gnorm}
        for k, v in scalars.items():
            acc[k] = acc.get(k, 0.0) + float(v)
        n_acc += 1
        if (s + 1) % args.log_every == 0 or s + 1 == args.steps:
            row = {'step': s + 1, 'lr': opt.param_groups[0]['lr'],
                   'time_s': round(time.time() - t0, 1),
                   **{k: round(v / n_acc, 5) for k, v in acc.items()}}
            log.append(row)
            acc, n_acc = {}, 0
            bar.set_postfix(loss=f'{row["loss"]:.4f}')
        if args.eval_every and (s + 1) % args.eval_every == 0 and s + 1 < args.steps:
            tmp = stem(out) + f'.step{s + 1}.safetensors'
            save_weights(trainer.weights(), tmp, dtype=args.weights_dtype,
                         max_fp32_mb=args.max_fp32_mb, metadata={'step': str(s + 1)})
            with torch.random.fork_rng(devices=[]):   # keep the training noise a prefix
                res = trainer.evaluate(tmp, quick=True)
            if not args.keep_snapshots:
                os.remove(tmp)
            res = {'step': s + 1, 'time_s': round(time.time() - t0, 1), **res}
            evals.append(res)
            tqdm.write(json.dumps(res))
    wall = time.time() - t0
    final = {k: v for k, v in log[-1].items() if k not in ('step', 'lr', 'time_s')} if log else {}
    window = [r for r in log if r['step'] > args.steps - args.final_loss_window]
    final_mean = {k: round(float(np.mean([r[k] for r in window])), 5) for k in final}
    dtype = save_weights(trainer.weights(), out, dtype=args.weights_dtype,
                         max_fp32_mb=args.max_fp32_mb,
                         metadata={'subcommand': trainer.name, 'config': rel(args.config),
                                   'seed': str(args.seed), 'steps': str(args.steps),
                                   'command': command_line(argv)})
    t1 = time.time()
    evaluation = trainer.evaluate(out)
    record = {
        'name': os.path.basename(stem(out)),
        'subcommand': trainer.name,
        'command': command_line(argv),
        'config': rel(args.config),
        'seed': args.seed,
        'steps': args.steps,
        'batch_size': args.batch_size,
        'optimizer': dict(type='AdamW', lr=args.lr, betas=[args.beta1, args.beta2],
                          weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                          schedule=args.lr_schedule, warmup=args.warmup),
        'threads': torch.get_num_threads(),
        'trained_parameters': n_params,
        'weights': dict(file=os.path.basename(out), stored_dtype=dtype,
                        bytes=os.path.getsize(out)),
        'train_wall_time_s': round(wall, 1),
        'eval_wall_time_s': round(time.time() - t1, 1),
        'final_loss': final_mean,
        'final_loss_window': args.final_loss_window,
        **trainer.card_details(),
        'evaluation': evaluation,
        'evaluations_during_training': evals,
        'log': log,
    }
    write_json(record, stem(out) + '.json')
    write_card(record, stem(out) + '.md')
    return record


# ---- evaluation helpers ------------------------------------------------------------------------
def shapes_eval_summary(images: Tensor, conditions) -> dict[str, Any]:
    """ShapesEval soft / strict, per clause type and per prompt kind (strict and soft)."""
    from vargo.components.datasets.shapes import KINDS, parse_prompt, spec_of_class
    from vargo.components.rewards.shapes_eval import score_images, summarize_scores
    res = score_images(images, conditions)
    out = {'n': int(images.shape[0]), **summarize_scores(res, conditions)}
    specs = [parse_prompt(c) if isinstance(c, str) else spec_of_class(c) for c in conditions]
    soft = res.soft.float()
    for k in KINDS:
        sel = torch.tensor([s.kind == k for s in specs])
        if sel.any() and len({s.kind for s in specs}) > 1:
            out[f'kind_soft/{k}'] = float(soft[sel].mean())
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def fidelity(images: Tensor, task: str, reference: str) -> dict[str, Any]:
    """FID against the shipped reference statistics of ``task`` / ``reference``, or why not."""
    try:
        from vargo.components.benchmarks.shapes_features import shapes_fidelity
        res = shapes_fidelity(images, reference=reference, task=task, metrics=('fid',))
        return {'fid': round(float(res['fid']), 3), 'fid_num_gen': int(images.shape[0]),
                'fid_reference': f'{task}/{reference}'}
    except Exception as e:   # the extractor is optional: say why FID is missing
        return {'fid': None, 'fid_error': f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'}


def build_policy_from_config(cfg, *, overrides: Optional[dict] = None):
    """The policy of ``cfg.policy`` built through the POLICIES registry (strict loading)."""
    from vargo.core.registry import POLICIES
    pcfg = dict(cfg.policy.to_dict() if hasattr(cfg.policy, 'to_dict') else cfg.policy)
    pcfg.update(overrides or {})
    return POLICIES.build(pcfg)


def sample_images(policy, sampler, conditions: list, per_condition: int, *, task: str,
                  seed: int, max_rows: int = 256) -> tuple[Tensor, list]:
    """``per_condition`` samples of each condition with ``sampler`` (seeded through
    :class:`~vargo.core.rng.BatchRNG`, chunked so the CFG batch has <= ``max_rows`` rows).

    Returns:
        ``(images [N * per_condition, 3, 32, 32], conditions repeated per sample)``.
    """
    from vargo.core.rng import BatchRNG
    from vargo.core.types import Conditions
    rows_per_chunk = max(1, max_rows // (2 * per_condition))
    images, conds = [], []
    for j, i in enumerate(range(0, len(conditions), rows_per_chunk)):
        chunk = conditions[i:i + rows_per_chunk]
        cond = (Conditions(class_ids=torch.tensor(chunk, dtype=torch.long)) if task == 'c2i'
                else Conditions(prompts=list(chunk)))
        rng = BatchRNG(seed, j, len(chunk) * per_condition, rank=0, world_size=1)
        ro = sampler.rollout(policy, cond, group_size=per_condition, rng=rng)
        images.append(ro.images)
        conds += [c for c in chunk for _ in range(per_condition)]
    return torch.cat(images), conds


@torch.no_grad()
def reconstruction_eval(tokenizer, codebook_size: Optional[int], *, seed: int, n: int,
                        quick: bool) -> dict[str, Any]:
    """ShapesEval / L1 / PSNR (/ rFID unless ``quick``) of ``tokenizer.decode(tokenizer.encode(x))``
    on ``n`` ground-truth 'eval' images per task, and the codes used: the reward ceiling of
    every model decoding through the tokenizer (VQ, multi-scale VQVAE and KL VAE alike; a
    continuous tokenizer has ``codebook_size=None`` and reports the latent statistics of
    ``encode`` instead: per-channel std, mean |mean|)."""
    from vargo.components.datasets.shapes import ShapesImageDataset
    out: dict[str, Any] = {}
    used = torch.zeros(codebook_size or 1, dtype=torch.bool)
    latents = []
    for task in ('c2i', 't2i'):
        ds = ShapesImageDataset(split='eval', task=task, num_samples=n,
                                seed=seed + EVAL_SEED_OFFSET)
        items = [ds[i] for i in range(n)]
        real = torch.stack([it['image'] for it in items])
        conds = [it['class_id' if task == 'c2i' else 'prompt'] for it in items]
        recs, ids_all = [], []
        for i in range(0, n, 128):
            ids = tokenizer.encode(real[i:i + 128])
            ids_all.append(ids)
            recs.append(tokenizer.decode(ids))
        rec = torch.cat(recs)
        if codebook_size:
            used[torch.cat(ids_all).unique()] = True
        else:
            latents.append(torch.cat(ids_all).transpose(0, 1).flatten(1))     # [D, B h w]
        res = {'reconstruction': shapes_eval_summary(rec, conds),
               'ground_truth_strict': shapes_eval_summary(real, conds)['strict'],
               'l1': round(float((rec - real).abs().mean()), 5),
               'psnr': round(float(-10 * torch.log10((rec - real).pow(2).mean())), 2)}
        if not quick:
            res['rfid'] = fidelity(rec, task, 'eval')
        out[task] = res
    if codebook_size:
        out['codebook_used'] = int(used.sum())
        out['codebook_size'] = codebook_size
    else:
        lat = torch.cat(latents, dim=1)
        out['latent_std'] = round(float(lat.std()), 4)
        out['latent_channel_std'] = [round(float(v), 4) for v in lat.std(dim=1)]
        out['latent_abs_mean'] = round(float(lat.mean(dim=1).abs().mean()), 4)
    out['eval_images'] = f'{n} ShapesImageDataset(split=eval) images per task, seed ' \
                         f'{seed + EVAL_SEED_OFFSET}'
    return out


class TokenizerPretrainer(Pretrainer):
    """What the VQ, multi-scale VQVAE and KL VAE trainers share: the mixed c2i/t2i image stream,
    the foreground-weighted reconstruction loss, and (``quantized`` tokenizers) codebook
    statistics and dead-code restarts."""

    c2i_fraction_default = 0.25
    #: a codebook (commitment weight, dead-code restarts); False for continuous tokenizers
    quantized = True

    @classmethod
    def add_arguments(cls, p):
        if cls.quantized:
            p.add_argument('--beta', type=float, default=0.25, help='commitment weight')
        p.add_argument('--rec-loss', choices=('l1', 'l2'), default='l2')
        p.add_argument('--fg-weight', type=float, default=4.0,
                       help='extra reconstruction weight of object pixels and their 1-px ring '
                            '(objects cover ~5-15%% of a Shapes image; 0: plain mean)')
        p.add_argument('--c2i-fraction', type=float, default=cls.c2i_fraction_default,
                       help='fraction of each batch from the single-object (c2i) stream; the '
                            'rest are kind-balanced prompt (t2i) images, which hold more objects')
        if cls.quantized:
            p.add_argument('--restart-every', type=int, default=50,
                           help='re-initialise codes unused for this many steps (0: never)')
            p.add_argument('--restart-until', type=float, default=0.75,
                           help='fraction of the run after which codes are no longer restarted')
        p.add_argument('--eval-images', type=int, default=1024,
                       help='ground-truth eval images per task for the reconstruction metrics')

    def default_out(self):
        return self.cfg.policy.tokenizer_checkpoint

    def make_streams(self, codebook_size: Optional[int]) -> None:
        """Two never-repeating streams (c2i and t2i images) and the code-usage record (None: a
        continuous tokenizer)."""
        half = int(round(self.args.c2i_fraction * self.args.batch_size))
        seed = self.args.seed + DATA_SEED_OFFSET
        # different seeds: item i of both datasets would otherwise share its random layout draws
        self.streams = [ShapesStream('c2i', seed, half, self.args.steps),
                        ShapesStream('t2i', seed + 1, self.args.batch_size - half,
                                     self.args.steps)]
        self.last_used = torch.zeros(codebook_size or 0, dtype=torch.long)

    def batch(self, s: int) -> Tensor:
        return torch.cat([st.batch(s)[0] for st in self.streams if st.batch_size])

    def reconstruction_loss(self, rec: Tensor, x: Tensor, images: Tensor) -> Tensor:
        """L1 or L2 on [-1, 1], weighted ``1 + fg_weight`` on object pixels and their 1-px ring."""
        a = self.args
        err = (rec - x).abs() if a.rec_loss == 'l1' else (rec - x).pow(2)       # [B, 3, H, W]
        if not a.fg_weight:
            return err.mean()
        fg = (images.amax(dim=1, keepdim=True) > 0).float()                    # [B, 1, H, W]
        w = 1 + a.fg_weight * F.max_pool2d(fg, 3, stride=1, padding=1)
        return (err * w).mean() / w.mean()

    def code_statistics(self, ids: Tensor, s: int, rec: Tensor, x: Tensor) -> dict[str, float]:
        """Record the codes used at step ``s``; perplexity and the fraction of pixels off by
        more than 0.25."""
        self.last_used[ids.unique()] = s
        counts = torch.bincount(ids, minlength=self.last_used.numel()).float()
        p = counts / counts.sum()
        perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        return {'perplexity': perplexity, **self.pixel_error(rec, x)}

    @staticmethod
    @torch.no_grad()
    def pixel_error(rec: Tensor, x: Tensor) -> dict[str, float]:
        """The fraction of pixel values off by more than 0.25 (in [0, 1] units)."""
        return {'pixel_err': float(((rec.clamp(-1, 1) - x).abs() > 0.5).float().mean())}

    @torch.no_grad()
    def restart_dead_codes(self, embedding: Tensor, vectors: Optional[Tensor], s: int, *,
                           normalize: bool) -> dict[str, float]:
        """Re-initialise codes unused for ``--restart-every`` steps to encoder vectors of the last
        batch plus small noise (0.01, or 0.01 x the codebook's std when not ``normalize``d onto
        the sphere), until ``--restart-until`` of the run."""
        a = self.args
        if not a.restart_every or (s + 1) % a.restart_every or s + 1 > a.restart_until * a.steps:
            return {}
        dead = (s - self.last_used) >= a.restart_every
        n = int(dead.sum())
        if n and vectors is not None:
            g = torch.Generator().manual_seed(a.seed * 7919 + s)
            pick = torch.randint(0, vectors.shape[0], (n,), generator=g)
            scale = 0.01 if normalize else 0.01 * embedding.std()
            new = vectors[pick] + scale * torch.randn(n, vectors.shape[1], generator=g)
            embedding[dead] = F.normalize(new, dim=-1) if normalize else new
            self.last_used[dead] = s
        return {'restarted': n}

    def recon_loss_description(self) -> str:
        return (f'{self.args.rec_loss} reconstruction on [-1, 1] (foreground weight '
                f'{self.args.fg_weight:g})')

    def data_description(self) -> str:
        return (f'per step: {self.streams[0].batch_size} ShapesImageDataset(train, c2i, seed '
                f'{self.args.seed} + {DATA_SEED_OFFSET}) and {self.streams[1].batch_size} '
                f'ShapesImageDataset(train, t2i, seed {self.args.seed} + {DATA_SEED_OFFSET + 1}) '
                f'images, never repeated')


# ================================================================================================
# VQ tokenizer
# ================================================================================================
class VQPretrainer(TokenizerPretrainer):
    name = 'vq'
    help = 'the VQ tokenizer (policy.tokenizer of --config)'
    default_config = CONFIG_C2I
    defaults = dict(steps=4000, batch_size=32, lr=2e-3, warmup=100, lr_schedule='cosine',
                    weight_decay=0.0, beta2=0.99)

    @classmethod
    def add_arguments(cls, p):
        super().add_arguments(p)
        p.add_argument('--codebook-weight', type=float, default=1.0)
        p.add_argument('--edge-weight', type=float, default=0.0,
                       help='weight of an L1 loss on horizontal and vertical pixel differences '
                            '(sharp corners; 0: off)')

    def build(self):
        from vargo.components.tokenizers.vq import build_vq
        tok = dict(self.cfg.policy.tokenizer)
        if not tok.get('codebook_l2_norm', True):
            raise ValueError('the Shapes VQ trainer implements the L2-normalised codebook '
                             '(codebook_l2_norm=True) only')
        self.vq = build_vq(tok).train()
        self.make_streams(self.vq.codebook_size)
        self._z = None
        return [p for p in self.vq.parameters()]

    def _forward(self, x: Tensor):
        """``x`` in [-1, 1] -> (reconstruction, z [N, C] normalised, ids [N], z_q [N, C])."""
        vq, q = self.vq, self.vq.quantize
        h = vq.quant_conv(vq.encoder(x))                              # [B, C, h, w]
        b, c, hh, ww = h.shape
        z = F.normalize(h.permute(0, 2, 3, 1).reshape(-1, c), dim=-1)  # [B*h*w, C] raster
        emb = q.codebook()                                            # [V, C] normalised
        with torch.no_grad():
            ids = (z @ emb.t()).argmax(dim=1)          # nearest on the sphere = max cosine
        z_q = emb[ids]
        z_st = z + (z_q - z).detach()
        rec = vq.decode_latent(z_st.view(b, hh, ww, c).permute(0, 3, 1, 2))
        return rec, z, ids, z_q

    def step(self, s):
        a = self.args
        images = self.batch(s)
        x = images * 2 - 1
        rec, z, ids, z_q = self._forward(x)
        rec_loss = self.reconstruction_loss(rec, x, images)
        if a.edge_weight:
            edge = ((rec.diff(dim=-1) - x.diff(dim=-1)).abs().mean()
                    + (rec.diff(dim=-2) - x.diff(dim=-2)).abs().mean())
            rec_loss = rec_loss + a.edge_weight * edge
        codebook = (z_q - z.detach()).pow(2).mean()
        commit = (z_q.detach() - z).pow(2).mean()
        loss = rec_loss + a.codebook_weight * codebook + a.beta * commit
        self._z = z.detach()
        return loss, {'loss': loss.item(), 'rec': rec_loss.item(), 'codebook': codebook.item(),
                      'commit': commit.item(), **self.code_statistics(ids, s, rec, x)}

    def after_update(self, s):
        return self.restart_dead_codes(self.vq.quantize.embedding.weight, self._z, s,
                                       normalize=True)

    def weights(self):
        return self.vq.state_dict()

    def card_details(self):
        tok = dict(self.cfg.policy.tokenizer)
        return {'architecture': {'tokenizer': tok,
                                 'parameters': sum(p.numel() for p in self.vq.parameters())},
                'data': self.data_description(),
                'loss': f'{self.args.rec_loss} reconstruction on [-1, 1] + codebook + '
                        f'{self.args.beta} * commitment (L2-normalised codes)'}

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        from vargo.components.policies.llamagen import load_official_state_dict, strict_load
        from vargo.components.tokenizers.vq import build_vq
        vq = build_vq(dict(self.cfg.policy.tokenizer)).eval()
        strict_load(vq, load_official_state_dict(path, what='VQ tokenizer'), what=path)
        n = 256 if quick else self.args.eval_images
        return reconstruction_eval(vq, vq.codebook_size, seed=self.args.seed, n=n, quick=quick)


# ================================================================================================
# Text encoder (frozen, seeded, not trained)
# ================================================================================================
def write_text_encoder(args, argv) -> dict[str, Any]:
    """Build the config's word-level T5 from its seed and write it (no training)."""
    from vargo.components.tokenizers.text import build_text_encoder
    cfg = load_cfg(args.config)
    tcfg = dict(cfg.policy.get('text_encoder') or {})
    if tcfg.get('type') != 'word-t5':
        raise ValueError(f'{args.config}: policy.text_encoder must be a word-t5 dict, got '
                         f'{tcfg.get("type")!r}')
    out = args.out or tcfg.get('checkpoint')
    if not out:
        raise ValueError('no --out and no policy.text_encoder.checkpoint in the config')
    tcfg.pop('checkpoint', None)
    t0 = time.time()
    enc = build_text_encoder(tcfg)
    state = enc.model.state_dict()
    dtype = save_weights(state, out, dtype='float32', max_fp32_mb=1e9,
                         metadata={'subcommand': 'text-encoder', 'config': rel(args.config),
                                   'seed': str(tcfg.get('seed', 0)),
                                   'command': command_line(argv)})
    # the written file must rebuild the same encoder through the config
    check = build_text_encoder({**tcfg, 'checkpoint': out})
    probe = ['a red circle', 'two blue squares', 'a cyan triangle left of a yellow square']
    e1, m1 = enc(probe)
    e2, m2 = check(probe)
    assert torch.equal(e1, e2) and torch.equal(m1, m2)
    record = {
        'name': os.path.basename(stem(out)), 'subcommand': 'text-encoder',
        'command': command_line(argv), 'config': rel(args.config),
        'seed': int(tcfg.get('seed', 0)), 'steps': 0,
        'weights': dict(file=os.path.basename(out), stored_dtype=dtype,
                        bytes=os.path.getsize(out)),
        'train_wall_time_s': round(time.time() - t0, 1),
        'architecture': {'text_encoder': {k: v for k, v in tcfg.items() if k != 'vocabulary'},
                         'vocabulary': list(tcfg['vocabulary']),
                         'token_ids': {k: v for k, v in enc.vocab.items()},
                         'parameters': sum(p.numel() for p in enc.model.parameters())},
        'evaluation': {'features': f'[B, {enc.max_length}, {enc.dim}] float32, right-padded',
                       'feature_rms': round(float(e1[m1].pow(2).mean().sqrt()), 4)},
        'log': [],
    }
    write_json(record, stem(out) + '.json')
    write_card(record, stem(out) + '.md')
    return record


# ================================================================================================
# LlamaGen GPTs
# ================================================================================================
class LlamaGenPretrainer(Pretrainer):
    task = 'c2i'
    defaults = dict(steps=600, batch_size=64, lr=1e-3, warmup=50, lr_schedule='cosine',
                    weight_decay=0.05, beta2=0.95)

    @classmethod
    def add_arguments(cls, p):
        p.add_argument('--tokenizer-checkpoint', default=None,
                       help='VQ weights (default: policy.tokenizer_checkpoint of the config)')
        p.add_argument('--eval-per-condition', type=int, default=None,
                       help='samples per condition in the final evaluation (default: c2i 32 per '
                            'class, t2i 4 per prompt)')
        p.add_argument('--eval-prompts', type=int, default=192,
                       help='t2i: kind-balanced prompts per split in the final evaluation')
        p.add_argument('--cfg-scales', type=float, nargs='*', default=None,
                       help='also evaluate at these CFG scales (ShapesEval only), for choosing')

    def default_out(self):
        return self.cfg.policy.checkpoint

    def policy_overrides(self, checkpoint: Optional[str]) -> dict:
        ov = {'checkpoint': checkpoint}
        if self.args.tokenizer_checkpoint:
            ov['tokenizer_checkpoint'] = self.args.tokenizer_checkpoint
        return ov

    def build(self):
        p = self.cfg.policy
        if p.get('task') != self.task:
            raise ValueError(f'{self.name} needs a {self.task} config, {self.args.config} has '
                             f'task={p.get("task")!r}')
        torch.manual_seed(self.args.seed)
        self.policy = build_policy_from_config(self.cfg, overrides=self.policy_overrides(None))
        self.policy.train()
        self.stream = ShapesStream(self.task, self.args.seed + DATA_SEED_OFFSET,
                                   self.args.batch_size, self.args.steps)
        return self.policy.trainable_parameters()

    def conditions(self, conds):
        from vargo.core.types import Conditions
        if self.task == 'c2i':
            return Conditions(class_ids=torch.tensor(conds, dtype=torch.long))
        return Conditions(prompts=list(conds))

    def step(self, s):
        images, conds = self.stream.batch(s)
        with torch.no_grad():
            tokens = self.policy.vq.encode(images)                       # [B, T]
        loss = self.policy.pretrain_loss(tokens, self.conditions(conds))
        return loss, {'loss': loss.item()}

    def weights(self):
        return self.policy.gpt.state_dict()

    def card_details(self):
        pol = self.policy
        return {'architecture': {
                    'arch': dict(self.cfg.policy.arch), 'task': self.task,
                    'tokens': pol.num_actions, 'condition_positions': pol.cls_token_num,
                    'vocab_size': pol.cfg.vocab_size,
                    'class_dropout_prob': pol.class_dropout_prob,
                    'parameters': sum(p.numel() for p in pol.gpt.parameters())},
                'data': f'ShapesImageDataset(split=train, task={self.task}, seed='
                        f'{self.args.seed} + {DATA_SEED_OFFSET}) images, fresh every step, '
                        f'VQ-encoded on the fly by the frozen tokenizer '
                        f'({self.args.tokenizer_checkpoint or self.cfg.policy.tokenizer_checkpoint})'}

    @abc.abstractmethod
    def eval_conditions(self, split: str, quick: bool) -> tuple[list, int]:
        """``(conditions of ``split``, samples per condition)`` of the evaluation."""

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        from vargo.core.registry import SAMPLERS
        policy = build_policy_from_config(self.cfg, overrides=self.policy_overrides(path))
        policy.eval()
        scfg = dict(self.cfg.sampler)
        scales = [scfg['cfg_scale']]
        if not quick and self.args.cfg_scales:
            scales += [c for c in self.args.cfg_scales if c != scfg['cfg_scale']]
        seed = self.args.seed + EVAL_SEED_OFFSET
        out: dict[str, Any] = {'sampler': scfg, 'sample_seed': seed}
        for scale in scales:
            sampler = SAMPLERS.build({**scfg, 'cfg_scale': scale})
            key = 'main' if scale == scfg['cfg_scale'] else f'cfg_{scale:g}'
            res = {}
            for split in self.eval_splits():
                conds, k = self.eval_conditions(split, quick)
                t0 = time.time()
                images, flat = sample_images(policy, sampler, conds, k, task=self.task,
                                             seed=seed)
                res[split] = {'conditions': len(conds), 'per_condition': k,
                              **shapes_eval_summary(images, flat),
                              'sample_time_s': round(time.time() - t0, 1)}
                if key == 'main' and not quick:
                    res[split].update(fidelity(images, self.task, split))
            out[key] = res
        return out

    def eval_splits(self):
        return ('train',)


class LlamaGenC2IPretrainer(LlamaGenPretrainer):
    name = 'llamagen-c2i'
    help = 'the class-conditional LlamaGen GPT (policy of a c2i config)'
    task = 'c2i'
    default_config = CONFIG_C2I
    # the shipped model: ShapesEval strict rose to ~0.5 by step 800 and stayed (model card)
    defaults = {**LlamaGenPretrainer.defaults, 'steps': 1200, 'lr_schedule': 'constant'}

    def eval_conditions(self, split, quick):
        from vargo.components.datasets.shapes import NUM_CLASSES
        k = 2 if quick else (self.args.eval_per_condition or 32)
        return list(range(NUM_CLASSES)), k


class LlamaGenT2IPretrainer(LlamaGenPretrainer):
    name = 'llamagen-t2i'
    help = 'the text-conditional LlamaGen GPT (policy of a t2i config; its T5 must exist)'
    task = 't2i'
    default_config = CONFIG_T2I
    # the shipped model: 3000 constant-LR steps (strict 0.35 on train prompts; model card)
    defaults = {**LlamaGenPretrainer.defaults, 'steps': 3000, 'lr_schedule': 'constant'}

    def eval_conditions(self, split, quick):
        from vargo.components.datasets.shapes import ShapesPromptDataset
        n = 48 if quick else self.args.eval_prompts
        ds = ShapesPromptDataset(split=split, num_prompts=n, seed=0)
        k = 1 if quick else (self.args.eval_per_condition or 4)
        return list(ds.prompts), k

    def eval_splits(self):
        return ('train', 'eval')


# ================================================================================================
# VAR: the multi-scale residual VQVAE and the class-conditional VAR transformer
# ================================================================================================
CONFIG_VAR_C2I = 'configs/_base_/policies/var_shapes_c2i.py'


def require_policy_type(cfg, path: str, policy_type: str, subcommands: str,
                        example: str) -> None:
    """Fail clearly when ``cfg.policy.type`` is not the ``policy_type`` a subcommand trains."""
    if cfg.policy.get('type') != policy_type:
        raise ValueError(f'{path}: policy.type is {cfg.policy.get("type")!r}; the {subcommands} '
                         f'subcommands need a {policy_type} config such as {example}')


def _require_var_config(cfg, path: str) -> None:
    require_policy_type(cfg, path, 'VARPolicy', 'msvq and var-c2i', CONFIG_VAR_C2I)


class MSVQPretrainer(TokenizerPretrainer):
    """VAR's multi-scale residual VQVAE (``policy.tokenizer`` and ``policy.patch_nums`` of a
    VAR config), trained with VAR's quantizer loss (``VectorQuantizer2.forward`` of
    FoundationVision/VAR) without its GAN and perceptual terms:

    * residual quantisation over the scales as in inference (area-downsampled residual, nearest
      code, bicubic upsampling, the scale's Phi), on the *detached* latent ``f``;
    * ``vq = mean over scales s of [beta * ||sg(f_hat_s) - f||^2 + ||f_hat_s - sg(f)||^2]``
      (``f_hat_s`` the partial sum after scale s: the second term trains the codebook and the
      Phi convs, the first commits the encoder), ``beta = 0.25``;
    * straight-through decoding ``decoder(post_quant_conv(sg(f_hat) - sg(f) + f))``;
    * reconstruction L2 (or L1) on images in [-1, 1], foreground-weighted as the VQ trainer.

    Dead codes (unused for ``--restart-every`` steps) are re-initialised to residual vectors of
    the current batch (our addition, as the VQ trainer; VAR relies on its large data instead).
    """

    name = 'msvq'
    help = "VAR's multi-scale residual VQVAE (policy.tokenizer of a VAR config)"
    default_config = CONFIG_VAR_C2I
    # the shipped msvq_shapes: c2i reconstructions 0.92 strict at step 1000, 1.00 at 2500
    defaults = dict(steps=2500, batch_size=32, lr=2e-3, warmup=100, lr_schedule='cosine',
                    weight_decay=0.0, beta2=0.99)

    c2i_fraction_default = 0.5

    def _build_vae(self):
        from vargo.components.tokenizers.msvq import build_msvq
        return build_msvq(dict(self.cfg.policy.tokenizer), patch_nums=self.cfg.policy.patch_nums)

    def build(self):
        _require_var_config(self.cfg, self.args.config)
        self.vae = self._build_vae()
        self.vae.train()
        for p in self.vae.parameters():
            p.requires_grad_(True)
        self.make_streams(self.vae.vocab_size)
        self._rest = None
        return [p for p in self.vae.parameters()]

    def _forward(self, x: Tensor):
        """``x`` in [-1, 1] -> (reconstruction, vq loss, ids [N], residual vectors [N, C])."""
        vae, q = self.vae, self.vae.quantize
        f = vae.quant_conv(vae.encoder(x))                                # [B, C, h, w]
        b, c, hh, ww = f.shape
        f_nog = f.detach()
        f_rest = f_nog.clone()
        f_hat = torch.zeros_like(f_nog)
        vq = f.new_zeros(())
        ids, rests = [], []
        num_scales = q.num_scales
        for si, pn in enumerate(q.patch_nums):
            z = f_rest if si == num_scales - 1 else F.interpolate(f_rest, size=(pn, pn),
                                                                 mode='area')
            z = z.permute(0, 2, 3, 1).reshape(-1, c)
            with torch.no_grad():
                idx = q._nearest(z)
            ids.append(idx)
            rests.append(z)
            h = q._h(idx.view(b, pn * pn), si, (hh, ww))                  # Phi(upsampled codes)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            vq = vq + self.args.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_nog)
        vq = vq / num_scales
        f_st = (f_hat.detach() - f_nog) + f                               # straight-through
        rec = vae.decoder(vae.post_quant_conv(f_st))
        return rec, vq, torch.cat(ids), torch.cat(rests)

    def step(self, s):
        images = self.batch(s)
        x = images * 2 - 1
        rec, vq, ids, rests = self._forward(x)
        rec_loss = self.reconstruction_loss(rec, x, images)
        loss = rec_loss + vq
        self._rest = rests
        return loss, {'loss': loss.item(), 'rec': rec_loss.item(), 'vq': vq.item(),
                      **self.code_statistics(ids, s, rec, x)}

    def after_update(self, s):
        return self.restart_dead_codes(self.vae.quantize.embedding.weight, self._rest, s,
                                       normalize=False)

    def weights(self):
        return self.vae.state_dict()

    def card_details(self):
        tok = dict(self.cfg.policy.tokenizer)
        return {'architecture': {'tokenizer': tok,
                                 'patch_nums': list(self.cfg.policy.patch_nums),
                                 'tokens': self.vae.num_tokens,
                                 'parameters': sum(p.numel() for p in self.vae.parameters())},
                'data': self.data_description(),
                'loss': f'{self.recon_loss_description()} + VAR\'s multi-scale VQ loss (mean '
                        f'over scales of {self.args.beta} * commitment + codebook/Phi term)'}

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        from vargo.components.policies.llamagen import load_official_state_dict, strict_load
        vae = self._build_vae().eval()
        strict_load(vae, load_official_state_dict(path, what='VAR VQVAE'), what=path)
        n = 256 if quick else self.args.eval_images
        return reconstruction_eval(vae, vae.vocab_size, seed=self.args.seed, n=n, quick=quick)


class VARC2IPretrainer(Pretrainer):
    """The class-conditional VAR transformer (``policy`` of a VAR config) trained with
    :meth:`VARPolicy.pretrain_loss` (teacher-forced cross-entropy over all scales' tokens,
    labels dropped to the null class with ``class_dropout_prob``, for CFG) on the multi-scale
    tokens of freshly rendered Shapes c2i images, encoded on the fly by the config's frozen
    VQVAE. Evaluated by sampling every class with the config's ``sampler``."""

    name = 'var-c2i'
    help = 'the class-conditional VAR transformer (policy of a VAR config; its msvq must exist)'
    task = 'c2i'
    default_config = CONFIG_VAR_C2I
    defaults = dict(steps=1200, batch_size=32, lr=1e-3, warmup=50, lr_schedule='constant',
                    weight_decay=0.05, beta2=0.95)

    @classmethod
    def add_arguments(cls, p):
        p.add_argument('--tokenizer-checkpoint', default=None,
                       help='VQVAE weights (default: policy.tokenizer_checkpoint of the config)')
        p.add_argument('--eval-per-condition', type=int, default=None,
                       help='samples per class in the final evaluation (default 32)')
        p.add_argument('--cfg-scales', type=float, nargs='*', default=None,
                       help='also evaluate at these CFG scales (ShapesEval only), for choosing')

    def default_out(self):
        return self.cfg.policy.checkpoint

    def policy_overrides(self, checkpoint: Optional[str]) -> dict:
        ov = {'checkpoint': checkpoint}
        if getattr(self.args, 'tokenizer_checkpoint', None):
            ov['tokenizer_checkpoint'] = self.args.tokenizer_checkpoint
        return ov

    def require_config(self) -> None:
        _require_var_config(self.cfg, self.args.config)

    def build(self):
        self.require_config()
        torch.manual_seed(self.args.seed)
        self.policy = build_policy_from_config(self.cfg, overrides=self.policy_overrides(None))
        self.policy.train()
        self.stream = ShapesStream('c2i', self.args.seed + DATA_SEED_OFFSET,
                                   self.args.batch_size, self.args.steps)
        return self.policy.trainable_parameters()

    def step(self, s):
        from vargo.core.types import Conditions
        images, conds = self.stream.batch(s)
        tokens = self.policy.encode_images(images)                        # [B, L]
        loss = self.policy.pretrain_loss(tokens, Conditions(
            class_ids=torch.tensor(conds, dtype=torch.long)))
        return loss, {'loss': loss.item()}

    def weights(self):
        # the block-causal mask buffer (an official key) holds -inf, which the float16 check of
        # save_weights rejects: store the float16 minimum instead (attention logits of VAR's
        # l2-normalised q, k are <= 100 in magnitude, so exp(-65504 + ...) is exactly 0 in
        # float32 and the loaded model computes the same function)
        state = self.policy.var.state_dict()
        state['attn_bias_for_masking'] = state['attn_bias_for_masking'].clamp_min(
            torch.finfo(torch.float16).min)
        return state

    def card_details(self):
        pol = self.policy
        return {'architecture': {
                    'arch': dict(self.cfg.policy.arch), 'patch_nums': list(pol.patch_nums),
                    'tokens': pol.num_actions, 'scales': pol.num_steps,
                    'vocab_size': pol.cfg.vocab_size, 'num_classes': pol.cfg.num_classes,
                    'class_dropout_prob': pol.class_dropout_prob,
                    'parameters': sum(p.numel() for p in pol.var.parameters())},
                'notes': 'the block-causal mask buffer attn_bias_for_masking is stored with the '
                         'float16 minimum (-65504) instead of -inf; VAR\'s attention logits are '
                         '<= 100 in magnitude, so the loaded model computes the same function',
                'data': f'ShapesImageDataset(split=train, task=c2i, seed={self.args.seed} + '
                        f'{DATA_SEED_OFFSET}) images, fresh every step, encoded on the fly by '
                        f'the frozen multi-scale VQVAE '
                        f'({self.args.tokenizer_checkpoint or self.cfg.policy.tokenizer_checkpoint})'}

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        from vargo.components.datasets.shapes import NUM_CLASSES
        from vargo.core.registry import SAMPLERS
        policy = build_policy_from_config(self.cfg, overrides=self.policy_overrides(path))
        policy.eval()
        scfg = dict(self.cfg.sampler)
        scales = [scfg['cfg_scale']]
        if not quick and self.args.cfg_scales:
            scales += [c for c in self.args.cfg_scales if c != scfg['cfg_scale']]
        seed = self.args.seed + EVAL_SEED_OFFSET
        k = 2 if quick else (self.args.eval_per_condition or 32)
        conds = list(range(NUM_CLASSES))
        out: dict[str, Any] = {'sampler': scfg, 'sample_seed': seed}
        for scale in scales:
            sampler = SAMPLERS.build({**scfg, 'cfg_scale': scale})
            key = 'main' if scale == scfg['cfg_scale'] else f'cfg_{scale:g}'
            t0 = time.time()
            images, flat = sample_images(policy, sampler, conds, k, task='c2i', seed=seed)
            res = {'conditions': len(conds), 'per_condition': k,
                   **shapes_eval_summary(images, flat),
                   'sample_time_s': round(time.time() - t0, 1)}
            if key == 'main' and not quick:
                res.update(fidelity(images, 'c2i', 'train'))
            out[key] = {'train': res}
        return out


SUBCOMMANDS: dict[str, type[Pretrainer]] = {
    c.name: c for c in (VQPretrainer, LlamaGenC2IPretrainer, LlamaGenT2IPretrainer)}


SUBCOMMANDS.update({c.name: c for c in (MSVQPretrainer, VARC2IPretrainer)})


# ================================================================================================
# MAR: the small KL VAE and the class-conditional MAR (masked AR with a diffusion head)
# ================================================================================================
CONFIG_MAR_C2I = 'configs/_base_/policies/mar_shapes_c2i.py'


def _require_mar_config(cfg, path: str) -> None:
    require_policy_type(cfg, path, 'MARPolicy', 'kl-vae and mar-c2i', CONFIG_MAR_C2I)


class _LatentRoundTrip:
    """``encode`` / ``decode`` of a KL VAE as :func:`reconstruction_eval` calls a tokenizer:
    images in [0, 1] -> scaled posterior means ``[B, D, h, w]`` -> images in [0, 1]."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, images: Tensor) -> Tensor:
        return self.vae.encode_latents(images)

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode_latents(latents)


class KLVAEPretrainer(TokenizerPretrainer):
    """MAR's KL VAE (``policy.tokenizer`` of a MAR config; :class:`~vargo.components.tokenizers.
    kl_vae.KLVAE`, official key names) trained as latent-diffusion's ``LPIPSWithDiscriminator``
    without its perceptual and GAN terms (pointless at 32 px): the decoder reconstructs a
    reparameterised posterior *sample* ``z = mu + sigma n``; ``loss = rec + kl_weight * KL``
    with ``KL = 0.5 (mu^2 + sigma^2 - 1 - log sigma^2)`` averaged over latent elements and
    ``rec`` the foreground-weighted L2 (or L1) of the VQ trainers on images in [-1, 1].

    Evaluated as ``vq`` on the posterior means (``encode_latents``; the MAR trains on posterior
    samples, ``mar-c2i --latents``), plus the latent statistics: the config's ``scale_factor`` should make the scaled
    latents about unit std (``unit_std_scale_factor`` in the card), as MAR's 0.2325 does for
    KL-16 on ImageNet. The scale does not change the weights or the reconstructions: train, set
    the config's ``tokenizer.scale_factor`` to the card's ``unit_std_scale_factor``, then
    ``eval --config MAR_CONFIG --vq`` re-measures and rewrites the card.
    """

    name = 'kl-vae'
    help = "MAR's KL VAE (policy.tokenizer of a MAR config)"
    default_config = CONFIG_MAR_C2I
    defaults = dict(steps=1500, batch_size=32, lr=2e-3, warmup=100, lr_schedule='cosine',
                    weight_decay=0.0, beta2=0.99)
    c2i_fraction_default = 0.5
    quantized = False

    @classmethod
    def add_arguments(cls, p):
        super().add_arguments(p)
        p.add_argument('--kl-weight', type=float, default=1e-3,
                       help='weight of the KL term (mean over latent elements)')

    def _build_vae(self):
        from vargo.components.tokenizers.kl_vae import build_kl_vae
        return build_kl_vae(dict(self.cfg.policy.tokenizer))

    def build(self):
        _require_mar_config(self.cfg, self.args.config)
        self.vae = self._build_vae().train()
        self.make_streams(None)
        return list(self.vae.parameters())

    def step(self, s):
        images = self.batch(s)
        x = images * 2 - 1
        post = self.vae.encode(x)
        z = post.mean + post.std * torch.randn_like(post.mean)
        rec = self.vae.decode(z)
        rec_loss = self.reconstruction_loss(rec, x, images)
        kl = 0.5 * (post.mean.pow(2) + post.std.pow(2) - 1.0 - post.logvar).mean()
        loss = rec_loss + self.args.kl_weight * kl
        return loss, {'loss': loss.item(), 'rec': rec_loss.item(), 'kl': kl.item(),
                      'latent_std': float(post.mean.detach().std()),
                      'posterior_std': float(post.std.detach().mean()),
                      **self.pixel_error(rec, x)}

    def weights(self):
        return self.vae.state_dict()

    def card_details(self):
        tok = dict(self.cfg.policy.tokenizer)
        return {'architecture': {'tokenizer': tok, 'downsample': self.vae.downsample,
                                 'tokens': (self.cfg.policy.image_size // self.vae.downsample) ** 2,
                                 'parameters': sum(p.numel() for p in self.vae.parameters())},
                'data': self.data_description(),
                'loss': f'{self.recon_loss_description()} of a posterior sample + '
                        f'{self.args.kl_weight:g} * KL(q(z|x) || N(0, I)) (mean over latent '
                        f'elements)'}

    @torch.no_grad()
    def evaluate(self, path, quick=False):
        from vargo.components.policies.llamagen import strict_load
        from vargo.components.policies.mar import load_mar_state_dict
        vae = self._build_vae().eval()
        strict_load(vae, load_mar_state_dict(path, 'model', what='KL VAE'), what=path)
        n = 256 if quick else self.args.eval_images
        out = reconstruction_eval(_LatentRoundTrip(vae), None, seed=self.args.seed, n=n,
                                  quick=quick)
        out['scale_factor'] = vae.scale_factor
        out['unit_std_scale_factor'] = round(vae.scale_factor / out['latent_std'], 4)
        return out


class MARC2IPretrainer(VARC2IPretrainer):
    """The class-conditional MAR (``policy`` of a MAR config) trained with
    :meth:`MARPolicy.pretrain_loss` -- the official ``MAR.forward`` loss: random orders, one
    truncated-normal masking ratio per batch (mode 1, std 0.25, >= ``mask_ratio_min`` 0.7),
    labels dropped to ``fake_latent`` with ``label_drop_prob`` (for CFG), attention/projection
    dropout, and the head's loss on the masked tokens, ``diffusion_batch_mul`` draws of the
    noise level per token (DDPM head: eps MSE + learned-variance VLB; flow head: velocity MSE)
    -- on the latents of freshly rendered Shapes c2i images, a posterior sample of the config's frozen KL VAE (``engine_mar.py``; ``--latents
    mean``: the posterior mean). An exponential moving average of the weights (``--ema``, the
    official ``model_ema``) is what is shipped and evaluated. Evaluated by sampling every class
    with the config's ``MaskedSampler``."""

    name = 'mar-c2i'
    help = 'the class-conditional MAR (policy of a MAR config; its kl-vae must exist)'
    default_config = CONFIG_MAR_C2I
    # the shipped mar_shapes_c2i: 2400 constant-LR steps (strict 0.17 unguided; model card)
    defaults = dict(steps=2400, batch_size=32, lr=2e-3, warmup=100, lr_schedule='constant',
                    weight_decay=0.02, beta2=0.95)

    @classmethod
    def add_arguments(cls, p):
        super().add_arguments(p)
        p.add_argument('--ema', type=float, default=0.999,
                       help='EMA decay of the shipped weights (0: ship the raw weights); the '
                            'decay at step s is min(ema, (1 + s) / (10 + s))')
        p.add_argument('--latents', choices=('sample', 'mean'), default='sample',
                       help='train on posterior samples (official) or posterior means')

    def require_config(self):
        _require_mar_config(self.cfg, self.args.config)

    def build(self):
        params = super().build()
        self.ema = ({k: v.detach().clone() for k, v in self.policy.mar.state_dict().items()}
                    if self.args.ema else None)
        return params

    def step(self, s):
        from vargo.core.types import Conditions
        images, conds = self.stream.batch(s)
        tokens = self.policy.encode_images(images, sample=self.args.latents == 'sample')
        loss = self.policy.pretrain_loss(tokens, Conditions(
            class_ids=torch.tensor(conds, dtype=torch.long)))
        return loss, {'loss': loss.item()}

    @torch.no_grad()
    def after_update(self, s):
        if self.ema is None:
            return {}
        decay = min(self.args.ema, (1 + s) / (10 + s))
        for k, v in self.policy.mar.state_dict().items():
            self.ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        return {}

    def weights(self):
        return dict(self.ema) if self.ema is not None else self.policy.mar.state_dict()

    def card_details(self):
        pol = self.policy
        return {'architecture': {
                    'arch': dict(self.cfg.policy.arch), 'tokens': pol.seq_len,
                    'token_dim': pol.token_dim, 'head_type': pol.head_type,
                    'buffer_size': pol.cfg.buffer_size,
                    'num_classes': pol.cfg.num_classes, 'label_drop_prob': pol.label_drop_prob,
                    'mask_ratio_min': pol.mask_ratio_min,
                    'diffusion_batch_mul': pol.diffusion_batch_mul,
                    'attn_dropout': pol.cfg.attn_dropout, 'proj_dropout': pol.cfg.proj_dropout,
                    'parameters': sum(p.numel() for p in pol.mar.parameters())},
                'loss': 'MARPolicy.pretrain_loss: ' + (
                    'flow-matching velocity MSE (s ~ U(0, 1), x_s = (1 - s) x0 + s eps, target '
                    'eps - x0)' if pol.head_type == 'flow' else
                    'DiffLoss (eps MSE + learned-variance VLB, 1000-step cosine schedule)')
                + f' on the masked tokens, {pol.diffusion_batch_mul} noise draws per token',
                'notes': (f'shipped weights: EMA of the training weights, decay '
                          f'min({self.args.ema:g}, (1 + s) / (10 + s)) (the official model_ema)'
                          if self.ema is not None else 'shipped weights: the raw training weights'),
                'data': f'ShapesImageDataset(split=train, task=c2i, seed={self.args.seed} + '
                        f'{DATA_SEED_OFFSET}) images, fresh every step, encoded on the fly by '
                        f'the frozen KL VAE '
                        f'({self.args.tokenizer_checkpoint or self.cfg.policy.tokenizer_checkpoint}'
                        f', posterior {self.args.latents}, times its scale_factor '
                        f'{pol.vae.scale_factor:g})'}


SUBCOMMANDS.update({c.name: c for c in (KLVAEPretrainer, MARC2IPretrainer)})


# ================================================================================================
# model cards
# ================================================================================================
def _fmt(v) -> str:
    if v is None:
        return 'n/a'
    if isinstance(v, float):
        return f'{v:.3f}'
    return str(v)


def _eval_table(res: dict) -> list[str]:
    """Markdown rows of ShapesEval summaries keyed by a label."""
    keys = ['n', 'soft', 'strict', 'clause/object', 'clause/count', 'clause/position',
            'kind/single', 'kind/count', 'kind/binding', 'kind/position', 'fid']
    present = [k for k in keys if any(k in r for r in res.values())]
    lines = ['| set | ' + ' | '.join(present) + ' |',
             '|---|' + '---|' * len(present)]
    for label, r in res.items():
        lines.append(f'| {label} | ' + ' | '.join(_fmt(r.get(k)) for k in present) + ' |')
    return lines


def write_card(rec: dict, path: str) -> None:
    """Render the model card (markdown) of a run record."""
    name = rec['name']
    w = rec['weights']
    lines = [f'# {name}', '']
    what = {'vq': 'The Shapes VQ tokenizer (LlamaGen `VQModel`, L2-normalised codebook).',
            'text-encoder': 'The frozen word-level T5 text encoder of the Shapes t2i models '
                            '(random weights from a seeded `T5Config`, not trained).',
            'llamagen-c2i': 'The Shapes class-conditional LlamaGen base model.',
            'llamagen-t2i': 'The Shapes text-conditional LlamaGen base model.',
            'msvq': 'The Shapes multi-scale residual VQVAE of VAR (`MultiScaleVQVAE`, official '
                    'key names).',
            'var-c2i': 'The Shapes class-conditional VAR base model (next-scale prediction).',
            'kl-vae': 'The Shapes KL VAE of MAR (`KLVAE`, official LTH14/mar key names): '
                      'continuous latent tokens.',
            'mar-c2i': 'The Shapes class-conditional MAR base model (masked autoregression of '
                       'continuous tokens with a diffusion head).'}[
                rec['subcommand']]
    lines += [what, '',
              f'- config: `{rec["config"]}`',
              f'- command (from the repository root): `{rec["command"]}`',
              *([f'- run as: `{rec["run_command"]}` (the same training; `--out` and the '
                  f'evaluation options only change where the weights went and what was '
                  f'measured during the run; the file was then copied here byte for byte, so '
                  f'the numbers below are those of the shipped file)']
                if rec.get('run_command') and rec['run_command'] != rec['command'] else []),
              *([f'- evaluation below measured by: `{rec["evaluation_command"]}`']
                if rec.get('evaluation_command') else []),
              f'- seed {rec["seed"]}, {rec["steps"]} steps'
              + (f' of batch {rec["batch_size"]}' if rec.get('batch_size') else ''),
              f'- weights: `{w["file"]}`, {w["bytes"] / 1e6:.2f} MB, stored as {w["stored_dtype"]}'
              + (' (trained in float32, rounded to float16 for shipping; every number below is '
                 'measured on the float16 file loaded into float32 modules)'
                 if w['stored_dtype'] == 'float16' else ''),
              f'- wall time: {rec["train_wall_time_s"]:.0f} s '
              + ('to build and write' if rec['subcommand'] == 'text-encoder' else 'training')
              + (f' + {rec["eval_wall_time_s"]:.0f} s evaluation' if 'eval_wall_time_s' in rec
                 else '') + f' on {rec.get("threads", 2)} CPU threads (shared machine)']
    if rec.get('optimizer'):
        o = rec['optimizer']
        lines.append(f'- optimiser: AdamW lr {o["lr"]:g}, betas {tuple(o["betas"])}, weight decay '
                     f'{o["weight_decay"]:g} (matrices only), {o["warmup"]} warm-up steps then '
                     f'{o["schedule"]}, '
                     f'grad clip {o["grad_clip"]:g}')
    if rec.get('final_loss'):
        fl = ', '.join(f'{k} {v:.4f}' for k, v in rec['final_loss'].items()
                       if k not in ('grad_norm', 'restarted'))
        lines.append(f'- final loss (mean over the last {rec["final_loss_window"]} steps): {fl}')
    if rec.get('data'):
        lines.append(f'- data: {rec["data"]}')
    if rec.get('loss'):
        lines.append(f'- loss: {rec["loss"]}')
    if rec.get('notes'):
        lines.append(f'- notes: {rec["notes"]}')
    arch = rec.get('architecture', {})
    if arch:
        lines.append(f'- architecture: `{json.dumps({k: v for k, v in arch.items() if k not in ("token_ids", "vocabulary")})}`')
    lines += ['', '## Evaluation', '']
    ev = rec['evaluation']
    sub = rec['subcommand']
    tokenizer_subs = ('vq', 'msvq', 'kl-vae')
    if sub in tokenizer_subs:
        tok = 'VAE' if sub == 'kl-vae' else 'VQ'
        lines.append(f'ShapesEval of {tok} reconstructions ({ev["eval_images"]}); the reward '
                     f'ceiling of every model decoding through this {tok}. Ground-truth images '
                     f'score {ev["c2i"]["ground_truth_strict"]:.3f} / '
                     f'{ev["t2i"]["ground_truth_strict"]:.3f} strict (c2i / t2i).')
        lines.append('')
        lines += _eval_table({f'{t} reconstructions': {**ev[t]['reconstruction'],
                                                       'fid': ev[t].get('rfid', {}).get('fid')}
                              for t in ('c2i', 't2i')})
        lines.append('')
        codes = (f'codes used on these images: {ev["codebook_used"]} of {ev["codebook_size"]}'
                 if 'codebook_used' in ev else
                 f'reconstructions of the posterior means; scaled latents (scale_factor '
                 f'{ev["scale_factor"]:g}) on these images: std {ev["latent_std"]:.3f} (per '
                 f'channel {ev["latent_channel_std"]}), mean |channel mean| '
                 f'{ev["latent_abs_mean"]:.3f}; unit-std scale_factor '
                 f'{ev["unit_std_scale_factor"]:g}')
        lines.append(f'L1 {ev["c2i"]["l1"]:.4f} / {ev["t2i"]["l1"]:.4f}, PSNR '
                     f'{ev["c2i"]["psnr"]:.1f} / {ev["t2i"]["psnr"]:.1f} dB (c2i / t2i); '
                     f'{codes}. FID (here rFID: reconstructions vs the shipped '
                     f'real statistics of the eval split) is from '
                     f'`vargo.components.benchmarks.shapes_fidelity`.')
        errs = {ev[t].get('rfid', {}).get('fid_error') for t in ('c2i', 't2i')} - {None}
        if errs:
            lines.append(f'FID not measured: {errs.pop()}')
    elif sub == 'text-encoder':
        lines.append(f'Not trained: {ev["features"]} features, RMS {ev["feature_rms"]} on real '
                     f'tokens. Token ids: `{json.dumps(arch.get("token_ids"))}`.')
    else:
        s = ev['sampler']
        lines.append(f'Sampled with `{json.dumps(s)}` (the config\'s sampler), seed '
                     f'{ev["sample_seed"]} (`BatchRNG`); ShapesEval of the samples '
                     f'(`vargo.components.rewards.shapes_eval.score_images`). '
                     + ('c2i: every class, `per_condition` samples each.' if sub.endswith('c2i')
                        else 't2i: `ShapesPromptDataset(split, num_prompts=conditions, seed=0)` '
                             '(kind-balanced: single, count, binding, position), '
                             '`per_condition` samples each; "eval" are the held-out '
                             'compositions.'))
        lines.append('FID: samples vs the shipped real statistics of the same task and split.')
        lines.append('')
        main = ev['main']
        lines += _eval_table({f'{sp} (cfg {s["cfg_scale"]:g})': r for sp, r in main.items()})
        errs = {r.get('fid_error') for r in main.values()} - {None}
        if errs:
            lines += ['', f'FID not measured: {errs.pop()}']
        others = {k: v for k, v in ev.items() if k.startswith('cfg_')}
        if others:
            lines += ['', 'Other CFG scales (same seed, ShapesEval only):', '']
            lines += _eval_table({f'{sp} ({k.replace("_", " ")})': r
                                  for k, v in others.items() for sp, r in v.items()})
    if rec.get('evaluations_during_training'):
        lines += ['', '## During training (quick evaluations, small samples)', '']
        during = {json.dumps(e['sampler']) for e in rec['evaluations_during_training']
                  if 'sampler' in e and e['sampler'] != ev.get('sampler')}
        if during:   # the run sampled with another setting than the card's (var-c2i)
            lines += [f'Sampled with `{during.pop()}` (the config\'s sampler during the run).', '']
        rows = {}
        for e in rec['evaluations_during_training']:
            if sub in tokenizer_subs:
                rows[f'step {e["step"]}'] = {'c2i strict': e['c2i']['reconstruction']['strict'],
                                            't2i strict': e['t2i']['reconstruction']['strict']}
            else:
                for sp, r in e['main'].items():
                    rows[f'step {e["step"]} {sp}'] = r
        if sub in tokenizer_subs:
            lines += ['| step | c2i strict | t2i strict |', '|---|---|---|']
            lines += [f'| {k} | {_fmt(v["c2i strict"])} | {_fmt(v["t2i strict"])} |'
                      for k, v in rows.items()]
        else:
            lines += _eval_table(rows)
    if rec.get('log'):
        lines += ['', f'Loss log: `{name}.json` (`log`, one row per logged step).']
    lines.append('')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


# ================================================================================================
# command line
# ================================================================================================
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = p.add_subparsers(dest='subcommand', required=True)
    for name, cls in SUBCOMMANDS.items():
        sp = subs.add_parser(name, help=cls.help)
        d = {**dict(steps=1000, batch_size=32, lr=1e-3, warmup=50, lr_schedule='cosine',
                    weight_decay=0.0, beta1=0.9, beta2=0.99), **cls.defaults}
        sp.add_argument('--config', default=cls.default_config)
        sp.add_argument('--seed', type=int, default=0)
        sp.add_argument('--steps', type=int, default=d['steps'])
        sp.add_argument('--batch-size', type=int, default=d['batch_size'])
        sp.add_argument('--lr', type=float, default=d['lr'])
        sp.add_argument('--lr-schedule', choices=('cosine', 'constant'), default=d['lr_schedule'])
        sp.add_argument('--warmup', type=int, default=d['warmup'])
        sp.add_argument('--weight-decay', type=float, default=d['weight_decay'])
        sp.add_argument('--beta1', type=float, default=d['beta1'])
        sp.add_argument('--beta2', type=float, default=d['beta2'])
        sp.add_argument('--grad-clip', type=float, default=1.0)
        sp.add_argument('--threads', type=int, default=2)
        sp.add_argument('--out', default=None,
                        help='weights path (default: the path the config names)')
        sp.add_argument('--weights-dtype', choices=('auto', 'float32', 'float16'),
                        default='auto')
        sp.add_argument('--max-fp32-mb', type=float, default=3.0,
                        help='auto dtype: float16 when float32 weights exceed this size')
        sp.add_argument('--log-every', type=int, default=10)
        sp.add_argument('--final-loss-window', type=int, default=50)
        sp.add_argument('--eval-every', type=int, default=0,
                        help='quick evaluation every N steps (0: only at the end)')
        sp.add_argument('--keep-snapshots', action='store_true',
                        help='keep the weights of the --eval-every evaluations')
        sp.add_argument('--no-progress', action='store_true')
        cls.add_arguments(sp)
    sp = subs.add_parser('text-encoder', help='write the seeded frozen T5 of a t2i config')
    sp.add_argument('--config', default=CONFIG_T2I)
    sp.add_argument('--out', default=None)
    sp.add_argument('--threads', type=int, default=2)
    sp = subs.add_parser('eval', help='re-evaluate the weights a config names; rewrite the card')
    sp.add_argument('--config', required=True)
    sp.add_argument('--cfg-scales', type=float, nargs='*', default=None)
    sp.add_argument('--eval-per-condition', type=int, default=None)
    sp.add_argument('--eval-prompts', type=int, default=192)
    sp.add_argument('--eval-images', type=int, default=1024)
    sp.add_argument('--threads', type=int, default=2)
    sp.add_argument('--seed', type=int, default=None,
                    help='evaluation seed base (default: the seed recorded in the card)')
    sp.add_argument('--vq', action='store_true',
                    help='evaluate the config\'s tokenizer (VQ, VQVAE or KL VAE) instead')
    args = p.parse_args(argv)
    if getattr(args, 'steps', 1) < 1 or getattr(args, 'batch_size', 2) < 2:
        p.error('--steps must be >= 1 and --batch-size >= 2')
    return args


def reevaluate(args, argv) -> dict[str, Any]:
    """The ``eval`` subcommand: evaluate the config's weights, update their JSON and card."""
    cfg = load_cfg(args.config)
    if cfg.policy.get('type') in ('VARPolicy', 'MARPolicy'):
        cls = {('VARPolicy', True): MSVQPretrainer, ('VARPolicy', False): VARC2IPretrainer,
               ('MARPolicy', True): KLVAEPretrainer, ('MARPolicy', False): MARC2IPretrainer}[
                   (cfg.policy.type, bool(args.vq))]
        path = cfg.policy.tokenizer_checkpoint if args.vq else cfg.policy.checkpoint
    elif args.vq:
        cls, path = VQPretrainer, cfg.policy.tokenizer_checkpoint
    else:
        cls = LlamaGenC2IPretrainer if cfg.policy.task == 'c2i' else LlamaGenT2IPretrainer
        path = cfg.policy.checkpoint
    jpath = stem(path) + '.json'
    rec = json.load(open(jpath)) if os.path.isfile(jpath) else None
    if rec is None:
        raise FileNotFoundError(f'{jpath} not found: train the model first')
    ns = argparse.Namespace(config=args.config, tokenizer_checkpoint=None,
                            seed=args.seed if args.seed is not None else rec['seed'],
                            cfg_scales=args.cfg_scales, eval_per_condition=args.eval_per_condition,
                            eval_prompts=args.eval_prompts, eval_images=args.eval_images)
    trainer = cls(ns, cfg)
    t0 = time.time()
    rec['evaluation'] = trainer.evaluate(path)
    rec['eval_wall_time_s'] = round(time.time() - t0, 1)
    rec['evaluation_command'] = command_line(argv)
    write_json(rec, jpath)
    write_card(rec, stem(path) + '.md')
    return rec


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.subcommand == 'text-encoder':
        rec = write_text_encoder(args, argv)
    elif args.subcommand == 'eval':
        rec = reevaluate(args, argv)
    else:
        cls = SUBCOMMANDS[args.subcommand]
        rec = train(cls(args, load_cfg(args.config)), argv)
    print(json.dumps({k: rec[k] for k in ('name', 'final_loss', 'train_wall_time_s')
                      if k in rec}, indent=1))
    print(json.dumps(rec['evaluation'], indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
