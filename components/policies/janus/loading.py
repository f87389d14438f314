"""Loading Janus-Pro from a local Hugging Face directory in transformers' format (never a
download): the files are checked first, then ``from_pretrained(..., local_files_only=True)``
loads them and every missing, unexpected or mis-shaped key is an error (transformers would
initialise missing weights at random with a warning)."""
from __future__ import annotations

import json
import os

from vargo.core.checkpoint import StateDictMismatch

__all__ = ['JANUS_FILE_SOURCES', 'JANUS_PUBLISHED', 'check_local_dir', 'load_pretrained']

#: where the transformers-format Janus-Pro directories are published (a directory name ->
#: its page; the config checker reports it for a missing ``model_path``)
JANUS_FILE_SOURCES: dict[str, str] = {
    'Janus-Pro-1B': 'https://huggingface.co/deepseek-community/Janus-Pro-1B',
    'Janus-Pro-7B': 'https://huggingface.co/deepseek-community/Janus-Pro-7B',
}
JANUS_PUBLISHED = ('Janus-Pro-1B / Janus-Pro-7B in transformers format are published at '
                   + ' and '.join(JANUS_FILE_SOURCES.values())
                   + ' (download the whole directory; nothing is downloaded at run time)')


def _missing(path: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(f'Janus model directory {path!r}: {what} not found; '
                             f'{JANUS_PUBLISHED}')


def check_local_dir(path: str) -> str:
    """Return ``path`` if it holds a transformers-format Janus model (``config.json`` with
    ``model_type`` ``janus``, safetensors weights, every shard of an index, the tokenizer);
    otherwise raise a one-line error naming the first missing file and where Janus-Pro is
    published."""
    path = os.path.expanduser(str(path))
    if not os.path.isdir(path):
        raise _missing(path, 'the directory')
    config = os.path.join(path, 'config.json')
    if not os.path.isfile(config):
        raise _missing(path, 'config.json')
    with open(config, encoding='utf-8') as f:
        model_type = json.load(f).get('model_type')
    if model_type != 'janus':
        raise ValueError(
            f'Janus model directory {path!r} holds model_type={model_type!r}, not "janus": '
            + ('this is the original DeepSeek release (custom code); '
               if model_type == 'multi_modality' else '') + JANUS_PUBLISHED)
    index = os.path.join(path, 'model.safetensors.index.json')
    if os.path.isfile(index):
        with open(index, encoding='utf-8') as f:
            shards = sorted(set(json.load(f).get('weight_map', {}).values()))
        if not shards:
            raise _missing(path, 'the weight shards listed in model.safetensors.index.json')
        for shard in shards:
            if not os.path.isfile(os.path.join(path, shard)):
                raise _missing(path, shard)
    elif not os.path.isfile(os.path.join(path, 'model.safetensors')):
        raise _missing(path, 'model.safetensors (or model.safetensors.index.json and its shards)')
    if not os.path.isfile(os.path.join(path, 'tokenizer_config.json')):
        raise _missing(path, 'tokenizer_config.json')
    if not any(os.path.isfile(os.path.join(path, n)) for n in ('tokenizer.json',
                                                                 'tokenizer.model')):
        raise _missing(path, 'tokenizer.json')
    return path


def load_pretrained(path: str, *, dtype, attn_implementation: str = 'sdpa'):
    """``(JanusForConditionalGeneration, tokenizer)`` from the local directory ``path``, loaded
    strictly (:class:`~vargo.core.checkpoint.StateDictMismatch` lists every missing, unexpected
    or mis-shaped key)."""
    from transformers import AutoTokenizer, JanusForConditionalGeneration
    path = check_local_dir(path)
    model, info = JanusForConditionalGeneration.from_pretrained(
        path, local_files_only=True, dtype=dtype, attn_implementation=attn_implementation,
        output_loading_info=True)
    problems = []
    for key in ('missing_keys', 'unexpected_keys', 'mismatched_keys'):
        items = sorted(str(k) for k in (info.get(key) or ()))
        if items:
            shown = ', '.join(items[:8]) + (f', ... ({len(items)} in all)' if len(items) > 8
                                             else '')
            problems.append(f'{key.replace("_", " ")}: {shown}')
    if info.get('error_msgs'):
        problems.append(f'errors: {"; ".join(map(str, info["error_msgs"]))}')
    if problems:
        raise StateDictMismatch(f'Janus model directory {path!r} does not match its config: '
                                + ' | '.join(problems))
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer
