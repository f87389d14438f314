"""LOO-FID: a distribution-level reward from leave-one-out Frechet distances (arXiv 2603.23086).

docs/methods/loo_fid.md. Each sample is scored by how much the Frechet distance (FD) between the
features of generated and real images would grow if the sample were left out of the batch: a
sample whose removal *increases* FD is good (higher reward = better).

Statistics (all float64)
------------------------
Features ``x = phi(image)`` in ``R^D`` come from any torch-fidelity feature extractor (the
paper: Inception-v3 pool features, D = 2048). Over the ``N`` images of *all* ranks of one
iteration, the raw sums ``S1 = sum_j x_j``, ``S2 = sum_j x_j * x_j`` and ``N`` are all-reduced,
and every rank scores its own samples with

    batch moments        mu_b = S1 / N,                  m2_b = S2 / N
    leave-one-out        mu_-i = (S1 - x_i) / (N - 1),   m2_-i = (S2 - x_i^2) / (N - 1)

The state is an exponential moving average (EMA) of the raw moments ``(m1, m2)`` with decay
``beta = beta_ema`` (0.5 in the paper's runs). ``peek`` is the EMA one update would give, without
applying it:

    peek(mu, m2) = (beta*m1 + (1-beta)*mu,  beta*m2 + (1-beta)*m2)
    sigma(m1', m2') = sqrt(max(m2' - m1'^2, 0) + eps)            (eps = 1e-12)
    FD_diag(m1', m2') = ||mu_r - m1'||^2 + ||sigma_r - sigma(m1', m2')||^2

the Frechet distance between diagonal Gaussians (``sigma_r`` the real per-dimension std).

Modes (``mode``)
----------------
* ``'ema_loo'`` (the paper's): ``r_i = FD(peek(mu_-i, m2_-i)) - FD(peek(mu_b, m2_b))``.
* ``'loo_batch'`` (no EMA in the reward): ``r_i = FD(mu_-i, m2_-i) - FD(mu_b, m2_b)``.
* ``'ema_scalar'``: every sample gets ``r = FD(m1, m2) - FD(peek(mu_b, m2_b))``, the decrease of
  the EMA's FD that this batch causes (official ``InceptionDiagFIDEMAReward``, ``else`` branch:
  ``reward_scalar = fid_prev - fid_next``). Note: a constant reward has no spread within a group,
  so group-normalised advantages (``GroupNormAdvantage``) of this head are exactly 0; the mode is
  only useful with a baseline across iterations.

In every mode the EMA is then updated *once* with the batch moments,
``(m1, m2) <- peek(mu_b, m2_b)`` (also in ``'loo_batch'``, where it only feeds the ``fd_ema``
metric, as in the official code). The sign convention (``FD without i`` minus ``FD with i``)
is the paper's and the official code's ("Positive => x_i is helpful (removing it worsens FID)").

Full covariance in a PCA subspace (``covariance='pca_full'``)
------------------------------------------------------------
The diagonal FD ignores correlations. With ``covariance='pca_full'`` and ``pca_dim = k`` the
features are projected on the top-``k`` principal axes of the real covariance,
``z = P^T (x - mu_r)`` (``Sigma_r = U Lambda U^T``, ``P = U[:, :k]``), so the real Gaussian is
``N(0, Lambda_k)``; the state holds the EMA of ``m1 = E[z]`` ``[k]`` and of the raw second-moment
*matrix* ``M2 = E[z z^T]`` ``[k, k]``; leave-one-out is a rank-1 downdate,
``M2_-i = (S2 - z_i z_i^T) / (N - 1)`` with ``S2 = sum_j z_j z_j^T``; and

    S = M2' - m1' m1'^T
    FD_full = ||m1'||^2 + tr(Lambda_k) + tr(S) - 2 tr((Lambda_k^{1/2} S Lambda_k^{1/2})^{1/2})

(Heusel et al., arXiv 1706.08500 eq. 6, with ``tr((Sigma_r S)^{1/2}) = tr((Sigma_r^{1/2} S
Sigma_r^{1/2})^{1/2})``), the matrix square root's trace from a float64 symmetric
eigendecomposition (eigenvalues clamped at 0). With ``k = D`` this is exactly the full FD
(FD is invariant to the orthogonal change of basis). Memory per LOO chunk is
``loo_chunk * k^2`` floats: keep ``k`` in the hundreds. Keep ``k`` well below the number of
samples ``N`` of an iteration as well: the batch covariance has rank ``<= N - 1``, and the trace of
the square root of a (near-)singular matrix is only accurate to about ``sqrt(machine eps)``.

Statistics files
----------------
``.npz`` files read by :func:`vargo.components.metrics.frechet.load_feature_statistics` (plain
arrays only, nothing unpickled), keys optionally behind a prefix (``real_stats_prefix``,
``init_stats_prefix``; e.g. ``'c2i_train_'`` for the shipped Shapes statistics
``components/benchmarks/weights/shapes_real_stats.npz``, whose keys are
``{c2i,t2i}_{train,eval}_{mu,sigma}``). One of:

* ``mu [D]`` and ``sigma [D, D]`` (covariance; torch-fidelity / pytorch-fid / clean-fid format,
  and ``save_feature_statistics``), and/or ``sigma_diagonal [D]`` (variances; the official
  ``make_gen_stats.py`` writes both);
* ``m1 [D]`` and ``m2 [D]`` (raw moments ``E[x]``, ``E[x^2]``) or ``m2 [D, D]`` (``E[x x^T]``).

``real_stats_path`` gives ``mu_r``, ``sigma_r`` (``'pca_full'`` needs a full ``sigma``). The EMA
is bootstrapped from ``init_stats_path``: statistics of base-model samples, written by
``tools/fid_stats.py samples`` (or ``vargo.components.metrics.frechet``'s ``extract_features`` +
``save_feature_statistics``) (``m1 = mu``, ``m2 = diag(sigma) + mu^2``; for ``'pca_full'``
``M2 = P^T sigma P + m1 m1^T`` after projecting ``mu``). With ``init_stats_path=None`` the first
scored batch (samples of the base model at iteration 0) bootstraps it, so the first ``peek`` of
the batch equals the batch moments.

Deviations from the official code (bugrabaran/ar-policy-tuning, ``utils/reward_utils.py``)
------------------------------------------------------------------------------------------
* Bootstrap: the official ``EMADiagMoments.bootstrap_from_mu_std`` always stores
  ``(1 - beta) * mu`` (meant for its Adam-style debiasing), but the paper's run disables
  debiasing (``train.sh``: ``--fid-no-debias``), so its EMA starts at half the base statistics.
  Here the EMA starts *at* the bootstrap statistics and there is no debiasing (the run's setting).
* ``N < 2`` is an error here (the official code divides by ``max(N - 1, 1)``).
* Images are quantised with rounding (``round(255 x)``), torch-fidelity's convention; the
  official decoder truncates.

Feature extractors
------------------
``feature_extractor`` is a name in torch-fidelity's registry
(``torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY``), built by
:func:`vargo.components.metrics.frechet.build_feature_extractor` (weights through a data-only
checked copy) and called as torch-fidelity calls it:
``uint8 [B, 3, H, W]`` images in, one ``[B, D]`` feature tensor out (``feature_layer``, by default
the extractor's layer for 'fid'). Nothing is ever downloaded: torch-fidelity's built-in
extractors need ``feature_extractor_weights_path`` (a local file), e.g.

* ``'inception-v3-compat'`` with ``feature_extractor_weights_path='checkpoints/
  weights-inception-2015-12-05-6726825d.pth'`` (torch-fidelity's ported TF-Inception; layer
  ``'2048'``);
* ``'clip-vit-l-14'`` (or any ``'clip-*'``) with the local OpenAI CLIP TorchScript file (layer
  ``'clip'``); any other CLIP or DINO model plugs in the same way: subclass
  ``torch_fidelity.feature_extractor_base.FeatureExtractorBase`` and register it with
  ``torch_fidelity.register_feature_extractor(name, cls)``;
* ``'vargo-shapes'``: the Shapes benchmark's extractor (128-d), its shipped weights by default.

Example:
    >>> import torch
    >>> from vargo.components.benchmarks.shapes_features import DEFAULT_STATS_PATH
    >>> head = LooFidReward(mode='ema_loo', beta_ema=0.5, feature_extractor='vargo-shapes',
    ...                     real_stats_path=DEFAULT_STATS_PATH, real_stats_prefix='c2i_train_')
    >>> feats = torch.rand(6, 128, dtype=torch.float64)
    >>> scores, metrics = head.score_features(feats)
    >>> tuple(scores.shape), sorted(metrics)
    ((6,), ['fd_batch', 'fd_ema', 'reward_mean', 'reward_std'])
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from vargo.components.metrics.frechet import (FeatureStatistics, build_feature_extractor,
                                              extract_features, load_feature_statistics,
                                              save_feature_statistics)
from vargo.core import dist as vdist
from vargo.core.interfaces import RewardHead, Stateful
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import RewardContext, RewardOutput, Rollout

# the statistics files, extractors and features are vargo.components.metrics.frechet's (imported
# here for the head, and for code that imported them from this module)
__all__ = ['LooFidReward', 'MODES', 'COVARIANCES', 'loo_moments', 'frechet_distance_diag',
           'frechet_distance_full', 'FeatureStatistics', 'load_feature_statistics',
           'save_feature_statistics', 'build_feature_extractor', 'extract_features']

MODES = ('ema_loo', 'loo_batch', 'ema_scalar')
COVARIANCES = ('diag', 'pca_full')
STATE_FORMAT = 'vargo-loo-fid-v1'


# ---- the math (pure functions) -------------------------------------------------------------------
def loo_moments(s1: Tensor, s2: Tensor, z: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Leave-one-out raw moments of the samples ``z`` from all-rank sums.

    Args:
        s1: ``[d]`` sum of features over all ``n`` samples.
        s2: ``[d]`` sum of squares, or ``[d, d]`` sum of outer products.
        z: ``[m, d]`` the samples to leave out (one at a time).
        n: total number of samples (``>= 2``).

    Returns:
        ``(mu_-i [m, d], m2_-i [m, d] or [m, d, d])``:
        ``((s1 - z_i) / (n - 1), (s2 - z_i^2) / (n - 1))`` or with ``z_i z_i^T``.
    """
    mu = (s1.unsqueeze(0) - z) / (n - 1)
    if s2.dim() == 1:
        m2 = (s2.unsqueeze(0) - z * z) / (n - 1)
    else:
        m2 = (s2.unsqueeze(0) - z.unsqueeze(2) * z.unsqueeze(1)) / (n - 1)
    return mu, m2


def frechet_distance_diag(mu_r: Tensor, sd_r: Tensor, m1: Tensor, m2: Tensor,
                          eps: float = 1e-12) -> Tensor:
    """``||mu_r - m1||^2 + ||sd_r - sqrt(max(m2 - m1^2, 0) + eps)||^2`` over the last dim.

    Args:
        mu_r, sd_r: ``[D]`` real mean and per-dimension std.
        m1, m2: ``[..., D]`` raw first and second moments.
    """
    sd = torch.sqrt((m2 - m1 * m1).clamp_min(0.0) + eps)
    return ((mu_r - m1) ** 2).sum(-1) + ((sd_r - sd) ** 2).sum(-1)


def frechet_distance_full(lam_r: Tensor, m1: Tensor, m2: Tensor) -> Tensor:
    """FD between ``N(0, diag(lam_r))`` and the Gaussian of raw moments ``(m1, m2)``.

    ``||m1||^2 + sum(lam_r) + tr(S) - 2 tr((L^{1/2} S L^{1/2})^{1/2})``, ``S = m2 - m1 m1^T``,
    ``L = diag(lam_r)`` (coordinates where the real distribution is centred and its covariance
    diagonal: the PCA basis).

    Args:
        lam_r: ``[k]`` real covariance eigenvalues (>= 0).
        m1: ``[..., k]``; m2: ``[..., k, k]`` raw second-moment matrices.
    """
    s = m2 - m1.unsqueeze(-1) * m1.unsqueeze(-2)
    s = 0.5 * (s + s.transpose(-1, -2))
    root = lam_r.clamp_min(0.0).sqrt()
    a = root.unsqueeze(-1) * s * root.unsqueeze(-2)
    ev = torch.linalg.eigvalsh(a).clamp_min(0.0)
    trace_s = torch.diagonal(s, dim1=-2, dim2=-1).sum(-1)
    return (m1 * m1).sum(-1) + lam_r.sum() + trace_s - 2.0 * ev.sqrt().sum(-1)


# ---- the head ------------------------------------------------------------------------------------
@REWARD_HEADS.register_module()
class LooFidReward(RewardHead, Stateful):
    """Leave-one-out Frechet-distance reward on EMA feature moments (arXiv 2603.23086).

    Equations, modes, files and deviations in the module docstring. Distribution-level: the
    sums behind the moments are all-reduced over ``ctx.process_group`` (the default group when
    torch.distributed is initialised and it is None), every rank scores its local samples, and the
    EMA, identical on all ranks, is checkpointed through :meth:`state_dict`.

    Args:
        mode: ``'ema_loo'`` (the paper's), ``'loo_batch'`` or ``'ema_scalar'``.
        beta_ema: EMA decay ``beta`` in [0, 1) (paper: 0.5).
        feature_extractor: a torch-fidelity feature extractor name (``'inception-v3-compat'``,
            ``'vargo-shapes'``, ``'clip-vit-l-14'``, ...).
        real_stats_path: ``.npz`` of the real features' ``mu``/``sigma`` (module docstring).
        real_stats_prefix: key prefix in that file (``'c2i_train_'`` for the shipped Shapes one).
        init_stats_path: ``.npz`` of base-model sample statistics to bootstrap the EMA; None:
            bootstrap from the first scored batch.
        init_stats_prefix: key prefix in that file.
        feature_extractor_weights_path: a local weights file (required for torch-fidelity's
            built-in extractors; None: the extractor's own default, e.g. vargo-shapes' shipped
            weights).
        feature_layer: the extractor's feature to use (None: its layer for 'fid').
        covariance: ``'diag'`` (the paper's) or ``'pca_full'``.
        pca_dim: ``k`` for ``'pca_full'`` (1 <= k <= D).
        eps: added to the variance under the square root of the diagonal FD (1e-12).
        extract_batch_size: images per extractor forward.
        loo_chunk: samples per leave-one-out block (``'pca_full'`` memory: ``loo_chunk * k^2``).
    """

    distribution_level = True
    #: where the official files a config may name are published (dry-run / missing-file report)
    file_sources = {
        'weights-inception-2015-12-05-6726825d.pth':
            'https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/'
            'weights-inception-2015-12-05-6726825d.pth (torch-fidelity\'s FID Inception-v3)'}

    def __init__(self, *, mode: str, beta_ema: float, feature_extractor: str,
                 real_stats_path: str, real_stats_prefix: str = '',
                 init_stats_path: Optional[str] = None, init_stats_prefix: str = '',
                 feature_extractor_weights_path: Optional[str] = None,
                 feature_layer: Optional[str] = None, covariance: str = 'diag',
                 pca_dim: Optional[int] = None, eps: float = 1e-12,
                 extract_batch_size: int = 64, loo_chunk: int = 64) -> None:
        if mode not in MODES:
            raise ValueError(f"LooFidReward mode={mode!r} is not one of {list(MODES)} "
                             f"('ema_loo' is the paper's)")
        if isinstance(beta_ema, bool) or not isinstance(beta_ema, (int, float)) \
                or not 0.0 <= beta_ema < 1.0:
            raise ValueError(f'LooFidReward beta_ema={beta_ema!r} must be a float in [0, 1) '
                             f'(the paper uses 0.5)')
        if covariance not in COVARIANCES:
            raise ValueError(f'LooFidReward covariance={covariance!r} is not one of '
                             f'{list(COVARIANCES)}')
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 \
                or not math.isfinite(eps):
            raise ValueError(f'LooFidReward eps={eps!r} must be a finite float >= 0')
        for name, v in (('extract_batch_size', extract_batch_size), ('loo_chunk', loo_chunk)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f'LooFidReward {name}={v!r} must be a positive int')
        self.mode = mode
        self.beta = float(beta_ema)
        self.covariance = covariance
        self.eps = float(eps)
        self.extract_batch_size = extract_batch_size
        self.loo_chunk = loo_chunk
        self.feature_extractor_name = feature_extractor

        real = load_feature_statistics(real_stats_path, real_stats_prefix)
        self.feature_dim = real.dim
        if covariance == 'diag':
            if pca_dim is not None:
                raise ValueError(f"LooFidReward pca_dim={pca_dim} is only used with "
                                 f"covariance='pca_full'; remove it or set covariance='pca_full'")
            self.dim = real.dim
            self._mu_r = real.mu
            self._sd_r = real.var.clamp_min(0.0).sqrt()
        else:
            if real.cov is None:
                raise ValueError(f"covariance='pca_full' needs the full real covariance, but "
                                 f"{real.path} (prefix {real_stats_prefix!r}) holds only "
                                 f"variances; write 'sigma' [D, D] with save_feature_statistics")
            if isinstance(pca_dim, bool) or not isinstance(pca_dim, int) \
                    or not 1 <= pca_dim <= real.dim:
                raise ValueError(f"covariance='pca_full' needs pca_dim, an int in [1, "
                                 f"D={real.dim}], got {pca_dim!r}")
            cov = 0.5 * (real.cov + real.cov.T)
            lam, vecs = torch.linalg.eigh(cov)                      # ascending
            order = torch.argsort(lam, descending=True)[:pca_dim]
            self.dim = pca_dim
            self._center = real.mu                                 # [D]
            self._basis = vecs[:, order].contiguous()              # [D, k]
            self._lam_r = lam[order].clamp_min(0.0)                # [k]
        self.pca_dim = pca_dim

        self._extractor, self.feature_layer = build_feature_extractor(
            feature_extractor, feature_extractor_weights_path, feature_layer)

        # EMA state (float64): m1 [d], m2 [d] (diag) or [d, d] (pca_full); None until bootstrapped
        self._m1: Optional[Tensor] = None
        self._m2: Optional[Tensor] = None
        self.num_updates = 0
        if init_stats_path is not None:
            init = load_feature_statistics(init_stats_path, init_stats_prefix)
            if init.dim != self.feature_dim:
                raise ValueError(f'init_stats_path {init.path} has D = {init.dim} but the real '
                                 f'statistics {real.path} have D = {self.feature_dim}: both must '
                                 f'come from the same feature extractor and layer')
            self._bootstrap(init)

    def __repr__(self) -> str:
        extra = f', pca_dim={self.pca_dim}' if self.covariance == 'pca_full' else ''
        return (f'{type(self).__name__}(mode={self.mode!r}, beta_ema={self.beta}, '
                f'feature_extractor={self.feature_extractor_name!r}, '
                f'covariance={self.covariance!r}{extra})')

    # -- feature space ----------------------------------------------------------------------------
    @property
    def _full(self) -> bool:
        return self.covariance == 'pca_full'

    def _project(self, x: Tensor) -> Tensor:
        """``[n, D]`` features -> ``[n, d]`` coordinates of the moments (PCA for pca_full)."""
        if not self._full:
            return x
        return (x - self._center.to(x.device)) @ self._basis.to(x.device)

    def _bootstrap(self, stats: FeatureStatistics) -> None:
        if not self._full:
            self._m1 = stats.mu.clone()
            self._m2 = stats.var + stats.mu * stats.mu
            return
        if stats.cov is None:
            raise ValueError(f"covariance='pca_full' bootstraps from a full covariance, but "
                             f"{stats.path} holds only variances; write 'sigma' [D, D] with "
                             f"save_feature_statistics, or set init_stats_path=None")
        m1 = (stats.mu - self._center) @ self._basis               # [k]
        cov = self._basis.T @ stats.cov @ self._basis              # [k, k]
        self._m1 = m1
        self._m2 = cov + torch.outer(m1, m1)

    def _fd(self, m1: Tensor, m2: Tensor) -> Tensor:
        if self._full:
            return frechet_distance_full(self._lam_r.to(m1.device), m1, m2)
        return frechet_distance_diag(self._mu_r.to(m1.device), self._sd_r.to(m1.device), m1, m2,
                                     self.eps)

    def _peek(self, mu: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
        b = self.beta
        return b * self._m1 + (1 - b) * mu, b * self._m2 + (1 - b) * m2

    # -- scoring ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, rollout: Rollout, ctx: RewardContext) -> RewardOutput:
        if rollout.images is None:
            raise ValueError('LooFidReward needs decoded images but rollout.images is None: the '
                             'sampler must decode its samples')
        feats = extract_features(self._extractor, rollout.images, self.extract_batch_size)
        scores, metrics = self.score_features(
            feats, process_group=None if ctx is None else ctx.process_group)
        return RewardOutput(scores=scores.to(torch.float32), metrics=metrics)

    @torch.no_grad()
    def score_features(self, feats: Tensor, process_group: Any = None
                       ) -> tuple[Tensor, dict[str, float]]:
        """Rewards of this rank's samples from their features, then one EMA update.

        Args:
            feats: ``[n, D]`` features of this rank's samples (any float dtype).
            process_group: the group to all-reduce the sums over (None: the default group if
                torch.distributed is initialised, else no reduction).

        Returns:
            ``(rewards [n] float64, metrics)`` with metrics ``fd_batch`` (FD of the all-rank batch
            moments), ``fd_ema`` (FD of the updated EMA) and the all-rank ``reward_mean``,
            ``reward_std`` (unbiased).
        """
        if feats.numel() == 0:                     # a rank without samples still all-reduces
            feats = feats.new_zeros(0, self.feature_dim)
        if feats.dim() != 2 or feats.shape[1] != self.feature_dim:
            raise ValueError(
                f'feature extractor {self.feature_extractor_name!r} (layer '
                f'{self.feature_layer!r}) gives features of shape {tuple(feats.shape)}, but the '
                f'real statistics have D = {self.feature_dim}: compute the statistics with the '
                f'same extractor and layer (save_feature_statistics), or pick the matching '
                f'feature_layer')
        z = self._project(feats.to(torch.float64))                     # [n, d]
        dev = z.device
        n_local = z.shape[0]
        s1 = z.sum(0)                                                  # [d]
        s2 = z.T @ z if self._full else (z * z).sum(0)                 # [d, d] or [d]
        packed = torch.cat([s1, s2.reshape(-1), torch.tensor([float(n_local)], dtype=torch.float64,
                                                             device=dev)])
        packed = vdist.all_reduce_sum(packed, group=process_group)
        d = self.dim
        s1, s2 = packed[:d], packed[d:-1].reshape(s2.shape)
        n = int(round(float(packed[-1])))
        if n < 2:
            raise ValueError(f'LooFidReward needs at least 2 samples over all ranks to leave one '
                             f'out, got N = {n}')
        mu_b, m2_b = s1 / n, s2 / n
        if self._m1 is None:                       # bootstrap from the first batch
            self._m1, self._m2 = mu_b.clone(), m2_b.clone()
        self._m1, self._m2 = self._m1.to(dev), self._m2.to(dev)

        fd_batch = self._fd(mu_b, m2_b)
        peek_b = self._peek(mu_b, m2_b)
        fd_peek_b = self._fd(*peek_b)
        if self.mode == 'ema_scalar':
            rewards = (self._fd(self._m1, self._m2) - fd_peek_b).expand(n_local).clone()
        else:
            parts = []
            for zc in z.split(self.loo_chunk):
                mu_loo, m2_loo = loo_moments(s1, s2, zc, n)
                if self.mode == 'ema_loo':
                    parts.append(self._fd(*self._peek(mu_loo, m2_loo)) - fd_peek_b)
                else:
                    parts.append(self._fd(mu_loo, m2_loo) - fd_batch)
            rewards = torch.cat(parts) if parts else z.new_zeros(0)
        # the one EMA update of this iteration, with the batch moments
        self._m1, self._m2 = peek_b
        self.num_updates += 1

        # two passes (a constant reward has std exactly 0, as ema_scalar's)
        mean = float(vdist.all_reduce_sum(rewards.sum(), group=process_group)) / n
        var = float(vdist.all_reduce_sum(((rewards - mean) ** 2).sum(), group=process_group)) \
            / (n - 1)
        metrics = {'fd_batch': float(fd_batch), 'fd_ema': float(fd_peek_b),
                   'reward_mean': mean, 'reward_std': math.sqrt(var)}
        return rewards, metrics

    # -- Stateful ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The EMA moments (float64, CPU) and their layout; loadable with ``weights_only=True``."""
        return {'format': STATE_FORMAT, 'covariance': self.covariance, 'dim': self.dim,
                'num_updates': self.num_updates,
                'm1': None if self._m1 is None else self._m1.detach().cpu().clone(),
                'm2': None if self._m2 is None else self._m2.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if state.get('format') != STATE_FORMAT:
            raise ValueError(f'LooFidReward state has format={state.get("format")!r}, expected '
                             f'{STATE_FORMAT!r}')
        if state['covariance'] != self.covariance or int(state['dim']) != self.dim:
            raise ValueError(f"checkpointed LooFidReward state is covariance="
                             f"{state['covariance']!r} with d={state['dim']}, but this head is "
                             f"covariance={self.covariance!r} with d={self.dim}: resume with the "
                             f"same covariance/pca_dim/feature extractor")
        m1, m2 = state['m1'], state['m2']
        self._m1 = None if m1 is None else m1.to(torch.float64).clone()
        self._m2 = None if m2 is None else m2.to(torch.float64).clone()
        self.num_updates = int(state['num_updates'])
