"""vargo's image-tokenizer interface (``encode`` images in [0, 1] to raster token ids, ``decode``
ids to images in [0, 1]) over transformers' ``JanusVQVAE``, with the quantisation of the official
Janus VQ.

Janus-Pro's image tokenizer is LlamaGen's VQ-16 (``janus/models/vq_model.py`` of deepseek-ai/Janus,
``codebook_l2_norm=True``): encoder outputs and codes are L2-normalised before the nearest code is
taken, so the nearest code is the one of largest cosine similarity, and the decoder reads the
normalised code vectors. transformers' ``JanusVQVAE.decode`` normalises the codes as the official
one does, but its ``encode`` picks the nearest code by Euclidean distance without normalising (a
different code whenever the encoder output's norm is not 1). Generation never encodes, so sampling
is unaffected; training a tokenizer or a generator on encoded images is, and :meth:`encode` here
follows the official quantiser.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['JanusImageTokenizer']


class JanusImageTokenizer(nn.Module):
    """A ``JanusVQVAE`` (``vq``) as an image tokenizer: ``encode(images) -> ids [B, h*w]`` and
    ``decode(ids) -> images [B, 3, H, W]``, both with images in [0, 1] (the model works in
    [-1, 1]). The weights are the VQ's own (``state_dict`` keys without a prefix)."""

    def __init__(self, vq: nn.Module):
        super().__init__()
        self.vq = vq

    @property
    def codebook_size(self) -> int:
        return int(self.vq.quantize.num_embeddings)

    @property
    def grid_size(self) -> int:
        return int(self.vq.quantize.quant_state_dims[0])

    def codebook(self) -> Tensor:
        """``[V, C]`` L2-normalised code vectors (what the decoder reads), normalised in fp32
        whatever the model's dtype (differentiable: the VQ trainer learns through it)."""
        return F.normalize(self.vq.quantize.embedding.weight.float(), dim=-1)

    def latent(self, x: Tensor) -> Tensor:
        """``[B, h*w, C]`` L2-normalised encoder outputs (after ``quant_conv``) of images ``x`` in
        [-1, 1], raster order."""
        h = self.vq.quant_conv(self.vq.encoder(x))                                 # [B, C, h, w]
        return F.normalize(h.flatten(2).transpose(1, 2), dim=-1)

    def nearest(self, z: Tensor) -> Tensor:
        """Ids of the codes nearest to normalised vectors ``z [..., C]``: on the unit sphere the
        nearest code is the one of largest cosine, ``argmax_k z . e_k / |e_k|``."""
        return (z.float() @ self.codebook().t()).argmax(dim=-1)

    def decode_latent(self, z_q: Tensor) -> Tensor:
        """Images in about [-1, 1] from code vectors ``z_q [B, h*w, C]`` (raster order): the
        decoder after ``post_quant_conv``, as ``JanusVQVAE.decode`` runs it."""
        b, n, c = z_q.shape
        side = self.grid_size
        if n != side * side:
            raise ValueError(f'{n} code vectors per image; this VQ decodes {side} x {side}')
        grid = z_q.transpose(1, 2).reshape(b, c, side, side)
        grid = grid.to(self.vq.post_quant_conv.weight.dtype)
        return self.vq.decoder(self.vq.post_quant_conv(grid))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Token ids ``[B, h*w]`` (raster order) of images ``[B, 3, H, W]`` in [0, 1]."""
        return self.nearest(self.latent(images * 2 - 1))

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] of token ids ``[B, h*w]``: ``JanusVQVAE.decode``
        (normalised codes), then ``clamp((x + 1) / 2, 0, 1)`` as ``generation_inference.py``."""
        return ((self.vq.decode(ids).float() + 1) / 2).clamp_(0, 1)
