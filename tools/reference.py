"""Check a run against a model-zoo row's reference curves: plot each chosen scalar of the run over
the band of the row's seeds and say whether, and where, the run leaves it.

    python tools/reference.py ROW RUN [--scalars KEY ...] [--eval EVAL_JSON] [--patience 3]
                              [--smooth 5] [--out PNG]
    python tools/reference.py --list

ROW is a results directory of one arm, as ``tools/multiseed.py`` writes it and model-zoo rows
ship it (``<arm>/seed<S>/scalars.json``, ``eval.json``, ``run.json``), e.g.
``configs/var_rl/results/shapes/grpo``; or its short name ``<method>/<benchmark>/<arm>``
(``var_rl/shapes/grpo`` is ``configs/var_rl/results/shapes/grpo``). ``--list`` prints the rows
of this checkout.

RUN is your run: a work dir of ``tools/train.py`` (its ``*/vis_data/scalars.json``, a resumed
run's files merged), a results seed directory, or a ``scalars.json`` file.

The band of a scalar is, per iteration, the min-max (and mean) across the row's seeds (at least
2), over the iterations every seed logged. Every curve, the row's seeds and the run, is first
smoothed with a centred moving average of ``--smooth`` iterations (default 5; 1 = raw values).
Tolerance: the band is widened on each side by ``--margin`` times its median width over the
iterations (default 2; 0 = the bare min-max band), and the run *leaves* it where
``--patience`` consecutive compared iterations (default 5) lie outside, so one noisy point does
not count. The defaults come from the first 63 iterations of three Shapes VAR GRPO seeds: the
bare min-max band of two seeds was left by the third seed of the same config on every scalar
(the min-max of n seeds holds a new seed's value with probability (n - 1) / (n + 1) only);
with the defaults the held-out seed stayed inside in 7 of 9 (seed, scalar) checks (the other
two left at iterations 23 and 25), while MP and VAR RL runs left the three-seed band on reward,
KL and entropy within 10 iterations. A 2-seed band is narrow: ship 3 or more seeds per row.
Per scalar the tool prints "inside" or the first iteration of the first stretch
outside, its direction (above, below, or above and below for a run that swings across the
band) and the values there; a run shorter than the reference
is compared over the iterations it has (and says so). Default scalars: every
``reward/<head>/mean``, ``kl/mean`` and ``entropy/mean`` present in both.

With an evaluation (``--eval``, default ``RUN/eval.json`` when it exists) every metric of its
``results`` is placed against the range of the row's seeds (inside / above / below), and the
evaluation protocols are compared (``vargo.core.eval_protocol``): a run evaluated under another
protocol than the row gets a WARNING naming the settings that differ.

Output: the lines above on stdout and a PNG (``--out``, default ``RUN/reference_<arm>.png``, or
next to a RUN file). Exit code 0 for a finished comparison, whatever it found; 2 for a bad
argument (one ``error:`` line).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:    # tools/multiseed.py
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))

from multiseed import _numbers  # noqa: E402
from vargo.core import eval_protocol  # noqa: E402
from vargo.core.cli import ArgumentParser, UsageError, fail  # noqa: E402
from vargo.core.run_report import read_scalars, read_scalars_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SCALARS = ('kl/mean', 'entropy/mean')
#: eval.json entries that describe the sample, not its quality (left out of the comparison)
BOOKKEEPING = ('num_conditions', 'num_samples', 'cfg_scale', 'num_gen', 'num_real',
               'num_real_fid', 'kid_std', 'isc_std')


def parse_args(argv=None):
    p = ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()),
                       epilog=__doc__.split('\n\n', 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('row', nargs='?', help='a results directory of one arm, or '
                   '<method>/<benchmark>/<arm> (see --list)')
    p.add_argument('run', nargs='?', help='a work dir, a results seed dir or a scalars.json')
    p.add_argument('--list', action='store_true', help="print this checkout's rows and exit")
    p.add_argument('--scalars', nargs='+', metavar='KEY', help='scalars to check (default: '
                   'every reward/<head>/mean, kl/mean and entropy/mean found in both)')
    p.add_argument('--eval', metavar='EVAL_JSON', help="the run's eval.json (default: "
                   'RUN/eval.json if it exists)')
    p.add_argument('--patience', type=int, default=5, metavar='K', help='consecutive compared '
                   'iterations outside the band that count as leaving it, >= 1 (default 5)')
    p.add_argument('--smooth', type=int, default=5, metavar='W', help='centred moving average '
                   'over W iterations before comparing, >= 1 (default 5; 1 = raw values)')
    p.add_argument('--margin', type=float, default=2.0, metavar='M', help='widen the band on '
                   'each side by M times its median width, >= 0 (default 2; 0 = bare min-max)')
    p.add_argument('--out', help='the PNG (default RUN/reference_<arm>.png)')
    args = p.parse_args(argv)
    if not args.list and (args.row is None or args.run is None):
        p.error('give ROW and RUN (or --list to see the rows)')
    for name in ('patience', 'smooth'):
        if getattr(args, name) < 1:
            p.error(f'--{name} {getattr(args, name)}: must be an integer >= 1')
    if not args.margin >= 0:
        p.error(f'--margin {args.margin}: must be a number >= 0')
    return args


# ---- rows ------------------------------------------------------------------------------------
def list_rows(root: str = ROOT) -> dict[str, str]:
    """``{short name: directory}`` of every arm under ``configs/*/results/*/`` with seeds."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(root, 'configs', '*', 'results', '*', '*',
                                              'seed*', 'scalars.json'))):
        arm_dir = os.path.dirname(os.path.dirname(path))
        parts = os.path.relpath(arm_dir, os.path.join(root, 'configs')).split(os.sep)
        rows[f'{parts[0]}/{parts[2]}/{parts[3]}'] = arm_dir
    return rows


def resolve_row(row: str, root: str = ROOT) -> str:
    """The arm directory of ``row`` (a directory, or ``<method>/<benchmark>/<arm>``)."""
    if os.path.isdir(row):
        return row
    parts = row.strip('/').split('/')
    if len(parts) == 3:
        path = os.path.join(root, 'configs', parts[0], 'results', parts[1], parts[2])
        if os.path.isdir(path):
            return path
    known = ', '.join(list_rows(root)) or 'none in this checkout'
    raise UsageError(f'ROW {row!r} is neither a results directory nor a row name '
                     f'<method>/<benchmark>/<arm>; rows: {known}')


def reference_seeds(arm_dir: str) -> dict[str, str]:
    """``{seed dir name: path}`` of the arm's seeds that hold a scalars.json."""
    seeds = {os.path.basename(os.path.dirname(p)): os.path.dirname(p)
             for p in sorted(glob.glob(os.path.join(arm_dir, 'seed*', 'scalars.json')))}
    if len(seeds) < 2:
        raise UsageError(f'ROW {arm_dir}: {len(seeds)} seed*/scalars.json in it; a band needs '
                         f'at least 2 seeds (give an arm directory written by '
                         f'tools/multiseed.py with --seeds 0 1 2)')
    return seeds


def run_scalars(run: str) -> dict[str, dict[int, float]]:
    """``{key: {step: value}}`` of a work dir, a results seed dir or a scalars.json file."""
    if os.path.isfile(run):
        return read_scalars_file(run)
    if os.path.isdir(run):
        found = read_scalars(run)
        if found:
            return found
    raise UsageError(f'RUN {run!r}: no scalars found; give a work dir (with '
                     f'<timestamp>/vis_data/scalars.json), a results seed dir or a scalars.json')


# ---- the band --------------------------------------------------------------------------------
def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points (fewer at the ends)."""
    half = window // 2
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half): i + window - half]
        out.append(statistics.fmean(part))
    return out


def _smoothed(series: dict[int, float], window: int) -> dict[int, float]:
    steps = sorted(series)
    return dict(zip(steps, smooth([series[s] for s in steps], window)))


def band(seed_series: list[dict[int, float]], window: int = 1) -> dict[int, tuple]:
    """``{step: (min, mean, max)}`` across seeds, over the steps every seed has."""
    common = sorted(set.intersection(*(set(s) for s in seed_series)))
    smoothed = [_smoothed({k: s[k] for k in common}, window) for s in seed_series]
    return {k: (min(s[k] for s in smoothed), statistics.fmean(s[k] for s in smoothed),
                max(s[k] for s in smoothed)) for k in common}


def tolerance(ref: dict[int, tuple], margin: float) -> float:
    """``margin`` times the band's median width over its steps."""
    return margin * statistics.median(hi - lo for lo, _, hi in ref.values()) if ref else 0.0


def compare(run: dict[int, float], ref: dict[int, tuple], *, patience: int = 5,
            window: int = 1, margin: float = 0.0) -> dict:
    """Where the smoothed ``run`` lies against the band ``ref`` (see :func:`band`) widened by
    :func:`tolerance` on each side.

    Returns ``compared`` (steps in both), ``outside`` (how many of them outside), ``leaves``
    (None, or ``step``, ``direction``, ``value``, ``lo``, ``hi`` (the widened band) at the first
    of ``patience`` consecutive compared steps outside), ``tolerance`` and the step ranges of run
    and band."""
    values = _smoothed(run, window)
    steps = [s for s in sorted(values) if s in ref]
    tol = tolerance(ref, margin)
    result = dict(compared=len(steps), outside=0, leaves=None, tolerance=tol,
                  run_steps=[min(run), max(run)] if run else None,
                  band_steps=[min(ref), max(ref)] if ref else None)
    streak = []                     # (step, side) of the current run of outside points
    for s in steps:
        lo, hi = ref[s][0] - tol, ref[s][2] + tol
        where = 'above' if values[s] > hi else 'below' if values[s] < lo else None
        result['outside'] += where is not None
        streak = streak + [(s, where)] if where else []
        if result['leaves'] is None and len(streak) >= patience:
            first = streak[0][0]
            sides = sorted({w for _, w in streak})
            result['leaves'] = dict(step=first, direction=' and '.join(sides),
                                    value=values[first], lo=ref[first][0] - tol,
                                    hi=ref[first][2] + tol)
    return result


def describe(key: str, result: dict, seeds: int, patience: int) -> str:
    """One line: inside the band, or where and how the run leaves it."""
    if not result['compared']:
        return (f'{key}: no iteration in common (run {result["run_steps"]}, reference '
                f'{result["band_steps"]})')
    (r0, r1), (b0, b1) = result['run_steps'], result['band_steps']
    cover = '' if r0 <= b0 and r1 >= b1 else \
        f' (the run covers iterations {r0}-{r1} of the reference\'s {b0}-{b1})'
    if r1 > b1:
        cover += f' (iterations {b1 + 1}-{r1} of the run are past the reference\'s {b0}-{b1})'
    leaves = result['leaves']
    if leaves is None:
        return (f'{key}: inside the band of {seeds} seeds at {result["compared"]} iterations '
                f'compared ({result["outside"]} outside, never {patience} in a row){cover}')
    value = leaves['value']
    bound = (f'> {leaves["hi"]:.4g}' if value > leaves['hi'] else f'< {leaves["lo"]:.4g}')
    return (f'{key}: LEAVES the band of {seeds} seeds {leaves["direction"]} at iteration '
            f'{leaves["step"]} ({leaves["value"]:.4g} {bound}); outside at {result["outside"]} '
            f'of {result["compared"]} iterations compared{cover}')


def default_keys(ref_keys: set, run_keys: set) -> list[str]:
    common = ref_keys & run_keys
    keys = sorted(k for k in common if k.startswith('reward/') and k.endswith('/mean'))
    return keys + [k for k in DEFAULT_SCALARS if k in common]


# ---- evaluation ------------------------------------------------------------------------------
def compare_eval(run_eval: dict, ref_evals: list[dict]) -> list[dict]:
    """Each metric of ``run_eval``'s results against the min-max of the reference seeds'."""
    refs = [_numbers(r.get('results', {})) for r in ref_evals]
    out = []
    for metric, value in sorted(_numbers(run_eval.get('results', {})).items()):
        if metric.rsplit('/', 1)[-1] in BOOKKEEPING or any(metric not in r for r in refs):
            continue
        lo, hi = min(r[metric] for r in refs), max(r[metric] for r in refs)
        where = 'above' if value > hi else 'below' if value < lo else 'inside'
        out.append(dict(metric=metric, value=value, lo=lo, hi=hi, where=where))
    return out


def protocol_lines(run_eval: dict, ref_evals: list[dict]) -> list[str]:
    """A WARNING when the run was evaluated under another protocol than the reference."""
    ref_protocols = [r.get('protocol') for r in ref_evals]
    if not run_eval.get('protocol') or not all(ref_protocols):
        return ['evaluation protocol: not recorded by the run or by every reference seed; '
                'the comparison cannot be checked']
    diff = eval_protocol.differences([run_eval['protocol'], *ref_protocols])
    if diff:
        return [f'WARNING: the run was evaluated under another protocol than the reference '
                f'(they differ in {", ".join(diff)}): this comparison is not valid']
    return ['evaluation protocol: the same as the reference\'s']


# ---- plot and main ---------------------------------------------------------------------------
def plot(path: str, panels: list[tuple], title: str) -> None:
    """``panels``: ``(key, band, run series, result)``; one subplot each."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, (key, ref, run, result) in zip(axes.flat, panels):
        steps, tol = sorted(ref), result['tolerance']
        ax.fill_between(steps, [ref[s][0] - tol for s in steps], [ref[s][2] + tol for s in steps],
                        alpha=0.1, color='C0', label='tolerance')
        ax.fill_between(steps, [ref[s][0] for s in steps], [ref[s][2] for s in steps],
                        alpha=0.3, color='C0', label='reference min-max')
        ax.plot(steps, [ref[s][1] for s in steps], '--', lw=1, label='reference mean')
        rsteps = sorted(run)
        ax.plot(rsteps, [run[s] for s in rsteps], lw=1.3, color='k', label='run')
        if result['leaves']:
            ax.axvline(result['leaves']['step'], color='r', lw=1,
                       label=f'leaves ({result["leaves"]["direction"]})')
        ax.set_title(key, fontsize=9)
        ax.set_xlabel('iteration')
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis('off')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check(args) -> list[str]:
    """The comparison as printed lines; writes the PNG."""
    arm_dir = resolve_row(args.row)
    seeds = reference_seeds(arm_dir)
    ref_scalars = [read_scalars_file(os.path.join(d, 'scalars.json')) for d in seeds.values()]
    run = run_scalars(args.run)
    keys = args.scalars or default_keys(set.intersection(*(set(r) for r in ref_scalars)),
                                        set(run))
    missing = [k for k in keys if k not in run or any(k not in r for r in ref_scalars)]
    if not keys or missing:
        raise UsageError(f'--scalars: {missing or "none"} not logged by both the run and every '
                         f'reference seed; the run has {sorted(run)[:12]}')
    lines = [f'reference {eval_protocol.shown_path(arm_dir)} ({len(seeds)} seeds: '
             f'{", ".join(seeds)}); smoothing {args.smooth}, margin {args.margin:g} x the '
             f'band\'s median width, patience {args.patience}']
    panels = []
    for key in keys:
        ref = band([r[key] for r in ref_scalars], args.smooth)
        result = compare(run[key], ref, patience=args.patience, window=args.smooth,
                         margin=args.margin)
        lines.append(describe(key, result, len(seeds), args.patience))
        panels.append((key, ref, _smoothed(run[key], args.smooth), result))
    lines += _eval_section(args, list(seeds.values()))
    out = args.out or _default_png(args.run, os.path.basename(os.path.normpath(arm_dir)))
    plot(out, panels, f'{args.run} against {eval_protocol.shown_path(arm_dir)}')
    return lines + [f'wrote {out}']


def _eval_section(args, seed_dirs: list[str]) -> list[str]:
    path = args.eval or (os.path.join(args.run, 'eval.json') if os.path.isdir(args.run) else None)
    if path is None or not os.path.isfile(path):
        if args.eval:
            raise UsageError(f'--eval {args.eval}: no such file')
        return []
    refs = [json.load(open(os.path.join(d, 'eval.json'))) for d in seed_dirs
            if os.path.isfile(os.path.join(d, 'eval.json'))]
    if not refs:
        return [f'evaluation: the reference has no eval.json to compare {path} with']
    run_eval = json.load(open(path))
    lines = [f'evaluation {path} against the range of {len(refs)} reference seeds:']
    for r in compare_eval(run_eval, refs):
        lines.append(f'  {r["metric"]}: {r["value"]:.4g} {r["where"]} '
                     f'[{r["lo"]:.4g}, {r["hi"]:.4g}]')
    return lines + protocol_lines(run_eval, refs)


def _default_png(run: str, arm: str) -> str:
    folder = run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))
    return os.path.join(folder, f'reference_{arm}.png')


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, path in list_rows().items():
            seeds = len(glob.glob(os.path.join(path, 'seed*', 'scalars.json')))
            print(f'{name:30s} {eval_protocol.shown_path(path)} ({seeds} seeds'
                  + (', too few for a band)' if seeds < 2 else ')'))
        return 0
    try:
        lines = check(args)
    except UsageError as e:
        return fail(e)
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
