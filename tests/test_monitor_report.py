"""The reward-hacking monitor (vargo.core.monitor) and the run report (vargo.core.run_report)."""
import json
import logging
import os
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub

from conftest import ROOT, run_python
from test_configs import shrink
from vargo.core.monitor import (RewardHackingMonitorHook, WARNING_TAG, colour_entropy, crossed,
                                duplicate_rate, edge_density, image_statistics, saturation)
from vargo.core.runner import build_runner, load_config, prepare_config

TINY_CONFIG = os.path.join(ROOT, 'configs', 'grpo', 'llamagen-tiny_grpo_jpeg.py')


# -- statistics on hand-made images ---------------------------------------------------------
def test_statistics_of_hand_made_images():
    grey = torch.full((4, 3, 8, 8), 0.4)
    assert saturation(grey) == 0.0
    assert colour_entropy(grey) == 0.0
    assert edge_density(grey) == 0.0
    assert duplicate_rate(grey, group_size=2) == 1.0
    red = torch.zeros(2, 3, 8, 8)
    red[:, 0] = 1.0
    assert saturation(red) == pytest.approx(1.0)
    # half black, half white: two equally frequent colours (1 bit), one vertical edge
    half = torch.zeros(2, 3, 8, 8)
    half[..., 4:] = 1.0
    assert colour_entropy(half) == pytest.approx(1.0)
    assert edge_density(half) == pytest.approx(7 / 49)   # one column of the 7 x 7 grid
    # two groups of 2: one pair equal, one pair different
    pairs = torch.stack([half[0], half[0], grey[0], half[0]])
    assert duplicate_rate(pairs, group_size=2) == 0.5
    assert duplicate_rate(torch.rand(4, 3, 8, 8), group_size=4) == 0.0
    assert set(image_statistics(grey, 2)) == {'saturation', 'colour_entropy', 'edge_density',
                                              'duplicate_rate'}


def test_rules():
    assert crossed(0.5, 0.1, dict(direction='up', delta=0.3))
    assert not crossed(0.3, 0.1, dict(direction='up', delta=0.3))
    assert crossed(1.9, 4.0, dict(direction='down', delta=0.5, relative=True))
    assert not crossed(2.1, 4.0, dict(direction='down', delta=0.5, relative=True))
    assert not crossed(8.0, 4.0, dict(direction='down', delta=0.5, relative=True))
    assert crossed(8.0, 4.0, dict(direction='either', delta=0.5, relative=True))
    assert not crossed(1.0, 0.0, dict(direction='up', delta=0.5, relative=True))  # no scale


# -- the warning ----------------------------------------------------------------------------
class _Logger:
    def __init__(self):
        self.warnings = []

    def warning(self, msg):
        self.warnings.append(msg)


def _fake_runner():
    logged = []
    return SimpleNamespace(
        message_hub=MessageHub.get_instance('test_monitor_fake'), logger=_Logger(),
        visualizer=SimpleNamespace(add_scalars=lambda d, step: logged.append((step, d))),
        logged=logged)


def test_warning_fires_once_with_one_line():
    hook = RewardHackingMonitorHook(interval=20)
    runner = _fake_runner()
    base = dict(saturation=0.4, colour_entropy=4.0, edge_density=0.2, duplicate_rate=0.1)
    assert hook.record(runner, base, step=0) == []
    assert hook.record(runner, {**base, 'duplicate_rate': 0.35}, step=20) == []  # +0.25 < 0.3
    lines = hook.record(runner, {**base, 'duplicate_rate': 0.5}, step=40)
    assert len(lines) == 1 and runner.logger.warnings == lines
    line = lines[0]
    assert '\n' not in line and line.startswith(WARNING_TAG)
    for part in ('monitor/duplicate_rate', '0.5', 'iteration 40', '0.1', 'iteration 0',
                 'rise > 0.3 absolute'):
        assert part in line, (part, line)
    # still past the threshold, and a second statistic crosses: only the new one warns
    lines = hook.record(runner, {**base, 'duplicate_rate': 0.9, 'colour_entropy': 1.5}, step=60)
    assert len(lines) == 1 and 'monitor/colour_entropy' in lines[0] and '50%' in lines[0]
    assert len(runner.logger.warnings) == 2
    assert [s for s, _ in runner.logged] == [0, 20, 40, 60]
    assert runner.logged[2][1]['monitor/duplicate_rate'] == 0.5
    hub = runner.message_hub.log_scalars['monitor/duplicate_rate']
    assert list(hub.data[0]) == [0.1, 0.35, 0.5, 0.9]


def test_resumed_monitor_compares_with_the_first_measurement_of_the_run():
    first = RewardHackingMonitorHook(interval=20)
    runner = _fake_runner()
    runner.message_hub = MessageHub.get_instance('test_monitor_resume')
    base = dict(saturation=0.4, colour_entropy=4.0, edge_density=0.2, duplicate_rate=0.1)
    first.record(runner, base, step=0)
    first.record(runner, {**base, 'duplicate_rate': 0.2}, step=20)
    resumed = RewardHackingMonitorHook(interval=20)     # a new process, the checkpoint's hub
    resumed._resume_baseline(runner)
    lines = resumed.record(runner, {**base, 'duplicate_rate': 0.45}, step=40)
    assert len(lines) == 1 and 'first measured 0.1 at iteration 0' in lines[0]


# -- tiny runs: the monitor changes no training number; the report -------------------------
def _run(work_dir, monitor: bool):
    cfg = shrink(load_config(TINY_CONFIG))
    cfg.train_cfg.max_iters = 2
    cfg.default_hooks.image_grid = dict(type='ImageGridHook', interval=1, preview_conditions=2)
    cfg.default_hooks.curves = dict(type='CurvesHook', interval=0)    # shrink() drops both
    cfg.default_hooks.report = dict(type='RunReportHook')
    cfg.custom_hooks = [dict(
        type='RewardHackingMonitorHook', interval=1, num_conditions=2,
        # a rule that always fires at the second measurement: the warning reaches the log
        rules=dict(edge_density=dict(direction='either', delta=-1.0)))] if monitor else []
    cfg = prepare_config(cfg, config_path=TINY_CONFIG, work_dir=str(work_dir))
    cfg.experiment_name = f'test_monitor_{monitor}_{id(cfg)}'
    runner = build_runner(cfg)
    runner.train()
    weights = {k: v.detach().clone() for k, v in runner.model.policy.state_dict().items()}
    return runner, weights, torch.get_rng_state()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    with_dir, without_dir = tmp_path_factory.mktemp('with'), tmp_path_factory.mktemp('without')
    logging.getLogger('mmengine').handlers.clear()
    return _run(with_dir, True), _run(without_dir, False), str(with_dir)


def test_monitor_does_not_change_training(runs):
    (r1, w1, rng1), (r2, w2, rng2), _ = runs
    assert r1.iter == r2.iter == 2
    assert w1.keys() == w2.keys()
    changed = any(not torch.equal(w1[k], r1.model.reference.state_dict()[k])
                  for k in w1 if k in r1.model.reference.state_dict())
    assert changed, 'the tiny run should move the weights, or the comparison proves nothing'
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    assert torch.equal(rng1, rng2)       # the global stream the loop shuffles with
    hub = r1.message_hub.log_scalars
    assert len(hub['monitor/saturation'].data[0]) == 3        # before, after 1, after 2
    assert 'monitor/seconds' in hub


class _Checker(HTMLParser):
    VOID = {'meta', 'img', 'br', 'hr', 'link', 'input'}

    def __init__(self):
        super().__init__()
        self.stack, self.srcs, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == 'img':
            self.srcs.append(attrs.get('src', ''))
        for key in ('href', 'src'):
            if key in attrs and not attrs[key].startswith('data:'):
                self.errors.append(f'external {key}: {attrs[key]}')
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f'unbalanced </{tag}>')


def test_report_of_a_tiny_run(runs):
    work_dir = runs[2]
    assert os.path.isfile(os.path.join(work_dir, 'report.html'))   # written by RunReportHook
    os.makedirs(os.path.join(work_dir, 'eval'))
    with open(os.path.join(work_dir, 'eval', 'eval.json'), 'w') as f:
        json.dump({'results': {'train': {'jpeg/mean': -1.25, 'num_samples': 8}}}, f)
    out = os.path.join(work_dir, 'page.html')
    run_python('tools/report.py', work_dir, '--out', out)
    text = open(out, encoding='utf-8').read()
    assert text.startswith('<!DOCTYPE html>')
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    assert len(checker.srcs) == 4 and all(s.startswith('data:image/png;base64,')
                                          for s in checker.srcs)  # curves + 3 grids
    for part in ('preview before training', 'preview after training', 'samples_iter000002.png',
                 'JpegCompressibilityReward', 'RewardHackingMonitorHook', 'train/jpeg/mean',
                 '-1.25', 'torch threads', WARNING_TAG, 'monitor/edge_density'):
        assert part in text, part
