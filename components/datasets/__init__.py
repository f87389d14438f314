"""Condition datasets (DATASETS registry)."""
from .conditions import ClassConditionDataset, PromptFileDataset

__all__ = ['ClassConditionDataset', 'PromptFileDataset']
