"""Gaussian-diffusion and flow-SDE maths of a per-token head (no family owns it).

The DDPM pieces follow ``diffusion/{gaussian_diffusion,respace}.py`` of LTH14/mar (itself
OpenAI's improved-diffusion code): the cosine beta schedule, ``space_timesteps`` respacing, the
respaced chain with the *learned-range* variance (``learn_sigma``), eps-prediction and no
clipping:

* ``eps, v = net(x_t, t, z).split(D)`` (with CFG ``eps`` is already guided);
* ``log s^2 = (v + 1) / 2 * log beta_t + (1 - (v + 1) / 2) * log beta~_t`` (``beta~`` the clipped
  posterior variance);
* ``x0^ = sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps``;
* ``mu = c1_t x0^ + c2_t x_t`` (posterior mean coefficients);
* ``x_{t-1} = mu + s * tau * n``, ``n ~ N(0, I)``, ``tau`` the temperature; at ``t = 0`` no noise.

:class:`FlowSDESchedule` is Flow-GRPO's SDE step for a velocity head, with the same interface
(``coef``, ``head_time``, ``p_mean_variance``), so a sampler drives either chain alike.
:func:`gaussian_transition_logp` is the log-density of one stochastic step (an RL action);
:func:`discretized_gaussian_loglik` the ``t = 0`` term of the official variational bound.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ['cosine_betas', 'space_timesteps', 'DiffusionSchedule', 'FlowSDESchedule',
           'gaussian_transition_logp', 'discretized_gaussian_loglik']


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Official ``get_named_beta_schedule('cosine')`` (``betas_for_alpha_bar``), float64:
    ``beta_i = min(1 - abar((i + 1) / T) / abar(i / T), 0.999)``,
    ``abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2``."""
    def abar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta)
                     for i in range(num_steps)])


def space_timesteps(num_timesteps: int, section_counts: Union[int, str, Sequence[int]]) -> set:
    """Official ``space_timesteps``: the retained steps of ``num_timesteps`` when each of
    ``len(section_counts)`` equal portions is strided to its count (``'100'`` -> 100 steps with
    stride ``999 / 99`` rounded half-to-even, exactly as the official float loop); ``'ddimN'``
    uses a fixed integer stride."""
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        if section_counts.startswith('ddim'):
            want = int(section_counts[len('ddim'):])
            for i in range(1, num_timesteps):
                if len(range(0, num_timesteps, i)) == want:
                    return set(range(0, num_timesteps, i))
            raise ValueError(f'cannot create exactly {want} steps of {num_timesteps} with an '
                             f'integer stride')
        section_counts = [int(x) for x in section_counts.split(',')]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f'cannot divide a section of {size} steps into {count}')
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return set(steps)


class DiffusionSchedule:
    """The respaced DDPM of MAR's ``gen_diffusion`` (``create_diffusion(num_sampling_steps,
    'cosine')``: eps-prediction, learned-range variance, 1000 training steps).

    Coefficients are computed in float64 as ``GaussianDiffusion.__init__`` from the respaced
    betas ``1 - abar_i / abar_prev`` of the retained steps and used as float32 (the official
    ``_extract_into_tensor``). Index ``t`` (0 .. T-1) is a respaced step; ``timestep_map[t]`` is
    the original step the network sees.

    We compute from the betas ourselves rather than with diffusers' ``DDPMScheduler``: its
    ``set_timesteps`` spacing ("leading"/"trailing"/"linspace") differs from ``space_timesteps``'s
    rounded fractional stride, it has no learned-range variance, and it keeps ``float32``
    ``alphas_cumprod``, so its coefficients differ from the official ones.

    Args:
        num_sampling_steps: respacing (int, or the official string, e.g. ``'100'``).
        num_train_steps: original steps (1000).
    """

    #: the head sampler this schedule implements (``MaskedSampler(head_sampler=...)``)
    head_sampler = 'ddpm'

    def __init__(self, num_sampling_steps: Union[int, str], *, num_train_steps: int = 1000):
        base = cosine_betas(num_train_steps)
        use = space_timesteps(num_train_steps, num_sampling_steps)
        ac_base = np.cumprod(1.0 - base, axis=0)
        last, betas, tmap = 1.0, [], []
        for i, ac in enumerate(ac_base):
            if i in use:
                betas.append(1 - ac / last)
                last = ac
                tmap.append(i)
        betas = np.array(betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        post_logvar = (np.log(np.append(post_var[1], post_var[1:])) if len(post_var) > 1
                       else np.array([np.log(betas[0])]))
        f32 = {
            'betas': betas,
            'alphas_cumprod': ac,
            'sqrt_alphas_cumprod': np.sqrt(ac),
            'sqrt_one_minus_alphas_cumprod': np.sqrt(1.0 - ac),
            'sqrt_recip_alphas_cumprod': np.sqrt(1.0 / ac),
            'sqrt_recipm1_alphas_cumprod': np.sqrt(1.0 / ac - 1),
            'posterior_variance': post_var,
            'posterior_log_variance_clipped': post_logvar,
            'posterior_mean_coef1': betas * np.sqrt(ac_prev) / (1.0 - ac),
            'posterior_mean_coef2': (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            'log_betas': np.log(betas),
        }
        self._np = f32
        self.timestep_map = torch.tensor(tmap, dtype=torch.long)
        self._cache: dict = {}

    def coef(self, name: str, device) -> Tensor:
        """``[T]`` float32 coefficient ``name`` on ``device`` (cached)."""
        key = (name, str(device))
        if key not in self._cache:
            self._cache[key] = torch.from_numpy(self._np[name]).to(device).float()
        return self._cache[key]

    def head_time(self, t: Tensor, device) -> Tensor:
        """The timestep the head sees at respaced steps ``t``: ``timestep_map[t]`` (long)."""
        return self.timestep_map.to(device)[t]

    def p_mean_variance(self, model_out: Tensor, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Official ``p_mean_variance`` (LEARNED_RANGE, EPSILON, ``clip_denoised=False``).

        Args:
            model_out: ``[n, 2 D]`` head output (``eps`` then ``v``; with CFG, ``eps`` already
                guided, as ``forward_with_cfg`` returns it).
            x: ``[n, D]`` state ``x_t``.
            t: ``[n]`` long respaced steps.

        Returns:
            ``mean [n, D]`` (mu of ``p(x_{t-1} | x_t)``), ``log_variance [n, D]``,
            ``pred_xstart [n, D]``.
        """
        d = x.shape[-1]
        eps, v = model_out[..., :d], model_out[..., d:]
        dev = x.device

        def ex(name):
            return self.coef(name, dev)[t].unsqueeze(-1)

        frac = (v + 1) / 2
        log_var = frac * ex('log_betas') + (1 - frac) * ex('posterior_log_variance_clipped')
        x0 = ex('sqrt_recip_alphas_cumprod') * x - ex('sqrt_recipm1_alphas_cumprod') * eps
        mean = ex('posterior_mean_coef1') * x0 + ex('posterior_mean_coef2') * x
        return {'mean': mean, 'log_variance': log_var, 'pred_xstart': x0}


class FlowSDESchedule:
    r"""Flow-GRPO's SDE sampler (arXiv 2505.05470, ``sde_step_with_logprob`` of yifan123/flow_grpo)
    for a velocity head (MAR's ``head_type='flow'``), on a uniform time grid.

    Convention (rectified flow, as SD3 / Flow-GRPO): ``x_s = (1 - s) x0 + s eps``, ``s = 1`` pure
    noise, the head predicts ``v = dx_s / ds = eps - x0`` (MAR's ``pretrain_loss``: MSE
    to ``eps - x0`` at ``s ~ U(0, 1)``); CFG mixes the velocity, ``v = v_u + w (v_c - v_u)``.
    With ``T = num_sampling_steps``, respaced step ``t`` (``T - 1`` first, 0 last, as the DDPM
    chain) goes from ``s = (t + 1) / T`` to ``s' = t / T``, ``dt = s' - s = -1 / T``; the head
    sees the time ``1000 s``. For ``t >= 1`` the step is Gaussian (an action):

    .. math::

        \sigma_t = a \sqrt{s / (1 - \min(s, 1 - 1/T))}, \qquad
        \mu = x (1 + \frac{\sigma_t^2}{2 s} dt) + v (1 + \frac{\sigma_t^2 (1 - s)}{2 s}) dt,
        \qquad x_{s'} = \mu + \sigma_t \sqrt{-dt}\, \tau\, n

    (``a`` = ``noise_level``, Flow-GRPO's 0.7; ``s = 1`` takes the next grid point ``1 - 1/T``
    in the denominator as Flow-GRPO's ``sigma_max``; ``tau`` the temperature; ``n ~ N(0, I)``).
    Equivalently ``mu = x + [v + sigma_t^2 / (2 s) (x + (1 - s) v)] dt``: the Euler step plus
    the score correction that keeps the marginals of the ODE. The last step (``t = 0``, ``s =
    1 / T -> 0``) is the deterministic Euler step ``x0 = x - s v`` (not an action; Flow-GRPO
    also noises its last step, we keep it deterministic as the DDPM chain, so both heads have
    ``K = T - 1`` actions per token). Coefficients are computed in float64, used as float32.

    Args:
        num_sampling_steps: T (>= 2).
        noise_level: ``a`` (> 0).
    """

    head_sampler = 'flow_sde'

    def __init__(self, num_sampling_steps: int, noise_level: float = 0.7):
        big_t = int(num_sampling_steps)
        if big_t < 2:
            raise ValueError(f'num_sampling_steps={num_sampling_steps} must be >= 2')
        if not noise_level > 0:
            raise ValueError(f'sde_noise_level={noise_level} must be > 0 (Flow-GRPO uses 0.7)')
        self.num_timesteps, self.noise_level = big_t, float(noise_level)
        s = (np.arange(big_t, dtype=np.float64) + 1) / big_t             # time at respaced t
        dt = -1.0 / big_t
        sigma = self.noise_level * np.sqrt(s / (1 - np.minimum(s, 1 - 1.0 / big_t)))
        c_x = 1 + sigma ** 2 / (2 * s) * dt
        c_v = (1 + sigma ** 2 * (1 - s) / (2 * s)) * dt
        c_x[0], c_v[0] = 1.0, -s[0]                                       # t = 0: Euler to 0
        self._np = {'time': s, 'sigma': sigma, 'std': sigma * math.sqrt(-dt), 'coef_x': c_x,
                    'coef_v': c_v, 'log_variance': np.log(sigma ** 2 * -dt)}
        self._cache: dict = {}

    coef = DiffusionSchedule.coef

    def head_time(self, t: Tensor, device) -> Tensor:
        """The time the head sees at respaced steps ``t``: ``1000 s`` (float)."""
        return 1000.0 * self.coef('time', device)[t]

    def p_mean_variance(self, model_out: Tensor, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The SDE step of respaced steps ``t [n]`` from ``x [n, D]`` given the (guided)
        velocity ``model_out [n, D]``: ``mean`` (``mu``; at ``t = 0`` the Euler step),
        ``log_variance`` (``log(sigma_t^2 (-dt))``, before the temperature), ``pred_xstart``
        (``x - s v``)."""
        dev = x.device

        def ex(name):
            return self.coef(name, dev)[t].unsqueeze(-1)

        v = model_out[..., :x.shape[-1]]
        return {'mean': ex('coef_x') * x + ex('coef_v') * v,
                'log_variance': ex('log_variance').expand_as(x),
                'pred_xstart': x - ex('time') * v}


def gaussian_transition_logp(x_prev: Tensor, mean: Tensor, log_variance: Tensor,
                             temperature: float = 1.0) -> Tensor:
    """``log N(x_prev; mean, (exp(log_variance / 2) tau)^2 I)`` summed over the last dim.

    The density of the official ``p_sample`` step ``x_{t-1} = mean + exp(0.5 logvar) n tau``:
    ``sum_d [-(x - mu)^2 / (2 s^2) - log s - log(2 pi) / 2]`` with ``log s = logvar / 2 + log tau``.
    Shapes: ``[..., D] -> [...]``.
    """
    log_s = 0.5 * log_variance + math.log(temperature)
    z = (x_prev - mean) * torch.exp(-log_s)
    return (-0.5 * z * z - log_s - 0.5 * math.log(2 * math.pi)).sum(-1)



def discretized_gaussian_loglik(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Official ``discretized_gaussian_log_likelihood`` (bins of 2/255 on [-1, 1])."""
    def cdf(v):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    c = x - means
    inv = torch.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv * (c + 1.0 / 255.0)), cdf(inv * (c - 1.0 / 255.0))
    log_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_one_minus, log_delta))
