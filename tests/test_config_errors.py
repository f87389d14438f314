"""Bad input fails before training with a message that names the fix."""
import os
import subprocess
import sys

import pytest
from mmengine.registry import DefaultScope

import toy_components  # noqa: F401  (registers the toy family)
from conftest import ROOT, run_python
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


# ------------------------------------------------------------------------------------------
# tools/train.py: every malformed config is one ``error:`` line naming the key and the value,
# exit code 2, no traceback, printed before anything else, and no directory left behind.
# The cases of the fault-injection pass of issue 12 (each also with --dry-run).
# ------------------------------------------------------------------------------------------
import importlib.util  # noqa: E402

import torch  # noqa: E402

SHAPES = os.path.join(ROOT, 'configs', 'grpo', 'llamagen_grpo_shapes.py')
TINY = os.path.join(ROOT, 'configs', 'grpo', 'llamagen-tiny_grpo_jpeg.py')


def _train_module():
    spec = importlib.util.spec_from_file_location('vargo_tools_train',
                                                  os.path.join(ROOT, 'tools', 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN = _train_module()

#: (case, config, --cfg-options, texts the one line must contain: the key, the value, the fix)
BAD_OPTIONS = [
    ('negative lr', SHAPES, ['optim_wrapper.optimizer.lr=-0.1'],
     ['optim_wrapper.optimizer.lr=-0.1', 'positive', 'lr=1e-4']),
    ('lr as a string', SHAPES, ['optim_wrapper.optimizer.lr=fast'],
     ["optim_wrapper.optimizer.lr='fast'", 'str', 'without quotes']),
    ('negative max_iters', SHAPES, ['train_cfg.max_iters=-5'],
     ['train_cfg.max_iters=-5', 'int >= 1', 'train_cfg.max_iters=60']),
    ('mu=0', SHAPES, ['train_cfg.mu=0'], ['train_cfg.mu=0', 'inner epochs', 'train_cfg.mu=1']),
    ('optimizer type typo', SHAPES, ['optim_wrapper.optimizer.type=AdamWW'],
     ["optim_wrapper.optimizer.type='AdamWW'", "did you mean 'AdamW'"]),
    ('hook type typo', SHAPES, ['default_hooks.logger.type=LogerHook'],
     ["default_hooks.logger.type='LogerHook'", "did you mean 'LoggerHook'"]),
    ('scheduler type typo', SHAPES, ['param_scheduler.0.type=ConstantLRR'],
     ["param_scheduler[0].type='ConstantLRR'", "did you mean 'ConstantLR'"]),
    ('dataset type typo', SHAPES, ['train_dataloader.dataset.type=ShapesClassDatset'],
     ["train_dataloader.dataset.type='ShapesClassDatset'", "did you mean 'ShapesClassDataset'"]),
    ('dataset split typo', SHAPES, ['train_dataloader.dataset.split=trian'],
     ["train_dataloader.dataset.split='trian'", "did you mean 'train'"]),
    ('num_classes beyond the policy', TINY, ['train_dataloader.dataset.num_classes=1000'],
     ['train_dataloader.dataset', 'num_classes=1000', 'class ids must be in [0, 10)']),
    ('negative clip_eps', SHAPES, ['objective.clip_eps=-0.2'],
     ['objective.clip_eps=-0.2', 'positive float']),
    ('aggregation typo', SHAPES, ['objective.aggregation=token_meen'],
     ["objective.aggregation='token_meen'", "did you mean 'token_mean'"]),
    ('zero temperature', SHAPES, ['sampler.temperature=0'], ['sampler.temperature=0', '> 0']),
    ('negative KL beta', SHAPES, ['regularizers.kl.beta=-1'],
     ['regularizers.kl.beta=-1', '>= 0', 'remove the regularizer']),
    ('top_p above 1', SHAPES, ['sampler.top_p=1.5'], ['sampler.top_p=1.5', '(0, 1]']),
    ('negative CFG scale', SHAPES, ['sampler.cfg_scale=-3'],
     ['sampler.cfg_scale=-3', '>= 0', '1 = no guidance']),
    ('checkpoint interval 0', SHAPES, ['default_hooks.checkpoint.interval=0'],
     ['default_hooks.checkpoint.interval=0', 'int >= 1', 'interval=50']),
    ("MMEngine's non-atomic checkpoint hook", SHAPES, ['default_hooks.checkpoint.type=CheckpointHook'],
     ['default_hooks.checkpoint', 'non-atomically', "type='AtomicCheckpointHook'"]),
    ('group_size a float', SHAPES, ['group_size=8.0'],
     ['group_size=8.0', 'float', 'must be an int >= 2', 'group_size=8']),
]


def _config_files(tmp_path):
    """Malformed config files: (case, config path, texts the line must contain)."""
    syntax = tmp_path / 'syntax_error.py'
    syntax.write_text(f"_base_ = [{SHAPES!r}]\ntrain_cfg = dict(max_iters=3\n")
    child = tmp_path / 'child_of_broken.py'
    child.write_text("_base_ = ['./syntax_error.py']\n")
    imports = tmp_path / 'missing_import.py'
    imports.write_text(f"_base_ = [{SHAPES!r}]\ncustom_imports = dict(imports=["
                       f"'vargo_no_such_module'], allow_failed_imports=False)\n")
    cyc_a, cyc_b = tmp_path / 'cycle_a.py', tmp_path / 'cycle_b.py'
    cyc_a.write_text("_base_ = ['./cycle_b.py']\ngroup_size = 8\n")
    cyc_b.write_text("_base_ = ['./cycle_a.py']\n")
    gstr = tmp_path / 'group_size_str.py'
    gstr.write_text(f"_base_ = [{SHAPES!r}]\ngroup_size = '8'\n")
    return [
        ('syntax error', syntax, [str(syntax), 'line 2', 'invalid Python syntax']),
        ('syntax error in a _base_', child, [str(syntax), 'line 2']),
        ('missing custom_imports module', imports,
         ['custom_imports.imports', "'vargo_no_such_module'", 'PYTHONPATH']),
        ('cyclic _base_', cyc_a, ['_base_ cycle', 'cycle_a.py -> ', 'cycle_b.py -> ',
                                  'remove one']),
        ('group_size a string', gstr, ["group_size='8'", 'str', 'group_size=8']),
    ]


def _main(capsys, argv):
    rc = TRAIN.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line(rc, out, err, texts, work_dir):
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for text in texts:
        assert text in lines[0], (text, lines[0])
    assert 'Traceback' not in err and not out.strip(), out  # nothing before (or after) it
    assert not os.path.exists(work_dir)


@pytest.mark.parametrize('dry_run', [False, True], ids=['train', 'dry-run'])
def test_each_malformed_option_is_one_error_line(tmp_path, capsys, dry_run):
    work_dir = str(tmp_path / 'wd')
    for case, config, options, texts in BAD_OPTIONS:
        argv = [config, '--work-dir', work_dir, '--cfg-options', *options]
        rc, out, err = _main(capsys, argv + (['--dry-run'] if dry_run else []))
        try:
            _assert_one_line(rc, out, err, texts, work_dir)
        except AssertionError as e:
            raise AssertionError(f'{case}: {e}') from None


@pytest.mark.parametrize('dry_run', [False, True], ids=['train', 'dry-run'])
def test_each_malformed_config_file_is_one_error_line(tmp_path, capsys, dry_run):
    work_dir = str(tmp_path / 'wd')
    for case, config, texts in _config_files(tmp_path):
        argv = [str(config), '--work-dir', work_dir] + (['--dry-run'] if dry_run else [])
        rc, out, err = _main(capsys, argv)
        try:
            _assert_one_line(rc, out, err, texts, work_dir)
        except AssertionError as e:
            raise AssertionError(f'{case}: {e}') from None


def test_policy_that_does_not_fit_its_checkpoint_names_the_policy_key(tmp_path, capsys):
    work_dir = str(tmp_path / 'wd')
    rc, out, err = _main(capsys, [SHAPES, '--work-dir', work_dir, '--cfg-options',
                                  'policy.num_classes=5'])
    _assert_one_line(rc, out, err, ['error: policy: ', 'num_classes'], work_dir)


def test_sampler_of_another_family_fails_at_build(tmp_path, capsys):
    """ARSampler with the VAR Shapes policy: refused when the algorithm is built (the policy
    lacks the RasterDecoding protocol), before any model runs."""
    work_dir = str(tmp_path / 'wd')
    var_shapes = os.path.join(ROOT, 'configs', 'grpo', 'var_grpo_shapes.py')
    rc, out, err = _main(capsys, [var_shapes, '--work-dir', work_dir, '--cfg-options',
                                  'sampler.type=ARSampler'])
    _assert_one_line(rc, out, err, ['ARSampler', 'VARPolicy', 'RasterDecoding'], work_dir)


def test_dry_run_builds_optimizer_schedulers_dataloader_and_hooks(tmp_path, capsys):
    work_dir = str(tmp_path / 'wd')
    rc, out, err = _main(capsys, [SHAPES, '--work-dir', work_dir, '--dry-run'])
    assert rc == 0, err
    for text in ('optimizer         AdamW(lr=0.0001) in OptimWrapper; schedulers: ConstantLR',
                 'dataloader        18 conditions, 16 per rank per iteration',
                 'loop              GRPOLoop, 60 iterations', 'AtomicCheckpointHook'):
        assert text in out, out
    assert not os.path.exists(work_dir)


def test_cli_error_before_any_output_and_debug_shows_the_traceback(tmp_path):
    work_dir = tmp_path / 'wd'
    args = ['tools/train.py', SHAPES, '--work-dir', str(work_dir), '--cfg-options',
            'optim_wrapper.optimizer.lr=-0.1']
    proc = run_python(*args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        'error: optim_wrapper.optimizer.lr=-0.1 (a float) must be a positive finite number '
        '(the learning rate); e.g. lr=1e-4']
    assert proc.stdout == ''  # no environment or config dump
    assert not work_dir.exists()
    proc = run_python(*args, '--debug', check=False)
    assert proc.returncode != 0
    assert 'Traceback' in proc.stderr and 'ConfigError' in proc.stderr
    assert 'optim_wrapper.optimizer.lr=-0.1' in proc.stderr
    assert not work_dir.exists()


def test_failure_after_the_runner_exists_removes_the_dirs_it_created(tmp_path, capsys):
    """A resume checkpoint of another model fails in Runner.train(), before the first
    iteration: one line, and the new work dir (with its <timestamp>/ log dir) is gone."""
    first = tmp_path / 'first'
    rc, out, err = _main(capsys, [TOY, '--work-dir', str(first), '--cfg-options',
                                  'train_cfg.max_iters=1', 'default_hooks.checkpoint.interval=1',
                                  'default_hooks.image_grid.preview_conditions=0'])
    assert rc == 0, err
    ckpt = first / 'iter_1.pth'
    assert ckpt.exists()
    second = tmp_path / 'parent' / 'second'
    rc, out, err = _main(capsys, [TOY, '--work-dir', str(second), '--resume', str(ckpt),
                                  '--cfg-options', 'policy.vocab_size=6',
                                  'default_hooks.image_grid.preview_conditions=0'])
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in err, err
    assert str(ckpt) in lines[0]
    assert not (tmp_path / 'parent').exists()  # nor the parent it created
    # an existing work dir keeps what it held, loses what this run added
    keep = tmp_path / 'keep'
    keep.mkdir()
    (keep / 'notes.txt').write_text('mine')
    rc, out, err = _main(capsys, [TOY, '--work-dir', str(keep), '--resume', str(ckpt),
                                  '--cfg-options', 'policy.vocab_size=6'])
    assert rc == 2, err
    assert sorted(os.listdir(keep)) == ['notes.txt']


def test_prebuilt_model_trains_bit_identically(tmp_path):
    """VargoRunner.from_cfg builds the model before Runner.__init__ (seeded as __init__ seeds)
    and restores the RNG states after it: the run equals MMEngine's own order, where
    __init__ seeds and then builds the model (ToyPolicy's random init uses the RNG)."""
    from mmengine.runner import Runner

    from vargo.core.runner import VargoRunner, build_runner

    def train(work_dir, make, seed=0):
        cfg = load_config(TOY, {'train_cfg.max_iters': 2, 'default_hooks.checkpoint.interval': 2,
                                'default_hooks.image_grid.preview_conditions': 0,
                                'randomness.seed': seed})
        cfg = prepare_config(cfg, config_path=TOY, work_dir=str(work_dir))
        cfg.experiment_name = f'bitident_{work_dir.name}'
        runner = make(cfg)
        runner.train()
        return {k: v.clone() for k, v in runner.model.state_dict().items()}

    ours = train(tmp_path / 'ours', build_runner)
    mmengine_order = train(tmp_path / 'mmengine', lambda cfg: Runner.from_cfg.__func__(
        VargoRunner, cfg))
    assert ours.keys() == mmengine_order.keys()
    for k in ours:
        assert torch.equal(ours[k], mmengine_order[k]), k
    other_seed = train(tmp_path / 'other_seed', build_runner, seed=1)  # the check can fail
    assert not torch.equal(ours['policy.head.weight'], other_seed['policy.head.weight'])


def test_a_missing_file_is_traced_to_its_release_folder():
    """Official files that share a name (``<release>/checkpoints/last.ckpt``) are published per
    release: the nearest enclosing folder with a ``file_sources`` entry names the source."""
    from vargo.core.config import _source_of
    sources = {'release_a': 'https://a', 'last.ckpt': 'https://generic', 'model.pt': 'https://m'}
    assert _source_of(sources, 'ckpts/release_a/checkpoints/last.ckpt') == 'https://generic'
    sources.pop('last.ckpt')
    assert _source_of(sources, 'ckpts/release_a/checkpoints/last.ckpt') == 'https://a'
    assert _source_of(sources, 'ckpts/model.pt') == 'https://m'
    assert _source_of(sources, 'ckpts/other/last.ckpt') is None
