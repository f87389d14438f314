"""Policies (POLICIES registry): generators whose actions have log-probabilities."""
from .llamagen import LlamaGenPolicy
from .mar import MARPolicy
from .var import VARPolicy
from .vqgan import VQGANTransformerPolicy

__all__ = ['LlamaGenPolicy', 'MARPolicy', 'VARPolicy', 'VQGANTransformerPolicy']
