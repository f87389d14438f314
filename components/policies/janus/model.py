"""Glue between vargo and transformers' Janus classes: the Janus-Pro sizes as ``JanusConfig``
settings, the special tokens image generation needs, and a small word-level tokenizer for models
built without files (tests, Shapes-size experiments, benchmarks).

No architecture lives here: the model is transformers' ``JanusForConditionalGeneration``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

__all__ = ['JANUS_PRO_ARCHS', 'JanusSpecialTokens', 'build_janus_config', 'word_level_tokenizer',
           'SharedTokenizer', 'TINY_SPECIAL_TOKENS']

#: The published sizes (config.json of deepseek-ai/Janus-Pro-1B and -7B, the language model a
#: DeepSeek-LLM; SigLIP-L understanding encoder at 384 px; VQ-16 image tokenizer with 16384
#: 8-dim codes; generation aligner and head of the language model's width). Used to build a
#: randomly initialised model of the real size (benchmarks) when no directory is given.
JANUS_PRO_ARCHS: dict[str, dict[str, Any]] = {
    'Janus-Pro-1B': dict(
        text=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                  num_attention_heads=16, num_key_value_heads=16)),
    'Janus-Pro-7B': dict(
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                  num_attention_heads=32, num_key_value_heads=32)),
}
_TEXT_COMMON = dict(vocab_size=102400, max_position_embeddings=16384, rms_norm_eps=1e-6,
                    rope_theta=10000.0, hidden_act='silu', attention_bias=False, mlp_bias=False,
                    tie_word_embeddings=False, bos_token_id=100000, eos_token_id=100001,
                    pad_token_id=100002)
_VISION_COMMON = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      image_size=384, patch_size=16, mlp_ratio=4.0, num_image_tokens=576)
_VQ_COMMON = dict(embed_dim=8, num_embeddings=16384, base_channels=128,
                  channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2, latent_channels=256,
                  num_hidden_layers=2)

#: the pad token of Janus-Pro's tokenizer (``VLChatProcessor.pad_tag``), used when the tokenizer
#: names no pad token
OFFICIAL_PAD_TOKEN = '<｜▁pad▁｜>'
#: the special tokens of the small word-level tokenizer (Janus-Pro's own names for the image
#: tokens; short names for BOS / EOS / pad)
TINY_SPECIAL_TOKENS = dict(unk='<unk>', bos='<bos>', eos='<eos>', pad='<pad>',
                           boi='<begin_of_image>', eoi='<end_of_image>',
                           image='<image_placeholder>')


def build_janus_config(arch: Union[str, dict], token_ids: Optional[dict[str, int]] = None):
    """A ``transformers.JanusConfig`` from a preset name (:data:`JANUS_PRO_ARCHS`) or a dict
    ``dict(base=<preset>, text=dict(...), vision=dict(...), vq=dict(...))`` whose sub-dicts
    override ``LlamaConfig`` / ``JanusVisionConfig`` / ``JanusVQVAEConfig`` fields (no ``base``:
    Janus-Pro-1B's). The generation aligner and head always have the language model's width
    (``vq.projection_dim = vq.image_token_embed_dim = text.hidden_size``), as in Janus-Pro.
    ``token_ids`` (``bos_token_id``, ``eos_token_id``, ``pad_token_id``) are a tokenizer's ids,
    applied unless ``arch['text']`` sets them."""
    from transformers import JanusConfig, LlamaConfig
    from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig
    if isinstance(arch, str):
        if arch not in JANUS_PRO_ARCHS:
            raise ValueError(f'JanusPolicy arch={arch!r} is not one of {sorted(JANUS_PRO_ARCHS)} '
                             f'(or a dict of text/vision/vq settings)')
        arch = dict(base=arch)
    if not isinstance(arch, dict):
        raise ValueError(f'JanusPolicy arch={arch!r} must be a preset name '
                         f'{sorted(JANUS_PRO_ARCHS)} or a dict of text/vision/vq settings')
    unknown = set(arch) - {'base', 'text', 'vision', 'vq'}
    if unknown:
        raise ValueError(f'JanusPolicy arch has unknown keys {sorted(unknown)}; use base, text, '
                         f'vision, vq')
    base = arch.get('base', 'Janus-Pro-1B')
    if base not in JANUS_PRO_ARCHS:
        raise ValueError(f'JanusPolicy arch base={base!r} is not one of {sorted(JANUS_PRO_ARCHS)}')
    preset = JANUS_PRO_ARCHS[base]
    text = {**_TEXT_COMMON, **(token_ids or {}), **preset.get('text', {}),
            **arch.get('text', {})}
    vision = {**_VISION_COMMON, **preset.get('vision', {}), **arch.get('vision', {})}
    vision.setdefault('projection_dim', text['hidden_size'])
    grid = vision['image_size'] // vision['patch_size']
    vision['num_image_tokens'] = grid * grid
    vq = {**_VQ_COMMON, **preset.get('vq', {}), **arch.get('vq', {})}
    vq['projection_dim'] = vq['image_token_embed_dim'] = text['hidden_size']
    return JanusConfig(text_config=LlamaConfig(**text),
                       vision_config=JanusVisionConfig(**vision),
                       vq_config=JanusVQVAEConfig(**vq),
                       image_token_id=100581 if text['vocab_size'] > 100581 else
                       text['vocab_size'] - 1,
                       tie_word_embeddings=False)


@dataclasses.dataclass(frozen=True)
class JanusSpecialTokens:
    """Token ids image generation needs: the prompt's first token (BOS), the padding token of
    the CFG unconditional prompt, and the image-start token the prompt ends with."""

    bos: int
    pad: int
    boi: int

    @classmethod
    def of(cls, tokenizer, image_start_token: str) -> 'JanusSpecialTokens':
        """Read the ids from a tokenizer (pad: its pad token, else Janus-Pro's
        :data:`OFFICIAL_PAD_TOKEN`); one line naming what is missing otherwise."""
        unk = tokenizer.unk_token_id
        boi = tokenizer.convert_tokens_to_ids(image_start_token)
        if boi is None or (unk is not None and boi == unk):
            raise ValueError(f'the tokenizer has no image-start token {image_start_token!r}; '
                             f'set JanusPolicy image_start_token to its name')
        pad = tokenizer.pad_token_id
        if pad is None:     # the official processor's pad tag (VLChatProcessor.pad_tag)
            pad = tokenizer.convert_tokens_to_ids(OFFICIAL_PAD_TOKEN)
            pad = None if pad is None or (unk is not None and pad == unk) else pad
        for what, tid in (('bos_token', tokenizer.bos_token_id), ('pad_token', pad)):
            if tid is None:
                raise ValueError(f'the tokenizer has no {what}; Janus image generation needs it '
                                 f'(BOS starts the prompt, pad fills the CFG unconditional '
                                 f'prompt)')
        return cls(bos=int(tokenizer.bos_token_id), pad=int(pad), boi=int(boi))


class SharedTokenizer:
    """A tokenizer held by a policy and shared (not copied) by its deep copies, such as the
    frozen reference policy: tokenizers are read-only here."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __deepcopy__(self, memo):
        return self

    def __getattr__(self, name):
        if name == 'tokenizer':
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.tokenizer)


def word_level_tokenizer(vocabulary: Sequence[str], *,
                         roles: Sequence[str] = ('<|User|>', '<|Assistant|>'),
                         extra_special_tokens: Optional[dict[str, str]] = None):
    """A small lower-casing word-level ``PreTrainedTokenizerFast`` built offline: ids ``0..6``
    are :data:`TINY_SPECIAL_TOKENS` (unk, bos, eos, pad, begin/end of image, image
    placeholder), then the chat roles, ``':'``, and ``vocabulary`` in order. Words are split on
    whitespace and punctuation; unknown words map to ``<unk>``; BOS is prepended as Janus-Pro's
    tokenizer does."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    words = [str(w) for w in vocabulary]
    bad = [w for w in words if not w or any(c.isspace() for c in w) or w != w.lower()]
    if bad:
        raise ValueError(f'word_level_tokenizer vocabulary has entries {bad[:5]} that are not '
                         f'single lower-case words')
    special = dict(TINY_SPECIAL_TOKENS, **(extra_special_tokens or {}))
    fixed = list(special.values()) + list(roles) + [':']
    vocab: dict[str, int] = {}
    for w in fixed + words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token=special['unk']))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Punctuation()])
    tk.post_processor = processors.TemplateProcessing(
        single=f'{special["bos"]} $A', pair=f'{special["bos"]} $A $B',
        special_tokens=[(special['bos'], vocab[special['bos']])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token=special['unk'],
                                  bos_token=special['bos'], eos_token=special['eos'],
                                  pad_token=special['pad'])
    # matched before normalisation and splitting, so '<|User|>' stays one token
    tok.add_special_tokens({'additional_special_tokens':
                            [special['boi'], special['eoi'], special['image'], *roles]})
    return tok

