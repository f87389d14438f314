"""What the token samplers with a static KV cache share (``ARSampler``, ``NextScaleSampler``)."""
from __future__ import annotations

from typing import Any, Optional

from vargo.core.interfaces import Policy
from vargo.core.types import LogprobSpec

from ..modules.packed_linear import PackedLinears
from .base import RolloutSampler

__all__ = ['KVCachedSampler']


class KVCachedSampler(RolloutSampler):
    """A sampler recording ``logp_old`` under one :class:`LogprobSpec` and decoding with a static
    KV cache that is allocated once per batch shape and kept between rollouts.

    The cache comes from the policy's protocol (``decoding_cache_key(batch)``,
    ``new_decoding_cache(batch)``); it is keyed by shape, not by model, so the policy and its
    frozen reference (same architecture) share one allocation.

    With ``packed_weights`` (CPU, fp32) the ``nn.Linear`` layers of the policy's optional
    ``decoding_modules()`` run on weights reordered once per rollout for small-batch products
    (:class:`~vargo.components.modules.packed_linear.PackedLinears`): same numbers up to float
    summation order, one extra copy of those weights kept between rollouts.
    """

    def __init__(self, spec: LogprobSpec, *, decode_images: bool, packed_weights: bool = True):
        super().__init__(decode_images=decode_images)
        self._spec = spec
        self._cache: Optional[Any] = None
        self._cache_key: Optional[Any] = None
        self._packs = PackedLinears(enabled=packed_weights)

    def logprob_spec(self) -> LogprobSpec:
        """The distribution ``logp_old`` is recorded under (evaluate with the same spec)."""
        return self._spec

    def release_cache(self) -> None:
        """Free the static KV cache (it is kept between rollouts of the same batch shape) and
        the packed weights."""
        self._cache, self._cache_key = None, None
        self._packs.release()

    def _get_cache(self, policy: Policy, batch: int) -> Any:
        """The cache for ``batch`` rows of ``policy``, reallocated only when its key (batch
        size, model shape, dtype, device) changes; the old one is freed first."""
        key = policy.decoding_cache_key(batch)
        if self._cache_key != key:
            self._cache = None
            self._cache = policy.new_decoding_cache(batch)
            self._cache_key = key
        return self._cache
