"""Datasets (DATASETS registry): condition datasets and the Shapes benchmark world."""
from .conditions import ClassConditionDataset, PromptFileDataset
from .geneval import GenEvalPromptDataset
from .shapes import ShapesClassDataset, ShapesImageDataset, ShapesPromptDataset

__all__ = ['ClassConditionDataset', 'GenEvalPromptDataset', 'PromptFileDataset',
           'ShapesClassDataset', 'ShapesPromptDataset', 'ShapesImageDataset']
