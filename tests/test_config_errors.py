"""Bad input fails before training with a message that names the fix."""
import os
import subprocess
import sys

import pytest
from mmengine.registry import DefaultScope

import toy_components  # noqa: F401  (registers the toy family)
from conftest import ROOT
from vargo.core.registry import MODELS, POLICIES, ConfigError, checked_build
from vargo.core.runner import load_config, prepare_config

TOY = os.path.join(ROOT, 'tests', 'configs', 'toy_grpo.py')


def _prepare(tmp_path, **options):
    cfg = load_config(TOY, options)
    return prepare_config(cfg, config_path=TOY, work_dir=str(tmp_path))


def _build_model(cfg):
    with DefaultScope.overwrite_default_scope('vargo'):
        return MODELS.build(cfg.model)


def test_valid_config_builds(tmp_path):
    model = _build_model(_prepare(tmp_path))
    assert model.group_size == 4
    assert model.reference is not model.policy
    # frozen tensors are shared with the reference, trainable ones copied
    assert model.reference.frozen.weight is model.policy.frozen.weight
    assert model.reference.head.weight is not model.policy.head.weight


def test_unknown_component_type_names_closest_match(tmp_path):
    cfg = _prepare(tmp_path, **{'rewards.jpeg.type': 'JpegCompresibilityReward'})
    with pytest.raises(ConfigError, match="Did you mean 'JpegCompressibilityReward'") as e:
        _build_model(cfg)
    assert 'JpegIncompressibilityReward' in str(e.value)  # lists the registered names


def test_wrong_keyword_names_closest_keyword(tmp_path):
    cfg = _prepare(tmp_path, **{'advantage.std_scop': 'group'})
    with pytest.raises(ConfigError, match="unexpected keyword 'std_scop'; did you mean 'std_scope'"):
        _build_model(cfg)


def test_missing_method_setting_has_no_silent_default():
    with pytest.raises(ConfigError, match='missing required setting.*std_scope'):
        from vargo.core.registry import ADVANTAGE_ESTIMATORS
        checked_build(dict(type='GroupNormAdvantage'), ADVANTAGE_ESTIMATORS)


def test_misspelled_top_level_key(tmp_path):
    cfg = load_config(TOY)
    cfg.regularisers = cfg.pop('regularizers')
    with pytest.raises(ConfigError, match="unknown top-level config key 'regularisers'; did you mean 'regularizers'"):
        prepare_config(cfg, config_path=TOY, work_dir=str(tmp_path))


def test_group_size_below_two(tmp_path):
    with pytest.raises(ConfigError, match='group_size=1.*set group_size >= 2'):
        _prepare(tmp_path, group_size=1)


def test_batch_not_divisible_by_group_size(tmp_path):
    with pytest.raises(ConfigError, match='samples_per_rank=10 is not divisible by group_size=4.*use 8 or 12'):
        _prepare(tmp_path, **{'train_cfg.samples_per_rank': 10})


def test_minibatch_not_whole_groups(tmp_path):
    with pytest.raises(ConfigError, match='minibatch_samples=6'):
        _prepare(tmp_path, **{'train_cfg.minibatch_samples': 6})


def test_objective_settings_are_required(tmp_path):
    cfg = load_config(TOY)
    del cfg.objective['clip_eps']
    prepare_config(cfg, config_path=TOY, work_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"objective is missing \['clip_eps'\]"):
        _build_model(cfg)


def test_missing_checkpoint_file_fails_before_training(tmp_path):
    cfg = load_config(TOY)
    cfg.policy['type'] = 'ToyPolicyWithCheckpoint'
    cfg.policy['checkpoint'] = str(tmp_path / 'nope' / 'c2i_B_256.pt')
    with pytest.raises(FileNotFoundError) as e:
        prepare_config(cfg, config_path=TOY, work_dir=str(tmp_path / 'wd'))
    msg = str(e.value)
    assert 'policy.checkpoint' in msg and 'c2i_B_256.pt' in msg
    assert 'https://example.org/c2i_B_256.pt' in msg  # where it is published
    assert not (tmp_path / 'wd').exists()


def test_cli_reports_config_errors_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, 'tests'))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train.py'), TOY,
                           '--work-dir', str(tmp_path), '--cfg-options', 'group_size=3'],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert 'samples_per_rank=16 is not divisible by group_size=3' in proc.stderr
    assert 'Traceback' not in proc.stderr
