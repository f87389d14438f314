"""Policies (POLICIES registry): generators whose actions have log-probabilities."""
from .llamagen import LlamaGenPolicy

__all__ = ['LlamaGenPolicy']
