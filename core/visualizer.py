"""``VargoVisualizer``: MMEngine's ``Visualizer`` with a TensorBoard switch.

``configs/_base_/default_runtime.py`` builds it with the local backend (``scalars.json``, image
files under ``<timestamp>/vis_data/``). ``tensorboard=True`` adds MMEngine's
``TensorboardVisBackend`` next to it, writing event files to the same ``vis_data`` directory
(``tensorboard --logdir work_dirs/<config>``)::

    python tools/train.py CONFIG --cfg-options visualizer.tensorboard=True

or ``visualizer = dict(tensorboard=True)`` in a config. TensorBoard is an optional dependency
(``pip install -e ".[tensorboard]"``); switching it on without the package fails when the
visualizer is built, before the first iteration, with one line saying so.

Registered in MMEngine's ``VISUALIZERS`` when this module is imported; ``vargo.core.hooks``
imports it (through :mod:`vargo.core.run_report`), which every vargo start-up does before it
checks the config's visualizer.
"""
from __future__ import annotations

import copy
from typing import Optional

from mmengine.registry import VISUALIZERS
from mmengine.visualization import Visualizer

from .registry import ConfigError

__all__ = ['VargoVisualizer', 'TENSORBOARD_BACKEND', 'INSTALL_HINT', 'with_tensorboard',
           'require_tensorboard']

TENSORBOARD_BACKEND = dict(type='TensorboardVisBackend')
INSTALL_HINT = 'pip install -e ".[tensorboard]"'


def require_tensorboard() -> None:
    """Raise a one-line :class:`ConfigError` naming the install command if TensorBoard's writer
    cannot be imported."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise ConfigError(f'visualizer.tensorboard=True needs the tensorboard package, which is '
                          f'not installed ({err}): {INSTALL_HINT} (or set '
                          f'visualizer.tensorboard=False)') from None


def with_tensorboard(vis_backends) -> list:
    """``vis_backends`` (a list, one backend or None) with TensorBoard's backend appended,
    unless it is there already."""
    if vis_backends is None:
        backends = []
    elif isinstance(vis_backends, (list, tuple)):
        backends = [copy.deepcopy(b) for b in vis_backends]
    else:
        backends = [copy.deepcopy(vis_backends)]
    if not any(isinstance(b, dict) and b.get('type') == TENSORBOARD_BACKEND['type']
               for b in backends):
        backends.append(dict(TENSORBOARD_BACKEND))
    return backends


@VISUALIZERS.register_module()
class VargoVisualizer(Visualizer):
    """MMEngine's ``Visualizer`` (same arguments) plus ``tensorboard``: also write TensorBoard
    event files (needs the ``tensorboard`` package)."""

    def __init__(self, name: str = 'visualizer', image=None, vis_backends=None,
                 save_dir: Optional[str] = None, fig_save_cfg=dict(frameon=False),
                 fig_show_cfg=dict(frameon=False), tensorboard: bool = False) -> None:
        if not isinstance(tensorboard, bool):
            raise ConfigError(f'visualizer.tensorboard={tensorboard!r} must be True or False')
        if tensorboard:
            require_tensorboard()
            vis_backends = with_tensorboard(vis_backends)
        super().__init__(name=name, image=image, vis_backends=vis_backends, save_dir=save_dir,
                         fig_save_cfg=fig_save_cfg, fig_show_cfg=fig_show_cfg)
