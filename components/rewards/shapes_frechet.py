"""Shapes Frechet distance of a batch, as a held-out monitoring head (not a training reward).

The batch's features from the Shapes feature extractor
(:mod:`vargo.components.benchmarks.shapes_features`) are summarised as a Gaussian
``(mu_g, S_g)`` and compared with the shipped real statistics ``(mu_r, S_r)`` of a split:

    FD = |mu_g - mu_r|^2 + tr(S_g) + tr(S_r) - 2 tr((S_g S_r)^{1/2})

(:func:`vargo.components.metrics.frechet.frechet_distance`). The distance is a property of the
whole set, so every sample gets the same score ``-FD`` (higher is better, as for rewards) and
the metric ``fd``; within a group the scores are constant, so as a GRPO reward it would give
zero advantages: it is meant for :class:`vargo.core.monitor.RewardHackingMonitorHook`'s
``heads``. On ~64 samples of 128-D features ``S_g`` is rank-deficient and FD is biased upward
(far above the 576-sample FID of tools/eval.py); with the monitor's fixed conditions and seeds
the bias is the same at every measurement, so its change is what to read.
"""
from __future__ import annotations

import torch

from vargo.core.interfaces import RewardHead
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import RewardContext, RewardOutput, Rollout

__all__ = ['ShapesFrechetReward']


@REWARD_HEADS.register_module()
class ShapesFrechetReward(RewardHead):
    """``-FD`` of the batch's Shapes features to the real statistics of ``(task, split)``.

    Args:
        task: 'c2i' or 't2i' (which shipped real statistics).
        split: 'train' or 'eval'.
    """

    distribution_level = True

    def __init__(self, *, task: str = 'c2i', split: str = 'train'):
        from vargo.components.benchmarks.shapes_features import load_reference_statistics
        self.task, self.split = task, split
        self._real = load_reference_statistics(task, split)

    def __repr__(self) -> str:
        return f'ShapesFrechetReward(task={self.task!r}, split={self.split!r})'

    def __call__(self, rollout: Rollout, ctx: RewardContext) -> RewardOutput:
        from vargo.components.benchmarks.shapes_features import compute_statistics
        from vargo.components.metrics.frechet import frechet_distance
        images = rollout.images.detach().float().clamp(0, 1).cpu()
        fd = float(frechet_distance(*compute_statistics(images), *self._real))
        scores = torch.full((images.shape[0],), -fd, dtype=torch.float32,
                            device=rollout.images.device)
        return RewardOutput(scores=scores, metrics={'fd': fd})
