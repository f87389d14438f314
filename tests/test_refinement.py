"""Refinement chains on the MAR action axis: ``MaskedSampler(refinement=True)``.

At AR step ``i`` the sampler (with ``record_predictions``) runs a head chain for every token still
masked; the chains of tokens still masked after step ``i`` are discarded by sampling but are terms
of MAR-GRPO's official loss of step ``i`` and what its consistency rule gates. These tests pin
their layout, that ``MARPolicy.evaluate`` scores them on-policy under step ``i``'s latent, the
subset drawn before the noise, the consistency gate on them, MTE weights next to them, prefixes,
and one iteration of the Shapes config that uses them.
"""
import dataclasses
import os

import pytest
import torch

from conftest import ROOT
from test_mar import COND, LOGP_ATOL, _policy, _rollout, _sampler
from vargo.components.modules.masked import MARExtras, mask_schedule
from vargo.components.token_selectors import ConsistencySelector, MultiTrajectorySelector
from vargo.components.token_selectors.consistency import consistency_keep
from vargo.core.rng import BatchRNG


@pytest.fixture(scope='module')
def policy():
    return _policy(seed=2)


def _refined(policy, cfg=1.0, seed=3, **kw):
    sampler = _sampler(cfg, 'rollout', record_predictions=True, refinement=True, **kw)
    return sampler, _rollout(policy, sampler, seed=seed)


def test_layout_steps_tokens_and_positions(policy):
    sampler, r = _refined(policy)
    plain = _rollout(policy, _sampler(1.0, 'rollout', record_predictions=True), seed=3)
    ex = r.extras
    b, n, kk, d = r.batch_size, ex.seq_len, ex.num_transitions, policy.token_dim
    rem, _ = mask_schedule(n, ex.num_iter)
    # every step that leaves tokens masked, rem[i + 1] chains each
    assert ex.refine_steps == tuple(i for i in range(ex.num_iter) if rem[i + 1] > 0)
    assert ex.num_refinements == sum(rem[i + 1] for i in ex.refine_steps)
    a0 = ex.num_chain_actions
    assert a0 == n * kk and r.num_actions == a0 + ex.num_refinements * kk
    assert r.actions.shape == ex.x_t.shape == ex.log_variance.shape == (b, r.num_actions, d)
    # the rollout's own chains, tokens and predictions are those of the same rollout without them
    assert torch.equal(r.actions[:, :a0], plain.actions)
    assert torch.equal(r.logp_old[:, :a0], plain.logp_old)
    assert torch.equal(ex.tokens, plain.extras.tokens)
    assert torch.equal(ex.x0_pred, plain.extras.x0_pred)
    # the chains of step i are the tokens still masked after step i, in raster order
    step_of = ex.refine_step_of()
    for i in ex.refine_steps:
        tok = ex.refine_tokens[:, step_of == i]
        want = [torch.nonzero(ex.commit_step[j] > i).flatten() for j in range(b)]
        assert all(torch.equal(tok[j], want[j]) for j in range(b))
    # action_step = the refinement's step, action_pos = the token's cell, all active
    steps = r.steps()[:, a0:].view(b, -1, kk)
    assert torch.equal(steps, step_of.view(1, -1, 1).expand_as(steps))
    cells = policy.rollout_axes(1)[ex.refine_tokens]
    assert torch.equal(r.action_pos[:, a0:].view(b, -1, kk, 2),
                       cells.unsqueeze(2).expand(-1, -1, kk, -1))
    assert r.action_mask[:, a0:].all()
    # each refinement chain is one continuous chain: x_t of transition k+1 = x_{t-1} of k
    xs = ex.x_t[:, a0:].view(b, -1, kk, d)
    xp = r.actions[:, a0:].view(b, -1, kk, d)
    assert torch.equal(xs[:, :, 1:], xp[:, :, :-1])
    # and differs from the chain that committed the token later (fresh noise per step)
    main_first = ex.x_t[:, :a0].view(b, n, kk, d)[:, :, 0]
    first = xs[:, :, 0]
    committed = main_first.gather(1, ex.refine_tokens.unsqueeze(-1).expand(-1, -1, d))
    assert not torch.allclose(first, committed)


@pytest.mark.parametrize('cfg', [1.0, 2.0])
def test_evaluate_scores_refinements_on_policy_under_the_step_latent(policy, cfg):
    sampler, r = _refined(policy, cfg)
    a0 = r.extras.num_chain_actions
    ev = policy.evaluate(r, spec=sampler.logprob_spec())
    assert ev.logp.shape == r.logp_old.shape and ev.extras['mean'].shape == r.actions.shape
    assert ev.extras['evaluated'].all()
    torch.testing.assert_close(ev.logp, r.logp_old, rtol=1e-4, atol=LOGP_ATOL)
    # the committed chains score as without refinement chains
    plain = _rollout(policy, _sampler(cfg, 'rollout', record_predictions=True), seed=3)
    ev0 = policy.evaluate(plain, spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp[:, :a0], ev0.logp, rtol=0, atol=1e-5)
    # under the refinement step's latent, not the commit step's: scoring a chain of step i with
    # the latent of its token's commit step gives another mean
    ex = r.extras
    i = ex.refine_steps[0]
    j = int(ex.refine_tokens[0, 0])
    mask_i = ex.commit_step[:1] >= i
    mask_c = ex.commit_step[:1] >= ex.commit_step[0, j]
    emb = policy.class_embedding(policy.encode_conditions(r.cond))[:1]
    with torch.no_grad():
        z_i = policy.latents(ex.tokens[:1], mask_i, emb)[0, j]
        z_c = policy.latents(ex.tokens[:1], mask_c, emb)[0, j]
        sched = policy.schedule(ex.num_sampling_steps, head_sampler=ex.head_sampler)
        kk = ex.num_transitions
        x = ex.x_t[0, a0:a0 + 1]
        t = torch.tensor([kk])
        mu_i = policy.head_transition(x, t, z_i[None], sched)['mean']
        mu_c = policy.head_transition(x, t, z_c[None], sched)['mean']
    if cfg == 1.0:
        torch.testing.assert_close(ev.extras['mean'][0, a0], mu_i[0], rtol=1e-5, atol=1e-4)
    assert not torch.allclose(mu_i, mu_c)


def test_gradient_reaches_the_model_through_refinement_terms(policy):
    sampler, r = _refined(policy)
    a0 = r.extras.num_chain_actions
    policy.zero_grad(set_to_none=True)
    ev = policy.evaluate(r, spec=sampler.logprob_spec(), with_entropy=False)
    ev.logp[:, a0:].sum().backward()
    g = sum(float(p.grad.abs().sum()) for p in policy.trainable_parameters()
            if p.grad is not None)
    policy.zero_grad(set_to_none=True)
    assert g > 0


def test_subset_is_drawn_before_the_noise_and_covers_the_refinements(policy):
    kw = dict(loss_ar_steps=2, loss_diffusion_steps=2)
    sampler, r = _refined(policy, 2.0, seed=5, **kw)
    ex = r.extras
    rem, _ = mask_schedule(ex.seq_len, ex.num_iter)
    assert ex.refine_steps == tuple(i for i in ex.selection.ar_steps if rem[i + 1] > 0)
    # drawn first from the rollout's stream: the same draw as a fresh generator's first one
    rng = BatchRNG(5, 0, len(COND) * 2, rank=0, world_size=1)
    rng.rand(ex.seq_len)                                   # the orders come first
    from vargo.components.modules.masked import MARSelection
    want = MARSelection.sample(ex, 2, 2, generator=rng.generator)
    assert ex.selection == want
    # evaluate recomputes exactly the subset's (step, diffusion step) pairs, refinements included
    ev = policy.evaluate(r, spec=sampler.logprob_spec())
    a0, kk = ex.num_chain_actions, ex.num_transitions
    e_ref = ev.extras['evaluated'][:, a0:].view(r.batch_size, -1, kk)
    want_k = torch.zeros(kk, dtype=torch.bool)
    want_k[list(ex.selection.diffusion_steps)] = True
    assert torch.equal(e_ref, want_k.expand_as(e_ref))
    e_main = ev.extras['evaluated'][:, :a0].view(r.batch_size, ex.seq_len, kk)
    in_steps = torch.isin(ex.commit_step, torch.tensor(ex.selection.ar_steps))
    assert torch.equal(e_main, in_steps.unsqueeze(-1) & want_k)
    torch.testing.assert_close(ev.logp, r.logp_old, rtol=1e-4, atol=LOGP_ATOL)


def test_consistency_gates_exactly_the_refinement_terms(policy):
    sampler, r = _refined(policy, seed=11)
    ex = r.extras
    a0, kk, b = ex.num_chain_actions, ex.num_transitions, r.batch_size
    sel = ConsistencySelector(tau=0.0, start_step=1)
    w = sel(r, None, None, None, policy=policy, group_size=2)
    keep, gated = consistency_keep(ex.x0_pred, ex.tokens, ex.commit_step, 0.0, 1)
    # committed chains are never gated; the KL weights are the action mask
    assert (w.pg[:, :a0] == 1).all() and torch.equal(w.kl, r.action_mask.float())
    # a refinement of step i of token j has weight keep[i, j] = [gain > tau] for i >= 1
    pg = w.pg[:, a0:].view(b, -1, kk)
    step_of = ex.refine_step_of()
    for bi in range(b):
        for c, (i, j) in enumerate(zip(step_of.tolist(), ex.refine_tokens[bi].tolist())):
            assert bool(gated[bi, i, j]) == (i >= 1)
            assert (pg[bi, c] == float(keep[bi, i, j])).all()
    # on this rollout the gate drops some refinement terms and keeps some
    assert 0 < w.metrics['consistency/refinement_kept_frac'] < 1
    # start_step beyond the last step: nothing is gated
    w2 = ConsistencySelector(start_step=ex.num_iter)(r, None, None,
                                                     None,
                                                     policy=policy, group_size=2)
    assert torch.equal(w2.pg, r.action_mask.float())


def test_mte_weights_leave_refinement_chains_single_chain(policy):
    sampler, r = _refined(policy, mte_chains=2)
    ex = r.extras
    s, a0, kk = ex.mte_chains, ex.num_chain_actions, ex.num_transitions
    assert a0 == (1 + s) * ex.seq_len * kk
    assert r.num_actions == a0 + ex.num_refinements * kk
    w = MultiTrajectorySelector(selection='all')(r, None, None, None, policy=policy,
                                                 group_size=2)
    assert (w.pg[:, a0:] == 1 + s).all() and (w.kl[:, a0:] == 1 + s).all()
    ev = policy.evaluate(r, spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp, r.logp_old, rtol=1e-4, atol=LOGP_ATOL)


def test_prefix_refinements_are_outside_the_mask(policy):
    sampler, full = _refined(policy, seed=4)
    rng = BatchRNG(9, 0, len(COND), rank=0, world_size=1)
    r = sampler.rollout(policy, COND, group_size=1, rng=rng, prefix=full.index(
        torch.tensor([0, 2])), stop_at_step=2)
    ex = r.extras
    a0, kk = ex.num_chain_actions, ex.num_transitions
    steps = r.steps()[:, a0:]
    assert torch.equal(r.action_mask[:, a0:], steps >= 2)
    assert (~r.action_mask[:, a0:]).any() and r.action_mask[:, a0:].any()


def test_refinement_needs_recorded_predictions():
    with pytest.raises(ValueError, match='record_predictions=True'):
        _sampler(1.0, 'rollout', refinement=True)
    with pytest.raises(ValueError, match='refinement'):
        _sampler(1.0, 'rollout', record_predictions=True, refinement=1)


def test_one_iteration_of_the_shapes_mar_grpo_config(tmp_path):
    """configs/mar_grpo/mar_mar-grpo_shapes.py (refinements, MTE, consistency) on a tiny MAR."""
    import math
    from test_configs import shrink
    from vargo.core.runner import build_runner, load_config, prepare_config
    path = os.path.join(ROOT, 'configs', 'mar_grpo', 'mar_mar-grpo_shapes.py')
    cfg = shrink(load_config(path))
    cfg = prepare_config(cfg, config_path=path, work_dir=str(tmp_path))
    cfg.experiment_name = f'test_refinement_{id(cfg)}'
    runner = build_runner(cfg)
    runner.train()
    assert runner.iter == 1
    scalars = runner.message_hub.log_scalars
    assert scalars['train/policy/logp_mismatch_max'].current() < 1e-3
    kept = scalars['train/select/consistency/refinement_kept_frac'].current()
    assert 0 <= kept <= 1
    assert math.isfinite(scalars['train/loss'].current())


# ---- evaluation draws without the training-only extras ---------------------------------------------

def test_evaluation_sampler_draws_the_plain_samplers_tokens_without_extras(policy):
    """Evaluation, previews and tools/sample.py use ``evaluation_sampler()``: for a MAR-GRPO
    sampler (recorded predictions, refinement and MTE chains) it is the plain sampler, so every
    arm of a comparison is evaluated on the same noise path, with no extra actions (whose number
    varies with the loss subset: rollouts of two batches could not be concatenated)."""
    plain = _sampler(1.0, 'rollout', loss_ar_steps=2, loss_diffusion_steps=2)
    assert plain.evaluation_sampler() is plain
    full = _sampler(1.0, 'rollout', loss_ar_steps=2, loss_diffusion_steps=2,
                    record_predictions=True, refinement=True, mte_chains=2, mte_top_fraction=0.5)
    ev = full.evaluation_sampler()
    assert ev is not full and type(ev) is type(full)
    assert (ev.record_predictions, ev.refinement, ev.mte_chains, ev.mte_top_fraction) == \
        (False, False, 0, None)
    assert full.record_predictions and full.refinement and full.mte_chains == 2   # untouched
    assert (ev.loss_ar_steps, ev.num_iter, ev.logprob_spec()) == \
        (2, full.num_iter, full.logprob_spec())
    a, b = _rollout(policy, ev, seed=5), _rollout(policy, plain, seed=5)
    assert torch.equal(a.extras.tokens, b.extras.tokens) and a.num_actions == b.num_actions
    assert a.extras.x0_pred is None
    # the training sampler itself still draws its extras
    assert _rollout(policy, full, seed=5).num_actions > a.num_actions


def test_evaluation_protocol_of_mar_grpo_arms_equals_the_grpo_arms():
    """tools/eval.py records ``evaluation_sampler_cfg`` in the protocol: the MAR-GRPO arms and
    their GRPO arm are evaluated under one protocol (tools/multiseed.py compares them)."""
    from vargo.core import eval_protocol
    from vargo.core.cli import evaluation_sampler_cfg
    from vargo.core.registry import SAMPLERS
    from vargo.core.runner import load_config
    settings = []
    for name in ('grpo/mar_grpo_shapes.py', 'mar_grpo/mar_grpo-refinement_shapes.py',
                 'mar_grpo/mar_mar-grpo_shapes.py', 'mar_grpo/mar_mar-grpo-mte-all_shapes.py'):
        cfg = load_config(os.path.join(ROOT, 'configs', name))
        drawing = evaluation_sampler_cfg(cfg.sampler)
        settings.append(eval_protocol.resolved_settings(drawing, SAMPLERS.get(drawing['type'])))
        assert cfg.sampler.get('record_predictions', False) == ('mar_grpo/' in name)  # copied
    assert all(s == settings[0] for s in settings[1:]), settings
