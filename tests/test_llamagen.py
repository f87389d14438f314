"""LlamaGen policy and raster-AR sampler: official structure, caching, log-probs, entropy, loading.

Numerical parity with the official code (FoundationVision/LlamaGen) cannot run here (its code is
not part of the repository); the pinned numbers below (parameter counts, key digests) were computed
from it, and the docstring of the vargo.components.policies.llamagen package records the measured
parity.
"""
import argparse
import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from vargo.components.modules import categorical
from vargo.components.modules.categorical import (categorical_logp_entropy, cfg_active_steps,
                                                  inverse_cdf_sample, truncation_keep_mask)
from vargo.components.policies.llamagen import (GPT_ARCHS, CheckpointKeyError, GPTConfig,
                                                LlamaGenGPT, LlamaGenPolicy, rope_2d_tables)
from vargo.components.policies.llamagen.policy import _left_pad
from vargo.components.samplers import ARSampler
from vargo.core.registry import POLICIES, SAMPLERS
from vargo.core.types import Conditions, LogprobSpec

V = 64
TINY = dict(dim=64, n_layer=2, n_head=4)
VQ_TINY = dict(ch=16, ch_mult=(1, 1, 1, 1, 2), z_channels=16, codebook_size=V,
               codebook_embed_dim=8, norm_groups=4)
WORDS = 'a an one two three red green blue circle square triangle left right of above below'.split()
TEXT_TINY = dict(type='word-t5', vocabulary=WORDS, d_model=32, num_layers=1, num_heads=4, d_ff=64,
                 max_length=8)
PROMPTS = ['a red circle', 'two blue squares left of a green triangle above a red circle']


def make_policy(task='c2i', **kw):
    randomize = 'checkpoint' not in kw
    args = dict(arch=TINY, task=task, image_size=64, downsample=16, num_classes=10, vocab_size=V,
                tokenizer=VQ_TINY)
    if task == 't2i':
        args['text_encoder'] = TEXT_TINY
    args.update(kw)
    policy = LlamaGenPolicy(**args)
    if not randomize:
        return policy
    with torch.no_grad():   # the official init zeroes the output layer: make logits peaky
        policy.gpt.output.weight.normal_(0, 0.6)
        for layer in policy.gpt.layers:
            layer.attention_norm.weight.normal_(1, 0.2)
    return policy


def conditions(task, n=2):
    if task == 'c2i':
        return Conditions(class_ids=torch.tensor([3, 7, 1, 0][:n]))
    return Conditions(prompts=PROMPTS[:n])


# ---- official structure --------------------------------------------------------------------

# exact counts of the official models (gpt.py, V=16384, 1000 classes), verified against that code
OFFICIAL_PARAMS = {
    ('GPT-B', 'c2i'): 110_888_448, ('GPT-B', 't2i'): 112_282_368,        # "111M"
    ('GPT-L', 'c2i'): 342_910_976, ('GPT-L', 't2i'): 345_031_680,        # "343M"
    ('GPT-XL', 'c2i'): 774_699_520, ('GPT-XL', 't2i'): 777_678_080,      # "775M"
    ('GPT-XXL', 'c2i'): 1_410_972_672, ('GPT-XXL', 't2i'): 1_414_940_160,  # "1.4B"
    ('GPT-3B', 'c2i'): 3_096_659_200, ('GPT-3B', 't2i'): 3_110_249_600,  # "3.1B"
}
# sha256 of sorted "key:shape" lines of official state dicts (computed from gpt.py)
OFFICIAL_DIGESTS = {
    ('GPT-B', 'c2i'): '27974e20fdd1fd17177d259ead4cd870c4487eb0c290545ac66aaf919c559ac9',
    ('GPT-XL', 't2i'): '8cb96692413f85d9909e505a1eb67fd558a320f6602d25f5536edae8cdf3f4f6',
}


@pytest.mark.parametrize('arch,task', sorted(OFFICIAL_PARAMS))
def test_official_sizes_build_on_meta_with_official_parameter_counts(arch, task):
    with torch.device('meta'):
        gpt = LlamaGenGPT(GPTConfig.from_arch(arch, task=task,
                                              cls_token_num=1 if task == 'c2i' else 120))
    assert sum(p.numel() for p in gpt.parameters()) == OFFICIAL_PARAMS[arch, task]
    if (arch, task) in OFFICIAL_DIGESTS:
        lines = '\n'.join(f'{k}:{tuple(v.shape)}' for k, v in sorted(gpt.state_dict().items()))
        assert hashlib.sha256(lines.encode()).hexdigest() == OFFICIAL_DIGESTS[arch, task]


def test_official_key_names_and_shapes():
    with torch.device('meta'):
        gpt = LlamaGenGPT(GPTConfig.from_arch('GPT-L'))
        t2i = LlamaGenGPT(GPTConfig.from_arch('GPT-XL', task='t2i', cls_token_num=120))
    sd = gpt.state_dict()
    assert tuple(sd['cls_embedding.embedding_table.weight'].shape) == (1001, 1024)  # + null row
    assert tuple(sd['layers.3.attention.wqkv.weight'].shape) == (3 * 1024, 1024)
    assert tuple(sd['layers.3.feed_forward.w1.weight'].shape) == (2816, 1024)   # find_multiple
    assert tuple(sd['layers.3.feed_forward.w2.weight'].shape) == (1024, 2816)
    assert tuple(sd['output.weight'].shape) == (16384, 1024)
    per_layer = {'attention.wqkv.weight', 'attention.wo.weight', 'feed_forward.w1.weight',
                 'feed_forward.w2.weight', 'feed_forward.w3.weight', 'attention_norm.weight',
                 'ffn_norm.weight'}
    expected = {'cls_embedding.embedding_table.weight', 'tok_embeddings.weight', 'norm.weight',
                'output.weight'} | {f'layers.{i}.{k}' for i in range(24) for k in per_layer}
    assert set(sd) == expected          # no biases, no freqs_cis, no caches
    st = t2i.state_dict()
    assert tuple(st['cls_embedding.cap_proj.fc1.weight'].shape) == (1280, 2048)
    assert tuple(st['cls_embedding.cap_proj.fc2.weight'].shape) == (1280, 1280)
    assert tuple(st['cls_embedding.uncond_embedding'].shape) == (120, 2048)
    assert set(GPT_ARCHS) >= {'GPT-B', 'GPT-L', 'GPT-XL', 'GPT-XXL', 'GPT-3B'}


def test_arch_dict_validation():
    cfg = GPTConfig.from_arch(dict(base='GPT-B', n_layer=2))
    assert (cfg.dim, cfg.n_layer, cfg.n_head) == (768, 2, 12)
    with pytest.raises(ValueError, match='allowed'):
        GPTConfig.from_arch(dict(dim=64, n_layer=2, n_head=4, heads=3))
    with pytest.raises(ValueError, match='GPT-B'):
        GPTConfig.from_arch('GPT-Q')


# ---- rotary embedding ------------------------------------------------------------------------

def test_rope_table_matches_official_2d_formula():
    grid, hd, base, c = 4, 16, 10000.0, 3
    cos, sin = rope_2d_tables(grid, hd, base, c)
    assert cos.shape == (c + grid * grid, hd)
    assert torch.equal(cos[:c], torch.zeros(c, hd)) and torch.equal(sin[:c], torch.zeros(c, hd))
    half = hd // 2
    freqs = [base ** (-(2 * j) / half) for j in range(half // 2)]
    for r in range(grid):
        for col in range(grid):
            row = c + r * grid + col
            for j in range(half):        # pair j: first half rotates with row, second with col
                angle = (r * freqs[j]) if j < half // 2 else (col * freqs[j - half // 2])
                assert cos[row, 2 * j] == pytest.approx(math.cos(angle), abs=1e-6)
                assert cos[row, 2 * j + 1] == pytest.approx(math.cos(angle), abs=1e-6)
                assert sin[row, 2 * j] == pytest.approx(-math.sin(angle), abs=1e-6)
                assert sin[row, 2 * j + 1] == pytest.approx(math.sin(angle), abs=1e-6)


@pytest.mark.parametrize('task', ['c2i', 't2i'])
def test_condition_positions_have_exactly_zero_q_and_k(task):
    gpt = make_policy(task).gpt
    c = gpt.cfg.cls_token_num
    s = c + 5
    x = torch.randn(2, s, 64)
    q, k, v = gpt.layers[0].attention.qkv(x, gpt.rope_cos[:s], gpt.rope_sin[:s])
    assert torch.count_nonzero(q[:, :c]) == 0 and torch.count_nonzero(k[:, :c]) == 0
    assert torch.count_nonzero(q[:, c:]) > 0 and torch.count_nonzero(v[:, :c]) > 0
    # rotation preserves the norm of every channel pair at image positions
    raw = gpt.layers[0].attention.wqkv(x)[..., :64].view(2, s, 4, 16)
    assert torch.allclose(q[:, c:].norm(dim=-1), raw[:, c:].norm(dim=-1), atol=1e-5)


# ---- KV cache == full forward ------------------------------------------------------------------

@pytest.mark.parametrize('task,n_kv_head', [('c2i', None), ('t2i', None), ('c2i', 2)])
def test_kv_cache_decoding_equals_full_forward(task, n_kv_head):
    policy = make_policy(task, arch=dict(TINY, n_kv_head=n_kv_head)).eval()
    gpt = policy.gpt
    cond = policy.encode_conditions(conditions(task))
    emb, mask = policy.condition_inputs(cond, with_null=True)         # [4, C, dim]
    b, c, t = emb.shape[0], gpt.cfg.cls_token_num, policy.num_actions
    tokens = torch.randint(0, V, (b, t))
    with torch.no_grad():
        full = gpt(emb, tokens[:, :-1], cond_mask=mask)                # [B, T, V]
        cache = gpt.new_cache(b)
        steps = [gpt.prefill(emb, cache, cond_mask=mask)[:, 0]]
        for i in range(t - 1):
            steps.append(gpt.decode_step(tokens[:, i], c + i, cache))
        cached = torch.stack(steps, dim=1)
        # prefill with 5 given tokens gives the teacher-forced rows 0..5
        cache2 = gpt.new_cache(b)
        x = torch.cat([emb, gpt.tok_embeddings(tokens[:, :5])], dim=1)
        pre = gpt.prefill(x, cache2, cond_mask=mask)
    assert full.shape == (b, t, V)
    assert torch.allclose(cached, full, atol=1e-5, rtol=1e-5)
    assert torch.allclose(pre, full[:, :6], atol=1e-5, rtol=1e-5)


def test_caption_padding_is_invisible():
    """Changing the features at masked caption positions changes no image logit."""
    policy = make_policy('t2i').eval()
    cond = policy.encode_conditions(conditions('t2i'))
    assert not cond.text_mask[0].all()
    emb, mask = policy.condition_inputs(cond, with_null=False)
    tokens = torch.randint(0, V, (2, 15))
    noisy = emb + torch.randn_like(emb) * (~mask)[..., None]
    with torch.no_grad():
        a = policy.gpt(emb, tokens, cond_mask=mask)
        b = policy.gpt(noisy, tokens, cond_mask=mask)
    assert torch.allclose(a, b, atol=1e-5)


# ---- categorical log-prob / entropy ------------------------------------------------------------

def reference_keep(z, top_k, top_p):
    """Plain per-row restatement of the official top_k_top_p_filtering rule."""
    keep = torch.ones_like(z, dtype=torch.bool)
    for r in range(z.shape[0]):
        row = z[r].clone()
        if 0 < top_k < row.numel():
            kth = torch.sort(row, descending=True).values[top_k - 1]
            keep[r] &= row >= kth
            row[~keep[r]] = float('-inf')
        if top_p < 1:
            vals, order = torch.sort(row, descending=True)
            probs = torch.softmax(vals, 0)
            cum = 0.0
            for i in range(row.numel()):
                if i > 0 and cum > top_p:
                    keep[r, order[i]] = False
                cum += float(probs[i])
    return keep


@pytest.mark.parametrize('top_k,top_p', [(5, 1.0), (0, 0.7), (8, 0.5), (0, 1.0)])
def test_truncation_matches_official_rule(top_k, top_p):
    z = torch.randn(6, 20) * 2
    keep = truncation_keep_mask(z, top_k, top_p)
    if top_k == 0 and top_p == 1.0:
        assert keep is None
        return
    assert torch.equal(keep, reference_keep(z, top_k, top_p))


def direct_logp_entropy(logits, actions, cfg_scale, rows, temperature, top_k, top_p):
    cond = logits[0]
    z = cond
    if logits.shape[0] == 2:
        mixed = logits[1] + (cond - logits[1]) * cfg_scale
        z = mixed if rows is None else torch.where(rows[:, None], mixed, cond)
    z = z / temperature
    keep = reference_keep(z.detach(), top_k, top_p)
    keep[torch.arange(len(actions)), actions] = True
    z = z.masked_fill(~keep, float('-inf'))
    logp_all = torch.log_softmax(z, dim=-1)
    p = logp_all.exp()
    ent = -(p * logp_all.masked_fill(~keep, 0)).sum(-1)
    return logp_all.gather(1, actions[:, None])[:, 0], ent


@pytest.mark.parametrize('cfg,rows_kind,top_k,top_p,temperature', [
    (False, None, 0, 1.0, 1.0), (False, None, 0, 1.0, 0.7), (True, 'all', 0, 1.0, 1.0),
    (True, 'some', 6, 0.8, 1.3), (False, None, 3, 1.0, 1.0)])
def test_logp_and_entropy_against_direct_computation(monkeypatch, cfg, rows_kind, top_k, top_p,
                                                     temperature):
    monkeypatch.setattr(categorical, '_chunk_rows', lambda v: 4)     # exercise several chunks
    n, v = 10, 12
    logits = torch.randn(2 if cfg else 1, n, v, dtype=torch.float64) * 2
    actions = torch.randint(0, v, (n,))
    rows = None if rows_kind != 'some' else torch.arange(n) % 3 != 0
    scale = 3.0 if cfg else 1.0
    logits.requires_grad_(True)
    lp, ent = categorical_logp_entropy(logits, actions, cfg_scale=scale, rows=rows,
                                       temperature=temperature, top_k=top_k, top_p=top_p)
    ref = logits.detach().clone().requires_grad_(True)
    lp_ref, ent_ref = direct_logp_entropy(ref, actions, scale, rows, temperature, top_k, top_p)
    assert torch.allclose(lp, lp_ref, atol=1e-10) and torch.allclose(ent, ent_ref, atol=1e-10)
    w1, w2 = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    (lp * w1 + ent * w2).sum().backward()
    (lp_ref * w1 + ent_ref * w2).sum().backward()
    assert torch.allclose(logits.grad, ref.grad, atol=1e-10)
    # only the log-prob used: its gradient alone
    logits.grad = None
    lp2, _ = categorical_logp_entropy(logits, actions, cfg_scale=scale, rows=rows,
                                      temperature=temperature, top_k=top_k, top_p=top_p,
                                      with_entropy=False)
    lp2.sum().backward()
    ref.grad = None
    direct_logp_entropy(ref, actions, scale, rows, temperature, top_k, top_p)[0].sum().backward()
    assert torch.allclose(logits.grad, ref.grad, atol=1e-10)


def test_entropy_of_uniform_and_one_hot():
    logits = torch.zeros(1, 3, 16)
    logits[0, 2, 5] = 1e4
    lp, ent = categorical_logp_entropy(logits, torch.tensor([0, 1, 5]))
    assert torch.allclose(ent[:2], torch.full((2,), math.log(16)), atol=1e-6)
    assert torch.allclose(lp[:2], torch.full((2,), -math.log(16)), atol=1e-6)
    assert abs(float(ent[2])) < 1e-6 and abs(float(lp[2])) < 1e-6


def test_cfg_interval_fractions():
    assert cfg_active_steps(None, 5).all()
    # the official integer --cfg-interval k guides tokens 0..k+1: (0, (k + 2) / T)
    act = cfg_active_steps((0.0, 5 / 16), 16)
    assert act.tolist() == [True] * 5 + [False] * 11
    assert cfg_active_steps((0.5, 1.0), 4).tolist() == [False, False, True, True]


# ---- sampler <-> teacher-forced evaluation ------------------------------------------------------

def check_rollout_logp(policy, sampler, cond, group_size=3, atol=2e-5):
    roll = sampler.rollout(policy, cond, group_size=group_size)
    spec = sampler.logprob_spec()
    ev = policy.evaluate(roll, spec=spec)
    assert roll.logp_old_cfg == spec.mode
    assert torch.allclose(ev.logp.detach(), roll.logp_old, atol=atol), \
        (ev.logp.detach() - roll.logp_old).abs().max()
    return roll, ev


def test_rollout_layout_and_logp_without_cfg():
    policy = make_policy()
    sampler = ARSampler(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none')
    roll, ev = check_rollout_logp(policy, sampler, conditions('c2i'))
    b, t = 6, policy.num_actions
    assert roll.actions.shape == (b, t) and roll.actions.dtype == torch.long
    assert torch.equal(roll.group_ids, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert torch.equal(roll.cond.class_ids, torch.tensor([3, 3, 3, 7, 7, 7]))
    assert roll.action_mask.all() and roll.prefix_steps == 0
    assert torch.equal(roll.action_step, torch.arange(t))
    assert roll.action_pos.tolist()[:5] == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]]
    assert roll.images.shape == (b, 3, 64, 64)
    assert float(roll.images.min()) >= 0 and float(roll.images.max()) <= 1
    assert ev.entropy.shape == (b, t) and bool((ev.entropy > 0).all())
    # teacher-forced 'none' log-probs are log_softmax(cond logits / T), full vocabulary
    emb, _ = policy.condition_inputs(roll.cond, with_null=False)
    with torch.no_grad():
        logits = policy.gpt(emb, roll.actions[:, :-1])
    direct = torch.log_softmax(logits, -1).gather(2, roll.actions[..., None])[..., 0]
    assert torch.allclose(ev.logp.detach(), direct, atol=1e-5)
    # gradients reach the transformer, not the frozen tokenizer
    ev.logp.sum().backward()
    assert policy.gpt.output.weight.grad is not None
    assert all(p.grad is None for p in policy.vq.parameters())


@pytest.mark.parametrize('task,top_k,top_p,interval', [
    ('c2i', 0, 1.0, None), ('c2i', 6, 0.8, None), ('c2i', 0, 0.9, (0.0, 0.5)),
    ('t2i', 5, 1.0, None)])
def test_rollout_logp_with_cfg_is_exact_under_rollout_spec(task, top_k, top_p, interval):
    policy = make_policy(task)
    sampler = ARSampler(cfg_scale=3.0, temperature=0.9, top_k=top_k, top_p=top_p,
                        logprob_cfg='rollout', cfg_interval=interval, decode_images=False)
    roll, ev = check_rollout_logp(policy, sampler, conditions(task))
    assert roll.images is None
    if top_k:    # entropy of a k-token distribution is at most log k
        assert bool((ev.entropy <= math.log(top_k) + 1e-5).all())


def test_rollout_with_cfg_records_conditional_logp_under_none_spec():
    policy = make_policy()
    sampler = ARSampler(cfg_scale=4.0, temperature=1.0, top_k=4, top_p=1.0, logprob_cfg='none',
                        decode_images=False)
    roll, ev = check_rollout_logp(policy, sampler, conditions('c2i'))
    assert not sampler.logprob_spec().uses_cfg


def test_greedy_cfg_sampling_picks_argmax_of_mixed_logits():
    policy = make_policy()
    scale = 2.5
    sampler = ARSampler(cfg_scale=scale, temperature=1.0, top_k=1, top_p=1.0,
                        logprob_cfg='rollout', decode_images=False)
    roll = sampler.rollout(policy, conditions('c2i'), group_size=2)
    assert torch.equal(roll.logp_old, torch.zeros_like(roll.logp_old))
    emb, _ = policy.condition_inputs(roll.cond, with_null=True)
    inp = roll.actions[:, :-1]
    with torch.no_grad():
        logits = policy.gpt(emb, torch.cat([inp, inp]))
    cond, uncond = logits.chunk(2)
    assert torch.equal((uncond + (cond - uncond) * scale).argmax(-1), roll.actions)


def test_prefix_completion():
    policy = make_policy()
    sampler = ARSampler(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0,
                        logprob_cfg='rollout', decode_images=False)
    first = sampler.rollout(policy, conditions('c2i'), group_size=2)
    done = sampler.rollout(policy, first.cond, group_size=3, prefix=first, stop_at_step=5)
    assert done.actions.shape == (12, 16) and done.prefix_steps == 5
    assert torch.equal(done.actions[:, :5], first.actions.repeat_interleave(3, dim=0)[:, :5])
    assert not done.action_mask[:, :5].any() and done.action_mask[:, 5:].all()
    assert torch.equal(done.group_ids, torch.arange(4).repeat_interleave(3))
    ev = policy.evaluate(done, spec=sampler.logprob_spec())
    assert torch.allclose(ev.logp.detach(), done.logp_old, atol=2e-5)
    with pytest.raises(ValueError, match='prefix'):
        sampler.rollout(policy, conditions('c2i'), group_size=2, stop_at_step=3)
    with pytest.raises(ValueError, match='stop_at_step'):
        sampler.rollout(policy, first.cond, group_size=2, prefix=first, stop_at_step=16)


def test_sampler_settings_are_required_and_validated():
    with pytest.raises(TypeError):
        ARSampler(cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0)   # no logprob_cfg
    with pytest.raises(ValueError, match='none'):
        ARSampler(cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='cfg')
    with pytest.raises(ValueError, match='cfg_interval'):
        ARSampler(cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                  cfg_interval=(0.5, 0.2))
    spec = ARSampler(cfg_scale=4.0, temperature=0.5, top_k=3, top_p=0.9, logprob_cfg='rollout',
                     cfg_interval=(0, 0.5)).logprob_spec()
    assert spec == LogprobSpec(mode='rollout', cfg_scale=4.0, cfg_interval=(0.0, 0.5),
                               temperature=0.5, top_k=3, top_p=0.9)


def test_registry_builds():
    sampler = SAMPLERS.build(dict(type='ARSampler', cfg_scale=1.5, temperature=1.0, top_k=0,
                                  top_p=1.0, logprob_cfg='none'))
    assert isinstance(sampler, ARSampler)
    policy = POLICIES.build(dict(type='LlamaGenPolicy', arch=TINY, image_size=32, downsample=16,
                                 num_classes=4, vocab_size=V, tokenizer=VQ_TINY))
    assert isinstance(policy, LlamaGenPolicy) and policy.num_actions == 4


# ---- conditions, actions, pretraining ------------------------------------------------------------

def test_left_padding_arrangement_of_captions():
    emb = torch.arange(1, 6, dtype=torch.float32).view(1, 5, 1).repeat(2, 1, 1)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out, new_mask = _left_pad(emb, mask)
    assert out[..., 0].tolist() == [[0, 0, 0, 1, 2], [1, 2, 3, 4, 5]]
    assert new_mask.tolist() == [[False, False, False, True, True], [True] * 5]


def test_t2i_conditions_are_encoded_left_padded():
    policy = make_policy('t2i')
    cond = policy.encode_conditions(conditions('t2i'))
    assert cond.text_emb.shape == (2, 8, 32) and cond.text_mask.dtype == torch.bool
    # 'a red circle' + </s> = 4 real tokens at the end; the long prompt is truncated to 8
    assert cond.text_mask.tolist() == [[False] * 4 + [True] * 4, [True] * 8]
    assert torch.count_nonzero(cond.text_emb[0, :4]) == 0
    direct, dmask = policy.text_encoder(['a red circle'])
    assert dmask[0].tolist() == [True] * 4 + [False] * 4
    assert torch.allclose(cond.text_emb[0, 4:], direct[0, :4])


def test_embed_actions_are_unit_codebook_vectors():
    policy = make_policy()
    sampler = ARSampler(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                        decode_images=False)
    roll = sampler.rollout(policy, conditions('c2i'), group_size=2)
    emb = policy.embed_actions(roll)
    assert emb.shape == (4, 16, 8)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4, 16), atol=1e-5)
    book = F.normalize(policy.vq.quantize.embedding.weight, dim=-1)
    assert torch.allclose(emb, book[roll.actions])


def test_pretrain_loss_is_next_token_cross_entropy():
    policy = make_policy(class_dropout_prob=0.0)
    tokens = torch.randint(0, V, (3, 16))
    cond = Conditions(class_ids=torch.tensor([0, 1, 2]))
    loss = policy.pretrain_loss(tokens, cond)
    emb, _ = policy.condition_inputs(cond, with_null=False)
    logits = policy.gpt(emb, tokens[:, :-1])
    assert torch.allclose(loss, F.cross_entropy(logits.flatten(0, 1), tokens.flatten()))
    loss.backward()
    assert policy.gpt.tok_embeddings.weight.grad is not None


# ---- checkpoints ---------------------------------------------------------------------------------

def test_official_checkpoint_formats_load_strictly(tmp_path):
    src = make_policy()
    sd = src.gpt.state_dict()
    ddp = tmp_path / 'c2i_B_256.pt'      # official DDP layout, with the training extras
    torch.save({'model': sd, 'steps': 10, 'args': argparse.Namespace(lr=1e-4, gpt_model='GPT-B')},
               ddp)
    fsdp = tmp_path / 'consolidated.pth'  # official FSDP layout: the raw state dict + freqs_cis
    torch.save({**sd, 'freqs_cis': torch.zeros(17, 8, 2)}, fsdp)
    for path in (ddp, fsdp):
        dst = make_policy(checkpoint=str(path))
        for k, v in sd.items():
            assert torch.equal(dst.gpt.state_dict()[k], v), k


def test_missing_and_unexpected_keys_raise_naming_them(tmp_path):
    sd = make_policy().gpt.state_dict()
    missing = {k: v for k, v in sd.items() if k != 'layers.1.feed_forward.w3.weight'}
    torch.save({'model': missing}, tmp_path / 'a.pt')
    with pytest.raises(CheckpointKeyError, match=r'layers\.1\.feed_forward\.w3\.weight'):
        make_policy(checkpoint=str(tmp_path / 'a.pt'))
    extra = {**sd, 'layers.0.attention.wqkv.bias': torch.zeros(192)}
    torch.save({'model': extra}, tmp_path / 'b.pt')
    with pytest.raises(CheckpointKeyError, match=r'layers\.0\.attention\.wqkv\.bias'):
        make_policy(checkpoint=str(tmp_path / 'b.pt'))
    torch.save({'model': sd}, tmp_path / 'c.pt')
    with pytest.raises(CheckpointKeyError, match='cls_embedding.embedding_table.weight'):
        make_policy(checkpoint=str(tmp_path / 'c.pt'), num_classes=5)


def test_missing_official_file_names_where_it_is_published(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        make_policy(checkpoint=str(tmp_path / 'c2i_L_256.pt'))
    assert 'https://huggingface.co/FoundationVision/LlamaGen/resolve/main/c2i_L_256.pt' \
        in str(err.value)
    with pytest.raises(FileNotFoundError, match='peizesun/llamagen_t2i'):
        make_policy(tokenizer_checkpoint=str(tmp_path / 'vq_ds16_t2i.pt'))
    assert LlamaGenPolicy.file_sources['vq_ds16_c2i.pt'].endswith('LlamaGen/resolve/main/'
                                                                 'vq_ds16_c2i.pt')
    assert LlamaGenPolicy.file_sources['flan-t5-xl'] == 'https://huggingface.co/google/flan-t5-xl'


def test_tokenizer_checkpoint_loads_strictly(tmp_path):
    src = make_policy()
    torch.save({'model': src.vq.state_dict()}, tmp_path / 'vq.pt')
    dst = make_policy(tokenizer_checkpoint=str(tmp_path / 'vq.pt'))
    assert torch.equal(dst.vq.quantize.embedding.weight, src.vq.quantize.embedding.weight)



def test_t2i_null_caption_has_the_official_120_rows_and_cfg_uses_the_first_c(tmp_path):
    """Official gpt.py builds ``CaptionEmbedder(caption_dim, dim, class_dropout_prob)`` with its
    default ``token_num=120`` whatever ``cls_token_num`` is; generate.py feeds the whole buffer as
    the null caption (``cond_null = torch.zeros_like(cond) + model.cls_embedding.
    uncond_embedding``) and ``Transformer.forward`` keeps ``self.cls_embedding(cond_idx,
    train=self.training)[:, :self.cls_token_num]``: CFG uses rows 0 .. C - 1."""
    src = make_policy('t2i')                          # TEXT_TINY: C = 8 caption positions
    c, cd = src.cls_token_num, src.cfg.caption_dim
    assert c == 8 and src.cfg.uncond_rows == 120
    assert tuple(src.gpt.cls_embedding.uncond_embedding.shape) == (120, cd)
    sd = dict(src.gpt.state_dict())                   # official layout: a [120, cd] null caption
    null = torch.randn(120, cd, generator=torch.Generator().manual_seed(5))
    sd['cls_embedding.uncond_embedding'] = null
    torch.save({'model': sd}, tmp_path / 't2i_official.pt')
    dst = make_policy('t2i', checkpoint=str(tmp_path / 't2i_official.pt')).eval()   # strict
    assert torch.equal(dst.gpt.cls_embedding.uncond_embedding, null)
    cond = dst.encode_conditions(conditions('t2i'))
    emb, mask = dst.condition_inputs(cond, with_null=True)
    b = len(cond)
    with torch.no_grad():    # the official computation: project all 120 rows, keep the first C
        official = dst.gpt.cls_embedding.cap_proj(null.unsqueeze(0))[:, :c]
        last_rows = dst.gpt.cls_embedding.cap_proj(null[-c:])
    torch.testing.assert_close(emb[b:], official.expand(b, -1, -1), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(emb[b], last_rows)
    assert torch.equal(mask[b:], mask[:b])            # the null caption keeps its caption's mask
    # the pre-fix layout (C rows, as the shipped Shapes t2i file) needs uncond_rows=C
    with pytest.raises(CheckpointKeyError, match='uncond_embedding'):
        make_policy('t2i', checkpoint=str(tmp_path / 't2i_official.pt'), uncond_rows=c)
    torch.save({'model': {**sd, 'cls_embedding.uncond_embedding': null[:c]}},
               tmp_path / 't2i_c_rows.pt')
    with pytest.raises(CheckpointKeyError, match='uncond_embedding'):
        make_policy('t2i', checkpoint=str(tmp_path / 't2i_c_rows.pt'))
    old = make_policy('t2i', checkpoint=str(tmp_path / 't2i_c_rows.pt'), uncond_rows=c).eval()
    torch.testing.assert_close(old.condition_inputs(cond, with_null=True)[0], emb)
    with pytest.raises(ValueError, match='uncond_rows'):
        make_policy('t2i', uncond_rows=c - 1)


def test_shapes_t2i_config_keeps_the_null_caption_rows_its_shipped_file_has():
    import os

    from mmengine.config import Config
    from safetensors import safe_open
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pcfg = Config.fromfile(os.path.join(root, 'configs/_base_/policies/llamagen_shapes_t2i.py')
                           ).policy
    with safe_open(os.path.join(root, pcfg.checkpoint), 'pt') as f:
        rows = f.get_slice('cls_embedding.uncond_embedding').get_shape()[0]
    assert rows == pcfg.uncond_rows == pcfg.text_encoder.max_length == 12


def test_policy_state_dict_holds_only_the_transformer():
    policy = make_policy('t2i')
    sd = policy.state_dict()
    assert sd and all(k.startswith('gpt.') for k in sd)
    other = make_policy('t2i')
    vq_before = other.vq.quantize.embedding.weight.clone()
    other.load_state_dict(sd, strict=True)
    assert torch.equal(other.gpt.output.weight, policy.gpt.output.weight)
    assert torch.equal(other.vq.quantize.embedding.weight, vq_before)
    assert policy.trainable_parameters() == list(policy.gpt.parameters())
    policy.train()
    assert policy.training and not policy.vq.training and not policy.text_encoder.training


# ---- text encoders ---------------------------------------------------------------------------------

def test_flan_t5_loader_reads_a_local_directory_offline(tmp_path):
    """The official-path loader on a small T5 saved locally: right padding, EOS, same features."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from vargo.components.tokenizers.text import flan_t5, word_t5
    small = word_t5(vocabulary=WORDS, d_model=32, num_layers=1, num_heads=4, d_ff=64,
                    max_length=6)
    tok = Tokenizer(WordLevel(small.vocab, unk_token='<unk>'))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single='$A </s>',
                                                       special_tokens=[('</s>', 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>', eos_token='</s>',
                            unk_token='<unk>').save_pretrained(tmp_path)
    small.model.save_pretrained(tmp_path)
    loaded = flan_t5(path=str(tmp_path), max_length=6)
    emb, mask = loaded(['A  red circle', 'blue'])
    ref, ref_mask = small(['a red circle', 'blue'])
    assert mask.tolist() == [[True] * 4 + [False] * 2, [True] * 2 + [False] * 4]
    assert torch.equal(mask, ref_mask) and torch.allclose(emb, ref, atol=1e-6)
    with pytest.raises(FileNotFoundError, match='huggingface.co/google/flan-t5-xl'):
        flan_t5(path=str(tmp_path / 'flan-t5-xl'))


def test_caption_cleaning_keeps_plain_prompts():
    from vargo.components.tokenizers.text import clean_caption
    assert clean_caption('  A  Photo of a Cat ') == 'a photo of a cat'
    assert clean_caption('red,blue &amp; green') == 'red, blue green'


# ---- sampling noise through BatchRNG --------------------------------------------------------------

def test_inverse_cdf_sampling_hand_derived():
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]] * 6 + [[0.0, 0.5, 0.5, 0.0]] * 2)
    u = torch.tensor([0.0, 0.1, 0.2, 0.69, 0.7, 1 - 2 ** -24, 0.0, 1 - 2 ** -24])[:, None]
    assert inverse_cdf_sample(probs, u)[:, 0].tolist() == [0, 0, 2, 2, 3, 3, 1, 2]


def test_batch_rng_rollouts_are_reproducible_and_split_invariant():
    from vargo.core.rng import BatchRNG
    policy = make_policy()
    sampler = ARSampler(cfg_scale=3.0, temperature=1.0, top_k=8, top_p=0.95,
                        logprob_cfg='rollout', decode_images=False)
    cond = conditions('c2i')
    full = sampler.rollout(policy, cond, group_size=3,
                           rng=BatchRNG(5, 2, 6, rank=0, world_size=1))
    again = sampler.rollout(policy, cond, group_size=3,
                            rng=BatchRNG(5, 2, 6, rank=0, world_size=1))
    assert torch.equal(full.actions, again.actions)
    parts = [sampler.rollout(policy, cond.index(torch.tensor([r])), group_size=3,
                             rng=BatchRNG(5, 2, 3, rank=r, world_size=2)) for r in (0, 1)]
    assert torch.equal(torch.cat([p.actions for p in parts]), full.actions)
    ev = policy.evaluate(full, spec=sampler.logprob_spec())
    assert torch.allclose(ev.logp.detach(), full.logp_old, atol=2e-5)
    with pytest.raises(ValueError, match='local_batch'):
        sampler.rollout(policy, cond, group_size=3, rng=BatchRNG(5, 2, 4, rank=0, world_size=1))
