"""Benchmark tooling: the Shapes feature extractor for FID/KID/precision-recall/IS, and
(:mod:`.pretrain`, imported on demand) the pretraining of the Shapes tokenizers and base models.

Importing this package registers the torch-fidelity feature extractor ``'vargo-shapes'``.
"""
from .shapes_features import (DEFAULT_STATS_PATH, DEFAULT_WEIGHTS_PATH, EXTRACTOR_NAME,
                              FEATURE_DIM, ShapesFeatureExtractor, ShapesFeatureNet,
                              compute_statistics, extract_features, load_feature_net,
                              load_reference_statistics, reference_images, shapes_fidelity)

__all__ = ['EXTRACTOR_NAME', 'FEATURE_DIM', 'DEFAULT_WEIGHTS_PATH', 'DEFAULT_STATS_PATH',
           'ShapesFeatureNet', 'ShapesFeatureExtractor', 'load_feature_net', 'extract_features',
           'compute_statistics', 'load_reference_statistics', 'reference_images',
           'shapes_fidelity']
