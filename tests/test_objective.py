"""Properties of the GRPO objective's pure functions (core/objective.py, docs/methods/grpo.md).

Everything runs in float64 so equalities can be asserted to ~1e-10.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vargo.core.objective import (AGGREGATIONS, ObjectiveConfig, aggregate, clipped_surrogate,
                                  importance_ratio, kl_estimate, policy_loss)

F64 = torch.float64
FAST = settings(max_examples=60, deadline=None)

ratio_st = st.floats(0.05, 5.0, allow_nan=False)
# no subnormal advantages: there rho * A and the clipped (1 - eps) * A round to the same float,
# so min() cannot tell the branches apart (found by hypothesis: A = 5e-324, rho = 0.625)
adv_st = st.floats(-5.0, 5.0, allow_nan=False, allow_subnormal=False)
eps_st = st.floats(0.01, 0.5, allow_nan=False)
logp_st = st.floats(-12.0, 0.0, allow_nan=False)


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# ----------------------------------------------------------------------------------------
# clipped surrogate
# ----------------------------------------------------------------------------------------
@FAST
@given(pairs=st.lists(st.tuples(ratio_st, adv_st), min_size=1, max_size=24), lo=eps_st, hi=eps_st)
def test_clipped_surrogate_bounds_and_pessimism(pairs, lo, hi):
    rho, adv = t64([p[0] for p in pairs]), t64([p[1] for p in pairs])
    loss, info = clipped_surrogate(rho, adv, (lo, hi))
    tol = 1e-12
    # PPO's bound is pessimistic: never below the unclipped loss -rho*A (arXiv 1707.06347 eq. 7)
    assert torch.all(loss >= -rho * adv - tol)
    # and bounded by the clip range: A>0 -> loss >= -(1+eps_hi)A; A<0 -> loss >= -(1-eps_lo)A
    pos, neg = adv > 0, adv < 0
    assert torch.all(loss[pos] >= -(1 + hi) * adv[pos] - tol)
    assert torch.all(loss[neg] >= -(1 - lo) * adv[neg] - tol)
    assert torch.all(loss[adv == 0] == 0)
    # inside the clip range it is exactly the policy-gradient surrogate
    inside = (rho >= 1 - lo) & (rho <= 1 + hi)
    torch.testing.assert_close(loss[inside], -(rho * adv)[inside], rtol=0, atol=tol)
    # the clip flags are exactly the removed-gradient cases
    assert torch.equal(info['clipped_low'], (rho < 1 - lo) & (adv < 0))
    assert torch.equal(info['clipped_high'], (rho > 1 + hi) & (adv > 0))


@FAST
@given(pairs=st.lists(st.tuples(ratio_st, adv_st), min_size=1, max_size=24), lo=eps_st, hi=eps_st)
def test_clipped_surrogate_gradient_zero_where_clipped(pairs, lo, hi):
    rho, adv = t64([p[0] for p in pairs]), t64([p[1] for p in pairs])
    # stay off the clip boundaries, where min/clamp are not differentiable
    assume(torch.all((rho - (1 - lo)).abs() > 1e-9) and torch.all((rho - (1 + hi)).abs() > 1e-9))
    rho.requires_grad_(True)
    loss, info = clipped_surrogate(rho, adv, (lo, hi))
    (grad,) = torch.autograd.grad(loss.sum(), rho)
    clipped = info['clipped_low'] | info['clipped_high']
    expected = torch.where(clipped, torch.zeros_like(adv), -adv)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    # the asymmetric cases keep their gradient: rho above the range with A<0, below with A>0
    keep = ((rho.detach() > 1 + hi) & (adv < 0)) | ((rho.detach() < 1 - lo) & (adv > 0))
    assert not torch.any(clipped & keep)
    assert torch.all(grad[keep] == -adv[keep])


def test_clipped_surrogate_hand_example():
    rho = t64([0.5, 0.5, 1.1, 1.5, 1.5])
    adv = t64([1.0, -1.0, 2.0, 1.0, -1.0])
    loss, info = clipped_surrogate(rho, adv, (0.2, 0.3))
    # min(0.5, 0.8)=0.5 ; min(-0.5, -0.8)=-0.8 ; 2.2 ; min(1.5, 1.3)=1.3 ; min(-1.5, -1.3)=-1.5
    torch.testing.assert_close(loss, t64([-0.5, 0.8, -2.2, -1.3, 1.5]), rtol=0, atol=1e-12)
    assert info['clipped_low'].tolist() == [False, True, False, False, False]
    assert info['clipped_high'].tolist() == [False, False, False, True, False]


@FAST
@given(pairs=st.lists(st.tuples(ratio_st, adv_st), min_size=1, max_size=16))
def test_clipped_surrogate_disabled_is_policy_gradient(pairs):
    rho, adv = t64([p[0] for p in pairs]), t64([p[1] for p in pairs])
    loss, info = clipped_surrogate(rho, adv, None)
    torch.testing.assert_close(loss, -rho * adv, rtol=0, atol=0)
    assert not info['clipped_low'].any() and not info['clipped_high'].any()


@FAST
@given(rows=st.lists(st.tuples(logp_st, st.floats(-0.5, 0.5), adv_st), min_size=1, max_size=16),
       lo=eps_st, hi=eps_st)
def test_token_ratio_and_surrogate_gradient_wrt_logp(rows, lo, hi):
    logp_old = t64([r[0] for r in rows]).unsqueeze(0)                 # [1, A]
    logp = (logp_old + t64([r[1] for r in rows])).requires_grad_(True)
    adv = t64([r[2] for r in rows]).unsqueeze(0)
    mask = torch.ones_like(adv, dtype=torch.bool)
    rho = importance_ratio(logp, logp_old, mask, 'token')
    assume(torch.all((rho - (1 - lo)).abs() > 1e-9) and torch.all((rho - (1 + hi)).abs() > 1e-9))
    loss, info = clipped_surrogate(rho, adv, (lo, hi))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    clipped = info['clipped_low'] | info['clipped_high']
    # d(-rho*A)/dl = -rho*A where unclipped, 0 where clipped
    expected = torch.where(clipped, torch.zeros_like(adv), -(rho * adv).detach())
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------
# importance ratio
# ----------------------------------------------------------------------------------------
@FAST
@given(data=st.data(), b=st.integers(1, 4), a=st.integers(1, 8))
def test_importance_ratio_token_and_sequence(data, b, a):
    l_old = t64(data.draw(st.lists(st.lists(logp_st, min_size=a, max_size=a), min_size=b,
                                   max_size=b)))
    delta = t64(data.draw(st.lists(st.lists(st.floats(-1, 1), min_size=a, max_size=a),
                                   min_size=b, max_size=b)))
    mask = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=a, max_size=a),
                                           min_size=b, max_size=b)))
    logp = l_old + delta
    tok = importance_ratio(logp, l_old, mask, 'token')
    torch.testing.assert_close(tok, torch.where(mask, torch.exp(delta), torch.ones_like(delta)))
    seq = importance_ratio(logp, l_old, mask, 'sequence')
    for i in range(b):
        m = mask[i]
        mean_log = delta[i][m].mean().item() if m.any() else 0.0
        torch.testing.assert_close(seq[i], torch.full((a,), math.exp(mean_log), dtype=F64))
    # ratio is exactly 1 when the policy has not moved (mu = 1, first inner epoch)
    for level in ('token', 'sequence'):
        assert torch.all(importance_ratio(l_old, l_old.clone(), mask, level) == 1.0)


def test_importance_ratio_ignores_masked_non_finite_logp():
    l_old = t64([[-1.0, -float('inf')]])
    logp = t64([[-0.5, -float('inf')]])
    mask = torch.tensor([[True, False]])
    seq = importance_ratio(logp, l_old, mask, 'sequence')
    torch.testing.assert_close(seq, torch.full((1, 2), math.exp(0.5), dtype=F64))
    with pytest.raises(ValueError, match="'token', 'sequence'"):
        importance_ratio(logp, l_old, mask, 'sample')


# ----------------------------------------------------------------------------------------
# KL estimators
# ----------------------------------------------------------------------------------------
@FAST
@given(pairs=st.lists(st.tuples(logp_st, logp_st, st.booleans()), min_size=1, max_size=32))
def test_k3_nonnegative_and_zero_iff_equal(pairs):
    logp = t64([p[0] for p in pairs])
    # half of the entries equal, the others differing by at least 1e-6 (below that, d^2/2 is
    # under float64 resolution of exp(d) - 1 - d)
    ref = torch.where(torch.tensor([p[2] for p in pairs]), logp, t64([p[1] for p in pairs]))
    d = ref - logp
    assume(torch.all((d == 0) | (d.abs() > 1e-6)))
    k3 = kl_estimate(logp, ref, 'k3')
    assert torch.all(k3 >= 0)
    assert torch.equal(k3 == 0, d == 0)
    torch.testing.assert_close(kl_estimate(logp, ref, 'k2'), 0.5 * d * d, rtol=0, atol=0)
    torch.testing.assert_close(kl_estimate(logp, ref, 'k1'), logp - ref, rtol=0, atol=0)


def test_kl_estimators_hand_values():
    logp = torch.log(t64([0.5, 0.25, 0.5]))
    ref = torch.log(t64([0.25, 0.5, 0.5]))
    ln2 = math.log(2.0)
    # d = l_ref - l = [-ln2, ln2, 0]
    torch.testing.assert_close(kl_estimate(logp, ref, 'k1'), t64([ln2, -ln2, 0.0]))
    torch.testing.assert_close(kl_estimate(logp, ref, 'k2'), t64([ln2 ** 2 / 2, ln2 ** 2 / 2, 0.]))
    torch.testing.assert_close(kl_estimate(logp, ref, 'k3'), t64([ln2 - 0.5, 1 - ln2, 0.0]))
    with pytest.raises(ValueError, match="'k1', 'k2', 'k3'"):
        kl_estimate(logp, ref, 'k4')


probs_st = st.lists(st.floats(0.05, 1.0), min_size=2, max_size=6)


@FAST
@given(p=probs_st, q=probs_st)
def test_k1_and_k3_expectations_are_kl_policy_to_reference(p, q):
    n = min(len(p), len(q))
    p, q = t64(p[:n]), t64(q[:n])
    p, q = p / p.sum(), q / q.sum()
    kl_pq = float((p * (p.log() - q.log())).sum())                     # KL(pi_theta || pi_ref)
    # exact expectation over the support, actions drawn from the policy p
    for est in ('k1', 'k3'):
        expect = float((p * kl_estimate(p.log(), q.log(), est)).sum())
        assert expect == pytest.approx(kl_pq, abs=1e-12)


def test_k1_monte_carlo_matches_kl_of_known_categoricals():
    p, q = t64([0.5, 0.3, 0.2]), t64([0.2, 0.3, 0.5])
    kl_pq = 0.5 * math.log(2.5) + 0.2 * math.log(0.4)                  # = 0.3(ln 2.5) ≈ 0.2749
    assert kl_pq == pytest.approx(0.3 * math.log(2.5), abs=1e-12)
    gen = torch.Generator().manual_seed(0)
    idx = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    for est in ('k1', 'k3'):
        vals = kl_estimate(p.log()[idx], q.log()[idx], est)
        sem = vals.std().item() / math.sqrt(vals.numel())
        assert abs(vals.mean().item() - kl_pq) < 4 * sem


# ----------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------
X = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[True, True, False], [True, False, False]])
W = t64([[1.0, 0.5, 2.0], [2.0, 1.0, 1.0]])
# sum(w*x*m) = 1*1 + 2*0.5 + 4*2 = 10 over 3 active tokens; sum(w*m) = 3.5


@pytest.mark.parametrize('mode, ctx, expected', [
    # per-sample token means (1*1 + 2*0.5)/2 = 1 and 4*2/1 = 8, averaged over 2 samples
    ('sample_mean_of_token_means', None, 4.5),
    ('sample_mean_of_token_means', {'num_samples': 4}, 9.0 / 4),
    ('token_mean', None, 10.0 / 3),
    ('global_token_mean', {'num_tokens': 5}, 2.0),
    ('token_sum_over_constant', None, 10.0 / 6),
    ('token_sum_over_constant', {'constant': 4.0}, 2.5),
    ('weighted_token_mean', None, 10.0 / (3.5 + 1e-6)),
    ('weighted_token_mean', {'weight_sum': 5.0}, 10.0 / (5.0 + 1e-6)),
])
def test_aggregation_hand_examples(mode, ctx, expected):
    assert aggregate(X, M, W, mode, ctx).item() == pytest.approx(expected, abs=1e-6)


def test_aggregation_without_weights_and_unknown_mode():
    # unweighted: token mean (1 + 2 + 4) / 3
    assert aggregate(X, M, None, 'token_mean').item() == pytest.approx(7 / 3, abs=1e-12)
    with pytest.raises(ValueError, match='token_mean'):
        aggregate(X, M, None, 'mean')
    # an empty mask gives 0, not NaN
    empty = torch.zeros_like(M)
    for mode in AGGREGATIONS:   # (group_size: rows are groups of one for the group mode)
        assert aggregate(X, empty, W, mode, {'group_size': 1}).item() == 0.0


def _totals(mode: str, x: torch.Tensor, mask: torch.Tensor, w: torch.Tensor) -> dict:
    """The optimizer-batch totals a runner passes when it splits the batch into micro-batches."""
    m = mask.to(x.dtype)
    return {
        'sample_mean_of_token_means': {'num_samples': x.shape[0]},
        'token_mean': {'num_tokens': m.sum()},
        'global_token_mean': {'num_tokens': m.sum()},
        'token_sum_over_constant': {'constant': float(x.shape[0] * x.shape[1])},
        'weighted_token_mean': {'weight_sum': (w * m).sum()},
        'group_weighted_token_mean': {'group_size': 1, 'num_groups': x.shape[0]},
    }[mode]


@FAST
@given(data=st.data(), a=st.integers(1, 6), mode=st.sampled_from(sorted(AGGREGATIONS)),
       micro=st.sampled_from([1, 2, 4]))
def test_aggregation_invariant_to_micro_batching(data, a, mode, micro):
    b = 8
    x = t64(data.draw(st.lists(st.lists(st.floats(-10, 10), min_size=a, max_size=a),
                               min_size=b, max_size=b)))
    w = t64(data.draw(st.lists(st.lists(st.floats(0, 2), min_size=a, max_size=a),
                               min_size=b, max_size=b)))
    mask = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=a, max_size=a),
                                           min_size=b, max_size=b)))
    assume(mask.any())
    full = aggregate(x, mask, w, mode, {'group_size': 1})               # 1 x 8
    ctx = _totals(mode, x, mask, w)
    parts = sum(aggregate(x[i:i + micro], mask[i:i + micro], w[i:i + micro], mode, ctx)
                for i in range(0, b, micro))                            # (8 / micro) x micro
    torch.testing.assert_close(parts, full, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------
# composed policy loss
# ----------------------------------------------------------------------------------------
def test_objective_config_validation():
    assert ObjectiveConfig(clip_eps=0.2, ratio_level='token', aggregation='token_mean').clip_eps \
        == (0.2, 0.2)
    with pytest.raises(ValueError, match='clip_eps'):
        ObjectiveConfig(clip_eps=-0.1, ratio_level='token', aggregation='token_mean')
    with pytest.raises(ValueError, match="'token', 'sequence'"):
        ObjectiveConfig(clip_eps=0.2, ratio_level='seq', aggregation='token_mean')
    with pytest.raises(ValueError, match='weighted_token_mean'):
        ObjectiveConfig(clip_eps=0.2, ratio_level='token', aggregation='mean')


def test_policy_loss_hand_example():
    # one sample, two actions, rho = [1.5, 0.5], A = 1 on both, eps 0.2, token mean
    cfg = ObjectiveConfig(clip_eps=0.2, ratio_level='token', aggregation='token_mean')
    l_old = t64([[-1.0, -1.0]])
    logp = l_old + torch.log(t64([[1.5, 0.5]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, metrics = policy_loss(cfg, logp, l_old, {'r': torch.ones(1, 2, dtype=F64)}, {'r': 1.0},
                                mask)
    # -(min(1.5, 1.2) + min(0.5, 0.5)) / 2 = -0.85; only the first action is clipped
    assert loss.item() == pytest.approx(-0.85, abs=1e-12)
    assert metrics['clip_frac'].item() == pytest.approx(0.5)
    assert metrics['clip_frac_high'].item() == pytest.approx(0.5)
    assert metrics['clip_frac_low'].item() == 0.0
    assert metrics['ratio_max'].item() == pytest.approx(1.5)
    assert metrics['ratio_min'].item() == pytest.approx(0.5)


@FAST
@given(data=st.data(), b=st.integers(1, 4), a=st.integers(1, 6),
       clip=st.sampled_from([None, 0.2, (0.2, 0.28)]),
       level=st.sampled_from(['token', 'sequence']),
       mode=st.sampled_from(sorted(AGGREGATIONS)),
       c1=st.floats(0.0, 3.0), c2=st.floats(0.0, 3.0))
def test_multi_stream_loss_is_weighted_sum_of_single_streams(data, b, a, clip, level, mode,
                                                             c1, c2):
    def mat(elems):
        return t64(data.draw(st.lists(st.lists(elems, min_size=a, max_size=a), min_size=b,
                                      max_size=b)))
    cfg = ObjectiveConfig(clip_eps=clip, ratio_level=level, aggregation=mode)
    l_old = mat(logp_st)
    logp = (l_old + mat(st.floats(-0.5, 0.5))).requires_grad_(True)
    a1, a2, w = mat(adv_st), mat(adv_st), mat(st.floats(0.0, 2.0))
    mask = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=a, max_size=a),
                                           min_size=b, max_size=b)))
    ctx = {'group_size': 1}
    both, _ = policy_loss(cfg, logp, l_old, {'comp': a1, 'fid': a2}, {'comp': c1, 'fid': c2},
                          mask, w, ctx)
    one, _ = policy_loss(cfg, logp, l_old, {'comp': a1}, {'comp': 1.0}, mask, w, ctx)
    two, _ = policy_loss(cfg, logp, l_old, {'fid': a2}, {'fid': 1.0}, mask, w, ctx)
    torch.testing.assert_close(both, c1 * one + c2 * two, rtol=1e-10, atol=1e-10)
    g_both, = torch.autograd.grad(both, logp)
    g_one, = torch.autograd.grad(one, logp)
    g_two, = torch.autograd.grad(two, logp)
    torch.testing.assert_close(g_both, c1 * g_one + c2 * g_two, rtol=1e-10, atol=1e-10)


def test_group_weighted_token_mean_is_the_mean_of_per_group_weighted_means():
    from vargo.core.objective import aggregate
    x = torch.tensor([[1., 2.], [3., 4.], [5., 6.], [7., 8.]])
    w = torch.tensor([[1., 0.], [1., 2.], [0., 0.5], [0.5, 0.]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [True, False]])
    g0 = (1 * 1 + 3 * 1 + 4 * 2) / (1 + 1 + 2 + 1e-6)
    g1 = (6 * 0.5 + 7 * 0.5) / (0.5 + 0.5 + 1e-6)           # the masked 8 does not count
    got = aggregate(x, mask, w, 'group_weighted_token_mean', {'group_size': 2})
    assert got.item() == pytest.approx((g0 + g1) / 2, abs=1e-6)
    # a micro-batch of one group of an optimizer batch of two groups
    half = aggregate(x[:2], mask[:2], w[:2], 'group_weighted_token_mean',
                     {'group_size': 2, 'num_groups': 2})
    assert half.item() == pytest.approx(g0 / 2, abs=1e-6)
    with pytest.raises(ValueError, match='group_size'):
        aggregate(x, mask, w, 'group_weighted_token_mean', {})
    with pytest.raises(ValueError, match='whole groups'):
        aggregate(x[:3], mask[:3], w[:3], 'group_weighted_token_mean', {'group_size': 2})
