"""The raster decoding protocol: ARSampler drives any policy implementing RasterDecoding (a toy
one-layer model here, tests/toy_raster.py), and refuses, at build time, a policy that lacks it."""
import pytest
import torch

from toy_components import ToyPolicy
from toy_raster import ToyRasterPolicy
from vargo.components.modules.categorical import (cfg_active_steps, cfg_mix, inverse_cdf_sample,
                                                  truncation_keep_mask)
from vargo.components.samplers import ARSampler
from vargo.components.samplers.ar_sampler import RasterDecoding
from vargo.components.samplers.base import missing_members
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions

SETTINGS = [dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none'),
            dict(cfg_scale=3.0, temperature=0.8, top_k=5, top_p=0.9, logprob_cfg='rollout'),
            dict(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                 cfg_interval=(0.0, 0.5))]


def toy_policy():
    torch.manual_seed(0)
    return ToyRasterPolicy()


def naive_tokens(policy, sampler, cond, uniforms, given=None):
    """The sampling rule restated without a cache: a full causal forward per token."""
    spec = sampler.logprob_spec()
    t, b = policy.num_actions, len(cond)
    use_cfg = spec.cfg_scale != 1.0
    guided = cfg_active_steps(spec.cfg_interval, t).tolist()
    tokens = torch.zeros(b, 0, dtype=torch.long) if given is None else given
    with torch.no_grad():
        for i in range(tokens.shape[1], t):
            logits = policy.teacher_forced_logits(cond, tokens, with_null=use_cfg)[:, -1]
            z = logits[:b] / spec.temperature
            if use_cfg and guided[i]:
                z = cfg_mix(logits[:b], logits[b:], spec.cfg_scale).div_(spec.temperature)
            keep = truncation_keep_mask(z, spec.top_k, spec.top_p)
            if keep is not None:
                z = z.masked_fill(~keep, float('-inf'))
            tok = inverse_cdf_sample(torch.softmax(z, -1), uniforms[:, i:i + 1])
            tokens = torch.cat([tokens, tok], dim=1)
    return tokens


@pytest.mark.parametrize('settings', SETTINGS, ids=['plain', 'cfg-topk-topp', 'cfg-interval'])
def test_ar_sampler_drives_a_toy_raster_model_as_an_uncached_loop(settings):
    policy = toy_policy()
    sampler = ARSampler(**settings)
    cond = Conditions(class_ids=torch.tensor([1, 3]))
    roll = sampler.rollout(policy, cond, group_size=3, rng=BatchRNG(7, 1, 6))
    assert roll.actions.shape == (6, policy.num_actions) and roll.images.shape == (6, 3, 3, 3)
    assert torch.equal(roll.group_ids, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert policy.training                                    # the template restores the mode
    uniforms = BatchRNG(7, 1, 6).rand(policy.num_actions)     # the draws the sampler used
    cond_rep = cond.repeat_interleave(3)
    assert torch.equal(roll.actions, naive_tokens(policy, sampler, cond_rep, uniforms))
    ev = policy.evaluate(roll, spec=sampler.logprob_spec())
    torch.testing.assert_close(roll.logp_old, ev.logp.detach(), atol=2e-5, rtol=0)


def test_prefix_completion_of_the_toy_model():
    policy = toy_policy()
    sampler = ARSampler(**SETTINGS[1], decode_images=False)
    cond = Conditions(class_ids=torch.tensor([0, 2]))
    first = sampler.rollout(policy, cond, group_size=2, rng=BatchRNG(3, 0, 4))
    done = sampler.rollout(policy, first.cond, group_size=2, prefix=first, stop_at_step=4,
                           rng=BatchRNG(3, 1, 8))
    kept = first.actions.repeat_interleave(2, dim=0)[:, :4]
    assert done.prefix_steps == 4 and torch.equal(done.actions[:, :4], kept)
    assert not done.action_mask[:, :4].any() and done.action_mask[:, 4:].all()
    assert torch.equal(done.group_ids, torch.arange(4).repeat_interleave(2))
    uniforms = BatchRNG(3, 1, 8).rand(policy.num_actions)
    assert torch.equal(done.actions, naive_tokens(policy, sampler, done.cond, uniforms, kept))
    ev = policy.evaluate(done, spec=sampler.logprob_spec())
    torch.testing.assert_close(done.logp_old, ev.logp.detach(), atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match='tokens to keep'):
        sampler.rollout(policy, first.cond, group_size=2, prefix=first, stop_at_step=9)


def sampler():
    return ARSampler(**SETTINGS[0])


def test_check_policy_accepts_a_raster_policy_and_names_missing_members():
    sampler().check_policy(toy_policy())
    with pytest.raises(ValueError) as err:
        sampler().check_policy(ToyPolicy())
    msg = str(err.value)
    assert '\n' not in msg and 'ARSampler cannot drive ToyPolicy' in msg
    for name in ('prefill', 'decode_step', 'new_decoding_cache', 'rollout_axes'):
        assert name in msg
    with pytest.raises(ValueError, match='prefill'):
        sampler().rollout(ToyPolicy(), Conditions(class_ids=torch.tensor([0])), group_size=2)


def test_check_policy_refuses_a_var_policy_and_suggests_its_sampler():
    from vargo.components.policies.var import VARPolicy
    from vargo.components.samplers import NextScaleSampler
    torch.manual_seed(0)
    policy = VARPolicy(arch=dict(depth=2, embed_dim=64, num_heads=4, drop_path_rate=0.0),
                       patch_nums=(1, 2, 4, 8), num_classes=10, vocab_size=64,
                       tokenizer=dict(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2, 2),
                                      num_res_blocks=1, norm_groups=4))
    missing = missing_members(policy, RasterDecoding)
    assert missing
    with pytest.raises(ValueError) as err:
        sampler().check_policy(policy)
    msg = str(err.value)
    assert 'ARSampler cannot drive VARPolicy' in msg and 'RasterDecoding' in msg
    assert all(name in msg for name in missing)
    if hasattr(NextScaleSampler, 'protocol'):
        assert 'use NextScaleSampler' in msg
