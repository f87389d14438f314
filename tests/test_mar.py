"""MAR policy, diffusion math and masked sampler (components/policies/mar/, modules/diffusion.py,
modules/masked.py, samplers/masked.py).

Parity with the official LTH14/mar code is measured in-session (see the module doc of
``vargo.components.policies.mar``); these tests pin the invariants and hand-derived numbers.
"""
import math

import numpy as np
import pytest
import torch

from vargo.components.policies.mar import (MAR_ARCHS, CheckpointKeyError, DiffusionSchedule,
                                           MARConfig, MARPolicy, MARSelection, MARTransformer,
                                           cfg_scales, gaussian_transition_logp, mask_schedule,
                                           space_timesteps)
from vargo.components.samplers.masked import MaskedSampler
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, LogprobSpec

D_TOK = 16
TINY_ARCH = dict(embed_dim=32, depth=1, num_heads=2, diffloss_d=1, diffloss_w=32)
TINY_VAE = dict(ch=16, ch_mult=(1, 1, 1, 2), resolution=32, enc_attn_resolutions=(),
                num_groups=8)


def _policy(seed=0, **kw):
    torch.manual_seed(seed)
    pol = MARPolicy(arch=TINY_ARCH, image_size=32, num_classes=5, buffer_size=2,
                    tokenizer=TINY_VAE, **kw)
    with torch.no_grad():        # the official init zeros the head's AdaLN and output layers
        for p in pol.mar.diffloss.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return pol


@pytest.fixture(scope='module')
def policy():
    return _policy()


def _sampler(cfg=1.0, mode='rollout', **kw):
    args = dict(num_iter=4, num_sampling_steps=5, cfg_scale=cfg, cfg_schedule='linear',
                temperature=0.9, logprob_cfg=mode, decode_images=False)
    args.update(kw)
    return MaskedSampler(**args)


COND = Conditions(class_ids=torch.tensor([1, 3]))
# The random tiny head does not predict the noise, so its chains leave the data range (latents
# ~1e5 after the first x0 = x_T / sqrt(abar_T) step) while the last transitions' s_t is small:
# float32 cancellation in (x_{t-1} - mu) / s then reaches ~1e-3 nats between two computations
# of mu in differently shaped batches. Same code on realistic ranges agrees to ~1e-5.
LOGP_ATOL = 1e-2


def _rollout(policy, sampler, seed=0, g=2):
    rng = BatchRNG(seed, 0, len(COND) * g, rank=0, world_size=1)
    return sampler.rollout(policy, COND, group_size=g, rng=rng)


# ---- Gaussian transition log-prob ----------------------------------------------------------------

def test_gaussian_transition_logp_equals_normal_by_hand():
    torch.manual_seed(0)
    x, mu, lv = torch.randn(7, 16), torch.randn(7, 16), torch.randn(7, 16) * 0.3 - 2
    for tau in (1.0, 0.7):
        ref = torch.distributions.Normal(mu, torch.exp(0.5 * lv) * tau).log_prob(x).sum(-1)
        torch.testing.assert_close(gaussian_transition_logp(x, mu, lv, tau), ref)
    # one channel by hand: -(x-mu)^2/(2 s^2) - log s - log(2 pi)/2
    s = math.exp(0.5 * -1.0) * 0.5
    want = -(0.3 - 0.1) ** 2 / (2 * s * s) - math.log(s) - 0.5 * math.log(2 * math.pi)
    got = gaussian_transition_logp(torch.tensor([[0.3]]), torch.tensor([[0.1]]),
                                   torch.tensor([[-1.0]]), 0.5)
    assert abs(got.item() - want) < 1e-5


# ---- diffusion schedule and mask schedule --------------------------------------------------------

def test_space_timesteps_and_schedule():
    assert sorted(space_timesteps(1000, '10')) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert len(space_timesteps(1000, 100)) == 100 and len(space_timesteps(1000, 'ddim25')) == 25
    s = DiffusionSchedule(25)
    assert s.num_timesteps == 25 and s.timestep_map[0] == 0 and s.timestep_map[-1] == 999
    # the learned-range variance interpolates between the clipped posterior and beta (v = +-1)
    x, eps = torch.zeros(1, 4), torch.zeros(1, 4)
    for v, name in ((-1.0, 'posterior_log_variance_clipped'), (1.0, 'log_betas')):
        out = s.p_mean_variance(torch.cat([eps, torch.full((1, 4), v)], 1), x, torch.tensor([5]))
        assert torch.allclose(out['log_variance'], s.coef(name, 'cpu')[5].expand(1, 4))


def _official_respaced(n):
    """The official rule written out independently: 1000 cosine betas (``betas_for_alpha_bar``,
    max 0.999); ``space_timesteps`` with one section keeps ``round(i * 999 / (n - 1))``
    (a float accumulator, rounded half-to-even); the kept steps get ``beta = 1 - abar_i /
    abar_prev_kept``; then ``GaussianDiffusion.__init__``'s coefficients."""
    def abar_fn(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    abar, acc = [], 1.0
    for i in range(1000):
        acc *= 1 - min(1 - abar_fn((i + 1) / 1000) / abar_fn(i / 1000), 0.999)
        abar.append(acc)
    keep, cur = [], 0.0
    for _ in range(n):
        keep.append(round(cur))
        cur += 999 / (n - 1)
    betas, last = [], 1.0
    for i in keep:
        betas.append(1 - abar[i] / last)
        last = abar[i]
    b = np.array(betas)
    ac = np.cumprod(1 - b)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = b * (1 - ac_prev) / (1 - ac)
    return keep, {
        'betas': b, 'log_betas': np.log(b), 'alphas_cumprod': ac,
        'sqrt_alphas_cumprod': np.sqrt(ac), 'sqrt_one_minus_alphas_cumprod': np.sqrt(1 - ac),
        'sqrt_recip_alphas_cumprod': np.sqrt(1 / ac),
        'sqrt_recipm1_alphas_cumprod': np.sqrt(1 / ac - 1), 'posterior_variance': post_var,
        'posterior_log_variance_clipped': np.log(np.append(post_var[1], post_var[1:])),
        'posterior_mean_coef1': b * np.sqrt(ac_prev) / (1 - ac),
        'posterior_mean_coef2': (1 - ac_prev) * np.sqrt(1 - b) / (1 - ac)}


@pytest.mark.parametrize('n', [100, 25])
def test_respaced_coefficients_match_the_official_rule(n):
    keep, want = _official_respaced(n)
    s = DiffusionSchedule(n)
    assert s.timestep_map.tolist() == keep and sorted(space_timesteps(1000, str(n))) == keep
    assert set(s._np) == set(want)                  # every coefficient the schedule exposes
    for name, ref in want.items():
        np.testing.assert_allclose(s._np[name], ref, rtol=1e-12, atol=0, err_msg=name)
        assert torch.equal(s.coef(name, 'cpu'), torch.from_numpy(ref).float()), name
    # the respaced abar is the base abar at the kept steps
    np.testing.assert_allclose(s._np['alphas_cumprod'],
                               DiffusionSchedule(1000)._np['alphas_cumprod'][keep], rtol=1e-9,
                               atol=1e-12)


@pytest.mark.parametrize('n,steps', [(16, 1), (16, 4), (16, 7), (16, 16), (16, 20), (256, 64),
                                     (256, 256), (10, 3)])
def test_mask_schedule_commits_every_token_once(n, steps):
    rem, lens = mask_schedule(n, steps)
    counts = [rem[i] - rem[i + 1] for i in range(steps)]
    assert len(rem) == steps + 1 and len(lens) == steps
    assert sum(counts) == n and min(counts) >= 0 and counts[-1] >= 1


@pytest.mark.parametrize('steps', [1, 3, 4, 16, 20])
def test_sampled_commit_steps_follow_the_schedule(policy, steps):
    """In a sampled rollout every token is committed exactly once, at the step the schedule
    gives its place in the order, and gets a recorded chain."""
    r = _rollout(policy, _sampler(2.0, num_iter=steps, num_sampling_steps=2))
    n = policy.seq_len
    rem, _ = mask_schedule(n, steps)
    ex = r.extras
    assert torch.equal(ex.orders.sort(dim=1).values, torch.arange(n).expand(4, n))
    for i in range(steps):
        placed = ex.orders[:, rem[i + 1]:rem[i]]                     # committed at step i
        assert (ex.commit_step.gather(1, placed) == i).all()
        assert ((ex.commit_step == i).sum(1) == rem[i] - rem[i + 1]).all()
    assert ex.commit_step.min() >= 0 and ex.commit_step.max() <= steps - 1
    assert (r.actions.view(4, n, D_TOK).abs().sum(-1) > 0).all()    # K = 1 transition each
    assert (ex.z.abs().sum(-1) > 0).all() and (ex.z_uncond.abs().sum(-1) > 0).all()
    assert torch.equal(r.action_step, ex.commit_step)


def test_mask_schedule_matches_the_official_cosine_rule():
    rem, lens = mask_schedule(256, 64)
    assert rem[0] == 256 and rem[-1] == 0 and all(a >= b for a, b in zip(rem, rem[1:]))
    assert rem[1] == math.floor(256 * math.cos(math.pi / 2 / 64))
    assert lens[-1] == 1.0
    w = cfg_scales(3.0, 'linear', 256, 64)
    assert w[0] == pytest.approx(1 + 2 * (256 - rem[1]) / 256) and w[-1] == pytest.approx(
        1 + 2 * 255 / 256)
    assert cfg_scales(3.0, 'constant', 256, 64) == [3.0] * 64
    with pytest.raises(ValueError, match="cfg_schedule='cosine'"):
        cfg_scales(3.0, 'cosine', 256, 64)


# ---- sizes and strict loading --------------------------------------------------------------------

@pytest.mark.parametrize('name,count', [('mar_base', 207_924_768), ('mar_large', 478_326_304),
                                        ('mar_huge', 942_403_104)])
def test_official_sizes_on_meta(name, count):
    with torch.device('meta'):
        m = MARTransformer(MARConfig.from_arch(name))
    assert sum(p.numel() for p in m.parameters()) == count
    keys = m.state_dict()
    d = MAR_ARCHS[name]['depth']
    for k in ('class_emb.weight', 'fake_latent', 'z_proj_ln.weight', 'encoder_pos_embed_learned',
              f'encoder_blocks.{d - 1}.attn.qkv.bias', 'mask_token', 'diffusion_pos_embed_learned',
              'diffloss.net.final_layer.adaLN_modulation.1.weight',
              'diffloss.net.time_embed.mlp.2.bias'):
        assert k in keys, k
    assert keys['encoder_pos_embed_learned'].shape == (1, 256 + 64, MAR_ARCHS[name]['embed_dim'])


def test_strict_loading_of_official_files(tmp_path, policy):
    sd = {k: v.clone() for k, v in policy.mar.state_dict().items()}
    ema = {k: v + 1 for k, v in sd.items()}
    path = tmp_path / 'mar_tiny.pth'
    torch.save({'model': sd, 'model_ema': ema, 'epoch': 3}, path)
    for key, ref in (('model', sd), ('model_ema', ema)):
        p = MARPolicy(arch=TINY_ARCH, image_size=32, num_classes=5, buffer_size=2,
                      tokenizer=TINY_VAE, checkpoint=str(path), checkpoint_key=key)
        assert torch.equal(p.mar.fake_latent, ref['fake_latent'])
    assert not any(k.startswith('vae.') for k in policy.state_dict())
    bad = dict(sd)
    bad['class_emb.weights'] = bad.pop('class_emb.weight')
    torch.save({'model_ema': bad}, path)
    with pytest.raises(CheckpointKeyError, match=r"class_emb\.weights"):
        MARPolicy(arch=TINY_ARCH, image_size=32, num_classes=5, buffer_size=2,
                  tokenizer=TINY_VAE, checkpoint=str(path))
    with pytest.raises(FileNotFoundError, match='dropbox'):
        MARPolicy(arch=TINY_ARCH, image_size=32, num_classes=5, buffer_size=2,
                  tokenizer=TINY_VAE, checkpoint=str(tmp_path / 'mar_base.pth'))
    with pytest.raises(ValueError, match="checkpoint_key='ema'"):
        MARPolicy(arch=TINY_ARCH, image_size=32, checkpoint_key='ema')


# ---- rollout log-probs == evaluation -------------------------------------------------------------

@pytest.mark.parametrize('cfg,mode', [(1.0, 'rollout'), (2.5, 'rollout'), (2.5, 'none')])
def test_rollout_logp_equals_evaluation(policy, cfg, mode):
    sampler = _sampler(cfg, mode)
    r = _rollout(policy, sampler)
    b, n, kk = 4, policy.seq_len, 4
    assert r.actions.shape == (b, n * kk, 16) and r.logp_old.shape == (b, n * kk)
    assert torch.isfinite(r.logp_old).all()
    # the committed tokens are the chains' deterministic last step: recorded actions chain up
    xt = r.extras.x_t.view(b, n, kk, 16)
    act = r.actions.view(b, n, kk, 16)
    assert torch.equal(xt[:, :, 1:], act[:, :, :-1])
    spec = sampler.logprob_spec()
    with torch.no_grad():
        full = policy.evaluate(r, spec=spec)
    assert full.extras['evaluated'].all()
    torch.testing.assert_close(full.logp, r.logp_old, atol=LOGP_ATOL, rtol=1e-4)
    sel = MARSelection(ar_steps=[0, 2], diffusion_steps=[1, 3])
    with torch.no_grad():
        part = policy.evaluate(r, spec=spec, select=sel)
    ev = part.extras['evaluated'].view(b, n, kk)
    want = (torch.isin(r.extras.commit_step, torch.tensor([0, 2])).unsqueeze(-1)
            & torch.isin(torch.arange(kk), torch.tensor([1, 3])))
    assert torch.equal(ev, want)
    torch.testing.assert_close(part.logp, full.logp, atol=LOGP_ATOL, rtol=1e-4)
    assert (part.extras['mean'].view(b, n, kk, 16)[~ev] == 0).all()


def test_logp_none_differs_from_rollout_under_cfg(policy):
    r1 = _rollout(policy, _sampler(2.5, 'rollout'))
    r2 = _rollout(policy, _sampler(2.5, 'none'))
    assert torch.equal(r1.actions, r2.actions)                # same draws, other spec
    assert (r1.logp_old - r2.logp_old).abs().max() > 1e-3


# ---- gradients and fix_head ----------------------------------------------------------------

@pytest.mark.parametrize('fix_head', [True, False])
def test_gradients_reach_the_transformer_through_z(fix_head):
    pol = _policy(fix_head=fix_head)
    sampler = _sampler(2.0, 'rollout')
    r = _rollout(pol, sampler)
    pol.train()
    ev = pol.evaluate(r, spec=sampler.logprob_spec(),
                      select=MARSelection(ar_steps=[1], diffusion_steps=[0, 2]))
    (ev.logp.sum() + ev.extras['mean'].square().sum()).backward()
    head = list(pol.mar.diffloss.parameters())
    body = [p for n, p in pol.mar.named_parameters() if not n.startswith('diffloss.')]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in
               (pol.mar.z_proj.weight, pol.mar.encoder_blocks[0].attn.qkv.weight,
                pol.mar.decoder_blocks[0].mlp.fc2.weight, pol.mar.fake_latent))
    assert sum(p.grad.abs().sum() for p in body if p.grad is not None) > 0
    if fix_head:
        assert all(p.grad is None for p in head)
        assert all(not p.requires_grad for p in head)
        assert len(pol.trainable_parameters()) == len(body)
    else:
        assert pol.mar.diffloss.net.input_proj.weight.grad.abs().sum() > 0
    # actions outside the selection carry logp_old without gradient
    assert torch.equal(ev.logp[~ev.extras['evaluated']].detach(),
                       r.logp_old[~ev.extras['evaluated']])



# ---- the log-prob's variance: recomputed (default) or the rollout's (official MAR-GRPO) ----------

def _move_variance_output(pol):
    """Change only the head's variance output ``v`` (rows ``D:`` of its output layer): the means
    stay, the recomputed learned-range variances do not (an off-policy update of the variance)."""
    lin = pol.mar.head.final_layer.linear
    with torch.no_grad():
        lin.weight[D_TOK:] += torch.randn_like(lin.weight[D_TOK:]) * 0.5
        lin.bias[D_TOK:] += 0.3


def _by_hand(x, mu, log_variance, tau):
    """sum_d log N(x; mu, (exp(log_variance / 2) tau)^2), written out."""
    s = torch.exp(0.5 * log_variance) * tau
    return (-(x - mu) ** 2 / (2 * s ** 2) - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_logprob_sigma_setting():
    assert _policy().logprob_sigma == 'recomputed'          # vargo's numbers by default
    with pytest.raises(ValueError, match='logprob_sigma'):
        _policy(logprob_sigma='rollout')
    pol = _policy(logprob_sigma='stored')
    sampler = _sampler()
    r = _rollout(pol, sampler)
    assert r.extras.log_variance.shape == (4, pol.seq_len * 4, D_TOK)
    r.extras.log_variance = None
    with pytest.raises(ValueError, match='log_variance'):
        pol.evaluate(r, spec=sampler.logprob_spec())


@pytest.mark.parametrize('cfg,mode', [(1.0, 'rollout'), (2.5, 'rollout'), (2.5, 'none')])
def test_stored_sigma_logp_is_the_gaussian_under_the_rollouts_variance(cfg, mode):
    """Official MAR-GRPO (Harmon port, ``harmon_single_denoise_with_logp`` ->
    ``gaussdiffusion_training``): ``log N(x_prev; mean_theta, std_dev_t^2)`` with the rollout's
    ``std_dev_t`` (``samples["out_std_dev_t"]``, the sampler's ``exp(log_variance / 2) * tau``)."""
    pol = _policy(logprob_sigma='stored')
    sampler = _sampler(cfg, mode)
    spec = sampler.logprob_spec()
    r = _rollout(pol, sampler)
    with torch.no_grad():                                     # on-policy: the sampler's logp
        torch.testing.assert_close(pol.evaluate(r, spec=spec).logp, r.logp_old,
                                   atol=LOGP_ATOL, rtol=1e-4)
    _move_variance_output(pol)
    with torch.no_grad():
        stored = pol.evaluate(r, spec=spec)
        pol.logprob_sigma = 'recomputed'
        recomputed = pol.evaluate(r, spec=spec)
    assert stored.extras['evaluated'].all()
    assert torch.equal(stored.extras['mean'], recomputed.extras['mean'])
    want = _by_hand(r.actions, stored.extras['mean'], r.extras.log_variance, spec.temperature)
    torch.testing.assert_close(stored.logp, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stored.logp, r.logp_old, atol=LOGP_ATOL, rtol=1e-4)
    assert (recomputed.logp - stored.logp).abs().max() > 1.0  # the moved variance counts there
    log_s = 0.5 * r.extras.log_variance + math.log(spec.temperature)
    torch.testing.assert_close(stored.entropy,
                               (log_s + 0.5 * (1 + math.log(2 * math.pi))).sum(-1))


@pytest.mark.parametrize('cfg,mode', [(1.0, 'rollout'), (2.5, 'rollout'), (2.5, 'none')])
def test_stored_sigma_gives_no_gradient_through_the_variance(cfg, mode):
    pol = _policy(logprob_sigma='stored')
    sampler = _sampler(cfg, mode)
    spec = sampler.logprob_spec()
    r = _rollout(pol, sampler)
    _move_variance_output(pol)             # off-policy: recomputed and stored variances differ
    pol.train()
    names, params = zip(*[(n, p) for n, p in pol.mar.named_parameters() if p.requires_grad])
    sel = MARSelection(ar_steps=[0, 1, 3], diffusion_steps=[0, 2, 3])

    def grads(loss):
        return dict(zip(names, torch.autograd.grad(loss, params, allow_unused=True)))

    ev = pol.evaluate(r, spec=spec, select=sel)
    stored = grads(ev.logp.sum())
    w, b = 'diffloss.net.final_layer.linear.weight', 'diffloss.net.final_layer.linear.bias'
    assert torch.equal(stored[w][D_TOK:], torch.zeros_like(stored[w][D_TOK:]))   # v rows: 0
    assert torch.equal(stored[b][D_TOK:], torch.zeros_like(stored[b][D_TOK:]))
    assert stored[w][:D_TOK].abs().sum() > 0 and stored['z_proj.weight'].abs().sum() > 0
    # only the mean gets gradients: the same as the hand-written density of the evaluated
    # actions with the graph's mean and the stored (constant) variance
    ev2 = pol.evaluate(r, spec=spec, select=sel)
    m = ev2.extras['evaluated']
    hand = _by_hand(r.actions, ev2.extras['mean'], r.extras.log_variance, spec.temperature)
    by_hand = grads(hand[m].sum())
    for n in names:
        if stored[n] is None:
            assert by_hand[n] is None, n
        else:
            scale = stored[n].abs().max().item() + 1e-12
            torch.testing.assert_close(stored[n] / scale, by_hand[n] / scale, rtol=1e-4,
                                       atol=1e-5, msg=n)
    pol.logprob_sigma = 'recomputed'       # today's behaviour: the variance gets gradients
    recomputed = grads(pol.evaluate(r, spec=spec, select=sel).logp.sum())
    assert recomputed[w][D_TOK:].abs().sum() > 0 and recomputed[b][D_TOK:].abs().sum() > 0


def test_stored_sigma_of_prefix_completions_and_extra_chains():
    pol = _policy(logprob_sigma='stored')
    sampler = _sampler(2.0, 'rollout')
    spec = sampler.logprob_spec()
    r = _rollout(pol, sampler)
    _move_variance_output(pol)
    # a completion keeps the prefix's first AR steps: their logp_old and variances are
    # recomputed under the current policy, the other tokens are drawn by it
    r2 = sampler.rollout(pol, r.cond, group_size=1, prefix=r, stop_at_step=2)
    chains = sampler.extra_chains(pol, r, num_chains=2,
                                  rng=BatchRNG(1, 9, 4, rank=0, world_size=1))
    assert chains.log_variance.shape == (4, 2, pol.seq_len * 4, D_TOK)
    with torch.no_grad():
        for ro in (r2, chains.as_rollout(r, 1)):
            torch.testing.assert_close(pol.evaluate(ro, spec=spec).logp, ro.logp_old,
                                       atol=LOGP_ATOL, rtol=1e-4)
    assert torch.equal(chains.as_rollout(r, 1).extras.log_variance, chains.log_variance[:, 1])


def test_flow_head_variance_is_a_constant_so_both_settings_agree():
    pol = _policy(head_type='flow')
    sampler = _sampler(2.0, 'rollout', head_sampler='flow_sde')
    r = _rollout(pol, sampler)
    out = {}
    for how in ('recomputed', 'stored'):
        pol.logprob_sigma = how
        pol.zero_grad()
        ev = pol.evaluate(r, spec=sampler.logprob_spec(),
                          select=MARSelection(ar_steps=[1, 2], diffusion_steps=[0, 3]))
        ev.logp.sum().backward()
        out[how] = (ev.logp.detach(), ev.entropy,
                    [p.grad.clone() for p in pol.trainable_parameters() if p.grad is not None])
    assert torch.equal(out['recomputed'][0], out['stored'][0])
    assert torch.equal(out['recomputed'][1], out['stored'][1])
    assert all(torch.equal(a, b) for a, b in zip(out['recomputed'][2], out['stored'][2]))


def test_paper_config_scores_with_the_stored_sigma():
    import os

    from mmengine.config import Config
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    got = {name: Config.fromfile(os.path.join(root, 'configs', 'grpo', name)).policy.get(
        'logprob_sigma', 'recomputed')
        for name in ('mar-b_grpo_c2i.py', 'mar_grpo_shapes.py', 'mar-tiny_grpo_jpeg.py')}
    assert got == {'mar-b_grpo_c2i.py': 'stored', 'mar_grpo_shapes.py': 'recomputed',
                   'mar-tiny_grpo_jpeg.py': 'recomputed'}


# ---- noise, ranks, extra chains -------------------------------------------------------------

def test_masked_sampler_drives_the_policy_only_through_its_protocol(policy):
    """MARPolicy implements MaskedDecoding; a policy lacking members fails the build-time check
    in one line naming them, before the head-type check."""
    from vargo.components.samplers.base import missing_members
    from vargo.components.samplers.masked import MaskedDecoding
    assert missing_members(policy, MaskedDecoding) == []
    assert policy.latent_dim == policy.cfg.decoder_embed_dim
    emb = policy.class_embedding(COND)
    assert torch.equal(emb, policy.mar.class_embedding(COND.class_ids))
    assert torch.equal(policy.null_class_embedding(2), policy.mar.fake_latent.expand(2, -1))

    class Partial(torch.nn.Module):
        seq_len, token_dim, device = policy.seq_len, policy.token_dim, policy.device
        encode_conditions = policy.encode_conditions

    lacks = r'MaskedSampler cannot drive Partial: it lacks the MaskedDecoding decoding protocol'
    with pytest.raises(ValueError, match=lacks + r' \(class_embedding, ') as e:
        _sampler().check_policy(Partial())
    assert '\n' not in str(e.value) and 'latent_dim' in str(e.value)
    with pytest.raises(ValueError, match='cannot drive Partial'):
        _sampler().rollout(Partial(), COND, group_size=1)


def test_sampling_noise_is_rank_invariant(policy):
    sampler = _sampler(2.0, 'rollout')
    cond = Conditions(class_ids=torch.tensor([0, 1, 2, 4]))
    whole = sampler.rollout(policy, cond, group_size=1,
                            rng=BatchRNG(5, 3, 4, rank=0, world_size=1))
    for rank in (0, 1):
        part = sampler.rollout(policy, cond.index(torch.arange(2 * rank, 2 * rank + 2)),
                               group_size=1, rng=BatchRNG(5, 3, 2, rank=rank, world_size=2))
        rows = slice(2 * rank, 2 * rank + 2)
        assert torch.equal(part.extras.orders, whole.extras.orders[rows])
        torch.testing.assert_close(part.extras.tokens, whole.extras.tokens[rows], rtol=1e-4,
                                   atol=1e-4)
        torch.testing.assert_close(part.logp_old, whole.logp_old[rows], rtol=1e-4, atol=LOGP_ATOL)


def test_extra_chains_shapes_and_determinism(policy):
    sampler = _sampler(2.0, 'rollout')
    r = _rollout(policy, sampler)
    b, n, kk = 4, policy.seq_len, 4
    c1 = sampler.extra_chains(policy, r, num_chains=3, rng=BatchRNG(1, 9, b, rank=0, world_size=1))
    c2 = sampler.extra_chains(policy, r, num_chains=3, rng=BatchRNG(1, 9, b, rank=0, world_size=1))
    c3 = sampler.extra_chains(policy, r, num_chains=3, rng=BatchRNG(2, 9, b, rank=0, world_size=1))
    assert c1.x_t.shape == (b, 3, n * kk, 16) and c1.actions.shape == (b, 3, n * kk, 16)
    assert c1.logp_old.shape == (b, 3, n * kk) and c1.x0.shape == (b, 3, n, 16)
    assert torch.equal(c1.actions, c2.actions) and torch.equal(c1.logp_old, c2.logp_old)
    assert not torch.allclose(c1.x0, c3.x0)
    assert not torch.allclose(c1.x0[:, 0], c1.x0[:, 1])
    # an extra chain evaluates like a rollout chain (same commit-step latents, same guidance)
    with torch.no_grad():
        ev = policy.evaluate(c1.as_rollout(r, 2), spec=sampler.logprob_spec(),
                             select=MARSelection(ar_steps=[0, 3], diffusion_steps=[0, 3]))
    m = ev.extras['evaluated']
    torch.testing.assert_close(ev.logp[m], c1.logp_old[:, 2][m], atol=LOGP_ATOL, rtol=1e-4)


def test_predictions_of_every_step(policy):
    sampler = _sampler(1.0, 'rollout', record_predictions=True)
    r = _rollout(policy, sampler)
    ex = r.extras
    assert ex.x0_pred.shape == (4, 4, policy.seq_len, 16)
    assert torch.equal(ex.x0_pred[:, -1], ex.tokens)       # last step: every token's final value
    for i in range(4):
        done = ex.commit_step <= i                            # committed by the end of step i
        assert torch.equal(ex.x0_pred[:, i][done], ex.tokens[done])
    with torch.no_grad():
        ev = policy.evaluate(r, spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp, r.logp_old, atol=LOGP_ATOL, rtol=1e-4)


def test_selection_sampling_and_minibatch_index(policy):
    r = _rollout(policy, _sampler())
    sel = MARSelection.sample(r.extras, 2, 3, torch.Generator().manual_seed(0))
    assert len(sel.ar_steps) == 2 and len(sel.diffusion_steps) == 3
    sub = r.index(torch.tensor([1, 3]))
    assert sub.extras.z.shape[0] == 2 and sub.action_step.shape == (2, r.num_actions)
    with torch.no_grad():
        ev = policy.evaluate(sub, spec=LogprobSpec(mode='rollout', temperature=0.9), select=sel)
    assert ev.logp.shape == (2, r.num_actions)
    assert policy.decode(sub).shape == (2, 3, 32, 32)
