"""CLIP score: cosine similarity of an image and its condition in OpenCLIP's embedding space.

Score (LOO-FID, arXiv 2603.23086, instance reward; docs/methods/loo_fid.md)::

    r_i = scale * < f_img(x_i) / ||f_img(x_i)||, f_txt(c_i) / ||f_txt(c_i)|| >

with ``f_img``/``f_txt`` the OpenCLIP image and text towers, ``x_i`` the generated image after
CLIP preprocessing and ``c_i`` its condition text: the rollout's prompt (text-to-image) or a
template filled with the class name (class-to-image, ``"a photo of a {}"`` by default). With
several templates the class's text feature is CLIP's zero-shot ensemble: the normalised
features of all templates averaged and renormalised (Radford et al., arXiv 2103.00020, sec. 3.1.4).

What the official LOO-FID code does (bugrabaran/ar-policy-tuning, ``utils/reward_utils.py``,
``CLIPReward``): OpenCLIP ``ViT-L-14`` with the ``openai`` weights, prompts
``"a photo of a {name}"`` (first ImageNet alias), score = plain cosine (no scale; they add 1e-6
to the norms), images ``uint8`` -> float, **bilinear squash to 224 x 224 without antialiasing**
and the OpenAI mean/std. We default to CLIP's own preprocessing instead (below), which is what
the CLIP weights were trained with; ``interpolation='bilinear', resize_mode='squash',
antialias=False`` reproduces the official code (for the square 256 px LlamaGen images the
``squash``/``shortest`` difference vanishes; only the filter differs). The CLIPScore metric of
Hessel et al. (arXiv 2104.08718) is ``2.5 * max(cos, 0)``: ``scale=2.5`` gives its scale
(without the clipping at 0).

Preprocessing (:func:`clip_preprocess`): done on ``[B, 3, H, W]`` float tensors in [0, 1], on
the images' device, batched: optional 8-bit quantisation (``round(255 x) / 255``, what a scorer
of saved PNGs sees), shortest side resized to the model's image size with bicubic
interpolation and antialiasing (``torch.nn.functional.interpolate(..., antialias=True)``: the
same Keys kernel ``a = -0.5`` as PIL, which open_clip's transform uses), clamp to [0, 1] (PIL
output is 8-bit), centre crop (torchvision's rounding), and normalisation by the model's
``preprocess_cfg`` mean/std (``model.visual.preprocess_cfg``; OpenAI's mean/std for a
checkpoint loaded from a file unless ``weights_tag`` or ``preprocess_cfg`` says otherwise).
The remaining difference to open_clip's PIL pipeline is PIL's 8-bit rounding of the resized
image (at most about 1/255 per pixel; ``tests/test_rewards_clip.py`` measures it).

Weights: only from a local file (``.pt``/``.bin``/``.safetensors`` in open_clip's key names,
optionally wrapped in ``{'state_dict': ...}``), loaded strictly by open_clip; a missing file is a
FileNotFoundError naming the path and where the official weights are published
(:attr:`ClipScoreReward.file_sources`, also used by ``vargo.core.config.check_files``). Nothing
is ever downloaded. OpenAI's weights need QuickGELU: give ``weights_tag='openai'`` (open_clip's
tag table then supplies QuickGELU and the preprocessing, without a download) or use the
architecture ``'ViT-L-14-quickgelu'``; plain ``'ViT-L-14'`` with OpenAI weights runs GELU and
silently computes different features (open_clip only warns).

The scorer is frozen (``eval()``, ``requires_grad_(False)``, ``torch.no_grad``) and is not an
``nn.Module`` attribute of the trained model: ``RLAlgorithm`` keeps reward heads in a plain dict,
so the CLIP weights never enter ``state_dict()``, checkpoints or the optimizer. The head moves
its model to the images' device on first use. Text features are cached per condition (LRU,
``max_cache`` entries).
"""
from __future__ import annotations

import copy
import difflib
import math
import os
from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from vargo.core.interfaces import RewardHead
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import RewardContext, RewardOutput, Rollout

__all__ = ['ClipScoreReward', 'clip_preprocess', 'load_open_clip',
           'resolve_class_names', 'OPEN_CLIP_FILE_SOURCES']

#: official file name -> where it is published (``check_files`` reports it for a missing file)
OPEN_CLIP_FILE_SOURCES: dict[str, str] = {
    'open_clip_model.safetensors':
        'the Hugging Face hub repository of the OpenCLIP weights, e.g. ViT-L-14 openai: '
        'https://huggingface.co/timm/vit_large_patch14_clip_224.openai/resolve/main/'
        'open_clip_model.safetensors (open_clip.list_pretrained() lists every architecture/tag; '
        'open_clip.get_pretrained_cfg(arch, tag)["hf_hub"] names its repository)',
    'open_clip_pytorch_model.bin':
        'the Hugging Face hub repository of the OpenCLIP weights, e.g. ViT-L-14 openai: '
        'https://huggingface.co/timm/vit_large_patch14_clip_224.openai/resolve/main/'
        'open_clip_pytorch_model.bin',
    'ViT-L-14.pt':
        'https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88'
        'be6f7c2e0eca1737a03836/ViT-L-14.pt is a TorchScript archive that cannot be loaded with '
        'weights_only=True; use https://huggingface.co/timm/vit_large_patch14_clip_224.openai/'
        'resolve/main/open_clip_model.safetensors (the same weights in open_clip format)',
}

_TEMPLATE_SETS = ('openai_imagenet', 'simple_imagenet')


# ---- preprocessing -----------------------------------------------------------------------------
def _resized_size(h: int, w: int, size: tuple[int, int], resize_mode: str) -> tuple[int, int]:
    th, tw = size
    if resize_mode == 'squash':
        return th, tw
    if th == tw:  # torchvision Resize(int): shortest side to `size`, long side truncated
        if w <= h:
            return int(th * h / w), th
        return th, int(th * w / h)
    scale = max(th / h, tw / w)  # non-square target: cover it, then centre crop
    return max(th, round(h * scale)), max(tw, round(w * scale))


def clip_preprocess(images: Tensor, *, size: Union[int, Sequence[int]], mean: Sequence[float],
                    std: Sequence[float], resize_mode: str = 'shortest',
                    interpolation: str = 'bicubic', antialias: bool = True,
                    quantize: bool = True, clamp: bool = True, keep_grad: bool = False,
                    crop: str = 'round') -> Tensor:
    """CLIP preprocessing of float images on tensors, batched (see the module docstring).

    Args:
        images: ``[B, 3, H, W]`` float in [0, 1].
        size: the model's input size (int or ``(h, w)``).
        mean, std: per-channel normalisation.
        resize_mode: ``'shortest'`` (shortest side to ``size``, then centre crop: CLIP's
            evaluation transform) or ``'squash'`` (resize to ``size`` ignoring the aspect ratio).
        interpolation: ``'bicubic'`` (CLIP) or ``'bilinear'``.
        antialias: low-pass filter when downsampling (PIL and torchvision >= 0.17 do).
        quantize: round to 8 bits first (``round(255 x) / 255``), as for a saved image.
        clamp: clamp the resized image to [0, 1] (PIL's 8-bit output is clamped).
        keep_grad: keep the autograd graph to ``images`` (default: detached).
        crop: centre-crop offset rounding: ``'round'`` (torchvision's ``CenterCrop``) or
            ``'floor'`` (transformers' ``CLIPImageProcessor``); they differ by one pixel when
            the resized side exceeds the crop by an odd number.

    Returns:
        ``[B, 3, h, w]`` float32 normalised images, on the input's device.

    Examples:
        >>> x = torch.rand(2, 3, 32, 48)
        >>> clip_preprocess(x, size=24, mean=(0.5,) * 3, std=(0.5,) * 3).shape
        torch.Size([2, 3, 24, 24])
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'clip_preprocess expects images of shape [B, 3, H, W], got '
                         f'{tuple(images.shape)}')
    if resize_mode not in ('shortest', 'squash'):
        raise ValueError(f"resize_mode={resize_mode!r} is not one of 'shortest' (CLIP), 'squash'")
    if interpolation not in ('bicubic', 'bilinear'):
        raise ValueError(f"interpolation={interpolation!r} is not one of 'bicubic' (CLIP), "
                         f"'bilinear'")
    if crop not in ('round', 'floor'):
        raise ValueError(f"crop={crop!r} is not one of 'round' (torchvision), 'floor' "
                         f"(transformers)")
    size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    x = images.float() if keep_grad else images.detach().float()
    if quantize:
        x = (x * 255.0).round().clamp(0.0, 255.0) / 255.0
    h, w = x.shape[-2:]
    nh, nw = _resized_size(h, w, size, resize_mode)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode=interpolation, align_corners=False,
                          antialias=antialias)
    if clamp:
        x = x.clamp(0.0, 1.0)
    th, tw = size
    if (nh, nw) != (th, tw):
        if crop == 'round':
            top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
        else:
            top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw]
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# ---- model loading -----------------------------------------------------------------------------
def _missing_file_error(owner: str, path: str, sources: dict[str, str]) -> FileNotFoundError:
    base = os.path.basename(path.rstrip('/'))
    where = sources.get(base)
    hint = (f'it is published at {where}' if where else
            'official files: ' + '; '.join(f'{k}: {v}' for k, v in sources.items()))
    return FileNotFoundError(
        f'{owner} checkpoint {path!r} does not exist; {hint}. Download it to that path (vargo '
        f'never downloads at run time), or set checkpoint=None, random_init=True in tests.')


def load_open_clip(arch: Union[str, dict], checkpoint: Optional[str], *, random_init: bool = False,
                   weights_tag: Optional[str] = None, preprocess_cfg: Optional[dict] = None,
                   owner: str = 'OpenCLIP', file_sources: Optional[dict[str, str]] = None):
    """Build a frozen OpenCLIP model and its tokenizer from a local file, never the network.

    Args:
        arch: an open_clip architecture name (``open_clip.list_models()``, e.g. ``'ViT-L-14'``)
            or a model config dict with ``embed_dim``, ``vision_cfg``, ``text_cfg`` (open_clip's
            ``CLIP`` constructor arguments; an optional ``preprocess_cfg`` entry) for small models.
        checkpoint: local weights file (open_clip key names, possibly under ``'state_dict'``),
            loaded strictly; ``None`` only with ``random_init=True``.
        random_init: allow ``checkpoint=None`` (random weights, for tests).
        weights_tag: an open_clip pretrained tag (e.g. ``'openai'``) whose QuickGELU flag and
            preprocessing (mean, std, interpolation, resize mode) apply to these weights; read
            from open_clip's table, nothing is downloaded.
        preprocess_cfg: overrides of the preprocessing (keys of open_clip's ``PreprocessCfg``:
            ``mean``, ``std``, ``interpolation``, ``resize_mode``).
        owner: the component's name, for error messages.
        file_sources: official file name -> where it is published, for the missing-file error.

    Returns:
        ``(model, tokenizer)``: the model in eval mode with ``requires_grad=False`` on CPU, and a
        callable mapping a list of strings to ``[N, L]`` token ids.
    """
    import open_clip
    from open_clip.model import set_model_preprocess_cfg

    sources = OPEN_CLIP_FILE_SOURCES if file_sources is None else file_sources
    if checkpoint is None and not random_init:
        raise ValueError(f'{owner} needs checkpoint=<local weights file> (vargo never downloads '
                         f'weights); checkpoint=None is allowed only with random_init=True, '
                         f'for tests')
    if checkpoint is not None and random_init:
        raise ValueError(f'{owner} got checkpoint={checkpoint!r} and random_init=True: choose '
                         f'one (random_init=True means random weights, for tests)')
    path = None
    if checkpoint is not None:
        path = os.path.abspath(os.path.expanduser(str(checkpoint)))
        if not os.path.isfile(path):
            raise _missing_file_error(owner, str(checkpoint), sources)

    force_pp: dict = {}
    quick_gelu = False
    if weights_tag is not None:
        if not isinstance(arch, str):
            raise ValueError(f'{owner} weights_tag={weights_tag!r} needs arch to be an open_clip '
                             f'architecture name, got a config dict')
        tag_cfg = open_clip.get_pretrained_cfg(arch, weights_tag)
        if not tag_cfg:
            raise ValueError(f'{owner} weights_tag={weights_tag!r} is not an open_clip tag of '
                             f'{arch!r}; its tags: '
                             f'{open_clip.list_pretrained_tags_by_model(arch)}')
        force_pp = {k: tag_cfg[k] for k in ('mean', 'std', 'interpolation', 'resize_mode')
                    if k in tag_cfg}
        quick_gelu = bool(tag_cfg.get('quick_gelu', False))
    force_pp.update(preprocess_cfg or {})

    if isinstance(arch, str):
        if arch not in open_clip.list_models():
            hint = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
            raise ValueError(f'{owner} arch={arch!r} is not an open_clip architecture'
                             + (f'; did you mean {hint}?' if hint else '')
                             + ' (open_clip.list_models() lists them; a dict config builds a '
                               'custom one)')
        try:
            model = open_clip.create_model(
                arch, pretrained=path, precision='fp32', device='cpu', weights_only=True,
                force_quick_gelu=quick_gelu, force_preprocess_cfg=force_pp or None,
                pretrained_image=False, pretrained_text=False, require_pretrained=path is not None)
        except RuntimeError as e:
            if path is None:
                raise
            raise RuntimeError(f'{owner} could not load {path} strictly into open_clip {arch!r} '
                               f'(is it a file of that architecture, in open_clip key names? '
                               f'TorchScript archives such as OpenAI\'s ViT-L-14.pt cannot be '
                               f'loaded with weights_only=True): {e}') from e
        tokenizer = open_clip.get_tokenizer(arch)
    elif isinstance(arch, dict):
        cfg = copy.deepcopy(dict(arch))
        missing = {'embed_dim', 'vision_cfg', 'text_cfg'} - set(cfg)
        if missing:
            raise ValueError(f'{owner} arch config dict lacks {sorted(missing)}: an open_clip '
                             f'model config has embed_dim, vision_cfg and text_cfg')
        pp = dict(cfg.pop('preprocess_cfg', None) or {})
        custom_text = bool(cfg.pop('custom_text', False)) or 'hf_model_name' in cfg['text_cfg']
        if 'timm_model_name' in cfg['vision_cfg']:
            cfg['vision_cfg']['timm_model_pretrained'] = False
        if 'hf_model_name' in cfg['text_cfg']:
            cfg['text_cfg']['hf_model_pretrained'] = False
        cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
        model = cls(**cfg)
        if path is not None:
            open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
        pp.update(force_pp)
        set_model_preprocess_cfg(model, dict(
            size=model.visual.image_size, mode='RGB', mean=open_clip.OPENAI_DATASET_MEAN,
            std=open_clip.OPENAI_DATASET_STD, interpolation='bicubic', resize_mode='shortest',
            fill_color=0) | pp)
        text_cfg = cfg['text_cfg']
        if 'hf_tokenizer_name' in text_cfg:
            from open_clip.tokenizer import HFTokenizer
            tokenizer = HFTokenizer(text_cfg['hf_tokenizer_name'],
                                    context_length=text_cfg.get('context_length', 77))
        else:
            tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.get('context_length', 77))
    else:
        raise TypeError(f'{owner} arch must be an open_clip architecture name or a config dict, '
                        f'got {type(arch).__name__}: {arch!r}')
    model.eval().requires_grad_(False)
    return model, tokenizer


def resolve_class_names(class_names: Union[None, str, Sequence[str]], owner: str
                        ) -> Optional[tuple[str, ...]]:
    """``'imagenet'`` (open_clip's bundled 1000 CLIP class names), ``'shapes'`` (the Shapes
    benchmark's 18 classes), an explicit list, or None (score prompts)."""
    if class_names is None:
        return None
    if isinstance(class_names, str):
        if class_names == 'imagenet':
            from open_clip import IMAGENET_CLASSNAMES
            return tuple(IMAGENET_CLASSNAMES)
        if class_names == 'shapes':
            from vargo.components.datasets.shapes import CLASS_NAMES
            return tuple(CLASS_NAMES)
        raise ValueError(f"{owner} class_names={class_names!r} is not one of 'imagenet', "
                         f"'shapes', a list of names, or None (score the rollout's prompts)")
    names = tuple(class_names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f'{owner} class_names must be a non-empty list of non-empty strings')
    return names


def _resolve_templates(templates: Union[str, Sequence[str]], owner: str) -> tuple:
    if isinstance(templates, str) and templates in _TEMPLATE_SETS:
        import open_clip
        return tuple(open_clip.OPENAI_IMAGENET_TEMPLATES if templates == 'openai_imagenet'
                     else open_clip.SIMPLE_IMAGENET_TEMPLATES)
    if isinstance(templates, str):
        templates = (templates,)
    templates = tuple(templates)
    if not templates or not all(isinstance(t, str) and t.count('{}') == 1 for t in templates):
        raise ValueError(f"{owner} templates={templates!r}: each template is a string with one "
                         f"'{{}}' for the class name (e.g. 'a photo of a {{}}'), or one of "
                         f"{list(_TEMPLATE_SETS)}")
    return templates


# ---- the heads ---------------------------------------------------------------------------------
@REWARD_HEADS.register_module()
class ClipScoreReward(RewardHead):
    """CLIP score ``r = scale * cos(f_img(x), f_txt(c))`` under an OpenCLIP model (LOO-FID,
    arXiv 2603.23086: ViT-L-14 openai, ``"a photo of a {class}"``; see the module docstring).

    Args:
        arch: open_clip architecture name (e.g. ``'ViT-L-14'``; ``open_clip.list_models()``) or
            a model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``; tests).
        checkpoint: local weights file in open_clip key names, loaded strictly; ``None`` only
            with ``random_init=True``.
        random_init: random weights (tests only).
        weights_tag: open_clip pretrained tag of these weights (e.g. ``'openai'``): supplies
            QuickGELU and the tag's preprocessing; nothing is downloaded.
        class_names: ``'imagenet'``, ``'shapes'``, a list, or None. With names the head scores
            ``rollout.cond.class_ids`` through ``templates``; None scores ``rollout.cond.prompts``
            as they are.
        templates: ``'a photo of a {}'`` (default), a list (zero-shot ensemble), or
            ``'openai_imagenet'`` / ``'simple_imagenet'`` (open_clip's bundled sets).
        scale: multiplies the cosine (1.0: LOO-FID's official score).
        quantize: round images to 8 bits before preprocessing (what a saved PNG gives).
        resize_mode, interpolation, antialias: override the model's preprocessing
            (``'squash'``, ``'bilinear'``, ``False`` reproduce the LOO-FID code).
        preprocess_cfg: overrides of open_clip's preprocessing config (``mean``, ``std``, ...).
        fp16: fp16 autocast on GPU (ignored on CPU).
        image_batch_size: images per forward.
        max_cache: text features kept (LRU).

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float32)``; NaN images give NaN (unscorable).

    Examples:
        >>> head = ClipScoreReward(arch=dict(embed_dim=8, vision_cfg=dict(
        ...     image_size=16, layers=1, width=16, patch_size=8, head_width=8),
        ...     text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1)),
        ...     random_init=True, class_names='shapes')
        >>> texts = head.texts_of(('class', 0))
        >>> texts
        ['a photo of a red circle']
    """

    file_sources: dict[str, str] = OPEN_CLIP_FILE_SOURCES
    #: clamp the resized image to [0, 1] (PIL's 8-bit output is clamped; hpsv2's tensor path not)
    _clamp_resized: bool = True

    def __init__(self, *, arch: Union[str, dict] = 'ViT-L-14', checkpoint: Optional[str] = None,
                 random_init: bool = False, weights_tag: Optional[str] = None,
                 class_names: Union[None, str, Sequence[str]] = None,
                 templates: Union[str, Sequence[str]] = 'a photo of a {}', scale: float = 1.0,
                 quantize: bool = True, resize_mode: Optional[str] = None,
                 interpolation: Optional[str] = None, antialias: bool = True,
                 preprocess_cfg: Optional[dict] = None, fp16: bool = False,
                 image_batch_size: int = 64, max_cache: int = 10000) -> None:
        name = type(self).__name__
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale) or scale == 0:
            raise ValueError(f'{name} scale={scale!r} must be a finite non-zero float (1.0: the '
                             f'plain cosine, as LOO-FID; 2.5: CLIPScore\'s scale)')
        for key, value in (('image_batch_size', image_batch_size), ('max_cache', max_cache)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} {key}={value!r} must be an int >= 1')
        self.class_names = resolve_class_names(class_names, name)
        self.templates = _resolve_templates(templates, name)
        self.model, self.tokenizer = load_open_clip(
            arch, checkpoint, random_init=random_init, weights_tag=weights_tag,
            preprocess_cfg=preprocess_cfg, owner=name, file_sources=self.file_sources)
        pp = dict(self.model.visual.preprocess_cfg)
        self.preprocess = dict(
            size=pp['size'], mean=tuple(pp['mean']), std=tuple(pp['std']),
            resize_mode=resize_mode or pp.get('resize_mode', 'shortest'),
            interpolation=interpolation or pp.get('interpolation', 'bicubic'),
            antialias=bool(antialias), quantize=bool(quantize), clamp=self._clamp_resized)
        clip_preprocess(torch.zeros(1, 3, 2, 2), **self.preprocess)  # validate the settings now
        self.arch = arch if isinstance(arch, str) else 'custom'
        self.checkpoint = checkpoint
        self.scale = float(scale)
        self.fp16 = bool(fp16)
        self.image_batch_size = int(image_batch_size)
        self.max_cache = int(max_cache)
        self._text_cache: OrderedDict = OrderedDict()   # condition key -> [D] float32 feature

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(arch={self.arch!r}, checkpoint={self.checkpoint!r}, '
                f'scale={self.scale}, templates={len(self.templates)}, '
                f'classes={None if self.class_names is None else len(self.class_names)})')

    # -- conditions ----------------------------------------------------------------------------
    def condition_keys(self, rollout: Rollout) -> list:
        """One cache key per sample: ``('class', id)`` with class names, else ``('prompt', text)``."""
        cond, name = rollout.cond, type(self).__name__
        if self.class_names is not None:
            if cond.class_ids is None:
                raise ValueError(f'{name} has class_names, so it scores rollout.cond.class_ids, '
                                 f'but they are None: set class_names=None to score the prompts '
                                 f'of a text-conditional policy')
            ids = cond.class_ids.detach().cpu().tolist()
            bad = [i for i in ids if not 0 <= i < len(self.class_names)]
            if bad:
                raise ValueError(f'{name} got class ids {sorted(set(bad))[:5]} outside '
                                 f'[0, {len(self.class_names)}): class_names has '
                                 f'{len(self.class_names)} names; configure the matching list')
            return [('class', int(i)) for i in ids]
        if cond.prompts is None:
            raise ValueError(f'{name} scores rollout.cond.prompts but they are None: set '
                             f"class_names ('imagenet', 'shapes' or a list) for a "
                             f'class-conditional policy')
        return [('prompt', p) for p in cond.prompts]

    def texts_of(self, key) -> list[str]:
        """The text(s) encoded for a condition key (several for a template ensemble)."""
        kind, value = key
        if kind == 'prompt':
            return [value]
        name = self.class_names[value]
        return [t(name) if callable(t) else t.format(name) for t in self.templates]

    # -- features ------------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        if self.fp16 and device.type == 'cuda':
            return torch.autocast('cuda', dtype=torch.float16)
        return torch.autocast(device.type, enabled=False)

    def _model_on(self, device: torch.device):
        if next(self.model.parameters()).device != device:
            self.model.to(device)
            self._text_cache.clear()
        return self.model

    @torch.no_grad()
    def text_features(self, keys: list, device: torch.device) -> Tensor:
        """``[N, D]`` unit-norm float32 text features of condition keys (cached)."""
        model = self._model_on(device)
        todo = list(OrderedDict.fromkeys(k for k in keys if k not in self._text_cache))
        if todo:
            texts = [self.texts_of(k) for k in todo]
            flat = [t for ts in texts for t in ts]
            tokens = self.tokenizer(flat).to(device)
            with self._autocast(device):
                feats = model.encode_text(tokens)
            feats = F.normalize(feats.float(), dim=-1)                  # [sum T_k, D]
            start = 0
            for k, ts in zip(todo, texts):
                f = feats[start:start + len(ts)]
                start += len(ts)
                self._text_cache[k] = F.normalize(f.mean(0), dim=-1) if len(ts) > 1 else f[0]
        out = []
        for k in keys:
            self._text_cache.move_to_end(k)
            out.append(self._text_cache[k])
        while len(self._text_cache) > self.max_cache:
            self._text_cache.popitem(last=False)
        return torch.stack(out)

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        """``[B, D]`` unit-norm float32 image features of ``[B, 3, H, W]`` images in [0, 1]."""
        model = self._model_on(images.device)
        outs = []
        for chunk in images.split(self.image_batch_size):
            x = clip_preprocess(chunk, **self.preprocess)
            with self._autocast(images.device):
                f = model.encode_image(x)
            outs.append(F.normalize(f.float(), dim=-1))
        return torch.cat(outs)

    def differentiable_scores(self, images: Tensor, rollout: Rollout,
                              ctx: Optional[RewardContext] = None) -> Tensor:
        """``[B]`` scores of ``images`` against ``rollout``'s conditions, differentiable in
        ``images`` (the scorer stays frozen): the saliency source of mask propagation
        (docs/methods/var_rl.md, section 3). The values equal :meth:`__call__`'s; the 8-bit
        rounding of the preprocessing passes the gradient straight through."""
        model = self._model_on(images.device)
        txt = self.text_features(self.condition_keys(rollout), images.device)     # [B, D]
        settings = dict(self.preprocess)
        x = images
        if settings.pop('quantize', True):
            x = x + ((x * 255.0).round().clamp(0.0, 255.0) / 255.0 - x).detach()
        x = clip_preprocess(x, quantize=False, keep_grad=True, **settings)
        with self._autocast(images.device):
            f = model.encode_image(x)
        return self.scale * (F.normalize(f.float(), dim=-1) * txt).sum(-1)

    @torch.no_grad()
    def __call__(self, rollout: Rollout, ctx: Optional[RewardContext] = None) -> RewardOutput:
        images = rollout.images
        name = type(self).__name__
        if images is None:
            raise ValueError(f'{name} scores decoded images but rollout.images is None: decode '
                             f'the rollout (policy.decode) before computing rewards')
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'{name} expects rollout.images of shape [B, 3, H, W], got '
                             f'{tuple(images.shape)}')
        keys = self.condition_keys(rollout)
        if len(keys) != images.shape[0]:
            raise ValueError(f'{name} got {images.shape[0]} images but {len(keys)} conditions')
        img = self.image_features(images)                               # [B, D]
        txt = self.text_features(keys, images.device)                   # [B, D]
        scores = self.scale * (img * txt).sum(-1)                       # [B]
        return RewardOutput(scores=scores)
