"""Property: a mutated config either builds or fails with a clear ConfigError, nothing else.

Valid configs (the toy GRPO config, the Shapes LlamaGen GRPO config on its shipped weights, the
tiny MAR config) are mutated at a random place - a key deleted, a key renamed with a typo, or a
value replaced by one of another type, a negative, zero, huge, NaN, infinite or a string - and
run through everything ``tools/train.py`` does before training (``prepare_config``, then
:func:`vargo.core.validation.validate_training_config`: the checks, the model, the optimizer, the
schedulers, the dataloader and the hooks). Training is not run.

The only allowed outcomes are success and :class:`ConfigError` whose message is one line
starting with a config key (a missing-file error lists the files on further lines). Any other
exception type is a bug to fix where it arises. A ``ConfigError`` made by the last-resort wrapper
of the validation (``unexpected``: the component raised something other than a ValueError) is
a bug too for the settings whose checks live in vargo's own runner code, samplers,
regularizers, datasets and objective; the test lists it.
"""
import contextlib
import copy
import inspect
import math
import os
import random
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmengine.config import Config

import toy_components  # noqa: F401  (registers the toy family)
from conftest import ROOT
from vargo.core.config import COMPONENT_KEYS, RUNNER_KEYS, ConfigFileNotFoundError
from vargo.core.registry import ConfigError
from vargo.core.runner import load_config, prepare_config
from vargo.core.validation import validate_training_config

BASES = {
    'toy': os.path.join(ROOT, 'tests', 'configs', 'toy_grpo.py'),
    'llamagen_shapes': os.path.join(ROOT, 'configs', 'grpo', 'llamagen_grpo_shapes.py'),
    'mar_tiny': os.path.join(ROOT, 'configs', 'grpo', 'mar-tiny_grpo_jpeg.py'),
}
#: where a last-resort (unexpected) error is a missing check in code this suite guards: the
#: runner's keys, and the components whose constructors check their settings (vargo's samplers
#: and regularizers, not the toy ones of tests/toy_components.py)
STRICT_ROOTS = RUNNER_KEYS | {'group_size', 'objective'}
STRICT_COMPONENTS = {'sampler': 'vargo.components.samplers',
                     'regularizers': 'vargo.components.regularizers'}


def _strict(cfg: dict, where: str) -> bool:
    root = where.split('.')[0]
    if root in STRICT_ROOTS:
        return True
    if root not in STRICT_COMPONENTS:
        return False
    from vargo.core.registry import REGULARIZERS, SAMPLERS
    node = cfg.get(root)
    if root == 'regularizers':
        node = (node or {}).get(where.split('.')[1]) if '.' in where else None
    kind = node.get('type') if isinstance(node, dict) else None
    reg = SAMPLERS if root == 'sampler' else REGULARIZERS
    try:
        cls = reg.get(kind) if isinstance(kind, str) and kind.isidentifier() else None
    except Exception:  # noqa: BLE001 - MMEngine's lookup of odd names
        cls = None
    return inspect.isclass(cls) and cls.__module__.startswith(STRICT_COMPONENTS[root])

_loaded: dict = {}


def _base(name: str) -> dict:
    if name not in _loaded:
        _loaded[name] = load_config(BASES[name]).to_dict()
    return copy.deepcopy(_loaded[name])


def _paths(node, prefix=()):
    """Every (path, value) of a nested dict/list config."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        path = prefix + (k,)
        yield path
        if isinstance(v, (dict, list, tuple)) and v:
            yield from _paths(v, path)


SPECIAL = [None, True, False, 0, -1, -5, 1, 2, 3, 10 ** 12, 2 ** 70, 0.0, -0.5, 0.5, 2.5, 1e30,
           -1e30, math.nan, math.inf, -math.inf, '', 'abc', '1e-4', '8', 'none', [], [1, 2], {},
           {'type': 'NoSuchType'}, (0.9,), ('a', 'b')]

values = st.one_of(st.sampled_from(SPECIAL), st.integers(-3, 64),
                   st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.text(alphabet='abcdefgh_0123456789.', max_size=6))


def _typo(word: str, how: int) -> str:
    if len(word) < 2:
        return word + 'x'
    i = how % len(word)
    return [word[:i] + word[i + 1:],                                 # drop a character
            word[:i] + word[i] * 2 + word[i + 1:],                   # double one
            word[:i - 1] + word[i] + word[i - 1] + word[i + 1:] if i else word[1] + word[0]
            + word[2:]][how % 3]                                      # swap two


@st.composite
def mutations(draw):
    name = draw(st.sampled_from(sorted(BASES)))
    cfg = _base(name)
    paths = sorted(_paths(cfg), key=lambda p: tuple(map(str, p)))
    path = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(['delete', 'rename', 'replace', 'replace', 'replace']))
    parent = cfg
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if isinstance(parent, tuple):  # tuples are immutable: rebuild the parent as a list
        grand = cfg
        for k in path[:-2]:
            grand = grand[k]
        parent = grand[path[-2]] = list(parent)
    if op == 'delete':
        del parent[last]
    elif op == 'rename' and isinstance(parent, dict):
        new = _typo(str(last), draw(st.integers(0, 100)))
        parent[new] = parent.pop(last)
    else:
        op = 'replace'
        parent[last] = draw(values)
    return name, '.'.join(map(str, path)), op, cfg


def _value_at(cfg: dict, where: str):
    node = cfg
    for k in where.split('.'):
        try:
            node = node[int(k)] if isinstance(node, (list, tuple)) else node[k]
        except (KeyError, IndexError, ValueError, TypeError):
            return '<deleted or renamed>'
    return node


def _vm_size() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmSize:'):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def memory_cap(extra: int = 4 << 30):
    """Cap the address space at its current size + ``extra`` while a mutated config builds:
    a mutated size (a float a policy converts with int(), say) must fail to allocate, not
    exhaust the machine. Not capped where /proc or RLIMIT_AS is unavailable."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        size = _vm_size()
    except (ImportError, OSError, AttributeError):
        yield
        return
    cap = size + extra if size else resource.RLIM_INFINITY
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture
def isolated_rng():
    """Validation seeds the global RNGs (and may turn on deterministic algorithms) exactly as
    the Runner would; give the other tests their state back."""
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
              torch.are_deterministic_algorithms_enabled())
    yield
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])
    torch.use_deterministic_algorithms(states[3])


KEY_AT_START = re.compile(r'^(--[a-z-]+|[A-Za-z_][A-Za-z0-9_]*)')
KNOWN_ROOTS = RUNNER_KEYS | COMPONENT_KEYS | {'custom_imports', '_base_'}


def _check_message(err: ConfigError, cfg_keys) -> None:
    msg = str(err)
    lines = msg.splitlines()
    if isinstance(err, ConfigFileNotFoundError) and len(lines) > 1:
        assert any(KEY_AT_START.match(line.strip()) for line in lines[1:]), msg
        return
    assert len(lines) == 1, msg
    root = KEY_AT_START.match(msg)
    assert root, msg
    assert root.group(1) in KNOWN_ROOTS | set(cfg_keys), f'the message does not start with a ' \
                                                         f'config key: {msg}'


# Fixed examples in CI (derandomized, 600: about a minute on 2 slow cores); VARGO_FUZZ_EXAMPLES=5000
# VARGO_FUZZ_RANDOM=1 explores.
@settings(max_examples=int(os.environ.get('VARGO_FUZZ_EXAMPLES', 600)), deadline=None,
          derandomize=not os.environ.get('VARGO_FUZZ_RANDOM'),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(mutations())
def test_mutated_config_builds_or_fails_with_a_clear_config_error(isolated_rng, tmp_path_factory,
                                                                   case):
    name, where, op, mutated = case
    if os.environ.get('VARGO_FUZZ_TRACE'):  # which case a crash (e.g. out of memory) came from
        with open(os.environ['VARGO_FUZZ_TRACE'], 'a') as f:
            f.write(f'{name} {op} {where} {_value_at(mutated, where)!r}\n')
    work_dir = str(tmp_path_factory.mktemp('fuzz') / 'wd')
    try:
        with memory_cap():
            cfg = Config(mutated)
            cfg = prepare_config(cfg, config_path=BASES[name], work_dir=work_dir)
            validate_training_config(cfg)
    except ConfigError as err:
        if os.environ.get('VARGO_FUZZ_TRACE'):
            with open(os.environ['VARGO_FUZZ_TRACE'], 'a') as f:
                f.write(f'  -> {"UNEXPECTED " if getattr(err, "unexpected", False) else ""}'
                        f'{str(err)[:200]}\n')
        _check_message(err, mutated.keys())
        if _strict(mutated, where):
            assert not getattr(err, 'unexpected', False), (
                f'{name}: {op} {where}: caught only by the last-resort wrapper (a check is '
                f'missing): {err} <- {err.__cause__!r}')
    assert not os.path.exists(work_dir)
