"""Where an RL iteration's time goes: the generator, the reward heads, or vargo's framework.

    python tools/overhead.py CONFIG [--iters 3] [--warmup 1] [--threads 1] [--top 12]
                             [--out overhead.json] [--profile-out run.prof]
                             [--cfg-options k=v ...]

Builds the config's runner as tools/train.py does (real weights and reward files, its hooks;
work directory in a temporary directory, removed afterwards; checkpoint saving off, since a
checkpoint is a per-run cost and not a per-iteration one) and runs ``--warmup`` untimed
iterations, ``--iters`` timed ones and ``--iters`` profiled ones (:mod:`cProfile`), each
iteration being the loop's ``run_iter`` (the hooks around it included, the data fetch not).

Every function's own time in the profile is attributed to one owner:

- ``model``: the generator's code, ``vargo.components`` ``policies``, ``modules``,
  ``samplers`` and ``tokenizers`` (the policy's forward, the sampling loop, the image decoder);
- ``reward``: ``rewards``, ``benchmarks`` and ``metrics`` (the reward heads and what they load);
- ``framework``: ``vargo.core``, the method components (``advantages``, ``regularizers``,
  ``token_selectors``, ``datasets``), MMEngine and ``tools/``: the loop, the objective, the
  estimators and selectors, logging and hooks;
- ``backward``: the autograd engine (``run_backward``: the backward of the policy's forward and
  of the loss together; the profile cannot see inside it);
- ``optimizer``: ``torch.optim`` (the optimizer's step and zero_grad);
- other library code (torch's Python, its C kernels, the standard library, numpy) has no owner of its
  own: its time goes to whoever called it, split over its callers in proportion to the time each
  call site spent there, up the call graph until an owner is reached (``other`` where none is).

So a ``torch.mm`` inside the policy's forward counts as ``model`` and one inside the GRPO
objective as ``framework``. The framework share is the overhead vargo's design adds to the work
any implementation must do (sample, score, evaluate, step), kernels included. It is an upper
bound: cProfile slows Python-level code more than kernels, and the framework is the most
Python-heavy part (``profiler_inflation``, profiled over unprofiled iteration time, says how
much the profile was slowed). Per owner, ``python_s`` is the time in Python frames (of the owner
and of the libraries it called) and ``builtin_s`` that in C functions (torch's kernels mostly).

Per-run costs (process start, building, checkpoints, evaluation hooks) are outside the
iterations: a finished run's ``train_seconds`` against the sum of its iteration times shows
them (tools/multiseed.py's ``outside_iterations`` row).
"""
from __future__ import annotations

import os

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # as tools/train.py

import argparse
import cProfile
import json
import os.path as osp
import pstats
import statistics
import sys
import tempfile
import time
from typing import Optional

os.environ.setdefault('HF_HUB_OFFLINE', '1')

TOOLS = osp.dirname(osp.abspath(__file__))
OWNERS = ('model', 'reward', 'backward', 'optimizer', 'framework')
#: vargo.components sub-packages by owner (the rest of vargo is framework)
COMPONENT_OWNERS = {'policies': 'model', 'modules': 'model', 'samplers': 'model',
                    'tokenizers': 'model', 'rewards': 'reward', 'benchmarks': 'reward',
                    'metrics': 'reward'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--iters', type=int, default=3, help='timed and then profiled iterations')
    p.add_argument('--warmup', type=int, default=1, help='untimed iterations first')
    p.add_argument('--threads', type=int, default=1, help='torch.set_num_threads')
    p.add_argument('--top', type=int, default=12,
                   help='how many framework functions to list by attributed time')
    p.add_argument('--out', default=None, help='write the result as JSON')
    p.add_argument('--profile-out', default=None,
                   help='also write the raw profile (pstats format: python -m pstats FILE, '
                        'snakeviz FILE)')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='K=V')
    args = p.parse_args(argv)
    for name in ('iters', 'threads'):
        if getattr(args, name) < 1:
            p.error(f'--{name}={getattr(args, name)} must be >= 1')
    if args.warmup < 0:
        p.error(f'--warmup={args.warmup} must be >= 0')
    return args


# -- attribution ---------------------------------------------------------------------------
class Owners:
    """Maps a profiled function's file to its owner (the module doc), or None for library code."""

    def __init__(self, core_dir: str, components_dir: str, framework_dirs: tuple[str, ...],
                 optimizer_dir: Optional[str] = None):
        self.core = osp.realpath(core_dir) + os.sep
        self.optimizer = None if optimizer_dir is None else osp.realpath(optimizer_dir) + os.sep
        self.components = osp.realpath(components_dir) + os.sep
        self.framework = tuple(osp.realpath(d) + os.sep for d in framework_dirs)
        self._cache: dict[str, Optional[str]] = {}

    @classmethod
    def for_vargo(cls) -> 'Owners':
        import mmengine
        import torch.optim

        import vargo.components
        import vargo.core
        return cls(osp.dirname(vargo.core.__file__), osp.dirname(vargo.components.__file__),
                   (osp.dirname(mmengine.__file__), TOOLS), osp.dirname(torch.optim.__file__))

    def __call__(self, func: tuple) -> Optional[str]:
        """The owner of a profiled ``(filename, line, name)``."""
        filename = func[0]
        if filename == '~' and 'run_backward' in func[2]:
            return 'backward'
        if filename in self._cache:
            return self._cache[filename]
        owner = None
        if filename and not filename.startswith(('~', '<')):
            path = osp.realpath(filename)
            if self.optimizer is not None and path.startswith(self.optimizer):
                owner = 'optimizer'
            elif path.startswith(self.components):
                sub = path[len(self.components):].split(os.sep, 1)[0]
                owner = COMPONENT_OWNERS.get(sub, 'framework')
            elif path.startswith(self.core) or path.startswith(self.framework):
                owner = 'framework'
        self._cache[filename] = owner
        return owner


def attribute(stats: dict, owner_of, *, tolerance: float = 1e-12,
              max_rounds: int = 100000) -> dict:
    """Split the profile's own times over owners.

    Args:
        stats: ``pstats.Stats(...).stats``: ``{func: (cc, nc, tt, ct, callers)}`` with ``func =
            (filename, line, name)`` and ``callers = {caller: (cc, nc, tt, ct)}``.
        owner_of: func -> owner or None (library).

    Returns ``{'owners': {owner: {'seconds', 'python_s', 'builtin_s'}}, 'functions': {owner:
    {func_label: seconds}}}``. An owned function's own time goes to its owner. A library
    function's own time flows to its callers, split in proportion to the own time it spent
    under each (call counts where those are all zero), and on through library callers until it
    reaches owned functions: an absorbing walk on the call graph, so cycles of library code
    (``Module.__call__`` and ``Sequential.forward`` call each other) pass their time on as well.
    Time that reaches no owner (the profile's root) is ``other``.
    """
    edges: dict = {}

    def callers_of(func) -> list:
        if func not in edges:
            callers = stats[func][4] if func in stats else {}
            weights = {c: float(v[2]) for c, v in callers.items()}
            if sum(weights.values()) <= 0:
                weights = {c: float(v[1]) for c, v in callers.items()}
            total = sum(weights.values())
            edges[func] = [(c, w / total) for c, w in weights.items() if w > 0] if total else []
        return edges[func]

    owners = {o: {'seconds': 0.0, 'python_s': 0.0, 'builtin_s': 0.0} for o in OWNERS + ('other',)}
    functions: dict = {o: {} for o in OWNERS + ('other',)}

    def credit(owner, func, python, builtin):
        row = owners[owner]
        row['python_s'] += python
        row['builtin_s'] += builtin
        row['seconds'] += python + builtin
        if func is not None:
            label = f'{osp.basename(func[0])}:{func[1]}({func[2]})'
            functions[owner][label] = functions[owner].get(label, 0.0) + python + builtin

    # mass[func] = [python seconds, builtin seconds] still to be passed on from func
    mass: dict = {}
    for func, (_cc, _nc, tt, _ct, _callers) in stats.items():
        if tt > 0:
            kind = 1 if func[0] == '~' else 0
            cell = mass.setdefault(func, [0.0, 0.0])
            cell[kind] += tt
    total = sum(v[0] + v[1] for v in mass.values())
    for _ in range(max_rounds):
        moved: dict = {}
        for func, (py, bi) in mass.items():
            owner = owner_of(func)
            if owner is not None:
                credit(owner, func, py, bi)
                continue
            up = callers_of(func)
            if not up:
                credit('other', None, py, bi)
                continue
            for caller, frac in up:
                cell = moved.setdefault(caller, [0.0, 0.0])
                cell[0] += py * frac
                cell[1] += bi * frac
        mass = moved
        if sum(v[0] + v[1] for v in mass.values()) <= tolerance * max(total, 1e-300):
            break
    for py, bi in mass.values():          # what still circulates after max_rounds
        credit('other', None, py, bi)
    return {'owners': owners, 'functions': functions}


# -- the run ---------------------------------------------------------------------------------
def build(args, work_dir: str):
    from vargo.core.cli import CfgOptionsAction
    from vargo.core.runner import build_runner, load_config, prepare_config
    options = argparse.ArgumentParser()
    options.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction)
    cfg_options = {}
    if args.cfg_options:
        cfg_options = options.parse_args(['--cfg-options', *args.cfg_options]).cfg_options
    cfg_options = {**cfg_options,
                   'train_cfg.max_iters': args.warmup + 2 * args.iters}
    cfg = load_config(args.config, cfg_options)
    ckpt = (cfg.get('default_hooks') or {}).get('checkpoint')
    if ckpt is not None:      # a checkpoint is a per-run cost (module doc)
        ckpt['interval'] = 10 ** 9
        ckpt['save_last'] = False
    cfg = prepare_config(cfg, config_path=args.config, work_dir=work_dir)
    return build_runner(cfg)


def measure(args) -> dict:
    import torch

    from vargo.core.run_report import cpu_model
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix='vargo_overhead_') as work_dir:
        runner = build(args, osp.join(work_dir, 'run'))
        loop = runner.train_loop
        run_iter = loop.run_iter
        profile = cProfile.Profile()
        timed: list[float] = []
        profiled: list[float] = []
        count = [0]

        def instrumented(data_batch):
            k = count[0]
            count[0] += 1
            phase = ('warmup' if k < args.warmup else
                     'timed' if k < args.warmup + args.iters else 'profiled')
            t0 = time.perf_counter()
            if phase == 'profiled':
                profile.enable()
                try:
                    run_iter(data_batch)
                finally:
                    profile.disable()
                profiled.append(time.perf_counter() - t0)
            else:
                run_iter(data_batch)
                if phase == 'timed':
                    timed.append(time.perf_counter() - t0)

        loop.run_iter = instrumented
        runner.train()
    if args.profile_out:
        profile.dump_stats(args.profile_out)
    stats = pstats.Stats(profile).stats
    split = attribute(stats, Owners.for_vargo())
    n = len(profiled)
    owners = {o: {k: v / n for k, v in row.items()} for o, row in split['owners'].items()}
    total = sum(row['seconds'] for row in owners.values())
    for row in owners.values():
        row['share'] = row['seconds'] / total if total else 0.0
    unprofiled = statistics.median(timed)
    profiled_med = statistics.median(profiled)
    top = sorted(split['functions']['framework'].items(), key=lambda kv: -kv[1])[:args.top]
    return {
        'config': args.config, 'cfg_options': args.cfg_options, 'threads': args.threads,
        'iterations': {'warmup': args.warmup, 'timed': args.iters, 'profiled': n},
        'iteration_s': {'unprofiled_median': unprofiled, 'unprofiled': timed,
                        'profiled_median': profiled_med, 'profiled': profiled},
        'profiler_inflation': profiled_med / unprofiled,
        'per_iteration': owners,
        'framework_share': owners['framework']['share'],
        'framework_top': [{'function': f, 'seconds_per_iteration': s / n} for f, s in top],
        'torch': torch.__version__, 'cpu': cpu_model(),
        'load_average_start': list(load_start), 'load_average_end': list(os.getloadavg()),
    }


def report(res: dict) -> str:
    it = res['iteration_s']
    lines = [f"{res['config']} ({res['threads']} thread(s), {res['cpu']}, torch {res['torch']}, "
             f"load average {res['load_average_start'][0]:.2f} at start)",
             f"iteration: {it['unprofiled_median']:.3f} s unprofiled, {it['profiled_median']:.3f} s"
             f" profiled (x{res['profiler_inflation']:.2f}); shares of the profiled iteration:",
             f"{'owner':<10} {'s/iter':>8} {'share':>7} {'python':>8} {'builtin':>8}"]
    for owner, row in res['per_iteration'].items():
        lines.append(f"{owner:<10} {row['seconds']:8.3f} {100 * row['share']:6.1f}% "
                     f"{row['python_s']:8.3f} {row['builtin_s']:8.3f}")
    lines.append(f"framework overhead: {100 * res['framework_share']:.1f}% of an iteration "
                 f"(an upper bound: the profiler slows Python more than kernels)")
    if res['framework_top']:
        lines.append('framework functions by attributed time (s per iteration):')
        for row in res['framework_top']:
            lines.append(f"  {row['seconds_per_iteration']:8.4f}  {row['function']}")
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vargo.core.cli import apply_heap_setting
    from vargo.core.registry import ConfigError
    apply_heap_setting()   # README "Heap"
    try:
        res = measure(args)
    except (ConfigError, FileNotFoundError) as err:
        print('error: ' + ' '.join(str(err).split()), file=sys.stderr)
        return 2
    print(report(res))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(res, f, indent=1)
        print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
