"""Sample an image grid from a config and (optionally) a vargo training checkpoint.

    python tools/sample.py CONFIG [CHECKPOINT] [--classes 1 2 3 | --prompts "a red circle" ...]
                           [--per-condition 4] [--seed 0] [--out grid.png]
                           [--cfg-options sampler.cfg_scale=1.0 ...]

Without CHECKPOINT the policy is the one the config builds (its official or shipped weights).
One row per condition, ``--per-condition`` samples per row; the sampler of the config is used
(override its settings with --cfg-options, e.g. ``sampler.cfg_scale=1.0`` for CFG-free samples).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('checkpoint', nargs='?', help='a checkpoint written by tools/train.py')
    g = p.add_mutually_exclusive_group()
    g.add_argument('--classes', type=int, nargs='+', help='class ids (class-conditional models)')
    g.add_argument('--prompts', nargs='+', help='prompts (text-conditional models)')
    p.add_argument('--per-condition', type=int, default=4, help='samples per condition (row)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='samples.png', help='output PNG')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from mmengine.registry import DefaultScope
    from torch.utils.data import default_collate

    from vargo.core.checkpoint import NoPolicyWeights, load_policy_from_checkpoint
    from vargo.core.config import assemble, check_files
    from vargo.core.hooks import save_png, make_grid
    from vargo.core.loop import conditions_from_batch
    from vargo.core.registry import MODELS, ConfigError
    from vargo.core.rng import BatchRNG
    from vargo.core.runner import load_config

    try:
        cfg = assemble(load_config(args.config, args.cfg_options))
        check_files(cfg)
    except (ConfigError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if args.per_condition < 1:
        print(f'error: --per-condition={args.per_condition} must be >= 1', file=sys.stderr)
        return 2
    cfg.model.group_size = max(2, args.per_condition)
    with DefaultScope.overwrite_default_scope('vargo'):
        model = MODELS.build(cfg.model)
    if args.checkpoint:
        try:
            load_policy_from_checkpoint(model.policy, args.checkpoint)
        except NoPolicyWeights as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
    if args.prompts:
        items = [{'prompt': p} for p in args.prompts]
    elif args.classes:
        items = [{'class_id': c} for c in args.classes]
    else:
        dataset_cfg = cfg.train_dataloader.dataset
        with DefaultScope.overwrite_default_scope('vargo'):
            from vargo.core.registry import DATASETS
            dataset = DATASETS.build(dataset_cfg)
        items = [dataset[i] for i in range(min(4, len(dataset)))]
    cond = conditions_from_batch(default_collate(items))
    torch.manual_seed(args.seed)
    rng = BatchRNG(args.seed, 0, len(cond) * model.group_size, rank=0, world_size=1)
    model.eval()
    rollout = model.generate(cond, rng)
    images = rollout.images.view(len(cond), model.group_size, *rollout.images.shape[1:])
    images = images[:, :args.per_condition].flatten(0, 1)
    save_png(make_grid(images, nrow=args.per_condition), os.path.abspath(args.out))
    print(f'wrote {args.out}: {len(cond)} conditions x {args.per_condition} samples')
    return 0


if __name__ == '__main__':
    sys.exit(main())
