"""GenEval (Ghosh et al., arXiv 2310.11513; code djghosh13/geneval) as a reward / metric head.

Per image: Mask2Former instance segmentation (COCO, 80 classes), GenEval's rules on the kept
detections (:mod:`vargo.components.rewards.geneval_rules`), CLIP colour classification of the
masked crops; the score is GenEval's strict per-image correctness (1 or 0) and the metrics are
its summary (per-tag accuracy, their mean, correct images and prompts). The prompts' clauses
come from the user's GenEval metadata file (``prompts/evaluation_metadata.jsonl`` format); an
image is matched to its clauses by its prompt text.

Detector
--------
GenEval runs mmdet 2.x's ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`` (Swin-S, trained by
OpenMMLab with mmdet). mmdet 2.x does not install here: it needs mmcv-full 1.x, whose PyPI
release is source only (C++/CUDA ops compiled against torch 1.x); no wheel exists for this
Python 3.11 / torch 2 environment, so neither the official model nor a converter from its
checkpoint could be run or checked against it. vargo therefore uses transformers'
implementation (``Mask2FormerModel`` + the ``class_predictor`` of
``Mask2FormerForUniversalSegmentation``, its key layout, loaded from a local directory with
``local_files_only``) with the Hugging Face release
``facebook/mask2former-swin-small-coco-instance``: the same architecture (Swin-S, window 7,
100 queries, 80 COCO classes) trained by the Mask2Former authors with Detectron2, a *different
training run*. **GenEval scores with it
differ from the official detector's; by how much was not measured** (no official model could
run here). Everything around the network is mmdet's inference, re-implemented on tensors from
a reading of mmdet 2.28's code (its wheel installs without mmcv-full, so its sources and the
``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`` config were read, not run):

* preprocessing (the config's test pipeline): the image as 8 bits, resized keeping its aspect
  ratio to fit 1333 x 800 (scale ``min(1333 / long side, 800 / short side)``, sizes rounded
  ``int(x * s + 0.5)``, bilinear without antialiasing as ``cv2.INTER_LINEAR``, rounded back to
  8 bits; cv2's fixed-point arithmetic can differ by one level), padded at the bottom/right to
  a multiple of 32 with the value 128, normalised with ImageNet's mean/std (0-255 scale);
* ``MaskFormerFusionHead.instance_postprocess``: softmax over the 81 classes (the last is "no
  object") dropped, the top 100 (query, class) pairs, their mask logits upsampled bilinearly
  to the padded size, cropped to the resized image, upsampled to the original size, binarised
  at 0; score = class probability x mean sigmoid inside the mask; box = the mask's extent
  (``mask2bbox``: ``x_max + 1``).

Only pairs whose class probability exceeds the lowest threshold in use are upsampled (exact:
the mask factor is at most 1, and the rules keep ``score > threshold`` only).

Colours
-------
As ``color_classification``: each detection's masked crop (the image where the mask is set,
grey ``#999`` elsewhere, cropped to its box), CLIP's preprocessing (open_clip's eval
transform, :func:`~vargo.components.rewards.clip_score.clip_preprocess`), OpenCLIP ViT-L-14
with OpenAI's weights (:func:`~vargo.components.rewards.clip_score.load_open_clip`, strict,
local), a zero-shot classifier over GenEval's 10 colours whose class vectors are the
renormalised mean of the normalised text features of ``COLOR_TEMPLATES`` for the object
(clip_benchmark's ``zero_shot_classifier``), argmax of the cosine. fp32 here; the official code
runs under CUDA autocast (fp16), which can flip near-ties.

Protocol: GenEval samples 4 images per prompt (``generation/diffusers_generate.py``:
``--n_samples 4``, ``--seed 42``); ``configs/_base_/rewards/geneval.py`` sets
``eval_cfg.samples_per_condition=4`` and ``seed=42``, and ``tools/eval.py`` prints the summary.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from vargo.core.checkpoint import StateDictMismatch, safe_load
from vargo.core.interfaces import RewardHead
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import RewardContext, RewardOutput, Rollout

from . import geneval_rules as R
from .clip_score import OPEN_CLIP_FILE_SOURCES, clip_preprocess, load_open_clip
from .preference_common import missing_file

__all__ = ['GenEvalReward', 'Mask2FormerDetector', 'ColourClassifier', 'GENEVAL_FILE_SOURCES',
           'mask2bbox', 'mmdet_resize_shape']

#: file or directory name -> where it is published (``check_files`` reports it)
GENEVAL_FILE_SOURCES: dict[str, str] = {
    'mask2former-swin-small-coco-instance':
        'https://huggingface.co/facebook/mask2former-swin-small-coco-instance (config.json and '
        'model.safetensors; the Detectron2-trained release, not GenEval\'s mmdet checkpoint)',
    'evaluation_metadata.jsonl':
        'https://github.com/djghosh13/geneval/blob/main/prompts/evaluation_metadata.jsonl '
        '(GenEval\'s 553 prompts; any file in its format works)',
    'train_metadata.jsonl':
        'https://github.com/yifan123/flow_grpo/blob/main/dataset/geneval/train_metadata.jsonl '
        '(Flow-GRPO\'s GenEval-style training prompts, which STAGE trains on)',
    **OPEN_CLIP_FILE_SOURCES,
}
_DETECTOR_SOURCE = GENEVAL_FILE_SOURCES['mask2former-swin-small-coco-instance']
#: mmdet's ``img_norm_cfg`` (RGB, 0-255)
MMDET_MEAN = (123.675, 116.28, 103.53)
MMDET_STD = (58.395, 57.12, 57.375)
#: keys a transformers 4.x ``Mask2FormerForUniversalSegmentation`` file may hold that the
#: inference model does not: the loss's class weights and Swin's derived position index
_IGNORED_FILE_KEYS = ('criterion.empty_weight', 'relative_position_index')


def mmdet_resize_shape(h: int, w: int, scale: Sequence[int] = (1333, 800)) -> tuple[int, int]:
    """mmcv ``rescale_size``: ``(h', w')`` fitting ``max(scale) x min(scale)``, aspect kept."""
    s = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * s + 0.5), int(w * s + 0.5)


def mask2bbox(masks: Tensor) -> Tensor:
    """``[N, H, W]`` bool masks -> ``[N, 4]`` float (x1, y1, x2 + 1, y2 + 1); zeros for an
    empty mask (mmdet's ``mask2bbox``)."""
    n = masks.shape[0]
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    if n == 0:
        return boxes
    cols, rows = masks.any(1), masks.any(2)                       # [N, W], [N, H]
    has = cols.any(1)
    w, h = cols.shape[1], rows.shape[1]
    ar_w = torch.arange(w, device=masks.device)
    ar_h = torch.arange(h, device=masks.device)
    x1 = torch.where(cols, ar_w, w).min(1).values
    x2 = torch.where(cols, ar_w, -1).max(1).values + 1
    y1 = torch.where(rows, ar_h, h).min(1).values
    y2 = torch.where(rows, ar_h, -1).max(1).values + 1
    boxes[has] = torch.stack([x1, y1, x2, y2], 1)[has].float()
    return boxes


def _instance_model_class():
    from torch import nn
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerModel, Mask2FormerPreTrainedModel)

    class Mask2FormerInstanceModel(Mask2FormerPreTrainedModel):
        """``Mask2FormerForUniversalSegmentation`` without its loss (whose construction needs
        scipy): ``model`` and ``class_predictor``, the same key layout and inference."""

        def __init__(self, config):
            super().__init__(config)
            self.model = Mask2FormerModel(config)
            self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
            self.post_init()

        def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
            """``(class logits [B, Q, C + 1], mask logits [B, Q, H / 4, W / 4])`` of the last
            decoder layer, as ``Mask2FormerForUniversalSegmentation`` computes them."""
            out = self.model(pixel_values=pixel_values, output_hidden_states=True,
                             return_dict=True)
            last = out.transformer_decoder_intermediate_states[-1]
            return self.class_predictor(last.transpose(0, 1)), out.masks_queries_logits[-1]

    return Mask2FormerInstanceModel


_MODEL_CLASS = None


def instance_model_class():
    """The inference module class (built on first use: it imports transformers)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        _MODEL_CLASS = _instance_model_class()
    return _MODEL_CLASS


class Mask2FormerDetector:
    """Mask2Former instance segmentation with mmdet 2.x's inference (module docstring).

    Args:
        directory: local transformers directory (``config.json`` + ``model.safetensors`` or a
            data-only ``pytorch_model.bin``) of a COCO instance-segmentation Mask2Former.
        image_scale: the test pipeline's ``img_scale`` (1333, 800).
        size_divisor: pad to a multiple of this (32).
        pad_value: the padding's pixel value before normalisation (128).
        max_per_image: the (query, class) pairs kept (100).
        batch_size: images per forward.
        owner: the component's name, for messages.
    """

    def __init__(self, directory: str, *, image_scale: Sequence[int] = (1333, 800),
                 size_divisor: int = 32, pad_value: float = 128.0, max_per_image: int = 100,
                 batch_size: int = 4, owner: str = 'GenEvalReward') -> None:
        self.owner = owner
        if (not isinstance(image_scale, (list, tuple)) or len(image_scale) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8
                           for v in image_scale)):
            raise ValueError(f'{owner} image_scale={image_scale!r} must be two integers >= 8 '
                             f'(long, short side; official (1333, 800))')
        for key, v in (('size_divisor', size_divisor), ('max_per_image', max_per_image),
                       ('batch_size', batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f'{owner} {key}={v!r} must be an integer >= 1')
        self.image_scale = tuple(image_scale)
        self.size_divisor = int(size_divisor)
        self.pad_value = float(pad_value)
        self.max_per_image = int(max_per_image)
        self.batch_size = int(batch_size)
        self.directory = directory
        self.model = self._load(directory)
        self.num_labels = int(self.model.config.num_labels)

    def _load(self, directory: str):
        owner = self.owner
        path = os.path.expanduser(str(directory))
        if not os.path.isdir(path):
            raise missing_file(owner, 'detector directory', str(directory), GENEVAL_FILE_SOURCES)
        if not os.path.isfile(os.path.join(path, 'config.json')):
            raise missing_file(owner, 'detector config', os.path.join(path, 'config.json'),
                               {'config.json': _DETECTOR_SOURCE})
        st = os.path.join(path, 'model.safetensors')
        binf = os.path.join(path, 'pytorch_model.bin')
        if not os.path.isfile(st):
            if not os.path.isfile(binf):
                raise FileNotFoundError(
                    f'{owner} detector directory {str(directory)!r} holds neither '
                    f'model.safetensors nor pytorch_model.bin; download them from '
                    f'{_DETECTOR_SOURCE}')
            safe_load(binf)           # refuses a file with anything but plain data
        from transformers import Mask2FormerConfig
        config = Mask2FormerConfig.from_json_file(os.path.join(path, 'config.json'))
        if int(config.num_labels) != len(R.GENEVAL_OBJECT_NAMES):
            raise ValueError(f'{owner}: {path}/config.json has num_labels={config.num_labels}; '
                             f'GenEval needs the 80 COCO detection classes (an instance-'
                             f'segmentation checkpoint such as {_DETECTOR_SOURCE.split()[0]})')
        _check_label_names(config, path, owner)
        model, info = instance_model_class().from_pretrained(
            path, config=config, local_files_only=True, output_loading_info=True)
        unexpected = sorted(k for k in info.get('unexpected_keys', ())
                            if not any(s in k for s in _IGNORED_FILE_KEYS))
        missing = sorted(info.get('missing_keys', ()))
        mismatched = sorted(str(k) for k in info.get('mismatched_keys', ()))
        if missing or unexpected or mismatched:
            parts = [f'{what} {keys[:8]}' + (f' (+{len(keys) - 8})' if len(keys) > 8 else '')
                     for what, keys in (('missing keys', missing),
                                        ('unexpected keys', unexpected),
                                        ('mismatched shapes', mismatched)) if keys]
            raise StateDictMismatch(f'{owner}: {path} does not match its config.json: '
                                    f'{"; ".join(parts)}; it must be a transformers '
                                    f'Mask2FormerForUniversalSegmentation directory such as '
                                    f'{_DETECTOR_SOURCE.split()[0]}')
        return model.float().eval().requires_grad_(False)

    def _model_on(self, device: torch.device):
        if self.model.class_predictor.weight.device != device:
            self.model.to(device)
        return self.model

    # -- preprocessing -------------------------------------------------------------------------
    def preprocess(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``[B, 3, H, W]`` in [0, 1] -> (normalised padded ``[B, 3, Hp, Wp]``, ``(h', w')``
        the resized size before padding)."""
        x = (images.detach().float() * 255.0).round().clamp(0.0, 255.0)
        h, w = x.shape[-2:]
        nh, nw = mmdet_resize_shape(h, w, self.image_scale)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode='bilinear', align_corners=False,
                              antialias=False).round().clamp(0.0, 255.0)
        d = self.size_divisor
        ph, pw = -(-nh // d) * d, -(-nw // d) * d
        if (ph, pw) != (nh, nw):
            x = F.pad(x, (0, pw - nw, 0, ph - nh), value=self.pad_value)
        mean = torch.tensor(MMDET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(MMDET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std, (nh, nw)

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, images: Tensor, min_score: float = 0.0) -> list[dict]:
        """Instance detections of ``[B, 3, H, W]`` images in [0, 1]: per image a dict with
        ``labels [N]`` (long), ``boxes [N, 4]``, ``scores [N]``, ``masks [N, H, W]`` (bool), on
        the images' device; only (query, class) pairs of class probability > ``min_score``."""
        model = self._model_on(images.device)
        out = []
        for chunk in images.split(self.batch_size):
            pixels, resized = self.preprocess(chunk)
            cls, masks = model(pixels)
            for b in range(chunk.shape[0]):
                out.append(self.postprocess(cls[b], masks[b], pixels.shape[-2:], resized,
                                            tuple(chunk.shape[-2:]), min_score))
        return out

    def postprocess(self, cls: Tensor, masks: Tensor, padded, resized, original,
                    min_score: float = 0.0) -> dict:
        """mmdet's upsampling and ``instance_postprocess`` of one image (module docstring)."""
        q, c1 = cls.shape
        probs = cls.float().softmax(-1)[:, :-1]                       # [Q, C]
        c = c1 - 1
        k = min(self.max_per_image, q * c)
        top, idx = probs.flatten().topk(k, sorted=False)
        keep = top > min_score
        top, idx = top[keep], idx[keep]
        labels, queries = idx % c, idx // c
        m = masks[queries].float()[None]                              # [1, n, h, w]
        if m.shape[1]:
            m = F.interpolate(m, size=tuple(padded), mode='bilinear', align_corners=False)
            m = m[..., :resized[0], :resized[1]]
            m = F.interpolate(m, size=tuple(original), mode='bilinear', align_corners=False)
        m = m[0] if m.shape[1] else masks.new_zeros((0, *original), dtype=torch.float32)
        binary = m > 0
        fb = binary.float()
        mask_scores = (m.sigmoid() * fb).flatten(1).sum(1) / (fb.flatten(1).sum(1) + 1e-6)
        return dict(labels=labels, boxes=mask2bbox(binary), scores=top * mask_scores,
                    masks=binary)


def _check_label_names(config, path: str, owner: str) -> None:
    names = [str(config.id2label.get(i, config.id2label.get(str(i), f'LABEL_{i}')))
             for i in range(int(config.num_labels))]
    if all(n == f'LABEL_{i}' for i, n in enumerate(names)):
        return
    for i, n in enumerate(names):
        if n not in (R.MMDET_COCO_NAMES[i], R.GENEVAL_OBJECT_NAMES[i]):
            raise ValueError(f'{owner}: {path}/config.json labels class {i} {n!r}, but GenEval '
                             f'reads label {i} as {R.GENEVAL_OBJECT_NAMES[i]!r} (COCO\'s 80 '
                             f'detection classes in mmdet order); use a COCO instance-'
                             f'segmentation checkpoint')


class ColourClassifier:
    """GenEval's CLIP colour classifier (module docstring).

    Args:
        arch, checkpoint, weights_tag, random_init: as
            :func:`~vargo.components.rewards.clip_score.load_open_clip`.
        background: RGB (0-255) of the crops' background (GenEval: ``#999``).
        batch_size: crops per image-encoder forward.
    """

    def __init__(self, arch: Union[str, dict] = 'ViT-L-14', checkpoint: Optional[str] = None, *,
                 weights_tag: Optional[str] = 'openai', random_init: bool = False,
                 background: Sequence[int] = (153, 153, 153), batch_size: int = 16,
                 owner: str = 'GenEvalReward') -> None:
        if (not isinstance(background, (list, tuple)) or len(background) != 3
                or not all(isinstance(v, int) and 0 <= v <= 255 for v in background)):
            raise ValueError(f'{owner} background={background!r} must be three integers in '
                             f'[0, 255] (GenEval: (153, 153, 153), "#999")')
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'{owner} clip_batch_size={batch_size!r} must be an integer >= 1')
        self.model, self.tokenizer = load_open_clip(
            arch, checkpoint, random_init=random_init, weights_tag=weights_tag, owner=owner,
            file_sources=GENEVAL_FILE_SOURCES)
        pp = dict(self.model.visual.preprocess_cfg)
        self.preprocess = dict(size=pp['size'], mean=tuple(pp['mean']), std=tuple(pp['std']),
                               resize_mode=pp.get('resize_mode', 'shortest'),
                               interpolation=pp.get('interpolation', 'bicubic'),
                               antialias=True, quantize=True, clamp=True)
        self.background = tuple(v / 255.0 for v in background)
        self.batch_size = int(batch_size)
        self._weights: OrderedDict = OrderedDict()

    def _model_on(self, device: torch.device):
        if next(self.model.parameters()).device != device:
            self.model.to(device)
            self._weights.clear()
        return self.model

    @torch.no_grad()
    def class_weights(self, object_name: str, device: torch.device) -> Tensor:
        """``[D, 10]`` zero-shot colour vectors for ``object_name`` (cached)."""
        model = self._model_on(device)
        if object_name not in self._weights:
            cols = []
            for colour in R.GENEVAL_COLORS:
                texts = [t.format(colour=colour, object=object_name) for t in R.COLOR_TEMPLATES]
                f = F.normalize(model.encode_text(self.tokenizer(texts).to(device)).float(), dim=-1)
                cols.append(F.normalize(f.mean(0), dim=-1))
            self._weights[object_name] = torch.stack(cols, 1)
        return self._weights[object_name]

    def crop(self, image: Tensor, det: R.Detection) -> Tensor:
        """``[1, 3, h, w]``: the image inside the mask (background elsewhere), cropped to the
        box (rounded as PIL's ``crop``)."""
        x = image
        if det.mask is not None:
            mask = torch.as_tensor(det.mask, device=image.device).bool()
            bg = torch.tensor(self.background, device=image.device).view(3, 1, 1)
            x = torch.where(mask[None], image, bg)
        x1, y1, x2, y2 = (int(round(v)) for v in det.box[:4])
        return x[None, :, max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)]

    @torch.no_grad()
    def classify(self, requests: list[tuple[Tensor, str, list[R.Detection]]]) -> list[list[str]]:
        """Colour names for each ``(image [3, H, W], object name, detections)`` request."""
        if not requests:
            return []
        device = requests[0][0].device
        model = self._model_on(device)
        pixels, owners = [], []
        for r, (image, name, dets) in enumerate(requests):
            for det in dets:
                crop = self.crop(image.float(), det)
                if crop.shape[-1] == 0 or crop.shape[-2] == 0:
                    raise ValueError(f'GenEval colour crop of {name} has an empty box {det.box}')
                pixels.append(clip_preprocess(crop, **self.preprocess))
                owners.append(r)
        feats = torch.cat([F.normalize(model.encode_image(torch.cat(pixels[i:i + self.batch_size]))
                                       .float(), dim=-1)
                           for i in range(0, len(pixels), self.batch_size)])
        out: list[list[str]] = [[] for _ in requests]
        for f, r in zip(feats, owners):
            w = self.class_weights(requests[r][1], device)
            out[r].append(R.GENEVAL_COLORS[int((f @ w).argmax())])
        return out


@REWARD_HEADS.register_module()
class GenEvalReward(RewardHead):
    """GenEval's per-image correctness (1/0) with its per-tag summary as metrics.

    Args:
        metadata_file: the GenEval metadata JSONL of the prompts scored (GenEval's format:
            ``prompt``, ``tag``, ``include``, ``exclude``), or a list of such files (e.g. the
            training prompts and GenEval's evaluation prompts; a prompt in two files must have
            the same clauses); every rollout prompt must be in one of them.
        detector_dir: local transformers Mask2Former COCO instance-segmentation directory
            (``facebook/mask2former-swin-small-coco-instance``).
        clip_checkpoint: local OpenCLIP weights (ViT-L-14 OpenAI:
            ``open_clip_model.safetensors`` of ``timm/vit_large_patch14_clip_224.openai``).
        clip_arch: open_clip architecture name or config dict (tests).
        clip_weights_tag: open_clip tag whose QuickGELU/preprocessing apply (``'openai'``).
        clip_random_init: random CLIP weights (tests only; ``clip_checkpoint=None``).
        rules: overrides of GenEval's rule settings (``threshold`` 0.3, ``counting_threshold``
            0.9, ``max_objects`` 16, ``max_overlap`` 1.0, ``position_threshold`` 0.1).
        image_scale: the detector's resize target ((1333, 800)).
        background: the colour crops' background ((153, 153, 153)).
        detector_batch_size, clip_batch_size: images / crops per forward.
        keep_records: keep the last call's per-image records in ``self.records`` (prompt, tag,
            correct, reason, kept detections).
        score: what an image scores: ``'strict'`` (GenEval's correctness, 1 or 0) or
            ``'partial'`` (the partial credit Flow-GRPO and STAGE train with,
            :func:`~vargo.components.rewards.geneval_rules.partial_credit`; the metric
            ``partial`` is its mean). ``strict`` and the GenEval summary are the same in both.

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float, strict [B] bool, metrics)``; metrics are
        :func:`~vargo.components.rewards.geneval_rules.summarize`'s over the batch (with
        ``score='partial'`` also ``partial``, the mean partial credit). An image
        with a non-finite value scores NaN (left out of group statistics) and counts as wrong
        in the summary.

    Examples:
        >>> rewards = dict(geneval=dict(
        ...     type='GenEvalReward', metadata_file='data/geneval/evaluation_metadata.jsonl',
        ...     detector_dir='checkpoints/geneval/mask2former-swin-small-coco-instance',
        ...     clip_checkpoint='checkpoints/clip/open_clip_model.safetensors'))
    """

    file_sources: dict[str, str] = GENEVAL_FILE_SOURCES

    def __init__(self, *, metadata_file: Union[str, Sequence[str]], detector_dir: str,
                 clip_checkpoint: Optional[str] = None, clip_arch: Union[str, dict] = 'ViT-L-14',
                 clip_weights_tag: Optional[str] = 'openai', clip_random_init: bool = False,
                 rules: Optional[dict] = None, image_scale: Sequence[int] = (1333, 800),
                 background: Sequence[int] = (153, 153, 153), detector_batch_size: int = 4,
                 clip_batch_size: int = 16, keep_records: bool = True,
                 score: str = 'strict') -> None:
        name = type(self).__name__
        if score not in ('strict', 'partial'):
            raise ValueError(f"{name} score={score!r} must be 'strict' (GenEval's 1/0 "
                             f"correctness) or 'partial' (Flow-GRPO's / STAGE's partial credit)")
        self.score = score
        self.settings = R.check_settings(dict(rules or {}), name)
        self.metadata_file = metadata_file
        self.metadata = self._read_metadata(metadata_file, name)
        self.detector = Mask2FormerDetector(detector_dir, image_scale=tuple(image_scale),
                                            batch_size=detector_batch_size, owner=name)
        self.colours = ColourClassifier(clip_arch, clip_checkpoint, weights_tag=clip_weights_tag,
                                        random_init=clip_random_init,
                                        background=tuple(background), batch_size=clip_batch_size,
                                        owner=name)
        self.keep_records = bool(keep_records)
        self.records: list[dict] = []

    @staticmethod
    def _read_metadata(files: Union[str, Sequence[str]], owner: str) -> dict[str, dict]:
        """Prompt -> metadata entry over one file or several (the same prompt must carry the
        same clauses everywhere)."""
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        if not isinstance(files, Sequence) or not files:
            raise ValueError(f'{owner} metadata_file={files!r} must be a GenEval metadata file or '
                             f'a non-empty list of them')
        out: dict[str, dict] = {}
        for path in files:
            for m in R.read_metadata(path):
                seen = out.get(m['prompt'])
                if seen is not None and (seen['include'], seen['exclude']) != (m['include'],
                                                                               m['exclude']):
                    raise ValueError(f'{owner}: prompt {m["prompt"]!r} has other clauses in '
                                     f'{path} than in an earlier metadata file; give each prompt '
                                     f'one set of clauses')
                out.setdefault(m['prompt'], m)
        return out

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(metadata_file={self.metadata_file!r}, '
                f'prompts={len(self.metadata)}, detector={self.detector.directory!r})')

    def metadata_of(self, rollout: Rollout) -> list[dict]:
        name = type(self).__name__
        prompts = rollout.cond.prompts
        if prompts is None:
            raise ValueError(f'{name} scores text prompts but rollout.cond.prompts is None: '
                             f'GenEval needs a text-conditional policy and a GenEval prompt '
                             f'dataset (GenEvalPromptDataset)')
        out = []
        for p in prompts:
            meta = self.metadata.get(p)
            if meta is None:
                raise ValueError(f'{name}: prompt {p!r} is not in {self.metadata_file}; score '
                                 f'prompts of that metadata file (GenEvalPromptDataset with the '
                                 f'same path)')
            out.append(meta)
        return out

    def detections(self, images: Tensor, metas: list[dict]) -> list[dict]:
        """GenEval's kept detections per image (``{class name: [Detection]}``)."""
        s = self.settings
        low = min(s['threshold'], s['counting_threshold'])
        raw = self.detector(images, min_score=low)
        out = []
        for det, meta in zip(raw, metas):
            out.append(R.select_detections(
                det['boxes'].cpu().numpy(), det['scores'].cpu().numpy(),
                det['labels'].cpu().numpy(), det['masks'], tag=meta['tag'], settings=s))
        return out

    def judge(self, images: Tensor, metas: list[dict], detected: list[dict]
              ) -> list[tuple[bool, str, Optional[float]]]:
        """Correctness, reason and (with ``score='partial'``) partial credit per image from its
        kept detections (colours batched)."""
        requests, where = [], {}
        for i, (det, meta) in enumerate(zip(detected, metas)):
            for cls, found in R.colour_requests(det, meta):
                key = (i, cls, len(found))
                if key not in where:
                    where[key] = len(requests)
                    requests.append((images[i], cls, found))
        colours = self.colours.classify(requests)
        out = []
        for i, (det, meta) in enumerate(zip(detected, metas)):
            def colours_of(cls, found, i=i):
                return colours[where[(i, cls, len(found))]]
            threshold = self.settings['position_threshold']
            ok, why = R.evaluate_prompt(det, meta, colours_of, threshold)
            partial = (R.partial_credit(det, meta, colours_of, threshold)
                       if self.score == 'partial' else None)
            out.append((ok, why, partial))
        return out

    @torch.no_grad()
    def __call__(self, rollout: Rollout, ctx: Optional[RewardContext] = None) -> RewardOutput:
        name = type(self).__name__
        metas = self.metadata_of(rollout)
        images = rollout.images
        if images is None:
            raise ValueError(f'{name} scores decoded images but rollout.images is None: decode '
                             f'the rollout (policy.decode) before computing rewards')
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] != len(metas):
            raise ValueError(f'{name} expects rollout.images [B, 3, H, W] with one image per '
                             f'prompt ({len(metas)}), got {tuple(images.shape)}')
        finite = torch.isfinite(images.flatten(1)).all(1)
        clean = torch.where(finite.view(-1, 1, 1, 1), images, torch.zeros_like(images))
        detected = self.detections(clean, metas)
        verdicts = self.judge(clean, metas, detected)
        verdicts = [(ok and bool(f), why if f else 'the image is not finite', partial)
                    for (ok, why, partial), f in zip(verdicts, finite.tolist())]
        correct = torch.tensor([v[0] for v in verdicts], dtype=torch.bool, device=images.device)
        metrics = R.summarize([(m['prompt'], m['tag'], v[0]) for m, v in zip(metas, verdicts)])
        if self.score == 'partial':
            value = torch.tensor([v[2] for v in verdicts], dtype=torch.float32,
                                 device=images.device)
            metrics['partial'] = float(value[finite].mean()) if bool(finite.any()) else math.nan
        else:
            value = correct.float()
        scores = torch.where(finite, value, torch.full_like(value, math.nan))
        if self.keep_records:
            self.records = [dict(prompt=m['prompt'], tag=m['tag'], correct=bool(ok), reason=why,
                                 **({} if partial is None else dict(partial=partial)),
                                 details={c: [list(d.box) + [d.score] for d in ds]
                                          for c, ds in det.items()})
                            for m, (ok, why, partial), det in zip(metas, verdicts, detected)]
        return RewardOutput(scores=scores, strict=correct, metrics=metrics)

    def summary_lines(self, metrics: dict, prefix: str = '', title: str = 'GenEval') -> list[str]:
        """GenEval's summary table of this head's metrics (``tools/eval.py`` prints it)."""
        return R.summary_lines(metrics, prefix, title)
