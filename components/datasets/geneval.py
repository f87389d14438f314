"""GenEval prompts: the conditions of a GenEval metadata file (GenEval's
``prompts/evaluation_metadata.jsonl`` format), for training or for ``tools/eval.py``."""
from __future__ import annotations

import os
from typing import Optional, Sequence

from torch.utils.data import Dataset

from vargo.core.registry import DATASETS

__all__ = ['GenEvalPromptDataset']


@DATASETS.register_module()
class GenEvalPromptDataset(Dataset):
    """The prompts of a GenEval metadata file, in file order (each prompt once).

    Each line is a JSON object ``{"tag", "prompt", "include": [{"class", "count"[, "color"]
    [, "position": [relation, k]]}], "exclude": [...]}``; the entries are validated when the
    dataset is built (:func:`vargo.components.rewards.geneval_rules.read_metadata`), and
    ``GenEvalReward`` with the same file scores the images of these prompts.

    Args:
        path: the metadata file.
        tags: keep only the prompts of these tags (e.g. ``['counting']``); None: all.

    Items: ``{'prompt': str}``; ``self.metadata[i]`` is item ``i``'s entry.
    """

    file_sources = {
        'evaluation_metadata.jsonl':
            'https://github.com/djghosh13/geneval/blob/main/prompts/evaluation_metadata.jsonl',
        'train_metadata.jsonl':
            'https://github.com/yifan123/flow_grpo/blob/main/dataset/geneval/train_metadata.jsonl'}

    def __init__(self, *, path: str, tags: Optional[Sequence[str]] = None):
        from vargo.components.rewards.geneval_rules import read_metadata
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f'GenEvalPromptDataset path={path!r} must be the path of a GenEval '
                             f'metadata JSONL file')
        entries = read_metadata(str(path))
        if tags is not None:
            if isinstance(tags, str) or not isinstance(tags, Sequence) or not tags:
                raise ValueError(f'GenEvalPromptDataset tags={tags!r} must be None or a '
                                 f'non-empty list of tags')
            present = list(dict.fromkeys(m['tag'] for m in entries))
            unknown = [t for t in tags if t not in present]
            if unknown:
                raise ValueError(f'GenEvalPromptDataset tags {unknown} are not in {path} '
                                 f'(its tags: {present})')
            entries = [m for m in entries if m['tag'] in set(tags)]
        self.path = str(path)
        self.metadata = entries
        self.prompts = [m['prompt'] for m in entries]
        self.metainfo = dict(num_prompts=len(self.prompts))

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        return {'prompt': self.prompts[i]}
