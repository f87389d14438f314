"""The shipped Shapes MAR (tools/pretrain_shapes.py kl-vae / mar-c2i): strict loading through the
base config, the KL VAE round trip, the pretraining loss, and samples that reproduce the model
card.

Model-card helpers and tolerance: tests/shapes_cards.py.
"""
import os

import pytest
import torch

from conftest import ROOT
from shapes_cards import (SEED, assert_loads_strictly_as_float32, assert_samples_reproduce_card,
                          build_policy, card, repo_path, within)
from vargo.components.datasets.shapes import NUM_CLASSES, ShapesImageDataset
from vargo.components.rewards.shapes_eval import score_images
from vargo.core.registry import SAMPLERS
from vargo.core.runner import load_config
from vargo.core.types import Conditions

BASE = os.path.join(ROOT, 'configs', '_base_', 'policies', 'mar_shapes_c2i.py')


@pytest.fixture(scope='module')
def cfg():
    return load_config(BASE)


@pytest.fixture(scope='module')
def policy(cfg):
    return build_policy(cfg).eval()


# ---- files and strict loading ------------------------------------------------------------------
def test_config_names_the_shipped_files_and_the_card_sampler(cfg):
    pc = cfg.policy
    assert pc.type == 'MARPolicy' and pc.num_classes == NUM_CLASSES and pc.image_size == 32
    for p, name in ((pc.checkpoint, 'mar_shapes_c2i'), (pc.tokenizer_checkpoint, 'kl_vae_shapes')):
        assert not os.path.isabs(p) and os.path.isfile(repo_path(p)), p
        assert os.path.basename(p) == f'{name}.safetensors'
        assert os.path.getsize(repo_path(p)) < 4.5e6
        assert os.path.isfile(repo_path(p[:-len('.safetensors')] + '.md'))
        assert card(name)['config'] == 'configs/_base_/policies/mar_shapes_c2i.py'
    assert cfg.sampler.type == 'MaskedSampler'
    assert card('mar_shapes_c2i')['evaluation']['sampler'] == dict(cfg.sampler)
    # the config's latent scale is the one the VAE card measured (unit-std scaled latents)
    ev = card('kl_vae_shapes')['evaluation']
    assert ev['scale_factor'] == pc.tokenizer['scale_factor']
    assert 0.8 <= ev['latent_std'] <= 1.25


def test_shipped_weights_load_strictly_as_float32(cfg, policy):
    pc = cfg.policy
    for module, path in ((policy.mar, pc.checkpoint), (policy.vae, pc.tokenizer_checkpoint)):
        assert_loads_strictly_as_float32(module, path)


# ---- the KL VAE ----------------------------------------------------------------------------------
@torch.no_grad()
def test_kl_vae_round_trip_reproduces_the_card_reconstruction_score(policy):
    ds = ShapesImageDataset(split='eval', task='c2i', num_samples=64, seed=SEED)
    items = [ds[i] for i in range(len(ds))]
    real = torch.stack([it['image'] for it in items])
    tokens = policy.encode_images(real)
    assert tokens.shape == (64, policy.seq_len, policy.token_dim)
    rec = policy.decode_tokens(tokens)
    assert rec.shape == real.shape and 0 <= rec.min() and rec.max() <= 1
    strict = score_images(rec, [it['class_id'] for it in items]).strict.float().mean().item()
    ref = card('kl_vae_shapes')['evaluation']['c2i']['reconstruction']
    assert ref['strict'] >= 0.95
    ok, tol = within(strict, ref['strict'], 64, ref['n'])
    assert ok, f'{strict:.3f} vs card {ref["strict"]:.3f} (tolerance {tol:.3f})'


# ---- the pretraining loss ------------------------------------------------------------------------
def _batch(policy, n=8):
    ds = ShapesImageDataset(split='train', task='c2i', num_samples=n, seed=SEED)
    items = [ds[i] for i in range(n)]
    tokens = policy.encode_images(torch.stack([it['image'] for it in items]))
    return tokens, Conditions(class_ids=torch.tensor([it['class_id'] for it in items]))


def _seeded_loss(policy, tokens, cond, seed=0):
    torch.manual_seed(seed)           # the same masks, timesteps and noise every call
    return policy.pretrain_loss(tokens, cond)


def test_pretrain_loss_trains_transformer_and_head(cfg):
    # the shipped weights: at the official init the head's output and AdaLN layers are zero, so
    # nothing upstream of them gets a gradient on the first step
    policy = build_policy(cfg).train()
    tokens, cond = _batch(policy)
    loss = _seeded_loss(policy, tokens, cond)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    mar = policy.mar
    for name, p in (('encoder', mar.encoder_blocks[0].attn.qkv.weight),
                    ('decoder', mar.decoder_blocks[-1].mlp.fc2.weight),
                    ('class_emb', mar.class_emb.weight), ('head', mar.head.input_proj.weight),
                    ('head_out', mar.head.final_layer.linear.weight)):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in policy.vae.parameters())


def test_pretrain_loss_falls_on_one_fixed_batch(cfg):
    torch.manual_seed(0)
    policy = build_policy(cfg, checkpoint=None).train()        # the official random init
    tokens, cond = _batch(policy)
    opt = torch.optim.Adam(policy.trainable_parameters(), lr=1e-3)
    before = _seeded_loss(policy, tokens, cond).item()
    for _ in range(15):
        opt.zero_grad()
        _seeded_loss(policy, tokens, cond).backward()
        opt.step()
    after = _seeded_loss(policy, tokens, cond).item()
    assert after < 0.9 * before, (before, after)


def test_pretrain_loss_with_fix_head_leaves_the_head_without_gradients(cfg):
    policy = build_policy(cfg, fix_head=True).train()
    tokens, cond = _batch(policy, 4)
    _seeded_loss(policy, tokens, cond).backward()
    assert all(p.grad is None for p in policy.mar.diffloss.parameters())
    assert policy.mar.z_proj.weight.grad.abs().sum() > 0        # gradients flow through the head
    assert not any(p is q for p in policy.trainable_parameters()
                   for q in policy.mar.diffloss.parameters())


# ---- samples reproduce the model card ----------------------------------------------------------
def test_samples_reproduce_model_card_deterministically(cfg, policy):
    ref = assert_samples_reproduce_card(policy, SAMPLERS.build(dict(cfg.sampler)),
                                        'mar_shapes_c2i', k=6)
    # good but imperfect: room for RL
    assert 0.1 <= ref['strict'] <= 0.8


def test_grpo_config_runs_on_the_shipped_model_on_policy(tmp_path):
    """configs/grpo/mar_grpo_shapes.py on the shipped weights (two short iterations): the first
    minibatch is exactly on-policy, only the sampled subset of transitions is trained, and the
    Gaussian-mean KL is finite and starts at 0."""
    from vargo.core.runner import build_runner, prepare_config
    path = os.path.join(ROOT, 'configs', 'grpo', 'mar_grpo_shapes.py')
    cfg = load_config(path)
    cfg.train_cfg.max_iters, cfg.train_cfg.samples_per_rank = 2, 16
    cfg.train_cfg.minibatch_samples = None
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.image_grid = dict(type='ImageGridHook', interval=2, preview_conditions=0)
    cfg = prepare_config(cfg, config_path=path, work_dir=str(tmp_path))
    cfg.experiment_name = f'test_mar_grpo_shapes_{id(cfg)}'
    runner = build_runner(cfg)
    runner.train()
    scalars = runner.message_hub.log_scalars
    assert scalars['train/policy/logp_mismatch_max'].current() < 1e-3
    frac = scalars['train/select/evaluated/frac'].current()
    assert 0 < frac < 1
    assert 0 <= scalars['train/kl/mean'].current() < 1
    assert (tmp_path / 'iter_2.pth').exists()
