"""Frechet features and statistics: the one implementation behind every FID in vargo.

Used by the LOO-FID reward (:mod:`vargo.components.rewards.loo_fid`), the Shapes benchmark
(:mod:`vargo.components.benchmarks.shapes_features`), ``tools/eval.py`` and ``tools/fid_stats.py``.

Feature extractors
------------------
Any torch-fidelity feature extractor (``torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY``;
``'vargo-shapes'`` is registered on first use), built by name with :func:`build_extractor` and
called as torch-fidelity calls it: ``uint8 [B, 3, H, W]`` images in, one ``[B, D_k]`` tensor per
requested layer out (default layer: the extractor's layer for 'fid'). Nothing is downloaded:
torch-fidelity's built-in extractors need a local weights file. torch-fidelity loads that file with
``torch.load(weights_only=False)``, so vargo hands it a private copy whose bytes were first checked
to be plain data (:func:`vargo.core.checkpoint.data_only_copy`), for one layer or several.

:func:`check_extractor` validates a name, weights file and layers without building; errors are
worded for a config (``feature_extractor=...``, the reward's keys) or, with ``cli=True``, for the
tools (:class:`vargo.core.cli.UsageError`, printed as one ``error:`` line; a missing weights file
names where it is published).

Images and features
-------------------
:func:`to_uint8` quantises float images in [0, 1] as torch-fidelity does, ``round(255 x)``.
:func:`extract_layers` runs an extractor over a ``[N, 3, H, W]`` tensor (on its device) or over an
iterable of ``[3, H, W]`` / ``[n, 3, H, W]`` tensors of any sizes (each size batched apart; the
extractor resizes as it expects); :func:`extract_features` is its first layer.

Statistics
----------
:func:`gaussian_statistics` gives ``(mu [D], sigma [D, D])`` as float64 numpy arrays, computed as
torch-fidelity's ``fid_features_to_statistics`` computes them: ``mu`` the mean accumulated in the
features' dtype (float64 features: float64; the float32 features of the Shapes extractor: float32,
as in the shipped Shapes statistics), ``sigma`` the unbiased covariance (``numpy.cov``, float64).

Statistics files are ``.npz`` archives of plain arrays, read with ``allow_pickle=False`` (an array
of Python objects is refused, never unpickled). :func:`save_feature_statistics` writes ``mu``,
``sigma``, ``sigma_diagonal``, ``count`` and optional metadata (``extractor``,
``feature_layer``, ``weights_sha256``, ``source``, ...), atomically. :func:`load_feature_statistics`
reads, optionally behind a key prefix (``'c2i_train_'`` for the shipped Shapes file), one of

* ``mu [D]`` and ``sigma [D, D]`` (covariance; torch-fidelity / pytorch-fid / clean-fid format)
  and/or ``sigma_diagonal [D]`` (variances);
* ``m1 [D]`` and ``m2 [D]`` (raw moments ``E[x]``, ``E[x^2]``) or ``m2 [D, D]`` (``E[x x^T]``).

Frechet distance
----------------
:func:`frechet_distance` of two Gaussians (Heusel et al., arXiv 1706.08500, eq. 6), in float64:
``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``, the trace of the square root as the
sum of the square roots of the eigenvalues of ``S1 S2`` (real parts) -- torch-fidelity's
``fid_statistics_to_metric`` on float64 statistics, so an FID computed here equals
torch-fidelity's on the same features, bit for bit (when float32 means are first widened to
float64, as vargo always does). (The LOO-FID reward's diagonal and PCA-subspace distances of raw
moments are that reward's own equations, in :mod:`vargo.components.rewards.loo_fid`.)

Example:
    >>> import numpy as np, torch
    >>> x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    >>> mu, sigma = gaussian_statistics(x)
    >>> mu.tolist(), np.round(sigma, 4).tolist()
    ([1.0, 1.0], [[1.3333, 0.0], [0.0, 1.3333]])
    >>> round(frechet_distance(mu, sigma, mu + 1.0, sigma), 6)
    2.0
"""
from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from vargo.core.checkpoint import data_only_copy
from vargo.core.cli import UsageError

__all__ = ['extractor_registry', 'weights_sources', 'missing_weights_message', 'check_extractor',
           'build_extractor', 'build_feature_extractor', 'to_uint8', 'extract_layers',
           'extract_features', 'gaussian_statistics', 'FeatureStatistics',
           'save_feature_statistics', 'load_feature_statistics', 'file_sha256',
           'frechet_distance', 'METADATA_KEYS']

#: string metadata a statistics file may carry (written by tools/fid_stats.py and the Shapes tools)
METADATA_KEYS = ('extractor', 'feature_layer', 'weights_sha256', 'source')
SHAPES_EXTRACTOR = 'vargo-shapes'


# ---- feature extractors ------------------------------------------------------------------------
def extractor_registry() -> dict:
    """torch-fidelity's extractor registry, with ``'vargo-shapes'`` registered."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    if SHAPES_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        import vargo.components.benchmarks.shapes_features  # noqa: F401  (registers it)
    return FEATURE_EXTRACTORS_REGISTRY


def weights_sources(extractor: str) -> dict[str, str]:
    """File basename -> where it is published, for torch-fidelity's built-in extractors."""
    inception = {
        'weights-inception-2015-12-05-6726825d.pth':
            'https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/'
            'weights-inception-2015-12-05-6726825d.pth (torch-fidelity\'s own file)',
        'pt_inception-2015-12-05-6726825d.pth':
            'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
            'pt_inception-2015-12-05-6726825d.pth (pytorch-fid\'s port of the same TF FID '
            'Inception)',
    }
    if extractor == 'inception-v3-compat':
        return inception
    if extractor.startswith('clip-'):
        try:
            from torch_fidelity.feature_extractor_clip import MODEL_URLS
            url = MODEL_URLS.get(extractor)
        except Exception:                                       # pragma: no cover
            url = None
        if url:
            return {os.path.basename(url): f'{url} (OpenAI CLIP TorchScript archive)'}
    return {}


def missing_weights_message(extractor: str, path: str) -> str:
    """The error for a missing extractor weights file: the file and where it is published."""
    sources = weights_sources(extractor)
    where = sources.get(os.path.basename(path))
    if where:
        hint = f'it is published at {where}'
    elif sources:
        hint = 'published files: ' + '; '.join(f'{k}: {v}' for k, v in sources.items())
    else:
        hint = 'give the path of a local weights file of this extractor'
    return (f'feature extractor {extractor!r}: weights file not found: {path}; {hint}. Download '
            f'it to that path (vargo never downloads at run time).')


def _unknown(name, registry, cli):
    if cli:
        return UsageError(f'feature extractor {name!r} is not registered with torch-fidelity; '
                          f'registered: {sorted(registry)} (register your own with '
                          f'torch_fidelity.register_feature_extractor(name, cls))')
    return ValueError(f'feature_extractor={name!r} is not registered with torch-fidelity; '
                      f'registered: {sorted(registry)} (register yours with '
                      f'torch_fidelity.register_feature_extractor(name, cls))')


def _would_download(name, cli):
    if cli:
        example = next(iter(weights_sources(name)), 'a local weights file')
        return UsageError(f'feature extractor {name!r} would download its weights (vargo never '
                          f'downloads at run time): give its weights file (weights_path / '
                          f'--weights-path), e.g. checkpoints/.../{example}')
    return ValueError(f'feature_extractor={name!r} would download its weights (no network at '
                      f'run time): set feature_extractor_weights_path to a local file, e.g. '
                      f"torch-fidelity's weights-inception-2015-12-05-6726825d.pth for "
                      f"'inception-v3-compat'")


def check_extractor(name: str, weights_path: Optional[str] = None,
                    layers: Optional[Sequence[str]] = None, *, cli: bool = False
                    ) -> tuple[type, list[str]]:
    """Validate an extractor name, its weights file and layers, without building it.

    Args:
        name: a key of torch-fidelity's registry.
        weights_path: a local weights file; required for torch-fidelity's built-in extractors
            (they would download otherwise).
        layers: the features to extract; None for the extractor's layer for 'fid'.
        cli: word the errors for the tools (:class:`~vargo.core.cli.UsageError`, ``--weights-path``,
            where a missing file is published) rather than for a config (``feature_extractor``,
            ``feature_extractor_weights_path``, ``feature_layer``).

    Returns:
        ``(extractor class, layers)``.

    Raises:
        ValueError (UsageError with ``cli``): unknown extractor, no weights file for a
            torch-fidelity extractor, or a layer it does not provide.
        FileNotFoundError: the weights file is missing.
    """
    registry = extractor_registry()
    if name not in registry:
        raise _unknown(name, registry, cli)
    cls = registry[name]
    if weights_path is None and cls.__module__.startswith('torch_fidelity.'):
        raise _would_download(name, cli)
    if weights_path is not None and not os.path.isfile(os.path.expanduser(str(weights_path))):
        raise FileNotFoundError(
            missing_weights_message(name, str(weights_path)) if cli else
            f'feature_extractor_weights_path={os.path.expanduser(str(weights_path))!r} does not '
            f'exist (feature extractor {name!r})')
    provided = tuple(cls.get_provided_features_list())
    layers = [cls.get_default_feature_layer_for_metric('fid')] if layers is None else list(layers)
    bad = [x for x in layers if x not in provided]
    if bad and cli:
        raise UsageError(f'feature layers {bad} are not provided by {name!r}; it provides '
                         f'{provided}')
    if bad:
        raise ValueError(f'feature_layer={bad[0]!r} is not provided by {name!r}; it provides '
                         f'{provided}')
    return cls, layers


def build_extractor(name: str, weights_path: Optional[str] = None,
                    layers: Optional[Sequence[str]] = None, *, cli: bool = False):
    """A torch-fidelity feature extractor producing ``layers``, in eval mode, on CPU, no grad.

    Checked first (:func:`check_extractor`, same arguments). A weights file reaches the extractor
    as a data-only-checked private copy (torch-fidelity loads it with ``weights_only=False``).

    Returns:
        the extractor; ``extractor.features_list`` are its layers, in order.
    """
    cls, layers = check_extractor(name, weights_path, layers, cli=cli)
    if weights_path is None:
        extractor = cls(name, layers, verbose=False)
    else:
        with data_only_copy(os.path.expanduser(str(weights_path))) as checked:
            extractor = cls(name, layers, verbose=False, feature_extractor_weights_path=checked)
    extractor.requires_grad_(False).eval()
    return extractor


def build_feature_extractor(name: str, weights_path: Optional[str] = None,
                            layer: Optional[str] = None):
    """:func:`build_extractor` of one layer, errors worded for a config: ``(extractor, layer)``."""
    extractor = build_extractor(name, weights_path, None if layer is None else [layer])
    return extractor, extractor.features_list[0]


# ---- images and features -----------------------------------------------------------------------
def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] (or uint8) -> uint8, torch-fidelity's quantisation ``round(255 x)``
    (values outside [0, 1] are clamped)."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise UsageError(f'images must be float in [0, 1] or uint8, got {images.dtype}')
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _move_to(extractor, device) -> None:
    first = next(itertools.chain(extractor.parameters(), extractor.buffers()), None)
    if first is not None and first.device != device:
        extractor.to(device)


@torch.no_grad()
def extract_layers(extractor, images: Union[Tensor, Iterable[Tensor]], batch_size: int = 64, *,
                   dtype: Optional[torch.dtype] = torch.float64) -> list[Tensor]:
    """Features of images, one ``[N, D_k]`` tensor per layer of the extractor.

    Args:
        extractor: a torch-fidelity extractor (:func:`build_extractor`).
        images: a ``[N, 3, H, W]`` tensor (the extractor is moved to its device and the features
            stay there), or an iterable of ``[3, H, W]`` / ``[n, 3, H, W]`` tensors whose sizes
            may differ (each size is batched apart; features on CPU). Float in [0, 1] or uint8.
        batch_size: images per forward.
        dtype: of the features; None keeps the extractor's (torch-fidelity's statistics of the
            float32 features of an extractor: :func:`gaussian_statistics`).

    Returns:
        one tensor per layer, one row per image in the order given (``[0, 0]`` tensors for no
        images).
    """
    def run(batch: Tensor) -> list[Tensor]:
        out = extractor(batch)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.reshape(o.shape[0], -1) if dtype is None else
                o.reshape(o.shape[0], -1).to(dtype) for o in out]

    outs: list[list[Tensor]] = []
    order: list[int] = []                                # input index of each output row
    if torch.is_tensor(images):
        if images.dim() != 4 or images.shape[1] != 3:
            raise UsageError(f'images must be [N, 3, H, W] RGB, got shape '
                             f'{tuple(images.shape)}')
        x = to_uint8(images)
        _move_to(extractor, x.device)
        outs = [run(chunk) for chunk in x.split(batch_size) if len(chunk)]
    else:
        pending: dict[tuple, list[tuple[int, Tensor]]] = {}   # (H, W) -> [(index, image)]
        _move_to(extractor, torch.device('cpu'))

        def flush(group):
            outs.append(run(torch.stack([im for _, im in group])))
            order.extend(i for i, _ in group)

        n = 0
        for x in images:
            x = to_uint8(x)
            for im in ([x] if x.dim() == 3 else list(x)):
                if im.dim() != 3 or im.shape[0] != 3:
                    raise UsageError(f'images must be RGB [3, H, W], got shape '
                                     f'{tuple(im.shape)}')
                group = pending.setdefault(tuple(im.shape[1:]), [])
                group.append((n, im.cpu()))
                n += 1
                if len(group) == batch_size:
                    flush(group)
                    pending[tuple(im.shape[1:])] = []
        for group in pending.values():
            if group:
                flush(group)
    if not outs:
        n_layers = len(getattr(extractor, 'features_list', ())) or 1
        return [torch.zeros(0, 0, dtype=dtype or torch.float32) for _ in range(n_layers)]
    feats = [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]
    if order and order != sorted(order):                 # several sizes: back to input order
        rows = torch.argsort(torch.tensor(order))
        feats = [f[rows] for f in feats]
    return feats


def extract_features(extractor, images: Union[Tensor, Iterable[Tensor]], batch_size: int = 64,
                     *, dtype: Optional[torch.dtype] = torch.float64) -> Tensor:
    """``[N, D]`` features of the extractor's first layer (:func:`extract_layers`)."""
    return extract_layers(extractor, images, batch_size, dtype=dtype)[0]


# ---- statistics --------------------------------------------------------------------------------
def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """``(mu [D], sigma [D, D])``, float64 numpy, of ``[N, D]`` features (tensor or array), as
    torch-fidelity computes them: the mean accumulated in the features' dtype, the unbiased
    covariance (``numpy.cov``) in float64.

    Raises:
        UsageError: not ``[N, D]`` with ``N >= 2`` (a covariance needs two samples).
    """
    x = features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise UsageError(f'FID statistics need features [N, D] of N >= 2 images (a covariance), '
                         f'got shape {tuple(x.shape)}')
    mu = np.mean(x, axis=0).astype(np.float64)
    sigma = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    return mu, sigma


@dataclass
class FeatureStatistics:
    """Gaussian statistics of features, float64 (CPU).

    Attributes:
        mu: ``[D]`` mean.
        var: ``[D]`` per-dimension variance.
        cov: ``[D, D]`` covariance, or None when the file holds only the diagonal.
        path: where they were read from (for messages).
        count: the number of images behind them, if the file records it.
        meta: string metadata of the file (:data:`METADATA_KEYS` present in it).
    """

    mu: Tensor
    var: Tensor
    cov: Optional[Tensor]
    path: str = ''
    count: Optional[int] = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)`` float64 numpy arrays for :func:`frechet_distance` (needs ``cov``)."""
        if self.cov is None:
            raise ValueError(f'{self.path} holds only per-dimension variances; a Frechet distance '
                             f"needs the full covariance 'sigma' [D, D]")
        return self.mu.numpy(), self.cov.numpy()


def save_feature_statistics(path: str, features, **metadata: Any) -> None:
    """Write ``mu``, ``sigma`` (:func:`gaussian_statistics`), ``sigma_diagonal``, ``count`` and
    ``metadata`` (each stored as ``numpy.array(value)``: strings and numbers) to an ``.npz``,
    atomically (a temporary file, then a rename).

    The format torch-fidelity, the official LOO-FID ``make_gen_stats.py``, ``tools/eval.py`` and
    :class:`~vargo.components.rewards.loo_fid.LooFidReward` read.

    Args:
        path: the ``.npz`` to write.
        features: ``[N, D]`` features, ``N >= 2``.
        **metadata: extra entries, e.g. ``extractor``, ``feature_layer``, ``source``.
    """
    x = features.detach().cpu() if torch.is_tensor(features) else np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f'features must be [N, D] with N >= 2 (a covariance), got shape '
                         f'{tuple(x.shape)}')
    mu, sigma = gaussian_statistics(x)
    arrays = dict(mu=mu, sigma=sigma, sigma_diagonal=np.diagonal(sigma).copy(),
                  count=np.array(x.shape[0], dtype=np.int64))
    for key, value in metadata.items():
        if key in arrays:
            raise ValueError(f'metadata key {key!r} would overwrite the statistics')
        arrays[key] = np.array(value)
    tmp = f'{path}.tmp.npz'
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _read_array(z, key: str, path: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError as e:          # allow_pickle=False: an object array is refused
        raise ValueError(f'{path}: refused to load {key!r}: it holds Python objects (a pickle), '
                         f'but statistics files hold plain numeric arrays only ({e})') from None


def load_feature_statistics(path: str, prefix: str = '') -> FeatureStatistics:
    """Read a statistics ``.npz`` (formats in the module docstring) without unpickling anything.

    Args:
        path: the file.
        prefix: prepended to every key (e.g. ``'c2i_train_'`` for the shipped Shapes file).

    Raises:
        FileNotFoundError: naming the path and how to write such a file.
        ValueError: the keys or shapes do not form one of the accepted formats, or an array holds
            Python objects.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'feature statistics file not found: {path}; write one with '
            f'vargo.components.metrics.frechet.save_feature_statistics(path, features) or '
            f'tools/fid_stats.py (features of real images for real_stats_path, of base-model '
            f'samples for init_stats_path), or set init_stats_path=None to bootstrap the EMA '
            f'from the first batch')
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.keys())
        arrays = {k[len(prefix):]: _read_array(z, k, path) for k in keys
                  if k.startswith(prefix) and k[len(prefix):] not in METADATA_KEYS}
        meta = {}
        for k in METADATA_KEYS:
            key = next((c for c in (prefix + k, k) if c in keys), None)
            if key is not None:
                meta[k] = str(_read_array(z, key, path))
        count_key = next((c for c in (prefix + 'count', 'count') if c in keys), None)
        count = int(_read_array(z, count_key, path)) if count_key else None

    def f64(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float64).copy())

    if 'mu' in arrays and ('sigma' in arrays or 'sigma_diagonal' in arrays):
        mu = f64(arrays['mu']).reshape(-1)
        cov = None
        if 'sigma' in arrays:
            cov = f64(arrays['sigma'])
            if cov.shape != (mu.numel(), mu.numel()):
                raise ValueError(f'{path}: {prefix}sigma has shape {tuple(cov.shape)}, expected '
                                 f'[D, D] = {(mu.numel(), mu.numel())} for {prefix}mu of D = '
                                 f'{mu.numel()}')
            var = torch.diagonal(cov).clone()
        else:
            var = f64(arrays['sigma_diagonal']).reshape(-1)
    elif 'm1' in arrays and 'm2' in arrays:
        mu = f64(arrays['m1']).reshape(-1)
        m2 = f64(arrays['m2'])
        if m2.shape == (mu.numel(),):
            cov, var = None, m2 - mu * mu
        elif m2.shape == (mu.numel(), mu.numel()):
            cov = m2 - torch.outer(mu, mu)
            var = torch.diagonal(cov).clone()
        else:
            raise ValueError(f'{path}: {prefix}m2 has shape {tuple(m2.shape)}, expected [D] or '
                             f'[D, D] with D = {mu.numel()}')
    else:
        hint = ''
        prefixes = sorted({k[:-len('mu')] for k in keys if k.endswith('mu')})
        if prefixes:
            hint = f'; did you mean one of the prefixes {prefixes}?'
        raise ValueError(f'{path} has keys {sorted(keys)}; with prefix {prefix!r} a statistics '
                         f"file needs 'mu' and 'sigma' (or 'sigma_diagonal'), or 'm1' and "
                         f"'m2'{hint}")
    if var.shape != mu.shape:
        raise ValueError(f'{path}: variances of shape {tuple(var.shape)} do not match mu '
                         f'{tuple(mu.shape)}')
    if not (torch.isfinite(mu).all() and torch.isfinite(var).all()):
        raise ValueError(f'{path} (prefix {prefix!r}) holds non-finite statistics')
    return FeatureStatistics(mu=mu, var=var, cov=cov, path=path, count=count, meta=meta)


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file (statistics record the extractor weights they belong to)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


# ---- the distance ------------------------------------------------------------------------------
def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance of two Gaussians in float64 (Heusel et al., arXiv 1706.08500, eq. 6).

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``, the trace of the square root from
    the eigenvalues of ``S1 S2`` (``sum(real(sqrt(eig)))``): torch-fidelity's
    ``fid_statistics_to_metric`` of the statistics widened to float64, bit for bit.

    Raises:
        UsageError: the two sides have different dimensions.
    """
    mu1, mu2 = np.asarray(mu1, np.float64).reshape(-1), np.asarray(mu2, np.float64).reshape(-1)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise UsageError(f'statistics of different dimensions: mu {mu1.shape} vs {mu2.shape}, '
                         f'sigma {s1.shape} vs {s2.shape}: both sides must come from the same '
                         f'feature extractor and layer')
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(s1.dot(s2)).astype('complex128')).real)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
