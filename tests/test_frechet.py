"""vargo.components.metrics.frechet: the Frechet distance against hand-computed cases and
torch-fidelity, statistics against numpy, the .npz round trip, crafted files refused (pickled
objects in a statistics file, code in extractor weights), extraction and extractor errors."""
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from crafted_files import torch_zip
from vargo.components.metrics import frechet
from vargo.core.checkpoint import CheckpointRefused
from vargo.core.cli import UsageError

TINY = 'vargo-test-frechet-tiny'


class TinyExtractor(FeatureExtractorBase):
    """2x2-pooled uint8 images through a fixed random map: 'a' (4-d) and 'b' (3-d) features."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        g = torch.Generator().manual_seed(0)
        self.register_buffer('w', torch.randn(12, 7, generator=g))

    @staticmethod
    def get_provided_features_list():
        return ('a', 'b')

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return 'a'

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.dim() == 4
        h = F.adaptive_avg_pool2d(x.float() / 255.0, 2).flatten(1) @ self.w      # [B, 7]
        out = {'a': h[:, :4], 'b': torch.tanh(h[:, 4:])}
        return tuple(out[k] for k in self.features_list)


if TINY not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(TINY, TinyExtractor)


# ---- the distance --------------------------------------------------------------------------------
def test_frechet_distance_of_a_hand_computed_case():
    # |mu1 - mu2|^2 = 1 + 4; tr S1 + tr S2 = 5 + 13; tr (S1 S2)^(1/2) = sqrt(4) + sqrt(36) = 8
    mu1, s1 = np.zeros(2), np.diag([1.0, 4.0])
    mu2, s2 = np.array([1.0, 2.0]), np.diag([4.0, 9.0])
    assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(7.0, abs=1e-12)
    # invariant to a common rotation (non-diagonal covariances)
    c, s = np.cos(0.3), np.sin(0.3)
    q = np.array([[c, -s], [s, c]])
    assert frechet.frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T) == \
        pytest.approx(7.0, abs=1e-9)
    assert frechet.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(UsageError, match='same feature extractor and layer'):
        frechet.frechet_distance(mu1, s1, np.zeros(3), np.eye(3))


def test_fid_equals_torch_fidelity_bit_for_bit():
    # torch-fidelity's statistics and distance (the latter on float64 statistics: it would
    # subtract float32 means of float32 features in float32)
    def f64(stats):
        return {k: np.asarray(v, np.float64) for k, v in stats.items()}

    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(200, 16, generator=gen).to(dtype)
        b = (0.7 * torch.randn(200, 16, generator=gen) + 0.3).to(dtype)
        ours = frechet.frechet_distance(*frechet.gaussian_statistics(a),
                                        *frechet.gaussian_statistics(b))
        ref = fid_statistics_to_metric(f64(fid_features_to_statistics(a)),
                                       f64(fid_features_to_statistics(b)),
                                       verbose=False)[torch_fidelity.KEY_METRIC_FID]
        assert ours > 0.1 and ours == ref, (dtype, ours, ref)


# ---- statistics ----------------------------------------------------------------------------------
def test_statistics_equal_numpy():
    x = np.random.default_rng(0).normal(size=(50, 6)) * [1, 2, 3, 4, 5, 6] + 1.5
    mu, sigma = frechet.gaussian_statistics(torch.from_numpy(x))
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_array_equal(mu, x.mean(0))
    np.testing.assert_array_equal(sigma, np.cov(x, rowvar=False))
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 49, rtol=1e-12)
    # float32 features: the mean is accumulated in float32 (torch-fidelity's), returned float64
    x32 = x.astype(np.float32)
    mu32, sigma32 = frechet.gaussian_statistics(x32)
    assert mu32.dtype == np.float64
    np.testing.assert_array_equal(mu32, np.mean(x32, axis=0).astype(np.float64))
    np.testing.assert_array_equal(sigma32, np.cov(x32, rowvar=False))
    with pytest.raises(UsageError, match=r'N >= 2 .*\(1, 6\)'):
        frechet.gaussian_statistics(x[:1])


def test_statistics_file_round_trip(tmp_path):
    x = torch.randn(30, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    path = str(tmp_path / 'stats.npz')
    frechet.save_feature_statistics(path, x, extractor='tiny', feature_layer='a',
                                    source='unit test', num=np.int64(30))
    assert not [f for f in os.listdir(tmp_path) if f != 'stats.npz']      # no temporary left
    s = frechet.load_feature_statistics(path)
    mu, sigma = frechet.gaussian_statistics(x)
    assert torch.equal(s.mu, torch.from_numpy(mu)) and torch.equal(s.cov, torch.from_numpy(sigma))
    assert torch.equal(s.var, torch.from_numpy(np.diagonal(sigma).copy()))
    assert s.count == 30 and s.dim == 5
    assert s.meta == {'extractor': 'tiny', 'feature_layer': 'a', 'source': 'unit test'}
    with np.load(path, allow_pickle=False) as z:                        # plain arrays only
        assert sorted(z.keys()) == ['count', 'extractor', 'feature_layer', 'mu', 'num', 'sigma',
                                    'sigma_diagonal', 'source']
    # prefixed keys (the shipped Shapes layout) and raw moments
    np.savez(tmp_path / 'p.npz', c2i_train_mu=mu, c2i_train_sigma=sigma,
             weights_sha256=np.array('abc'))
    p = frechet.load_feature_statistics(str(tmp_path / 'p.npz'), 'c2i_train_')
    assert torch.equal(p.mu, s.mu) and p.meta == {'weights_sha256': 'abc'} and p.count is None
    np.savez(tmp_path / 'm.npz', m1=mu, m2=(x.numpy() ** 2).mean(0))
    m = frechet.load_feature_statistics(str(tmp_path / 'm.npz'))
    assert m.cov is None
    torch.testing.assert_close(m.var, x.var(0, unbiased=False))
    with pytest.raises(ValueError, match='only per-dimension variances'):
        m.numpy()
    with pytest.raises(ValueError, match="did you mean one of the prefixes.*'c2i_train_'"):
        frechet.load_feature_statistics(str(tmp_path / 'p.npz'))
    with pytest.raises(FileNotFoundError, match='save_feature_statistics'):
        frechet.load_feature_statistics(str(tmp_path / 'missing.npz'))
    with pytest.raises(ValueError, match='N >= 2'):
        frechet.save_feature_statistics(str(tmp_path / 'one.npz'), x[:1])


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize('key', ['mu', 'source'])
def test_a_statistics_file_with_a_pickled_object_is_refused(tmp_path, key):
    marker = tmp_path / 'MARKER'
    arrays = dict(mu=np.zeros(3), sigma=np.eye(3))
    arrays[key] = np.array([_Exploit(str(marker))], dtype=object)
    path = tmp_path / 'crafted.npz'
    np.savez(path, **arrays)                                      # numpy pickles object arrays
    with pytest.raises(ValueError, match=f"refused to load '{key}'.*Python objects"):
        frechet.load_feature_statistics(str(path))
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as z:                   # the payload is live
        z[key]
    assert marker.read_text() == 'pwned'


# ---- images and features -------------------------------------------------------------------------
def test_to_uint8_rounds_as_torch_fidelity():
    x = torch.tensor([0.0, 0.5 / 255, 1.49 / 255, 1.51 / 255, 1.0, 1.2, -0.1]).view(1, 1, 1, 7)
    assert frechet.to_uint8(x).flatten().tolist() == [0, 0, 1, 2, 255, 255, 0]
    u = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    assert frechet.to_uint8(u) is u
    with pytest.raises(UsageError, match='float in \\[0, 1\\] or uint8'):
        frechet.to_uint8(torch.zeros(1, 3, 2, 2, dtype=torch.int64))


def test_extract_layers_from_a_tensor_and_from_mixed_sizes():
    fe = frechet.build_extractor(TINY, layers=['a', 'b'])
    assert fe.features_list == ['a', 'b'] and not fe.training
    gen = torch.Generator().manual_seed(3)
    big, small = torch.rand(5, 3, 8, 8, generator=gen), torch.rand(4, 3, 6, 6, generator=gen)
    a, b = frechet.extract_layers(fe, big, batch_size=2)
    assert a.shape == (5, 4) and b.shape == (5, 3) and a.dtype == torch.float64
    direct = fe(frechet.to_uint8(big))
    assert torch.equal(a, direct[0].double()) and torch.equal(b, direct[1].double())
    # an iterable of single images and batches of two sizes: each size batched apart, the rows
    # in the order of the images
    items = [big[0], small[:2], big[1:], small[2:]]
    a2, _ = frechet.extract_layers(fe, items, batch_size=3)
    fb, fs = fe(frechet.to_uint8(big))[0].double(), fe(frechet.to_uint8(small))[0].double()
    assert torch.equal(a2, torch.cat([fb[:1], fs[:2], fb[1:], fs[2:]]))
    kept = frechet.extract_features(fe, big, dtype=None)
    assert kept.dtype == torch.float32 and torch.equal(kept, direct[0])
    empty = frechet.extract_layers(fe, torch.zeros(0, 3, 8, 8))
    assert [t.shape for t in empty] == [(0, 0), (0, 0)]
    with pytest.raises(UsageError, match=r'\[N, 3, H, W\] RGB, got shape \(2, 1, 8, 8\)'):
        frechet.extract_layers(fe, torch.zeros(2, 1, 8, 8))
    with pytest.raises(UsageError, match=r'RGB \[3, H, W\], got shape \(1, 8, 8\)'):
        frechet.extract_layers(fe, [torch.zeros(1, 8, 8)])


# ---- extractors ----------------------------------------------------------------------------------
def test_extractor_errors_for_a_config_and_for_the_tools(tmp_path):
    with pytest.raises(ValueError, match="feature_extractor='nope' is not registered") as e:
        frechet.check_extractor('nope')
    assert not isinstance(e.value, UsageError)
    with pytest.raises(UsageError, match="feature extractor 'nope' is not registered"):
        frechet.check_extractor('nope', cli=True)
    with pytest.raises(ValueError, match='set feature_extractor_weights_path'):
        frechet.check_extractor('inception-v3-compat')
    with pytest.raises(UsageError, match='would download.*--weights-path'):
        frechet.check_extractor('inception-v3-compat', cli=True)
    missing = str(tmp_path / 'pt_inception-2015-12-05-6726825d.pth')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        frechet.check_extractor('inception-v3-compat', missing)
    with pytest.raises(FileNotFoundError, match='mseitzer/pytorch-fid/releases'):
        frechet.check_extractor('inception-v3-compat', missing, cli=True)
    with pytest.raises(ValueError, match="feature_layer='c' is not provided"):
        frechet.build_feature_extractor(TINY, layer='c')
    with pytest.raises(UsageError, match=r"feature layers \['c'\] are not provided"):
        frechet.build_extractor(TINY, layers=['a', 'c'], cli=True)
    cls, layers = frechet.check_extractor(TINY)
    assert cls is TinyExtractor and layers == ['a']
    fe, layer = frechet.build_feature_extractor('vargo-shapes')     # registered on first use
    assert layer == 'features' and fe.features_list == ['features']


@pytest.mark.parametrize('layers', [None, ['2048', 'logits_unbiased']])
def test_extractor_weights_with_code_are_refused_before_torch_fidelity_loads_them(tmp_path,
                                                                                  layers):
    # torch-fidelity loads its weights with weights_only=False: one layer or several, the file
    # is checked first and never reaches it
    marker = tmp_path / 'MARKER'
    path = tmp_path / 'weights.pth'
    path.write_bytes(torch_zip(pickle.dumps({'w': _Exploit(str(marker))}, protocol=2)))
    for cli in (False, True):
        with pytest.raises(CheckpointRefused, match='refused to load'):
            frechet.build_extractor('inception-v3-compat', str(path), layers, cli=cli)
    assert not marker.exists()


def test_docstring_examples_run():
    import doctest
    assert doctest.testmod(frechet, optionflags=doctest.ELLIPSIS).failed == 0
