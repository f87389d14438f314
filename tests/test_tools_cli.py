"""Command-line validation of the tools (``vargo.core.cli``; issue 12 item 5).

Every bad invocation of ``tools/eval.py``, ``tools/sample.py`` and ``tools/fid_stats.py`` exits
with code 2 and exactly one stderr line ``error: <argument>: <value and fix>``, no traceback.
Argument errors are found while parsing (before any model is built); the cases that need the
policy (class ids out of range, --classes / --prompts of the wrong kind) build the smallest
shipped config. The helpers of ``core/cli.py`` are tested directly (no subprocess).
"""
import argparse
import importlib.util
import os
import sys

import pytest
import torch

from conftest import ROOT, run_python
from vargo.core import cli

SHAPES = os.path.join('configs', 'grpo', 'llamagen_grpo_shapes.py')          # c2i, 4 classes
SHAPES_T2I = os.path.join('configs', 'grpo', 'llamagen_grpo_shapes-t2i.py')  # text-conditional
TINY = os.path.join('configs', 'grpo', 'llamagen-tiny_grpo_jpeg.py')         # c2i, 10 classes
MISSING_CKPT = os.path.join('work_dirs', 'no_such_run', 'iter_1.pth')
FID = ('--extractor', 'vargo-shapes', '--out', os.path.join('work_dirs', 'never_written.npz'))


def _error_line(proc) -> str:
    """The one ``error:`` line of a failed tool run (asserting exit code 2, no traceback)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert 'Traceback' not in out, out[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
    return lines[0]


# (tool arguments, substrings of the error line: the argument, the bad value, the fix)
BAD_INVOCATIONS = {
    # tools/eval.py
    'eval-samples-per-condition-0': (
        ('tools/eval.py', SHAPES, '--samples-per-condition', '0'),
        ('--samples-per-condition', 'got 0', 'integer >= 1')),
    'eval-batch-conditions-0': (
        ('tools/eval.py', SHAPES, '--batch-conditions', '0'),
        ('--batch-conditions', 'got 0', 'integer >= 1')),
    'eval-max-conditions-negative': (
        ('tools/eval.py', SHAPES, '--max-conditions', '-1'),
        ('--max-conditions', 'got -1', 'integer >= 1')),
    'eval-py-file-as-checkpoint': (
        ('tools/eval.py', SHAPES, 'tools/eval.py'),
        ('checkpoint', 'tools/eval.py', 'is not a checkpoint written by tools/train.py')),
    # tools/sample.py
    'sample-class-out-of-range': (
        ('tools/sample.py', TINY, '--classes', '3', '10'),
        ('--classes 3 10', '10 out of range', '10 classes', '0..9')),
    'sample-missing-checkpoint': (
        ('tools/sample.py', TINY, MISSING_CKPT),
        ('checkpoint', MISSING_CKPT, 'checkpoint not found')),
    'sample-negative-cfg-scale': (
        ('tools/sample.py', TINY, '--cfg-scale', '-1'),
        ('--cfg-scale', 'got -1', '> 0', '1 = no guidance')),
    'sample-empty-prompt': (
        ('tools/sample.py', SHAPES_T2I, '--prompts', 'a red circle', '  '),
        ('--prompts', "'  '", 'empty prompt', 'give the text')),
    # tools/fid_stats.py
    'fid-num-0': (
        ('tools/fid_stats.py', 'samples', SHAPES, '--num', '0', *FID),
        ('--num', 'got 0', 'integer >= 2')),
    'fid-batch-size-0': (
        ('tools/fid_stats.py', 'images', 'configs', '--batch-size', '0', *FID),
        ('--batch-size', 'got 0', 'integer >= 1')),
    'fid-per-condition-0': (
        ('tools/fid_stats.py', 'samples', SHAPES, '--num', '8', '--per-condition', '0', *FID),
        ('--per-condition', 'got 0', 'integer >= 1')),
    'fid-missing-image-folder': (
        ('tools/fid_stats.py', 'images', os.path.join('work_dirs', 'no_such_images'), *FID),
        ('source', 'no_such_images does not exist', 'give an image folder')),
}


@pytest.mark.parametrize('case', list(BAD_INVOCATIONS))
def test_bad_invocation_is_one_error_line_and_exit_code_2(case):
    args, expected = BAD_INVOCATIONS[case]
    line = _error_line(run_python(*args, check=False, env={'OMP_NUM_THREADS': '1'}))
    for text in expected:
        assert text in line, (text, line)


# ---- the tools' parsers, in process --------------------------------------------------------------
def _tool(name):
    if os.path.join(ROOT, 'tools') not in sys.path:
        sys.path.append(os.path.join(ROOT, 'tools'))
    spec = importlib.util.spec_from_file_location(f'vargo_cli_test_{name}',
                                                  os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse_error(capsys, parse, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    return lines[0]


@pytest.mark.parametrize('tool,argv,expected', [
    ('eval', [SHAPES, 'configs'], 'checkpoint: configs is a directory; give a checkpoint file'),
    ('eval', [SHAPES, MISSING_CKPT], f'checkpoint: {MISSING_CKPT}: checkpoint not found'),
    ('eval', [SHAPES, '--cfg-scales', '1', '-2'], '--cfg-scales: must be a finite number > 0 '
                                                   '(1 = no guidance, e.g. 1.5 or 4.0), got -2'),
    ('sample', [TINY, '--cfg-scale', '-1'], '--cfg-scale: must be a finite number > 0'),
    ('eval', [TINY, '--cfg-scale', 'nan'], '--cfg-scale: must be a finite number > 0'),
    ('eval', [TINY, '--samples-per-condition', 'four'], 'got four'),
    ('eval', [TINY, '--cfg-options', 'sampler.cfg_scale'], 'is not KEY=VALUE'),
    ('eval', [], 'required: config'),
    ('sample', [TINY, '--per-condition', '0'], '--per-condition: must be an integer >= 1'),
    ('sample', [TINY, '--classes', '-1'], '--classes: must be an integer >= 0, got -1'),
    ('sample', [TINY, '--prompts', ''], 'empty prompt'),
    ('fid_stats', ['images', 'configs', '--image-size', '0', *FID], '--image-size'),
    ('fid_stats', ['samples', TINY, '--num', '1', *FID], '--num: must be an integer >= 2'),
    ('fid_stats', ['samples', TINY, '--num', '8', '--batch-conditions', '0', *FID],
     '--batch-conditions'),
    ('fid_stats', ['samples', TINY, '--num', '8', '--cfg-scale', '0', *FID], '--cfg-scale'),
    ('fid_stats', ['samples', TINY, 'README.md', '--num', '8', *FID], 'README.md is not a '
                                                                      'checkpoint'),
])
def test_tool_parsers_reject_bad_values(capsys, tool, argv, expected):
    assert expected in _parse_error(capsys, _tool(tool).parse_args, argv)


@pytest.mark.parametrize('argv,expected', [
    ([TINY, '--cfg-options', 'sampler.cfg_scale=-1'],
     ('sampler.cfg_scale (config or --cfg-options): must be a finite number > 0', 'got -1')),
    ([SHAPES_T2I, '--classes', '1'], ('--classes 1', 'text-conditional', 'give --prompts')),
    ([TINY, '--prompts', 'a red circle'],
     ("--prompts 'a red circle'", 'class-conditional', 'give --classes', '0..9')),
])
def test_sample_checks_the_config_and_policy_before_sampling(capsys, tmp_path, argv, expected):
    """Checks after parsing (the config's CFG scale, the policy's kind of condition), run in
    process: sample.py's main returns 2 with one error line and writes nothing."""
    out = tmp_path / 'grid.png'
    assert _tool('sample').main([*argv, '--out', str(out)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not out.exists()


def test_tool_parsers_keep_valid_invocations():
    args = _tool('eval').parse_args([TINY, '--cfg-scales', '1', '1.5', '--max-conditions', '4'])
    assert args.cfg_scales == [1.0, 1.5] and args.max_conditions == 4
    assert args.batch_conditions == 16 and args.samples_per_condition is None
    args = _tool('sample').parse_args([TINY, '--classes', '0', '9', '--per-condition', '3'])
    assert args.classes == [0, 9] and args.per_condition == 3 and args.cfg_scale is None
    args = _tool('fid_stats').parse_args(['samples', TINY, '--num', '2', *FID])
    assert args.num == 2 and args.per_condition == 1 and args.checkpoint is None


# ---- core/cli.py helpers -------------------------------------------------------------------------
def _rejects(type_fn, text, *expected):
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        type_fn(text)
    for e in expected:
        assert e in str(exc.value), str(exc.value)


def test_integer_types():
    assert cli.positive_int('3') == 3 and cli.non_negative_int('0') == 0
    for text in ('0', '-1', 'x', '1.5', ''):
        _rejects(cli.positive_int, text, 'must be an integer >= 1', f'got {text}')
    _rejects(cli.non_negative_int, '-1', 'integer >= 0', 'got -1')
    at_least_2 = cli.int_at_least(2, 'a covariance')
    assert at_least_2('2') == 2
    _rejects(at_least_2, '1', 'integer >= 2 (a covariance), got 1')


def test_cfg_scale_type_accepts_what_eval_accepts():
    assert cli.cfg_scale('1') == 1.0 and cli.cfg_scale('0.5') == 0.5 and cli.cfg_scale(4) == 4.0
    for text in ('0', '-1', 'nan', 'inf', 'x'):
        _rejects(cli.cfg_scale, text, 'finite number > 0', '1 = no guidance', f'got {text}')
    cli.check_cfg_scale(2.0, 'sampler.cfg_scale')
    with pytest.raises(cli.UsageError, match=r'^sampler.cfg_scale: .*got -1'):
        cli.check_cfg_scale(-1, 'sampler.cfg_scale')


def test_text_and_path_types(tmp_path):
    assert cli.non_empty_text('a red circle') == 'a red circle'
    _rejects(cli.non_empty_text, ' \t', 'empty prompt')
    f = tmp_path / 'f.txt'
    f.write_text('x')
    assert cli.existing_file(str(f)) == str(f) and cli.existing_path(str(tmp_path))
    _rejects(cli.existing_file, str(tmp_path), 'is a directory')
    _rejects(cli.existing_file, str(tmp_path / 'nope'), 'does not exist')
    _rejects(lambda t: cli.existing_path(t, 'an image folder'), str(tmp_path / 'nope'),
             'does not exist; give an image folder')


def test_checkpoint_type_checks_the_magic_bytes(tmp_path):
    zipped, legacy = tmp_path / 'a.pth', tmp_path / 'b.pth'
    torch.save({'state_dict': {}}, zipped)
    torch.save({'state_dict': {}}, legacy, _use_new_zipfile_serialization=False)
    assert cli.checkpoint_file(str(zipped)) == str(zipped) and cli.checkpoint_file(str(legacy))
    (tmp_path / 'empty.pth').write_bytes(b'')
    for bad in (os.path.join(ROOT, 'tools', 'eval.py'), str(tmp_path / 'empty.pth')):
        _rejects(cli.checkpoint_file, bad, bad, 'is not a checkpoint written by tools/train.py')
    _rejects(cli.checkpoint_file, str(tmp_path), 'is a directory', '.pth')    # names one in it
    _rejects(cli.checkpoint_file, str(tmp_path / 'nope.pth'), 'checkpoint not found')


def test_check_conditions():
    class Policy:                                   # what a c2i policy exposes
        cfg = type('Cfg', (), {'num_classes': 4})()

    class TextPolicy:
        task, cfg = 't2i', Policy.cfg

    assert cli.policy_conditioning(Policy()) == ('class', 4)
    assert cli.policy_conditioning(TextPolicy()) == ('text', None)
    for conditioning in (Policy(), 4):
        cli.check_conditions(conditioning, classes=[0, 3])
        cli.check_conditions(conditioning)
        with pytest.raises(cli.UsageError, match=r'--classes 0 4: 4 out of range.*0\.\.3'):
            cli.check_conditions(conditioning, classes=[0, 4])
        with pytest.raises(cli.UsageError, match='class-conditional; give --classes'):
            cli.check_conditions(conditioning, prompts=['a red circle'])
    for conditioning in (TextPolicy(), 'text'):
        cli.check_conditions(conditioning, prompts=['a red circle'])
        with pytest.raises(cli.UsageError, match='text-conditional; give --prompts'):
            cli.check_conditions(conditioning, classes=[1])
        with pytest.raises(cli.UsageError, match='--prompts: an empty prompt'):
            cli.check_conditions(conditioning, prompts=['a', ' '])


def _policy_file(path, state):
    torch.save({'state_dict': state, 'meta': {}}, path)
    return str(path)


def test_load_policy_checkpoint_errors_are_one_line_naming_the_file(tmp_path):
    policy = torch.nn.Linear(2, 3)
    good = {f'policy.{k}': torch.ones_like(v) for k, v in policy.state_dict().items()}
    cli.load_policy_checkpoint(policy, _policy_file(tmp_path / 'good.pth', good))
    assert bool((policy.weight == 1).all())
    refused = tmp_path / 'refused.pth'
    torch.save({'state_dict': {'policy.weight': argparse.Namespace(a=1)}}, refused,
               _use_new_zipfile_serialization=False)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes((tmp_path / 'good.pth').read_bytes()[:100])
    bad = [_policy_file(tmp_path / 'no_policy.pth', {'ema.weight': torch.zeros(1)}),
           _policy_file(tmp_path / 'mismatch.pth', {'policy.other': torch.zeros(1)}),
           str(refused), str(truncated)]
    for path in bad:
        with pytest.raises(cli.UsageError) as exc:
            cli.load_policy_checkpoint(policy, path)
        msg = str(exc.value)
        assert msg.startswith('checkpoint: ') and path in msg and '\n' not in msg, msg


def test_one_line_and_fail(capsys):
    text = 'x.pth does not match M:\n  missing keys (5): a, b, c, d, e\n  unexpected keys (1): f'
    assert cli.one_line(text) == \
        'x.pth does not match M: missing keys (5): a, b, c, ...; unexpected keys (1): f'
    assert cli.fail(cli.UsageError('--n: bad')) == 2
    assert capsys.readouterr().err == 'error: --n: bad\n'
    assert cli.fail(ValueError('first:\n  second\n  third')) == 2
    assert capsys.readouterr().err == 'error: first: second; third\n'
    missing = 'config names files that do not exist:\n  a = x.pt\n  b = y.pt'
    assert cli.fail(FileNotFoundError(missing)) == 2
    assert capsys.readouterr().err == f'error: {missing}\n'      # one missing file per line


def test_argument_parser_errors(capsys):
    p = cli.ArgumentParser(prog='tool.py')
    p.add_argument('--n', type=cli.positive_int)
    p.add_argument('--cfg-options', nargs='+', action=cli.CfgOptionsAction)
    assert p.parse_args(['--n', '2', '--cfg-options', 'a.b=1']).cfg_options == {'a.b': 1}
    assert _parse_error(capsys, p.parse_args, ['--n', '0']) == \
        'error: --n: must be an integer >= 1, got 0'
    assert 'tool.py --help' in _parse_error(capsys, p.parse_args, ['--bogus'])
    assert _parse_error(capsys, p.parse_args, ['--cfg-options', 'a.b']).startswith(
        'error: --cfg-options: a.b is not KEY=VALUE')
