"""AdaptiveEntropyRegularizer: LOO-FID's scheduled, entropy-steered entropy bonus
(docs/methods/loo_fid.md). Expected coefficients are written out by hand, not computed by the
code under test."""
import math

import pytest
import torch

from vargo.components.regularizers.adaptive_entropy import (AdaptiveEntropyRegularizer,
                                                            adaptive_entropy_coef)
from vargo.core.registry import REGULARIZERS, checked_build
from vargo.core.types import Conditions, PolicyEval, Rollout, TokenWeights

PAPER = dict(base_coef=2.2e-3, min_coef=7e-5, max_coef=4e-3, target=0.78, deadband=0.015,
             gain=3.0, warmup_frac=0.05, decay_start_frac=0.85)

# (H_norm, progress, expected c); base 2.2e-3, clamp [7e-5, 4e-3], target 0.78, deadband 0.015
GRID = [
    (0.78, 0.0, 7e-5),              # warm-up starts at 0 -> clamped to min_coef
    (0.78, 0.025, 1.1e-3),          # half-way through warm-up: base / 2, on target
    (0.70, 0.025, 1.3983740654e-3),  # 1.1e-3 * exp(3 * 0.08) = 1.1e-3 * 1.2712491503
    (0.79, 0.5, 2.2e-3),            # |err| = 0.01 inside the deadband: no steering
    (0.766, 0.5, 2.2e-3),           # |err| = 0.014 inside the deadband
    (0.80, 0.5, 2.0718819739e-3),   # 2.2e-3 * exp(-0.06) = 2.2e-3 * 0.9417645336
    (0.40, 0.5, 4e-3),              # 2.2e-3 * exp(1.14) = 6.879e-3 -> clamped to max_coef
    (1.00, 0.5, 1.1370729359e-3),   # 2.2e-3 * exp(-0.66) = 2.2e-3 * 0.5168513345
    (0.78, 0.925, 1.1e-3),          # cosine half-way: base * (1 + cos(pi/2)) / 2
    (0.50, 0.9, 3.8220055117e-3),   # base * (1 + cos(pi/3)) / 2 = 1.65e-3, * exp(0.84)
    (0.00, 0.99, 2.495404189e-4),   # base * (1 + cos(14pi/15)) / 2 = 2.40376e-5, * exp(2.34)
    (0.78, 1.0, 7e-5),              # fully decayed -> min_coef
    (0.78, 1.7, 7e-5),              # progress is clamped to [0, 1]
    (0.78, -0.3, 7e-5),
]


@pytest.mark.parametrize('h_norm,progress,expected', GRID)
def test_coefficient_follows_the_controller_on_a_grid(h_norm, progress, expected):
    assert adaptive_entropy_coef(h_norm, progress, **PAPER) == pytest.approx(expected, rel=1e-9)
    reg = AdaptiveEntropyRegularizer(vocab_size=16, aggregation='sample_mean_of_token_means')
    assert reg.coef(h_norm, progress) == pytest.approx(expected, rel=1e-9)


def test_schedule_edges_are_continuous_and_monotone_in_the_error():
    kw = dict(PAPER, deadband=0.0)
    # at the schedule's breakpoints the coefficient does not jump
    for p in (0.05, 0.85):
        assert adaptive_entropy_coef(0.78, p - 1e-9, **kw) == pytest.approx(
            adaptive_entropy_coef(0.78, p, **kw), rel=1e-6)
    # lower entropy -> larger bonus (until the clamp)
    cs = [adaptive_entropy_coef(h, 0.5, **kw) for h in (0.9, 0.85, 0.8, 0.75, 0.7)]
    assert cs == sorted(cs) and len(set(cs)) == 5


def _rollout(mask):
    b, a = mask.shape
    return Rollout(cond=Conditions(class_ids=torch.zeros(b, dtype=torch.long)),
                   group_ids=torch.zeros(b, dtype=torch.long),
                   actions=torch.zeros(b, a, dtype=torch.long), logp_old=torch.zeros(b, a),
                   action_mask=mask, action_step=torch.arange(a),
                   action_pos=torch.zeros(a, 2, dtype=torch.long))


def test_loss_is_minus_c_times_mean_token_entropy_with_its_gradient():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    ent = torch.tensor([[2.0, 2.4, 9.0], [1.8, 2.2, 2.0]], dtype=torch.float64,
                       requires_grad=True)
    # per-sample token means 2.2 and 2.0 -> Hbar = 2.1 (the masked 9.0 is ignored)
    h_norm = 2.1 / math.log(16)                                 # 0.7574...: err 0.0226 > 0.015
    c = 2.2e-3 * math.exp(3.0 * (0.78 - h_norm))               # plateau at p = 0.5
    reg = AdaptiveEntropyRegularizer(vocab_size=16, aggregation='sample_mean_of_token_means')
    w = TokenWeights(pg=mask.double(), kl=mask.double())
    out = reg(PolicyEval(logp=torch.zeros(2, 3), entropy=ent), None, _rollout(mask), w,
              progress=0.5)
    assert float(out['loss'].detach()) == pytest.approx(-c * 2.1, rel=1e-12)
    assert float(out['coef']) == pytest.approx(c, rel=1e-12)
    assert float(out['h_norm']) == pytest.approx(h_norm, rel=1e-12)
    assert float(out['mean']) == pytest.approx(2.1, rel=1e-12)
    out['loss'].backward()
    # d(-c * mean_i mean_t H)/dH_{i,t} = -c / (B * n_i); c is a constant (no grad through it)
    expected = torch.tensor([[-c / 4, -c / 4, 0.0], [-c / 6, -c / 6, -c / 6]],
                            dtype=torch.float64)
    torch.testing.assert_close(ent.grad, expected, rtol=1e-12, atol=1e-15)


def test_selector_weights_enter_the_loss_but_not_the_controller():
    mask = torch.ones(2, 2, dtype=torch.bool)
    ent = torch.full((2, 2), 0.78 * math.log(16))               # H_norm exactly on target
    reg = AdaptiveEntropyRegularizer(vocab_size=16, aggregation='sample_mean_of_token_means')
    half = TokenWeights(pg=torch.full((2, 2), 0.5), kl=torch.ones(2, 2))
    out = reg(PolicyEval(logp=torch.zeros(2, 2), entropy=ent), None, _rollout(mask), half,
              progress=0.5)
    assert float(out['coef']) == pytest.approx(2.2e-3, rel=1e-6)
    assert float(out['loss']) == pytest.approx(-2.2e-3 * 0.5 * 0.78 * math.log(16), rel=1e-6)


def test_builds_from_the_registry_with_the_paper_defaults():
    reg = checked_build(dict(type='AdaptiveEntropyRegularizer', vocab_size=16384,
                             aggregation='sample_mean_of_token_means'), REGULARIZERS)
    for k, v in PAPER.items():
        assert getattr(reg, k) == v, k
    assert not reg.needs_reference


@pytest.mark.parametrize('kwargs,match', [
    (dict(vocab_size=1), 'vocab_size=1 must be an int >= 2'),
    (dict(aggregation='mean'), "aggregation='mean' is not one of"),
    (dict(min_coef=1e-2), 'min_coef=0.01 > max_coef=0.004'),
    (dict(target=1.5), r'target=1.5 must be a finite float in \[0.0, 1.0\]'),
    (dict(warmup_frac=0.9), 'warmup_frac=0.9 > decay_start_frac=0.85'),
    (dict(gain=-1.0), 'gain=-1.0'),
])
def test_invalid_settings_name_the_value(kwargs, match):
    base = dict(vocab_size=16, aggregation='sample_mean_of_token_means')
    with pytest.raises(ValueError, match=match):
        AdaptiveEntropyRegularizer(**{**base, **kwargs})


def test_needs_entropies():
    reg = AdaptiveEntropyRegularizer(vocab_size=16, aggregation='token_mean')
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match='policy_eval.entropy is None'):
        reg(PolicyEval(logp=torch.zeros(1, 2)), None, _rollout(mask),
            TokenWeights(pg=torch.ones(1, 2), kl=torch.ones(1, 2)), progress=0.1)


def test_docstring_examples_run():
    import doctest
    from vargo.components.regularizers import adaptive_entropy
    assert doctest.testmod(adaptive_entropy).failed == 0
