"""Crash recovery: kill -9 at chosen moments, resume, and end bit-identical to an
uninterrupted run; truncated, copied and missing checkpoints; strict loading on resume.

The kill points (tests/kill_injection.py) include the moments a checkpoint and the
``last_checkpoint`` pointer are being written: mid-iteration, before a finished checkpoint's
temp file is renamed, during an unfinished write, before the pointer is renamed, before an
outdated checkpoint is deleted (``max_keep_ckpts=1``, the case that used to lose every
checkpoint), and at a timed moment.
"""
import os
import shutil

import pytest
import torch

from conftest import run_python

RUN = ['train_cfg.max_iters=6', 'train_cfg.samples_per_rank=16', 'train_cfg.minibatch_samples=8',
       'default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=1',
       'default_hooks.image_grid.preview_conditions=0', 'default_hooks.image_grid.interval=1000',
       'default_hooks.curves.interval=1000']
ENV = {'OMP_NUM_THREADS': '1'}
# two optimizer steps per iteration; each chain's kills are chosen so that every one fires
CHAINS = {
    'llamagen': ('configs/grpo/llamagen_grpo_shapes.py',
                 ['step:5', 'rename:iter_3.pth', 'rename:last_checkpoint', 'remove:iter_3.pth',
                  'fsync:iter_5.pth', 'timer:1:0.15']),
    'var': ('configs/grpo/var_grpo_shapes.py',
            ['step:3', 'rename:last_checkpoint', 'timer:2:0.1', 'fsync:iter_6.pth',
             'rename:iter_6.pth']),
}


def _train(config, work_dir, *extra, resume=False, kill_at=None, check=True):
    args = ['tools/train.py', config, '--work-dir', str(work_dir), '--cfg-options', *RUN, *extra]
    if resume:
        args.insert(4, '--resume')
    if kill_at:
        args = ['tests/kill_injection.py', kill_at, '--', *args[1:]]
    return run_python(*args, check=check, env=ENV)


def _final_state(path):
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    return {k: ckpt[k] for k in ('state_dict', 'optimizer', 'param_schedulers', 'rng_states',
                                 'component_states')}


def _assert_equal(a, b, where=''):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_equal(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


@pytest.fixture(scope='module')
def references(tmp_path_factory):
    out = {}
    for name, (config, _) in CHAINS.items():
        work = tmp_path_factory.mktemp(f'ref_{name}')
        _train(config, work, 'default_hooks.checkpoint.max_keep_ckpts=2')
        out[name] = work
    return out


@pytest.mark.parametrize('family', sorted(CHAINS))
def test_kill_9_at_any_moment_then_resume_equals_an_uninterrupted_run(family, references,
                                                                       tmp_path):
    config, kills = CHAINS[family]
    for i, kill_at in enumerate(kills):
        proc = _train(config, tmp_path, resume=i > 0, kill_at=kill_at, check=False)
        assert proc.returncode == -9, (kill_at, proc.stderr[-2000:])
    final = _train(config, tmp_path, resume=True)
    assert 'Traceback' not in final.stderr
    _assert_equal(_final_state(tmp_path / 'iter_6.pth'),
                  _final_state(references[family] / 'iter_6.pth'), family)
    # no temp file left, the pointer is relative, only max_keep_ckpts=1 checkpoint kept
    names = sorted(os.listdir(tmp_path))
    assert not [n for n in names if n.startswith('.tmp_vargo_')], names
    assert [n for n in names if n.endswith('.pth')] == ['iter_6.pth'], names
    assert (tmp_path / 'last_checkpoint').read_text() == 'iter_6.pth'


def test_a_truncated_newest_checkpoint_in_a_copied_work_dir_falls_back(references, tmp_path):
    # a kill cannot truncate what vargo writes (atomic rename), but a full disk or a careless
    # copy can: the copy resumes from its own files (relative pointer), skips the truncated
    # newest checkpoint saying so, and redoes that iteration bit-exactly
    ref = references['llamagen']  # kept iter_5.pth and iter_6.pth
    before = (ref / 'iter_6.pth').stat().st_mtime_ns
    copy = tmp_path / 'copy'
    shutil.copytree(ref, copy)
    data = (copy / 'iter_6.pth').read_bytes()
    (copy / 'iter_6.pth').write_bytes(data[:len(data) // 2])
    proc = _train(CHAINS['llamagen'][0], copy, resume=True)
    log = proc.stdout + proc.stderr
    assert 'skipped iter_6.pth' in log and 'truncated' in log, log[-3000:]
    assert f'resuming from {copy}/iter_5.pth' in log, log[-3000:]
    _assert_equal(_final_state(copy / 'iter_6.pth'), _final_state(ref / 'iter_6.pth'))
    assert (ref / 'iter_6.pth').stat().st_mtime_ns == before  # the original was not touched


# -- strict loading, auto-resume edge cases (the toy family: seconds per run) ---------------
TOY = 'tests/configs/toy_grpo.py'
TOY_ENV = {**ENV, 'PYTHONPATH': 'tests'}


def _toy(work_dir, *options, resume=None, check=True):
    args = ['tools/train.py', TOY, '--work-dir', str(work_dir)]
    if resume is not None:
        args += ['--resume'] + ([] if resume == 'auto' else [str(resume)])
    if options:
        args += ['--cfg-options', *options]
    return run_python(*args, check=check, env=TOY_ENV)


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    work = tmp_path_factory.mktemp('toy')
    _toy(work, 'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=1',
         'default_hooks.checkpoint.max_keep_ckpts=2')
    return work


def _rewrite(src, dst, edit):
    ckpt = torch.load(src, map_location='cpu', weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)


def test_resume_and_load_from_check_every_key_and_shape_before_training(toy_run, tmp_path):
    def edit(ckpt):
        sd = ckpt['state_dict']
        key = sorted(sd)[0]
        sd['policy.extra.weight'] = torch.zeros(2)
        del sd[key]
        shaped = sorted(sd)[-1]
        sd[shaped] = torch.zeros(*sd[shaped].shape, 3)
        ckpt['_edited'] = (key, shaped)
    bad = tmp_path / 'bad.pth'
    _rewrite(toy_run / 'iter_2.pth', bad, edit)
    key, shaped = torch.load(bad, weights_only=True)['_edited']
    for how in ('resume', 'load_from'):
        work = tmp_path / how
        proc = (_toy(work, 'train_cfg.max_iters=3', resume=bad, check=False) if how == 'resume'
                else _toy(work, 'train_cfg.max_iters=3', f'load_from={bad}', check=False))
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith('error:') and 'Traceback' not in proc.stderr
        assert f'missing keys (1): {key}' in line and 'unexpected keys (1): policy.extra.weight' in line
        assert f'shape mismatches (1): {shaped}' in line, line
        assert not list(work.glob('iter_*.pth'))  # nothing trained


def test_a_checkpoint_of_another_family_is_refused_as_load_from(references, tmp_path):
    var_ckpt = references['var'] / 'iter_6.pth'
    proc = _train(CHAINS['llamagen'][0], tmp_path, f'load_from={var_ckpt}',
                  'train_cfg.max_iters=1', check=False)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and line.startswith('error:'), proc.stderr[-2000:]
    assert 'does not match RLAlgorithm' in line and 'policy.var.' in line and 'policy.gpt.' in line


def test_auto_resume_with_no_checkpoint_warns_and_with_only_broken_ones_refuses(toy_run, tmp_path):
    empty = tmp_path / 'empty'
    proc = _toy(empty, 'train_cfg.max_iters=1', resume='auto')
    assert 'WARNING' in proc.stdout and f'no checkpoint in {empty}; starting a new run' in proc.stdout
    broken = tmp_path / 'broken'
    shutil.copytree(toy_run, broken)
    for name in ('iter_1.pth', 'iter_2.pth'):
        (broken / name).write_bytes((broken / name).read_bytes()[:1000])
    (broken / '.tmp_vargo_abc').write_bytes(b'half a write')
    proc = _toy(broken, 'train_cfg.max_iters=3', resume='auto', check=False)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and line.startswith('error:') and 'no checkpoint in' in line
    assert 'iter_2.pth' in line and 'iter_1.pth' in line and 'Traceback' not in proc.stderr
    # a legacy absolute pointer of a copied work dir resolves to the copy's own file
    copy = tmp_path / 'copy'
    shutil.copytree(toy_run, copy)
    (copy / 'last_checkpoint').write_text(str(tmp_path / 'gone' / 'iter_2.pth'))
    (copy / '.tmp_vargo_xyz').write_bytes(b'half a write')
    proc = _toy(copy, 'train_cfg.max_iters=3', resume='auto')
    assert f'resuming from {copy}/iter_2.pth' in proc.stdout
    assert not (copy / '.tmp_vargo_xyz').exists() and 'removed 1 temporary file' in proc.stdout
