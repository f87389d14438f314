"""PickScore and ImageReward heads in the tools: metric heads of tools/eval.py, and their startup
time and per-image cost in tools/benchmark.py (tiny weights, offline)."""
from __future__ import annotations

import math

import pytest
import torch

import reward_parity_common as C
from conftest import load_tool
from preference_files import (benchmark_reward_heads, rollout, write_image_reward_files,
                              write_pickscore_dir)

NAMES = ['red circle', 'blue square', 'green triangle', 'yellow star', 'cat', 'dog', 'house',
         'tree', 'car', 'boat']


@pytest.fixture(scope='module')
def heads_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp('heads')
    pick = write_pickscore_dir(str(root / 'PickScore_v1'))
    ir = write_image_reward_files(str(root / 'ImageReward'))
    return dict(pickscore=dict(type='PickScoreReward', checkpoint=pick, class_names=NAMES),
                imagereward=dict(type='ImageRewardReward', checkpoint=ir, vit=C.IR_VIT,
                                 class_names=NAMES))


def test_usable_as_eval_metric_heads(heads_cfg, tmp_path):
    from mmengine.config import ConfigDict
    tool = load_tool('eval')
    eval_cfg = ConfigDict(metric_heads=heads_cfg)
    assert tool.check_metric_heads(eval_cfg, reward_names=('jpeg',)) == []
    heads = tool.build_metric_heads(heads_cfg)
    images = torch.rand(4, 3, 32, 32)
    metrics = tool.score_heads(heads, rollout(images, class_ids=torch.tensor([0, 1, 2, 9])), None)
    assert set(metrics) == {'pickscore/mean', 'imagereward/mean'}
    assert all(math.isfinite(v) for v in metrics.values())
    # a missing file is reported with where it is published, before anything is built
    missing = dict(heads_cfg, pickscore=dict(heads_cfg['pickscore'],
                                             checkpoint=str(tmp_path / 'PickScore_v1')))
    [(key, path, source)] = tool.check_metric_heads(ConfigDict(metric_heads=missing), ())
    assert key == 'eval_cfg.metric_heads.pickscore.checkpoint'
    assert 'huggingface.co/yuvalkirstain/PickScore_v1' in source


def test_benchmark_reports_startup_and_per_image_cost(heads_cfg, tmp_path, capsys):
    res = benchmark_reward_heads(str(tmp_path), heads_cfg, batch=4, repeat=2)
    printed = capsys.readouterr().out
    assert list(res) == ['jpeg', 'pickscore', 'imagereward']
    want = {'jpeg': ('reward', 'JpegCompressibilityReward'),
            'pickscore': ('metric', 'PickScoreReward'),
            'imagereward': ('metric', 'ImageRewardReward')}
    for name, h in res.items():
        assert (h['kind'], h['type']) == want[name]
        assert h['samples'] == 4 and h['finite_scores'] == 4
        assert h['startup_s'] > 0 and h['startup_peak_above_start_mb'] >= 0
        assert 0 < h['ms_per_image']['min'] <= h['ms_per_image']['median']
        assert h['ms_per_image']['median'] == pytest.approx(1000 * h['time_s']['median'] / 4)
        assert h['image_size'] == [32, 32]                       # the tiny LlamaGen's images
        assert f'head {name} ({h["type"]}): startup' in printed
    assert printed.count('per image (batch 4)') == 3
