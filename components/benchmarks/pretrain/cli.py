"""The command line of ``tools/pretrain_shapes.py``: one subcommand per registered pretrainer
(with the shared training options), the registered writers (``text-encoder``) and ``eval``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

# the families register their subcommands on import, in this order (the command line's)
from . import llamagen  # noqa: F401,I001
from . import var  # noqa: F401,I001
from . import mar  # noqa: F401,I001
from . import vqgan  # noqa: F401,I001
from . import janus  # noqa: F401,I001
from .common import command_line, load_cfg, stem
from .loop import PRETRAINERS, WRITERS, pretrainer_for, train
from .records import write_card, write_json

DESCRIPTION = ('Pretrain the Shapes tokenizer and base models and write their weights and model '
               'cards.')


def parse_args(argv=None, description: str = DESCRIPTION) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = p.add_subparsers(dest='subcommand', required=True)
    for name, cls in PRETRAINERS.items():
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
        sp.add_argument('--no-progress', action='store_true',
                        help='no progress bar: print a JSON log line every 10 logged steps')
        cls.add_arguments(sp)
    for name, cls in WRITERS.items():
        cls.add_arguments(subs.add_parser(name, help=cls.help))
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
    """The ``eval`` subcommand: evaluate the config's weights (the pretrainer registered for its
    ``policy.type``, of its tokenizer with ``--vq``), update their JSON record and card."""
    cfg = load_cfg(args.config)
    cls = pretrainer_for(cfg, args.config, tokenizer=bool(args.vq))
    ns = argparse.Namespace(config=args.config, tokenizer_checkpoint=None, seed=None,
                            cfg_scales=args.cfg_scales, eval_per_condition=args.eval_per_condition,
                            eval_prompts=args.eval_prompts, eval_images=args.eval_images)
    trainer = cls(ns, cfg)
    path = trainer.default_out()
    jpath = stem(path) + '.json'
    rec = json.load(open(jpath)) if os.path.isfile(jpath) else None
    if rec is None:
        raise FileNotFoundError(f'{jpath} not found: train the model first')
    ns.seed = args.seed if args.seed is not None else rec['seed']
    t0 = time.time()
    rec['evaluation'] = trainer.evaluate(path)
    rec['eval_wall_time_s'] = round(time.time() - t0, 1)
    rec['evaluation_command'] = command_line(argv)
    write_json(rec, jpath)
    write_card(rec, stem(path) + '.md', cls)
    return rec


def main(argv=None, description: str = DESCRIPTION) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, description)
    from vargo.core.cli import apply_heap_setting
    apply_heap_setting()   # README "Heap"
    torch.set_num_threads(args.threads)
    if args.subcommand == 'eval':
        rec = reevaluate(args, argv)
    elif args.subcommand in WRITERS:
        rec = WRITERS[args.subcommand].run(args, argv)
    else:
        cls = PRETRAINERS[args.subcommand]
        rec = train(cls(args, load_cfg(args.config)), argv)
    print(json.dumps({k: rec[k] for k in ('name', 'final_loss', 'train_wall_time_s')
                      if k in rec}, indent=1))
    print(json.dumps(rec['evaluation'], indent=1))
    return 0
