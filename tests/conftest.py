"""Shared test settings (offline, deterministic, small thread count) and helpers."""
import os
import subprocess
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

import pytest  # noqa: E402
import torch  # noqa: E402

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

