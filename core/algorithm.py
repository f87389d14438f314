"""``RLAlgorithm``: the model MMEngine's Runner trains; holds every RL component.

One RL iteration is driven by :class:`vargo.core.loop.GRPOLoop`; this class provides its steps:

* :meth:`RLAlgorithm.generate` - ``sampler.rollout`` under ``no_grad``;
* :meth:`RLAlgorithm.score` - every reward head (named), in config order;
* :meth:`RLAlgorithm.compute_advantages` - the advantage estimator on rewards gathered from all
  ranks, keeping this rank's rows;
* :meth:`RLAlgorithm.reference_eval` - the frozen reference's teacher-forced evaluation, once
  per rollout;
* :meth:`RLAlgorithm.forward` (``mode='loss'``) - the loss of one minibatch: policy evaluation,
  token selectors, surrogate over the advantage streams, regularizers. Going through
  ``forward`` keeps DDP's gradient synchronisation.

The reference is a frozen copy of the policy made once at construction. Frozen parameters
(tokenizer, text encoder) are shared with the policy, not copied, and the reference is not a
registered sub-module, so it is never stored in checkpoints (it equals the initial weights).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from mmengine.model import BaseModel
from torch import Tensor

from . import dist as vdist
from .context import IterationContext
from .faults import RunAborted, StepOutcome, guarded_update
from .interfaces import Stateful
from .rng import BatchRNG
from .objective import ObjectiveConfig, masked_mean, policy_loss
from .registry import (ADVANTAGE_ESTIMATORS, MODELS, POLICIES, REGULARIZERS, REWARD_HEADS,
                       SAMPLERS, TOKEN_SELECTORS, ConfigError, checked_build)
from .types import (Advantages, Conditions, PolicyEval, RewardContext, RewardOutput, Rollout,
                    TokenWeights)

__all__ = ['RLAlgorithm', 'MiniBatch']


@dataclass
class MiniBatch:
    """One optimizer step's worth of whole groups, with everything the loss needs."""

    rollout: Rollout
    adv: Advantages
    ref_eval: Optional[PolicyEval]
    ctx: IterationContext     # the minibatch view (IterationContext.for_minibatch); a dict of
    #                           aggregation totals is still accepted (direct callers)
    check_on_policy: bool = False


def _gather(x: Tensor, device) -> Tensor:
    """``x`` of every rank, rank-major (bool masks travel as uint8, which every backend
    supports)."""
    x = x.to(device)
    if vdist.is_distributed() and x.dtype == torch.bool:
        return vdist.all_gather_cat(x.to(torch.uint8)).bool()
    return vdist.all_gather_cat(x)


def _named(cfgs: Optional[dict], what: str) -> dict:
    if cfgs is None:
        return {}
    if not isinstance(cfgs, dict):
        raise ConfigError(f'{what} must be a dict of named components (e.g. {what}=dict('
                          f'name=dict(type=...))), got {type(cfgs).__name__}; named dicts let a '
                          f'child config override one entry')
    return {k: v for k, v in cfgs.items() if v is not None}


@MODELS.register_module()
class RLAlgorithm(BaseModel):
    """Policy + frozen reference + sampler + rewards + advantage + selectors + regularizers.

    Args:
        policy: POLICIES config.
        sampler: SAMPLERS config.
        rewards: named REWARD_HEADS configs (``dict(jpeg=dict(type=...))``).
        advantage: ADVANTAGE_ESTIMATORS config.
        objective: ``dict(clip_eps=..., ratio_level=..., aggregation=...)``
            (:class:`vargo.core.objective.ObjectiveConfig`).
        group_size: G, samples per condition (>= 2).
        token_selectors: named TOKEN_SELECTORS configs, composed by multiplication in order.
        regularizers: named REGULARIZERS configs; each returns ``{'loss': ..., <metrics>}``.
        logp_mismatch_tol: tolerance of the on-policy check (max abs difference between the
            sampler's log-probs and the teacher-forced ones on the first minibatch).
        data_preprocessor: MMEngine data preprocessor config (default: plain device cast).
    """

    def __init__(self, *, policy: dict, sampler: dict, rewards: dict, advantage: dict,
                 objective: dict, group_size: int, token_selectors: Optional[dict] = None,
                 regularizers: Optional[dict] = None, logp_mismatch_tol: float = 1e-3,
                 data_preprocessor: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor)
        if not isinstance(group_size, int) or group_size < 2:
            raise ConfigError(f'group_size={group_size!r}: GRPO needs at least 2 samples per '
                              f'condition to estimate a group baseline; set group_size >= 2')
        self.group_size = group_size
        self.policy = checked_build(policy, POLICIES)
        self.sampler = checked_build(sampler, SAMPLERS)
        try:
            self.sampler.check_policy(self.policy)
        except ValueError as err:
            raise ConfigError(f'sampler {type(self.sampler).__name__} and policy '
                              f'{type(self.policy).__name__} do not fit: {err}') from err
        self.reward_heads = {name: checked_build(cfg, REWARD_HEADS)
                             for name, cfg in _named(rewards, 'rewards').items()}
        if not self.reward_heads:
            raise ConfigError('rewards is empty: configure at least one reward head, e.g. '
                              "rewards=dict(jpeg=dict(type='JpegCompressibilityReward'))")
        self.advantage = checked_build(advantage, ADVANTAGE_ESTIMATORS)
        self.token_selectors = {name: checked_build(cfg, TOKEN_SELECTORS)
                                for name, cfg in _named(token_selectors, 'token_selectors').items()}
        self.regularizers = {name: checked_build(cfg, REGULARIZERS)
                             for name, cfg in _named(regularizers, 'regularizers').items()}
        if not isinstance(objective, dict):
            raise ConfigError('objective must be dict(clip_eps=..., ratio_level=..., aggregation=...)')
        unknown = set(objective) - {'clip_eps', 'ratio_level', 'aggregation'}
        if unknown:
            raise ConfigError(f'objective got unknown key(s) {sorted(unknown)}; it accepts '
                              f'clip_eps, ratio_level, aggregation')
        missing = {'clip_eps', 'ratio_level', 'aggregation'} - set(objective)
        if missing:
            raise ConfigError(f'objective is missing {sorted(missing)}: these define the method, '
                              f'so they have no default')
        self.objective = ObjectiveConfig(**objective)
        for name, sel in self.token_selectors.items():
            if sel.aggregation is not None and sel.aggregation != self.objective.aggregation:
                raise ConfigError(
                    f'token selector {name!r} ({type(sel).__name__}) is meant for '
                    f'aggregation={sel.aggregation!r} but objective.aggregation='
                    f'{self.objective.aggregation!r}; set objective.aggregation to '
                    f'{sel.aggregation!r}')
        self.logp_mismatch_tol = float(logp_mismatch_tol)
        self.needs_reference = any(r.needs_reference for r in self.regularizers.values()) or any(
            getattr(s, 'needs_reference', False) for s in self.token_selectors.values()) or any(
            getattr(h, 'needs_reference', False) for h in self.reward_heads.values())
        # Frozen copy sharing every frozen tensor with the policy; deliberately not a sub-module.
        memo = {id(t): t for t in list(self.policy.parameters()) + list(self.policy.buffers())
                if not t.requires_grad}
        ref = copy.deepcopy(self.policy, memo)
        ref.requires_grad_(False).eval()
        self.__dict__['reference'] = ref

    # -- device moves also move the reference ---------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.__dict__['reference']._apply(fn, *args, **kwargs)
        return out

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    # -- one RL iteration's steps ---------------------------------------------------------
    def iteration_context(self, iteration: int, *, max_iters: int = 0, seed: int = 0,
                          num_conditions: int = 0) -> IterationContext:
        """The context of one RL iteration (0-based) over ``num_conditions`` groups on this
        rank; its ``rng`` is the sampler's :class:`BatchRNG` of the iteration."""
        local = int(num_conditions) * self.group_size
        return IterationContext(
            iteration=int(iteration), max_iters=int(max_iters), seed=int(seed),
            rng=BatchRNG(seed, iteration, local, device=self.device), group_size=self.group_size,
            local_samples=local, rank=vdist.rank(), world_size=vdist.world_size(),
            policy=self.policy, reference=self.reference, sampler=self.sampler,
            process_group=None)

    @torch.no_grad()
    def generate(self, cond: Conditions,
                 ctx: Union[IterationContext, BatchRNG, None] = None) -> Rollout:
        """Sample ``group_size`` samples for every condition (one row per group in ``cond``).

        ``ctx``: the iteration's context (its ``rng`` is the sampling noise; the training
        sampler draws), or a bare :class:`BatchRNG` or None (noise from torch's global generator;
        outside a training iteration, so the sampler's
        :meth:`~vargo.core.interfaces.Sampler.evaluation_sampler` draws).
        """
        if isinstance(ctx, IterationContext):
            rng, sampler = ctx.rng, self.sampler
        else:
            rng, ctx, sampler = ctx, None, self.sampler.evaluation_sampler()
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.rollout_context():
                cond = self.policy.encode_conditions(cond.to(self.device))
                rollout = sampler.rollout(self.policy, cond, group_size=self.group_size, rng=rng,
                                          ctx=ctx)
        finally:
            self.policy.train(was_training)
        return rollout

    def rollout_context(self):
        """Entered around every rollout (:meth:`generate`); nothing by default. A model wrapper
        may replace it on the instance: ``VargoFSDP`` keeps a sharded policy gathered for the
        whole rollout instead of gathering it at every decoding step."""
        return contextlib.nullcontext()

    def reward_context(self, iteration: int) -> RewardContext:
        """A context without sampling noise for iteration ``iteration`` (direct calls)."""
        return IterationContext(iteration=int(iteration), group_size=self.group_size,
                                rank=vdist.rank(), world_size=vdist.world_size(),
                                policy=self.policy, reference=self.reference,
                                sampler=self.sampler, process_group=None)

    @torch.no_grad()
    def score(self, rollout: Rollout, ctx: Union[IterationContext, int, None] = None, *,
              iteration: Optional[int] = None) -> dict[str, RewardOutput]:
        """Every reward head's output, in config order (``ctx``: the iteration's context, or
        the 0-based iteration, also accepted as ``iteration=``, for a context without sampling
        noise).

        A head that raises stops the run: :class:`~vargo.core.faults.RunAborted`
        (``kind='reward_head_error'``) naming the head, its class, the iteration and the rows
        it was scoring, raised from the head's exception.
        """
        if not isinstance(ctx, IterationContext):
            ctx = self.reward_context(int(ctx if ctx is not None else iteration or 0))
        if not ctx.local_samples:
            ctx = dataclasses.replace(ctx, local_samples=rollout.batch_size)
        iteration = ctx.iteration
        out = {}
        for name, head in self.reward_heads.items():
            try:
                out[name] = head(rollout, ctx)
            except Exception as err:
                raise RunAborted(self._head_error_message(name, head, err, rollout, iteration),
                                 kind='reward_head_error', iteration=iteration + 1) from err
        return out

    def _head_error_message(self, name: str, head, err: Exception, rollout: Rollout,
                            iteration: int) -> str:
        b, g = rollout.batch_size, self.group_size
        start = vdist.rank() * b
        what = ' '.join(str(err).split()) or '(no message)'
        where = (f'samples {start}-{start + b - 1} of the global batch (groups {start // g}-'
                 f'{(start + b) // g - 1})')
        if vdist.is_distributed():
            where += f', the rows of rank {vdist.rank()}'
        return (f'iteration {iteration + 1}: reward head {name!r} ({type(head).__name__}, '
                f'rewards.{name} in the config) raised {type(err).__name__}: {what} while '
                f'scoring {where}')

    @torch.no_grad()
    def compute_advantages(self, rewards: dict[str, RewardOutput], rollout: Rollout,
                           ctx: Optional[IterationContext] = None) -> Advantages:
        """Gather rewards of all ranks, estimate advantages, keep this rank's rows.

        Every per-sample field of a head's output (scores, ``per_step``, ``regions``,
        ``strict``, ``weights``) is gathered; the estimator sees all ranks' rows, and the
        returned :class:`Advantages` carries this rank's rows of each head's output in
        ``rewards`` (for token selectors).
        """
        local_b = rollout.batch_size
        if ctx is None:
            ctx = dataclasses.replace(self.reward_context(0), local_samples=local_b)
        gathered = {}
        for name, out in rewards.items():
            gathered[name] = RewardOutput(
                scores=vdist.all_gather_cat(out.scores.float().to(self.device)),
                metrics=out.metrics,
                **{f: None if getattr(out, f) is None else _gather(getattr(out, f), self.device)
                   for f in RewardOutput.batch_fields if f != 'scores'})
        adv = self.advantage(gathered, group_size=self.group_size,
                             num_actions=rollout.num_actions, ctx=ctx)
        start = vdist.rank() * local_b
        rows = torch.arange(start, start + local_b, device=self.device)
        if not adv.rewards:
            adv.rewards = gathered
        local = adv.index(rows)
        # estimator metrics named '<head>/<what>' go under the head's reward namespace
        local.metrics = {(f'reward/{k}' if '/' in k else k): v for k, v in adv.metrics.items()}
        for name, out in gathered.items():
            s = out.scores
            ok = ~torch.isnan(s)
            local.metrics[f'reward/{name}/mean'] = float(s[ok].mean()) if ok.any() else float('nan')
            local.metrics[f'reward/{name}/std'] = float(s[ok].std()) if ok.sum() > 1 else 0.0
            if out.strict is not None:
                local.metrics[f'reward/{name}/strict'] = float(out.strict.float().mean())
            for k, v in out.metrics.items():
                local.metrics[f'reward/{name}/{k}'] = float(v)
        return local

    @torch.no_grad()
    def reference_eval(self, rollout: Rollout, batch_groups: int) -> Optional[PolicyEval]:
        """Teacher-forced evaluation by the frozen reference, in chunks of whole groups."""
        if not self.needs_reference:
            return None
        spec = self.sampler.logprob_spec()
        outs = []
        for idx in rollout.group_slices(self.group_size).split(batch_groups):
            outs.append(self.reference.evaluate(rollout.index(idx.flatten()), spec=spec))
        return PolicyEval(
            logp=torch.cat([o.logp for o in outs]),
            entropy=None if outs[0].entropy is None else torch.cat([o.entropy for o in outs]),
            extras={k: torch.cat([o.extras[k] for o in outs]) for k in outs[0].extras})

    # -- the loss ------------------------------------------------------------------------
    def forward(self, minibatch: MiniBatch = None, mode: str = 'loss', **kwargs) -> dict[str, Tensor]:
        if mode != 'loss':
            raise ValueError(f"RLAlgorithm.forward supports mode='loss' only, got {mode!r}")
        return self.loss(minibatch)

    def loss(self, mb: MiniBatch) -> dict[str, Tensor]:
        rollout = mb.rollout
        spec = self.sampler.logprob_spec()
        pol = self.policy.evaluate(rollout, spec=spec)
        mask = rollout.action_mask
        # a plain dict of totals (callers of earlier versions) still works: it goes to the
        # aggregation as before, and selectors get no context
        legacy = isinstance(mb.ctx, dict)
        ctx = None if legacy else mb.ctx
        weights = TokenWeights(pg=mask.to(pol.logp.dtype), kl=mask.to(pol.logp.dtype))
        for sel in self.token_selectors.values():
            weights = weights * sel(rollout, pol, mb.ref_eval, mb.adv, policy=self.policy,
                                    group_size=self.group_size, ctx=ctx)
        pg_loss, pg_metrics = policy_loss(
            self.objective, pol.logp, rollout.logp_old, mb.adv.streams, mb.adv.weights, mask,
            weights.pg, mb.ctx)
        out: dict[str, Tensor] = {'loss': pg_loss}
        log: dict[str, Tensor] = {'loss/policy': pg_loss.detach()}
        for k, v in pg_metrics.items():
            log[f'policy/{k}'] = v
        progress = float(mb.ctx.get('progress', 0.0) if legacy else mb.ctx.progress)
        for name, reg in self.regularizers.items():
            terms = reg(pol, mb.ref_eval, rollout, weights, progress=progress, ctx=mb.ctx)
            if 'loss' in terms:
                out['loss'] = out['loss'] + terms['loss']
                log[f'loss/{name}'] = terms['loss'].detach()
            for k, v in terms.items():
                if k != 'loss':
                    log[f'{name}/{k}'] = v.detach() if isinstance(v, Tensor) else torch.tensor(v)
        if pol.entropy is not None:
            log['entropy/mean'] = masked_mean(pol.entropy.detach(), mask)
        for k, v in weights.metrics.items():
            log[f'select/{k}'] = torch.as_tensor(v)
        if mb.check_on_policy:
            diff = (pol.logp.detach() - rollout.logp_old).abs()[mask]
            log['policy/logp_mismatch_max'] = diff.max() if diff.numel() else diff.new_zeros(())
            log['policy/logp_mismatch_mean'] = diff.mean() if diff.numel() else diff.new_zeros(())
        out['log'] = log
        return out

    def parse_losses(self, losses: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Only ``losses['loss']`` is optimised; everything else is logged, detached.

        (MMEngine's default sums every key containing "loss", a trap for logged terms.)
        """
        loss = losses['loss']
        log_vars = {'loss': loss.detach()}
        log_vars.update(losses.get('log', {}))
        return loss, log_vars

    def train_step(self, data, optim_wrapper):
        """MMEngine's single-process train step (loss, then a guarded optimizer step)."""
        return self.guarded_train_step(self, data, optim_wrapper)[0]

    def guarded_train_step(self, model, data, optim_wrapper) -> tuple[dict, StepOutcome]:
        """One optimizer step on ``data`` through ``model`` (this algorithm, or its DDP
        wrapper: the forward goes through the wrapper so gradients are synchronised).

        The steps of MMEngine's ``train_step`` (``BaseModel``'s, or
        ``MMDistributedDataParallel``'s, which also runs the data preprocessor), with
        :func:`~vargo.core.faults.guarded_update` instead of ``optim_wrapper.update_params``:
        a step whose loss or gradient norm is non-finite on any rank is skipped on all ranks.
        Returns the log variables and the :class:`~vargo.core.faults.StepOutcome`.
        """
        wrapped = model is not self
        with optim_wrapper.optim_context(model):
            if wrapped:
                data = self.data_preprocessor(data, training=True)
            losses = model(**data, mode='loss')
        loss, log_vars = self.parse_losses(losses)
        outcome = guarded_update(optim_wrapper, loss)
        if wrapped and outcome.skipped != 'loss' and getattr(model, 'detect_anomalous_params',
                                                             False):
            from mmengine.model.utils import detect_anomalous_params
            detect_anomalous_params(loss, model=model)
        return log_vars, outcome

    # -- stateful components --------------------------------------------------------------
    def components(self) -> dict[str, Any]:
        named = {'sampler': self.sampler, 'advantage': self.advantage}
        named.update({f'rewards.{k}': v for k, v in self.reward_heads.items()})
        named.update({f'token_selectors.{k}': v for k, v in self.token_selectors.items()})
        named.update({f'regularizers.{k}': v for k, v in self.regularizers.items()})
        return named

    def component_state_dict(self) -> dict[str, dict]:
        return {name: c.state_dict() for name, c in self.components().items()
                if isinstance(c, Stateful)}

    def load_component_state_dict(self, state: dict[str, dict]) -> None:
        comps = self.components()
        for name, s in state.items():
            if name not in comps:
                raise KeyError(f'checkpoint holds state of component {name!r}, which this config '
                               f'does not have (components: {sorted(comps)})')
            comps[name].load_state_dict(s)
