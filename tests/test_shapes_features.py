"""The shipped Shapes feature extractor: strict loading, determinism, accuracy, FID sanity,
torch-fidelity integration (offline) and the shipped real statistics."""
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

EXPECTED_KEYS = ['embed.bias', 'embed.weight', 'heads.bias', 'heads.weight',
                 'trunk.0.bias', 'trunk.0.weight', 'trunk.2.bias', 'trunk.2.weight',
                 'trunk.4.bias', 'trunk.4.weight', 'trunk.6.bias', 'trunk.6.weight']


def _images(split, task, n=N, seed=0):
    ds = ShapesImageDataset(split=split, task=task, num_samples=n, seed=seed)
    return torch.stack([ds[i]['image'] for i in range(n)])


@pytest.fixture(scope='module')
def net():
    return sf.load_feature_net()


@pytest.fixture(scope='module')
def sets():
    """Independent real sets (different seeds and splits) and altered distributions."""
    t2i_a = _images('train', 't2i', seed=11)
    return dict(
        c2i_a=_images('train', 'c2i', seed=11), c2i_b=_images('eval', 'c2i', seed=12),
        t2i_a=t2i_a, t2i_b=_images('train', 't2i', seed=12),
        t2i_blur=sf.corrupt_images(t2i_a, 'blur', torch.full((N,), 0.3)),
        t2i_blank=torch.zeros(N, 3, 32, 32),
    )


def _fid(a, b):
    return sf.frechet_distance(*sf.compute_statistics(a), *sf.compute_statistics(b))


# ---- weights -----------------------------------------------------------------------------------
def test_shipped_weights_load_strictly_with_expected_keys(net, tmp_path):
    state = load_file(sf.DEFAULT_WEIGHTS_PATH)
    assert sorted(state) == EXPECTED_KEYS == sorted(net.state_dict())
    assert state['embed.weight'].shape == (sf.FEATURE_DIM, 64 * 9)
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
        cell = torch.from_numpy(np.stack([t['cell'] for t in targets]))
        assert ((h['presence'] > 0).float() == presence).all(1).float().mean() > 0.97, task
        assert (h['count'].argmax(-1) == count).float().mean() > 0.97, task
        assert (h['cell'].argmax(-1) == cell).all(1).float().mean() > 0.95, task
        assert (h['corruption'].argmax(-1) == 0).float().mean() > 0.95, task


# ---- FID sanity --------------------------------------------------------------------------------
def test_fid_small_between_real_sets_and_large_for_other_distributions(sets):
    same_c2i = _fid(sets['c2i_a'], sets['c2i_b'])
    same_t2i = _fid(sets['t2i_a'], sets['t2i_b'])
    baseline = max(same_c2i, same_t2i)
    others = {
        'single objects vs t2i layouts': _fid(sets['c2i_a'], sets['t2i_b']),
        'blurred (sigma 0.66 px)': _fid(sets['t2i_blur'], sets['t2i_b']),
        'blank': _fid(sets['t2i_blank'], sets['t2i_b']),
    }
    assert baseline < 0.05, (same_c2i, same_t2i)
    for name, value in others.items():
        assert value > 10 * baseline, (name, value, baseline)


# ---- torch-fidelity ----------------------------------------------------------------------------
def test_torch_fidelity_calculate_metrics_offline(sets, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    common = dict(feature_extractor=sf.EXTRACTOR_NAME, cuda=False, verbose=False,
                  save_cpu_ram=True, cache=False, kid_subset_size=250, kid_subsets=20,
                  batch_size=250, fid=True, kid=True, prc=True)
    real = torch_fidelity.calculate_metrics(input1=sf.UInt8ImageDataset(sets['t2i_a']),
                                            input2=sf.UInt8ImageDataset(sets['t2i_b']),
                                            **common)
    blank = torch_fidelity.calculate_metrics(input1=sf.UInt8ImageDataset(sets['t2i_blank']),
                                             input2=sf.UInt8ImageDataset(sets['t2i_b']),
                                             **common)
    fid = real[torch_fidelity.KEY_METRIC_FID]
    assert fid == pytest.approx(_fid(sets['t2i_a'], sets['t2i_b']), rel=1e-4, abs=1e-6)
    assert abs(real[torch_fidelity.KEY_METRIC_KID_MEAN]) < 0.01 * \
        blank[torch_fidelity.KEY_METRIC_KID_MEAN]
    assert real[torch_fidelity.KEY_METRIC_PRECISION] > 0.8
    assert real[torch_fidelity.KEY_METRIC_RECALL] > 0.8
    assert blank[torch_fidelity.KEY_METRIC_PRECISION] == 0.0
    assert blank[torch_fidelity.KEY_METRIC_FID] > 100 * fid


def test_shapes_fidelity_against_shipped_references(sets):
    out = sf.shapes_fidelity(sets['c2i_b'], reference='eval', task='c2i',
                             metrics=('fid', 'kid', 'prc', 'isc'))
    assert set(out) >= {'fid', 'kid', 'kid_std', 'precision', 'recall', 'f_score', 'isc'}
    assert out['fid'] < 0.05 and out['precision'] > 0.8 and out['recall'] > 0.8
    assert out['isc'] > 16                       # 18 equally likely, confidently classified
    assert out['num_real'] == N and out['num_real_fid'] == sf.REFERENCE_NUM_SAMPLES
    blur = sf.shapes_fidelity(sets['t2i_blur'], reference='train', task='t2i',
                              metrics=('fid',))
    assert blur['fid'] > 10 * out['fid']
    # tensor reference: every metric from torch-fidelity on both image sets
    vs_tensor = sf.shapes_fidelity(sets['t2i_a'], reference=sets['t2i_b'],
                                   metrics=('fid', 'prc'))
    assert vs_tensor['fid'] == pytest.approx(_fid(sets['t2i_a'], sets['t2i_b']), rel=1e-4)


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


def test_statistics_file_reference(sets, tmp_path):
    path = str(tmp_path / 'stats.npz')
    mu, sigma = sf.compute_statistics(sets['t2i_b'])
    np.savez(path, mu=mu, sigma=sigma)
    out = sf.shapes_fidelity(sets['t2i_a'], reference=path, metrics=('fid',))
    assert out['fid'] == pytest.approx(_fid(sets['t2i_a'], sets['t2i_b']), rel=1e-6)
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
