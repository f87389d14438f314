"""MAR flow head with Flow-GRPO's SDE head sampler, and partial (prefix) MAR rollouts.

The SDE step is checked against a hand computation of ``sde_step_with_logprob`` of
yifan123/flow_grpo (the formula in :class:`~vargo.components.modules.diffusion.FlowSDESchedule`);
partial rollouts follow the ARSampler / NextScaleSampler semantics (``prefix=``, ``stop_at_step``).
"""
import math

import pytest
import torch

from test_mar import COND, LOGP_ATOL, _policy, _rollout, _sampler
from vargo.components.policies.mar import FlowSDESchedule, MARConfig, MARSelection
from vargo.components.samplers.masked import MaskedSampler
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions

D = 16


@pytest.fixture(scope='module')
def flow_policy():
    return _policy(head_type='flow')


@pytest.fixture(scope='module')
def ddpm_policy():
    return _policy()


def _flow_sampler(cfg=1.0, mode='rollout', **kw):
    return _sampler(cfg, mode, head_sampler='flow_sde', **kw)


# ---- the flow head and its SDE step -------------------------------------------------------------

def _flow_grpo_step(x, v, sigma, sigma_prev, sigma_max, a):
    """Flow-GRPO's ``sde_step_with_logprob`` ('sde' type), written out for one step."""
    dt = sigma_prev - sigma
    std_dev_t = a * math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma)))
    mean = x * (1 + std_dev_t ** 2 / (2 * sigma) * dt) + v * (
        1 + std_dev_t ** 2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, std_dev_t * math.sqrt(-dt)


@pytest.mark.parametrize('t', [9, 5, 1])
def test_sde_step_equals_flow_grpo_formula(t):
    big_t, a = 10, 0.7
    sched = FlowSDESchedule(big_t, a)
    torch.manual_seed(t)
    x, v = torch.randn(3, D, dtype=torch.float64), torch.randn(3, D, dtype=torch.float64)
    out = sched.p_mean_variance(v.float(), x.float(), torch.full((3,), t))
    s, s_prev = (t + 1) / big_t, t / big_t
    mean, std = _flow_grpo_step(x, v, s, s_prev, 1 - 1 / big_t, a)
    torch.testing.assert_close(out['mean'], mean.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out['log_variance'], torch.full((3, D), 2 * math.log(std)),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out['pred_xstart'], (x - s * v).float())
    assert sched.head_time(torch.tensor([t]), 'cpu').item() == pytest.approx(1000 * s)
    # the last step (t = 0) is the deterministic Euler step to s = 0
    last = sched.p_mean_variance(v.float(), x.float(), torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(last['mean'], (x - v / big_t).float())


def test_sampler_draws_the_sde_step_with_its_noise(flow_policy):
    """x_T is the first noise block; each transition is mean + std * tau * n_k (BatchRNG layout:
    orders from rand(N), then randn(N, T, D)); CFG mixes the velocity."""
    tau, w = 0.9, 2.5
    sampler = _flow_sampler(w, 'rollout', cfg_schedule='constant', sde_noise_level=0.5)
    r = _rollout(flow_policy, sampler, seed=4)
    rng = BatchRNG(4, 0, 4, rank=0, world_size=1)
    rng.rand(flow_policy.seq_len)
    noise = rng.randn(flow_policy.seq_len, 5, D)                          # [B, N, T, D]
    ex = r.extras
    x_t = ex.x_t.view(4, -1, 4, D)
    act = r.actions.view(4, -1, 4, D)
    assert torch.equal(x_t[:, :, 0], noise[:, :, 0])
    net = flow_policy.mar.head
    b, j, k = 1, 3, 2                                                      # one transition
    t = 4 - k
    s = (t + 1) / 5
    with torch.no_grad():
        tt = torch.tensor([1000.0 * s])
        v_c = net(x_t[b, j, k][None], tt, ex.z[b, j][None])
        v_u = net(x_t[b, j, k][None], tt, ex.z_uncond[b, j][None])
    v = (v_u + w * (v_c - v_u)).double()
    mean, std = _flow_grpo_step(x_t[b, j, k].double(), v[0], s, t / 5, 0.8, 0.5)
    want = mean + std * tau * noise[b, j, k + 1].double()
    torch.testing.assert_close(act[b, j, k].double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('cfg,mode', [(1.0, 'rollout'), (2.5, 'rollout'), (2.5, 'none')])
def test_flow_sde_logp_recomputed_by_evaluate(flow_policy, cfg, mode):
    sampler = _flow_sampler(cfg, mode, temperature=0.8)
    r = _rollout(flow_policy, sampler)
    assert r.extras.head_sampler == 'flow_sde' and r.extras.sde_noise_level == 0.7
    assert torch.isfinite(r.logp_old).all() and torch.isfinite(r.extras.tokens).all()
    spec = sampler.logprob_spec()
    with torch.no_grad():
        full = flow_policy.evaluate(r, spec=spec)
        part = flow_policy.evaluate(r, spec=spec,
                                    select=MARSelection(ar_steps=[1, 3], diffusion_steps=[0, 2]))
    assert full.extras['evaluated'].all()
    torch.testing.assert_close(full.logp, r.logp_old, atol=1e-4, rtol=1e-5)
    m = part.extras['evaluated']
    torch.testing.assert_close(part.logp[m], r.logp_old[m], atol=1e-4, rtol=1e-5)
    # the entropy is the Gaussian's: sum_d (log(std tau) + (1 + log 2 pi) / 2)
    std = FlowSDESchedule(5, 0.7).coef('std', 'cpu')
    k = torch.arange(4).repeat(flow_policy.seq_len)
    want = D * (torch.log(std[4 - k] * 0.8) + 0.5 * (1 + math.log(2 * math.pi)))
    torch.testing.assert_close(full.entropy, want.expand_as(full.entropy))
    if cfg != 1.0:        # the guided and the conditional mean differ: 'none' scores another mean
        other = 'none' if mode == 'rollout' else 'rollout'
        with torch.no_grad():
            ev = flow_policy.evaluate(r, spec=_flow_sampler(cfg, other,
                                                            temperature=0.8).logprob_spec())
        assert (ev.logp - r.logp_old).abs().max() > 1e-3


def test_flow_extra_chains_evaluate_like_the_rollout(flow_policy):
    sampler = _flow_sampler(2.0)
    r = _rollout(flow_policy, sampler)
    ch = sampler.extra_chains(flow_policy, r, num_chains=2,
                              rng=BatchRNG(3, 1, 4, rank=0, world_size=1))
    with torch.no_grad():
        ev = flow_policy.evaluate(ch.as_rollout(r, 1), spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp, ch.logp_old[:, 1], atol=1e-4, rtol=1e-5)


def test_flow_pretrain_loss_and_gradients():
    pol = _policy(head_type='flow')
    assert pol.mar.head.final_layer.linear.weight.shape == (D, 32)      # velocity only
    pol.train()
    torch.manual_seed(0)
    loss = pol.pretrain_loss(torch.randn(3, pol.seq_len, D),
                             Conditions(class_ids=torch.tensor([0, 2, 4])))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    for p in (pol.mar.head.input_proj.weight, pol.mar.head.final_layer.linear.weight,
              pol.mar.head.res_blocks[0].mlp[0].weight, pol.mar.z_proj.weight,
              pol.mar.encoder_blocks[0].attn.qkv.weight, pol.mar.decoder_blocks[0].mlp.fc2.weight,
              pol.mar.diffusion_pos_embed_learned):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize('lo,std', [(0.7, 0.25), (0.0, 1.0)])
def test_mask_ratio_is_the_truncated_normal(lo, std):
    """Draws lie in [min, 1] with the truncated normal's mean
    ``1 + std (phi(a) - phi(0)) / (Phi(0) - Phi(a))``, ``a = (min - 1) / std``."""
    pol = _policy(head_type='flow', mask_ratio_min=lo, mask_ratio_std=std)
    torch.manual_seed(0)
    r = torch.tensor([pol.draw_mask_ratio() for _ in range(4000)], dtype=torch.float64)
    assert lo <= float(r.min()) and float(r.max()) <= 1.0
    a = torch.tensor((lo - 1) / std, dtype=torch.float64)
    phi = lambda x: torch.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)      # noqa: E731
    mean = 1 + std * (phi(a) - phi(torch.tensor(0.0))) / (0.5 - torch.special.ndtr(a))
    assert abs(float(r.mean() - mean)) < 4 * float(r.std()) / math.sqrt(len(r))
    with pytest.raises(ValueError, match='mask_ratio_std'):
        _policy(head_type='flow', mask_ratio_std=0.0)


def test_flow_loss_is_the_velocity_mse(flow_policy):
    """A head that returns eps - x0 exactly has zero loss."""
    x0, z = torch.randn(5, D), torch.randn(5, 32)
    torch.manual_seed(1)
    s, noise = torch.rand(5), torch.randn(5, D)
    torch.manual_seed(1)
    head = flow_policy.mar.diffloss.net
    calls = {}

    class Exact(torch.nn.Module):
        def forward(self, x, t, c):
            calls['t'] = t
            return noise - x0

    flow_policy.mar.diffloss.net = Exact()
    try:
        assert flow_policy._flow_loss(x0, z).abs().max() == 0
    finally:
        flow_policy.mar.diffloss.net = head
    torch.testing.assert_close(calls['t'], 1000 * s)


def test_head_sampler_and_head_type_must_match(flow_policy, ddpm_policy):
    with pytest.raises(ValueError, match=r"head_sampler='flow_sde'.*head_type='ddpm'.*"
                                         r"head_sampler='ddpm'.*head_type='flow'"):
        _rollout(ddpm_policy, _flow_sampler())
    with pytest.raises(ValueError, match=r"head_sampler='ddpm'.*head_type='flow'.*"
                                         r"head_sampler='flow_sde'.*head_type='ddpm'"):
        _rollout(flow_policy, _sampler())
    with pytest.raises(ValueError, match="head_sampler='sde'"):
        _sampler(head_sampler='sde')
    with pytest.raises(ValueError, match="sde_noise_level=0.7 is a head_sampler='flow_sde'"):
        _sampler(sde_noise_level=0.7)
    with pytest.raises(ValueError, match='sde_noise_level=0.0 must be > 0'):
        _flow_sampler(sde_noise_level=0.0)
    with pytest.raises(ValueError, match="head_type='eps'"):
        MARConfig.from_arch('mar_base', head_type='eps')
    # a flow rollout is not evaluated by a DDPM policy (and the reverse)
    r = _rollout(flow_policy, _flow_sampler())
    with pytest.raises(ValueError, match="head_sampler='flow_sde'"):
        ddpm_policy.evaluate(r, spec=_flow_sampler().logprob_spec())


# ---- partial rollouts ---------------------------------------------------------------------------

def r_view(x, kk):
    """``[B, N K, D] -> [B, N, K, D]``."""
    return x.view(x.shape[0], -1, kk, x.shape[-1])


def _complete(policy, sampler, prefix, g=3, m=2, seed=7):
    rng = BatchRNG(seed, 0, prefix.batch_size * g, rank=0, world_size=1)
    return sampler.rollout(policy, prefix.cond, group_size=g, rng=rng, prefix=prefix,
                           stop_at_step=m)


@pytest.mark.parametrize('head,cfg,m', [('ddpm', 1.0, 2), ('ddpm', 2.5, 1), ('flow', 2.5, 3)])
def test_partial_rollout_keeps_the_prefix(ddpm_policy, flow_policy, head, cfg, m):
    policy = flow_policy if head == 'flow' else ddpm_policy
    sampler = _flow_sampler(cfg) if head == 'flow' else _sampler(cfg)
    full = _rollout(policy, sampler)                                    # 4 samples
    done = _complete(policy, sampler, full, g=3, m=m)
    b, n, kk = 12, policy.seq_len, 4
    rows = torch.arange(4).repeat_interleave(3)
    assert done.batch_size == b and done.prefix_steps == m
    assert torch.equal(done.group_ids, rows)
    assert torch.equal(done.cond.class_ids, full.cond.class_ids[rows])
    ex, fx = done.extras, full.extras
    assert torch.equal(ex.orders, fx.orders[rows])
    assert torch.equal(ex.commit_step, fx.commit_step[rows])
    kept = ex.commit_step < m                                           # [B, N]
    assert kept.any() and (~kept).any()
    assert torch.equal(ex.tokens[kept], fx.tokens[rows][kept])
    assert torch.equal(r_view(done.actions, kk)[kept], r_view(full.actions, kk)[rows][kept])
    assert torch.equal(r_view(ex.x_t, kk)[kept], r_view(fx.x_t, kk)[rows][kept])
    assert torch.equal(ex.z[kept], fx.z[rows][kept])
    # action_mask False exactly on the kept transitions; Rollout.steps() < prefix_steps there
    assert torch.equal(done.action_mask, ~kept.repeat_interleave(kk, dim=1))
    assert torch.equal(done.action_mask, done.steps() >= done.prefix_steps)
    # the resampled tokens differ within a group (fresh noise) and from the prefix
    t3 = ex.tokens.view(4, 3, n, D)
    free = ~kept.view(4, 3, n)[:, 0]
    assert not torch.allclose(t3[:, 0][free], t3[:, 1][free])
    # logp_old: kept transitions recomputed (= the prefix's under the same spec), the others
    # the sampler's; both equal the teacher-forced evaluation
    lp = done.logp_old.view(b, n, kk)
    torch.testing.assert_close(lp[kept], full.logp_old.view(4, n, kk)[rows][kept],
                               atol=LOGP_ATOL, rtol=1e-4)
    with torch.no_grad():
        ev = policy.evaluate(done, spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp, done.logp_old, atol=LOGP_ATOL, rtol=1e-4)


def test_partial_rollout_from_an_unguided_prefix_and_with_predictions(ddpm_policy):
    """A CFG completion of a prefix drawn without CFG recomputes the kept tokens' latents;
    record_predictions keeps the kept tokens' values in every later prediction."""
    full = _rollout(ddpm_policy, _sampler(1.0))
    assert full.extras.z_uncond is None
    sampler = _sampler(2.5, record_predictions=True)
    done = _complete(ddpm_policy, sampler, full, g=2, m=2)
    ex = done.extras
    kept = ex.commit_step < 2
    assert ex.z_uncond is not None and ex.z_uncond[kept].abs().sum() > 0
    torch.testing.assert_close(ex.z[kept], full.extras.z.repeat_interleave(2, 0)[kept],
                               atol=1e-5, rtol=1e-5)
    for i in range(4):
        done_i = ex.commit_step <= i
        assert torch.equal(ex.x0_pred[:, i][done_i], ex.tokens[done_i])
    with torch.no_grad():
        ev = ddpm_policy.evaluate(done, spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp, done.logp_old, atol=LOGP_ATOL, rtol=1e-4)


def test_partial_rollout_defaults_and_errors(ddpm_policy):
    sampler = _sampler(1.0)
    full = _rollout(ddpm_policy, sampler)
    with pytest.raises(ValueError, match=r'stop_at_step=0 must be in \(0, 4\)'):
        sampler.rollout(ddpm_policy, full.cond, group_size=2, prefix=full)   # prefix_steps 0
    done = _complete(ddpm_policy, sampler, full, g=2, m=3)
    again = sampler.rollout(ddpm_policy, done.cond, group_size=1, prefix=done,
                            rng=BatchRNG(1, 0, 8, rank=0, world_size=1))     # default: 3 kept
    assert again.prefix_steps == 3
    kept = again.extras.commit_step < 3
    assert torch.equal(again.extras.tokens[kept], done.extras.tokens[kept])
    for bad in (4, 0, -1):
        with pytest.raises(ValueError, match=rf'stop_at_step={bad} must be in \(0, 4\) AR steps'):
            sampler.rollout(ddpm_policy, full.cond, group_size=2, prefix=full, stop_at_step=bad)
    with pytest.raises(ValueError, match='cond has 2 rows but the prefix rollout has 4 samples: '
                                         'pass prefix.cond'):
        sampler.rollout(ddpm_policy, COND, group_size=2, prefix=full, stop_at_step=1)
    with pytest.raises(ValueError, match='needs prefix=<a Rollout>'):
        sampler.rollout(ddpm_policy, COND, group_size=2, stop_at_step=1)
    with pytest.raises(ValueError, match=r'\(num_iter, num_sampling_steps, head_sampler\) = '
                                         r"\(4, 5, 'ddpm'\) but this sampler \(5, 5, 'ddpm'\)"):
        _sampler(num_iter=5).rollout(ddpm_policy, full.cond, group_size=2, prefix=full,
                                     stop_at_step=1)
    with pytest.raises(ValueError, match='rng draws for 4 samples but the rollout has 8'):
        sampler.rollout(ddpm_policy, full.cond, group_size=2, prefix=full, stop_at_step=1,
                        rng=BatchRNG(0, 0, 4, rank=0, world_size=1))


def test_partial_rollout_is_rank_invariant(ddpm_policy):
    sampler = _sampler(2.0)
    full = _rollout(ddpm_policy, sampler)
    whole = sampler.rollout(ddpm_policy, full.cond, group_size=2, prefix=full, stop_at_step=2,
                            rng=BatchRNG(5, 1, 8, rank=0, world_size=1))
    for rank in (0, 1):
        part = full.index(torch.arange(2 * rank, 2 * rank + 2))
        got = sampler.rollout(ddpm_policy, part.cond, group_size=2, prefix=part, stop_at_step=2,
                              rng=BatchRNG(5, 1, 4, rank=rank, world_size=2))
        rows = slice(4 * rank, 4 * rank + 4)
        torch.testing.assert_close(got.extras.tokens, whole.extras.tokens[rows], rtol=1e-4,
                                   atol=1e-4)
        torch.testing.assert_close(got.logp_old, whole.logp_old[rows], rtol=1e-4,
                                   atol=LOGP_ATOL)


def test_flow_sampler_defaults():
    s = MaskedSampler(num_iter=4, num_sampling_steps=5, cfg_scale=1.0, cfg_schedule='linear',
                      temperature=1.0, logprob_cfg='rollout', head_sampler='flow_sde')
    assert s.sde_noise_level == 0.7 and s.num_steps == 4


# ---- FLOPs and tools/benchmark.py on MAR --------------------------------------------------------

@pytest.mark.parametrize('cfg', [1.0, 2.5])
def test_flops_per_sample_counts_the_evaluated_matmuls(ddpm_policy, cfg):
    """torch's FlopCounterMode counts the matmuls of evaluate but not the CPU attention kernel:
    the hand count minus its attention terms equals it, for all pairs and for a selection."""
    from torch.utils.flop_counter import FlopCounterMode

    from vargo.components.policies.mar import mask_schedule
    pol, c = ddpm_policy, ddpm_policy.cfg
    sampler = _sampler(cfg)
    r = _rollout(pol, sampler)
    rem, _ = mask_schedule(c.seq_len, 4)
    for sel in (None, MARSelection([1, 3], [0, 2])):
        r.extras.selection = sel
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            pol.evaluate(r, spec=sampler.logprob_spec())
        steps = range(4) if sel is None else sel.ar_steps
        attention = sum(4 * c.depth * (c.buffer_size + c.seq_len - rem[i]) ** 2 * c.embed_dim
                        + 4 * c.decoder_depth * (c.buffer_size + c.seq_len) ** 2
                        * c.decoder_embed_dim for i in steps if rem[i] > rem[i + 1])
        attention *= 2 if cfg != 1.0 else 1
        want = pol.flops_per_sample(sampler.logprob_spec(), r) - attention
        assert counter.get_total_flops() == want * r.batch_size


def test_benchmark_covers_mar(tmp_path, capsys):
    """tools/benchmark.py on the tiny MAR (a GRPO + JPEG config written here: configs/ has no full
    MAR job yet): tokens are committed tokens, transitions the head actions."""
    import json
    import os

    from conftest import ROOT
    base = os.path.join(ROOT, 'configs', '_base_')
    cfg = tmp_path / 'mar-tiny_grpo_jpeg.py'
    parts = ['policies/mar-tiny_c2i.py', 'rewards/jpeg.py', 'algorithms/grpo.py',
             'schedules/grpo_cpu_short.py', 'datasets/ten_classes.py', 'default_runtime.py']
    cfg.write_text('_base_ = ' + repr([os.path.join(base, p) for p in parts]) + '\n')
    from conftest import load_tool
    tool = load_tool('benchmark')
    out = tmp_path / 'bench.json'
    threads = torch.get_num_threads()
    try:
        argv = [str(cfg), '--batch', '4', '--repeat', '1', '--threads', '1', '--gemm-size', '128',
                '--bandwidth-mb', '8', '--out', str(out), '--skip-iteration',
                '--cfg-options', 'sampler.num_iter=4', 'sampler.num_sampling_steps=4']
        assert tool.main(argv) == 0
        res = json.loads(out.read_text())
        printed = capsys.readouterr().out
        assert 'rollout, no CFG (4 x 16 tokens in 4 steps)' in printed, printed
        assert 'head transitions (3 per token)' in printed
        assert res['num_actions'] == 48
        for key in ('no_cfg', 'cfg'):
            r = res['rollout'][key]
            assert (r['decode_steps'], r['tokens_timed'], r['actions_timed']) == (4, 16, 48)
            assert r['tokens_per_s']['median'] == pytest.approx(4 * 16 / r['time_s']['median'])
            assert r['head_transitions_per_s']['median'] == pytest.approx(
                4 * 48 / r['time_s']['median'])
        up = res['update']
        assert (up['tokens'], up['actions'], up['actions_per_token']) == (16, 48, 3)
        assert up['flops_per_sample'] > 0 and up['gflops']['median'] > 0
        # --steps: the last AR steps as a continuation of a prefix rollout
        argv[argv.index('--skip-iteration')] = '--skip-update'
        assert tool.main(argv[:1] + ['--steps', '2', '--skip-iteration'] + argv[1:]) == 0
        r = json.loads(out.read_text())['rollout']['no_cfg']
        assert r['mode'] == 'continuation' and r['steps_timed'] == 2
        assert r['prefill_actions'] + r['actions_timed'] == 48 and r['tokens_timed'] < 16
    finally:
        torch.set_num_threads(threads)
