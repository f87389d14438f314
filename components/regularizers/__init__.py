"""Regularizers (registry ``REGULARIZERS``): named loss terms; only ``out['loss']`` is optimised."""
from .adaptive_entropy import AdaptiveEntropyRegularizer
from .entropy import EntropyRegularizer
from .kl import KLRegularizer

__all__ = ['AdaptiveEntropyRegularizer', 'EntropyRegularizer', 'KLRegularizer']
