"""How VAR is driven scale by scale: :class:`VARNextScaleDecoding`, the model side of the
``NextScaleDecoding`` protocol of :mod:`vargo.components.samplers.next_scale` (the sampler holds
the loop and the sampling distribution; this module maps its calls onto the transformer and the
frozen VQVAE, exactly the official ``autoregressive_infer_cfg`` operations)."""
from __future__ import annotations

from typing import Any, Hashable, Optional

from torch import Tensor

from vargo.core.types import Conditions

from ...modules.kv_cache import StaticKVCache

__all__ = ['VARNextScaleDecoding']


class VARNextScaleDecoding:
    """The ``NextScaleDecoding`` members of :class:`~vargo.components.policies.var.VARPolicy`
    (mixed into it; uses its transformer ``var``, VQVAE ``vae``, config ``cfg`` and
    ``labels``). The canvas is the VQVAE's ``f_hat [B, Cvae, pn_S, pn_S]``; scale inputs are
    ``[B, pn^2, Cvae]`` area-downsampled ``f_hat`` (``get_next_autoregressive_input``)."""

    @property
    def scale_spans(self) -> list[tuple[int, int]]:
        """``(begin, end)`` token positions of each scale (official ``begin_ends``)."""
        return self.var.begin_ends

    def decoding_modules(self) -> list:
        """The transformer: what sampling runs scale by scale (its linear layers use packed
        weights during a rollout with ``NextScaleSampler(packed_weights=True)``)."""
        return [self.var]

    def decoding_cache_key(self, batch: int) -> Hashable:
        """Batch, model shape, dtype and device: what the cache's allocation depends on."""
        w, cfg = self.var.head.weight, self.cfg
        return (batch, cfg.depth, cfg.num_heads, cfg.head_dim, cfg.L, w.dtype, w.device)

    def new_decoding_cache(self, batch: int) -> StaticKVCache:
        """A static KV cache of ``batch`` rows and all ``L`` positions."""
        return self.var.new_cache(batch)

    def scale_condition(self, cond: Conditions, *, with_null: bool) -> Tensor:
        """Class embeddings ``cond_BD [B2, C]`` of the labels (``[labels; null]`` with
        ``with_null``): the start token and the AdaLN condition."""
        return self.var.class_condition(self.labels(cond, with_null=with_null))

    def start_inputs(self, cond_BD: Tensor) -> Tensor:
        """``[B2, pn_0^2, C]`` inputs of scale 0 (``sos + pos_start + lvl_pos``)."""
        return self.var.start_tokens(cond_BD)

    def new_canvas(self, batch: int, like: Tensor) -> Tensor:
        """Zero ``f_hat [batch, Cvae, pn_S, pn_S]`` in ``like``'s dtype and device."""
        pn = self.cfg.patch_nums[-1]
        return like.new_zeros(batch, self.cfg.Cvae, pn, pn)

    def add_scale(self, si: int, canvas: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Add the code vectors of scale ``si``'s ids ``[B, pn^2]`` to ``f_hat`` through the
        scale's Phi (in place); return ``f_hat`` and the next scale's input ``[B, pn'^2, Cvae]``
        (``f_hat`` itself, flattened, after the last scale)."""
        quant, b, pn = self.vae.quantize, ids.shape[0], self.cfg.patch_nums[si]
        c_vae = quant.Cvae
        h = quant.embedding(ids).transpose(1, 2).reshape(b, c_vae, pn, pn)
        canvas, nxt = quant.get_next_autoregressive_input(si, canvas, h)
        return canvas, nxt.view(b, c_vae, -1).transpose(1, 2)

    def scale_inputs(self, si: int, scale_input: Tensor) -> Tensor:
        """``word_embed(scale_input) + lvl_pos`` ``[B, pn^2, C]`` of scale ``si``."""
        lo, hi = self.var.begin_ends[si]
        return self.var.scale_tokens(scale_input, lo, hi)

    def prefix_inputs(self, cond_BD: Tensor, scale_input: Optional[Tensor]) -> Tensor:
        """Teacher-forcing inputs ``[B2, pn_0^2 + n, C]``: the start tokens, then
        ``scale_input [B2, n, Cvae]`` (None: the start tokens only)."""
        if scale_input is None:
            scale_input = cond_BD.new_zeros(cond_BD.shape[0], 0, self.cfg.Cvae)
        return self.var.inputs(cond_BD, scale_input)

    def scale_logits(self, x: Tensor, cond_BD: Tensor, cache: Any, *, start: int,
                     block_causal: bool = False) -> Tensor:
        """fp32 logits ``[B2, l, V]`` of ``x [B2, l, C]`` at positions ``start ..``, keys and
        values written into ``cache``; ``block_causal`` applies the official block-causal mask
        (a prefill over several scales), else every position sees all keys so far."""
        var, bias = self.var, None
        if block_causal:
            end = start + x.shape[1]
            bias = var.attn_bias_for_masking[:, :, start:end, :end]
        hid = var.blocks_forward(x, cond_BD, bias, cache=cache, start=start)
        return var.logits(var.head_hidden(hid, cond_BD))
