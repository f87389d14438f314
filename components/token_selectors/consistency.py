"""MAR-GRPO's consistency-aware token selection (arXiv 2604.06966; docs/methods/mar_grpo.md).

A MAR rollout refines every still-masked token's prediction at each AR step (the diffusion head
samples it from that step's latent ``z``) until the step that commits it. With ``xhat^(i)_n`` the
head's ``t = 0`` sample for token ``n`` at AR step ``i`` (0-based here) and ``x_n`` its final
value, the consistency gain of step ``i`` is

    g_{i,n} = cos(xhat^(i)_n, x_n) - cos(xhat^(i-1)_n, x_n)              i >= 1  (g_{0,n} = 0)

and the policy term's mask at step ``i`` over the tokens still masked when the step starts
(``commit_n >= i``; the official loss's ``completion_mask``) is

    keep_{i,n} = 1                      commit_n == i   (committed at step i: always kept)
               = 1                      commit_n >  i  and  i <  start_step
               = [g_{i,n} > tau]        commit_n >  i  and  i >= start_step
    (0 for tokens committed before step i: they are not in step i's loss at all)

``tau = 0`` and ``start_step = 2`` are the official code's ``latent_sim_thresh`` and ``i > 1``
(0-based); the paper's "AR step i >= 2" (1-based) is ``start_step = 1``. The KL term is not
filtered.

Official code (AMAP-ML/mar-grpo, ``src/grpo/src/open_r1/trainer/grpo_trainer_nova_v1_2.py`` and
``..._harmon_v1_2.py``, ``compute_loss``, the ``use_latent_sim_coef`` branch): ``xhat^(i)`` is the
last state of the head chain run at step ``i`` for *every* token (``samples["prev_latents"][i][-1]``
/ ``samples["diff_xt_prev"][i][-1]``), ``x`` is ``final_diff_latents``, the cosine runs over the
latent channels, and the mask multiplies the per-(step, token, channel) policy term whose
log-probs are the head transitions of step ``i``'s chain of each token, conditioned on step
``i``'s latent. For a still-masked token that chain is a *discarded refinement* (the token is
sampled again later), so the rule gates those refinement terms; the committed tokens' terms are
never gated.

This selector weights each action ``a`` (a transition of token ``n_a`` at AR step
``action_step[a]``) by ``keep[action_step[a], n_a]``, the rule evaluated at the action's
(step, token) pair. A committed chain's actions have ``action_step = commit_{n_a}`` and are always
kept. The terms the rule gates exist as actions only in a rollout that carries the refinement
chains (``MaskedSampler(refinement=True, record_predictions=True)``): their ``action_step`` is
the refinement's step, so they are gated exactly as the official code gates them. Without
refinement chains the policy weights equal ``action_mask`` (the rule's decisions on
``x0_pred`` are still logged).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from vargo.core.context import IterationContext
from vargo.core.interfaces import Policy, TokenSelector
from vargo.core.registry import TOKEN_SELECTORS, ConfigError
from vargo.core.types import Advantages, PolicyEval, Rollout, TokenWeights

__all__ = ['ConsistencySelector', 'consistency_gain', 'consistency_keep']


def consistency_gain(x0_pred: Tensor, final: Tensor) -> Tensor:
    """``g [B, S, N]``: ``cos(xhat^(i), x) - cos(xhat^(i-1), x)`` per AR step ``i`` and token,
    cosines over the last (channel) axis; ``g[:, 0] = 0`` (no previous step).

    Args:
        x0_pred: ``[B, S, N, D]`` each step's ``t = 0`` prediction of every token.
        final: ``[B, N, D]`` the tokens' final values.

    Examples:
        >>> x = torch.tensor([[[1., 0.]]])                                  # one token, D = 2
        >>> p = torch.tensor([[[[0., 1.]], [[1., 1.]], [[0., 1.]]]])        # 3 steps
        >>> [round(v, 4) for v in consistency_gain(p, x).flatten().tolist()]
        [0.0, 0.7071, -0.7071]
    """
    cos = F.cosine_similarity(x0_pred.float(), final.float().unsqueeze(1), dim=-1)  # [B, S, N]
    return torch.cat([torch.zeros_like(cos[:, :1]), cos[:, 1:] - cos[:, :-1]], dim=1)


def consistency_keep(x0_pred: Tensor, final: Tensor, commit_step: Tensor, tau: float = 0.0,
                     start_step: int = 2) -> tuple[Tensor, Tensor]:
    """The rule on the (AR step, token) grid (module docstring).

    Args:
        x0_pred: ``[B, S, N, D]``; final: ``[B, N, D]``; commit_step: ``[B, N]`` long (0-based).
        tau: the gain threshold (strict ``>``). start_step: first gated step (0-based).

    Returns:
        ``(keep, gated)``, bool ``[B, S, N]``: ``keep`` the policy mask of step ``i`` (False for
        tokens committed before ``i``), ``gated`` the pairs the cosine test decides (still masked
        after step ``i``, ``i >= start_step``).
    """
    s = x0_pred.shape[1]
    step = torch.arange(s, device=commit_step.device).view(1, s, 1)
    commit = commit_step.unsqueeze(1)                                         # [B, 1, N]
    gated = (commit > step) & (step >= start_step)
    passed = consistency_gain(x0_pred, final).to(commit.device) > tau
    keep = (commit >= step) & (~gated | passed)
    return keep, gated


@TOKEN_SELECTORS.register_module()
class ConsistencySelector(TokenSelector):
    """MAR-GRPO's consistency-aware selection: policy weight ``keep[action_step, token]`` (module
    docstring for the equations and the official gating), KL weight unfiltered.

    Needs ``rollout.extras.x0_pred`` (``MaskedSampler(record_predictions=True)``). Compose it with
    ``EvaluatedActionsSelector`` as usual. The official loss divides each step's policy sum by the
    kept count (``objective.aggregation='weighted_token_mean'``); the selector keeps the
    objective's aggregation.

    Args:
        tau: keep a gated token iff its gain is ``> tau`` (official ``latent_sim_thresh = 0``).
        start_step: first 0-based AR step the test applies to (official ``i > 1``: 2; the
            paper's 1-based ``i >= 2``: 1).

    Returns (of ``__call__``):
        ``TokenWeights(pg=keep * action_mask, kl=action_mask)`` float ``[B, A]``; metrics
        ``consistency/kept_frac`` (kept share of the gated (step, token) pairs; 1 when none is
        gated), ``consistency/gated_frac`` (gated share of all (step, still-masked token) pairs)
        and ``consistency/pg_frac`` (policy-weighted share of the active actions).
    """

    def __init__(self, tau: float = 0.0, start_step: int = 2) -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not -2.0 <= tau <= 2.0:
            raise ConfigError(f'ConsistencySelector tau={tau!r} must be a number in [-2, 2] '
                              f'(a difference of cosines; paper: 0)')
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 1:
            raise ConfigError(f'ConsistencySelector start_step={start_step!r} must be an int >= 1 '
                              f'(the first 0-based AR step with a previous prediction; official 2)')
        self.tau = float(tau)
        self.start_step = start_step

    def __call__(self, rollout: Rollout, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval],
                 adv: Advantages, *, policy: Policy, group_size: int,
                 ctx: Optional[IterationContext] = None) -> TokenWeights:
        ex = rollout.extras
        x0_pred = getattr(ex, 'x0_pred', None)
        if x0_pred is None:
            raise ValueError('ConsistencySelector needs rollout.extras.x0_pred (every AR step\'s '
                             't = 0 head sample of every token); build the sampler with '
                             'MaskedSampler(record_predictions=True)')
        b, a = rollout.batch_size, rollout.num_actions
        n, k = int(ex.seq_len), int(ex.num_transitions)
        a_main, nr = ex.num_chain_actions, ex.num_refinements
        if a != a_main + nr * k:
            raise ValueError(f'ConsistencySelector: {a} actions is not {ex.num_chains} chain '
                             f'blocks of N K = {n} x {k} plus {nr} refinement chains of {k} '
                             f'(the MAR action layout)')
        keep, gated = consistency_keep(x0_pred, ex.tokens, ex.commit_step, self.tau,
                                       self.start_step)
        s = keep.shape[1]
        dev = keep.device
        mask = rollout.action_mask.to(dev)
        tok = ((torch.arange(a_main, device=dev) % (n * k)) // k).expand(b, a_main)  # [B, A]
        if nr:
            tok = torch.cat([tok, ex.refine_tokens.to(dev).repeat_interleave(k, dim=1)], 1)
        step = rollout.steps().to(dev)                                          # [B, A]
        w = keep.reshape(b, s * n).gather(1, step * n + tok)                    # [B, A]
        fmask = mask.float()
        pg = w.float() * fmask
        with torch.no_grad():
            n_gated = gated.sum()
            still = (ex.commit_step.to(keep.device).unsqueeze(1)
                     > torch.arange(s, device=keep.device).view(1, s, 1)).sum()
            metrics = {
                'consistency/kept_frac': float((keep & gated).sum() / n_gated)
                if int(n_gated) else 1.0,
                'consistency/gated_frac': float(n_gated / still.clamp_min(1)),
                'consistency/pg_frac': float(pg.sum() / fmask.sum().clamp_min(1.0)),
            }
            if nr:
                r_mask = fmask[:, a_main:]
                metrics['consistency/refinement_kept_frac'] = float(
                    pg[:, a_main:].sum() / r_mask.sum().clamp_min(1.0))
        return TokenWeights(pg=pg, kl=fmask.clone(), metrics=metrics)
