"""Where to split for VMR: how much of the reward each prefix length decides.

    python tools/vmr_split.py CONFIG [CHECKPOINT] [--prefixes 72] [--completions 8] [--seed 0]

For every split ``m`` (decode steps kept: VAR scales, raster tokens, MAR AR steps) it samples
``--prefixes`` prefixes (the config's training conditions, cycled), completes each
``--completions`` times with the config's (family) sampler and scores the completions with the
config's first reward head, then prints per ``m``:

* the fraction of the reward variance the prefix explains, ``Var_p(E[R | p]) / Var(R)`` (the
  between-prefix variance, corrected for the finite number of completions, over the total);
* the fraction of prefixes whose completions disagree (some reward spread), i.e. whose suffix
  groups still have a learning signal.

VMR's prefix reward ``V`` separates prefixes only when the prefix explains part of the reward,
and its suffix updates learn only when completions of a prefix disagree: a split in between is
what docs/methods/var_rl.md recommends (``configs/var_rl/var_vmr_shapes.py`` quotes this tool's
table for the Shapes VAR).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

from vargo.core.cli import (CHECKPOINT_HELP, ArgumentParser, CfgOptionsAction,  # noqa: E402
                            UsageError, checkpoint_file, fail, load_policy_checkpoint,
                            positive_int)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint', nargs='?', type=checkpoint_file, help=CHECKPOINT_HELP)
    p.add_argument('--prefixes', type=positive_int, default=72)
    p.add_argument('--completions', type=positive_int, default=8,
                   help='completions per prefix, >= 2 (default 8)')
    p.add_argument('--splits', type=positive_int, nargs='+', default=None, metavar='M',
                   help='the splits to measure (default every one; a raster model has one per '
                        'token, so give e.g. the row starts 8 16 24 32)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, default=[])
    return p.parse_args(argv)


def split_table(policy, sampler, head, cond, *, completions: int, seed: int,
                splits=None) -> list[dict]:
    """One row per split ``m``: ``m``, ``explained`` (prefix share of the reward variance),
    ``disagree`` (fraction of prefixes with reward spread) and ``mean`` (mean reward)."""
    from vargo.core.rng import BatchRNG
    n = len(cond)
    base = sampler.rollout(policy, cond, group_size=1, rng=BatchRNG(seed, 0, n, rank=0,
                                                                    world_size=1))
    rows = []
    num_steps = sampler.num_steps_of(policy)
    for m in (splits or range(1, num_steps)):
        if not 0 < m < num_steps:
            raise UsageError(f'--splits {m}: a split keeps 1 to {num_steps - 1} decode steps')
        comp = sampler.rollout(policy, base.cond, group_size=completions, prefix=base,
                               stop_at_step=m, rng=BatchRNG(seed, m, n * completions, rank=0,
                                                            world_size=1))
        r = head(comp).scores.view(n, completions).double()
        total = r.var(unbiased=False)                      # = var_p(mean) + mean_p var_k
        within = r.var(dim=1).mean()                       # unbiased within-prefix variance
        between = r.mean(dim=1).var(unbiased=False) - within / completions
        rows.append(dict(m=m, explained=float(between / total) if total > 0 else float('nan'),
                         disagree=float((r.std(dim=1) > 0).double().mean()),
                         mean=float(r.mean())))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from torch.utils.data import default_collate

    from vargo.core.config import assemble, check_files
    from vargo.core.loop import conditions_from_batch
    from vargo.core.registry import DATASETS, MODELS, ConfigError
    from vargo.core.runner import load_config
    try:
        if args.completions < 2:
            raise UsageError(f'--completions {args.completions}: give at least 2 completions '
                             f'per prefix (the spread within a prefix needs two)')
        cfg = assemble(load_config(args.config, args.cfg_options))
        check_files(cfg)
        with DefaultScope.overwrite_default_scope('vargo'):
            model = MODELS.build(cfg.model)
            dataset = DATASETS.build(cfg.train_dataloader.dataset)
        if args.checkpoint:
            load_policy_checkpoint(model.policy, args.checkpoint)
    except (ConfigError, FileNotFoundError, UsageError) as e:
        return fail(e)
    torch.manual_seed(args.seed)
    policy, sampler = model.policy, model.sampler.evaluation_sampler()
    head = next(iter(model.reward_heads.values())).evaluation_head()
    items = [dataset[i % len(dataset)] for i in range(args.prefixes)]
    cond = policy.encode_conditions(conditions_from_batch(default_collate(items)))
    try:
        rows = split_table(policy, sampler, head, cond, completions=args.completions,
                           seed=args.seed, splits=args.splits)
    except UsageError as e:
        return fail(e)
    unit = getattr(sampler, 'step_unit', 'steps')
    print(f'{args.prefixes} prefixes x {args.completions} completions, reward '
          f'{next(iter(model.reward_heads))!r}; m = {unit} kept')
    print(f'{"m":>3}  {"explained":>9}  {"disagree":>8}  {"mean R":>7}')
    for r in rows:
        print(f'{r["m"]:>3}  {r["explained"]:>9.2f}  {r["disagree"]:>8.2f}  {r["mean"]:>7.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
