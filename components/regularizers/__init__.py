"""Regularizers (registry ``REGULARIZERS``): named loss terms; only ``out['loss']`` is optimised."""
from .adaptive_entropy import AdaptiveEntropyRegularizer
from .entropy import EntropyRegularizer
from .gaussian_mean_kl import GaussianMeanKLRegularizer
from .kl import KLRegularizer

__all__ = ['AdaptiveEntropyRegularizer', 'EntropyRegularizer', 'GaussianMeanKLRegularizer',
           'KLRegularizer']
