"""tools/overhead.py: the attribution of a profile's own times to owners, and one real run."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CFG = os.path.join(ROOT, 'configs', 'grpo', 'llamagen-tiny_grpo_jpeg.py')


@pytest.fixture(scope='module')
def tool():
    spec = importlib.util.spec_from_file_location('overhead_tool',
                                                  os.path.join(ROOT, 'tools', 'overhead.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def owner_by_prefix(func):
    return {'m': 'model', 'f': 'framework', 'r': 'reward'}.get(func[0][0])


def test_library_time_goes_to_callers_in_proportion(tool):
    """An owned function keeps its own time; a library function's time is split over its
    callers by the own time it spent under each, through a chain of library callers."""
    model, frame = ('m.py', 1, 'forward'), ('f.py', 1, 'loss')
    lib, kernel = ('torch.py', 1, 'linear'), ('~', 0, '<built-in method mm>')
    stats = {
        model: (1, 1, 2.0, 10.0, {}),
        frame: (1, 1, 1.0, 3.0, {}),
        # linear: 3 s under the model, 1 s under the framework
        lib: (2, 2, 0.4, 6.0, {model: (1, 1, 0.3, 4.5), frame: (1, 1, 0.1, 1.5)}),
        kernel: (2, 2, 8.0, 8.0, {lib: (2, 2, 8.0, 8.0)}),
    }
    split = tool.attribute(stats, owner_by_prefix)
    owners = split['owners']
    # the kernel's 8 s follow linear's split 0.3 : 0.1 (3/4 model, 1/4 framework)
    assert owners['model']['seconds'] == pytest.approx(2.0 + 0.3 + 6.0)
    assert owners['framework']['seconds'] == pytest.approx(1.0 + 0.1 + 2.0)
    assert owners['model']['builtin_s'] == pytest.approx(6.0)
    assert owners['model']['python_s'] == pytest.approx(2.3)
    assert owners['other']['seconds'] == pytest.approx(0.0)
    total = sum(row['seconds'] for row in owners.values())
    assert total == pytest.approx(sum(v[2] for v in stats.values()))
    # attributed to the owned function that called it
    assert split['functions']['model']['m.py:1(forward)'] == pytest.approx(8.3)


def test_call_counts_split_when_own_times_are_zero_and_orphans_are_other(tool):
    model, frame = ('m.py', 1, 'a'), ('f.py', 1, 'b')
    lib = ('torch.py', 1, 'cheap')
    root = ('torch.py', 9, 'root')            # library code with no caller
    stats = {
        model: (1, 1, 0.0, 1.0, {}), frame: (1, 1, 0.0, 1.0, {}),
        lib: (4, 4, 4.0, 4.0, {model: (3, 3, 0.0, 0.0), frame: (1, 1, 0.0, 0.0)}),
        root: (1, 1, 0.5, 0.5, {}),
    }
    owners = tool.attribute(stats, owner_by_prefix)['owners']
    assert owners['model']['seconds'] == pytest.approx(3.0)
    assert owners['framework']['seconds'] == pytest.approx(1.0)
    assert owners['other']['seconds'] == pytest.approx(0.5)


def test_cycles_of_library_code_pass_their_time_on(tool):
    """``Module.__call__`` -> ``Sequential.forward`` -> ``Module.__call__``: a cycle of library
    functions; the kernel time under it still reaches the owned callers."""
    model = ('m.py', 1, 'a')
    f, g = ('lib.py', 1, 'f'), ('lib.py', 2, 'g')
    stats = {model: (1, 1, 1.0, 5.0, {}),
             f: (2, 2, 2.0, 4.0, {model: (1, 1, 1.0, 4.0), g: (1, 1, 1.0, 2.0)}),
             g: (1, 1, 2.0, 3.0, {f: (1, 1, 2.0, 3.0)})}
    owners = tool.attribute(stats, owner_by_prefix)['owners']
    assert owners['model']['seconds'] == pytest.approx(5.0)
    assert owners['other']['seconds'] == pytest.approx(0.0, abs=1e-9)
    # two owned callers of the cycle: the kernel splits as the entry edges do (3 : 1)
    call, seq = ('nn_module.py', 1, '__call__'), ('container.py', 1, 'forward')
    kernel = ('~', 0, '<built-in method addmm>')
    model, frame = ('m.py', 1, 'a'), ('f.py', 1, 'b')
    stats = {model: (1, 1, 0.0, 1.0, {}), frame: (1, 1, 0.0, 1.0, {}),
             call: (4, 4, 2.0, 10.0, {model: (1, 1, 0.75, 7.5), frame: (1, 1, 0.25, 2.5),
                                      seq: (2, 2, 1.0, 5.0)}),
             seq: (2, 2, 1.0, 6.0, {call: (2, 2, 1.0, 6.0)}),
             kernel: (2, 2, 8.0, 8.0, {call: (2, 2, 8.0, 8.0)})}
    owners = tool.attribute(stats, owner_by_prefix)['owners']
    # from __call__, half of the own time returns through seq; the rest leaves 3 : 1
    assert owners['model']['seconds'] == pytest.approx(0.75 * 11.0)
    assert owners['framework']['seconds'] == pytest.approx(0.25 * 11.0)
    assert owners['model']['builtin_s'] == pytest.approx(6.0)


def test_owners_of_vargo_files(tool):
    owners = tool.Owners.for_vargo()
    comp = os.path.join(ROOT, 'components')
    assert owners((os.path.join(comp, 'policies', 'llamagen', 'gpt.py'), 1, 'f')) == 'model'
    assert owners((os.path.join(comp, 'samplers', 'ar_sampler.py'), 1, 'f')) == 'model'
    assert owners((os.path.join(comp, 'rewards', 'jpeg.py'), 1, 'f')) == 'reward'
    assert owners((os.path.join(comp, 'advantages', 'group_norm.py'), 1, 'f')) == 'framework'
    assert owners((os.path.join(ROOT, 'core', 'loop.py'), 1, 'f')) == 'framework'
    assert owners(('~', 0, "<method 'run_backward' of 'torch._C._EngineBase' objects>")) == \
        'backward'
    import inspect

    import torch
    assert owners((inspect.getfile(torch.optim.AdamW), 1, 'step')) == 'optimizer'
    assert owners((torch.__file__, 1, 'f')) is None
    assert owners(('~', 0, '<built-in method mm>')) is None


def test_bad_arguments_are_refused(tool, capsys):
    for argv in (['c.py', '--iters', '0'], ['c.py', '--warmup', '-1'],
                 ['c.py', '--threads', '0']):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)
    capsys.readouterr()
    assert tool.main(['/nonexistent/config.py']) == 2
    assert capsys.readouterr().err.strip() == 'error: config file not found: /nonexistent/config.py'
    assert tool.main([TINY_CFG, '--cfg-options', 'train_cfg.minibatch_samples=3']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: train_cfg.minibatch_samples=3')


def test_one_run_end_to_end(tool, tmp_path, capsys):
    out = tmp_path / 'overhead.json'
    prof = tmp_path / 'run.prof'
    assert tool.main([TINY_CFG, '--iters', '1', '--warmup', '0', '--out', str(out),
                      '--profile-out', str(prof),
                      '--cfg-options', 'train_cfg.samples_per_rank=8',
                      'train_cfg.minibatch_samples=8']) == 0
    res = json.loads(out.read_text())
    rows = res['per_iteration']
    assert set(rows) == {'model', 'reward', 'backward', 'optimizer', 'framework', 'other'}
    assert sum(r['share'] for r in rows.values()) == pytest.approx(1.0)
    for owner in ('model', 'reward', 'backward', 'optimizer', 'framework'):
        assert rows[owner]['seconds'] > 0, owner
    for row in rows.values():
        assert row['python_s'] + row['builtin_s'] == pytest.approx(row['seconds'])
    assert res['framework_share'] == rows['framework']['share']
    assert res['iterations'] == {'warmup': 0, 'timed': 1, 'profiled': 1}
    assert len(res['load_average_start']) == 3
    assert any('run_iter' in r['function'] for r in res['framework_top'])
    import pstats
    assert any('run_iter' in f[2] for f in pstats.Stats(str(prof)).stats)
    text = capsys.readouterr().out
    assert 'framework overhead:' in text
