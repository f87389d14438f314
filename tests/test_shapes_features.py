"""The shipped Shapes feature extractor: strict loading, determinism, accuracy, FID sanity,
torch-fidelity integration (offline) and the shipped real statistics."""
import doctest
import os
import tomllib

import numpy as np
import pytest
import torch
import torch_fidelity
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import ROOT
from vargo.components.benchmarks import shapes_features as sf
from vargo.components.datasets.shapes import ShapesImageDataset, rasterize
from vargo.core.checkpoint import StateDictMismatch

N = 500

EXPECTED_KEYS = sorted(
    ['embed.bias', 'embed.weight', 'heads.bias', 'heads.weight']
    + [f'trunk.{conv}.weight' for conv in (0, 3, 6, 9)]
    + [f'trunk.{bn}.{k}' for bn in (1, 4, 7, 10)
       for k in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')])


def _images(split, task, n=N, seed=0):
    ds = ShapesImageDataset(split=split, task=task, num_samples=n, seed=seed)
    return torch.stack([ds[i]['image'] for i in range(n)])


@pytest.fixture(scope='module')
def net():
    return sf.load_feature_net()


@pytest.fixture(scope='module')
def sets():
    """Independent real sets of one distribution (a, b) and altered distributions of a."""
    t2i_a = _images('train', 't2i', seed=11)
    return dict(
        c2i_a=_images('train', 'c2i', seed=11), c2i_b=_images('eval', 'c2i', seed=12),
        t2i_a=t2i_a, t2i_b=_images('train', 't2i', seed=12),
        t2i_blur=sf.corrupt_images(t2i_a, 'blur', torch.full((N,), 0.5)),   # sigma 0.9 px
        t2i_colour_swap=t2i_a[:, [1, 2, 0]],      # palette permuted: red -> blue, ...
        t2i_blank=torch.zeros(N, 3, 32, 32),
    )


@pytest.fixture(scope='module')
def fid(sets):
    """``fid(name_a, name_b)`` from features extracted once per set."""
    stats = {k: sf.compute_statistics(v) for k, v in sets.items()}
    return lambda a, b: sf.frechet_distance(*stats[a], *stats[b])


# ---- weights -----------------------------------------------------------------------------------
def test_shipped_weights_load_strictly_with_expected_keys(net, tmp_path):
    state = load_file(sf.DEFAULT_WEIGHTS_PATH)
    assert sorted(state) == EXPECTED_KEYS == sorted(net.state_dict())
    assert state['embed.weight'].shape == (sf.FEATURE_DIM, 2 * 48 * 9)
    with safe_open(sf.DEFAULT_WEIGHTS_PATH, framework='pt') as f:
        assert f.metadata()['format'] == sf.WEIGHTS_FORMAT
    assert all(not p.requires_grad for p in net.parameters()) and not net.training

    del state['heads.bias']
    state['head.bias'] = torch.zeros(3)
    bad = str(tmp_path / 'bad.safetensors')
    save_file(state, bad, metadata={'format': sf.WEIGHTS_FORMAT})
    with pytest.raises(StateDictMismatch, match=r'missing keys \(1\): heads\.bias'):
        sf.load_feature_net(bad)
    save_file(load_file(sf.DEFAULT_WEIGHTS_PATH), bad)            # no format metadata
    with pytest.raises(ValueError, match='not a Shapes feature-extractor checkpoint'):
        sf.load_feature_net(bad)
    with pytest.raises(FileNotFoundError, match='tools/train_shapes_features.py'):
        sf.load_feature_net(str(tmp_path / 'missing.safetensors'))


def test_a_weights_file_rewritten_in_place_is_reloaded_not_served_from_cache(tmp_path):
    """Two same-size files written to one path with one mtime (a rewrite within the file system's
    timestamp granularity, as on CI): the second load sees the second file's weights."""
    state = load_file(sf.DEFAULT_WEIGHTS_PATH)
    path = str(tmp_path / 'w.safetensors')
    save_file(state, path, metadata={'format': sf.WEIGHTS_FORMAT})
    first = sf.load_feature_net(path)
    stamp = os.stat(path).st_mtime_ns
    size = os.path.getsize(path)
    state['heads.bias'] = state['heads.bias'] + 1.0
    save_file(state, path, metadata={'format': sf.WEIGHTS_FORMAT})
    os.utime(path, ns=(stamp, stamp))
    assert os.path.getsize(path) == size and os.stat(path).st_mtime_ns == stamp
    second = sf.load_feature_net(path)
    torch.testing.assert_close(second.heads.bias, first.heads.bias + 1.0)
    torch.testing.assert_close(sf.load_feature_net(path).heads.bias, second.heads.bias)


def test_shipped_files_are_small_and_declared_as_package_data():
    sizes = [os.path.getsize(p) for p in (sf.DEFAULT_WEIGHTS_PATH, sf.DEFAULT_STATS_PATH)]
    assert sum(sizes) < 1.5e6
    assert os.path.isfile(os.path.join(sf.WEIGHTS_DIR, 'shapes_features.md'))
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        data = tomllib.load(f)['tool']['setuptools']['package-data']
    assert data['vargo.components.benchmarks'] == ['weights/*']


# ---- features ----------------------------------------------------------------------------------
def test_features_are_deterministic_and_batch_independent(sets):
    x = sets['t2i_a'][:64]
    f1, f2 = sf.extract_features(x), sf.extract_features(x)
    assert f1.shape == (64, sf.FEATURE_DIM) and f1.dtype == torch.float32
    assert torch.equal(f1, f2)
    single = torch.cat([sf.extract_features(x[i:i + 1]) for i in range(8)])
    torch.testing.assert_close(single, f1[:8], atol=1e-5, rtol=1e-5)
    assert (f1 >= 0).all() and f1.std(0).gt(0).sum() >= sf.FEATURE_DIM // 2


def test_extractor_takes_uint8_and_resizes():
    fe = sf.ShapesFeatureExtractor(sf.EXTRACTOR_NAME, ['presence_logits', 'features'])
    x = (_images('eval', 'c2i', n=16, seed=3) * 255).to(torch.uint8)
    logits, feats = fe(x)
    assert logits.shape == (16, 18) and feats.shape == (16, sf.FEATURE_DIM)
    big = x.repeat_interleave(2, -1).repeat_interleave(2, -2)    # 64 x 64, each pixel 2 x 2
    torch.testing.assert_close(fe(big)[1], feats, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match='uint8'):
        fe(x.float())
    assert sf.ShapesFeatureExtractor.get_default_feature_layer_for_metric('fid') == 'features'
    assert sf.ShapesFeatureExtractor.get_default_feature_layer_for_metric('isc') == \
        'presence_logits'
    assert torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY[sf.EXTRACTOR_NAME] is \
        sf.ShapesFeatureExtractor
    sf.register_shapes_extractor()                                 # idempotent


def test_registration_refuses_to_replace_an_unrelated_extractor(monkeypatch):
    registry = torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY
    other = type('OtherExtractor', (torch_fidelity.FeatureExtractorBase,), {})
    monkeypatch.setitem(registry, sf.EXTRACTOR_NAME, other)
    with pytest.raises(ValueError, match='already registered to .*OtherExtractor'):
        sf.register_shapes_extractor()


def test_module_examples_run():
    assert doctest.testmod(sf, optionflags=doctest.ELLIPSIS).failed == 0


def test_item_placements_reproduce_dataset_images():
    for task in ('c2i', 't2i'):
        ds = ShapesImageDataset(split='eval', task=task, num_samples=40, seed=5)
        for i in range(40):
            img = torch.from_numpy(rasterize(sf.item_placements(ds, i)).transpose(2, 0, 1))
            assert torch.equal(img, ds[i]['image'])


def test_attribute_heads_are_accurate_on_fresh_images(net):
    for task in ('c2i', 't2i'):
        ds = ShapesImageDataset(split='eval', task=task, num_samples=N, seed=4242)
        images = torch.stack([ds[i]['image'] for i in range(N)])
        targets = [sf.attribute_targets(sf.item_placements(ds, i)) for i in range(N)]
        with torch.no_grad():
            _, h = net(images)
        presence = torch.from_numpy(np.stack([t['presence'] for t in targets]))
        count = torch.tensor([int(t['count']) for t in targets])
        colour = torch.from_numpy(np.stack([t['cell_colour'] for t in targets]))
        shape = torch.from_numpy(np.stack([t['cell_shape'] for t in targets]))
        assert ((h['presence'] > 0).float() == presence).all(1).float().mean() > 0.97, task
        assert (h['count'].argmax(-1) == count).float().mean() > 0.97, task
        cell = (h['cell_colour'].argmax(-1) == colour) & (h['cell_shape'].argmax(-1) == shape)
        assert cell.all(1).float().mean() > 0.95, task
        assert (h['corruption'].argmax(-1) == 0).float().mean() > 0.95, task


# ---- FID sanity --------------------------------------------------------------------------------
def test_fid_small_between_real_sets_and_large_for_other_distributions(fid):
    same = max(fid('c2i_a', 'c2i_b'), fid('t2i_a', 't2i_b'))
    others = {
        'single objects vs t2i layouts': fid('c2i_a', 't2i_b'),
        'blurred': fid('t2i_blur', 't2i_b'),
        'colours permuted': fid('t2i_colour_swap', 't2i_b'),
        'blank': fid('t2i_blank', 't2i_b'),
    }
    for name, value in others.items():
        assert value > 5 * same, (name, value, same)
    assert fid('t2i_a', 't2i_a') == pytest.approx(0, abs=1e-6)


# ---- torch-fidelity ----------------------------------------------------------------------------
def test_torch_fidelity_calculate_metrics_offline(sets, fid, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    common = dict(feature_extractor=sf.EXTRACTOR_NAME, cuda=False, verbose=False,
                  save_cpu_ram=True, cache=False, kid_subset_size=250, kid_subsets=20,
                  batch_size=N, fid=True, kid=True, prc=True)
    res = {name: torch_fidelity.calculate_metrics(input1=sf.UInt8ImageDataset(sets[name]),
                                                  input2=sf.UInt8ImageDataset(sets['t2i_b']),
                                                  **common)
           for name in ('t2i_a', 't2i_blank')}
    real, blank = res['t2i_a'], res['t2i_blank']
    assert real[torch_fidelity.KEY_METRIC_FID] == pytest.approx(fid('t2i_a', 't2i_b'), rel=1e-4)
    assert blank[torch_fidelity.KEY_METRIC_FID] == pytest.approx(fid('t2i_blank', 't2i_b'),
                                                                 rel=1e-4)
    assert abs(real[torch_fidelity.KEY_METRIC_KID_MEAN]) < \
        0.01 * blank[torch_fidelity.KEY_METRIC_KID_MEAN]
    assert real[torch_fidelity.KEY_METRIC_PRECISION] > 0.85
    assert real[torch_fidelity.KEY_METRIC_RECALL] > 0.85
    assert blank[torch_fidelity.KEY_METRIC_PRECISION] == 0.0
    assert blank[torch_fidelity.KEY_METRIC_RECALL] == 0.0


def test_shapes_fidelity_against_shipped_references(sets, fid):
    out = sf.shapes_fidelity(sets['c2i_b'], reference='eval', task='c2i',
                             metrics=('fid', 'kid', 'prc', 'isc'))
    assert set(out) >= {'fid', 'kid', 'kid_std', 'precision', 'recall', 'f_score', 'isc'}
    assert out['num_real'] == N and out['num_real_fid'] == sf.REFERENCE_NUM_SAMPLES
    assert out['precision'] > 0.85 and out['recall'] > 0.85
    assert out['isc'] > 12                      # at most 18: equally likely single objects
    blurred = sf.shapes_fidelity(sets['t2i_blur'], reference='train', task='t2i',
                                 metrics=('fid', 'prc'))
    real = sf.shapes_fidelity(sets['t2i_a'], reference='train', task='t2i',
                              metrics=('fid', 'prc'))
    assert real['fid'] < 0.1 * blurred['fid'] and out['fid'] < 0.1 * blurred['fid']
    assert real['precision'] > blurred['precision'] + 0.2
    # held-out compositions: the t2i eval reference is another distribution
    assert sf.shapes_fidelity(sets['t2i_a'], reference='eval', task='t2i',
                              metrics=('fid',))['fid'] > 5 * real['fid']
    # a tensor reference: torch-fidelity computes every metric on both image sets
    vs_tensor = sf.shapes_fidelity(sets['t2i_a'], reference=sets['t2i_b'], metrics=('fid',))
    assert vs_tensor['fid'] == pytest.approx(fid('t2i_a', 't2i_b'), rel=1e-4)
    assert vs_tensor['num_real'] == N


def test_shipped_statistics_match_the_shipped_weights():
    images = sf.reference_images('c2i', 'eval')                    # all 10,000
    mu, sigma = sf.compute_statistics(images)
    mu0, sigma0 = sf.load_reference_statistics('c2i', 'eval')
    assert mu0.shape == (sf.FEATURE_DIM,) and sigma0.shape == (sf.FEATURE_DIM,) * 2
    np.testing.assert_allclose(mu, mu0, atol=1e-5)
    np.testing.assert_allclose(sigma, sigma0, atol=1e-5)
    with np.load(sf.DEFAULT_STATS_PATH) as z:
        assert str(z['weights_sha256']) == sf.weights_sha256()
        assert int(z['num_samples']) == sf.REFERENCE_NUM_SAMPLES


def test_statistics_file_reference(sets, fid, tmp_path):
    path = str(tmp_path / 'stats.npz')
    mu, sigma = sf.compute_statistics(sets['t2i_b'])
    np.savez(path, mu=mu, sigma=sigma)
    out = sf.shapes_fidelity(sets['t2i_a'], reference=path, metrics=('fid',))
    assert out['fid'] == pytest.approx(fid('t2i_a', 't2i_b'), rel=1e-6)
    with pytest.raises(ValueError, match='supports only'):
        sf.shapes_fidelity(sets['t2i_a'], reference=path, metrics=('fid', 'kid'))


def test_errors_name_the_fix(sets):
    x = sets['c2i_a'][:20]
    with pytest.raises(ValueError, match="needs task='c2i' or 't2i'"):
        sf.shapes_fidelity(x, reference='eval')
    with pytest.raises(ValueError, match="'fidd'"):
        sf.shapes_fidelity(x, reference='eval', task='c2i', metrics=('fidd',))
    with pytest.raises(ValueError, match=r'\(x \+ 1\) / 2'):
        sf.shapes_fidelity(x * 2 - 1, reference='eval', task='c2i', metrics=('fid',))
    with pytest.raises(FileNotFoundError, match='neither a split name'):
        sf.shapes_fidelity(x, reference='evaluation', task='c2i', metrics=('fid',))
    with pytest.raises(ValueError, match="task='c22' is not one of"):
        sf.reference_images('c22', 'eval', 10)
