"""Reading the official MAR files (LTH14/mar) and loading them strictly.

A released ``checkpoint-last.pth`` is ``{"model": ..., "model_ema": ..., "optimizer": ...,
"args": argparse.Namespace}``; ``kl16.ckpt`` is ``{"model": ...}``. Files are read without
running code (:func:`vargo.core.checkpoint.read_state_dict`) and loaded with the one strict
loader of vargo (:func:`vargo.core.checkpoint.load_state_dict_strict`): a key that does not
match fails, naming it; nothing is skipped.
"""
from __future__ import annotations

from torch import Tensor, nn

from vargo.core.checkpoint import load_state_dict_strict, official_file_missing, read_state_dict

from ...tokenizers.kl_vae import KL_VAE_FILE_SOURCES

__all__ = ['MAR_FILE_SOURCES', 'load_mar_state_dict', 'load_mar_file']

_DBX = 'https://www.dropbox.com/scl/fi/'
#: where the official files are published (LTH14/mar README and util/download.py; the same
#: files are mirrored at https://huggingface.co/jadechoghari/mar). The three checkpoints are all
#: named ``checkpoint-last.pth`` upstream; vargo's configs expect them renamed as below.
MAR_FILE_SOURCES: dict[str, str] = {
    'mar_base.pth': f'{_DBX}f6dpuyjb7fudzxcyhvrhk/checkpoint-last.pth?rlkey='
                    'a6i4bo71vhfo4anp33n9ukujb&dl=0 (pretrained_models/mar/mar_base/'
                    'checkpoint-last.pth, rename to mar_base.pth)',
    'mar_large.pth': f'{_DBX}pxacc5b2mrt3ifw4cah6k/checkpoint-last.pth?rlkey='
                     'm48ovo6g7ivcbosrbdaz0ehqt&dl=0 (rename to mar_large.pth)',
    'mar_huge.pth': f'{_DBX}1qmfx6fpy3k7j9vcjjs3s/checkpoint-last.pth?rlkey='
                    '4lae281yzxb406atp32vzc83o&dl=0 (rename to mar_huge.pth)',
    **KL_VAE_FILE_SOURCES,
}


def load_mar_state_dict(path: str, key: str, *, what: str) -> dict[str, Tensor]:
    """The ``key`` entry (``'model'`` or ``'model_ema'``) of an official MAR file, read
    data-only; a ``.safetensors`` file or a plain dict of tensors is the state dict itself. A
    missing file raises ``FileNotFoundError`` naming where it is published."""
    def missing(p: str) -> FileNotFoundError:
        return official_file_missing(p, what=what, sources=MAR_FILE_SOURCES, family='MAR',
                                     listing='LTH14/mar README')
    return read_state_dict(path, what=what, containers=(key,), missing=missing,
                           hint="an official MAR file holds 'model' and 'model_ema' "
                                "(checkpoint_key), a KL-16 file 'model'")


def load_mar_file(module: nn.Module, path: str, key: str, *, what: str) -> None:
    """Load the ``key`` entry of the MAR file ``path`` into ``module``, strictly."""
    load_state_dict_strict(module, load_mar_state_dict(path, key, what=what),
                           source=f'{what} file {path!r} [{key!r}]',
                           hint='check the arch / image_size / patch_size / num_classes / '
                                'head_type / tokenizer settings against the file')
