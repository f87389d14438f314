"""Reading the official taming-transformers files (Lightning ``.ckpt``) without running code in
them, splitting a ``Net2NetTransformer`` state dict into its transformer and first stage, and
loading each strictly through core's one loader."""
from __future__ import annotations

import glob
import os
from typing import Any, Optional

import torch
from torch import Tensor, nn

from vargo.core.checkpoint import (StateDictMismatch, load_state_dict_strict,
                                   official_file_missing, read_state_dict, safe_load)

from .model import MinGPT, derived_mask_keys

__all__ = ['TAMING_FILE_SOURCES', 'read_official_state_dict', 'split_net2net',
           'load_transformer', 'load_first_stage', 'LIGHTNING_CALLBACK_KEYS',
           'check_release_config']

#: where the official files are published (taming-transformers README, "Overview of pretrained
#: models"); a released log folder holds ``checkpoints/last.ckpt`` and ``configs/*-project.yaml``
TAMING_FILE_SOURCES: dict[str, str] = {
    '2021-04-03T19-39-50_cin_transformer': 'https://k00.fr/s511rwcv',
    'vqgan_imagenet_f16_16384': 'https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/',
    'vqgan_imagenet_f16_1024': 'https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/',
}

#: classes pytorch-lightning 1.0 pickled into its checkpoints as *dict keys* (the callback
#: states are keyed by the callback's class); each is replaced by an inert stand-in while the
#: file is read, so ``torch.load(weights_only=True)`` accepts the official files
LIGHTNING_CALLBACK_KEYS = ('pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint',
                           'pytorch_lightning.callbacks.early_stopping.EarlyStopping')

#: prefixes of a ``Net2NetTransformer`` state dict (``taming/models/cond_transformer.py``)
_TRANSFORMER, _FIRST_STAGE, _COND_STAGE = 'transformer.', 'first_stage_model.', 'cond_stage_model.'
#: training-only sub-module of a first stage (LPIPS + discriminator of ``VQLPIPSWithDiscriminator``)
_LOSS = 'loss.'


class _LightningCallbackKey:
    """Inert stand-in for a pytorch-lightning callback class used as a dict key in a checkpoint
    (no behaviour: it can be neither called with arguments nor used for anything else)."""

    __slots__ = ()


def _missing(path: str, what: str) -> FileNotFoundError:
    """Core's :func:`official_file_missing`, with the release whose folder name is in ``path``
    (the official files are all ``last.ckpt``: the folder names the release)."""
    parts = os.path.normpath(str(path)).split(os.sep)
    sources = {name: url for name, url in TAMING_FILE_SOURCES.items() if name in parts}
    name = os.path.basename(str(path))
    if sources:
        return official_file_missing(path, what=what, family='taming-transformers',
                                     sources={name: next(iter(sources.values()))},
                                     listing='taming-transformers README')
    return official_file_missing(path, what=what, sources=TAMING_FILE_SOURCES,
                                 family='taming-transformers',
                                 listing='taming-transformers README, "Overview of pretrained '
                                         'models"; keep the release folder name in the path')


def read_official_state_dict(path: str, *, what: str) -> dict[str, Tensor]:
    """The state dict of an official taming file, read data-only.

    A Lightning ``.ckpt`` (``{"state_dict": ..., "callbacks": {ModelCheckpoint: ...}, ...}``):
    ``torch.load(weights_only=True)`` with the callback classes replaced by an inert stand-in
    (:data:`LIGHTNING_CALLBACK_KEYS`), then its ``state_dict``; any other non-data object is
    refused naming its class. A ``.safetensors`` file or a plain ``{"state_dict": ...}`` /
    raw state dict are accepted too (:func:`~vargo.core.checkpoint.read_state_dict`).
    """
    if not os.path.isfile(path):
        raise _missing(path, what)
    if str(path).endswith('.safetensors'):
        return read_state_dict(path, what=what)
    allow = tuple((_LightningCallbackKey, name) for name in LIGHTNING_CALLBACK_KEYS)
    ckpt = safe_load(path, 'cpu', allow=allow)
    for key in ('state_dict', 'model'):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        return ckpt
    top = sorted(map(str, ckpt))[:20] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise StateDictMismatch(f'{what} file {path!r} holds no "state_dict" (top-level keys: {top}); '
                            f'pass the release\'s checkpoints/last.ckpt')


def split_net2net(state: dict[str, Tensor], *, source: str
                  ) -> tuple[dict[str, Tensor], Optional[dict[str, Tensor]]]:
    """``(transformer, first_stage or None)`` parts of a state dict.

    A ``Net2NetTransformer`` state dict (keys ``transformer.*``, ``first_stage_model.*``; the
    class-label cond stage ``Labelator`` has no weights) is split by prefix; any other key
    raises naming it. A state dict without ``transformer.`` keys is a bare transformer (e.g. a
    Shapes ``.safetensors`` file) and is returned whole.
    """
    if not any(k.startswith(_TRANSFORMER) for k in state):
        return state, None
    gpt, first, other = {}, {}, []
    for k, v in state.items():
        if k.startswith(_TRANSFORMER):
            gpt[k[len(_TRANSFORMER):]] = v
        elif k.startswith(_FIRST_STAGE):
            first[k[len(_FIRST_STAGE):]] = v
        else:
            other.append(k)
    if other:
        raise StateDictMismatch(
            f'{source} does not match a class-conditional Net2NetTransformer: unexpected keys '
            f'({len(other)}): {", ".join(sorted(other)[:20])}{" ..." if len(other) > 20 else ""}; '
            f'vargo loads the cin model (transformer.*, first_stage_model.*, a weight-free '
            f'Labelator cond stage): pass that release\'s checkpoints/last.ckpt')
    return gpt, (first or None)


def load_transformer(gpt: MinGPT, state: dict[str, Tensor], *, source: str) -> list[str]:
    """Load minGPT keys strictly; the official causal-mask buffers ``blocks.{i}.attn.mask`` are
    dropped (recomputed here) after checking they are the plain lower-triangular mask (an
    ``n_unmasked > 0`` model, whose mask has an unmasked prefix, is refused). Returns the dropped
    keys."""
    masks = set(derived_mask_keys(gpt.cfg.n_layer))

    def is_mask(key: str) -> bool:
        return key in masks

    for key in sorted(k for k in state if is_mask(k)):
        m = state[key]
        n = m.shape[-1]
        if m.dim() != 4 or m.shape[:2] != (1, 1) or m.shape[2] != n or not torch.equal(
                m.reshape(n, n).bool(), torch.ones(n, n, dtype=torch.bool).tril()):
            raise StateDictMismatch(f'{source}: {key} is not a plain causal mask (shape '
                                    f'{tuple(m.shape)}); models trained with n_unmasked > 0 are '
                                    f'not supported: use the class-conditional cin release')
    return load_state_dict_strict(gpt, state, source=source, drop=is_mask,
                                  hint='check arch / vocab_size / block_size against the file '
                                       '(the release\'s configs/*-project.yaml, '
                                       'transformer_config)')


def load_first_stage(vq: nn.Module, state: dict[str, Tensor], *, source: str) -> list[str]:
    """Load VQGAN keys strictly; the training losses (``loss.*``: LPIPS and discriminator of a
    standalone VQGAN release) are dropped. Returns the dropped keys."""
    return load_state_dict_strict(vq, state, source=source, drop=lambda k: k.startswith(_LOSS),
                                  hint='check the tokenizer settings (n_embed, embed_dim, ch, '
                                       'ch_mult, attn_resolutions, resolution) against the file '
                                       '(the release\'s configs/*-project.yaml, ddconfig)')


def _release_yaml(ckpt_path: str) -> Optional[str]:
    """The ``configs/*-project.yaml`` of the release folder holding ``<folder>/checkpoints/
    <file>``, or None."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(str(ckpt_path))))
    found = sorted(glob.glob(os.path.join(folder, 'configs', '*-project.yaml')))
    return found[-1] if found else None


def check_release_config(ckpt_path: str, *, transformer: dict[str, Any],
                         first_stage: Optional[dict[str, Any]] = None) -> Optional[str]:
    """Compare the architecture vargo builds with the release's own ``configs/*-project.yaml``
    (next to ``checkpoints/``), which the weights alone do not fix (``n_head`` has no tensor of
    its own). Returns the YAML checked, or None when the folder has none.

    Args:
        ckpt_path: the release's ``checkpoints/last.ckpt``.
        transformer: vargo's values of ``transformer_config.params`` fields (``vocab_size``,
            ``block_size``, ``n_layer``, ``n_head``, ``n_embd``).
        first_stage: vargo's values of ``first_stage_config.params`` (``n_embed``,
            ``embed_dim``) and of its ``ddconfig`` fields (other keys), or None.

    Raises:
        ValueError: one line naming every differing field (file value vs config value), or a
            cond stage other than the class-label ``Labelator``.
    """
    path = _release_yaml(ckpt_path)
    if path is None:
        return None
    import yaml
    with open(path, encoding='utf-8') as f:
        params = ((yaml.safe_load(f) or {}).get('model') or {}).get('params') or {}
    cond = (params.get('cond_stage_config') or {})
    target = cond.get('target', '') if isinstance(cond, dict) else str(cond)
    if not str(target).endswith('Labelator'):
        raise ValueError(f'{path}: cond_stage_config is {target!r}, not the class-label '
                         f'Labelator: vargo loads the class-conditional (cin) transformer only')
    bad = []
    gpt = (params.get('transformer_config') or {}).get('params') or {}
    for key, ours in transformer.items():
        if key in gpt and gpt[key] != ours:
            bad.append(f'transformer {key}: file {gpt[key]!r} vs config {ours!r}')
    if first_stage is not None:
        fs = (params.get('first_stage_config') or {}).get('params') or {}
        dd = fs.get('ddconfig') or {}
        for key, ours in first_stage.items():
            theirs = fs.get(key, dd.get(key))
            if isinstance(theirs, list):
                theirs = tuple(theirs)
            if theirs is not None and theirs != ours:
                bad.append(f'tokenizer {key}: file {theirs!r} vs config {ours!r}')
    if bad:
        raise ValueError(f'{path} does not match the policy settings: {"; ".join(bad)}; set '
                         f'arch / vocab_size / block_size / tokenizer as the release does')
    return path
