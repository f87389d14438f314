"""Helpers of the shipped Shapes base-model tests (tests/test_{var,mar,vqgan}_shapes.py): the model
cards, the binomial tolerance of a card's estimate, building a base config's policy, strict
float32 loading of a shipped file, and seeded samples that reproduce a card.

Model-card tolerance: 4 binomial standard deviations of the difference between the card's
estimate (n_card samples) and a test's (n samples, its own fixed seed):
``4 sqrt(max(p (1 - p), 0.05) (1 / n + 1 / n_card))``.
"""
import json
import math
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import ROOT
from vargo.components.datasets.shapes import NUM_CLASSES
from vargo.components.rewards.shapes_eval import score_images
from vargo.core.registry import POLICIES
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions

WEIGHTS = os.path.join(ROOT, 'components', 'benchmarks', 'weights')
SEED = 1234


def card(name):
    """The model card JSON ``components/benchmarks/weights/<name>.json``."""
    with open(os.path.join(WEIGHTS, f'{name}.json')) as f:
        return json.load(f)


def repo_path(p):
    """A path relative to the repository root, made absolute."""
    return os.path.join(ROOT, p)


def within(measured, p, n, n_card):
    """``(|measured - p| <= tolerance, tolerance)`` (module docstring)."""
    tol = 4 * math.sqrt(max(p * (1 - p), 0.05) * (1 / n + 1 / n_card))
    return abs(measured - p) <= tol, tol


def build_policy(cfg, **overrides):
    """The policy of a base config (its shipped files are relative to the repository root)."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return POLICIES.build({**dict(cfg.policy), **overrides})
    finally:
        os.chdir(cwd)


def assert_loads_strictly_as_float32(module, path):
    """``module`` (float32) holds exactly the tensors of the shipped file ``path`` (relative to
    the repository root), stored in the dtype its metadata records."""
    state = load_file(repo_path(path))
    own = module.state_dict()
    assert sorted(state) == sorted(own)
    for k, v in own.items():
        assert v.dtype == torch.float32 or not v.is_floating_point(), k
        assert torch.equal(v, state[k].to(v.dtype)), k
    with safe_open(repo_path(path), framework='pt') as f:
        meta = f.metadata()
    floats = {v.dtype for v in state.values() if v.is_floating_point()}
    assert floats == {getattr(torch, meta['stored_dtype'])}, (floats, meta['stored_dtype'])


def _sample(policy, sampler, per_condition):
    conditions = list(range(NUM_CLASSES))
    rng = BatchRNG(SEED, 0, len(conditions) * per_condition, rank=0, world_size=1)
    ro = sampler.rollout(policy, Conditions(class_ids=torch.tensor(conditions)),
                         group_size=per_condition, rng=rng)
    return ro, score_images(ro.images, [c for c in conditions for _ in range(per_condition)])


def assert_samples_reproduce_card(policy, sampler, name, k=3):
    """``k`` seeded samples per class with ``sampler`` are deterministic and score (strict,
    soft) within the binomial tolerance of card ``name``'s main evaluation; returns the card's
    entry."""
    ro, scores = _sample(policy, sampler, k)
    ro2, _ = _sample(policy, sampler, k)
    assert torch.equal(ro.actions, ro2.actions) and torch.equal(ro.images, ro2.images)
    ref = card(name)['evaluation']['main']['train']
    n, n_card = NUM_CLASSES * k, ref['n']
    for key, value in (('strict', scores.strict.float().mean().item()),
                       ('soft', scores.soft.mean().item())):
        ok, tol = within(value, ref[key], n, n_card)
        assert ok, f'{key}: {value:.3f} vs card {ref[key]:.3f} (tolerance {tol:.3f})'
    return ref
