"""Policies (POLICIES registry): generators whose actions have log-probabilities."""
from .janus import JanusPolicy
from .llamagen import LlamaGenPolicy
from .mar import MARPolicy
from .var import VARPolicy
from .vqgan import VQGANTransformerPolicy

__all__ = ['JanusPolicy', 'LlamaGenPolicy', 'MARPolicy', 'VARPolicy', 'VQGANTransformerPolicy']
