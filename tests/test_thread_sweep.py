"""tools/thread_sweep.py: the summary's arithmetic, the child environment per wait policy, and one
real cell next to the busy neighbour (which must be gone afterwards). No timing is asserted."""
import importlib.util
import json
import os

import pytest

from conftest import ROOT

TINY_CFG = os.path.join(ROOT, 'configs', 'grpo', 'llamagen-tiny_grpo_jpeg.py')
TINY_OPTIONS = ['policy.arch.dim=64', 'policy.arch.n_layer=2',
                'policy.tokenizer_checkpoint=/nonexistent/vq.pt']


def _tool():
    spec = importlib.util.spec_from_file_location('vargo_tools_thread_sweep',
                                                  os.path.join(ROOT, 'tools', 'thread_sweep.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summary_medians_fastest_setting_and_slowdown():
    rounds = {(1, 'default', 'idle'): [3.0, 2.0, 2.5], (2, 'default', 'idle'): [1.6, 2.0],
              (1, 'default', 'busy'): [3.0, 3.5], (2, 'default', 'busy'): [8.0, 6.0],
              (2, 'PASSIVE', 'busy'): [3.6, 3.0]}
    s = _tool().summarise(rounds)
    assert s['cells'][(1, 'default', 'idle')] == {'median_s': 2.5, 'min_s': 2.0, 'max_s': 3.0,
                                                  'rounds': [3.0, 2.0, 2.5]}
    assert s['cells'][(2, 'default', 'busy')]['median_s'] == 7.0
    assert s['fastest']['idle'] == {'threads': 2, 'wait_policy': 'default', 'median_s': 1.8}
    assert s['fastest']['busy'] == {'threads': 1, 'wait_policy': 'default', 'median_s': 3.25}
    assert s['busy_over_idle'] == pytest.approx({'1|default': 3.25 / 2.5, '2|default': 7.0 / 1.8})
    # no idle cell for PASSIVE: no ratio is invented
    assert '2|PASSIVE' not in s['busy_over_idle']


def test_child_environment_per_wait_policy(monkeypatch):
    tool = _tool()
    monkeypatch.setenv('OMP_WAIT_POLICY', 'ACTIVE')
    default = tool.cell_env('default', 2)
    assert 'OMP_WAIT_POLICY' not in default and default['OMP_NUM_THREADS'] == '2'
    assert tool.cell_env('PASSIVE', 1)['OMP_WAIT_POLICY'] == 'PASSIVE'
    monkeypatch.setenv('GOMP_SPINCOUNT', '7')
    spin = tool.cell_env('spin=20000', 2)
    assert spin['GOMP_SPINCOUNT'] == '20000' and 'OMP_WAIT_POLICY' not in spin
    assert 'GOMP_SPINCOUNT' not in tool.cell_env('PASSIVE', 2)
    assert tool.parse_args(['c.py', '--wait-policies', 'spin=0300', 'default']).wait_policies \
        == ['spin=300', 'default']


def test_bad_arguments_are_refused(capsys):
    tool = _tool()
    for argv in (['c.py', '--threads', '0'], ['c.py', '--rounds', '0'],
                 ['c.py', '--wait-policies', 'SPIN'], ['c.py', '--wait-policies', 'spin=-1'],
                 ['c.py', '--wait-policies', 'spin=']):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)
    assert tool.main(['/nonexistent/config.py']) == 2
    assert 'does not exist' in capsys.readouterr().err


def test_default_batch_is_the_configs_iteration():
    tool = _tool()
    assert tool.config_batch(os.path.join(ROOT, 'configs', 'grpo', 'llamagen_grpo_shapes.py'),
                             []) == 128
    assert tool.config_batch(TINY_CFG, ['train_cfg.samples_per_rank=8']) == 8


def test_one_busy_cell_end_to_end(tmp_path, capsys):
    out = tmp_path / 'sweep.json'
    assert _tool().main([TINY_CFG, '--threads', '1', '--wait-policies', 'PASSIVE', '--loads',
                         'busy', '--rounds', '1', '--repeat', '1', '--batch', '4',
                         '--gemm-size', '64', '--out', str(out),
                         '--cfg-options', *TINY_OPTIONS]) == 0
    printed = capsys.readouterr().out
    assert 'fastest busy: 1 thread(s), PASSIVE' in printed
    res = json.loads(out.read_text())
    (cell,) = res['cells']
    assert (cell['threads'], cell['wait_policy'], cell['load']) == (1, 'PASSIVE', 'busy')
    assert cell['median_s'] > 0 and res['batch'] == 4 and res['cfg_scale'] == 1.0
    (rec,) = res['records']
    assert rec['samples'] == 4 and len(rec['rollout_s_values']) == 1
    # the neighbour was stopped and reaped: its pid is gone, or reused by something else
    cmdline = f'/proc/{rec["busy_pid"]}/cmdline'
    assert not os.path.exists(cmdline) or 'tanh(a @ a)' not in open(cmdline).read()
