"""HPSv2Reward: HPS v2 / v2.1 score (arXiv 2306.09341) without the hpsv2 package.

The reference below is hpsv2's ``score()`` written out with torchvision (its ``preprocess_val``
is ``ToTensor -> Resize(size, BICUBIC) -> CenterCrop(size) -> Normalize(OpenAI mean/std)`` on
the PIL image, and the score is the diagonal of normalised image features @ normalised text
features). Equivalence with the package itself was measured in-session (hps.py docstring).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vargo.components.rewards import ClipScoreReward, HPSv2Reward
from vargo.components.rewards.hps import HPS_FILE_SOURCES
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import Conditions, Rollout

open_clip = pytest.importorskip('open_clip')
tv = pytest.importorskip('torchvision.transforms')

TINY = dict(embed_dim=16,
            vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
PROMPTS = ['a red circle', 'two blue squares', 'a photo of a cat', 'a green triangle']


def make_rollout(images, *, prompts=None, class_ids=None) -> Rollout:
    b = images.shape[0]
    return Rollout(cond=Conditions(class_ids=class_ids, prompts=prompts),
                   group_ids=torch.arange(b) // 2, actions=torch.zeros(b, 1, dtype=torch.long),
                   logp_old=torch.zeros(b, 1), action_mask=torch.ones(b, 1, dtype=torch.bool),
                   action_step=torch.arange(1), action_pos=torch.zeros(1, 2, dtype=torch.long),
                   images=images)


@pytest.fixture(scope='module')
def hps_file(tmp_path_factory):
    """A tiny 'HPS checkpoint': {'state_dict': ...} in open_clip key names, as the official
    HPS_v2*_compressed.pt files."""
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))     # away from the init's symmetries
    path = tmp_path_factory.mktemp('hps') / 'HPS_v2.1_compressed.pt'
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path), model.eval()


def hpsv2_reference(model, pil_images, prompts) -> torch.Tensor:
    """hpsv2's score() on PIL images, written out with torchvision."""
    pre = tv.Compose([tv.ToTensor(), tv.Resize(32, interpolation=tv.InterpolationMode.BICUBIC),
                      tv.CenterCrop(32), tv.Normalize(MEAN, STD)])
    tok = open_clip.SimpleTokenizer(context_length=77)
    out = []
    with torch.no_grad():
        for img, p in zip(pil_images, prompts):
            fi = F.normalize(model.encode_image(pre(img)[None]), dim=-1)
            ft = F.normalize(model.encode_text(tok([p])), dim=-1)
            out.append(torch.diagonal(fi @ ft.T)[0])
    return torch.stack(out)


@pytest.mark.parametrize('hw', [(32, 32), (48, 40), (24, 24), (64, 64)])
def test_score_matches_hpsv2_pipeline(hps_file, hw):
    path, model = hps_file
    head = HPSv2Reward(arch=TINY, checkpoint=path)
    rng = np.random.default_rng(hw[0] + hw[1])
    pixels = rng.integers(0, 256, (4, *hw, 3), dtype=np.uint8)
    pil = [Image.fromarray(a) for a in pixels]
    # our float images carry the same 8-bit values (plus sub-level noise that quantize removes)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    images = images + (torch.rand_like(images) - 0.5) * 0.9 / 255
    ours = head(make_rollout(images, prompts=PROMPTS), None).scores
    ref = hpsv2_reference(model, pil, PROMPTS)
    assert torch.allclose(ours, ref, atol=2e-6), (ours - ref).abs().max()
    assert ours.abs().max() > 0.01     # the scores are not trivially zero


def test_preprocessing_is_hpsv2s_not_open_clips():
    head = HPSv2Reward(arch=TINY, random_init=True)
    clip = ClipScoreReward(arch=TINY, random_init=True)
    assert head.preprocess == dict(clip.preprocess, clamp=False)   # hpsv2 does not clamp
    assert head.preprocess['quantize'] and head.preprocess['interpolation'] == 'bicubic'
    assert head.fp16 and not clip.fp16      # hpsv2.score runs under CUDA autocast (CPU: fp32)
    # a hard edge downsampled with bicubic overshoots [0, 1]: kept by hpsv2's tensor path
    x = torch.zeros(1, 3, 64, 64)
    x[..., :, 31:] = 1.0
    from vargo.components.rewards.clip_score import clip_preprocess
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert (clip_preprocess(x, **head.preprocess)[0].amax(dim=(1, 2)) > hi + 1e-3).all()
    assert (clip_preprocess(x, **clip.preprocess)[0].amax(dim=(1, 2)) <= hi + 1e-6).all()


def test_class_conditional_prompts_and_registry(hps_file):
    path, model = hps_file
    head = REWARD_HEADS.build(dict(type='HPSv2Reward', arch=TINY, checkpoint=path,
                                   class_names='shapes'))
    images = torch.rand(2, 3, 32, 32)
    s_cls = head(make_rollout(images, class_ids=torch.tensor([0, 4])), None).scores
    t2i = HPSv2Reward(arch=TINY, checkpoint=path)
    s_txt = t2i(make_rollout(images, prompts=['a photo of a red circle',
                                              'a photo of a green square']), None).scores
    assert torch.allclose(s_cls, s_txt, atol=1e-6)


def test_missing_file_names_the_official_release(tmp_path):
    for name in ('HPS_v2_compressed.pt', 'HPS_v2.1_compressed.pt'):
        path = str(tmp_path / 'hps' / name)
        with pytest.raises(FileNotFoundError) as err:
            HPSv2Reward(checkpoint=path)          # the default arch is ViT-H-14 (never built)
        assert path in str(err.value)
        assert f'https://huggingface.co/xswu/HPSv2/resolve/main/{name}' in str(err.value)
        assert HPS_FILE_SOURCES[name] in str(err.value)
    with pytest.raises(ValueError, match='only with random_init=True'):
        HPSv2Reward(arch=TINY)


def test_checkpoint_of_another_architecture_fails_strictly(hps_file):
    path, _ = hps_file
    other = dict(TINY, embed_dim=8)
    with pytest.raises(RuntimeError, match='size mismatch|text_projection'):
        HPSv2Reward(arch=other, checkpoint=path)
