"""KLRegularizer, EntropyRegularizer and AllTokensSelector: hand-derived values and gradients."""
from __future__ import annotations

import math

import pytest
import torch

from vargo.components.regularizers import EntropyRegularizer, KLRegularizer
from vargo.components.token_selectors import AllTokensSelector
from vargo.core.interfaces import Regularizer, TokenSelector
from vargo.core.objective import AGGREGATIONS
from vargo.core.registry import REGULARIZERS, TOKEN_SELECTORS, ConfigError
from vargo.core.types import Conditions, PolicyEval, Rollout, TokenWeights

LN2 = math.log(2.0)


def make_rollout(mask: torch.Tensor, width: int = 2) -> Rollout:
    """A raster-AR rollout: actions [B, A] long, action_step arange(A), action_pos [A, 2]."""
    b, a = mask.shape
    steps = torch.arange(a)
    return Rollout(cond=Conditions(class_ids=torch.zeros(b, dtype=torch.long)),
                   group_ids=torch.zeros(b, dtype=torch.long),
                   actions=torch.zeros(b, a, dtype=torch.long),
                   logp_old=torch.zeros(b, a), action_mask=mask, action_step=steps,
                   action_pos=torch.stack([steps // width, steps % width], dim=-1))


# policy probs p and reference probs q of the sampled actions; d = log q - log p
P = torch.tensor([[0.5, 0.25], [0.5, 0.8]], dtype=torch.float64)
Q = torch.tensor([[0.25, 0.5], [0.5, 0.4]], dtype=torch.float64)
MASK = torch.tensor([[True, True], [True, False]])
W_KL = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64)
# per-action estimates on the 3 active actions (the masked one, d = ln .5, must not count):
#   d  = [-ln2, ln2 | 0]
#   k1 = [ln2, -ln2 | 0]      k2 = [ln2^2/2, ln2^2/2 | 0]      k3 = [ln2 - 1/2, 1 - ln2 | 0]
# weighted sums (w = 1, 2, 3):  k1: -ln2   k2: 1.5 ln2^2   k3: 1.5 - ln2
WEIGHTED_SUM = {'k1': -LN2, 'k2': 1.5 * LN2 ** 2, 'k3': 1.5 - LN2}
UNWEIGHTED_MEAN = {'k1': 0.0, 'k2': LN2 ** 2 / 3, 'k3': 0.5 / 3}


def kl_call(reg, p=P, q=Q, mask=MASK, w=W_KL, ctx=None):
    logp = p.log().clone().requires_grad_(True)
    ref_logp = q.log().clone().requires_grad_(True)
    weights = TokenWeights(pg=torch.ones_like(w), kl=w)
    kwargs = {} if ctx is None else {'ctx': ctx}
    out = reg(PolicyEval(logp), PolicyEval(ref_logp), make_rollout(mask), weights, progress=0.3,
              **kwargs)
    return out, logp, ref_logp


@pytest.mark.parametrize('estimator', ['k1', 'k2', 'k3'])
def test_kl_token_mean_hand_values(estimator):
    reg = KLRegularizer(beta=0.1, estimator=estimator, aggregation='token_mean')
    out, _, _ = kl_call(reg)
    assert set(out) == {'loss', 'mean'}
    assert out['loss'].item() == pytest.approx(0.1 * WEIGHTED_SUM[estimator] / 3, abs=1e-12)
    assert out['mean'].item() == pytest.approx(UNWEIGHTED_MEAN[estimator], abs=1e-12)
    assert not out['mean'].requires_grad


def test_kl_sample_mean_of_token_means_hand_value():
    # k3 weighted: row 0 (ln2 - 1/2) + 2 (1 - ln2) = 1.5 - ln2 over 2 actions; row 1: 0 over 1
    reg = KLRegularizer(beta=0.5, estimator='k3', aggregation='sample_mean_of_token_means')
    out, _, _ = kl_call(reg)
    assert out['loss'].item() == pytest.approx(0.5 * ((1.5 - LN2) / 2 + 0.0) / 2, abs=1e-12)


def test_kl_weighted_token_mean_and_micro_batch_ctx():
    reg = KLRegularizer(beta=1.0, estimator='k3', aggregation='weighted_token_mean')
    out, _, _ = kl_call(reg)
    # sum(w * m) = 1 + 2 + 3 = 6
    assert out['loss'].item() == pytest.approx((1.5 - LN2) / (6 + 1e-6), abs=1e-12)
    # the optional aggregation context is forwarded (optimizer-batch totals)
    out, _, _ = kl_call(reg, ctx={'weight_sum': 12.0})
    assert out['loss'].item() == pytest.approx((1.5 - LN2) / (12 + 1e-6), abs=1e-12)


def test_kl_k3_gradient_flows_into_policy_only():
    reg = KLRegularizer(beta=0.1, estimator='k3', aggregation='token_mean')
    out, logp, ref_logp = kl_call(reg)
    out['loss'].backward()
    # d k3 / d l = 1 - exp(d) = 1 - q/p ; loss = beta * sum(w m k3) / 3
    expected = 0.1 * W_KL * MASK * (1 - Q / P) / 3
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)
    assert ref_logp.grad is None                                        # frozen reference


def test_kl_is_zero_at_the_reference():
    for est in ('k1', 'k2', 'k3'):
        reg = KLRegularizer(beta=1.0, estimator=est, aggregation='token_mean')
        out, _, _ = kl_call(reg, q=P)
        assert out['loss'].item() == 0.0 and out['mean'].item() == 0.0


def test_kl_validation_and_interface():
    assert KLRegularizer.needs_reference is True
    assert isinstance(KLRegularizer(beta=0.0, estimator='k1', aggregation='token_mean'),
                      Regularizer)
    with pytest.raises(ValueError, match='beta'):
        KLRegularizer(beta=-0.1, estimator='k3', aggregation='token_mean')
    with pytest.raises(ValueError, match=r"\['k1', 'k2', 'k3'\]"):
        KLRegularizer(beta=0.1, estimator='k4', aggregation='token_mean')
    with pytest.raises(ValueError, match='sample_mean_of_token_means'):
        KLRegularizer(beta=0.1, estimator='k3', aggregation='mean')
    reg = KLRegularizer(beta=0.1, estimator='k3', aggregation='token_mean')
    with pytest.raises(ValueError, match='ref_eval is None'):
        reg(PolicyEval(P.log()), None, make_rollout(MASK), TokenWeights(W_KL, W_KL), progress=0.)


# ----------------------------------------------------------------------------------------
# entropy
# ----------------------------------------------------------------------------------------
H = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
W_PG = torch.tensor([[1.0, 0.5], [2.0, 1.0]], dtype=torch.float64)


def ent_call(reg, ent=H):
    ent = ent.clone().requires_grad_(True)
    weights = TokenWeights(pg=W_PG, kl=torch.ones_like(W_PG))
    return reg(PolicyEval(torch.zeros_like(ent), ent), None, make_rollout(MASK), weights,
               progress=0.0), ent


def test_entropy_bonus_value_and_sign():
    reg = EntropyRegularizer(coef=0.01, aggregation='token_mean')
    out, ent = ent_call(reg)
    # weighted by the policy-term weights: (1*1 + 0.5*2 + 2*3) / 3 active = 8/3
    assert out['loss'].item() == pytest.approx(-0.01 * 8 / 3, abs=1e-12)
    assert out['mean'].item() == pytest.approx(2.0, abs=1e-12)          # (1 + 2 + 3) / 3
    out['loss'].backward()
    # a positive coefficient rewards entropy: the loss decreases where entropy increases
    torch.testing.assert_close(ent.grad, -0.01 * W_PG * MASK / 3, rtol=0, atol=1e-12)
    assert torch.all(ent.grad[MASK] < 0) and torch.all(ent.grad[~MASK] == 0)
    # a negative coefficient is a penalty
    out_neg, _ = ent_call(EntropyRegularizer(coef=-0.01, aggregation='token_mean'))
    assert out_neg['loss'].item() == pytest.approx(-out['loss'].item(), abs=1e-15)


def test_entropy_errors():
    assert EntropyRegularizer.needs_reference is False
    reg = EntropyRegularizer(coef=0.01, aggregation='token_mean')
    with pytest.raises(ValueError, match='with_entropy=True'):
        reg(PolicyEval(torch.zeros(2, 2)), None, make_rollout(MASK),
            TokenWeights(W_PG, W_PG), progress=0.0)
    with pytest.raises(ValueError, match='coef'):
        EntropyRegularizer(coef=float('nan'), aggregation='token_mean')
    with pytest.raises(ValueError, match='weighted_token_mean'):
        EntropyRegularizer(coef=0.01, aggregation='token-mean')


# ----------------------------------------------------------------------------------------
# token selector
# ----------------------------------------------------------------------------------------
def test_all_tokens_selector_is_the_mask():
    sel = AllTokensSelector()
    w = sel(make_rollout(MASK), PolicyEval(torch.zeros(2, 2)), None, None, policy=None,
            group_size=2)
    expected = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert w.pg.dtype == torch.float32 and torch.equal(w.pg, expected)
    assert torch.equal(w.kl, expected)
    # composing with it keeps another selector's weights on the active actions
    other = TokenWeights(pg=torch.full((2, 2), 0.5), kl=torch.full((2, 2), 2.0))
    both = w * other
    assert torch.equal(both.pg, 0.5 * expected) and torch.equal(both.kl, 2.0 * expected)


# ----------------------------------------------------------------------------------------
# registries
# ----------------------------------------------------------------------------------------
def test_build_through_registries():
    kl = REGULARIZERS.build(dict(type='KLRegularizer', beta=0.04, estimator='k3',
                                 aggregation='token_mean'))
    assert isinstance(kl, KLRegularizer) and (kl.beta, kl.estimator) == (0.04, 'k3')
    ent = REGULARIZERS.build(dict(type='EntropyRegularizer', coef=2.2e-3,
                                  aggregation='sample_mean_of_token_means'))
    assert isinstance(ent, EntropyRegularizer) and ent.coef == 2.2e-3
    sel = TOKEN_SELECTORS.build(dict(type='AllTokensSelector'))
    assert isinstance(sel, AllTokensSelector) and isinstance(sel, TokenSelector)


def test_registry_errors_name_the_fix():
    with pytest.raises(ConfigError, match="'estimater'; did you mean 'estimator'"):
        REGULARIZERS.build(dict(type='KLRegularizer', beta=0.04, estimater='k3',
                                aggregation='token_mean'))
    with pytest.raises(ConfigError, match="'coeff'; did you mean 'coef'"):
        REGULARIZERS.build(dict(type='EntropyRegularizer', coeff=0.01, aggregation='token_mean'))
    with pytest.raises(ConfigError, match='missing required setting.*beta'):
        REGULARIZERS.build(dict(type='KLRegularizer', estimator='k3', aggregation='token_mean'))
    with pytest.raises(ConfigError, match="Did you mean 'KLRegularizer'.*Registered"
                                          ".*EntropyRegularizer.*KLRegularizer"):
        REGULARIZERS.build(dict(type='KLRegulariser', beta=0.04))
    with pytest.raises(ConfigError, match="AllTokensSelector got an unexpected keyword 'ratio'"):
        TOKEN_SELECTORS.build(dict(type='AllTokensSelector', ratio=0.5))


def test_every_aggregation_is_accepted():
    for mode in AGGREGATIONS:
        KLRegularizer(beta=0.1, estimator='k3', aggregation=mode)
        EntropyRegularizer(coef=0.1, aggregation=mode)


def test_checked_build_rejects_keywords_for_classes_without_init():
    """Regression: a class with no ``__init__`` of its own inherits ``object.__init__(*args,
    **kwargs)``; the checked build used to skip its keyword check and fail later with a bare
    TypeError instead of a ConfigError."""
    from mmengine.registry import Registry

    from vargo.core.registry import checked_build

    reg = Registry('scratch_regularizer', scope='vargo_test', build_func=checked_build)

    @reg.register_module()
    class NoSettings:  # noqa: D401 - a throwaway component
        pass

    assert isinstance(reg.build(dict(type='NoSettings')), NoSettings)
    with pytest.raises(ConfigError, match="unexpected keyword 'beta'.*accepts: no settings"):
        reg.build(dict(type='NoSettings', beta=1.0))


def test_kl_sequence_level_hand_value_and_gradient():
    # LOO-FID's penalty: d_i = kl-weighted mean of (l_ref - l) over active actions, k3(d_i),
    # mean over samples. Row 0: (1 * -ln2 + 2 * ln2) / 3 = ln2 / 3; row 1: only d = 0 is active.
    reg = KLRegularizer(beta=0.5, estimator='k3', aggregation='sample_mean_of_token_means',
                        level='sequence')
    out, logp, ref_logp = kl_call(reg)
    d0 = LN2 / 3
    expected = 0.5 * ((math.exp(d0) - d0 - 1) + 0.0) / 2
    assert out['loss'].item() == pytest.approx(expected, abs=1e-12)
    out['loss'].backward()
    # d loss / d l_t = beta / B * (1 - e^{d_i}) * w_t / sum w  (row 1 has d = 0: zero gradient)
    g = 0.5 / 2 * (1 - math.exp(d0))
    assert logp.grad[0].tolist() == pytest.approx([g / 3, 2 * g / 3], abs=1e-12)
    assert logp.grad[1].tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert ref_logp.grad is None or not ref_logp.grad.any()
    with pytest.raises(ValueError, match="sample_mean_of_token_means"):
        KLRegularizer(beta=1.0, estimator='k3', aggregation='token_mean', level='sequence')
    with pytest.raises(ValueError, match="level='tokens'"):
        KLRegularizer(beta=1.0, estimator='k3', aggregation='token_mean', level='tokens')
