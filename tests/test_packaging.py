"""The distribution lists every sub-package, and every component is documented."""
import os
import subprocess
import sys
import tomllib

from conftest import ROOT


def test_pyproject_lists_every_subpackage():
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        listed = set(tomllib.load(f)['tool']['setuptools']['packages'])
    found = set()
    for top in ('core', 'components'):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            if '__init__.py' in files and '__pycache__' not in d:
                rel = os.path.relpath(d, ROOT).replace(os.sep, '.')
                found.add('vargo.' + rel)
    assert found == listed, f'missing from pyproject: {found - listed}; stale: {listed - found}'


def test_core_imports_no_component():
    for d, _, files in os.walk(os.path.join(ROOT, 'core')):
        for f in files:
            if f.endswith('.py'):
                text = open(os.path.join(d, f)).read()
                assert 'vargo.components' not in text.replace("'vargo.components", ''), f
                assert 'from ..components' not in text, f


def test_list_components_describes_every_component():
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'list_components.py')],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert '(no description)' not in out
    for name in ('RLAlgorithm', 'GRPOLoop', 'GroupNormAdvantage', 'AllTokensSelector',
                 'KLRegularizer', 'EntropyRegularizer', 'JpegCompressibilityReward',
                 'LlamaGenPolicy', 'ARSampler', 'ImageGridHook', 'ClassConditionDataset'):
        assert name in out, name
