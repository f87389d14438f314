"""Datasets (DATASETS registry): condition datasets and the Shapes benchmark world."""
from .conditions import ClassConditionDataset, PromptFileDataset
from .shapes import ShapesClassDataset, ShapesImageDataset, ShapesPromptDataset

__all__ = ['ClassConditionDataset', 'PromptFileDataset', 'ShapesClassDataset',
           'ShapesPromptDataset', 'ShapesImageDataset']
