"""Frozen sub-modules (tokenizers, text encoders) stay out of a policy's state dict.

They are loaded from their own files (``tokenizer_checkpoint``, ``text_encoder``), never trained,
and would otherwise be written into every RL checkpoint.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

from torch import nn

__all__ = ['exclude_frozen_submodules']


def _drop(names: tuple[str, ...], module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(tuple(f'{prefix}{n}.' for n in names))]:
        del state_dict[key]
    return state_dict


def _fill(names: tuple[str, ...], module, state_dict, prefix, *args):
    # a state dict without the frozen modules (ours never has them) keeps their current tensors
    for name in names:
        try:
            sub = module.get_submodule(name)
        except AttributeError:
            continue
        for key, value in sub.state_dict().items():
            state_dict.setdefault(f'{prefix}{name}.{key}', value)


def exclude_frozen_submodules(module: nn.Module, names: Sequence[str]) -> None:
    """``module.state_dict()`` omits the sub-modules ``names`` (dotted paths allowed, e.g.
    ``'model.vqmodel'``; absent ones are skipped), and ``module.load_state_dict`` accepts a dict
    without them, keeping their current weights."""
    names = tuple(names)
    module._register_state_dict_hook(partial(_drop, names))
    module.register_load_state_dict_pre_hook(partial(_fill, names))
