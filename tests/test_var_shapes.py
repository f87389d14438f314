"""The shipped Shapes VAR (tools/pretrain_shapes.py msvq / var-c2i): strict loading through the
base config, the multi-scale VQVAE round trip, samples that reproduce the model card, and a
seeded short GRPO run of configs/grpo/var_grpo_shapes.py that raises ShapesEval (measured by
tools/eval.py).

Model-card helpers and tolerance: tests/shapes_cards.py.
"""
import json
import os

import pytest
import torch

from conftest import ROOT, run_python
from shapes_cards import (SEED, assert_loads_strictly_as_float32, assert_samples_reproduce_card,
                          build_policy, card, repo_path)
from vargo.components.datasets.shapes import NUM_CLASSES, ShapesImageDataset
from vargo.components.rewards.shapes_eval import score_images
from vargo.core.registry import SAMPLERS
from vargo.core.runner import load_config

BASE = os.path.join(ROOT, 'configs', '_base_', 'policies', 'var_shapes_c2i.py')
GRPO = os.path.join(ROOT, 'configs', 'grpo', 'var_grpo_shapes.py')


@pytest.fixture(scope='module')
def cfg():
    return load_config(BASE)


@pytest.fixture(scope='module')
def policy(cfg):
    return build_policy(cfg).eval()


# ---- files and strict loading ------------------------------------------------------------------
def test_config_names_the_shipped_files_and_the_card_sampler(cfg):
    pc = cfg.policy
    assert pc.type == 'VARPolicy' and pc.num_classes == NUM_CLASSES and pc.image_size == 32
    for p, name in ((pc.checkpoint, 'var_shapes_c2i'), (pc.tokenizer_checkpoint, 'msvq_shapes')):
        assert not os.path.isabs(p) and os.path.isfile(repo_path(p)), p
        assert os.path.basename(p) == f'{name}.safetensors'
        assert os.path.getsize(repo_path(p)) < 3.5e6
        assert os.path.isfile(repo_path(p[:-len('.safetensors')] + '.md'))
        assert card(name)['config'] == 'configs/_base_/policies/var_shapes_c2i.py'
    s = cfg.sampler
    assert s.type == 'NextScaleSampler'
    assert card('var_shapes_c2i')['evaluation']['sampler'] == dict(s)


def test_shipped_weights_load_strictly_as_float32(cfg, policy):
    pc = cfg.policy
    for module, path in ((policy.var, pc.checkpoint), (policy.vae, pc.tokenizer_checkpoint)):
        assert_loads_strictly_as_float32(module, path)
    # the block-causal mask is stored with the float16 minimum instead of -inf (model card)
    mask = policy.var.attn_bias_for_masking
    assert torch.isfinite(mask).all() and (mask <= -6e4).sum() > 0
    assert ((mask == 0) == (policy.var.lvl_1L[0][:, None] >= policy.var.lvl_1L[0][None, :])).all()


# ---- the multi-scale VQVAE ---------------------------------------------------------------------
@torch.no_grad()
def test_msvq_round_trip_keeps_shapes_eval(policy):
    vae = policy.vae
    ds = ShapesImageDataset(split='eval', task='c2i', num_samples=48, seed=SEED)
    items = [ds[i] for i in range(len(ds))]
    real = torch.stack([it['image'] for it in items])
    ids = vae.encode(real)
    assert ids.shape == (48, sum(p * p for p in policy.patch_nums))
    rec = vae.decode(ids)
    assert rec.shape == real.shape and 0 <= rec.min() and rec.max() <= 1
    strict = score_images(rec, [it['class_id'] for it in items]).strict.float().mean().item()
    assert strict >= 0.9, strict
    assert card('msvq_shapes')['evaluation']['c2i']['reconstruction']['strict'] >= 0.95


# ---- samples reproduce the model card ----------------------------------------------------------
def test_samples_reproduce_model_card_deterministically(cfg, policy):
    ref = assert_samples_reproduce_card(policy, SAMPLERS.build(dict(cfg.sampler)),
                                        'var_shapes_c2i')
    # good but imperfect: room for RL
    assert 0.15 <= ref['strict'] <= 0.7


# ---- GRPO raises ShapesEval --------------------------------------------------------------------
def _run(*args, timeout=900):
    return run_python(*args, timeout=timeout)


def _eval(out, *extra):
    _run(os.path.join('tools', 'eval.py'), GRPO, *extra, '--samples-per-condition', '16',
         '--seed', '7', '--no-fidelity', '--out', str(out))
    with open(out / 'eval.json') as f:
        return json.load(f)['results']['train']


#: a seeded, shortened run (20 of the config's 120 iterations, nothing else changed). Measured
#: when this test was written (OMP_NUM_THREADS=1): ShapesEval strict 0.587 -> 0.646 (288
#: samples, seed 7). The test asserts a rise of at least 0.04: a broken sign, learning rate or
#: advantage gives none; the full run's rise is 0.545 -> 0.731 (configs/grpo/var_grpo_shapes.py).
GRPO_ITERS = 20


def test_grpo_raises_shapes_eval_of_the_shipped_var(tmp_path):
    work = tmp_path / 'run'
    _run(os.path.join('tools', 'train.py'), GRPO, '--work-dir', str(work), '--cfg-options',
         f'train_cfg.max_iters={GRPO_ITERS}', f'default_hooks.checkpoint.interval={GRPO_ITERS}',
         'default_hooks.image_grid.preview_conditions=0')
    before = _eval(tmp_path / 'before')
    after = _eval(tmp_path / 'after', str(work / f'iter_{GRPO_ITERS}.pth'))
    assert after['shapes/strict'] >= before['shapes/strict'] + 0.04, (before['shapes/strict'],
                                                                      after['shapes/strict'])
