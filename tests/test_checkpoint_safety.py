"""Crafted checkpoint files: every path that loads a file a user hands vargo refuses code.

Two payloads are written by hand (pickle opcodes inside a real torch zip container):

* ``getattr_chain``: ``builtins.getattr(getattr, '__self__')`` is the builtins module,
  ``getattr(<builtins>, 'exec')`` is ``exec``, and torch's allow-listed
  ``torch._tensor._rebuild_from_type_v2(exec, Tensor, (CODE,), {})`` calls it. It runs code as
  soon as ``getattr`` is allow-listed (the first test shows that it is live).
* ``reduce``: an object whose ``__reduce__`` is ``(exec, (CODE,))``, the textbook pickle exploit.

CODE writes a marker file; every test asserts refusal with a clear message and no marker.
"""
import os

import pytest
import torch

from conftest import ROOT
from crafted_files import getattr_chain_payload, reduce_payload
from vargo.core.checkpoint import (CheckpointRefused, load_policy_from_checkpoint,
                                   load_training_checkpoint, safe_load)


PAYLOADS = {'getattr_chain': getattr_chain_payload, 'reduce': reduce_payload}


@pytest.fixture(params=sorted(PAYLOADS))
def crafted(request, tmp_path):
    marker = str(tmp_path / 'MARKER')
    path = tmp_path / f'{request.param}.pth'
    path.write_bytes(PAYLOADS[request.param](marker))
    return str(path), marker


def test_the_getattr_payload_runs_code_when_getattr_is_allow_listed(tmp_path):
    # the payload is live: with the allow-list vargo used to install, loading it runs code
    marker = tmp_path / 'MARKER'
    path = tmp_path / 'p.pth'
    path.write_bytes(getattr_chain_payload(str(marker)))
    with torch.serialization.safe_globals([getattr]):
        with pytest.raises(Exception):
            torch.load(path, weights_only=True)
    assert marker.read_text() == 'pwned'


def test_library_loaders_refuse_both_payloads(crafted):
    path, marker = crafted
    for load in (safe_load, load_training_checkpoint,
                 lambda p: load_policy_from_checkpoint(torch.nn.Linear(2, 2), p)):
        with pytest.raises(CheckpointRefused, match='refused to load') as err:
            load(path)
        assert '\n' not in str(err.value) and path in str(err.value)
    assert not os.path.exists(marker)


def test_family_and_reward_loaders_refuse_the_payload(crafted):
    from vargo.components.policies.llamagen import load_official_state_dict
    from vargo.components.policies.mar import load_mar_state_dict
    from vargo.components.rewards.loo_fid import build_feature_extractor
    import importlib.util
    spec = importlib.util.spec_from_file_location('fid_stats', os.path.join(ROOT, 'tools',
                                                                           'fid_stats.py'))
    fid_stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fid_stats)
    path, marker = crafted
    loaders = [lambda: load_official_state_dict(path, what='LlamaGen GPT'),
               lambda: load_mar_state_dict(path, 'model', what='MAR'),
               # torch-fidelity itself loads with weights_only=False: vargo checks first
               lambda: build_feature_extractor('inception-v3-compat', path),
               lambda: fid_stats.build_extractor('inception-v3-compat', path,
                                                 ['2048', 'logits_unbiased'])]
    for load in loaders:
        with pytest.raises(CheckpointRefused, match='refused to load'):
            load()
    assert not os.path.exists(marker)


SHAPES = 'configs/grpo/llamagen_grpo_shapes.py'
TRAIN = 'tools/train.py'
FAST = ['train_cfg.max_iters=1', 'train_cfg.samples_per_rank=16', 'train_cfg.minibatch_samples=None',
        'default_hooks.image_grid.preview_conditions=0']


def _invocations(path, work_dir):
    resume_dir = os.path.join(work_dir, 'auto')
    os.makedirs(resume_dir)
    with open(path, 'rb') as f:
        data = f.read()
    with open(os.path.join(resume_dir, 'iter_5.pth'), 'wb') as f:
        f.write(data)
    with open(os.path.join(resume_dir, 'last_checkpoint'), 'w') as f:
        f.write('iter_5.pth')
    return {
        'train --resume PATH': [TRAIN, SHAPES, '--work-dir', os.path.join(work_dir, 'r'),
                                '--resume', path, '--cfg-options', *FAST],
        'train --resume (auto)': [TRAIN, SHAPES, '--work-dir', resume_dir, '--resume',
                                  '--cfg-options', *FAST],
        'train load_from=': [TRAIN, SHAPES, '--work-dir', os.path.join(work_dir, 'l'),
                             '--cfg-options', f'load_from={path}', *FAST],
        'train policy.checkpoint=': [TRAIN, SHAPES, '--work-dir', os.path.join(work_dir, 'p'),
                                     '--cfg-options', f'policy.checkpoint={path}', *FAST],
        'train --dry-run policy.checkpoint=': [TRAIN, SHAPES, '--dry-run', '--cfg-options',
                                               f'policy.checkpoint={path}'],
        'eval CONFIG CKPT': ['tools/eval.py', SHAPES, path, '--no-fidelity',
                             '--samples-per-condition', '2', '--max-conditions', '1',
                             '--out', os.path.join(work_dir, 'eval')],
        'sample CONFIG CKPT': ['tools/sample.py', SHAPES, path, '--classes', '0',
                               '--out', os.path.join(work_dir, 's.png')],
        'fid_stats samples CONFIG CKPT': ['tools/fid_stats.py', 'samples', SHAPES, path,
                                          '--num', '2', '--extractor', 'vargo-shapes',
                                          '--out', os.path.join(work_dir, 's.npz')],
    }


def _tool(script):
    """A tool script as a module (its ``main(argv)`` runs in this process)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'vargo_tool_{script}',
                                                  os.path.join(ROOT, 'tools', f'{script}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('name', ['train --resume PATH', 'train --resume (auto)',
                                  'train load_from=', 'train policy.checkpoint=',
                                  'train --dry-run policy.checkpoint=', 'eval CONFIG CKPT',
                                  'sample CONFIG CKPT', 'fid_stats samples CONFIG CKPT'])
def test_every_tool_load_path_refuses_the_getattr_payload(name, tmp_path, capsys, monkeypatch):
    # in-process (each tool's main(argv)), so a regression would run the payload right here:
    # the marker file is the evidence either way
    monkeypatch.chdir(ROOT)
    marker = str(tmp_path / 'MARKER')
    path = str(tmp_path / 'crafted.pth')
    with open(path, 'wb') as f:
        f.write(getattr_chain_payload(marker))
    script, *argv = _invocations(path, str(tmp_path))[name]
    code = _tool(os.path.splitext(os.path.basename(script))[0]).main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    shown = 'iter_5.pth' if name == 'train --resume (auto)' else 'crafted.pth'
    assert last.startswith('error:') and 'refused to load' in last and shown in last, last
    assert not os.path.exists(marker)
    assert not os.path.exists(os.path.join(str(tmp_path), 'r'))  # no run directory left behind


def test_a_legacy_vargo_checkpoint_still_loads_but_a_crafted_legacy_one_does_not(tmp_path):
    # vargo's first format pickled MMEngine's HistoryBuffer (bound methods via getattr) and
    # numpy scalars; it loads through the restricted legacy path
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    buf = HistoryBuffer()
    for v in (1.5, 2.5):
        buf.update(v)
    legacy = {'meta': {'iter': 2}, 'state_dict': {'w': torch.ones(2)},
              'message_hub': {'log_scalars': {'train/loss': buf},
                              'runtime_info': {'eta': np.float64(3.0)}, 'resumed_keys': {}}}
    torch.save(legacy, tmp_path / 'legacy.pth')
    with pytest.raises(CheckpointRefused):  # not loadable as plain data ...
        safe_load(str(tmp_path / 'legacy.pth'))
    ckpt = load_training_checkpoint(str(tmp_path / 'legacy.pth'))  # ... but as a legacy file
    restored = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(restored, HistoryBuffer) and restored.mean() == 2.0
    assert ckpt['message_hub']['runtime_info']['eta'] == 3.0
    # the legacy stand-in for getattr only returns a HistoryBuffer's statistics methods
    path = tmp_path / 'crafted.pth'
    path.write_bytes(getattr_chain_payload(str(tmp_path / 'MARKER')))
    with pytest.raises(CheckpointRefused):
        load_training_checkpoint(str(path))
    assert not (tmp_path / 'MARKER').exists()


def test_vargo_checkpoints_are_plain_data(tmp_path):
    # what tools/train.py writes loads under torch's default allow-list (no add_safe_globals)
    from vargo.core.checkpoint import from_plain, to_plain
    from mmengine.logging.history_buffer import HistoryBuffer
    import numpy as np
    buf = HistoryBuffer()
    buf.update(0.25, 2)
    hub = {'log_scalars': {'a': buf}, 'runtime_info': {'eta': np.float64(1.5),
                                                       'ids': np.arange(3)}}
    torch.save(to_plain(hub), tmp_path / 'x.pth')
    back = from_plain(torch.load(tmp_path / 'x.pth', weights_only=True))
    assert isinstance(back['log_scalars']['a'], HistoryBuffer)
    assert back['log_scalars']['a']._log_history.tolist() == [0.25]
    assert back['log_scalars']['a']._count_history.tolist() == [2]
    assert type(back['runtime_info']['eta']) is float
    assert back['runtime_info']['ids'].tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match='runtime_info.bad'):
        to_plain({'runtime_info': {'bad': object()}}, 'message_hub')
