"""Image tokenizers and text encoders used by the policies (not a registry: built by policies)."""
from .kl_vae import KL_VAE_PRESETS, KLVAE, build_kl_vae
from .msvq import MSVQ_PRESETS, MultiScaleVQVAE, build_msvq
from .vq import VQ_PRESETS, VQModel, build_vq
from .vqgan import VQGAN, VQGAN_PRESETS, build_vqgan

__all__ = ['KLVAE', 'KL_VAE_PRESETS', 'build_kl_vae',
           'VQModel', 'VQ_PRESETS', 'build_vq', 'MultiScaleVQVAE', 'MSVQ_PRESETS', 'build_msvq',
           'VQGAN', 'VQGAN_PRESETS', 'build_vqgan']
