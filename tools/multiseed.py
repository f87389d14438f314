"""Multi-seed comparison of training configs (arms): train every arm with every seed, evaluate
each final checkpoint, and summarise mean and spread across seeds with curves and bands.

    python tools/multiseed.py --arm grpo=configs/grpo/var_grpo_shapes.py \\
        --arm panw=configs/var_rl/var_panw_shapes.py --seeds 0 1 2 --jobs 2 \\
        --out results/var_rl_shapes [--cfg-options train_cfg.max_iters=60] \\
        [--eval-args "--samples-per-condition 16 --no-fidelity"]

Each run trains with ``randomness.seed=<seed>`` and ``OMP_NUM_THREADS=--threads`` (recorded),
then ``tools/eval.py`` evaluates its last checkpoint with the same evaluation seed for every arm
(``--eval-seed``, default 0: common random numbers, so arms differ only by their weights). What
is worth committing next to a claim goes to ``OUT/<arm>/seed<S>/``: ``scalars.json`` (every
logged scalar per iteration), ``eval.json`` and ``run.json`` (command, seconds, threads,
machine, commit); checkpoints and logs stay in ``--work`` (default ``OUT/work/``; not for the
repository).
``OUT/summary.json``, ``OUT/summary.md`` (mean, sample standard deviation and every seed's
value per metric) and ``OUT/curves.png`` (per-arm mean with the min-max band across seeds) are
rebuilt from those files at the end, so a finished run is never repeated: rerun the command to
add seeds or arms, or with ``--summarise-only``. Against a baseline arm (``--baseline``, default
the first) the summary states a verdict per arm and metric: the difference of means with its 95%
percentile bootstrap interval (seeds resampled within each arm), "beats" / "is worse than" when
the interval excludes 0 (FID and KID: lower is better), "no difference detectable" otherwise.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arm', action='append', required=True, metavar='NAME=CONFIG',
                   help='an arm: a name and a training config (repeat for each arm)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--out', required=True, help='results directory')
    p.add_argument('--work', default=None,
                   help='checkpoints and logs (default OUT/work; keep it out of the repository)')
    p.add_argument('--jobs', type=int, default=1, help='runs at a time (default 1)')
    p.add_argument('--threads', type=int, default=1, help='OMP_NUM_THREADS of every run')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='overrides for every arm (training and evaluation)')
    p.add_argument('--eval-args', default='', help='extra arguments of tools/eval.py')
    p.add_argument('--eval-seed', type=int, default=0)
    p.add_argument('--baseline', default=None, metavar='ARM',
                   help='compare every other arm with this one: bootstrap 95%% CI of the '
                        'difference of means and a verdict per metric (default: the first arm)')
    p.add_argument('--verdict-metrics', nargs='+', default=None, metavar='METRIC',
                   help='metrics the verdicts cover (default: every */shapes/strict, '
                        '*/fidelity/fid, */fidelity/recall and */fidelity/precision found)')
    p.add_argument('--curve', action='append', default=None, metavar='SCALAR',
                   help='logged scalar(s) to plot (default: every reward/<head>/mean)')
    p.add_argument('--summarise-only', action='store_true')
    args = p.parse_args(argv)
    arms = {}
    for item in args.arm:
        name, sep, config = item.partition('=')
        if not sep or not name or not os.path.isfile(config):
            p.error(f'--arm {item!r}: give NAME=CONFIG with an existing config file')
        if name in arms:
            p.error(f'--arm {item!r}: the name {name!r} is used twice')
        arms[name] = config
    if args.jobs < 1 or args.threads < 1:
        p.error('--jobs and --threads must be >= 1')
    if args.baseline is not None and args.baseline not in arms:
        p.error(f'--baseline {args.baseline!r} is not one of the arms {sorted(arms)}')
    args.arms = arms
    return args


def _git_commit() -> str:
    try:
        return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def _cpu() -> str:
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_one(args, arm: str, config: str, seed: int) -> dict:
    """Train and evaluate one (arm, seed); skip what is already done. Returns its run record."""
    res = os.path.join(args.out, arm, f'seed{seed}')
    work = os.path.join(args.work or os.path.join(args.out, 'work'), arm, f'seed{seed}')
    record_path = os.path.join(res, 'run.json')
    if os.path.isfile(record_path) and os.path.isfile(os.path.join(res, 'eval.json')):
        return json.load(open(record_path))
    os.makedirs(res, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    opts = list(args.cfg_options)
    train = [sys.executable, os.path.join(ROOT, 'tools', 'train.py'), config, '--work-dir', work,
             '--cfg-options', f'randomness.seed={seed}', *opts]
    t0 = time.time()
    os.makedirs(os.path.dirname(work), exist_ok=True)
    with open(work + '.train.log', 'w') as log:
        proc = subprocess.run(train, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f'{arm} seed {seed}: training failed (exit {proc.returncode}); see '
                           f'{work}.train.log')
    train_s = time.time() - t0
    ckpt = os.path.join(work, open(os.path.join(work, 'last_checkpoint')).read().strip())
    scalars = sorted(glob.glob(os.path.join(work, '*', 'vis_data', 'scalars.json')))
    shutil.copyfile(scalars[-1], os.path.join(res, 'scalars.json'))
    evaluate = [sys.executable, os.path.join(ROOT, 'tools', 'eval.py'), config, ckpt, '--out',
                os.path.join(work, 'eval'), '--seed', str(args.eval_seed),
                *shlex.split(args.eval_args)]
    if opts:
        evaluate += ['--cfg-options', *opts]
    t1 = time.time()
    with open(work + '.eval.log', 'w') as log:
        proc = subprocess.run(evaluate, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f'{arm} seed {seed}: evaluation failed (exit {proc.returncode}); see '
                           f'{work}.eval.log')
    shutil.copyfile(os.path.join(work, 'eval', 'eval.json'), os.path.join(res, 'eval.json'))
    record = dict(arm=arm, config=config, seed=seed, threads=args.threads,
                  cfg_options=opts, eval_args=args.eval_args, eval_seed=args.eval_seed,
                  train_seconds=round(train_s, 1), eval_seconds=round(time.time() - t1, 1),
                  checkpoint=os.path.basename(ckpt), commit=_git_commit(), cpu=_cpu(),
                  cpus=os.cpu_count(), concurrent_jobs=args.jobs,
                  train_command=' '.join(shlex.quote(c) for c in train[1:]),
                  eval_command=' '.join(shlex.quote(c) for c in evaluate[1:]))
    with open(record_path, 'w') as f:
        json.dump(record, f, indent=2)
    return record


def _numbers(results: dict) -> dict[str, float]:
    """Flat ``split/metric -> value`` of an eval.json's numeric results."""
    out = {}
    for split, metrics in results.items():
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != 'time_s':
                out[f'{split}/{k}'] = float(v)
    return out


def _load_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for line in open(path):
        row = json.loads(line)
        step = row.get('step', row.get('iter'))
        for k, v in row.items():
            if isinstance(v, (int, float)) and k not in ('step', 'iter'):
                series.setdefault(k, []).append((int(step), float(v)))
    return series


LOWER_IS_BETTER = ('fid', 'kid')


def lower_is_better(metric: str) -> bool:
    """FID and KID fall when samples improve; every other tabulated metric rises."""
    return metric.rsplit('/', 1)[-1] in LOWER_IS_BETTER


def bootstrap_difference(a: list[float], b: list[float], *, resamples: int = 10000,
                         seed: int = 0) -> tuple[float, float, float]:
    """``(mean(b) - mean(a), lo, hi)``: the difference of means and its 95% percentile
    bootstrap interval, resampling the seeds of each arm independently (deterministic)."""
    import random
    rng = random.Random(seed)
    diffs = sorted(statistics.fmean(rng.choices(b, k=len(b)))
                   - statistics.fmean(rng.choices(a, k=len(a))) for _ in range(resamples))
    return (statistics.fmean(b) - statistics.fmean(a), diffs[int(0.025 * resamples)],
            diffs[int(0.975 * resamples) - 1])


#: the seeds per arm below which no verdict is given (the project's standard for a claim)
MIN_SEEDS = 3


def verdict(metric: str, base: str, arm: str, a: list[float], b: list[float], *,
            min_seeds: int = MIN_SEEDS) -> dict:
    """One comparison in plain words: does ``arm`` beat ``base`` on ``metric`` (the 95%
    bootstrap interval of the difference excludes 0), lose, or is no difference detectable;
    no verdict with fewer than ``min_seeds`` seeds in either arm."""
    diff, lo, hi = bootstrap_difference(a, b)
    better = -diff if lower_is_better(metric) else diff
    if len(a) < min_seeds or len(b) < min_seeds:
        text = (f'{arm} vs {base} on {metric}: {diff:+.4g} (fewer than {min_seeds} seeds per '
                f'arm: no verdict)')
        outcome = 'undecided'
    elif lo > 0 or hi < 0:
        outcome = 'better' if better > 0 else 'worse'
        text = (f'{arm} {"beats" if outcome == "better" else "is worse than"} {base} on {metric} '
                f'by {abs(diff):.4g} (difference {diff:+.4g}, 95% CI [{lo:+.4g}, {hi:+.4g}], '
                f'{len(b)} vs {len(a)} seeds)')
    else:
        outcome = 'no difference'
        text = (f'{arm} vs {base} on {metric}: no difference detectable (difference {diff:+.4g}, '
                f'95% CI [{lo:+.4g}, {hi:+.4g}] includes 0, {len(b)} vs {len(a)} seeds)')
    return dict(metric=metric, base=base, arm=arm, difference=diff, ci95=[lo, hi],
                outcome=outcome, text=text)


def summarise(args) -> dict:
    """summary.json / summary.md / curves.png from the per-run files under ``args.out``."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    curves: dict[str, dict[str, dict[int, list]]] = {}
    runs = {}
    for arm in args.arms:
        for res in sorted(glob.glob(os.path.join(args.out, arm, 'seed*'))):
            if not os.path.isfile(os.path.join(res, 'eval.json')):
                continue
            seed = int(os.path.basename(res)[4:])
            runs.setdefault(arm, []).append(json.load(open(os.path.join(res, 'run.json'))))
            for k, v in _numbers(json.load(open(os.path.join(res, 'eval.json')))['results']).items():
                table.setdefault(k, {}).setdefault(arm, {})[seed] = v
            for k, pts in _load_scalars(os.path.join(res, 'scalars.json')).items():
                curves.setdefault(k, {}).setdefault(arm, {})[seed] = pts
    summary = {'arms': {a: args.arms[a] for a in args.arms}, 'runs': runs, 'metrics': {}}
    lines = ['| metric | ' + ' | '.join(args.arms) + ' |',
             '|---|' + '---|' * len(args.arms)]
    for metric in sorted(table):
        row, entry = [], {}
        for arm in args.arms:
            vals = table[metric].get(arm, {})
            xs = [vals[s] for s in sorted(vals)]
            if not xs:
                row.append('')
                continue
            mean = statistics.fmean(xs)
            sd = statistics.stdev(xs) if len(xs) > 1 else math.nan
            entry[arm] = dict(mean=mean, std=sd, n=len(xs), per_seed=vals)
            row.append(f'{mean:.4g} ± {sd:.2g} (n={len(xs)})')
        summary['metrics'][metric] = entry
        lines.append(f'| {metric} | ' + ' | '.join(row) + ' |')
    base = args.baseline or next(iter(args.arms))
    wanted = args.verdict_metrics or sorted(
        m for m in table if m.endswith(('/shapes/strict', '/fidelity/fid', '/fidelity/recall',
                                        '/fidelity/precision')))
    summary['verdicts'] = []
    for metric in wanted:
        a = list(table.get(metric, {}).get(base, {}).values())
        for arm in args.arms:
            b = list(table.get(metric, {}).get(arm, {}).values())
            if arm != base and a and b:
                summary['verdicts'].append(verdict(metric, base, arm, a, b))
    with open(os.path.join(args.out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(args.out, 'summary.md'), 'w') as f:
        f.write('Mean ± sample standard deviation across seeds (n = seeds); per-seed values in '
                'summary.json.\n\n' + '\n'.join(lines) + '\n')
        if summary['verdicts']:
            f.write(f'\nAgainst {base} (95% percentile bootstrap interval of the difference of '
                    f'means, seeds resampled per arm):\n\n'
                    + ''.join(f'- {v["text"]}\n' for v in summary['verdicts']))
    keys = args.curve or sorted(k for k in curves if k.startswith('reward/') and k.endswith('/mean'))
    _plot(curves, keys, list(args.arms), os.path.join(args.out, 'curves.png'))
    return summary


def _plot(curves, keys, arms, path) -> None:
    if not keys:
        return
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for arm in arms:
            per_seed = curves.get(key, {}).get(arm)
            if not per_seed:
                continue
            steps = sorted(set.intersection(*(set(s for s, _ in pts) for pts in per_seed.values())))
            vals = [[dict(pts)[s] for s in steps] for pts in per_seed.values()]
            mean = [statistics.fmean(col) for col in zip(*vals)]
            ax.plot(steps, mean, label=f'{arm} (n={len(vals)})')
            ax.fill_between(steps, [min(c) for c in zip(*vals)], [max(c) for c in zip(*vals)],
                            alpha=0.2)
        ax.set_title(key)
        ax.set_xlabel('iteration')
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if not args.summarise_only:
        jobs = [(arm, cfg, s) for s in args.seeds for arm, cfg in args.arms.items()]
        failures = []
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_one, args, *job): job for job in jobs}
            for done, fut in enumerate(futures, 1):
                arm, _, seed = futures[fut]
                try:
                    rec = fut.result()
                    print(f'[{done}/{len(jobs)}] {arm} seed {seed}: trained in '
                          f'{rec["train_seconds"]:.0f} s, evaluated in '
                          f'{rec["eval_seconds"]:.0f} s', flush=True)
                except RuntimeError as e:
                    failures.append(str(e))
                    print(f'[{done}/{len(jobs)}] {e}', flush=True)
        if failures:
            summarise(args)
            print(f'{len(failures)} run(s) failed; the summary holds the others', file=sys.stderr)
            return 1
    summarise(args)
    print(f'wrote {args.out}/summary.md, summary.json and curves.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
