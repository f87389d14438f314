"""ClipScoreReward: OpenCLIP cosine reward (LOO-FID's CLIP term, arXiv 2603.23086).

A tiny CLIP (ResNet image tower, 2-layer text tower) is trained for 20 contrastive steps on
Shapes images inside the test (about 4 s on one core), saved, and loaded strictly by the head.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vargo.components.datasets.shapes import CLASS_NAMES, ShapesImageDataset
from vargo.components.rewards import ClipScoreReward
from vargo.components.rewards.clip_score import OPEN_CLIP_FILE_SOURCES, clip_preprocess
from vargo.core.types import Conditions, Rollout

open_clip = pytest.importorskip('open_clip')

TINY = dict(embed_dim=32,
            vision_cfg=dict(image_size=32, layers=[1, 1, 1, 1], width=16, head_width=16),
            text_cfg=dict(context_length=16, vocab_size=49408, width=64, heads=2, layers=2))
TINY_VIT = dict(embed_dim=16,
                vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


def make_rollout(images, *, class_ids=None, prompts=None) -> Rollout:
    b = images.shape[0]
    return Rollout(cond=Conditions(class_ids=class_ids, prompts=prompts),
                   group_ids=torch.arange(b) // 2, actions=torch.zeros(b, 2, dtype=torch.long),
                   logp_old=torch.zeros(b, 2), action_mask=torch.ones(b, 2, dtype=torch.bool),
                   action_step=torch.arange(2), action_pos=torch.zeros(2, 2, dtype=torch.long),
                   images=images)


def shapes_batch(split: str, n: int):
    ds = ShapesImageDataset(split=split, task='c2i', num_samples=n)
    items = [ds[i] for i in range(n)]
    return (torch.stack([it['image'] for it in items]),
            torch.tensor([it['class_id'] for it in items]))


def train_tiny_clip(steps: int = 20) -> torch.nn.Module:
    """20 steps of image->caption contrastive training on Shapes (captions of the 18 classes),
    then BatchNorm statistics recomputed on the training images (30 steps of momentum 0.1 are
    not enough for eval-mode statistics)."""
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY)
    tok = open_clip.SimpleTokenizer(context_length=16)
    images, classes = shapes_batch('train', 18 * 8)
    x = clip_preprocess(images, size=32, mean=MEAN, std=STD)
    texts = tok([f'a photo of a {c}' for c in CLASS_NAMES])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randperm(len(x))[:36]
        fi = F.normalize(model.encode_image(x[idx]), dim=-1)
        ft = F.normalize(model.encode_text(texts), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * fi @ ft.T, classes[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.encode_image(x)
    return model.eval()


@pytest.fixture(scope='module')
def trained_ckpt(tmp_path_factory):
    model = train_tiny_clip()
    path = tmp_path_factory.mktemp('clip') / 'tiny_clip.pt'
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope='module')
def trained_head(trained_ckpt):
    return ClipScoreReward(arch=TINY, checkpoint=trained_ckpt, class_names='shapes')


# ---- scores ------------------------------------------------------------------------------------
def test_matching_caption_scores_above_mismatching(trained_head):
    images, classes = shapes_batch('eval', 36)                       # unseen renders
    scores = torch.stack([trained_head(make_rollout(images, class_ids=torch.full_like(classes, c)),
                                       None).scores for c in range(18)], dim=1)  # [36, 18]
    match = scores[torch.arange(36), classes]
    mismatch = (scores.sum(1) - match) / 17
    assert bool((match > mismatch).all())                            # every image
    assert float((scores.argmax(1) == classes).float().mean()) >= 0.3   # chance is 1/18
    # t2i: the same captions given as prompts score the same
    prompts = [f'a photo of a {CLASS_NAMES[c]}' for c in classes.tolist()]
    t2i = ClipScoreReward(arch=TINY, checkpoint=trained_head.checkpoint)
    assert torch.allclose(t2i(make_rollout(images, prompts=prompts), None).scores, match,
                          atol=1e-6)


def test_score_equals_hand_computed_cosine(trained_ckpt):
    head = ClipScoreReward(arch=TINY, checkpoint=trained_ckpt, scale=2.5, quantize=False,
                           class_names=['red circle', 'blue square'])
    images = torch.rand(3, 3, 40, 48)
    out = head(make_rollout(images, class_ids=torch.tensor([0, 1, 1])), None).scores
    model = open_clip.CLIP(**TINY)
    model.load_state_dict(torch.load(trained_ckpt, weights_only=True)['state_dict'])
    model.eval()
    # by hand: resize the short side 40 -> 32 (long 48 -> 38), crop columns 3..35, normalise
    x = F.interpolate(images, size=(32, 38), mode='bicubic', antialias=True, align_corners=False)
    x = (x.clamp(0, 1)[..., 3:35] - torch.tensor(MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(STD).view(1, 3, 1, 1)
    tok = open_clip.SimpleTokenizer(context_length=16)
    with torch.no_grad():
        fi = model.encode_image(x)
        ft = model.encode_text(tok(['a photo of a red circle', 'a photo of a blue square',
                                    'a photo of a blue square']))
    want = 2.5 * (fi * ft).sum(-1) / (fi.norm(dim=-1) * ft.norm(dim=-1))
    assert torch.allclose(out, want, atol=1e-5)
    assert out.dtype == torch.float32 and out.shape == (3,)


def test_nan_image_gives_nan_score():
    head = ClipScoreReward(arch=TINY_VIT, random_init=True, class_names='shapes', quantize=False)
    images = torch.rand(2, 3, 32, 32)
    images[1, 0, 3, 3] = math.nan
    s = head(make_rollout(images, class_ids=torch.tensor([0, 1])), None).scores
    assert torch.isfinite(s[0]) and torch.isnan(s[1])


# ---- preprocessing -----------------------------------------------------------------------------
@pytest.mark.parametrize('hw', [(256, 256), (300, 240), (32, 32), (57, 83)])
def test_preprocess_matches_open_clip_pil_transform(hw):
    """Ours on float tensors vs open_clip's PIL pipeline on the 8-bit image. Both use a bicubic
    Keys kernel (a = -0.5) with antialiasing; PIL rounds the resized image to 8 bits (and uses
    fixed-point weights), so values differ by about one 8-bit level: the tolerance is 1.5/255
    divided by the smallest std (0.261), 0.023 in normalised units. Measured: max 0.016
    (1.06 levels), mean 0.0046 (0.3 level) for all four sizes."""
    gen = torch.Generator().manual_seed(hw[0])
    # smooth image plus noise, both regimes of interpolation error
    base = F.interpolate(torch.rand(1, 3, 8, 8, generator=gen), size=hw, mode='bilinear')
    img = (0.7 * base + 0.3 * torch.rand(1, 3, *hw, generator=gen)).clamp(0, 1)
    ours = clip_preprocess(img, size=224, mean=MEAN, std=STD)[0]
    pil = Image.fromarray((img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    ref = open_clip.image_transform(224, is_train=False, mean=MEAN, std=STD)(pil)
    assert ours.shape == ref.shape == (3, 224, 224)
    tol = 1.5 / 255 / min(STD)
    assert float((ours - ref).abs().max()) < tol
    assert float((ours - ref).abs().mean()) < 0.5 / 255 / min(STD)    # PIL's rounding: ~1/4 level


def test_preprocess_uses_model_preprocess_cfg():
    head = ClipScoreReward(arch=dict(TINY_VIT, preprocess_cfg=dict(mean=(0.5,) * 3,
                                                                   std=(0.25,) * 3)),
                           random_init=True, class_names='shapes')
    assert head.preprocess['mean'] == (0.5,) * 3 and head.preprocess['std'] == (0.25,) * 3
    assert head.preprocess['size'] == (32, 32)
    assert head.model.visual.preprocess_cfg['mean'] == (0.5,) * 3
    default = ClipScoreReward(arch=TINY_VIT, random_init=True, class_names='shapes')
    assert default.preprocess['mean'] == tuple(MEAN) and default.preprocess['std'] == tuple(STD)
    # the official LOO-FID code's preprocessing is one switch away
    loo = ClipScoreReward(arch=TINY_VIT, random_init=True, class_names='shapes',
                          interpolation='bilinear', resize_mode='squash', antialias=False)
    x = torch.rand(1, 3, 48, 64)
    want = (F.interpolate((x * 255).round() / 255, size=(32, 32), mode='bilinear',
                          align_corners=False) - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(clip_preprocess(x, **loo.preprocess), want, atol=1e-6)


# ---- class names and templates -----------------------------------------------------------------
def test_class_names_and_templates():
    head = ClipScoreReward(arch=TINY_VIT, random_init=True, class_names='shapes')
    assert head.texts_of(('class', 5)) == [f'a photo of a {CLASS_NAMES[5]}'] \
        == ['a photo of a green triangle']
    inet = ClipScoreReward(arch=TINY_VIT, random_init=True, class_names='imagenet',
                           templates='openai_imagenet')
    assert len(inet.class_names) == 1000 and inet.class_names[0] == 'tench'
    assert len(inet.texts_of(('class', 1))) == 80 and 'goldfish' in inet.texts_of(('class', 1))[0]
    # explicit list, template ensemble = normalised mean of the normalised features
    ens = ClipScoreReward(arch=TINY_VIT, random_init=True, class_names=['cat', 'dog'],
                          templates=['a photo of a {}', 'a drawing of a {}'])
    feat = ens.text_features([('class', 1)], torch.device('cpu'))[0]
    with torch.no_grad():
        f = F.normalize(ens.model.encode_text(ens.tokenizer(['a photo of a dog',
                                                             'a drawing of a dog'])), dim=-1)
    assert torch.allclose(feat, F.normalize(f.mean(0), dim=0), atol=1e-6)
    with pytest.raises(ValueError, match="one '{}'"):
        ClipScoreReward(arch=TINY_VIT, random_init=True, class_names='shapes', templates='a {} {}')
    with pytest.raises(ValueError, match="'imagenet', 'shapes'"):
        ClipScoreReward(arch=TINY_VIT, random_init=True, class_names='cifar')
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r'outside \[0, 18\)'):
        head(make_rollout(images, class_ids=torch.tensor([0, 18])), None)
    with pytest.raises(ValueError, match='set class_names=None'):
        head(make_rollout(images, prompts=['a', 'b']), None)
    with pytest.raises(ValueError, match='set class_names'):
        ClipScoreReward(arch=TINY_VIT, random_init=True)(
            make_rollout(images, class_ids=torch.tensor([0, 1])), None)


def test_text_features_are_cached_per_condition():
    head = ClipScoreReward(arch=TINY_VIT, random_init=True, class_names='shapes', max_cache=3)
    calls = []
    encode = head.model.encode_text
    head.model.encode_text = lambda tokens, **kw: calls.append(tokens.shape[0]) or encode(tokens)
    images = torch.rand(4, 3, 32, 32)
    first = head(make_rollout(images, class_ids=torch.tensor([1, 1, 2, 2])), None).scores
    again = head(make_rollout(images, class_ids=torch.tensor([1, 1, 2, 2])), None).scores
    assert calls == [2] and torch.equal(first, again)       # 2 unique classes, encoded once
    head(make_rollout(images, class_ids=torch.tensor([3, 4, 5, 5])), None)
    assert calls == [2, 3] and len(head._text_cache) == 3   # LRU bound
    assert ('class', 1) not in head._text_cache and ('class', 5) in head._text_cache


# ---- weights: local files only, strict, frozen, outside the trained model ----------------------
def test_missing_file_and_random_init_errors(tmp_path):
    path = str(tmp_path / 'ViT-L-14-openai' / 'open_clip_model.safetensors')
    with pytest.raises(FileNotFoundError) as err:
        ClipScoreReward(arch='ViT-L-14', weights_tag='openai', checkpoint=path)
    msg = str(err.value)
    assert path in msg and 'huggingface.co/timm/vit_large_patch14_clip_224.openai' in msg
    assert 'never downloads' in msg
    with pytest.raises(FileNotFoundError, match='official files: open_clip_model.safetensors'):
        ClipScoreReward(arch=TINY_VIT, checkpoint=str(tmp_path / 'mine.pt'))
    with pytest.raises(ValueError, match='only with random_init=True'):
        ClipScoreReward(arch=TINY_VIT, class_names='shapes')
    with pytest.raises(ValueError, match='not an open_clip architecture'):
        ClipScoreReward(arch='ViT-L-15', random_init=True)
    # config-level check: vargo.core.config reports the file and where it is published
    from mmengine.config import Config

    from vargo.core.config import missing_files
    cfg = Config(dict(rewards=dict(clip=dict(type='ClipScoreReward', checkpoint=path))))
    [(where, missing, source)] = missing_files(cfg)
    assert where == 'rewards.clip.checkpoint' and missing == path
    assert source == OPEN_CLIP_FILE_SOURCES['open_clip_model.safetensors']


def test_checkpoint_is_loaded_strictly(tmp_path, trained_ckpt):
    state = torch.load(trained_ckpt, weights_only=True)['state_dict']
    extra = dict(state, **{'visual.unexpected': torch.zeros(1)})
    torch.save(extra, tmp_path / 'extra.pt')
    with pytest.raises(RuntimeError, match='visual.unexpected'):
        ClipScoreReward(arch=TINY, checkpoint=str(tmp_path / 'extra.pt'))
    missing = {k: v for k, v in state.items() if k != 'text_projection'}
    torch.save(missing, tmp_path / 'missing.pt')
    with pytest.raises(RuntimeError, match='text_projection'):
        ClipScoreReward(arch=TINY, checkpoint=str(tmp_path / 'missing.pt'))


def test_head_is_frozen_and_not_in_the_trained_model(trained_ckpt):
    import toy_components  # noqa: F401  (registers the toy policy family)

    from vargo.core.registry import MODELS
    model = MODELS.build(dict(
        type='RLAlgorithm', policy=dict(type='ToyPolicy', num_classes=4, side=4),
        sampler=dict(type='ToySampler'), group_size=2,
        rewards=dict(clip=dict(type='ClipScoreReward', arch=TINY, checkpoint=trained_ckpt,
                               class_names='shapes')),
        advantage=dict(type='GroupNormAdvantage', std_scope='group'),
        objective=dict(clip_eps=0.2, ratio_level='token', aggregation='token_mean')))
    head = model.reward_heads['clip']
    clip_params = {id(p) for p in head.model.parameters()}
    assert not clip_params & {id(p) for p in model.parameters()}
    assert not any(k.startswith(('reward', 'clip')) or 'visual' in k for k in model.state_dict())
    assert all(not p.requires_grad for p in head.model.parameters())
    assert not head.model.training
    rollout = model.generate(Conditions(class_ids=torch.tensor([0, 1])))
    out = model.score(rollout, iteration=0)['clip']                  # 16 px toy images
    assert out.scores.shape == (4,) and torch.isfinite(out.scores).all()
    assert not head.model.training and all(not p.requires_grad for p in head.model.parameters())


def test_differentiable_scores_equal_the_scores_and_reach_the_pixels():
    """MP's saliency source: the same values as the head's scores, a gradient on the images
    (the 8-bit rounding passes it straight through) and none on the frozen scorer."""
    from vargo.core.types import Conditions, Rollout
    head = ClipScoreReward(arch=TINY_VIT, random_init=True, class_names='shapes')
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=g)
    r = Rollout(Conditions(class_ids=torch.tensor([0, 1, 2])), torch.arange(3),
                torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1),
                torch.ones(3, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.long),
                torch.zeros(1, 2, dtype=torch.long), images=images)
    x = images.clone().requires_grad_(True)
    diff = head.differentiable_scores(x, r)
    assert torch.allclose(diff.detach(), head(r).scores, atol=1e-5)
    diff.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.model.parameters())
