"""Rollout time of a config under each thread count and OpenMP wait policy, alone and next to a
busy process: the measurement behind the tools' thread default (README, "Threads on a shared
machine").

    python tools/thread_sweep.py CONFIG [--threads 1 2] [--wait-policies default PASSIVE]
                                 [--loads idle busy] [--rounds 2] [--repeat 4] [--batch N]
                                 [--arch A] [--out sweep.json] [--cfg-options k=v ...]

OpenMP reads ``OMP_WAIT_POLICY`` once, when it is loaded, so every cell (threads x policy x
load) runs in a fresh process: ``tools/benchmark.py CONFIG --threads T --config-scale-only
--skip-update --skip-iteration`` with the policy in its environment (``default``: the variable removed, so
the OpenMP runtime's own policy applies; GNU OpenMP spins a while before it sleeps). A policy
``spin=N`` sets GNU OpenMP's ``GOMP_SPINCOUNT=N`` (and no ``OMP_WAIT_POLICY``): an idle thread
spins N rounds before it sleeps (GNU OpenMP's own estimate: about 100,000 rounds per
millisecond; unset, it spins 300,000, ``PASSIVE`` 0, ``ACTIVE`` 3e10). It times
``--repeat`` rollouts of ``--batch`` samples (the config's batch by default) with the config's
CFG scale, after a warm-up, on random weights (benchmark.py's rules). Load ``busy`` starts one
extra process during the cell, a 1-thread fp32 GEMM loop (a compute-bound neighbour, like another
1-thread training job), and stops it afterwards; ``idle`` adds nothing (other processes on the
machine are not controlled: the load average of every cell is recorded). Rounds interleave the
cells, each round in a rotated order, so a drift of the machine spreads over all cells.

Reported per cell: the median over rounds of the cell's median rollout seconds and the range of
the rounds; per load, the fastest setting; per setting, busy / idle (the slowdown a neighbour
causes). JSON (``--out``) has every round's numbers, the child commands, the CPU and torch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARK = os.path.join(ROOT, 'tools', 'benchmark.py')
#: the neighbour of load ``busy``: one thread of back-to-back fp32 GEMMs until it is stopped
BUSY_CODE = ('import torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\n'
             'while True:\n    a = torch.tanh(a @ a)\n')
WAIT_POLICIES = ('default', 'PASSIVE', 'ACTIVE')   # and spin=N (GOMP_SPINCOUNT)
LOADS = ('idle', 'busy')


def parse_wait_policy(text: str) -> str:
    """``default``, ``PASSIVE``, ``ACTIVE`` or ``spin=N`` (N >= 0 spin rounds), for argparse."""
    if text in WAIT_POLICIES:
        return text
    if text.startswith('spin=') and text[5:].isdigit():
        return f'spin={int(text[5:])}'
    raise argparse.ArgumentTypeError(f'{text!r} is not a wait policy; use one of '
                                     f'{", ".join(WAIT_POLICIES)} or spin=N (N >= 0)')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    p.add_argument('--wait-policies', nargs='+', default=['default', 'PASSIVE'],
                   type=parse_wait_policy, metavar='POLICY',
                   help='default, PASSIVE, ACTIVE or spin=N (GOMP_SPINCOUNT=N)')
    p.add_argument('--loads', nargs='+', default=list(LOADS), choices=LOADS)
    p.add_argument('--rounds', type=int, default=2, help='interleaved rounds over all cells')
    p.add_argument('--repeat', type=int, default=4, help='timed rollouts per cell and round')
    p.add_argument('--batch', type=int, default=None,
                   help="samples per rollout (default: the config's samples per iteration)")
    p.add_argument('--arch', help='replace policy.arch (as tools/benchmark.py)')
    p.add_argument('--gemm-size', type=int, default=512,
                   help="benchmark.py's GEMM probe size (small: the rollout is what is timed)")
    p.add_argument('--out', default='thread_sweep.json')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='K=V')
    args = p.parse_args(argv)
    for name in ('rounds', 'repeat'):
        if getattr(args, name) < 1:
            p.error(f'--{name}={getattr(args, name)} must be >= 1')
    bad = [t for t in args.threads if t < 1]
    if bad:
        p.error(f'--threads {bad[0]}: thread counts must be >= 1')
    if args.batch is not None and args.batch < 1:
        p.error(f'--batch={args.batch} must be >= 1')
    return args


def config_batch(config: str, cfg_options: list[str]) -> int:
    """The samples one iteration of ``config`` draws (``train_cfg.samples_per_rank``, else
    ``train_dataloader.batch_size`` conditions x ``group_size``): the sweep's default batch."""
    from vargo.core.cli import CfgOptionsAction
    from vargo.core.runner import load_config
    options = argparse.ArgumentParser()
    options.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction)
    cfg = load_config(config, options.parse_args(['--cfg-options', *cfg_options]).cfg_options
                      if cfg_options else None)
    per_rank = cfg.get('train_cfg', {}).get('samples_per_rank')
    return int(per_rank or cfg.train_dataloader.batch_size * cfg.group_size)


def cells(args) -> list[dict]:
    return [dict(threads=t, wait_policy=w, load=load)
            for load in args.loads for w in args.wait_policies for t in args.threads]


def cell_env(wait_policy: str, threads: int) -> dict:
    env = dict(os.environ)
    env.pop('OMP_WAIT_POLICY', None)
    env.pop('GOMP_SPINCOUNT', None)
    if wait_policy.startswith('spin='):
        env['GOMP_SPINCOUNT'] = wait_policy[5:]
    elif wait_policy != 'default':
        env['OMP_WAIT_POLICY'] = wait_policy
    env['OMP_NUM_THREADS'] = str(threads)
    env['MKL_NUM_THREADS'] = str(threads)
    return env


def start_busy() -> subprocess.Popen:
    """The ``busy`` neighbour: one process, one thread, no children (``stop`` kills it)."""
    proc = subprocess.Popen([sys.executable, '-c', BUSY_CODE], env=cell_env('PASSIVE', 1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)      # past its import, into the GEMM loop
    if proc.poll() is not None:
        raise RuntimeError(f'the busy process exited at once (code {proc.returncode})')
    return proc


def stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def run_cell(args, cell: dict, batch: int, workdir: str, tag: str) -> dict:
    """One fresh tools/benchmark.py process for ``cell``; its config-scale rollout seconds."""
    out = os.path.join(workdir, f'{tag}.json')
    cmd = [sys.executable, BENCHMARK, args.config, '--threads', str(cell['threads']),
           '--batch', str(batch), '--repeat', str(args.repeat), '--config-scale-only',
           '--skip-update', '--skip-iteration', '--gemm-size', str(args.gemm_size), '--bandwidth-mb', '32',
           '--out', out]
    if args.arch:
        cmd += ['--arch', args.arch]
    if args.cfg_options:
        cmd += ['--cfg-options', *args.cfg_options]
    busy = start_busy() if cell['load'] == 'busy' else None
    try:
        done = subprocess.run(cmd, env=cell_env(cell['wait_policy'], cell['threads']),
                              capture_output=True, text=True)
    finally:
        stop(busy)
    if done.returncode != 0:
        raise RuntimeError(f'tools/benchmark.py failed for {cell} (exit {done.returncode}):\n'
                           + (done.stderr or done.stdout)[-2000:])
    with open(out) as f:
        res = json.load(f)
    ro = res['rollout']
    key = 'no_cfg' if ro['config_scale'] == 1 else 'cfg'
    return {'rollout_s': ro[key]['time_s']['median'], 'rollout_s_values': ro[key]['time_s']['values'],
            'cfg_scale': ro[key]['cfg_scale'], 'samples': ro[key]['samples'],
            'load_average_start': res['load_average_start'], 'cpu': res['cpu'],
            'torch': res['torch'], 'busy_pid': busy.pid if busy else None, 'command': cmd}


def summarise(cell_rounds: dict[tuple, list[float]]) -> dict:
    """Median and range per cell, the fastest setting per load, busy / idle per setting.

    ``cell_rounds`` maps ``(threads, wait_policy, load)`` to the rounds' rollout seconds.
    """
    table = {k: {'median_s': statistics.median(v), 'min_s': min(v), 'max_s': max(v),
                 'rounds': list(v)} for k, v in cell_rounds.items()}
    fastest = {}
    for load in LOADS:
        mine = {k: r['median_s'] for k, r in table.items() if k[2] == load}
        if mine:
            best = min(mine, key=mine.get)
            fastest[load] = {'threads': best[0], 'wait_policy': best[1],
                             'median_s': mine[best]}
    slowdown = {}
    for (t, w, load), r in table.items():
        idle = table.get((t, w, 'idle'))
        if load == 'busy' and idle:
            slowdown[f'{t}|{w}'] = r['median_s'] / idle['median_s']
    return {'cells': table, 'fastest': fastest, 'busy_over_idle': slowdown}


def render(summary: dict, meta: dict) -> str:
    lines = [f'{meta["config"]}: rollout of {meta["batch"]} samples, CFG {meta["cfg_scale"]}, '
             f'{meta["repeat"]} timed per cell and round, {meta["rounds"]} rounds',
             f'{meta["cpu"]}, torch {meta["torch"]}',
             f'{"threads":>7}  {"wait policy":<12}{"load":<6}{"median s":>10}{"range s":>18}'
             f'{"busy/idle":>11}']
    for (t, w, load), r in sorted(summary['cells'].items(), key=lambda kv: (kv[0][2], kv[0][1],
                                                                            kv[0][0])):
        ratio = summary['busy_over_idle'].get(f'{t}|{w}') if load == 'busy' else None
        spread = f'{r["min_s"]:.3f}-{r["max_s"]:.3f}'
        ratio_txt = f'{ratio:.2f}x' if ratio else ''
        lines.append(f'{t:>7}  {w:<12}{load:<6}{r["median_s"]:>10.3f}{spread:>18}{ratio_txt:>11}')
    for load, f in summary['fastest'].items():
        lines.append(f'fastest {load}: {f["threads"]} thread(s), {f["wait_policy"]} '
                     f'({f["median_s"]:.3f} s)')
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not os.path.isfile(args.config):
        print(f'error: config {args.config} does not exist', file=sys.stderr)
        return 2
    batch = args.batch or config_batch(args.config, args.cfg_options)
    grid = cells(args)
    rounds: dict[tuple, list[float]] = {}
    records = []
    with tempfile.TemporaryDirectory(prefix='thread_sweep_') as work:
        for r in range(args.rounds):
            order = grid[r % len(grid):] + grid[:r % len(grid)]
            for i, cell in enumerate(order):
                rec = run_cell(args, cell, batch, work, f'r{r}_{i}')
                key = (cell['threads'], cell['wait_policy'], cell['load'])
                rounds.setdefault(key, []).append(rec['rollout_s'])
                records.append({'round': r, **cell, **rec})
                print(f'round {r + 1}/{args.rounds} {cell}: {rec["rollout_s"]:.3f} s '
                      f'(load average {rec["load_average_start"]})', flush=True)
    summary = summarise(rounds)
    meta = {'config': args.config, 'batch': batch, 'repeat': args.repeat, 'rounds': args.rounds,
            'cfg_scale': records[0]['cfg_scale'], 'cpu': records[0]['cpu'],
            'torch': records[0]['torch'], 'cpu_count': os.cpu_count(),
            'cfg_options': args.cfg_options, 'arch': args.arch, 'busy_code': BUSY_CODE}
    print(render(summary, meta))
    out = {**meta, 'cells': [{'threads': k[0], 'wait_policy': k[1], 'load': k[2], **v}
                             for k, v in summary['cells'].items()],
           'fastest': summary['fastest'], 'busy_over_idle': summary['busy_over_idle'],
           'records': records}
    from vargo.core.checkpoint import atomic_write_bytes
    atomic_write_bytes(json.dumps(out, indent=1).encode(), args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
