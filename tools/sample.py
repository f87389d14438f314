"""Sample an image grid from a config and (optionally) a vargo training checkpoint.

    python tools/sample.py CONFIG [CHECKPOINT] [--classes 1 2 3 | --prompts "a red circle" ...]
                           [--per-condition 4] [--cfg-scale S] [--seed 0] [--out grid.png]
                           [--cfg-options sampler.top_k=100 ...]

Without CHECKPOINT the policy is the one the config builds (its official or shipped weights).
One row per condition, ``--per-condition`` samples per row; the sampler of the config is used
(``--cfg-scale S`` overrides its guidance, > 0, 1 = CFG-free; other settings with --cfg-options).
``--classes`` takes ids in ``0..num_classes-1`` of a class-conditional policy, ``--prompts``
non-empty texts for a text-conditional one; without either, the first 4 conditions of the
config's training dataset. A mistake is one line ``error: ...`` and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from vargo.core.cli import (CHECKPOINT_HELP, ArgumentParser, CfgOptionsAction,  # noqa: E402
                            UsageError, cfg_scale, check_cfg_scale, check_conditions,
                            checkpoint_file, fail, family_sampler_cfg, load_policy_checkpoint,
                            non_empty_text, non_negative_int, positive_int)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split('\n\n', 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('checkpoint', nargs='?', type=checkpoint_file, help=CHECKPOINT_HELP)
    g = p.add_mutually_exclusive_group()
    g.add_argument('--classes', type=non_negative_int, nargs='+', metavar='ID',
                   help='class ids, 0..num_classes-1 (class-conditional models)')
    g.add_argument('--prompts', type=non_empty_text, nargs='+', metavar='TEXT',
                   help='non-empty prompts (text-conditional models)')
    p.add_argument('--per-condition', type=positive_int, default=4, metavar='N',
                   help='samples per condition (row), >= 1 (default 4)')
    p.add_argument('--cfg-scale', type=cfg_scale, metavar='S',
                   help="override the sampler's CFG scale, > 0 (1 = no CFG)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='samples.png', help='output PNG')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE',
                   help='override config entries, e.g. sampler.top_k=100')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from mmengine.registry import DefaultScope

    from vargo.core.cli import apply_heap_setting
    apply_heap_setting()   # README "Heap"
    from torch.utils.data import default_collate

    from vargo.core.config import assemble, check_files
    from vargo.core.hooks import save_png, make_grid
    from vargo.core.loop import conditions_from_batch
    from vargo.core.registry import MODELS, ConfigError
    from vargo.core.rng import BatchRNG
    from vargo.core.runner import load_config

    try:
        cfg = assemble(load_config(args.config, args.cfg_options))
        check_files(cfg)
        drawing = family_sampler_cfg(cfg.model.sampler)
        if args.cfg_scale is not None:
            drawing.cfg_scale = args.cfg_scale
        elif drawing.get('cfg_scale') is not None:
            check_cfg_scale(drawing.cfg_scale, 'sampler.cfg_scale (config or --cfg-options)')
    except (ConfigError, FileNotFoundError, UsageError) as e:
        return fail(e)
    cfg.model.group_size = max(2, args.per_condition)
    try:
        with DefaultScope.overwrite_default_scope('vargo'):
            model = MODELS.build(cfg.model)
        check_conditions(model.policy, args.classes, args.prompts)
        if args.checkpoint:
            load_policy_checkpoint(model.policy, args.checkpoint)
    except (ConfigError, FileNotFoundError, UsageError) as e:
        return fail(e)
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
