"""End-to-end runner tests on the toy family: training, resume equality, 2-process equality."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

TOY = os.path.join(ROOT, 'tests', 'configs', 'toy_grpo.py')
TRAIN = os.path.join(ROOT, 'tools', 'train.py')


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.path.join(ROOT, 'tests') + os.pathsep + env.get('PYTHONPATH', '')
    env['HF_HUB_OFFLINE'] = '1'
    return env


def _train(work_dir, *options, resume=False, nproc=1, config=TOY):
    if nproc == 1:
        cmd = [sys.executable, TRAIN, config, '--work-dir', str(work_dir)]
    else:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
               f'--nproc_per_node={nproc}', TRAIN, config, '--work-dir', str(work_dir),
               '--launcher', 'pytorch']
    if resume:
        cmd.append('--resume')
    if options:
        cmd += ['--cfg-options', *options]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _weights(path):
    state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
    return {k.replace('module.', ''): v for k, v in state.items()}


def test_train_end_to_end_writes_logs_grids_and_checkpoints(tmp_path):
    _train(tmp_path, 'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=2')
    files = {os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs}
    for name in ('iter_2.pth', 'iter_4.pth', 'last_checkpoint', 'curves.png', 'reward_curve.png',
                 'grids/preview_before.png', 'grids/preview_after.png',
                 'grids/samples_iter000002.png', 'grids/samples_iter000004.png'):
        assert name in files, sorted(files)
    assert any(f.endswith('scalars.json') for f in files)
    ckpt = torch.load(tmp_path / 'iter_4.pth', map_location='cpu', weights_only=True)
    # the frozen reference is not stored; RNG and component states are
    assert not any(k.startswith('reference') for k in ckpt['state_dict'])
    assert len(ckpt['rng_states']) == 1 and 'component_states' in ckpt


def test_resume_is_bit_exact(tmp_path):
    full, part = tmp_path / 'full', tmp_path / 'part'
    _train(full, 'train_cfg.max_iters=6', 'default_hooks.checkpoint.interval=3')
    _train(part, 'train_cfg.max_iters=3', 'default_hooks.checkpoint.interval=3')
    _train(part, 'train_cfg.max_iters=6', 'default_hooks.checkpoint.interval=3', resume=True)
    a, b = _weights(full / 'iter_6.pth'), _weights(part / 'iter_6.pth')
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oa = torch.load(full / 'iter_6.pth', weights_only=True)['optimizer']
    ob = torch.load(part / 'iter_6.pth', weights_only=True)['optimizer']
    for pid, st in oa['state'].items():
        assert torch.equal(st['exp_avg'], ob['state'][pid]['exp_avg'])


def test_new_run_refuses_a_work_dir_with_checkpoints(tmp_path):
    _train(tmp_path, 'train_cfg.max_iters=1', 'default_hooks.checkpoint.interval=1')
    before = sorted(os.listdir(tmp_path))
    proc = subprocess.run([sys.executable, TRAIN, TOY, '--work-dir', str(tmp_path)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert '--resume' in proc.stderr and 'earlier run' in proc.stderr
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.distributed
def test_two_processes_equal_one_process(tmp_path):
    # SGD: Adam's first step is ~sign(g) and amplifies float-order noise in near-zero gradients.
    sgd = os.path.join(ROOT, 'tests', 'configs', 'toy_grpo_sgd.py')
    common = ['train_cfg.max_iters=3', 'train_cfg.minibatch_samples=None', 'train_cfg.mu=2',
              'default_hooks.checkpoint.interval=3']
    one, two = tmp_path / 'one', tmp_path / 'two'
    _train(one, 'train_cfg.samples_per_rank=16', *common, config=sgd)
    _train(two, 'train_cfg.samples_per_rank=8', *common, nproc=2, config=sgd)
    a, b = _weights(one / 'iter_3.pth'), _weights(two / 'iter_3.pth')
    assert a.keys() == b.keys()
    moved = max((a[k] - _initial(k, a[k])).abs().max().item() for k in a if 'frozen' not in k)
    assert moved > 1e-3  # the runs trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5, msg=k)
    ckpt = torch.load(two / 'iter_3.pth', weights_only=True)
    assert len(ckpt['rng_states']) == 2


def _initial(key, like):
    # ToyPolicy's initial weights under the runner's seed 0
    from mmengine.runner import set_random_seed
    import toy_components
    set_random_seed(0)
    policy = toy_components.ToyPolicy(num_classes=4, side=4, vocab_size=8)
    return policy.state_dict()[key.replace('policy.', '', 1)]


def test_grpo_raises_the_reward_end_to_end(tmp_path):
    """The whole pipeline has the right sign: GRPO increases a simple reward on the toy policy."""
    from vargo.core.runner import build_runner, load_config, prepare_config
    cfg = load_config(TOY, {'rewards': dict(_delete_=True, b=dict(type='ToyBrightnessReward')),
                            'train_cfg.max_iters': 25, 'default_hooks.checkpoint.interval': 100,
                            'default_hooks.image_grid.preview_conditions': 0})
    cfg = prepare_config(cfg, config_path=TOY, work_dir=str(tmp_path))
    cfg.experiment_name = 'grpo_raises_reward'
    runner = build_runner(cfg)
    runner.train()
    history = runner.message_hub.log_scalars['train/reward/b/mean'].data[0]
    first, last = history[:5].mean(), history[-5:].mean()
    assert last > first + 0.05, (first, last)


def test_make_grid_enlarges_small_images_by_whole_pixels():
    from vargo.core.hooks import make_grid
    imgs = torch.rand(6, 3, 32, 32)
    grid = make_grid(imgs, nrow=3, pad=2)                     # 32 px -> 3 x 32 = 96 px cells
    assert grid.shape == (2 * (96 + 2) + 2, 3 * (96 + 2) + 2, 3)
    cell = grid[2:98, 2:98]                                    # image 0, each pixel a 3x3 block
    expect = (imgs[0].permute(1, 2, 0).numpy() * 255).round().astype('uint8')
    assert (cell[::3, ::3] == expect).all() and (cell[1::3, 2::3] == expect).all()
    assert make_grid(imgs, nrow=3, min_cell=0).shape == (2 * 34 + 2, 3 * 34 + 2, 3)
    assert make_grid(torch.rand(2, 3, 128, 128)).shape[0] == 128 + 4   # large: unchanged


def test_config_text_is_formatted_once_per_run(tmp_path, monkeypatch):
    """MMEngine formats the config (yapf, ~2 CPU-s for a large config) for the log, the dumped
    copy and every checkpoint's meta: a run formats it once and reuses the text."""
    import mmengine.config.config as mmengine_config
    import toy_components  # noqa: F401  (registers the toy family)
    from vargo.core.runner import build_runner, load_config, prepare_config
    calls = []
    real = mmengine_config.FormatCode

    def counting(text, **kwargs):
        calls.append(len(text))
        return real(text, **kwargs)
    monkeypatch.setattr(mmengine_config, 'FormatCode', counting)
    cfg = load_config(TOY, cfg_options={'train_cfg.max_iters': 3,
                                        'default_hooks.checkpoint.interval': 1})
    runner = build_runner(prepare_config(cfg, config_path=TOY, work_dir=str(tmp_path)))
    runner.train()
    assert len(calls) == 1, calls
    dumped = (tmp_path / os.path.basename(TOY)).read_text()
    meta = torch.load(tmp_path / 'iter_3.pth', map_location='cpu', weights_only=True)['meta']
    assert dumped == runner.cfg.pretty_text == meta['cfg']
