"""MAR-GRPO's consistency-aware token selection (components/token_selectors/consistency.py)."""
import pytest
import torch
import torch.nn.functional as F

from test_mar import COND, _policy, _rollout, _sampler
from vargo.components.modules.masked import MARExtras
from vargo.components.token_selectors import ConsistencySelector
from vargo.components.token_selectors.consistency import consistency_gain, consistency_keep
from vargo.core.registry import TOKEN_SELECTORS, ConfigError
from vargo.core.types import Conditions, PolicyEval, Rollout

# Hand-built: 1 sample, 4 AR steps, 3 tokens, D = 2; every final value is e0 = (1, 0).
#   token 0 (commit 3): e1 -> (1, 1) -> (1, 0.1)    moves closer at steps 1 and 2
#   token 1 (commit 3): e1 -> (1, 0.1) -> (1, 1)    closer at step 1, away at step 2
#   token 2 (commit 1): (1, -1) -> e0 (committed)
FINAL = torch.tensor([[[1., 0.], [1., 0.], [1., 0.]]])
PRED = torch.tensor([[[[0., 1.], [0., 1.], [1., -1.]],
                      [[1., 1.], [1., .1], [1., 0.]],
                      [[1., .1], [1., 1.], [1., 0.]],
                      [[1., 0.], [1., 0.], [1., 0.]]]])
COMMIT = torch.tensor([[3, 3, 1]])


def _hand_rollout(action_step, mask=(True, True, True), x0_pred=PRED):
    """K = 1 transition per token, so action j is token j."""
    ex = MARExtras(commit_step=COMMIT, tokens=FINAL, x0_pred=x0_pred, num_iter=4,
                   num_sampling_steps=2, seq_len=3)
    return Rollout(Conditions(class_ids=torch.tensor([0])), torch.zeros(1, dtype=torch.long),
                   torch.zeros(1, 3, 2), torch.zeros(1, 3), torch.tensor([mask]),
                   torch.tensor(action_step), torch.zeros(3, 2, dtype=torch.long), extras=ex)


def _call(sel, r):
    return sel(r, PolicyEval(torch.zeros_like(r.logp_old)), None, None, policy=None,
               group_size=1)


def test_gain_is_the_step_to_step_cosine_difference():
    g = consistency_gain(PRED, FINAL)
    cos = F.cosine_similarity(PRED, FINAL.unsqueeze(1), dim=-1)
    assert torch.equal(g[:, 0], torch.zeros(1, 3))
    torch.testing.assert_close(g[:, 1:], cos[:, 1:] - cos[:, :-1])
    assert g[0, 2, 0] > 0 > g[0, 2, 1]


def test_the_rule_on_hand_built_predictions():
    keep, gated = consistency_keep(PRED, FINAL, COMMIT, tau=0.0, start_step=2)
    k = keep[0].int().tolist()
    assert k[0] == [1, 1, 1]            # step 0: nothing gated (no previous prediction)
    assert k[1] == [1, 1, 1]            # step 1 < start_step: kept; token 2 committed now
    assert k[2] == [1, 0, 0]            # token 0 closer: kept; token 1 away: dropped;
    assert k[3] == [1, 1, 0]            # token 2 was committed before: not in the loss
    assert gated[0].int().tolist() == [[0, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]]
    # the paper's 1-based "i >= 2" is start_step=1: step 1 is gated too (both moved closer,
    # and the committed token 2 stays kept)
    keep1, gated1 = consistency_keep(PRED, FINAL, COMMIT, start_step=1)
    assert gated1[0, 1].int().tolist() == [1, 1, 0] and keep1[0, 1].all()
    # a prediction that moves away at step 1 is dropped once step 1 is gated
    away = PRED.clone()
    away[0, 1, 0] = torch.tensor([0., 1.])          # token 0 stays at e1: gain 0
    away[0, 1, 1] = torch.tensor([-1., 1.])        # token 1 moves away at step 1
    assert consistency_keep(away, FINAL, COMMIT, start_step=1)[0][0, 1].int().tolist() \
        == [0, 0, 1]                                 # gain 0 is not > tau = 0


def test_tau_is_respected():
    g = float(consistency_gain(PRED, FINAL)[0, 2, 0])         # token 0's gain at step 2
    assert consistency_keep(PRED, FINAL, COMMIT, tau=g - 1e-4)[0][0, 2, 0]
    assert not consistency_keep(PRED, FINAL, COMMIT, tau=g + 1e-4)[0][0, 2, 0]
    # a negative tau tolerates a small move away
    g1 = float(consistency_gain(PRED, FINAL)[0, 2, 1])
    assert consistency_keep(PRED, FINAL, COMMIT, tau=g1 - 1e-4)[0][0, 2, 1]
    # committed-at-step tokens are kept whatever tau is
    assert consistency_keep(PRED, FINAL, COMMIT, tau=2.0)[0][0, 1, 2]
    assert consistency_keep(PRED, FINAL, COMMIT, tau=2.0)[0][0, 3, :2].all()


def test_committed_actions_are_always_kept_and_the_kl_is_unfiltered():
    sel = TOKEN_SELECTORS.build(dict(type='ConsistencySelector', tau=0.0))
    # vargo's layout: each action at its token's commit step
    tw = _call(sel, _hand_rollout([3, 3, 1], mask=(True, False, True)))
    assert tw.pg.tolist() == [[1., 0., 1.]] and tw.kl.tolist() == [[1., 0., 1.]]
    assert tw.metrics['consistency/kept_frac'] == 0.5           # 2 gated pairs, 1 kept
    assert tw.metrics['consistency/gated_frac'] == pytest.approx(2 / 7)   # of 7 still-masked
    assert tw.metrics['consistency/pg_frac'] == 1.0


def test_actions_at_a_refinement_step_are_gated():
    """An action whose ``action_step`` is a step where its token is still masked (a refinement
    chain, what the official loss also trains) gets that step's keep decision."""
    tw = _call(ConsistencySelector(), _hand_rollout([2, 2, 1]))
    assert tw.pg.tolist() == [[1., 0., 1.]]
    assert tw.kl.tolist() == [[1., 1., 1.]]
    assert tw.metrics['consistency/pg_frac'] == pytest.approx(2 / 3)


def test_missing_predictions_and_bad_settings():
    with pytest.raises(ValueError, match=r'MaskedSampler\(record_predictions=True\)'):
        _call(ConsistencySelector(), _hand_rollout([3, 3, 1], x0_pred=None))
    for bad in (dict(tau='0'), dict(tau=3.0), dict(start_step=0), dict(start_step=1.5),
                dict(tau=True)):
        with pytest.raises(ConfigError):
            ConsistencySelector(**bad)
    with pytest.raises(Exception, match='unexpected|tau_'):
        TOKEN_SELECTORS.build(dict(type='ConsistencySelector', tau_=0.0))


def test_on_a_tiny_mar_rollout():
    torch.manual_seed(0)
    policy = _policy()
    sampler = _sampler(1.0, 'rollout', record_predictions=True, num_iter=4)
    r = _rollout(policy, sampler, g=4)
    ex = r.extras
    b, a = r.batch_size, r.num_actions
    tw = _call(ConsistencySelector(), r)
    assert tw.pg.shape == tw.kl.shape == (b, a)
    mask = r.action_mask.float()
    assert torch.equal(tw.kl, mask)
    assert torch.equal(tw.pg, mask)          # every rollout action is a committed chain
    # the rule's statistic against a loop over (sample, step, token)
    kept = total = 0
    for i in range(b):
        for s in range(2, ex.num_iter):
            for n in range(ex.seq_len):
                if ex.commit_step[i, n] > s:
                    c = [F.cosine_similarity(ex.x0_pred[i, t, n], ex.tokens[i, n], dim=0)
                         for t in (s - 1, s)]
                    kept += int(c[1] - c[0] > 0)
                    total += 1
    assert total > 0
    frac = tw.metrics['consistency/kept_frac']
    assert 0.0 < frac <= 1.0 and frac == pytest.approx(kept / total)
    # with tau above any cosine gain every gated pair is dropped, committed chains still kept
    tw2 = _call(ConsistencySelector(tau=2.0), r)
    assert tw2.metrics['consistency/kept_frac'] == 0.0 and torch.equal(tw2.pg, mask)
