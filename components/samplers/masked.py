"""Masked autoregressive sampling with a diffusion head (MAR family).

Faithful to ``MAR.sample_tokens`` + ``DiffLoss.sample`` + ``GaussianDiffusion.p_sample_loop`` of
LTH14/mar (docs/methods/mar_grpo.md):

* a random generation order per sample; the cosine schedule
  (:func:`~vargo.components.modules.masked.mask_schedule`) keeps
  ``max(1, min(remaining - 1, floor(N cos(pi/2 (i + 1) / num_iter))))`` tokens masked after step
  ``i`` and commits the others (all remaining at the last step);
* at each step the MAE encoder/decoder gives ``z`` for every position (CFG: ONE doubled batch
  ``[cond; fake_latent]``); each token committed at the step gets a full reverse chain of the
  head from ``x_T ~ N(0, I)`` over the ``num_sampling_steps`` respaced DDPM steps, conditioned on
  its ``z``;
* CFG on eps only, ``eps = eps_u + w_i (eps_c - eps_u)``, with ``w_i`` linear
  (``1 + (cfg - 1) (N - mask_len_i) / N``, after Muse) or constant; the variance is the
  conditional half's;
* ``temperature`` multiplies the head's noise: ``x_{t-1} = mu + exp(logvar / 2) n tau``.

Every stochastic transition ``x_t -> x_{t-1}`` (``t >= 1``) is a Gaussian action with its
log-density (:func:`~vargo.components.modules.diffusion.gaussian_transition_logp`) recorded
under the sampler's :class:`~vargo.core.types.LogprobSpec` (``'rollout'``: the guided mean
sampled from; ``'none'``: the conditional mean; both with the conditional variance and ``tau``).
The rollout records
(``MARExtras``) the order, each token's commit step, the final tokens, the conditional (and
unconditional) AR latent ``z`` of each token at its commit step, every chain state ``x_t``
(``actions`` are the ``x_{t-1}``), and, with ``record_predictions=True``, every AR step's
``t = 0`` sample for *all* tokens (for still-masked tokens a full chain from that step's ``z``:
what MAR-GRPO's consistency-aware selection compares; the tokens committed at the step take
their value from this same chain). This costs ``sum_i remaining_i`` head chains per image
instead of ``N`` (about ``num_iter / 2`` times the head work), hence off by default.

Noise: with ``rng`` (a :class:`~vargo.core.rng.BatchRNG`) the orders are the argsort of
``rng.rand(N)`` and the head noise is ``rng.randn(N, T, D)`` (one ``[T, D]`` block per token:
``x_T`` then the transition noises), drawn once per rollout (or once per AR step with
``record_predictions``) for the global batch, so a batch split over ranks samples what one
process samples. With ``rng=None`` the orders come from ``numpy.random.shuffle`` and the noise
from ``torch.randn`` in the official call order, so with the same numpy/torch seeds and weights
the latents equal the official ``sample_tokens``'s (see ``tests/test_mar.py``).

Flow heads: with ``head_sampler='flow_sde'`` (a ``head_type='flow'`` policy) every chain is
Flow-GRPO's SDE discretisation of the velocity head (equations in
:class:`~vargo.components.modules.diffusion.FlowSDESchedule`, noise level
``sde_noise_level``), CFG on the velocity; its ``T - 1`` stochastic steps are the actions,
recorded exactly like DDPM's.

Partial rollouts: ``rollout(..., prefix=<a MAR rollout>, stop_at_step=m)`` completes each prefix
sample ``G`` times in its order, keeping the tokens of its first ``m`` AR steps (see
:meth:`MaskedSampler._sample`).

:meth:`MaskedSampler.extra_chains` redraws ``S`` full chains for every token from fresh noise,
conditioned on the token's recorded commit-step latent, guided as the rollout was (MAR-GRPO's
multi-trajectory expectation; the official code's unguided MTE chains are a bug we do not copy).
With ``MaskedSampler(mte_chains=S)`` every rollout appends these chains to its action axis
(``A = (1 + S) N K``, chain-major blocks, layout in
:class:`~vargo.components.modules.masked.MARExtras`), so :meth:`MARPolicy.evaluate` recomputes
their log-probs in the same forward as the rollout's own chain and the
``MultiTrajectorySelector`` token selector turns the single-chain surrogate into the mean over
the chains for the selected tokens.

Policy protocol: :class:`MaskedDecoding` is all the sampler calls (``seq_len``, ``token_dim``,
``latent_dim``, ``device``, ``encode_conditions``, ``class_embedding``, ``null_class_embedding``,
``latents``, ``schedule``, ``head_transition``, ``rollout_axes``, ``decode``);
:class:`~vargo.components.policies.mar.MARPolicy` implements it, and a new masked family
implements it to be sampled by ``MaskedSampler``. The order of events of a rollout is the
shared template's (:class:`~vargo.components.samplers.base.RolloutSampler`); the rollout record
(:class:`~vargo.components.modules.masked.MARExtras`) and the schedules come from
:mod:`vargo.components.modules`, so this module imports no policy.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

import numpy as np
import torch
from torch import Tensor

from vargo.core.interfaces import Policy
from vargo.core.registry import SAMPLERS
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, LogprobSpec, Rollout

from ..modules.diffusion import gaussian_transition_logp
from ..modules.masked import (MARExtras, MARSelection, cfg_scales, mask_schedule,
                              token_uncertainty, top_fraction_tokens)
from ..modules.packed_linear import PackedLinears
from .base import RolloutSampler
from .checks import check_bool, check_int, check_real, check_sampling

__all__ = ['MaskedSampler', 'MaskedDecoding', 'MARChains']


class MaskedDecoding(Protocol):
    """The decoding protocol of masked autoregressive policies with a per-token diffusion head
    (what :class:`MaskedSampler` calls; :class:`~vargo.components.policies.mar.MARPolicy`
    implements it, and a new masked family implements it to be sampled by ``MaskedSampler``).

    Tokens are continuous ``[D]`` vectors at raster positions ``0 .. N - 1``; the AR model maps
    the visible tokens to a latent ``z [latent_dim]`` per position, and the head's chain
    (:meth:`schedule`, :meth:`head_transition`) samples a token from its ``z``.
    """

    #: N, the tokens of a sample
    seq_len: int
    #: D, the channels of a token
    token_dim: int
    #: C, the channels of the AR latent ``z`` that conditions the head
    latent_dim: int
    #: where the policy's parameters live
    device: torch.device

    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Check ``cond`` and move what the model needs to :attr:`device`; no grad."""

    def class_embedding(self, cond: Conditions) -> Tensor:
        """``[B, C]`` condition embeddings of encoded ``cond``."""

    def null_class_embedding(self, batch: int) -> Tensor:
        """``[batch, C]`` the unconditional embedding (the CFG half)."""

    def latents(self, tokens: Tensor, mask: Tensor, class_emb: Tensor) -> Tensor:
        """``z [B, N, latent_dim]`` of every position given ``tokens [B, N, D]`` (values at
        masked positions unused), ``mask [B, N]`` (True = masked, the same count per row) and
        ``class_emb [B, C]``."""

    def schedule(self, num_sampling_steps: int, *, head_sampler: str,
                 sde_noise_level: Optional[float]) -> Any:
        """The head's chain of ``num_sampling_steps`` steps for ``head_sampler`` (raise
        ``ValueError`` naming the fix when the head cannot be sampled so)."""

    def head_transition(self, x: Tensor, t: Tensor, z: Tensor, sched: Any, *,
                        z_uncond: Optional[Tensor] = None,
                        cfg: Union[float, Tensor] = 1.0) -> dict[str, Tensor]:
        """The head's step from ``x_t [n, D]`` at respaced steps ``t [n]`` given ``z [n, C]``:
        ``mean``, ``log_variance``, ``pred_xstart`` (``[n, D]``); with ``z_uncond`` guided with
        weight ``cfg`` and also ``mean_cond`` (the conditional mean)."""

    def rollout_axes(self, k: int) -> Tensor:
        """``action_pos [N k, 2]`` of ``k`` transitions per token."""

    def decode(self, rollout: Rollout) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] of the rollout's tokens."""


@dataclass
class MARChains:
    """``S`` extra head chains per token (MAR-GRPO's MTE), from :meth:`MaskedSampler.extra_chains`.

    Attributes:
        x_t: ``[B, S, A, D]`` states before each transition (A = N K, token-major as the rollout).
        actions: ``[B, S, A, D]`` states after each transition.
        logp_old: ``[B, S, A]`` transition log-probs under the sampler's spec.
        x0: ``[B, S, N, D]`` final sample of each chain.
        log_variance: ``[B, S, A, D]`` the variance each transition was drawn with
            (``MARExtras.log_variance``).
    """

    x_t: Tensor
    actions: Tensor
    logp_old: Tensor
    x0: Tensor
    log_variance: Optional[Tensor] = None

    @property
    def num_chains(self) -> int:
        return int(self.x_t.shape[1])

    def as_rollout(self, rollout: Rollout, s: int) -> Rollout:
        """``rollout`` with chain ``s`` in place of the sampled chains (same tokens, orders and
        latents), for :meth:`MARPolicy.evaluate` of the extra chain (a rollout that carries
        its own MTE chains, ``extras.mte_chains > 0``, keeps its first block's mask and steps
        and drops the others)."""
        if not 0 <= s < self.num_chains:
            raise ValueError(f'chain index {s} is not in [0, {self.num_chains})')
        a0 = self.x_t.shape[2]
        extras = dataclasses.replace(rollout.extras, x_t=self.x_t[:, s], log_variance=None
                                     if self.log_variance is None else self.log_variance[:, s],
                                     mte_chains=0, mte_x0=None, refine_steps=(),
                                     refine_tokens=None)
        return dataclasses.replace(rollout, actions=self.actions[:, s],
                                   logp_old=self.logp_old[:, s], extras=extras,
                                   action_mask=rollout.action_mask[:, :a0],
                                   action_step=rollout.steps()[:, :a0],
                                   action_pos=rollout.action_pos[..., :a0, :])


@SAMPLERS.register_module()
class MaskedSampler(RolloutSampler):
    """Samples MAR token grids (random order, cosine schedule, diffusion-head chains).

    Args:
        num_iter: AR steps (official evaluation 64 or 256; MAR-GRPO 64).
        num_sampling_steps: respaced head steps T (official 100; MAR-GRPO 25); each token has
            ``K = T - 1`` stochastic transitions (actions).
        cfg_scale: guidance ``w`` (1 = none, no doubled batch; official 2.9 to 3.2).
        cfg_schedule: ``'linear'`` (official) or ``'constant'``.
        temperature: multiplies the head noise (official 1.0; 0.95 without CFG).
        logprob_cfg: ``'rollout'`` (the guided mean actually sampled from) or ``'none'`` (the
            conditional mean), see :class:`~vargo.core.types.LogprobSpec`.
        record_predictions: record each AR step's ``t = 0`` sample of all tokens
            (``MARExtras.x0_pred``; costs about ``num_iter / 2`` times the head work).
        decode_images: decode ``rollout.images`` with the policy's VAE.
        head_sampler: the head's chain: ``'ddpm'`` (official; a ``head_type='ddpm'`` policy) or
            ``'flow_sde'`` (Flow-GRPO's SDE step, :class:`~vargo.components.modules.diffusion.
            FlowSDESchedule`; a ``head_type='flow'`` policy). A mismatch with the policy's head
            raises when the algorithm is built (:meth:`check_policy`, also run by every rollout).
        sde_noise_level: Flow-GRPO's noise level ``a`` of ``'flow_sde'`` (default 0.7, NOVA's);
            not a DDPM setting.
        loss_ar_steps, loss_diffusion_steps: the policy update's subset of the rollout's
            transitions (MAR-GRPO: 12 AR steps x 10 diffusion steps per update): each rollout
            draws one :class:`~vargo.components.modules.masked.MARSelection` into
            ``extras.selection``, which :meth:`MARPolicy.evaluate` (policy and reference)
            recomputes; the others keep ``logp_old`` (ratio 1, no gradient). Pair it with the
            ``EvaluatedActionsSelector`` token selector so the loss averages over the evaluated
            transitions only. None (default): every transition is evaluated.
        mte_chains: ``S`` extra head chains per token for MAR-GRPO's multi-trajectory
            expectation (NOVA 3, Harmon 5; 0, the default: none). After each rollout (and after
            its ``selection`` draw) :meth:`extra_chains` draws them, vectorised over the chains,
            from the rollout's ``rng`` (rank-invariant), and they are appended to the action
            axis (``A = (1 + S) N K``; layout in
            :class:`~vargo.components.modules.masked.MARExtras`, final samples in
            ``extras.mte_x0``). They are neither decoded nor rewarded; pair with the
            ``MultiTrajectorySelector`` token selector, which sets their loss weights.
        mte_top_fraction: with ``mte_chains``: record in ``extras.mte_tokens`` the top
            ``mte_top_fraction`` uncertain tokens of each image
            (:func:`~vargo.components.modules.masked.token_uncertainty` of the extra chains'
            ``x0``), the only tokens whose extra chains :meth:`MARPolicy.evaluate` (policy and
            reference) then recomputes: the others' extra chains have no loss weight under
            ``MultiTrajectorySelector(top_fraction=mte_top_fraction)``, so this saves
            ``1 - mte_top_fraction`` of the extra chains' update work without changing the loss.
            None (default): every token's extra chains are evaluated.
        refinement: also carry the *refinement chains* as actions: the head chain AR step ``i``
            runs for each token still masked after step ``i`` (discarded by sampling, the token
            is drawn again later), which MAR-GRPO's official loss of step ``i`` scores next to
            the committed tokens' chains and its consistency rule gates
            (``ConsistencySelector``). Needs ``record_predictions=True`` (that is when the
            sampler runs them). With a loss subset (``loss_ar_steps``) only the subset's steps
            are carried, and the subset is then drawn *before* the head noise (right after the
            orders), as the official code draws ``selected_mask_steps``; otherwise every step's.
            Layout in :class:`~vargo.components.modules.masked.MARExtras` (``R`` chains of
            ``K`` transitions after the chain blocks); ``action_pos`` becomes ``[B, A, 2]``.
        packed_weights: run the ``nn.Linear`` layers of the policy's ``decoding_modules()`` on
            weights packed once per rollout (CPU, fp32;
            :class:`~vargo.components.modules.packed_linear.PackedLinears`). Off by default:
            latents then equal the official loop's bit for bit; on MAR-B it samples about 1.35x
            faster with latents equal up to summation order (README, "Performance").

    Examples:
        >>> s = MaskedSampler(num_iter=64, num_sampling_steps=25, cfg_scale=3.0,
        ...                   cfg_schedule='linear', temperature=1.0, logprob_cfg='rollout')
        >>> s.logprob_spec().cfg_scale
        3.0
    """

    protocol = MaskedDecoding
    step_unit = 'AR steps'
    #: MAR-GRPO's per-step predictions, refinement chains and MTE chains feed the loss only:
    #: evaluation and previews draw without them (the images of a rollout without recorded
    #: predictions, ``num_iter / 2`` times less head work, and no extra actions)
    TRAINING_ONLY = dict(record_predictions=False, refinement=False, mte_chains=0,
                         mte_top_fraction=None)

    def __init__(self, *, num_iter: int, num_sampling_steps: int, cfg_scale: float,
                 cfg_schedule: str, temperature: float, logprob_cfg: str,
                 record_predictions: bool = False, decode_images: bool = True,
                 head_sampler: str = 'ddpm', sde_noise_level: Optional[float] = None,
                 loss_ar_steps: Optional[int] = None, loss_diffusion_steps: Optional[int] = None,
                 mte_chains: int = 0, mte_top_fraction: Optional[float] = None,
                 refinement: bool = False, packed_weights: bool = False):
        check_bool('MaskedSampler', 'packed_weights', packed_weights)
        check_int('MaskedSampler', 'num_iter', num_iter, lo=1, hint='AR steps (official 64)')
        check_int('MaskedSampler', 'num_sampling_steps', num_sampling_steps, lo=2,
                  hint='head steps T (official 100; MAR-GRPO 25)')
        check_sampling('MaskedSampler', cfg_scale=cfg_scale, temperature=temperature,
                       logprob_cfg=logprob_cfg)
        check_bool('MaskedSampler', 'record_predictions', record_predictions)
        check_bool('MaskedSampler', 'decode_images', decode_images)
        if int(num_iter) < 1:
            raise ValueError(f'num_iter={num_iter} must be >= 1 AR steps')
        if int(num_sampling_steps) < 2:
            raise ValueError(f'num_sampling_steps={num_sampling_steps} must be >= 2 (the last '
                             f'head step is deterministic; the others are the actions)')
        if not isinstance(cfg_schedule, str) or cfg_schedule not in ('linear', 'constant'):
            raise ValueError(f"cfg_schedule={cfg_schedule!r} is not one of 'linear', 'constant'")
        if not isinstance(head_sampler, str) or head_sampler not in ('ddpm', 'flow_sde'):
            raise ValueError(f"head_sampler={head_sampler!r} is not one of 'ddpm' (DDPM head) or "
                             f"'flow_sde' (flow head, Flow-GRPO SDE)")
        if head_sampler == 'ddpm' and sde_noise_level is not None:
            raise ValueError(f"sde_noise_level={sde_noise_level} is a head_sampler='flow_sde' "
                             f"setting; the DDPM chain's noise is its posterior variance: drop "
                             f"sde_noise_level or use head_sampler='flow_sde' with a flow head")
        if head_sampler == 'flow_sde':
            if sde_noise_level is not None:
                check_real('MaskedSampler', 'sde_noise_level', sde_noise_level,
                           hint="Flow-GRPO's noise level a (0.7), or None for the default")
            sde_noise_level = 0.7 if sde_noise_level is None else float(sde_noise_level)
            if not sde_noise_level > 0:
                raise ValueError(f'sde_noise_level={sde_noise_level} must be > 0 (Flow-GRPO: '
                                 f'0.7)')
        self.head_sampler, self.sde_noise_level = head_sampler, sde_noise_level
        if (loss_ar_steps is None) != (loss_diffusion_steps is None):
            raise ValueError(f'loss_ar_steps={loss_ar_steps} and loss_diffusion_steps='
                             f'{loss_diffusion_steps}: set both (MAR-GRPO: 12 and 10) or neither '
                             f'(every transition is evaluated)')
        for name, v in (('loss_ar_steps', loss_ar_steps),
                        ('loss_diffusion_steps', loss_diffusion_steps)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f'{name}={v!r} must be a positive int (or None for all)')
        if loss_diffusion_steps is not None and loss_diffusion_steps > num_sampling_steps - 1:
            raise ValueError(f'loss_diffusion_steps={loss_diffusion_steps} exceeds the '
                             f'{num_sampling_steps - 1} transitions per token of '
                             f'num_sampling_steps={num_sampling_steps}')
        self.loss_ar_steps, self.loss_diffusion_steps = loss_ar_steps, loss_diffusion_steps
        check_int('MaskedSampler', 'mte_chains', mte_chains, lo=0,
                  hint='extra head chains per token for MTE (NOVA 3, Harmon 5; 0 = off)')
        self.mte_chains = int(mte_chains)
        if mte_top_fraction is not None:
            check_real('MaskedSampler', 'mte_top_fraction', mte_top_fraction, lo=0.0, hi=1.0,
                       hint="MAR-GRPO's share of uncertain tokens (0.3), or None for all")
            if not 0.0 <= float(mte_top_fraction) <= 1.0 or not self.mte_chains:
                raise ValueError(f'mte_top_fraction={mte_top_fraction} must be in [0, 1] and '
                                 f'needs mte_chains >= 1 (got {mte_chains})')
            mte_top_fraction = float(mte_top_fraction)
        self.mte_top_fraction = mte_top_fraction
        check_bool('MaskedSampler', 'refinement', refinement)
        if refinement and not record_predictions:
            raise ValueError('MaskedSampler refinement=True needs record_predictions=True: the '
                             'refinement chains are the head chains of still-masked tokens, '
                             'which the sampler runs only when it records predictions')
        self.refinement = bool(refinement)
        self.num_iter = int(num_iter)
        self.num_sampling_steps = int(num_sampling_steps)
        self.cfg_schedule = cfg_schedule
        self.record_predictions = bool(record_predictions)
        super().__init__(decode_images=decode_images)
        self._packs = PackedLinears(enabled=packed_weights)
        self._spec = LogprobSpec(mode=logprob_cfg, cfg_scale=float(cfg_scale), cfg_interval=None,
                                 temperature=float(temperature))

    def logprob_spec(self) -> LogprobSpec:
        """The distribution ``logp_old`` is recorded under (evaluate with the same spec)."""
        return self._spec

    @property
    def num_steps(self) -> int:
        """Decode steps of a rollout: the AR steps (``num_iter``)."""
        return self.num_iter

    def num_steps_of(self, policy: Policy) -> int:
        """Decode steps of a rollout of any policy: the AR steps (``num_iter``)."""
        return self.num_iter

    @property
    def actions_per_token(self) -> int:
        """K = num_sampling_steps - 1 head transitions (actions) per committed token."""
        return self.num_sampling_steps - 1

    def num_actions(self, policy: Policy) -> int:
        """A = N K actions per sample of ``policy``'s rollouts."""
        return policy.seq_len * self.actions_per_token

    def check_policy(self, policy: Policy) -> None:
        """Raise ``ValueError`` naming the fix when the policy does not implement
        :class:`MaskedDecoding`, or when its head cannot be sampled with ``head_sampler``
        (``head_type`` mismatch); run when the algorithm is built and by every rollout."""
        super().check_policy(policy)
        self._head_schedule(policy)

    def _head_schedule(self, policy: Policy):
        """The policy's head chain for this sampler (cached by the policy; raises as
        :meth:`check_policy`)."""
        return policy.schedule(self.num_sampling_steps, head_sampler=self.head_sampler,
                               sde_noise_level=self.sde_noise_level)

    # ---- helpers --------------------------------------------------------------------------------
    def _chain(self, policy: Policy, z: Tensor, zu: Optional[Tensor],
               w: Union[float, Tensor], noise: Optional[Tensor], extra_draw: int
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One batch of reverse chains (official ``p_sample_loop``).

        Args:
            z, zu: ``[m, C]`` conditional / unconditional latents (``zu`` None: no CFG).
            w: guidance weight (float or ``[m, 1]``).
            noise: ``[m, T, D]`` (``x_T`` then the transition noises) or None for
                ``torch.randn`` in the official order (``extra_draw`` times the rows per step,
                the CFG-doubled batch).

        Returns:
            ``x_t [m, K, D]``, ``x_prev [m, K, D]``, ``logp [m, K]``, final ``x0 [m, D]``,
            ``log_variance [m, K, D]`` of each transition.
        """
        spec, sched = self._spec, self._head_schedule(policy)
        m, d, big_t = z.shape[0], policy.token_dim, self.num_sampling_steps
        dev = z.device
        x = noise[:, 0] if noise is not None else torch.randn(m, d).to(dev)
        xs, xp, lps, lvs = [], [], [], []
        tau = spec.temperature
        for k in range(big_t):
            t = big_t - 1 - k
            out = policy.head_transition(x, torch.full((m,), t, dtype=torch.long, device=dev), z,
                                         sched, z_uncond=zu, cfg=w)
            nk = (noise[:, k + 1] if t > 0 else None) if noise is not None else \
                torch.randn(m * extra_draw, d).to(dev)[:m]
            if t > 0:
                x_new = out['mean'] + torch.exp(0.5 * out['log_variance']) * nk * tau
                xs.append(x)
                xp.append(x_new)
                lps.append(self._score(out, x_new, zu is not None))
                lvs.append(out['log_variance'])
                x = x_new
            else:
                x = out['mean']
        return (torch.stack(xs, 1), torch.stack(xp, 1), torch.stack(lps, 1), x,
                torch.stack(lvs, 1))

    def _score(self, out: dict[str, Tensor], x_new: Tensor, guided: bool) -> Tensor:
        """Log-density of ``x_new`` under :meth:`logprob_spec` given the head's transition
        ``out`` (``'none'`` scores a guided step under the conditional mean)."""
        spec = self._spec
        mu = out['mean'] if (not guided or spec.mode == 'rollout') else out['mean_cond']
        return gaussian_transition_logp(x_new, mu, out['log_variance'], spec.temperature)

    def _given_logp(self, policy: Policy, xs: Tensor, xp: Tensor, z: Tensor,
                    zu: Optional[Tensor], w: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Log-probs ``[M, K]`` and log-variances ``[M, K, D]`` of given transitions ``xs -> xp
        [M, K, D]`` (kept prefix tokens) conditioned on their commit-step latents ``z``/``zu
        [M, C]`` with per-token guidance weights ``w [M]`` (the computation
        :meth:`MARPolicy.evaluate` repeats)."""
        m, kk, d = xs.shape
        if m == 0:
            return xs.new_zeros(0, kk), xs.new_zeros(0, kk, d)
        t = (kk - torch.arange(kk, device=xs.device)).repeat(m)           # k -> respaced K - k
        zr = z.repeat_interleave(kk, dim=0)
        zur = None if zu is None else zu.repeat_interleave(kk, dim=0)
        cfg = 1.0 if zu is None else w.repeat_interleave(kk).unsqueeze(-1)
        out = policy.head_transition(xs.reshape(-1, d), t, zr, self._head_schedule(policy),
                                     z_uncond=zur, cfg=cfg)
        return (self._score(out, xp.reshape(-1, d), zu is not None).view(m, kk),
                out['log_variance'].view(m, kk, d))

    def _orders(self, b: int, n: int, rng: Optional[BatchRNG], dev) -> Tensor:
        """``[b, n]`` random generation orders: argsort of ``rng.rand(n)``, or the official
        ``sample_orders`` (numpy's global generator) with ``rng=None``."""
        if rng is not None:
            return rng.rand(n).argsort(dim=1).to(dev)
        orders = []
        for _ in range(b):              # official ``sample_orders`` (numpy's global generator)
            order = np.array(list(range(n)))
            np.random.shuffle(order)
            orders.append(order)
        return torch.from_numpy(np.array(orders)).long().to(dev)

    # ---- rollout --------------------------------------------------------------------------------
    def _sample(self, policy: Policy, cond: Conditions, *, rng: Optional[BatchRNG],
                prefix: Optional[Rollout], kept: int, group_size: int) -> Rollout:
        """Draw the generation orders and run :meth:`generate` (the template of
        :meth:`~vargo.components.samplers.base.RolloutSampler.rollout` does the rest).

        Without ``prefix`` the orders are drawn (``rng.rand(N)`` argsorted, or numpy's
        ``shuffle`` with ``rng=None``). With ``prefix`` (a MAR rollout of this sampler's
        schedule) sample ``j`` is completed G times with its generation order; the tokens it
        committed in its first ``kept`` AR steps are kept (their chains, latents and values;
        their transitions are out of ``action_mask`` and their ``logp_old`` is recomputed under
        :meth:`logprob_spec` from the recorded commit-step latents, as :meth:`MARPolicy.evaluate`
        computes it), the other tokens are resampled; the completions of prefix sample ``j``
        form group ``j``. The order draw is skipped (the orders are the prefix's); the head
        noise is drawn as for a full rollout and used for the resampled tokens only.

        Returns:
            a :class:`Rollout` of ``B = len(cond)`` samples: ``actions [B, A, D]``
            (``A = N (T - 1)``), ``logp_old [B, A]``, ``action_mask [B, A]`` (False on kept
            transitions), ``action_step [B, A]`` (commit step), ``action_pos [A, 2]``,
            ``extras`` (:class:`~vargo.components.modules.masked.MARExtras`), ``prefix_steps``
            (the kept AR steps).
        """
        given = None
        if prefix is None:
            orders = self._orders(len(cond), policy.seq_len, rng, policy.device)
        else:
            rows = torch.arange(prefix.batch_size).repeat_interleave(group_size)
            given = prefix.index(rows).to(policy.device)
            orders = given.extras.orders
        rows = len(cond) * (2 if self._spec.cfg_scale != 1.0 else 1)
        with self._packs.prepare(policy, rows).active():
            return self.generate(policy, cond, orders, rng, prefix=given, kept=kept)

    def release_cache(self) -> None:
        """Free the packed weights (kept between rollouts)."""
        self._packs.release()

    def _check_prefix(self, policy: Policy, prefix: Rollout, kept: int, rows: int) -> None:
        """The template's checks, after checking that ``prefix`` is a MAR rollout, then that it
        was drawn with this sampler's schedule (``num_iter``, ``num_sampling_steps``,
        ``head_sampler``)."""
        ex = prefix.extras
        if not isinstance(ex, MARExtras):
            raise TypeError(f'prefix must be a MAR rollout (extras MARExtras), got '
                            f'{type(ex).__name__}')
        super()._check_prefix(policy, prefix, kept, rows)
        mine = (self.num_iter, self.num_sampling_steps, self.head_sampler)
        theirs = (ex.num_iter, ex.num_sampling_steps, ex.head_sampler)
        if mine != theirs:
            raise ValueError(f'the prefix rollout has (num_iter, num_sampling_steps, '
                             f'head_sampler) = {theirs} but this sampler {mine}: complete it '
                             f'with a sampler of the same schedule')

    def generate(self, policy: Policy, cond: Conditions, orders: Tensor,
                 rng: Optional[BatchRNG] = None, *, prefix: Optional[Rollout] = None,
                 kept: int = 0) -> Rollout:
        """The sampling loop for given ``orders [B, N]`` (one sample per row of ``cond``;
        ``group_ids`` = arange). ``prefix``: a MAR rollout of ``B`` rows whose tokens committed
        in its first ``kept`` AR steps are kept. See :meth:`_sample`."""
        spec = self._spec
        b, n, d, dev = orders.shape[0], policy.seq_len, policy.token_dim, policy.device
        big_t, kk, steps = self.num_sampling_steps, self.num_sampling_steps - 1, self.num_iter
        use_cfg = spec.cfg_scale != 1.0
        weights = cfg_scales(spec.cfg_scale, self.cfg_schedule, n, steps)
        rem, _ = mask_schedule(n, steps)
        pos_step = torch.empty(n, dtype=torch.long)
        for i in range(steps):
            pos_step[rem[i + 1]:rem[i]] = i
        commit = torch.empty(b, n, dtype=torch.long, device=dev).scatter_(
            1, orders, pos_step.to(dev).expand(b, n).contiguous())
        tokens = torch.zeros(b, n, d, device=dev)
        x_t_all = torch.zeros(b, n, kk, d, device=dev)
        act_all = torch.zeros(b, n, kk, d, device=dev)
        logp_all = torch.zeros(b, n, kk, device=dev)
        lv_all = torch.zeros(b, n, kk, d, device=dev)
        cd = policy.latent_dim
        z_rec = torch.zeros(b, n, cd, device=dev)
        zu_rec = torch.zeros(b, n, cd, device=dev) if use_cfg else None
        preds = torch.zeros(b, steps, n, d, device=dev) if self.record_predictions else None
        given = commit < kept                                                 # [B, N] kept
        need_zu = False
        if prefix is not None:
            gx: MARExtras = prefix.extras
            if not torch.equal(gx.commit_step.to(dev), commit):
                raise ValueError('the prefix rollout\'s commit steps differ from its orders under '
                                 'this sampler\'s schedule: it was drawn with another seq_len or '
                                 'num_iter')
            tokens[given] = gx.tokens[given]       # masked positions' values are never read
            a0 = n * kk                            # the prefix's own chain (before MTE chains)
            x_t_all[given] = gx.x_t[:, :a0].reshape(b, n, kk, d)[given]
            act_all[given] = prefix.actions[:, :a0].reshape(b, n, kk, d)[given]
            z_rec[given] = gx.z[given]
            need_zu = use_cfg and gx.z_uncond is None
            if use_cfg and not need_zu:
                zu_rec[given] = gx.z_uncond[given]
        emb = policy.class_embedding(cond)
        if use_cfg:
            emb = torch.cat([emb, policy.null_class_embedding(b)])
        selection, refine = None, {}
        if self.refinement:
            ref_steps = [i for i in range(steps) if rem[i + 1] > 0]
            if self.loss_ar_steps is not None:
                # drawn before the head noise (the official selected_mask_steps), so only the
                # loss steps' refinement chains are kept
                selection = MARSelection.draw(
                    n, steps, kk, self.loss_ar_steps, self.loss_diffusion_steps,
                    generator=None if rng is None else rng.generator)
                ref_steps = [i for i in selection.ar_steps if rem[i + 1] > 0]
            refine = {i: None for i in ref_steps}
        noise_all = None
        if rng is not None and not self.record_predictions:
            noise_all = rng.randn(n, big_t, d).to(dev)                       # [B, N, T, D]
        for i in range(steps):
            sel = commit == i                                                 # committed now
            mask = commit >= i                                                # masked at step i
            kept_step = i < kept
            if rem[i] == rem[i + 1] and not self.record_predictions:
                continue
            if kept_step and not (self.record_predictions or need_zu):
                continue
            if use_cfg:
                z = policy.latents(torch.cat([tokens, tokens]), torch.cat([mask, mask]), emb)
            else:
                z = policy.latents(tokens, mask, emb)
            if kept_step and need_zu:         # the prefix drew without CFG: its latents, guided
                z_rec[sel], zu_rec[sel] = z[:b][sel], z[b:][sel]
            if kept_step and not self.record_predictions:
                continue
            rows = mask if self.record_predictions else sel
            zc = z[:b][rows]
            zu = z[b:][rows] if use_cfg else None
            if rng is None:
                noise = None
            elif self.record_predictions:
                noise = rng.randn(n, big_t, d).to(dev)[rows]
            else:
                noise = noise_all[rows]
            if zc.shape[0]:
                xs, xp, lp, x0, lv = self._chain(policy, zc, zu, weights[i], noise,
                                                 2 if use_cfg else 1)
            if self.record_predictions:
                preds[:, i] = tokens
                if zc.shape[0]:
                    preds[:, i][rows] = x0
                if i in refine:                    # the still-masked tokens' chains of step i
                    still = commit > i
                    r_i, sub = rem[i + 1], still[rows]
                    refine[i] = (still.nonzero(as_tuple=True)[1].view(b, r_i),
                                 *(v[sub].view(b, r_i, *v.shape[1:]) for v in (xs, xp, lp, lv)))
                if kept_step:
                    preds[:, i][sel] = tokens[sel]
                    continue
                sub = sel[rows]
                xs, xp, lp, x0, zc, lv = xs[sub], xp[sub], lp[sub], x0[sub], zc[sub], lv[sub]
                zu = zu[sub] if use_cfg else None
            if int(sel.sum()) == 0:
                continue
            tokens[sel] = x0
            x_t_all[sel], act_all[sel], logp_all[sel], lv_all[sel] = xs, xp, lp, lv
            z_rec[sel] = zc
            if use_cfg:
                zu_rec[sel] = zu
        if prefix is not None:
            w = torch.tensor(weights, dtype=torch.float32, device=dev)[commit[given]]
            logp_all[given], lv_all[given] = self._given_logp(
                policy, x_t_all[given], act_all[given], z_rec[given],
                zu_rec[given] if use_cfg else None, w)
        step = commit.repeat_interleave(kk, dim=1)                           # [B, A]
        extras = MARExtras(orders=orders, commit_step=commit, tokens=tokens, z=z_rec,
                           z_uncond=zu_rec, x_t=x_t_all.view(b, n * kk, d), x0_pred=preds,
                           log_variance=lv_all.view(b, n * kk, d),
                           num_iter=steps, num_sampling_steps=big_t, seq_len=n,
                           cfg_schedule=self.cfg_schedule, cfg_scale=spec.cfg_scale,
                           head_sampler=self.head_sampler, sde_noise_level=self.sde_noise_level)
        if selection is not None:
            extras.selection = selection
        elif self.loss_ar_steps is not None:
            # one subset per rollout, the same on every rank: drawn after all noise from the
            # global-batch stream (or torch's global generator without rng)
            extras.selection = MARSelection.sample(
                extras, self.loss_ar_steps, self.loss_diffusion_steps,
                generator=None if rng is None else rng.generator)
        out = Rollout(cond=cond, group_ids=torch.arange(b, device=dev),
                      actions=act_all.view(b, n * kk, d), logp_old=logp_all.view(b, n * kk),
                      action_mask=(~given).repeat_interleave(kk, dim=1),
                      action_step=step, action_pos=policy.rollout_axes(kk), images=None,
                      extras=extras, prefix_steps=kept, logp_old_cfg=spec.mode)
        if self.mte_chains:
            out = self.append_extra_chains(policy, out, rng)
        if self.refinement:
            out = self.append_refinement_chains(policy, out, refine, kept)
        return out

    @staticmethod
    def append_refinement_chains(policy: Policy, rollout: Rollout,
                                 refine: dict[int, Optional[tuple[Tensor, ...]]],
                                 kept: int = 0) -> Rollout:
        """``rollout`` with the refinement chains ``refine`` (AR step ``i`` -> ``(tokens [B, r_i],
        x_t, x_{t-1} [B, r_i, K, D], logp [B, r_i, K], log_variance [B, r_i, K, D])``, or None
        when the step ran no chain) appended after its chain blocks (layout in
        :class:`~vargo.components.modules.masked.MARExtras`). ``action_step`` of a refinement
        transition is its step, ``action_pos`` its token's cell (so ``[B, A, 2]``); those of
        steps a prefix gave (``i < kept``) are outside ``action_mask``."""
        ex: MARExtras = rollout.extras
        steps = tuple(i for i, v in refine.items() if v is not None)
        b, dev = rollout.batch_size, rollout.actions.device
        kk, d = ex.num_transitions, rollout.actions.shape[-1]
        if steps:
            tok, xs, xp, lp, lv = (torch.cat([refine[i][f] for i in steps], 1) for f in range(5))
        else:
            tok = torch.zeros(b, 0, dtype=torch.long, device=dev)
            xs = xp = lv = torch.zeros(b, 0, kk, d, device=dev)
            lp = torch.zeros(b, 0, kk, device=dev)
        r = tok.shape[1]
        extras = dataclasses.replace(
            ex, x_t=torch.cat([ex.x_t, xs.reshape(b, r * kk, d)], 1),
            log_variance=torch.cat([ex.log_variance, lv.reshape(b, r * kk, d)], 1),
            refine_steps=steps, refine_tokens=tok)
        step = extras.refine_step_of().to(dev).view(1, r, 1).expand(b, r, kk)
        pos = rollout.action_pos.to(dev)
        if pos.dim() == 2:
            pos = pos.unsqueeze(0).expand(b, *pos.shape)
        cells = policy.rollout_axes(1).to(dev)[tok]                          # [B, R, 2]
        return dataclasses.replace(
            rollout, actions=torch.cat([rollout.actions, xp.reshape(b, r * kk, d)], 1),
            logp_old=torch.cat([rollout.logp_old, lp.reshape(b, r * kk)], 1),
            action_mask=torch.cat([rollout.action_mask, (step >= kept).reshape(b, r * kk)], 1),
            action_step=torch.cat([rollout.steps().expand(b, -1), step.reshape(b, r * kk)], 1),
            action_pos=torch.cat([pos, cells.repeat_interleave(kk, dim=1)], 1), extras=extras)

    def append_extra_chains(self, policy: Policy, rollout: Rollout,
                            rng: Optional[BatchRNG] = None) -> Rollout:
        """``rollout`` (a plain one, ``A_0 = N K`` actions) with :attr:`mte_chains` = ``S``
        extra chains per token (:meth:`extra_chains`, noise ``rng.randn(S, N, T, D)`` drawn
        after everything else the rollout drew) appended as ``S`` more chain blocks of the
        action axis: ``actions``, ``logp_old``, ``extras.x_t`` and ``extras.log_variance``
        become ``[B, (1 + S) A_0, ...]`` (block ``c`` = chain ``c``, ``c = 0`` the rollout's);
        ``action_mask``, ``action_step`` and ``action_pos`` are repeated per block (an extra
        chain of a kept prefix token stays out of the mask); ``extras.mte_chains = S`` and
        ``extras.mte_x0 [B, S, N, D]`` the extra chains' final samples, and with
        :attr:`mte_top_fraction` ``extras.mte_tokens [B, N]`` the uncertain tokens whose extra
        chains the update evaluates. Nothing is decoded."""
        ex: MARExtras = rollout.extras
        if ex.mte_chains:
            raise ValueError(f'the rollout already carries {ex.mte_chains} MTE chains')
        s = self.mte_chains
        ch = self.extra_chains(policy, rollout, num_chains=s, rng=rng)

        def blocks(main: Tensor, extra: Tensor) -> Tensor:    # [B, A0, ...], [B, S, A0, ...]
            return torch.cat([main.unsqueeze(1), extra.to(main.dtype)], 1).flatten(1, 2)

        extras = dataclasses.replace(
            ex, x_t=blocks(ex.x_t, ch.x_t), log_variance=blocks(ex.log_variance, ch.log_variance),
            mte_chains=s, mte_x0=ch.x0,
            mte_tokens=None if self.mte_top_fraction is None else top_fraction_tokens(
                token_uncertainty(ch.x0), self.mte_top_fraction))
        c = 1 + s
        pos = rollout.action_pos
        return dataclasses.replace(
            rollout, actions=blocks(rollout.actions, ch.actions),
            logp_old=blocks(rollout.logp_old, ch.logp_old),
            action_mask=rollout.action_mask.repeat(1, c), action_step=rollout.steps().repeat(1, c),
            action_pos=pos.repeat(c, 1) if pos.dim() == 2 else pos.repeat(1, c, 1),
            extras=extras)

    # ---- MTE ------------------------------------------------------------------------------------
    @torch.no_grad()
    def extra_chains(self, policy: Policy, rollout: Rollout, *, num_chains: int,
                     rng: Optional[BatchRNG] = None) -> MARChains:
        """Redraw ``num_chains`` full head chains for every token from fresh noise, conditioned
        on the token's commit-step latent (``extras.z``, guided with ``extras.z_uncond`` and the
        commit step's weight when the rollout used CFG), with their transition log-probs under
        :meth:`logprob_spec` (MAR-GRPO's MTE; arXiv 2604.06966).

        Args:
            policy: the policy whose head draws the chains.
            rollout: a rollout of this sampler.
            num_chains: S (NOVA 3, Harmon 5).
            rng: noise source (``rng.randn(S, N, T, D)``; ``local_batch`` = B) or None
                (``torch.randn``).

        Returns:
            :class:`MARChains` (``x_t``/``actions [B, S, A, D]``, ``logp_old [B, S, A]``,
            ``x0 [B, S, N, D]``).
        """
        ex: MARExtras = rollout.extras
        if (ex.num_sampling_steps, ex.num_iter, ex.head_sampler) != (
                self.num_sampling_steps, self.num_iter, self.head_sampler):
            raise ValueError(f'rollout has num_iter={ex.num_iter}, num_sampling_steps='
                             f'{ex.num_sampling_steps}, head_sampler={ex.head_sampler!r} but '
                             f'this sampler {self.num_iter}, {self.num_sampling_steps}, '
                             f'{self.head_sampler!r}: use the sampler that drew it')
        if num_chains < 1:
            raise ValueError(f'num_chains={num_chains} must be >= 1')
        b, n, d = ex.tokens.shape
        s, big_t, kk, dev = int(num_chains), self.num_sampling_steps, self.num_sampling_steps - 1, \
            policy.device
        if rng is not None:
            if rng.local_batch != b:
                raise ValueError(f'rng draws for {rng.local_batch} samples but the rollout has {b}')
            noise = rng.randn(s, n, big_t, d).to(dev).reshape(b * s * n, big_t, d)
        else:
            noise = torch.randn(b * s * n, big_t, d).to(dev)
        z = ex.z.to(dev).unsqueeze(1).expand(b, s, n, -1).reshape(b * s * n, -1)
        zu = None
        w: Union[float, Tensor] = 1.0
        if self._spec.cfg_scale != 1.0:
            if ex.z_uncond is None:
                raise ValueError('this sampler guides (cfg_scale != 1) but the rollout recorded no '
                                 'unconditional latents: it was drawn without CFG')
            zu = ex.z_uncond.to(dev).unsqueeze(1).expand(b, s, n, -1).reshape(b * s * n, -1)
            table = torch.tensor(cfg_scales(self._spec.cfg_scale, self.cfg_schedule, n,
                                            self.num_iter), dtype=torch.float32, device=dev)
            w = table[ex.commit_step.to(dev)].unsqueeze(1).expand(b, s, n).reshape(-1, 1)
        was_training = policy.training
        policy.eval()
        try:
            xs, xp, lp, x0, lv = self._chain(policy, z, zu, w, noise, 1)
        finally:
            policy.train(was_training)
        return MARChains(x_t=xs.view(b, s, n * kk, d), actions=xp.view(b, s, n * kk, d),
                         logp_old=lp.view(b, s, n * kk), x0=x0.view(b, s, n, d),
                         log_variance=lv.view(b, s, n * kk, d))
