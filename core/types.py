"""The batches that flow between vargo's components.

Design of the action axis
-------------------------
Every family of generator is reduced to one common currency: a rollout of ``B`` samples
(``B = conditions x G``) exposes ``A`` *actions* per sample. Everything the objective and the
paper mechanisms need is a tensor on that axis:

=================  ==================  ==================================================
family             one action          ``action_step`` / ``action_pos``
=================  ==================  ==================================================
raster AR          one token           token index ``t`` / ``(row, col)``
(LlamaGen, VQGAN)  ``actions [B, A]``  ``[A]`` / ``[A, 2]``
next-scale VAR     one token of a      scale index ``s`` / ``(scale, row, col)``
                   scale               ``[A]`` / ``[A, 3]`` (680 actions for 256 px)
masked AR + head   one diffusion       AR iteration that committed the token, per sample
(MAR)              transition of one   (random orders): ``[B, A]`` / ``(row, col)``; the
                   token, ``[B, A, D]`` diffusion step lives in ``extras``
=================  ==================  ==================================================

``action_step`` and ``action_pos`` are shared across the batch (``[A]``, ``[A, k]``) when the
generation order is fixed, or per sample (``[B, A]``, ``[B, A, k]``) when it is not (MAR's random
orders); :meth:`Rollout.steps` always returns the ``[B, A]`` view. Log-probabilities are per action
(``logp_old [B, A]``): a categorical log-prob for discrete families, a Gaussian log-density
summed over the token's channels for continuous ones. Per-step rewards (VAR-RL's VMR), per-scale
weights (PANW), region masks (MP) and token selections (STAGE, MAR-GRPO) are ``[B, A]`` tensors on
the same axis, so the objective never knows which family it is optimising.

Partial rollouts: ``prefix_steps > 0`` marks a rollout whose actions with
``steps() < prefix_steps`` were *given* (copied from an earlier rollout) rather than sampled; the
sampler leaves them out of ``action_mask`` so no loss term touches them, and keeps their
``logp_old`` (recomputed teacher-forced) so a later update may still select them. A sampler
continues such a rollout with ``sampler.rollout(policy, cond, group_size=K, prefix=rollout,
stop_at_step=...)``.

Family-specific state (VAR per-scale ids, MAR latents per AR step, diffusion chain states,
commit steps, t=0 predictions, KV handles for completions) lives in a typed :class:`FamilyExtras`
subclass; its batch-major tensor fields are declared in ``batch_fields`` so minibatching and
gathering never need to know the family.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from .context import IterationContext, RewardContext

__all__ = [
    'Conditions', 'FamilyExtras', 'Rollout', 'PolicyEval', 'RewardOutput', 'Advantages',
    'TokenWeights', 'RewardContext', 'IterationContext', 'LogprobSpec', 'index_batch',
]


def _index(value: Any, idx: Tensor) -> Any:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.index_select(0, idx.to(value.device))
    if isinstance(value, list):
        return [value[i] for i in idx.tolist()]
    if isinstance(value, tuple):
        return tuple(value[i] for i in idx.tolist())
    if dataclasses.is_dataclass(value) and hasattr(value, 'index'):
        return value.index(idx)
    raise TypeError(f'cannot index a batch field of type {type(value).__name__}')


def _to(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if dataclasses.is_dataclass(value) and hasattr(value, 'to'):
        return value.to(device)
    return value


def _cat(values: list[Any]) -> Any:
    first = values[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat(values, dim=0)
    if isinstance(first, list):
        return [v for vs in values for v in vs]
    if dataclasses.is_dataclass(first) and hasattr(first, 'cat'):
        return type(first).cat(values)
    raise TypeError(f'cannot concatenate batch fields of type {type(first).__name__}')


def index_batch(obj: Any, idx: Tensor, batch_fields: tuple[str, ...]) -> Any:
    """Return a copy of dataclass ``obj`` with the leading (batch) dim of ``batch_fields`` indexed."""
    changes = {name: _index(getattr(obj, name), idx) for name in batch_fields}
    return dataclasses.replace(obj, **changes)


@dataclass
class Conditions:
    """What a batch of samples is conditioned on, one row per sample.

    Attributes:
        class_ids: ``[B]`` long class labels (class-conditional models), or None.
        prompts: ``B`` caption strings (text-conditional models), or None.
        text_emb: ``[B, L, D]`` encoded captions (filled by the policy's text encoder), or None.
        text_mask: ``[B, L]`` bool, True on real (non-padding) text tokens, or None.
    """

    class_ids: Optional[Tensor] = None
    prompts: Optional[list[str]] = None
    text_emb: Optional[Tensor] = None
    text_mask: Optional[Tensor] = None

    batch_fields: ClassVar[tuple[str, ...]] = ('class_ids', 'prompts', 'text_emb', 'text_mask')

    def __len__(self) -> int:
        if self.class_ids is not None:
            return int(self.class_ids.shape[0])
        if self.prompts is not None:
            return len(self.prompts)
        if self.text_emb is not None:
            return int(self.text_emb.shape[0])
        return 0

    def index(self, idx: Tensor) -> 'Conditions':
        return index_batch(self, idx, self.batch_fields)

    def repeat_interleave(self, repeats: int) -> 'Conditions':
        """Each condition ``repeats`` times in a row: the layout of a group."""
        idx = torch.arange(len(self)).repeat_interleave(repeats)
        return self.index(idx)

    def to(self, device) -> 'Conditions':
        return dataclasses.replace(self, **{n: _to(getattr(self, n), device) for n in self.batch_fields})

    @classmethod
    def cat(cls, items: list['Conditions']) -> 'Conditions':
        return cls(**{n: _cat([getattr(c, n) for c in items]) for n in cls.batch_fields})


@dataclass
class FamilyExtras:
    """Base of the typed, family-specific part of a rollout.

    Subclasses declare which of their fields are batch-major (leading dim ``B``) in
    ``batch_fields``; other fields are shared by the whole batch (e.g. VAR's ``patch_nums``).
    """

    batch_fields: ClassVar[tuple[str, ...]] = ()

    def index(self, idx: Tensor):
        return index_batch(self, idx, self.batch_fields)

    def to(self, device):
        return dataclasses.replace(self, **{f.name: _to(getattr(self, f.name), device)
                                            for f in dataclasses.fields(self)})

    @classmethod
    def cat(cls, items: list['FamilyExtras']):
        first = items[0]
        changes = {n: _cat([getattr(x, n) for x in items]) for n in cls.batch_fields}
        return dataclasses.replace(first, **changes)


@dataclass
class Rollout:
    """A batch of generated samples with everything the objective needs (see module docstring).

    Attributes:
        cond: conditions, one row per sample.
        group_ids: ``[B]`` long; samples of one group share an id, groups are contiguous.
        actions: ``[B, A]`` token ids, or ``[B, A, D]`` continuous actions.
        logp_old: ``[B, A]`` log-prob of each action under the distribution actually sampled
            from (with CFG if the rollout used CFG), detached.
        action_mask: ``[B, A]`` bool; False on padding and on given (prefix) actions.
        action_step: ``[A]`` or ``[B, A]`` long, generation step of each action.
        action_pos: ``[A, k]`` or ``[B, A, k]`` long, spatial cell of each action.
        images: ``[B, 3, H, W]`` float in [0, 1], or None before decoding.
        extras: family-specific state, a :class:`FamilyExtras` or None.
        prefix_steps: generation steps given rather than sampled (partial rollouts).
        logp_old_cfg: which logits ``logp_old`` was computed from: ``'rollout'`` (the CFG-mixed
            sampling distribution) or ``'none'`` (conditional logits only).
    """

    cond: Conditions
    group_ids: Tensor
    actions: Tensor
    logp_old: Tensor
    action_mask: Tensor
    action_step: Tensor
    action_pos: Tensor
    images: Optional[Tensor] = None
    extras: Optional[FamilyExtras] = None
    prefix_steps: int = 0
    logp_old_cfg: str = 'rollout'

    _batch_fields: ClassVar[tuple[str, ...]] = (
        'cond', 'group_ids', 'actions', 'logp_old', 'action_mask', 'images', 'extras')

    def __post_init__(self):
        b, a = self.logp_old.shape[:2]
        checks = {
            'group_ids': (self.group_ids.shape[:1], (b,)),
            'actions': (self.actions.shape[:2], (b, a)),
            'action_mask': (self.action_mask.shape, (b, a)),
        }
        for name, (got, want) in checks.items():
            if tuple(got) != tuple(want):
                raise ValueError(f'Rollout.{name} has shape {tuple(got)}, expected {want} '
                                 f'(B={b} samples, A={a} actions)')
        if self.action_step.shape[-1] != a:
            raise ValueError(f'Rollout.action_step has {self.action_step.shape[-1]} actions, '
                             f'expected A={a}')
        if self.action_mask.dtype != torch.bool:
            raise TypeError('Rollout.action_mask must be a bool tensor')

    # ---- sizes -------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.logp_old.shape[0])

    @property
    def num_actions(self) -> int:
        return int(self.logp_old.shape[1])

    @property
    def is_continuous(self) -> bool:
        return self.actions.is_floating_point()

    def steps(self) -> Tensor:
        """``[B, A]`` generation step of every action (broadcast if shared)."""
        if self.action_step.dim() == 1:
            return self.action_step.unsqueeze(0).expand(self.batch_size, -1)
        return self.action_step

    # ---- batch operations --------------------------------------------------------------
    def _per_sample_axis(self) -> tuple[str, ...]:
        extra = tuple(n for n, t in (('action_step', self.action_step), ('action_pos', self.action_pos))
                      if t.dim() >= (2 if n == 'action_step' else 3))
        return self._batch_fields + extra

    def index(self, idx: Tensor) -> 'Rollout':
        """The samples ``idx`` (a minibatch); shared fields are kept."""
        return index_batch(self, idx, self._per_sample_axis())

    def to(self, device) -> 'Rollout':
        return dataclasses.replace(self, **{f.name: _to(getattr(self, f.name), device)
                                            for f in dataclasses.fields(self)})

    @classmethod
    def cat(cls, items: list['Rollout']) -> 'Rollout':
        """Concatenate rollouts along the batch (used to gather ranks)."""
        first = items[0]
        return dataclasses.replace(first, **{n: _cat([getattr(r, n) for r in items])
                                             for n in first._per_sample_axis()})

    def group_slices(self, group_size: int) -> Tensor:
        """``[B // G, G]`` sample indices of each group (groups are contiguous)."""
        if self.batch_size % group_size:
            raise ValueError(f'batch of {self.batch_size} samples is not a whole number of '
                             f'groups of G={group_size}')
        return torch.arange(self.batch_size).view(-1, group_size)


@dataclass
class PolicyEval:
    """Teacher-forced evaluation of a rollout by a policy (one forward).

    Attributes:
        logp: ``[B, A]`` log-prob of the rollout's actions (with grad for the trained policy).
        entropy: ``[B, A]`` entropy of the full next-action distribution (discrete families),
            or None.
        extras: family-specific outputs (e.g. Gaussian means for MAR's KL).
    """

    logp: Tensor
    entropy: Optional[Tensor] = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def index(self, idx: Tensor) -> 'PolicyEval':
        """The rows ``idx`` of every tensor."""
        return PolicyEval(self.logp.index_select(0, idx),
                          None if self.entropy is None else self.entropy.index_select(0, idx),
                          {k: v.index_select(0, idx) for k, v in self.extras.items()})

    def detach(self) -> 'PolicyEval':
        return PolicyEval(self.logp.detach(),
                          None if self.entropy is None else self.entropy.detach(),
                          {k: v.detach() for k, v in self.extras.items()})


@dataclass
class RewardOutput:
    """What a reward head returns for a rollout.

    Attributes:
        scores: ``[B]`` float; NaN marks an unscorable sample (excluded from group statistics,
            advantage 0).
        metrics: scalars to log under ``reward/<head>/``.
        per_step: optional ``[B, A]`` per-action rewards (intermediate rewards).
        regions: optional ``[B, H, W]`` masks of what determines the reward.
        strict: optional ``[B]`` bool, e.g. an all-clauses-correct bit.
        weights: optional ``[B, A]`` per-action weights the head suggests (e.g. how much each
            action mattered for the score); only token selectors that ask for them use them.

    ``per_step``, ``regions``, ``strict`` and ``weights`` survive the gathering over ranks: token
    selectors find this rank's rows of every head's output in ``Advantages.rewards``.
    """

    scores: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    per_step: Optional[Tensor] = None
    regions: Optional[Tensor] = None
    strict: Optional[Tensor] = None
    weights: Optional[Tensor] = None

    #: the per-sample fields (leading dim B), gathered over ranks and indexed with the batch
    batch_fields: ClassVar[tuple[str, ...]] = ('scores', 'per_step', 'regions', 'strict',
                                               'weights')

    def index(self, idx: Tensor) -> 'RewardOutput':
        """The rows ``idx`` of every per-sample field (``metrics`` are kept)."""
        return index_batch(self, idx, self.batch_fields)


@dataclass
class Advantages:
    """One or more advantage streams, each a separate surrogate term with its own loss weight.

    ``streams[name]`` is ``[B, A]``; the policy loss is ``sum_name weights[name] * L_pg(streams[name])``
    (LOO-FID: ``A_comp`` with weight 1 and ``A_fid`` with weight 2).

    ``rewards`` holds, per reward head, the head's :class:`RewardOutput` for the same rows as the
    streams (scores, ``per_step``, ``regions``, ``strict``, ``weights``): the loop fills it in
    :meth:`vargo.core.algorithm.RLAlgorithm.compute_advantages` after gathering, and indexing a
    minibatch indexes it too, so token selectors see the reward signals of their rows.
    """

    streams: dict[str, Tensor]
    weights: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    rewards: dict[str, RewardOutput] = field(default_factory=dict)

    def index(self, idx: Tensor) -> 'Advantages':
        return Advantages({k: v.index_select(0, idx.to(v.device)) for k, v in self.streams.items()},
                          dict(self.weights), dict(self.metrics),
                          {k: r.index(idx) for k, r in self.rewards.items()})

    def sample_scalar(self) -> Tensor:
        """``[B]`` weighted sum over streams of the per-sample advantage (first action)."""
        total = None
        for name, adv in self.streams.items():
            term = self.weights[name] * adv[:, 0]
            total = term if total is None else total + term
        return total


@dataclass
class TokenWeights:
    """Per-action weights from token selectors; selectors compose by multiplication.

    Attributes:
        pg: ``[B, A]`` weight of each action in the policy-gradient term.
        kl: ``[B, A]`` weight of each action in the KL term.
        metrics: scalars to log under ``select/``.
    """

    pg: Tensor
    kl: Tensor
    metrics: dict[str, float] = field(default_factory=dict)

    def __mul__(self, other: 'TokenWeights') -> 'TokenWeights':
        return TokenWeights(self.pg * other.pg, self.kl * other.kl, {**self.metrics, **other.metrics})


@dataclass(frozen=True)
class LogprobSpec:
    """Which distribution per-action log-probs are taken under (docs/methods/grpo.md).

    ``mode='none'``: log-softmax of the conditional logits divided by ``temperature``, no CFG and
    no truncation (the papers' choice: cheap, off-policy when the rollout used CFG).
    ``mode='rollout'``: exactly the distribution sampled from: CFG-mixed logits (with the
    sampler's schedule), temperature, then top-k / top-p truncation renormalised. Exactly
    on-policy, about twice the forward cost.

    The sampler records ``logp_old`` under this spec and the policy's teacher-forced evaluation
    uses the same spec, so the importance ratio is exactly 1 at the first inner epoch.
    """

    mode: str = 'none'
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.mode not in ('none', 'rollout'):
            raise ValueError(f"logprob_cfg={self.mode!r} is not one of 'none', 'rollout'")
        if self.temperature <= 0:
            raise ValueError(f'temperature={self.temperature} must be > 0')
        if not 0 < self.top_p <= 1:
            raise ValueError(f'top_p={self.top_p} must be in (0, 1]')
        if self.top_k < 0:
            raise ValueError(f'top_k={self.top_k} must be >= 0 (0 disables it)')

    @property
    def uses_cfg(self) -> bool:
        return self.mode == 'rollout' and self.cfg_scale != 1.0
