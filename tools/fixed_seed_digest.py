"""Fixed-seed digests of every Shapes training config: the evidence that a restructure changes no
numbers.

    python tools/fixed_seed_digest.py [--configs NAME ...] [--record] [--file F]

Each config runs 4 iterations from the shipped base model with seed 0 on one thread (two
optimizer steps of G samples per iteration; no image grids), and the final checkpoint's tensors
(policy weights and optimizer state) are hashed. The stored digests (``--file``, default
tests/fixtures/fixed_seed_digests.json) are keyed by the machine's CPU kind (vendor, the
instruction set torch dispatches to, torch version): floating-point results are bit-identical
only on the same kind, and four iterations of sampling amplify a rounding difference into other
tokens. On a kind with stored digests the check is bit-exact (exit 1 when a digest differs); on
another kind there is nothing to compare against: it prints the float64 summaries next to a stored
kind's for information and exits 3. ``--record`` stores this kind's digests: run it on a checkout
from before a restructure, then the check after it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FILE = os.path.join(ROOT, 'tests', 'fixtures', 'fixed_seed_digests.json')
CONFIGS = {
    'grpo_c2i': 'configs/grpo/llamagen_grpo_shapes.py',
    'grpo_t2i': 'configs/grpo/llamagen_grpo_shapes-t2i.py',
    'stage': 'configs/stage/llamagen_stage_shapes.py',
    'loo_fid': 'configs/loo_fid/llamagen_loo-fid_shapes.py',
    'var': 'configs/grpo/var_grpo_shapes.py',
    'mar': 'configs/grpo/mar_grpo_shapes.py',
}
ITERS = 4


def machine_kind() -> str:
    import torch
    vendor = 'unknown'
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('vendor_id'):
                    vendor = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return f'{vendor}/{platform.machine()}/{torch.backends.cpu.get_cpu_capability()}/' \
           f'torch-{torch.__version__}'


def run_config(name: str, work_dir: str) -> dict:
    """Train ``name`` for ITERS iterations in ``work_dir``; its digest."""
    from mmengine.config import Config
    config = CONFIGS[name]
    g = int(Config.fromfile(os.path.join(ROOT, config)).group_size)
    options = [f'train_cfg.max_iters={ITERS}', f'train_cfg.samples_per_rank={2 * g}',
               f'train_cfg.minibatch_samples={g}', f'default_hooks.checkpoint.interval={ITERS}',
               'default_hooks.image_grid.preview_conditions=0',
               f'default_hooks.image_grid.interval={10 * ITERS}',
               f'default_hooks.curves.interval={10 * ITERS}', 'randomness.seed=0']
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train.py'),
                           os.path.join(ROOT, config), '--work-dir', work_dir,
                           '--cfg-options', *options], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'{config} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}')
    return digest(os.path.join(work_dir, f'iter_{ITERS}.pth'))


def digest(path: str) -> dict:
    """sha256 of the policy weights and of the optimizer state, with float64 summaries."""
    import torch
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    groups = {'weights': [(k, v) for k, v in sorted(ckpt['state_dict'].items())],
              'optimizer': [(f'{i}.{k}', t) for i, s in sorted(ckpt['optimizer']['state'].items())
                            for k, t in sorted(s.items()) if isinstance(t, torch.Tensor)]}
    out = {}
    for group, items in groups.items():
        h = hashlib.sha256()
        total, squares = 0.0, 0.0
        for key, t in items:
            h.update(key.encode())
            h.update(t.contiguous().numpy().tobytes())
            total += float(t.double().sum())
            squares += float(t.double().pow(2).sum())
        out[group] = {'sha256': h.hexdigest(), 'sum': total, 'sum_sq': squares}
    return out


def compare(name: str, got: dict, stored: dict, exact: bool) -> list[str]:
    errors = []
    for group in ('weights', 'optimizer'):
        a, b = got[group], stored[group]
        if exact:
            if a['sha256'] != b['sha256']:
                errors.append(f'{name}: {group} differ bit-wise (sha256 {a["sha256"][:12]} vs '
                              f'stored {b["sha256"][:12]}; sum {a["sum"]!r} vs {b["sum"]!r})')
        else:
            for stat in ('sum', 'sum_sq'):
                if abs(a[stat] - b[stat]) > 1e-4 * max(1.0, abs(b[stat])):
                    errors.append(f'{name}: {group} {stat} {a[stat]!r} vs stored {b[stat]!r}')
    return errors


def mismatches(results: dict, reference: dict) -> list[str]:
    """Bit-exact comparison of ``run_config`` results with stored digests of the same kind."""
    errors = []
    for name, got in results.items():
        if name not in reference:
            errors.append(f'{name}: no stored digest (run with --record first)')
        else:
            errors += compare(name, got, reference[name], exact=True)
    return errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--configs', nargs='+', choices=sorted(CONFIGS), default=sorted(CONFIGS))
    p.add_argument('--record', action='store_true', help="store this machine kind's digests")
    p.add_argument('--file', default=DEFAULT_FILE)
    args = p.parse_args(argv)
    stored = {}
    if os.path.isfile(args.file):
        with open(args.file) as f:
            stored = json.load(f)
    kind = machine_kind()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            results[name] = run_config(name, os.path.join(tmp, name))
            print(f'{name}: weights {results[name]["weights"]["sha256"][:16]} '
                  f'optimizer {results[name]["optimizer"]["sha256"][:16]}', flush=True)
    if args.record:
        stored.setdefault('kinds', {}).setdefault(kind, {}).update(results)
        os.makedirs(os.path.dirname(args.file), exist_ok=True)
        with open(args.file, 'w') as f:
            json.dump(stored, f, indent=1, sort_keys=True)
        print(f'recorded {len(results)} digests for {kind} in {args.file}')
        return 0
    kinds = stored.get('kinds', {})
    if kind not in kinds:
        print(f'no digests stored for this machine kind ({kind}); stored kinds: '
              f'{sorted(kinds) or "none"}. Record them with --record on a checkout from before '
              f'the change. For information, summaries against another kind (rtol 1e-4):')
        other = next(iter(kinds.values()), {})
        for name, got in results.items():
            if name in other:
                print('  ' + ('; '.join(compare(name, got, other[name], exact=False))
                              or f'{name}: summaries agree'))
        return 3
    errors = mismatches(results, kinds[kind])
    for line in errors:
        print(f'DIFFERENT {line}')
    print(f'{len(results) - len({e.split(":")[0] for e in errors})}/{len(results)} configs '
          f'equal the stored digests bit for bit ({kind})')
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
