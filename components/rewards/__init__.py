"""Reward heads (registry ``REWARD_HEADS``): ``head(rollout, ctx) -> RewardOutput``."""
from .jpeg import JpegCompressibilityReward, JpegIncompressibilityReward

__all__ = ['JpegCompressibilityReward', 'JpegIncompressibilityReward']
