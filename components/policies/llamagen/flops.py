"""Matmul FLOPs of a LlamaGen teacher-forced forward (the throughput benchmarks' MFU)."""
from __future__ import annotations

from .model import GPTConfig

__all__ = ['teacher_forced_flops']


def teacher_forced_flops(cfg: GPTConfig, *, doubled: bool) -> int:
    """Matmul FLOPs of one teacher-forced forward, per sample.

    Two FLOPs per multiply-add, over the ``S = C + T - 1`` input positions (``C`` condition
    positions, then tokens ``x_0 .. x_{T-2}``):

    * linears, per layer, on all S positions: ``2 S dim (n_head + 2 n_kv_head) head_dim``
      (``wqkv``) + ``2 S dim^2`` (``wo``) + ``3 * 2 S dim ffn_hidden`` (SwiGLU ``w1, w3, w2``);
    * attention, per layer, ``QK^T`` and ``AV`` over the causal pairs only (query ``i`` sees
      ``i + 1`` keys: ``S (S + 1) / 2`` pairs, ``2 head_dim`` FLOPs per pair, head and
      product): ``2 dim S (S + 1)``; t2i caption-padding keys are counted (the masked kernel
      computes them);
    * the output head on the T positions that predict a token: ``2 T dim V``;
    * t2i: the caption MLP on the C caption positions, ``2 C (caption_dim dim + dim^2)``
      (the null caption's projection is made once per batch and not counted).

    Not counted: embedding lookups, RMSNorm, RoPE, softmax, log-softmax and entropy (no
    matmul). The backward pass costs twice the forward's matmul FLOPs (input and weight
    gradients), so a forward + backward update is ``3 *`` this.

    Args:
        cfg: the transformer's config.
        doubled: the forward runs the doubled ``[cond; null]`` CFG batch (the transformer terms
            count twice).

    Returns:
        FLOPs per sample, an int (GPT-B c2i 256 px: 51,141,672,960, about 51.1 GFLOP).
    """
    c, t, d = cfg.cls_token_num, cfg.block_size, cfg.dim
    s = c + t - 1
    linears = 2 * s * d * ((cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim + d
                           + 3 * cfg.ffn_hidden)
    attention = 2 * d * s * (s + 1)
    transformer = cfg.n_layer * (linears + attention) + 2 * t * d * cfg.vocab_size
    caption = 2 * c * (cfg.caption_dim * d + d * d) if cfg.task == 't2i' else 0
    return (2 if doubled else 1) * transformer + caption
