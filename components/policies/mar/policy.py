"""MAR as a vargo policy (MAR-GRPO, arXiv 2604.06966; docs/methods/mar_grpo.md).

An *action* is one stochastic transition ``x_t -> x_{t-1}`` (``t >= 1``) of one token's head
chain, with the Gaussian log-density ``log N(x_{t-1}; mu_theta(x_t, t, z), (s_t tau)^2 I)``
summed over the token's ``D`` channels
(:func:`~vargo.components.modules.diffusion.gaussian_transition_logp`). ``A = N x K`` actions per
sample, ``K = num_sampling_steps - 1`` (the ``t = 0`` step is deterministic and not an action),
token-major: action ``a = j K + k`` is transition ``k`` (``k = 0`` leaves pure noise, respaced
timestep ``t = K - k``) of the token at raster position ``j``. ``action_step [B, A]`` is the AR
step that committed the token (random orders: per sample); ``action_pos [A, 2]`` its (row, col).
The transformer gets gradients through ``z``; the mask order and schedule carry no log-prob.

The variance ``s_t`` of that density is, with ``MARPolicy(logprob_sigma='recomputed')`` (the
default), the learned-range variance recomputed from the head's ``v`` output at evaluation time,
so gradients flow through it too; with ``'stored'`` it is the one the sampler drew the action
with (``MARExtras.log_variance``, detached), so only the mean ``mu_theta`` gets gradients, as in
the official MAR-GRPO code (``gaussdiffusion_training`` / ``harmon_single_denoise_with_logp`` of
its Harmon port take the rollout's ``std_dev_t``). A flow head's variance is a schedule constant:
both settings give the same numbers.

Dropout (``attn_dropout = proj_dropout = 0.1``) is applied only by :meth:`MARPolicy.
pretrain_loss` in training mode; :meth:`MARPolicy.evaluate` never drops (the log-prob of the
rollout's actions must not depend on dropout noise, and must equal the sampler's).

:class:`MARPolicy` implements the
:class:`~vargo.components.samplers.masked.MaskedDecoding` protocol (``seq_len``, ``token_dim``,
``latent_dim``, ``class_embedding``, ``null_class_embedding``, ``latents``, ``schedule``,
``head_transition``, ...), which is all :class:`~vargo.components.samplers.masked.MaskedSampler`
calls.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

import torch
from torch import Tensor

from vargo.core.interfaces import Policy
from vargo.core.registry import POLICIES
from vargo.core.types import Conditions, LogprobSpec, PolicyEval, Rollout

from ...modules.conv_layout import decode_chunk_size, decode_in_chunks
from ...modules.onednn_linear import onednn_linears_option
from ...modules.diffusion import (DiffusionSchedule, FlowSDESchedule,
                                  discretized_gaussian_loglik, gaussian_transition_logp)
from ...modules.masked import MARExtras, MARSelection, cfg_scales, mask_schedule
from ...tokenizers.kl_vae import KLVAE, build_kl_vae
from ..frozen import exclude_frozen_submodules
from .loading import MAR_FILE_SOURCES, load_mar_file
from .model import HEAD_SAMPLERS, MARConfig, MARTransformer

__all__ = ['MARPolicy', 'LOGPROB_SIGMAS']

#: variances :meth:`MARPolicy.evaluate` can score with (``MARPolicy.logprob_sigma``)
LOGPROB_SIGMAS = ('recomputed', 'stored')

_FROZEN = ('vae',)


@POLICIES.register_module()
class MARPolicy(Policy):
    """MAR as a vargo policy: the diffusion head's reverse chains are the actions.

    Rollout conventions (see the module doc): ``actions [B, A, D]`` = ``x_{t-1}`` of each
    stochastic transition, ``A = N K``, token-major; ``logp_old [B, A]``; ``action_step [B, A]``
    = commit step of the token; ``action_pos [A, 2]`` = (row, col); ``extras``
    (:class:`MARExtras`).

    Args:
        arch: ``'mar_base'``, ``'mar_large'``, ``'mar_huge'`` or a dict of
            :attr:`MARConfig.ARCH_FIELDS`.
        image_size: image side (256).
        num_classes: classes (1000).
        buffer_size: class-embedding slots (64).
        patch_size: tokens per patch side (1 in every release).
        checkpoint: official ``checkpoint-last.pth`` (or a file with these keys), loaded
            strictly from ``checkpoint_key``; None keeps the official random init.
        checkpoint_key: ``'model_ema'`` (the weights the official evaluation samples with) or
            ``'model'`` (the raw training weights).
        tokenizer: ``'kl16'`` or a dict of :class:`~vargo.components.tokenizers.kl_vae.KLVAE`
            arguments (optionally ``preset='kl16'``).
        tokenizer_checkpoint: official ``kl16.ckpt`` (``{"model": ...}``), loaded strictly;
            None keeps a random tokenizer (tests only).
        fix_head: freeze the diffusion head (MAR-GRPO ``fix_head``): gradients still flow
            *through* it into the transformer via ``z``.
        head_type: ``'ddpm'`` (official eps head, sampled with ``head_sampler='ddpm'``) or
            ``'flow'`` (velocity head, pretrained by flow matching and sampled with
            ``head_sampler='flow_sde'``; no official checkpoint), see :class:`MARConfig`.
        label_drop_prob, mask_ratio_min, diffusion_batch_mul, attn_dropout, proj_dropout:
            pretraining settings of :meth:`pretrain_loss` (official 0.1, 0.7, 4, 0.1, 0.1).
        mask_ratio_std: the std of the masking ratio's truncated normal (mode 1; official 0.25;
            larger values train more often with much of the image visible, as late sampling
            steps see it).
        logprob_sigma: the variance :meth:`evaluate` scores a transition with.
            ``'recomputed'`` (default, vargo's original behaviour): the DDPM head's learned-range
            ``log s_t^2`` recomputed from its ``v`` output, so the log-prob has gradients through
            the variance too (the ``v`` rows of the head's output layer, the head's shared layers
            and, via ``z``, the transformer). ``'stored'`` (official MAR-GRPO): the rollout's recorded
            ``extras.log_variance`` (what the sampler drew the action with), no gradient through
            the variance; only the mean is trained by the log-prob. The entropy follows the same
            variance. Flow heads: the same numbers either way (the variance is a constant).
        onednn_linears: run the training forward and backward of the transformer's and the
            diffusion head's large ``nn.Linear`` layers on oneDNN (CPU fp32; the same gradients
            up to summation order;
            :func:`~vargo.components.modules.onednn_linear.use_onednn_linears`). ``'auto'`` (the
            default) turns it on unless the CPU is Intel's: MAR-B's update ran 1.06x as fast
            with it on an AMD EPYC (README, "Performance"). True / False force it. Grad-free
            forwards are unaffected.
    """

    file_sources: dict[str, str] = MAR_FILE_SOURCES

    def __init__(self, *, arch: Union[str, dict] = 'mar_base', image_size: int = 256,
                 num_classes: int = 1000, buffer_size: int = 64, patch_size: int = 1,
                 checkpoint: Optional[str] = None, checkpoint_key: str = 'model_ema',
                 tokenizer: Union[str, dict] = 'kl16', tokenizer_checkpoint: Optional[str] = None,
                 fix_head: bool = False, label_drop_prob: float = 0.1,
                 mask_ratio_min: float = 0.7, mask_ratio_std: float = 0.25,
                 diffusion_batch_mul: int = 4,
                 attn_dropout: float = 0.1, proj_dropout: float = 0.1, head_type: str = 'ddpm',
                 logprob_sigma: str = 'recomputed', onednn_linears: Union[bool, str] = 'auto'):
        super().__init__()
        if not isinstance(logprob_sigma, str) or logprob_sigma not in LOGPROB_SIGMAS:
            raise ValueError(f'logprob_sigma={logprob_sigma!r} is not one of {LOGPROB_SIGMAS}: '
                             f"'stored' scores with the rollout's variance (official MAR-GRPO), "
                             f"'recomputed' with the head's current one")
        self.logprob_sigma = logprob_sigma
        if checkpoint_key not in ('model', 'model_ema'):
            raise ValueError(f"checkpoint_key={checkpoint_key!r} is not one of 'model', "
                             f"'model_ema' (the two weight sets of an official MAR file)")
        self.checkpoint_key = checkpoint_key
        self.vae: KLVAE = build_kl_vae(tokenizer)
        if tokenizer_checkpoint is not None:
            load_mar_file(self.vae, tokenizer_checkpoint, 'model', what='MAR KL-16 VAE')
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self.cfg = MARConfig.from_arch(
            arch, img_size=image_size, vae_stride=self.vae.downsample, patch_size=patch_size,
            vae_embed_dim=self.vae.embed_dim, num_classes=num_classes, buffer_size=buffer_size,
            attn_dropout=attn_dropout, proj_dropout=proj_dropout, head_type=head_type)
        self.image_size = image_size
        self.mar = MARTransformer(self.cfg)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        self.fix_head = bool(fix_head)
        if self.fix_head:
            for p in self.mar.diffloss.parameters():
                p.requires_grad_(False)
        onednn_linears_option('MARPolicy', self.mar, onednn_linears)
        self.label_drop_prob = label_drop_prob
        if not (0.0 <= mask_ratio_min < 1.0 and mask_ratio_std > 0):
            raise ValueError(f'MARPolicy: mask_ratio_min={mask_ratio_min!r} must be in [0, 1) and '
                             f'mask_ratio_std={mask_ratio_std!r} > 0 (official 0.7 and 0.25)')
        self.mask_ratio_min, self.mask_ratio_std = mask_ratio_min, mask_ratio_std
        self.diffusion_batch_mul = diffusion_batch_mul
        h = self.cfg.seq_h
        r, c = torch.meshgrid(torch.arange(h), torch.arange(h), indexing='ij')
        self.register_buffer('token_pos', torch.stack([r.flatten(), c.flatten()], -1),
                             persistent=False)
        self._schedules: dict = {}
        exclude_frozen_submodules(self, _FROZEN)
        self.train(True)

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """N tokens per image."""
        return self.cfg.seq_len

    @property
    def token_dim(self) -> int:
        """D channels per token."""
        return self.cfg.token_dim

    @property
    def latent_dim(self) -> int:
        """C, the channels of the AR latent ``z`` that conditions a token's head (the MAE
        decoder's width)."""
        return self.cfg.decoder_embed_dim

    @property
    def device(self) -> torch.device:
        """Where the transformer's parameters live."""
        return self.mar.fake_latent.device

    @property
    def head_type(self) -> str:
        """``'ddpm'`` or ``'flow'`` (:attr:`MARConfig.head_type`)."""
        return self.cfg.head_type

    def schedule(self, num_sampling_steps: int, *, head_sampler: str = 'ddpm',
                 sde_noise_level: Optional[float] = None
                 ) -> Union[DiffusionSchedule, FlowSDESchedule]:
        """The head chain of ``num_sampling_steps`` steps (cached): the respaced DDPM
        (``head_sampler='ddpm'``, DDPM head) or Flow-GRPO's SDE with noise level
        ``sde_noise_level`` (``'flow_sde'``, flow head)."""
        n = int(num_sampling_steps)
        if n < 2:
            raise ValueError(f'num_sampling_steps={num_sampling_steps} must be >= 2 (the last '
                             f'step is deterministic; actions are the other steps)')
        want = HEAD_SAMPLERS[self.head_type]
        if head_sampler != want:
            other = next(h for h, s in HEAD_SAMPLERS.items() if s == head_sampler) \
                if head_sampler in HEAD_SAMPLERS.values() else None
            fix = (f"or build the policy with head_type={other!r}" if other else
                   f"the head samplers are {sorted(HEAD_SAMPLERS.values())}")
            raise ValueError(f'head_sampler={head_sampler!r} cannot sample this MAR policy\'s '
                             f'head_type={self.head_type!r} head: set the sampler\'s '
                             f'head_sampler={want!r}, {fix}')
        key = n if head_sampler == 'ddpm' else (head_sampler, n, float(sde_noise_level))
        if key not in self._schedules:
            self._schedules[key] = (DiffusionSchedule(n) if head_sampler == 'ddpm' else
                                    FlowSDESchedule(n, sde_noise_level))
        return self._schedules[key]

    def train(self, mode: bool = True) -> 'MARPolicy':
        super().train(mode)
        self.vae.eval()
        return self

    def trainable_parameters(self):
        return [p for p in self.mar.parameters() if p.requires_grad]

    def load_checkpoint(self, path: str) -> None:
        """Load an official ``checkpoint-last.pth`` (``checkpoint_key`` entry), strictly."""
        load_mar_file(self.mar, path, self.checkpoint_key, what='MAR transformer')

    # ---- conditions ----------------------------------------------------------------------------
    def decoding_modules(self) -> list[torch.nn.Module]:
        """The transformer and its diffusion head: what sampling runs step by step (their
        linear layers use packed weights during a rollout with
        ``MaskedSampler(packed_weights=True)``)."""
        return [self.mar]

    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Check class ids and move them to the model's device."""
        if cond.class_ids is None:
            raise ValueError('a MAR policy is class-conditional: it needs Conditions.class_ids')
        ids = cond.class_ids.to(self.device)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.num_classes):
            raise ValueError(f'class ids must be in [0, {self.cfg.num_classes}), got '
                             f'[{int(ids.min())}, {int(ids.max())}]')
        return dataclasses.replace(cond, class_ids=ids)

    def rollout_axes(self, k: int) -> Tensor:
        """``action_pos [N K, 2]`` of ``k`` transitions per token."""
        return self.token_pos.repeat_interleave(k, dim=0)

    # ---- the AR latents ------------------------------------------------------------------------
    def class_embedding(self, cond: Conditions) -> Tensor:
        """``[B, C]`` class embeddings of encoded conditions (``class_emb(class_ids)``)."""
        return self.mar.class_embedding(cond.class_ids)

    def null_class_embedding(self, batch: int) -> Tensor:
        """``[batch, C]`` the unconditional (CFG) embedding: the learned ``fake_latent``."""
        return self.mar.null_embedding(batch)

    def latents(self, tokens: Tensor, mask: Tensor, class_emb: Tensor) -> Tensor:
        """``z [B, N, latent_dim]`` of every position from the visible ``tokens [B, N, D]``
        (``mask [B, N]`` True = still masked, the same count per row) and ``class_emb [B, C]``
        (no dropout)."""
        return self.mar(tokens, mask, class_emb)

    # ---- latents <-> images ------------------------------------------------------------------
    def patchify(self, latents: Tensor) -> Tensor:
        """Official ``patchify``: ``[B, C, H, W] -> [B, N, C p^2]``."""
        b, c, h, w = latents.shape
        p = self.cfg.patch_size
        x = latents.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum('nchpwq->nhwcpq', x).reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """Official ``unpatchify``: ``[B, N, D] -> [B, C, H, W]``."""
        b, p, c, h = tokens.shape[0], self.cfg.patch_size, self.cfg.vae_embed_dim, self.cfg.seq_h
        x = tokens.reshape(b, h, h, c, p, p)
        return torch.einsum('nhwcpq->nchpwq', x).reshape(b, c, h * p, h * p)

    @torch.no_grad()
    def encode_images(self, images: Tensor, *, sample: bool = False) -> Tensor:
        """Tokens ``[B, N, D]`` (scaled latents) of images in [0, 1] (pretraining)."""
        return self.patchify(self.vae.encode_latents(images.to(self.device), sample=sample))

    @torch.no_grad()
    def decode_tokens(self, tokens: Tensor, *, chunk: Optional[int] = None) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] of tokens ``[B, N, D]``, ``chunk`` at a time
        (default :func:`~vargo.components.modules.conv_layout.decode_chunk_size`)."""
        return decode_in_chunks(self.vae.decode_latents, self.unpatchify(tokens.to(self.device)),
                                chunk or decode_chunk_size(self.image_size))

    @torch.no_grad()
    def decode(self, rollout: Rollout, *, chunk: Optional[int] = None) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] of the rollout's final tokens."""
        return self.decode_tokens(rollout.extras.tokens, chunk=chunk)

    # ---- the head's transition ---------------------------------------------------------------
    def head_transition(self, x: Tensor, t: Tensor, z: Tensor,
                        sched: Union[DiffusionSchedule, FlowSDESchedule], *,
                        z_uncond: Optional[Tensor] = None, cfg: Union[float, Tensor] = 1.0
                        ) -> dict[str, Tensor]:
        """``p(x_{t-1} | x_t, z)`` of the head (official ``p_mean_variance`` on ``net`` or
        ``net.forward_with_cfg``; for a flow head the SDE step of :class:`FlowSDESchedule`).

        Args:
            x: ``[n, D]`` states ``x_t``; t: ``[n]`` long respaced steps; z: ``[n, C]``.
            sched: :meth:`schedule`'s chain (DDPM or flow SDE).
            z_uncond: ``[n, C]`` unconditional latents for CFG (None: no guidance).
            cfg: guidance weight ``w`` (float or ``[n, 1]``): ``eps = eps_u + w (eps_c -
                eps_u)`` (flow: the velocity); the DDPM variance comes from the conditional half.

        Returns:
            ``mean``, ``log_variance``, ``pred_xstart`` (``[n, D]``), and with CFG also
            ``mean_cond`` (the mean from the conditional eps alone, for ``logprob_cfg='none'``).
        """
        net, d = self.mar.head, x.shape[-1]
        tt = sched.head_time(t, x.device)
        if z_uncond is None:
            return sched.p_mean_variance(net(x, tt, z), x, t)
        n = x.shape[0]
        out = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([z, z_uncond]))
        eps_c, eps_u = out[:n, :d], out[n:, :d]
        guided = torch.cat([eps_u + cfg * (eps_c - eps_u), out[:n, d:]], dim=1)
        res = sched.p_mean_variance(guided, x, t)
        res['mean_cond'] = sched.p_mean_variance(out[:n], x, t)['mean']
        return res

    # ---- the Policy interface -------------------------------------------------------------------
    def evaluate(self, rollout: Rollout, *, spec: LogprobSpec, with_entropy: bool = True,
                 select: Optional[MARSelection] = None) -> PolicyEval:
        """Teacher-forced log-probs ``[B, A]`` of the selected (AR step, diffusion step) pairs.

        For each selected AR step ``i`` the transformer runs once (batch ``B``, or ``2B`` with
        CFG under ``spec.mode='rollout'``) on the rollout's committed tokens with the mask of
        step ``i`` (``commit_step >= i``), giving ``z_i`` *with gradients*; the head then
        evaluates the selected transitions ``k`` of the tokens committed at ``i``:
        ``log N(x_{t-1}; mu_theta(x_t, t, z_i), (s_t tau)^2)`` (:func:`gaussian_transition_logp`;
        ``tau = spec.temperature``; ``s_t`` recomputed or the rollout's, :attr:`logprob_sigma`).
        ``spec.mode='none'``: conditional mean; ``'rollout'``: the guided mean of the sampling
        distribution (weight of step ``i`` from :func:`cfg_scales` with the rollout's schedule),
        variance from the conditional half.

        A rollout with ``S = extras.mte_chains`` extra chains per token (MAR-GRPO's MTE,
        ``MaskedSampler(mte_chains=S)``; ``A = (1 + S) N K``, chain-major, layout in
        :class:`MARExtras`) is evaluated in the same pass: ``z_i`` is computed once per AR step
        and the head runs on the selected transitions of all ``1 + S`` chains of the tokens
        committed at ``i`` (the same (AR step, diffusion step) subset for every chain); with
        ``extras.mte_tokens`` only those tokens' extra chains (the rollout's chain of every
        token).

        A rollout with refinement chains (``MaskedSampler(refinement=True)``: the chains a
        selected step ``i`` ran for the tokens still masked after it, after the chain blocks on
        the action axis) has them scored in the same pass under the same ``z_i``, on the same
        diffusion steps: MAR-GRPO's official loss of step ``i`` covers every token masked when
        the step starts.

        Args:
            rollout: a :class:`MaskedSampler` rollout (or a minibatch of one).
            spec: the sampler's :class:`LogprobSpec`.
            with_entropy: also return the Gaussian entropy of each evaluated transition,
                ``sum_d (log s + (1 + log 2 pi) / 2)``.
            select: the pairs to evaluate; None: ``rollout.extras.selection``, else all.

        Returns:
            :class:`PolicyEval` with ``logp [B, A]`` (actions outside the selection carry the
            detached ``logp_old``: ratio 1, no gradient) and ``extras``: ``'evaluated' [B, A]``
            bool (multiply loss weights by it), ``'mean' [B, A, D]`` the Gaussian means (zero
            outside the selection; MAR-GRPO's KL on means).
        """
        ex: MARExtras = rollout.extras
        if not isinstance(ex, MARExtras):
            raise TypeError(f'MARPolicy.evaluate needs a MAR rollout (extras MARExtras), got '
                            f'{type(ex).__name__}')
        if spec.cfg_interval is not None:
            raise ValueError(f'cfg_interval={spec.cfg_interval} is not a MAR setting; MAR guides '
                             f'with cfg_schedule (linear / constant): use cfg_interval=None')
        select = select if select is not None else ex.selection
        sched = self.schedule(ex.num_sampling_steps, head_sampler=ex.head_sampler,
                              sde_noise_level=ex.sde_noise_level)
        kk, nc = ex.num_transitions, ex.num_chains
        cond = self.encode_conditions(rollout.cond)
        dev = self.device
        b, n, d = ex.tokens.shape
        tokens = ex.tokens.to(dev)
        commit = ex.commit_step.to(dev)

        a_main, nr = ex.num_chain_actions, ex.num_refinements

        def per_token(x: Tensor) -> Tensor:         # [B, nc N K, ...] -> [B, N, nc, K, ...]
            return x[:, :a_main].to(dev).view(b, nc, n, kk, *x.shape[2:]).transpose(1, 2)

        def per_chain(x: Tensor) -> Tensor:         # [B, .. + R K, ...] -> [B, R, K, ...]
            return x[:, a_main:].to(dev).view(b, nr, kk, *x.shape[2:])

        x_t = per_token(ex.x_t)
        x_prev = per_token(rollout.actions)
        r_xt, r_xp = per_chain(ex.x_t), per_chain(rollout.actions)
        r_tok = None if ex.refine_tokens is None else ex.refine_tokens.to(dev)
        r_step = ex.refine_step_of().to(dev) if nr else torch.zeros(0, dtype=torch.long)
        chains = torch.ones(b, n, nc, dtype=torch.bool, device=dev)      # chains to evaluate
        if nc > 1 and ex.mte_tokens is not None:
            chains[:, :, 1:] = ex.mte_tokens.to(dev).unsqueeze(-1)
        ar_steps = range(ex.num_iter) if select is None else [int(i) for i in select.ar_steps]
        ks = (torch.arange(kk, device=dev) if select is None
              else torch.as_tensor(list(select.diffusion_steps), dtype=torch.long, device=dev))
        if ks.numel() and (int(ks.min()) < 0 or int(ks.max()) >= kk):
            raise ValueError(f'diffusion_steps {ks.tolist()} must be in [0, {kk}) (K = '
                             f'num_sampling_steps - 1 transitions per token)')
        use_cfg = spec.uses_cfg
        weights = cfg_scales(spec.cfg_scale, ex.cfg_schedule, n, ex.num_iter) if use_cfg else None
        logp = per_token(rollout.logp_old.detach())
        r_logp = per_chain(rollout.logp_old.detach())
        stored_lv = r_lv = None
        if self.logprob_sigma == 'stored':
            if ex.log_variance is None:
                raise ValueError("logprob_sigma='stored' scores with the rollout's recorded "
                                 "variances but extras.log_variance is None: draw the rollout "
                                 "with MaskedSampler, or use logprob_sigma='recomputed'")
            stored_lv = per_token(ex.log_variance.detach())
            r_lv = per_chain(ex.log_variance.detach())
        mean_all = torch.zeros(b, n, nc, kk, d, device=dev)
        ent = torch.zeros(b, n, nc, kk, device=dev) if with_entropy else None
        evaluated = torch.zeros(b, n, nc, kk, dtype=torch.bool, device=dev)
        r_mean = torch.zeros(b, nr, kk, d, device=dev)
        r_ent = torch.zeros(b, nr, kk, device=dev) if with_entropy else None
        r_eval = torch.zeros(b, nr, kk, dtype=torch.bool, device=dev)
        for i in ar_steps:
            if not 0 <= i < ex.num_iter:
                raise ValueError(f'AR step {i} is not in [0, {ex.num_iter})')
            sel = commit == i                                                 # [B, N]
            n_i = int(sel[0].sum())
            r_idx = (r_step == i).nonzero(as_tuple=True)[0].to(dev)           # its refinements
            if (n_i == 0 and r_idx.numel() == 0) or ks.numel() == 0:
                continue
            mask = commit >= i
            emb = self.class_embedding(cond)
            if use_cfg:
                z = self.latents(torch.cat([tokens, tokens]), torch.cat([mask, mask]),
                                 torch.cat([emb, self.null_class_embedding(b)]))
                z_full, zu_full = z[:b], z[b:]                                # [B, N, C]
            else:
                z_full, zu_full = self.latents(tokens, mask, emb), None
            zc = z_full[sel]                                                  # [B n_i, C]
            zu = None if zu_full is None else zu_full[sel]
            nk = ks.numel()
            # rows (token, chain, transition) of the tokens committed at i, chain-masked
            rows = chains[sel].unsqueeze(-1).expand(-1, nc, nk)           # [B n_i, nc, nk]
            xs = x_t[sel][:, :, ks][rows]                                 # [M, D]
            xp = x_prev[sel][:, :, ks][rows]
            t = (kk - ks).expand(b * n_i, nc, nk)[rows]
            # one z per token, shared by its chains
            zc = zc.view(-1, 1, 1, zc.shape[-1]).expand(-1, nc, nk, -1)[rows]
            zu = None if zu is None else zu.view(-1, 1, 1, zu.shape[-1]).expand(
                -1, nc, nk, -1)[rows]
            lv_rows = None if stored_lv is None else stored_lv[sel][:, :, ks][rows]
            m_main = xs.shape[0]
            if r_idx.numel():       # the step's refinement chains join the same head batch
                r_sel = r_tok[:, r_idx]                                       # [B, r_i]
                r_rows = r_sel.numel() * nk

                def gather_z(zz: Tensor) -> Tensor:
                    zr = zz.gather(1, r_sel.unsqueeze(-1).expand(-1, -1, zz.shape[-1]))
                    return zr.unsqueeze(2).expand(-1, -1, nk, -1).reshape(r_rows, -1)

                xs = torch.cat([xs, r_xt[:, r_idx][:, :, ks].reshape(r_rows, d)])
                xp = torch.cat([xp, r_xp[:, r_idx][:, :, ks].reshape(r_rows, d)])
                t = torch.cat([t, (kk - ks).repeat(r_sel.numel())])
                zc = torch.cat([zc, gather_z(z_full)])
                zu = None if zu is None else torch.cat([zu, gather_z(zu_full)])
                if lv_rows is not None:
                    lv_rows = torch.cat([lv_rows, r_lv[:, r_idx][:, :, ks].reshape(r_rows, d)])
            out = self.head_transition(xs, t, zc, sched, z_uncond=zu,
                                       cfg=weights[i] if use_cfg else 1.0)
            mu_all = out['mean']
            # 'stored' (official MAR-GRPO): the sampler's std_dev_t, no gradient via the variance
            lv_all = out['log_variance'] if lv_rows is None else lv_rows
            lp_all = gaussian_transition_logp(xp, mu_all, lv_all, spec.temperature)
            if r_idx.numel():
                shape = (b, r_idx.numel(), nk)
                rb = torch.arange(b, device=dev).view(b, 1, 1).expand(shape)
                rr = r_idx.view(1, -1, 1).expand(shape)
                rk = ks.view(1, 1, -1).expand(shape)
                r_logp = r_logp.index_put((rb, rr, rk), lp_all[m_main:].view(shape))
                r_mean = r_mean.index_put((rb, rr, rk), mu_all[m_main:].view(*shape, d))
                r_eval[rb, rr, rk] = True
                if r_ent is not None:
                    log_s = 0.5 * lv_all[m_main:] + math.log(spec.temperature)
                    r_ent = r_ent.index_put(
                        (rb, rr, rk), (log_s + 0.5 * (1 + math.log(2 * math.pi))).sum(-1)
                        .view(shape))
            mu, lv, lp = mu_all[:m_main], lv_all[:m_main], lp_all[:m_main]
            if m_main == 0:
                continue
            bi, ji = sel.nonzero(as_tuple=True)
            bi = bi.view(-1, 1, 1).expand(-1, nc, nk)[rows]
            ji = ji.view(-1, 1, 1).expand(-1, nc, nk)[rows]
            ci = torch.arange(nc, device=dev).view(1, -1, 1).expand(b * n_i, nc, nk)[rows]
            ki = ks.expand(b * n_i, nc, nk)[rows]
            logp = logp.index_put((bi, ji, ci, ki), lp)
            mean_all = mean_all.index_put((bi, ji, ci, ki), mu)
            evaluated[bi, ji, ci, ki] = True
            if ent is not None:
                log_s = 0.5 * lv + math.log(spec.temperature)
                ent = ent.index_put((bi, ji, ci, ki),
                                    (log_s + 0.5 * (1 + math.log(2 * math.pi))).sum(-1))

        def action_axis(x: Tensor, r: Tensor) -> Tensor:   # + [B, R, K, ...] -> [B, A, ...]
            main = x.transpose(1, 2).reshape(b, nc * n * kk, *x.shape[4:])
            return torch.cat([main, r.reshape(b, nr * kk, *r.shape[3:])], 1) if nr else main

        return PolicyEval(logp=action_axis(logp, r_logp),
                          entropy=None if ent is None else action_axis(ent, r_ent),
                          extras={'evaluated': action_axis(evaluated, r_eval),
                                  'mean': action_axis(mean_all, r_mean)})

    def flops_per_sample(self, spec: Optional[LogprobSpec] = None,
                         rollout: Optional[Rollout] = None, *, num_iter: int = 64,
                         num_sampling_steps: int = 100) -> int:
        """Matmul FLOPs of one :meth:`evaluate` forward per sample (2 per multiply-add; backward
        is twice this), for the (AR step, transition) pairs it evaluates: the rollout's
        ``extras.selection`` (all pairs when None; the schedule from ``rollout.extras``, else
        ``num_iter`` / ``num_sampling_steps``).

        Per evaluated AR step ``i`` (``n_i`` tokens committed, ``v_i = N - rem_i`` visible):

        * encoder: ``z_proj`` ``2 N D C``; per block on ``L = buf + v_i`` rows ``6 L C^2``
          (qkv) + ``2 L C^2`` (proj) + ``4 L C h`` (MLP, ``h = mlp_ratio C``) + ``4 L^2 C``
          (attention); ``decoder_embed`` ``2 L C C_d``;
        * decoder: the same per block on ``buf + N`` rows at width ``C_d``;
        * head, per evaluated transition (``n_i k (1 + S)`` rows, ``S = extras.mte_chains``
          extra chains; ``S`` times the share of ``extras.mte_tokens`` when recorded; the share
          of sample 0, the same for all): time MLP ``2 (256 W + W^2)``, cond
          and input projections ``2 W (C_d + D)``, per res-block ``4 W^2 + 6 W^2``, final layer
          ``4 W^2 + 2 W out``.

        With ``spec.uses_cfg`` everything counts twice (the doubled batch).
        """
        cfg = self.cfg
        sel, nc = None, 1
        if rollout is not None:
            ex: MARExtras = rollout.extras
            num_iter, num_sampling_steps, sel = ex.num_iter, ex.num_sampling_steps, ex.selection
            nc = ex.num_chains
            if nc > 1 and ex.mte_tokens is not None:     # only these tokens' extra chains
                nc = 1 + ex.mte_chains * float(ex.mte_tokens[0].float().mean())
        n, d, buf = cfg.seq_len, cfg.token_dim, cfg.buffer_size
        c, cd, w = cfg.embed_dim, cfg.decoder_embed_dim, cfg.diffloss_w
        kk = int(num_sampling_steps) - 1
        nk = kk if sel is None else len(sel.diffusion_steps)
        steps = range(num_iter) if sel is None else sel.ar_steps
        rem, _ = mask_schedule(n, num_iter)

        def blocks(rows, width, depth):
            hid = int(width * cfg.mlp_ratio)
            return depth * (8 * rows * width * width + 4 * rows * width * hid
                            + 4 * rows * rows * width)

        head_row = (2 * (256 * w + w * w) + 2 * w * (cd + d) + cfg.diffloss_d * 10 * w * w
                    + 4 * w * w + 2 * w * cfg.head_out_channels)
        total = 0
        for i in steps:
            n_i = rem[i] - rem[i + 1]
            if n_i == 0 or nk == 0:
                continue
            enc_rows = buf + n - rem[i]
            total += (2 * n * d * c + blocks(enc_rows, c, cfg.depth) + 2 * enc_rows * c * cd
                      + blocks(buf + n, cd, cfg.decoder_depth) + int(n_i * nk * nc * head_row))
        return total * (2 if spec is not None and spec.uses_cfg else 1)

    # ---- pretraining ---------------------------------------------------------------------------
    def pretrain_loss(self, tokens: Tensor, cond: Conditions) -> Tensor:
        """Official ``MAR.forward`` loss on ``tokens [B, N, D]`` (scaled latents): random
        orders, a truncated-normal masking ratio (mode 1, std ``mask_ratio_std`` = 0.25,
        >= ``mask_ratio_min``),
        label dropout to ``fake_latent``, dropout in training mode, and the DiffLoss (eps MSE +
        the learned-variance VLB term, ``training_losses`` with ``LossType.MSE``) on the masked
        tokens, each repeated ``diffusion_batch_mul`` times with independent ``t`` and noise.
        A flow head (``head_type='flow'``) uses the flow-matching MSE instead
        (:meth:`_flow_loss`)."""
        cond = self.encode_conditions(cond)
        x = tokens.to(self.device)
        b, n, d = x.shape
        dev = x.device
        orders = torch.rand(b, n, device=dev).argsort(dim=1)
        num_masked = int(math.ceil(n * self.draw_mask_ratio()))
        mask = torch.zeros(b, n, dtype=torch.bool, device=dev)
        mask.scatter_(1, orders[:, :num_masked], True)
        drop = (torch.rand(b, device=dev) < self.label_drop_prob) if self.training else None
        emb = self.mar.class_embedding(cond.class_ids, null=drop)
        z = self.mar(x, mask, emb, dropout=True)
        m = self.diffusion_batch_mul
        target = x.reshape(b * n, d).repeat(m, 1)
        zz = z.reshape(b * n, -1).repeat(m, 1)
        w = mask.reshape(b * n).repeat(m).float()
        if self.head_type == 'flow':
            loss = self._flow_loss(target, zz)
        else:
            loss = self._diffusion_loss(target, zz)
        return (loss * w).sum() / w.sum()

    def draw_mask_ratio(self) -> float:
        """One masking ratio ``r = 1 + std * Phi^-1(u)``, ``u ~ U(Phi((min - 1) / std), 1/2)``:
        the normal of mode 1 and std ``mask_ratio_std`` truncated to ``[mask_ratio_min, 1]``
        (official ``stats.truncnorm((min - 1) / 0.25, 0, loc=1, scale=0.25)``), drawn from
        torch's global generator."""
        std = self.mask_ratio_std
        lo = torch.special.ndtr(torch.tensor((self.mask_ratio_min - 1.0) / std,
                                             dtype=torch.float64))
        u = lo + (0.5 - lo) * torch.rand((), dtype=torch.float64)
        return float(1.0 + std * torch.special.ndtri(u))

    def _flow_loss(self, x0: Tensor, z: Tensor) -> Tensor:
        """Flow-matching MSE of a velocity head: ``s ~ U(0, 1)``, ``x_s = (1 - s) x0 + s eps``,
        ``|net(x_s, 1000 s, z) - (eps - x0)|^2`` averaged over channels: ``[n]`` (the time
        convention of :class:`FlowSDESchedule`; uniform ``s``, no logit-normal shift)."""
        s = torch.rand(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        x_s = (1 - s).unsqueeze(-1) * x0 + s.unsqueeze(-1) * noise
        v = self.mar.head(x_s, 1000.0 * s, z)
        return ((v - (noise - x0)) ** 2).mean(-1)

    def _diffusion_loss(self, x0: Tensor, z: Tensor) -> Tensor:
        """Official ``training_losses`` (1000-step cosine, MSE + VLB with frozen mean): ``[n]``."""
        sched = self.schedule(1000)
        dev = x0.device
        t = torch.randint(0, sched.num_timesteps, (x0.shape[0],), device=dev)
        noise = torch.randn_like(x0)

        def ex(name):
            return sched.coef(name, dev)[t].unsqueeze(-1)

        x_t = ex('sqrt_alphas_cumprod') * x0 + ex('sqrt_one_minus_alphas_cumprod') * noise
        out = self.mar.head(x_t, t, z)
        d = x0.shape[-1]
        eps, v = out[:, :d], out[:, d:]
        frozen = torch.cat([eps.detach(), v], dim=1)
        p = sched.p_mean_variance(frozen, x_t, t)
        true_mean = ex('posterior_mean_coef1') * x0 + ex('posterior_mean_coef2') * x_t
        true_logvar = ex('posterior_log_variance_clipped')
        kl = 0.5 * (-1.0 + p['log_variance'] - true_logvar
                    + torch.exp(true_logvar - p['log_variance'])
                    + (true_mean - p['mean']) ** 2 * torch.exp(-p['log_variance']))
        kl = kl.mean(-1) / math.log(2.0)
        nll = -discretized_gaussian_loglik(x0, p['mean'], 0.5 * p['log_variance']).mean(-1)
        vb = torch.where(t == 0, nll / math.log(2.0), kl)
        return ((noise - eps) ** 2).mean(-1) + vb
