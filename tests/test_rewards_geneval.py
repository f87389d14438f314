"""GenEval: the official rules on hand-built detector outputs (tests/fixtures/
geneval_detections.json), the Mask2Former detector's loading and mmdet-style inference, the CLIP
colour classifier, and the GenEvalReward head end to end (tiny random weights, offline)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from geneval_files import (METADATA, TINY_CLIP, tiny_mask2former_config, write_clip,
                           write_detector_dir, write_metadata)
from vargo.components.rewards import geneval_rules as R
from vargo.components.rewards.geneval import (GENEVAL_FILE_SOURCES, ColourClassifier,
                                              GenEvalReward, Mask2FormerDetector, mask2bbox,
                                              mmdet_resize_shape)
from preference_files import rollout
from vargo.core.checkpoint import StateDictMismatch

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures',
                       'geneval_detections.json')
with open(FIXTURE) as _f:
    CASES = json.load(_f)['cases']


def _arrays(case):
    labels = [d['label'] if 'label' in d else R.GENEVAL_OBJECT_NAMES.index(d['class'])
              for d in case['detections']]
    boxes = np.array([d['box'] for d in case['detections']], dtype=np.float64).reshape(-1, 4)
    scores = np.array([d['score'] for d in case['detections']], dtype=np.float64)
    return boxes, scores, np.array(labels)


# ---- the rules -----------------------------------------------------------------------------------
@pytest.mark.parametrize('case', CASES, ids=[c['name'] for c in CASES])
def test_rules_on_hand_built_detections(case):
    meta = R.check_metadata(case['meta'])
    settings = case.get('settings', {})
    boxes, scores, labels = _arrays(case)
    detected = R.select_detections(boxes, scores, labels, tag=meta['tag'], settings=settings)
    asked = []

    def colours_of(cls, found):
        # only the `count` most confident detections of the class are classified
        asked.append((cls, [d.score for d in found]))
        return [case['detections'][d.index]['colour'] for d in found]

    ok, reason = R.evaluate_prompt(detected, meta, colours_of,
                                   R.check_settings(settings)['position_threshold'])
    assert ok is case['correct'], reason
    if case['reason']:
        assert case['reason'] in reason
    else:
        assert reason == ''
    for cls, found_scores in asked:
        req = next(r for r in meta['include'] if r['class'] == cls)
        everything = sorted((d['score'] for d in case['detections'] if d.get('class') == cls),
                            reverse=True)
        assert found_scores == everything[:req['count']]
    assert [(c, [d.score for d in f]) for c, f in R.colour_requests(detected, meta)] == asked


def test_fixture_covers_every_category_both_ways():
    outcomes = {}
    for case in CASES:
        outcomes.setdefault(case['meta']['tag'], set()).add(case['correct'])
    assert set(outcomes) == set(R.GENEVAL_TAGS)
    assert all(v == {True, False} for v in outcomes.values())
    relations = {c['meta']['include'][1]['position'][0] for c in CASES
                 if c['meta']['tag'] == 'position'}
    assert relations == set(R.RELATIONS)


def test_relative_position_and_iou_conventions():
    # no relation within the margin; exactly 0.5 is not enough; y grows downwards
    assert R.relative_position([0, 0, 10, 10], [2, 0, 12, 10]) == set()
    assert R.relative_position([0, 0, 10, 10], [5, 0, 15, 10]) == {'left of'}
    assert R.relative_position([5, 0, 15, 10], [0, 0, 10, 10]) == {'right of'}
    assert R.relative_position([0, 0, 10, 10], [0, 5, 10, 15]) == {'above'}
    assert R.relative_position([0, 5, 10, 15], [0, 0, 10, 10]) == {'below'}
    assert R.relative_position([0, 0, 10, 10], [10, 10, 20, 20]) == {'left of', 'above'}
    assert R.relative_position([0, 0, 10, 10], [0, 0, 10, 10]) == set()
    assert R.relative_position([0, 0, 10, 10], [2, 0, 12, 10], 0.05) == set()  # dx = -0.5
    # inclusive pixel counting: two 11 x 11 boxes overlapping in 6 x 11 pixels
    assert R.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(66 / (121 + 121 - 66))
    assert R.box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_selection_threshold_max_objects_and_overlap():
    boxes = np.array([[0, 0, 10, 10]] * 20, dtype=float) + np.arange(20)[:, None] * 30
    scores = np.linspace(0.99, 0.4, 20)
    labels = np.full(20, 5)                                       # bus
    kept = R.select_detections(boxes, scores, labels, tag='colors')['bus']
    assert len(kept) == 16 and [d.index for d in kept] == list(range(16))
    kept = R.select_detections(boxes, scores, labels, tag='counting')['bus']
    assert [d.score for d in kept] == [s for s in scores if s > 0.9]
    # suppression only when asked (max_overlap < 1): the second box overlaps the first
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], dtype=float)
    scores, labels = np.array([0.9, 0.8, 0.7]), np.array([2, 2, 2])
    assert len(R.select_detections(boxes, scores, labels, tag='x')['car']) == 3
    kept = R.select_detections(boxes, scores, labels, tag='x', settings={'max_overlap': 0.5})
    assert [d.index for d in kept['car']] == [0, 2]
    with pytest.raises(ValueError, match='max_overlap=1.5'):
        R.check_settings({'max_overlap': 1.5})
    with pytest.raises(ValueError, match="unknown rule settings \\['treshold'\\]"):
        R.check_settings({'treshold': 0.3})


def _det(box, score=0.9):
    return R.Detection(box=tuple(float(v) for v in box), score=score)


LEFT, RIGHT = (0, 10, 20, 40), (40, 10, 60, 40)
_PARTIAL_CASES = [
    # (name, include clauses, detections per class, colours per class, expected partial credit)
    ('one of two objects', [{'class': 'dog', 'count': 1}, {'class': 'cat', 'count': 1}],
     {'dog': [LEFT]}, {}, (1 + 0) / 2),
    ('two of three', [{'class': 'apple', 'count': 3}], {'apple': [LEFT] * 2}, {}, 1 - 1 / 3),
    ('five of three', [{'class': 'apple', 'count': 3}], {'apple': [LEFT] * 5}, {}, 1 - 2 / 3),
    ('seven of three: negative', [{'class': 'apple', 'count': 3}], {'apple': [LEFT] * 7}, {},
     1 - 4 / 3),
    ('wrong colour', [{'class': 'car', 'count': 1, 'color': 'red'}], {'car': [LEFT]},
     {'car': ['blue']}, (1 + 0) / 2),
    ('no car: the colour term is 0', [{'class': 'car', 'count': 1, 'color': 'red'}], {}, {},
     (0 + 0) / 2),
    ('one colour of two', [{'class': 'bus', 'count': 1, 'color': 'red'},
                           {'class': 'bench', 'count': 1, 'color': 'blue'}],
     {'bus': [LEFT], 'bench': [RIGHT]}, {'bus': ['red'], 'bench': ['yellow']}, 3 / 4),
    ('two of two colours', [{'class': 'cup', 'count': 2, 'color': 'red'}],
     {'cup': [LEFT, RIGHT]}, {'cup': ['red', 'green']}, (1 + 0.5) / 2),
    ('relation holds', [{'class': 'dog', 'count': 1},
                        {'class': 'cat', 'count': 1, 'position': ['left of', 0]}],
     {'dog': [RIGHT], 'cat': [LEFT]}, {}, 3 / 3),
    ('relation fails: 0 and then 1', [{'class': 'dog', 'count': 1},
                                      {'class': 'cat', 'count': 1, 'position': ['left of', 0]}],
     {'dog': [LEFT], 'cat': [RIGHT]}, {}, (1 + 1 + 0 + 1) / 4),
    ('no target', [{'class': 'dog', 'count': 1},
                   {'class': 'cat', 'count': 1, 'position': ['left of', 0]}],
     {'cat': [LEFT]}, {}, (0 + 1 + 0) / 3),
    ('clause missing with a position', [{'class': 'dog', 'count': 1},
                                        {'class': 'cat', 'count': 1,
                                         'position': ['left of', 0]}],
     {'dog': [RIGHT]}, {}, (1 + 0 + 0) / 3),
]


@pytest.mark.parametrize('case', _PARTIAL_CASES, ids=[c[0] for c in _PARTIAL_CASES])
def test_partial_credit_on_hand_built_detections(case):
    """Flow-GRPO's / STAGE's partial credit, computed by hand for each case (the count term
    ``1 - |n - found| / n``, a 0 for a colour/position clause whose count is wrong, the colour
    term, and a failed relation's 0 followed by the official code's 1)."""
    _, include, boxes, colours, expected = case
    meta = R.check_metadata(dict(prompt='p', tag='t', include=include))
    detected = {c: [_det(b, 0.9 - 0.01 * i) for i, b in enumerate(bs)] for c, bs in boxes.items()}
    got = R.partial_credit(detected, meta, lambda cls, found: colours[cls][:len(found)])
    assert got == pytest.approx(expected)


def test_summary_is_the_mean_over_tags():
    records = ([('p1', 'counting', True)] * 3 + [('p1', 'counting', False)]
               + [('p2', 'colors', False)] * 4
               + [('p3', 'position', True), ('p3', 'position', False)]
               + [('p4', 'position', False)] * 2)
    s = R.summarize(records)
    assert s['counting'] == 0.75 and s['colors'] == 0.0 and s['position'] == 0.25
    assert s['overall'] == pytest.approx((0.75 + 0 + 0.25) / 3)     # not 4 / 12
    assert s['correct_images'] == pytest.approx(4 / 12)
    assert s['correct_prompts'] == 0.5 and s['num_prompts'] == 4 and s['num_images'] == 12
    lines = R.summary_lines({f'g/{k}': v for k, v in s.items()}, prefix='g/')
    assert 'counting         = 75.00% (3 / 4)' in lines
    assert 'Overall score (avg. over tasks): 0.33333' in lines
    assert [ln.split()[0] for ln in lines if ' = ' in ln] == ['counting', 'colors', 'position']


def test_metadata_reading_and_errors(tmp_path):
    path = write_metadata(str(tmp_path / 'm.jsonl'))
    entries = R.read_metadata(path)
    assert [e['tag'] for e in entries] == list(R.GENEVAL_TAGS)
    bad = [dict(METADATA[0], include=[{'class': 'remote', 'count': 1}])]
    with pytest.raises(ValueError, match="line 1 include\\[0\\]: class='remote'"):
        R.read_metadata(write_metadata(str(tmp_path / 'b.jsonl'), bad))
    bad = [dict(METADATA[4], include=[METADATA[4]['include'][0],
                                      dict(METADATA[4]['include'][1], position=['left of', 1])])]
    with pytest.raises(ValueError, match="position=\\['left of', 1\\]"):
        R.read_metadata(write_metadata(str(tmp_path / 'p.jsonl'), bad))
    dup = [METADATA[0], dict(METADATA[0], include=[{'class': 'bench', 'count': 2}])]
    with pytest.raises(ValueError, match='line 2: prompt .* also on an earlier line'):
        R.read_metadata(write_metadata(str(tmp_path / 'd.jsonl'), dup))
    assert len(R.read_metadata(write_metadata(str(tmp_path / 'same.jsonl'),
                                              [METADATA[0], METADATA[0]]))) == 1
    with pytest.raises(FileNotFoundError, match='djghosh13/geneval'):
        R.read_metadata(str(tmp_path / 'nope.jsonl'))
    from vargo.core.registry import DATASETS
    ds = DATASETS.build(dict(type='GenEvalPromptDataset', path=path, tags=['counting']))
    assert len(ds) == 1 and ds[0] == {'prompt': 'a photo of two buses'}
    with pytest.raises(ValueError, match="tags \\['count'\\]"):
        DATASETS.build(dict(type='GenEvalPromptDataset', path=path, tags=['count']))
    # several metadata files (training and evaluation prompts) for one reward head
    extra = write_metadata(str(tmp_path / 'extra.jsonl'), [
        dict(METADATA[0]), dict(tag='single_object', prompt='a photo of a zebra',
                                include=[{'class': 'zebra', 'count': 1}])])
    merged = GenEvalReward._read_metadata([path, extra], 'GenEvalReward')
    assert len(merged) == len(METADATA) + 1 and merged['a photo of a zebra']['tag'] == \
        'single_object'
    clash = write_metadata(str(tmp_path / 'clash.jsonl'), [
        dict(METADATA[0], include=[{'class': 'bench', 'count': 2}])])
    with pytest.raises(ValueError, match="'a photo of a bench' has other clauses in .*clash"):
        GenEvalReward._read_metadata([path, clash], 'GenEvalReward')
    with pytest.raises(ValueError, match='metadata_file=\\[\\] must be'):
        GenEvalReward._read_metadata([], 'GenEvalReward')


# ---- the detector --------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('geneval')
    det = root / 'mask2former-swin-small-coco-instance'
    model = write_detector_dir(str(det))
    return dict(root=root, detector=str(det), model=model,
                clip=write_clip(str(root / 'open_clip_model.safetensors')),
                metadata=write_metadata(str(root / 'evaluation_metadata.jsonl')))


def test_instance_model_equals_transformers_universal_segmentation(files, monkeypatch):
    """The inference module is Mask2FormerForUniversalSegmentation without its loss: same keys
    (but criterion.*), same class and mask logits (its loss needs scipy: bypassed here)."""
    from transformers.models.mask2former import modeling_mask2former as M
    monkeypatch.setattr(M, 'requires_backends', lambda *a, **k: None)
    ref = M.Mask2FormerForUniversalSegmentation(tiny_mask2former_config()).eval()
    ours = Mask2FormerDetector(files['detector'], image_scale=(64, 64)).model
    result = ref.load_state_dict(ours.state_dict(), strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == ['criterion.empty_weight']
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(pixel_values=x)
        cls, masks = ours(x)
    # measured: 1.2e-7 and 1.3e-7 (float rounding)
    assert torch.allclose(cls, want.class_queries_logits, atol=1e-6, rtol=0)
    assert torch.allclose(masks, want.masks_queries_logits, atol=1e-6, rtol=0)


def test_detector_loads_the_release_layout_strictly(files, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(os.path.join(files['detector'], 'model.safetensors'))
    # the 4.x key names of the Hugging Face release, loaded with transformers' renaming
    assert any('encoder.encoder.layers.0.blocks.0.attention.self.query.weight' in k
               for k in state)
    det = Mask2FormerDetector(files['detector'], image_scale=(64, 64))
    for k, v in files['model'].state_dict().items():
        assert torch.equal(det.model.state_dict()[k], v), k
    assert not det.model.training and not any(p.requires_grad for p in det.model.parameters())

    def variant(name, change):
        d = tmp_path / name
        d.mkdir()
        s = dict(state)
        change(s)
        save_file(s, str(d / 'model.safetensors'))
        (d / 'config.json').write_bytes(open(f'{files["detector"]}/config.json', 'rb').read())
        return str(d)
    # the release's training-only and derived keys are accepted
    ok = variant('legacy', lambda s: s.update({
        'criterion.empty_weight': torch.ones(81),
        'model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.'
        'relative_position_index': torch.zeros(256, dtype=torch.long)}))
    Mask2FormerDetector(ok, image_scale=(64, 64))
    extra = variant('extra', lambda s: s.update({'model.unexpected': torch.zeros(1)}))
    with pytest.raises(StateDictMismatch, match="unexpected keys \\['model.unexpected'\\]"):
        Mask2FormerDetector(extra)
    missing = variant('missing', lambda s: s.pop('class_predictor.weight'))
    with pytest.raises(StateDictMismatch, match='missing keys.*class_predictor.weight'):
        Mask2FormerDetector(missing)
    with pytest.raises(FileNotFoundError) as err:
        Mask2FormerDetector(str(tmp_path / 'mask2former-swin-small-coco-instance'))
    msg = str(err.value)
    assert '\n' not in msg and 'huggingface.co/facebook/mask2former-swin-small-coco-instance' in msg
    d91 = tmp_path / 'ninety'
    write_detector_dir(str(d91), num_labels=91)
    with pytest.raises(ValueError, match='num_labels=91'):
        Mask2FormerDetector(str(d91))


def test_mmdet_preprocessing():
    assert mmdet_resize_shape(512, 512) == (800, 800)
    assert mmdet_resize_shape(480, 640) == (800, 1067)           # short side to 800
    assert mmdet_resize_shape(200, 1000) == (267, 1333)          # long side capped at 1333
    det = Mask2FormerDetector.__new__(Mask2FormerDetector)
    det.image_scale, det.size_divisor, det.pad_value = (1333, 800), 32, 128.0
    x = torch.full((1, 3, 30, 50), 0.5)
    pixels, resized = det.preprocess(x)
    assert resized == (800, 1333) and tuple(pixels.shape[-2:]) == (800, 1344)
    mean = torch.tensor([123.675, 116.28, 103.53])
    std = torch.tensor([58.395, 57.12, 57.375])
    assert torch.allclose(pixels[0, :, 0, 0], (128 - mean) / std)      # round(0.5 * 255) = 128
    assert torch.allclose(pixels[0, :, 0, -1], (128 - mean) / std)     # the padding: 128 too
    y = torch.zeros(1, 3, 30, 50)
    y[..., :, 25:] = 1.0
    pixels, _ = det.preprocess(y)
    raw = pixels[0, 0] * std[0] + mean[0]
    assert torch.allclose(raw, raw.round(), atol=1e-3)                 # 8-bit after the resize
    assert float(raw[0, -1]) == pytest.approx(128.0, abs=1e-3) and float(raw[0, 0]) < 1e-3


def test_instance_postprocess_on_hand_built_logits():
    """Two queries on a 4 x 4 logit map of an 8 x 8 image (no resize, no padding): scores are
    class probability x mean sigmoid inside the mask, boxes the mask extent (+1)."""
    det = Mask2FormerDetector.__new__(Mask2FormerDetector)
    det.max_per_image = 100
    cls = torch.full((2, 4), -20.0)
    cls[0, 1] = 5.0                                   # query 0: class 1, p = 1 (about)
    cls[1, 2], cls[1, 3] = 1.0, 1.0                   # query 1: class 2 vs no object, p = 1/2
    masks = torch.full((2, 4, 4), -4.0)
    masks[0, :2, :2] = 3.0                            # top-left quarter
    masks[1, 2:, 1:3] = 2.0
    out = det.postprocess(cls, masks, (8, 8), (8, 8), (8, 8), min_score=0.3)
    order = out['labels'].argsort()
    labels, boxes, scores = out['labels'][order], out['boxes'][order], out['scores'][order]
    assert labels.tolist() == [1, 2]
    up = torch.nn.functional.interpolate(masks[None], size=(8, 8), mode='bilinear',
                                         align_corners=False)[0]
    m = up > 0
    want = [float(up[i].sigmoid()[m[i]].mean()) for i in range(2)]
    p = torch.softmax(cls, -1)
    assert scores.tolist() == pytest.approx([float(p[0, 1]) * want[0],
                                             float(p[1, 2]) * want[1]], rel=1e-5)
    assert boxes.tolist() == mask2bbox(m).tolist()
    assert boxes[0].tolist() == [0, 0, int(m[0].any(0).nonzero().max()) + 1,
                                 int(m[0].any(1).nonzero().max()) + 1]
    assert out['masks'].shape == (2, 8, 8) and out['masks'].dtype == torch.bool
    # the class-probability pre-filter: only pairs above min_score are kept
    assert det.postprocess(cls, masks, (8, 8), (8, 8), (8, 8), min_score=0.6)['labels'].tolist() \
        == [1]
    assert mask2bbox(torch.zeros(1, 3, 3, dtype=torch.bool)).tolist() == [[0, 0, 0, 0]]


# ---- colours -------------------------------------------------------------------------------------
def test_colour_classifier_matches_open_clip_on_masked_crops(files):
    """Crops: the image inside the mask, #999 outside, cut to the box; the colour is the argmax
    over the 10 colours of the cosine to the 3-template zero-shot vectors."""
    import open_clip
    from PIL import Image
    clf = ColourClassifier(TINY_CLIP, files['clip'], weights_tag=None)
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, 40, 48, generator=g)
    mask = torch.zeros(40, 48, dtype=torch.bool)
    mask[5:30, 10:40] = True
    mask[5:10, 10:20] = False
    d = R.Detection((10.0, 5.0, 40.0, 30.0), 0.9, mask.numpy(), 0)
    crop = clf.crop(image, d)
    assert crop.shape == (1, 3, 25, 30)
    assert torch.allclose(crop[0, :, 0, 0], torch.full((3,), 153 / 255))
    assert torch.equal(crop[0, :, 10, 10], image[:, 15, 20])
    # the reference: PIL composite + crop, open_clip's eval transform, its encoders
    from safetensors.torch import load_file
    ref_model = open_clip.CLIP(**TINY_CLIP)
    ref_model.load_state_dict(load_file(files['clip']))
    ref_model.eval()
    tf = open_clip.image_transform(32, is_train=False)
    tok = open_clip.SimpleTokenizer(context_length=16)
    pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    blank = Image.new('RGB', pil.size, color='#999')
    comp = Image.composite(pil, blank, Image.fromarray(mask.numpy())).crop((10, 5, 40, 30))
    dets = [d, R.Detection((0.0, 0.0, 48.0, 40.0), 0.8, None, 1)]
    crops = [tf(comp), tf(pil)]
    from vargo.components.rewards.clip_score import clip_preprocess
    ours = clip_preprocess(crop, **clf.preprocess)[0]
    assert (ours - crops[0]).abs().max() < 0.2   # PIL rounds the resized noise to 8 bits
    assert (ours - crops[0]).abs().mean() < 0.01
    with torch.no_grad():
        f = torch.nn.functional.normalize(ref_model.encode_image(torch.stack(crops)), dim=-1)
        cols = []
        for c in R.GENEVAL_COLORS:
            t = ref_model.encode_text(tok([f'a photo of a {c} cat', f'a photo of a {c}-colored cat',
                                           f'a photo of a {c} object']))
            e = torch.nn.functional.normalize(t, dim=-1).mean(0)
            cols.append(e / e.norm())
        logits = 100 * f @ torch.stack(cols, 1)
    want = [R.GENEVAL_COLORS[int(i)] for i in logits.argmax(1)]
    [got] = clf.classify([(image, 'cat', dets)])
    assert got == want
    ours = torch.stack([clf.class_weights('cat', torch.device('cpu'))[:, i]
                        for i in range(10)], 1)
    assert torch.allclose(ours, torch.stack(cols, 1), atol=1e-6)


# ---- the head ------------------------------------------------------------------------------------
def _rollout(images, prompts):
    return rollout(images, prompts=list(prompts), group_ids=torch.arange(len(prompts)))


@pytest.fixture(scope='module')
def head(files):
    return GenEvalReward(metadata_file=files['metadata'], detector_dir=files['detector'],
                         clip_checkpoint=files['clip'], clip_arch=TINY_CLIP,
                         clip_weights_tag=None, image_scale=(64, 64))


def _raw(dets, h=64, w=64):
    """Detector output of hand-built detections (class, box, score): box-shaped masks."""
    masks = torch.zeros(len(dets), h, w, dtype=torch.bool)
    for i, (_, (x1, y1, x2, y2), _) in enumerate(dets):
        masks[i, y1:y2, x1:x2] = True
    return dict(labels=torch.tensor([R.GENEVAL_OBJECT_NAMES.index(c) for c, _, _ in dets],
                                    dtype=torch.long).reshape(-1),
                boxes=torch.tensor([b for _, b, _ in dets], dtype=torch.float32).reshape(-1, 4),
                scores=torch.tensor([s for _, _, s in dets], dtype=torch.float32),
                masks=masks)


#: the wiring tests' prompts: two counting images, a colour, a position, a colour binding
WIRING_PROMPTS = ['a photo of two buses', 'a photo of two buses', 'a photo of a red car',
                  'a photo of a cat left of a dog', 'a photo of a red car and a green apple']


def _wiring_raw(cat_left: bool = True):
    """Hand-built detector outputs of WIRING_PROMPTS: 2 buses over the counting threshold, 1 of
    2, a car, a cat left (or right) of a dog, a car and an apple."""
    cat, dog = ((0, 10, 20, 40), (40, 10, 60, 40)) if cat_left else ((40, 10, 60, 40),
                                                                     (0, 10, 20, 40))
    return [_raw([('bus', (0, 0, 20, 20), 0.95), ('bus', (30, 0, 50, 20), 0.92)]),
            _raw([('bus', (0, 0, 20, 20), 0.95), ('bus', (30, 0, 50, 20), 0.85)]),
            _raw([('car', (10, 10, 40, 40), 0.6)]),
            _raw([('dog', dog, 0.9), ('cat', cat, 0.8)]),
            _raw([('car', (0, 0, 30, 30), 0.7), ('apple', (35, 35, 60, 60), 0.5)])]


def test_head_end_to_end_with_fixture_detections(head, monkeypatch):
    """The wiring: prompts -> metadata, detector output -> kept detections (with the prompt's
    threshold), colour requests -> verdicts, scores/strict/metrics/records."""
    prompts, raw = WIRING_PROMPTS, _wiring_raw()
    calls = []

    def fake_detector(images, min_score=0.0):
        calls.append((tuple(images.shape), min_score))
        return raw
    monkeypatch.setattr(head, 'detector', fake_detector)
    asked = []

    def fake_colours(requests):
        asked.extend((name, len(dets)) for _, name, dets in requests)
        return [['red'] if name == 'car' else ['red'] for _, name, dets in requests]
    monkeypatch.setattr(head.colours, 'classify', fake_colours)
    images = torch.rand(5, 3, 64, 64)
    out = head(_rollout(images, prompts))
    assert calls == [((5, 3, 64, 64), 0.3)]
    assert asked == [('car', 1), ('car', 1), ('apple', 1)]
    assert out.scores.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert out.strict.tolist() == [True, False, True, True, False]
    m = out.metrics
    assert m['counting'] == 0.5 and m['colors'] == 1.0 and m['position'] == 1.0
    assert m['color_attr'] == 0.0 and m['overall'] == pytest.approx(2.5 / 4)
    assert m['correct_prompts'] == 0.75 and m['num_images'] == 5
    assert head.records[1]['reason'] == 'bus: asked for 2, detected 1'
    assert head.records[4]['reason'] == 'apple: asked for 1 green, classified 1 red'
    assert head.records[3]['details']['cat'] == [[0.0, 10.0, 20.0, 40.0, pytest.approx(0.8)]]
    with pytest.raises(ValueError, match="prompt 'a photo of a zebra' is not in"):
        head(_rollout(images[:1], ['a photo of a zebra']))


def test_head_partial_score(head, monkeypatch):
    """score='partial': the scores are the partial credit, strict and the summary unchanged."""
    prompts, raw = WIRING_PROMPTS, _wiring_raw(cat_left=False)
    monkeypatch.setattr(head, 'detector', lambda images, min_score=0.0: raw)
    monkeypatch.setattr(head.colours, 'classify',
                        lambda requests: [['red'] for _ in requests])
    monkeypatch.setattr(head, 'score', 'partial')
    out = head(_rollout(torch.rand(5, 3, 64, 64), prompts))
    # 2 of 2 buses; 1 of 2 (0.85 < the counting threshold 0.9); red car; cat right of the
    # dog (count 1, count 1, relation 0 then 1); green apple classified red
    expected = [1.0, 0.5, 1.0, 3 / 4, 3 / 4]
    assert out.scores.tolist() == pytest.approx(expected)
    assert out.strict.tolist() == [True, False, True, False, False]
    assert out.metrics['partial'] == pytest.approx(sum(expected) / 5)
    assert out.metrics['counting'] == 0.5
    assert head.records[3]['partial'] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="score='dense' must be 'strict'"):
        GenEvalReward(metadata_file='x', detector_dir='y', score='dense')


def test_head_on_the_tiny_models_is_batched_and_frozen(head, files):
    prompts = [m['prompt'] for m in METADATA]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 64, 64, generator=g)
    out = head(_rollout(images, prompts))
    assert set(out.scores.tolist()) <= {0.0, 1.0} and out.scores.dtype == torch.float32
    assert set(out.metrics) >= {'overall', 'correct_images', *R.GENEVAL_TAGS}
    # detections: the same one image at a time as in a batch
    one = [head.detector(images[i:i + 1], 0.3)[0] for i in range(6)]
    batch = head.detector(images, 0.3)
    for a, b in zip(one, batch):
        assert torch.equal(a['labels'], b['labels'])
        assert torch.allclose(a['scores'], b['scores'], atol=1e-5)
    # a confident class-0 (person) detector: the detections reach the rules
    conf = GenEvalReward(metadata_file=files['metadata'],
                         detector_dir=_confident_dir(files['root']), clip_checkpoint=files['clip'],
                         clip_arch=TINY_CLIP, clip_weights_tag=None, image_scale=(64, 64))
    dets = conf.detections(images[:1], [METADATA[0]])
    assert 'person' in dets[0] and all(d.score > 0.3 for d in dets[0]['person'])
    nan = images.clone()
    nan[1, 0, 0, 0] = math.nan
    out = head(_rollout(nan, prompts))
    assert math.isnan(out.scores[1]) and not out.strict[1]
    assert head.records[1]['reason'] == 'the image is not finite'
    x = images.clone().requires_grad_(True)
    assert not head(_rollout(x, prompts)).scores.requires_grad


def _confident_dir(root):
    d = root / 'confident'
    if not d.exists():
        write_detector_dir(str(d), seed=1, class_bias=30.0)
    return str(d)


def test_missing_files_and_config_check(files, tmp_path):
    from mmengine.config import Config

    from vargo.core.config import missing_files
    cfg = Config(dict(rewards=dict(geneval=dict(
        type='GenEvalReward', metadata_file=str(tmp_path / 'evaluation_metadata.jsonl'),
        detector_dir=str(tmp_path / 'mask2former-swin-small-coco-instance'),
        clip_checkpoint=str(tmp_path / 'open_clip_model.safetensors')))))
    found = {where: source for where, _, source in missing_files(cfg)}
    assert set(found) == {'rewards.geneval.metadata_file', 'rewards.geneval.detector_dir',
                          'rewards.geneval.clip_checkpoint'}
    assert 'mask2former-swin-small-coco-instance' in found['rewards.geneval.detector_dir']
    assert 'djghosh13/geneval' in found['rewards.geneval.metadata_file']
    assert 'vit_large_patch14_clip_224.openai' in found['rewards.geneval.clip_checkpoint']
    with pytest.raises(FileNotFoundError) as err:
        GenEvalReward(metadata_file=files['metadata'],
                      detector_dir=str(tmp_path / 'mask2former-swin-small-coco-instance'),
                      clip_checkpoint=files['clip'], clip_arch=TINY_CLIP, clip_weights_tag=None)
    assert '\n' not in str(err.value)
    assert GENEVAL_FILE_SOURCES['mask2former-swin-small-coco-instance'] in str(err.value)
