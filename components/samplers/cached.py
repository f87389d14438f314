"""What the token samplers with a static KV cache share (``ARSampler``, ``NextScaleSampler``)."""
from __future__ import annotations

from typing import Any, Callable, Hashable, Optional

from vargo.core.interfaces import Sampler
from vargo.core.types import LogprobSpec

__all__ = ['KVCachedSampler']


class KVCachedSampler(Sampler):
    """A sampler recording ``logp_old`` under one :class:`LogprobSpec` and decoding with a static
    KV cache that is allocated once per batch shape and kept between rollouts.

    The cache is keyed by shape, not by model, so the policy and its frozen reference (same
    architecture) share one allocation.
    """

    def __init__(self, spec: LogprobSpec, *, decode_images: bool):
        self._spec = spec
        self.decode_images = decode_images
        self._cache: Optional[Any] = None
        self._cache_key: Optional[Hashable] = None

    def logprob_spec(self) -> LogprobSpec:
        """The distribution ``logp_old`` is recorded under (evaluate with the same spec)."""
        return self._spec

    def release_cache(self) -> None:
        """Free the static KV cache (it is kept between rollouts of the same batch shape)."""
        self._cache, self._cache_key = None, None

    def _cache_for(self, key: Hashable, allocate: Callable[[], Any]) -> Any:
        """The cache for ``key`` (batch size, model shape, dtype, device), reallocated only when
        the key changes; the old one is freed before the new one is allocated."""
        if self._cache_key != key:
            self._cache = None
            self._cache = allocate()
            self._cache_key = key
        return self._cache
