"""Packed linear weights for decoding (components/modules/packed_linear.py): same outputs as
F.linear up to summation order, rows independent of the batch size, never used with stale
weights or with autograd on, nothing left patched, and the raster sampler's tokens unchanged."""
import copy

import pytest
import torch
from torch import nn

from test_llamagen import conditions, make_policy
from vargo.components.modules import packed_linear
from vargo.components.modules.packed_linear import PackedLinears, packed_linear_supported
from vargo.components.samplers import ARSampler
from vargo.core.rng import BatchRNG

pytestmark = pytest.mark.skipif(not packed_linear_supported(),
                                reason='this torch build has no oneDNN linear on the CPU')


@pytest.fixture(autouse=True)
def pack_every_size(monkeypatch, request):
    """The tests' layers are tiny: pack them anyway (the size rule has its own test)."""
    if request.node.name != 'test_small_layers_keep_f_linear_by_default':
        monkeypatch.setattr(packed_linear, 'MIN_WEIGHT_ELEMENTS', 0)


def net(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40, bias=bias), nn.GELU(), nn.Linear(40, 16, bias=bias))


def packed_forward(model, x, rows=None):
    packs = PackedLinears()
    with torch.no_grad():
        assert packs.refresh([model], rows or x.shape[0]) == \
            sum(type(m) is nn.Linear for m in model.modules())
        with packs.active():
            return model(x), packs


@pytest.mark.parametrize('bias', [True, False])
def test_packed_forward_matches_f_linear_and_takes_any_leading_shape(bias):
    model = net(bias)
    x = torch.randn(3, 5, 24)
    y, packs = packed_forward(model, x, rows=15)
    with torch.no_grad():
        ref = model(x)
    assert y.shape == (3, 5, 16)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert len(packs) == 2 and packs.nbytes >= (24 * 40 + 40 * 16) * 4


def test_packed_forwards_run_the_packed_kernel_only_with_fresh_weights(monkeypatch):
    """Inside active() a grad-free forward goes through the packed kernel; a stale weight or
    autograd goes to F.linear (counted at the kernel's one call site)."""
    calls = []
    kernel = packed_linear.packed_linear
    monkeypatch.setattr(packed_linear, 'packed_linear',
                        lambda *a: calls.append(1) or kernel(*a))
    model = net()
    x = torch.randn(4, 24)
    packed_forward(model, x)
    assert len(calls) == 2                              # both layers, packed
    with torch.no_grad():
        model[0].weight.add_(1.0)                       # layer 0 is stale now
    packs = PackedLinears()
    with torch.no_grad():
        packs.refresh([model], 4)
        model[2].weight.mul_(2.0)                       # layer 2 goes stale after packing
        with packs.active():
            model(x)
    assert len(calls) == 3                              # only layer 0, repacked
    with packs.active():
        model(x)                                        # autograd on: no packed call
    assert len(calls) == 3


def test_another_bias_goes_through_the_packed_copy_under_the_same_rules(monkeypatch):
    """linear_with_bias (VAR's query-key-value projection): the layer's packed weight with a
    bias given per call, only while the layer is routed, fresh and grad-free."""
    calls = []
    kernel = packed_linear.packed_linear
    monkeypatch.setattr(packed_linear, 'packed_linear',
                        lambda *a: calls.append(1) or kernel(*a))
    layer = nn.Linear(24, 40, bias=False)
    x, bias = torch.randn(6, 24), torch.randn(40)
    ref = torch.nn.functional.linear(x, layer.weight, bias)
    with torch.no_grad():
        assert torch.equal(packed_linear.linear_with_bias(layer, x, bias), ref.detach())
        assert calls == []                                # not routed: F.linear
        packs = PackedLinears()
        packs.refresh([layer], 6)
        with packs.active():
            y = packed_linear.linear_with_bias(layer, x, bias)
        assert calls == [1] and torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
        layer.weight.mul_(2.0)                            # stale
        with packs.active():
            y = packed_linear.linear_with_bias(layer, x, bias)
        assert calls == [1] and torch.equal(
            y, torch.nn.functional.linear(x, layer.weight, bias))
    packs.refresh([layer], 6)
    with packs.active():                                  # autograd on
        packed_linear.linear_with_bias(layer, x, bias)
    assert calls == [1]


def test_fused_gelu_matches_the_composition_and_keeps_the_rules(monkeypatch):
    calls = []
    kernel = packed_linear.packed_linear
    monkeypatch.setattr(packed_linear, 'packed_linear',
                        lambda *a: calls.append(a[3:]) or kernel(*a))
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    x = torch.randn(2, 6, 24)
    ref = torch.nn.functional.gelu(layer(x), approximate='tanh').detach()
    with torch.no_grad():
        assert torch.equal(packed_linear.linear_gelu_tanh(layer, x), ref)
        packs = PackedLinears()
        packs.refresh([layer], 12)
        with packs.active():
            y = packed_linear.linear_gelu_tanh(layer, x)
        assert calls == [('gelu', 'tanh')]
        assert y.shape == ref.shape and torch.allclose(y, ref, rtol=1e-5, atol=1e-6)
    with packs.active():                                  # autograd on: the composition
        y = packed_linear.linear_gelu_tanh(layer, x)
    assert len(calls) == 1 and y.requires_grad


def test_var_decoding_packs_the_qkv_projection(monkeypatch):
    """VAR's attention reaches its mat_qkv packed copy (the copy exists for every packed
    layer, so leaving it unused cost memory for nothing) and its MLP the fused GELU."""
    from test_var import cond as var_cond
    from test_var import make_policy as var_policy
    from vargo.components.samplers import NextScaleSampler
    seen = []
    kernel = packed_linear.packed_linear

    def counting_kernel(x, packed, bias, *post_op):
        seen.append((packed.shape[0], post_op))
        return kernel(x, packed, bias, *post_op)
    monkeypatch.setattr(packed_linear, 'packed_linear', counting_kernel)
    var = var_policy()
    sampler = NextScaleSampler(cfg_scale=3.0, temperature=1.0, top_k=8, top_p=0.9,
                               logprob_cfg='rollout', packed_weights=True, decode_images=False)
    sampler.rollout(var, var_cond(), group_size=2, rng=BatchRNG(0, 1, 4))
    qkv = {m.out_features for name, m in var.named_modules() if name.endswith('attn.mat_qkv')}
    others = {m.out_features for name, m in var.named_modules()
              if isinstance(m, nn.Linear) and not name.endswith('attn.mat_qkv')}
    assert len(qkv) == 1 and not qkv & others          # the qkv width names its calls
    assert qkv <= {n for n, _ in seen}
    # and the MLP's fc1 runs with the GELU fused
    fc1 = {m.out_features for name, m in var.named_modules() if name.endswith('ffn.fc1')}
    assert {(n, ('gelu', 'tanh')) for n in fc1} <= set(seen)


def test_each_output_row_depends_only_on_its_input_row():
    model = net()
    x = torch.randn(32, 24)
    full, packs = packed_forward(model, x, rows=32)
    with torch.no_grad(), packs.active():
        for m in (1, 7, 16):
            assert torch.equal(model(x[:m]), full[:m])


def test_a_changed_weight_is_never_read_through_a_stale_pack():
    model = net()
    x = torch.randn(4, 24)
    _, packs = packed_forward(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).square().sum().backward()
    opt.step()                                          # in-place update: new weight versions
    with torch.no_grad():
        fresh = model(x)
        with packs.active():
            assert torch.equal(model(x), fresh)         # stale packs: plain F.linear
        assert packs.refresh([model], 4) == 2           # both repacked
        assert packs.refresh([model], 4) == 0           # nothing changed since
        with packs.active():
            assert torch.allclose(model(x), fresh, rtol=1e-5, atol=1e-6)
    model.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})
    with torch.no_grad():
        loaded = model(x)
        with packs.active():
            assert torch.equal(model(x), loaded)


def test_autograd_forwards_use_f_linear_and_get_gradients():
    model = net()
    x = torch.randn(4, 24)
    _, packs = packed_forward(model, x)
    with packs.active():
        y = model(x)
        y.sum().backward()
    with torch.no_grad():
        assert torch.equal(y.detach(), model(x))
    assert model[0].weight.grad is not None


def test_nothing_stays_patched_even_after_an_error():
    model = net()
    x = torch.randn(4, 24)
    _, packs = packed_forward(model, x)
    with pytest.raises(ValueError), torch.no_grad(), packs.active():
        assert 'forward' in model[0].__dict__
        raise ValueError('boom')
    assert all('forward' not in m.__dict__ for m in model)
    assert list(model.state_dict()) == ['0.weight', '0.bias', '2.weight', '2.bias']


def test_disabled_copies_and_unsupported_layers_pack_nothing():
    model = net()
    assert PackedLinears(enabled=False).refresh([model], 4) == 0
    _, packs = packed_forward(model, torch.randn(4, 24))
    assert len(copy.deepcopy(packs)) == 0               # a copy is an empty cache
    bf16 = net().to(torch.bfloat16)
    assert PackedLinears().refresh([bf16], 4) == 0
    packs.refresh([nn.Sequential(nn.Linear(3, 3))], 4)  # layers no longer listed are dropped
    assert len(packs) == 1
    packs.release()
    assert len(packs) == 0 and packs.nbytes == 0


@pytest.mark.parametrize('cfg_scale', [1.0, 3.0])
def test_raster_sampler_tokens_are_unchanged_by_packed_weights(cfg_scale):
    policy = make_policy()
    n_linear = sum(type(m) is nn.Linear for m in policy.gpt.modules())
    rolls = {}
    for packed in (False, True):
        sampler = ARSampler(cfg_scale=cfg_scale, temperature=1.0, top_k=0, top_p=1.0,
                            logprob_cfg='rollout', packed_weights=packed)
        rolls[packed] = sampler.rollout(policy, conditions('c2i'), group_size=3,
                                        rng=BatchRNG(5, 1, 6))
        assert len(sampler._packs) == (n_linear if packed else 0)
        assert all('forward' not in m.__dict__ for m in policy.gpt.modules())
    assert torch.equal(rolls[True].actions, rolls[False].actions)
    assert torch.allclose(rolls[True].logp_old, rolls[False].logp_old, atol=1e-5)
    sampler.release_cache()
    assert len(sampler._packs) == 0


def test_packed_weights_must_be_a_bool():
    with pytest.raises(ValueError, match='packed_weights'):
        ARSampler(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                  packed_weights='yes')


def test_next_scale_and_masked_samplers_take_packed_weights_with_the_same_outputs():
    from test_mar import COND as MAR_COND
    from test_mar import _policy as mar_policy
    from test_mar import _sampler as mar_sampler
    from test_var import cond as var_cond
    from test_var import make_policy as var_policy
    from vargo.components.samplers import NextScaleSampler

    var = var_policy()
    got = {}
    for packed in (False, True):
        sampler = NextScaleSampler(cfg_scale=3.0, temperature=1.0, top_k=8, top_p=0.9,
                                   logprob_cfg='rollout', packed_weights=packed,
                                   decode_images=False)
        got[packed] = sampler.rollout(var, var_cond(), group_size=2, rng=BatchRNG(0, 1, 4))
        assert (len(sampler._packs) > 0) == packed
    assert torch.equal(got[True].actions, got[False].actions)
    assert torch.allclose(got[True].logp_old, got[False].logp_old, atol=1e-5)

    mar = mar_policy()
    got = {}
    for packed in (False, True):
        sampler = mar_sampler(cfg=2.0, packed_weights=packed)
        got[packed] = sampler.rollout(mar, MAR_COND, group_size=2, rng=BatchRNG(0, 1, 4))
        assert (len(sampler._packs) > 0) == packed
        sampler.release_cache()
        assert len(sampler._packs) == 0
    # the random tiny head drifts far from the data range (|x| ~ 1e4): relative tolerance
    assert torch.allclose(got[True].actions, got[False].actions, rtol=2e-3, atol=1e-3)
    assert torch.allclose(got[True].logp_old, got[False].logp_old, rtol=1e-4, atol=1e-3)
    assert all('forward' not in m.__dict__ for m in mar.modules())


def test_small_layers_keep_f_linear_by_default():
    """Below MIN_WEIGHT_ELEMENTS oneDNN's call overhead loses to F.linear at decode batch
    sizes: a Shapes-size transformer (width 128) packs nothing, a GPT-B-size layer is packed."""
    assert packed_linear.MIN_WEIGHT_ELEMENTS == 1 << 18
    small = nn.Sequential(nn.Linear(128, 512), nn.Linear(512, 128))
    big = nn.Linear(768, 768)
    packs = PackedLinears()
    assert packs.refresh([small, big], 16) == 1 and len(packs) == 1
    assert PackedLinears(min_weight_elements=0).refresh([small], 16) == 2
    policy = make_policy()          # a tiny LlamaGen: nothing reaches the threshold
    sampler = ARSampler(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0,
                        logprob_cfg='none')
    sampler.rollout(policy, conditions('c2i'), group_size=2, rng=BatchRNG(0, 1, 4))
    assert len(sampler._packs) == 0
