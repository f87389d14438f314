"""tools/bench_official.py: its machinery on a stand-in LlamaGen checkout written here.

The official repositories are not available offline, so each test writes a tiny checkout with
the official layout (``autoregressive/models/gpt.py`` + ``generate.py``) whose ``Transformer`` is
vargo's own ``LlamaGenGPT`` (official key names) and whose ``generate()`` is a plain uncached
loop with the official CFG mix and ``torch.multinomial`` draw. No timing is asserted.
"""
import importlib.util
import json
import os
import sys

import pytest
import torch

from conftest import ROOT

GPT = '''
from dataclasses import dataclass

from vargo.components.policies.llamagen.model import GPTConfig, LlamaGenGPT


@dataclass
class ModelArgs:
    dim: int = 64
    n_layer: int = 2
    n_head: int = 4
    vocab_size: int = 16384
    block_size: int = 256
    num_classes: int = 1000
    cls_token_num: int = 1
    model_type: str = 'c2i'


class Transformer(LlamaGenGPT):
    def __init__(self, a):
        super().__init__(GPTConfig(dim=a.dim, n_layer=a.n_layer, n_head=a.n_head,
                                   vocab_size=a.vocab_size, block_size=a.block_size,
                                   num_classes=a.num_classes, cls_token_num=a.cls_token_num,
                                   task=a.model_type))
        self.model_type, self.num_classes = a.model_type, a.num_classes


GPT_models = {}
'''

GENERATE = '''
import torch

SHIFT = {shift}


@torch.no_grad()
def generate(model, cond, max_new_tokens, cfg_scale=1.0, temperature=1.0, **unused):
    guided = cfg_scale > 1.0
    ids = torch.cat([cond, torch.full_like(cond, model.num_classes)]) if guided else cond
    emb = model.condition_embeddings(class_ids=ids)
    seq = torch.zeros(len(cond), 0, dtype=torch.long)
    for _ in range(max_new_tokens):
        logits = model(emb, torch.cat([seq, seq]) if guided else seq)[:, -1]
        if guided:
            c, u = logits.chunk(2)
            logits = u + (c - u) * cfg_scale
        seq = torch.cat([seq, torch.multinomial(torch.softmax(logits / temperature, -1), 1)], 1)
    return (seq + SHIFT) % model.cfg.vocab_size
'''

TINY = ['--arch', '{"dim": 32, "n_layer": 1, "n_head": 2}', '--steps', '9', '--vocab', '32',
        '--num-classes', '5', '--batch', '2', '--cfg', '3', '--rounds', '3', '--threads', '1',
        '--gemm-size', '64', '--bandwidth-mb', '4']


def _tool():
    name = 'vargo_tools_bench_official'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(ROOT, 'tools', 'bench_official.py'))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _checkout(root, shift=0):
    models = root / 'autoregressive' / 'models'
    models.mkdir(parents=True)
    (models / 'gpt.py').write_text(GPT)
    (models / 'generate.py').write_text(GENERATE.format(shift=shift))
    return root


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_interleaved_rounds_ratio_range_and_json(tmp_path, capsys, keep_threads):
    root = _checkout(tmp_path / 'LlamaGen')
    out = tmp_path / 'res.json'
    assert _tool().main(['--family', 'llamagen', '--official', str(root), *TINY,
                         '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    assert res['official_dir'] == str(root) and res['family'] == 'llamagen'
    assert res['steps'] == 9 and res['step_unit'] == 'token'
    assert res['params']['official'] == res['params']['vargo'] > 0     # the same weights
    for side in ('official', 'vargo'):
        t = res[side]['time_s']
        assert len(t['values']) == 3 and t['min'] <= t['median'] <= t['max']
        assert res[side]['ms_per_step']['median'] == pytest.approx(1000 * t['median'] / 9)
    r = res['ratio_official_over_vargo']
    want = [o / v for o, v in zip(res['official']['time_s']['values'],
                                  res['vargo']['time_s']['values'])]
    assert r['values'] == pytest.approx(want) and r['min'] <= r['median'] <= r['max']
    checks = res['agreement']['checks']
    assert res['agreement']['runs_checked'] == 4 and all(c['agree'] for c in checks)
    assert all(c['tokens'] == 2 * 9 and c['differing'] == 0 for c in checks)
    floor = res['weight_read_floor_ms_per_step']
    assert res['weight_bytes'] > 0 and 0 < floor['min'] <= floor['median']
    # 2 FLOP per decode weight and row; fp32 weights: 4 bytes each
    rows = res['batch'] * (2 if res['cfg'] != 1 else 1)
    assert res['step_gflop'] == pytest.approx(2 * rows * res['weight_bytes'] / 4 / 1e9)
    assert res['compute_floor_ms_per_step'] == pytest.approx(
        1000 * res['step_gflop'] / res['machine']['gemm_peak']['gflops'])
    # KV cache: 1 layer x (k, v) x 4 rows x 2 heads x 16 dims x 4 bytes = 1024 bytes per
    # position, read over 1 + (9 - 1) / 2 = 5 positions on average (1 condition position)
    assert res['kv_cache_read_bytes_per_step'] == pytest.approx(1024 * 5)
    read = res['machine']['bandwidth']['read_gbps']
    assert res['memory_floor_ms_per_step']['median'] == pytest.approx(
        1000 * (res['weight_bytes'] + 1024 * 5) / (read['median'] * 1e9))
    alone = res['products_alone']       # wqkv, wo, w1, w3, w2 and the output head
    assert alone['layers'] == 6 and alone['rows'] == rows and len(alone['ms']['values']) == 5
    assert alone['gbps']['best'] == pytest.approx(
        alone['weight_bytes'] / (alone['ms']['min'] * 1e6))
    m = res['machine']
    assert m['gemm_peak']['gflops'] > 0 and len(m['gemm_peak']['probes_gflops']) == 2
    assert m['bandwidth']['read_gbps']['median'] > 0
    assert len(res['load_average_start']) == 3 and res['threads'] == 1
    assert res['heap']['setting'] in ('keep', 'glibc', 'user', 'unavailable')
    assert res['omp_wait_policy']
    assert res['vargo_commit'] is None or len(res['vargo_commit'].split('+')[0]) == 40
    printed = capsys.readouterr().out
    assert '| seconds per run |' in printed and '| ms per token |' in printed
    assert 'weight-read floor' in printed and 'identical in all 4 runs' in printed
    assert 'compute floor' in printed and 'memory floor' in printed
    assert "vargo's linear layers alone" in printed


@pytest.mark.parametrize('packed', [False, True])
def test_the_products_pass_runs_every_decode_linear_once_through_the_samplers_kernels(packed):
    from torch import nn

    from vargo.components.modules.packed_linear import PackedLinears, packed_linear_supported
    if packed and not packed_linear_supported():
        pytest.skip('this torch build has no oneDNN reordered-weight linear')

    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 24), nn.GELU(), nn.Linear(24, 8))
            self.head = nn.Linear(8, 40)
            self.unused = nn.Linear(8, 8)        # not in decoding_modules(): not timed

        def decoding_modules(self):
            return [self.body, self.head, self.body]     # a module listed twice runs once

    policy, calls = Policy(), []
    for name, m in policy.named_modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(lambda mod, inp, out, name=name: calls.append(
                (name, tuple(inp[0].shape), tuple(out.shape))))
    packs = PackedLinears(enabled=packed, min_weight_elements=0)
    with torch.no_grad():
        got = _tool().time_decode_products(policy, packs, rows=3, repeat=2)
    one_pass = [('body.0', (3, 8), (3, 24)), ('body.2', (3, 24), (3, 8)),
                ('head', (3, 8), (3, 40))]
    assert calls == one_pass * 3                       # warm-up + 2 timed passes
    assert got['layers'] == 3 and got['weight_bytes'] == 4 * (8 * 24 + 24 * 8 + 8 * 40)
    assert len(got['ms']['values']) == 2
    assert len(packs._packs) == (3 if packed else 0)   # the sampler's packs, refreshed


def test_the_side_order_alternates_and_every_run_is_compared():
    tool = _tool()
    calls = []

    def side(name):
        return tool.Side(name, lambda: calls.append(name) or torch.zeros(1, 3), 1)

    got = tool.interleaved(side('official'), side('vargo'), tool._same_tokens, rounds=3,
                           warmup=1)
    assert calls == ['official', 'vargo'] * 4
    assert [len(v) for v in got['times'].values()] == [3, 3] and len(got['checks']) == 4


def test_an_extra_vargo_side_is_interleaved_and_compared_with_the_official_one():
    tool = _tool()
    calls = []

    def side(name, value=0.0):
        return tool.Side(name, lambda: calls.append(name) or torch.full((1, 3), value), 1)

    got = tool.interleaved(side('official'), side('vargo'), tool._same_tokens, rounds=2,
                           warmup=1, extra=[side('vargo_plain')])
    assert calls == ['official', 'vargo', 'vargo_plain'] * 3
    assert [c.get('side') for c in got['checks']] == [None, 'vargo_plain'] * 3
    with pytest.raises(tool.OutputsDisagree, match='vargo_plain'):
        tool.interleaved(side('official'), side('vargo'), tool._same_tokens, rounds=1,
                         warmup=0, extra=[side('vargo_plain', 1.0)])


def test_plain_too_times_the_unpacked_sampler_beside_the_packed_one(tmp_path, capsys,
                                                                     keep_threads):
    root = _checkout(tmp_path / 'LlamaGen')
    out = tmp_path / 'res.json'
    assert _tool().main(['--family', 'llamagen', '--official', str(root), *TINY,
                         '--rounds', '2', '--plain-too', '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    plain, packed = res['vargo_plain']['time_s']['values'], res['vargo']['time_s']['values']
    assert res['ratio_plain_over_packed']['values'] == pytest.approx(
        [p / v for p, v in zip(plain, packed)])
    assert res['agreement']['runs_checked'] == 3 and len(res['agreement']['checks']) == 6
    assert 'plain / packed' in capsys.readouterr().out
    assert res['vargo_packed_weights'] is True


def test_disagreeing_outputs_refuse_to_report_a_ratio(tmp_path, capsys, keep_threads):
    tool = _tool()
    good, bad = _checkout(tmp_path / 'good'), _checkout(tmp_path / 'bad', shift=1)
    out = tmp_path / 'res.json'
    assert tool.main(['--family', 'llamagen', '--official', str(good), *TINY,
                      '--rounds', '1', '--out', str(out)]) == 0
    out.unlink()
    capsys.readouterr()
    # the second checkout's modules replace the first's (same module names, another directory)
    assert tool.main(['--family', 'llamagen', '--official', str(bad), *TINY,
                      '--out', str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'no ratio reported' in err
    assert 'warm-up run 1: 18 of 18 tokens differ' in err
    assert not out.exists()


@pytest.mark.parametrize('family, expected', [('llamagen', 'autoregressive/models/gpt.py'),
                                              ('var', 'models/var.py'),
                                              ('mar', 'models/mar.py')])
def test_a_directory_that_is_not_a_checkout_is_one_line(tmp_path, capsys, family, expected):
    (tmp_path / 'models').mkdir()
    assert _tool().main(['--family', family, '--official', str(tmp_path),
                         '--out', str(tmp_path / 'r.json')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('error: --official')
    assert f'(no {expected})' in err and not (tmp_path / 'r.json').exists()


@pytest.mark.parametrize('extra, message', [
    (['--steps', '10'], 'must be a square number of tokens'),
    (['--cfg', '0.5'], 'must be >= 1'),
    (['--decode'], '--decode is a VAR option'),
    (['--decoder', '--plain-too'], '--plain-too is a sampling option'),
    (['--decoder', '--top-k', '5'], '--top-k is a sampling option'),
    (['--vae', '{}'], '--vae sets the tokenizer of --decoder'),
])
def test_bad_settings_are_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        _tool().parse_args(['--family', 'llamagen', '--official', str(tmp_path), *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


# --decoder: a stand-in ``tokenizer/tokenizer_image/vq_model.py`` whose VQ-16 is vargo's VQModel
# at a tiny width (official key names); ``SCALE`` != 1 makes its images differ
VQ_MODEL = '''
from vargo.components.tokenizers.vq import VQModel

SCALE = {scale}


class _Official(VQModel):
    def decode_code(self, code_b, shape=None, channel_first=True):
        return super().decode_code(code_b, shape) * SCALE


VQ_models = {{'VQ-16': lambda **kw: _Official(ch=16, ch_mult=(1, 2), z_channels=16,
                                             norm_groups=4, **kw)}}
'''
TINY_VAE = ['--vae', '{"ch": 16, "ch_mult": [1, 2], "z_channels": 16, "norm_groups": 4}',
            '--steps', '16', '--vocab', '32', '--batch', '2', '--rounds', '2', '--threads', '1',
            '--gemm-size', '64', '--bandwidth-mb', '4']


def _vq_checkout(root, scale=1.0):
    d = root / 'tokenizer' / 'tokenizer_image'
    d.mkdir(parents=True)
    (d / 'vq_model.py').write_text(VQ_MODEL.format(scale=scale))
    return root


def test_decoder_mode_times_the_image_decoders_on_the_same_codes(tmp_path, capsys,
                                                                  keep_threads):
    root = _vq_checkout(tmp_path / 'LlamaGen')
    out = tmp_path / 'res.json'
    assert _tool().main(['--family', 'llamagen', '--official', str(root), '--decoder',
                         *TINY_VAE, '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    assert res['part'] == 'decoder' and res['step_unit'] == 'image' and res['steps'] == 2
    assert res['settings']['decoder'] == 'VQ-16 decode_code'
    assert res['params']['official'] == res['params']['vargo'] > 0
    checks = res['agreement']['checks']
    assert len(checks) == 3 and all(c['agree'] and c['image_max_abs_diff'] <= 1e-3
                                    for c in checks)
    assert all(c['official_max_abs'] > c['image_max_abs_diff'] for c in checks)
    t = res['vargo']['time_s']
    assert res['vargo']['ms_per_step']['median'] == pytest.approx(1000 * t['median'] / 2)
    printed = capsys.readouterr().out
    assert 'image decoder (VQ-16 decode_code), 2 images' in printed
    assert '| ms per image |' in printed and 'packed_weights' not in printed


def test_decoder_mode_refuses_a_ratio_when_the_images_differ(tmp_path, capsys, keep_threads):
    root = _vq_checkout(tmp_path / 'LlamaGen', scale=1.5)
    out = tmp_path / 'res.json'
    assert _tool().main(['--family', 'llamagen', '--official', str(root), '--decoder',
                         *TINY_VAE, '--out', str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'images max |diff|' in err and not out.exists()
    assert 'official max |value|' in err


def test_decoder_mode_names_the_missing_decoder_file(tmp_path, capsys):
    _checkout(tmp_path / 'LlamaGen')              # the sampler files only
    assert _tool().main(['--family', 'llamagen', '--official', str(tmp_path / 'LlamaGen'),
                         '--decoder', '--out', str(tmp_path / 'r.json')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '(no tokenizer/tokenizer_image/vq_model.py)' in err
