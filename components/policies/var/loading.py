"""Reading and strictly loading the official VAR files (``var_d*.pth``, ``vae_ch160v4096z32.pth``)
or files with the same keys (the shipped Shapes ``.safetensors`` models), through core's one file
reader and one strict loader (:mod:`vargo.core.checkpoint`)."""
from __future__ import annotations

import os

from torch import Tensor, nn

from vargo.core.checkpoint import (load_state_dict_strict, official_file_missing,
                                   read_state_dict)

__all__ = ['VAR_FILE_SOURCES', 'read_var_file', 'load_var_file']

_HF = 'https://huggingface.co/FoundationVision/var/resolve/main/'
#: where the official files are published (VAR README)
VAR_FILE_SOURCES: dict[str, str] = {
    **{f'var_d{d}.pth': f'{_HF}var_d{d}.pth' for d in (16, 20, 24, 30, 36)},
    'vae_ch160v4096z32.pth': f'{_HF}vae_ch160v4096z32.pth',
}


def _missing(path: str, what: str) -> FileNotFoundError:
    """The error for an absent file (core's :func:`official_file_missing` with this family's
    sources)."""
    return official_file_missing(path, what=what, sources=VAR_FILE_SOURCES, family='VAR',
                                 listing='https://huggingface.co/FoundationVision/var')


def read_var_file(path: str, *, what: str) -> dict[str, Tensor]:
    """The state dict of a VAR transformer or VQVAE file (raw, or under ``model`` / ``module`` /
    ``state_dict``), read without running code; ``what`` names it in messages."""
    return read_state_dict(os.fspath(path), what=what,
                           missing=lambda p: _missing(p, what))


def load_var_file(module: nn.Module, path: str, *, what: str) -> None:
    """Load the file at ``path`` into ``module``, strictly (every missing, unexpected or
    mis-shaped key is named: :class:`vargo.core.checkpoint.StateDictMismatch`)."""
    load_state_dict_strict(module, read_var_file(path, what=what),
                           source=f'{what} file {path!r}',
                           hint='check the arch / patch_nums / vocab_size / num_classes / '
                                'tokenizer settings against the file')
