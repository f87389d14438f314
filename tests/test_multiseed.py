"""tools/multiseed.py: the summary (mean, sample std, per-seed values, curves) from per-run files,
its argument checks, arms that are --cfg-options variants (the options reach both command lines
and run.json), evaluation protocols (one block each; mixed protocols flagged and their verdicts
invalid), --keep-scalars, and a real comparison of two tiny configs over two seeds."""
import json
import math
import statistics
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT, run_python

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'tools'))
import multiseed  # noqa: E402

CFG = 'configs/grpo/var_grpo_shapes.py'


def _write_run(out, arm, seed, strict, rewards, protocol=None):
    res = out / arm / f'seed{seed}'
    res.mkdir(parents=True)
    (res / 'run.json').write_text(json.dumps(dict(arm=arm, seed=seed, threads=1)))
    record = dict(results=dict(eval=dict(strict=strict, num_samples=64, time_s=3.0)))
    if protocol is not None:
        record['protocol'] = protocol
    (res / 'eval.json').write_text(json.dumps(record))
    (res / 'scalars.json').write_text('\n'.join(
        json.dumps({'reward/shapes/mean': r, 'step': i + 1}) for i, r in enumerate(rewards)))


def test_summary_is_mean_and_sample_std_over_seeds(tmp_path):
    for seed, (s, r) in enumerate([(0.5, [0.1, 0.2]), (0.7, [0.3, 0.4]), (0.9, [0.2, 0.6])]):
        _write_run(tmp_path, 'grpo', seed, s, r)
    _write_run(tmp_path, 'panw', 0, 0.8, [0.2, 0.3])
    args = multiseed.parse_args(['--arm', f'grpo={CFG}', '--arm', f'panw={CFG}', '--out',
                                 str(tmp_path), '--summarise-only'])
    summary = multiseed.summarise(args)
    grpo = summary['metrics']['eval/strict']['grpo']
    assert math.isclose(grpo['mean'], 0.7) and math.isclose(grpo['std'], 0.2)
    assert grpo['n'] == 3 and grpo['per_seed'] == {0: 0.5, 1: 0.7, 2: 0.9}
    assert summary['metrics']['eval/strict']['panw']['n'] == 1
    assert math.isnan(summary['metrics']['eval/strict']['panw']['std'])
    assert 'eval/time_s' not in summary['metrics']          # timings are not results
    md = (tmp_path / 'summary.md').read_text()
    assert '| eval/strict | 0.7 ± 0.2 (n=3) | 0.8 ± nan (n=1) |' in md
    assert (tmp_path / 'curves.png').stat().st_size > 0


@pytest.mark.parametrize('argv, message', [
    (['--arm', 'nosuch.py'], 'NAME=CONFIG'),
    (['--arm', f'a={CFG}', '--arm', f'a={CFG}'], 'used twice'),
    (['--arm', f'a={CFG}', '--jobs', '0'], '--jobs'),
])
def test_bad_arguments_are_named(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        multiseed.parse_args(argv + ['--out', str(tmp_path)])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('metric, a, b, outcome', [
    ('eval/shapes/strict', [0.50, 0.52, 0.51], [0.80, 0.82, 0.81], 'better'),
    ('eval/fidelity/fid', [5.0, 5.1, 5.2], [8.0, 8.1, 8.2], 'worse'),          # lower is better
    ('eval/fidelity/fid', [8.0, 8.1, 8.2], [5.0, 5.1, 5.2], 'better'),
    ('eval/shapes/strict', [0.5, 0.7, 0.6], [0.55, 0.75, 0.5], 'no difference'),
    ('eval/shapes/strict', [0.5], [0.9], 'undecided'),
])
def test_verdicts_follow_the_bootstrap_interval(metric, a, b, outcome):
    v = multiseed.verdict(metric, 'grpo', 'panw', a, b)
    assert v['outcome'] == outcome, v['text']
    lo, hi = v['ci95']
    assert lo <= v['difference'] <= hi
    assert multiseed.bootstrap_difference(a, b) == multiseed.bootstrap_difference(a, b)


def test_summary_writes_the_verdicts(tmp_path):
    for seed, s in enumerate([0.50, 0.52, 0.51]):
        _write_run(tmp_path, 'grpo', seed, s, [0.1])
    for seed, s in enumerate([0.80, 0.82, 0.81]):
        _write_run(tmp_path, 'panw', seed, s, [0.2])
    args = multiseed.parse_args(['--arm', f'grpo={CFG}', '--arm', f'panw={CFG}', '--out',
                                 str(tmp_path), '--summarise-only',
                                 '--verdict-metrics', 'eval/strict'])
    summary = multiseed.summarise(args)
    assert [v['outcome'] for v in summary['verdicts']] == ['better']
    assert 'panw beats grpo on eval/strict by 0.3' in (tmp_path / 'summary.md').read_text()


def test_no_verdict_below_three_seeds():
    v = multiseed.verdict('eval/shapes/strict', 'grpo', 'panw', [0.50, 0.51], [0.80, 0.81])
    assert v['outcome'] == 'undecided' and 'fewer than 3 seeds' in v['text']


# -- evaluation protocols ----------------------------------------------------------------------
def _protocol(samples=32, commit='abc'):
    return dict(version=1, sampler=dict(type='ARSampler', cfg_scale=1.0, logprob_cfg='rollout'),
                sampling=dict(seed=0, samples_per_condition=samples, max_conditions=None,
                              batch_conditions=16),
                splits=dict(train=dict(type='ShapesClassDataset')), fidelity=None,
                vargo_commit=commit)


def _summarise(tmp_path, *extra):
    args = multiseed.parse_args(['--arm', f'grpo={CFG}', '--arm', f'panw={CFG}', '--out',
                                 str(tmp_path), '--summarise-only',
                                 '--verdict-metrics', 'eval/strict', *extra])
    return multiseed.summarise(args), (tmp_path / 'summary.md').read_text()


def test_one_protocol_block_when_every_run_shares_it(tmp_path):
    for seed in range(3):     # another commit is the same protocol
        _write_run(tmp_path, 'grpo', seed, 0.5 + seed / 100, [0.1], _protocol(commit=str(seed)))
        _write_run(tmp_path, 'panw', seed, 0.8 + seed / 100, [0.2], _protocol())
    summary, md = _summarise(tmp_path)
    assert not summary['protocols']['differ'] and len(summary['protocols']['groups']) == 1
    assert 'WARNING' not in md and md.count('evaluation protocol:') == 1
    assert 'Every run was evaluated under one protocol (grpo seed 0, grpo seed 1' in md
    assert '32 samples per condition' in md
    assert [v['outcome'] for v in summary['verdicts']] == ['better']


def test_mixed_protocols_are_flagged_and_void_the_verdicts(tmp_path, capsys):
    for seed in range(3):
        _write_run(tmp_path, 'grpo', seed, 0.5 + seed / 100, [0.1], _protocol(samples=32))
        _write_run(tmp_path, 'panw', seed, 0.8 + seed / 100, [0.2], _protocol(samples=8))
    summary, md = _summarise(tmp_path)
    check = summary['protocols']
    assert check['differ'] and check['differences'] == ['sampling.samples_per_condition']
    assert md.startswith('**WARNING: the runs were evaluated under 2 different evaluation '
                         'protocols (they differ in sampling.samples_per_condition)')
    assert md.count('evaluation protocol:') == 2
    assert 'Protocol 1 of 2 (grpo seed 0, grpo seed 1, grpo seed 2)' in md
    assert 'Protocol 2 of 2 (panw seed 0, panw seed 1, panw seed 2)' in md
    (v,) = summary['verdicts']
    assert v['outcome'] == 'invalid' and 'INVALID' in v['text'] and 'beats' not in md
    assert multiseed.main(['--arm', f'grpo={CFG}', '--arm', f'panw={CFG}', '--out',
                           str(tmp_path), '--summarise-only']) == 0
    assert 'WARNING: the runs were evaluated under 2' in capsys.readouterr().err


def test_a_head_scored_in_one_arm_only_voids_only_its_own_metrics(tmp_path):
    """LOO-FID's arm scores its FID head too: that changes the protocol's ``scored_heads`` but
    not ShapesEval's or the fidelity metrics, whose verdicts stay valid; the extra head's own
    metrics (and a sampler difference, for every metric) stay INVALID."""
    assert multiseed.relevant_differences(['scored_heads.fid'], 'train/shapes/strict') == []
    assert multiseed.relevant_differences(['scored_heads.fid'], 'train/fid/mean') == \
        ['scored_heads.fid']
    assert multiseed.relevant_differences(['scored_heads.fid', 'sampler.cfg_scale'],
                                          'train/fidelity/fid') == ['sampler.cfg_scale']
    heads = dict(shapes='ShapesEvalReward')
    for seed in range(3):
        _write_run(tmp_path, 'grpo', seed, 0.5 + seed / 100, [0.1],
                   dict(_protocol(), scored_heads=heads))
        _write_run(tmp_path, 'panw', seed, 0.8 + seed / 100, [0.2],
                   dict(_protocol(), scored_heads=dict(heads, fid='LooFidReward')))
    summary, md = _summarise(tmp_path)
    assert summary['protocols']['differences'] == ['scored_heads.fid']
    (v,) = summary['verdicts']                 # eval/strict: not a metric of the fid head
    assert v['outcome'] == 'better' and md.startswith('**WARNING')


def test_runs_without_a_protocol_are_named(tmp_path):
    _write_run(tmp_path, 'grpo', 0, 0.5, [0.1], _protocol())
    _write_run(tmp_path, 'panw', 0, 0.8, [0.2])
    summary, md = _summarise(tmp_path)
    assert summary['protocols']['missing'] == ['panw seed 0']
    assert 'so not checked: panw seed 0' in md


# -- arms that are --cfg-options variants ----------------------------------------------------
def test_arm_options_parse_and_are_checked(tmp_path, capsys):
    args = multiseed.parse_args(['--arm', f'a={CFG}', '--arm', f'b={CFG}', 'x.y=1', 'z=[1,2]',
                                 '--cfg-options', 'train_cfg.max_iters=2', '--out', str(tmp_path)])
    assert args.arms == {'a': CFG, 'b': CFG}
    assert args.arm_options == {'a': [], 'b': ['x.y=1', 'z=[1,2]']}
    assert multiseed._arm_options(args, 'b') == ['train_cfg.max_iters=2', 'x.y=1', 'z=[1,2]']
    for argv, message in ((['--arm', f'b={CFG}', 'novalue'], "'novalue' is not KEY=VALUE"),
                          (['--arm', f'b={CFG}', 'randomness.seed=3'], 'set by --seeds'),
                          (['--arm', f'a={CFG}', '--cfg-options', 'randomness.seed=3'],
                           'set by --seeds')):
        with pytest.raises(SystemExit):
            multiseed.parse_args(argv + ['--out', str(tmp_path)])
        assert message in capsys.readouterr().err


def _fake_subprocess(calls):
    """Stands in for train.py / eval.py: records the command, writes what they would."""
    real = subprocess.run

    def run(cmd, **kwargs):
        if cmd[0] != sys.executable:
            return real(cmd, **kwargs)                       # git
        calls.append(cmd)
        out = cmd[cmd.index('--out') + 1] if '--out' in cmd else None
        if cmd[1].endswith('train.py'):
            work = cmd[cmd.index('--work-dir') + 1]
            os.makedirs(os.path.join(work, 't', 'vis_data'))
            with open(os.path.join(work, 'last_checkpoint'), 'w') as f:
                f.write('iter_2.pth')
            with open(os.path.join(work, 't', 'vis_data', 'scalars.json'), 'w') as f:
                for step in (1, 2):
                    f.write(json.dumps({'reward/r/mean': 0.1 * step, 'reward/r/std': 0.2,
                                        'kl/mean': 0.01, 'time': 3.0, 'step': step}) + '\n')
        else:
            os.makedirs(out)
            with open(os.path.join(out, 'eval.json'), 'w') as f:
                json.dump(dict(results=dict(train=dict(strict=0.5))), f)
        return SimpleNamespace(returncode=0)
    return run


def test_arm_options_reach_training_evaluation_and_run_json(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(multiseed.subprocess, 'run', _fake_subprocess(calls))
    args = multiseed.parse_args([
        '--arm', f'base={CFG}', '--arm', f'lr3={CFG}', 'optim_wrapper.optimizer.lr=3e-4',
        '--cfg-options', 'train_cfg.max_iters=2', '--seeds', '0', '--out', str(tmp_path),
        '--keep-scalars', 'reward/', 'kl/mean'])
    base = multiseed.run_one(args, 'base', CFG, 0)
    variant = multiseed.run_one(args, 'lr3', CFG, 0)
    train, evaluate = calls[2], calls[3]                     # the variant's two commands
    for cmd in (train, evaluate):
        opts = cmd[cmd.index('--cfg-options') + 1:]
        assert opts[-2:] == ['train_cfg.max_iters=2', 'optim_wrapper.optimizer.lr=3e-4']
    assert 'optim_wrapper.optimizer.lr=3e-4' not in calls[0] + calls[1]
    assert train[train.index('--cfg-options') + 1] == 'randomness.seed=0'
    assert variant['arm_options'] == ['optim_wrapper.optimizer.lr=3e-4'] and \
        base['arm_options'] == []
    assert variant['cfg_options'] == ['train_cfg.max_iters=2', 'optim_wrapper.optimizer.lr=3e-4']
    assert json.loads((tmp_path / 'lr3' / 'seed0' / 'run.json').read_text()) == variant
    rows = [json.loads(line) for line in open(tmp_path / 'lr3' / 'seed0' / 'scalars.json')]
    assert rows[1] == {'reward/r/mean': 0.2, 'reward/r/std': 0.2, 'kl/mean': 0.01, 'step': 2}
    # a finished run is reused only under the same definition
    assert multiseed.run_one(args, 'lr3', CFG, 0) == variant and len(calls) == 4
    args.arm_options['lr3'] = ['optim_wrapper.optimizer.lr=1e-3']
    with pytest.raises(RuntimeError, match='use another arm name or --out'):
        multiseed.run_one(args, 'lr3', CFG, 0)
    summary = multiseed.summarise(args)
    assert summary['arm_options']['lr3'] == ['optim_wrapper.optimizer.lr=1e-3']
    assert f'- `lr3`: `{CFG}` with `optim_wrapper.optimizer.lr=1e-3`' in \
        (tmp_path / 'summary.md').read_text()


def test_merged_scalars_of_a_resumed_run(tmp_path):
    """An interrupted launch logged steps 1-5 (checkpoint at 3); the resumed one logs 4-6."""
    first, second = tmp_path / 'a.json', tmp_path / 'b.json'
    first.write_text(''.join(json.dumps({'x': 1.0, 'step': s}) + '\n' for s in range(1, 6)))
    second.write_text(''.join(json.dumps({'x': 2.0, 'step': s}) + '\n' for s in range(4, 7)))
    multiseed.merge_scalars([str(first), str(second)], str(tmp_path / 'm.json'))
    rows = [json.loads(line) for line in open(tmp_path / 'm.json')]
    assert [(r['step'], r['x']) for r in rows] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0),
                                                   (5, 2.0), (6, 2.0)]


def test_an_interrupted_run_resumes(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(multiseed.subprocess, 'run', _fake_subprocess(calls))
    args = multiseed.parse_args(['--arm', f'a={CFG}', '--seeds', '0', '--out', str(tmp_path)])
    work = tmp_path / 'work' / 'a' / 'seed0'
    (work / 'first' / 'vis_data').mkdir(parents=True)     # an earlier launch: steps 1-3
    (work / 'first' / 'vis_data' / 'scalars.json').write_text(
        ''.join(json.dumps({'reward/r/mean': 9.0, 'step': s}) + '\n' for s in (1, 2, 3)))
    (work / 'last_checkpoint').write_text('iter_1.pth')
    (tmp_path / 'work' / 'a' / 'seed0.train.log').write_text('first launch\n')
    record = multiseed.run_one(args, 'a', CFG, 0)
    train = calls[0]
    assert '--resume' in train and train.index('--resume') < train.index('--cfg-options')
    assert record['resumed'] is True
    rows = [json.loads(line) for line in open(tmp_path / 'a' / 'seed0' / 'scalars.json')]
    assert [r['step'] for r in rows] == [1, 2] and rows[0]['reward/r/mean'] == 0.1
    # the log of the first launch is kept
    assert (tmp_path / 'work' / 'a' / 'seed0.train.log').read_text().startswith('first launch')


def test_re_evaluate_runs_only_the_evaluation_again(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(multiseed.subprocess, 'run', _fake_subprocess(calls))
    args = multiseed.parse_args(['--arm', f'a={CFG}', '--seeds', '0', '--out', str(tmp_path)])
    first = multiseed.run_one(args, 'a', CFG, 0)
    assert [c[1].rsplit('/', 1)[-1] for c in calls] == ['train.py', 'eval.py']
    (tmp_path / 'a' / 'seed0' / 'eval.json').write_text('{"results": {}}')   # an old one
    args = multiseed.parse_args(['--arm', f'a={CFG}', '--seeds', '0', '--out', str(tmp_path),
                                 '--re-evaluate'])
    import shutil
    shutil.rmtree(tmp_path / 'work' / 'a' / 'seed0' / 'eval')
    ckpt = tmp_path / 'work' / 'a' / 'seed0' / 'iter_2.pth'
    ckpt.write_bytes(b'')                                  # the fake training wrote none
    again = multiseed.run_one(args, 'a', CFG, 0)
    assert [c[1].rsplit('/', 1)[-1] for c in calls] == ['train.py', 'eval.py', 'eval.py']
    assert calls[2][2:4] == [CFG, str(tmp_path / 'work' / 'a' / 'seed0' / 'iter_2.pth')]
    assert again['train_command'] == first['train_command'] and 're_evaluated_commit' in again
    assert json.loads((tmp_path / 'a' / 'seed0' / 'eval.json').read_text())['results'] == \
        {'train': {'strict': 0.5}}
    ckpt.unlink()
    with pytest.raises(RuntimeError, match='needs the checkpoint'):
        multiseed.run_one(args, 'a', CFG, 0)


def test_stability_numbers_from_the_training_log():
    g = [(i, 1.0) for i in range(1, 21)]
    g[4] = (5, 3.5)                   # a spike (> 3 x median 1.0)
    g[9] = (10, 2.9)                  # not one
    kl = [(i, 0.01 * i) for i in range(1, 21)]
    ent = [(i, 1.0 if i <= 10 else 0.5) for i in range(1, 21)]
    rew = [(i, 0.0 if i <= 10 else 1.0) for i in range(1, 21)]
    secs = [(i, 30.0 + (i % 3)) for i in range(1, 21)]
    m = multiseed.stability_metrics({'grad_norm': g, 'kl/mean': kl, 'entropy/mean': ent,
                                     'reward/shapes/mean': rew, 'time': secs,
                                     'reward/shapes/clause/count': rew})
    assert m['log/grad_norm_spikes'] == 1.0 and m['log/grad_norm_max'] == 3.5
    assert m['log/grad_norm_mean'] == pytest.approx((18 + 3.5 + 2.9) / 20)
    assert m['log/grad_norm_var'] == pytest.approx(statistics.variance([v for _, v in g]))
    assert m['log/kl_last'] == pytest.approx(0.01 * statistics.fmean(range(11, 21)))
    assert m['log/kl_roughness'] == pytest.approx(0.01)          # a straight line: steps of 0.01
    jagged = multiseed.stability_metrics({'kl/mean': [(1, 0.0), (2, 0.3), (3, 0.0), (4, 0.3)]})
    assert jagged['log/kl_roughness'] == pytest.approx(0.3)      # same range, rougher
    assert m['log/entropy_change'] == pytest.approx(-0.5)
    assert m['log/seconds_per_iter'] == 31.0
    assert m['log/shapes_last'] == 1.0 and len(m) == 9
    assert multiseed.stability_metrics({}) == {}


def test_time_outside_the_iterations():
    # logged every 2nd iteration (2-iteration means): 10 iterations of 3 s in 40 s of process
    every_2nd = {'time': [(i, 3.0) for i in range(2, 11, 2)]}
    assert multiseed.outside_iterations(every_2nd, {'train_seconds': 40.0}) == pytest.approx(0.25)
    assert multiseed.outside_iterations(every_2nd, {'train_seconds': 40.0, 'resumed': True}) \
        is None
    assert multiseed.outside_iterations({}, {'train_seconds': 40.0}) is None


# -- a real comparison: two tiny configs over two seeds ----------------------------------------
TINY = """_base_ = [{base!r}]
eval_cfg = dict(splits=dict(train=dict(type='ClassConditionDataset', num_classes=2)),
                samples_per_condition=2)
train_cfg = dict(max_iters=2, samples_per_rank=8, minibatch_samples=8)
default_hooks = dict(checkpoint=dict(interval=2), report=None, curves=None, image_grid=None)
"""


def test_two_tiny_configs_over_two_seeds(tmp_path):
    base = os.path.join(ROOT, 'configs', 'grpo', 'llamagen-tiny_grpo_jpeg.py')
    (tmp_path / 'a.py').write_text(TINY.format(base=base))
    (tmp_path / 'b.py').write_text(TINY.format(base=base)
                                   + 'regularizers = dict(kl=dict(beta=0.1))\n')
    out = tmp_path / 'out'
    proc = run_python('tools/multiseed.py', '--arm', f'a={tmp_path / "a.py"}',
                      '--arm', f'b={tmp_path / "b.py"}', 'optim_wrapper.optimizer.lr=1e-3',
                      '--seeds', '0', '1', '--jobs', '2', '--out', str(out),
                      '--eval-args', '--batch-conditions 2', '--keep-scalars', 'reward/',
                      '--verdict-metrics', 'train/jpeg/mean', timeout=300)
    assert 'wrote' in proc.stdout, proc.stdout + proc.stderr
    summary = json.loads((out / 'summary.json').read_text())
    entry = summary['metrics']['train/jpeg/mean']
    assert entry['a']['n'] == entry['b']['n'] == 2
    assert entry['a']['per_seed']['0'] != entry['a']['per_seed']['1']    # the seed matters
    run = json.loads((out / 'b' / 'seed1' / 'run.json').read_text())
    assert run['arm_options'] == ['optim_wrapper.optimizer.lr=1e-3'] and run['threads'] == 1
    assert 'optim_wrapper.optimizer.lr=1e-3' in run['train_command'] + run['eval_command']
    assert all(k.startswith('reward/') or k in ('step', 'iter')
               for k in json.loads(open(out / 'a' / 'seed0' / 'scalars.json').readline()))
    md = (out / 'summary.md').read_text()
    assert 'Every run was evaluated under one protocol' in md and 'WARNING' not in md
    assert 'b vs a on train/jpeg/mean' in md and '(fewer than 3 seeds per arm: no verdict)' in md
    assert (out / 'curves.png').stat().st_size > 0
