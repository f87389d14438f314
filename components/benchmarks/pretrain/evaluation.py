"""The evaluations every Shapes pretrainer shares: ShapesEval summaries, FID, the reconstruction
evaluation of a tokenizer and the sampling evaluation of a generator."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from .common import EVAL_SEED_OFFSET


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
def sampling_eval(policy, sampler_cfg: dict, *, task: str, seed: int, splits: Sequence[str],
                  conditions: Callable[[str], tuple[list, int]],
                  cfg_scales: Optional[Sequence[float]], quick: bool) -> dict[str, Any]:
    """ShapesEval (and FID unless ``quick``) of a generator's samples.

    Every split's conditions (``conditions(split) -> (conditions, samples per condition)``) are
    sampled with the config's sampler (key ``'main'``) and, unless ``quick``, at the other
    ``cfg_scales`` (keys ``'cfg_<scale>'``, ShapesEval only), all from the seed ``seed``.
    """
    from vargo.core.registry import SAMPLERS
    scfg = dict(sampler_cfg)
    scales = [scfg['cfg_scale']]
    if not quick and cfg_scales:
        scales += [c for c in cfg_scales if c != scfg['cfg_scale']]
    out: dict[str, Any] = {'sampler': scfg, 'sample_seed': seed}
    for scale in scales:
        sampler = SAMPLERS.build({**scfg, 'cfg_scale': scale})
        key = 'main' if scale == scfg['cfg_scale'] else f'cfg_{scale:g}'
        res = {}
        for split in splits:
            conds, k = conditions(split)
            t0 = time.time()
            images, flat = sample_images(policy, sampler, conds, k, task=task, seed=seed)
            res[split] = {'conditions': len(conds), 'per_condition': k,
                          **shapes_eval_summary(images, flat),
                          'sample_time_s': round(time.time() - t0, 1)}
            if key == 'main' and not quick:
                res[split].update(fidelity(images, task, split))
        out[key] = res
    return out


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
