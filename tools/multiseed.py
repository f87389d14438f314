"""Multi-seed comparison of training configs (arms): train every arm with every seed, evaluate
each final checkpoint, and summarise mean and spread across seeds with curves and bands.

    python tools/multiseed.py --arm grpo=configs/grpo/var_grpo_shapes.py \\
        --arm panw=configs/var_rl/var_panw_shapes.py --seeds 0 1 2 --jobs 2 \\
        --out results/var_rl_shapes [--cfg-options train_cfg.max_iters=60] \\
        [--eval-args "--samples-per-condition 16 --no-fidelity"]

An arm is ``--arm NAME=CONFIG [KEY=VALUE ...]``: a name, a training config and optionally
``--cfg-options`` of this arm only, so arms can be variants of one config::

    --arm kl04=configs/grpo/llamagen_grpo_shapes.py \\
    --arm kl03=configs/grpo/llamagen_grpo_shapes.py regularizers.kl.beta=0.03

An arm's options come after the global ``--cfg-options`` (they win on the same key), reach both
``tools/train.py`` and ``tools/eval.py``, and are recorded in ``run.json`` (``arm_options``, and
``cfg_options``: everything passed). ``randomness.seed`` is set by ``--seeds`` and refused as an
option. A finished run whose ``run.json`` names another config or other options than its arm
now does is an error (pick a new arm name or ``--out``), never silently reused.

Each run trains with ``randomness.seed=<seed>`` and ``OMP_NUM_THREADS=--threads`` (recorded),
then ``tools/eval.py`` evaluates its last checkpoint with the same evaluation seed for every arm
(``--eval-seed``, default 0: common random numbers, so arms differ only by their weights). What
is worth committing next to a claim goes to ``OUT/<arm>/seed<S>/``: ``scalars.json`` (the logged
scalars per iteration; with ``--keep-scalars KEY ...`` only those keys, a prefix ending in ``/``
keeping all keys under it, so the file is small enough to ship as a reference curve),
``eval.json`` (with its evaluation protocol) and ``run.json`` (command, seconds, threads,
machine, commit); checkpoints and logs stay in ``--work`` (default ``OUT/work/``; not for the
repository).
``OUT/summary.json``, ``OUT/summary.md`` (mean, sample standard deviation and every seed's
value per metric) and ``OUT/curves.png`` (per-arm mean with the min-max band across seeds) are
rebuilt from those files at the end, so a finished run is never repeated: rerun the command to
add seeds or arms, or with ``--summarise-only``. An interrupted run (checkpoints but no
result) resumes from its last checkpoint. ``--re-evaluate`` evaluates every finished run again
with the current tools/eval.py (e.g. so older eval.json files carry the evaluation protocol);
training is not repeated. Against a baseline arm (``--baseline``, default
the first) the summary states a verdict per arm and metric: the difference of means with its 95%
percentile bootstrap interval (seeds resampled within each arm), "beats" / "is worse than" when
the interval excludes 0 (FID and KID: lower is better), "no difference detectable" otherwise.

Evaluation protocols: summary.md ends with one block per distinct protocol of the runs' eval.json
(``vargo.core.eval_protocol``: sampler settings, seeds, samples per condition, splits, reference
statistics with their sha256, extractor) naming the runs evaluated under it. When the runs were
evaluated under more than one protocol, summary.md opens with a WARNING naming the settings that
differ, the same line goes to stderr, and every verdict between arms evaluated differently is
"invalid" instead of a comparison. Runs whose eval.json predates protocols are listed as not
checkable.

A user's run against these results (the band of an arm's seeds): ``tools/reference.py``.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from vargo.core import eval_protocol
from vargo.core.run_report import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arm', action='append', nargs='+', required=True,
                   metavar=('NAME=CONFIG', 'KEY=VALUE'),
                   help="an arm: a name, a training config and this arm's own --cfg-options, if "
                        'any (repeat for each arm)')
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
    p.add_argument('--keep-scalars', nargs='+', default=None, metavar='KEY',
                   help='copy only these logged scalars to OUT/<arm>/seed<S>/scalars.json (a key '
                        'ending in / keeps every key under it), e.g. reward/ kl/mean '
                        'entropy/mean (default: all)')
    p.add_argument('--baseline', default=None, metavar='ARM',
                   help='compare every other arm with this one: bootstrap 95%% CI of the '
                        'difference of means and a verdict per metric (default: the first arm)')
    p.add_argument('--verdict-metrics', nargs='+', default=None, metavar='METRIC',
                   help='metrics the verdicts cover (default: every */shapes/strict, '
                        '*/fidelity/fid, */fidelity/recall and */fidelity/precision found)')
    p.add_argument('--curve', action='append', default=None, metavar='SCALAR',
                   help='logged scalar(s) to plot (default: every reward/<head>/mean)')
    p.add_argument('--re-evaluate', action='store_true',
                   help='evaluate every finished run again with the current tools/eval.py (its '
                        'checkpoint in --work; training is not repeated)')
    p.add_argument('--summarise-only', action='store_true')
    args = p.parse_args(argv)
    try:
        args.arms, args.arm_options = parse_arms(args.arm)
        check_options(args.cfg_options, '--cfg-options')
    except ValueError as e:
        p.error(str(e))
    if args.jobs < 1 or args.threads < 1:
        p.error('--jobs and --threads must be >= 1')
    if args.baseline is not None and args.baseline not in args.arms:
        p.error(f'--baseline {args.baseline!r} is not one of the arms {sorted(args.arms)}')
    return args


def check_options(options: list, where: str) -> None:
    """Every option is ``KEY=VALUE``; the seed is not one (``--seeds`` sets it)."""
    for opt in options:
        key, sep, _ = opt.partition('=')
        if not sep or not key:
            raise ValueError(f'{where}: {opt!r} is not KEY=VALUE (e.g. train_cfg.max_iters=60)')
        if key == 'randomness.seed':
            raise ValueError(f'{where}: {opt!r}: the training seed is set by --seeds; drop it')


def parse_arms(items: list) -> tuple[dict, dict]:
    """``({name: config}, {name: [KEY=VALUE, ...]})`` of the ``--arm`` values."""
    arms, options = {}, {}
    for item in items:
        name, sep, config = item[0].partition('=')
        if not sep or not name or not os.path.isfile(config):
            raise ValueError(f'--arm {" ".join(item)!r}: give NAME=CONFIG [KEY=VALUE ...] with '
                             f'an existing config file')
        if name in arms:
            raise ValueError(f'--arm {" ".join(item)!r}: the name {name!r} is used twice')
        if '/' in name or name.startswith('.'):
            raise ValueError(f'--arm {" ".join(item)!r}: the name {name!r} is a directory name '
                             f'under --out; use letters, digits, - and _')
        check_options(item[1:], f'--arm {name}')
        arms[name], options[name] = config, list(item[1:])
    return arms, options


def _git_commit() -> str:
    try:
        return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def _arm_options(args, arm: str) -> list:
    """The ``--cfg-options`` of ``arm``'s runs: the global ones, then the arm's own."""
    return list(args.cfg_options) + list(args.arm_options.get(arm, []))


def _check_record(record: dict, arm: str, config: str, opts: list, path: str) -> dict:
    """A finished run is reused only if it ran this arm's config and options."""
    same_config = os.path.normpath(str(record.get('config'))) == os.path.normpath(config)
    if not same_config or list(record.get('cfg_options', [])) != opts:
        raise RuntimeError(
            f'{path} ran config {record.get("config")} with options '
            f'{record.get("cfg_options", [])}, but --arm {arm} now gives {config} with {opts}: '
            f'use another arm name or --out (finished runs are never silently reused)')
    return record


def copy_scalars(src: str, dst: str, keep=None) -> None:
    """Copy a ``scalars.json``; with ``keep`` (keys, or prefixes ending in ``/``) only those
    keys (and ``step``/``iter``) of every line that has one."""
    if keep is None:
        shutil.copyfile(src, dst)
        return
    def kept(key):
        return any(key == k or (k.endswith('/') and key.startswith(k)) for k in keep)
    with open(src, encoding='utf-8') as f, open(dst, 'w', encoding='utf-8') as out:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            small = {k: v for k, v in row.items() if kept(k)}
            if small:
                small.update({k: row[k] for k in ('iter', 'step') if k in row})
                out.write(json.dumps(small) + '\n')


def _step(line: str):
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    v = row.get('step', row.get('iter'))
    return int(v) if isinstance(v, (int, float)) else None


def merge_scalars(paths: list[str], dst: str) -> None:
    """Join the ``scalars.json`` files of one run that was resumed (one per launch, in launch
    order) into ``dst``: each launch's lines up to the first step the next launch logged, so the
    steps an interrupted launch logged after its last checkpoint are replaced by the resumed
    launch's."""
    runs = [[ln for ln in open(p, encoding='utf-8') if ln.strip()] for p in paths]
    with open(dst, 'w', encoding='utf-8') as out:
        for k, lines in enumerate(runs):
            later = [st for ln in (runs[k + 1] if k + 1 < len(runs) else []) for st in [_step(ln)]
                     if st is not None]
            stop = min(later) if later else None
            for ln in lines:
                st = _step(ln)
                if stop is None or st is None or st < stop:
                    out.write(ln if ln.endswith('\n') else ln + '\n')


def run_one(args, arm: str, config: str, seed: int) -> dict:
    """Train and evaluate one (arm, seed); skip what is already done. Returns its run record."""
    res = os.path.join(args.out, arm, f'seed{seed}')
    work = os.path.join(args.work or os.path.join(args.out, 'work'), arm, f'seed{seed}')
    record_path = os.path.join(res, 'run.json')
    opts = _arm_options(args, arm)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if os.path.isfile(record_path) and os.path.isfile(os.path.join(res, 'eval.json')):
        record = _check_record(json.load(open(record_path)), arm, config, opts, record_path)
        if getattr(args, 're_evaluate', False):
            record = _re_evaluate(args, record, arm, config, seed, work, res, opts, env)
            with open(record_path, 'w') as f:
                json.dump(record, f, indent=2)
        return record
    os.makedirs(res, exist_ok=True)
    train = [sys.executable, os.path.join(ROOT, 'tools', 'train.py'), config, '--work-dir', work,
             '--cfg-options', f'randomness.seed={seed}', *opts]
    # an interrupted run (checkpoints, no result) resumes from its last checkpoint (bit-exact)
    resumed = os.path.isfile(os.path.join(work, 'last_checkpoint'))
    if resumed:
        train.insert(train.index('--cfg-options'), '--resume')
    t0 = time.time()
    os.makedirs(os.path.dirname(work), exist_ok=True)
    with open(work + '.train.log', 'a' if resumed else 'w') as log:
        proc = subprocess.run(train, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f'{arm} seed {seed}: training failed (exit {proc.returncode}); see '
                           f'{work}.train.log')
    train_s = time.time() - t0
    ckpt = os.path.join(work, open(os.path.join(work, 'last_checkpoint')).read().strip())
    scalars = sorted(glob.glob(os.path.join(work, '*', 'vis_data', 'scalars.json')))
    if len(scalars) > 1:                     # resumed: one file per launch (timestamped dirs)
        merged = os.path.join(work, 'scalars.merged.json')
        merge_scalars(scalars, merged)
        scalars = [merged]
    copy_scalars(scalars[-1], os.path.join(res, 'scalars.json'), args.keep_scalars)
    t1 = time.time()
    evaluate = _evaluate(args, arm, config, seed, work, res, ckpt, opts, env)
    record = dict(arm=arm, config=config, seed=seed, threads=args.threads,
                  cfg_options=opts, arm_options=args.arm_options.get(arm, []),
                  eval_args=args.eval_args, eval_seed=args.eval_seed,
                  train_seconds=round(train_s, 1), eval_seconds=round(time.time() - t1, 1),
                  resumed=resumed,
                  checkpoint=os.path.basename(ckpt), commit=_git_commit(), cpu=cpu_model(),
                  cpus=os.cpu_count(), concurrent_jobs=args.jobs,
                  kept_scalars=args.keep_scalars,
                  train_command=' '.join(shlex.quote(c) for c in train[1:]),
                  eval_command=' '.join(shlex.quote(c) for c in evaluate[1:]))
    with open(record_path, 'w') as f:
        json.dump(record, f, indent=2)
    return record


def _evaluate(args, arm, config, seed, work, res, ckpt, opts, env) -> list:
    """Run tools/eval.py on ``ckpt`` at the common evaluation seed; copy its eval.json into the
    results. Returns the command."""
    evaluate = [sys.executable, os.path.join(ROOT, 'tools', 'eval.py'), config, ckpt, '--out',
                os.path.join(work, 'eval'), '--seed', str(args.eval_seed),
                *shlex.split(args.eval_args)]
    if opts:
        evaluate += ['--cfg-options', *opts]
    with open(work + '.eval.log', 'w') as log:
        proc = subprocess.run(evaluate, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f'{arm} seed {seed}: evaluation failed (exit {proc.returncode}); see '
                           f'{work}.eval.log')
    shutil.copyfile(os.path.join(work, 'eval', 'eval.json'), os.path.join(res, 'eval.json'))
    return evaluate


def _re_evaluate(args, record, arm, config, seed, work, res, opts, env) -> dict:
    """Evaluate a finished run's checkpoint again with the current tools/eval.py (same
    checkpoint, evaluation seed and arguments), e.g. so every eval.json carries the current
    evaluation protocol; the training record is kept, the evaluation fields are updated."""
    ckpt = os.path.join(work, record['checkpoint'])
    if not os.path.isfile(ckpt):
        raise RuntimeError(f'{arm} seed {seed}: --re-evaluate needs the checkpoint {ckpt}, which '
                           f'is gone: pass the --work directory the run trained in')
    t1 = time.time()
    evaluate = _evaluate(args, arm, config, seed, work, res, ckpt, opts, env)
    return dict(record, eval_seconds=round(time.time() - t1, 1), eval_args=args.eval_args,
                eval_seed=args.eval_seed, re_evaluated_commit=_git_commit(),
                eval_command=' '.join(shlex.quote(c) for c in evaluate[1:]))


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


SPIKE_FACTOR = 3.0
TAIL = 10


def stability_metrics(series: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    """Training-stability numbers of one run from its logged scalars (``log/`` rows of the
    summary): ``grad_norm_mean``, ``grad_norm_var`` (variance over the logged iterations),
    ``grad_norm_max``, ``grad_norm_spikes`` (iterations whose gradient norm exceeds
    ``SPIKE_FACTOR`` x the run's median), ``kl_last`` (mean ``kl/mean`` of the last ``TAIL``
    iterations), ``kl_roughness`` (mean ``|kl_t - kl_{t-1}|`` over consecutive logged
    iterations: 0 for a smooth KL curve), ``entropy_change`` (mean ``entropy/mean`` of the last
    ``TAIL`` minus the first ``TAIL``), ``seconds_per_iter`` (median of the logged ``time``)
    and ``<head>_last`` (mean ``reward/<head>/mean`` of the last ``TAIL``; its spread across
    seeds is the reward variance across seeds).

    Examples:
        >>> m = stability_metrics({'grad_norm': [(i, 1.0) for i in range(1, 20)] + [(20, 5.0)],
        ...                        'kl/mean': [(1, 0.0), (2, 0.2), (3, 0.1)]})
        >>> m['log/grad_norm_spikes'], m['log/grad_norm_max'], round(m['log/kl_roughness'], 3)
        (1.0, 5.0, 0.15)
        >>> round(m['log/grad_norm_var'], 3)
        0.8
    """
    out = {}
    g = [v for _, v in sorted(series.get('grad_norm', [])) if math.isfinite(v)]
    if g:
        med = statistics.median(g)
        out['log/grad_norm_mean'] = statistics.fmean(g)
        if len(g) > 1:
            out['log/grad_norm_var'] = statistics.variance(g)
        out['log/grad_norm_max'] = max(g)
        out['log/grad_norm_spikes'] = float(sum(v > SPIKE_FACTOR * med for v in g))
    kl = [v for _, v in sorted(series.get('kl/mean', []))]
    if kl:
        out['log/kl_last'] = statistics.fmean(kl[-TAIL:])
        if len(kl) > 1:
            out['log/kl_roughness'] = statistics.fmean(abs(b - a) for a, b in zip(kl, kl[1:]))
    secs = [v for _, v in series.get('time', []) if math.isfinite(v)]
    if secs:
        out['log/seconds_per_iter'] = statistics.median(secs)
    ent = [v for _, v in sorted(series.get('entropy/mean', []))]
    if ent:
        out['log/entropy_change'] = statistics.fmean(ent[-TAIL:]) - statistics.fmean(ent[:TAIL])
    for key, pts in series.items():
        if key.startswith('reward/') and key.endswith('/mean') and key.count('/') == 2:
            vals = [v for _, v in sorted(pts)]
            out[f'log/{key.split("/")[1]}_last'] = statistics.fmean(vals[-TAIL:])
    return out


def outside_iterations(series: dict[str, list[tuple[int, float]]], run: dict) -> Optional[float]:
    """Share of the training process's wall time (``run['train_seconds']``) spent outside its
    iterations: process start, building, hooks between iterations, checkpoints. The iterations'
    time is the mean logged ``time`` times the last logged iteration (logging every k-th
    iteration logs k-iteration means). None for a resumed run (``train_seconds`` covers only
    the last launch) or without ``time``.

    Examples:
        >>> round(outside_iterations({'time': [(1, 9.0), (2, 11.0)]}, {'train_seconds': 25.0}), 3)
        0.2
    """
    pts = [(s, v) for s, v in series.get('time', []) if math.isfinite(v)]
    train_s = run.get('train_seconds')
    if not pts or not train_s or run.get('resumed'):
        return None
    inside = statistics.fmean(v for _, v in pts) * max(s for s, _ in pts)
    return 1.0 - inside / train_s


def _collect(args):
    """Per-run results under ``args.out``: ``(table, curves, runs, protocols)`` with
    ``table[metric][arm][seed]``, ``curves[scalar][arm][seed]`` and ``protocols[arm][seed]``."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    curves: dict[str, dict[str, dict[int, list]]] = {}
    runs, protocols = {}, {}
    for arm in args.arms:
        for res in sorted(glob.glob(os.path.join(args.out, arm, 'seed*'))):
            if not os.path.isfile(os.path.join(res, 'eval.json')):
                continue
            seed = int(os.path.basename(res)[4:])
            run = json.load(open(os.path.join(res, 'run.json')))
            runs.setdefault(arm, []).append(run)
            record = json.load(open(os.path.join(res, 'eval.json')))
            protocols.setdefault(arm, {})[seed] = record.get('protocol')
            for k, v in _numbers(record['results']).items():
                table.setdefault(k, {}).setdefault(arm, {})[seed] = v
            series = _load_scalars(os.path.join(res, 'scalars.json'))
            for k, pts in series.items():
                curves.setdefault(k, {}).setdefault(arm, {})[seed] = pts
            stability = stability_metrics(series)
            outside = outside_iterations(series, run)
            if outside is not None:
                stability['log/outside_iterations'] = outside
            for k, v in stability.items():
                table.setdefault(k, {}).setdefault(arm, {})[seed] = v
    return table, curves, runs, protocols


def protocol_check(protocols: dict) -> dict:
    """The runs' evaluation protocols: ``groups`` (one per distinct protocol, with the runs
    evaluated under it), ``missing`` (runs without one), ``differ`` and the ``differences``."""
    labelled = [(f'{arm} seed {seed}', p) for arm, per_seed in protocols.items()
                for seed, p in sorted(per_seed.items())]
    groups, missing = eval_protocol.group_protocols(labelled)
    return dict(groups=[dict(runs=labels, protocol=p) for p, labels in groups], missing=missing,
                differ=len(groups) > 1,
                differences=eval_protocol.differences([p for p, _ in groups]))


def _arm_identities(protocols: dict) -> dict[str, set]:
    return {arm: {eval_protocol.identity(p) for p in per_seed.values() if p}
            for arm, per_seed in protocols.items()}


def _protocol_warning(check: dict) -> str:
    return (f'WARNING: the runs were evaluated under {len(check["groups"])} different evaluation '
            f'protocols (they differ in {", ".join(check["differences"])}): comparisons of the '
            f'metrics these settings affect are not valid (their verdicts say INVALID; a head '
            f'scored in one arm only affects its own metrics); re-evaluate them under one '
            f'protocol to compare those')


def _protocol_section(check: dict) -> list[str]:
    lines = ['', '## Evaluation protocol', '']
    for k, group in enumerate(check['groups'], 1):
        title = (f'Protocol {k} of {len(check["groups"])}' if check['differ']
                 else 'Every run was evaluated under one protocol')
        lines += [f'{title} ({", ".join(group["runs"])}):', '', '```',
                  *eval_protocol.format_protocol(group['protocol']), '```', '']
    if check['missing']:
        lines.append(f'No protocol recorded (eval.json written before tools/eval.py recorded '
                     f'it), so not checked: {", ".join(check["missing"])}.')
    return lines


def _invalid_verdict(metric, base, arm, a, b, differences) -> dict:
    diff = statistics.fmean(b) - statistics.fmean(a)
    return dict(metric=metric, base=base, arm=arm, difference=diff, ci95=None, outcome='invalid',
                text=f'{arm} vs {base} on {metric}: no verdict, INVALID: the arms were evaluated '
                     f'under different protocols (differ in {", ".join(differences)}); '
                     f'difference {diff:+.4g}')


def relevant_differences(differences: list[str], metric: str) -> list[str]:
    """The protocol differences that bear on ``metric`` (``<split>/<head or group>/...``): a
    reward head scored in one arm and not (or as another class) in the other changes only the
    metrics under that head's name (``scored_heads.<name>``); every other difference (sampler,
    seeds, splits, fidelity settings) bears on every metric."""
    parts = metric.split('/')
    group = parts[1] if len(parts) > 2 else None
    return [d for d in differences
            if not d.startswith('scored_heads.') or d == f'scored_heads.{group}']


def _verdicts(args, table, protocols, base) -> list:
    wanted = args.verdict_metrics or sorted(
        m for m in table if m.endswith(('/shapes/strict', '/fidelity/fid', '/fidelity/recall',
                                        '/fidelity/precision')))
    ids = _arm_identities(protocols)
    out = []
    for metric in wanted:
        a = list(table.get(metric, {}).get(base, {}).values())
        for arm in args.arms:
            b = list(table.get(metric, {}).get(arm, {}).values())
            if arm == base or not a or not b:
                continue
            differ = []
            if len(ids.get(base, set()) | ids.get(arm, set())) > 1:
                pair = {x: protocols[x] for x in (base, arm)}
                differ = relevant_differences(protocol_check(pair)['differences'], metric)
            if differ:
                out.append(_invalid_verdict(metric, base, arm, a, b, differ))
            else:
                out.append(verdict(metric, base, arm, a, b))
    return out


def _arm_line(args, arm: str) -> str:
    opts = args.arm_options.get(arm) or []
    return f'- `{arm}`: `{args.arms[arm]}`' + (f' with `{" ".join(opts)}`' if opts else '')


def summarise(args) -> dict:
    """summary.json / summary.md / curves.png from the per-run files under ``args.out``."""
    table, curves, runs, protocols = _collect(args)
    check = protocol_check(protocols)
    summary = {'arms': {a: args.arms[a] for a in args.arms},
               'arm_options': {a: args.arm_options.get(a, []) for a in args.arms},
               'runs': runs, 'metrics': {}, 'protocols': check}
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
    summary['verdicts'] = _verdicts(args, table, protocols, base)
    with open(os.path.join(args.out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(args.out, 'summary.md'), 'w') as f:
        if check['differ']:
            f.write(f'**{_protocol_warning(check)}**\n\n')
        f.write('Arms:\n\n' + '\n'.join(_arm_line(args, a) for a in args.arms) + '\n\n')
        f.write('Mean ± sample standard deviation across seeds (n = seeds); per-seed values in '
                'summary.json. `log/` rows come from the training logs (scalars.json): '
                f'gradient-norm mean, variance, max and spikes (iterations above '
                f'{SPIKE_FACTOR:g} x the run\'s median), KL and reward means of the last {TAIL} '
                f'iterations, KL roughness (mean |change| of the KL between logged iterations), '
                f'entropy change (last {TAIL} minus first {TAIL}), median seconds per iteration '
                f'(when `time` was kept).\n\n' + '\n'.join(lines) + '\n')
        if summary['verdicts']:
            f.write(f'\nAgainst {base} (95% percentile bootstrap interval of the difference of '
                    f'means, seeds resampled per arm):\n\n'
                    + ''.join(f'- {v["text"]}\n' for v in summary['verdicts']))
        f.write('\n'.join(_protocol_section(check)) + '\n')
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
    summary = summarise(args)
    if summary['protocols']['differ']:
        print(_protocol_warning(summary['protocols']), file=sys.stderr)
    print(f'wrote {args.out}/summary.md, summary.json and curves.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
