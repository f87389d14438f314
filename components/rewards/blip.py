"""BLIP's image-grounded text encoder (Li et al., arXiv 2201.12086) as ImageReward uses it.

Written for vargo with the parameter names of the ``image-reward`` package (its
``models/BLIP``: a timm-style ViT and BLIP's ``med.py`` BERT with cross-attention), so that
``ImageReward.pt`` loads strictly:

* ``visual_encoder`` (:class:`BlipViT`): ``patch_embed.proj`` (conv, stride = patch),
  ``cls_token``, ``pos_embed``, ``blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
  mlp.fc2}``, ``norm``; pre-norm blocks, LayerNorm eps 1e-6, exact GELU, qkv with bias.
* ``text_encoder`` (:class:`BlipTextEncoder`): ``embeddings.{word_embeddings,
  position_embeddings, LayerNorm}`` (no token-type table), ``encoder.layer.<i>.{attention,
  crossattention}.{self.{query, key, value}, output.{dense, LayerNorm}}``,
  ``encoder.layer.<i>.intermediate.dense``, ``encoder.layer.<i>.output.{dense, LayerNorm}``;
  post-norm BERT layers (self-attention over the text with the padding mask added as
  ``(1 - mask) * -10000``, cross-attention to all image tokens, feed-forward), no pooler.
  The cross-attention keys/values read the ViT width (``encoder_width``).
* ``vision_proj``, ``text_proj``: BLIP's contrastive projections (in the file, unused by the
  score).

Only the encoder ("multimodal") mode is implemented: no causal decoder, no KV cache, absolute
positions; a config asking for anything else raises.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['BlipViT', 'BlipTextEncoder', 'BlipEncoders', 'VIT_PRESETS']

#: BLIP's ``create_vit`` sizes (ImageReward uses 'large' at 224 px)
VIT_PRESETS = {
    'base': dict(image_size=224, patch_size=16, width=768, layers=12, heads=12),
    'large': dict(image_size=224, patch_size=16, width=1024, layers=24, heads=16),
}


def _attend(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Optional[Tensor] = None) -> Tensor:
    """Multi-head softmax attention of ``[B, L, C]`` queries over ``[B, S, C]`` keys/values;
    ``mask``: additive, broadcastable to ``[B, heads, L, S]``."""
    b, n, c = q.shape
    split = (lambda t: t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2))
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, c)


# ---- vision transformer ------------------------------------------------------------------------
class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _ViTAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(_attend(q, k, v, self.heads))


class _ViTMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _ViTBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = _ViTAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _ViTMlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlipViT(nn.Module):
    """BLIP's ViT image encoder: ``[B, 3, S, S]`` normalised pixels -> ``[B, 1 + N, width]``
    token features (class token first), after the final LayerNorm."""

    def __init__(self, *, image_size: int = 224, patch_size: int = 16, width: int = 1024,
                 layers: int = 24, heads: int = 16, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if image_size % patch_size or width % heads:
            raise ValueError(f'BlipViT: image_size={image_size} must be a multiple of '
                             f'patch_size={patch_size} and width={width} of heads={heads}')
        self.image_size = image_size
        self.width = width
        tokens = (image_size // patch_size) ** 2
        self.patch_embed = _PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, width))
        self.blocks = nn.ModuleList(_ViTBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, pixels: Tensor) -> Tensor:
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f'BlipViT expects {self.image_size} x {self.image_size} pixels, got '
                             f'{tuple(pixels.shape[-2:])}')
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed[:, :x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ---- BERT with cross-attention -----------------------------------------------------------------
class _Embeddings(nn.Module):
    def __init__(self, vocab: int, width: int, positions: int, pad: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, width, padding_idx=pad)
        self.position_embeddings = nn.Embedding(positions, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, ids: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos)[None])


class _QKV(nn.Module):
    def __init__(self, width: int, kv_width: int) -> None:
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)


class _Residual(nn.Module):
    """``LayerNorm(dense(x) + residual)`` (BERT's SelfOutput / Output)."""

    def __init__(self, width_in: int, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, width: int, kv_width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.self = _QKV(width, kv_width)
        self.output = _Residual(width, width, eps)

    def forward(self, x: Tensor, context: Tensor, mask: Optional[Tensor]) -> Tensor:
        s = self.self
        ctx = _attend(s.query(x), s.key(context), s.value(context), self.heads, mask)
        return self.output(ctx, x)


class _Intermediate(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, width: int, encoder_width: int, heads: int, hidden: int,
                 eps: float) -> None:
        super().__init__()
        self.attention = _Attention(width, width, heads, eps)
        self.crossattention = _Attention(width, encoder_width, heads, eps)
        self.intermediate = _Intermediate(width, hidden)
        self.output = _Residual(hidden, width, eps)

    def forward(self, x: Tensor, mask: Tensor, image: Tensor) -> Tensor:
        x = self.attention(x, x, mask)
        x = self.crossattention(x, image, None)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, layers: list) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class BlipTextEncoder(nn.Module):
    """BLIP's BERT in its image-grounded encoder mode: token ids ``[B, L]`` with their padding
    mask, cross-attending to image tokens ``[B, N, encoder_width]`` -> ``[B, L, hidden]``."""

    def __init__(self, config: dict, encoder_width: int) -> None:
        super().__init__()
        get = config.get
        if get('hidden_act', 'gelu') != 'gelu':
            raise ValueError(f"BlipTextEncoder supports hidden_act='gelu' (BLIP's), got "
                             f"{get('hidden_act')!r}")
        if get('position_embedding_type', 'absolute') != 'absolute':
            raise ValueError(f"BlipTextEncoder supports absolute position embeddings (BLIP's), "
                             f"got {get('position_embedding_type')!r}")
        if not get('add_cross_attention', False):
            raise ValueError('BlipTextEncoder: the med_config has add_cross_attention false; '
                             "ImageReward's text encoder cross-attends to the image")
        width, heads = int(config['hidden_size']), int(config['num_attention_heads'])
        if width % heads:
            raise ValueError(f'BlipTextEncoder: hidden_size={width} is not a multiple of '
                             f'num_attention_heads={heads}')
        eps = float(get('layer_norm_eps', 1e-12))
        self.width = width
        self.max_positions = int(config['max_position_embeddings'])
        self.embeddings = _Embeddings(int(config['vocab_size']), width, self.max_positions,
                                      int(get('pad_token_id', 0)), eps)
        self.encoder = _Encoder([_Layer(width, int(encoder_width), heads,
                                        int(config['intermediate_size']), eps)
                                 for _ in range(int(config['num_hidden_layers']))])

    def forward(self, ids: Tensor, attention_mask: Tensor, image: Tensor) -> Tensor:
        x = self.embeddings(ids)
        # BLIP's extended mask: 0 where attended, -10000 where padded, over the keys
        mask = ((1.0 - attention_mask.to(x.dtype)) * -10000.0)[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, mask, image)
        return x


class BlipEncoders(nn.Module):
    """The ``blip`` module of ImageReward: ViT, text encoder and the two projections."""

    def __init__(self, vit: dict, med_config: dict, embed_dim: int = 256) -> None:
        super().__init__()
        self.visual_encoder = BlipViT(**vit)
        self.text_encoder = BlipTextEncoder(med_config, encoder_width=self.visual_encoder.width)
        self.vision_proj = nn.Linear(self.visual_encoder.width, embed_dim)
        self.text_proj = nn.Linear(self.text_encoder.width, embed_dim)
