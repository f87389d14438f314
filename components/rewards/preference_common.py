"""Helpers shared by the text-image preference heads (PickScore, ImageReward, HPSv3).

* :func:`condition_texts`: the text each sample is scored against: ``rollout.cond.prompts``, or
  a template filled with the class name of ``rollout.cond.class_ids``.
* :func:`missing_file`: the one-line ``FileNotFoundError`` naming a missing local file and the
  Hugging Face repository that publishes it (vargo never downloads).
* :func:`build_on_meta`: build a module without initialising its weights (on the ``meta``
  device, then storage on the CPU), to be filled by a strict state-dict load; startup of a
  ViT-H or a 2B-parameter model then costs the file read, not a random initialisation.
* :func:`check_images`: the shape/None checks of ``rollout.images``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from vargo.core.types import Rollout

__all__ = ['condition_texts', 'missing_file', 'build_on_meta', 'check_images', 'TextCache',
           'resolve_template']


def resolve_template(template: str, owner: str) -> str:
    if not isinstance(template, str) or template.count('{}') != 1:
        raise ValueError(f"{owner} template={template!r} must be a string with one '{{}}' for the "
                         f"class name, e.g. 'a photo of a {{}}'")
    return template


def condition_texts(rollout: Rollout, class_names: Optional[Sequence[str]], template: str,
                    owner: str) -> list[str]:
    """One text per sample: the prompt, or ``template`` filled with the sample's class name."""
    cond = rollout.cond
    if class_names is not None:
        if cond.class_ids is None:
            raise ValueError(f'{owner} has class_names, so it scores rollout.cond.class_ids, but '
                             f'they are None: set class_names=None to score the prompts of a '
                             f'text-conditional policy')
        ids = cond.class_ids.detach().cpu().tolist()
        bad = sorted({i for i in ids if not 0 <= i < len(class_names)})
        if bad:
            raise ValueError(f'{owner} got class ids {bad[:5]} outside [0, {len(class_names)}): '
                             f'class_names has {len(class_names)} names; configure the matching '
                             f'list')
        return [template.format(class_names[i]) for i in ids]
    if cond.prompts is None:
        raise ValueError(f"{owner} scores rollout.cond.prompts but they are None: set class_names "
                         f"('imagenet', 'shapes' or a list) for a class-conditional policy")
    return [str(p) for p in cond.prompts]


def missing_file(owner: str, what: str, path: str, sources: dict[str, str]) -> FileNotFoundError:
    """``FileNotFoundError``: ``<owner> <what> '<path>' does not exist; it is published at ...``
    (the source of the path's basename, or every official file when the name is not one)."""
    base = os.path.basename(str(path).rstrip('/'))
    where = sources.get(base)
    hint = (f'it is published at {where}' if where else
            'official files: ' + '; '.join(f'{k}: {v}' for k, v in sources.items()))
    return FileNotFoundError(f'{owner} {what} {str(path)!r} does not exist; {hint}. Download it '
                             f'to that path (vargo never downloads at run time).')


def build_on_meta(factory: Callable[[], nn.Module],
                  buffers: Optional[Callable[[nn.Module], dict]] = None) -> nn.Module:
    """``factory()`` built on the ``meta`` device, then given uninitialised CPU storage.

    Every parameter and persistent buffer must then come from a strict state-dict load. The
    non-persistent buffers (not in ``state_dict()``) are set by ``buffers(module)`` ->
    ``{name: tensor}``; one that it does not set raises (its value would be garbage).
    """
    with torch.device('meta'):
        module = factory()
    module.to_empty(device='cpu')
    persistent = set(module.state_dict())
    transient = [n for n, _ in module.named_buffers() if n not in persistent]
    values = buffers(module) if buffers is not None else {}
    unset = sorted(set(transient) - set(values))
    if unset:
        raise RuntimeError(f'{type(module).__name__} has non-persistent buffers {unset} that '
                           f'build_on_meta cannot fill; give their values')
    for name, value in values.items():
        owner_name, _, attr = name.rpartition('.')
        owner = module.get_submodule(owner_name) if owner_name else module
        getattr(owner, attr).copy_(value)
    return module


def check_images(rollout: Rollout, n_texts: int, owner: str) -> Tensor:
    images = rollout.images
    if images is None:
        raise ValueError(f'{owner} scores decoded images but rollout.images is None: decode the '
                         f'rollout (policy.decode) before computing rewards')
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'{owner} expects rollout.images of shape [B, 3, H, W] in [0, 1], got '
                         f'{tuple(images.shape)}')
    if images.shape[0] != n_texts:
        raise ValueError(f'{owner} got {images.shape[0]} images but {n_texts} conditions')
    return images


class TextCache:
    """An LRU map text -> feature tensor, bounded to ``size`` entries, cleared on a device move."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.data: OrderedDict = OrderedDict()

    def missing(self, texts: Sequence[str]) -> list[str]:
        return list(OrderedDict.fromkeys(t for t in texts if t not in self.data))

    def put(self, text: str, value) -> None:
        self.data[text] = value

    def get(self, texts: Sequence[str]) -> list:
        out = []
        for t in texts:
            self.data.move_to_end(t)
            out.append(self.data[t])
        while len(self.data) > self.size:
            self.data.popitem(last=False)
        return out

    def clear(self) -> None:
        self.data.clear()

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, text) -> bool:
        return text in self.data
