"""GroupNormAdvantage: GRPO's group-normalised advantage and its variants (docs/methods/grpo.md)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vargo.components.advantages import GroupNormAdvantage
from vargo.core.registry import ADVANTAGE_ESTIMATORS, ConfigError
from vargo.core.types import Advantages, RewardOutput

FAST = settings(max_examples=60, deadline=None)
NAN = float('nan')
SCOPES = ('group', 'batch', 'none')


def run(scores, group_size, std_scope='group', num_actions=1, eps=1e-4, per_step=None,
        **kwargs) -> Advantages:
    est = GroupNormAdvantage(std_scope=std_scope, eps=eps, **kwargs)
    # float64 inputs: an affine map of float32 scores would itself round (e.g. 0.1 * R + 32)
    out = RewardOutput(scores=torch.as_tensor(scores, dtype=torch.float64), per_step=per_step)
    return est({'r': out}, group_size=group_size, num_actions=num_actions)


def adv_of(scores, group_size, **kw) -> torch.Tensor:
    """``[B]`` advantage of the single stream (first action)."""
    return run(scores, group_size, **kw).streams['r'][:, 0]


def reference(scores: list[float], group_size: int, std_scope: str, eps: float) -> list[float]:
    """Loop-based re-implementation of the group-normalised advantage, from the definition."""
    def stats(vals):
        n = len(vals)
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
        return mean, std

    valid_all = [s for s in scores if not math.isnan(s)]
    _, std_batch = stats(valid_all) if valid_all else (0.0, 0.0)
    out = []
    for g in range(0, len(scores), group_size):
        grp = scores[g:g + group_size]
        valid = [s for s in grp if not math.isnan(s)]
        if len(valid) < 2 or max(valid) == min(valid):
            out += [0.0] * len(grp)
            continue
        mean, std = stats(valid)
        denom = {'group': std + eps, 'batch': std_batch + eps, 'none': 1.0}[std_scope]
        out += [0.0 if math.isnan(s) else (s - mean) / denom for s in grp]
    return out


# Rewards on a grid of quarters: exact in float32, and distinct values stay distinct under the
# affine maps below (no accidental ties that would flip a group to zero-spread).
quarter = st.integers(-8, 8).map(lambda k: k / 4)


@st.composite
def grouped(draw, with_nan=False, max_groups=4):
    g = draw(st.integers(2, 6))
    n = draw(st.integers(1, max_groups))
    elem = st.one_of(quarter, st.just(NAN)) if with_nan else quarter
    scores = draw(st.lists(elem, min_size=g * n, max_size=g * n))
    return scores, g


# ----------------------------------------------------------------------------------------
# hand-derived values
# ----------------------------------------------------------------------------------------
def test_grpo_hand_example():
    # group [1, 2, 3, 6]: mean 3, unbiased var (4 + 1 + 0 + 9) / 3 = 14/3
    std = math.sqrt(14 / 3)
    expected = torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (std + 1e-4)
    adv = run([1.0, 2.0, 3.0, 6.0], 4, num_actions=5)
    assert adv.streams['r'].shape == (4, 5) and adv.streams['r'].dtype == torch.float32
    torch.testing.assert_close(adv.streams['r'], expected[:, None].expand(4, 5), rtol=0, atol=1e-6)
    assert adv.weights == {'r': 1.0}


def test_std_scopes_hand_example():
    scores = [0.0, 2.0, 4.0, 4.0]                                     # second group constant
    # group: std([0, 2]) = sqrt(2)
    torch.testing.assert_close(adv_of(scores, 2, std_scope='group'),
                               torch.tensor([-1.0, 1.0, 0, 0]) / (math.sqrt(2) + 1e-4),
                               rtol=0, atol=1e-6)
    # batch: group mean, std of the whole batch: var = (6.25 + .25 + 2.25 + 2.25) / 3 = 11/3
    torch.testing.assert_close(adv_of(scores, 2, std_scope='batch'),
                               torch.tensor([-1.0, 1.0, 0, 0]) / (math.sqrt(11 / 3) + 1e-4),
                               rtol=0, atol=1e-6)
    # none (Dr.GRPO): R - mean_G R
    torch.testing.assert_close(adv_of(scores, 2, std_scope='none'),
                               torch.tensor([-1.0, 1.0, 0, 0]), rtol=0, atol=0)


def test_constant_group_is_exactly_zero_and_counted():
    # 0.1 is not exact in binary: the mean of three 0.1 is not 0.1, yet the advantage is exactly 0
    adv = run([0.1, 0.1, 0.1, 0.0, 1.0, 0.5, 7.0, 7.0, 7.0], 3, std_scope='none')
    a = adv.streams['r'][:, 0]
    assert torch.all(a[:3] == 0) and torch.all(a[6:] == 0) and not torch.isnan(a).any()
    assert a[3:6].abs().sum() > 0
    assert adv.metrics['r/frac_reward_zero_std'] == pytest.approx(2 / 3)
    assert adv.metrics['frac_reward_zero_std'] == pytest.approx(2 / 3)
    assert adv.metrics['r/reward_std'] == pytest.approx(0.5, abs=1e-6)   # std of [0, 1, .5]


def test_nan_rewards_hand_example():
    # group 1: one unscorable sample; group 2: one scorable sample only; group 3: all NaN
    adv = run([1.0, NAN, 3.0, NAN, 5.0, NAN, NAN, NAN, NAN], 3)
    a = adv.streams['r'][:, 0]
    s = math.sqrt(2.0)                                                  # std of [1, 3]
    torch.testing.assert_close(a, torch.tensor([-1 / (s + 1e-4), 0, 1 / (s + 1e-4), 0, 0, 0,
                                                0, 0, 0]), rtol=0, atol=1e-6)
    assert adv.metrics['r/frac_reward_nan'] == pytest.approx(6 / 9)
    assert adv.metrics['r/frac_reward_zero_std'] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------------
# invariants (hypothesis)
# ----------------------------------------------------------------------------------------
@FAST
@given(case=grouped(with_nan=True), scope=st.sampled_from(SCOPES))
def test_matches_loop_reference(case, scope):
    scores, g = case
    torch.testing.assert_close(adv_of(scores, g, std_scope=scope),
                               torch.tensor(reference(scores, g, scope, 1e-4)),
                               rtol=1e-6, atol=1e-6)


@FAST
@given(case=grouped(with_nan=True), scope=st.sampled_from(SCOPES))
def test_zero_mean_per_group_and_never_nan(case, scope):
    scores, g = case
    a = adv_of(scores, g, std_scope=scope).double().view(-1, g)
    valid = ~torch.isnan(torch.tensor(scores)).view(-1, g)
    assert not torch.isnan(a).any()
    assert torch.all(a[~valid] == 0)                                  # unscorable -> exactly 0
    # mean over the scorable samples of each group is 0
    assert torch.allclose(a.sum(1), torch.zeros(a.shape[0], dtype=torch.float64), atol=1e-5)


@FAST
@given(case=grouped(with_nan=True), scope=st.sampled_from(SCOPES),
       a=st.floats(0.1, 10.0), b=st.floats(-100.0, 100.0))
def test_positive_affine_transform(case, scope, a, b):
    scores, g = case
    eps = 1e-4
    base = adv_of(scores, g, std_scope=scope, eps=eps)
    moved = adv_of([a * s + b for s in scores], g, std_scope=scope, eps=eps)
    if scope == 'none':
        # Dr.GRPO: shift-invariant, scales with a
        torch.testing.assert_close(moved, a * base, rtol=1e-5, atol=1e-5)
        return
    # (aR + b - a m) / (a s + eps) = (R - m) / (s + eps / a): exact identity with eps rescaled
    torch.testing.assert_close(moved, adv_of(scores, g, std_scope=scope, eps=eps / a),
                               rtol=1e-5, atol=1e-5)
    # hence exactly invariant without eps, and within eps/(a s) relatively with it
    torch.testing.assert_close(adv_of([a * s + b for s in scores], g, std_scope=scope, eps=0.0),
                               adv_of(scores, g, std_scope=scope, eps=0.0), rtol=1e-5, atol=1e-5)


@FAST
@given(data=st.data(), case=grouped(with_nan=True), scope=st.sampled_from(SCOPES))
def test_permutation_equivariant_within_groups(data, case, scope):
    scores, g = case
    n = len(scores) // g
    perm = torch.cat([torch.tensor(data.draw(st.permutations(range(g)))) + i * g
                      for i in range(n)])
    base = adv_of(scores, g, std_scope=scope)
    permuted = adv_of([scores[j] for j in perm.tolist()], g, std_scope=scope)
    torch.testing.assert_close(permuted, base[perm], rtol=1e-6, atol=1e-6)


@FAST
@given(case=grouped(with_nan=True))
def test_nan_excluded_from_group_statistics(case):
    scores, g = case
    a = adv_of(scores, g)
    for start in range(0, len(scores), g):
        grp = scores[start:start + g]
        keep = [i for i, s in enumerate(grp) if not math.isnan(s)]
        if len(keep) >= 2:
            # the estimator run on the scorable samples alone, as one group of len(keep)
            alone = adv_of([grp[i] for i in keep], len(keep))
            torch.testing.assert_close(a[start + torch.tensor(keep)], alone, rtol=0, atol=1e-6)
        else:
            assert torch.all(a[start:start + g] == 0)


@FAST
@given(case=grouped(with_nan=True))
def test_batch_scope_uses_batch_std_of_scorable_rewards(case):
    scores, g = case
    x = torch.tensor(scores, dtype=torch.float64)
    valid = x[~torch.isnan(x)]
    std_b = valid.std().item() if valid.numel() > 1 else 0.0
    # batch scope = Dr.GRPO's centred rewards divided by the batch std
    torch.testing.assert_close(adv_of(scores, g, std_scope='batch'),
                               adv_of(scores, g, std_scope='none') / (std_b + 1e-4),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------
# per-step rewards
# ----------------------------------------------------------------------------------------
@FAST
@given(data=st.data(), case=grouped(with_nan=True, max_groups=3), a=st.integers(1, 5),
       scope=st.sampled_from(SCOPES))
def test_per_step_normalised_per_action_column(data, case, a, scope):
    scores, g = case
    b = len(scores)
    per_step = torch.tensor(data.draw(st.lists(st.lists(st.one_of(quarter, st.just(NAN)),
                                                        min_size=a, max_size=a),
                                               min_size=b, max_size=b)))
    adv = run(scores, g, std_scope=scope, num_actions=a, per_step=per_step).streams['r']
    assert adv.shape == (b, a)
    # a NaN score marks the whole sample unscorable
    col_in = per_step.masked_fill(torch.isnan(torch.tensor(scores))[:, None], NAN)
    for t in range(a):
        torch.testing.assert_close(adv[:, t], adv_of(col_in[:, t].tolist(), g, std_scope=scope),
                                   rtol=1e-6, atol=1e-6)


def test_per_step_hand_example():
    # VMR-like: action 0 carries the prefix value V, action 1 the terminal R
    per_step = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 2.0], [5.0, NAN]])
    adv = run([0.0, 0.0, 2.0, 1.0], 2, std_scope='none', num_actions=2,
              per_step=per_step).streams['r']
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0],
                                                  [0.0, 0.0]]), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------
# streams, weights, metrics
# ----------------------------------------------------------------------------------------
def test_one_stream_per_head_with_weights():
    rewards = {'comp': RewardOutput(torch.tensor([0.0, 1.0, 2.0, 2.0])),
               'fid': RewardOutput(torch.tensor([3.0, 1.0, 5.0, 9.0]))}
    est = GroupNormAdvantage(std_scope='none', stream_weights={'fid': 2.0})
    adv = est(rewards, group_size=2, num_actions=3)
    assert adv.weights == {'comp': 1.0, 'fid': 2.0}                    # unlisted heads get 1.0
    torch.testing.assert_close(adv.streams['comp'][:, 0], torch.tensor([-0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(adv.streams['fid'][:, 0], torch.tensor([1.0, -1.0, -2.0, 2.0]))
    # heads are normalised separately, never summed
    assert adv.metrics['comp/frac_reward_zero_std'] == 0.5
    assert adv.metrics['fid/frac_reward_zero_std'] == 0.0
    # no group is dead in every stream
    assert adv.metrics['frac_reward_zero_std'] == 0.0
    # sample_scalar = sum_s w_s A_s
    torch.testing.assert_close(adv.sample_scalar(), torch.tensor([1.5, -1.5, -4.0, 4.0]))


def test_stream_weights_none_gives_one():
    rewards = {'a': RewardOutput(torch.tensor([0.0, 1.0])), 'b': RewardOutput(torch.ones(2))}
    adv = GroupNormAdvantage(std_scope='group')(rewards, group_size=2, num_actions=1)
    assert adv.weights == {'a': 1.0, 'b': 1.0}
    assert adv.metrics['frac_reward_zero_std'] == 0.0                 # 'a' still has signal


def test_unknown_stream_weight_name_is_an_error():
    est = GroupNormAdvantage(std_scope='group', stream_weights={'fd': 2.0})
    with pytest.raises(ValueError, match=r"\['fd'\].*available heads: \['comp', 'fid'\]"):
        est({'comp': RewardOutput(torch.zeros(2)), 'fid': RewardOutput(torch.zeros(2))},
            group_size=2, num_actions=1)


# ----------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------
def test_constructor_validation():
    with pytest.raises(ValueError, match=r"\['group', 'batch', 'none'\]"):
        GroupNormAdvantage(std_scope='grp')
    with pytest.raises(ValueError, match='eps'):
        GroupNormAdvantage(std_scope='group', eps=-1.0)
    with pytest.raises(ValueError, match=r"stream_weights\['fid'\]"):
        GroupNormAdvantage(std_scope='group', stream_weights={'fid': -2.0})
    with pytest.raises(TypeError):
        GroupNormAdvantage('group')                                    # keyword-only


def test_call_validation():
    est = GroupNormAdvantage(std_scope='group')
    r = {'r': RewardOutput(torch.zeros(6))}
    with pytest.raises(ValueError, match='G >= 2'):
        est(r, group_size=1, num_actions=1)
    with pytest.raises(ValueError, match='B=6.*G=4'):
        est(r, group_size=4, num_actions=1)
    with pytest.raises(ValueError, match=r'per_step of shape \(6, 2\); expected'):
        est({'r': RewardOutput(torch.zeros(6), per_step=torch.zeros(6, 2))}, group_size=2,
            num_actions=3)
    with pytest.raises(ValueError, match='infinite'):
        est({'r': RewardOutput(torch.tensor([0.0, float('inf')]))}, group_size=2, num_actions=1)
    with pytest.raises(ValueError, match='disagree'):
        est({'a': RewardOutput(torch.zeros(4)), 'b': RewardOutput(torch.zeros(2))},
            group_size=2, num_actions=1)
    with pytest.raises(ValueError, match='no rewards'):
        est({}, group_size=2, num_actions=1)


# ----------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------
def test_build_through_registry():
    est = ADVANTAGE_ESTIMATORS.build(dict(type='GroupNormAdvantage', std_scope='none',
                                          stream_weights=dict(fid=2.0)))
    assert isinstance(est, GroupNormAdvantage) and est.std_scope == 'none'
    assert est.stream_weights == {'fid': 2.0} and est.eps == 1e-4
    # MMEngine's per-config scope key is accepted
    assert isinstance(ADVANTAGE_ESTIMATORS.build(
        dict(type='GroupNormAdvantage', std_scope='group', _scope_='vargo')), GroupNormAdvantage)


def test_registry_errors_name_the_fix():
    with pytest.raises(ConfigError, match="'std_scop'; did you mean 'std_scope'"):
        ADVANTAGE_ESTIMATORS.build(dict(type='GroupNormAdvantage', std_scop='group'))
    with pytest.raises(ConfigError, match='missing required setting.*std_scope'):
        ADVANTAGE_ESTIMATORS.build(dict(type='GroupNormAdvantage'))
    with pytest.raises(ConfigError, match="Did you mean 'GroupNormAdvantage'.*Registered.*"
                                          "GroupNormAdvantage.*ADVANTAGE_ESTIMATORS"):
        ADVANTAGE_ESTIMATORS.build(dict(type='GroupNormAdvantag', std_scope='group'))
