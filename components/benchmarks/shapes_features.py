"""The Shapes feature extractor: FID, KID, precision/recall and IS for the Shapes benchmark.

Inception-v3, the extractor behind FID (Heusel et al., arXiv 1706.08500), cannot be downloaded
here and knows nothing of 32 x 32 images of coloured shapes. The Shapes world
(:mod:`vargo.components.datasets.shapes`) therefore ships its own: a small CNN
(:class:`ShapesFeatureNet`, 0.17M parameters) trained by ``tools/train_shapes_features.py``
to predict what the benchmark is about from a rendered image, registered with torch-fidelity
as ``'vargo-shapes'`` (:class:`ShapesFeatureExtractor`) so FID, KID (Binkowski et al., arXiv
1801.01401), precision/recall (Kynkaanniemi et al., arXiv 1904.06991) and IS come from
torch-fidelity's own metric code.

Network
-------
Four 3x3 convolutions (3 -> 16 -> 32 -> 48 -> 48 channels, stride 1, 2, 2, 1; BatchNorm,
ReLU) take the image from 32 x 32 to 8 x 8; adaptive max and average pools to 3 x 3 (one bin
per grid cell of the benchmark; the max says what is in a cell, the mean where and how big)
and a linear layer with ReLU give the ``FEATURE_DIM = 128``-d *features*, the penultimate
layer. A single linear layer maps the features to every attribute head, so all attributes must
be readable from the features:

================  ===========  ===========================================================
head              outputs      target (from the placements of an image)
================  ===========  ===========================================================
``presence``      18           is a (colour, shape) pair present (multi-label, BCE)
``count``         10           number of objects 0..9 (softmax)
``cell_colour``   9 x 7        per grid cell: empty or the colour index + 1
``cell_shape``    9 x 4        per grid cell: empty or the shape index + 1
``size``          9 x 3        per grid cell: empty, small (7 px), large (9 px)
``offset``        9 x 2        per occupied cell: object centre minus cell centre, px
``corruption``    5            none, blur, noise, colour shift, resampling (softmax)
``severity``      1            corruption strength in [0, 1] (0 for clean images)
================  ===========  ===========================================================

Per-cell colour and shape are separate heads (7 + 4 outputs rather than 19 per cell): with
the cell factorised, the 9-cell layout fits the feature width; binding is the ``presence``
head's job. After training the features are rescaled to mean square 1 on real images (the
logits are unchanged), so KID's polynomial kernel sees O(1) inner products as with Inception
features. The corruption heads make the features sensitive to image quality as well as content (a
classifier trained on clean renders alone maps a blurred or noisy image to nearly the features
of its clean version, and FID would not see the degradation); the attribute targets of a
corrupted image are those of its clean version.

torch-fidelity interface
------------------------
:class:`ShapesFeatureExtractor` takes ``uint8 [N, 3, H, W]`` images as torch-fidelity passes
them (resized to 32 x 32 if ``H, W != 32``: area averaging when shrinking, so an image
upsampled by an integer factor maps back exactly; bilinear when enlarging) and provides

* ``'features'``: the 128-d penultimate layer, the default for 'fid', 'kid' and 'prc';
* ``'presence_logits'``: the 18 presence logits, the default for 'isc' (its softmax is a class
  posterior for single-object images, so IS is meaningful for class-conditional samples, at
  most 18; for multi-object images it is only a rough diversity score).

Weights come from ``feature_extractor_weights_path`` if torch-fidelity passes one, else from
the shipped :data:`DEFAULT_WEIGHTS_PATH`; nothing is downloaded.

Real statistics
---------------
:data:`DEFAULT_STATS_PATH` holds, for each task (``'c2i'``: single objects, ``'t2i'``:
kind-balanced prompts) and split (``'train'``, ``'eval'``), the FID statistics ``mu [128]``,
``sigma [128, 128]`` of the first :data:`REFERENCE_NUM_SAMPLES` images of
``ShapesImageDataset(split=split, task=task, num_samples=REFERENCE_NUM_SAMPLES,
seed=REFERENCE_SEED)`` under the shipped weights (with the weights' SHA-256, checked on use).
KID and precision/recall need real *features*, not statistics: :func:`shapes_fidelity` renders
the same reference images on the fly (about 20,000 images/s) and lets torch-fidelity extract
them. Note that t2i 'train' and 'eval' are different distributions by design (the held-out
pairs, see the Shapes module docstring), so FID(t2i train, t2i eval) is not near 0.

Scale: the model card ``weights/shapes_features.md`` lists measured FIDs to read a value
against, e.g. two independent sets of 500 real images about 0.5-0.8 (the small-sample bias
in 128 dimensions), blurred or colour-permuted images about 5-6, single objects against t2i
layouts about 12, black images about 56.

Example:
    >>> import torch
    >>> from vargo.components.benchmarks import shapes_fidelity
    >>> from vargo.components.datasets.shapes import ShapesImageDataset
    >>> ds = ShapesImageDataset(split='eval', task='c2i', num_samples=200, seed=7)
    >>> real = torch.stack([ds[i]['image'] for i in range(len(ds))])
    >>> out = shapes_fidelity(real, reference='eval', task='c2i', metrics=('fid',))
    >>> out['fid'] < 1.0
    True
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
from safetensors import safe_open
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from vargo.components.datasets.shapes import (
    CELL_ORIGINS, CELL_SIZE, COLOURS, GRID, IMAGE_SIZE, NUM_CLASSES, SHAPES, SIZES, Placement,
    ShapesImageDataset, item_rng, sample_layout)
from vargo.components.metrics import frechet
from vargo.components.metrics.frechet import frechet_distance  # noqa: F401  (re-exported)
from vargo.core.checkpoint import load_state_dict_strict

__all__ = [
    'EXTRACTOR_NAME', 'FEATURE_DIM', 'WEIGHTS_DIR', 'DEFAULT_WEIGHTS_PATH', 'DEFAULT_STATS_PATH',
    'REFERENCE_SEED', 'REFERENCE_NUM_SAMPLES', 'TASKS', 'HEADS', 'CORRUPTIONS', 'MAX_COUNT',
    'HeadSpec', 'ShapesFeatureNet', 'ShapesFeatureExtractor', 'register_shapes_extractor',
    'attribute_targets', 'item_placements', 'corrupt_images', 'load_feature_net',
    'weights_sha256', 'extract_features', 'compute_statistics', 'load_reference_statistics',
    'reference_images', 'shapes_fidelity', 'frechet_distance', 'UInt8ImageDataset',
]

EXTRACTOR_NAME = 'vargo-shapes'
FEATURE_DIM = 128
#: conv trunk widths (3 -> ...), and the stride of each conv
CHANNELS = (16, 32, 48, 48)
STRIDES = (1, 2, 2, 1)
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
DEFAULT_WEIGHTS_PATH = os.path.join(WEIGHTS_DIR, 'shapes_features.safetensors')
DEFAULT_STATS_PATH = os.path.join(WEIGHTS_DIR, 'shapes_real_stats.npz')
WEIGHTS_FORMAT = 'vargo-shapes-features-v1'
#: the reference (real) images of the shipped statistics: seed and number per (task, split)
REFERENCE_SEED = 0
REFERENCE_NUM_SAMPLES = 10000
TASKS = ('c2i', 't2i')
REFERENCE_SPLITS = ('train', 'eval')
METRICS = ('fid', 'kid', 'prc', 'isc')
#: corruption classes of the ``corruption`` head (index 0: a clean image)
CORRUPTIONS = ('none', 'blur', 'noise', 'colour', 'resample')
#: the ``count`` head predicts 0..MAX_COUNT objects (one per grid cell at most)
MAX_COUNT = GRID * GRID
NUM_CELLS = GRID * GRID
_TRAIN_TOOL = 'python tools/train_shapes_features.py'


@dataclass(frozen=True)
class HeadSpec:
    """One attribute head: ``groups`` independent predictions of ``classes`` outputs each.

    ``kind`` is 'bce' (one logit per group, multi-label), 'ce' (softmax over ``classes``) or
    'reg' (``classes`` regression outputs per group).
    """
    name: str
    groups: int
    classes: int
    kind: str

    @property
    def width(self) -> int:
        return self.groups * self.classes


#: the attribute heads, in the order of the output layer (see the module docstring)
HEADS = (
    HeadSpec('presence', NUM_CLASSES, 1, 'bce'),
    HeadSpec('count', 1, MAX_COUNT + 1, 'ce'),
    HeadSpec('cell_colour', NUM_CELLS, len(COLOURS) + 1, 'ce'),
    HeadSpec('cell_shape', NUM_CELLS, len(SHAPES) + 1, 'ce'),
    HeadSpec('size', NUM_CELLS, len(SIZES) + 1, 'ce'),
    HeadSpec('offset', NUM_CELLS, 2, 'reg'),
    HeadSpec('corruption', 1, len(CORRUPTIONS), 'ce'),
    HeadSpec('severity', 1, 1, 'reg'),
)
_HEAD_WIDTH = sum(h.width for h in HEADS)
_SIZE_CLASS = {s: i + 1 for i, s in enumerate(sorted(SIZES.values()))}   # 0 = empty cell


# ---- the network -------------------------------------------------------------------------------
class ShapesFeatureNet(nn.Module):
    """The CNN: ``[N, 3, 32, 32]`` float images in [0, 1] -> 128-d features and head outputs.

    Architecture in the module docstring; about 0.17M parameters (0.7 MB in float32).

    Example:
        >>> net = ShapesFeatureNet()
        >>> feats, heads = net(torch.zeros(2, 3, 32, 32))
        >>> tuple(feats.shape), tuple(heads['cell_colour'].shape)
        ((2, 128), (2, 9, 7))
    """

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for c_out, stride in zip(CHANNELS, STRIDES):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        # "is there a red triangle in this cell" is a max over positions (averaging the few lit
        # positions of a mostly black image alone trains far slower); the mean adds extent
        self.max_pool = nn.AdaptiveMaxPool2d(GRID)                 # one bin per grid cell
        self.avg_pool = nn.AdaptiveAvgPool2d(GRID)
        self.embed = nn.Linear(2 * c_in * GRID * GRID, FEATURE_DIM)
        self.heads = nn.Linear(FEATURE_DIM, _HEAD_WIDTH)

    def features(self, x: Tensor) -> Tensor:
        """``[N, 3, 32, 32]`` float in [0, 1] -> ``[N, FEATURE_DIM]`` features (>= 0)."""
        h = self.trunk(x)                                          # [N, C, 8, 8]
        h = torch.cat([self.max_pool(h).flatten(1), self.avg_pool(h).flatten(1)], 1)  # [N, 2C*9]
        return F.relu(self.embed(h))

    def split_heads(self, out: Tensor) -> dict[str, Tensor]:
        """``[N, sum of head widths]`` -> ``{name: [N, groups, classes]}`` (``[N, 18]`` for
        'presence', ``[N, C]`` for single-group heads, ``[N]`` for 'severity')."""
        res, i = {}, 0
        for h in HEADS:
            block = out[:, i:i + h.width]
            i += h.width
            if h.kind == 'bce' or h.groups == 1:
                block = block.reshape(len(out), -1)
                if h.width == 1:
                    block = block[:, 0]
            else:
                block = block.reshape(len(out), h.groups, h.classes)
            res[h.name] = block
        return res

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Features and every head's output.

        Args:
            x: ``[N, 3, 32, 32]`` float images in [0, 1].

        Returns:
            ``(features [N, 128], {head name: outputs})`` (shapes at :meth:`split_heads`).
        """
        if x.dim() != 4 or x.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f'ShapesFeatureNet takes [N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] float '
                             f'images in [0, 1], got shape {tuple(x.shape)}; resize first (the '
                             f'torch-fidelity extractor does this for uint8 input)')
        feats = self.features(x)
        return feats, self.split_heads(self.heads(feats))


def weights_sha256(path: str = DEFAULT_WEIGHTS_PATH) -> str:
    """Hex SHA-256 of a weights file (the shipped statistics record the one they belong to)."""
    return frechet.file_sha256(path)


def _require_weights(path: Optional[str]) -> str:
    path = DEFAULT_WEIGHTS_PATH if path is None else os.path.expanduser(str(path))
    if not os.path.isfile(path):
        hint = (f'the shipped file is missing from the installation; reinstall vargo or '
                f'regenerate it with `{_TRAIN_TOOL}`' if path == DEFAULT_WEIGHTS_PATH else
                f'pass the path of a file written by `{_TRAIN_TOOL}` (or None for the shipped '
                f'{DEFAULT_WEIGHTS_PATH})')
        raise FileNotFoundError(f'Shapes feature extractor weights not found: {path}; {hint}')
    return path


def _read_weights(path: str) -> tuple[dict, dict]:
    """The tensors and the safetensors metadata of ``path``, read on every call: no cache that a
    file rewritten in place could make stale (the files are small; building the network costs
    more than reading them)."""
    with safe_open(path, framework='pt') as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def load_feature_net(path: Optional[str] = None) -> ShapesFeatureNet:
    """The trained network from a safetensors file, loaded strictly, in eval mode, no grad.

    Args:
        path: weights written by ``tools/train_shapes_features.py``; None for the shipped
            :data:`DEFAULT_WEIGHTS_PATH`.

    Returns:
        a :class:`ShapesFeatureNet` in eval mode with ``requires_grad=False``.

    Raises:
        FileNotFoundError: naming the path and how to get the file.
        ValueError: the file is not a Shapes feature-extractor checkpoint.
        vargo.core.checkpoint.StateDictMismatch: listing missing/unexpected keys.
    """
    path = _require_weights(path)
    state, meta = _read_weights(path)
    if meta.get('format') != WEIGHTS_FORMAT:
        raise ValueError(f'{path} has format={meta.get("format")!r} in its safetensors metadata, '
                         f'expected {WEIGHTS_FORMAT!r}: it is not a Shapes feature-extractor '
                         f'checkpoint; write one with `{_TRAIN_TOOL}`')
    net = ShapesFeatureNet()
    load_state_dict_strict(net, state, source=path)
    return net.eval().requires_grad_(False)


# ---- the torch-fidelity extractor --------------------------------------------------------------
class ShapesFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor ``'vargo-shapes'`` (see the module docstring).

    Args:
        name: the registered name (torch-fidelity passes it).
        features_list: requested features, a subset of ``('features', 'presence_logits')``.
        feature_extractor_weights_path: a weights file; None for the shipped one.
        feature_extractor_internal_dtype: 'float32' (default) or 'float64'.
        **kwargs: the other ``calculate_metrics`` keywords (ignored).

    Example:
        >>> fe = ShapesFeatureExtractor('vargo-shapes', ['features', 'presence_logits'])
        >>> feats, logits = fe(torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
        >>> tuple(feats.shape), tuple(logits.shape)
        ((4, 128), (4, 18))
    """

    def __init__(self, name: str, features_list, feature_extractor_weights_path=None,
                 feature_extractor_internal_dtype=None, **kwargs):
        super().__init__(name, features_list)
        dtypes = {None: torch.float32, 'float32': torch.float32, 'float64': torch.float64}
        if feature_extractor_internal_dtype not in dtypes:
            raise ValueError(f'feature_extractor_internal_dtype='
                             f'{feature_extractor_internal_dtype!r} is not supported by '
                             f'{name!r}; use None, "float32" or "float64"')
        self.internal_dtype = dtypes[feature_extractor_internal_dtype]
        self.weights_path = _require_weights(feature_extractor_weights_path)
        # channels-last convs are ~30% faster on CPU; the values agree to float rounding
        self.net = load_feature_net(self.weights_path).to(
            self.internal_dtype, memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list():
        return 'features', 'presence_logits'

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        layers = {'isc': 'presence_logits', 'fid': 'features', 'kid': 'features',
                  'prc': 'features'}
        if metric not in layers:
            raise ValueError(f'metric={metric!r} has no default layer in {EXTRACTOR_NAME!r}; '
                             f'known metrics: {tuple(layers)}')
        return layers[metric]

    @staticmethod
    def can_be_compiled():
        return True

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``uint8 [N, 3, H, W]`` images -> one float32 tensor per requested feature, in the
        order of ``features_list``: ``[N, 128]`` features, ``[N, 18]`` presence logits."""
        if not torch.is_tensor(x) or x.dtype != torch.uint8:
            raise TypeError(f'{EXTRACTOR_NAME!r} takes uint8 images as torch-fidelity passes '
                            f'them, got {type(x).__name__} '
                            f'{getattr(x, "dtype", "")}; convert with '
                            f'(images.clamp(0, 1) * 255).round().to(torch.uint8)')
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'{EXTRACTOR_NAME!r} takes [N, 3, H, W] RGB images, got shape '
                             f'{tuple(x.shape)}')
        x = x.to(self.internal_dtype) / 255.0
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            # area (box) filter when shrinking: a 64 x 64 upsampled render maps back exactly
            down = x.shape[-2] >= IMAGE_SIZE and x.shape[-1] >= IMAGE_SIZE
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE),
                              mode='area' if down else 'bilinear',
                              align_corners=None if down else False)
        feats = self.net.features(x.contiguous(memory_format=torch.channels_last))
        out = {'features': feats}
        if 'presence_logits' in self.features_list:
            out['presence_logits'] = self.net.split_heads(self.net.heads(feats))['presence']
        return tuple(out[k].to(torch.float32) for k in self.features_list)


def register_shapes_extractor() -> None:
    """Register :class:`ShapesFeatureExtractor` with torch-fidelity as ``'vargo-shapes'``.

    Idempotent (importing this module calls it). The class of a reloaded module, or of this
    file imported under a second module name (e.g. by doctest collection), replaces the stale
    one. Raises ValueError if an unrelated extractor holds the name.
    """
    old = FEATURE_EXTRACTORS_REGISTRY.get(EXTRACTOR_NAME)
    if old is ShapesFeatureExtractor:
        return
    if old is not None:
        same_source = (old.__qualname__ == ShapesFeatureExtractor.__qualname__
                       and inspect.getsourcefile(old) == inspect.getsourcefile(
                           ShapesFeatureExtractor))
        if not same_source:
            raise ValueError(f'torch-fidelity feature extractor {EXTRACTOR_NAME!r} is already '
                             f'registered to {old.__module__}.{old.__qualname__}; unregister it '
                             f'(torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY.pop) first')
        del FEATURE_EXTRACTORS_REGISTRY[EXTRACTOR_NAME]
    torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, ShapesFeatureExtractor)


register_shapes_extractor()


# ---- attribute targets -------------------------------------------------------------------------
def item_placements(dataset: ShapesImageDataset, i: int) -> tuple[Placement, ...]:
    """The placements of item ``i`` of a :class:`ShapesImageDataset`: rasterising them gives
    exactly ``dataset[i]['image']`` (both draw from ``item_rng(seed, split, i)``)."""
    i = range(len(dataset))[i]
    return sample_layout(dataset.specs[i], item_rng(dataset.seed, dataset.split, i))


_PAIR_INDEX = {(c, s): ci * len(SHAPES) + si
               for ci, c in enumerate(COLOURS) for si, s in enumerate(SHAPES)}


def attribute_targets(placements: Sequence[Placement]) -> dict[str, np.ndarray]:
    """The clean-image targets of the attribute heads for one image.

    Args:
        placements: the objects of the image (at most one per grid cell).

    Returns:
        ``presence`` float32 [18]; ``count`` int64 scalar; ``cell`` int64 [9] (0 empty, else
        class id + 1); ``cell_colour``, ``cell_shape`` int64 [9] (0 empty, else colour / shape
        index + 1); ``size`` int64 [9] (0 empty, 1 small, 2 large); ``offset`` float32
        [9, 2] (object centre minus cell centre, (dy, dx) px; 0 for empty cells);
        ``occupied`` bool [9].
    """
    presence = np.zeros(NUM_CLASSES, np.float32)
    cell = np.zeros(NUM_CELLS, np.int64)
    cell_colour = np.zeros(NUM_CELLS, np.int64)
    cell_shape = np.zeros(NUM_CELLS, np.int64)
    size = np.zeros(NUM_CELLS, np.int64)
    offset = np.zeros((NUM_CELLS, 2), np.float32)
    for p in placements:
        k = _PAIR_INDEX[(p.colour, p.shape)]
        if cell[p.cell]:
            raise ValueError(f'two objects in grid cell {p.cell}: {placements}')
        presence[k] = 1
        cell[p.cell] = k + 1
        cell_colour[p.cell] = k // len(SHAPES) + 1
        cell_shape[p.cell] = k % len(SHAPES) + 1
        size[p.cell] = _SIZE_CLASS[p.size]
        row, col = divmod(p.cell, GRID)
        half = CELL_SIZE / 2
        offset[p.cell] = (p.y + p.size / 2 - CELL_ORIGINS[row] - half,
                          p.x + p.size / 2 - CELL_ORIGINS[col] - half)
    return dict(presence=presence, count=np.int64(min(len(placements), MAX_COUNT)), cell=cell,
                cell_colour=cell_colour, cell_shape=cell_shape, size=size, offset=offset,
                occupied=cell > 0)


# ---- corruptions (training targets of the quality heads) ---------------------------------------
def corrupt_images(images: Tensor, kind: str, severity: Tensor,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """Degrade images the way generated images go wrong (the ``corruption`` head's classes).

    Args:
        images: ``[B, 3, 32, 32]`` float in [0, 1].
        kind: one of :data:`CORRUPTIONS`: 'none' (unchanged); 'blur' (Gaussian, sigma
            ``0.3 + 1.2 s`` px); 'noise' (additive Gaussian, std ``0.02 + 0.2 s``); 'colour'
            (per-channel gain ``1 - (0.1 + 0.4 s) u`` and offset ``(0.05 + 0.25 s) v``,
            ``u ~ U(0, 1)``, ``v ~ U(-1, 1)``); 'resample' (antialiased bilinear down to
            ``round(28 - 16 s)`` px and back up).
        severity: ``[B]`` strengths ``s`` in [0, 1].
        generator: the random source of 'noise' and 'colour'.

    Returns:
        ``[B, 3, 32, 32]`` float in [0, 1].
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f'kind={kind!r} is not one of {CORRUPTIONS}')
    s = severity.to(images).reshape(-1, 1, 1, 1)                       # [B, 1, 1, 1]
    b = len(images)
    if kind == 'none' or b == 0:
        return images
    if kind == 'blur':
        sigma = 0.3 + 1.2 * s.reshape(-1)                                   # [B]
        t = torch.arange(-2, 3, dtype=images.dtype)
        k1 = torch.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))           # [B, 5]
        k1 = k1 / k1.sum(1, keepdim=True)
        k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(3, 0)      # [3B, 5, 5]
        x = F.pad(images.reshape(1, 3 * b, IMAGE_SIZE, IMAGE_SIZE), (2, 2, 2, 2),
                  mode='replicate')
        return F.conv2d(x, k2[:, None], groups=3 * b).reshape_as(images).clamp(0, 1)
    if kind == 'noise':
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
        return (images + noise * (0.02 + 0.2 * s)).clamp(0, 1)
    if kind == 'colour':
        u = torch.rand(b, 3, 1, 1, generator=generator, dtype=images.dtype)
        v = torch.rand(b, 3, 1, 1, generator=generator, dtype=images.dtype) * 2 - 1
        return (images * (1 - (0.1 + 0.4 * s) * u) + (0.05 + 0.25 * s) * v).clamp(0, 1)
    out = images.clone()
    sizes = torch.round(28 - 16 * s.reshape(-1)).long()
    for d in sizes.unique().tolist():
        idx = (sizes == d).nonzero().reshape(-1)
        small = F.interpolate(images[idx], size=(d, d), mode='bilinear', align_corners=False,
                              antialias=True)
        out[idx] = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode='bilinear',
                                 align_corners=False).clamp(0, 1)
    return out


# ---- features and statistics -------------------------------------------------------------------
def _as_float_images(images: Tensor, what: str = 'images') -> Tensor:
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'{what} must be a [N, 3, H, W] tensor, got '
                         f'{tuple(images.shape) if torch.is_tensor(images) else type(images)}')
    if len(images) == 0:
        raise ValueError(f'{what} is empty (N = 0); pass at least one image')
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f'{what} has dtype {images.dtype}; pass float images in [0, 1] or uint8')
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f'{what} has values in [{lo:.3g}, {hi:.3g}], expected [0, 1] '
                         f'(map [-1, 1] images with (x + 1) / 2)')
    return images.float()


@torch.no_grad()
def extract_features(images: Tensor, *, weights_path: Optional[str] = None,
                     batch_size: int = 1000) -> Tensor:
    """Penultimate features of images, computed exactly as torch-fidelity does (uint8 input).

    Args:
        images: ``[N, 3, H, W]`` float in [0, 1] (quantised to uint8 first) or uint8.
        weights_path: None for the shipped weights.
        batch_size: images per forward.

    Returns:
        ``[N, 128]`` float32 features on CPU.
    """
    x = images if images.dtype == torch.uint8 else frechet.to_uint8(_as_float_images(images))
    fe = ShapesFeatureExtractor(EXTRACTOR_NAME, ['features'],
                                feature_extractor_weights_path=weights_path)
    return frechet.extract_features(fe, x.cpu(), batch_size, dtype=None)


def compute_statistics(images: Tensor, *, weights_path: Optional[str] = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """FID statistics of images, as torch-fidelity computes them
    (:func:`vargo.components.metrics.frechet.gaussian_statistics` of the float32 features).

    Args:
        images: ``[N, 3, H, W]`` float in [0, 1] or uint8, N >= 2.
        weights_path: None for the shipped weights.

    Returns:
        ``(mu [128], sigma [128, 128])`` float64 (``mu`` accumulated in float32, as
        torch-fidelity's).
    """
    if len(images) < 2:
        raise ValueError(f'FID statistics need N >= 2 images (a covariance), got N = '
                         f'{len(images)}')
    return frechet.gaussian_statistics(extract_features(images, weights_path=weights_path))


def reference_images(task: str, split: str, num_samples: int = REFERENCE_NUM_SAMPLES) -> Tensor:
    """The first ``num_samples`` reference (real) images of ``(task, split)``.

    Args:
        task: 'c2i' or 't2i'.
        split: 'train' or 'eval'.
        num_samples: at most :data:`REFERENCE_NUM_SAMPLES`.

    Returns:
        ``[num_samples, 3, 32, 32]`` float32 in {0, 1}: items of
        ``ShapesImageDataset(split=split, task=task, num_samples=REFERENCE_NUM_SAMPLES,
        seed=REFERENCE_SEED)``, the images of the shipped statistics.
    """
    _check_task_split(task, split)
    if not 1 <= int(num_samples) <= REFERENCE_NUM_SAMPLES:
        raise ValueError(f'num_samples={num_samples} must be in [1, {REFERENCE_NUM_SAMPLES}] '
                         f'(the size of the shipped reference set)')
    ds = ShapesImageDataset(split=split, task=task, num_samples=REFERENCE_NUM_SAMPLES,
                            seed=REFERENCE_SEED)
    return torch.stack([ds[i]['image'] for i in range(int(num_samples))])


def _check_task_split(task, split) -> None:
    if task not in TASKS:
        raise ValueError(f'task={task!r} is not one of {TASKS}: the real distribution is '
                         f'single objects (c2i) or kind-balanced prompts (t2i)')
    if split not in REFERENCE_SPLITS:
        raise ValueError(f'split={split!r} is not one of {REFERENCE_SPLITS}')


def load_reference_statistics(task: str, split: str, *, path: str = DEFAULT_STATS_PATH,
                              weights_path: Optional[str] = None
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Shipped FID statistics of the real images of ``(task, split)``.

    Args:
        task: 'c2i' or 't2i'.
        split: 'train' or 'eval'.
        path: the statistics file (default: the shipped one).
        weights_path: the extractor the statistics must belong to (None: the shipped one);
            its SHA-256 must match the one recorded in the file.

    Returns:
        ``(mu [128], sigma [128, 128])`` float64 (read with
        :func:`vargo.components.metrics.frechet.load_feature_statistics`).
    """
    _check_task_split(task, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Shapes real statistics not found: {path}; regenerate them '
                                f'with `{_TRAIN_TOOL}`')
    stats = frechet.load_feature_statistics(path, prefix=f'{task}_{split}_')
    sha = stats.meta.get('weights_sha256', '')
    want = weights_sha256(_require_weights(weights_path))
    if sha != want:
        raise ValueError(f'{path} holds statistics of extractor weights {sha[:12]}..., but the '
                         f'weights in use are {want[:12]}...: statistics and weights must come '
                         f'from the same run of `{_TRAIN_TOOL}` (or pass reference=<real images '
                         f'tensor> to compute the real side with these weights)')
    return stats.numpy()


# ---- metrics through torch-fidelity ------------------------------------------------------------
class UInt8ImageDataset(Dataset):
    """In-memory images as torch-fidelity reads them: item ``i`` is a ``uint8 [3, H, W]``.

    Args:
        images: ``[N, 3, H, W]`` float in [0, 1] (rounded to uint8) or uint8.
    """

    def __init__(self, images: Tensor):
        self.images = frechet.to_uint8(images if images.dtype == torch.uint8
                                       else _as_float_images(images)).cpu().contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def _check_metrics(metrics) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f'metrics={metrics!r}: each must be one of {METRICS} (fid, kid, '
                         f'prc = precision/recall, isc = inception score), at least one')
    return metrics


def shapes_fidelity(gen_images: Tensor, *, reference: Union[str, Tensor] = 'eval',
                    task: Optional[str] = None, metrics: Sequence[str] = ('fid', 'kid', 'prc'),
                    num_real: Optional[int] = None, weights_path: Optional[str] = None,
                    kid_subset_size: int = 1000, kid_subsets: int = 100,
                    cache_root: Optional[str] = None,
                    verbose: bool = False) -> dict[str, float]:
    """FID / KID / precision-recall / IS of generated Shapes images, via torch-fidelity.

    Args:
        gen_images: ``[N, 3, 32, 32]`` float in [0, 1] (or uint8): the generated images.
        reference: the real side:

            * ``'train'`` or ``'eval'``: the Shapes reference images of that split (``task``
              required). FID uses the shipped statistics of all
              :data:`REFERENCE_NUM_SAMPLES` images; KID and precision/recall the first
              ``num_real`` of them, rendered on the fly;
            * a path to an ``.npz`` with ``mu`` and ``sigma`` (FID only; e.g. from
              :func:`compute_statistics`);
            * a ``[M, 3, H, W]`` tensor of real images (every metric).
        task: 'c2i' or 't2i', the real distribution of a split reference (single objects, or
            kind-balanced prompts); ignored otherwise.
        metrics: a subset of ('fid', 'kid', 'prc', 'isc').
        num_real: real images for KID and precision/recall with a split reference (default:
            ``N``, equal sizes as recommended for precision/recall; at most
            :data:`REFERENCE_NUM_SAMPLES`).
        weights_path: extractor weights (None: the shipped ones).
        kid_subset_size: KID subset size, reduced to the smaller sample size if needed.
        kid_subsets: number of KID subsets; 1 when the subsets are both whole sets (every
            draw would be the same, and ``kid_std`` is then 0).
        cache_root: torch-fidelity cache directory for the features of rendered split
            references (keyed by task, split, size and the weights' hash); None: no cache.
        verbose: torch-fidelity's progress output.

    Returns:
        a dict of floats: ``fid``; ``kid``, ``kid_std``; ``precision``, ``recall``, ``f_score``;
        ``isc``, ``isc_std`` (for the requested metrics), and the sample sizes ``num_gen``,
        ``num_real`` (real images given to torch-fidelity, if any) and ``num_real_fid``
        (images behind shipped statistics, split references only).
    """
    metrics = _check_metrics(metrics)
    gen = UInt8ImageDataset(gen_images)
    n_gen = len(gen)
    out: dict[str, float] = {'num_gen': float(n_gen)}
    real_ds, real_cache_name = None, None
    fid_stats = None
    needs_real = any(m in metrics for m in ('kid', 'prc'))
    if isinstance(reference, str) and reference in REFERENCE_SPLITS:
        if task not in TASKS:
            raise ValueError(f'reference={reference!r} needs task={TASKS[0]!r} or {TASKS[1]!r} '
                             f'(single objects vs kind-balanced prompts), got task={task!r}')
        if 'fid' in metrics:
            fid_stats = load_reference_statistics(task, reference, weights_path=weights_path)
            out['num_real_fid'] = float(REFERENCE_NUM_SAMPLES)
        if needs_real:
            m = min(n_gen, REFERENCE_NUM_SAMPLES) if num_real is None else int(num_real)
            real_ds = UInt8ImageDataset(reference_images(task, reference, m))
            sha = weights_sha256(_require_weights(weights_path))[:16]
            real_cache_name = (f'vargo-shapes-real-{task}-{reference}-n{m}-s{REFERENCE_SEED}-'
                               f'{sha}')
    elif isinstance(reference, (str, os.PathLike)):
        path = os.fspath(reference)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'reference={path!r} is neither a split name '
                                    f'{REFERENCE_SPLITS} nor an existing statistics file')
        if needs_real:
            raise ValueError(f'reference={path!r} is a statistics file, which supports only '
                             f"'fid'; KID and precision/recall need real images: pass "
                             f"reference='train'/'eval' or a tensor of real images")
        fid_stats = frechet.load_feature_statistics(path).numpy()
    elif torch.is_tensor(reference):
        real_ds = UInt8ImageDataset(reference)
    else:
        raise ValueError(f'reference={reference!r} must be one of {REFERENCE_SPLITS}, a path to '
                         f'an .npz of FID statistics, or a [M, 3, H, W] tensor of real images')

    if fid_stats is not None:
        mu, sigma = compute_statistics(gen.images, weights_path=weights_path)
        out['fid'] = frechet_distance(mu, sigma, *fid_stats)
    tf_metrics = [m for m in metrics if not (m == 'fid' and fid_stats is not None)]
    if tf_metrics:
        kwargs = dict(input1=gen, feature_extractor=EXTRACTOR_NAME,
                      feature_extractor_weights_path=_require_weights(weights_path),
                      cuda=False, save_cpu_ram=True, verbose=verbose, batch_size=1000,
                      cache=cache_root is not None, cache_root=cache_root,
                      **{m: True for m in tf_metrics})
        if real_ds is not None:
            kwargs['input2'] = real_ds
            out['num_real'] = float(len(real_ds))
            if real_cache_name is not None and cache_root is not None:
                kwargs['input2_cache_name'] = real_cache_name
            size = min(int(kid_subset_size), n_gen, len(real_ds))
            kwargs['kid_subset_size'] = size
            kwargs['kid_subsets'] = 1 if size == n_gen == len(real_ds) else int(kid_subsets)
        if 'isc' in tf_metrics:
            kwargs['isc_splits'] = min(10, n_gen)
        res = torch_fidelity.calculate_metrics(**kwargs)
        names = {torch_fidelity.KEY_METRIC_FID: 'fid',
                 torch_fidelity.KEY_METRIC_KID_MEAN: 'kid',
                 torch_fidelity.KEY_METRIC_KID_STD: 'kid_std',
                 torch_fidelity.KEY_METRIC_PRECISION: 'precision',
                 torch_fidelity.KEY_METRIC_RECALL: 'recall',
                 torch_fidelity.KEY_METRIC_F_SCORE: 'f_score',
                 torch_fidelity.KEY_METRIC_ISC_MEAN: 'isc',
                 torch_fidelity.KEY_METRIC_ISC_STD: 'isc_std'}
        out.update({names[k]: float(v) for k, v in res.items() if k in names})
    return out
