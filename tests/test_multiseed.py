"""tools/multiseed.py: the summary (mean, sample std, per-seed values, curves) from per-run files,
and its argument checks. (Training and evaluation are tools/train.py and tools/eval.py, tested
elsewhere; a real two-arm run is the command in configs/var_rl/README.md.)"""
import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'tools'))
import multiseed  # noqa: E402

CFG = 'configs/grpo/var_grpo_shapes.py'


def _write_run(out, arm, seed, strict, rewards):
    res = out / arm / f'seed{seed}'
    res.mkdir(parents=True)
    (res / 'run.json').write_text(json.dumps(dict(arm=arm, seed=seed, threads=1)))
    (res / 'eval.json').write_text(json.dumps(dict(results=dict(
        eval=dict(strict=strict, num_samples=64, time_s=3.0)))))
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
