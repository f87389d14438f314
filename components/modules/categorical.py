"""The categorical sampling distribution of discrete-token generators (no family owns it).

What a token sampler draws from and what the policy update scores, in one place so the two can
never disagree (docs/methods/grpo.md, "Which distribution is scored"):

* CFG mixing: :func:`cfg_mix` (``uncond + (cond - uncond) * w``) and the CFG interval
  (:func:`cfg_active_steps`);
* truncation: :func:`truncation_keep_mask` (LlamaGen's ``top_k_top_p_filtering``: top-p on the
  descending cumulative probability, shifted by one) and :func:`var_truncation_keep_mask` (VAR's
  ``sample_with_top_k_top_p_``: top-p on the ascending cumulative probability);
* :func:`categorical_logp_entropy`: the differentiable log-prob of the taken token and the entropy
  of the (mixed, tempered, truncated) distribution, chunked so no ``[N, V]`` float temporary
  outlives its chunk;
* :func:`inverse_cdf_sample`: a token from given uniforms (rank-invariant sampling noise).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ['cfg_active_steps', 'cfg_mix', 'truncation_keep_mask', 'var_truncation_keep_mask',
           'categorical_logp_entropy', 'inverse_cdf_sample', 'logp_entropy_under_spec']


def cfg_active_steps(cfg_interval: Optional[Sequence[float]], num_steps: int,
                     device: Optional[torch.device] = None) -> Tensor:
    """``[T]`` bool: which tokens are sampled with CFG.

    ``cfg_interval=(lo, hi)`` are fractions of the token sequence: token ``t`` is guided iff
    ``lo <= (t + 0.5) / T < hi``; None guides every token. The official integer
    ``--cfg-interval k`` (``generate.py``: tokens ``0 .. k + 1`` guided) is ``(0, (k + 2) / T)``.
    """
    if cfg_interval is None:
        return torch.ones(num_steps, dtype=torch.bool, device=device)
    lo, hi = cfg_interval
    centre = (torch.arange(num_steps, device=device, dtype=torch.float64) + 0.5) / num_steps
    return (centre >= lo) & (centre < hi)


def cfg_mix(cond: Tensor, uncond: Optional[Tensor], cfg_scale: float,
            rows: Optional[Tensor] = None) -> Tensor:
    """LlamaGen's CFG: ``uncond + (cond - uncond) * cfg_scale`` (``generate.py``); rows where
    ``rows`` ``[N]`` is False (outside the CFG interval) keep the conditional logits."""
    if uncond is None:
        return cond
    mixed = uncond + (cond - uncond) * cfg_scale
    if rows is not None:
        mixed = torch.where(rows[:, None], mixed, cond)
    return mixed


def top_k_keep_mask(z: Tensor, top_k: int) -> Optional[Tensor]:
    """bool ``[N, V]``: every logit >= the k-th largest of its row (ties kept), or None when
    ``top_k`` is off (0) or keeps the whole vocabulary. The top-k step of both truncation
    rules."""
    if not 0 < top_k < z.shape[-1]:
        return None
    kth = torch.topk(z, top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    return z >= kth


def truncation_keep_mask(z: Tensor, top_k: int, top_p: float) -> Optional[Tensor]:
    """bool ``[N, V]`` of the tokens top-k then top-p sampling keeps (None: no truncation).

    Same rule as the official ``top_k_top_p_filtering``: top-k keeps every logit >= the k-th
    largest; top-p (on the top-k-filtered logits) removes tokens whose cumulative probability in
    descending order exceeds ``top_p``, shifted by one so the token crossing the threshold is kept.
    ``z`` are the tempered (CFG-mixed) logits ``[N, V]``.
    """
    keep = top_k_keep_mask(z, top_k)
    if top_p < 1.0:
        zk = z if keep is None else z.masked_fill(~keep, float('-inf'))
        sorted_z, order = torch.sort(zk, dim=-1, descending=True)
        cum = sorted_z.softmax(dim=-1).cumsum_(dim=-1)
        remove_sorted = torch.zeros_like(cum, dtype=torch.bool)
        remove_sorted[:, 1:] = cum[:, :-1] > top_p
        remove = torch.empty_like(remove_sorted).scatter_(-1, order, remove_sorted)
        keep = ~remove if keep is None else keep & ~remove
    return keep


def _tempered(cond: Tensor, uncond: Optional[Tensor], cfg_scale: float, rows: Optional[Tensor],
              temperature: float) -> Tensor:
    """A fresh tensor ``cfg_mix(...) / temperature`` (never a view of the logits)."""
    if uncond is None:
        return cond / temperature
    return cfg_mix(cond, uncond, cfg_scale, rows).div_(temperature)


def _chunk_rows(v: int) -> int:
    return max(1, (1 << 20) // v)   # ~4 MB fp32 temporaries per chunk (fits L2)


class _CategoricalLogpEntropy(torch.autograd.Function):
    """Chunked log-prob of the taken action and entropy of the sampling distribution.

    Keeps only the logits (and the truncation mask) for backward; every ``[N, V]`` temporary is
    one chunk of rows. See :func:`categorical_logp_entropy`.
    """

    @staticmethod
    def forward(ctx, logits, actions, rows, cfg_scale, temperature, top_k, top_p, with_entropy,
                keep_fn):
        g, n, v = logits.shape
        cond, uncond = logits[0], (logits[1] if g == 2 else None)
        logp = logits.new_empty(n)
        ent = logits.new_empty(n) if with_entropy else None
        lse_all = logits.new_empty(n)
        truncated = top_k > 0 or top_p < 1.0
        keep_all = (torch.empty(n, v, dtype=torch.bool, device=logits.device)
                    if truncated and ctx.needs_input_grad[0] else None)
        step = _chunk_rows(v)
        for s in range(0, n, step):
            sl = slice(s, min(s + step, n))
            a = actions[sl, None]
            z = _tempered(cond[sl], None if uncond is None else uncond[sl], cfg_scale,
                          None if rows is None else rows[sl], temperature)
            keep = keep_fn(z, top_k, top_p) if truncated else None
            if keep is not None:
                keep.scatter_(1, a, True)   # the sampled token was in the kept set by construction
                if keep_all is not None:
                    keep_all[sl] = keep
                z.masked_fill_(~keep, float('-inf'))
            lse = torch.logsumexp(z, dim=-1)
            lse_all[sl] = lse
            logp[sl] = z.gather(1, a)[:, 0] - lse
            if with_entropy:
                lp = z.sub_(lse[:, None])                        # log p, -inf where removed
                p = lp.exp()
                if keep is not None:
                    lp.masked_fill_(~keep, 0.0)
                ent[sl] = -torch.linalg.vecdot(p, lp)
        ctx.cfg = (cfg_scale, temperature, g)
        ctx.save_for_backward(logits, actions, rows, lse_all, ent, keep_all)
        if not with_entropy:
            return logp
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent=None):
        logits, actions, rows, lse_all, ent, keep_all = ctx.saved_tensors
        cfg_scale, temperature, g = ctx.cfg
        n, v = logits.shape[1:]
        cond, uncond = logits[0], (logits[1] if g == 2 else None)
        grad = torch.empty_like(logits)
        if grad_logp is None:
            grad_logp = logits.new_zeros(n)
        step = _chunk_rows(v)
        for s in range(0, n, step):
            sl = slice(s, min(s + step, n))
            a = actions[sl, None]
            lp = _tempered(cond[sl], None if uncond is None else uncond[sl], cfg_scale,
                           None if rows is None else rows[sl], temperature)
            keep = None if keep_all is None else keep_all[sl]
            if keep is not None:
                lp.masked_fill_(~keep, float('-inf'))
            lp.sub_(lse_all[sl, None])                            # log p
            p = lp.exp()
            gl = grad_logp[sl, None]
            if grad_ent is not None:
                # dH/dz = -p (log p + H);  dlogp_a/dz = onehot(a) - p
                if keep is not None:
                    lp.masked_fill_(~keep, 0.0)
                t = lp.add_(ent[sl, None]).mul_(grad_ent[sl, None]).add_(gl).mul_(p).neg_()
            else:
                t = p.mul_(gl).neg_()
            t.scatter_add_(1, a, gl)
            t.div_(temperature)
            if uncond is None:
                grad[0, sl] = t
            elif rows is None:
                torch.mul(t, cfg_scale, out=grad[0, sl])
                torch.mul(t, 1.0 - cfg_scale, out=grad[1, sl])
            else:
                r = rows[sl, None]
                grad[0, sl] = torch.where(r, t * cfg_scale, t)
                grad[1, sl] = torch.where(r, t * (1.0 - cfg_scale), 0.0)
        return grad, None, None, None, None, None, None, None, None


def categorical_logp_entropy(logits: Tensor, actions: Tensor, *, cfg_scale: float = 1.0,
                             rows: Optional[Tensor] = None, temperature: float = 1.0,
                             top_k: int = 0, top_p: float = 1.0, with_entropy: bool = True,
                             keep_fn=None
                             ) -> tuple[Tensor, Optional[Tensor]]:
    """Log-prob of ``actions`` and entropy under the (CFG-mixed, tempered, truncated)
    categorical distribution built from ``logits``, differentiable, memory-lean.

    The distribution is the sampler's: ``z = cfg_mix(cond, uncond, cfg_scale, rows) /
    temperature``, then the top-k / top-p kept set (:func:`truncation_keep_mask`) renormalised.
    ``entropy = -sum_kept p log p``. Only ``logits`` (and the kept mask, bool) are saved for
    backward; the softmax is recomputed chunk by chunk, so no other ``[N, V]`` float tensor exists
    beyond the gradient itself. The truncation set is a constant of the gradient (piecewise).

    Args:
        logits: ``[1, N, V]`` (conditional) or ``[2, N, V]`` (conditional, unconditional) fp32.
        actions: ``[N]`` long token ids.
        cfg_scale: CFG scale (used when ``logits`` has the unconditional half).
        rows: ``[N]`` bool, rows sampled with CFG (the CFG interval), or None for all.
        temperature, top_k, top_p: the sampling settings.
        with_entropy: also return the entropy.
        keep_fn: the truncation rule ``keep_fn(z, top_k, top_p) -> bool [N, V] or None``
            (default :func:`truncation_keep_mask`, LlamaGen's; VAR passes its own).

    Returns:
        ``(logp [N], entropy [N] or None)``.
    """
    if logits.dim() != 3 or logits.shape[0] not in (1, 2):
        raise ValueError(f'logits must be [1 or 2, N, V], got {tuple(logits.shape)}')
    out = _CategoricalLogpEntropy.apply(logits, actions, rows, float(cfg_scale),
                                        float(temperature), int(top_k), float(top_p),
                                        bool(with_entropy), keep_fn or truncation_keep_mask)
    return (out[0], out[1]) if with_entropy else (out, None)


def var_truncation_keep_mask(z: Tensor, top_k: int, top_p: float) -> Optional[Tensor]:
    """bool ``[N, V]`` of the tokens VAR's ``sample_with_top_k_top_p_`` keeps (None: all).

    top-k keeps every logit >= the k-th largest; top-p (on the top-k-filtered logits) sorts
    ascending and removes the tokens whose ascending cumulative probability is ``<= 1 - top_p``,
    never the most likely one. vargo's ``top_p = 1`` (and the official ``top_p = 0``) is off.
    """
    keep = top_k_keep_mask(z, top_k)
    if 0 < top_p < 1.0:
        zk = z if keep is None else z.masked_fill(~keep, float('-inf'))
        sorted_z, order = zk.sort(dim=-1, descending=False)
        remove_sorted = sorted_z.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        keep = ~remove if keep is None else keep & ~remove
    return keep


def inverse_cdf_sample(probs: Tensor, u: Tensor) -> Tensor:
    """Token ``[B, 1]`` whose CDF interval holds ``u * total``; never a zero-probability token
    (the target is kept strictly below the total mass; ``right=True`` skips empty intervals)."""
    cdf = probs.cumsum(dim=-1)                                                   # [B, V]
    total = cdf[:, -1:]
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)


def logp_entropy_under_spec(logits: Tensor, tokens: Tensor, spec, *, with_entropy: bool
                            ) -> tuple[Tensor, Optional[Tensor]]:
    """Log-probs and entropies ``[B, T]`` of raster ``tokens [B, T]`` under a
    :class:`~vargo.core.types.LogprobSpec`, from teacher-forced ``logits [g, B T, V]`` (``g = 2``
    with CFG: conditional rows first).

    The spec's CFG interval selects the guided rows; truncation (top-k / top-p) applies only in
    ``'rollout'`` mode, where the recorded distribution is exactly the sampled one.
    """
    b, t = tokens.shape
    rows = None
    if logits.shape[0] == 2 and spec.cfg_interval is not None:
        rows = cfg_active_steps(spec.cfg_interval, t, logits.device).repeat(b)
    truncate = spec.mode == 'rollout'
    logp, ent = categorical_logp_entropy(
        logits, tokens.reshape(-1), cfg_scale=spec.cfg_scale, rows=rows,
        temperature=spec.temperature, top_k=spec.top_k if truncate else 0,
        top_p=spec.top_p if truncate else 1.0, with_entropy=with_entropy)
    return logp.view(b, t), None if ent is None else ent.view(b, t)
