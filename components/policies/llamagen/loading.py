"""Reading official LlamaGen files (``c2i_*.pt``, ``t2i_*.pt``, ``vq_ds*.pt``) and loading them
strictly through core's one loader, dropping only the derived tensors some files carry."""
from __future__ import annotations

from torch import Tensor, nn

from vargo.core.checkpoint import load_state_dict_strict, official_file_missing, read_state_dict

__all__ = ['LLAMAGEN_FILE_SOURCES', 'DERIVED_KEYS', 'is_derived_key', 'load_official_state_dict',
           'load_official']

#: where the official files are published (LlamaGen README; FLAN-T5-XL on the HF hub)
_HF_C2I = 'https://huggingface.co/FoundationVision/LlamaGen/resolve/main/'
_HF_T2I = 'https://huggingface.co/peizesun/llamagen_t2i/resolve/main/'
LLAMAGEN_FILE_SOURCES: dict[str, str] = {
    **{f'c2i_{s}.pt': f'{_HF_C2I}c2i_{s}.pt'
       for s in ('B_256', 'B_384', 'L_256', 'L_384', 'XL_384', 'XXL_384', '3B_384')},
    'vq_ds16_c2i.pt': f'{_HF_C2I}vq_ds16_c2i.pt',
    'vq_ds8_c2i.pt': f'{_HF_C2I}vq_ds8_c2i.pt',
    'vq_ds16_t2i.pt': f'{_HF_T2I}vq_ds16_t2i.pt',
    't2i_XL_stage1_256.pt': f'{_HF_T2I}t2i_XL_stage1_256.pt',
    't2i_XL_stage2_512.pt': f'{_HF_T2I}t2i_XL_stage2_512.pt',
    'flan-t5-xl': 'https://huggingface.co/google/flan-t5-xl',
}

#: tensors some official files hold that are derived, not learned (see the package doc)
DERIVED_KEYS = ('freqs_cis', 'causal_mask')


def is_derived_key(key: str) -> bool:
    """True for a derived tensor of an official file (RoPE table, causal mask, KV cache)."""
    return key in DERIVED_KEYS or '.kv_cache.' in key


def _missing(path: str, what: str) -> FileNotFoundError:
    """The error for an absent file (core's :func:`official_file_missing` with this family's
    sources)."""
    return official_file_missing(path, what=what, sources=LLAMAGEN_FILE_SOURCES, family='LlamaGen',
                                 listing='LlamaGen README')


def load_official_state_dict(path: str, *, what: str) -> dict[str, Tensor]:
    """The state dict of an official LlamaGen file: ``{"model": ...}`` (DDP), ``{"module":
    ...}`` (DeepSpeed), ``{"state_dict": ...}`` or a raw state dict (FSDP ``consolidated``), as
    ``sample_c2i.py`` accepts them, read data-only; a ``.safetensors`` file (the shipped Shapes
    models) is a raw state dict whose tensors keep their stored dtype."""
    return read_state_dict(path, what=what, missing=lambda p: _missing(p, what))


def load_official(module: nn.Module, path: str, *, what: str) -> list[str]:
    """Load the LlamaGen file ``path`` into ``module`` strictly (every missing, unexpected or
    mis-shaped key raises :class:`~vargo.core.checkpoint.StateDictMismatch`); return the derived
    keys dropped."""
    return load_state_dict_strict(module, load_official_state_dict(path, what=what),
                                  source=f'{what} file {path!r}', drop=is_derived_key,
                                  hint='check the arch / task / image_size / vocab_size / '
                                       'num_classes settings against the file')
