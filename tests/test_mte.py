"""MAR-GRPO's multi-trajectory expectation and uncertain tokens: ``MaskedSampler(mte_chains=S)``
(the extra chains on the action axis), ``MARPolicy.evaluate`` of them, and
``MultiTrajectorySelector`` (components/token_selectors/multi_trajectory.py)."""
import math
import os

import pytest
import torch

from conftest import ROOT
from test_mar import COND, LOGP_ATOL, _policy, _rollout, _sampler
from vargo.components.modules.masked import MARExtras
from vargo.components.token_selectors import EvaluatedActionsSelector, MultiTrajectorySelector
from vargo.components.modules.masked import token_uncertainty, top_fraction_tokens
from vargo.components.token_selectors.multi_trajectory import mte_weights
from vargo.core.objective import ObjectiveConfig, policy_loss
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, PolicyEval, Rollout


@pytest.fixture(scope='module')
def policy():
    return _policy(seed=2)


# ---- uncertainty and the top-k set, by hand ------------------------------------------------------
def test_uncertainty_is_the_population_std_over_chains_averaged_over_channels():
    # 1 image, S = 3 chains, N = 4 tokens, D = 2 channels
    x0 = torch.zeros(1, 3, 4, 2)
    x0[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0])      # std sqrt(2/3), other channel 0
    x0[0, :, 1] = torch.tensor([[0.0, 0.0], [3.0, 6.0], [0.0, 0.0]])  # stds sqrt(2), 2 sqrt(2)
    x0[0, :, 2, 1] = 5.0                                # constant: 0
    x0[0, :, 3, 0] = torch.tensor([1.0, 2.0, 3.0])      # as token 0 (a tie)
    u = token_uncertainty(x0)
    want = torch.tensor([[math.sqrt(2 / 3) / 2, 1.5 * math.sqrt(2), 0.0, math.sqrt(2 / 3) / 2]])
    torch.testing.assert_close(u, want)
    # k = max(1, floor(0.3 * 4)) = 1: token 1; k = floor(0.5 * 4) = 2: token 1 and the first
    # of the tied tokens 0 and 3 in raster order
    assert top_fraction_tokens(u, 0.3).tolist() == [[False, True, False, False]]
    assert top_fraction_tokens(u, 0.5).tolist() == [[True, True, False, False]]
    assert top_fraction_tokens(u, 0.75).tolist() == [[True, True, False, True]]
    assert top_fraction_tokens(u, 0.0).sum() == 0 and top_fraction_tokens(u, 1.0).all()
    # 30% of 256 tokens (MAR-B): 76 (the official int(L * top_percent)); at least one token
    assert int(top_fraction_tokens(torch.rand(2, 256), 0.3).sum(1).unique()) == 76
    assert top_fraction_tokens(u, 0.1).tolist() == [[False, True, False, False]]


def test_weight_transfer_sums_to_the_single_chain_weight_per_token():
    s, kk = 3, 2
    sel = torch.tensor([[True, False, True], [False, False, True]])
    pg, kl = mte_weights(sel, s, kk)
    b, n = sel.shape
    assert pg.shape == kl.shape == (b, (1 + s) * n * kk)
    pg4, kl4 = pg.view(b, 1 + s, n, kk), kl.view(b, 1 + s, n, kk)
    single = pg4[~sel.unsqueeze(-1).expand(b, n, kk).unsqueeze(1).expand(b, 1 + s, n, kk)
                 & (torch.arange(1 + s) == 0).view(1, -1, 1, 1)]
    c = single.unique()
    assert c.tolist() == [1.0 + s]            # the single-chain weight (x (1 + S), module doc)
    # per token and transition the chains' weights sum to it, selected or not
    torch.testing.assert_close(pg4.sum(1), torch.full((b, n, kk), 1.0 + s))
    for i in range(b):
        for j in range(n):
            if sel[i, j]:
                assert (pg4[i, 0, j] == 0).all()
                torch.testing.assert_close(pg4[i, 1:, j], torch.full((s, kk), (1.0 + s) / s))
            else:
                assert (pg4[i, 0, j] == 1.0 + s).all() and (pg4[i, 1:, j] == 0).all()
    # the KL keeps the rollout's chain only
    assert (kl4[:, 0] == 1.0 + s).all() and (kl4[:, 1:] == 0).all()


# ---- the surrogate through the real objective aggregation ----------------------------------------
def _hand_rollout(b=2, n=3, kk=2, s=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (1 + s) * n * kk
    x0 = torch.randn(b, s, n, 4, generator=g) * torch.tensor([0.1, 1.0, 3.0]).view(1, 1, n, 1)
    ex = MARExtras(orders=torch.arange(n).expand(b, n), commit_step=torch.zeros(b, n).long(),
                   tokens=torch.zeros(b, n, 4), num_iter=1, num_sampling_steps=kk + 1, seq_len=n,
                   mte_chains=s, mte_x0=x0)
    r = Rollout(cond=Conditions(class_ids=torch.zeros(b).long()), group_ids=torch.arange(b),
                actions=torch.zeros(b, a, 4), logp_old=torch.randn(b, a, generator=g),
                action_mask=torch.ones(b, a, dtype=torch.bool),
                action_step=torch.zeros(b, a).long(), action_pos=torch.zeros(a, 2).long(),
                extras=ex)
    logp = r.logp_old + 0.3 * torch.randn(b, a, generator=g)
    adv = torch.tensor([0.7, -1.2]).view(b, 1).expand(b, a).contiguous()
    return r, logp, adv


@pytest.mark.parametrize('aggregation', ['sample_mean_of_token_means', 'token_mean',
                                         'global_token_mean', 'weighted_token_mean'])
@pytest.mark.parametrize('selection', ['uncertain', 'all'])
def test_mte_loss_is_the_mean_over_chains_for_selected_tokens(aggregation, selection):
    b, n, kk, s = 2, 3, 2, 2
    r, logp, adv = _hand_rollout(b, n, kk, s)
    sel_obj = MultiTrajectorySelector(selection=selection, top_fraction=0.34)   # k = 1 of 3
    w = sel_obj(r, PolicyEval(logp=logp), None, None, policy=None, group_size=1)
    chosen, _ = sel_obj.selected_tokens(r)
    assert chosen.sum(1).tolist() == ([1, 1] if selection == 'uncertain' else [n, n])
    if selection == 'uncertain':                 # token 2 has by far the widest chains
        assert chosen[:, 2].all()
    obj = ObjectiveConfig(clip_eps=None, ratio_level='token', aggregation=aggregation)
    ctx = {'global_num_tokens': float(r.action_mask.sum()), 'world_size': 1}
    loss, _ = policy_loss(obj, logp, r.logp_old, {'a': adv}, {'a': 1.0}, r.action_mask, w.pg,
                          ctx)
    # the paper's per-token terms, by hand: rho A (chain 0) or mean_s rho^(s) A
    rho = torch.exp(logp - r.logp_old).view(b, 1 + s, n, kk)
    a = adv[:, 0]
    want = 0.0
    for i in range(b):
        for j in range(n):
            for k in range(kk):
                term = (rho[i, 1:, j, k].mean() if chosen[i, j] else rho[i, 0, j, k]) * a[i]
                want = want - term
    want = want / (b * n * kk)          # all four reduce to the mean over the B N K main actions
    torch.testing.assert_close(loss, torch.as_tensor(want, dtype=loss.dtype), rtol=1e-5,
                               atol=1e-6)


def test_mte_loss_follows_the_evaluated_subset():
    """Composed with EvaluatedActionsSelector (the same (AR step, diffusion step) pairs in
    every chain): the sum of the evaluated pairs' terms over all main actions, as without
    MTE."""
    b, n, kk, s = 2, 3, 2, 2
    r, logp, adv = _hand_rollout(b, n, kk, s, seed=1)
    ev = torch.zeros(b, n, kk, dtype=torch.bool)
    ev[:, :2, 1] = True                                       # 2 tokens x transition 1
    evaluated = ev.unsqueeze(1).expand(b, 1 + s, n, kk).reshape(b, -1)
    pe = PolicyEval(logp=logp, extras={'evaluated': evaluated})
    mte = MultiTrajectorySelector(selection='all')
    w = (EvaluatedActionsSelector()(r, pe, None, None, policy=None, group_size=1)
         * mte(r, pe, None, None, policy=None, group_size=1))
    obj = ObjectiveConfig(clip_eps=None, ratio_level='token',
                          aggregation='sample_mean_of_token_means')
    loss, _ = policy_loss(obj, logp, r.logp_old, {'a': adv}, {'a': 1.0}, r.action_mask, w.pg)
    rho = torch.exp(logp - r.logp_old).view(b, 1 + s, n, kk)
    want = -(rho[:, 1:].mean(1) * ev * adv[:, :1, None]).sum((1, 2)).mean() / (n * kk)
    torch.testing.assert_close(loss, want)
    assert float(w.kl.view(b, 1 + s, n, kk)[:, 1:].abs().sum()) == 0


def test_selector_refuses_rollouts_without_extra_chains(policy):
    r = _rollout(policy, _sampler(), seed=0)
    with pytest.raises(ValueError, match='mte_chains'):
        MultiTrajectorySelector()(r, None, None, None, policy=policy, group_size=2)
    with pytest.raises(ValueError, match='selection'):
        MultiTrajectorySelector(selection='some')
    with pytest.raises(ValueError, match='top_fraction'):
        MultiTrajectorySelector(top_fraction=1.5)


# ---- the sampler's extra chains and MARPolicy.evaluate on a tiny MAR ------------------------------
@pytest.mark.parametrize('cfg, subset', [(2.0, False), (2.0, True), (1.0, True)])
def test_extra_chains_are_on_policy_and_leave_the_rollout_unchanged(policy, cfg, subset):
    s = 2
    kw = dict(num_iter=4, num_sampling_steps=5)
    if subset:
        kw.update(loss_ar_steps=2, loss_diffusion_steps=2)
    plain = _rollout(policy, _sampler(cfg, 'rollout', **kw), seed=3)
    sampler = _sampler(cfg, 'rollout', mte_chains=s, **kw)
    r = _rollout(policy, sampler, seed=3)
    b, n, kk = r.batch_size, r.extras.seq_len, r.extras.num_transitions
    a0 = n * kk
    assert r.num_actions == (1 + s) * a0 and r.extras.mte_x0.shape == (b, s, n, policy.token_dim)
    assert r.extras.x_t.shape == r.actions.shape == r.extras.log_variance.shape
    # the rollout's own chain, its subset and images are those of the plain rollout
    assert torch.equal(r.actions[:, :a0], plain.actions)
    assert torch.equal(r.logp_old[:, :a0], plain.logp_old)
    assert torch.equal(r.extras.tokens, plain.extras.tokens)
    assert r.extras.selection == plain.extras.selection
    assert torch.equal(r.steps(), plain.steps().repeat(1, 1 + s))
    assert torch.equal(r.action_pos, plain.action_pos.repeat(1 + s, 1))
    # extra chains are fresh: they differ from the rollout's chain and from each other
    blocks = r.actions.view(b, 1 + s, a0, -1)
    assert not torch.allclose(blocks[:, 0], blocks[:, 1])
    assert not torch.allclose(blocks[:, 1], blocks[:, 2])
    # on-policy: evaluate recomputes every chain's logp_old (ratio 1 at the first step)
    ev = policy.evaluate(r, spec=sampler.logprob_spec())
    assert ev.logp.shape == r.logp_old.shape and ev.extras['mean'].shape == r.actions.shape
    torch.testing.assert_close(ev.logp, r.logp_old, rtol=1e-4, atol=LOGP_ATOL)
    e = ev.extras['evaluated'].view(b, 1 + s, n, kk)
    assert all(torch.equal(e[:, 0], e[:, c]) for c in range(1, 1 + s))   # same pairs per chain
    if subset:
        assert 0 < int(e.sum()) < e.numel()
    # the main chain's evaluation is unchanged by the extra chains (same numbers as without)
    ev0 = policy.evaluate(plain, spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp[:, :a0], ev0.logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ev.extras['mean'][:, :a0], ev0.extras['mean'], rtol=0, atol=1e-5)
    # the MTE chain s as a single-chain rollout scores the same (MARChains.as_rollout route)
    ch = sampler.extra_chains(policy, r, num_chains=1, rng=None)
    single = ch.as_rollout(r, 0)
    assert single.num_actions == a0 and single.extras.mte_chains == 0


def test_sampler_top_fraction_restricts_the_evaluated_extra_chains_not_the_loss(policy):
    """MaskedSampler(mte_top_fraction=f): evaluate recomputes only the top-f uncertain tokens'
    extra chains; the MTE loss and its gradient equal those of evaluating all chains."""
    kw = dict(num_iter=4, num_sampling_steps=5, mte_chains=3, loss_ar_steps=3,
              loss_diffusion_steps=3)
    full = _rollout(policy, _sampler(2.0, 'rollout', **kw), seed=7)
    sampler = _sampler(2.0, 'rollout', mte_top_fraction=0.25, **kw)
    r = _rollout(policy, sampler, seed=7)
    assert torch.equal(r.actions, full.actions) and full.extras.mte_tokens is None
    b, n, kk, s = r.batch_size, r.extras.seq_len, r.extras.num_transitions, 3
    top = r.extras.mte_tokens
    assert torch.equal(top, top_fraction_tokens(token_uncertainty(r.extras.mte_x0), 0.25))
    assert top.sum(1).tolist() == [4] * b                       # 25% of 16 tokens
    spec = sampler.logprob_spec()
    selector = MultiTrajectorySelector(selection='uncertain', top_fraction=0.25)
    obj = ObjectiveConfig(clip_eps=0.2, ratio_level='token',
                          aggregation='sample_mean_of_token_means')
    adv = torch.linspace(-1, 1, b).view(b, 1).expand(b, r.num_actions)
    losses, grads = [], []
    for roll in (full, r):
        policy.zero_grad(set_to_none=True)
        ev = policy.evaluate(roll, spec=spec)
        w = (EvaluatedActionsSelector()(roll, ev, None, None, policy=policy, group_size=2)
             * selector(roll, ev, None, None, policy=policy, group_size=2))
        loss, _ = policy_loss(obj, ev.logp, roll.logp_old, {'a': adv}, {'a': 1.0},
                              roll.action_mask, w.pg)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()
                                if p.grad is not None]))
        e = ev.extras['evaluated'].view(b, 1 + s, n, kk)
        if roll is r:       # extra chains evaluated on the top tokens only, main chain on all
            assert not e[:, 1:][~top.unsqueeze(1).expand(b, s, n)].any()
            assert torch.equal(e[:, 1:].any(-1), (e[:, :1].any(-1) & top.unsqueeze(1)
                                                  ).expand(b, s, n))
            torch.testing.assert_close(ev.logp, roll.logp_old, rtol=1e-4, atol=LOGP_ATOL)
    policy.zero_grad(set_to_none=True)
    torch.testing.assert_close(losses[0], losses[1])
    assert float(grads[0].abs().sum()) > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    # a selector that selects more than the sampler evaluated refuses
    with pytest.raises(ValueError, match='mte_top_fraction'):
        MultiTrajectorySelector(top_fraction=0.5)(r, None, None, None, policy=policy,
                                                  group_size=2)
    with pytest.raises(ValueError, match='mte_top_fraction'):
        _sampler(mte_top_fraction=0.3)


def test_stored_sigma_scores_extra_chains_with_their_variance():
    pol = _policy(seed=3, logprob_sigma='stored')
    sampler = _sampler(2.0, 'rollout', mte_chains=2)
    r = _rollout(pol, sampler, seed=5)
    ev = pol.evaluate(r, spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp, r.logp_old, rtol=1e-4, atol=LOGP_ATOL)


def test_extra_chain_noise_is_rank_invariant(policy):
    """Two ranks (BatchRNG rank / world_size, the draws torch.distributed runs make) sample
    the rows of one process, extra chains included."""
    sampler = _sampler(2.0, 'rollout', mte_chains=2)
    cond = Conditions(class_ids=torch.tensor([0, 1, 2, 4]))
    whole = sampler.rollout(policy, cond, group_size=1, rng=BatchRNG(5, 3, 4, rank=0,
                                                                     world_size=1))
    parts = [sampler.rollout(policy, cond.index(torch.arange(2 * k, 2 * k + 2)), group_size=1,
                             rng=BatchRNG(5, 3, 2, rank=k, world_size=2)) for k in (0, 1)]
    # the same draws; the products' rounding may depend on the batch size (MKL on a 2-core
    # Intel Xeon: up to 5.6e-4 relative after the diffusion chains), a misplaced draw is O(1)
    for field in ('actions', 'logp_old'):
        torch.testing.assert_close(torch.cat([getattr(p, field) for p in parts]),
                                   getattr(whole, field), rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(torch.cat([p.extras.mte_x0 for p in parts]),
                               whole.extras.mte_x0, rtol=2e-3, atol=1e-5)


def test_prefix_completion_of_an_mte_rollout(policy):
    sampler = _sampler(1.0, 'rollout', mte_chains=2)
    r = _rollout(policy, sampler, seed=6, g=1)
    b = r.batch_size
    out = sampler.rollout(policy, COND, group_size=2, prefix=r, stop_at_step=2,
                          rng=BatchRNG(6, 1, b * 2, rank=0, world_size=1))
    assert out.num_actions == r.num_actions and out.extras.mte_chains == 2
    n, kk = r.extras.seq_len, r.extras.num_transitions
    kept = (r.extras.commit_step < 2).repeat_interleave(2, 0)
    mask = out.action_mask.view(2 * b, 3, n, kk)
    assert torch.equal(mask[:, 0, :, 0], ~kept) and torch.equal(mask[:, 2, :, 0], ~kept)
    ev = policy.evaluate(out, spec=sampler.logprob_spec())
    # the rollout and the teacher-forced pass sum in different orders: up to 9.5e-4 relative
    # on a 2-core Intel Xeon (MKL), which tight Gaussian transitions turn into 0.02 nats
    torch.testing.assert_close(ev.logp, out.logp_old, rtol=2e-3, atol=LOGP_ATOL)


# ---- a training iteration --------------------------------------------------------------------------
def test_one_iteration_of_the_shapes_mar_config_with_mte(tmp_path):
    from test_configs import shrink
    from vargo.core.runner import build_runner, load_config, prepare_config
    path = os.path.join(ROOT, 'configs', 'grpo', 'mar_grpo_shapes.py')
    cfg = shrink(load_config(path))
    cfg.sampler['mte_chains'] = 3
    cfg.sampler['mte_top_fraction'] = 0.3
    cfg.token_selectors['mte'] = dict(type='MultiTrajectorySelector', selection='uncertain',
                                      top_fraction=0.3)
    cfg = prepare_config(cfg, config_path=path, work_dir=str(tmp_path))
    cfg.experiment_name = f'test_mte_{id(cfg)}'
    runner = build_runner(cfg)
    runner.train()
    assert runner.iter == 1
    scalars = runner.message_hub.log_scalars
    assert scalars['train/policy/logp_mismatch_max'].current() < 1e-3
    frac = scalars['train/select/mte/selected_frac'].current()
    n = runner.model.policy.seq_len
    assert frac == pytest.approx(int(0.3 * n) / n)
    assert math.isfinite(scalars['train/loss'].current())


def test_benchmark_times_the_extra_chains(tmp_path, capsys):
    """tools/benchmark.py reports the extra chains' draw (part of generate) per iteration."""
    import json
    from conftest import load_tool
    tool = load_tool('benchmark')
    out = tmp_path / 'bench.json'
    threads = torch.get_num_threads()
    try:
        assert tool.main([os.path.join(ROOT, 'configs', 'grpo', 'mar_grpo_shapes.py'),
                          '--batch', '4', '--repeat', '1', '--threads', '1', '--gemm-size', '64',
                          '--bandwidth-mb', '1', '--skip-rollout', '--skip-update',
                          '--out', str(out), '--cfg-options', 'sampler.mte_chains=2',
                          'sampler.mte_top_fraction=0.3',
                          'token_selectors.mte.type=MultiTrajectorySelector']) == 0
    finally:
        torch.set_num_threads(threads)
    assert 'MTE extra chains / iteration' in capsys.readouterr().out
    mte = json.loads(out.read_text())['iteration']['mte']
    assert mte['chains'] == 2 and mte['extra_chains_s']['median'] > 0
    assert 0 < mte['extra_chains_over_iteration'] < 1
