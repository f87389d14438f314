"""Image tokenizers and text encoders used by the policies (not a registry: built by policies)."""
from .msvq import MSVQ_PRESETS, MultiScaleVQVAE, build_msvq
from .vq import VQ_PRESETS, VQModel, build_vq

__all__ = ['VQModel', 'VQ_PRESETS', 'build_vq', 'MultiScaleVQVAE', 'MSVQ_PRESETS', 'build_msvq']
