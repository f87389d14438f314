"""VAR policy and next-scale sampler: official structure and loading, KV cache == teacher forcing,
sampler log-probs == teacher-forced log-probs, CFG ramp, truncation rule, prefixes, pretraining.

The official code (FoundationVision/VAR) is not part of the repository; the pinned numbers below
(parameter counts, key digests, the key set of a small config) were computed from it in-session,
and its measured parity (identical teacher-forced logits and sampled tokens) is recorded in the
docstring of vargo.components.policies.var.
"""
import hashlib

import pytest
import torch
import torch.nn.functional as F

from vargo.components.policies.var import (CheckpointKeyError, VARConfig, VARPolicy,
                                           VARTransformer, cfg_ramp, var_truncation_keep_mask)
from vargo.components.samplers import NextScaleSampler
from vargo.components.tokenizers.msvq import PATCH_NUMS_512
from vargo.core.registry import POLICIES, SAMPLERS
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, LogprobSpec

V = 64
PN = (1, 2, 4, 8)                    # L = 85 tokens, 32 px
TOK = dict(vocab_size=V, z_channels=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4)
ARCH = dict(depth=2, embed_dim=64, num_heads=4, drop_path_rate=0.0)


def make_policy(**kw):
    torch.manual_seed(0)
    args = dict(arch=ARCH, patch_nums=PN, num_classes=10, vocab_size=V, tokenizer=TOK)
    args.update(kw)
    policy = VARPolicy(**args)
    if 'checkpoint' in kw:
        return policy
    with torch.no_grad():   # the official init nearly zeroes the head and the AdaLN gains
        for p in policy.var.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        policy.var.head.weight.normal_(0, 0.3)
    return policy


def cond(n=2):
    return Conditions(class_ids=torch.tensor([3, 7, 1, 0][:n]))


# ---- official structure -------------------------------------------------------------------------

# exact counts / sha256 of sorted "key:shape" lines of the official models (models/var.py,
# build_vae_var settings: attn_l2_norm, width 64 d, heads d; d36 512 px with shared AdaLN)
OFFICIAL = {
    'd16': (310_283_520, 'fcfb1d067d936f121461a7d31cccc676d0683d1098cce6376ee45b9e923010be'),
    'd20': (600_917_136, '551f11ed4a1542e8ed160e7b2ae98f44c3c03b549d9b2b049d76769af88bc776'),
    'd24': (1_033_399_360, 'ec193f95e74d54243b95e4187dae9a09cab9c3a3ea5f881704cafac0e757c7b0'),
    'd30': (2_010_020_356, '698f77c8d9914dcccff9399f506f4adbe3e8499b01f6f7046eec33805e63b667'),
    'd36': (2_353_893_904, 'f6a141778d0f318beb944bea453cb8d42b5c3079d06e53f625a88ec3e7aa1ef3'),
}


@pytest.mark.parametrize('arch', sorted(OFFICIAL))
def test_official_depths_build_on_meta_with_official_counts_and_keys(arch):
    pn = PATCH_NUMS_512 if arch == 'd36' else (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    with torch.device('meta'):
        var = VARTransformer(VARConfig.from_arch(arch, patch_nums=pn))
    count, digest = OFFICIAL[arch]
    assert sum(p.numel() for p in var.parameters()) == count
    lines = '\n'.join(f'{k}:{tuple(v.shape)}' for k, v in sorted(var.state_dict().items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == digest
    d = int(arch[1:])
    assert (var.cfg.embed_dim, var.cfg.num_heads) == (64 * d, d)


# the official state dict of VAR(depth=1, embed_dim=64, num_heads=1, patch_nums=(1, 2),
# attn_l2_norm=True) over a V=64, Cvae=8 VQVAE, printed from models/var.py
OFFICIAL_SMALL_KEYS = {
    'pos_start': (1, 1, 64), 'pos_1LC': (1, 5, 64), 'lvl_1L': (1, 5),
    'attn_bias_for_masking': (1, 1, 5, 5), 'word_embed.weight': (64, 8), 'word_embed.bias': (64,),
    'class_emb.weight': (1001, 64), 'lvl_embed.weight': (2, 64),
    'blocks.0.attn.scale_mul_1H11': (1, 1, 1, 1), 'blocks.0.attn.q_bias': (64,),
    'blocks.0.attn.v_bias': (64,), 'blocks.0.attn.zero_k_bias': (64,),
    'blocks.0.attn.mat_qkv.weight': (192, 64), 'blocks.0.attn.proj.weight': (64, 64),
    'blocks.0.attn.proj.bias': (64,), 'blocks.0.ffn.fc1.weight': (256, 64),
    'blocks.0.ffn.fc1.bias': (256,), 'blocks.0.ffn.fc2.weight': (64, 256),
    'blocks.0.ffn.fc2.bias': (64,), 'blocks.0.ada_lin.1.weight': (384, 64),
    'blocks.0.ada_lin.1.bias': (384,), 'head_nm.ada_lin.1.weight': (128, 64),
    'head_nm.ada_lin.1.bias': (128,), 'head.weight': (64, 64), 'head.bias': (64,),
}
SHARED_ALN_CHANGES = ({'shared_ada_lin.1.weight': (384, 64), 'shared_ada_lin.1.bias': (384,),
                       'blocks.0.ada_gss': (1, 1, 6, 64)},
                      {'blocks.0.ada_lin.1.weight', 'blocks.0.ada_lin.1.bias'})


@pytest.mark.parametrize('shared_aln', [False, True])
def test_official_key_set_of_a_small_config(shared_aln):
    var = VARTransformer(VARConfig(depth=1, embed_dim=64, num_heads=1, shared_aln=shared_aln,
                                   patch_nums=(1, 2), vocab_size=64, Cvae=8, num_classes=1000))
    expected = dict(OFFICIAL_SMALL_KEYS)
    if shared_aln:
        added, removed = SHARED_ALN_CHANGES
        expected = {**{k: v for k, v in expected.items() if k not in removed}, **added}
    assert {k: tuple(v.shape) for k, v in var.state_dict().items()} == expected
    # the block-causal mask: a token sees its own and all coarser scales
    bias = var.attn_bias_for_masking[0, 0]
    assert torch.equal(bias == 0, torch.tensor([[1, 0, 0, 0, 0]] + [[1, 1, 1, 1, 1]] * 4).bool())


def test_strict_loading_of_an_official_file_and_the_bad_key_error(tmp_path):
    src = make_policy()
    path = tmp_path / 'var_tiny.pth'
    torch.save(src.var.state_dict(), path)               # an official file is a raw state dict
    dst = make_policy(checkpoint=str(path))
    for (k, a), b in zip(src.var.state_dict().items(), dst.var.state_dict().values()):
        assert torch.equal(a, b), k
    bad = dict(src.var.state_dict())
    bad['blocks.0.attn.k_bias'] = bad.pop('blocks.0.attn.v_bias')
    torch.save(bad, path)
    with pytest.raises(CheckpointKeyError) as err:
        make_policy(checkpoint=str(path))
    assert 'blocks.0.attn.k_bias' in str(err.value) and 'blocks.0.attn.v_bias' in str(err.value)
    with pytest.raises(FileNotFoundError, match='huggingface.co/FoundationVision/var/resolve/'
                                                'main/var_d16.pth'):
        make_policy(checkpoint=str(tmp_path / 'var_d16.pth'))


def test_frozen_vae_is_not_trained_nor_in_the_state_dict():
    policy = make_policy()
    sd = policy.state_dict()
    assert not any(k.startswith('vae.') for k in sd) and 'var.head.weight' in sd
    assert all(not p.requires_grad for p in policy.vae.parameters())
    trainable = {id(p) for p in policy.trainable_parameters()}
    assert trainable == {id(p) for p in policy.var.parameters()}
    policy.train()
    assert policy.training and not policy.vae.training
    other = make_policy()
    other.load_state_dict(sd)                              # VQVAE keys filled from its own
    assert torch.equal(other.var.head.weight, policy.var.head.weight)


# ---- KV cache == teacher forcing ----------------------------------------------------------------

def test_kv_cache_scale_by_scale_equals_the_teacher_forced_forward():
    policy = make_policy().eval()
    var, quant = policy.var, policy.vae.quantize
    torch.manual_seed(3)
    b = 3
    tokens = torch.randint(0, V, (b, policy.num_actions))
    labels = torch.tensor([1, 5, 10])                                    # 10 = null class
    with torch.no_grad():
        full = var(labels, policy.var_input(tokens))                     # [B, L, V]
        cond_BD = var.class_condition(labels)
        cache = var.new_cache(b)
        x, f_hat, steps = var.start_tokens(cond_BD), torch.zeros(b, 8, 8, 8), []
        for si, (lo, hi) in enumerate(var.begin_ends):
            h = var.blocks_forward(x, cond_BD, None, cache=cache, start=lo)
            steps.append(var.logits(var.head_hidden(h, cond_BD)))
            pn = PN[si]
            emb = quant.embedding(tokens[:, lo:hi]).transpose(1, 2).reshape(b, 8, pn, pn)
            f_hat, nxt = quant.get_next_autoregressive_input(si, f_hat, emb)
            if si + 1 < len(PN):
                x = var.scale_tokens(nxt.flatten(2).transpose(1, 2), *var.begin_ends[si + 1])
        cached = torch.cat(steps, dim=1)
        # prefill of the first two scales under the block-causal mask, then one cached scale
        cache2 = var.new_cache(b)
        n = var.begin_ends[2][0]
        x = var.inputs(cond_BD, policy.var_input(tokens)[:, :n - 1])
        pre = var.blocks_forward(x, cond_BD, var.attn_bias_for_masking[:, :, :n, :n],
                                 cache=cache2, start=0)
        pre = var.logits(var.head_hidden(pre, cond_BD))
    assert full.shape == (b, 85, V)
    assert torch.allclose(cached, full, atol=1e-5, rtol=1e-5)
    assert torch.allclose(pre, full[:, :n], atol=1e-5, rtol=1e-5)
    assert torch.allclose(cache2.kv[:, :, :, :, :n], cache.kv[:, :, :, :, :n], atol=1e-5)


# ---- the sampling distribution ------------------------------------------------------------------

def test_var_top_p_rule_by_hand_and_top_k():
    z = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # ascending cumsum 0.05, 0.20, 0.50, 1.00; removed where <= 1 - top_p = 0.25
    assert var_truncation_keep_mask(z, 0, 0.75).tolist() == [[True, True, False, False]]
    # top_p tiny: the most likely token always survives
    assert var_truncation_keep_mask(z, 0, 1e-6).tolist() == [[True, False, False, False]]
    assert var_truncation_keep_mask(z, 2, 1.0).tolist() == [[True, True, False, False]]
    # top-p on the top-k-renormalised distribution: 0.5/0.95, 0.3/0.95, 0.15/0.95
    assert var_truncation_keep_mask(z, 3, 0.8).tolist() == [[True, True, False, False]]
    assert var_truncation_keep_mask(z, 0, 1.0) is None
    assert var_truncation_keep_mask(z, 4, 1.0) is None


def test_cfg_ramp_is_the_official_one():
    # official t = cfg * si / (S - 1) with cfg = cfg_scale - 1
    assert torch.allclose(cfg_ramp(5.0, PN), torch.tensor([0.0, 4 / 3, 8 / 3, 4.0],
                                                          dtype=torch.float64))
    assert torch.equal(cfg_ramp(1.0, PN), torch.zeros(4, dtype=torch.float64))


def test_evaluate_rollout_mode_is_the_guided_ramped_distribution():
    """Hand restatement: logp = log_softmax(((1 + t) cond - t uncond) / T) with t per scale."""
    policy = make_policy()
    torch.manual_seed(4)
    tokens = torch.randint(0, V, (2, 85))
    r = _rollout_of(policy, tokens)
    spec = LogprobSpec(mode='rollout', cfg_scale=3.0, temperature=0.7)
    ev = policy.evaluate(r, spec=spec)
    with torch.no_grad():
        x_in = policy.var_input(tokens)
        c = policy.var(torch.tensor([3, 7]), x_in)
        u = policy.var(torch.tensor([10, 10]), x_in)
    t = cfg_ramp(3.0, PN).float()[policy.action_step][None, :, None]
    lp = torch.log_softmax(((1 + t) * c - t * u) / 0.7, dim=-1)
    assert torch.allclose(ev.logp, lp.gather(-1, tokens[..., None])[..., 0], atol=1e-4)
    assert torch.allclose(ev.entropy, -(lp.exp() * lp).sum(-1), atol=1e-4)
    # 'none': conditional logits only, no truncation; deterministic in training mode (no label
    # dropout, no drop-path)
    policy.train()
    none = LogprobSpec(mode='none', cfg_scale=3.0, temperature=0.7, top_k=5)
    a, b = policy.evaluate(r, spec=none), policy.evaluate(r, spec=none)
    lpc = torch.log_softmax(c / 0.7, dim=-1)
    assert torch.equal(a.logp, b.logp)
    assert torch.allclose(a.logp, lpc.gather(-1, tokens[..., None])[..., 0], atol=1e-4)


def _rollout_of(policy, tokens):
    from vargo.core.types import Rollout
    step, pos = policy.rollout_axes()
    b = tokens.shape[0]
    return Rollout(cond=Conditions(class_ids=torch.tensor([3, 7][:b])),
                   group_ids=torch.arange(b), actions=tokens, logp_old=torch.zeros(b, 85),
                   action_mask=torch.ones(b, 85, dtype=torch.bool), action_step=step,
                   action_pos=pos)


@pytest.mark.parametrize('cfg_scale,mode,top_k,top_p,temp', [
    (1.0, 'none', 0, 1.0, 1.0),          # CFG off
    (3.0, 'rollout', 0, 1.0, 1.0),       # CFG on, on-policy
    (3.0, 'rollout', 8, 0.9, 0.8),       # CFG on, truncated, tempered
    (3.0, 'none', 8, 0.9, 1.0),          # CFG on, scored on conditional logits
])
def test_teacher_forced_logp_equals_the_samplers(cfg_scale, mode, top_k, top_p, temp):
    policy = make_policy()
    sampler = NextScaleSampler(cfg_scale=cfg_scale, temperature=temp, top_k=top_k, top_p=top_p,
                               logprob_cfg=mode)
    r = sampler.rollout(policy, cond(), group_size=2, rng=BatchRNG(0, 1, 4))
    assert r.actions.shape == (4, 85) and r.images.shape == (4, 3, 32, 32)
    assert r.action_pos.shape == (85, 3) and r.action_step[-64:].eq(3).all()
    assert torch.equal(r.action_pos[5], torch.tensor([2, 0, 0]))        # scale 2 starts at 5
    assert r.action_mask.all() and r.logp_old_cfg == mode
    ev = policy.evaluate(r, spec=sampler.logprob_spec())
    assert torch.allclose(ev.logp, r.logp_old, atol=2e-5)
    if top_k and mode == 'rollout':
        assert (ev.entropy <= torch.log(torch.tensor(8.0)) + 1e-5).all()   # <= 8 tokens kept


def test_samples_are_reproducible_rank_invariant_and_decoded():
    policy = make_policy()
    sampler = NextScaleSampler(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0,
                               logprob_cfg='rollout')
    one = sampler.rollout(policy, cond(4), group_size=2, rng=BatchRNG(7, 3, 8, rank=0,
                                                                      world_size=1))
    halves = [sampler.rollout(policy, cond(4).index(torch.arange(2 * k, 2 * k + 2)),
                              group_size=2, rng=BatchRNG(7, 3, 4, rank=k, world_size=2))
              for k in range(2)]
    assert torch.equal(torch.cat([h.actions for h in halves]), one.actions)
    assert torch.equal(one.group_ids, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert torch.allclose(one.images, policy.decode(one))
    assert torch.allclose(policy.embed_actions(one), policy.vae.codebook()[one.actions])


def test_prefix_sampling_keeps_the_prefix_scales():
    policy = make_policy()
    sampler = NextScaleSampler(cfg_scale=3.0, temperature=1.0, top_k=0, top_p=1.0,
                               logprob_cfg='rollout')
    full = sampler.rollout(policy, cond(), group_size=1, rng=BatchRNG(1, 0, 2))
    done = sampler.rollout(policy, full.cond, group_size=3, prefix=full, stop_at_step=2,
                           rng=BatchRNG(1, 1, 6))
    n = 1 + 4                                                           # scales 0 and 1
    assert done.prefix_steps == 2 and done.actions.shape == (6, 85)
    assert torch.equal(done.actions[:, :n], full.actions[:, :n].repeat_interleave(3, dim=0))
    assert not done.action_mask[:, :n].any() and done.action_mask[:, n:].all()
    assert torch.allclose(done.logp_old[:, :n], full.logp_old[:, :n].repeat_interleave(3, 0),
                          atol=2e-5)
    assert torch.equal(done.group_ids, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert not torch.equal(done.actions[0, n:], done.actions[1, n:])   # completions differ
    ev = policy.evaluate(done, spec=sampler.logprob_spec())
    assert torch.allclose(ev.logp, done.logp_old, atol=2e-5)
    with pytest.raises(ValueError, match='needs prefix'):
        sampler.rollout(policy, cond(), group_size=1, stop_at_step=2)
    with pytest.raises(ValueError, match=r'stop_at_step=4 must be in \(0, 4\)'):
        sampler.rollout(policy, full.cond, group_size=1, prefix=full, stop_at_step=4)


def test_var_policy_implements_the_next_scale_decoding_protocol():
    from vargo.components.samplers.base import missing_members
    from vargo.components.samplers.next_scale import NextScaleDecoding
    policy = make_policy()
    assert missing_members(policy, NextScaleDecoding) == []
    sampler = NextScaleSampler(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
                               logprob_cfg='none')
    sampler.check_policy(policy)
    with pytest.raises(ValueError, match='lacks the NextScaleDecoding decoding protocol'):
        sampler.check_policy(torch.nn.Linear(1, 1))


# ---- pretraining and building -------------------------------------------------------------------

def test_pretrain_loss_is_the_teacher_forced_cross_entropy_with_label_dropout():
    policy = make_policy(class_dropout_prob=0.0).eval()
    torch.manual_seed(5)
    tokens = torch.randint(0, V, (2, 85))
    r = _rollout_of(policy, tokens)
    nll = -policy.evaluate(r, spec=LogprobSpec(mode='none')).logp.mean()
    assert torch.allclose(policy.pretrain_loss(tokens, r.cond), nll, atol=1e-5)
    # dropout probability 1 in training mode: every label is the null class (no drop-path here)
    drop = make_policy(class_dropout_prob=1.0).train()
    with torch.no_grad():
        logits = drop.var(torch.tensor([10, 10]), drop.var_input(tokens))
    expect = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    assert torch.allclose(drop.pretrain_loss(tokens, r.cond), expect, atol=1e-5)
    loss = drop.pretrain_loss(tokens, r.cond)
    loss.backward()
    assert drop.var.head.weight.grad is not None


def test_registry_build_and_bad_settings():
    policy = POLICIES.build(dict(type='VARPolicy', arch=ARCH, patch_nums=PN, num_classes=10,
                                 vocab_size=V, tokenizer=TOK, image_size=32))
    assert policy.num_actions == 85 and policy.num_steps == 4
    sampler = SAMPLERS.build(dict(type='NextScaleSampler', cfg_scale=2.5, temperature=1.0,
                                  top_k=900, top_p=0.96, logprob_cfg='none'))
    assert sampler.logprob_spec().cfg_scale == 2.5
    with pytest.raises(ValueError, match='image_size=64'):
        make_policy(image_size=64)
    with pytest.raises(ValueError, match='vocab_size=32'):
        make_policy(vocab_size=32)
    with pytest.raises(ValueError, match="'d17'"):
        make_policy(arch='d17')
    with pytest.raises(ValueError, match='class ids must be in'):
        make_policy().encode_conditions(Conditions(class_ids=torch.tensor([10])))
    with pytest.raises(ValueError, match='cfg_interval'):
        policy.evaluate(_rollout_of(policy, torch.zeros(2, 85, dtype=torch.long)),
                        spec=LogprobSpec(mode='rollout', cfg_scale=2.0, cfg_interval=(0, 0.5)))
