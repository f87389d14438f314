"""Building MMEngine's Runner for a vargo config (used by tools/train.py and the tests)."""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config

from . import dist as vdist
from .checkpoint import allow_mmengine_checkpoints
from .config import assemble, check_files, check_work_dir
from .registry import ConfigError

__all__ = ['load_config', 'prepare_config', 'build_runner']


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def prepare_config(cfg: Config, *, config_path: str, work_dir: Optional[str] = None,
                   resume: Optional[str] = None, amp: bool = False, launcher: str = 'none',
                   check_missing_files: bool = True) -> Config:
    """Everything tools/train.py does to a config before the Runner exists.

    Args:
        resume: None (new run), ``'auto'`` (latest checkpoint in the work dir) or a path.
    """
    assemble(cfg)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        if not osp.isfile(resume):
            raise FileNotFoundError(f'--resume {resume}: no such checkpoint file')
        cfg.resume = True
        cfg.load_from = resume
    if amp:
        if not torch.cuda.is_available():
            raise ConfigError('--amp needs a GPU: on CPU vargo trains in fp32 (bf16 matmuls are '
                              'slower than fp32 on CPUs without AMX); drop --amp')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('dtype', 'bfloat16')
    if check_missing_files:
        check_files(cfg, shapes_hint=cfg.get('_shapes_alternative'))
    check_work_dir(cfg.work_dir, bool(cfg.get('resume')))
    if launcher != 'none':
        # MMEngine's pytorch launcher calls torch.cuda.set_device; on CPU initialise gloo first.
        if vdist.init_cpu_process_group() or (vdist.is_distributed() and not torch.cuda.is_available()):
            cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=False)
    return cfg


def build_runner(cfg: Config):
    """MMEngine Runner for a prepared config (see :func:`prepare_config`)."""
    from mmengine.runner import Runner
    allow_mmengine_checkpoints()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    return Runner.from_cfg(cfg)
