"""A restructure changes no numbers: every Shapes training config, 4 iterations from the shipped
base model with a fixed seed, gives bit-identical weights and optimizer state to the digests
recorded before it (tools/fixed_seed_digest.py; tests/fixtures/fixed_seed_digests.json).

Digests are per machine kind (float results differ between instruction sets); on a kind with
none recorded the test is skipped and says how to record them.
"""
import importlib.util
import json
import os

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location(
    'fixed_seed_digest', os.path.join(ROOT, 'tools', 'fixed_seed_digest.py'))
digest_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digest_tool)


def _stored():
    if not os.path.isfile(digest_tool.DEFAULT_FILE):
        return {}
    with open(digest_tool.DEFAULT_FILE) as f:
        return json.load(f).get('kinds', {})


@pytest.mark.parametrize('name', sorted(digest_tool.CONFIGS))
def test_fixed_seed_run_is_bit_identical_to_the_recorded_digest(name, tmp_path):
    kind = digest_tool.machine_kind()
    stored = _stored()
    if kind not in stored:
        pytest.skip(f'no digests recorded for {kind} (stored: {sorted(stored)}); record them '
                    f'with `python tools/fixed_seed_digest.py --record` on a checkout from '
                    f'before a change')
    got = {name: digest_tool.run_config(name, str(tmp_path / name))}
    assert digest_tool.mismatches(got, stored[kind]) == []
