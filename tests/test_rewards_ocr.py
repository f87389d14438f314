"""OcrReward: flow_grpo's OCR reward (1 - NED of the prompt's quoted text), word accuracy, and
the PP-OCRv5 reader (transformers' port) from local files.

* the metric functions on hand-computed cases;
* the head on strings rendered with PIL and a fixture recogniser (the score pinned by hand);
* the real reader on tiny random-weight PP-OCRv5 directories (tests/ocr_files.py): its batched,
  on-device preprocessing against transformers' own image processors, end to end through the
  head, registry, strict loading, missing files;
* OcrReward as a metric head of tools/eval.py and in tools/benchmark.py --reward-heads.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, load_tool
from ocr_files import CHARS, write_det_dir, write_ocr_dirs, write_rec_dir
from preference_files import rollout
from vargo.components.rewards import OcrReward
from vargo.components.rewards.ocr import (OCR_FILE_SOURCES, crop_box, flow_distance, flow_ned,
                                          levenshtein, normalize, normalized_edit_distance,
                                          quoted_texts, sort_boxes, target_text, word_accuracy)
from vargo.core.checkpoint import StateDictMismatch
from vargo.core.registry import REWARD_HEADS


# ---- the metric functions ---------------------------------------------------------------------
def test_levenshtein_by_hand():
    assert levenshtein('kitten', 'sitting') == 3         # k->s, e->i, +g
    assert levenshtein('flaw', 'lawn') == 2              # -f, +n
    assert levenshtein('', 'abc') == levenshtein('abc', '') == 3
    assert levenshtein('abc', 'abc') == 0
    assert levenshtein('ab', 'ba') == 2                  # no transpositions
    assert levenshtein('sunday', 'saturday') == levenshtein('saturday', 'sunday') == 3


def test_target_text_and_normalisation_as_flow_grpo():
    p = 'a neon sign "Open 24 Hours" above a door marked "EXIT"'
    assert quoted_texts(p) == ['Open 24 Hours', 'EXIT']
    assert target_text(p) == 'Open 24 Hours'                       # prompt.split('"')[1]
    assert target_text(p, 'all') == 'Open 24 Hours EXIT'
    assert target_text('no quotes here') is None
    assert target_text('says "hello') == 'hello'                   # unclosed: as split gives
    assert normalize('Open 24\tHours ') == 'open24\thours'         # only ASCII spaces removed


def test_flow_ned_reward_and_clipping():
    t = 'Hello World'                                              # normalised: 'helloworld'
    assert flow_distance('>> HELLO world <<', t) == 0              # contained: distance 0
    assert flow_ned('helo world', t) == pytest.approx(1 / 10)      # one deletion
    assert flow_ned('Hallo Werld', t) == pytest.approx(2 / 10)
    assert flow_ned('', t) == 1.0                                  # 10 insertions / 10
    assert flow_distance('xyzw', 'ab') == 2                        # 4 clipped at len('ab')
    assert flow_ned('a very long unrelated reading', 'ab') == 1.0
    with pytest.raises(ValueError, match='empty'):
        flow_ned('x', '   ')
    # the symmetric NED counts what flow_grpo's forgives (surplus characters)
    assert normalized_edit_distance('>> HELLO world <<', t) == pytest.approx(4 / 14)
    assert normalized_edit_distance('', '') == 0.0


def test_word_accuracy_by_hand():
    assert word_accuracy(['Hello', 'wrld again'], 'hello world again') == pytest.approx(2 / 3)
    assert word_accuracy(['go go'], 'go go go') == pytest.approx(2 / 3)   # matched once each
    assert word_accuracy(['SALE! 50%'], 'Sale! 50% off') == pytest.approx(2 / 3)
    assert word_accuracy([], 'x') == 0.0
    with pytest.raises(ValueError, match='no words'):
        word_accuracy(['a'], '  ')


def test_reading_order_and_crop():
    box = lambda x, y: np.array([[x, y], [x + 20, y], [x + 20, y + 8], [x, y + 8]])  # noqa
    # by the top (y, x), then within a row (y within 10 px) left to right: (10, 8) before (30, 5)
    order = sort_boxes([box(30, 5), box(0, 40), box(10, 8), box(5, 25)])
    assert [tuple(b[0]) for b in order] == [(10, 8), (30, 5), (5, 25), (0, 40)]
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[5:10, 10:30] = 200
    crop = crop_box(img, np.array([[10, 5], [30, 5], [30, 10], [10, 10]]))
    assert crop.shape == (5, 20, 3) and crop.min() == 200
    tall = crop_box(img, np.array([[0, 0], [4, 0], [4, 12], [0, 12]]))
    assert tall.shape == (4, 12, 3)                                # turned upright
    assert crop_box(img, np.array([[3, 3]] * 4)) is None


# ---- the head on rendered strings, fixture recogniser ---------------------------------------
def render(text: str, size=(48, 160)) -> torch.Tensor:
    from PIL import Image, ImageDraw
    im = Image.new('RGB', (size[1], size[0]), (250, 250, 240))
    ImageDraw.Draw(im).text((6, 16), text, fill=(10, 10, 10))
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255


class FixtureReader:
    """Returns preset lines for images it recognises by their exact 8-bit pixels (an unknown
    image reads as '?')."""

    def __init__(self, table: list) -> None:
        self.table = {self.key(img): lines for img, lines in table}
        self.unknown = 0

    @staticmethod
    def key(img: torch.Tensor) -> str:
        import hashlib
        return hashlib.sha1((img * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()

    def read(self, images):
        out = [self.table.get(self.key(x)) for x in images]
        self.unknown += sum(o is None for o in out)
        return [[('?', 1.0)] if o is None else o for o in out]


def test_rendered_strings_pin_the_score():
    open_img, closed_img, blank = render('OPEN 24 HOURS'), render('CLOSED'), render('')
    assert (open_img < 0.5).any() and not (blank < 0.5).any()     # the text was drawn
    reader = FixtureReader([(open_img, [('OPEN 24', 0.93), ('H0URS', 0.81)]),
                            (closed_img, [('CLOSED', 0.97)]), (blank, [])])
    head = OcrReward(reader=reader)
    nan_img = blank.clone()
    nan_img[0, 0, 0] = math.nan
    images = torch.stack([open_img, closed_img, blank, open_img, nan_img])
    prompts = ['a shop sign that says "Open 24 Hours"', 'a door with "closed" on it',
               'an empty board reading "menu"', 'a sign without quotes', 'a "menu" board']
    out = head(rollout(images, prompts=prompts))
    # 1: 'open24h0urs' vs 'open24hours': one substitution of 11 characters; words: open, 24
    # 2: 'closed' read exactly; 3: nothing read: NED 1; 4: no target; 5: NaN pixels
    want = torch.tensor([10 / 11, 1.0, 0.0, math.nan, math.nan])
    assert torch.allclose(out.scores, want, equal_nan=True, atol=1e-6)
    assert out.scores.dtype == torch.float32
    assert out.strict.tolist() == [False, True, False, False, False]
    m = out.metrics
    assert m['ned'] == pytest.approx((1 / 11 + 0 + 1) / 3)
    assert m['ned_max'] == pytest.approx((1 / 11 + 0 + 1) / 3)
    assert m['word_accuracy'] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m['no_target'] == 1.0 and m['lines'] == pytest.approx((2 + 1 + 0 + 2 + 1) / 5)
    assert reader.unknown == 1                                     # only the NaN image
    # quotes='all' scores every quoted span; class names through a quoting template
    two = OcrReward(reader=reader, quotes='all')
    s = two(rollout(closed_img[None], prompts=['"closed" and "open"'])).scores
    assert s.item() == pytest.approx(1 - 4 / 10)                   # 'closedopen' vs 'closed'
    cls = OcrReward(reader=reader, class_names=['closed', 'menu'])
    s = cls(rollout(torch.stack([closed_img, blank]), class_ids=torch.tensor([0, 1]))).scores
    assert s.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match='must quote the class name'):
        OcrReward(reader=reader, class_names=['a'], template='a photo of a {}')
    with pytest.raises(ValueError, match="quotes='middle'"):
        OcrReward(reader=reader, quotes='middle')


# ---- the real reader on tiny PP-OCRv5 files -------------------------------------------------
@pytest.fixture(scope='module')
def ocr_dirs(tmp_path_factory):
    return write_ocr_dirs(str(tmp_path_factory.mktemp('ocr')))


@pytest.fixture(scope='module')
def head(ocr_dirs):
    return OcrReward(det_checkpoint=ocr_dirs[0], rec_checkpoint=ocr_dirs[1])


def test_preprocessing_matches_transformers_processors(head):
    """The batched torch preprocessing equals transformers' image processors (PIL input)."""
    from PIL import Image
    reader = head.reader
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 100, 1200, generator=g)    # 80 x 960: 80 / 32 = 2.5 rounds to 2
    x255 = (images * 255).round()
    pil = [Image.fromarray(x.permute(1, 2, 0).to(torch.uint8).numpy()) for x in x255]
    ref = reader.det_processor(images=pil, return_tensors='pt')
    ours = reader.det_pixels(x255)
    assert ours.shape == ref['pixel_values'].shape == (2, 3, 64, 960)
    assert (ours - ref['pixel_values']).abs().max() < 1e-4
    assert ref['target_sizes'][0].tolist() == [100, 1200]
    for h, w in [(30, 70), (20, 400), (48, 48), (64, 3000)]:       # padded, wide, square, cut
        crop = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        want = reader.rec_processor(images=[Image.fromarray(crop)],
                                    return_tensors='pt')['pixel_values'][0]
        got = reader.rec_pixels(crop, torch.device('cpu'))
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4


def test_real_reader_end_to_end(head, ocr_dirs):
    from transformers import AutoImageProcessor
    from types import SimpleNamespace
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, 144, generator=g)
    lines = head.reader.read(images)
    # the tiny detector's map is ~1 everywhere: one box, the whole image; read as transformers'
    # recogniser reads that crop
    boxes = head.reader.detect((images * 255).round())
    assert [b.shape for b in [np.stack(x) for x in boxes]] == [(1, 4, 2)] * 3
    assert boxes[0][0].tolist() == [[0, 0], [144, 0], [144, 48], [0, 48]]
    proc = AutoImageProcessor.from_pretrained(ocr_dirs[1], local_files_only=True)
    for x, got in zip(images, lines):
        from PIL import Image
        crop = (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        px = proc(images=[Image.fromarray(crop)], return_tensors='pt')['pixel_values']
        with torch.no_grad():
            probs = head.reader.rec(px).last_hidden_state
        [ref] = proc.post_process_text_recognition(SimpleNamespace(last_hidden_state=probs))
        assert len(got) == 1 and got[0][0] == ref['text'] and ref['text'].strip()
        assert got[0][1] == pytest.approx(ref['score'], abs=1e-5) and got[0][1] >= 0.5
        assert set(ref['text']) <= set(CHARS[1:])
    # through the head: the score is 1 - flow_ned of what was read; batched == one by one
    prompts = [f'a sign "{lines[0][0][0]}"', 'a sign "abc"', 'a sign "j"']
    out = head(rollout(images, prompts=prompts))
    want = [1 - flow_ned(''.join(t for t, _ in ls), target_text(p))
            for ls, p in zip(lines, prompts)]
    assert out.scores.tolist() == pytest.approx(want) and out.scores[0] == 1.0
    single = torch.cat([head(rollout(images[i:i + 1], prompts=prompts[i:i + 1])).scores
                        for i in range(3)])
    assert torch.equal(single, out.scores)
    x = images.clone().requires_grad_(True)
    assert not head(rollout(x, prompts=prompts)).scores.requires_grad
    assert all(not p.requires_grad for p in head.reader.rec.parameters())
    assert not head.reader.det.training and not head.reader.rec.training
    built = REWARD_HEADS.build(dict(type='OcrReward', det_checkpoint=ocr_dirs[0],
                                    rec_checkpoint=ocr_dirs[1], drop_score=1.01))
    dropped = built(rollout(images, prompts=prompts))
    assert dropped.scores.tolist() == [0.0] * 3 and dropped.metrics['lines'] == 0.0
    # regions=True: the detected boxes as masks, from the same detection (here the whole
    # image), also where recognition was dropped; the scores are unchanged
    with_regions = OcrReward(det_checkpoint=ocr_dirs[0], rec_checkpoint=ocr_dirs[1],
                             regions=True, drop_score=1.01)
    out = with_regions(rollout(images, prompts=prompts))
    assert out.regions.shape == (3, 48, 144) and out.regions.dtype == torch.float32
    assert bool((out.regions == 1).all()) and out.metrics['region_frac'] == 1.0
    assert out.scores.tolist() == dropped.scores.tolist()
    assert head(rollout(images, prompts=prompts)).regions is None


def test_box_regions_by_hand():
    """Filled quadrilaterals: an axis-aligned box covers its pixel rows/columns inclusive of
    both rounded corners (cv2.fillPoly), a tilted one its interior; no box: all 0."""
    from vargo.components.rewards.ocr import box_regions
    square = np.array([[2, 1], [5, 1], [5, 3], [2, 3]], dtype=np.float32)
    diamond = np.array([[4, 0], [8, 4], [4, 8], [0, 4]], dtype=np.float32)
    m = box_regions([[square], [], [square, diamond + 10]], 20, 20)
    assert m.shape == (3, 20, 20) and m.dtype == torch.float32
    want = torch.zeros(20, 20)
    want[1:4, 2:6] = 1
    assert torch.equal(m[0], want)
    assert m[1].sum() == 0
    assert m[2, 14, 14] == 1 and m[2, 10, 10] == 0 and m[2, 14, 10] == 1 and m[2, 10, 14] == 1
    assert torch.equal(m[2, :10, :10], want[:10, :10])
    with pytest.raises(ValueError, match='regions=True needs a reader with read_with_boxes'):
        OcrReward(reader=FixtureReader([]), regions=True)


def test_strict_loading_and_missing_files(tmp_path, ocr_dirs):
    from safetensors.torch import load_file, save_file
    det, rec = ocr_dirs
    # the BatchNorm counters may be present (or absent, as in the fixture)
    OcrReward(det_checkpoint=det, rec_checkpoint=write_rec_dir(str(tmp_path / 'r1'),
                                                                keep_counters=True))
    bad = write_rec_dir(str(tmp_path / 'r2'))
    state = load_file(os.path.join(bad, 'model.safetensors'))
    state['head.extra'] = torch.zeros(1)
    del state['head.head.bias']
    save_file(state, os.path.join(bad, 'model.safetensors'))
    with pytest.raises(StateDictMismatch, match=r'missing keys.*head\.head\.bias.*unexpected '
                                                r'keys.*head\.extra'):
        OcrReward(det_checkpoint=det, rec_checkpoint=bad)
    with pytest.raises(ValueError, match="model_type='pp_ocrv5_mobile_rec'"):
        OcrReward(det_checkpoint=rec, rec_checkpoint=rec)           # a recogniser as detector
    chars = write_rec_dir(str(tmp_path / 'r3'))
    cfg = json.loads(open(os.path.join(chars, 'preprocessor_config.json')).read())
    cfg['character_list'] = cfg['character_list'][:-1]
    open(os.path.join(chars, 'preprocessor_config.json'), 'w').write(json.dumps(cfg))
    with pytest.raises(ValueError, match='11 entries in character_list.*12 outputs'):
        OcrReward(det_checkpoint=det, rec_checkpoint=chars)
    # missing: the directory, then one file; one line naming where it is published
    missing = str(tmp_path / 'PP-OCRv5_mobile_det_safetensors')
    with pytest.raises(FileNotFoundError) as err:
        OcrReward(det_checkpoint=missing, rec_checkpoint=rec)
    msg = str(err.value)
    assert missing in msg and '\n' not in msg and 'never downloads' in msg
    assert 'https://huggingface.co/PaddlePaddle/PP-OCRv5_mobile_det_safetensors' in msg
    os.makedirs(missing)
    for f in ('config.json', 'preprocessor_config.json'):
        open(os.path.join(missing, f), 'w').write(open(os.path.join(det, f)).read())
    with pytest.raises(FileNotFoundError, match='model.safetensors.*PP-OCRv5_mobile_det_safe'):
        OcrReward(det_checkpoint=missing, rec_checkpoint=rec)
    with pytest.raises(ValueError, match='needs rec_checkpoint=.*PP-OCRv5_mobile_rec_safe'):
        OcrReward(det_checkpoint=det)
    from mmengine.config import Config

    from vargo.core.config import missing_files
    absent = str(tmp_path / 'x' / 'PP-OCRv5_mobile_rec_safetensors')
    cfg = Config(dict(rewards=dict(ocr=dict(type='OcrReward', det_checkpoint=det,
                                            rec_checkpoint=absent))))
    [(where, path, source)] = missing_files(cfg)
    assert where == 'rewards.ocr.rec_checkpoint'
    assert source == OCR_FILE_SOURCES['PP-OCRv5_mobile_rec_safetensors']


# ---- in the tools ------------------------------------------------------------------------------
TINY_CFG = os.path.join(ROOT, 'configs', 'grpo', 'llamagen-tiny_grpo_jpeg.py')


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_eval_metric_head_and_benchmark(ocr_dirs, tmp_path, keep_threads, capsys):
    heads_cfg = dict(ocr=dict(type='OcrReward', det_checkpoint=ocr_dirs[0],
                              rec_checkpoint=ocr_dirs[1], class_names=list('abcdefghij')))
    tool = load_tool('eval')
    from mmengine.config import ConfigDict
    assert tool.check_metric_heads(ConfigDict(metric_heads=heads_cfg), ('jpeg',)) == []
    heads = tool.build_metric_heads(heads_cfg)
    metrics = tool.score_heads(heads, rollout(torch.rand(2, 3, 32, 32),
                                              class_ids=torch.tensor([0, 9])), None)
    assert set(metrics) == {'ocr/mean', 'ocr/strict', 'ocr/ned', 'ocr/ned_max',
                            'ocr/word_accuracy', 'ocr/lines', 'ocr/no_target'}
    assert metrics['ocr/mean'] == pytest.approx(1 - metrics['ocr/ned'])
    cfg = tmp_path / 'bench_cfg.py'
    cfg.write_text(f'_base_ = [{TINY_CFG!r}]\neval_cfg = dict(metric_heads={heads_cfg!r})\n')
    out = tmp_path / 'bench.json'
    argv = [str(cfg), '--batch', '2', '--repeat', '1', '--threads', '1', '--gemm-size', '64',
            '--bandwidth-mb', '4', '--skip-rollout', '--skip-update', '--skip-iteration',
            '--reward-heads', '--out', str(out), '--cfg-options', 'policy.arch.dim=32',
            'policy.arch.n_layer=1', 'policy.tokenizer_checkpoint=/nonexistent/vq.pt']
    assert load_tool('benchmark').main(argv) == 0
    h = json.loads(out.read_text())['reward_heads']['ocr']
    assert (h['kind'], h['type'], h['samples'], h['finite_scores']) == ('metric', 'OcrReward',
                                                                         2, 2)
    assert h['startup_s'] > 0 and h['ms_per_image']['median'] > 0
    assert h['metrics']['lines'] == 1.0                # one text box per image was read
    assert 'head ocr (OcrReward): startup' in capsys.readouterr().out
