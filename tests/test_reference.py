"""tools/reference.py: a run against a model-zoo row's band, on synthetic scalars (inside, leaves
up, leaves down, one noisy point, a short run), its evaluation against the seeds' range and
protocol, and how rows are named."""
import json
import os

import pytest

from conftest import ROOT, load_tool

reference = load_tool('reference')
STEPS = range(1, 61)


def _curve(step, offset=0.0):
    return 0.5 + 0.004 * step + offset


def _write_scalars(path, values: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps({'reward/r/mean': v, 'kl/mean': 0.01, 'step': s}) + '\n'
                            for s, v in values.items()))
    return str(path)


@pytest.fixture
def row(tmp_path):
    """Three seeds 0.02 apart (band width 0.04) with an evaluation each."""
    arm = tmp_path / 'configs' / 'm' / 'results' / 'bench' / 'grpo'
    for seed, off in enumerate((-0.02, 0.0, 0.02)):
        _write_scalars(arm / f'seed{seed}' / 'scalars.json', {s: _curve(s, off) for s in STEPS})
        (arm / f'seed{seed}' / 'eval.json').write_text(json.dumps(dict(
            results=dict(train={'shapes/strict': 0.70 + 0.02 * seed, 'num_samples': 576}),
            protocol=dict(sampling=dict(samples_per_condition=32), vargo_commit=str(seed)))))
    return arm


def _check(row, run, *extra):
    args = reference.parse_args([str(row), str(run), '--smooth', '1', '--margin', '0',
                                 '--patience', '3', *extra])
    return reference.check(args)


def _line(lines, key='reward/r/mean'):
    return next(ln for ln in lines if ln.startswith(key + ':'))


def test_inside(row, tmp_path):
    run = _write_scalars(tmp_path / 'run' / 'scalars.json', {s: _curve(s, 0.015) for s in STEPS})
    lines = _check(row, run)
    assert _line(lines).startswith('reward/r/mean: inside the band of 3 seeds at 60 iterations')
    assert os.path.getsize(tmp_path / 'run' / 'reference_grpo.png') > 0


def test_leaves_up_at_the_first_of_k_consecutive_points(row, tmp_path):
    values = {s: _curve(s) + (0.1 if s >= 30 else 0.0) for s in STEPS}
    values[10] += 0.5                                  # one noisy point: not a departure
    run = _write_scalars(tmp_path / 'run' / 'scalars.json', values)
    line = _line(_check(row, run))
    assert 'LEAVES the band of 3 seeds above at iteration 30' in line, line
    assert 'outside at 32 of 60' in line


def test_leaves_down(row, tmp_path):
    run = _write_scalars(tmp_path / 'run' / 'scalars.json',
                         {s: _curve(s) - (0.001 * max(0, s - 20)) for s in STEPS})
    line = _line(_check(row, run))
    assert 'below at iteration 41' in line, line     # 0.001 * (s - 20) > 0.02 from s = 41


def test_short_run_is_compared_where_it_has_points(row, tmp_path):
    run = _write_scalars(tmp_path / 'run' / 'scalars.json', {s: _curve(s) for s in range(1, 21)})
    line = _line(_check(row, run))
    assert 'inside' in line and "the run covers iterations 1-20 of the reference's 1-60" in line


def test_tolerance_smoothing_and_margin(row, tmp_path):
    # alternating +-0.05 noise: every point outside the bare band, the smoothed curve inside
    noisy = {s: _curve(s) + (0.05 if s % 2 else -0.05) for s in STEPS}
    run = _write_scalars(tmp_path / 'run' / 'scalars.json', noisy)
    assert 'LEAVES the band of 3 seeds above and below at iteration 1' in _line(_check(row, run))
    args = reference.parse_args([str(row), run, '--smooth', '2', '--margin', '0'])
    assert 'inside' in _line(reference.check(args))
    # a margin of 1 band width (0.04) holds an offset of 0.05, not of 0.07
    for off, inside in ((0.05, True), (0.07, False)):
        run = _write_scalars(tmp_path / f'r{off}' / 'scalars.json',
                             {s: _curve(s, off) for s in STEPS})
        args = reference.parse_args([str(row), run, '--margin', '1'])
        assert ('inside' in _line(reference.check(args))) is inside, off


def test_evaluation_against_the_seeds_range_and_protocol(row, tmp_path):
    _write_scalars(tmp_path / 'run' / 'scalars.json', {s: _curve(s) for s in STEPS})
    (tmp_path / 'run' / 'eval.json').write_text(json.dumps(dict(
        results=dict(train={'shapes/strict': 0.80, 'num_samples': 64}),
        protocol=dict(sampling=dict(samples_per_condition=8)))))
    lines = _check(row, tmp_path / 'run')
    assert '  train/shapes/strict: 0.8 above [0.7, 0.74]' in lines
    assert not any('num_samples' in ln for ln in lines)        # bookkeeping, not quality
    warning = [ln for ln in lines if ln.startswith('WARNING')]
    assert warning and 'sampling.samples_per_condition' in warning[0]
    (tmp_path / 'run' / 'eval.json').write_text(json.dumps(dict(
        results=dict(train={'shapes/strict': 0.71}),
        protocol=dict(sampling=dict(samples_per_condition=32), vargo_commit='x'))))
    lines = _check(row, tmp_path / 'run')
    assert '  train/shapes/strict: 0.71 inside [0.7, 0.74]' in lines
    assert "evaluation protocol: the same as the reference's" in lines


def test_rows_by_name_and_errors(row, tmp_path, capsys):
    root = str(tmp_path)
    assert reference.list_rows(root) == {'m/bench/grpo': str(row)}
    assert reference.resolve_row('m/bench/grpo', root) == str(row)
    with pytest.raises(reference.UsageError, match='rows: m/bench/grpo'):
        reference.resolve_row('m/bench/nosuch', root)
    single = tmp_path / 'one'
    _write_scalars(single / 'seed0' / 'scalars.json', {1: 0.5})
    with pytest.raises(reference.UsageError, match='at least 2 seeds'):
        reference.reference_seeds(str(single))
    run = _write_scalars(tmp_path / 'run' / 'scalars.json', {1: 0.5})
    assert reference.main([str(row), run, '--scalars', 'nosuch/key']) == 2
    assert "error: --scalars: ['nosuch/key'] not logged" in capsys.readouterr().err


def test_shipped_rows_resolve():
    rows = reference.list_rows(ROOT)
    if not rows:
        pytest.skip('no model-zoo row with seeds in this checkout')
    for name, path in rows.items():
        assert reference.resolve_row(name) == path
