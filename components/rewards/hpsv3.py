"""HPSv3 (Ma et al., "HPSv3: Towards Wide-Spectrum Human Preference Score", ICCV 2025,
arXiv 2508.03789; code MizzenAI/HPSv3, package ``hpsv3``).

HPSv3 is Qwen2-VL-7B-Instruct with a reward MLP read at an added ``<|Reward|>`` token, trained
with an uncertainty-aware ranking loss. Its score of image ``x`` for prompt ``p`` is what the
package's ``HPSv3RewardInferencer.reward`` returns in column 0::

    text = chat_template(user: [image, INSTRUCTION(p) + "... this image: <|Reward|> ..."])
    h = Qwen2VLModel(tokens(text), pixels(x))        # last hidden states, after the norm
    (mu, log_sigma) = MLP(h[position of <|Reward|>])
    HPSv3(x, p) = mu

``MLP`` = Linear(D, 1024), ReLU, Dropout(0.05), Linear(1024, 16), ReLU, Linear(16, 2) (the
package's ``rm_head_type='ranknet'``), run in float32. ``sigma = exp(log_sigma)`` is the model's
uncertainty (its loss samples ``N(mu_A - mu_B, sigma_A^2 + sigma_B^2)``); its batch mean is
logged as the metric ``sigma``. ``INSTRUCTION`` is the package's evaluation instruction
(:data:`HPSV3_INSTRUCTION`, verbatim), the chat template the backbone processor's own
(``chat_template.json``: system "You are a helpful assistant.", then the user turn, then the
generation prompt). The image is one ``<|vision_start|><|image_pad|>...<|vision_end|>`` run of
``(h / 28) * (w / 28)`` merged patch tokens. Positions are ``0..L-1`` on all three M-RoPE axes:
the package's forward passes no position ids to the language model, so Qwen2-VL's 3-D image
positions are not used (in training either; with them the tiny parity model's scores move by
0.06).

Model: transformers' ``Qwen2VLModel`` (vision tower + language model; the LM head is not
needed) built from the backbone directory's ``config.json`` with the vocabulary size of the
checkpoint (the package adds ``<|Reward|>`` and resizes the embeddings to the tokenizer: 151658
rows for the official file), plus the reward MLP. ``HPSv3.safetensors`` holds every weight (the
package loads it with ``strict=True`` over the backbone); it is read data-only
(:func:`vargo.core.checkpoint.read_state_dict`) and loaded strictly: its transformers-4.45 names
(``model.layers.*``, ``visual.*``, ``rm_head.*``; transformers >= 4.52 names are accepted too)
are mapped to the module's, ``lm_head.weight`` is dropped, and every other missing, unexpected
or mis-shaped key raises. ``dtype='bfloat16'`` (default) is the package's inference dtype (the
whole model in bf16 but the MLP in float32; non-persistent RoPE frequency buffers converted too,
as the package's ``model.to(torch.bfloat16)`` does); ``'float32'`` runs everything in float32.
Tokenizer: the backbone's (``vocab.json`` + ``merges.txt`` or ``tokenizer.json``) with
``<|Reward|>`` added as a special token, right padding. Nothing is downloaded.

Preprocessing (the package's ``process_vision_info`` with ``min_pixels = max_pixels = 256 * 28
* 28``, then ``Qwen2VLImageProcessor``): the 8-bit image is resized with PIL's bicubic filter to
the package's ``smart_resize`` size (sides multiples of 28 near 200704 pixels, aspect kept: 448
x 448 for a square image), resized again by the image processor's ``smart_resize`` (its own
pixel bounds; the identity for the official ``preprocessor_config.json``), ``/ 255``, CLIP
mean/std, and cut into ``14 x 14`` patches repeated twice in time, ordered by ``2 x 2`` merge
windows. Here on float tensors, batched, on the images' device: 8-bit quantisation, then PIL's
separable resize: a horizontal pass, then a vertical one, each an antialiased bicubic (PIL's
kernel), clamped and rounded to 8 bits as PIL's intermediate and output images are; then
normalisation and the same patch order. Non-finite images score NaN (they are
replaced by zeros in the forward pass so that nothing else is affected).

Parity with the package (measured in-session, pinned in ``tests/fixtures/reward_parity.json``
and checked by ``tests/test_rewards_hpsv3.py``): in a separate environment (``hpsv3`` 1.0.0,
transformers 4.45.2, tokenizers 0.20.3, torch 2.14 CPU, the package's other imports installed)
``HPSv3RewardInferencer(config_path, checkpoint_path, device='cpu').reward(images, prompts)``
ran unchanged. Its backbone (``model_name_or_path``) was a tiny ``Qwen2-VL-7B-Instruct``
directory (2 decoder layers of width 32, 2 ViT blocks of width 32 with the real patch, temporal
and merge sizes; a 485-token byte-level BPE vocabulary with Qwen2's 14 special tokens and the
Qwen2-VL chat template and preprocessor values) and ``config_path`` the package's own
``HPSv3_7B.yaml`` with only ``model_name_or_path``, ``output_dir``, ``report_to``,
``dataloader_num_workers``, ``bf16`` and ``torch_dtype`` replaced; the ``HPSv3.safetensors`` it
loaded held weights that are a deterministic function of the parameter names
(``tests/reward_parity_common.py``), in the layout of the model the package built. 6 prompts
x 6 PIL images (32 x 32 twice, 64 x 64 and 24 x 24, all scored at 448 x 448; 48 x 40 at 504 x
420; 40 x 56 at 392 x 532) were scored in float32 and in bfloat16; in bfloat16 the package's
float32 MLP relies on ``torch.autocast('cuda', dtype=float32)`` to cast its input, which does
nothing on a CPU, so a forward pre-hook on the MLP cast it there (the only change). Not run:
the package's CUDA, flash-attention and DeepSpeed paths, and the official 7B weights (not
available offline).

Measured, this head loading the same file (``mu`` in [-0.112, 0.103], ``log_sigma`` in [0.15,
0.86] on these weights): identical token ids (1813-1900 per sample), the same state-dict layout
(64 tensors) and the package's instruction (sha256 pinned). float32, on the package's pixels
(rebuilt with PIL, their sums pinned): largest difference 2.2e-7 on ``mu``, 3.9e-7 on
``log_sigma``; on float images through this head's preprocessing 2.5e-5 and 6.7e-5 (a few
pixels one 8-bit level apart from PIL's; a single-pass resize without the 8-bit intermediate
would leave a fifth of the pixels 1-5 levels apart and differ by about 4e-4). bfloat16, both on
the CPU: 3.7e-3 on ``mu`` (9.8e-3 on ``log_sigma``): bf16 round-off in another order of
operations (the vision tower's outputs are already one bf16 ulp apart), the package's own
bfloat16 and float32 scores differing by 6.0e-3.
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from vargo.core.checkpoint import load_state_dict_strict, read_state_dict
from vargo.core.interfaces import RewardHead
from vargo.core.registry import REWARD_HEADS
from vargo.core.types import RewardContext, RewardOutput, Rollout

from .clip_score import clip_preprocess, resolve_class_names
from .preference_common import (build_on_meta, check_images, condition_texts, missing_file,
                                resolve_template)

__all__ = ['HPSv3Reward', 'HPSv3Model', 'HPSV3_FILE_SOURCES', 'HPSV3_INSTRUCTION',
           'HPSV3_REWARD_SUFFIX', 'HPSV3_PIXELS', 'smart_resize', 'qwen2_vl_patches']

#: official file / directory name -> where it is published (``check_files`` reports it)
HPSV3_FILE_SOURCES: dict[str, str] = {
    'HPSv3.safetensors': 'https://huggingface.co/MizzenAI/HPSv3/resolve/main/HPSv3.safetensors',
    'Qwen2-VL-7B-Instruct':
        'https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct (config.json, vocab.json + merges.txt '
        'or tokenizer.json, tokenizer_config.json, chat_template.json, preprocessor_config.json; '
        'its model-*.safetensors are not needed: HPSv3.safetensors holds every weight)',
}

#: the package's evaluation instruction (``hpsv3/dataset/data_collator_qwen.py``), verbatim;
#: ``{text_prompt}`` is the prompt
HPSV3_INSTRUCTION = (
    '\n'
    'You are tasked with evaluating a generated image based on Visual Quality and '
    'Text Alignment and give a overall score to estimate the human preference. Please '
    'provide a rating from 0 to 10, with 0 being the worst and 10 being the best. \n'
    '\n'
    '**Visual Quality:**  \n'
    'Evaluate the overall visual quality of the image. The following sub-dimensions '
    'should be considered:\n'
    '- **Reasonableness:** The image should not contain any significant biological or '
    'logical errors, such as abnormal body structures or nonsensical environmental '
    'setups.\n'
    '- **Clarity:** Evaluate the sharpness and visibility of the image. The image '
    'should be clear and easy to interpret, with no blurring or indistinct areas.\n'
    '- **Detail Richness:** Consider the level of detail in textures, materials, '
    'lighting, and other visual elements (e.g., hair, clothing, shadows).\n'
    '- **Aesthetic and Creativity:** Assess the artistic aspects of the image, '
    'including the color scheme, composition, atmosphere, depth of field, and the '
    'overall creative appeal. The scene should convey a sense of harmony and '
    'balance.\n'
    '- **Safety:** The image should not contain harmful or inappropriate content, '
    'such as political, violent, or adult material. If such content is present, the '
    'image quality and satisfaction score should be the lowest possible. \n'
    '\n'
    '**Text Alignment:**  \n'
    'Assess how well the image matches the textual prompt across the following '
    'sub-dimensions:\n'
    '- **Subject Relevance** Evaluate how accurately the subject(s) in the image '
    '(e.g., person, animal, object) align with the textual description. The subject '
    'should match the description in terms of number, appearance, and behavior.\n'
    '- **Style Relevance:** If the prompt specifies a particular artistic or '
    'stylistic style, evaluate how well the image adheres to this style.\n'
    '- **Contextual Consistency**: Assess whether the background, setting, and '
    'surrounding elements in the image logically fit the scenario described in the '
    'prompt. The environment should support and enhance the subject without '
    'contradictions.\n'
    '- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt '
    '(e.g., colors, clothing, accessories, expressions, actions) are faithfully '
    'represented in the image. Minor deviations may be acceptable, but critical '
    'attributes should be preserved.\n'
    '- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the '
    'prompt are captured in the image. The generated content should not introduce '
    'elements that conflict with or distort the original description.\n'
    'Textual prompt - {text_prompt}\n'
    '\n'
    '\n'
)
#: what follows the instruction in the user turn: the ``<|Reward|>`` token the score is read at
HPSV3_REWARD_SUFFIX = '\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n'
REWARD_TOKEN = '<|Reward|>'
#: the package's fixed image size: ``min_pixels = max_pixels = 256 * 28 * 28``
HPSV3_PIXELS = 256 * 28 * 28
_TOKENIZER_FILES = ('tokenizer.json', 'vocab.json')


def smart_resize(height: int, width: int, *, factor: int = 28, min_pixels: int = HPSV3_PIXELS,
                 max_pixels: int = HPSV3_PIXELS) -> tuple[int, int]:
    """Qwen2-VL's target size: sides rounded to multiples of ``factor`` (at least one factor);
    if that exceeds ``max_pixels`` (or falls below ``min_pixels``) both sides are rescaled by
    ``sqrt(h w / max_pixels)`` (``sqrt(min_pixels / (h w))``) and floored (ceiled) to multiples
    of ``factor``."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f'HPSv3 cannot score a {height} x {width} image: Qwen2-VL refuses aspect '
                         f'ratios above 200')
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def _round8(x: Tensor) -> Tensor:
    return (x * 255.0).round() / 255.0


def qwen2_vl_patches(pixels: Tensor, *, patch: int = 14, merge: int = 2,
                     temporal: int = 2) -> Tensor:
    """``[B, 3, H, W]`` normalised images -> ``[B * (H / patch) * (W / patch), 3 * temporal *
    patch * patch]`` rows, each image repeated ``temporal`` times in time and its patches
    ordered by ``merge x merge`` windows (row-major), as Qwen2-VL's image processor flattens a
    single image."""
    b, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    x = pixels.unsqueeze(1).expand(b, temporal, c, h, w)
    x = x.reshape(b, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(b * gh * gw, c * temporal * patch * patch)


class HPSv3Model(nn.Module):
    """transformers' ``Qwen2VLModel`` (``model``) and the reward MLP (``rm_head``, float32):
    ``forward`` returns ``[B, 2]`` = ``(mu, log_sigma)`` read at ``reward_token_id``."""

    def __init__(self, config, reward_token_id: int) -> None:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel
        super().__init__()
        self.model = Qwen2VLModel(config)
        width = config.text_config.hidden_size
        self.rm_head = nn.Sequential(nn.Linear(width, 1024), nn.ReLU(), nn.Dropout(0.05),
                                     nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 2))
        self.reward_token_id = int(reward_token_id)

    def forward(self, ids: Tensor, attention_mask: Tensor, pixel_values: Tensor,
                grid_thw: Tensor) -> Tensor:
        at = ids == self.reward_token_id
        if not bool((at.sum(1) == 1).all()):
            raise ValueError(f'HPSv3: every sequence must hold exactly one {REWARD_TOKEN} token')
        # positions 0..L-1 on all three M-RoPE axes: the package's forward passes none, so
        # Qwen2-VL's 3-D image positions are not used (in training either)
        positions = torch.arange(ids.shape[1], device=ids.device).view(1, 1, -1)
        out = self.model(input_ids=ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         image_grid_thw=grid_thw, use_cache=False,
                         position_ids=positions.expand(3, ids.shape[0], -1))
        return self.rm_head(out.last_hidden_state[at].float())


def _module_key(key: str) -> Optional[str]:
    """The module name of an ``HPSv3.safetensors`` key (transformers 4.45 names, as saved by
    the package, or >= 4.52 ones); None for the LM head, which is not used."""
    if key == 'lm_head.weight':
        return None
    for prefix in ('model.language_model.', 'model.visual.'):
        if key.startswith(prefix):
            return key
    if key.startswith('visual.'):
        return 'model.' + key
    if key.startswith('model.'):
        return 'model.language_model.' + key[len('model.'):]
    return key


def _rope_buffers(config) -> dict:
    """The non-persistent RoPE frequency buffers of :class:`HPSv3Model` (built on the CPU)."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (Qwen2VLRotaryEmbedding,
                                                                Qwen2VLVisionRotaryEmbedding)
    out = {}
    for prefix, module in (('model.language_model.rotary_emb.',
                            Qwen2VLRotaryEmbedding(config.text_config)),
                           ('model.visual.rotary_pos_emb.',
                            Qwen2VLVisionRotaryEmbedding(config.vision_config))):
        out.update({prefix + n: b for n, b in module.named_buffers()})
    return out


def _chat_template(directory: str, tokenizer, owner: str, sources: dict) -> str:
    """The processor's chat template: ``chat_template.json``, ``chat_template.jinja``, else the
    tokenizer's own."""
    path = os.path.join(directory, 'chat_template.json')
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)['chat_template']
    path = os.path.join(directory, 'chat_template.jinja')
    if os.path.isfile(path):
        with open(path) as f:
            return f.read()
    if getattr(tokenizer, 'chat_template', None):
        return tokenizer.chat_template
    raise FileNotFoundError(f'{owner}: {directory!r} holds no chat template (chat_template.json); '
                            f'it is published at {sources["Qwen2-VL-7B-Instruct"]}')


@REWARD_HEADS.register_module()
class HPSv3Reward(RewardHead):
    """HPSv3 score ``mu``: the reward MLP of the HPSv3-tuned Qwen2-VL-7B at its ``<|Reward|>``
    token (module docstring; arXiv 2508.03789).

    Args:
        checkpoint: local ``HPSv3.safetensors`` (``MizzenAI/HPSv3``; a ``.pth`` state dict, or
            one under ``"model"``, also loads), loaded strictly.
        backbone_dir: local ``Qwen2-VL-7B-Instruct`` directory: ``config.json``, the tokenizer,
            ``chat_template.json`` and ``preprocessor_config.json`` (its weights are not read).
        class_names: ``'imagenet'``, ``'shapes'``, a list (score ``rollout.cond.class_ids``
            through ``template``), or None (score ``rollout.cond.prompts``).
        template: the class-name template, ``'a photo of a {}'``.
        dtype: ``'bfloat16'`` (the package's inference dtype) or ``'float32'``.
        quantize: round images to 8 bits before and after the resize, as the PIL images the
            package scores.
        pixels: ``min_pixels = max_pixels`` of the resize (256 * 28 * 28, fixed in the
            package; anything else is not HPSv3's scoring).
        image_batch_size: images per forward.

    Returns (of ``__call__``):
        ``RewardOutput(scores [B] float32 = mu, metrics={'sigma': mean exp(log_sigma)})``;
        non-finite images give NaN.

    Examples:
        >>> rewards = dict(hpsv3=dict(type='HPSv3Reward',
        ...                           checkpoint='checkpoints/hpsv3/HPSv3.safetensors',
        ...                           backbone_dir='checkpoints/Qwen2-VL-7B-Instruct'))
    """

    file_sources: dict[str, str] = HPSV3_FILE_SOURCES

    def __init__(self, *, checkpoint: str, backbone_dir: str,
                 class_names: Union[None, str, Sequence[str]] = None,
                 template: str = 'a photo of a {}', dtype: str = 'bfloat16',
                 quantize: bool = True, pixels: int = HPSV3_PIXELS,
                 image_batch_size: int = 4) -> None:
        from tokenizers import AddedToken
        from transformers import AutoTokenizer, Qwen2VLConfig
        name = type(self).__name__
        for key, value in (('image_batch_size', image_batch_size), ('pixels', pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} {key}={value!r} must be an int >= 1')
        if dtype not in ('bfloat16', 'float32'):
            raise ValueError(f"{name} dtype={dtype!r} is not one of 'bfloat16' (the package's), "
                             f"'float32'")
        for key, value in (('checkpoint', checkpoint), ('backbone_dir', backbone_dir)):
            if not isinstance(value, str) or not value:
                raise ValueError(f'{name} needs {key}=<local path> (vargo never downloads); '
                                 f'HPSv3 files: ' + '; '.join(f'{k}: {v}' for k, v in
                                                              self.file_sources.items()))
        self.class_names = resolve_class_names(class_names, name)
        self.template = resolve_template(template, name)
        checkpoint = os.path.expanduser(checkpoint)
        backbone_dir = os.path.expanduser(backbone_dir)
        if not os.path.isfile(checkpoint):
            raise missing_file(name, 'checkpoint', checkpoint, self.file_sources)
        if not os.path.isdir(backbone_dir):
            raise missing_file(name, 'backbone_dir', backbone_dir, self.file_sources)
        where = self.file_sources['Qwen2-VL-7B-Instruct']
        for what, files in (('config', ('config.json',)), ('tokenizer', _TOKENIZER_FILES),
                            ('image processor config', ('preprocessor_config.json',))):
            if not any(os.path.isfile(os.path.join(backbone_dir, f)) for f in files):
                raise FileNotFoundError(f'{name} backbone_dir {backbone_dir!r} holds no {what} '
                                        f'({" or ".join(files)}); it is published at {where}. '
                                        f'Download it there (vargo never downloads at run time).')
        self.tokenizer = AutoTokenizer.from_pretrained(backbone_dir, local_files_only=True,
                                                       padding_side='right')
        if REWARD_TOKEN not in self.tokenizer.get_vocab():
            self.tokenizer.add_tokens([AddedToken(REWARD_TOKEN, special=True)],
                                      special_tokens=True)
        self.reward_token_id = int(self.tokenizer.convert_tokens_to_ids(REWARD_TOKEN))
        self.chat_template = _chat_template(backbone_dir, self.tokenizer, name, self.file_sources)
        with open(os.path.join(backbone_dir, 'preprocessor_config.json')) as f:
            pp = json.load(f)
        self.patch, self.merge = int(pp.get('patch_size', 14)), int(pp.get('merge_size', 2))
        self.temporal = int(pp.get('temporal_patch_size', 2))
        self.processor_pixels = (int(pp.get('min_pixels', 56 * 56)),
                                 int(pp.get('max_pixels', 28 * 28 * 1280)))
        self.mean = tuple(pp.get('image_mean', (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(pp.get('image_std', (0.26862954, 0.26130258, 0.27577711)))

        state = read_state_dict(checkpoint, what=f'{name} weights')
        state = {_module_key(k): v for k, v in state.items() if _module_key(k) is not None}
        embed = state.get('model.language_model.embed_tokens.weight')
        if embed is None:
            raise ValueError(f'{name}: {checkpoint} holds no embed_tokens weight (model.'
                             f'embed_tokens.weight): not an HPSv3 checkpoint')
        config = Qwen2VLConfig.from_json_file(os.path.join(backbone_dir, 'config.json'))
        config.text_config.vocab_size = int(embed.shape[0])
        config._attn_implementation = 'sdpa'
        if self.reward_token_id >= embed.shape[0]:
            raise ValueError(f'{name}: {REWARD_TOKEN} is token {self.reward_token_id} of the '
                             f'tokenizer in {backbone_dir} but {checkpoint} embeds '
                             f'{embed.shape[0]} tokens: use the Qwen2-VL-7B-Instruct tokenizer')
        self.dtype = getattr(torch, dtype)

        def build():
            model = HPSv3Model(config, self.reward_token_id)
            model.model.to(self.dtype)
            return model

        self.model = build_on_meta(build, lambda m: _rope_buffers(config))
        load_state_dict_strict(self.model, state, source=checkpoint,
                               hint=f'{name} expects HPSv3.safetensors with the config.json of '
                                    f'the Qwen2-VL-7B-Instruct it was trained on')
        self.model.eval().requires_grad_(False)
        self.checkpoint, self.backbone_dir = checkpoint, backbone_dir
        self.quantize = bool(quantize)
        self.pixels = int(pixels)
        self.image_batch_size = int(image_batch_size)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(checkpoint={self.checkpoint!r}, '
                f'dtype={str(self.dtype).replace("torch.", "")})')

    # ---- inputs ------------------------------------------------------------------------------
    def sizes(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The package's resize target and the image processor's (the identity for the
        official ``preprocessor_config.json``)."""
        factor = self.patch * self.merge
        first = smart_resize(height, width, factor=factor, min_pixels=self.pixels,
                             max_pixels=self.pixels)
        lo, hi = self.processor_pixels
        return first, smart_resize(*first, factor=factor, min_pixels=lo, max_pixels=hi)

    def pixel_values(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(pixel_values [B * h * w / 196, 1176], grid_thw [B, 3])`` of ``[B, 3, H, W]``
        images in [0, 1] (module docstring)."""
        first, second = self.sizes(*images.shape[-2:])
        x = images.detach().float()
        if self.quantize:
            x = _round8(x.clamp(0.0, 1.0))
        for size in (first, second):
            x = self._resize(x, size)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        gh, gw = second[0] // self.patch, second[1] // self.patch
        grid = torch.tensor([[1, gh, gw]] * x.shape[0], device=x.device)
        return qwen2_vl_patches(x, patch=self.patch, merge=self.merge,
                                temporal=self.temporal), grid

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """PIL's bicubic resize of an 8-bit image: a horizontal pass, then a vertical one, each
        rounded to 8 bits (``quantize=True``); else one antialiased bicubic pass."""
        steps = [(x.shape[-2], size[1]), size] if self.quantize else [size]
        for step in steps:
            if tuple(step) != tuple(x.shape[-2:]):
                x = clip_preprocess(x, size=step, mean=(0.0,) * 3, std=(1.0,) * 3,
                                    resize_mode='squash', interpolation='bicubic',
                                    antialias=True, quantize=False, clamp=True)
                x = _round8(x) if self.quantize else x
        return x

    def text(self, prompt: str, image_tokens: int) -> str:
        """The chat the package scores for ``prompt``, its image run expanded to
        ``image_tokens`` tokens."""
        content = HPSV3_INSTRUCTION.format(text_prompt=prompt) + HPSV3_REWARD_SUFFIX
        messages = [{'role': 'user', 'content': [{'type': 'image'},
                                                 {'type': 'text', 'text': content}]}]
        chat = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                                  tokenize=False, add_generation_prompt=True)
        return chat.replace('<|image_pad|>', '<|image_pad|>' * image_tokens)

    def tokenize(self, prompts: list[str], image_tokens: int,
                 device: torch.device) -> tuple[Tensor, Tensor]:
        """``(ids, attention_mask)`` ``[N, L]`` of the chats, right-padded."""
        enc = self.tokenizer([self.text(p, image_tokens) for p in prompts], padding=True,
                             return_tensors='pt')
        return enc['input_ids'].to(device), enc['attention_mask'].to(device)

    # ---- scoring -----------------------------------------------------------------------------
    def _model_on(self, device: torch.device) -> HPSv3Model:
        if self.model.rm_head[0].weight.device != device:
            self.model.to(device)
        return self.model

    @torch.no_grad()
    def pixel_outputs(self, pixel_values: Tensor, grid_thw: Tensor,
                      prompts: list[str]) -> Tensor:
        """``[B, 2]`` float32 ``(mu, log_sigma)`` of preprocessed patches (one image per
        prompt, ``grid_thw`` rows alike)."""
        model = self._model_on(pixel_values.device)
        t, gh, gw = (int(v) for v in grid_thw[0])
        ids, mask = self.tokenize(prompts, t * gh * gw // self.merge ** 2, pixel_values.device)
        return model(ids, mask, pixel_values, grid_thw).float()

    @torch.no_grad()
    def outputs(self, images: Tensor, prompts: list[str]) -> Tensor:
        """``[B, 2]`` float32 ``(mu, log_sigma)`` of ``[B, 3, H, W]`` images in [0, 1]; NaN rows
        for non-finite images."""
        bad = ~torch.isfinite(images.detach()).flatten(1).all(1)
        images = torch.where(bad.view(-1, 1, 1, 1), torch.zeros_like(images), images)
        out = []
        for i in range(0, images.shape[0], self.image_batch_size):
            chunk = images[i:i + self.image_batch_size]
            pixels, grid = self.pixel_values(chunk)
            out.append(self.pixel_outputs(pixels, grid, prompts[i:i + chunk.shape[0]]))
        out = torch.cat(out)
        return out.masked_fill(bad.view(-1, 1), float('nan'))

    @torch.no_grad()
    def __call__(self, rollout: Rollout, ctx: Optional[RewardContext] = None) -> RewardOutput:
        name = type(self).__name__
        texts = condition_texts(rollout, self.class_names, self.template, name)
        images = check_images(rollout, len(texts), name)
        out = self.outputs(images, texts)
        sigma = out[:, 1].exp()
        finite = torch.isfinite(sigma)
        metrics = {'sigma': float(sigma[finite].mean())} if bool(finite.any()) else {}
        return RewardOutput(scores=out[:, 0], metrics=metrics)
