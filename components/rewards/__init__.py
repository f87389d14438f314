"""Reward heads (registry ``REWARD_HEADS``): ``head(rollout, ctx) -> RewardOutput``."""
from .jpeg import JpegCompressibilityReward, JpegIncompressibilityReward
from .shapes_eval import ShapesEvalReward

__all__ = ['JpegCompressibilityReward', 'JpegIncompressibilityReward', 'ShapesEvalReward']
