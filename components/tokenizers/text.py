"""T5 caption encoders for text-conditional LlamaGen, strictly offline.

Two encoders with one interface, :class:`T5TextEncoder`:

* :func:`flan_t5` -- the official conditioning of LlamaGen t2i (``language/t5.py``,
  ``T5Embedder``): FLAN-T5-XL's ``T5EncoderModel`` and tokenizer loaded from a LOCAL directory
  (``local_files_only``; published at https://huggingface.co/google/flan-t5-xl), captions
  tokenised with ``padding='max_length'``, ``truncation=True``, ``max_length=120``, special
  tokens added (the EOS counts as a real token), the last hidden state as features ``[B, 120,
  2048]`` and the attention mask ``[B, 120]`` -- *right*-padded, as ``get_text_embeddings``
  returns them. (The left-padding arrangement the GPT consumes is made by the policy, as in
  ``autoregressive/sample/sample_t2i.py``.)
* :func:`word_t5` -- a small T5 encoder built from a ``transformers.T5Config`` with a word-level
  tokenizer (the ``tokenizers`` library) over a given vocabulary, for tests and the Shapes
  benchmark; same padding convention (``<pad>`` id 0, ``</s>`` appended).

No network access ever: nothing here calls the Hugging Face hub (set ``HF_HUB_OFFLINE=1`` too).

Deviation: the official ``T5Embedder.text_preprocessing`` runs DeepFloyd-IF's ``clean_caption``
(twice), a long regex pipeline that also needs ``ftfy`` and ``bs4``. :func:`clean_caption` here
keeps the rules that change ordinary prompts (URL unquoting, lower-casing, HTML entities, the
"bad punctuation" set replaced by spaces, quote normalisation, a space after ``,``/``.``/``/``
before a word, trailing punctuation, whitespace collapsing) and drops the web-scrape rules
(URLs, HTML tags, CJK ranges, file names, shipping spam). Prompts of benchmarks (GenEval,
PartiPrompts, COCO) are affected by neither.
"""
from __future__ import annotations

import html
import os
import re
import urllib.parse
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from vargo.core.checkpoint import safe_load

__all__ = ['T5TextEncoder', 'flan_t5', 'word_t5', 'build_text_encoder', 'clean_caption',
           'T5_MAX_LENGTH', 'FLAN_T5_XL_SOURCE']

#: caption length of LlamaGen t2i (``--t5-feature-max-len 120``)
T5_MAX_LENGTH = 120
#: where the official text encoder is published
FLAN_T5_XL_SOURCE = 'https://huggingface.co/google/flan-t5-xl'

_BAD_PUNCT = re.compile(r'[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\/\*]+')


def clean_caption(text: str) -> str:
    """Normalise a caption (a subset of DeepFloyd-IF's ``clean_caption``; see module doc)."""
    text = urllib.parse.unquote_plus(str(text)).strip().lower()
    text = html.unescape(html.unescape(text))
    text = re.sub(r'[`´«»“”¨]', '"', text)
    text = re.sub(r'[‘’]', "'", text)
    text = re.sub(r'[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40'
                  r'\u301C\u3030\u30A0\uFE31\uFE32\uFE58\uFE63\uFF0D]+', '-', text)
    text = re.sub(r'["\']{2,}', '"', text)
    text = re.sub(r'\.{2,}', ' ', text)
    text = _BAD_PUNCT.sub(' ', text)
    text = re.sub(r'\s+\.\s+', ' ', text)
    if len(re.findall(r'[-_]', text)) > 3:       # this-is-a-slug -> words
        text = re.sub(r'[-_]', ' ', text)
    text = re.sub(r'(\D[,\./])\b', r'\1 ', text)
    text = re.sub(r'\s+', ' ', text).strip()
    text = re.sub(r'^["\']([\w\W]+)["\']$', r'\1', text)
    text = re.sub(r"^['_,\-:;]", '', text)
    text = re.sub(r"['_,\-:+]$", '', text)
    return text.strip()


class T5TextEncoder(nn.Module):
    """A frozen T5 encoder with its tokenizer: prompts -> (features, mask), right-padded.

    Args:
        model: a ``transformers.T5EncoderModel``.
        tokenize: ``prompts -> (input_ids [B, L] long, attention_mask [B, L])`` padded to
            ``max_length`` on the right.
        max_length: L, the number of caption tokens (LlamaGen: 120).
        preprocess: ``str -> str`` applied to every prompt first (official: the caption cleaner,
            applied twice), or None.

    Attributes:
        dim: feature width D (FLAN-T5-XL: 2048).
    """

    def __init__(self, *, model: nn.Module, tokenize: Callable[[list[str]], tuple[Tensor, Tensor]],
                 max_length: int, preprocess: Optional[Callable[[str], str]] = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self._tokenize = tokenize
        self.max_length = max_length
        self.preprocess = preprocess
        self.dim = int(model.config.d_model)

    def train(self, mode: bool = True) -> 'T5TextEncoder':
        return super().train(False)   # always frozen, always in eval mode

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Encode captions.

        Args:
            prompts: B captions.

        Returns:
            ``(emb [B, L, D] float32, mask [B, L] bool)``; ``mask`` is True on real tokens (the
            EOS included) and the padding is on the right.
        """
        texts = list(prompts)
        if self.preprocess is not None:
            texts = [self.preprocess(self.preprocess(t)) for t in texts]
        ids, mask = self._tokenize(texts)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        emb = self.model(input_ids=ids, attention_mask=mask)['last_hidden_state']
        return emb.float(), mask.bool()


def flan_t5(*, path: str, max_length: int = T5_MAX_LENGTH, dtype: str = 'float32',
            preprocess: bool = True) -> T5TextEncoder:
    """The official LlamaGen text encoder (FLAN-T5-XL) from a local directory.

    Args:
        path: local directory with ``config.json``, the weights and the tokenizer files of
            FLAN-T5-XL (``google/flan-t5-xl``; ``language/README.md`` of LlamaGen puts it under
            ``pretrained_models/t5-ckpt/flan-t5-xl``).
        max_length: caption tokens (official 120).
        dtype: ``'float32'`` (CPU) or ``'bfloat16'`` (the official scripts' default precision).
        preprocess: clean captions as the official ``T5Embedder`` does (see module doc).

    Raises:
        FileNotFoundError: ``path`` does not exist; names where the model is published.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f'FLAN-T5-XL directory {path!r} not found. The official LlamaGen t2i text encoder is '
            f'published at {FLAN_T5_XL_SOURCE} (config.json, tokenizer files and weights); '
            f'download it to a local directory and set text_encoder=dict(type="flan-t5", '
            f'path=...). For a model that runs without it, use a word-level T5 '
            f'(type="word-t5") as the Shapes configs do.')
    from transformers import AutoTokenizer, T5EncoderModel
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = T5EncoderModel.from_pretrained(path, local_files_only=True,
                                           dtype=getattr(torch, dtype))

    def tokenize(texts: list[str]) -> tuple[Tensor, Tensor]:
        out = tokenizer(texts, max_length=max_length, padding='max_length', truncation=True,
                        return_attention_mask=True, add_special_tokens=True, return_tensors='pt')
        return out['input_ids'], out['attention_mask']

    return T5TextEncoder(model=model, tokenize=tokenize, max_length=max_length,
                         preprocess=clean_caption if preprocess else None)


#: special tokens of the word-level tokenizer, at the ids T5 uses (pad 0, eos 1, unk 2)
WORD_SPECIALS = ('<pad>', '</s>', '<unk>')


def word_t5(*, vocabulary: Sequence[str], d_model: int, num_layers: int, num_heads: int,
            d_ff: int, max_length: int, d_kv: Optional[int] = None, seed: int = 0,
            checkpoint: Optional[str] = None) -> T5TextEncoder:
    """A small T5 encoder with a word-level tokenizer over ``vocabulary``.

    Words are lower-cased and split on whitespace and punctuation; unknown words map to
    ``<unk>``; ``</s>`` is appended and the ids are right-padded with ``<pad>`` (id 0) to
    ``max_length``, the FLAN-T5 convention.

    Args:
        vocabulary: the words (duplicates and the special tokens are ignored).
        d_model, num_layers, num_heads, d_ff: T5 sizes (gated-GELU feed-forward, as FLAN-T5).
        max_length: caption tokens L (the GPT's ``cls_token_num``).
        d_kv: head width (default ``d_model // num_heads``).
        seed: initialises the (random, frozen) weights deterministically when no checkpoint.
        checkpoint: optional state dict of the ``T5EncoderModel``, a ``.safetensors`` file (the
            shipped Shapes encoder, written by ``tools/pretrain_shapes.py text-encoder``) or a
            ``.pt`` file; loaded strictly (every missing or unexpected key and every shape
            mismatch is an error). T5 ties ``shared.weight`` and
            ``encoder.embed_tokens.weight``; a file holds both (equal) tensors.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        KeyError: its keys or shapes do not match the config.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import T5Config, T5EncoderModel

    vocab = {tok: i for i, tok in enumerate(WORD_SPECIALS)}
    for word in vocabulary:
        word = word.lower()
        if word not in vocab:
            vocab[word] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token='<unk>'))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single='$A </s>',
                                                       special_tokens=[('</s>', 1)])
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(length=max_length, pad_id=0, pad_token='<pad>', direction='right')

    def tokenize(texts: list[str]) -> tuple[Tensor, Tensor]:
        enc = tok.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask

    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=d_kv or d_model // num_heads,
                      d_ff=d_ff, num_layers=num_layers, num_heads=num_heads,
                      feed_forward_proj='gated-gelu', dropout_rate=0.0, pad_token_id=0,
                      eos_token_id=1, is_encoder_decoder=False, use_cache=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config)
    if checkpoint is not None:   # strict: keys and shapes (load_state_dict casts the dtype)
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                f'word-level T5 checkpoint {checkpoint!r} not found (relative paths are relative '
                f'to the working directory; the Shapes encoder is shipped in '
                f'components/benchmarks/weights/ and written by `python tools/pretrain_shapes.py '
                f'text-encoder`)')
        if str(checkpoint).endswith('.safetensors'):
            from safetensors.torch import load_file
            state = load_file(checkpoint, device='cpu')
        else:
            state = safe_load(checkpoint, 'cpu')
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                        for k in set(own) & set(state) if state[k].shape != own[k].shape)
        if missing or unexpected or shapes:
            raise KeyError(f'word-level T5 checkpoint {checkpoint!r} does not match the config '
                           f'(d_model, num_layers, num_heads, d_ff, vocabulary): missing keys '
                           f'{missing}, unexpected keys {unexpected}, shape mismatches {shapes}')
        model.load_state_dict(state, strict=True)
    encoder = T5TextEncoder(model=model, tokenize=tokenize, max_length=max_length)
    encoder.vocab = vocab
    return encoder


_BUILDERS = {'flan-t5': flan_t5, 'word-t5': word_t5}


def build_text_encoder(cfg: dict) -> T5TextEncoder:
    """Build a text encoder from ``dict(type='flan-t5' | 'word-t5', **arguments)``.

    A ``'word-t5'`` dict may name its weights with ``checkpoint=<path>`` (``.safetensors`` or
    ``.pt``, loaded strictly); without it the weights are the seeded random init.
    """
    cfg = dict(cfg)
    kind = cfg.pop('type', None)
    if kind not in _BUILDERS:
        raise ValueError(f'text_encoder type {kind!r} is not one of {sorted(_BUILDERS)}: use '
                         f'"flan-t5" (official FLAN-T5-XL from a local path) or "word-t5" (a '
                         f'small T5 with a word-level tokenizer)')
    return _BUILDERS[kind](**cfg)
