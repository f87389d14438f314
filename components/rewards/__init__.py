"""Reward heads (registry ``REWARD_HEADS``): ``head(rollout, ctx) -> RewardOutput``."""
from .clip_score import ClipScoreReward
from .composite import CompositeReward
from .differentiable import ColourMassReward, DifferentiableReward
from .geneval import GenEvalReward
from .hps import HPSv2Reward
from .hpsv3 import HPSv3Reward
from .image_reward import ImageRewardReward
from .jpeg import JpegCompressibilityReward, JpegIncompressibilityReward
from .loo_fid import LooFidReward
from .ocr import OcrReward
from .pickscore import PickScoreReward
from .shapes_eval import ShapesEvalReward
from .shapes_frechet import ShapesFrechetReward
from .stage_entropy import StageEntropyBonus
from .vmr import VMRReward

__all__ = ['ClipScoreReward', 'ColourMassReward', 'CompositeReward', 'DifferentiableReward', 'GenEvalReward',
           'HPSv2Reward', 'HPSv3Reward', 'ImageRewardReward', 'JpegCompressibilityReward', 'JpegIncompressibilityReward', 'LooFidReward', 'OcrReward', 'PickScoreReward', 'ShapesEvalReward', 'ShapesFrechetReward',
           'StageEntropyBonus', 'VMRReward']
