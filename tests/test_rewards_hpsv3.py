"""HPSv3Reward: HPSv3 (arXiv 2508.03789) over transformers' Qwen2-VL classes, local files.

Parity: the numbers in tests/fixtures/reward_parity.json were computed by the hpsv3 package's
own ``HPSv3RewardInferencer.reward`` (hpsv3 1.0.0, transformers 4.45.2) on the same tiny weights,
images and prompts (tests/fixtures/reward_parity_reference.py; the hpsv3.py docstring says how).
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch

import reward_parity_common as C
from preference_files import (benchmark_reward_heads, hpsv3_file_key, missing_file_message,
                              parity_batch, parity_reference, rollout, write_hpsv3_files)
from vargo.components.rewards import HPSv3Reward
from vargo.components.rewards.hpsv3 import (HPSV3_FILE_SOURCES, HPSV3_INSTRUCTION,
                                            HPSV3_REWARD_SUFFIX, qwen2_vl_patches)
from vargo.core.checkpoint import StateDictMismatch
from vargo.core.registry import REWARD_HEADS

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    return write_hpsv3_files(str(tmp_path_factory.mktemp('hpsv3')))


@pytest.fixture(scope='module')
def head(files):
    checkpoint, backbone = files
    return HPSv3Reward(checkpoint=checkpoint, backbone_dir=backbone, dtype='float32')


def package_pixels(head, pil):
    """The package's pixels: PIL bicubic resize to its smart_resize size, /255, CLIP mean/std,
    Qwen2-VL's patch order."""
    from PIL import Image
    (h, w), _ = head.sizes(pil.size[1], pil.size[0])
    a = np.asarray(pil.resize((w, h), resample=Image.BICUBIC), dtype=np.float64)
    x = torch.from_numpy((a / 255.0 - MEAN) / STD).permute(2, 0, 1).float()[None]
    return qwen2_vl_patches(x), torch.tensor([[1, h // 14, w // 14]])


def test_parity_with_the_package_scoring(head, files):
    ref = parity_reference()['hpsv3']
    f32 = ref['float32']
    # the package's instruction and reward token, and its official settings
    assert hashlib.sha256(HPSV3_INSTRUCTION.encode()).hexdigest() == ref['instruction_sha256']
    assert HPSV3_REWARD_SUFFIX == ref['reward_suffix']
    assert ref['official_yaml']['min_pixels'] == ref['official_yaml']['max_pixels'] == head.pixels
    assert head.reward_token_id == f32['reward_token_id']
    assert head.tokenizer.pad_token_id == f32['pad_token_id']
    # the state-dict layout of the file equals the model the package builds
    from safetensors import safe_open
    with safe_open(files[0], 'pt') as f:
        layout = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    assert C.layout_digest(layout) == f32['layout_digest'] and len(layout) == f32['num_keys']
    # tokens: the whole chat, per prompt, for a 448 x 448 image (256 image tokens)
    seqs = [head.tokenize([p], 256, torch.device('cpu'))[0][0].tolist() for p in C.PROMPTS]
    assert seqs[0] == [int(t) for t in f32['token_ids_prompt0'].split()]
    assert [hashlib.sha256(' '.join(map(str, s)).encode()).hexdigest()
            for s in seqs] == f32['token_sha256']
    # image sizes: the package's resize targets and token counts
    tensors, pil = parity_batch()
    grids = [[1, *(s // 14 for s in head.sizes(*x.shape[-2:])[1])] for x in tensors]
    assert grids == f32['image_grid_thw']
    assert [g[1] * g[2] // 4 for g in grids] == f32['image_tokens']
    mu, log_sigma = np.array(f32['mu']), np.array(f32['sigma_logit'])   # [prompt, image]
    assert np.ptp(mu, axis=1).min() > 0.05                              # images do matter
    model_out = np.zeros((6, 6, 2))
    head_out = np.zeros((6, 6))
    for j, (x, img) in enumerate(zip(tensors, pil)):
        pixels, grid = package_pixels(head, img)
        s = pixels.double()
        assert [float(s.sum()), float(s.abs().sum())] == pytest.approx(f32['pixel_sums'][j],
                                                                        abs=0.2)
        ours, _ = head.pixel_values(x)
        assert (ours - pixels).abs().gt(1e-3).float().mean() < 0.01     # PIL's filter, 8-bit
        for i, p in enumerate(C.PROMPTS):
            model_out[i, j] = head.pixel_outputs(pixels, grid, [p]).numpy()[0]
            head_out[i, j] = float(head(rollout(x, prompts=[p])).scores[0])
    # the model on the package's pixels (measured 2.2e-7 and 4.2e-7)
    assert np.abs(model_out[..., 0] - mu).max() < 1e-5
    assert np.abs(model_out[..., 1] - log_sigma).max() < 1e-5
    # the whole head on float images (measured 2.5e-5: a few pixels one 8-bit level apart)
    assert np.abs(head_out - mu).max() < 2e-4


def test_bfloat16_matches_the_package_in_bfloat16(files):
    ref = parity_reference()['hpsv3']
    checkpoint, backbone = files
    head = HPSv3Reward(checkpoint=checkpoint, backbone_dir=backbone)      # bfloat16 default
    assert head.model.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert head.model.rm_head[0].weight.dtype == torch.float32
    tensors, _ = parity_batch()
    got = np.array([float(head(rollout(x, prompts=[C.PROMPTS[j]])).scores[0])
                    for j, x in enumerate(tensors)])
    want = np.array([ref['bfloat16']['mu'][j][j] for j in range(6)])
    # bf16 round-off in another order of operations (the vision tower's output is already one
    # bf16 ulp apart): measured 2.4e-3; the package's own bf16 and float32 differ by 6.0e-3
    assert np.abs(got - want).max() < 6e-3


def test_batched_frozen_nan_and_registered(files, head):
    checkpoint, backbone = files
    names = ['red circle', 'blue square', 'a much longer class name than the others']
    built = REWARD_HEADS.build(dict(type='HPSv3Reward', checkpoint=checkpoint,
                                    backbone_dir=backbone, class_names=names, dtype='float32',
                                    image_batch_size=2))
    assert all(not p.requires_grad for p in built.model.parameters())
    assert not built.model.training
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 40, 40, generator=g)
    ids = torch.tensor([0, 2, 1, 2])
    out = built(rollout(images, class_ids=ids))
    single = torch.cat([head(rollout(images[i:i + 1], prompts=[f'a photo of a {names[k]}'])
                             ).scores for i, k in enumerate(ids.tolist())])
    # right padding (the prompts differ in length) leaves the scores unchanged
    assert torch.allclose(out.scores, single, atol=1e-5)
    assert out.scores.dtype == torch.float32 and out.scores.device == images.device
    assert out.metrics['sigma'] > 0 and math.isfinite(out.metrics['sigma'])
    x = images.clone().requires_grad_(True)
    assert not built(rollout(x, class_ids=ids)).scores.requires_grad
    nan = images.clone()
    nan[1, 0, 3, 3] = math.nan
    s = built(rollout(nan, class_ids=ids)).scores
    assert torch.isnan(s[1]) and torch.allclose(s[[0, 2, 3]], single[[0, 2, 3]], atol=1e-5)
    with pytest.raises(ValueError, match=r'outside \[0, 3\)'):
        built(rollout(images, class_ids=torch.tensor([0, 1, 2, 3])))
    with pytest.raises(ValueError, match='rollout.images is None'):
        import dataclasses
        built(dataclasses.replace(rollout(images, class_ids=ids), images=None))


def test_strict_loading(tmp_path, files):
    checkpoint, backbone = files
    from safetensors.torch import load_file, save_file
    state = load_file(checkpoint)
    assert 'lm_head.weight' in state                                 # in the file, dropped
    # transformers >= 4.52 names load too
    renamed = {('model.language_model.' + k[6:] if k.startswith('model.') else
                'model.' + k if k.startswith('visual.') else k): v for k, v in state.items()}
    save_file(renamed, str(tmp_path / 'renamed.safetensors'))
    HPSv3Reward(checkpoint=str(tmp_path / 'renamed.safetensors'), backbone_dir=backbone)
    extra = dict(state, **{'rm_head.9.weight': torch.zeros(2, 2)})
    save_file(extra, str(tmp_path / 'extra.safetensors'))
    with pytest.raises(StateDictMismatch, match=r'unexpected keys.*rm_head\.9\.weight'):
        HPSv3Reward(checkpoint=str(tmp_path / 'extra.safetensors'), backbone_dir=backbone)
    missing = {k: v for k, v in state.items() if k != 'visual.merger.ln_q.bias'}
    save_file(missing, str(tmp_path / 'missing.safetensors'))
    with pytest.raises(StateDictMismatch, match=r'missing keys.*visual\.merger\.ln_q\.bias'):
        HPSv3Reward(checkpoint=str(tmp_path / 'missing.safetensors'), backbone_dir=backbone)
    # a .pth file under "model" (the package's other format), read data-only
    torch.save({'model': state}, str(tmp_path / 'HPSv3.pth'))
    HPSv3Reward(checkpoint=str(tmp_path / 'HPSv3.pth'), backbone_dir=backbone)
    # an embedding without a row for <|Reward|>: not this tokenizer's checkpoint
    short = dict(state, **{k: state[k][:-1] for k in ('model.embed_tokens.weight',
                                                      'lm_head.weight')})
    save_file(short, str(tmp_path / 'short.safetensors'))
    with pytest.raises(ValueError, match=r'<\|Reward\|> is token 499'):
        HPSv3Reward(checkpoint=str(tmp_path / 'short.safetensors'), backbone_dir=backbone)
    # a config of another size: shape mismatches, named
    wide = tmp_path / 'wide'
    import shutil
    shutil.copytree(backbone, wide)
    cfg = json.loads((wide / 'config.json').read_text())
    (wide / 'config.json').write_text(json.dumps(dict(cfg, intermediate_size=96)))
    with pytest.raises(StateDictMismatch, match='shape mismatches'):
        HPSv3Reward(checkpoint=checkpoint, backbone_dir=str(wide))
    assert hpsv3_file_key('model.language_model.norm.weight') == 'model.norm.weight'


def test_missing_files_name_where_they_are_published(tmp_path, files):
    checkpoint, backbone = files
    path = str(tmp_path / 'hpsv3' / 'HPSv3.safetensors')
    msg = missing_file_message(lambda: HPSv3Reward(checkpoint=path, backbone_dir=backbone), path)
    assert HPSV3_FILE_SOURCES['HPSv3.safetensors'] in msg
    assert 'https://huggingface.co/MizzenAI/HPSv3/resolve/main/HPSv3.safetensors' in msg
    with pytest.raises(FileNotFoundError, match='huggingface.co/Qwen/Qwen2-VL-7B-Instruct'):
        HPSv3Reward(checkpoint=checkpoint, backbone_dir=str(tmp_path / 'Qwen2-VL-7B-Instruct'))
    for dropped, what in (('preprocessor_config.json', 'image processor config'),
                          ('config.json', 'config'), ('vocab.json', 'tokenizer'),
                          ('chat_template.json', 'chat template')):
        d = tmp_path / f'no_{dropped}'
        import shutil
        shutil.copytree(backbone, d)
        os.remove(d / dropped)
        if dropped == 'chat_template.json':       # the tokenizer's copy is used otherwise
            tc = json.loads((d / 'tokenizer_config.json').read_text())
            del tc['chat_template']
            (d / 'tokenizer_config.json').write_text(json.dumps(tc))
        with pytest.raises(FileNotFoundError, match=f'no {what}.*Qwen/Qwen2-VL-7B-Instruct'):
            HPSv3Reward(checkpoint=checkpoint, backbone_dir=str(d))
    with pytest.raises(ValueError, match="dtype='float16'"):
        HPSv3Reward(checkpoint=checkpoint, backbone_dir=backbone, dtype='float16')
    # the reward base config: both files reported with where they are published
    from mmengine.config import Config

    from vargo.core.config import missing_files
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = Config.fromfile(os.path.join(root, 'configs', '_base_', 'rewards', 'hpsv3.py'))
    cfg = Config(dict(rewards={k: dict(v) for k, v in base.rewards.items()}))
    assert sorted(missing_files(cfg)) == [
        ('rewards.hpsv3.backbone_dir', 'checkpoints/Qwen2-VL-7B-Instruct',
         HPSV3_FILE_SOURCES['Qwen2-VL-7B-Instruct']),
        ('rewards.hpsv3.checkpoint', 'checkpoints/hpsv3/HPSv3.safetensors',
         HPSV3_FILE_SOURCES['HPSv3.safetensors'])]


def test_benchmark_reports_startup_and_per_image_cost(files, tmp_path, capsys):
    checkpoint, backbone = files
    heads = dict(hpsv3=dict(type='HPSv3Reward', checkpoint=checkpoint, backbone_dir=backbone,
                            class_names=['red circle', 'blue square'] * 5, dtype='float32'))
    res = benchmark_reward_heads(str(tmp_path), heads)['hpsv3']
    assert (res['kind'], res['type']) == ('metric', 'HPSv3Reward')
    assert res['samples'] == 2 and res['finite_scores'] == 2 and res['startup_s'] > 0
    assert 0 < res['ms_per_image']['min'] <= res['ms_per_image']['median']
    assert res['metrics']['sigma'] > 0
    assert 'head hpsv3 (HPSv3Reward): startup' in capsys.readouterr().out
