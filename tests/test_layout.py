"""The package layout's rules hold (docs/design.md, "Package layout"), checked on the source:

* ``core/`` imports nothing from ``components/``;
* a model family (a package under ``components/policies/``) imports no other family;
* a sampler imports no family, and calls on a policy only the members of its decoding protocol
  (plus ``training``/``train``/``eval``, the module mode the rollout template toggles).
"""
from __future__ import annotations

import ast
import os

import pytest

from vargo.components.samplers.base import RolloutSampler, protocol_members

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = os.path.join(ROOT, 'components', 'policies')
SAMPLERS = os.path.join(ROOT, 'components', 'samplers')
MODE_MEMBERS = {'training', 'train', 'eval'}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == '__init__':
        rel = rel[:-1]
    return 'vargo.' + '.'.join(rel)


def _imports(path: str) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(open(path).read(), path)
    name = _module_name(path)
    package = name if path.endswith('__init__.py') else name.rsplit('.', 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                mod = '.'.join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ''
            out.append(mod)
            out += [f'{mod}.{a.name}' for a in node.names]
    return out


def _py_files(folder: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                  if f.endswith('.py'))


def _families() -> list[str]:
    return sorted(d for d in os.listdir(POLICIES)
                  if os.path.isfile(os.path.join(POLICIES, d, '__init__.py')))


def test_core_imports_no_component():
    bad = [(os.path.relpath(p, ROOT), m) for p in _py_files(os.path.join(ROOT, 'core'))
           for m in _imports(p) if m.startswith('vargo.components')]
    assert not bad, bad


def test_there_are_family_packages():
    assert {'llamagen', 'var', 'mar'} <= set(_families())


@pytest.mark.parametrize('family', ['llamagen', 'var', 'mar'])
def test_no_family_imports_another(family):
    others = [f for f in _families() if f != family]
    bad = []
    for path in _py_files(os.path.join(POLICIES, family)):
        for mod in _imports(path):
            if any(mod == f'vargo.components.policies.{o}'
                   or mod.startswith(f'vargo.components.policies.{o}.') for o in others):
                bad.append((os.path.relpath(path, ROOT), mod))
            if mod.startswith('vargo.components.samplers'):
                bad.append((os.path.relpath(path, ROOT), mod))
    assert not bad, f'{family} imports another family or a sampler: {bad}'


def _sampler_classes() -> dict[str, type]:
    import vargo.components.samplers as pkg
    return {name: getattr(pkg, name) for name in pkg.__all__
            if isinstance(getattr(pkg, name), type)
            and issubclass(getattr(pkg, name), RolloutSampler)}


def test_every_registered_sampler_declares_a_protocol():
    classes = _sampler_classes()
    assert {'ARSampler', 'NextScaleSampler', 'MaskedSampler'} <= set(classes)
    for name, cls in classes.items():
        assert protocol_members(cls.protocol), name


def _policy_attributes(path: str) -> set[str]:
    """Attributes read on a name ``policy`` anywhere in ``path``."""
    tree = ast.parse(open(path).read(), path)
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == 'policy'}


def test_samplers_import_no_family():
    bad = [(os.path.relpath(p, ROOT), m) for p in _py_files(SAMPLERS) for m in _imports(p)
           if m.startswith('vargo.components.policies')]
    assert not bad, bad


def test_samplers_touch_only_their_protocol():
    """A sampler module may use its samplers' protocol members; a base module (no registered
    sampler of its own) only the members every sampler deriving from it has."""
    classes = _sampler_classes()
    bad = {}
    for path in _py_files(SAMPLERS):
        name = _module_name(path)
        own = [c for c in classes.values() if c.__module__ == name]
        if not own:     # a base: the samplers that derive from a class defined here
            own = [c for c in classes.values()
                   if any(b.__module__ == name for b in c.__mro__[1:])]
        if not own:
            allowed = set()
        elif any(c.__module__ == name for c in own):
            allowed = set().union(*(protocol_members(c.protocol) for c in own))
        else:
            allowed = set.intersection(*(set(protocol_members(c.protocol)) for c in own))
        extra = _policy_attributes(path) - allowed - MODE_MEMBERS
        if extra:
            bad[os.path.relpath(path, ROOT)] = sorted(extra)
    assert not bad, f'samplers reach past their decoding protocol: {bad}'
