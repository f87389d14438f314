"""tools/eval.py as a general evaluator and tools/fid_stats.py (issue 4 item 7).

* statistics written by ``tools/fid_stats.py`` (CLI, the shipped 'vargo-shapes' extractor):
  FID of the very images behind them is 0, of another draw of the same distribution small, of a
  different distribution (t2i layouts against single objects) large;
* our float64 FID from statistics (``vargo.components.metrics.frechet``) equals torch-fidelity's,
  on identical features and end to end
  (``torch_fidelity.calculate_metrics`` with a tiny random extractor registered here: FID, KID,
  precision/recall);
* IS with an extractor without class logits is an error naming it;
* ``tools/eval.py`` with ``eval_cfg.fidelity.reference_stats``, ``eval_cfg.metric_heads`` (a tiny
  random CLIP) and ``--cfg-scales 1 1.5``: both result keys, the head's ``clip/mean``, FID, IS,
  and the protocol (both scales, the statistics file's sha256) in the JSON and the printout;
* missing extractor weights, statistics and metric-head files: exit code 2 before sampling, each
  file named with where it is published.
"""
import hashlib
import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, run_python

_spec = importlib.util.spec_from_file_location('vargo_tools_eval',
                                               os.path.join(ROOT, 'tools', 'eval.py'))
eval_tool = importlib.util.module_from_spec(_spec)   # tools/eval.py
_spec.loader.exec_module(eval_tool)
fid_stats = sys.modules['fid_stats']                 # tools/fid_stats.py, as eval.py imports it

from torch_fidelity.feature_extractor_base import FeatureExtractorBase  # noqa: E402
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY  # noqa: E402

from vargo.components.benchmarks.shapes_features import UInt8ImageDataset  # noqa: E402
from vargo.components.datasets.shapes import ShapesImageDataset  # noqa: E402

SHAPES_CONFIG = os.path.join(ROOT, 'configs', 'grpo', 'llamagen_grpo_shapes.py')
TINY_VIT = dict(embed_dim=16,
                vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
TINY_NAME = 'vargo-test-tiny-random'


class TinyRandomExtractor(FeatureExtractorBase):
    """A fixed random projection of 8 x 8 average-pooled images: 24-d 'feat' (no logits)."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        gen = torch.Generator().manual_seed(0)
        self.register_buffer('w', torch.randn(3 * 8 * 8, 24, generator=gen) / 8)

    @staticmethod
    def get_provided_features_list():
        return ('feat',)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return 'feat'

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 8).flatten(1)
        return (torch.tanh(x @ self.w),)


if TINY_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    FEATURE_EXTRACTORS_REGISTRY[TINY_NAME] = TinyRandomExtractor


def _run(*args, check=True, timeout=600):
    return run_python(*args, check=check, timeout=timeout, env={'OMP_NUM_THREADS': '1'})


def _images(task, n, seed, split='train'):
    ds = ShapesImageDataset(split=split, task=task, num_samples=n, seed=seed)
    return torch.stack([ds[i]['image'] for i in range(n)])


@pytest.fixture(scope='module')
def real_stats(tmp_path_factory):
    """Statistics of 400 c2i 'train' images (seed 3), written by the fid_stats CLI."""
    d = tmp_path_factory.mktemp('stats')
    (d / 'real.py').write_text("dataset = dict(type='ShapesImageDataset', split='train', "
                               "task='c2i', num_samples=400, seed=3)\n")
    out = d / 'real.npz'
    proc = _run(os.path.join('tools', 'fid_stats.py'), 'images', str(d / 'real.py'),
                '--extractor', 'vargo-shapes', '--out', str(out), '--quiet')
    assert 'wrote' in proc.stdout
    return out


def test_fid_stats_file_and_fid_against_it(real_stats):
    from vargo.components.metrics.frechet import load_feature_statistics
    with np.load(real_stats) as z:
        assert int(z['num']) == 400 and str(z['extractor']) == 'vargo-shapes'
        assert z['mu'].shape == (128,) and z['sigma'].shape == (128, 128)
        assert str(z['feature_layer']) == 'features'
    assert load_feature_statistics(str(real_stats)).cov is not None     # LooFidReward reads it
    fid = eval_tool.Fidelity(dict(extractor='vargo-shapes', reference_stats=str(real_stats)),
                             ['train']).prepare()
    same = fid(_images('c2i', 400, 3), 'train')
    other = fid(_images('c2i', 400, 11), 'train')
    layouts = fid(_images('t2i', 400, 3), 'train')
    assert same['num_gen'] == 400 and same['num_real_fid'] == 400
    assert abs(same['fid']) < 1e-6, same                    # the images behind the statistics
    # another draw: only the small-sample bias (model card: ~0.5-0.8 for 500 vs 500)
    assert 1e-3 < other['fid'] < 2.0, other
    assert layouts['fid'] > 5.0 and layouts['fid'] > 5 * other['fid'], (layouts, other)


def test_stats_fid_equals_torch_fidelity_on_identical_features():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    import torch_fidelity
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 32, generator=gen, dtype=torch.float64)
    b = 0.8 * torch.randn(300, 32, generator=gen, dtype=torch.float64) @ \
        (torch.eye(32, dtype=torch.float64) + 0.3 * torch.rand(32, 32, generator=gen,
                                                                dtype=torch.float64)) + 0.2
    from vargo.components.metrics.frechet import frechet_distance, gaussian_statistics
    ours = frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))
    ref = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b),
                                   verbose=False)[torch_fidelity.KEY_METRIC_FID]
    assert ours > 1 and abs(ours - ref) < 1e-9 * ref, (ours, ref)


def test_fid_kid_prc_equal_torch_fidelity_end_to_end_with_a_custom_extractor():
    import torch_fidelity
    gen_images, real_cfg = _images('t2i', 200, 5), dict(type='ShapesImageDataset', split='train',
                                                        task='c2i', num_samples=150, seed=1)
    fid = eval_tool.Fidelity(dict(extractor=TINY_NAME, reference_images=real_cfg),
                             ['train'])
    assert fid.metrics == ('fid', 'kid', 'prc')
    ours = fid.prepare()(gen_images, 'train')
    real = _images('c2i', 150, 1)
    ref = torch_fidelity.calculate_metrics(
        input1=UInt8ImageDataset(gen_images), input2=UInt8ImageDataset(real),
        feature_extractor=TINY_NAME, fid=True, kid=True, prc=True, kid_subset_size=150,
        kid_subsets=100, cuda=False, cache=False, verbose=False, save_cpu_ram=True)
    assert ours['num_real'] == 150 and ours['fid'] > 0.01
    assert math.isclose(ours['fid'], ref[torch_fidelity.KEY_METRIC_FID], rel_tol=1e-4)
    assert math.isclose(ours['kid'], ref[torch_fidelity.KEY_METRIC_KID_MEAN], rel_tol=1e-4,
                        abs_tol=1e-7)
    assert ours['precision'] == pytest.approx(ref[torch_fidelity.KEY_METRIC_PRECISION])
    assert ours['recall'] == pytest.approx(ref[torch_fidelity.KEY_METRIC_RECALL])


def test_isc_needs_class_logits_and_kid_needs_images(real_stats):
    with pytest.raises(fid_stats.UsageError, match=TINY_NAME):
        eval_tool.Fidelity(dict(extractor=TINY_NAME, reference_stats=str(real_stats),
                                metrics=('fid', 'isc')), ['train'])
    with pytest.raises(fid_stats.UsageError, match='reference_images'):
        eval_tool.Fidelity(dict(extractor='vargo-shapes', reference_stats=str(real_stats),
                                metrics=('fid', 'kid')), ['train'])
    with pytest.raises(fid_stats.UsageError, match='would download'):
        eval_tool.Fidelity(dict(extractor='inception-v3-compat',
                                reference_stats=str(real_stats)), ['train'])


def _write_config(path, fidelity, metric_heads):
    path.write_text(
        f'_base_ = [{SHAPES_CONFIG!r}]\n'
        f'eval_cfg = dict(max_conditions=4, samples_per_condition=4,\n'
        f'                fidelity=dict(_delete_=True, **{fidelity!r}),\n'
        f'                metric_heads={metric_heads!r})\n')
    return path


def test_eval_metric_heads_and_several_cfg_scales(tmp_path, real_stats):
    cfg = _write_config(
        tmp_path / 'cfg.py',
        dict(extractor='vargo-shapes', reference_stats=str(real_stats), metrics=('fid', 'isc')),
        dict(clip=dict(type='ClipScoreReward', arch=TINY_VIT, random_init=True,
                       class_names='shapes')))
    proc = _run(os.path.join('tools', 'eval.py'), str(cfg), '--cfg-scales', '1', '1.5',
                '--out', str(tmp_path / 'out'))
    record = json.loads((tmp_path / 'out' / 'eval.json').read_text())
    assert record['cfg_scales'] == [1.0, 1.5]
    assert sorted(record['results']) == ['train@cfg1', 'train@cfg1.5']
    for key, scale in (('train@cfg1', 1.0), ('train@cfg1.5', 1.5)):
        r = record['results'][key]
        assert r['cfg_scale'] == scale and r['num_samples'] == 16
        assert math.isfinite(r['clip/mean']) and 'shapes/strict' in r
        assert 0 < r['fidelity/fid'] < 100 and 1 <= r['fidelity/isc'] <= 18
        assert r['fidelity/num_real_fid'] == 400
    # the two scales sample differently from the same noise
    assert record['results']['train@cfg1']['fidelity/fid'] != \
        record['results']['train@cfg1.5']['fidelity/fid']
    assert 'train@cfg1.5' in proc.stdout and 'clip/mean' in proc.stdout
    # the protocol: both scales, the statistics file with its sha256, the extra head
    protocol = record['protocol']
    assert protocol['sampler']['cfg_scale'] == [1.0, 1.5]
    stats = protocol['fidelity']['references']['train']['fid_statistics']
    assert stats['path'] == str(real_stats)
    assert stats['sha256'] == hashlib.sha256(real_stats.read_bytes()).hexdigest()
    assert protocol['metric_heads']['clip']['type'] == 'ClipScoreReward'
    assert protocol['fidelity']['metrics'] == ['fid', 'isc']
    assert stats['sha256'] in proc.stdout.split('evaluation protocol:')[1]
    assert (tmp_path / 'out' / 'grid_train_cfg1.5.png').stat().st_size > 0


def test_missing_weights_stats_and_head_files_fail_before_sampling(tmp_path):
    weights = tmp_path / 'inception' / 'pt_inception-2015-12-05-6726825d.pth'
    stats = tmp_path / 'fid_stats' / 'imagenet_train_inception.npz'
    hps = tmp_path / 'hps' / 'HPS_v2.1_compressed.pt'
    cfg = _write_config(
        tmp_path / 'cfg.py',
        dict(extractor='inception-v3-compat', weights_path=str(weights),
             reference_stats=str(stats), metrics=('fid', 'isc')),
        dict(hps=dict(type='HPSv2Reward', checkpoint=str(hps), class_names='shapes')))
    proc = _run(os.path.join('tools', 'eval.py'), str(cfg), '--out', str(tmp_path / 'out'),
                check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert str(weights) in err and 'mseitzer/pytorch-fid/releases' in err
    assert str(stats) in err and 'tools/fid_stats.py' in err
    assert str(hps) in err and 'huggingface.co/xswu/HPSv2' in err
    assert 'sampling' not in err and not (tmp_path / 'out').exists()
    # fid_stats.py: the same missing weights file, before any image is read
    proc = _run(os.path.join('tools', 'fid_stats.py'), 'images', str(tmp_path),
                '--extractor', 'inception-v3-compat', '--weights-path', str(weights),
                '--out', str(tmp_path / 'x.npz'), check=False)
    assert proc.returncode == 2 and str(weights) in proc.stderr
    assert 'toshas/torch-fidelity' in proc.stderr or 'pytorch-fid' in proc.stderr
