"""ImageRewardReward: ImageReward (arXiv 2304.05977) with vargo's BLIP, local files only.

Parity: the numbers in tests/fixtures/reward_parity.json were computed by the image-reward 1.5
package's own ``ImageReward.score`` / ``inference_rank`` on the same tiny weights, images and
prompts (tests/fixtures/reward_parity_reference.py; the image_reward.py docstring says how).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import reward_parity_common as C
from preference_files import (image_reward_state, parity_batch, parity_reference, rollout,
                              score_matrix, write_image_reward_files)
from vargo.components.rewards import ImageRewardReward
from vargo.components.rewards.blip import VIT_PRESETS
from vargo.components.rewards.image_reward import (IMAGE_REWARD_FILE_SOURCES, IMAGE_REWARD_MEAN,
                                                   IMAGE_REWARD_STD, ImageRewardModel)
from vargo.core.checkpoint import StateDictMismatch
from vargo.core.registry import REWARD_HEADS

tv = pytest.importorskip('torchvision.transforms')


@pytest.fixture(scope='module')
def ir_file(tmp_path_factory):
    return write_image_reward_files(str(tmp_path_factory.mktemp('ir')))


@pytest.fixture(scope='module')
def head(ir_file):
    return ImageRewardReward(checkpoint=ir_file, vit=C.IR_VIT)


def package_pixels(pil) -> torch.Tensor:
    """The package's ``_transform(32)``: torchvision Resize(32, bicubic) and CenterCrop(32) on
    the PIL image, ToTensor, OpenAI mean/std."""
    t = tv.Compose([tv.Resize(32, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(32),
                    tv.ToTensor(), tv.Normalize((0.48145466, 0.4578275, 0.40821073),
                                                (0.26862954, 0.26130258, 0.27577711))])
    return t(pil)


def test_parity_with_the_package(head):
    ref = parity_reference()['image_reward']
    want = np.array(ref['scores'])                                   # [prompt, image]
    tensors, pil = parity_batch()
    ids, _ = head.tokenize(list(C.PROMPTS), torch.device('cpu'))
    assert ids.tolist() == ref['token_ids'] and ids.shape == (6, 35)
    assert ref['mean'] == IMAGE_REWARD_MEAN and ref['std'] == IMAGE_REWARD_STD
    # the model on the package's own pixel tensors (pinned by their sums)
    pixels = torch.stack([package_pixels(p) for p in pil])
    sums = [[float(x.double().sum()), float(x.double().abs().sum())] for x in pixels]
    assert np.allclose(sums, ref['pixel_sums'], atol=1e-3)
    model_scores = np.stack([head.pixel_scores(pixels, [p] * 6).numpy() for p in C.PROMPTS])
    assert np.abs(model_scores - want).max() < 2e-5                  # measured 7e-7
    assert np.abs(model_scores[1] - np.array(ref['inference_rank_prompt1'])).max() < 2e-5
    assert want.std() > 0.1                                          # the scores differ
    # the whole head on float images: exact without resize, PIL's rounding elsewhere
    ours = score_matrix(head, tensors)
    exact = [j for j, s in enumerate(C.IMAGE_SIZES) if s == (32, 32)]
    resized = [j for j in range(len(tensors)) if j not in exact]
    assert np.abs(ours[:, exact] - want[:, exact]).max() < 2e-5      # measured 7e-7
    assert np.abs(ours[:, resized] - want[:, resized]).max() < 1e-2  # measured 2.9e-3


def test_layout_equals_the_packages_full_size_model():
    """Names and shapes of the full-size model (ViT-L, BLIP's BERT-base med_config) equal the
    package's ImageReward (digest pinned from it), with the position-id buffer it also saves."""
    ref = parity_reference()['image_reward']
    med = dict(C.ir_med_config(30522), hidden_size=768, intermediate_size=3072,
               num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=512)
    with torch.device('meta'):
        model = ImageRewardModel(VIT_PRESETS['large'], med)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes['blip.text_encoder.embeddings.position_ids'] = (1, 512)
    assert len(shapes) == ref['num_keys_full'] == 625
    assert C.layout_digest(shapes) == ref['layout_digest_full']
    tiny = {k: tuple(v.shape) for k, v in image_reward_state().items()}
    tiny['blip.text_encoder.embeddings.position_ids'] = (1, 40)
    assert C.layout_digest(tiny) == ref['layout_digest_tiny']


def test_hand_built_case_pins_the_normalisation(tmp_path):
    """A zero LayerNorm gain on the text encoder's last output makes the [CLS] feature its
    bias b = (2, 0, ...); the MLP's first units carry it: 2 -> 2 -> 2 -> 6 -> 6 -> 0.5 * 6 + 0.1
    = 3.1 (no activations).
    Score = (3.1 - 0.16717362830052426) / 1.0333394966054072 for every image and prompt."""
    over = {}
    b = torch.zeros(32)
    b[0] = 2.0
    over['blip.text_encoder.encoder.layer.1.output.LayerNorm.weight'] = torch.zeros(32)
    over['blip.text_encoder.encoder.layer.1.output.LayerNorm.bias'] = b
    for i, (shape, gain) in {0: ((1024, 32), 1.0), 2: ((128, 1024), 1.0), 4: ((64, 128), 3.0),
                             6: ((16, 64), 1.0), 7: ((1, 16), 0.5)}.items():
        w = torch.zeros(shape)
        w[0, 0] = gain
        over[f'mlp.layers.{i}.weight'] = w
        over[f'mlp.layers.{i}.bias'] = torch.zeros(shape[0])
    over['mlp.layers.7.bias'] = torch.tensor([0.1])
    path = write_image_reward_files(str(tmp_path), state=image_reward_state(over))
    images = torch.rand(3, 3, 48, 40)
    r = rollout(images, prompts=['a cat', 'two blue squares', 'a'])
    raw = ImageRewardReward(checkpoint=path, vit=C.IR_VIT, normalize=False)(r).scores
    assert torch.allclose(raw, torch.full((3,), 3.1), atol=1e-5)
    score = ImageRewardReward(checkpoint=path, vit=C.IR_VIT)(r).scores
    want = (3.1 - 0.16717362830052426) / 1.0333394966054072
    assert torch.allclose(score, torch.full((3,), want), atol=1e-5)


def test_batched_frozen_registered_and_class_names(ir_file, head):
    built = REWARD_HEADS.build(dict(type='ImageRewardReward', checkpoint=ir_file, vit=C.IR_VIT,
                                    class_names='shapes', image_batch_size=2))
    assert all(not p.requires_grad for p in built.model.parameters()) and not built.model.training
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 40, 40, generator=g)
    ids = torch.tensor([0, 4, 4, 17, 2])
    batched = built(rollout(images, class_ids=ids)).scores
    from vargo.components.datasets.shapes import CLASS_NAMES
    single = torch.cat([head(rollout(images[i:i + 1], prompts=[f'a photo of a {CLASS_NAMES[k]}'])
                             ).scores for i, k in enumerate(ids.tolist())])
    assert torch.allclose(batched, single, atol=1e-5) and batched.dtype == torch.float32
    assert batched.device == images.device
    x = images.clone().requires_grad_(True)
    assert not built(rollout(x, class_ids=ids)).scores.requires_grad
    nan = images.clone()
    nan[1, 2, 5, 5] = math.nan
    s = built(rollout(nan, class_ids=ids)).scores
    assert torch.isnan(s[1]) and torch.isfinite(s[[0, 2, 3, 4]]).all()
    with pytest.raises(ValueError, match=r'outside \[0, 18\)'):
        built(rollout(images, class_ids=torch.tensor([0, 1, 2, 3, 18])))
    with pytest.raises(ValueError, match='rollout.images is None'):
        built(dataclasses.replace(rollout(images, class_ids=ids), images=None))


def test_strict_loading(tmp_path):
    state = image_reward_state()
    # the position ids the package's BertEmbeddings saves: derived, checked, dropped
    legacy = dict(state, **{'blip.text_encoder.embeddings.position_ids': torch.arange(40)[None]})
    ImageRewardReward(checkpoint=write_image_reward_files(str(tmp_path / 'a'), state=legacy),
                      vit=C.IR_VIT)
    bad = dict(legacy, **{'blip.text_encoder.embeddings.position_ids': torch.zeros(1, 40).long()})
    with pytest.raises(ValueError, match='position_ids'):
        ImageRewardReward(checkpoint=write_image_reward_files(str(tmp_path / 'b'), state=bad),
                          vit=C.IR_VIT)
    extra = dict(state, **{'blip.itm_head.weight': torch.zeros(2, 32)})
    with pytest.raises(StateDictMismatch, match='unexpected keys.*blip.itm_head.weight'):
        ImageRewardReward(checkpoint=write_image_reward_files(str(tmp_path / 'c'), state=extra),
                          vit=C.IR_VIT)
    missing = {k: v for k, v in state.items() if k != 'mlp.layers.7.bias'}
    with pytest.raises(StateDictMismatch, match='missing keys.*mlp.layers.7.bias'):
        ImageRewardReward(checkpoint=write_image_reward_files(str(tmp_path / 'd'), state=missing),
                          vit=C.IR_VIT)
    # the official size against a tiny file: shape mismatches, named
    with pytest.raises(StateDictMismatch, match='shape mismatches'):
        ImageRewardReward(checkpoint=str(tmp_path / 'a' / 'ImageReward.pt'), vit='base')


def test_missing_files_name_where_they_are_published(tmp_path, ir_file):
    path = str(tmp_path / 'ImageReward' / 'ImageReward.pt')
    with pytest.raises(FileNotFoundError) as err:
        ImageRewardReward(checkpoint=path)
    msg = str(err.value)
    assert path in msg and IMAGE_REWARD_FILE_SOURCES['ImageReward.pt'] in msg
    assert 'https://huggingface.co/THUDM/ImageReward/resolve/main/ImageReward.pt' in msg
    assert '\n' not in msg and 'never downloads' in msg
    with pytest.raises(FileNotFoundError, match='THUDM/ImageReward/resolve/main/med_config.json'):
        ImageRewardReward(checkpoint=ir_file, med_config_file=str(tmp_path / 'med_config.json'))
    with pytest.raises(FileNotFoundError, match='google-bert/bert-base-uncased'):
        ImageRewardReward(checkpoint=ir_file, tokenizer_dir=str(tmp_path))
    with pytest.raises(ValueError, match="vit='huge'"):
        ImageRewardReward(checkpoint=ir_file, vit='huge')
    from mmengine.config import Config

    from vargo.core.config import missing_files
    cfg = Config(dict(rewards=dict(ir=dict(type='ImageRewardReward', checkpoint=path))))
    [(where, missing, source)] = missing_files(cfg)
    assert where == 'rewards.ir.checkpoint'
    assert source == IMAGE_REWARD_FILE_SOURCES['ImageReward.pt']
