"""PickScore (Kirstain et al., Pick-a-Pic, arXiv 2305.01569; code yuvalkirstain/PickScore).

PickScore v1 is a CLIP ViT-H-14 (from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``) fine-tuned on
Pick-a-Pic preference pairs, published as a transformers ``CLIPModel`` directory
(``yuvalkirstain/PickScore_v1``). The score of image ``x`` for prompt ``p`` is what the README's
``calc_probs`` computes before its softmax::

    PickScore(x, p) = exp(logit_scale) * < f_img(x) / ||f_img(x)||, f_txt(p) / ||f_txt(p)|| >

with ``f_img = visual_projection(vision_model(x).pooler_output)`` and
``f_txt = text_projection(text_model(p).pooler_output)`` (``get_image_features`` /
``get_text_features``); ``exp(logit_scale)`` is the checkpoint's learned temperature (about 100
for v1). ``group_softmax=True`` returns the README's probabilities instead: the softmax of the
scores over the images of each group (GRPO's group of one prompt).

Model: transformers' ``CLIPModel`` built from the directory's ``config.json`` (without random
initialisation) and filled by a strict load (:func:`vargo.core.checkpoint.read_state_dict`:
``model.safetensors`` or ``pytorch_model.bin`` through ``torch.load(weights_only=True)``, never
code; every missing, unexpected or mis-shaped key raises). Files written by transformers < 4.31
carry the ``*.embeddings.position_ids`` buffers: they are derived (``arange``), checked and
dropped. Tokenizer: transformers' ``CLIPTokenizer`` (the tokenizers-backed one the README's
``AutoProcessor`` loads) from a local directory, ``padding=True, truncation=True,
max_length=77``; by default the model directory, else ``tokenizer_dir`` (the README's processor
repository, ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). Nothing is downloaded.

Preprocessing (the PIL-based ``CLIPImageProcessor`` of that processor: transformers 4.27.3 is
what PickScore's README pins, 4.36.2 is what was checked; later versions may default to a
torchvision-based "fast" processor): the 8-bit image, shortest side resized to the model's
image size with PIL's bicubic filter, centre crop with the offset rounded down
(``(h - 224) // 2``, torchvision rounds to nearest), ``/ 255``, OpenAI mean/std. Here on float
tensors, batched, on the images' device (:func:`~vargo.components.rewards.clip_score.
clip_preprocess` with ``crop='floor'``); the remaining difference to PIL is its 8-bit rounding
of the resized image (about one level). A ``preprocessor_config.json`` next to the tokenizer
overrides size, mean and std.

Parity with the reference (measured in-session, pinned in ``tests/fixtures/reward_parity.json``
and checked by ``tests/test_rewards_pickscore.py``): in a separate environment (transformers
4.36.2, torch 2.14 CPU) the README's ``calc_probs`` steps ran as written (``CLIPProcessor`` of
``CLIPTokenizerFast`` and ``CLIPImageProcessor``, ``get_image_features`` /
``get_text_features``, normalisation, ``logit_scale.exp() * text_embs @ image_embs.T``, softmax)
on a tiny CLIP (2 + 2 layers, width 32, 32 px, patch 8, a 524-token byte-level BPE vocabulary,
exp(logit_scale) = 50) whose weights are a deterministic function of the parameter names
(``tests/reward_parity_common.py``), for 6 prompts (one truncated at 77 tokens) x 6 images
(two 32 x 32, unresized; 48 x 40, 64 x 64, 40 x 56 downscaled; 24 x 24 upscaled). This head,
loading the same weights from a ``model.safetensors`` directory, on scores in [-22.4, 19.0]:
identical token ids; on the reference processor's pixels (rebuilt with PIL, their sums pinned)
largest difference 1.2e-5 and softmax probabilities within 5.4e-7; on float images through its
own preprocessing 1.3e-5 on the unresized images and 0.083 on the resized ones (PIL's 8-bit
rounding of the resized pixels).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from vargo.core.checkpoint import load_state_dict_strict, read_state_dict
from vargo.core.interfaces import RewardHead
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import RewardContext, RewardOutput, Rollout

from .clip_score import clip_preprocess, resolve_class_names
from .preference_common import (TextCache, build_on_meta, check_images, condition_texts,
                                missing_file, resolve_template)

__all__ = ['PickScoreReward', 'PICKSCORE_FILE_SOURCES', 'load_hf_clip', 'group_softmax']

#: official directory name -> where it is published (``check_files`` reports it)
PICKSCORE_FILE_SOURCES: dict[str, str] = {
    'PickScore_v1': 'https://huggingface.co/yuvalkirstain/PickScore_v1 (the whole repository: '
                    'config.json and model.safetensors or pytorch_model.bin)',
    'CLIP-ViT-H-14-laion2B-s32B-b79K':
        'https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the processor PickScore\'s '
        'README loads: tokenizer.json or vocab.json + merges.txt, preprocessor_config.json)',
}

_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
_TOKENIZER_FILES = ('tokenizer.json', 'vocab.json')
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _position_ids(module) -> dict:
    return {n: torch.arange(b.shape[-1]).expand_as(b) for n, b in module.named_buffers()
            if n.endswith('embeddings.position_ids')}


def load_hf_clip(directory: str, *, owner: str, sources: dict[str, str]):
    """A frozen transformers ``CLIPModel`` from a local directory (``config.json`` + weights),
    loaded strictly and data-only. Returns ``(model, weights_path)``."""
    from transformers import CLIPConfig, CLIPModel
    directory = os.path.expanduser(str(directory))
    if not os.path.isdir(directory):
        raise missing_file(owner, 'checkpoint directory', directory, sources)
    config_path = os.path.join(directory, 'config.json')
    if not os.path.isfile(config_path):
        raise missing_file(owner, 'config file', config_path, sources)
    weights = next((os.path.join(directory, n) for n in _WEIGHT_FILES
                    if os.path.isfile(os.path.join(directory, n))), None)
    if weights is None:
        raise FileNotFoundError(f'{owner} checkpoint directory {directory!r} holds neither '
                                f'{" nor ".join(_WEIGHT_FILES)}; download them from '
                                f'{sources["PickScore_v1"]}')
    config = CLIPConfig.from_json_file(config_path)
    model = build_on_meta(lambda: CLIPModel(config), _position_ids)
    state = read_state_dict(weights, what=f'{owner} CLIP weights')
    for key in [k for k in state if k.endswith('embeddings.position_ids')]:
        ids = state[key]
        if not torch.equal(ids.reshape(-1).long(), torch.arange(ids.numel())):
            raise ValueError(f'{owner}: {weights} has {key} that is not 0..{ids.numel() - 1}; '
                             f'this head supports absolute position ids only')
    load_state_dict_strict(model, state, source=weights,
                           drop=lambda k: k.endswith('embeddings.position_ids'),
                           hint=f'{owner} expects a transformers CLIPModel directory such as '
                                f'PickScore_v1 (its config.json must describe these weights)')
    return model.eval().requires_grad_(False), weights


def _processor_settings(directory: str, size: int, owner: str) -> dict:
    """Size, mean, std and interpolation of a ``preprocessor_config.json`` (if present)."""
    out = dict(size=size, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation='bicubic')
    path = os.path.join(directory, 'preprocessor_config.json')
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        cfg = json.load(f)

    def side(v, *keys):
        if isinstance(v, dict):
            vals = [v[k] for k in keys if k in v]
            if len(set(vals)) != 1:
                raise ValueError(f'{owner}: {path} gives {v}: only square crops and a '
                                 f'shortest-edge resize are supported')
            return int(vals[0])
        return int(v)

    resize = side(cfg.get('size', size), 'shortest_edge', 'height', 'width')
    crop = side(cfg.get('crop_size', resize), 'height', 'width')
    if resize != crop:
        raise ValueError(f'{owner}: {path} resizes to {resize} and crops {crop}; this head '
                         f'resizes the shortest side to the crop size (CLIP\'s processor)')
    resample = int(cfg.get('resample', 3))
    if resample not in (2, 3):
        raise ValueError(f'{owner}: {path} has resample={resample}; supported: 3 (bicubic), '
                         f'2 (bilinear)')
    out.update(size=crop, mean=tuple(cfg.get('image_mean', OPENAI_MEAN)),
               std=tuple(cfg.get('image_std', OPENAI_STD)),
               interpolation='bicubic' if resample == 3 else 'bilinear')
    return out


def group_softmax(scores: Tensor, group_ids: Tensor) -> Tensor:
    """Softmax of ``scores`` [B] within each group of ``group_ids`` [B]."""
    out = torch.empty_like(scores)
    gid = group_ids.to(scores.device)
    for g in torch.unique(gid):
        idx = (gid == g).nonzero(as_tuple=True)[0]
        out[idx] = torch.softmax(scores[idx], dim=0)
    return out


@REWARD_HEADS.register_module()
class PickScoreReward(RewardHead):
    """PickScore: ``exp(logit_scale) * cos(f_img(x), f_txt(p))`` of the PickScore CLIP
    (module docstring; arXiv 2305.01569).

    Args:
        checkpoint: local directory of ``yuvalkirstain/PickScore_v1`` (``config.json`` and
            ``model.safetensors`` or ``pytorch_model.bin``), loaded strictly.
        tokenizer_dir: local directory of the CLIP tokenizer (``tokenizer.json`` or
            ``vocab.json`` + ``merges.txt``); default: ``checkpoint`` if it holds one, else the
            README's processor repository ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``.
        class_names: ``'imagenet'``, ``'shapes'``, a list (score ``rollout.cond.class_ids``
            through ``template``), or None (score ``rollout.cond.prompts``).
        template: the class-name template, ``'a photo of a {}'``.
        group_softmax: return the README's probabilities (softmax over each group's images)
            instead of the scores.
        quantize: round images to 8 bits first, as the PIL images PickScore scores.
        antialias: antialiased resize (as PIL's).
        fp16: fp16 autocast on GPU (ignored on CPU).
        image_batch_size: images per forward.
        max_cache: text features kept (LRU).

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float32)``; NaN images give NaN.

    Examples:
        >>> rewards = dict(pick=dict(type='PickScoreReward',
        ...                          checkpoint='checkpoints/PickScore_v1'))
    """

    file_sources: dict[str, str] = PICKSCORE_FILE_SOURCES

    def __init__(self, *, checkpoint: str, tokenizer_dir: Optional[str] = None,
                 class_names: Union[None, str, Sequence[str]] = None,
                 template: str = 'a photo of a {}', group_softmax: bool = False,
                 quantize: bool = True, antialias: bool = True, fp16: bool = False,
                 image_batch_size: int = 32, max_cache: int = 10000) -> None:
        from transformers import CLIPTokenizer
        name = type(self).__name__
        for key, value in (('image_batch_size', image_batch_size), ('max_cache', max_cache)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} {key}={value!r} must be an int >= 1')
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(f'{name} needs checkpoint=<local PickScore_v1 directory> (vargo '
                             f'never downloads); it is published at '
                             f'{PICKSCORE_FILE_SOURCES["PickScore_v1"]}')
        self.class_names = resolve_class_names(class_names, name)
        self.template = resolve_template(template, name)
        self.model, self.weights = load_hf_clip(checkpoint, owner=name,
                                                sources=self.file_sources)
        if tokenizer_dir is None:
            tokenizer_dir = checkpoint
            if not any(os.path.isfile(os.path.join(checkpoint, f)) for f in _TOKENIZER_FILES):
                raise FileNotFoundError(
                    f'{name}: {checkpoint!r} holds no CLIP tokenizer (tokenizer.json or '
                    f'vocab.json + merges.txt); set tokenizer_dir= to a local copy of '
                    f'{PICKSCORE_FILE_SOURCES["CLIP-ViT-H-14-laion2B-s32B-b79K"]}')
        tokenizer_dir = os.path.expanduser(str(tokenizer_dir))
        if not any(os.path.isfile(os.path.join(tokenizer_dir, f)) for f in _TOKENIZER_FILES):
            raise missing_file(name, 'tokenizer directory (tokenizer.json or vocab.json + '
                               'merges.txt)', tokenizer_dir, self.file_sources)
        self.tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        self.context_length = int(self.model.config.text_config.max_position_embeddings)
        pp = _processor_settings(tokenizer_dir, int(self.model.config.vision_config.image_size),
                                 name)
        self.preprocess = dict(size=pp['size'], mean=pp['mean'], std=pp['std'],
                               resize_mode='shortest', interpolation=pp['interpolation'],
                               antialias=bool(antialias), quantize=bool(quantize), clamp=True,
                               crop='floor')
        clip_preprocess(torch.zeros(1, 3, 2, 2), **self.preprocess)
        self.logit_scale = float(self.model.logit_scale.exp())
        self.checkpoint = checkpoint
        self.group_softmax = bool(group_softmax)
        self.fp16 = bool(fp16)
        self.image_batch_size = int(image_batch_size)
        self._cache = TextCache(max_cache)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(checkpoint={self.checkpoint!r}, '
                f'logit_scale={self.logit_scale:.4g}, group_softmax={self.group_softmax})')

    def _autocast(self, device: torch.device):
        if self.fp16 and device.type == 'cuda':
            return torch.autocast('cuda', dtype=torch.float16)
        return torch.autocast(device.type, enabled=False)

    def _model_on(self, device: torch.device):
        if self.model.logit_scale.device != device:
            self.model.to(device)
            self._cache.clear()
        return self.model

    @torch.no_grad()
    def text_features(self, texts: list[str], device: torch.device) -> Tensor:
        """``[N, D]`` unit-norm float32 text features (cached per text)."""
        model = self._model_on(device)
        todo = self._cache.missing(texts)
        if todo:
            enc = self.tokenizer(todo, padding=True, truncation=True,
                                 max_length=self.context_length, return_tensors='pt')
            with self._autocast(device):
                out = model.text_model(input_ids=enc['input_ids'].to(device),
                                       attention_mask=enc['attention_mask'].to(device))
                feats = model.text_projection(out.pooler_output)
            feats = F.normalize(feats.float(), dim=-1)
            for t, f in zip(todo, feats):
                self._cache.put(t, f)
        return torch.stack(self._cache.get(texts))

    @torch.no_grad()
    def pixel_features(self, pixels: Tensor) -> Tensor:
        """``[B, D]`` unit-norm float32 features of preprocessed ``[B, 3, S, S]`` pixels."""
        model = self._model_on(pixels.device)
        with self._autocast(pixels.device):
            out = model.vision_model(pixel_values=pixels)
            feats = model.visual_projection(out.pooler_output)
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        """``[B, D]`` unit-norm float32 features of ``[B, 3, H, W]`` images in [0, 1]."""
        return torch.cat([self.pixel_features(clip_preprocess(chunk, **self.preprocess))
                          for chunk in images.split(self.image_batch_size)])

    @torch.no_grad()
    def __call__(self, rollout: Rollout, ctx: Optional[RewardContext] = None) -> RewardOutput:
        name = type(self).__name__
        texts = condition_texts(rollout, self.class_names, self.template, name)
        images = check_images(rollout, len(texts), name)
        img = self.image_features(images)
        txt = self.text_features(texts, images.device)
        scores = self.logit_scale * (img * txt).sum(-1)
        if self.group_softmax:
            scores = group_softmax(scores, rollout.group_ids)
        return RewardOutput(scores=scores)
