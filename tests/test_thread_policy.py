"""The training, evaluation and pretraining tools set ``OMP_WAIT_POLICY=PASSIVE`` unless the user
set it, before torch is imported (OpenMP reads it when it is loaded); README "Threads on a shared
machine" gives the measurement behind it."""
import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT

TOOLS = ['train.py', 'eval.py', 'pretrain_shapes.py']


@pytest.mark.parametrize('tool', TOOLS)
def test_wait_policy_is_set_before_any_import_but_os(tool):
    tree = ast.parse(open(os.path.join(ROOT, 'tools', tool)).read())
    imports_before = []
    for node in tree.body:
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                and ast.unparse(node) == "os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')"):
            break
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports_before += [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module]
    else:
        raise AssertionError(f'tools/{tool} does not set OMP_WAIT_POLICY')
    assert set(imports_before) <= {'os', '__future__'}, imports_before


def test_the_users_wait_policy_wins(tmp_path):
    """Run train.py's preamble as the interpreter does: a user value is kept, none becomes
    PASSIVE."""
    src = open(os.path.join(ROOT, 'tools', 'train.py')).read()
    pre = src[:src.index("os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')")]
    probe = tmp_path / 'probe.py'
    probe.write_text(pre + "os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')\n"
                     "print(os.environ['OMP_WAIT_POLICY'])\n")
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}

    def policy(**extra):
        return subprocess.run([sys.executable, str(probe)], env={**env, **extra}, check=True,
                              capture_output=True, text=True).stdout.strip()
    assert policy() == 'PASSIVE'
    assert policy(OMP_WAIT_POLICY='ACTIVE') == 'ACTIVE'
