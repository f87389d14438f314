"""Samplers (SAMPLERS registry): the generation procedure of each policy family."""
from .ar_sampler import ARSampler

__all__ = ['ARSampler']
