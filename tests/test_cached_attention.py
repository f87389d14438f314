"""Attention over a static KV cache (components/modules/kv_cache.py, ``cached_attention``): a
grad-free single-query CPU step runs as two products over the cache slice and equals SDPA up to
summation order (grouped heads, key masks); every other call is SDPA itself; narrow models keep
SDPA bit for bit; a raster rollout samples the same tokens either way."""
import pytest
import torch
import torch.nn.functional as F

from test_llamagen import conditions, make_policy
from vargo.components.modules import kv_cache
from vargo.components.modules.kv_cache import cached_attention, write_and_read
from vargo.components.samplers import ARSampler
from vargo.core.rng import BatchRNG


def cache_slice(b=3, hkv=4, length=37, d=64, capacity=64, seed=0):
    """Keys/values as a decode step reads them: a strided slice of a larger static cache."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.zeros(2, b, hkv, capacity, d)
    k, v = torch.randn(2, b, hkv, length, d, generator=g).unbind(0)
    return write_and_read(kv, k, v, 0)


def reference(q, k, v, mask=None):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize('heads', [(8, 8), (8, 2)])          # (query heads, key/value heads)
@pytest.mark.parametrize('masked', [False, True])
def test_decode_step_equals_sdpa(heads, masked):
    h, hkv = heads
    k, v = cache_slice(hkv=hkv)
    q = torch.randn(3, h, 1, 64)
    mask = None
    if masked:                                      # left padding hides some keys of each row
        mask = torch.ones(3, 1, 1, k.shape[2], dtype=torch.bool)
        mask[0, ..., :5] = False
        mask[2, ..., :11] = False
    with torch.no_grad():
        out = cached_attention(q, k, v, mask=mask)
        ref = reference(q, k, v, mask)
    assert out.shape == (3, h, 1, 64)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_every_other_call_is_sdpa_itself(monkeypatch):
    """Several queries, a causal flag, dropout, autograd or a narrow model: the SDPA result,
    bit for bit (the product path would differ in the last bits)."""
    k, v = cache_slice(hkv=8)
    q1, q4 = torch.randn(3, 8, 1, 64), torch.randn(3, 8, 4, 64)
    with torch.no_grad():
        assert torch.equal(cached_attention(q4, k, v), reference(q4, k, v))
        kc, vc = k[:, :, :4], v[:, :, :4]
        assert torch.equal(cached_attention(q4, kc, vc, is_causal=True),
                           F.scaled_dot_product_attention(q4, kc, vc, is_causal=True))
        torch.manual_seed(0)
        a = cached_attention(q1, k, v, dropout_p=0.5)
        torch.manual_seed(0)
        assert torch.equal(a, F.scaled_dot_product_attention(q1, k, v, dropout_p=0.5))
    assert torch.equal(cached_attention(q1, k, v).detach(), reference(q1, k, v))   # grad on
    monkeypatch.setattr(kv_cache, 'MIN_DECODE_ATTENTION_WIDTH', 8 * 64 + 1)
    with torch.no_grad():
        assert torch.equal(cached_attention(q1, k, v), reference(q1, k, v))


def test_the_product_path_is_taken_at_the_width_floor(monkeypatch):
    calls = []
    matmul = torch.matmul
    monkeypatch.setattr(kv_cache.torch, 'matmul', lambda *a: calls.append(1) or matmul(*a))
    k, v = cache_slice(hkv=8, d=64)                  # 8 x 64 = 512, the default floor
    with torch.no_grad():
        cached_attention(torch.randn(3, 8, 1, 64), k, v)
    assert len(calls) == 2 and kv_cache.MIN_DECODE_ATTENTION_WIDTH == 512


@pytest.mark.parametrize('task', ['c2i', 't2i'])
def test_raster_rollout_tokens_are_the_same_with_either_kernel(monkeypatch, task):
    """A LlamaGen policy sampled with the decode-step products (floor 0) and with SDPA
    everywhere (floor above its width): same tokens, log-probs equal up to rounding (t2i:
    left-padded captions, so the key mask is exercised)."""
    policy = make_policy(task)
    rolls = {}
    for floor in (0, 10 ** 6):
        monkeypatch.setattr(kv_cache, 'MIN_DECODE_ATTENTION_WIDTH', floor)
        sampler = ARSampler(cfg_scale=3.0, temperature=1.0, top_k=0, top_p=1.0,
                            logprob_cfg='rollout')
        cond = policy.encode_conditions(conditions(task, 2))
        rolls[floor] = sampler.rollout(policy, cond, group_size=3, rng=BatchRNG(3, 0, 6))
    assert torch.equal(rolls[0].actions, rolls[10 ** 6].actions)
    torch.testing.assert_close(rolls[0].logp_old, rolls[10 ** 6].logp_old, rtol=1e-5, atol=1e-5)
