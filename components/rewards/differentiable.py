"""Differentiable reward heads: a score that is a differentiable function of the images.

The interface is minimal (it exists for MP's saliency source, docs/methods/var_rl.md section 3):
a :class:`DifferentiableReward` is a reward head with

    differentiable_scores(images [B, 3, H, W], rollout, ctx) -> Tensor [B]

that keeps the autograd graph to ``images``; calling the head scores ``rollout.images`` with it
(detached), so the same head also serves as an ordinary reward.

:class:`ColourMassReward` is the simple one: the soft mass of a colour in a window of the image,

    m(x)  = exp(-||x - c||^2 / (2 sigma^2))          soft membership of pixel x in colour c
    R     = mean_{pixels of the window} m(x)          in [0, 1]

On Shapes (black background, pure palette colours) it is the fraction of the window painted in
colour ``c``: a reward that asks for "more red here".
"""
from __future__ import annotations

import abc
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from vargo.core.interfaces import RewardHead
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import RewardContext, RewardOutput, Rollout

__all__ = ['DifferentiableReward', 'ColourMassReward', 'NAMED_COLOURS']

#: RGB in [0, 1] of the colour names ColourMassReward accepts (the Shapes palette)
NAMED_COLOURS = {'red': (1., 0., 0.), 'green': (0., 1., 0.), 'blue': (0., 0., 1.),
                 'yellow': (1., 1., 0.), 'magenta': (1., 0., 1.), 'cyan': (0., 1., 1.),
                 'black': (0., 0., 0.), 'white': (1., 1., 1.)}


class DifferentiableReward(RewardHead):
    """A reward head with a differentiable score (see the module docstring)."""

    @abc.abstractmethod
    def differentiable_scores(self, images: Tensor, rollout: Optional[Rollout] = None,
                              ctx: Optional[RewardContext] = None) -> Tensor:
        """``[B]`` scores of ``images [B, 3, H, W]`` in [0, 1], differentiable in ``images``."""

    def __call__(self, rollout: Rollout, ctx: Optional[RewardContext] = None) -> RewardOutput:
        if rollout.images is None:
            raise ValueError(f'{type(self).__name__} scores decoded images but rollout.images '
                             f'is None: decode the rollout (policy.decode) first')
        with torch.no_grad():
            scores = self.differentiable_scores(rollout.images, rollout, ctx).float()
        return RewardOutput(scores=scores, metrics={'mean': float(scores.mean())})


@REWARD_HEADS.register_module()
class ColourMassReward(DifferentiableReward):
    """Soft mass of colour ``c`` in a window: ``R = mean_window exp(-||x - c||^2 / 2 sigma^2)``.

    Args:
        colour: a name of :data:`NAMED_COLOURS` or an RGB triple in [0, 1].
        sigma: width of the soft membership (0.25: a pure palette colour counts ~1, another
            palette colour (distance >= 1) ~0.0003).
        box: optional window ``(x0, y0, x1, y1)`` as fractions of the width and height (ends
            exclusive, rounded to pixels); None = the whole image.

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float32 in [0, 1], metrics={'mean'})``.

    Examples:
        >>> img = torch.zeros(1, 3, 4, 4); img[0, 0, :2, :2] = 1.0     # red top-left quadrant
        >>> round(ColourMassReward(colour='red').differentiable_scores(img).item(), 3)
        0.25
        >>> ColourMassReward(colour='red', box=(0, 0, 0.5, 0.5)).differentiable_scores(img)
        tensor([1.])
    """

    def __init__(self, *, colour: Union[str, Sequence[float]] = 'red', sigma: float = 0.25,
                 box: Optional[Sequence[float]] = None) -> None:
        if isinstance(colour, str):
            if colour not in NAMED_COLOURS:
                raise ValueError(f'colour={colour!r} is not one of {sorted(NAMED_COLOURS)} '
                                 f'(or give an RGB triple in [0, 1])')
            colour = NAMED_COLOURS[colour]
        colour = tuple(float(v) for v in colour)
        if len(colour) != 3 or not all(0.0 <= v <= 1.0 for v in colour):
            raise ValueError(f'colour={colour} must be an RGB triple in [0, 1]')
        if sigma <= 0:
            raise ValueError(f'sigma={sigma} must be > 0')
        if box is not None:
            box = tuple(float(v) for v in box)
            if (len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1)):
                raise ValueError(f'box={box} must be (x0, y0, x1, y1) fractions with '
                                 f'0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1')
        self.colour, self.sigma, self.box = colour, float(sigma), box

    def window(self, h: int, w: int) -> tuple[slice, slice]:
        """Row and column slices of the window on an ``h x w`` image (at least one pixel)."""
        if self.box is None:
            return slice(0, h), slice(0, w)
        x0, y0, x1, y1 = self.box
        r0, c0 = int(round(y0 * h)), int(round(x0 * w))
        return (slice(r0, max(r0 + 1, int(round(y1 * h)))),
                slice(c0, max(c0 + 1, int(round(x1 * w)))))

    def differentiable_scores(self, images: Tensor, rollout: Optional[Rollout] = None,
                              ctx: Optional[RewardContext] = None) -> Tensor:
        rows, cols = self.window(images.shape[-2], images.shape[-1])
        x = images[:, :, rows, cols]                                        # [B, 3, h, w]
        c = torch.tensor(self.colour, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        m = torch.exp(-(x - c).square().sum(1) / (2 * self.sigma ** 2))    # [B, h, w]
        return m.flatten(1).mean(1)
