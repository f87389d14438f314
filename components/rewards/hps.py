"""HPS v2 / v2.1: Human Preference Score (Wu et al., arXiv 2306.09341; code tgxs002/HPSv2).

HPS v2 is an OpenCLIP ViT-H-14 (initialised from ``laion2B-s32B-b79K``) fine-tuned on human
preference pairs. Its score of an image ``x`` for a prompt ``p`` is the package's
``hpsv2.score``::

    HPS(x, p) = < f_img(x) / ||f_img(x)||, f_txt(p) / ||f_txt(p)|| >

the diagonal of ``image_features @ text_features.T`` of the model's normalised features, with
no logit scale (``hpsv2/img_score.py``). LOO-FID (arXiv 2603.23086) uses HPS v2.1 beside CLIP,
both on ``"a photo of a {class}"`` (docs/methods/loo_fid.md).

The checkpoints (``HPS_v2_compressed.pt``, ``HPS_v2.1_compressed.pt``) are
``{'state_dict': ...}`` dicts in open_clip's key names, so this head is
:class:`~vargo.components.rewards.clip_score.ClipScoreReward` with ``arch='ViT-H-14'``, the HPS
file loaded strictly by open_clip and hpsv2's preprocessing. It does not import the hpsv2
package (its metadata downgrades pytest and protobuf, its wheel lacks the BPE vocabulary, and
``score()`` always downloads the ViT-H-14 base first).

hpsv2's preprocessing (``image_transform(224, is_train=False)`` of its vendored open_clip), as
opposed to open_clip's: the PIL image is converted to a float tensor *first* and then resized
as a tensor (``torchvision Resize(224, BICUBIC)``, antialiased on tensors since torchvision
0.17, not clamped), centre-cropped and normalised with OpenAI's mean/std. On our float images
that is: 8-bit quantisation (``quantize=True``, what a PIL image carries), bicubic antialiased
resize of the shortest side, centre crop, no clamp, normalisation. ``antialias=False``
reproduces torchvision < 0.17, under which hpsv2 was released (it only matters when
downscaling).

Equivalence with the hpsv2 package (checked in-session, not at test time, since the package
cannot be a test dependency): ``pip install --no-deps --target /tmp/... hpsv2==1.2.0 clint
args``, open_clip's ``bpe_simple_vocab_16e6.txt.gz`` copied into ``hpsv2/src/open_clip/``. A
tiny CLIP (embed 32, ViT 2 layers width 64 patch 8 at 32 px, text 2 layers width 64, context 77,
vocabulary 49408, as ``get_tokenizer('ViT-H-14')`` of hpsv2 needs) was created with hpsv2's
vendored open_clip, saved as ``{'state_dict': model.state_dict()}``; ``hpsv2.img_score.score``
was run unchanged (its ``model_dict`` pre-filled with that model and the vendored
``preprocess_val``, so nothing downloads; ``cp=`` the saved file) on 6 PIL images (random
24x24, 32x32, 40x48, 64x64, 56x40 and a rendered Shapes image) with 6 prompts, and compared
with ``HPSv2Reward(arch=<same config dict>, checkpoint=<same file>)`` on the same images as
float tensors (``pixels / 255``). The state dict loaded strictly (identical key names); the
scores ranged over [-0.085, 0.328] and the largest absolute difference was 3.0e-8 (float32
round-off), with torchvision 0.29 (antialiased tensor resize). open_clip's own PIL
preprocessing instead of hpsv2's would have moved the scores by up to 5.4e-4 on these images.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from vargo.core.registry import REWARD_HEADS

from .clip_score import ClipScoreReward

__all__ = ['HPSv2Reward', 'HPS_FILE_SOURCES']

#: official file name -> where it is published (``check_files`` reports it for a missing file)
HPS_FILE_SOURCES: dict[str, str] = {
    'HPS_v2_compressed.pt': 'https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2_compressed.pt',
    'HPS_v2.1_compressed.pt':
        'https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt',
}


@REWARD_HEADS.register_module()
class HPSv2Reward(ClipScoreReward):
    """HPS v2 / v2.1 score: cosine of the HPS-tuned ViT-H-14's image and text features, with
    hpsv2's preprocessing (module docstring; arXiv 2306.09341).

    Args:
        checkpoint: local ``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt`` (the version is
            the file), loaded strictly; ``None`` only with ``random_init=True``.
        arch: open_clip architecture, ``'ViT-H-14'`` for the official files; a config dict
            builds a small model (tests).
        random_init: random weights (tests only).
        class_names: ``'imagenet'``, ``'shapes'``, a list (score ``rollout.cond.class_ids``
            through ``templates``), or None (score ``rollout.cond.prompts``).
        templates: class-name templates, ``'a photo of a {}'`` as LOO-FID.
        scale: multiplies the score (1.0: hpsv2's score).
        quantize: round images to 8 bits first, as the PIL images hpsv2 scores (default True).
        antialias: antialiased tensor resize (torchvision >= 0.17, default) or not (< 0.17).
        fp16: fp16 autocast on GPU, as ``hpsv2.score`` (default True; ignored on CPU).
        image_batch_size: images per forward.
        max_cache: text features kept (LRU).

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float32)``; NaN images give NaN (unscorable).

    Examples:
        >>> rewards = dict(hps=dict(type='HPSv2Reward',
        ...                         checkpoint='checkpoints/hps/HPS_v2.1_compressed.pt',
        ...                         class_names='imagenet'))
    """

    file_sources: dict[str, str] = HPS_FILE_SOURCES
    _clamp_resized = False  # hpsv2 resizes the float tensor and does not clamp

    def __init__(self, *, checkpoint: Optional[str] = None, arch: Union[str, dict] = 'ViT-H-14',
                 random_init: bool = False, class_names: Union[None, str, Sequence[str]] = None,
                 templates: Union[str, Sequence[str]] = 'a photo of a {}', scale: float = 1.0,
                 quantize: bool = True, antialias: bool = True, fp16: bool = True,
                 image_batch_size: int = 64, max_cache: int = 10000) -> None:
        super().__init__(arch=arch, checkpoint=checkpoint, random_init=random_init,
                         class_names=class_names, templates=templates, scale=scale,
                         quantize=quantize, resize_mode='shortest', interpolation='bicubic',
                         antialias=antialias, fp16=fp16, image_batch_size=image_batch_size,
                         max_cache=max_cache)
