"""Regularizers (registry ``REGULARIZERS``): named loss terms; only ``out['loss']`` is optimised."""
from .entropy import EntropyRegularizer
from .kl import KLRegularizer

__all__ = ['EntropyRegularizer', 'KLRegularizer']
