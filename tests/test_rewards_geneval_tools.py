"""GenEval in the tools: tools/eval.py runs GenEval's protocol (every prompt of the metadata file,
4 samples, seed 42) on a small random Janus and prints GenEval's summary table; as an eval
metric head; tools/benchmark.py --reward-heads times it (tiny random weights, offline)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import ROOT, load_tool
from geneval_files import METADATA, write_clip, write_detector_dir, write_metadata

TINY_CFG = os.path.join(ROOT, 'tests', 'configs', 'geneval_tiny.py')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('geneval_tools')
    det = str(root / 'mask2former-swin-small-coco-instance')
    write_detector_dir(det)
    return dict(root=root, detector=det,
                clip=write_clip(str(root / 'open_clip_model.safetensors')),
                metadata=write_metadata(str(root / 'evaluation_metadata.jsonl'), METADATA[:3]))


def _config(files, path) -> str:
    m = files['metadata']
    path.write_text(
        f'_base_ = [{TINY_CFG!r}]\n'
        f'rewards = dict(geneval=dict(metadata_file={m!r}, detector_dir={files["detector"]!r}, '
        f'clip_checkpoint={files["clip"]!r}))\n'
        f'train_dataloader = dict(dataset=dict(path={m!r}))\n'
        f'eval_cfg = dict(splits=dict(geneval=dict(path={m!r})))\n')
    return str(path)


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_eval_runs_the_protocol_and_prints_the_summary(files, tmp_path, capsys):
    cfg = _config(files, tmp_path / 'geneval_cfg.py')
    out = tmp_path / 'eval'
    assert load_tool('eval').main([cfg, '--out', str(out), '--batch-conditions', '3']) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / 'eval.json').read_text())
    assert record['seed'] == 42 and record['samples_per_condition'] == 4
    assert record['protocol']['sampling']['seed'] == 42
    assert record['protocol']['scored_heads'] == {'geneval': 'GenEvalReward'}
    res = record['results']['geneval']
    assert res['num_samples'] == 12 and res['geneval/num_images'] == 12
    tags = ['single_object', 'two_object', 'counting']
    assert all(res[f'geneval/{t}/images'] == 4 for t in tags)
    want = sum(res[f'geneval/{t}'] for t in tags) / 3
    assert res['geneval/overall'] == pytest.approx(want)
    assert res['geneval/mean'] == pytest.approx(res['geneval/correct_images'])
    assert 'geneval on geneval summary' in printed and 'Task breakdown' in printed
    for t in tags:
        assert f'{t:<16} = {res[f"geneval/{t}"]:.2%} (' in printed
    assert f'Overall score (avg. over tasks): {res["geneval/overall"]:.5f}' in printed
    rows = [json.loads(ln) for ln in (out / 'records_geneval_geneval.jsonl').read_text()
            .splitlines()]
    assert [r['prompt'] for r in rows] == [m['prompt'] for m in METADATA[:3] for _ in range(4)]
    assert {'tag', 'correct', 'reason', 'details'} <= set(rows[0])


def test_missing_detector_stops_before_sampling(files, tmp_path, capsys):
    cfg = _config(files, tmp_path / 'geneval_cfg.py')
    missing = str(tmp_path / 'mask2former-swin-small-coco-instance')
    code = load_tool('eval').main([cfg, '--out', str(tmp_path / 'e'), '--cfg-options',
                                   f'rewards.geneval.detector_dir={missing}'])
    err = capsys.readouterr().err
    assert code == 2 and missing in err
    assert 'huggingface.co/facebook/mask2former-swin-small-coco-instance' in err


def test_benchmark_times_the_head(files, tmp_path, keep_threads, capsys):
    cfg = _config(files, tmp_path / 'bench_cfg.py')
    out = tmp_path / 'bench.json'
    argv = [cfg, '--batch', '4', '--repeat', '1', '--threads', '1', '--gemm-size', '64',
            '--bandwidth-mb', '4', '--skip-rollout', '--skip-update', '--skip-iteration',
            '--reward-heads', '--out', str(out)]
    assert load_tool('benchmark').main(argv) == 0
    printed = capsys.readouterr().out
    h = json.loads(out.read_text())['reward_heads']['geneval']
    assert (h['kind'], h['type']) == ('reward', 'GenEvalReward')
    assert h['samples'] == 4 and h['finite_scores'] == 4 and h['startup_s'] > 0
    assert h['image_size'] == [64, 64] and h['ms_per_image']['median'] > 0
    assert 'head geneval (GenEvalReward): startup' in printed


def test_usable_as_an_eval_metric_head(files, tmp_path):
    from mmengine.config import ConfigDict

    from geneval_files import TINY_CLIP
    from preference_files import rollout
    tool = load_tool('eval')
    heads_cfg = dict(geneval=dict(type='GenEvalReward', metadata_file=files['metadata'],
                                  detector_dir=files['detector'], clip_checkpoint=files['clip'],
                                  clip_arch=TINY_CLIP, clip_weights_tag=None,
                                  image_scale=[64, 64]))
    assert tool.check_metric_heads(ConfigDict(metric_heads=heads_cfg), ('jpeg',)) == []
    heads = tool.build_metric_heads(heads_cfg)
    prompts = [m['prompt'] for m in METADATA[:3]]
    metrics = tool.score_heads(heads, rollout(torch.rand(3, 3, 64, 64), prompts=prompts), None)
    assert {'geneval/mean', 'geneval/strict', 'geneval/overall', 'geneval/counting'} <= set(metrics)
    missing = dict(heads_cfg['geneval'], detector_dir=str(tmp_path / 'x' / 'mask2former-swin-'
                                                           'small-coco-instance'))
    [(key, _, source)] = tool.check_metric_heads(ConfigDict(metric_heads=dict(geneval=missing)),
                                                 ())
    assert key == 'eval_cfg.metric_heads.geneval.detector_dir'
    assert 'facebook/mask2former-swin-small-coco-instance' in source
