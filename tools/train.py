"""Train a policy with a vargo config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [auto|PATH]] [--amp]
                          [--cfg-options k=v ...] [--launcher none|pytorch] [--dry-run] [--debug]

Multi-process: ``torchrun --nproc_per_node=N tools/train.py CONFIG --launcher pytorch``.

The config is checked completely and everything is built before MMEngine's Runner exists
(:mod:`vargo.core.validation`), so a mistake in it is one line ``error: <key>=<value> ...; <fix>``
on stderr, exit code 2, printed before any log and with no directory left behind. Anything that
still fails after the Runner exists but before the first iteration ends the same way, and the
directories this run created are removed. ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import os

# before torch loads OpenMP: idle threads sleep, not spin (README "Threads on a shared machine")
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse
import os.path as osp
import shutil
import sys
import warnings

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from mmengine.config import DictAction  # noqa: E402

EXIT_CONFIG_ERROR = 2
EXIT_RUN_ABORTED = 1  # a fault during training (reward head, non-finite steps); resume after the fix


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
                   help='build everything (model, optimizer, schedulers, dataloader, loop, '
                   'hooks), check files, print sizes and estimates, then exit')
    p.add_argument('--debug', action='store_true',
                   help='show the traceback of an error instead of the one-line message')
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


class WorkDirGuard:
    """Remembers what of ``work_dir`` existed, to remove what a failed start created."""

    def __init__(self, work_dir: str):
        self.work_dir = osp.abspath(work_dir)
        top, path = None, self.work_dir
        while not osp.exists(path):  # the outermost directory of the path that is new
            top, path = path, osp.dirname(path)
        self.created = top
        self.entries = None
        if top is None and osp.isdir(self.work_dir):
            self.entries = set(os.listdir(self.work_dir))

    def remove_created(self) -> None:
        if int(os.environ.get('RANK', '0')) != 0:
            return
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
        elif self.entries is not None and osp.isdir(self.work_dir):
            for name in set(os.listdir(self.work_dir)) - self.entries:
                path = osp.join(self.work_dir, name)
                if osp.isdir(path) and not osp.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)


def error_line(err: BaseException) -> str:
    """The ``error:`` line of ``err`` (a config error's own message; others with their type)."""
    from vargo.core.config import ConfigFileNotFoundError
    from vargo.core.registry import ConfigError
    if isinstance(err, ConfigFileNotFoundError):
        return f'error: {err}'  # the list of missing files, one per line
    text = ' '.join(str(err).split())
    if isinstance(err, ConfigError):
        return f'error: {text}'
    if isinstance(err, FileNotFoundError):
        return f'error: {text or err!r}'
    return (f'error: {type(err).__name__}: {text} (the config was checked; rerun with --debug '
            f'for the traceback)')


def _fail(err: BaseException, args, guard=None) -> int:
    if guard is not None:
        guard.remove_created()
    if args.debug:
        raise err
    print(error_line(err), file=sys.stderr)
    return EXIT_CONFIG_ERROR


def _in_an_iteration(runner, err: BaseException) -> bool:
    """Whether ``err`` came from an RL iteration (not from the start-up before the first)."""
    from mmengine.runner import BaseLoop
    loop = runner._train_loop
    if isinstance(loop, BaseLoop) and loop.iter > 0:
        return True
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == 'run_iter':
            return True
        tb = tb.tb_next
    return False


def main(argv=None) -> int:
    args = parse_args(argv)
    from vargo.core.cli import apply_heap_setting
    from vargo.core.runner import build_runner, load_config, prepare_config
    apply_heap_setting()   # README "Heap": freed activations stay on the heap (VARGO_HEAP=glibc)
    guard = None
    with warnings.catch_warnings(record=True) as held:
        # warnings of the start-up are shown once it succeeded (an error is the only line)
        try:
            cfg = load_config(args.config, args.cfg_options)
            cfg = prepare_config(cfg, config_path=args.config, work_dir=args.work_dir,
                                 resume=args.resume, amp=args.amp, launcher=args.launcher)
            if args.dry_run:
                from vargo.core.report import dry_run_report
                from vargo.core.validation import validate_training_config
                report = dry_run_report(cfg, validate_training_config(cfg))
            else:
                guard = WorkDirGuard(cfg.work_dir)
                runner = build_runner(cfg)
        except Exception as err:  # noqa: BLE001 - every start-up failure is one line
            return _fail(err, args, guard)
    for w in held:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    if args.dry_run:
        print(report)
        return 0
    from vargo.core.faults import RunAborted
    try:
        runner.train()
    except RunAborted as err:  # a fault during the run; its last checkpoint is intact
        if args.debug:
            raise
        print(f'error: {err}', file=sys.stderr)
        return EXIT_RUN_ABORTED
    except Exception as err:  # noqa: BLE001
        if _in_an_iteration(runner, err):
            raise
        return _fail(err, args, guard)
    return 0


if __name__ == '__main__':
    sys.exit(main())
