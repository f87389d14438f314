"""Train a policy with a vargo config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [auto|PATH]] [--amp]
                          [--cfg-options k=v ...] [--launcher none|pytorch] [--dry-run]

Multi-process: ``torchrun --nproc_per_node=N tools/train.py CONFIG --launcher pytorch``.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Train an image generator with GRPO-family RL')
    p.add_argument('config', help='config file path')
    p.add_argument('--work-dir', help='where logs, checkpoints and image grids go '
                   '(default: work_dirs/<config name>)')
    p.add_argument('--resume', nargs='?', const='auto', default=None, metavar='auto|PATH',
                   help='resume from PATH, or from the latest checkpoint of the work dir')
    p.add_argument('--amp', action='store_true', help='bf16 mixed precision (GPU only)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config entries, e.g. train_cfg.max_iters=10')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--local-rank', '--local_rank', type=int, default=0)
    p.add_argument('--dry-run', action='store_true',
                   help='build everything, check files, print sizes and estimates, then exit')
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from vargo.core.registry import ConfigError
    from vargo.core.runner import build_runner, load_config, prepare_config
    try:
        cfg = load_config(args.config, args.cfg_options)
        cfg = prepare_config(cfg, config_path=args.config, work_dir=args.work_dir,
                             resume=args.resume, amp=args.amp, launcher=args.launcher)
    except (ConfigError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if args.dry_run:
        from vargo.core.report import dry_run_report
        try:
            print(dry_run_report(cfg))
        except (ConfigError, FileNotFoundError) as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
        return 0
    try:
        runner = build_runner(cfg)
    except (ConfigError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    try:
        runner.train()
    except (ConfigError, FileNotFoundError) as e:  # e.g. a checkpoint refused or not matching
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
