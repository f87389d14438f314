"""STAGE's similarity-aware token reweighting (arXiv 2509.25027, docs/methods/stage.md).

A token that the samples of a group with the *opposite* advantage sign also chose at the same
position carries a contradictory gradient: it is pushed up in one sample and down in another.
STAGE scales such tokens down in the policy term and holds them closer to the reference in the
KL term. With ``q_{i,t}`` the L2-normalised codebook vector of sample ``i``'s token at action
``t`` (:meth:`~vargo.core.interfaces.Policy.embed_actions`; LlamaGen's VQ-16 codes are already
unit vectors, VAR's are normalised here):

    cos_{ij,t} = <q_{i,t}, q_{j,t}>                          same action index t, i != j
    S_{i,t}    = { j != i : A_{i,t} A_{j,t} <= 0 }           opposite sign (zero counts)
    s_{i,t}    = mean_{j in S_{i,t}} cos_{ij,t}
    w_{i,t}    = clamp((1 - s_{i,t}) / 2, 0, 1)              in [0, 1], policy-term weight
    m_{i,t}    = 0.5 + 0.5 clamp(1 + s_{i,t}, 0, 1)          in [0.5, 1], KL-term weight

and the policy term is the weighted token mean ``-sum w rho A / (sum w + 1e-6)``
(:func:`vargo.core.objective.group_weighted_token_mean`, so this selector declares
``aggregation='group_weighted_token_mean'``), the KL term ``beta * mean(m * k3)`` (``KLRegularizer``
with ``aggregation='token_mean'``).

Conventions (official code: ``krennic999/STAGE``, ``src/grpo/src/open_r1/trainer/
grpo_trainer.py``, ``compute_loss``, the ``reward_smooth`` and ``kl_reweight`` branches):

* Position alignment: action ``t`` must be the same spatial cell in every sample (a fixed
  generation order: LlamaGen's raster, VAR's scales), which the official code relies on by
  comparing ``quant_b`` maps cell by cell. A rollout with per-sample positions (random orders)
  is refused.
* The sign test is the official ``A_i * A_j <= 0``, evaluated on signs so that tiny advantages
  cannot underflow to a zero product. A sample with advantage 0 (a zero-spread group, an
  unscorable sample) therefore compares with every other sample of its group, and every sample
  counts a zero-advantage sample as opposite.
* ``j != i``. Deviation: the official code keeps ``i`` itself in the denominator when
  ``A_i = 0`` (``A_i * A_i = 0 <= 0``; the diagonal of its similarity map is set to 0), which
  shrinks ``s`` by ``(G-1)/G`` for such samples; we follow the paper's formula.
  It changes only the KL weights of zero-advantage samples (their policy term is 0 anyway).
* Empty ``S_{i,t}`` (``G = 1``, or every other sample has the same strict sign, which cannot
  happen with zero-mean group advantages): ``s = 0``, i.e. the neutral ``w = 1/2``, ``m = 1``,
  never ``0 / 0`` (the official code would give NaN).
* Only active actions (``rollout.action_mask``) of the other samples enter the mean, and the
  returned weights are 0 on inactive actions.
* Several advantage streams: the sign is that of the loss-weighted sum of the streams at each
  action (:class:`~vargo.core.types.Advantages`); STAGE has one stream, broadcast over actions.
* Not copied: the unused O(B^2 T) Python loop over sample pairs (vectorised here as one
  ``einsum`` over the group: ``sum_{j in S} q_j`` per sample, then a dot product with ``q_i``),
  and the ``clamp_thresh`` branch, which raises ``AttributeError`` in the official code.

Where the normalisation happens: the official runs have one prompt per GPU
(``per_device_train_batch_size 1``, 8 images), so ``sum w`` runs over one group and DDP averages
the groups. vargo's ``group_weighted_token_mean`` does exactly that on any minibatch of whole
groups (``weighted_token_mean`` would normalise over the whole minibatch instead).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vargo.core.context import IterationContext
from vargo.core.interfaces import Policy, TokenSelector
from vargo.core.registry import TOKEN_SELECTORS
from vargo.core.types import Advantages, PolicyEval, Rollout, TokenWeights

__all__ = ['SimilarityReweightSelector', 'opposite_sign_similarity', 'stage_weights']


def opposite_sign_similarity(q: Tensor, adv: Tensor, mask: Tensor, group_size: int
                             ) -> tuple[Tensor, Tensor]:
    """Mean cosine similarity of each action to the same action of the opposite-sign samples.

    Args:
        q: ``[B, A, D]`` action embeddings (normalised here).
        adv: ``[B, A]`` advantages (their sign is what matters).
        mask: ``[B, A]`` bool, active actions.
        group_size: G; groups are contiguous runs of G rows.

    Returns:
        (``s [B, A]`` float32, 0 where ``S_{i,t}`` is empty; ``count [B, A]`` long, ``|S_{i,t}|``).

    Examples:
        >>> q = torch.tensor([[[1., 0.]], [[1., 0.]], [[0., 1.]]])   # 3 samples, 1 action
        >>> s, n = opposite_sign_similarity(q, torch.tensor([[1.], [-1.], [-1.]]),
        ...                                 torch.ones(3, 1, dtype=torch.bool), 3)
        >>> s.flatten().tolist(), n.flatten().tolist()
        ([0.5, 1.0, 0.0], [2, 1, 1])
    """
    b, a, d = q.shape
    if b % group_size:
        raise ValueError(f'batch of {b} samples is not a whole number of groups of '
                         f'G={group_size}')
    n, g = b // group_size, group_size
    q = q.float()
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    q = q.view(n, g, a, d)
    sign = torch.sign(adv.detach().float()).view(n, g, a)
    active = mask.view(n, g, a)
    # opp[n, i, j, t]: j is an opposite-sign (or zero-advantage) active sample for i at t
    opp = (sign.unsqueeze(2) * sign.unsqueeze(1) <= 0) & active.unsqueeze(1)   # [N, G, G, A]
    opp &= ~torch.eye(g, dtype=torch.bool, device=q.device).view(1, g, g, 1)
    count = opp.sum(dim=2)                                                     # [N, G, A]
    q_sum = torch.einsum('nijt,njtd->nitd', opp.to(q.dtype), q)               # [N, G, A, D]
    s = (q * q_sum).sum(-1) / count.clamp_min(1).to(q.dtype)                   # [N, G, A]
    s = torch.where(count > 0, s, torch.zeros_like(s))
    return s.view(b, a), count.view(b, a)


def stage_weights(s: Tensor) -> tuple[Tensor, Tensor]:
    """``(w, m)``: STAGE's policy weight ``clamp((1 - s) / 2, 0, 1)`` and KL weight
    ``0.5 + 0.5 clamp(1 + s, 0, 1)`` of a similarity ``s`` (arXiv 2509.25027 section 3).

    Examples:
        >>> w, m = stage_weights(torch.tensor([-1., 0., 1.]))
        >>> w.tolist(), m.tolist()
        ([1.0, 0.5, 0.0], [0.5, 1.0, 1.0])
    """
    w = ((1.0 - s) / 2.0).clamp(0.0, 1.0)
    m = 0.5 + 0.5 * (1.0 + s).clamp(0.0, 1.0)
    return w, m


@TOKEN_SELECTORS.register_module()
class SimilarityReweightSelector(TokenSelector):
    """STAGE's token weights from codebook similarity to opposite-advantage samples (see the
    module docstring for the equations, conventions and deviations).

    Works for any discrete-token policy with a codebook (``Policy.embed_actions``: LlamaGen,
    VAR) and a fixed generation order. Takes no settings: the paper's weights have none.

    Returns (of ``__call__``):
        ``TokenWeights(pg=w * mask, kl=m * mask)`` float32 ``[B, A]``, and the metrics
        ``similarity/s_mean``, ``similarity/w_mean``, ``similarity/m_mean`` (over active
        actions) and ``similarity/frac_no_opposite`` (active actions with empty ``S``).

    Examples:
        >>> import torch
        >>> from vargo.core.types import Advantages, Conditions, PolicyEval, Rollout
        >>> class Codebook:  # a stand-in policy: action ids 0, 1 -> unit vectors e0, e1
        ...     def embed_actions(self, rollout):
        ...         return torch.eye(2)[rollout.actions]
        >>> r = Rollout(Conditions(), torch.zeros(2, dtype=torch.long),
        ...             torch.tensor([[0, 0], [0, 1]]), torch.zeros(2, 2),
        ...             torch.ones(2, 2, dtype=torch.bool), torch.arange(2),
        ...             torch.zeros(2, 2, dtype=torch.long))
        >>> adv = Advantages({'r': torch.tensor([[1., 1.], [-1., -1.]])}, {'r': 1.0})
        >>> tw = SimilarityReweightSelector()(r, PolicyEval(torch.zeros(2, 2)), None, adv,
        ...                                   policy=Codebook(), group_size=2)
        >>> tw.pg.tolist(), tw.kl.tolist()
        ([[0.0, 0.5], [0.0, 0.5]], [[1.0, 1.0], [1.0, 1.0]])
    """

    aggregation = 'group_weighted_token_mean'

    def __init__(self) -> None:
        # An explicit (empty) signature lets the registry reject any keyword by name.
        pass

    def __call__(self, rollout: Rollout, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval],
                 adv: Advantages, *, policy: Policy, group_size: int,
                 ctx: Optional[IterationContext] = None) -> TokenWeights:
        if rollout.action_pos.dim() == 3:
            raise ValueError(
                'SimilarityReweightSelector compares the tokens of a group at the same action '
                'index, which must be the same spatial cell in every sample; this rollout has '
                'per-sample action positions (a random generation order). Use it with a '
                'fixed-order discrete policy (LlamaGen, VAR).')
        q = policy.embed_actions(rollout)                                   # [B, A, D]
        b, a = rollout.batch_size, rollout.num_actions
        if q.dim() != 3 or tuple(q.shape[:2]) != (b, a):
            raise ValueError(f'{type(policy).__name__}.embed_actions returned shape '
                             f'{tuple(q.shape)}; expected [B, A, D] with B={b}, A={a}')
        mask = rollout.action_mask.to(q.device)
        total = None
        for name, stream in adv.streams.items():
            term = adv.weights[name] * stream.to(q.device)
            total = term if total is None else total + term                 # [B, A]
        s, count = opposite_sign_similarity(q, total, mask, group_size)
        w, m = stage_weights(s)
        fmask = mask.float()
        with torch.no_grad():
            n_active = fmask.sum().clamp_min(1.0)
            metrics = {
                'similarity/s_mean': float((s * fmask).sum() / n_active),
                'similarity/w_mean': float((w * fmask).sum() / n_active),
                'similarity/m_mean': float((m * fmask).sum() / n_active),
                'similarity/frac_no_opposite': float(((count == 0) & mask).float().sum()
                                                     / n_active),
            }
        return TokenWeights(pg=w * fmask, kl=m * fmask, metrics=metrics)
