"""The MAR policy update's pieces: the sampler's per-rollout subset of (AR step, diffusion step)
pairs, EvaluatedActionsSelector, GaussianMeanKLRegularizer, and the build-time sampler/policy
check (components/samplers/masked.py, token_selectors/evaluated_actions.py,
regularizers/gaussian_mean_kl.py, core/algorithm.py)."""
import os

import pytest
import torch

from conftest import ROOT
from test_mar import COND, _policy, _rollout, _sampler
from vargo.components.policies.mar import mask_schedule
from vargo.components.regularizers import GaussianMeanKLRegularizer
from vargo.components.token_selectors import EvaluatedActionsSelector
from vargo.core.runner import load_config
from vargo.core.registry import ConfigError
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, PolicyEval, TokenWeights


@pytest.fixture(scope='module')
def policy():
    return _policy(seed=1)


def test_sampler_draws_one_subset_per_rollout_and_evaluate_recomputes_exactly_it(policy):
    sampler = _sampler(2.0, 'rollout', num_iter=4, num_sampling_steps=6, loss_ar_steps=2,
                       loss_diffusion_steps=3)
    r = _rollout(policy, sampler, seed=3)
    sel = r.extras.selection
    assert len(sel.ar_steps) == 2 and len(sel.diffusion_steps) == 3
    assert list(sel.ar_steps) == sorted(sel.ar_steps) and len(set(sel.diffusion_steps)) == 3
    ev = policy.evaluate(r, spec=sampler.logprob_spec())
    b, n, kk = r.batch_size, r.extras.seq_len, r.extras.num_transitions
    evaluated = ev.extras['evaluated'].view(b, n, kk)
    want = torch.zeros(b, n, kk, dtype=torch.bool)
    for i in sel.ar_steps:
        for k in sel.diffusion_steps:
            want[:, :, k] |= r.extras.commit_step == i
    assert torch.equal(evaluated, want)
    # on-policy: the recomputed log-probs of the subset equal the sampler's
    torch.testing.assert_close(ev.logp, r.logp_old, rtol=1e-4, atol=1e-2)
    # the number evaluated per sample follows the schedule (the same for every sample)
    rem, _ = mask_schedule(n, 4)
    per_step = [rem[i] - rem[i + 1] for i in range(4)]
    assert int(evaluated[0].sum()) == 3 * sum(per_step[i] for i in sel.ar_steps)
    assert (evaluated.view(b, -1).sum(1) == evaluated[0].sum()).all()


def test_subset_is_the_same_on_every_rank_and_reproducible(policy):
    sampler = _sampler(1.0, 'rollout', num_iter=4, num_sampling_steps=6, loss_ar_steps=2,
                       loss_diffusion_steps=2)
    cond = Conditions(class_ids=torch.tensor([0, 1, 2, 4]))
    whole = sampler.rollout(policy, cond, group_size=1, rng=BatchRNG(5, 3, 4, rank=0,
                                                                     world_size=1))
    for rank in (0, 1):
        part = sampler.rollout(policy, cond.index(torch.arange(2 * rank, 2 * rank + 2)),
                               group_size=1, rng=BatchRNG(5, 3, 2, rank=rank, world_size=2))
        assert part.extras.selection == whole.extras.selection
    # minibatches of a rollout keep its subset
    assert whole.index(torch.tensor([1, 2])).extras.selection == whole.extras.selection


@pytest.mark.parametrize('kw, match', [
    (dict(loss_ar_steps=3), 'set both'),
    (dict(loss_ar_steps=0, loss_diffusion_steps=2), 'loss_ar_steps=0'),
    (dict(loss_ar_steps=2, loss_diffusion_steps=9), 'exceeds'),
])
def test_subset_settings_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        _sampler(1.0, 'rollout', num_sampling_steps=6, **kw)


def test_evaluated_actions_selector_weights_the_subset_only(policy):
    sampler = _sampler(1.0, 'rollout', num_iter=4, num_sampling_steps=6, loss_ar_steps=1,
                       loss_diffusion_steps=2)
    r = _rollout(policy, sampler, seed=4)
    r.action_mask[0] = False                                      # e.g. a kept prefix
    ev = policy.evaluate(r, spec=sampler.logprob_spec())
    w = EvaluatedActionsSelector()(r, ev, None, None, policy=policy, group_size=2)
    want = (ev.extras['evaluated'] & r.action_mask).float()
    assert torch.equal(w.pg, want) and torch.equal(w.kl, want)
    assert w.metrics['evaluated/frac'] == pytest.approx(
        float(want.sum() / r.action_mask.sum()))
    with pytest.raises(KeyError, match='AllTokensSelector'):
        EvaluatedActionsSelector()(r, PolicyEval(logp=ev.logp), None, None, policy=policy,
                                   group_size=2)


def test_gaussian_mean_kl_is_the_official_elementwise_k3_averaged_over_channels():
    torch.manual_seed(0)
    mu = torch.randn(2, 3, 4, requires_grad=True)
    mu_ref = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    weights = TokenWeights(pg=mask.float(), kl=mask.float())
    reg = GaussianMeanKLRegularizer(beta=0.5, aggregation='token_mean')

    class R:                                   # the regularizer reads action_mask only
        action_mask = mask

    out = reg(PolicyEval(logp=torch.zeros(2, 3), extras={'mean': mu}),
              PolicyEval(logp=torch.zeros(2, 3), extras={'mean': mu_ref}), R, weights,
              progress=0.0)
    d = mu_ref - mu.detach()
    per_action = (torch.exp(d) - d - 1).mean(-1)
    want = 0.5 * per_action[mask].mean()
    torch.testing.assert_close(out['loss'], want)
    assert (per_action >= 0).all()
    out['loss'].backward()
    assert mu.grad is not None and mu.grad[0, 2].abs().sum() == 0    # masked action: no grad
    same = reg(PolicyEval(logp=torch.zeros(2, 3), extras={'mean': mu_ref}),
               PolicyEval(logp=torch.zeros(2, 3), extras={'mean': mu_ref}), R, weights,
               progress=0.0)
    assert float(same['loss']) == 0.0
    with pytest.raises(KeyError, match='KLRegularizer'):
        reg(PolicyEval(logp=torch.zeros(2, 3)), PolicyEval(logp=torch.zeros(2, 3)), R, weights,
            progress=0.0)
    with pytest.raises(ValueError, match='beta=-1'):
        GaussianMeanKLRegularizer(beta=-1, aggregation='token_mean')


def test_a_sampler_that_cannot_sample_the_policy_fails_when_the_algorithm_is_built():
    from vargo.core.algorithm import RLAlgorithm
    cfg = load_config(os.path.join(ROOT, 'configs', 'grpo', 'mar-tiny_grpo_jpeg.py'))
    model = dict(policy=dict(cfg.policy), sampler=dict(cfg.sampler), rewards=dict(cfg.rewards),
                 advantage=dict(cfg.advantage), token_selectors=dict(cfg.token_selectors),
                 objective=dict(cfg.objective), regularizers=dict(cfg.regularizers),
                 group_size=cfg.group_size)
    RLAlgorithm(**model)                                              # the config as shipped
    model['policy']['head_type'] = 'flow'
    with pytest.raises(ConfigError, match="head_sampler='flow_sde'.*head_type='flow'|"
                                          "head_type='flow'.*head_sampler"):
        RLAlgorithm(**model)
