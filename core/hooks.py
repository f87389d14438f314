"""Hooks of the shared runner (registered in vargo's HOOKS, keyed by name in configs).

* :class:`RLStateHook` - puts every rank's RNG states and every stateful component's state into
  checkpoints and restores them on resume (bit-exact resume on CPU).
* :class:`ImageGridHook` - saves an image grid of the current rollout every ``interval``
  iterations, plus grids of a fixed preview set before and after training, to
  ``<work_dir>/grids/`` and to the visualizer backends.
* :class:`CurvesHook` - plots reward (and other chosen) curves to ``<work_dir>/curves.png``.
"""
from __future__ import annotations

import math
import os
import random
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.hooks import Hook

from . import dist as vdist
from .registry import HOOKS
from .types import Conditions

__all__ = ['RLStateHook', 'ImageGridHook', 'CurvesHook', 'make_grid', 'save_png']


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
