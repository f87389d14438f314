"""DDPO's JPEG (in)compressibility rewards (Black et al., arXiv 2305.13301, section 6 and
appendix; reference code kvablack/ddpo-pytorch ``ddpo_pytorch/rewards.py``).

The reward of an image is the size of its JPEG encoding: each image is quantised to 8 bits
(``round(255 * x)``, clamped), encoded by PIL at ``quality=95`` into memory, and its size measured
in kB of 1000 bytes. Compressibility is ``r = -size_kB`` (higher = smaller file: flat, smooth
images), incompressibility is ``r = +size_kB`` (higher = more detail and noise).

Same quantisation, quality and unit as the reference code, so numbers are comparable with DDPO's
plots. The encoding runs on CPU with PIL, one image at a time (it is a few ms per 256 px image).
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vargo.core.interfaces import RewardHead
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import RewardContext, RewardOutput, Rollout

__all__ = ['JpegCompressibilityReward', 'JpegIncompressibilityReward', 'jpeg_size_kb']


def jpeg_size_kb(images: Tensor, quality: int) -> Tensor:
    """JPEG file size of each image, in kB (1 kB = 1000 bytes).

    Args:
        images: ``[B, 3, H, W]`` float in [0, 1] (values outside are clamped).
        quality: PIL JPEG quality, 1..95.

    Returns:
        ``[B]`` float32 sizes, on the device of ``images``.
    """
    pixels = (images.detach().float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()                  # [B, H, W, 3] uint8
    sizes = np.empty(pixels.shape[0], dtype=np.float32)
    for i, img in enumerate(pixels):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img)).save(buf, format='JPEG', quality=quality)
        sizes[i] = buf.getbuffer().nbytes / 1000.0
    return torch.from_numpy(sizes).to(images.device)


class _JpegSizeReward(RewardHead):
    """Shared implementation: ``score = sign * jpeg_size_kb(images)``."""

    sign: float = 0.0  # set by subclasses

    def __init__(self, *, quality: int = 95) -> None:
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
            raise ValueError(f'{type(self).__name__} quality={quality!r} must be an int in 1..95 '
                             f'(DDPO uses 95; PIL advises against values above 95)')
        self.quality = quality

    def __repr__(self) -> str:
        return f'{type(self).__name__}(quality={self.quality})'

    def __call__(self, rollout: Rollout, ctx: RewardContext) -> RewardOutput:
        images = rollout.images
        if images is None:
            raise ValueError(f'{type(self).__name__} scores decoded images but rollout.images is '
                             f'None: decode the rollout (policy.decode) before computing rewards')
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'{type(self).__name__} expects rollout.images of shape '
                             f'[B, 3, H, W], got {tuple(images.shape)}')
        size_kb = jpeg_size_kb(images, self.quality)                     # [B]
        return RewardOutput(scores=self.sign * size_kb,
                            metrics={'size_kb_mean': float(size_kb.mean().item())})


@REWARD_HEADS.register_module()
class JpegCompressibilityReward(_JpegSizeReward):
    """``r = -size_kB`` of the quality-95 JPEG encoding (DDPO, arXiv 2305.13301): smaller files
    score higher.

    Args:
        quality: JPEG quality, default 95 as DDPO.

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float32, metrics={'size_kb_mean': mean size in kB})``.
    """

    sign = -1.0


@REWARD_HEADS.register_module()
class JpegIncompressibilityReward(_JpegSizeReward):
    """``r = +size_kB`` of the quality-95 JPEG encoding (DDPO, arXiv 2305.13301): larger files
    score higher.

    Args:
        quality: JPEG quality, default 95 as DDPO.

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float32, metrics={'size_kb_mean': mean size in kB})``.
    """

    sign = 1.0
