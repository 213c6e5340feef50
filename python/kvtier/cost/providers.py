"""Every request of a trace priced under a hosted provider's prompt-caching rules.

Per request ``r`` (tokens; prices in USD per million tokens)::

    I = input tokens, O = output tokens
    H = cached prefix found at arrival (kvtier.cost.cachesim: TTL, refresh, max age)
    C = H rounded down to the provider's granularity, 0 if below its minimum cacheable prefix,
        0 if the whole prompt is shorter than the minimum (such prompts are never cached)
    W = I - C if the prompt is cacheable else 0        tokens written to the cache
    P = I - C - W                                       plain (uncached, unwritten) input

    naive       = I x input + O x output
    cache-aware = C x cached_input + W x input x write_multiplier + P x input + O x output
                  + storage: token-hours of cache life started by r's writes x storage price

Which tokens get written (``writes``):

``"all"`` (default)
    Every prompt ends in a cache breakpoint (Anthropic's ``cache_control`` on the last block; an
    explicit Gemini cache for every prompt prefix): what an automatic cache does, and what a client
    that marks every prompt pays.
``"reused"``
    Hindsight: only blocks that a later request reads within their lifetime are written (and
    stored); the rest are billed as plain input. The best a client that places breakpoints
    perfectly can do: a lower bound on write and storage charges. Hits are the same either way
    (a block nobody reads again is never hit).

The arithmetic runs on numpy arrays over all requests at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from kvtier.cost.cachesim import CacheReplay, CacheRule, replay_cache
from kvtier.cost.catalog import ModelPrice, ProviderRules
from kvtier.cost.trace import CostTrace

__all__ = ["ProviderCost", "price_provider"]

_M = 1e6
Writes = Literal["all", "reused"]


@dataclass(frozen=True)
class ProviderCost:
    """A trace priced under one provider's rules for one model.

    Attributes
    ----------
    naive_usd, cache_aware_usd
        Totals: every token at the sticker price, and with the cache modelled.
    input_usd, write_usd, read_usd, output_usd, storage_usd
        The cache-aware total by part (plain input, cache writes, cache reads, output, storage).
    input_tokens, cached_tokens, written_tokens, output_tokens
        Token totals (``cached`` read from cache, ``written`` to it).
    storage_mtok_hours
        Million-token-hours of cache life billed (explicit caches).
    request_naive_usd, request_cache_aware_usd
        ``float64[n]`` per request (storage attributed to the writing request).
    engine
        The cache replay engine used (``core`` or ``numpy``).
    writes
        ``"all"`` or ``"reused"`` (see the module docstring).
    """

    rules: ProviderRules
    price: ModelPrice
    naive_usd: float
    cache_aware_usd: float
    input_usd: float
    write_usd: float
    read_usd: float
    output_usd: float
    storage_usd: float
    input_tokens: int
    cached_tokens: int
    written_tokens: int
    output_tokens: int
    storage_mtok_hours: float
    request_naive_usd: npt.NDArray[np.float64]
    request_cache_aware_usd: npt.NDArray[np.float64]
    engine: str
    writes: str = "all"

    @property
    def provider(self) -> str:
        return self.rules.name

    @property
    def model(self) -> str:
        return self.price.model

    @property
    def cached_ratio(self) -> float:
        """Share of input tokens read from cache."""
        return self.cached_tokens / self.input_tokens if self.input_tokens else 0.0

    @property
    def written_ratio(self) -> float:
        """Share of input tokens written to cache."""
        return self.written_tokens / self.input_tokens if self.input_tokens else 0.0

    def by_task(self, trace: CostTrace) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``(naive, cache_aware)``, ``float64[len(trace.task_table)]``: USD per task (session)."""
        return trace.sum_by_task(self.request_naive_usd), trace.sum_by_task(self.request_cache_aware_usd)


def price_provider(
    trace: CostTrace,
    rules: ProviderRules,
    model: str | None = None,
    *,
    writes: Writes = "all",
    replay: CacheReplay | None = None,
) -> ProviderCost:
    """Prices every request of ``trace`` under ``rules`` for ``model`` (default: the provider's default model).

    ``writes`` says which tokens are written (module docstring). ``replay`` reuses a cache replay
    of the same trace under the same rule, made with ``storage=True`` when the model pays for
    storage and ``reuse=True`` for ``writes="reused"`` (several models of one provider share it).
    """
    from kvtier.errors import InvalidArgumentError

    if writes not in ("all", "reused"):
        raise InvalidArgumentError(f"writes must be 'all' or 'reused', got {writes!r}")
    price = rules.price(model)
    storage_rate = rules.storage_rate(price)
    if replay is None:
        replay = replay_cache(trace, CacheRule.of(rules), storage=storage_rate > 0, reuse=writes == "reused")
    inp = trace.input_tokens
    out = trace.output_tokens
    minimum = rules.min_tokens(price)
    g = rules.granularity_tokens
    cacheable = inp >= max(minimum, 1)
    cached = (replay.hit_tokens // g) * g
    cached = np.where(cacheable & (cached >= minimum), cached, 0)
    written = np.where(cacheable, inp - cached, 0)
    if writes == "reused":
        written = np.minimum(written, replay.reused_write_tokens)
    plain = inp - cached - written

    read_usd = cached * (price.cached_input_usd_per_mtok / _M)
    write_usd = written * (price.input_usd_per_mtok * rules.write_multiplier / _M)
    plain_usd = plain * (price.input_usd_per_mtok / _M)
    out_usd = out * (price.output_usd_per_mtok / _M)
    store_mtok_h = np.where(cacheable, replay.storage_token_s, 0.0) / 3600.0 / _M
    store_usd = store_mtok_h * storage_rate
    aware = read_usd + write_usd + plain_usd + out_usd + store_usd
    naive = inp * (price.input_usd_per_mtok / _M) + out_usd
    return ProviderCost(
        rules=rules,
        price=price,
        naive_usd=float(naive.sum()),
        cache_aware_usd=float(aware.sum()),
        input_usd=float(plain_usd.sum()),
        write_usd=float(write_usd.sum()),
        read_usd=float(read_usd.sum()),
        output_usd=float(out_usd.sum()),
        storage_usd=float(store_usd.sum()),
        input_tokens=int(inp.sum()),
        cached_tokens=int(cached.sum()),
        written_tokens=int(written.sum()),
        output_tokens=int(out.sum()),
        storage_mtok_hours=float(store_mtok_h.sum()),
        request_naive_usd=naive.astype(np.float64),
        request_cache_aware_usd=aware.astype(np.float64),
        engine=replay.engine,
        writes=writes,
    )
