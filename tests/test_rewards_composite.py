"""CompositeReward: named sub-heads combined into one score (one advantage stream)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vargo.components.advantages.group_norm import GroupNormAdvantage
from vargo.components.rewards import CompositeReward
from vargo.components.rewards.composite import normalize_within_groups
from vargo.core.interfaces import RewardHead, Stateful
from vargo.core.registry import REWARD_HEADS, ConfigError
from vargo.core.types import Conditions, RewardOutput, Rollout

nan = math.nan


@REWARD_HEADS.register_module(force=True)
class FixedScoresReward(RewardHead):
    """Returns the configured scores (tests only)."""

    def __init__(self, *, values: list, strict: bool = False):
        self.values = values
        self.strict = strict

    def __call__(self, rollout, ctx):
        s = torch.tensor(self.values, dtype=torch.float32)
        return RewardOutput(scores=s, metrics={'calls': 1.0},
                            strict=(s > 0) if self.strict else None)


@REWARD_HEADS.register_module(force=True)
class CountingStatefulReward(RewardHead, Stateful):
    """Scores the number of calls so far (tests only)."""

    def __init__(self, *, batch: int):
        self.batch, self.calls = batch, 0

    def __call__(self, rollout, ctx):
        self.calls += 1
        return RewardOutput(scores=torch.full((self.batch,), float(self.calls)))

    def state_dict(self):
        return {'calls': self.calls}

    def load_state_dict(self, state):
        self.calls = state['calls']


def rollout_of(b: int, group_size: int) -> Rollout:
    return Rollout(cond=Conditions(class_ids=torch.zeros(b, dtype=torch.long)),
                   group_ids=torch.arange(b) // group_size,
                   actions=torch.zeros(b, 1, dtype=torch.long), logp_old=torch.zeros(b, 1),
                   action_mask=torch.ones(b, 1, dtype=torch.bool), action_step=torch.arange(1),
                   action_pos=torch.zeros(1, 2, dtype=torch.long),
                   images=torch.zeros(b, 3, 4, 4))


def composite(mode, a, b, weights=None, eps=1e-4, **kw) -> CompositeReward:
    return CompositeReward(mode=mode, weights=weights, eps=eps, heads=dict(
        a=dict(type='FixedScoresReward', values=a, **kw), b=dict(type='FixedScoresReward',
                                                                  values=b)))


def test_sum_then_normalize_by_hand_with_nan():
    head = composite('sum_then_normalize', [1., 2., 3., nan], [10., nan, 30., 40.],
                     weights=dict(a=2.0, b=0.5))
    out = head(rollout_of(4, 2), None)
    want = torch.tensor([2 * 1 + 0.5 * 10, nan, 2 * 3 + 0.5 * 30, nan])
    assert torch.allclose(out.scores, want, equal_nan=True)
    assert out.scores.dtype == torch.float32
    m = out.metrics
    assert m['a/mean'] == pytest.approx(2.0) and m['b/mean'] == pytest.approx(80 / 3)
    assert m['a/std'] == pytest.approx(1.0) and m['b/std'] == pytest.approx(15.275252, rel=1e-6)
    assert m['a/frac_nan'] == 0.25 and m['b/frac_nan'] == 0.25
    assert m['a/calls'] == 1.0 and m['frac_unscorable'] == 0.5


def test_normalize_then_sum_by_hand_with_nan():
    # groups of 3: [1, 2, 3] | [5, 5, 5] (no spread) | [4, nan, 8] (nan in head a)
    a = [1., 2., 3., 5., 5., 5., 4., nan, 8.]
    b = [30., 10., 20., 1., 2., 3., 0., 100., 2.]
    head = composite('normalize_then_sum', a, b, weights=dict(a=1.0, b=2.0))
    out = head(rollout_of(9, 3), None)
    eps = 1e-4
    za = [-1 / (1 + eps), 0, 1 / (1 + eps), 0, 0, 0,
          -2 / (math.sqrt(8) + eps), nan, 2 / (math.sqrt(8) + eps)]
    # head b's last group is normalised without the sample head a could not score: [0, 2]
    zb = [10 / (10 + eps), -10 / (10 + eps), 0, -1 / (1 + eps), 0, 1 / (1 + eps),
          -1 / (math.sqrt(2) + eps), nan, 1 / (math.sqrt(2) + eps)]
    want = torch.tensor([x + 2 * y for x, y in zip(za, zb)], dtype=torch.float32)
    assert torch.allclose(out.scores, want, equal_nan=True, atol=1e-6)
    assert out.metrics['b/mean'] == pytest.approx(168 / 9)   # metrics see all raw scores


def test_group_edge_cases_follow_group_norm_conventions():
    z = normalize_within_groups(torch.tensor([nan, 3., nan, nan, 2., 2.]),
                                torch.tensor([0, 0, 1, 1, 2, 2]))
    # one scorable sample: no baseline -> 0; all NaN -> NaN; equal values -> exactly 0
    assert torch.equal(torch.isnan(z), torch.tensor([True, False, True, True, False, False]))
    assert z[1] == 0 and z[4] == 0 and z[5] == 0
    # uneven groups from group_ids (runs of equal ids)
    z = normalize_within_groups(torch.tensor([1., 3., 0., 6., 3.]), torch.tensor([7, 7, 2, 2, 2]),
                                eps=0.0)
    assert torch.allclose(z, torch.tensor([-1 / math.sqrt(2), 1 / math.sqrt(2), -1., 1., 0.],
                                          dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.one_of(st.integers(-4000, 4000).map(lambda i: i / 4), st.just(nan)),
                         min_size=4,
                         max_size=4), min_size=1, max_size=5),
       st.floats(0.1, 10), st.floats(-5, 5))
def test_normalize_then_sum_has_zero_group_mean_and_is_affine_invariant(groups, scale, shift):
    values = [v for g in groups for v in g]
    b = len(values)
    head = composite('normalize_then_sum', values, [0.0] * b, eps=0.0)
    head2 = composite('normalize_then_sum', [scale * v + shift for v in values], [7.0] * b,
                      eps=0.0)
    s = head(rollout_of(b, 4), None).scores.double().view(-1, 4)
    s2 = head2(rollout_of(b, 4), None).scores.double().view(-1, 4)
    ok = ~torch.isnan(s)
    assert torch.equal(ok, ~torch.isnan(torch.tensor(values).view(-1, 4)))
    group_mean = torch.where(ok, s, torch.zeros_like(s)).sum(1) / ok.sum(1).clamp_min(1)
    assert torch.allclose(group_mean, torch.zeros_like(group_mean), atol=1e-6)
    assert (s[ok].abs() <= 4 / math.sqrt(3) + 1e-6).all()   # |z| <= (n-1)/sqrt(n) < 2
    # a positive affine transform of a head's scores leaves its z unchanged (eps = 0)
    assert torch.allclose(s, s2, equal_nan=True, atol=1e-5)


def test_composite_is_one_stream_of_group_norm_advantage():
    """LOO-FID: A_comp from CLIP+HPS (weight 1) and A_fid (weight 2) as two streams."""
    comp = composite('sum_then_normalize', [0.3, 0.1, 0.2, 0.2], [0.25, 0.2, 0.1, 0.3])
    rollout = rollout_of(4, 2)
    rewards = {'comp': comp(rollout, None),
               'fid': RewardOutput(scores=torch.tensor([1., -1., 0.5, 0.]))}
    est = GroupNormAdvantage(std_scope='group', stream_weights=dict(comp=1.0, fid=2.0))
    adv = est(rewards, group_size=2, num_actions=3)
    assert set(adv.streams) == {'comp', 'fid'} and adv.weights == {'comp': 1.0, 'fid': 2.0}
    # comp = [0.55, 0.30, 0.30, 0.50]: group 1 -> (+, -), group 2 -> (-, +)
    signs = torch.sign(adv.streams['comp'][:, 0])
    assert torch.equal(signs, torch.tensor([1., -1., -1., 1.]))


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="not one of \\['sum_then_normalize', "):
        composite('sum', [1.], [1.])
    with pytest.raises(ConfigError, match="weights name head\\(s\\) \\['c'\\]"):
        composite('sum_then_normalize', [1.], [1.], weights=dict(c=1.0))
    with pytest.raises(ValueError, match='finite float'):
        composite('sum_then_normalize', [1.], [1.], weights=dict(a=math.inf))
    with pytest.raises(ConfigError, match="Unknown reward_head type 'ClipScoreRewrd'.*"
                                          "ClipScoreReward"):
        CompositeReward(mode='sum_then_normalize', heads=dict(clip=dict(type='ClipScoreRewrd')))
    with pytest.raises(ConfigError, match='non-empty dict'):
        CompositeReward(mode='sum_then_normalize', heads={})
    with pytest.raises(ConfigError, match="did you mean 'values'"):
        CompositeReward(mode='sum_then_normalize', heads=dict(a=dict(type='FixedScoresReward',
                                                                      value=[1.])))


def test_sub_head_outputs_are_checked_and_passed_on():
    head = composite('sum_then_normalize', [1., -1.], [1., 1.], strict=True)
    out = head(rollout_of(2, 2), None)
    assert out.metrics['a/strict'] == 0.5 and 'b/strict' not in out.metrics
    bad = composite('sum_then_normalize', [1., math.inf], [1., 1.])
    with pytest.raises(ValueError, match="sub-head 'a' returned infinite scores"):
        bad(rollout_of(2, 2), None)
    short = composite('sum_then_normalize', [1.], [1.])
    with pytest.raises(ValueError, match=r"sub-head 'a' returned scores of shape \(1,\)"):
        short(rollout_of(2, 2), None)


def test_stateful_sub_heads_are_checkpointed_through_the_composite():
    head = CompositeReward(mode='sum_then_normalize', heads=dict(
        n=dict(type='CountingStatefulReward', batch=2), a=dict(type='FixedScoresReward',
                                                               values=[0., 0.])))
    head(rollout_of(2, 2), None)
    head(rollout_of(2, 2), None)
    assert head.state_dict() == {'n': {'calls': 2}}
    fresh = CompositeReward(mode='sum_then_normalize', heads=dict(
        n=dict(type='CountingStatefulReward', batch=2), a=dict(type='FixedScoresReward',
                                                               values=[0., 0.])))
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh(rollout_of(2, 2), None).scores, torch.tensor([3., 3.]))
    with pytest.raises(KeyError, match="sub-head 'a'"):
        fresh.load_state_dict({'a': {}})
