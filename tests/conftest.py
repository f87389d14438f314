"""Shared test settings (offline, deterministic, small thread count) and helpers."""
import os
import subprocess
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')
if os.environ.get('PYTEST_XDIST_WORKER'):
    # one of several test workers (pyproject's addopts: one per core): one thread each, for
    # torch here and for the tools the tests start, so workers do not oversubscribe the cores
    os.environ['OMP_NUM_THREADS'] = '1'

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get('PYTEST_XDIST_WORKER'):
    torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def run_python(*args, check=True, timeout=600, cwd=ROOT, env=None):
    """Run ``python *args`` (a tool script and its arguments) offline from ``cwd``; with
    ``check`` assert it exits 0, showing the ends of its stdout and stderr otherwise."""
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', **(env or {})}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc



def run_two_ranks(script_text: str, tmp_path) -> list:
    """Run ``script_text`` under ``torch.distributed.run`` with 2 CPU processes (argv: an output
    prefix and the tests folder); each rank saves ``<prefix>.rank<k>.pt``. Returns the two
    payloads (loaded data-only)."""
    script = tmp_path / 'two_ranks.py'
    script.write_text(script_text)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.path.join(ROOT, 'tests') + os.pathsep + env.get('PYTHONPATH', '')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         str(script), str(tmp_path / 'out'), os.path.join(ROOT, 'tests')],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(tmp_path / f'out.rank{k}.pt', weights_only=True) for k in (0, 1)]


def load_tool(name: str):
    """``tools/<name>.py`` imported as a module (its ``main(argv)`` callable in-process)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'vargo_tools_{name}',
                                                  os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
