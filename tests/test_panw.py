"""PANW (ScaleAreaReweightSelector): the weights by hand, the alpha limits for every aggregation,
the segment normalisation of partial rollouts, per-sample steps (docs/methods/var_rl.md, 2)."""
import math

import pytest
import torch

from vargo.components.token_selectors.scale_area import (ScaleAreaReweightSelector,
                                                         area_weights, step_sizes)
from vargo.core.objective import AGGREGATIONS, aggregate
from vargo.core.registry import TOKEN_SELECTORS
from vargo.core.types import Conditions, PolicyEval, Rollout

PATCH_NUMS = (1, 2, 3)


def _var_steps(batch=2, patch_nums=PATCH_NUMS):
    steps = torch.cat([torch.full((p * p,), i) for i, p in enumerate(patch_nums)])
    return steps, steps.unsqueeze(0).expand(batch, -1)


def _rollout(mask, step):
    b, a = mask.shape
    return Rollout(Conditions(), torch.zeros(b, dtype=torch.long), torch.zeros(b, a, dtype=torch.long),
                   torch.zeros(b, a), mask, step, torch.zeros(a, 3, dtype=torch.long))


def _select(alpha, mask, step, **kw):
    sel = ScaleAreaReweightSelector(alpha=alpha, **kw)
    return sel(_rollout(mask, step), PolicyEval(torch.zeros(mask.shape)), None, None,
               policy=None, group_size=1)


def test_weights_by_hand_and_the_papers_normalisation():
    step, steps = _var_steps(1)
    mask = torch.ones(1, 14, dtype=torch.bool)
    assert step_sizes(steps)[0].tolist() == [1.0] + [4.0] * 4 + [9.0] * 9
    alpha = 0.5
    w = area_weights(steps, mask, alpha)[0]
    # paper: w_t = n_t^-a / sum_t' n_t'^(1-a) over the segment; vargo: the same times |segment|
    denom = sum(p * p * (p * p) ** -alpha for p in PATCH_NUMS)                # 1 + 2 + 3 = 6
    for i, p in enumerate(PATCH_NUMS):
        expected = (p * p) ** -alpha / denom * 14
        assert torch.allclose(w[step == i], torch.full((p * p,), expected)), (i, w[step == i])
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(w.sum()) / 14, 1.0, rel_tol=1e-6)   # paper's weights sum to 1


@pytest.mark.parametrize('mode', sorted(AGGREGATIONS))
def test_alpha_zero_is_the_token_uniform_objective_for_every_aggregation(mode):
    _, steps = _var_steps(3)
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 14, generator=g) > 0.3
    x = torch.randn(3, 14, generator=g)
    w = _select(0.0, mask, steps).pg
    assert torch.equal(w, mask.float())                                          # exactly 1
    ctx = {'num_groups': 3, 'group_size': 1} if mode == 'group_weighted_token_mean' else None
    assert torch.equal(aggregate(x, mask, w, mode, ctx), aggregate(x, mask, None, mode, ctx))


def test_alpha_one_gives_every_scale_the_same_total_and_a_mean_of_scale_means():
    step, steps = _var_steps(2)
    mask = torch.ones(2, 14, dtype=torch.bool)
    w = _select(1.0, mask, steps).pg
    totals = torch.stack([w[:, step == i].sum(1) for i in range(3)], dim=1)     # [B, S]
    assert torch.allclose(totals, torch.full_like(totals, 14 / 3))
    x = torch.randn(2, 14, generator=torch.Generator().manual_seed(1))
    scale_means = torch.stack([x[:, step == i].mean(1) for i in range(3)], 1).mean(1).mean()
    got = aggregate(x, mask, w, 'sample_mean_of_token_means')
    assert torch.allclose(got, scale_means, atol=1e-6)


@pytest.mark.parametrize('mode', sorted(AGGREGATIONS))
def test_alpha_one_is_the_scale_uniform_objective_for_every_aggregation(mode):
    """With alpha = 1, whatever the aggregation, every token of a sample counts as that sample's
    scale-uniform mean ``J_i = (1/S) sum_s mean_{t in s} x_t``: the aggregate of ``x`` under the
    PANW weights equals the unweighted aggregate of ``J_i`` broadcast over the sample."""
    step, steps = _var_steps(4)
    mask = torch.ones(4, 14, dtype=torch.bool)
    x = torch.randn(4, 14, generator=torch.Generator().manual_seed(2))
    w = _select(1.0, mask, steps).pg
    j = torch.stack([x[:, step == i].mean(1) for i in range(len(PATCH_NUMS))], 1).mean(1)
    y = j[:, None].expand(-1, 14)
    ctx = {'num_groups': 2, 'group_size': 2} if mode == 'group_weighted_token_mean' else None
    assert torch.allclose(aggregate(x, mask, w, mode, ctx), aggregate(y, mask, None, mode, ctx),
                          atol=1e-6), mode


def test_a_partial_rollout_is_normalised_over_its_segment_only():
    step, steps = _var_steps(2)
    mask = (steps >= 1).clone()                       # a suffix update: scale 0 was given
    mask[1] = steps[1] < 2                            # a prefix update: scales 0 and 1
    w = _select(1.0, mask, steps).pg
    assert torch.all(w[~mask] == 0)
    for b in range(2):
        active = mask[b]
        assert math.isclose(float(w[b, active].mean()), 1.0, rel_tol=1e-6)
        kept = sorted(set(step[active].tolist()))
        totals = [float(w[b, step == i].sum()) for i in kept]
        assert all(math.isclose(t, totals[0], rel_tol=1e-6) for t in totals)


def test_per_sample_steps_and_an_empty_sample():
    steps = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 1]])                 # MAR-like commit steps
    mask = torch.tensor([[True, True, True, True], [False, False, False, False]])
    w = _select(1.0, mask, steps).pg
    assert torch.allclose(w[0], torch.tensor([2 / 3, 2 / 3, 4 / 3, 4 / 3]))
    assert torch.equal(w[1], torch.zeros(4))


def test_kl_weights_stay_one_unless_asked():
    _, steps = _var_steps(1)
    mask = torch.ones(1, 14, dtype=torch.bool)
    out = _select(0.7, mask, steps)
    assert torch.equal(out.kl, torch.ones(1, 14))
    assert torch.equal(_select(0.7, mask, steps, kl=True).kl, out.pg)


@pytest.mark.parametrize('bad', [-0.1, 1.5, '0.7', True, float('nan')])
def test_bad_alpha_is_one_clear_error(bad):
    with pytest.raises(ValueError, match='alpha=.*must be a number in \\[0, 1\\]'):
        TOKEN_SELECTORS.build(dict(type='ScaleAreaReweightSelector', alpha=bad))
