"""The shipped Shapes base in Janus-Pro's architecture (tools/pretrain_shapes.py janus-vq /
janus-t2i): the config names the shipped files, both load strictly and data-only, swapped or
mis-sized files fail, and seeded samples reproduce the model card.

Model-card helpers and tolerance: tests/shapes_cards.py.
"""
import os

import pytest
import torch

from conftest import ROOT
from shapes_cards import (SEED, assert_loads_strictly_as_float32, build_policy, card, repo_path,
                          within)
from vargo.components.datasets.shapes import SHAPES_VOCABULARY, ShapesPromptDataset
from vargo.components.rewards.shapes_eval import score_images
from vargo.core.checkpoint import StateDictMismatch
from vargo.core.registry import SAMPLERS
from vargo.core.rng import BatchRNG
from vargo.core.runner import load_config
from vargo.core.types import Conditions

BASE = os.path.join(ROOT, 'configs', '_base_', 'policies', 'janus_shapes_t2i.py')


@pytest.fixture(scope='module')
def cfg():
    return load_config(BASE)


@pytest.fixture(scope='module')
def policy(cfg):
    return build_policy(cfg).eval()


def test_config_names_the_shipped_files_and_the_card_sampler(cfg):
    pc = cfg.policy
    assert pc.type == 'JanusPolicy' and list(pc.tokenizer['vocabulary']) == SHAPES_VOCABULARY
    for p, name in ((pc.checkpoint, 'janus_shapes_t2i'),
                    (pc.tokenizer_checkpoint, 'janus_vq_shapes')):
        assert not os.path.isabs(p) and os.path.isfile(repo_path(p)), p
        assert os.path.basename(p) == f'{name}.safetensors'
        assert os.path.getsize(repo_path(p)) < 3.5e6
        assert os.path.isfile(repo_path(p[:-len('.safetensors')] + '.md'))
        assert card(name)['config'] == 'configs/_base_/policies/janus_shapes_t2i.py'
    assert card('janus_shapes_t2i')['evaluation']['sampler'] == dict(cfg.sampler)


def test_shipped_weights_load_strictly_as_float32(cfg, policy):
    pc = cfg.policy
    assert_loads_strictly_as_float32(policy.generation_modules(), pc.checkpoint)
    assert_loads_strictly_as_float32(policy.janus.model.vqmodel, pc.tokenizer_checkpoint)
    assert policy.num_actions == 64     # 8 x 8 image tokens of the 32-px VQ


def test_swapped_or_mis_sized_files_fail_strictly(cfg):
    pc = cfg.policy
    with pytest.raises(StateDictMismatch):          # the VQ file holds no generation parts
        build_policy(cfg, checkpoint=pc.tokenizer_checkpoint)
    with pytest.raises(StateDictMismatch):          # the generation file is no VQ
        build_policy(cfg, tokenizer_checkpoint=pc.checkpoint)
    text = dict(pc.arch['text'], num_hidden_layers=pc.arch['text']['num_hidden_layers'] + 1)
    with pytest.raises(StateDictMismatch):          # one decoder layer more than the file
        build_policy(cfg, arch=dict(pc.arch, text=text))


def _sample(policy, sampler, prompts, k):
    rng = BatchRNG(SEED, 0, len(prompts) * k, rank=0, world_size=1)
    ro = sampler.rollout(policy, Conditions(prompts=list(prompts)), group_size=k, rng=rng)
    return ro, score_images(ro.images, [p for p in prompts for _ in range(k)])


@torch.no_grad()
def test_samples_reproduce_the_model_card_deterministically(cfg, policy):
    sampler = SAMPLERS.build(dict(cfg.sampler))
    prompts = ShapesPromptDataset(split='train', num_prompts=24, seed=SEED).prompts
    ro, scores = _sample(policy, sampler, prompts, 2)
    sampler.release_cache()
    ro2, _ = _sample(policy, sampler, prompts, 2)
    assert torch.equal(ro.actions, ro2.actions) and torch.equal(ro.images, ro2.images)
    ref = card('janus_shapes_t2i')['evaluation']['main']['train']
    n = len(prompts) * 2
    for key, value in (('strict', scores.strict.float().mean().item()),
                       ('soft', scores.soft.mean().item())):
        ok, tol = within(value, ref[key], n, ref['n'])
        assert ok, f'{key}: {value:.3f} vs card {ref[key]:.3f} (tolerance {tol:.3f})'
