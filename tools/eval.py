"""Evaluate a policy: reward heads (ShapesEval soft/strict/per clause), FID-family metrics,
mean token entropy, and a sample grid; JSON + a printed table.

    python tools/eval.py CONFIG [CHECKPOINT] [--splits train eval] [--samples-per-condition N]
                         [--max-conditions N] [--cfg-scale S] [--seed 0] [--out DIR]
                         [--cfg-options k=v ...]

What is evaluated comes from the config: ``eval_cfg.splits`` names a condition dataset per
split, ``eval_cfg.samples_per_condition`` the samples per condition, ``eval_cfg.fidelity`` the
feature extractor of FID/KID/precision/recall (e.g. ``dict(extractor='vargo-shapes')``), and the
config's reward heads score the samples. Without CHECKPOINT the policy is the config's base
model. ``--cfg-scale 1`` samples without classifier-free guidance.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('checkpoint', nargs='?', help='a checkpoint written by tools/train.py')
    p.add_argument('--splits', nargs='+', help='which eval_cfg.splits to evaluate (default all)')
    p.add_argument('--samples-per-condition', type=int)
    p.add_argument('--max-conditions', type=int)
    p.add_argument('--cfg-scale', type=float, help='override the sampler CFG scale (1 = no CFG)')
    p.add_argument('--batch-conditions', type=int, default=16, help='conditions per rollout batch')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', help='output directory (default: <work_dirs>/<config>/eval[_CKPT])')
    p.add_argument('--no-fidelity', action='store_true', help='skip FID/KID/precision/recall')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def load_policy_weights(model, path: str) -> None:
    """Load the ``policy.*`` weights of a tools/train.py checkpoint strictly."""
    from vargo.core.checkpoint import allow_mmengine_checkpoints, load_state_dict_strict, safe_load
    allow_mmengine_checkpoints()
    state = safe_load(path)
    state = state.get('state_dict', state)
    policy_state = {k[len('policy.'):]: v for k, v in state.items() if k.startswith('policy.')}
    if not policy_state:
        raise ValueError(f'{path} holds no policy weights (keys policy.*): pass a checkpoint '
                         f'written by tools/train.py')
    load_state_dict_strict(model.policy, policy_state, source=path)


def evaluate_split(model, dataset, *, per_condition: int, batch_conditions: int, seed: int,
                   max_conditions=None, progress=True) -> tuple[dict, object]:
    """Sample every condition of ``dataset`` ``per_condition`` times; score and measure.

    Returns (metrics dict, the concatenated rollout).
    """
    import torch
    from torch.utils.data import default_collate
    from tqdm import tqdm

    from vargo.core.loop import conditions_from_batch
    from vargo.core.rng import BatchRNG
    from vargo.core.types import Rollout

    n = len(dataset) if max_conditions is None else min(len(dataset), max_conditions)
    policy, sampler = model.policy, model.sampler
    spec_none = type(sampler.logprob_spec())(mode='none',
                                             temperature=sampler.logprob_spec().temperature)
    rollouts, entropies = [], []
    batches = range(0, n, batch_conditions)
    for k, start in enumerate(tqdm(batches, desc='sampling', disable=not progress)):
        items = [dataset[i] for i in range(start, min(n, start + batch_conditions))]
        cond = policy.encode_conditions(conditions_from_batch(default_collate(items)))
        rng = BatchRNG(seed, k, len(items) * per_condition, rank=0, world_size=1,
                       device=policy.device)
        with torch.no_grad():
            r = sampler.rollout(policy, cond, group_size=per_condition, rng=rng)
            r.group_ids = r.group_ids + start
            ev = policy.evaluate(r, spec=spec_none, with_entropy=True)
        if ev.entropy is not None:
            entropies.append((ev.entropy * r.action_mask).sum(1) / r.action_mask.sum(1))
        rollouts.append(r.to('cpu'))
    everything = Rollout.cat(rollouts)
    metrics = {'num_conditions': n, 'num_samples': everything.batch_size}
    ctx = model.reward_context(0)
    for name, head in model.reward_heads.items():
        out = head(everything, ctx)
        s = out.scores.float()
        ok = ~torch.isnan(s)
        metrics[f'{name}/mean'] = float(s[ok].mean()) if ok.any() else float('nan')
        if out.strict is not None:
            metrics[f'{name}/strict'] = float(out.strict.float().mean())
        for key, value in out.metrics.items():
            metrics[f'{name}/{key}'] = float(value)
    if entropies:
        ent = torch.cat(entropies)
        metrics['entropy/mean'] = float(ent.mean())
        vocab = getattr(getattr(policy, 'cfg', None), 'vocab_size', None)
        if vocab:
            metrics['entropy/normalized'] = float(ent.mean()) / math.log(vocab)
    return metrics, everything


def fidelity_metrics(images, fidelity_cfg: dict, split: str) -> dict:
    """FID/KID/precision/recall of ``images`` against the real images of ``split``."""
    extractor = fidelity_cfg.get('extractor')
    if extractor != 'vargo-shapes':
        raise ValueError(f'eval_cfg.fidelity.extractor={extractor!r}: supported extractors: '
                         f"'vargo-shapes'")
    from vargo.components.benchmarks.shapes_features import shapes_fidelity
    return shapes_fidelity(images, reference=split, task=fidelity_cfg['task'])


def print_table(results: dict) -> None:
    keys = sorted({k for r in results.values() for k in r})
    splits = list(results)
    width = max(len(k) for k in keys)
    print(f'{"metric":<{width}}  ' + '  '.join(f'{s:>12}' for s in splits))
    for k in keys:
        row = []
        for s in splits:
            v = results[s].get(k)
            row.append(f'{v:>12.4f}' if isinstance(v, float) else f'{str(v):>12}')
        print(f'{k:<{width}}  ' + '  '.join(row))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from mmengine.registry import DefaultScope

    from vargo.core.config import assemble, check_files
    from vargo.core.hooks import make_grid, save_png
    from vargo.core.registry import DATASETS, MODELS, ConfigError
    from vargo.core.runner import load_config

    try:
        cfg = assemble(load_config(args.config, args.cfg_options))
        check_files(cfg)
        if args.checkpoint and not os.path.isfile(args.checkpoint):
            raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
        eval_cfg = cfg.get('eval_cfg')
        if not eval_cfg or not eval_cfg.get('splits'):
            raise ConfigError(f'{args.config} has no eval_cfg.splits: inherit a dataset config '
                              f'that defines them (e.g. configs/_base_/datasets/shapes_t2i.py)')
        splits = args.splits or list(eval_cfg.splits)
        unknown = [s for s in splits if s not in eval_cfg.splits]
        if unknown:
            raise ConfigError(f'--splits {unknown} not in eval_cfg.splits ({list(eval_cfg.splits)})')
        if args.cfg_scale is not None:
            cfg.model.sampler.cfg_scale = args.cfg_scale
        per_condition = args.samples_per_condition or eval_cfg.get('samples_per_condition', 4)
        if per_condition < 1:
            raise ConfigError(f'--samples-per-condition={per_condition} must be >= 1')
    except (ConfigError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    with DefaultScope.overwrite_default_scope('vargo'):
        model = MODELS.build(cfg.model)
    if args.checkpoint:
        load_policy_weights(model, args.checkpoint)
    model.eval()
    name = os.path.splitext(os.path.basename(args.config))[0]
    tag = 'base' if not args.checkpoint else os.path.splitext(os.path.basename(args.checkpoint))[0]
    out_dir = args.out or os.path.join('work_dirs', name, f'eval_{tag}')
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(args.seed)
    results = {}
    for split in splits:
        with DefaultScope.overwrite_default_scope('vargo'):
            dataset = DATASETS.build(eval_cfg.splits[split])
        t0 = time.perf_counter()
        metrics, rollout = evaluate_split(
            model, dataset, per_condition=per_condition, batch_conditions=args.batch_conditions,
            seed=args.seed, max_conditions=args.max_conditions or eval_cfg.get('max_conditions'))
        fid_cfg = eval_cfg.get('fidelity')
        if fid_cfg and not args.no_fidelity:
            metrics.update({f'fidelity/{k}': float(v) for k, v in
                            fidelity_metrics(rollout.images, fid_cfg, split).items()})
        metrics['time_s'] = time.perf_counter() - t0
        results[split] = metrics
        rows = min(8, metrics['num_conditions'])
        imgs = rollout.images.view(-1, per_condition, *rollout.images.shape[1:])[:rows, :8]
        save_png(make_grid(imgs.flatten(0, 1), nrow=imgs.shape[1]),
                 os.path.join(out_dir, f'grid_{split}.png'))
    record = dict(config=args.config, checkpoint=args.checkpoint, seed=args.seed,
                  samples_per_condition=per_condition, cfg_scale=model.sampler.logprob_spec().cfg_scale,
                  results=results)
    with open(os.path.join(out_dir, 'eval.json'), 'w') as f:
        json.dump(record, f, indent=2)
    print_table(results)
    print(f'wrote {out_dir}/eval.json and grid_<split>.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
