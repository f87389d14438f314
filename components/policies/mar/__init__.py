"""MAR: masked autoregressive generation of continuous tokens with a diffusion head (LTH14/mar).

The generative process (official ``MAR.sample_tokens`` + ``DiffLoss.sample`` +
``GaussianDiffusion.p_sample_loop``; the sampler is
:class:`~vargo.components.samplers.masked.MaskedSampler`): a random order per sample; at AR step
``i`` the encoder sees the committed tokens, the decoder gives every position a latent
``z_i [N, C]``; the tokens the cosine schedule commits at step ``i`` are sampled by the diffusion
head's reverse chain conditioned on their ``z_i``. The head's chain is the DDPM ancestral sampler
of a 1000-step cosine schedule respaced to ``num_sampling_steps``, eps-prediction with the
*learned-range* variance (:class:`~vargo.components.modules.diffusion.DiffusionSchedule`; with
CFG ``eps = eps_u + w (eps_c - eps_u)`` on eps only, the variance from the conditional half, as
``forward_with_cfg``). A flow head (``head_type='flow'``, not an official release; NOVA-style)
predicts the velocity ``v = eps - x0`` and is sampled with Flow-GRPO's SDE step
(:class:`~vargo.components.modules.diffusion.FlowSDESchedule`,
``MaskedSampler(head_sampler='flow_sde')``); its transitions are actions exactly as the DDPM ones.

The package:

* :mod:`.model` -- :class:`MARConfig`, the transformer and the MLP-AdaLN head (official key
  names, sizes);
* :mod:`.loading` -- the official files and their strict loading;
* :mod:`.policy` -- :class:`MARPolicy` (the RL view: one head transition per action);
* the diffusion maths live in :mod:`vargo.components.modules.diffusion`, the mask schedule and
  the rollout record (:class:`MARExtras`) in :mod:`vargo.components.modules.masked`.

Deviations from the official code: no ``.cuda()`` calls; the sampler draws orders and noise from
a :class:`~vargo.core.rng.BatchRNG` (or, with ``rng=None``, numpy's and torch's global generators
in the official call order, which reproduces ``sample_tokens`` exactly); dropout only in
pretraining (:mod:`.policy`); see :mod:`.model` for the transformer's.

Parity with the official code (measured 2026-11 on CPU, fp32: the official classes of
LTH14/mar built at a tiny size (64 px, C=64, 2+2 blocks, buffer 4, head (2, 64) with
perturbed weights so AdaLN/outputs are non-zero), their state dicts loaded strictly here):

* the MAE encoder/decoder latent ``z`` for given tokens / mask / class: max |diff| 0.0;
* ``p_mean_variance`` (mean, log-variance, x0) for every respaced step, with and without CFG
  (``forward_with_cfg``): 0.0; respaced coefficients and ``timestep_map`` for 10 / 25 / 100 steps
  bit-equal to ``create_diffusion``;
* full ``sample_tokens`` vs :class:`MaskedSampler` with ``rng=None`` and the same numpy/torch
  seeds (5 AR steps, 10 head steps; cfg 1 / 3 linear, temperature 0.9 / 2 constant): latents
  max |diff| 0.0;
* meta-device ``mar_base/large/huge``: parameter counts and ``key:shape`` lists equal.
"""
from vargo.core.checkpoint import CheckpointKeyError

from ...modules.diffusion import (DiffusionSchedule, FlowSDESchedule, cosine_betas,
                                  gaussian_transition_logp, space_timesteps)
from ...modules.masked import MARExtras, MARSelection, cfg_scales, mask_schedule
from .loading import MAR_FILE_SOURCES, load_mar_file, load_mar_state_dict
from .model import (HEAD_SAMPLERS, HEAD_TYPES, MAR_ARCHS, MARConfig, MARTransformer,
                    SimpleMLPAdaLN)
from .policy import LOGPROB_SIGMAS, MARPolicy

__all__ = ['MAR_ARCHS', 'MAR_FILE_SOURCES', 'MARConfig', 'MARTransformer', 'SimpleMLPAdaLN',
           'DiffusionSchedule', 'FlowSDESchedule', 'HEAD_TYPES', 'HEAD_SAMPLERS',
           'space_timesteps', 'cosine_betas', 'gaussian_transition_logp', 'mask_schedule',
           'cfg_scales', 'MARExtras', 'MARSelection', 'MARPolicy', 'LOGPROB_SIGMAS',
           'load_mar_state_dict', 'load_mar_file', 'CheckpointKeyError']
