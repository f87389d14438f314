"""PickScoreReward: PickScore (arXiv 2305.01569) through transformers' CLIPModel, local files.

Parity: the numbers in tests/fixtures/reward_parity.json were computed by the README's
``calc_probs`` code under transformers 4.36.2 on the same tiny weights, images and prompts
(tests/fixtures/reward_parity_reference.py; the pickscore.py docstring says how).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reward_parity_common as C
from preference_files import (parity_batch, parity_reference, rollout, score_matrix,
                              write_pickscore_dir)
from vargo.components.rewards import PickScoreReward
from vargo.components.rewards.pickscore import PICKSCORE_FILE_SOURCES, group_softmax
from vargo.core.checkpoint import StateDictMismatch
from vargo.core.registry import REWARD_HEADS

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope='module')
def pick_dir(tmp_path_factory):
    return write_pickscore_dir(str(tmp_path_factory.mktemp('pick') / 'PickScore_v1'))


@pytest.fixture(scope='module')
def head(pick_dir):
    return PickScoreReward(checkpoint=pick_dir)


def readme_pixels(pil) -> torch.Tensor:
    """CLIPImageProcessor (transformers 4.27-4.36) on a PIL image: PIL bicubic resize of the
    shortest side to 32, centre crop with the offset rounded down, /255, OpenAI mean/std."""
    from PIL import Image
    w, h = pil.size
    nw, nh = (32, int(32 * h / w)) if w <= h else (int(32 * w / h), 32)
    a = np.asarray(pil.resize((nw, nh), resample=Image.BICUBIC), dtype=np.float64)
    top, left = (nh - 32) // 2, (nw - 32) // 2
    a = (a[top:top + 32, left:left + 32] / 255.0 - OPENAI_MEAN) / OPENAI_STD
    return torch.from_numpy(a).permute(2, 0, 1).float()


def test_parity_with_the_readme_scoring(head):
    ref = parity_reference()['pickscore']
    want = np.array(ref['scores'])                                   # [prompt, image]
    tensors, pil = parity_batch()
    # tokens: the same ids as the reference's CLIPTokenizerFast (truncated at 77)
    ids = head.tokenizer(list(C.PROMPTS), truncation=True, max_length=77)['input_ids']
    assert ids == ref['token_ids'] and len(ids[-1]) == 77
    # the model: the reference processor's pixels (rebuilt with PIL, pinned by their sums)
    pixels = torch.stack([readme_pixels(p) for p in pil])
    sums = [[float(x.double().sum()), float(x.double().abs().sum())] for x in pixels]
    assert np.allclose(sums, ref['pixel_sums'], atol=2e-3)
    txt = head.text_features(list(C.PROMPTS), torch.device('cpu'))
    model_scores = (head.logit_scale * txt @ head.pixel_features(pixels).T).numpy()
    assert np.abs(model_scores - want).max() < 1e-4                 # measured 1.1e-5
    assert np.abs(want).max() > 5                                    # not trivially small
    probs = np.stack([group_softmax(torch.from_numpy(r), torch.zeros(6)).numpy()
                      for r in model_scores])
    assert np.abs(probs - np.array(ref['probs'])).max() < 1e-5
    # the whole head on float images: exact where no resize happens (32 x 32), PIL's 8-bit
    # rounding of the resized pixels elsewhere
    ours = score_matrix(head, tensors)
    exact = [j for j, s in enumerate(C.IMAGE_SIZES) if s == (32, 32)]
    resized = [j for j in range(len(tensors)) if j not in exact]
    assert np.abs(ours[:, exact] - want[:, exact]).max() < 1e-4      # measured 1.0e-5
    assert np.abs(ours[:, resized] - want[:, resized]).max() < 0.15  # measured 0.083
    # rankings of the images per prompt agree wherever the reference gap exceeds the tolerance
    for i in range(len(C.PROMPTS)):
        for a in range(6):
            for b in range(6):
                if want[i, a] - want[i, b] > 0.3:
                    assert ours[i, a] > ours[i, b]


def test_hand_built_case_pins_the_logit_scale(tmp_path):
    """Zero LayerNorm gains make the pooled features the LayerNorm biases, whatever the input:
    image feature (3, 4, 0...), text feature (3, 0, 4, 0...) after the projections, cosine 9/25,
    and exp(logit_scale) = 100, so every score is 36 and the group softmax 1/G."""
    hv = torch.zeros(32)
    hv[:2] = torch.tensor([1.0, 1.0])
    ht = torch.zeros(32)
    ht[:2] = torch.tensor([1.0, 1.0])
    pv = torch.zeros(16, 32)
    pv[0, 0], pv[1, 1] = 3.0, 4.0
    pt = torch.zeros(16, 32)
    pt[0, 0], pt[2, 1] = 3.0, 4.0
    d = write_pickscore_dir(str(tmp_path / 'PickScore_v1'), overrides={
        'logit_scale': torch.tensor(math.log(100.0)),
        'vision_model.post_layernorm.weight': torch.zeros(32),
        'vision_model.post_layernorm.bias': hv,
        'text_model.final_layer_norm.weight': torch.zeros(32),
        'text_model.final_layer_norm.bias': ht,
        'visual_projection.weight': pv, 'text_projection.weight': pt})
    head = PickScoreReward(checkpoint=d)
    assert head.logit_scale == pytest.approx(100.0, rel=1e-6)
    images = torch.rand(4, 3, 40, 36)
    out = head(rollout(images, prompts=['a', 'b c', 'a red circle', 'x'])).scores
    assert torch.allclose(out, torch.full((4,), 36.0), atol=1e-4)
    probs = PickScoreReward(checkpoint=d, group_softmax=True)(
        rollout(images, prompts=['a'] * 4, group_ids=torch.tensor([0, 0, 0, 1]))).scores
    assert torch.allclose(probs, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0]), atol=1e-6)


def test_group_softmax_is_per_group(head):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 32, 32, generator=g)
    r = rollout(images, prompts=['a red circle'] * 2 + ['a cat'] * 2,
                group_ids=torch.tensor([0, 0, 1, 1]))
    scores = head(r).scores
    soft = PickScoreReward(checkpoint=head.checkpoint, group_softmax=True)(r).scores
    assert torch.allclose(soft[:2], torch.softmax(scores[:2], 0), atol=1e-6)
    assert torch.allclose(soft[2:], torch.softmax(scores[2:], 0), atol=1e-6)


def test_batched_cached_frozen_and_registered(pick_dir, head):
    built = REWARD_HEADS.build(dict(type='PickScoreReward', checkpoint=pick_dir,
                                    class_names=['red circle', 'blue square'], image_batch_size=2))
    assert all(not p.requires_grad for p in built.model.parameters())
    assert not built.model.training
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 48, 40, generator=g)
    ids = torch.tensor([0, 1, 1, 0, 1])
    batched = built(rollout(images, class_ids=ids)).scores
    names = ['red circle', 'blue square']
    single = torch.cat([head(rollout(images[i:i + 1], prompts=[f'a photo of a {names[k]}'])).scores
                        for i, k in enumerate(ids.tolist())])
    assert torch.allclose(batched, single, atol=1e-5) and batched.dtype == torch.float32
    assert len(built._cache) == 2                                   # one entry per text
    assert batched.device == images.device
    # no autograd graph even when the images require grad
    x = images.clone().requires_grad_(True)
    assert not built(rollout(x, class_ids=ids)).scores.requires_grad
    nan = images.clone()
    nan[2, 0, 3, 3] = math.nan
    s = built(rollout(nan, class_ids=ids)).scores
    assert torch.isnan(s[2]) and torch.isfinite(s[[0, 1, 3, 4]]).all()


def test_strict_loading_and_legacy_position_ids(tmp_path):
    # transformers < 4.31 files carry the position ids: derived, accepted when they are 0..L-1
    d = write_pickscore_dir(str(tmp_path / 'legacy'), legacy_position_ids=True, fmt='bin')
    PickScoreReward(checkpoint=d)
    bad = write_pickscore_dir(str(tmp_path / 'bad'), overrides={
        'text_model.embeddings.position_ids': torch.arange(77).flip(0)[None]})
    with pytest.raises(ValueError, match='position_ids'):
        PickScoreReward(checkpoint=bad)
    extra = write_pickscore_dir(str(tmp_path / 'extra'),
                                overrides={'text_model.unexpected': torch.zeros(1)})
    with pytest.raises(StateDictMismatch, match='unexpected keys.*text_model.unexpected'):
        PickScoreReward(checkpoint=extra)
    from safetensors.torch import load_file, save_file
    state = load_file(str(tmp_path / 'extra' / 'model.safetensors'))
    del state['text_model.unexpected'], state['text_projection.weight']
    (tmp_path / 'missing').mkdir()
    save_file(state, str(tmp_path / 'missing' / 'model.safetensors'))
    for f in ('config.json', 'vocab.json', 'merges.txt'):
        (tmp_path / 'missing' / f).write_bytes((tmp_path / 'extra' / f).read_bytes())
    with pytest.raises(StateDictMismatch, match='missing keys.*text_projection.weight'):
        PickScoreReward(checkpoint=str(tmp_path / 'missing'))


def test_missing_files_name_where_they_are_published(tmp_path, pick_dir):
    path = str(tmp_path / 'PickScore_v1')
    with pytest.raises(FileNotFoundError) as err:
        PickScoreReward(checkpoint=path)
    msg = str(err.value)
    assert path in msg and 'https://huggingface.co/yuvalkirstain/PickScore_v1' in msg
    assert '\n' not in msg and 'never downloads' in msg
    # a model directory without a tokenizer: names the README's processor repository
    (tmp_path / 'no_tok').mkdir()
    for f in ('config.json', 'model.safetensors'):
        (tmp_path / 'no_tok' / f).write_bytes(open(f'{pick_dir}/{f}', 'rb').read())
    with pytest.raises(FileNotFoundError, match='laion/CLIP-ViT-H-14-laion2B-s32B-b79K'):
        PickScoreReward(checkpoint=str(tmp_path / 'no_tok'))
    PickScoreReward(checkpoint=str(tmp_path / 'no_tok'), tokenizer_dir=pick_dir)
    (tmp_path / 'no_weights').mkdir()
    (tmp_path / 'no_weights' / 'config.json').write_text('{}')
    with pytest.raises(FileNotFoundError, match='model.safetensors nor pytorch_model.bin'):
        PickScoreReward(checkpoint=str(tmp_path / 'no_weights'))
    # config level: check_files reports the directory and its source
    from mmengine.config import Config

    from vargo.core.config import missing_files
    cfg = Config(dict(rewards=dict(pick=dict(type='PickScoreReward', checkpoint=path))))
    [(where, missing, source)] = missing_files(cfg)
    assert where == 'rewards.pick.checkpoint' and missing == path
    assert source == PICKSCORE_FILE_SOURCES['PickScore_v1']


def test_preprocessor_config_overrides_mean_std(tmp_path, pick_dir):
    import json
    import shutil
    d = shutil.copytree(pick_dir, tmp_path / 'pp')
    (d / 'preprocessor_config.json').write_text(json.dumps(dict(
        size={'shortest_edge': 32}, crop_size={'height': 32, 'width': 32}, resample=3,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])))
    head = PickScoreReward(checkpoint=str(d))
    assert head.preprocess['mean'] == (0.5,) * 3 and head.preprocess['crop'] == 'floor'
    (d / 'preprocessor_config.json').write_text(json.dumps(dict(size=40, crop_size=32)))
    with pytest.raises(ValueError, match='resizes to 40 and crops 32'):
        PickScoreReward(checkpoint=str(d))


def test_floor_crop_differs_from_round_where_torchvision_and_transformers_do():
    from vargo.components.rewards.clip_score import clip_preprocess
    x = torch.rand(1, 3, 32, 35)              # resized side 35: offset 1.5 -> floor 1, round 2
    kw = dict(size=32, mean=(0.0,) * 3, std=(1.0,) * 3, quantize=False)
    assert torch.equal(clip_preprocess(x, crop='floor', **kw), x[..., 1:33])
    assert torch.equal(clip_preprocess(x, crop='round', **kw), x[..., 2:34])
    with pytest.raises(ValueError, match="crop='middle'"):
        clip_preprocess(x, crop='middle', **kw)
