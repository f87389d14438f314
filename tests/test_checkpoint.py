"""Checkpoint IO: atomic writes, strict loading, MMEngine resume under weights_only."""
import os

import pytest
import torch
from torch import nn

from vargo.core.checkpoint import (AtomicLocalBackend, StateDictMismatch, atomic_save,
                                   load_state_dict_strict, safe_load)


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / 'ckpt.pth'
    atomic_save({'w': torch.ones(3)}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('disk full (simulated)')

    with pytest.raises(RuntimeError, match='simulated'):
        atomic_save({'w': Unpicklable()}, str(path))
    assert torch.equal(safe_load(str(path))['w'], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pth']  # no temp file left behind


def test_atomic_backend_put_and_put_text(tmp_path):
    backend = AtomicLocalBackend()
    backend.put(b'abc', tmp_path / 'a.bin')
    backend.put_text('iter_3.pth', tmp_path / 'last_checkpoint')
    assert (tmp_path / 'a.bin').read_bytes() == b'abc'
    assert (tmp_path / 'last_checkpoint').read_text() == 'iter_3.pth'


def test_strict_load_lists_missing_and_unexpected_keys():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    state = m.state_dict()
    state['extra.weight'] = torch.zeros(1)
    del state['1.bias']
    with pytest.raises(StateDictMismatch) as e:
        load_state_dict_strict(m, state, source='my.pth')
    assert 'missing keys (1): 1.bias' in str(e.value)
    assert 'unexpected keys (1): extra.weight' in str(e.value)
    load_state_dict_strict(m, m.state_dict())  # a matching one loads


def test_load_policy_from_checkpoint_takes_the_policy_keys_strictly(tmp_path):
    from vargo.core.checkpoint import NoPolicyWeights, load_policy_from_checkpoint
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    state = {f'policy.{k}': v for k, v in src.state_dict().items()}
    atomic_save({'state_dict': {**state, 'other.x': torch.zeros(1)}}, str(tmp_path / 'ok.pth'))
    load_policy_from_checkpoint(dst, str(tmp_path / 'ok.pth'))
    assert torch.equal(dst.weight, src.weight)
    atomic_save({'state_dict': {'weight': src.weight}}, str(tmp_path / 'raw.pth'))
    with pytest.raises(NoPolicyWeights, match='tools/train.py'):
        load_policy_from_checkpoint(dst, str(tmp_path / 'raw.pth'))
    atomic_save({'state_dict': {'policy.weight': src.weight}}, str(tmp_path / 'part.pth'))
    with pytest.raises(StateDictMismatch, match='bias'):
        load_policy_from_checkpoint(dst, str(tmp_path / 'part.pth'))
