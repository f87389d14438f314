"""TensorBoard as a visualizer backend switch (vargo.core.visualizer): the default runtime's
VargoVisualizer, visualizer.tensorboard=True adding MMEngine's TensorboardVisBackend next to the
local one, and the one-line error naming the install command when the package is missing."""
import os
import sys
import uuid

import pytest
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend

from conftest import ROOT, run_python
from vargo.core import visualizer as vis
from vargo.core.registry import ConfigError
from vargo.core.runner import load_config

TINY = os.path.join(ROOT, 'configs', 'grpo', 'llamagen-tiny_grpo_jpeg.py')


def _build(tmp_path, **kwargs):
    return vis.VargoVisualizer(name=f'test_tb_{uuid.uuid4().hex}', save_dir=str(tmp_path),
                               vis_backends=[dict(type='LocalVisBackend')], **kwargs)


def test_the_switch_is_in_the_default_runtime():
    cfg = load_config(TINY)
    assert cfg.visualizer.type == 'VargoVisualizer' and cfg.visualizer.tensorboard is False
    cfg = load_config(TINY, {'visualizer.tensorboard': True})
    assert cfg.visualizer.tensorboard is True
    assert cfg.visualizer.vis_backends == [dict(type='LocalVisBackend')]


def test_tensorboard_backend_is_added_next_to_the_local_one(tmp_path, monkeypatch):
    assert vis.with_tensorboard([dict(type='LocalVisBackend')]) == [
        dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
    assert vis.with_tensorboard(vis.with_tensorboard(None)) == [dict(type='TensorboardVisBackend')]
    monkeypatch.setattr(vis, 'require_tensorboard', lambda: None)   # backends import lazily
    kinds = {type(b) for b in _build(tmp_path, tensorboard=True)._vis_backends.values()}
    assert kinds == {LocalVisBackend, TensorboardVisBackend}
    kinds = {type(b) for b in _build(tmp_path)._vis_backends.values()}
    assert kinds == {LocalVisBackend}


def test_missing_package_is_one_line_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorboard', None)            # import fails
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, tensorboard=True)
    text = str(err.value)
    assert '\n' not in text and 'pip install -e ".[tensorboard]"' in text
    with pytest.raises(ConfigError, match='must be True or False'):
        _build(tmp_path, tensorboard='yes')


def test_train_without_the_package_fails_at_build(tmp_path):
    script = tmp_path / 'train_without_tb.py'
    script.write_text(
        "import runpy, sys\n"
        "sys.modules['tensorboard'] = None\n"
        f"sys.argv = ['train.py', {TINY!r}, '--work-dir', {str(tmp_path / 'w')!r},\n"
        "            '--cfg-options', 'visualizer.tensorboard=True']\n"
        f"runpy.run_path({os.path.join(ROOT, 'tools', 'train.py')!r}, run_name='__main__')\n")
    proc = run_python(str(script), check=False, env={'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith('error: visualizer.tensorboard=True')
    assert 'pip install -e ".[tensorboard]"' in proc.stderr
    assert not (tmp_path / 'w').exists()                              # nothing left behind


def test_a_run_writes_tensorboard_events(tmp_path):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_python('tools/train.py', TINY, '--work-dir', str(tmp_path), '--cfg-options',
               'visualizer.tensorboard=True', 'train_cfg.max_iters=2', 'default_hooks.report=None',
               'default_hooks.curves=None', env={'OMP_NUM_THREADS': '1'})
    events = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files
              if f.startswith('events.out.tfevents')]
    assert len(events) == 1 and os.path.basename(os.path.dirname(events[0])) == 'vis_data'
    acc = EventAccumulator(os.path.dirname(events[0]))
    acc.Reload()
    steps = [e.step for e in acc.Scalars('reward/jpeg/mean')]
    assert steps == [1, 2]
