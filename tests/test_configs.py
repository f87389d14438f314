"""Every config under configs/ builds and runs one iteration with its model swapped to a tiny
random size."""
import glob
import os

import pytest

from conftest import ROOT
from vargo.core.runner import build_runner, load_config, prepare_config

CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p)

#: per policy type: settings that make it tiny and weight-free (same architecture family)
TINY = {
    'LlamaGenPolicy': dict(
        arch=dict(dim=32, n_layer=1, n_head=2), image_size=16, downsample=4, vocab_size=64,
        checkpoint=None, tokenizer_checkpoint=None,
        tokenizer=dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16,
                       codebook_size=64, codebook_embed_dim=8, norm_groups=8)),
    # scales 1-2-4 over a downsample-8 VQVAE: 32 px, as the Shapes world needs
    'VARPolicy': dict(
        arch=dict(depth=1, embed_dim=32, num_heads=2), patch_nums=(1, 2, 4), image_size=32,
        vocab_size=64, checkpoint=None, tokenizer_checkpoint=None,
        tokenizer=dict(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2, 2, 2),
                       num_res_blocks=1, norm_groups=8)),
    # 32 px over a stride-8 KL VAE: 4 x 4 continuous tokens (the Shapes world's image size)
    'MARPolicy': dict(
        arch=dict(embed_dim=32, depth=1, num_heads=2, diffloss_d=1, diffloss_w=32),
        image_size=32, buffer_size=2, checkpoint=None, tokenizer_checkpoint=None,
        tokenizer=dict(embed_dim=4, ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1, resolution=32,
                       enc_attn_resolutions=(), num_groups=8)),
    # 16 px over a downsample-4 VQGAN with attention at 8 px; 1024 codes so the cin configs' 1000
    # class tokens fit the shared vocabulary (Labelator)
    'VQGANTransformerPolicy': dict(
        arch=dict(n_layer=1, n_head=2, n_embd=32), image_size=16, vocab_size=1024,
        block_size=None, checkpoint=None, tokenizer_checkpoint=None,
        tokenizer=dict(n_embed=1024, embed_dim=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                       attn_resolutions=(8,), resolution=16, z_channels=16, norm_groups=8)),
    # a 2-layer Janus over 4 x 4 tokens of a 64-code VQ (32 px); a word-level tokenizer
    'JanusPolicy': dict(
        model_path=None, checkpoint=None, tokenizer_checkpoint=None,
        arch=dict(text=dict(vocab_size=64, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=512),
                  vision=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, mlp_ratio=2.0),
                  vq=dict(num_embeddings=64, base_channels=32, channel_multiplier=[1, 1, 2, 2],
                          num_res_blocks=1, latent_channels=16)),
        tokenizer=dict(vocabulary=['a', 'photo', 'of', 'red', 'blue', 'cat', 'dog'])),
}
#: per reward-head type: settings that make a model-based head tiny and file-free
TINY_CLIP = dict(embed_dim=16,
                 vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                 text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
SHAPES_STATS = os.path.join(ROOT, 'components', 'benchmarks', 'weights', 'shapes_real_stats.npz')
TINY_REWARDS = {
    'ClipScoreReward': dict(arch=TINY_CLIP, checkpoint=None, random_init=True, weights_tag=None),
    'HPSv2Reward': dict(arch=TINY_CLIP, checkpoint=None, random_init=True),
    'LooFidReward': dict(feature_extractor='vargo-shapes', feature_extractor_weights_path=None,
                         real_stats_path=SHAPES_STATS, real_stats_prefix='c2i_train_',
                         init_stats_path=None),
}
TINY_TEXT_ENCODER = dict(type='word-t5', vocabulary=['a', 'red', 'blue', 'circle', 'square'],
                         d_model=16, num_layers=1, num_heads=2, d_ff=32, max_length=8)


def shrink(cfg):
    """Swap the policy for a tiny random one and the schedule for one small iteration."""
    policy = cfg.policy
    if policy['type'] not in TINY:
        raise AssertionError(f'add a tiny setting for {policy["type"]} to tests/test_configs.py')
    size = policy.get('image_size')
    tokenizer = policy.get('tokenizer')
    vocabulary = tokenizer.get('vocabulary') if isinstance(tokenizer, dict) else None
    policy.update(TINY[policy['type']])
    if policy['type'] == 'JanusPolicy' and vocabulary:   # Shapes prompts: keep their words
        policy['tokenizer'] = dict(vocabulary=vocabulary)
    if size == 32:   # Shapes configs: the ShapesEval reward needs the 32-px world
        policy['image_size'] = 32
    if policy.get('task') == 't2i':
        policy['text_encoder'] = TINY_TEXT_ENCODER
        policy.pop('cls_token_num', None)
        policy.pop('caption_dim', None)
    if policy.get('task') == 'c2i' and 'num_classes' in policy:
        policy['num_classes'] = min(policy['num_classes'], 1000)
    for head in cfg.rewards.values():
        shrink_reward(head, cfg)
    dataset = cfg.train_dataloader.dataset
    if dataset.get('type') == 'PromptFileDataset' and not os.path.isfile(
            os.path.join(ROOT, dataset.path)):
        dataset.path = tiny_prompt_file()    # a user's prompt file the config names
    for selector in cfg.get('token_selectors', {}).values():
        if selector and selector.get('saliency_reward'):
            shrink_reward(selector['saliency_reward'])
    if cfg.sampler.get('type') == 'VMRSampler':
        cfg.sampler['split_step'] = 1       # the tiny policies have few decode steps
    for reg in cfg.get('regularizers', {}).values():
        if reg and 'vocab_size' in reg:
            reg['vocab_size'] = policy['vocab_size']
    # two groups of at most 4 samples: the configs' G (8-16) adds nothing to what is tested
    cfg.group_size = g = min(cfg.group_size, 4)
    cfg.train_cfg.samples_per_rank = 2 * g
    cfg.train_cfg.minibatch_samples = None
    cfg.train_cfg.max_iters = 1
    cfg.default_hooks.checkpoint = dict(type='AtomicCheckpointHook', interval=1, by_epoch=False,
                                        backend_args=dict(backend='vargo_atomic'))
    cfg.default_hooks.image_grid = dict(type='ImageGridHook', interval=1, preview_conditions=0)
    # the curves and the HTML report are matplotlib work of seconds per config and the same for
    # every config; tests/test_monitor_report.py and tests/test_runner.py cover those hooks
    cfg.default_hooks.curves = None
    cfg.default_hooks.report = None
    return cfg


_GENEVAL_FILES: dict = {}


def tiny_geneval_files() -> dict:
    """A random tiny Mask2Former directory and GenEval metadata file (written once per run)."""
    if not _GENEVAL_FILES:
        import tempfile
        from geneval_files import write_detector_dir, write_metadata
        root = tempfile.mkdtemp(prefix='vargo_geneval_')
        write_detector_dir(os.path.join(root, 'detector'))
        _GENEVAL_FILES.update(detector=os.path.join(root, 'detector'),
                              metadata=write_metadata(os.path.join(root, 'metadata.jsonl')))
    return _GENEVAL_FILES


_REWARD_FILES: dict = {}


def tiny_prompt_file() -> str:
    """Two prompts with quoted text (for the OCR reward), written once per run."""
    if 'prompts' not in _REWARD_FILES:
        import tempfile
        path = os.path.join(tempfile.mkdtemp(prefix='vargo_prompts_'), 'prompts.txt')
        with open(path, 'w') as f:
            f.write('a photo of a sign that says "cat"\na red "dog" poster\n')
        _REWARD_FILES['prompts'] = path
    return _REWARD_FILES['prompts']


def tiny_reward_files() -> dict:
    """Tiny random HPSv3 and PP-OCRv5 files (written once per run)."""
    if 'ocr' not in _REWARD_FILES:
        import tempfile
        from ocr_files import write_ocr_dirs
        from preference_files import write_hpsv3_files
        root = tempfile.mkdtemp(prefix='vargo_rewards_')
        os.makedirs(os.path.join(root, 'hpsv3'))
        _REWARD_FILES.update(hpsv3=write_hpsv3_files(os.path.join(root, 'hpsv3')),
                             ocr=write_ocr_dirs(root))
    return _REWARD_FILES


def shrink_reward(head, cfg=None):
    """Swap a model-based reward head (and the sub-heads of a composite) for a tiny one."""
    if head['type'] in ('HPSv3Reward', 'OcrReward'):
        files = tiny_reward_files()
        if head['type'] == 'HPSv3Reward':
            head.update(checkpoint=files['hpsv3'][0], backbone_dir=files['hpsv3'][1],
                        dtype='float32')
        else:
            head.update(det_checkpoint=files['ocr'][0], rec_checkpoint=files['ocr'][1])
        return
    if head['type'] == 'GenEvalReward':
        files = tiny_geneval_files()
        head.update(metadata_file=files['metadata'], detector_dir=files['detector'],
                    clip_arch=TINY_CLIP, clip_checkpoint=None, clip_random_init=True,
                    clip_weights_tag=None, image_scale=(64, 64))
        if cfg is not None and cfg.train_dataloader.dataset.get('type') == 'GenEvalPromptDataset':
            cfg.train_dataloader.dataset.path = files['metadata']
        return
    if head['type'] == 'CompositeReward':
        for sub in head['heads'].values():
            shrink_reward(sub, cfg)
    elif head['type'] == 'StageEntropyBonus':
        shrink_reward(head['base'], cfg)
    elif head['type'] == 'VMRReward':
        shrink_reward(head['head'], cfg)
    elif head['type'] in TINY_REWARDS:
        head.update(TINY_REWARDS[head['type']])
        if head['type'] == 'LooFidReward':
            head.pop('init_stats_prefix', None)


def test_there_are_configs():
    names = {os.path.relpath(p, os.path.join(ROOT, 'configs')) for p in CONFIGS}
    assert 'grpo/llamagen-b_grpo_c2i.py' in names and 'grpo/llamagen-tiny_grpo_jpeg.py' in names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_runs_one_iteration_tiny(path, tmp_path):
    cfg = shrink(load_config(path))
    cfg = prepare_config(cfg, config_path=path, work_dir=str(tmp_path))
    cfg.experiment_name = f'test_{os.path.basename(path)[:-3]}_{id(cfg)}'
    runner = build_runner(cfg)
    runner.train()
    assert runner.iter == 1
    assert (tmp_path / 'iter_1.pth').exists()
    scalars = runner.message_hub.log_scalars
    reward_keys = [k for k in scalars if k.startswith('train/reward/') and k.endswith('/mean')]
    assert reward_keys, sorted(scalars)
    mismatch = scalars['train/policy/logp_mismatch_max'].current()
    assert mismatch < 1e-3


#: the paper configs whose official files (weights, prompts, reward models) a user downloads
PAPER_CONFIGS = ['stage/janus-pro-7b_stage_geneval.py', 'stage/janus-pro-7b_stage_hps.py',
                 'var_rl/janus-pro-7b_var-rl_text.py', 'var_rl/var-d16_var-rl_c2i.py',
                 'mar_grpo/mar-b_mar-grpo_c2i.py', 'grpo/var-d16_grpo_c2i.py',
                 'grpo/mar-b_grpo_c2i.py']


@pytest.mark.parametrize('name', PAPER_CONFIGS)
def test_paper_config_without_its_files_names_each_and_where_it_is_published(name, tmp_path):
    """What ``tools/train.py CONFIG --dry-run`` reports on a machine without the official files:
    one entry per missing file, each followed by where the file is published; no work dir."""
    path = os.path.join(ROOT, 'configs', name)
    assert os.path.exists(path), name
    with pytest.raises(FileNotFoundError) as e:
        prepare_config(load_config(path), config_path=path, work_dir=str(tmp_path / 'wd'))
    lines = str(e.value).splitlines()
    assert lines[0] == 'the config names files that do not exist:'
    entries = [i for i, ln in enumerate(lines) if ln.startswith('  ') and ' = ' in ln
               and not ln.startswith('    ')]
    assert entries, lines
    for i in entries:
        assert lines[i + 1].strip().startswith('published at '), (name, lines[i:i + 2])
    assert not (tmp_path / 'wd').exists()
