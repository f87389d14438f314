"""What every Shapes pretrainer shares: paths, seeds, the training-image stream, the learning-rate
schedule, the weights file and config loading."""
from __future__ import annotations

import math
import os
import shlex
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

#: the repository root (the configs' relative paths, and the paths in model cards, start there)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.realpath(__file__)))))
#: seed offsets keep the streams of one --seed independent (model init uses the seed itself)
DATA_SEED_OFFSET = 100
EVAL_SEED_OFFSET = 200
WEIGHTS_FORMAT = 'vargo-shapes-pretrain-v1'
TOOL = 'tools/pretrain_shapes.py'


class ShapesStream:
    """Freshly rendered training images: step ``s`` gets items ``s*B .. s*B + B - 1`` of
    ``ShapesImageDataset(split='train', task=task, seed=seed)`` (never repeated, a prefix of
    any longer run)."""

    def __init__(self, task: str, seed: int, batch_size: int, steps: int):
        from vargo.components.datasets.shapes import ShapesImageDataset
        self.batch_size = batch_size
        self.dataset = ShapesImageDataset(split='train', task=task,
                                          num_samples=max(1, steps * batch_size), seed=seed)

    def batch(self, step: int) -> tuple[Tensor, list]:
        """``(images [B, 3, 32, 32] in {0, 1}, conditions)``: class ids or prompts."""
        items = [self.dataset[step * self.batch_size + i] for i in range(self.batch_size)]
        images = torch.stack([it['image'] for it in items])
        key = 'class_id' if self.dataset.task == 'c2i' else 'prompt'
        return images, [it[key] for it in items]


def lr_lambda(schedule: str, warmup: int, steps: int) -> Callable[[int], float]:
    """Multiplier of the base LR at step ``s``: linear warm-up over ``warmup`` steps, then
    constant or cosine to 0 at ``steps``."""
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if schedule == 'constant':
            return 1.0
        progress = (s - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def fp32_megabytes(state: dict[str, Tensor]) -> float:
    return sum(v.numel() for v in state.values() if v.is_floating_point()) * 4 / 1e6


def save_weights(state: dict[str, Tensor], path: str, *, dtype: str, max_fp32_mb: float,
                 metadata: dict[str, str]) -> str:
    """Write ``state`` as safetensors, atomically; float16 if ``dtype='auto'`` and float32 would
    exceed ``max_fp32_mb``. Tied tensors are written as separate copies. Returns the dtype."""
    from safetensors.torch import save_file
    if dtype == 'auto':
        dtype = 'float16' if fp32_megabytes(state) > max_fp32_mb else 'float32'
    out = {}
    for k, v in state.items():
        v = v.detach().to('cpu')
        if v.is_floating_point():
            v = v.to(getattr(torch, dtype))
            if dtype == 'float16' and not torch.isfinite(v).all():
                raise ValueError(f'{k} overflows float16; use --weights-dtype float32')
        out[k] = v.clone().contiguous()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f'.tmp_{os.path.basename(path)}')
    save_file(out, tmp, metadata={**metadata, 'format': WEIGHTS_FORMAT, 'stored_dtype': dtype,
                                  'trained_dtype': 'float32'})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return dtype


def stem(path: str) -> str:
    return path[:-len('.safetensors')] if path.endswith('.safetensors') else path


def rel(path: str) -> str:
    """``path`` relative to the repository root when inside it (for configs and cards)."""
    ap = os.path.abspath(path)
    return os.path.relpath(ap, ROOT) if ap.startswith(ROOT + os.sep) else ap


def load_cfg(path: str):
    from mmengine.config import Config
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config {path!r} not found (run from the repository root)')
    return Config.fromfile(path)


def command_line(argv: Sequence[str]) -> str:
    return f'python {TOOL} ' + ' '.join(shlex.quote(a) for a in argv)


def build_policy_from_config(cfg, *, overrides: Optional[dict] = None):
    """The policy of ``cfg.policy`` built through the POLICIES registry (strict loading)."""
    from vargo.core.registry import POLICIES
    pcfg = dict(cfg.policy.to_dict() if hasattr(cfg.policy, 'to_dict') else cfg.policy)
    pcfg.update(overrides or {})
    return POLICIES.build(pcfg)
