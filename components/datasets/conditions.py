"""Condition datasets: what a rollout is conditioned on (class ids or prompts).

Each item is a dict with ``class_id`` (int) and/or ``prompt`` (str); MMEngine's
``default_collate`` turns a batch into ``{'class_id': LongTensor[N], 'prompt': list[str]}`` and
the loop makes :class:`vargo.core.types.Conditions` of it.
"""
from __future__ import annotations

import numbers
import os
from typing import Optional, Sequence

from torch.utils.data import Dataset

from vargo.core.registry import DATASETS

__all__ = ['ClassConditionDataset', 'PromptFileDataset']

#: the most classes a ClassConditionDataset lists (its class ids are listed eagerly)
MAX_CLASSES = 10 ** 7


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@DATASETS.register_module()
class ClassConditionDataset(Dataset):
    """Class labels ``0 .. num_classes-1`` (or a chosen subset) for class-conditional models.

    Args:
        num_classes: number of classes of the model.
        classes: optional subset of class ids to train on.
    """

    def __init__(self, *, num_classes: int, classes: Optional[Sequence[int]] = None):
        if not _is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(f'ClassConditionDataset num_classes={num_classes!r} must be an int '
                             f'in [1, {MAX_CLASSES}]: the number of classes of the model '
                             f'(ImageNet 1000)')
        if classes is not None and (isinstance(classes, (str, bytes)) or not isinstance(
                classes, Sequence) or not classes or not all(_is_int(c) for c in classes)):
            raise ValueError(f'ClassConditionDataset classes={classes!r} must be None (all '
                             f'classes) or a non-empty list of int class ids')
        self.num_classes = int(num_classes)
        self.classes = list(range(self.num_classes)) if classes is None else [int(c) for c in classes]
        bad = [c for c in self.classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f'class ids {bad} are outside [0, {self.num_classes})')
        self.metainfo = dict(num_classes=self.num_classes)

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, i: int) -> dict:
        return {'class_id': self.classes[i]}


@DATASETS.register_module()
class PromptFileDataset(Dataset):
    """Prompts from a UTF-8 text file, one prompt per line.

    Blank lines and lines starting with ``#`` are skipped; surrounding whitespace is stripped.

    Args:
        path: the prompt file (see configs/stage/prompts_example.txt).
    """

    def __init__(self, *, path: str):
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f'PromptFileDataset path={path!r} must be the path of a text file '
                             f'(one prompt per line)')
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'prompt file not found: {path} (one prompt per line; '
                                    f'lines starting with # are comments)')
        with open(path, encoding='utf-8') as f:
            self.prompts = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith('#')]
        if not self.prompts:
            raise ValueError(f'prompt file {path} has no prompts')
        self.metainfo = dict(num_prompts=len(self.prompts))

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        return {'prompt': self.prompts[i]}
