"""STAGE (arXiv 2509.25027, docs/methods/stage.md): the similarity token selector and the entropy
reward, by hand-derived numbers and invariants."""
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vargo.components.rewards.stage_entropy import (StageEntropyBonus, tied_at_group_max,
                                                    tied_max_bonus)
from vargo.components.token_selectors.similarity_reweight import (
    SimilarityReweightSelector, opposite_sign_similarity, stage_weights)
from vargo.core.interfaces import RewardHead
from vargo.core.objective import ObjectiveConfig, policy_loss
from vargo.core.registry import REWARD_HEADS, TOKEN_SELECTORS, checked_build
from vargo.core.types import (Advantages, Conditions, PolicyEval, RewardContext, RewardOutput,
                              Rollout)

FAST = settings(max_examples=40, deadline=None, derandomize=True)


class TableEmbedder:
    """A stand-in policy whose action embeddings are given directly (``[B, A, D]``)."""

    def __init__(self, q):
        self.q = q

    def embed_actions(self, rollout):
        return self.q


def make_rollout(b, a, group_size, mask=None, actions=None):
    return Rollout(
        cond=Conditions(class_ids=torch.zeros(b, dtype=torch.long)),
        group_ids=torch.arange(b) // group_size,
        actions=torch.zeros(b, a, dtype=torch.long) if actions is None else actions,
        logp_old=torch.zeros(b, a),
        action_mask=torch.ones(b, a, dtype=torch.bool) if mask is None else mask,
        action_step=torch.arange(a), action_pos=torch.zeros(a, 2, dtype=torch.long))


def select(q, adv_per_sample, group_size, mask=None):
    b, a, _ = q.shape
    adv = Advantages({'r': adv_per_sample.view(b, 1).expand(b, a).float()}, {'r': 1.0})
    return SimilarityReweightSelector()(make_rollout(b, a, group_size, mask), None, None, adv,
                                        policy=TableEmbedder(q), group_size=group_size)


@st.composite
def groups(draw, min_g=2, max_g=6):
    g = draw(st.integers(min_g, max_g))
    n = draw(st.integers(1, 2))
    a = draw(st.integers(1, 4))
    d = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n * g, a, d, generator=gen)
    # advantages with ties and exact zeros, as group normalisation produces
    adv = torch.tensor(draw(st.lists(st.sampled_from([-1.5, -0.5, 0.0, 0.5, 1.5]),
                                     min_size=n * g, max_size=n * g)))
    return q, adv, g


# --------------------------------------------------------------------------------------------
# the selector
# --------------------------------------------------------------------------------------------
def test_registered_and_declares_group_weighted_token_mean():
    sel = checked_build(dict(type='SimilarityReweightSelector'), TOKEN_SELECTORS)
    assert sel.aggregation == 'group_weighted_token_mean'


def test_hand_computed_three_sample_example():
    """G=3, two positions, 2-d codes (sample 2's first code unnormalised, as VAR's)."""
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                      [[0.6, 0.8], [0.0, 1.0]],
                      [[-2.0, 0.0], [0.8, 0.6]]])
    adv = torch.tensor([1.0, -0.5, -0.5])
    tw = select(q, adv, 3)
    # sample 0 (+) vs {1, 2}: t0 mean(0.6, -1) = -0.2, t1 mean(1, 0.6) = 0.8
    # samples 1, 2 (-) vs {0}: t0 0.6 / -1, t1 1 / 0.6
    want_w = torch.tensor([[0.6, 0.1], [0.2, 0.0], [1.0, 0.2]])
    want_m = torch.tensor([[0.9, 1.0], [1.0, 1.0], [0.5, 1.0]])
    assert torch.allclose(tw.pg, want_w, atol=1e-6)
    assert torch.allclose(tw.kl, want_m, atol=1e-6)
    # the policy term: -sum(w rho A) / (sum(w) + 1e-6); its gradient is -w A / (sum w + 1e-6)
    logp = torch.zeros(3, 2, requires_grad=True)
    cfg = ObjectiveConfig(clip_eps=None, ratio_level='token',
                          aggregation='group_weighted_token_mean')
    loss, _ = policy_loss(cfg, logp, torch.zeros(3, 2), {'r': adv.view(3, 1).expand(3, 2)},
                          {'r': 1.0}, torch.ones(3, 2, dtype=torch.bool), tw.pg,
                          ctx={'group_size': 3})
    loss.backward()
    want_grad = -want_w * adv.view(3, 1) / (want_w.sum() + 1e-6)
    assert abs(float(loss.detach())) < 1e-6     # (0.6 + 0.1) - 0.5 (0.2 + 0) - 0.5 (1 + 0.2) = 0
    assert torch.allclose(logp.grad, want_grad, atol=1e-6)
    assert tw.metrics['similarity/frac_no_opposite'] == 0.0


@FAST
@given(groups())
def test_weights_in_range_and_finite(case):
    q, adv, g = case
    tw = select(q, adv, g)
    assert torch.isfinite(tw.pg).all() and torch.isfinite(tw.kl).all()
    assert (tw.pg >= 0).all() and (tw.pg <= 1).all()
    assert (tw.kl >= 0.5).all() and (tw.kl <= 1).all()


@FAST
@given(groups(), st.data())
def test_token_shared_by_every_opposite_sample_gets_zero_weight(case, data):
    q, adv, g = case
    b, a, _ = q.shape
    i = data.draw(st.integers(0, b - 1))
    t = data.draw(st.integers(0, a - 1))
    lo = (i // g) * g
    opposite = [j for j in range(lo, lo + g) if j != i and adv[i] * adv[j] <= 0]
    assume(opposite)                        # (an empty set is the neutral case, tested below)
    q = q.clone()
    for j in opposite:
        q[j, t] = 3.0 * q[i, t]             # same direction (the norm does not matter)
    tw = select(q, adv, g)
    assert abs(float(tw.pg[i, t])) < 1e-6
    assert abs(float(tw.kl[i, t]) - 1.0) < 1e-6


@FAST
@given(st.integers(2, 6), st.integers(1, 3), st.data())
def test_orthogonal_embeddings_give_one_half(g, a, data):
    adv = torch.tensor(data.draw(st.lists(st.sampled_from([-1.0, 0.0, 1.0]),
                                          min_size=g, max_size=g)))
    q = torch.eye(g).unsqueeze(1).expand(g, a, g).clone()   # sample i's tokens are e_i
    tw = select(q, adv, g)
    assert torch.allclose(tw.pg, torch.full((g, a), 0.5), atol=1e-6)
    assert torch.allclose(tw.kl, torch.ones(g, a), atol=1e-6)


@FAST
@given(groups(), st.randoms(use_true_random=False))
def test_permutation_equivariant_within_groups(case, rnd):
    q, adv, g = case
    b = q.shape[0]
    perm = []
    for lo in range(0, b, g):
        block = list(range(lo, lo + g))
        rnd.shuffle(block)
        perm += block
    perm = torch.tensor(perm)
    tw = select(q, adv, g)
    tw_p = select(q[perm], adv[perm], g)
    assert torch.allclose(tw_p.pg, tw.pg[perm], atol=1e-6)
    assert torch.allclose(tw_p.kl, tw.kl[perm], atol=1e-6)


@FAST
@given(groups(min_g=1, max_g=5), st.sampled_from(['one_sample', 'same_sign', 'masked']))
def test_no_opposite_member_leaves_neutral_weights(case, how):
    q, adv, g = case
    b, a, _ = q.shape
    mask = None
    if how == 'one_sample':
        g = 1
    elif how == 'same_sign':
        adv = adv.abs() + 0.5              # every sample strictly positive
    else:
        mask = torch.zeros(b, a, dtype=torch.bool)
        mask[::g] = True                   # only the first sample of each group is active
    tw = select(q, adv, g, mask)
    active = torch.ones(b, a, dtype=torch.bool) if mask is None else mask
    assert torch.isfinite(tw.pg).all() and torch.isfinite(tw.kl).all()
    assert torch.allclose(tw.pg[active], torch.full_like(tw.pg[active], 0.5))
    assert torch.allclose(tw.kl[active], torch.ones_like(tw.kl[active]))
    assert (tw.pg[~active] == 0).all() and (tw.kl[~active] == 0).all()
    assert tw.metrics['similarity/frac_no_opposite'] == 1.0


def test_zero_advantage_counts_as_opposite_and_excludes_itself():
    """A_i = 0: S_i is every other sample (the paper's formula; the official code also counts i)."""
    q = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    s, count = opposite_sign_similarity(q, torch.tensor([[0.0], [1.0], [1.0]]),
                                        torch.ones(3, 1, dtype=torch.bool), 3)
    assert count.flatten().tolist() == [2, 1, 1]
    assert torch.allclose(s.flatten(), torch.tensor([0.5, 1.0, 0.0]))


def test_stage_weights_formula():
    s = torch.linspace(-1, 1, 9)
    w, m = stage_weights(s)
    assert torch.allclose(w, (1 - s) / 2)
    assert torch.allclose(m, torch.where(s < 0, 1 + s / 2, torch.ones_like(s)))


def test_refuses_per_sample_positions():
    r = make_rollout(2, 3, 2)
    r.action_pos = torch.zeros(2, 3, 2, dtype=torch.long)
    adv = Advantages({'r': torch.zeros(2, 3)}, {'r': 1.0})
    with pytest.raises(ValueError, match='per-sample action positions'):
        SimilarityReweightSelector()(r, None, None, adv, policy=TableEmbedder(torch.ones(2, 3, 4)),
                                     group_size=2)


@pytest.mark.parametrize('family', ['llamagen', 'var'])
def test_uses_the_policy_codebook(family):
    """The weights come from the policy's codebook vectors of the sampled tokens (LlamaGen's
    are unit vectors; VAR's are not and are normalised by the selector)."""
    if family == 'llamagen':
        from vargo.components.policies.llamagen import LlamaGenPolicy
        policy = LlamaGenPolicy(
            arch=dict(dim=32, n_layer=1, n_head=2), image_size=16, downsample=4, vocab_size=64,
            num_classes=10, tokenizer=dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                                           z_channels=16, codebook_size=64, codebook_embed_dim=8,
                                           norm_groups=8))
        codebook = policy.vq.quantize.codebook()
        a = 16
    else:
        from vargo.components.policies.var import VARPolicy
        policy = VARPolicy(
            arch=dict(depth=1, embed_dim=32, num_heads=2), patch_nums=(1, 2, 4), image_size=32,
            vocab_size=64, num_classes=10,
            tokenizer=dict(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2, 2, 2),
                           num_res_blocks=1, norm_groups=8))
        codebook = policy.vae.codebook()
        a = 21
    gen = torch.Generator().manual_seed(0)
    actions = torch.randint(0, 64, (4, a), generator=gen)
    r = make_rollout(4, a, 4, actions=actions)
    adv_s = torch.tensor([1.0, -1.0, 0.5, -0.5])
    adv = Advantages({'r': adv_s.view(4, 1).expand(4, a)}, {'r': 1.0})
    tw = SimilarityReweightSelector()(r, None, None, adv, policy=policy, group_size=4)
    q = torch.nn.functional.normalize(codebook[actions].float(), dim=-1)       # [4, A, D]
    cos = torch.einsum('itd,jtd->ijt', q, q)
    opp = (adv_s.view(4, 1) * adv_s.view(1, 4) <= 0) & ~torch.eye(4, dtype=torch.bool)
    s = (cos * opp.unsqueeze(-1)).sum(1) / opp.sum(1, keepdim=True)
    assert torch.allclose(tw.pg, ((1 - s) / 2).clamp(0, 1), atol=1e-5)
    assert torch.allclose(tw.kl, 0.5 + 0.5 * (1 + s).clamp(0, 1), atol=1e-5)


# --------------------------------------------------------------------------------------------
# the entropy reward
# --------------------------------------------------------------------------------------------
class EntropyTable(torch.nn.Module):
    """A stand-in policy: sample ``k`` (its ``actions[:, 0]``) has per-token entropies ``H[k]``
    on its actions; records every evaluated batch and spec."""

    def __init__(self, table):
        super().__init__()
        self.table = table                                   # [K, A]
        self.calls = []

    def evaluate(self, rollout, *, spec, with_entropy=True):
        self.calls.append((rollout.batch_size, spec, self.training))
        ids = rollout.actions[:, 0]
        return PolicyEval(logp=torch.zeros(rollout.batch_size, rollout.num_actions),
                          entropy=self.table[ids])


class FixedScores(RewardHead):
    def __init__(self, scores):
        self.scores = scores

    def __call__(self, rollout, ctx):
        return RewardOutput(scores=self.scores.clone(), metrics={'base_metric': 1.0})


def run_bonus(scores, h_pol, h_ref, group_size, weight=0.4, a=3):
    """Entropy-bonus head on per-sample mean entropies (constant over a sample's tokens)."""
    b = scores.shape[0]
    actions = torch.arange(b).view(b, 1).expand(b, a).contiguous()
    r = make_rollout(b, a, group_size, actions=actions)
    pol = EntropyTable(h_pol.view(b, 1).expand(b, a).float())
    ref = EntropyTable(h_ref.view(b, 1).expand(b, a).float())
    head = StageEntropyBonus(base=FixedScores(scores), weight=weight)
    out = head(r, RewardContext(policy=pol, reference=ref))
    return out, pol, ref


def test_entropy_bonus_hand_computed():
    """Group [1, 1, 0.5]: samples 0 and 1 tie at the max. e = 1/(1 + 0.5^2) = 0.8 and
    1/(1 + 1.5^2) = 4/13; bonus = 0.4 (e - mean) = +-0.4 (0.8 - 4/13) / 2."""
    scores = torch.tensor([1.0, 1.0, 0.5, 0.2, 0.7, 0.3])
    out, pol, _ = run_bonus(scores, torch.tensor([2.0, 4.0, 9.0, 1.0, 1.0, 1.0]),
                            torch.tensor([2.5, 2.5, 0.0, 5.0, 5.0, 5.0]), 3)
    d = 0.4 * (0.8 - 4 / 13) / 2
    want = torch.tensor([1.0 + d, 1.0 - d, 0.5, 0.2, 0.7, 0.3])
    assert torch.allclose(out.scores, want, atol=1e-6)
    # only the two tied samples were evaluated, with conditional full-vocab log-probs, in eval
    assert [c[0] for c in pol.calls] == [2]
    assert pol.calls[0][1].mode == 'none' and not pol.calls[0][1].uses_cfg
    assert pol.calls[0][2] is False and pol.training is True     # mode restored
    assert out.metrics['base_metric'] == 1.0
    assert math.isclose(out.metrics['entropy_bonus/frac_tied'], 2 / 6)
    assert math.isclose(out.metrics['entropy_bonus/abs_mean'], d, rel_tol=1e-6)


@FAST
@given(st.integers(2, 5), st.integers(1, 3), st.data())
def test_entropy_bonus_only_moves_tied_max_and_keeps_their_mean(g, n, data):
    b = g * n
    scores = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, math.nan]),
                                             min_size=b, max_size=b)))
    h = data.draw(st.lists(st.floats(0, 5), min_size=2 * b, max_size=2 * b))
    out, pol, _ = run_bonus(scores, torch.tensor(h[:b]), torch.tensor(h[b:]), g)
    tied = tied_at_group_max(scores, torch.arange(b) // g)
    new = out.scores
    assert torch.equal(torch.isnan(new), torch.isnan(scores))
    ok = ~torch.isnan(scores)
    assert torch.equal(new[ok & ~tied], scores[ok & ~tied])
    for k in range(n):
        m = tied[k * g:(k + 1) * g]
        if m.any():
            assert m.sum() >= 2
            assert abs(float(new[k * g:(k + 1) * g][m].double().mean()
                             - scores[k * g:(k + 1) * g][m].double().mean())) < 1e-6
            # the tied samples stay within 0.4 of each other's max (e in (0, 1])
            assert float((new[k * g:(k + 1) * g][m] - scores[k * g:(k + 1) * g][m])
                         .abs().max()) <= 0.4 + 1e-6
    if not tied.any():
        assert pol.calls == []          # no tie of two: nothing to evaluate


def test_lone_maximum_gets_no_bonus_and_costs_nothing():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.5])
    out, pol, ref = run_bonus(scores, torch.ones(4), torch.zeros(4), 4)
    assert torch.equal(out.scores, scores)
    assert pol.calls == [] and ref.calls == []


def test_tied_max_bonus_is_centred():
    e = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.1])
    eligible = torch.tensor([True, True, True, False, False])
    bonus = tied_max_bonus(e, eligible, torch.zeros(5, dtype=torch.long), 0.4)
    assert abs(float(bonus[:3].sum())) < 1e-12 and (bonus[3:] == 0).all()
    assert torch.allclose(bonus[:3], 0.4 * (e[:3].double() - e[:3].double().mean()))


def test_entropy_bonus_builds_from_config_and_checks_settings():
    head = checked_build(dict(type='StageEntropyBonus', weight=0.4,
                              base=dict(type='ShapesEvalReward', task='t2i')), REWARD_HEADS)
    assert head.weight == 0.4 and type(head.base).__name__ == 'ShapesEvalReward'
    # evaluation scores the base reward, without the bonus
    assert head.evaluation_head() is head.base
    with pytest.raises(ValueError, match='weight'):
        StageEntropyBonus(base=FixedScores(torch.zeros(2)), weight=-1.0)
