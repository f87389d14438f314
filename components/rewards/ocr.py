"""OCR reward for text rendering: does the image show the text the prompt quotes?

The reward flow_grpo trains text rendering with (github yifan123/flow_grpo, ``flow_grpo/ocr.py``),
from local files, batched, without gradients:

* **target**: the text between the first pair of double quotes of the prompt (flow_grpo's
  ``prompt.split('"')[1]``); ``quotes='all'`` joins every quoted span with a space (prompts with
  several text regions, as CVTG-2K's). An unclosed last quote still opens a span (as
  ``split`` does). A prompt without quotes has no target: its score is NaN (unscorable,
  excluded from group statistics; flow_grpo raises ``IndexError``), counted in the metric
  ``no_target``.
* **normalisation** (flow_grpo): remove the ASCII spaces, lower-case (:func:`normalize`).
* **recognised text**: the OCR lines read in reading order (:func:`sort_boxes`) with a
  recognition score of at least ``drop_score`` (0.5, PaddleOCR 2.x's ``TextSystem`` default;
  flow_grpo then keeps the lines with a score > 0, i.e. all of them), concatenated.
* **NED** (:func:`flow_ned`), flow_grpo's: ``d = 0`` if the normalised target occurs in the
  normalised recognised text, else the Levenshtein distance (:func:`levenshtein`: unit-cost
  insertions, deletions, substitutions) clipped at the target length; ``NED = d / len(target)``
  in [0, 1]. **Score = 1 - NED** (flow_grpo's reward).
* metrics (``reward/<head>/...`` in training, ``<head>/...`` in ``tools/eval.py``): ``ned`` (mean
  NED), ``ned_max`` (mean of the symmetric :func:`normalized_edit_distance`
  ``levenshtein / max(len)`` of the same normalised strings, the usual OCR-literature NED, which
  unlike flow_grpo's counts surplus recognised characters), ``word_accuracy`` (mean of
  :func:`word_accuracy`), ``lines`` (recognised lines per image) and ``no_target``; ``strict``
  (``<head>/strict``): every target word read.
* **word accuracy** (:func:`word_accuracy`, as this head defines it): the target's words
  (lower-cased, split at whitespace) that occur among the recognised words (the lines joined with
  spaces, lower-cased, split at whitespace; each recognised word matches at most one target
  word), divided by the number of target words. VAR RL Done Right reports CVTG-2K word accuracy
  and NED; the CVTG-2K evaluation script was not available offline to compare against (the
  TextCrafter repository holds the generation code and the dataset link only), so these two
  definitions are stated here rather than claimed to be that script's.
* **regions** (``regions=True``; *our formulation* of VAR RL Done Right's mask source "a reward
  head that reports regions", docs/methods/var_rl.md): ``RewardOutput.regions [B, H, W]`` is 1
  inside every detected text box (also boxes whose recognition was dropped: the text the model
  drew decides the reward, right or wrong) and 0 elsewhere (:func:`box_regions`), from the same
  detection as the score; ``MaskPropagationSelector(source='regions', head=...)`` gates the
  update to the tokens over the text. Metric ``region_frac``: the mean covered fraction.

OCR model: **PP-OCRv5** (PaddleOCR's detector + recogniser, the model family flow_grpo's
``PaddleOCR(lang='en')`` runs), through transformers' port (``PPOCRV5MobileDet/ServerDet``
``ForObjectDetection``, ``PPOCRV5MobileRec/ServerRec ForTextRecognition``; transformers >= 5.x),
from the ``*_safetensors`` directories PaddlePaddle publishes (:data:`OCR_FILE_SOURCES`). Why
this one: PaddlePaddle itself does not install offline here and downloads its models at run
time; GOT-OCR2 and Florence-2 read a whole image but are 0.2-0.6 B-parameter generative models
(seconds per image on CPU), TrOCR reads one text line only. PP-OCRv5 mobile (about 5 M + 16 M
parameters) detects every text region (DB segmentation), reads each (SVTR + CTC, greedy), and is
what flow_grpo's numbers were obtained with (PaddleOCR 2.x ran PP-OCRv4; v5 is the current
release of the same pipeline).

Pipeline (:class:`PPOCRv5Reader`), following transformers' image processors and PaddleOCR's
``TextSystem``:

1. detection input, batched on the images' device: 8-bit rounding (the PIL images PaddleOCR
   reads), resize so the longer side is at most ``limit_side_len`` (960; ``limit_type``,
   ``max_side_limit`` from ``preprocessor_config.json``) with both sides rounded to multiples of
   32 (bilinear, antialiased, as the torchvision processor), ``/255``, mean/std, RGB -> BGR;
2. the detector's probability map; box extraction on the CPU by transformers'
   ``post_process_object_detection`` (binarise at 0.3, contours, box score >= 0.6, unclip 1.5;
   OpenCV), boxes sorted top-to-bottom, left-to-right (rows within 10 px);
3. each box cut out with a perspective warp (OpenCV, bicubic, replicated border; turned 90
   degrees when at least 1.5 times taller than wide), as PaddleOCR's ``get_rotate_crop_image``;
4. recognition input, on the images' device: height 48 keeping the aspect ratio (width at most
   ``max_image_width``), ``/255``, mean/std 0.5, zero padding on the right to width 320 (each crop
   as transformers' processor handles a single image, so a crop's text does not depend on the
   other crops of its batch); crops of one width share a forward;
5. greedy CTC decoding (``post_process_text_recognition``: argmax, merge repeats, drop blanks),
   the score the mean probability of the kept characters; lines under ``drop_score`` dropped.

Files (local only, ``local_files_only``; weights read data-only and loaded strictly: every
missing, unexpected or mis-shaped key raises, naming it; BatchNorm's ``num_batches_tracked``
counters, unused in inference, may be absent): ``det_checkpoint`` and ``rec_checkpoint``
directories, each ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` (the
recogniser's holds the ``character_list``).
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from types import SimpleNamespace
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vargo.core.checkpoint import load_state_dict_strict, read_state_dict
from vargo.core.interfaces import RewardHead
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import RewardContext, RewardOutput, Rollout

from .clip_score import resolve_class_names
from .preference_common import build_on_meta, check_images, condition_texts, missing_file

__all__ = ['OcrReward', 'PPOCRv5Reader', 'OCR_FILE_SOURCES', 'quoted_texts', 'target_text',
           'normalize', 'levenshtein', 'flow_distance', 'flow_ned', 'normalized_edit_distance',
           'word_accuracy', 'sort_boxes', 'crop_box', 'box_regions']

_HF = 'https://huggingface.co/PaddlePaddle/'
#: official directory name -> where it is published (``check_files`` reports it)
OCR_FILE_SOURCES: dict[str, str] = {
    name: f'{_HF}{name} (config.json, model.safetensors, preprocessor_config.json)'
    for name in ('PP-OCRv5_mobile_det_safetensors', 'PP-OCRv5_mobile_rec_safetensors',
                 'PP-OCRv5_server_det_safetensors', 'PP-OCRv5_server_rec_safetensors')}

_DET_MODELS = {'pp_ocrv5_mobile_det': ('PPOCRV5MobileDetConfig',
                                       'PPOCRV5MobileDetForObjectDetection'),
               'pp_ocrv5_server_det': ('PPOCRV5ServerDetConfig',
                                       'PPOCRV5ServerDetForObjectDetection')}
_REC_MODELS = {'pp_ocrv5_mobile_rec': ('PPOCRV5MobileRecConfig',
                                       'PPOCRV5MobileRecForTextRecognition'),
               'pp_ocrv5_server_rec': ('PPOCRV5ServerRecConfig',
                                       'PPOCRV5ServerRecForTextRecognition')}


# ---------------------------------------------------------------------------------------------
# the metrics (pure functions)
# ---------------------------------------------------------------------------------------------

def quoted_texts(prompt: str) -> list[str]:
    """The spans between double quotes: the odd pieces of ``prompt.split('"')``."""
    return str(prompt).split('"')[1::2]


def target_text(prompt: str, quotes: str = 'first') -> Optional[str]:
    """The text the image should show: the first quoted span (flow_grpo) or, with
    ``quotes='all'``, every quoted span joined with a space; None without quotes."""
    spans = quoted_texts(prompt)
    if not spans:
        return None
    return spans[0] if quotes == 'first' else ' '.join(spans)


def normalize(text: str) -> str:
    """flow_grpo's normalisation: ASCII spaces removed, lower case."""
    return text.replace(' ', '').lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit-cost insertions, deletions and substitutions."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def flow_distance(recognized: str, target: str) -> int:
    """flow_grpo's distance of the normalised strings: 0 if the target occurs in the recognised
    text, else the Levenshtein distance clipped at the target's length."""
    r, t = normalize(recognized), normalize(target)
    if not t:
        raise ValueError(f'target {target!r} is empty after normalisation (spaces removed)')
    if t in r:
        return 0
    return min(levenshtein(r, t), len(t))


def flow_ned(recognized: str, target: str) -> float:
    """flow_grpo's normalised edit distance ``flow_distance / len(normalize(target))`` in
    [0, 1]; its reward is ``1 - flow_ned``."""
    return flow_distance(recognized, target) / len(normalize(target))


def normalized_edit_distance(recognized: str, target: str) -> float:
    """``levenshtein / max(len)`` of the normalised strings (0 when both are empty)."""
    r, t = normalize(recognized), normalize(target)
    return levenshtein(r, t) / max(len(r), len(t)) if (r or t) else 0.0


def word_accuracy(lines: Sequence[str], target: str) -> float:
    """The fraction of the target's words (lower-cased, whitespace-split) found among the
    recognised lines' words, each recognised word matching at most one target word."""
    want = target.lower().split()
    if not want:
        raise ValueError(f'target {target!r} has no words')
    have = Counter(' '.join(lines).lower().split())
    hit = 0
    for w in want:
        if have[w] > 0:
            have[w] -= 1
            hit += 1
    return hit / len(want)


# ---------------------------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------------------------

def sort_boxes(boxes: Sequence[np.ndarray], row_tolerance: float = 10.0) -> list[np.ndarray]:
    """Reading order: by the first corner's (y, x); then neighbours whose y differ by less than
    ``row_tolerance`` are put left to right (PaddleOCR's ``sorted_boxes``)."""
    out = sorted(boxes, key=lambda b: (float(b[0][1]), float(b[0][0])))
    for i in range(len(out) - 1):
        for j in range(i, -1, -1):
            a, b = out[j], out[j + 1]
            if abs(float(b[0][1]) - float(a[0][1])) < row_tolerance and b[0][0] < a[0][0]:
                out[j], out[j + 1] = b, a
            else:
                break
    return out


def crop_box(image: np.ndarray, box: np.ndarray) -> Optional[np.ndarray]:
    """The quadrilateral ``box`` (corners tl, tr, br, bl; ``[4, 2]`` x, y) of an ``[H, W, 3]``
    uint8 image warped to an upright rectangle; None for a degenerate box."""
    import cv2
    pts = np.asarray(box, dtype=np.float32).reshape(4, 2)
    w = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3])))
    h = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
    if w < 1 or h < 1:
        return None
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(pts, dst)
    crop = cv2.warpPerspective(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE,
                               flags=cv2.INTER_CUBIC)
    if h / w >= 1.5:
        crop = np.rot90(crop)
    return np.ascontiguousarray(crop)


# ---------------------------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------------------------

def _classes(model_type: str, table: dict, path: str, owner: str, what: str):
    import transformers
    if model_type not in table:
        raise ValueError(f'{owner}: {path} has model_type={model_type!r}; a {what} directory '
                         f'must be one of {sorted(table)} (PaddlePaddle/PP-OCRv5_*_safetensors)')
    names = table[model_type]
    if not all(hasattr(transformers, n) for n in names):
        raise ImportError(f'{owner} needs transformers with {names[1]} (PP-OCRv5 port), this is '
                          f'transformers {transformers.__version__}: upgrade transformers')
    return [getattr(transformers, n) for n in names]


def load_ocr_model(directory: str, table: dict, *, owner: str, what: str):
    """``(model, image_processor, weights_path)`` of a PP-OCRv5 ``*_safetensors`` directory,
    the model built without initialisation and filled by a strict, data-only load."""
    directory = os.path.expanduser(str(directory))
    if not os.path.isdir(directory):
        raise missing_file(owner, f'{what} directory', directory, OCR_FILE_SOURCES)
    where = OCR_FILE_SOURCES.get(os.path.basename(directory.rstrip('/')),
                                 f'{_HF}PP-OCRv5_{{mobile,server}}_{what[:3]}_safetensors')
    for name in ('config.json', 'model.safetensors', 'preprocessor_config.json'):
        if not os.path.isfile(os.path.join(directory, name)):
            raise missing_file(owner, f'{what} file', os.path.join(directory, name),
                               {name: where})
    config_path = os.path.join(directory, 'config.json')
    with open(config_path) as f:
        model_type = json.load(f).get('model_type')
    config_cls, model_cls = _classes(model_type, table, config_path, owner, what)
    config = config_cls.from_pretrained(directory, local_files_only=True)
    model = build_on_meta(lambda: model_cls(config))
    weights = os.path.join(directory, 'model.safetensors')
    state = read_state_dict(weights, what=f'{owner} {what} weights')
    counters = tuple(k for k in model.state_dict()
                     if k.endswith('num_batches_tracked') and k not in state)
    load_state_dict_strict(model, state, source=weights, ignore=counters,
                           hint=f'{owner} expects the {what} directory of '
                                f'PaddlePaddle/PP-OCRv5_*_safetensors (its config.json must '
                                f'describe these weights)')
    for k in counters:
        owner_name, _, attr = k.rpartition('.')
        getattr(model.get_submodule(owner_name), attr).zero_()
    from transformers import AutoImageProcessor
    processor = AutoImageProcessor.from_pretrained(directory, local_files_only=True)
    return model.eval().requires_grad_(False), processor, weights


def _setting(processor, name: str, default):
    value = getattr(processor, name, None)
    return default if value is None else value


def _size(value, owner: str) -> tuple[int, int]:
    if isinstance(value, dict):
        return int(value['height']), int(value['width'])
    return int(value.height), int(value.width)


class PPOCRv5Reader:
    """PP-OCRv5 detection + recognition (module docstring): ``read(images)`` -> per image the
    recognised lines ``[(text, score), ...]`` in reading order.

    Args:
        det_checkpoint: local ``PP-OCRv5_{mobile,server}_det_safetensors`` directory.
        rec_checkpoint: local ``PP-OCRv5_{mobile,server}_rec_safetensors`` directory.
        det_threshold: binarisation threshold of the probability map (0.3).
        box_threshold: minimum mean probability of a box (0.6).
        unclip_ratio: box expansion (1.5).
        drop_score: lines with a lower recognition score are dropped (0.5).
        rec_batch_size: crops per recognition forward.
        owner: the name used in messages.
    """

    def __init__(self, det_checkpoint: str, rec_checkpoint: str, *, det_threshold: float = 0.3,
                 box_threshold: float = 0.6, unclip_ratio: float = 1.5, drop_score: float = 0.5,
                 rec_batch_size: int = 32, owner: str = 'PPOCRv5Reader') -> None:
        self.det, self.det_processor, self.det_weights = load_ocr_model(
            det_checkpoint, _DET_MODELS, owner=owner, what='detector')
        self.rec, self.rec_processor, self.rec_weights = load_ocr_model(
            rec_checkpoint, _REC_MODELS, owner=owner, what='recogniser')
        chars = list(_setting(self.rec_processor, 'character_list', []))
        n_out = int(self.rec.config.head_out_channels)
        if len(chars) != n_out:
            raise ValueError(f'{owner}: {rec_checkpoint}/preprocessor_config.json has '
                             f'{len(chars)} entries in character_list but the recogniser has '
                             f'{n_out} outputs: use the preprocessor_config.json published with '
                             f'these weights')
        p = self.det_processor
        self.det_cfg = dict(limit_side_len=int(_setting(p, 'limit_side_len', 960)),
                            limit_type=str(_setting(p, 'limit_type', 'max')),
                            max_side_limit=_setting(p, 'max_side_limit', 4000),
                            mean=tuple(_setting(p, 'image_mean', (0.406, 0.456, 0.485))),
                            std=tuple(_setting(p, 'image_std', (0.225, 0.224, 0.229))))
        if self.det_cfg['limit_type'] not in ('max', 'min', 'resize_long'):
            raise ValueError(f'{owner}: limit_type={self.det_cfg["limit_type"]!r} in '
                             f'{det_checkpoint}/preprocessor_config.json; supported: max, min, '
                             f'resize_long')
        r = self.rec_processor
        self.rec_cfg = dict(size=_size(_setting(r, 'size', {'height': 48, 'width': 320}), owner),
                            pad=_size(_setting(r, 'pad_size', {'height': 48, 'width': 320}),
                                      owner),
                            max_width=int(_setting(r, 'max_image_width', 3200)),
                            mean=tuple(_setting(r, 'image_mean', (0.5, 0.5, 0.5))),
                            std=tuple(_setting(r, 'image_std', (0.5, 0.5, 0.5))))
        self.det_threshold = float(det_threshold)
        self.box_threshold = float(box_threshold)
        self.unclip_ratio = float(unclip_ratio)
        self.drop_score = float(drop_score)
        self.rec_batch_size = int(rec_batch_size)

    # -- detection --------------------------------------------------------------------------
    def det_size(self, height: int, width: int) -> tuple[int, int]:
        """The detector's input size: transformers' ``get_image_size`` (multiples of 32)."""
        c = self.det_cfg
        side, kind = c['limit_side_len'], c['limit_type']
        if kind == 'max':
            ratio = side / max(height, width) if max(height, width) > side else 1.0
        elif kind == 'min':
            ratio = side / min(height, width) if min(height, width) < side else 1.0
        else:
            ratio = side / max(height, width)
        h, w = int(height * ratio), int(width * ratio)
        if c['max_side_limit'] is not None and max(h, w) > c['max_side_limit']:
            ratio = float(c['max_side_limit']) / max(h, w)
            h, w = int(h * ratio), int(w * ratio)
        return max(int(round(h / 32) * 32), 32), max(int(round(w / 32) * 32), 32)

    @staticmethod
    def _normalize(x: Tensor, mean, std) -> Tensor:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x / 255.0 - m) / s

    def det_pixels(self, images255: Tensor) -> Tensor:
        """``[B, 3, h, w]`` detector input of ``[B, 3, H, W]`` RGB images in 0..255."""
        size = self.det_size(*images255.shape[-2:])
        x = images255
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False,
                              antialias=True)
        x = self._normalize(x, self.det_cfg['mean'], self.det_cfg['std'])
        return x[:, [2, 1, 0]]

    def detect(self, images255: Tensor) -> list[np.ndarray]:
        """Per image the text boxes ``[N, 4, 2]`` (x, y; original pixels), in reading order."""
        self._to(images255.device)
        probs = self.det(self.det_pixels(images255)).last_hidden_state.float()
        h, w = images255.shape[-2:]
        found = self.det_processor.post_process_object_detection(
            SimpleNamespace(last_hidden_state=probs.cpu()), threshold=self.det_threshold,
            target_sizes=torch.tensor([[h, w]] * probs.shape[0], dtype=torch.float32),
            box_threshold=self.box_threshold, unclip_ratio=self.unclip_ratio)
        return [sort_boxes(list(r['boxes'].numpy().reshape(-1, 4, 2))) for r in found]

    # -- recognition ------------------------------------------------------------------------
    def rec_width(self, height: int, width: int) -> int:
        """The resized width of a crop (transformers' ``get_target_size`` for one image)."""
        th, tw0 = self.rec_cfg['size']
        ratio = max(width / height, tw0 / th)
        tw = int(th * ratio)
        if tw > self.rec_cfg['max_width']:
            return self.rec_cfg['max_width']
        return min(tw, int(math.ceil(th * width / height)))

    def rec_pixels(self, crop: np.ndarray, device: torch.device) -> Tensor:
        """``[3, 48, W]`` recogniser input of an ``[h, w, 3]`` uint8 RGB crop."""
        th = self.rec_cfg['size'][0]
        x = torch.from_numpy(crop).to(device).permute(2, 0, 1)[None].float()
        tw = self.rec_width(*crop.shape[:2])
        x = F.interpolate(x, size=(th, tw), mode='bilinear', align_corners=False, antialias=True)
        x = self._normalize(x, self.rec_cfg['mean'], self.rec_cfg['std'])
        pad_w = self.rec_cfg['pad'][1]
        if tw < pad_w:
            x = F.pad(x, (0, pad_w - tw))
        return x[0]

    def recognize(self, crops: Sequence[np.ndarray], device: torch.device
                  ) -> list[tuple[str, float]]:
        """``(text, score)`` of each crop (greedy CTC)."""
        self._to(device)
        pixels = [self.rec_pixels(c, device) for c in crops]
        out: list = [None] * len(pixels)
        by_width: dict = {}
        for i, p in enumerate(pixels):
            by_width.setdefault(p.shape[-1], []).append(i)
        for idx in by_width.values():
            for k in range(0, len(idx), self.rec_batch_size):
                chunk = idx[k:k + self.rec_batch_size]
                probs = self.rec(torch.stack([pixels[i] for i in chunk])).last_hidden_state
                decoded = self.rec_processor.post_process_text_recognition(
                    SimpleNamespace(last_hidden_state=probs.float().cpu()))
                for i, d in zip(chunk, decoded):
                    score = float(d['score'])
                    out[i] = (d['text'], score if math.isfinite(score) else 0.0)
        return out

    def _to(self, device: torch.device) -> None:
        for m in (self.det, self.rec):
            if next(m.parameters()).device != device:
                m.to(device)

    @torch.no_grad()
    def read(self, images: Tensor) -> list[list[tuple[str, float]]]:
        """Per image of ``[B, 3, H, W]`` RGB in [0, 1], the lines ``(text, score)`` kept
        (score >= ``drop_score``), in reading order."""
        return self.read_with_boxes(images)[0]

    @torch.no_grad()
    def read_with_boxes(self, images: Tensor
                        ) -> tuple[list[list[tuple[str, float]]], list[np.ndarray]]:
        """:meth:`read`'s lines and every detected text box per image (``[N, 4, 2]`` x, y
        corners in pixels, also those whose recognition was dropped), from one detection."""
        images255 = (images.float().clamp(0, 1) * 255).round()
        boxes = self.detect(images255)
        hwc = images255.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
        crops, owner = [], []
        for b, bxs in enumerate(boxes):
            for box in bxs:
                c = crop_box(hwc[b], box)
                if c is not None:
                    crops.append(c)
                    owner.append(b)
        lines: list[list[tuple[str, float]]] = [[] for _ in range(images.shape[0])]
        if crops:
            for b, (text, score) in zip(owner, self.recognize(crops, images.device)):
                if score >= self.drop_score:
                    lines[b].append((text, score))
        return lines, boxes


def box_regions(boxes: Sequence[np.ndarray], height: int, width: int) -> Tensor:
    """``[B, H, W]`` float32 masks: 1 inside any text box of the image (the filled
    quadrilaterals, :func:`cv2.fillPoly` on pixel centres), 0 elsewhere."""
    import cv2
    out = np.zeros((len(boxes), height, width), dtype=np.uint8)
    for i, bxs in enumerate(boxes):
        polys = [np.round(np.asarray(b, dtype=np.float64).reshape(4, 2)).astype(np.int32)
                 for b in bxs]
        if polys:
            cv2.fillPoly(out[i], polys, 1)
    return torch.from_numpy(out.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# the head
# ---------------------------------------------------------------------------------------------

@REWARD_HEADS.register_module()
class OcrReward(RewardHead):
    """flow_grpo's OCR reward ``1 - NED`` of the prompt's quoted text, with word accuracy and
    NED as metrics (module docstring).

    Args:
        det_checkpoint: local ``PP-OCRv5_mobile_det_safetensors`` (or server) directory.
        rec_checkpoint: local ``PP-OCRv5_mobile_rec_safetensors`` (or server) directory.
        quotes: ``'first'`` (flow_grpo: the first quoted span) or ``'all'`` (every quoted span).
        class_names: None (score ``rollout.cond.prompts``), or ``'imagenet'``, ``'shapes'``, a
            list: the texts are ``template`` filled with the class name of
            ``rollout.cond.class_ids``.
        template: the class-name template; it must quote the name, e.g.
            ``'a sign that says "{}"'``.
        reader: an object with ``read(images) -> [[(text, score), ...], ...]`` used instead of
            the PP-OCRv5 files (tests, another OCR engine).
        det_threshold, box_threshold, unclip_ratio, drop_score, rec_batch_size: see
            :class:`PPOCRv5Reader`.

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float32 on the images' device, metrics={'ned', 'ned_max',
        'word_accuracy', 'lines', 'no_target'}, strict [B] bool)``; NaN for an image with NaN
        pixels or a text without quotes.

    Examples:
        >>> rewards = dict(ocr=dict(
        ...     type='OcrReward',
        ...     det_checkpoint='checkpoints/ocr/PP-OCRv5_mobile_det_safetensors',
        ...     rec_checkpoint='checkpoints/ocr/PP-OCRv5_mobile_rec_safetensors'))
    """

    file_sources: dict[str, str] = OCR_FILE_SOURCES

    def __init__(self, *, det_checkpoint: Optional[str] = None,
                 rec_checkpoint: Optional[str] = None, quotes: str = 'first',
                 class_names: Union[None, str, Sequence[str]] = None,
                 template: str = 'a sign that says "{}"', reader=None,
                 det_threshold: float = 0.3, box_threshold: float = 0.6,
                 unclip_ratio: float = 1.5, drop_score: float = 0.5,
                 rec_batch_size: int = 32, regions: bool = False) -> None:
        name = type(self).__name__
        if quotes not in ('first', 'all'):
            raise ValueError(f"{name} quotes={quotes!r} must be 'first' (flow_grpo) or 'all'")
        if isinstance(rec_batch_size, bool) or not isinstance(rec_batch_size, int) \
                or rec_batch_size < 1:
            raise ValueError(f'{name} rec_batch_size={rec_batch_size!r} must be an int >= 1')
        self.class_names = resolve_class_names(class_names, name)
        if self.class_names is not None and (not isinstance(template, str)
                                             or template.count('{}') != 1
                                             or not re.search(r'"[^"]*\{\}[^"]*"', template)):
            raise ValueError(f'{name} template={template!r} must quote the class name once, '
                             f'e.g. \'a sign that says "{{}}"\'')
        self.template = template
        self.quotes = quotes
        if reader is None:
            for key, value in (('det_checkpoint', det_checkpoint),
                               ('rec_checkpoint', rec_checkpoint)):
                if not isinstance(value, str) or not value:
                    which = 'det' if key.startswith('det') else 'rec'
                    raise ValueError(f'{name} needs {key}=<local PP-OCRv5 directory> (vargo '
                                     f'never downloads); it is published at '
                                     f'{OCR_FILE_SOURCES[f"PP-OCRv5_mobile_{which}_safetensors"]}')
            reader = PPOCRv5Reader(det_checkpoint, rec_checkpoint, det_threshold=det_threshold,
                                   box_threshold=box_threshold, unclip_ratio=unclip_ratio,
                                   drop_score=drop_score, rec_batch_size=rec_batch_size,
                                   owner=name)
        elif not callable(getattr(reader, 'read', None)):
            raise ValueError(f'{name} reader={reader!r} has no read(images) method')
        if not isinstance(regions, bool):
            raise ValueError(f'{name} regions={regions!r} must be True or False')
        if regions and not callable(getattr(reader, 'read_with_boxes', None)):
            raise ValueError(f'{name} regions=True needs a reader with read_with_boxes(images) '
                             f'(the text boxes); {type(reader).__name__} has none')
        self.regions = regions
        self.reader = reader
        self.det_checkpoint, self.rec_checkpoint = det_checkpoint, rec_checkpoint

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(det_checkpoint={self.det_checkpoint!r}, '
                f'rec_checkpoint={self.rec_checkpoint!r}, quotes={self.quotes!r})')

    @staticmethod
    def score_lines(lines: Sequence[tuple[str, float]], target: Optional[str]) -> dict:
        """The per-image numbers: ``reward``, ``ned``, ``ned_max``, ``word_accuracy`` (NaN
        without a target)."""
        texts = [t for t, s in lines if s > 0]          # flow_grpo keeps lines with score > 0
        if target is None or not normalize(target):
            nan = float('nan')
            return dict(reward=nan, ned=nan, ned_max=nan, word_accuracy=nan)
        joined = ''.join(texts)
        ned = flow_ned(joined, target)
        return dict(reward=1.0 - ned, ned=ned, ned_max=normalized_edit_distance(joined, target),
                    word_accuracy=word_accuracy(texts, target))

    @torch.no_grad()
    def __call__(self, rollout: Rollout, ctx: Optional[RewardContext] = None) -> RewardOutput:
        name = type(self).__name__
        texts = condition_texts(rollout, self.class_names, self.template, name)
        images = check_images(rollout, len(texts), name)
        finite = torch.isfinite(images.reshape(images.shape[0], -1)).all(1).cpu().tolist()
        clean = torch.nan_to_num(images.detach(), nan=0.0)
        if self.regions:
            read, boxes = self.reader.read_with_boxes(clean)
            regions = box_regions(boxes, *images.shape[-2:]).to(images.device)
        else:
            read, regions = self.reader.read(clean), None
        if len(read) != len(texts):
            raise RuntimeError(f'{name}: the reader returned {len(read)} results for '
                               f'{len(texts)} images')
        rows = [self.score_lines(lines, target_text(t, self.quotes)) if ok else
                dict(reward=float('nan'), ned=float('nan'), ned_max=float('nan'),
                     word_accuracy=float('nan'))
                for lines, t, ok in zip(read, texts, finite)]
        scores = torch.tensor([r['reward'] for r in rows], dtype=torch.float32,
                              device=images.device)
        metrics = {'no_target': float(sum(target_text(t, self.quotes) is None for t in texts)),
                   'lines': float(np.mean([len(x) for x in read])) if read else 0.0}
        for key in ('ned', 'ned_max', 'word_accuracy'):
            vals = [r[key] for r in rows if not math.isnan(r[key])]
            metrics[key] = float(np.mean(vals)) if vals else float('nan')
        strict = torch.tensor([r['word_accuracy'] == 1.0 for r in rows], device=images.device)
        if regions is not None:
            metrics['region_frac'] = float(regions.mean())
        return RewardOutput(scores=scores, metrics=metrics, strict=strict, regions=regions)
