"""MAR-GRPO's multi-trajectory expectation (MTE) on the uncertain tokens (arXiv 2604.06966).

A MAR rollout drawn with ``MaskedSampler(mte_chains=S)`` carries, besides each token's own head
chain (chain ``c = 0``, decoded and rewarded), ``S`` extra chains per token (``c = 1 .. S``)
drawn from fresh noise conditioned on the token's commit-step latent. The action axis holds
``1 + S`` chain-major blocks of ``A_0 = N K`` transitions (layout in
:class:`~vargo.components.modules.masked.MARExtras`), all sharing the sample's advantage ``A``.

For a token ``j`` with transitions ``k`` the paper's surrogate is

```
L_j = (1/S) sum_{s=1..S} sum_k rho^(s)_{j,k} A     if j is selected (MTE)
L_j =                    sum_k rho^(0)_{j,k} A     otherwise (the single rollout chain)
```

:class:`MultiTrajectorySelector` realises it as policy-term weights on the action axis:

```
w_pg[c = 0, j, k] = (1 + S) (1 - m_j)
w_pg[c >= 1, j, k] = (1 + S) m_j / S
w_kl[c = 0, j, k] = (1 + S),   w_kl[c >= 1, j, k] = 0     (the KL keeps the rollout's chain)
```

with ``m_j`` = 1 for a selected token. Per token the chains' weights sum to ``1 + S`` whether
the token is selected or not: MTE only moves a token's weight from its own chain to the mean of
the extra chains. The factor ``1 + S`` undoes the growth of the action count: the
count-normalised aggregations (``sample_mean_of_token_means``, ``token_mean``,
``global_token_mean``) divide by the active actions, now ``(1 + S)`` times the main chain's,
so with it the loss is exactly the single-chain loss with ``L_j`` above; the weight-normalised
ones (``weighted_token_mean``, ``group_weighted_token_mean``) divide by the weight sum, where
the factor cancels. Either way the MTE loss equals the non-MTE loss when no token is selected,
and the KL term equals the non-MTE KL term.

Uncertainty (``selection='uncertain'``): per token the population standard deviation
(``unbiased=False``) across the ``S`` extra chains of their final sample ``x0``, averaged over
the ``D`` channels, ``u_j = (1/D) sum_d std_s(x0^(s)_{j,d})``; in each image the
``k = max(1, floor(top_fraction N))`` tokens of largest ``u`` are selected (the official count;
ties: the lower raster position first). ``selection='all'`` selects every token (MTE everywhere).

Cost: the policy update evaluates every token's extra chains unless the sampler restricts them
to its top-``f`` uncertain tokens (``MaskedSampler(mte_top_fraction=f)``, recorded in
``extras.mte_tokens``; the extra chains of the other tokens have weight 0 here anyway). With
such a rollout the selector checks that every token it selects had its extra chains evaluated
(``top_fraction <= f`` with the same ranking), and raises otherwise.

Refinement chains (``MaskedSampler(refinement=True)``, after the chain blocks) are single-chain
terms here: weight ``1 + S`` in both terms, like an unselected token's own chain. (The official
code also replaces a selected token's refinement terms by its extra chains scored under the
refinement step's latent; vargo's extra chains are drawn and scored under the commit step's
latent only: docs/methods/mar_grpo.md, deviations.)

Compose with ``EvaluatedActionsSelector`` (after it or before: weights multiply) when the
sampler evaluates a subset: the extra chains' transitions follow the same (AR step, diffusion
step) subset as the rollout's. Use a token-level ratio: a sequence-level ratio would average
the log-ratio over all chains' actions.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vargo.core.context import IterationContext
from vargo.core.interfaces import Policy, TokenSelector
from vargo.core.registry import TOKEN_SELECTORS
from vargo.core.types import Advantages, PolicyEval, Rollout, TokenWeights

from ..modules.masked import token_uncertainty, top_fraction_tokens

__all__ = ['MultiTrajectorySelector', 'token_uncertainty', 'top_fraction_tokens',
           'mte_weights']

SELECTIONS = ('uncertain', 'all')


def mte_weights(selected: Tensor, num_chains: int, num_transitions: int,
                num_refinements: int = 0) -> tuple[Tensor, Tensor]:
    """Policy and KL weights ``[B, (1 + S) N K + R K]`` (chain-major blocks, then ``R``
    refinement chains) of the tokens marked in ``selected [B, N]``, ``S = num_chains`` extra
    chains, ``K = num_transitions`` (equations in the module doc): ``pg`` = ``(1 + S)(1 - m)`` on
    chain 0 and ``(1 + S) m / S`` on each extra chain; ``kl`` = ``1 + S`` on chain 0, 0 on the
    extra chains; both ``1 + S`` on the refinement chains."""
    s, kk = int(num_chains), int(num_transitions)
    b, n = selected.shape
    c = 1.0 + s
    m = selected.float().unsqueeze(1).unsqueeze(-1)                           # [B, 1, N, 1]
    pg = torch.cat([c * (1 - m), (c / s * m).expand(b, s, n, 1)], 1).expand(b, 1 + s, n, kk)
    kl = torch.zeros(b, 1 + s, n, kk, device=selected.device)
    kl[:, 0] = c
    ref = torch.full((b, int(num_refinements) * kk), c, device=selected.device)
    return (torch.cat([pg.reshape(b, -1), ref], 1).contiguous(),
            torch.cat([kl.reshape(b, -1), ref.clone()], 1))


@TOKEN_SELECTORS.register_module()
class MultiTrajectorySelector(TokenSelector):
    """MTE on the top-``top_fraction`` uncertain tokens of each image (MAR-GRPO), as policy
    weights over a ``MaskedSampler(mte_chains=S)`` rollout's chains (module doc).

    Args:
        selection: ``'uncertain'`` (the paper: the ``top_fraction`` most uncertain tokens per
            image use MTE, the others their rollout chain) or ``'all'`` (every token uses MTE).
        top_fraction: the selected share of each image's tokens (paper 0.3); ``'uncertain'``
            only.

    Logged (under ``select/``): ``mte/selected_frac`` (selected tokens / all tokens),
    ``mte/uncertainty`` (mean ``u``), ``mte/uncertainty_selected`` (mean ``u`` of the selected).
    """

    def __init__(self, selection: str = 'uncertain', top_fraction: float = 0.3) -> None:
        if not isinstance(selection, str) or selection not in SELECTIONS:
            raise ValueError(f'selection={selection!r} is not one of {SELECTIONS}')
        if isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float)) \
                or not 0.0 <= float(top_fraction) <= 1.0:
            raise ValueError(f'top_fraction={top_fraction!r} must be a float in [0, 1] (paper '
                             f'0.3)')
        self.selection = selection
        self.top_fraction = float(top_fraction)

    def selected_tokens(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """``(selected [B, N] bool, u [B, N])`` of an MTE rollout."""
        ex = rollout.extras
        s = int(getattr(ex, 'mte_chains', 0) or 0)
        if s < 1 or getattr(ex, 'mte_x0', None) is None:
            raise ValueError('MultiTrajectorySelector needs a MAR rollout with extra chains: set '
                             'the sampler\'s mte_chains=S (MAR-GRPO: NOVA 3, Harmon 5)')
        u = token_uncertainty(ex.mte_x0)
        if self.selection == 'all':
            sel = torch.ones_like(u, dtype=torch.bool)
        elif s < 2:
            raise ValueError("selection='uncertain' needs mte_chains >= 2: the spread of one "
                             "chain is 0 for every token")
        else:
            sel = top_fraction_tokens(u, self.top_fraction)
        evaluated = getattr(ex, 'mte_tokens', None)
        if evaluated is not None and bool((sel & ~evaluated.to(sel.device)).any()):
            raise ValueError(f'MultiTrajectorySelector(selection={self.selection!r}, '
                             f'top_fraction={self.top_fraction}) selects tokens whose extra '
                             f'chains the policy did not evaluate (the sampler\'s '
                             f'mte_top_fraction keeps {int(evaluated[0].sum())} of '
                             f'{evaluated.shape[1]} tokens per image): set the sampler\'s '
                             f'mte_top_fraction to the selector\'s top_fraction (or None)')
        return sel, u

    def __call__(self, rollout: Rollout, policy_eval: PolicyEval, ref_eval: Optional[PolicyEval],
                 adv: Advantages, *, policy: Policy, group_size: int,
                 ctx: Optional[IterationContext] = None) -> TokenWeights:
        """:class:`TokenWeights` ``[B, (1 + S) N K]`` of :func:`mte_weights`, times the
        ``action_mask``."""
        ex = rollout.extras
        sel, u = self.selected_tokens(rollout)
        pg, kl = mte_weights(sel, ex.mte_chains, ex.num_transitions,
                             getattr(ex, 'num_refinements', 0))
        if pg.shape != rollout.action_mask.shape:
            raise ValueError(f'the rollout has {tuple(rollout.action_mask.shape)} actions but '
                             f'{1 + ex.mte_chains} chains of {ex.seq_len} x '
                             f'{ex.num_transitions} give {tuple(pg.shape)}')
        m = rollout.action_mask.to(pg.dtype)
        selu = u[sel]
        metrics = {'mte/selected_frac': float(sel.float().mean()),
                   'mte/uncertainty': float(u.mean()),
                   'mte/uncertainty_selected': float(selu.mean()) if selu.numel() else 0.0}
        return TokenWeights(pg=pg.to(m.device) * m, kl=kl.to(m.device) * m, metrics=metrics)
