"""ImageReward (Xu et al., arXiv 2304.05977; code THUDM/ImageReward, package ``image-reward``).

ImageReward is BLIP (ViT-L/16 image encoder, BERT-base text encoder cross-attending to the
image tokens; :mod:`vargo.components.rewards.blip`) with an MLP on the text encoder's first
([CLS]) output, trained on human rankings. Its score (``ImageReward.score`` /
``inference_rank`` of the package)::

    f = text_encoder(tokens(p), image_tokens = visual_encoder(x))[:, 0]
    ImageReward(x, p) = (MLP(f) - 0.16717362830052426) / 1.0333394966054072

``MLP`` = Linear(768, 1024) -> Linear(1024, 128) -> Linear(128, 64) -> Linear(64, 16) ->
Linear(16, 1), no activations (the package's ReLUs are commented out; its dropouts are off in
eval). The two constants are the package's ``ImageReward.mean`` / ``.std``; ``normalize=False``
returns ``MLP(f)``. Tokens: ``bert-base-uncased``'s WordPiece tokenizer with BLIP's two added
tokens ([DEC], [ENC]), ``padding='max_length', truncation=True, max_length=35`` (the [CLS] token
stays first: the package does not replace it with [ENC] when scoring).

Preprocessing (the package's ``_transform(224)``, torchvision on the PIL image): bicubic resize
of the shortest side to 224 (PIL's antialiased filter), centre crop 224 (torchvision's
rounding), ``ToTensor``, OpenAI mean/std. Here on float tensors, batched, on the images' device
(:func:`~vargo.components.rewards.clip_score.clip_preprocess`: 8-bit quantisation, the same
filter, clamp to [0, 1]); the remaining difference is PIL's 8-bit rounding of the resized image.

Files (local only; nothing is downloaded): ``ImageReward.pt`` (a plain state dict in the
package's key names, read with ``torch.load(weights_only=True)`` and loaded strictly: every
missing, unexpected or mis-shaped key raises; the ``embeddings.position_ids`` buffer older
files carry is checked to be ``0..L-1`` and dropped), ``med_config.json`` (BLIP's BERT config;
both from ``THUDM/ImageReward``) and the ``bert-base-uncased`` ``vocab.txt``
(``google-bert/bert-base-uncased``). By default the config and the vocabulary are looked up
next to the checkpoint.

Parity with the package (measured in-session, pinned in ``tests/fixtures/reward_parity.json``
and checked by ``tests/test_rewards_image_reward.py``): in a separate environment
(``image-reward`` 1.5, transformers 4.36.2, timm 0.6.13, fairscale 0.4.13, torch 2.14 CPU) the
package's ``ImageReward.score(prompt, pil_image)`` and ``inference_rank`` ran unchanged on a
tiny model (ViT 2 layers, width 32, 32 px, patch 8; BERT 2 layers, width 32, with
cross-attention; the package's MLP on 32 features; a 108-token WordPiece vocabulary; the sizes
substituted through ``create_vit``, the tokenizer's source, ``_transform(32)`` and ``MLP(32)``)
whose weights are a deterministic function of the parameter names
(``tests/reward_parity_common.py``), for 6 prompts (one truncated at 35 tokens) x 6 images
(two 32 x 32, unresized; four resized). This head, loading the same weights from a file, on
scores in [-1.22, 0.16]: identical token ids; on the package's pixel tensors (their sums
pinned) largest difference 1.1e-6 (``inference_rank``: 2.7e-7); on float images through its
own preprocessing 5.4e-7 unresized and 2.9e-3 resized (PIL's 8-bit rounding). The state-dict
layout (names and shapes) equals the package model's, for the tiny model and for the full size
(ViT-L, BLIP's BERT-base ``med_config``: 625 tensors); both digests are pinned. The official
``ImageReward.pt`` itself could not be inspected offline; the package loads it with
``strict=False``, so a file holding keys beyond the model's would be refused here, naming them.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from vargo.core.checkpoint import load_state_dict_strict, read_state_dict
from vargo.core.interfaces import RewardHead
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import RewardContext, RewardOutput, Rollout

from .blip import VIT_PRESETS, BlipEncoders
from .clip_score import clip_preprocess, resolve_class_names
from .preference_common import (build_on_meta, check_images, condition_texts, missing_file,
                                resolve_template)

__all__ = ['ImageRewardReward', 'ImageRewardModel', 'IMAGE_REWARD_FILE_SOURCES',
           'IMAGE_REWARD_MEAN', 'IMAGE_REWARD_STD']

#: official file name -> where it is published (``check_files`` reports it)
IMAGE_REWARD_FILE_SOURCES: dict[str, str] = {
    'ImageReward.pt': 'https://huggingface.co/THUDM/ImageReward/resolve/main/ImageReward.pt',
    'med_config.json': 'https://huggingface.co/THUDM/ImageReward/resolve/main/med_config.json',
    'bert-base-uncased': 'https://huggingface.co/google-bert/bert-base-uncased (its vocab.txt)',
    'vocab.txt': 'https://huggingface.co/google-bert/bert-base-uncased/resolve/main/vocab.txt',
}

#: the package's normalisation constants (``ImageReward.mean`` / ``ImageReward.std``)
IMAGE_REWARD_MEAN = 0.16717362830052426
IMAGE_REWARD_STD = 1.0333394966054072
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: the package's tokenizer length
MAX_TOKENS = 35


class _MLP(nn.Module):
    """The package's reward MLP (``layers.{0,2,4,6,7}``; the odd slots are its dropouts)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                    nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1),
                                    nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ImageRewardModel(nn.Module):
    """``blip`` (:class:`~vargo.components.rewards.blip.BlipEncoders`) + ``mlp``: the raw
    reward ``MLP(text_encoder(ids, image)[:, 0])`` of preprocessed pixels and token ids."""

    def __init__(self, vit: dict, med_config: dict) -> None:
        super().__init__()
        self.blip = BlipEncoders(vit, med_config)
        self.mlp = _MLP(self.blip.text_encoder.width)

    def forward(self, pixels: Tensor, ids: Tensor, attention_mask: Tensor) -> Tensor:
        image = self.blip.visual_encoder(pixels)
        text = self.blip.text_encoder(ids, attention_mask, image)
        return self.mlp(text[:, 0].float()).squeeze(-1)


def _resolve_vit(vit: Union[str, dict], owner: str) -> dict:
    if isinstance(vit, str):
        if vit not in VIT_PRESETS:
            raise ValueError(f"{owner} vit={vit!r} is not one of {sorted(VIT_PRESETS)} "
                             f"(ImageReward uses 'large') or a dict of image_size, patch_size, "
                             f"width, layers, heads")
        return dict(VIT_PRESETS[vit])
    if isinstance(vit, dict):
        need = {'image_size', 'patch_size', 'width', 'layers', 'heads'}
        if set(vit) - need - {'mlp_ratio'} or need - set(vit):
            raise ValueError(f'{owner} vit={vit!r} must have exactly the keys {sorted(need)} '
                             f'(and optionally mlp_ratio)')
        return dict(vit)
    raise ValueError(f"{owner} vit={vit!r} must be 'large', 'base' or a dict")


@REWARD_HEADS.register_module()
class ImageRewardReward(RewardHead):
    """ImageReward score ``(MLP(BLIP(x, p)[CLS]) - mean) / std`` (module docstring;
    arXiv 2304.05977).

    Args:
        checkpoint: local ``ImageReward.pt`` (``THUDM/ImageReward``), loaded strictly.
        med_config_file: BLIP's text-encoder config (``med_config.json`` of
            ``THUDM/ImageReward``); default: next to the checkpoint.
        tokenizer_dir: directory holding ``bert-base-uncased``'s ``vocab.txt``
            (``google-bert/bert-base-uncased``); default: the checkpoint's directory.
        vit: the image encoder: ``'large'`` (ImageReward's: 224 px, patch 16, width 1024, 24
            layers, 16 heads), ``'base'`` or a dict (tests).
        normalize: apply the package's ``(r - mean) / std`` (default, its score).
        class_names: ``'imagenet'``, ``'shapes'``, a list (score ``rollout.cond.class_ids``
            through ``template``), or None (score ``rollout.cond.prompts``).
        template: the class-name template, ``'a photo of a {}'``.
        quantize: round images to 8 bits first, as the PIL images the package scores.
        antialias: antialiased resize (PIL's filter is).
        fp16: fp16 autocast on GPU (ignored on CPU).
        image_batch_size: images per forward.

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float32)``; NaN images give NaN.

    Examples:
        >>> rewards = dict(ir=dict(type='ImageRewardReward',
        ...                        checkpoint='checkpoints/ImageReward/ImageReward.pt',
        ...                        tokenizer_dir='checkpoints/bert-base-uncased'))
    """

    file_sources: dict[str, str] = IMAGE_REWARD_FILE_SOURCES
    mean: float = IMAGE_REWARD_MEAN
    std: float = IMAGE_REWARD_STD

    def __init__(self, *, checkpoint: str, med_config_file: Optional[str] = None,
                 tokenizer_dir: Optional[str] = None, vit: Union[str, dict] = 'large',
                 normalize: bool = True, class_names: Union[None, str, Sequence[str]] = None,
                 template: str = 'a photo of a {}', quantize: bool = True,
                 antialias: bool = True, fp16: bool = False, image_batch_size: int = 32) -> None:
        from transformers import BertTokenizer
        name = type(self).__name__
        if isinstance(image_batch_size, bool) or not isinstance(image_batch_size, int) \
                or image_batch_size < 1:
            raise ValueError(f'{name} image_batch_size={image_batch_size!r} must be an int >= 1')
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(f'{name} needs checkpoint=<local ImageReward.pt> (vargo never '
                             f'downloads); it is published at '
                             f'{IMAGE_REWARD_FILE_SOURCES["ImageReward.pt"]}')
        self.class_names = resolve_class_names(class_names, name)
        self.template = resolve_template(template, name)
        vit_cfg = _resolve_vit(vit, name)
        checkpoint = os.path.expanduser(checkpoint)
        if not os.path.isfile(checkpoint):
            raise missing_file(name, 'checkpoint', checkpoint, self.file_sources)
        here = os.path.dirname(os.path.abspath(checkpoint))
        med_config_file = os.path.expanduser(med_config_file or os.path.join(here,
                                                                             'med_config.json'))
        if not os.path.isfile(med_config_file):
            raise missing_file(name, 'med_config_file', med_config_file, self.file_sources)
        tokenizer_dir = os.path.expanduser(tokenizer_dir or here)
        vocab = os.path.join(tokenizer_dir, 'vocab.txt')
        if not os.path.isfile(vocab):
            raise FileNotFoundError(
                f'{name} tokenizer_dir {tokenizer_dir!r} holds no vocab.txt; it is published at '
                f'{IMAGE_REWARD_FILE_SOURCES["vocab.txt"]} (bert-base-uncased). Download it '
                f'there (vargo never downloads at run time).')
        with open(med_config_file) as f:
            med = json.load(f)
        self.tokenizer = BertTokenizer.from_pretrained(tokenizer_dir, local_files_only=True,
                                                       do_lower_case=True)
        self.tokenizer.add_special_tokens({'bos_token': '[DEC]'})
        self.tokenizer.add_special_tokens({'additional_special_tokens': ['[ENC]']})
        if len(self.tokenizer) > int(med['vocab_size']):
            raise ValueError(f'{name}: the tokenizer of {vocab} has {len(self.tokenizer)} tokens '
                             f'with [DEC] and [ENC] but {med_config_file} has vocab_size='
                             f'{med["vocab_size"]}: use the vocab.txt of bert-base-uncased')
        if int(med['max_position_embeddings']) < MAX_TOKENS:
            raise ValueError(f'{name}: {med_config_file} has max_position_embeddings='
                             f'{med["max_position_embeddings"]} < {MAX_TOKENS} (the tokens scored)')
        self.model = build_on_meta(lambda: ImageRewardModel(vit_cfg, med))
        state = read_state_dict(checkpoint, what=f'{name} weights')
        key = 'blip.text_encoder.embeddings.position_ids'
        if key in state and not torch.equal(state[key].reshape(-1).long(),
                                            torch.arange(state[key].numel())):
            raise ValueError(f'{name}: {checkpoint} has {key} that is not 0..L-1; only absolute '
                             f'positions are supported')
        load_state_dict_strict(self.model, state, source=checkpoint, drop=lambda k: k == key,
                               hint=f'{name} expects ImageReward.pt with the vit and '
                                    f'med_config it was trained with (ViT-L: vit=\'large\')')
        self.model.eval().requires_grad_(False)
        self.preprocess = dict(size=vit_cfg['image_size'], mean=OPENAI_MEAN, std=OPENAI_STD,
                               resize_mode='shortest', interpolation='bicubic',
                               antialias=bool(antialias), quantize=bool(quantize), clamp=True,
                               crop='round')
        self.checkpoint = checkpoint
        self.normalize = bool(normalize)
        self.fp16 = bool(fp16)
        self.image_batch_size = int(image_batch_size)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(checkpoint={self.checkpoint!r}, '
                f'normalize={self.normalize})')

    def tokenize(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """``(ids, attention_mask)`` ``[N, 35]`` as the package tokenizes a prompt."""
        enc = self.tokenizer(texts, padding='max_length', truncation=True, max_length=MAX_TOKENS,
                             return_tensors='pt')
        return enc['input_ids'].to(device), enc['attention_mask'].to(device)

    def _autocast(self, device: torch.device):
        if self.fp16 and device.type == 'cuda':
            return torch.autocast('cuda', dtype=torch.float16)
        return torch.autocast(device.type, enabled=False)

    @torch.no_grad()
    def pixel_scores(self, pixels: Tensor, texts: list[str]) -> Tensor:
        """``[B]`` scores of preprocessed ``[B, 3, S, S]`` pixels against ``texts``."""
        model = self.model
        if model.mlp.layers[0].weight.device != pixels.device:
            model.to(pixels.device)
        ids, mask = self.tokenize(texts, pixels.device)
        with self._autocast(pixels.device):
            raw = model(pixels, ids, mask).float()
        return (raw - self.mean) / self.std if self.normalize else raw

    @torch.no_grad()
    def __call__(self, rollout: Rollout, ctx: Optional[RewardContext] = None) -> RewardOutput:
        name = type(self).__name__
        texts = condition_texts(rollout, self.class_names, self.template, name)
        images = check_images(rollout, len(texts), name)
        out, n = [], self.image_batch_size
        for start in range(0, images.shape[0], n):
            pixels = clip_preprocess(images[start:start + n], **self.preprocess)
            out.append(self.pixel_scores(pixels, texts[start:start + n]))
        return RewardOutput(scores=torch.cat(out))
