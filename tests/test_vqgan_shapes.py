"""The shipped Shapes VQGAN transformer (tools/pretrain_shapes.py vqgan / vqgan-c2i): strict loading
through the base config, the VQGAN round trip, and seeded samples that decode to images and
reproduce the model card.

Model-card helpers and tolerance: tests/shapes_cards.py.
"""
import os

import pytest
import torch

from conftest import ROOT
from shapes_cards import (SEED, assert_loads_strictly_as_float32, assert_samples_reproduce_card,
                          build_policy, card, repo_path, within)
from vargo.components.datasets.shapes import NUM_CLASSES, ShapesImageDataset
from vargo.components.policies.vqgan import StateDictMismatch
from vargo.components.rewards.shapes_eval import score_images
from vargo.core.registry import SAMPLERS
from vargo.core.rng import BatchRNG
from vargo.core.runner import load_config
from vargo.core.types import Conditions

BASE = os.path.join(ROOT, 'configs', '_base_', 'policies', 'vqgan_shapes_c2i.py')


@pytest.fixture(scope='module')
def cfg():
    return load_config(BASE)


@pytest.fixture(scope='module')
def policy(cfg):
    return build_policy(cfg).eval()


# ---- files and strict loading ------------------------------------------------------------------
def test_config_names_the_shipped_files_and_the_card_sampler(cfg):
    pc = cfg.policy
    assert pc.type == 'VQGANTransformerPolicy' and pc.num_classes == NUM_CLASSES
    assert pc.image_size == 32 and pc.tokenizer['resolution'] == 32
    for p, name in ((pc.checkpoint, 'vqgan_shapes_c2i'), (pc.tokenizer_checkpoint, 'vqgan_shapes')):
        assert not os.path.isabs(p) and os.path.isfile(repo_path(p)), p
        assert os.path.basename(p) == f'{name}.safetensors'
        assert os.path.getsize(repo_path(p)) < 3.5e6
        assert os.path.isfile(repo_path(p[:-len('.safetensors')] + '.md'))
        assert card(name)['config'] == 'configs/_base_/policies/vqgan_shapes_c2i.py'
    assert cfg.sampler.type == 'ARSampler' and cfg.sampler.cfg_scale == 1.0
    assert card('vqgan_shapes_c2i')['evaluation']['sampler'] == dict(cfg.sampler)


def test_shipped_weights_load_strictly_as_float32(cfg, policy):
    pc = cfg.policy
    for module, path in ((policy.transformer, pc.checkpoint), (policy.vq, pc.tokenizer_checkpoint)):
        assert_loads_strictly_as_float32(module, path)
    # an 8 x 8 grid of a downsample-4 VQGAN; 1 class token + 63 fed codes
    assert policy.vq.downsample == 4 and policy.num_actions == 64
    assert policy.cfg.block_size == 64 and policy.cfg.vocab_size == 512


def test_files_swapped_or_architecture_changed_fail_strictly(cfg):
    pc = cfg.policy
    with pytest.raises(StateDictMismatch):          # the tokenizer file is no transformer
        build_policy(cfg, checkpoint=pc.tokenizer_checkpoint)
    with pytest.raises(StateDictMismatch):          # the transformer file is no VQGAN
        build_policy(cfg, tokenizer_checkpoint=pc.checkpoint)
    with pytest.raises(StateDictMismatch):          # one layer more than the shipped file
        build_policy(cfg, arch=dict(pc.arch, n_layer=pc.arch['n_layer'] + 1))
    with pytest.raises(StateDictMismatch):          # another codebook width
        build_policy(cfg, tokenizer=dict(pc.tokenizer, embed_dim=8))


# ---- the VQGAN ---------------------------------------------------------------------------------
@torch.no_grad()
def test_vqgan_round_trip_reproduces_the_card_reconstruction_score(policy):
    ds = ShapesImageDataset(split='eval', task='c2i', num_samples=64, seed=SEED)
    items = [ds[i] for i in range(len(ds))]
    real = torch.stack([it['image'] for it in items])
    ids = policy.vq.encode(real)
    assert ids.shape == (64, 64) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < 512
    rec = policy.vq.decode(ids)
    assert rec.shape == real.shape and 0 <= rec.min() and rec.max() <= 1
    strict = score_images(rec, [it['class_id'] for it in items]).strict.float().mean().item()
    ref = card('vqgan_shapes')['evaluation']['c2i']['reconstruction']
    assert ref['strict'] >= 0.95
    ok, tol = within(strict, ref['strict'], 64, ref['n'])
    assert ok, f'{strict:.3f} vs card {ref["strict"]:.3f} (tolerance {tol:.3f})'


# ---- samples -----------------------------------------------------------------------------------
@torch.no_grad()
def test_a_short_seeded_sample_decodes_to_images_and_scores_under_the_policy(cfg, policy):
    sampler = SAMPLERS.build({**dict(cfg.sampler), 'logprob_cfg': 'rollout'})
    cond = Conditions(class_ids=torch.tensor([0, 7]))

    def draw():
        return sampler.rollout(policy, cond, group_size=2,
                               rng=BatchRNG(SEED, 0, 4, rank=0, world_size=1))

    ro, again = draw(), draw()
    assert torch.equal(ro.actions, again.actions) and torch.equal(ro.images, again.images)
    assert ro.actions.shape == (4, 64) and ro.images.shape == (4, 3, 32, 32)
    assert 0 <= ro.images.min() and ro.images.max() <= 1 and ro.images.amax() > 0.5
    assert torch.equal(ro.images, policy.decode(ro))
    # the teacher-forced log-probs are the sampler's (RL's ratio is 1 at the first minibatch)
    ev = policy.evaluate(ro, spec=sampler.logprob_spec())
    assert (ev.logp - ro.logp_old).abs().max() < 1e-4


def test_samples_reproduce_model_card_deterministically(cfg, policy):
    ref = assert_samples_reproduce_card(policy, SAMPLERS.build(dict(cfg.sampler)),
                                        'vqgan_shapes_c2i')
    # good but imperfect: room for RL
    assert 0.15 <= ref['strict'] <= 0.9
