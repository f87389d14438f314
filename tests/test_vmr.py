"""VMR (value as middle return, VAR RL Done Right): the soft value, the phase schedule of
``VMRSampler``, its prefix-phase mask and shared-prefix groups (VAR, raster LlamaGen and MAR), the
value ``VMRReward`` computes from its completions, rank invariance (2 gloo processes = 1
process), re-running an iteration from the same state, and a 2-iteration training run covering
both phases."""
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_two_ranks
from vargo.components.rewards.vmr import VMRReward, soft_value
from vargo.components.samplers.vmr import VMRSampler
from vargo.core.context import IterationContext
from vargo.core.interfaces import RewardHead
from vargo.core.registry import POLICIES, ConfigError
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, RewardOutput

VAR_TINY = dict(type='VARPolicy', arch=dict(depth=1, embed_dim=32, num_heads=2),
                patch_nums=(1, 2, 4), image_size=32, vocab_size=64, num_classes=18,
                checkpoint=None, tokenizer_checkpoint=None,
                tokenizer=dict(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2, 2, 2),
                               num_res_blocks=1, norm_groups=8))
LLAMAGEN_TINY = dict(type='LlamaGenPolicy', arch=dict(dim=32, n_layer=1, n_head=2), task='c2i',
                     image_size=16, downsample=4, num_classes=10, vocab_size=64,
                     checkpoint=None, tokenizer_checkpoint=None,
                     tokenizer=dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16,
                                    codebook_size=64, codebook_embed_dim=8, norm_groups=8))
SAMPLING = dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none')


def tiny_policy(cfg=VAR_TINY, seed=0):
    """A tiny random policy, the same weights for the same seed."""
    torch.manual_seed(seed)
    return POLICIES.build(dict(cfg)).eval()


def vmr_sampler(inner='NextScaleSampler', split_step=2, prefix_updates=1, suffix_updates=1):
    return VMRSampler(sampler=dict(type=inner, **SAMPLING), split_step=split_step,
                      prefix_updates=prefix_updates, suffix_updates=suffix_updates)


def make_ctx(policy, sampler, iteration, num_cond, group_size, *, seed=7, rank=0, world_size=1):
    """The loop's context of one iteration on ``rank``, with ``num_cond`` conditions there."""
    local = num_cond * group_size
    return IterationContext(iteration=iteration, seed=seed, group_size=group_size,
                            rng=BatchRNG(seed, iteration, local, rank=rank, world_size=world_size),
                            local_samples=local, rank=rank, world_size=world_size,
                            policy=policy, sampler=sampler)


class ToyReward(RewardHead):
    """Deterministic: the mean token id of a sample over the vocabulary (scaled to [0, 4])."""

    def __call__(self, rollout, ctx=None):
        return RewardOutput(scores=rollout.actions.float().mean(1) / 16.0)


# ---- the soft value ------------------------------------------------------------------------
def test_soft_value_matches_hand_computed_numbers():
    cases = [([0.0, 1.0], 1.0, 0.6201145069582775),           # log((1 + e) / 2)
             ([1.0, 2.0, 3.0], 2.0, 2.1633147639472496),      # 2 log((e^.5 + e + e^1.5) / 3)
             ([3.0, 2.0, 1.0, 0.0], 0.5, 2.379391788920446)]  # 3 + .5 log(mean e^{0,-2,-4,-6})
    for r, eta, want in cases:
        got = soft_value(torch.tensor(r), eta)
        assert got.dtype == torch.float64 and abs(float(got) - want) < 1e-12, (r, eta, got)
    batch = soft_value(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), 1.0)     # rows are prefixes
    assert torch.allclose(batch, torch.tensor([0.6201145069582775, 1.0], dtype=torch.float64))


def test_soft_value_limits_and_stability():
    r = torch.tensor([[0.2, 0.9, 0.4], [3.0, -1.0, 2.0]], dtype=torch.float64)
    assert torch.equal(soft_value(r, float('inf')), r.mean(1))            # eta -> inf: mean
    assert torch.equal(soft_value(r, 0.0), r.max(1).values)               # eta = 0: max
    assert torch.allclose(soft_value(r, 1e-6), r.max(1).values, atol=1e-5)  # eta -> 0
    assert torch.allclose(soft_value(r, 1e6), r.mean(1), atol=1e-5)       # eta -> inf
    mean, top = r.mean(1), r.max(1).values                                # mean <= V <= max
    for eta in (0.01, 0.3, 1.0, 10.0):
        v = soft_value(r, eta)
        assert bool((v >= mean - 1e-12).all() and (v <= top + 1e-12).all()), eta
    # large R / eta: exp(800) and exp(1e6) overflow float64, the value does not
    assert float(soft_value(torch.tensor([800.0, 800.0]), 1.0)) == 800.0
    v = soft_value(torch.tensor([1000.0, 1001.0]), 1e-3)
    assert math.isfinite(float(v)) and abs(float(v) - (1001.0 - 1e-3 * math.log(2))) < 1e-9
    v = soft_value(torch.tensor([-1e4, 0.0]), 1.0)
    assert abs(float(v) + math.log(2)) < 1e-12
    # NaN (unscorable) propagates
    assert math.isnan(float(soft_value(torch.tensor([1.0, float('nan')]), 1.0)))
    assert math.isnan(float(soft_value(torch.tensor([1.0, float('nan')]), float('inf'))))


# ---- settings and the schedule -------------------------------------------------------------
def test_phase_schedule_is_three_prefix_then_one_suffix():
    s = vmr_sampler(prefix_updates=3, suffix_updates=1)
    assert [s.phase(i) for i in range(8)] == ['prefix'] * 3 + ['suffix'] + ['prefix'] * 3 + [
        'suffix']
    assert s.phase_of(None) == 'prefix'
    assert [vmr_sampler(prefix_updates=0, suffix_updates=2).phase(i) for i in range(3)] == [
        'suffix'] * 3


@pytest.mark.parametrize('kwargs, match', [
    (dict(split_step=0), 'split_step=0'), (dict(split_step=1.5), 'split_step=1.5'),
    (dict(split_step=True), 'split_step=True'), (dict(prefix_updates=-1), 'prefix_updates=-1'),
    (dict(prefix_updates=0, suffix_updates=0), 'leave no iteration'),
    (dict(suffix_updates='1'), 'suffix_updates'),
])
def test_sampler_settings_fail_with_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        vmr_sampler(**kwargs)
    assert '\n' not in str(err.value)


def test_sampler_refuses_bad_inner_and_split_beyond_the_policy():
    with pytest.raises(ConfigError, match='another VMRSampler'):
        VMRSampler(sampler=dict(type='VMRSampler', sampler=dict(type='NextScaleSampler',
                                                                **SAMPLING), split_step=1),
                   split_step=1)
    policy = tiny_policy()
    with pytest.raises(ValueError, match=r'split_step=3 must be in \(0, 3\).*3 scales') as err:
        vmr_sampler(split_step=3).check_policy(policy)
    assert '\n' not in str(err.value)
    vmr_sampler(split_step=2).check_policy(policy)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_completions=0), 'num_completions=0'), (dict(eta=0.0), 'eta=0.0'),
    (dict(eta=-1), 'eta=-1'), (dict(eta=float('nan')), 'eta=nan'),
    (dict(include_rollout=1), 'include_rollout=1'),
])
def test_reward_settings_fail_with_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        VMRReward(head=dict(type='JpegCompressibilityReward'), **kwargs)
    assert '\n' not in str(err.value)


def test_reward_refuses_distribution_level_heads_and_other_samplers():
    class Dist(ToyReward):
        distribution_level = True

    with pytest.raises(ConfigError, match='distribution-level'):
        VMRReward(head=Dist())
    head = VMRReward(head=ToyReward(), eta=float('inf'))
    policy = tiny_policy()
    from vargo.core.registry import SAMPLERS
    plain = SAMPLERS.build(dict(type='NextScaleSampler', **SAMPLING))
    ctx = make_ctx(policy, plain, 0, 1, 2)
    rollout = plain.rollout(policy, Conditions(class_ids=torch.tensor([3])), group_size=2,
                            rng=ctx.rng)
    with pytest.raises(ValueError, match="VMRReward needs the VMRSampler.*type='VMRSampler'"):
        head(rollout, ctx)


# ---- the sampler's two phases --------------------------------------------------------------
@pytest.mark.parametrize('family, split', [('var', 2), ('llamagen', 8)])  # raster: token row 2
def test_prefix_phase_mask_and_suffix_phase_shared_prefix_groups(family, split):
    policy = tiny_policy(VAR_TINY if family == 'var' else LLAMAGEN_TINY)
    inner = 'NextScaleSampler' if family == 'var' else 'ARSampler'
    s = vmr_sampler(inner, split_step=split)
    s.check_policy(policy)
    cond = Conditions(class_ids=torch.tensor([1, 4, 7]))
    g = 4
    pre = s.rollout(policy, cond, group_size=g, ctx=make_ctx(policy, s, 0, 3, g))
    steps = pre.steps()
    assert pre.prefix_steps == 0 and torch.equal(pre.action_mask, steps < split)
    ctx = make_ctx(policy, s, 1, 3, g)
    suf = s.rollout(policy, cond, group_size=g, rng=ctx.rng, ctx=ctx)
    assert suf.batch_size == 3 * g and suf.prefix_steps == split
    assert torch.equal(suf.action_mask, suf.steps() >= split)
    assert torch.equal(suf.group_ids, torch.arange(3).repeat_interleave(g))
    assert torch.equal(suf.cond.class_ids.cpu(), cond.class_ids.repeat_interleave(g))
    before = (steps[0] < split)
    acts = suf.actions.view(3, g, -1)
    assert torch.equal(acts[:, :, before], acts[:, :1, before].expand(-1, g, -1))  # shared
    after = acts[:, :, ~before]
    assert all(len({tuple(a.tolist()) for a in grp}) > 1 for grp in after)        # differ
    shared = s.shared_prefixes(policy, cond, ctx)     # the stream vmr/shared_prefix
    assert torch.equal(acts[:, 0, before], shared.actions[:, before])
    assert suf.images is not None and shared.images is None
    if family == 'var':     # the prefix groups differ between conditions and from ctx.rng's
        assert not torch.equal(pre.actions.view(3, g, -1)[:, 0, before], acts[:, 0, before])


# ---- the reward ----------------------------------------------------------------------------
@pytest.mark.parametrize('k, include', [(2, True), (3, False)])
def test_value_is_the_soft_value_of_the_completion_scores(k, include):
    policy = tiny_policy()
    s = vmr_sampler(split_step=1)
    head = VMRReward(head=ToyReward(), num_completions=k, eta=0.5, include_rollout=include)
    cond = Conditions(class_ids=torch.tensor([2, 9]))
    ctx = make_ctx(policy, s, 0, 2, 3)
    rollout = s.rollout(policy, cond, group_size=3, rng=ctx.rng, ctx=ctx)
    out = head(rollout, ctx)
    kk = head.extra_completions
    assert kk == (1 if include else 3)
    done = head.completions(rollout, ctx)             # the stream restarts: the same draws
    assert done.batch_size == 6 * kk and done.prefix_steps == 1
    prefix = rollout.steps()[0] < 1
    assert torch.equal(done.actions[:, prefix], rollout.actions[:, prefix].repeat_interleave(
        kk, 0))
    comp = ToyReward()(done).scores.double().view(6, kk)
    own = ToyReward()(rollout).scores.double().unsqueeze(1)
    r = torch.cat([own, comp], 1) if include else comp
    want = 0.5 * (torch.logsumexp(r / 0.5, 1) - math.log(k))          # the paper's formula
    assert torch.allclose(out.scores.double(), want, atol=1e-6)
    assert out.scores.dtype == torch.float32 and out.metrics['vmr/prefix_phase'] == 1.0
    assert abs(out.metrics['vmr/value_mean'] - float(want.mean())) < 1e-5
    assert abs(out.metrics['vmr/completion_reward_mean'] - float(comp.mean())) < 1e-6
    assert abs(out.metrics['vmr/terminal_mean'] - float(own.mean())) < 1e-6
    assert out.metrics['vmr/completion_seconds'] >= 0
    # suffix phase: the inner head's terminal reward, unchanged
    ctx1 = make_ctx(policy, s, 1, 2, 3)
    suf = s.rollout(policy, cond, group_size=3, rng=ctx1.rng, ctx=ctx1)
    out1 = head(suf, ctx1)
    assert torch.equal(out1.scores, ToyReward()(suf).scores)
    assert out1.metrics['vmr/prefix_phase'] == 0.0 and 'vmr/value_mean' not in out1.metrics


def test_nan_rewards_propagate_to_the_value():
    class Half(ToyReward):
        def __call__(self, rollout, ctx=None):
            scores = super().__call__(rollout).scores
            scores[::2] = math.nan
            return RewardOutput(scores=scores)

    policy = tiny_policy()
    s = vmr_sampler(split_step=1)
    ctx = make_ctx(policy, s, 0, 1, 4)
    rollout = s.rollout(policy, Conditions(class_ids=torch.tensor([5])), group_size=4,
                        rng=ctx.rng, ctx=ctx)
    v = VMRReward(head=Half(), include_rollout=True)(rollout, ctx).scores
    assert torch.isnan(v[::2]).all()          # own R is NaN on even rows


def test_iteration_rerun_from_the_same_state_is_bit_exact():
    """The phase depends on ctx.iteration only and every draw comes from ctx.rng or a named
    ctx stream, so running iteration i again (as a resumed run does) gives the same rollout
    and the same values."""
    policy = tiny_policy()
    s = vmr_sampler(split_step=2)
    head = VMRReward(head=ToyReward())
    cond = Conditions(class_ids=torch.tensor([0, 3]))
    runs = []
    for it in (0, 1, 0, 1, 2):
        torch.manual_seed(1000 + len(runs))   # torch's global generator must not matter
        ctx = make_ctx(policy, s, it, 2, 2)
        rollout = s.rollout(policy, cond, group_size=2, rng=ctx.rng, ctx=ctx)
        runs.append((rollout, head(rollout, ctx).scores))
    for a, b in ((0, 2), (1, 3)):
        assert torch.equal(runs[a][0].actions, runs[b][0].actions)
        assert torch.equal(runs[a][0].logp_old, runs[b][0].logp_old)
        assert torch.equal(runs[a][0].action_mask, runs[b][0].action_mask)
        assert torch.equal(runs[a][1], runs[b][1])
    assert not torch.equal(runs[0][0].actions, runs[4][0].actions)   # iteration 2 draws anew


# ---- ranks ---------------------------------------------------------------------------------
_DIST_SCRIPT = r"""
import sys
import torch
import torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from test_vmr import ToyReward, make_ctx, tiny_policy, vmr_sampler, rank_rows
dist.init_process_group('gloo')
rank = dist.get_rank()
torch.save(rank_rows(rank, 2), f'{sys.argv[1]}.rank{rank}.pt')
dist.destroy_process_group()
"""

#: 4 conditions over all ranks, G = 2
_CLASSES = (1, 6, 11, 16)


def rank_rows(rank, world_size):
    """This rank's prefix-phase completions and values and suffix-phase rollout."""
    policy = tiny_policy()
    s = vmr_sampler(split_step=1)
    head = VMRReward(head=ToyReward(), num_completions=3, include_rollout=True)
    n = len(_CLASSES) // world_size
    cond = Conditions(class_ids=torch.tensor(_CLASSES[rank * n:(rank + 1) * n]))
    out = {}
    for it in (0, 1):
        ctx = make_ctx(policy, s, it, n, 2, rank=rank, world_size=world_size)
        rollout = s.rollout(policy, cond, group_size=2, rng=ctx.rng, ctx=ctx)
        out[f'actions{it}'] = rollout.actions
        out[f'scores{it}'] = head(rollout, ctx).scores
        if it == 0:
            out['completions'] = head.completions(rollout, ctx).actions
        else:
            out['shared'] = s.shared_prefixes(policy, cond, ctx).actions
    return out


def test_two_processes_draw_the_rows_of_one_process(tmp_path):
    ranks = run_two_ranks(_DIST_SCRIPT, tmp_path)
    single = rank_rows(0, 1)
    for key, value in single.items():
        assert torch.equal(torch.cat([r[key] for r in ranks]), value), key


# ---- a training run ------------------------------------------------------------------------
def test_two_iteration_var_run_covers_both_phases(tmp_path):
    from test_configs import shrink
    from vargo.core.runner import build_runner, load_config, prepare_config
    path = os.path.join(ROOT, 'configs', 'grpo', 'var_grpo_shapes.py')
    cfg = shrink(load_config(path))
    cfg.sampler = dict(type='VMRSampler', sampler=dict(cfg.sampler), split_step=2,
                       prefix_updates=1, suffix_updates=1)
    cfg.rewards = dict(shapes=dict(type='VMRReward', head=dict(cfg.rewards['shapes']),
                                   num_completions=2, eta=1.0, include_rollout=True))
    cfg.group_size = 2
    cfg.train_cfg.samples_per_rank = 4
    cfg.train_cfg.max_iters = 2
    cfg.default_hooks.checkpoint.interval = 2
    cfg = prepare_config(cfg, config_path=path, work_dir=str(tmp_path))
    cfg.experiment_name = f'test_vmr_{id(cfg)}'
    runner = build_runner(cfg)
    runner.train()
    assert runner.iter == 2
    phases = runner.message_hub.log_scalars['train/reward/shapes/vmr/prefix_phase'].data[0]
    assert list(phases) == [1.0, 0.0]
    for key in ('vmr/value_mean', 'vmr/completion_seconds', 'vmr/terminal_mean'):
        assert f'train/reward/shapes/{key}' in runner.message_hub.log_scalars, key
    assert runner.message_hub.log_scalars['train/policy/logp_mismatch_max'].current() < 1e-3


def test_outside_training_the_wrapped_sampler_and_head_draw_and_score(tmp_path):
    """Evaluation, previews and tools/sample.py draw whole samples with the family sampler and
    score them with the wrapped head (no VMR schedule, no completions); --cfg-scale reaches the
    family sampler's settings."""
    sampler = vmr_sampler(prefix_updates=3)
    assert sampler.evaluation_sampler() is sampler.inner
    head = VMRReward(head=dict(type='ShapesEvalReward', task='c2i'), num_completions=2)
    assert head.evaluation_head() is head.head
    for tool, extra in (('sample.py', ['--out', str(tmp_path / 's.png')]),
                        ('eval.py', ['--max-conditions', '1', '--samples-per-condition', '2',
                                     '--no-fidelity', '--out', str(tmp_path / 'ev')])):
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'tools', tool),
             os.path.join(ROOT, 'configs', 'var_rl', 'var_vmr_shapes.py'), '--cfg-scale', '1.5',
             *extra], cwd=ROOT, capture_output=True, text=True, timeout=300,
            env=dict(os.environ, OMP_NUM_THREADS='1'))
        assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    record = json.load(open(tmp_path / 'ev' / 'eval.json'))
    assert record['cfg_scale'] == 1.5 and 'shapes/strict' in record['results']['train']


def test_vmr_split_table_attributes_a_first_token_reward_to_every_prefix():
    """tools/vmr_split.py: a reward that only reads the first scale's token is decided by every
    prefix (explained 1, no completion disagrees); one that reads the last scale is not."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import vmr_split
    from vargo.components.samplers import NextScaleSampler

    class FirstToken(RewardHead):
        def __call__(self, rollout, ctx=None):
            return RewardOutput(scores=rollout.actions[:, 0].float())

    class LastScale(RewardHead):
        def __call__(self, rollout, ctx=None):
            return RewardOutput(scores=rollout.actions[:, -16:].float().mean(1))

    policy, sampler = tiny_policy(), NextScaleSampler(**SAMPLING, decode_images=False)
    cond = policy.encode_conditions(Conditions(class_ids=torch.arange(12) % 18))
    rows = vmr_split.split_table(policy, sampler, FirstToken(), cond, completions=4, seed=0)
    assert [r['m'] for r in rows] == [1, 2]
    assert all(math.isclose(r['explained'], 1.0) and r['disagree'] == 0.0 for r in rows)
    rows = vmr_split.split_table(policy, sampler, LastScale(), cond, completions=4, seed=0)
    assert all(r['explained'] < 0.5 and r['disagree'] > 0.5 for r in rows)


def test_mar_split_at_an_ar_step_shares_the_prefix_tokens_and_completes_the_rest():
    """VMR on MAR (configs/var_rl/README.md: a split at an AR step): the prefix phase trains the
    head transitions of the AR steps before the split; the suffix phase's G completions of one
    prefix share its committed tokens and its transitions, and differ after the split."""
    from test_mar import _policy as mar_policy
    policy = mar_policy(seed=1)
    split = 2
    s = VMRSampler(sampler=dict(type='MaskedSampler', num_iter=4, num_sampling_steps=5,
                                cfg_scale=1.0, cfg_schedule='linear', temperature=0.9,
                                logprob_cfg='rollout'),
                   split_step=split, prefix_updates=1, suffix_updates=1)
    s.check_policy(policy)
    cond = Conditions(class_ids=torch.tensor([1, 3]))
    g = 3
    pre = s.rollout(policy, cond, group_size=g, ctx=make_ctx(policy, s, 0, 2, g))
    assert pre.prefix_steps == 0 and torch.equal(pre.action_mask, pre.steps() < split)
    assert bool(pre.action_mask.any()) and not bool(pre.action_mask.all())
    ctx = make_ctx(policy, s, 1, 2, g)
    suf = s.rollout(policy, cond, group_size=g, rng=ctx.rng, ctx=ctx)
    assert suf.batch_size == 2 * g and suf.prefix_steps == split
    steps = suf.steps()
    assert torch.equal(suf.action_mask, steps >= split)
    assert torch.equal(suf.group_ids, torch.arange(2).repeat_interleave(g))
    steps = steps.view(2, g, -1)
    # a group's completions continue one prefix: the same random order, so the same AR step
    # per action (tokens in raster order, each image its own order)
    assert torch.equal(steps, steps[:, :1].expand_as(steps))
    before = steps[:, 0] < split                                                  # [2, A]
    acts = suf.actions.view(2, g, suf.num_actions, -1)
    for c in range(2):
        b = before[c]
        assert torch.equal(acts[c][:, b], acts[c][:1, b].expand(g, -1, -1))       # shared
        assert not torch.equal(acts[c][0, ~b], acts[c][1, ~b])                    # completions
    shared = s.shared_prefixes(policy, cond, ctx)
    for c in range(2):
        assert torch.equal(acts[c, 0, before[c]], shared.actions[c, before[c]])
