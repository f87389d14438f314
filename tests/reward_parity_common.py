"""Inputs shared by the reward-model parity tests and the script that computed their pinned
reference numbers (``tests/fixtures/reward_parity_reference.py``, run in a separate virtual
environment holding the reference packages).

Only numpy, PIL and json are used, so both environments build bit-identical inputs: tiny model
configurations, deterministic weights addressed by parameter name (``np.random.RandomState``,
whose streams numpy keeps stable across versions), test images and prompts, and tokenizer files
small enough to write in a test (a byte-level CLIP BPE vocabulary, a WordPiece vocabulary).
"""
from __future__ import annotations

import json
import os
import zlib

import numpy as np

# ---- prompts and images ------------------------------------------------------------------------
PROMPTS = [
    'a red circle',
    'Two BLUE squares, side by side!',
    'a photo of a cat',
    'a green triangle above a yellow star',
    'an   oil painting of a lighthouse at dusk',
    'a very long prompt ' + ' '.join(f'with word{i} and colour {i % 7}' for i in range(12)),
]

#: image sizes (h, w): 32 x 32 is the tiny models' input size (no resize); the others are resized
#: (down and up, non-square) so that the preprocessing is exercised
IMAGE_SIZES = [(32, 32), (32, 32), (48, 40), (64, 64), (40, 56), (24, 24)]


def parity_images(seed: int = 0) -> list:
    """``len(IMAGE_SIZES)`` uint8 ``[H, W, 3]`` arrays: smooth colour fields plus noise."""
    rs = np.random.RandomState(seed)
    out = []
    for h, w in IMAGE_SIZES:
        coarse = rs.rand(4, 4, 3)
        smooth = np.kron(coarse, np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w]
        img = 0.75 * smooth + 0.25 * rs.rand(h, w, 3)
        out.append(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
    return out


# ---- deterministic weights ---------------------------------------------------------------------
def deterministic_array(name: str, shape: tuple, seed: int = 0) -> np.ndarray:
    """float32 values for the tensor ``name`` of ``shape``: a normal stream seeded by the name.
    Norm weights (1-D ``*weight``) are ``1 + 0.1 n``, biases ``0.05 n``, ``[1, N, D]`` tokens and
    position tables ``0.2 n``, other matrices ``n / sqrt(fan_in)``."""
    rs = np.random.RandomState((seed * 1000003 + zlib.crc32(name.encode())) % (2 ** 31))
    n = rs.standard_normal(size=tuple(shape))
    if len(shape) == 0:
        x = 0.5 * n
    elif len(shape) == 1:
        x = 1.0 + 0.1 * n if name.endswith('weight') else 0.05 * n
    elif shape[0] == 1:
        x = 0.2 * n
    else:
        x = n / np.sqrt(float(np.prod(shape[1:])))
    return np.asarray(x, dtype=np.float32)


def deterministic_state(shapes: dict, seed: int = 0) -> dict:
    """``{name: float32 array}`` for ``{name: shape}``."""
    return {k: deterministic_array(k, tuple(s), seed) for k, s in sorted(shapes.items())}


def layout_digest(shapes: dict) -> str:
    """sha256 (first 16 hex digits) of the sorted ``name:shape`` lines of a state dict layout."""
    import hashlib
    lines = '\n'.join(f'{k}:{list(s)}' for k, s in sorted(shapes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


# ---- PickScore (a CLIP model in transformers' layout) ------------------------------------------
#: logit_scale of the tiny PickScore model (exp = 50, set after the deterministic fill)
PICK_LOGIT_SCALE = float(np.log(50.0))


def bytes_to_unicode() -> dict:
    """GPT-2 / CLIP byte -> printable unicode character table."""
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + \
        list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


#: a few BPE merges, so that the tokenizer merges (and the vocabulary is CLIP-shaped)
CLIP_MERGES = [('r', 'e'), ('i', 'r'), ('c', 'ir'), ('l', 'e</w>'), ('t', 'h'), ('e', 'd</w>'),
               ('o', 'n'), ('a', 'r'), ('th', 'e</w>'), ('o', 'f</w>')]


def clip_vocab() -> dict:
    """A byte-level CLIP vocabulary: the 256 byte characters, the same with ``</w>``, the merges
    above, then ``<|startoftext|>`` and ``<|endoftext|>`` (the largest id, as in CLIP)."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + '</w>' for c in chars]
    for a, b in CLIP_MERGES:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += ['<|startoftext|>', '<|endoftext|>']
    return {t: i for i, t in enumerate(tokens)}


def write_clip_tokenizer(directory: str) -> int:
    """``vocab.json`` and ``merges.txt`` of :func:`clip_vocab` in ``directory``; returns the
    vocabulary size."""
    os.makedirs(directory, exist_ok=True)
    vocab = clip_vocab()
    with open(os.path.join(directory, 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in CLIP_MERGES))
    return len(vocab)


def pick_tiny_config(vocab_size: int) -> dict:
    """A tiny ``CLIPConfig`` (transformers) of PickScore's shape: 32 px images, patch 8."""
    return dict(
        projection_dim=16,
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         hidden_act='gelu', layer_norm_eps=1e-5, bos_token_id=vocab_size - 2,
                         eos_token_id=2, pad_token_id=1, projection_dim=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8, hidden_act='gelu',
                           layer_norm_eps=1e-5, projection_dim=16),
        logit_scale_init_value=2.6592)


# ---- ImageReward (BLIP ViT + BERT with cross-attention + MLP) ----------------------------------
IR_VIT = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2)

BERT_WORDS = ['a', 'red', 'circle', 'two', 'blue', 'square', '##s', 'photo', 'of', 'cat',
              'green', 'triangle', 'above', 'yellow', 'star', 'oil', 'painting', 'light',
              '##house', 'at', 'dusk', 'very', 'long', 'prompt', 'with', 'word', 'and', 'colour',
              'side', 'by', ',', '!', '.']


def bert_vocab() -> list:
    """A WordPiece vocabulary without duplicates: BERT's special tokens first (``[PAD]`` = 0),
    the words above, single letters and digits with their ``##`` continuations."""
    specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    chars = list('abcdefghijklmnopqrstuvwxyz0123456789')
    words = specials + BERT_WORDS
    pieces = chars + ['##' + c for c in chars]
    return words + [c for c in pieces if c not in words]


def write_bert_vocab(directory: str) -> int:
    """``vocab.txt`` of :func:`bert_vocab` in ``directory``; returns its size."""
    os.makedirs(directory, exist_ok=True)
    vocab = bert_vocab()
    with open(os.path.join(directory, 'vocab.txt'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(vocab) + '\n')
    return len(vocab)


def ir_med_config(vocab_size: int) -> dict:
    """A tiny ``med_config.json`` (BLIP's BERT config) for a vocabulary of ``vocab_size`` words
    plus BLIP's two added tokens ([DEC], [ENC])."""
    return dict(architectures=['BertModel'], attention_probs_dropout_prob=0.1, hidden_act='gelu',
                hidden_dropout_prob=0.1, hidden_size=32, initializer_range=0.02,
                intermediate_size=64, layer_norm_eps=1e-12, max_position_embeddings=40,
                model_type='bert', num_attention_heads=2, num_hidden_layers=2, pad_token_id=0,
                type_vocab_size=2, vocab_size=vocab_size + 2, encoder_width=32,
                add_cross_attention=True)


# ---- HPSv3 (Qwen2-VL + a reward MLP on the <|Reward|> token) ------------------------------------
#: Qwen2's special tokens, in the order of their ids after the BPE vocabulary (as Qwen2-VL's
#: ``tokenizer_config.json`` numbers them from 151643)
QWEN_SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|object_ref_start|>',
                       '<|object_ref_end|>', '<|box_start|>', '<|box_end|>', '<|quad_start|>',
                       '<|quad_end|>', '<|vision_start|>', '<|vision_end|>', '<|vision_pad|>',
                       '<|image_pad|>', '<|video_pad|>']

#: the chat template of Qwen2-VL-Instruct's processor (``chat_template.json``)
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

#: words given whole-word BPE tokens (with their leading space) so that HPSv3's long instruction
#: is about 1,400 tokens instead of 2,500 bytes
QWEN_WORDS = ['the', 'image', 'and', 'should', 'of', 'The', 'in', 'or', 'prompt', 'with', 'be',
              'overall', 'to', 'Evaluate', 'are', 'not', 'such', 'elements', 'Assess', 'content',
              'how', 'subject', 'description', 'generated', 'visual', 'quality', 'following',
              'dimensions', 'contain', 'as', 'clothing', 'artistic', 'well', 'textual',
              'Relevance', 'style', 'whether', 'attributes', 'rating', 'ratings', 'this', 'a',
              'red', 'circle', 'photo', 'cat', 'word', 'colour', 'very', 'long']


def qwen_merges() -> list:
    """BPE merges building ``'Ġ' + word`` left to right for each of :data:`QWEN_WORDS`."""
    out = []
    for word in QWEN_WORDS:
        piece = 'Ġ'
        for ch in word:
            if (piece, ch) not in out:
                out.append((piece, ch))
            piece += ch
    return out


def qwen_vocab() -> dict:
    """A byte-level Qwen2 vocabulary: the 256 byte characters, then the merged pieces."""
    tokens = list(bytes_to_unicode().values())
    for a, b in qwen_merges():
        if a + b not in tokens:
            tokens.append(a + b)
    return {t: i for i, t in enumerate(tokens)}


def write_qwen2_vl_processor(directory: str) -> dict:
    """A ``Qwen2-VL-7B-Instruct``-shaped processor directory: ``vocab.json``, ``merges.txt``,
    ``tokenizer_config.json`` (special tokens after the vocabulary, the chat template),
    ``chat_template.json`` and ``preprocessor_config.json`` (its values). Returns the ids
    ``{token: id}`` of the special tokens."""
    os.makedirs(directory, exist_ok=True)
    vocab = qwen_vocab()
    with open(os.path.join(directory, 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in qwen_merges()))
    ids = {t: len(vocab) + i for i, t in enumerate(QWEN_SPECIAL_TOKENS)}
    added = {str(i): dict(content=t, lstrip=False, normalized=False, rstrip=False,
                          single_word=False, special=True) for t, i in ids.items()}
    config = dict(add_prefix_space=False, added_tokens_decoder=added,
                  additional_special_tokens=QWEN_SPECIAL_TOKENS[1:], bos_token=None,
                  chat_template=QWEN2_VL_CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
                  eos_token='<|im_end|>', errors='replace', model_max_length=32768,
                  pad_token='<|endoftext|>', split_special_tokens=False,
                  tokenizer_class='Qwen2Tokenizer', unk_token=None)
    with open(os.path.join(directory, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
        json.dump(config, f, ensure_ascii=False, indent=1)
    with open(os.path.join(directory, 'chat_template.json'), 'w', encoding='utf-8') as f:
        json.dump(dict(chat_template=QWEN2_VL_CHAT_TEMPLATE), f, ensure_ascii=False)
    with open(os.path.join(directory, 'preprocessor_config.json'), 'w') as f:
        json.dump(dict(min_pixels=3136, max_pixels=12845056, patch_size=14,
                       temporal_patch_size=2, merge_size=2,
                       image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711],
                       image_processor_type='Qwen2VLImageProcessor',
                       processor_class='Qwen2VLProcessor'), f)
    return ids


def qwen2_vl_tiny_config(special_ids: dict) -> dict:
    """A tiny ``config.json`` in Qwen2-VL-7B-Instruct's (transformers 4.45) format: 2 decoder
    layers of width 32 (4 heads of 8, 2 KV heads, M-RoPE sections 1 + 1 + 2), a 2-block ViT of
    width 32 with patch 14, temporal patch 2 and 2 x 2 merging. ``vocab_size`` is padded beyond
    the tokenizer, as the official 152064 is."""
    n = max(special_ids.values()) + 1
    return dict(
        architectures=['Qwen2VLForConditionalGeneration'], model_type='qwen2_vl',
        attention_dropout=0.0, bos_token_id=special_ids['<|endoftext|>'],
        eos_token_id=special_ids['<|im_end|>'],
        vision_start_token_id=special_ids['<|vision_start|>'],
        vision_end_token_id=special_ids['<|vision_end|>'],
        vision_token_id=special_ids['<|vision_pad|>'],
        image_token_id=special_ids['<|image_pad|>'], video_token_id=special_ids['<|video_pad|>'],
        hidden_act='silu', hidden_size=32, initializer_range=0.02, intermediate_size=64,
        max_position_embeddings=32768, max_window_layers=2, num_attention_heads=4,
        num_hidden_layers=2, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
        sliding_window=32768, tie_word_embeddings=False, torch_dtype='float32', use_cache=True,
        use_sliding_window=False,
        vision_config=dict(depth=2, embed_dim=32, mlp_ratio=2, num_heads=2, in_chans=3,
                           hidden_size=32, patch_size=14, spatial_merge_size=2,
                           spatial_patch_size=14, temporal_patch_size=2),
        rope_scaling=dict(type='mrope', mrope_section=[1, 1, 2]),
        vocab_size=(n + 64) // 64 * 64)


#: HPSv3's score sizes are fixed by its code: images resized to 256 x 28 x 28 pixels (448 x 448
#: when square); the parity images are scored at that size
HPSV3_PIXELS = 256 * 28 * 28
