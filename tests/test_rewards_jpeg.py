"""DDPO's JPEG (in)compressibility reward heads (arXiv 2305.13301)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vargo.components.rewards import JpegCompressibilityReward, JpegIncompressibilityReward
from vargo.core.interfaces import RewardHead
from vargo.core.registry import REWARD_HEADS, ConfigError
from vargo.core.types import Conditions, RewardContext, Rollout


def make_rollout(images, num_actions: int = 4) -> Rollout:
    """A raster-AR rollout of ``B`` samples carrying ``images`` ``[B, 3, H, W]``."""
    b = 2 if images is None else images.shape[0]
    steps = torch.arange(num_actions)
    return Rollout(cond=Conditions(class_ids=torch.zeros(b, dtype=torch.long)),
                   group_ids=torch.zeros(b, dtype=torch.long),
                   actions=torch.zeros(b, num_actions, dtype=torch.long),
                   logp_old=torch.zeros(b, num_actions),
                   action_mask=torch.ones(b, num_actions, dtype=torch.bool), action_step=steps,
                   action_pos=torch.stack([steps // 2, steps % 2], dim=-1), images=images)


def images_flat_and_noise(size: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, size, size), 0.5)
    noise = torch.rand(1, 3, size, size, generator=gen)
    return torch.cat([flat, noise])                                    # [2, 3, H, W]


def pil_size_kb(image: torch.Tensor, quality: int) -> float:
    """Independent reference: the DDPO procedure written out for one [3, H, W] image."""
    arr = (image.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format='JPEG', quality=quality)
    return len(buf.getvalue()) / 1000.0


def test_flat_image_is_more_compressible_than_noise():
    imgs = images_flat_and_noise()
    comp = JpegCompressibilityReward()(make_rollout(imgs), RewardContext())
    incomp = JpegIncompressibilityReward()(make_rollout(imgs), RewardContext())
    assert comp.scores[0] > comp.scores[1]                             # flat scores higher
    assert incomp.scores[1] > incomp.scores[0]                         # noise scores higher
    torch.testing.assert_close(comp.scores, -incomp.scores, rtol=0, atol=0)
    # 64x64 noise barely compresses: its file is several times the flat one (mostly header)
    assert incomp.scores[1] > 3 * incomp.scores[0]


def test_scores_shape_dtype_units_and_metrics():
    imgs = images_flat_and_noise()
    out = JpegIncompressibilityReward(quality=95)(make_rollout(imgs), RewardContext())
    assert out.scores.shape == (2,) and out.scores.dtype == torch.float32
    expected = torch.tensor([pil_size_kb(imgs[i], 95) for i in range(2)])
    torch.testing.assert_close(out.scores, expected, rtol=0, atol=1e-6)  # kB = 1000 bytes
    assert out.metrics == {'size_kb_mean': pytest.approx(expected.mean().item(), abs=1e-6)}
    comp = JpegCompressibilityReward()(make_rollout(imgs), RewardContext())
    assert comp.metrics['size_kb_mean'] == pytest.approx(expected.mean().item(), abs=1e-6)


def test_out_of_range_pixels_are_clamped_and_quality_matters():
    imgs = images_flat_and_noise()
    head = JpegIncompressibilityReward()
    out_of_range = imgs * 1.4 - 0.2                                    # values in [-0.2, 1.2]
    torch.testing.assert_close(head(make_rollout(out_of_range), RewardContext()).scores,
                               head(make_rollout(out_of_range.clamp(0, 1)), RewardContext()).scores,
                               rtol=0, atol=0)
    low_q = JpegIncompressibilityReward(quality=30)(make_rollout(imgs), RewardContext()).scores
    assert low_q[1] < head(make_rollout(imgs), RewardContext()).scores[1]


def test_errors():
    head = JpegCompressibilityReward()
    with pytest.raises(ValueError, match='rollout.images is None'):
        head(make_rollout(None), RewardContext())
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        head(make_rollout(torch.zeros(2, 1, 8, 8)), RewardContext())
    with pytest.raises(ValueError, match='1..95'):
        JpegCompressibilityReward(quality=100)
    with pytest.raises(TypeError):
        JpegCompressibilityReward(95)                                  # keyword-only


def test_build_through_registry():
    head = REWARD_HEADS.build(dict(type='JpegCompressibilityReward', quality=90))
    assert isinstance(head, JpegCompressibilityReward) and isinstance(head, RewardHead)
    assert head.quality == 90 and not head.distribution_level
    assert REWARD_HEADS.build(dict(type='JpegIncompressibilityReward')).quality == 95
    with pytest.raises(ConfigError, match="'qualty'; did you mean 'quality'"):
        REWARD_HEADS.build(dict(type='JpegIncompressibilityReward', qualty=90))
    with pytest.raises(ConfigError, match="Did you mean 'JpegCompressibilityReward'.*Registered"
                                          ".*JpegCompressibilityReward.*"
                                          "JpegIncompressibilityReward"):
        REWARD_HEADS.build(dict(type='JpegCompressibility'))
