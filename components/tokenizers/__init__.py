"""Image tokenizers and text encoders used by the policies (not a registry: built by policies)."""
from .vq import VQ_PRESETS, VQModel, build_vq

__all__ = ['VQModel', 'VQ_PRESETS', 'build_vq']
