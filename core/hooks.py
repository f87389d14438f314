"""Hooks of the shared runner (registered in vargo's HOOKS, keyed by name in configs).

* :class:`RLStateHook` - puts every rank's RNG states and every stateful component's state into
  checkpoints and restores them on resume (bit-exact resume on CPU).
* :class:`ImageGridHook` - saves an image grid of the current rollout every ``interval``
  iterations, plus grids of a fixed preview set before and after training, to
  ``<work_dir>/grids/`` and to the visualizer backends.
* :class:`CurvesHook` - plots reward (and other chosen) curves to ``<work_dir>/curves.png``.
* :class:`AtomicCheckpointHook` - MMEngine's CheckpointHook with a crash-safe order: checkpoint
  durable, then the ``last_checkpoint`` pointer (atomic, relative to the work dir), then the
  deletion of checkpoints beyond ``max_keep_ckpts``.
* :class:`PlainCheckpointHook` - registered by :class:`vargo.core.runner.VargoRunner` itself:
  stores every checkpoint as plain data (:func:`vargo.core.checkpoint.to_plain`), so it loads
  under ``weights_only=True`` with no extra allow-list.
"""
from __future__ import annotations

import math
import os
import random
import re
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook

from . import dist as vdist
from .checkpoint import CHECKPOINT_FORMAT, atomic_write_bytes, to_plain
from .registry import HOOKS
from .types import Conditions

__all__ = ['RLStateHook', 'ImageGridHook', 'CurvesHook', 'AtomicCheckpointHook',
           'PlainCheckpointHook', 'POINTER_FILE', 'make_grid', 'save_png']

#: the file in the work dir naming the newest checkpoint (MMEngine's name)
POINTER_FILE = 'last_checkpoint'


def _algo(runner):
    model = runner.model
    return model.module if hasattr(model, 'module') else model


def _rng_state() -> dict:
    state = {'torch': torch.get_rng_state(), 'numpy': np.random.get_state()[1],
             'numpy_pos': np.random.get_state()[2], 'python': random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    np.random.set_state(('MT19937', state['numpy'], state['numpy_pos'], 0, 0.0))
    random.setstate(state['python'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


@HOOKS.register_module()
class RLStateHook(Hook):
    """Saves and restores RNG states of all ranks and stateful components' states.

    MMEngine saves checkpoints on rank 0 only, so the other ranks' RNG states are gathered by a
    collective in ``after_train_iter`` (priority ABOVE_NORMAL, before the checkpoint hook) on
    every rank; in a single process nothing is gathered.
    """

    priority = 'ABOVE_NORMAL'

    @staticmethod
    def _portable_state() -> dict:
        # python's and numpy's states as tensors, so weights_only loads accept them
        state = _rng_state()
        state['python'] = (state['python'][0], torch.tensor(state['python'][1], dtype=torch.int64),
                           state['python'][2])
        state['numpy'] = torch.from_numpy(state['numpy'].astype(np.int64))
        return state

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if vdist.is_distributed():
            self._gathered = vdist.all_gather_object(self._portable_state())

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        gathered = getattr(self, '_gathered', None)
        checkpoint['rng_states'] = gathered if gathered else [self._portable_state()]
        checkpoint['component_states'] = _algo(runner).component_state_dict()
        checkpoint['vargo_world_size'] = vdist.world_size()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'component_states' in checkpoint:
            _algo(runner).load_component_state_dict(checkpoint['component_states'])
        states = checkpoint.get('rng_states')
        if not states:
            return
        if len(states) != vdist.world_size():
            runner.logger.warning(f'checkpoint has RNG states of {len(states)} ranks but this run '
                                  f'has {vdist.world_size()}; RNG states are not restored')
            return
        s = dict(states[vdist.rank()])
        py = s['python']
        s['python'] = (py[0], tuple(int(v) for v in py[1].tolist()), py[2])
        s['numpy'] = s['numpy'].numpy().astype(np.uint32)
        self._pending = s

    def before_train(self, runner) -> None:
        # restore last: other hooks' before_train work must not shift the resumed streams
        pending = getattr(self, '_pending', None)
        if pending is not None:
            _set_rng_state(pending)
            self._pending = None


def make_grid(images: torch.Tensor, nrow: Optional[int] = None, pad: int = 2,
              min_cell: int = 96) -> np.ndarray:
    """``[N, 3, H, W]`` in [0, 1] -> ``[H', W', 3]`` uint8 grid (row-major, ``nrow`` per row).

    Images smaller than ``min_cell`` pixels are enlarged by an integer nearest-neighbour factor
    (every pixel becomes a ``k x k`` block, nothing is interpolated), so 32-px Shapes samples
    are readable in an image viewer; ``min_cell=0`` keeps the original size.
    """
    if min_cell and 0 < images.shape[-2] < min_cell:
        k = int(math.ceil(min_cell / images.shape[-2]))
        images = images.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
    n, c, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + col * (w + pad):pad + col * (w + pad) + w] = images[i].float().clamp(0, 1).cpu()
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_png(array: np.ndarray, path: str) -> None:
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp.png'
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)


@HOOKS.register_module()
class ImageGridHook(Hook):
    """Image grids of the samples, for people to look at.

    Args:
        interval: save the current rollout's grid every ``interval`` iterations (0: never).
        max_images: at most this many images per grid (whole groups, one group per row).
        preview_conditions: number of conditions of the fixed preview set sampled before and
            after training (0: none); drawn from the training dataset's first items.
        preview_seed: seed of the preview samples (they never touch the training RNG).
    """

    priority = 'LOW'

    def __init__(self, *, interval: int = 10, max_images: int = 64, preview_conditions: int = 4,
                 preview_seed: int = 1234):
        self.interval = int(interval)
        self.max_images = int(max_images)
        self.preview_conditions = int(preview_conditions)
        self.preview_seed = int(preview_seed)

    def _out_dir(self, runner) -> str:
        return os.path.join(runner.work_dir, 'grids')

    def _emit(self, runner, images: torch.Tensor, name: str, step: int, nrow: int) -> None:
        if vdist.rank() != 0:
            return
        grid = make_grid(images[:self.max_images], nrow=nrow)
        save_png(grid, os.path.join(self._out_dir(runner), f'{name}.png'))
        runner.visualizer.add_image(name.split('_')[0], grid, step=step)

    def _preview(self, runner, tag: str) -> None:
        if self.preview_conditions <= 0:
            return
        loop = runner.train_loop
        dataset = loop.dataloader.dataset
        items = [dataset[i] for i in range(min(self.preview_conditions, len(dataset)))]
        from torch.utils.data import default_collate

        from .loop import conditions_from_batch
        from .rng import BatchRNG
        cond = conditions_from_batch(default_collate(items))
        algo = _algo(runner)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.preview_seed)
            rng = BatchRNG(self.preview_seed, 0, len(cond) * algo.group_size, rank=0,
                           world_size=1, device=algo.device)
            rollout = algo.generate(cond, rng)
        self._emit(runner, rollout.images, f'preview_{tag}', runner.iter, nrow=algo.group_size)

    def before_train(self, runner) -> None:
        if runner.iter == 0:
            self._preview(runner, 'before')

    def after_train(self, runner) -> None:
        self._preview(runner, 'after')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.interval <= 0 or not self.every_n_train_iters(runner, self.interval):
            return
        rollout = getattr(runner.train_loop, 'last_rollout', None)
        if rollout is None or rollout.images is None:
            return
        self._emit(runner, rollout.images, f'samples_iter{runner.iter + 1:06d}', runner.iter + 1,
                   nrow=_algo(runner).group_size)


@HOOKS.register_module()
class CurvesHook(Hook):
    """Plots logged scalars against iterations to ``<work_dir>/curves.png`` (and one PNG per
    reward head, ``reward_curve.png`` for the first), at the end of training and every
    ``interval`` iterations.

    Args:
        keys: scalar name prefixes to plot (default: rewards, KL, entropy, clip fraction).
        interval: also redraw every ``interval`` iterations (0: only at the end).
    """

    priority = 'LOWEST'

    def __init__(self, *, keys: Sequence[str] = ('reward/', 'kl/', 'entropy/', 'policy/clip_frac'),
                 interval: int = 0):
        self.keys = tuple(keys)
        self.interval = int(interval)

    def _series(self, runner) -> dict[str, tuple[list, list]]:
        out = {}
        for name, buf in runner.message_hub.log_scalars.items():
            key = name[len('train/'):] if name.startswith('train/') else name
            if not any(key.startswith(p) for p in self.keys) or key.endswith('/std'):
                continue
            values = buf.data[0]
            if len(values):
                out[key] = (list(range(1, len(values) + 1)), list(map(float, values)))
        return out

    def _draw(self, runner) -> None:
        if vdist.rank() != 0:
            return
        series = self._series(runner)
        if not series:
            return
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        n = len(series)
        cols = min(3, n)
        rows = int(math.ceil(n / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, (key, (x, y)) in zip(axes.flat, sorted(series.items())):
            ax.plot(x, y, lw=1.2)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel('iteration', fontsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[n:]:
            ax.axis('off')
        fig.tight_layout()
        os.makedirs(runner.work_dir, exist_ok=True)
        fig.savefig(os.path.join(runner.work_dir, 'curves.png'), dpi=110)
        plt.close(fig)
        rewards = sorted(k for k in series if k.startswith('reward/') and k.endswith('/mean'))
        if rewards:
            fig, ax = plt.subplots(figsize=(5, 3.4))
            for key in rewards:
                ax.plot(*series[key], label=key)
            ax.set_xlabel('iteration')
            ax.set_ylabel('mean reward')
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(os.path.join(runner.work_dir, 'reward_curve.png'), dpi=110)
            plt.close(fig)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.interval > 0 and self.every_n_train_iters(runner, self.interval):
            self._draw(runner)

    def after_train(self, runner) -> None:
        self._draw(runner)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """MMEngine's ``CheckpointHook`` (same settings) with an order that survives a kill at any
    moment:

    1. the checkpoint is written to a temporary file, fsynced and renamed into place (the
       ``vargo_atomic`` file backend, the default here);
    2. only then ``last_checkpoint`` is replaced atomically, holding the checkpoint's path
       relative to the work dir (a copied or moved work dir resumes from its own files);
    3. only then checkpoints beyond ``max_keep_ckpts`` are deleted.

    MMEngine's hook deletes the oldest checkpoint before writing the new one and writes the
    pointer with a plain ``open()``: a kill in between left an empty pointer or, with
    ``max_keep_ckpts=1``, no checkpoint at all. ``interval`` must be a positive integer.
    """

    def __init__(self, *, interval: int = -1, by_epoch: bool = False, max_keep_ckpts: int = -1,
                 save_last: bool = True, backend_args: Optional[dict] = None, **kwargs):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            from .registry import ConfigError
            raise ConfigError(f'default_hooks.checkpoint.interval={interval!r}: must be an integer '
                              f'>= 1 (save every N iterations); set e.g. interval=50')
        super().__init__(interval=interval, by_epoch=by_epoch, max_keep_ckpts=max_keep_ckpts,
                         save_last=save_last,
                         backend_args=backend_args or dict(backend='vargo_atomic'), **kwargs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        # a kill between the pointer update and the deletion leaves an outdated checkpoint
        # behind: delete the ones MMEngine's rotation would have deleted (older than the
        # oldest kept one)
        if self.max_keep_ckpts <= 0 or not self.keep_ckpt_ids or not is_main_process():
            return
        oldest = min(self.keep_ckpt_ids)
        pattern = re.compile('^' + re.escape(self.filename_tmpl).replace(r'\{\}', r'(\d+)') + '$')
        for name in os.listdir(self.out_dir) if os.path.isdir(self.out_dir) else ():
            m = pattern.match(name)
            if m and int(m.group(1)) < oldest:
                os.remove(os.path.join(self.out_dir, name))
                runner.logger.info(f'removed {name}, older than the {self.max_keep_ckpts} '
                                   f'checkpoint(s) kept (max_keep_ckpts)')

    def _save_checkpoint_with_step(self, runner, step, meta):
        # the keep-list bookkeeping is MMEngine's (so the message hub saved in the checkpoint
        # is the same); only the file deletion moves after the pointer update
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args,
                               save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta,
                               by_epoch=self.by_epoch, backend_args=self.backend_args,
                               **self.args)
        if not is_main_process():
            return
        write_pointer(runner.work_dir, str(self.last_ckpt))
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if path != self.last_ckpt and self.file_backend.isfile(path):
                self.file_backend.remove(path)


def write_pointer(work_dir: str, checkpoint: str) -> None:
    """Atomically point ``<work_dir>/last_checkpoint`` at ``checkpoint`` (relative when inside)."""
    work_dir = os.path.abspath(work_dir)
    target = os.path.abspath(checkpoint)
    if os.path.commonpath([work_dir, target]) == work_dir:
        target = os.path.relpath(target, work_dir)
    atomic_write_bytes(target.encode('utf-8'), os.path.join(work_dir, POINTER_FILE))


def read_pointer(work_dir: str) -> Optional[str]:
    """The checkpoint ``<work_dir>/last_checkpoint`` names, resolved, or None.

    A relative path is relative to the work dir; an absolute one (MMEngine's hook, vargo before
    the relative pointer) that no longer exists but whose file name exists in the work dir (a
    copied work dir) resolves to that file.
    """
    path = os.path.join(work_dir, POINTER_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        name = f.read().strip()
    if not name:
        return None
    if not os.path.isabs(name):
        return os.path.join(work_dir, name)
    local = os.path.join(work_dir, os.path.basename(name))
    if not os.path.exists(name) and os.path.exists(local):
        return local
    return name


class PlainCheckpointHook(Hook):
    """Stores every checkpoint as plain data (:func:`vargo.core.checkpoint.to_plain`), tagged
    ``vargo_checkpoint_format``; runs after every other hook's ``before_save_checkpoint``.

    Registered by :class:`vargo.core.runner.VargoRunner` itself (not a config entry): a
    checkpoint that would need an allow-listed class to load is never written.
    """

    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            checkpoint[key] = to_plain(checkpoint[key], key)
        checkpoint['vargo_checkpoint_format'] = CHECKPOINT_FORMAT


# registered in HOOKS on import of this module (the registry's location)
from .monitor import RewardHackingMonitorHook  # noqa: E402,F401
from .run_report import RunReportHook  # noqa: E402,F401
