"""Metrics shared by rewards, benchmarks and tools: Frechet features and statistics (FID)."""
from .frechet import (FeatureStatistics, build_extractor, build_feature_extractor,
                      check_extractor, extract_features, extract_layers, frechet_distance,
                      gaussian_statistics, load_feature_statistics, save_feature_statistics,
                      to_uint8)

__all__ = ['FeatureStatistics', 'build_extractor', 'build_feature_extractor', 'check_extractor',
           'extract_features', 'extract_layers', 'frechet_distance', 'gaussian_statistics',
           'load_feature_statistics', 'save_feature_statistics', 'to_uint8']
