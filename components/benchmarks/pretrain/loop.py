"""The pretrainer interface, the registry of subcommands and the training loop they share."""
from __future__ import annotations

import abc
import argparse
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .common import command_line, lr_lambda, rel, save_weights, stem
from .records import write_card, write_json

#: subcommand -> the Pretrainer class that trains it (filled by :func:`register`, in the order
#: the family modules register them: the order of the command line's subcommands)
PRETRAINERS: dict[str, type['Pretrainer']] = {}
#: subcommand -> a class writing weights without training (``add_arguments``, ``run``)
WRITERS: dict[str, type] = {}


def register(cls):
    """Class decorator: register a :class:`Pretrainer` (or, with ``run``, a writer) under its
    ``name``."""
    table = PRETRAINERS if issubclass(cls, Pretrainer) else WRITERS
    if cls.name in PRETRAINERS or cls.name in WRITERS:
        raise ValueError(f'pretrain subcommand {cls.name!r} is registered twice')
    table[cls.name] = cls
    return cls


class Pretrainer(abc.ABC):
    """One subcommand: what to build, one optimisation step, what to save, how to evaluate.

    Subclasses set ``name`` (the subcommand), ``help``, ``default_config``, ``defaults``
    (argparse defaults of the shared options), ``policy_type`` (the config's ``policy.type``
    they train), ``tokenizer`` (True: they train the config's tokenizer, ``eval --vq``), ``task``
    (the one task they train, or None), the model card's ``card_title`` / ``card_kind``, and
    implement :meth:`build`, :meth:`step`, :meth:`weights`, :meth:`default_out` and
    :meth:`evaluate`.
    """

    name = ''
    help = ''
    default_config = ''
    defaults: dict[str, Any] = {}
    policy_type = ''
    tokenizer = False
    task: Optional[str] = None
    card_title = ''
    #: 'reconstruction' (a tokenizer; ``card_noun`` names it) or 'samples' (a generator)
    card_kind = 'samples'
    card_noun = ''

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        """Subcommand-specific options (the shared ones are added by the command line)."""

    def __init__(self, args: argparse.Namespace, cfg):
        self.args, self.cfg = args, cfg

    @classmethod
    def check_config(cls, cfg, path: str) -> None:
        """Fail clearly when ``cfg.policy.type`` is not the ``policy_type`` this trains."""
        if cfg.policy.get('type') != cls.policy_type:
            names = [c.name for c in PRETRAINERS.values() if c.policy_type == cls.policy_type]
            family = ' and '.join([', '.join(names[:-1]), names[-1]] if len(names) > 1 else names)
            raise ValueError(f'{path}: policy.type is {cfg.policy.get("type")!r}; the {family} '
                             f'subcommands need a {cls.policy_type} config such as '
                             f'{cls.default_config}')

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


def pretrainer_for(cfg, path: str, tokenizer: bool) -> type[Pretrainer]:
    """The registered pretrainer of a config's policy (``tokenizer``: of its tokenizer), by
    ``policy.type`` (and ``policy.task`` where the family trains one model per task)."""
    ptype, task = cfg.policy.get('type'), cfg.policy.get('task')
    for cls in PRETRAINERS.values():
        if cls.policy_type == ptype and cls.tokenizer == tokenizer and (
                cls.task is None or task is None or cls.task == task):
            return cls
    known = sorted({c.policy_type for c in PRETRAINERS.values()})
    raise ValueError(f'{path}: no Shapes pretrainer for policy.type={ptype!r}'
                     + (f' with task={task!r}' if task else '') + f' (known: {known})')


def train(trainer: Pretrainer, argv: Sequence[str]) -> dict[str, Any]:
    """The shared training loop: seeding, AdamW, warm-up + cosine/constant LR, clipping, tqdm,
    the loss log, optional periodic quick evaluations, then save, reload, evaluate and write the
    record and the card."""
    from tqdm import tqdm
    args = trainer.args
    trainer.check_config(trainer.cfg, args.config)
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
            # without a progress bar: every 10th logged row and the last as a JSON line
            if args.no_progress and (len(log) % 10 == 0 or s + 1 == args.steps):
                print(json.dumps(row), flush=True)
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
            sys.stdout.flush()
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
    write_card(record, stem(out) + '.md', type(trainer))
    return record
