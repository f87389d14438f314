"""The iteration context (core/context.py): fields, named RNG streams, reward signals reaching
token selectors, and DAPO's all-rank token count for ``global_token_mean``."""
import os

import pytest
import torch

from conftest import ROOT, run_two_ranks
from vargo.core.context import IterationContext, RewardContext
from vargo.core.objective import ObjectiveConfig, aggregate, policy_loss
from vargo.core.rng import BatchRNG
from vargo.core.types import Advantages, RewardOutput

TOY = os.path.join(ROOT, 'tests', 'configs', 'toy_grpo.py')


def test_fields_and_group_structure():
    ctx = IterationContext(iteration=3, max_iters=8, seed=5, group_size=4, local_samples=12,
                           rank=1, world_size=2)
    assert (ctx.step, ctx.progress) == (4, 3 / 8)
    assert (ctx.num_groups, ctx.sample_offset, ctx.global_samples) == (3, 12, 24)
    # RewardContext is the same class; its fields keep their defaults
    old = RewardContext()
    assert isinstance(old, IterationContext)
    assert (old.policy, old.reference, old.sampler, old.iteration, old.process_group) == (
        None, None, None, 0, None)


def test_named_streams_are_rank_invariant_and_independent():
    one = IterationContext(iteration=2, seed=7, local_samples=6)
    full = one.stream('rewards.x/completions').randn(5)
    parts = [IterationContext(iteration=2, seed=7, local_samples=3, rank=r, world_size=2)
             .stream('rewards.x/completions').randn(5) for r in (0, 1)]
    assert torch.equal(torch.cat(parts), full)
    # a stream depends only on (seed, iteration, name): restarting it (resume) gives the same
    assert torch.equal(one.stream('rewards.x/completions').randn(5), full)
    # independent of other names, of the sampler's stream, of the iteration and the seed
    others = [one.stream('other').randn(5), BatchRNG(7, 2, 6, rank=0, world_size=1).randn(5),
              IterationContext(iteration=3, seed=7, local_samples=6).stream(
                  'rewards.x/completions').randn(5),
              IterationContext(iteration=2, seed=8, local_samples=6).stream(
                  'rewards.x/completions').randn(5)]
    assert not any(torch.equal(o, full) for o in others)
    # another batch size (e.g. K completions per sample), still rank-major
    k4 = one.stream('k', local_batch=24).rand()
    assert torch.equal(torch.cat([IterationContext(iteration=2, seed=7, local_samples=3, rank=r,
                                                   world_size=2).stream('k', 12).rand()
                                  for r in (0, 1)]), k4)
    with pytest.raises(ValueError, match='non-empty'):
        one.stream('')


def test_minibatch_totals_feed_the_aggregation():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    ctx = IterationContext(group_size=2, local_samples=2).for_minibatch(mask)
    assert (ctx.minibatch_samples, ctx.global_minibatch_samples,
            ctx.global_active_actions) == (2, 2, 3.0)
    assert ctx.aggregation_totals() == {'group_size': 2, 'world_size': 1, 'num_samples': 2,
                                        'global_num_tokens': 3.0}
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # single process: global_token_mean is token_mean, bit for bit
    assert torch.equal(aggregate(x, mask, None, 'global_token_mean', ctx),
                       aggregate(x, mask, None, 'token_mean'))
    # with the totals of a larger (all-rank) batch: local sum x world size / global count
    big = IterationContext(world_size=2, global_active_actions=5.0, minibatch_samples=2)
    assert aggregate(x, mask, None, 'global_token_mean', big).item() == pytest.approx(
        2 * 7.0 / 5)


def test_reward_output_and_advantages_index_the_reward_signals():
    out = RewardOutput(scores=torch.arange(4.0), regions=torch.rand(4, 2, 2) > 0.5,
                       weights=torch.rand(4, 3), metrics={'m': 1.0})
    adv = Advantages({'r': torch.rand(4, 3)}, {'r': 1.0}, rewards={'r': out})
    idx = torch.tensor([2, 0])
    sub = adv.index(idx).rewards['r']
    assert torch.equal(sub.regions, out.regions[idx]) and torch.equal(sub.weights, out.weights[idx])
    assert torch.equal(sub.scores, out.scores[idx]) and sub.per_step is None
    assert sub.metrics == {'m': 1.0}


def test_loop_gives_every_component_the_context(tmp_path):
    """A run: the selector sees the minibatch context of each iteration and the reward head's
    regions and weights for its rows."""
    from toy_components import RecordingSelector, ToyRegionReward
    from vargo.core.runner import build_runner, load_config, prepare_config
    cfg = load_config(TOY, {
        'rewards': dict(_delete_=True, r=dict(type='ToyRegionReward')),
        'token_selectors': dict(_delete_=True, rec=dict(type='RecordingSelector')),
        'objective.aggregation': 'global_token_mean',
        'train_cfg.max_iters': 2, 'train_cfg.mu': 1, 'default_hooks.checkpoint.interval': 100,
        'default_hooks.image_grid.preview_conditions': 0})
    cfg = prepare_config(cfg, config_path=TOY, work_dir=str(tmp_path))
    cfg.experiment_name = 'context'
    RecordingSelector.seen.clear()
    ToyRegionReward.seen.clear()
    runner = build_runner(cfg)
    runner.train()
    seen = RecordingSelector.seen
    assert len(seen) == 4                                  # 2 iterations x 2 minibatches of 8
    for k, rec in enumerate(seen):
        ctx, rollout = rec['ctx'], rec['rollout']
        assert isinstance(ctx, IterationContext)
        assert (ctx.iteration, ctx.max_iters, ctx.progress) == (k // 2, 2, (k // 2) / 2)
        assert (ctx.group_size, ctx.local_samples, ctx.minibatch_samples) == (4, 16, 8)
        assert ctx.global_active_actions == float(rollout.action_mask.sum())
        assert ctx.policy is not None and ctx.sampler is not None and ctx.rng is not None
        r = rec['rewards']['r']
        assert r.regions.shape == (8, *rollout.images.shape[2:])
        assert torch.equal(r.regions, rollout.images.float().mean(dim=1) > 0.5)
        assert torch.equal(r.weights, rollout.actions.float() / 8.0)
    # the reward head got the iteration's context, and its named stream is the one any process
    # count draws: (seed, iteration, name) and this rank's rows only
    heads = ToyRegionReward.seen
    assert [h['ctx'].iteration for h in heads] == [0, 1]
    for it, h in enumerate(heads):
        ctx = h['ctx']
        assert ctx.rng is not None and ctx.local_samples == 16 and ctx.sample_offset == 0
        want = IterationContext(iteration=it, seed=ctx.seed, local_samples=16).stream(
            'rewards.r/noise').rand(2)
        assert torch.equal(h['noise'], want)
    assert not torch.equal(heads[0]['noise'], heads[1]['noise'])
    # the sampler learned the iteration
    sampler = runner.model.sampler
    assert sampler.last_ctx.iteration == 1 and sampler.last_ctx.rng is not None


# ----------------------------------------------------------------------------------------
# global_token_mean over 2 processes with different active-token counts
# ----------------------------------------------------------------------------------------
_DIST_SCRIPT = r"""
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
sys.path.insert(0, sys.argv[2])
from test_context import make_batch, Scorer, loss_of, regions_of
from vargo.core.context import IterationContext

dist.init_process_group('gloo')
rank = dist.get_rank()
actions, logp_old, adv, mask = make_batch()
rows = slice(rank * 4, rank * 4 + 4)
model = DDP(Scorer())
ctx = IterationContext(group_size=2, local_samples=4, rank=rank, world_size=2)
loss = loss_of(model, actions[rows], logp_old[rows], adv[rows], mask[rows], ctx)
loss.backward()
# reward regions (bool) are gathered as compute_advantages gathers them
from vargo.core.algorithm import _gather
regions = _gather(regions_of(rank), 'cpu')
torch.save({'loss': loss.detach(), 'grad': model.module.w.grad, 'regions': regions,
            'active': int(mask[rows].sum())}, f'{sys.argv[1]}.rank{rank}.pt')
# release DDP's reducer while the process group is alive, on both ranks, before tearing the group
# down: without this, about 1 run in 10 aborted at interpreter exit ("terminate called without
# an active exception", no Python frame) after both ranks had saved their results
dist.barrier()
del model
dist.destroy_process_group()
"""

_A, _V = 5, 3


def make_batch():
    """8 samples (2 ranks x 2 groups of 2); rank 0 has many more active actions than rank 1."""
    g = torch.Generator().manual_seed(3)
    actions = torch.randint(0, _V, (8, _A), generator=g)
    logp_old = -torch.rand(8, _A, generator=g) - 0.5
    adv = torch.randn(8, 1, generator=g).expand(8, _A).contiguous()
    mask = torch.ones(8, _A, dtype=torch.bool)
    mask[4:, 2:] = False                        # rank 1: 4 x 2 = 8 active, rank 0: 20
    mask[0, 4] = False                          # rank 0: 19
    return actions, logp_old, adv, mask


def regions_of(rank):
    return (torch.arange(16).view(4, 2, 2) * (rank + 2)) % 3 == 0


class Scorer(torch.nn.Module):
    """Per-action log-probs from one shared logit table ``[A, V]``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, _A * _V).view(_A, _V))

    def forward(self, actions):
        logp = torch.log_softmax(self.w, -1)                               # [A, V]
        return logp.gather(1, actions.t()).t()                             # [b, A]


def loss_of(model, actions, logp_old, adv, mask, ctx):
    cfg = ObjectiveConfig(clip_eps=0.2, ratio_level='token', aggregation='global_token_mean')
    loss, _ = policy_loss(cfg, model(actions), logp_old, {'a': adv}, {'a': 1.0}, mask, None,
                          ctx.for_minibatch(mask))
    return loss


@pytest.mark.distributed
def test_global_token_mean_two_processes_equal_one_process(tmp_path):
    ranks = run_two_ranks(_DIST_SCRIPT, tmp_path)
    assert [r['active'] for r in ranks] == [19, 8]
    both = torch.cat([regions_of(0), regions_of(1)])
    assert all(r['regions'].dtype == torch.bool and torch.equal(r['regions'], both) for r in ranks)

    # the single-process computation over the concatenated batch
    actions, logp_old, adv, mask = make_batch()
    model = Scorer()
    full = loss_of(model, actions, logp_old, adv, mask,
                   IterationContext(group_size=2, local_samples=8))
    full.backward()
    # DDP averages the ranks' gradients (each rank holds the mean over ranks): equal to the
    # gradient of the whole batch's token mean; the ranks' losses average to the whole loss
    for r in ranks:
        torch.testing.assert_close(r['grad'], model.w.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close((ranks[0]['loss'] + ranks[1]['loss']) / 2, full.detach(),
                               rtol=1e-6, atol=1e-7)

    # the local token mean (the old behaviour) gives a different gradient with these counts
    local = Scorer()
    parts = [loss_of(local, actions[s], logp_old[s], adv[s], mask[s],
                     IterationContext(group_size=2, local_samples=4))
             for s in (slice(0, 4), slice(4, 8))]
    ((parts[0] + parts[1]) / 2).backward()
    assert not torch.allclose(local.w.grad, model.w.grad, rtol=1e-3, atol=1e-5)
