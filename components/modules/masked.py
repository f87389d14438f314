"""Masked generation (MAR's ``sample_tokens``): the cosine mask schedule, the per-step guidance
weights, and what a masked-decoding rollout records.

Shared by :class:`~vargo.components.samplers.masked.MaskedSampler` (which draws rollouts) and
the policies it drives (which score them), so neither imports the other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from vargo.core.types import FamilyExtras

__all__ = ['mask_schedule', 'cfg_scales', 'MARSelection', 'MARExtras', 'token_uncertainty',
           'top_fraction_tokens']


def mask_schedule(seq_len: int, num_iter: int) -> tuple[list[int], list[float]]:
    """Official ``sample_tokens`` cosine schedule.

    At step ``i`` the ``rem[i]`` first positions of the order are masked;
    ``mask_len = max(1, min(rem[i] - 1, floor(N cos(pi/2 (i + 1) / num_iter))))`` of them stay
    masked; the rest are committed (all of them at the last step).

    Returns:
        ``(rem, mask_lens)``: ``rem`` has ``num_iter + 1`` entries (``rem[0] = N``, last 0);
        step ``i`` commits ``rem[i] - rem[i + 1]`` tokens (possibly 0 when ``num_iter > N``);
        ``mask_lens[i]`` is the float32 ``mask_len`` the linear CFG schedule uses.
    """
    rem, lens = [seq_len], []
    for step in range(num_iter):
        ratio = np.cos(math.pi / 2.0 * (step + 1) / num_iter)
        ml = float(torch.tensor([np.floor(seq_len * ratio)], dtype=torch.float32))
        ml = max(1.0, min(float(rem[-1] - 1), ml))
        lens.append(ml)
        rem.append(0 if step >= num_iter - 1 else int(ml))
    return rem, lens


def cfg_scales(cfg: float, schedule: str, seq_len: int, num_iter: int) -> list[float]:
    """Guidance weight of each AR step (official, after Muse): ``'linear'``:
    ``1 + (cfg - 1) (N - mask_len_i) / N`` (float32, as the official tensor arithmetic);
    ``'constant'``: ``cfg``."""
    if schedule == 'constant':
        return [float(cfg)] * num_iter
    if schedule != 'linear':
        raise ValueError(f"cfg_schedule={schedule!r} is not one of 'linear', 'constant'")
    _, lens = mask_schedule(seq_len, num_iter)
    out = []
    for ml in lens:
        t = torch.tensor([ml], dtype=torch.float32)
        out.append(float(1 + (cfg - 1) * (seq_len - t) / seq_len))
    return out


def token_uncertainty(x0: Tensor) -> Tensor:
    """MAR-GRPO's token uncertainty ``u [B, N]``: the population standard deviation
    (``unbiased=False``) over the ``S`` chains of their final samples ``x0 [B, S, N, D]``,
    averaged over the ``D`` channels, ``u_j = (1/D) sum_d std_s(x0^(s)_{j,d})``."""
    return x0.float().std(dim=1, unbiased=False).mean(-1)


def top_fraction_tokens(u: Tensor, fraction: float) -> Tensor:
    """``[B, N]`` bool: the ``k = max(1, floor(fraction N))`` tokens of largest ``u [B, N]`` in
    each row (the official ``max(1, int(L * top_percent))``; ``k = 0`` for ``fraction = 0``);
    equal values are taken in raster order (a stable sort: deterministic, where the official
    ``topk`` is not)."""
    b, n = u.shape
    k = min(n, max(1, int(float(fraction) * n))) if fraction > 0 else 0
    order = torch.sort(-u, dim=1, stable=True).indices[:, :k]
    return torch.zeros(b, n, dtype=torch.bool, device=u.device).scatter_(1, order, True)


@dataclass
class MARSelection:
    """The (AR step, diffusion step) pairs a policy update evaluates (MAR-GRPO samples 12 x 10).

    Attributes:
        ar_steps: AR steps (0 .. num_iter - 1); steps that commit no token are skipped.
        diffusion_steps: transition indices ``k`` (0 .. K - 1, ``k = 0`` leaves pure noise).
    """

    ar_steps: Sequence[int]
    diffusion_steps: Sequence[int]

    @classmethod
    def sample(cls, extras: 'MARExtras', num_ar_steps: int, num_diffusion_steps: int,
               generator: Optional[torch.Generator] = None) -> 'MARSelection':
        """Random ``num_ar_steps`` AR steps (among those committing tokens) and
        ``num_diffusion_steps`` transitions, without replacement (sorted), for ``extras``'s
        schedule (:meth:`draw`)."""
        return cls.draw(extras.seq_len, extras.num_iter, extras.num_transitions, num_ar_steps,
                        num_diffusion_steps, generator)

    @classmethod
    def draw(cls, seq_len: int, num_iter: int, num_transitions: int, num_ar_steps: int,
             num_diffusion_steps: int, generator: Optional[torch.Generator] = None
             ) -> 'MARSelection':
        """:meth:`sample` for a schedule given by its sizes (before any rollout exists)."""
        rem, _ = mask_schedule(seq_len, num_iter)
        live = [i for i in range(num_iter) if rem[i] > rem[i + 1]]
        k = num_transitions
        ar = torch.randperm(len(live), generator=generator)[:num_ar_steps].sort().values
        di = torch.randperm(k, generator=generator)[:num_diffusion_steps].sort().values
        return cls([live[i] for i in ar.tolist()], di.tolist())


@dataclass
class MARExtras(FamilyExtras):
    """What a MAR rollout records (batch-major fields first).

    Attributes:
        orders: ``[B, N]`` the generation order (a permutation of raster positions; the first
            ``rem[i]`` entries are masked at step ``i``).
        commit_step: ``[B, N]`` AR step that committed each token.
        tokens: ``[B, N, D]`` final (scaled) latents, what the transformer sees and decodes.
        z: ``[B, N, C]`` conditional AR latent of each token at its commit step (the latent of
            every step that conditions an action; detached).
        z_uncond: ``[B, N, C]`` unconditional latent at the commit step (CFG rollouts), or None.
        x_t: ``[B, A, D]`` chain state before each transition (``actions`` is the state after);
            with ``mte_chains = S > 0``: ``[B, (1 + S) A_0, D]``, see below.
        x0_pred: ``[B, S, N, D]`` each AR step's ``t = 0`` head sample for every token (still
            masked tokens: a fresh full chain from that step's latent; committed tokens: their
            value), or None when the sampler does not record predictions.
        log_variance: ``[B, A, D]`` the log-variance ``log s_t^2`` (before the temperature) each
            transition was sampled and scored with (DDPM: the head's learned range at rollout
            time; flow: the schedule's), for ``MARPolicy(logprob_sigma='stored')``; None when
            not recorded.
        num_iter, num_sampling_steps, seq_len: the schedule (shared).
        cfg_schedule, cfg_scale: guidance of the rollout (shared).
        head_sampler, sde_noise_level: the head's chain (``'ddpm'``, or ``'flow_sde'`` with
            Flow-GRPO's noise level ``a``;
            :class:`~vargo.components.modules.diffusion.FlowSDESchedule`) (shared).
        selection: the (AR step, diffusion step) pairs :meth:`MARPolicy.evaluate` recomputes when
            called without ``select`` (None: all pairs).
        mte_chains: ``S``, the extra head chains per token drawn after the rollout for MAR-GRPO's
            multi-trajectory expectation (``MaskedSampler(mte_chains=S)``; 0: none) (shared).
        mte_x0: ``[B, S, N, D]`` the final sample ``x0`` of each extra chain (the tokens'
            uncertainty), or None.
        mte_tokens: ``[B, N]`` bool, the tokens whose extra chains :meth:`MARPolicy.evaluate`
            recomputes (``MaskedSampler(mte_top_fraction=f)``: the top ``f`` uncertain tokens of
            each image), or None: every token's. The other extra-chain transitions keep their
            ``logp_old`` (ratio 1, no gradient) and are not marked ``evaluated``.
        refine_steps: the AR steps whose *refinement chains* the rollout carries as actions
            (``MaskedSampler(refinement=True)``; empty: none) (shared). A refinement chain is
            the head chain AR step ``i`` runs for a token still masked after step ``i``
            (``commit_step > i``): it is discarded by sampling (the token is sampled again
            later) but is a term of MAR-GRPO's official loss of step ``i``.
        refine_tokens: ``[B, R]`` long, the token of each refinement chain, or None. Chains are
            step-major (``refine_steps`` order), tokens in raster order within a step; step
            ``i`` has ``rem[i + 1]`` of them (:func:`mask_schedule`), the same in every image.

    Action layout with ``S = mte_chains > 0`` (chain-major blocks of ``A_0 = N K``): the rollout
    has ``A = (1 + S) A_0`` actions; action ``c A_0 + j K + k`` is transition ``k`` of token
    ``j`` in chain ``c`` (``c = 0`` the rollout's own chain, the one decoded and rewarded;
    ``c = 1 .. S`` the extra chains, drawn from fresh noise conditioned on the same commit-step
    latent ``z``). ``actions``, ``logp_old``, ``action_mask``, ``action_step``, ``action_pos``,
    ``x_t`` and ``log_variance`` all follow it, so ``view(B, 1 + S, N, K, ...)`` separates the
    chains. With ``S = 0`` the layout is the plain ``A = N K`` one.

    Refinement chains (``refine_tokens`` not None) follow the chain blocks: action
    ``(1 + S) N K + r K + k`` is transition ``k`` of refinement chain ``r`` (AR step
    :meth:`refine_step_of` ``[r]``, token ``refine_tokens[:, r]``), so ``A = (1 + S) N K + R K``;
    their ``action_step`` is the refinement's step and ``action_pos`` (then ``[B, A, 2]``) the
    token's cell. :attr:`num_chain_actions` is where they start.
    """

    orders: Optional[Tensor] = None
    commit_step: Optional[Tensor] = None
    tokens: Optional[Tensor] = None
    z: Optional[Tensor] = None
    z_uncond: Optional[Tensor] = None
    x_t: Optional[Tensor] = None
    x0_pred: Optional[Tensor] = None
    log_variance: Optional[Tensor] = None
    num_iter: int = 64
    num_sampling_steps: int = 100
    seq_len: int = 256
    cfg_schedule: str = 'linear'
    cfg_scale: float = 1.0
    head_sampler: str = 'ddpm'
    sde_noise_level: Optional[float] = None
    selection: Optional[MARSelection] = None
    mte_chains: int = 0
    mte_x0: Optional[Tensor] = None
    mte_tokens: Optional[Tensor] = None
    refine_steps: tuple[int, ...] = ()
    refine_tokens: Optional[Tensor] = None

    batch_fields: ClassVar[tuple[str, ...]] = ('orders', 'commit_step', 'tokens', 'z', 'z_uncond',
                                               'x_t', 'x0_pred', 'log_variance', 'mte_x0',
                                               'mte_tokens', 'refine_tokens')

    @property
    def num_transitions(self) -> int:
        """K = num_sampling_steps - 1 stochastic transitions per token."""
        return self.num_sampling_steps - 1

    @property
    def num_chains(self) -> int:
        """``1 + mte_chains``: the chain blocks on the action axis (see the layout above)."""
        return 1 + int(self.mte_chains)

    @property
    def num_chain_actions(self) -> int:
        """``(1 + S) N K``: the actions of the chain blocks (the refinement chains follow)."""
        return self.num_chains * self.seq_len * self.num_transitions

    @property
    def num_refinements(self) -> int:
        """``R``: refinement chains per sample (0 without them)."""
        return 0 if self.refine_tokens is None else int(self.refine_tokens.shape[1])

    def refine_step_of(self) -> Tensor:
        """``[R]`` long: the AR step of each refinement chain (step-major, ``rem[i + 1]`` chains
        for step ``i``).

        Examples:
            >>> ex = MARExtras(seq_len=4, num_iter=2, refine_steps=(0,))
            >>> mask_schedule(4, 2)[0], ex.refine_step_of().tolist()
            ([4, 2, 0], [0, 0])
        """
        rem, _ = mask_schedule(self.seq_len, self.num_iter)
        return torch.tensor([i for i in self.refine_steps for _ in range(rem[i + 1])],
                            dtype=torch.long)

