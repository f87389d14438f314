"""Tiny PickScore / ImageReward files in the official layouts, written by the tests (offline).

The weights are :mod:`reward_parity_common`'s deterministic function of the parameter names,
the same the reference packages were given when the pinned numbers were computed.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import torch

import reward_parity_common as C

PARITY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures',
                      'reward_parity.json')


def parity_reference() -> dict:
    with open(PARITY) as f:
        return json.load(f)


def deterministic_tensors(shapes: dict) -> dict:
    return {k: torch.from_numpy(v) for k, v in C.deterministic_state(shapes).items()}


def write_pickscore_dir(directory: str, *, overrides: Optional[dict] = None,
                        legacy_position_ids: bool = False, fmt: str = 'safetensors') -> str:
    """A ``PickScore_v1``-shaped directory: ``config.json``, ``model.safetensors`` (or
    ``pytorch_model.bin``), ``vocab.json`` + ``merges.txt``. ``overrides``: tensors replacing
    the deterministic ones; ``legacy_position_ids``: add the buffers transformers < 4.31 saved."""
    from transformers import CLIPConfig, CLIPModel
    vocab = C.write_clip_tokenizer(directory)
    cfg = C.pick_tiny_config(vocab)
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(dict(cfg, model_type='clip', architectures=['CLIPModel']), f)
    with torch.device('meta'):
        model = CLIPModel(CLIPConfig(**cfg))
    state = deterministic_tensors({k: tuple(v.shape) for k, v in model.state_dict().items()})
    state['logit_scale'] = torch.tensor(C.PICK_LOGIT_SCALE)
    state.update(overrides or {})
    if legacy_position_ids:
        state['text_model.embeddings.position_ids'] = torch.arange(77)[None]
        state['vision_model.embeddings.position_ids'] = torch.arange(17)[None]
    if fmt == 'safetensors':
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()},
                  os.path.join(directory, 'model.safetensors'))
    else:
        torch.save(state, os.path.join(directory, 'pytorch_model.bin'))
    return directory


def image_reward_state(overrides: Optional[dict] = None) -> dict:
    from vargo.components.rewards.image_reward import ImageRewardModel
    vocab = len(C.bert_vocab())
    with torch.device('meta'):
        model = ImageRewardModel(C.IR_VIT, C.ir_med_config(vocab))
    state = deterministic_tensors({k: tuple(v.shape) for k, v in model.state_dict().items()})
    state.update(overrides or {})
    return state


def write_image_reward_files(directory: str, *, state: Optional[dict] = None) -> str:
    """``ImageReward.pt`` (a plain state dict), ``med_config.json`` and ``vocab.txt`` in
    ``directory``; returns the checkpoint path."""
    vocab = C.write_bert_vocab(directory)
    with open(os.path.join(directory, 'med_config.json'), 'w') as f:
        json.dump(C.ir_med_config(vocab), f)
    path = os.path.join(directory, 'ImageReward.pt')
    torch.save(image_reward_state() if state is None else state, path)
    return path


def parity_batch():
    """The parity images as ``[1, 3, H, W]`` float tensors (sizes differ) and as PIL images."""
    from PIL import Image
    arrays = C.parity_images()
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float()[None] / 255 for a in arrays]
    return tensors, [Image.fromarray(a) for a in arrays]


def rollout(images: torch.Tensor, *, prompts=None, class_ids=None, group_ids=None):
    from vargo.core.types import Conditions, Rollout
    b = images.shape[0]
    return Rollout(cond=Conditions(class_ids=class_ids, prompts=prompts),
                   group_ids=torch.zeros(b, dtype=torch.long) if group_ids is None else group_ids,
                   actions=torch.zeros(b, 1, dtype=torch.long), logp_old=torch.zeros(b, 1),
                   action_mask=torch.ones(b, 1, dtype=torch.bool), action_step=torch.arange(1),
                   action_pos=torch.zeros(1, 2, dtype=torch.long), images=images)


def score_matrix(head, tensors) -> np.ndarray:
    """``[prompt, image]`` scores of every parity prompt on every parity image (one rollout per
    image, all prompts batched)."""
    out = np.zeros((len(C.PROMPTS), len(tensors)))
    for j, x in enumerate(tensors):
        batch = x.expand(len(C.PROMPTS), -1, -1, -1).contiguous()
        out[:, j] = head(rollout(batch, prompts=list(C.PROMPTS))).scores.numpy()
    return out


def hpsv3_file_key(key: str) -> str:
    """The ``HPSv3.safetensors`` name (transformers 4.45, as the package saves it) of a key of
    vargo's ``HPSv3Model``."""
    for prefix, file_prefix in (('model.language_model.', 'model.'), ('model.visual.', 'visual.')):
        if key.startswith(prefix):
            return file_prefix + key[len(prefix):]
    return key


def write_hpsv3_files(root: str, *, overrides: Optional[dict] = None,
                      drop: tuple = ()) -> tuple[str, str]:
    """A tiny ``Qwen2-VL-7B-Instruct`` directory (config and processor files, no weights) and
    ``HPSv3.safetensors`` (every tensor in the package's names, ``lm_head.weight`` included) in
    ``root``; returns ``(checkpoint, backbone_dir)``."""
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig

    from vargo.components.rewards.hpsv3 import HPSv3Model
    backbone = os.path.join(root, 'Qwen2-VL-7B-Instruct')
    ids = C.write_qwen2_vl_processor(backbone)
    cfg = C.qwen2_vl_tiny_config(ids)
    with open(os.path.join(backbone, 'config.json'), 'w') as f:
        json.dump(cfg, f)
    reward_id = max(ids.values()) + 1
    config = Qwen2VLConfig(**dict(cfg, vocab_size=reward_id + 1))
    with torch.device('meta'):
        model = HPSv3Model(config, reward_id)
    shapes = {hpsv3_file_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    shapes['lm_head.weight'] = (reward_id + 1, cfg['hidden_size'])
    state = {k: v for k, v in deterministic_tensors(shapes).items() if k not in drop}
    state.update(overrides or {})
    path = os.path.join(root, 'HPSv3.safetensors')
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path, backbone


def missing_file_message(build, path: str) -> str:
    """The message of the ``FileNotFoundError`` that ``build()`` raises for the missing ``path``,
    checked to be one line naming it and saying that vargo never downloads."""
    import pytest
    with pytest.raises(FileNotFoundError) as err:
        build()
    msg = str(err.value)
    assert path in msg and '\n' not in msg and 'never downloads' in msg
    return msg


def benchmark_reward_heads(tmp_dir: str, heads: dict, *, batch: int = 2,
                           repeat: int = 1) -> dict:
    """``tools/benchmark.py --reward-heads`` (only that section, one thread) on the tiny
    LlamaGen JPEG config with ``heads`` as ``eval_cfg.metric_heads``; returns its
    ``reward_heads`` JSON. The torch thread count is restored."""
    from conftest import ROOT, load_tool
    tiny = os.path.join(ROOT, 'configs', 'grpo', 'llamagen-tiny_grpo_jpeg.py')
    cfg = os.path.join(tmp_dir, 'bench_cfg.py')
    with open(cfg, 'w') as f:
        f.write(f'_base_ = [{tiny!r}]\neval_cfg = dict(metric_heads={heads!r})\n')
    out = os.path.join(tmp_dir, 'bench.json')
    argv = [cfg, '--batch', str(batch), '--repeat', str(repeat), '--threads', '1',
            '--gemm-size', '64', '--bandwidth-mb', '4', '--skip-rollout', '--skip-update',
            '--skip-iteration', '--reward-heads', '--out', out, '--cfg-options',
            'policy.arch.dim=32', 'policy.arch.n_layer=1',
            'policy.tokenizer_checkpoint=/nonexistent/vq.pt']
    threads = torch.get_num_threads()
    try:
        assert load_tool('benchmark').main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    with open(out) as f:
        return json.load(f)['reward_heads']
