"""LooFidReward: leave-one-out moments, hand-computed modes, sign, permutation equivariance,
full-covariance parity with a direct FD, state round trips (state_dict, MMEngine checkpoint) and
2-process equality (docs/methods/loo_fid.md)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from conftest import ROOT
from vargo.components.benchmarks.shapes_features import DEFAULT_STATS_PATH
from vargo.components.metrics.frechet import (extract_features, load_feature_statistics,
                                              save_feature_statistics)
from vargo.components.rewards.loo_fid import LooFidReward, frechet_distance_full, loo_moments
from vargo.core.registry import REWARD_HEADS, checked_build
from vargo.core.types import Conditions, RewardContext, Rollout

F64 = torch.float64
TINY = 'vargo-test-tiny'
TINY_DIM = 5


class TinyExtractor(FeatureExtractorBase):
    """A fixed random feature map of 2x2-pooled uint8 images -> 5-d features (tests only)."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        g = torch.Generator().manual_seed(0)
        self.register_buffer('w', torch.randn(12, TINY_DIM, generator=g))

    @staticmethod
    def get_provided_features_list():
        return ('feat',)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return 'feat'

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.dim() == 4
        p = F.adaptive_avg_pool2d(x.float() / 255.0, 2).flatten(1)      # [B, 12]
        return (torch.tanh(p @ self.w),)


if TINY not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(TINY, TinyExtractor)


def _write_stats(path, mu, sigma=None, **extra):
    arrays = {'mu': np.asarray(mu, np.float64)}
    if sigma is not None:
        arrays['sigma'] = np.asarray(sigma, np.float64)
    arrays.update(extra)
    np.savez(path, **arrays)
    return str(path)


def _head(tmp_path, *, mode, beta=0.5, real=None, init=None, **kw):
    """A head on the tiny extractor; ``real``/``init`` are (mu, sigma) pairs written to files."""
    real = real or (np.zeros(TINY_DIM), np.eye(TINY_DIM))
    real_path = _write_stats(tmp_path / f'real_{np.random.randint(1 << 30)}.npz', *real)
    init_path = None
    if init is not None:
        init_path = _write_stats(tmp_path / f'init_{np.random.randint(1 << 30)}.npz', *init)
    return LooFidReward(mode=mode, beta_ema=beta, feature_extractor=TINY,
                        real_stats_path=real_path, init_stats_path=init_path, **kw)


# ----------------------------------------------------------------------------------------------
# leave-one-out moments: a property test against recomputation without the sample
# ----------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(2, 7), d=st.integers(1, 4))
def test_loo_moments_equal_recomputation_without_the_sample(data, n, d):
    vals = data.draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=n * d,
                              max_size=n * d))
    z = torch.tensor(vals, dtype=F64).view(n, d)
    s1 = z.sum(0)
    mu, m2 = loo_moments(s1, (z * z).sum(0), z, n)
    mu_f, m2_f = loo_moments(s1, z.T @ z, z, n)
    for i in range(n):
        rest = torch.cat([z[:i], z[i + 1:]])
        torch.testing.assert_close(mu[i], rest.mean(0), rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(m2[i], (rest * rest).mean(0), rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(mu_f[i], rest.mean(0), rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(m2_f[i], rest.T @ rest / (n - 1), rtol=1e-12, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# hand-computed examples, D = 1: real N(1, 1), EMA bootstrapped at mu = 1, var = 1, beta = 0.5
# batch x = (0, 2, 4): mu_b = 2, m2_b = 20/3, var_b = 8/3
# without 0: (mu, m2) = (3, 10); without 2: (2, 8); without 4: (1, 2)
# ----------------------------------------------------------------------------------------------
X1 = torch.tensor([[0.0], [2.0], [4.0]], dtype=F64)
ONE_D = dict(real=([1.0], [[1.0]]), init=([1.0], [[1.0]]), eps=0.0)


def test_hand_example_loo_batch(tmp_path):
    head = _head(tmp_path, mode='loo_batch', **ONE_D)
    r, m = head.score_features(X1)
    fd_batch = 1.0 + (1 - math.sqrt(8 / 3)) ** 2      # (1-2)^2 + (1-sd_b)^2
    # FD without each sample: (1-3)^2 + (1-1)^2 = 4; (1-2)^2 + (1-2)^2 = 2; 0 + 0 = 0
    expected = [4.0 - fd_batch, 2.0 - fd_batch, 0.0 - fd_batch]
    torch.testing.assert_close(r, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    assert m['fd_batch'] == pytest.approx(fd_batch, rel=1e-12)
    # the EMA still moves once (for the fd_ema metric): (1.5, 13/3), FD = 0.25 + (1-sqrt(25/12))^2
    assert m['fd_ema'] == pytest.approx(0.25 + (1 - math.sqrt(25 / 12)) ** 2, rel=1e-12)
    assert m['reward_mean'] == pytest.approx(sum(expected) / 3, rel=1e-12)
    assert m['reward_std'] == pytest.approx(float(np.std(expected, ddof=1)), rel=1e-12)


def test_hand_example_ema_loo_two_iterations(tmp_path):
    head = _head(tmp_path, mode='ema_loo', **ONE_D)
    r, m = head.score_features(X1)
    # peek(batch): m1 = .5*1 + .5*2 = 1.5, m2 = .5*2 + .5*20/3 = 13/3, var = 25/12
    fd_full = 0.25 + (1 - math.sqrt(25 / 12)) ** 2
    # peek(without 0) = (2, 6): var 2; peek(without 2) = (1.5, 5): var 2.75;
    # peek(without 4) = (1, 2): var 1
    expected = [1.0 + (1 - math.sqrt(2)) ** 2 - fd_full,
                0.25 + (1 - math.sqrt(2.75)) ** 2 - fd_full,
                0.0 - fd_full]
    torch.testing.assert_close(r, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    assert m['fd_ema'] == pytest.approx(fd_full, rel=1e-12)
    state = head.state_dict()
    assert state['num_updates'] == 1
    torch.testing.assert_close(state['m1'], torch.tensor([1.5], dtype=F64))
    torch.testing.assert_close(state['m2'], torch.tensor([13 / 3], dtype=F64))
    # iteration 2, batch (1, 3): mu_b = 2, m2_b = 5; peek = (1.75, 14/3), var = 77/48
    r2, m2 = head.score_features(torch.tensor([[1.0], [3.0]], dtype=F64))
    fd_full2 = 0.75 ** 2 + (1 - math.sqrt(77 / 48)) ** 2
    # without 1: (3, 9) -> peek (2.25, 20/3), var 77/48; without 3: (1, 1) -> (1.25, 8/3), 53/48
    expected2 = [1.25 ** 2 + (1 - math.sqrt(77 / 48)) ** 2 - fd_full2,
                 0.25 ** 2 + (1 - math.sqrt(53 / 48)) ** 2 - fd_full2]
    torch.testing.assert_close(r2, torch.tensor(expected2, dtype=F64), rtol=1e-12, atol=1e-12)
    assert m2['fd_ema'] == pytest.approx(fd_full2, rel=1e-12)


def test_hand_example_ema_scalar(tmp_path):
    head = _head(tmp_path, mode='ema_scalar', **ONE_D)
    r, m = head.score_features(X1)
    # FD(EMA before) = FD(1, 2) = 0; FD(EMA after) = 0.25 + (1 - sqrt(25/12))^2: the batch
    # worsened the EMA's FD, every sample gets the (negative) decrease
    expected = 0.0 - (0.25 + (1 - math.sqrt(25 / 12)) ** 2)
    torch.testing.assert_close(r, torch.full((3,), expected, dtype=F64), rtol=1e-12, atol=1e-12)
    assert m['reward_std'] == 0.0


def test_first_batch_bootstraps_the_ema(tmp_path):
    head = _head(tmp_path, mode='ema_loo', real=([1.0], [[1.0]]), eps=0.0)
    assert head.state_dict()['m1'] is None
    r, m = head.score_features(X1)
    # EMA = batch moments, so peek(batch) = batch and peek(LOO_i) = (batch + LOO_i) / 2
    fd_b = 1.0 + (1 - math.sqrt(8 / 3)) ** 2
    assert m['fd_ema'] == pytest.approx(fd_b, rel=1e-12)
    # without 4: ((2 + 1)/2, (20/3 + 2)/2) = (1.5, 13/3): var 25/12
    assert float(r[2]) == pytest.approx(0.25 + (1 - math.sqrt(25 / 12)) ** 2 - fd_b, rel=1e-12)


@pytest.mark.parametrize('mode', ['ema_loo', 'loo_batch'])
@pytest.mark.parametrize('covariance', ['diag', 'pca_full'])
def test_sign_an_outlier_gets_the_lowest_negative_reward(tmp_path, mode, covariance):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, TINY_DIM, generator=g, dtype=F64)
    x[7] += 6.0                                  # far from the real N(0, I)
    kw = dict(pca_dim=TINY_DIM) if covariance == 'pca_full' else {}
    head = _head(tmp_path, mode=mode, covariance=covariance, **kw)
    r, _ = head.score_features(x)
    assert int(r.argmin()) == 7 and r[7] < 0     # removing it lowers FD: a bad sample


# ----------------------------------------------------------------------------------------------
# permutation equivariance
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('mode', ['ema_loo', 'loo_batch', 'ema_scalar'])
@pytest.mark.parametrize('covariance', ['diag', 'pca_full'])
def test_rewards_are_permutation_equivariant(tmp_path, mode, covariance):
    g = torch.Generator().manual_seed(2)
    real_x = torch.randn(50, TINY_DIM, generator=g, dtype=F64)
    real = (real_x.mean(0).numpy(), np.cov(real_x.numpy().T))
    kw = dict(pca_dim=3) if covariance == 'pca_full' else {}
    a = _head(tmp_path, mode=mode, covariance=covariance, real=real, **kw)
    b = _head(tmp_path, mode=mode, covariance=covariance, real=real, **kw)
    for it in range(3):
        x = torch.randn(12, TINY_DIM, generator=g, dtype=F64) * 1.3 + 0.2
        perm = torch.randperm(12, generator=g)
        ra, ma = a.score_features(x)
        rb, mb = b.score_features(x[perm])
        torch.testing.assert_close(rb, ra[perm], rtol=1e-9, atol=1e-12)
        assert mb['fd_ema'] == pytest.approx(ma['fd_ema'], rel=1e-10)
    torch.testing.assert_close(a.state_dict()['m2'], b.state_dict()['m2'], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# full covariance in a PCA subspace
# ----------------------------------------------------------------------------------------------
def _direct_fd(mu1, s1, mu2, s2):
    """Exact FD with tr((s1 s2)^{1/2}) from the eigenvalues of the (non-symmetric) product s1 s2,
    independent of the symmetric PCA-basis route of the code under test."""
    ev = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sqrt(np.clip(ev.real, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def _random_gaussian(rng, d, scale=1.0):
    a = rng.normal(size=(d, d)) * scale
    return rng.normal(size=d), a @ a.T + 0.1 * np.eye(d)


def test_pca_full_with_k_equal_d_is_the_exact_frechet_distance(tmp_path):
    rng = np.random.default_rng(3)
    d = TINY_DIM
    mu_r, s_r = _random_gaussian(rng, d)
    mu_g, s_g = _random_gaussian(rng, d, 0.7)
    head = _head(tmp_path, mode='ema_loo', covariance='pca_full', pca_dim=d, real=(mu_r, s_r),
                 init=(mu_g, s_g))
    # the bootstrapped EMA is N(mu_g, s_g): its FD in PCA coordinates equals the direct FD's
    fd = float(frechet_distance_full(head._lam_r, head._m1, head._m2))
    assert fd == pytest.approx(_direct_fd(mu_r, s_r, mu_g, s_g), rel=1e-9)

    # LOO rewards of a batch against a brute-force recomputation in the original coordinates
    x = rng.normal(size=(9, d)) * 1.5 + 0.3
    r, m = head.score_features(torch.from_numpy(x))
    m1_0, m2_0 = mu_g, s_g + np.outer(mu_g, mu_g)

    def fd_of_peek(sample):
        mu, m2 = sample.mean(0), sample.T @ sample / len(sample)
        e1, e2 = 0.5 * m1_0 + 0.5 * mu, 0.5 * m2_0 + 0.5 * m2
        return _direct_fd(mu_r, s_r, e1, e2 - np.outer(e1, e1))

    full = fd_of_peek(x)
    expected = [fd_of_peek(np.delete(x, i, axis=0)) - full for i in range(len(x))]
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-7, atol=1e-9)
    assert m['fd_ema'] == pytest.approx(full, rel=1e-9)
    assert m['fd_batch'] == pytest.approx(
        _direct_fd(mu_r, s_r, x.mean(0), np.cov(x.T, ddof=0)), rel=1e-9)


def test_pca_full_with_k_below_d_is_the_fd_of_the_projected_gaussians(tmp_path):
    rng = np.random.default_rng(4)
    d, k = TINY_DIM, 2
    mu_r, s_r = _random_gaussian(rng, d)
    mu_g, s_g = _random_gaussian(rng, d, 0.5)
    head = _head(tmp_path, mode='loo_batch', covariance='pca_full', pca_dim=k, real=(mu_r, s_r),
                 init=(mu_g, s_g))
    lam, vecs = np.linalg.eigh(s_r)
    p = vecs[:, np.argsort(lam)[::-1][:k]]                       # top-k principal axes
    expected = _direct_fd(p.T @ mu_r, p.T @ s_r @ p, p.T @ mu_g, p.T @ s_g @ p)
    fd = float(frechet_distance_full(head._lam_r, head._m1, head._m2))
    assert fd == pytest.approx(expected, rel=1e-9)


def test_diag_equals_the_official_formula_on_random_data(tmp_path):
    # loo_batch, diag: r_i = FD_diag(batch without i) - FD_diag(batch), MLE variances
    rng = np.random.default_rng(5)
    mu_r, s_r = _random_gaussian(rng, TINY_DIM)
    head = _head(tmp_path, mode='loo_batch', real=(mu_r, s_r))
    x = rng.normal(size=(10, TINY_DIM))
    r, _ = head.score_features(torch.from_numpy(x))
    sd_r = np.sqrt(np.diag(s_r))

    def fd(sample):
        return np.sum((mu_r - sample.mean(0)) ** 2) + np.sum(
            (sd_r - np.sqrt(sample.var(0) + 1e-12)) ** 2)

    expected = [fd(np.delete(x, i, 0)) - fd(x) for i in range(10)]
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------------------------------
# images in, RewardOutput out
# ----------------------------------------------------------------------------------------------
def _rollout(images):
    b = images.shape[0]
    return Rollout(cond=Conditions(class_ids=torch.zeros(b, dtype=torch.long)),
                   group_ids=torch.arange(b) // 2, actions=torch.zeros(b, 1, dtype=torch.long),
                   logp_old=torch.zeros(b, 1), action_mask=torch.ones(b, 1, dtype=torch.bool),
                   action_step=torch.zeros(1, dtype=torch.long),
                   action_pos=torch.zeros(1, 2, dtype=torch.long), images=images)


def test_call_extracts_uint8_features_and_scores_them(tmp_path):
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    a = _head(tmp_path, mode='ema_loo', extract_batch_size=4)
    b = _head(tmp_path, mode='ema_loo')
    out = a(_rollout(images), RewardContext())
    quantised = (images * 255).round().to(torch.uint8)
    feats = TinyExtractor(TINY, ['feat'])(quantised)[0]
    expected, metrics = b.score_features(feats)
    assert out.scores.dtype == torch.float32 and out.scores.shape == (6,)
    torch.testing.assert_close(out.scores, expected.float())
    assert set(out.metrics) == {'fd_batch', 'fd_ema', 'reward_mean', 'reward_std'}
    torch.testing.assert_close(extract_features(a._extractor, quantised, 5), feats.double())


def test_builds_from_the_registry_with_the_shipped_shapes_extractor_and_stats():
    head = checked_build(dict(type='LooFidReward', mode='ema_loo', beta_ema=0.5,
                              feature_extractor='vargo-shapes', real_stats_path=DEFAULT_STATS_PATH,
                              real_stats_prefix='c2i_train_'), REWARD_HEADS)
    assert head.distribution_level and head.feature_dim == 128
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    out = head(_rollout(images), RewardContext())
    assert torch.isfinite(out.scores).all() and out.metrics['fd_batch'] > 0


# ----------------------------------------------------------------------------------------------
# state: state_dict -> torch.save -> torch.load(weights_only=True), and a real MMEngine resume
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('covariance', ['diag', 'pca_full'])
def test_state_round_trips_through_torch_save_weights_only(tmp_path, covariance):
    kw = dict(pca_dim=4) if covariance == 'pca_full' else {}
    a = _head(tmp_path, mode='ema_loo', covariance=covariance, **kw)
    b = _head(tmp_path, mode='ema_loo', covariance=covariance, **kw)
    g = torch.Generator().manual_seed(8)
    for _ in range(2):
        a.score_features(torch.randn(8, TINY_DIM, generator=g, dtype=F64))
    torch.save(a.state_dict(), tmp_path / 'state.pt')
    b.load_state_dict(torch.load(tmp_path / 'state.pt', weights_only=True))
    x = torch.randn(8, TINY_DIM, generator=g, dtype=F64)
    ra, ma = a.score_features(x)
    rb, mb = b.score_features(x)
    assert torch.equal(ra, rb) and ma == mb
    assert torch.equal(a.state_dict()['m2'], b.state_dict()['m2'])
    assert b.state_dict()['num_updates'] == 3


def test_load_state_dict_rejects_a_different_layout(tmp_path):
    a = _head(tmp_path, mode='ema_loo')
    b = _head(tmp_path, mode='ema_loo', covariance='pca_full', pca_dim=3)
    a.score_features(torch.randn(4, TINY_DIM, dtype=F64))
    with pytest.raises(ValueError, match="covariance='diag' with d=5"):
        b.load_state_dict(a.state_dict())


def test_ema_resumes_bit_exactly_through_an_mmengine_checkpoint(tmp_path):
    from vargo.core.runner import build_runner, load_config, prepare_config
    toy = os.path.join(ROOT, 'tests', 'configs', 'toy_grpo.py')
    fid = dict(type='LooFidReward', mode='ema_loo', beta_ema=0.5, feature_extractor='vargo-shapes',
               real_stats_path=DEFAULT_STATS_PATH, real_stats_prefix='c2i_train_')

    def run(work_dir, max_iters, resume=None):
        cfg = load_config(toy, {'rewards': dict(_delete_=True, fid=fid),
                                'train_cfg.max_iters': max_iters,
                                'train_cfg.samples_per_rank': 8,
                                'default_hooks.checkpoint.interval': 1,
                                'default_hooks.image_grid.preview_conditions': 0,
                                'default_hooks.image_grid.interval': 100})
        cfg = prepare_config(cfg, config_path=toy, work_dir=str(work_dir), resume=resume)
        cfg.experiment_name = f'loo_fid_{os.path.basename(work_dir)}_{max_iters}'
        build_runner(cfg).train()

    run(tmp_path / 'full', 2)                       # saves iter_1.pth and iter_2.pth
    run(tmp_path / 'resumed', 2, resume=str(tmp_path / 'full' / 'iter_1.pth'))
    states = [torch.load(tmp_path / w / 'iter_2.pth', map_location='cpu',
                         weights_only=True)['component_states']['rewards.fid']
              for w in ('full', 'resumed')]
    assert states[0]['num_updates'] == states[1]['num_updates'] == 2
    assert torch.equal(states[0]['m1'], states[1]['m1'])
    assert torch.equal(states[0]['m2'], states[1]['m2'])
    half = torch.load(tmp_path / 'full' / 'iter_1.pth', weights_only=True)
    assert half['component_states']['rewards.fid']['num_updates'] == 1
    assert not torch.equal(half['component_states']['rewards.fid']['m1'], states[0]['m1'])


# ----------------------------------------------------------------------------------------------
# 2 processes (gloo) == 1 process
# ----------------------------------------------------------------------------------------------
_DIST_SCRIPT = r"""
import sys
import torch
import torch.distributed as dist
from vargo.components.benchmarks.shapes_features import DEFAULT_STATS_PATH
from vargo.components.metrics.frechet import extract_features
from vargo.components.rewards.loo_fid import LooFidReward

out, images_path, split = sys.argv[1:4]
dist.init_process_group('gloo')
rank = dist.get_rank()
results = {}
for mode, covariance in CASES:
    head = LooFidReward(mode=mode, beta_ema=0.5, feature_extractor='vargo-shapes',
                        real_stats_path=DEFAULT_STATS_PATH, real_stats_prefix='c2i_train_',
                        covariance=covariance, pca_dim=None if covariance == 'diag' else PCA_DIM)
    rewards, metrics = [], []
    for batch in torch.load(images_path, weights_only=True):
        mine = batch[:int(split)] if rank == 0 else batch[int(split):]   # unequal shares
        r, m = head.score_features(extract_features(head._extractor, mine))
        rewards.append(r)
        metrics.append(m)
    results[f'{mode}-{covariance}'] = {'rewards': rewards, 'metrics': metrics,
                                       'state': head.state_dict()}
torch.save(results, f'{out}.rank{rank}.pt')
dist.destroy_process_group()
"""
# the batch covariance has rank <= N - 1: keep k well below N, or tr(sqrt) of near-zero
# eigenvalues is only accurate to ~sqrt(machine eps)
_PCA_DIM = 4
_CASES = [('ema_loo', 'diag'), ('ema_loo', 'pca_full'), ('loo_batch', 'diag'),
          ('ema_scalar', 'pca_full')]


@pytest.mark.distributed
def test_two_processes_equal_one_process(tmp_path):
    g = torch.Generator().manual_seed(9)
    images = torch.rand(2, 10, 3, 32, 32, generator=g)         # 2 iterations of 10 images
    torch.save(images, tmp_path / 'images.pt')
    script = tmp_path / 'loo_fid_dist.py'
    script.write_text(f'CASES = {_CASES!r}\nPCA_DIM = {_PCA_DIM}\n' + _DIST_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         str(script), str(tmp_path / 'out'), str(tmp_path / 'images.pt'), '6'],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f'out.rank{k}.pt', weights_only=True) for k in (0, 1)]

    # the ranks ran the extractor with 1 thread: do the same here, so the comparison pins the
    # all-reduce and leave-one-out arithmetic, not float32 conv summation order (which moves the
    # features by ~1e-7 and pca_full rewards by ~1e-6 between thread counts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare_with_single_process(images, ranks)
    finally:
        torch.set_num_threads(threads)


def _compare_with_single_process(images, ranks):
    for mode, covariance in _CASES:
        single = LooFidReward(mode=mode, beta_ema=0.5, feature_extractor='vargo-shapes',
                              real_stats_path=DEFAULT_STATS_PATH, real_stats_prefix='c2i_train_',
                              covariance=covariance,
                              pca_dim=None if covariance == 'diag' else _PCA_DIM)
        two = [rk[f'{mode}-{covariance}'] for rk in ranks]
        for it in range(2):
            r, m = single.score_features(extract_features(single._extractor, images[it]))
            both = torch.cat([two[0]['rewards'][it], two[1]['rewards'][it]])
            assert both.shape == (10,)
            torch.testing.assert_close(both, r, rtol=1e-9, atol=1e-12, msg=(mode, covariance))
            for k in m:
                for rk in two:
                    assert rk['metrics'][it][k] == pytest.approx(m[k], rel=1e-9, abs=1e-12)
        for rk in two:
            for key in ('m1', 'm2'):
                torch.testing.assert_close(rk['state'][key], single.state_dict()[key],
                                           rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# errors that name the bad value and the fix
# ----------------------------------------------------------------------------------------------
def test_errors(tmp_path):
    real = _write_stats(tmp_path / 'real.npz', np.zeros(TINY_DIM), np.eye(TINY_DIM))
    base = dict(mode='ema_loo', beta_ema=0.5, feature_extractor=TINY, real_stats_path=real)
    with pytest.raises(FileNotFoundError, match='save_feature_statistics'):
        LooFidReward(**{**base, 'real_stats_path': str(tmp_path / 'missing.npz')})
    with pytest.raises(ValueError, match="mode='loo'.*ema_loo"):
        LooFidReward(**{**base, 'mode': 'loo'})
    with pytest.raises(ValueError, match=r'beta_ema=1.0 must be a float in \[0, 1\)'):
        LooFidReward(**{**base, 'beta_ema': 1.0})
    with pytest.raises(ValueError, match='needs pca_dim'):
        LooFidReward(**{**base, 'covariance': 'pca_full'})
    with pytest.raises(ValueError, match="pca_dim=3 is only used with covariance='pca_full'"):
        LooFidReward(**{**base, 'pca_dim': 3})
    diag_only = tmp_path / 'diag.npz'
    np.savez(diag_only, mu=np.zeros(TINY_DIM), sigma_diagonal=np.ones(TINY_DIM))
    with pytest.raises(ValueError, match='needs the full real covariance'):
        LooFidReward(**{**base, 'real_stats_path': str(diag_only), 'covariance': 'pca_full',
                        'pca_dim': 2})
    with pytest.raises(ValueError, match="did you mean one of the prefixes.*'c2i_eval_'"):
        LooFidReward(**{**base, 'real_stats_path': DEFAULT_STATS_PATH})
    with pytest.raises(ValueError, match='would download its weights'):
        LooFidReward(**{**base, 'feature_extractor': 'inception-v3-compat'})
    with pytest.raises(ValueError, match="'no-such-extractor' is not registered"):
        LooFidReward(**{**base, 'feature_extractor': 'no-such-extractor'})
    head = LooFidReward(**base)
    with pytest.raises(ValueError, match=r'shape \(4, 3\).*D = 5'):
        head.score_features(torch.zeros(4, 3))
    with pytest.raises(ValueError, match='at least 2 samples'):
        head.score_features(torch.zeros(1, TINY_DIM))
    short = _write_stats(tmp_path / 'init.npz', np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match='D = 3'):
        LooFidReward(**{**base, 'init_stats_path': short})


def test_statistics_files_round_trip(tmp_path):
    x = torch.randn(20, TINY_DIM, dtype=F64, generator=torch.Generator().manual_seed(10))
    save_feature_statistics(str(tmp_path / 's.npz'), x)
    s = load_feature_statistics(str(tmp_path / 's.npz'))
    torch.testing.assert_close(s.mu, x.mean(0))
    torch.testing.assert_close(s.cov, torch.from_numpy(np.cov(x.numpy().T)))
    # raw-moment format: m1, m2 = E[x], E[x^2]
    np.savez(tmp_path / 'm.npz', m1=x.mean(0).numpy(), m2=(x * x).mean(0).numpy())
    m = load_feature_statistics(str(tmp_path / 'm.npz'))
    torch.testing.assert_close(m.var, x.var(0, unbiased=False))
    assert m.cov is None


def test_docstring_examples_run():
    import doctest
    from vargo.components.rewards import loo_fid
    assert doctest.testmod(loo_fid, optionflags=doctest.ELLIPSIS).failed == 0
