"""Samplers (SAMPLERS registry): the generation procedure of each policy family."""
from .ar_sampler import ARSampler
from .masked import MaskedSampler
from .next_scale import NextScaleSampler
from .vmr import VMRSampler

__all__ = ['ARSampler', 'MaskedSampler', 'NextScaleSampler', 'VMRSampler']
