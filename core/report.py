"""``tools/train.py --dry-run``: build everything (model, optimizer, schedulers, dataloader, loop
settings, hooks; :mod:`vargo.core.validation`), report sizes and rough costs, train nothing.

The estimates are stated with their assumptions:

* memory per rank = fp32 weights of every parameter (policy, frozen tokenizer/text encoder)
  + gradients and AdamW's two moments of the trainable ones + the reference's copy of the
  trainable ones. Activations and KV caches are not included. A sharded config
  (``model_wrapper_cfg`` VargoFSDP) also gets the per-rank share on N processes.
* FLOPs per iteration = rollout + reference + update forward/backward, from the policy's
  ``flops_per_sample(spec)`` if it has one, else ``2 * trainable parameters`` per action per
  forward (the GEMM count of a transformer, attention ignored), times 2 for CFG's doubled
  batch, 3x for forward+backward.
"""
from __future__ import annotations

from mmengine.config import Config

__all__ = ['dry_run_report', 'count_parameters']


def count_parameters(module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts; shared tensors counted once."""
    seen, train, frozen = set(), 0, 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            train += p.numel()
        else:
            frozen += p.numel()
    return train, frozen


def _fmt(n: float, unit: str = '') -> str:
    for scale, suffix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if abs(n) >= scale:
            return f'{n / scale:.2f} {suffix}{unit}'
    return f'{n:.0f} {unit}'


def _describe_optimizer(validated) -> str:
    ow = validated.optim_wrapper
    if ow is None:
        return '(not built)'
    opt = ow.optimizer
    group = opt.param_groups[0] if opt.param_groups else {}
    lr = group.get('initial_lr', group.get('lr'))
    return f'{type(opt).__name__}(lr={lr:g}) in {type(ow).__name__}' if lr is not None \
        else f'{type(opt).__name__} in {type(ow).__name__}'


def _sharded_memory(cfg: Config, policy, train: int) -> list[str]:
    """The memory line of a sharded run (``model_wrapper_cfg`` VargoFSDP): the shard units'
    weights, the gradients and AdamW moments of the trainable parameters and the reference's
    units are split over the ranks; the frozen parts outside the units are whole on each."""
    from .sharding import is_sharding_wrapper
    if not is_sharding_wrapper(cfg.get('model_wrapper_cfg')):
        return []
    seen, units = set(), 0
    for unit in policy.shard_units():
        for p in unit.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                units += p.numel()
    whole = 4 * (count_parameters(policy)[1] - sum(
        p.numel() for p in policy.parameters() if id(p) in seen and not p.requires_grad))
    split = 4 * units + 4 * train * 3 + 4 * units
    return [f'  sharded (est)     {_fmt(split, "B")} / N + {_fmt(whole, "B")} per rank on N '
            f'processes ({_fmt(split / 8 + whole, "B")} on 8): model_wrapper_cfg '
            f'{cfg.model_wrapper_cfg.get("type")}']


def dry_run_report(cfg: Config, validated=None) -> str:
    """The dry-run report of a prepared config. ``validated``: what
    :func:`vargo.core.validation.validate_training_config` built (built here if None)."""
    if validated is None:
        from .validation import validate_training_config
        validated = validate_training_config(cfg)
    elif not hasattr(validated, 'model'):  # a model alone (older callers)
        from .validation import validate_training_config
        validated = validate_training_config(cfg, model=validated)
    model = validated.model
    policy = model.policy
    train, frozen = count_parameters(policy)
    spec = model.sampler.logprob_spec()
    samples = int(cfg.train_cfg.samples_per_rank)
    mu = int(cfg.train_cfg.get('mu', 1))
    actions = getattr(policy, 'num_actions', None)
    if hasattr(policy, 'flops_per_sample'):
        fwd = float(policy.flops_per_sample(spec))
        basis = 'policy.flops_per_sample'
    else:
        fwd = 2.0 * train * (actions or 1)
        basis = '2 x trainable params per action'
    cfg_mult = 2.0 if spec.cfg_scale != 1.0 else 1.0
    rollout = samples * fwd * cfg_mult
    update = samples * mu * 3.0 * fwd * (cfg_mult if spec.mode == 'rollout' else 1.0)
    reference = samples * fwd if model.needs_reference else 0.0
    mem = 4 * (train + frozen) + 4 * train * 3 + 4 * train
    lines = [
        'vargo dry run: everything built, every file found.',
        f'  policy            {type(policy).__name__}',
        f'  parameters        trainable {_fmt(train)}, frozen {_fmt(frozen)} '
        f'(reference: frozen copy of the trainable part)',
        f'  actions/sample    {actions}',
        f'  group size        {model.group_size}; {samples} samples/rank/iteration; mu={mu}',
        f'  sampler           {type(model.sampler).__name__}, logprob spec {spec}',
        f'  rewards           {", ".join(f"{k}={type(v).__name__}" for k, v in model.reward_heads.items())}',
        f'  advantage         {type(model.advantage).__name__}',
        f'  token selectors   {", ".join(model.token_selectors) or "(none)"}',
        f'  regularizers      {", ".join(model.regularizers) or "(none)"}',
        f'  objective         {model.objective}',
        f'  optimizer         {_describe_optimizer(validated)}; schedulers: '
        f'{", ".join(type(s).__name__ for s in validated.param_schedulers) or "(none)"}',
        f'  dataloader        {len(validated.dataloader.dataset)} conditions, '
        f'{validated.dataloader.batch_size} per rank per iteration',
        f'  loop              {cfg.train_cfg.get("type", "GRPOLoop")}, '
        f'{cfg.train_cfg.max_iters} iterations',
        f'  hooks             {", ".join(type(h).__name__ for h in validated.hooks.values())}',
        f'  memory/rank (est) {_fmt(mem, "B")} = weights + grads + AdamW moments + reference '
        f'(activations and KV cache not included)',
        *_sharded_memory(cfg, policy, train),
        f'  FLOPs/iteration   {_fmt(rollout + update + reference, "FLOP")} per rank '
        f'(rollout {_fmt(rollout)}, update {_fmt(update)}, reference {_fmt(reference)}; '
        f'basis: {basis})',
    ]
    return '\n'.join(lines)
