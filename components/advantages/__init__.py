"""Advantage estimators (registry ``ADVANTAGE_ESTIMATORS``): rewards -> ``[B, A]`` streams."""
from .group_norm import GroupNormAdvantage

__all__ = ['GroupNormAdvantage']
