"""Faults during a run (vargo.core.faults): injected into toy runs, each must skip or stop the
run with a message naming the cause, the iteration and the fix, never with a bare traceback."""
import copy
import glob
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.optim import OptimWrapper

import fault_components  # noqa: F401  (registers the fault-injecting test components)
from conftest import ROOT
from vargo.core.faults import RunAborted, check_fault_settings, guarded_update
from vargo.core.registry import ConfigError
from vargo.core.runner import build_runner, load_config, prepare_config

TOY = os.path.join(ROOT, 'tests', 'configs', 'toy_grpo.py')
TOY_SGD = os.path.join(ROOT, 'tests', 'configs', 'toy_grpo_sgd.py')
QUIET = {'default_hooks.image_grid.interval': 1000,
         'default_hooks.image_grid.preview_conditions': 0}
_runs = iter(range(10 ** 6))


def _runner(work_dir, options=None, *, resume=None, config=TOY):
    # (a deep copy: merging pops '_delete_' from the given dicts)
    cfg = load_config(config, copy.deepcopy({**QUIET, **(options or {})}))
    cfg = prepare_config(cfg, config_path=config, work_dir=str(work_dir), resume=resume)
    cfg.experiment_name = f'run_faults_{next(_runs)}'   # MMEngine's loggers are keyed by name
    return build_runner(cfg)


def _aborted(runner) -> RunAborted:
    with pytest.raises(RunAborted) as info:
        runner.train()
    err = info.value
    assert '\n' not in str(err)        # one `error:` line
    return err


def _scalars(runner, key):
    return [float(v) for v in runner.message_hub.log_scalars[f'train/{key}'].data[0]]


def _trace(runner):
    return next(h for h in runner.hooks if type(h).__name__ == 'ParamTraceHook').trace


def _weights(path):
    state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
    return {k.replace('module.', ''): v for k, v in state.items()}


def _messages(recwarn, needle):
    return [str(w.message) for w in recwarn if needle in str(w.message)]


# -- settings --------------------------------------------------------------------------------
def test_fault_settings_are_checked_at_build_time(tmp_path):
    check_fault_settings(max_consecutive_nonfinite_steps=1, max_all_nan_reward_iters=None)
    for bad in (0, -2, True, 2.5, '3'):
        with pytest.raises(ConfigError, match=r'train_cfg.max_all_nan_reward_iters=.*int >= 1'):
            check_fault_settings(max_all_nan_reward_iters=bad)
    # before the first iteration (when the config is checked, at the latest when the loop is built)
    with pytest.raises(ConfigError, match=r'train_cfg.max_consecutive_nonfinite_steps=0'):
        _runner(tmp_path, {'train_cfg.max_consecutive_nonfinite_steps': 0}).train()
    assert not os.path.exists(tmp_path / 'last_checkpoint')


# -- the guarded optimizer step --------------------------------------------------------------
def _wrapper(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, OptimWrapper(opt, clip_grad=dict(max_norm=0.5))


def _snapshot(model, wrapper):
    params = [p.detach().clone() for p in model.parameters()]
    state = {k: {n: torch.as_tensor(v).clone() for n, v in s.items()}
             for k, s in wrapper.optimizer.state_dict()['state'].items()}
    return params, state


def _same(a, b):
    (pa, sa), (pb, sb) = a, b
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert all(torch.equal(sa[k][n], sb[k][n]) for n in sa[k])


def test_guarded_update_is_update_params_on_finite_steps_and_skips_non_finite_ones():
    (m1, w1), (m2, w2) = _wrapper(), _wrapper()
    x = torch.randn(5, 4)
    for _ in range(3):
        w1.update_params((m1(x) ** 2).mean())
        out = guarded_update(w2, (m2(x) ** 2).mean())
        assert out.skipped is None and out.params_finite
    _same(_snapshot(m1, w1), _snapshot(m2, w2))          # bit-identical, clipping included
    before = _snapshot(m2, w2)
    # a NaN loss: no backward, no step
    out = guarded_update(w2, (m2(x) ** 2).mean() * float('nan'))
    assert out.skipped == 'loss' and math.isnan(out.value)
    assert all(p.grad is None for p in m2.parameters())
    _same(before, _snapshot(m2, w2))
    # a finite loss with a NaN gradient (d sqrt(0) = inf, times 0): gradients zeroed, no step
    y = m2(x)
    loss = torch.where(torch.zeros_like(y, dtype=torch.bool), torch.sqrt(y * 0), y).mean()
    assert torch.isfinite(loss)
    out = guarded_update(w2, loss)
    assert out.skipped == 'grad_norm' and math.isnan(out.value)
    assert all(p.grad is None or not p.grad.any() for p in m2.parameters())
    _same(before, _snapshot(m2, w2))
    # the next finite step is the one update_params takes
    w1.update_params((m1(x) ** 2).mean())
    guarded_update(w2, (m2(x) ** 2).mean())
    _same(_snapshot(m1, w1), _snapshot(m2, w2))


# -- reward heads ----------------------------------------------------------------------------
def test_raising_reward_head_stops_naming_head_iteration_rows_and_resume_continues(tmp_path):
    common = {'train_cfg.max_iters': 6, 'default_hooks.checkpoint.interval': 2}
    faulty = {'rewards': dict(_delete_=True, b=dict(type='FaultyReward', fail_at_iter=4))}
    fixed = {'rewards': dict(_delete_=True, b=dict(type='FaultyReward'))}
    run = tmp_path / 'run'
    err = _aborted(_runner(run, {**common, **faulty}))
    msg = str(err)
    assert err.kind == 'reward_head_error' and err.iteration == 5
    assert msg.startswith("iteration 5/6: reward head 'b' (FaultyReward, rewards.b in the config)"
                          ' raised ValueError: injected failure: cannot score these images')
    assert 'samples 0-15 of the global batch (groups 0-3)' in msg
    assert f'its last checkpoint, {run / "iter_4.pth"}, is intact' in msg
    assert 'fix the head, then continue the run with --resume' in msg
    assert isinstance(err.__cause__, ValueError)          # chained, for --debug
    assert err.checkpoint == str(run / 'iter_4.pth')
    # the run's logger has it; the last checkpoint is the state after iteration 4, loadable
    logs = glob.glob(str(run / '*' / '*.log'))
    assert any("reward head 'b' (FaultyReward" in Path(p).read_text() for p in logs)
    assert sorted(p for p in os.listdir(run) if p.endswith('.pth')) == ['iter_2.pth', 'iter_4.pth']
    ckpt = torch.load(run / 'iter_4.pth', map_location='cpu', weights_only=True)
    assert ckpt['meta']['iter'] == 4
    # after fixing the head the run resumes and equals an uninterrupted run bit for bit
    resumed = _runner(run, {**common, **fixed}, resume='auto')
    resumed.train()
    assert resumed.iter == 6
    full = tmp_path / 'full'
    _runner(full, {**common, **fixed}).train()
    a, b = _weights(full / 'iter_6.pth'), _weights(run / 'iter_6.pth')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_all_nan_reward_head_warns_and_stops_after_n_iterations(tmp_path, recwarn):
    rewards = {'rewards': dict(_delete_=True, b=dict(type='ToyBrightnessReward'),
                               n=dict(type='AllNaNReward')),
               'custom_hooks': [dict(type='ParamTraceHook')]}
    runner = _runner(tmp_path / 'stop', {**rewards, 'train_cfg.max_all_nan_reward_iters': 2})
    err = _aborted(runner)
    warned = _messages(recwarn, "reward head 'n' (AllNaNReward)")
    assert warned == ["iteration 1/6: reward head 'n' (AllNaNReward) returned NaN for all 16 "
                      'samples (1 iteration(s) in a row); their advantage from this head is 0; '
                      'the run stops after 2 such iterations in a row '
                      '(train_cfg.max_all_nan_reward_iters)']
    assert err.kind == 'reward_all_nan' and err.iteration == 2
    assert str(err).startswith("iteration 2/6: reward head 'n' (AllNaNReward) returned NaN for "
                               'every sample in 2 iterations in a row '
                               '(train_cfg.max_all_nan_reward_iters=2)')
    # iteration 1 trained on head 'b'; the NaN scores never reached the parameters
    (weights, steps), = _trace(runner)
    assert steps == 4 and all(torch.isfinite(w).all() for w in weights.values())
    # None: warn every iteration, never stop
    recwarn.clear()
    runner = _runner(tmp_path / 'warn', {**rewards, 'train_cfg.max_iters': 3,
                                         'train_cfg.max_all_nan_reward_iters': None})
    runner.train()
    assert runner.iter == 3
    warned = _messages(recwarn, "reward head 'n' (AllNaNReward)")
    assert [w.split(':')[0] for w in warned] == ['iteration 1/3', 'iteration 2/3', 'iteration 3/3']
    assert '(3 iteration(s) in a row)' in warned[-1] and 'the run does not stop' in warned[-1]


# -- non-finite losses, gradients, parameters and rollouts -----------------------------------
def test_huge_lr_skips_non_finite_steps_and_stops_naming_the_lr(tmp_path, recwarn):
    # lr 1e30: Adam's first step moves every weight by ~1e30 (finite); the next losses overflow
    huge = {'optim_wrapper.optimizer.lr': 1e30}
    err = _aborted(_runner(tmp_path / 'a', {**huge,
                                            'train_cfg.max_consecutive_nonfinite_steps': 3}))
    skips = _messages(recwarn, 'the step is skipped')
    assert [s.split(':')[0] for s in skips] == ['iteration 1/6, optimizer step 2/4',
                                                'iteration 1/6, optimizer step 3/4']
    assert '(backward and optimizer step not run; parameters unchanged); 2 skipped in a row, ' \
           'the run stops at 3' in skips[-1]
    msg = str(err)
    assert err.kind == 'nonfinite_steps'
    assert msg.startswith('iteration 1/6, optimizer step 4/4: non-finite loss')
    assert '3 optimizer steps in a row were skipped (train_cfg.max_consecutive_nonfinite_steps=3)' \
        in msg
    assert 'lower optim_wrapper.optimizer.lr (now 1e+30)' in msg
    assert 'the policy diverged' in msg and 'The run stopped before writing any checkpoint' in msg
    # a larger budget: the skips are logged, then the diverged policy's rollout stops the run
    recwarn.clear()
    runner = _runner(tmp_path / 'b', {**huge, 'train_cfg.max_consecutive_nonfinite_steps': 10})
    err = _aborted(runner)
    assert _scalars(runner, 'nonfinite/skipped_steps') == [3.0]
    assert _scalars(runner, 'num_optimizer_steps') == [1.0]
    assert err.kind == 'nonfinite_rollout'
    assert str(err).startswith('iteration 2/6: the rollout of ToySampler has 128 non-finite '
                               'log-probs of sampled actions')
    assert "the policy's trainable weights reach |w| = 1e+30" in str(err)
    assert 'lower optim_wrapper.optimizer.lr (now 1e+30)' in str(err)


def test_sampler_error_on_a_diverged_policy_is_reported_not_an_index_error(tmp_path):
    strict = {'sampler': dict(_delete_=True, type='StrictToySampler', temperature=1.0)}
    runner = _runner(tmp_path / 'a', {**strict, 'optim_wrapper.optimizer.lr': 1e30})
    err = _aborted(runner)
    assert err.kind == 'diverged_policy' and err.iteration == 2
    assert str(err).startswith('iteration 2/6: the rollout failed in StrictToySampler '
                               '(RuntimeError: probability tensor contains')
    assert 'the policy diverged; lower optim_wrapper.optimizer.lr (now 1e+30)' in str(err)
    assert isinstance(err.__cause__, RuntimeError)
    # a sampler error on a sane policy is the sampler's own exception, with a note
    runner = _runner(tmp_path / 'b', {'sampler': dict(strict['sampler'], fail_at_call=1)})
    with pytest.raises(RuntimeError, match='injected sampler failure') as info:
        runner.train()
    assert not isinstance(info.value, RunAborted)
    note, = info.value.__notes__
    assert note.startswith('vargo: the rollout of iteration 2/6 failed in StrictToySampler; ')
    assert note.endswith('(the policy has not diverged)')


def test_non_finite_parameters_after_a_step_stop_the_run(tmp_path):
    # huge but finite gradients (norm ~1e14) times lr 1e30 overflow the SGD update
    runner = _runner(tmp_path, {
        'optim_wrapper': dict(_delete_=True, optimizer=dict(type='SGD', lr=1e30)),
        'regularizers.huge': dict(type='ScaledLogpLoss', scale=1e15)})
    err = _aborted(runner)
    assert err.kind == 'nonfinite_params'
    assert str(err).startswith('iteration 1/6, optimizer step 1/4: the parameters are non-finite '
                               'after the optimizer step (max |w| = ')
    assert 'lower optim_wrapper.optimizer.lr (now 1e+30) or set ' \
           'optim_wrapper.clip_grad=dict(max_norm=1.0)' in str(err)


def test_nan_loss_once_skips_one_step_and_training_continues(tmp_path, recwarn):
    runner = _runner(tmp_path, {
        'regularizers.nan': dict(type='NaNLossOnce', at_call=2), 'train_cfg.mu': 1,
        'train_cfg.minibatch_samples': None, 'custom_hooks': [dict(type='ParamTraceHook')]})
    runner.train()
    assert runner.iter == 6 and (tmp_path / 'iter_6.pth').exists()
    assert _scalars(runner, 'nonfinite/skipped_steps') == [0, 0, 1, 0, 0, 0]
    assert _scalars(runner, 'num_optimizer_steps') == [1, 1, 0, 1, 1, 1]
    warned = _messages(recwarn, 'the step is skipped')
    assert warned == ['iteration 3/6, optimizer step 1/1: non-finite loss (nan); the step is '
                      'skipped (backward and optimizer step not run; parameters unchanged); 1 '
                      'skipped in a row, the run stops at 5 '
                      '(train_cfg.max_consecutive_nonfinite_steps)']
    trace = _trace(runner)
    assert [steps for _, steps in trace] == [1, 2, 2, 3, 4, 5]
    w = [weights for weights, _ in trace]
    assert all(torch.equal(w[2][k], w[1][k]) for k in w[1])        # the skipped step: unchanged
    for i in (1, 3):                                                 # the others moved
        assert any(not torch.equal(w[i][k], w[i - 1][k]) for k in w[i])
    assert all(torch.isfinite(t).all() for t in w[-1].values())


@pytest.mark.distributed
def test_ranks_agree_to_skip_a_step_whose_loss_is_nan_on_one_rank(tmp_path):
    """DDP: a NaN loss on rank 1 only skips the step on both ranks; the run equals the
    1-process run that skips the same step (SGD, one step per iteration)."""
    common = {'train_cfg.max_iters': 4, 'train_cfg.mu': 1, 'train_cfg.minibatch_samples': None,
              'default_hooks.checkpoint.interval': 4}
    cfg = tmp_path / 'toy_nan_on_rank1.py'
    cfg.write_text(f'_base_ = [{TOY_SGD!r}]\n'
                   "custom_imports = dict(imports=['toy_components', 'fault_components'], "
                   'allow_failed_imports=False)\n'
                   "regularizers = dict(nan=dict(type='NaNLossOnce', at_call=2, rank=1))\n")
    env = {**os.environ, 'PYTHONPATH': os.path.join(ROOT, 'tests') + os.pathsep
           + os.environ.get('PYTHONPATH', ''), 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
    two = tmp_path / 'two'
    opts = [f'{k}={v}' for k, v in {**common, **QUIET, 'train_cfg.samples_per_rank': 8}.items()]
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         os.path.join(ROOT, 'tools', 'train.py'), str(cfg), '--work-dir', str(two),
         '--launcher', 'pytorch', '--cfg-options', *opts],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    # rank 0's own loss was finite: it skipped because rank 1's was not
    assert 'iteration 3/4, optimizer step 1/1: non-finite loss on another rank' in out
    assert 'iteration 3/4, optimizer step 1/1: non-finite loss (nan)' in out
    assert 'the step is skipped on every rank' in out
    one = tmp_path / 'one'
    _runner(one, {**common, 'train_cfg.samples_per_rank': 16,
                  'regularizers.nan': dict(type='NaNLossOnce', at_call=2)}, config=TOY_SGD).train()
    a, b = _weights(one / 'iter_4.pth'), _weights(two / 'iter_4.pth')
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5, msg=k)


def test_train_py_reports_a_run_fault_as_one_error_line(tmp_path):
    # the command line: exit 1 (not a config error), one line naming the head, no traceback
    from conftest import run_python
    child = tmp_path / 'faulty.py'
    child.write_text(f"_base_ = [{TOY!r}]\n"
                     "custom_imports = dict(imports=['toy_components', 'fault_components'])\n"
                     "rewards = dict(jpeg=dict(_delete_=True, type='FaultyReward', "
                     "fail_at_iter=1))\n")
    work = tmp_path / 'work'
    proc = run_python('tools/train.py', str(child), '--work-dir', str(work), '--cfg-options',
                      'default_hooks.checkpoint.interval=1', check=False,
                      env={'PYTHONPATH': os.path.join(ROOT, 'tests'), 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith('error: iteration 2/') and "reward head 'jpeg' (FaultyReward" in line
    assert (work / 'iter_1.pth').exists() and not (work / 'iter_2.pth').exists()
