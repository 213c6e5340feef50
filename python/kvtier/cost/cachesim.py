"""Which prefix of each request a TTL cache holds: the core for refreshed TTLs, numpy for fixed lifetimes.

A cache entry is a chained prefix id (one per block of a request, see :mod:`kvtier.cost.trace`). Every
request looks up its blocks at its arrival time, reads the longest prefix it finds, and (re)writes the
blocks it did not find. Two engines, chosen by the rule:

``core``
    Entries live ``ttl_s`` seconds after their last access and every hit refreshes them (Anthropic,
    DeepSeek, and kvtier's own TTL tier). A metadata-only :class:`kvtier.Store` with
    ``TierConfig(capacity_bytes=None, policy="ttl", ttl_s=ttl)`` replays the whole trace in one
    ``Store.replay`` call, through the radix tree that serves (a hit touches, so it refreshes).

``numpy``
    Entries that hits do *not* refresh: a fixed lifetime from the write (Gemini explicit caches,
    OpenAI's 24-hour retention), or a refreshed idle TTL capped by a maximum age (OpenAI in-memory:
    5-10 minutes idle, at most an hour). The core's TTL always refreshes on access, so these rules
    are replayed by a separate vectorised model: the occurrences of each prefix id are sorted by time
    and the write instants are found group by group; every write starts a new lifetime::

        occurrences of one id   t0      t1     t2          t3       t4
        fixed ttl (no refresh)  write   hit    hit         write    hit      (t3 > t0 + ttl)
        idle ttl + max age      write   hit    write       hit      write    (t2 - t1 > ttl; t4 > t2 + max age)

    The loop runs once per *write generation* (writes of one id are at least ``min(ttl, max age)``
    apart, so at most ``duration / ttl + 1`` rounds), each round vectorised over all ids.

Semantics shared by both: an entry idle (or aged) exactly ``ttl_s`` still hits; one past it misses.
A request's hit is the longest prefix whose entry is alive. With refreshed TTLs the alive entries
of a request are always a leading run (a block is accessed whenever any longer prefix is), so this
is the core's contiguous match. With fixed lifetimes a short prefix written early can expire while a
longer one written later lives on; a provider's cache entry names a whole prefix, so the longer one
still hits and the request reads it. Every entry of a request that is not alive is (re)written at
the request's time, including one inside the hit prefix: that rewrite is free here (its tokens are
billed as read), which slightly favours later requests that end on that shorter prefix.

Storage (token-seconds) is attributed to the request whose write started each lifetime ("first
writer"). The numpy engine counts the tokens each block holds exactly (a partial last block counts
its tokens); the core engine counts whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from kvtier.cost.catalog import ProviderRules
from kvtier.cost.trace import CostTrace
from kvtier.errors import InvalidArgumentError

__all__ = ["CacheRule", "CacheReplay", "replay_cache", "block_token_counts"]

Engine = Literal["core", "numpy"]


@dataclass(frozen=True)
class CacheRule:
    """How long a cache entry lives.

    Parameters
    ----------
    ttl_s
        Seconds (``None``: never expires). With ``refresh_on_hit`` the maximum idle time, else the
        lifetime from the write.
    refresh_on_hit
        Whether a hit restarts the TTL.
    max_age_s
        A cap on the age from the write, even while hit (``refresh_on_hit`` only).
    """

    ttl_s: float | None
    refresh_on_hit: bool = True
    max_age_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttl_s", "max_age_s"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
                raise InvalidArgumentError(f"{name} must be a finite number of seconds > 0 or None, got {v!r}")
        if self.max_age_s is not None and not self.refresh_on_hit:
            raise InvalidArgumentError("max_age_s needs refresh_on_hit=True (without refresh ttl_s is the age limit)")

    @classmethod
    def of(cls, rules: ProviderRules) -> CacheRule:
        return cls(rules.ttl_s, rules.refresh_on_hit, rules.max_age_s)

    @property
    def engine(self) -> Engine:
        """``core`` when the store's refreshed TTL is exactly the rule, else ``numpy``."""
        if self.max_age_s is None and (self.refresh_on_hit or self.ttl_s is None):
            return "core"
        return "numpy"

    @property
    def age_limit_s(self) -> float | None:
        """Maximum age from the write (``None``: none)."""
        return self.max_age_s if self.refresh_on_hit else self.ttl_s


@dataclass(frozen=True)
class CacheReplay:
    """Per-request cache outcome of a trace under one rule.

    Attributes
    ----------
    hit_blocks
        ``int64[n]``: blocks of the longest cached prefix at the request's arrival.
    hit_tokens
        ``int64[n]``: ``min(hit_blocks * block_tokens, input_tokens)``.
    storage_token_s
        ``float64[n]``: token-seconds of cache life that each request's writes started (zeros
        unless asked for; with ``reuse``, only the lifetimes that a later request reads).
    reused_write_tokens
        ``int64[n]``: tokens each request wrote that a later request reads within their lifetime
        (zeros unless ``reuse`` was asked for).
    engine
        ``"core"`` or ``"numpy"``.
    """

    hit_blocks: npt.NDArray[np.int64]
    hit_tokens: npt.NDArray[np.int64]
    storage_token_s: npt.NDArray[np.float64]
    reused_write_tokens: npt.NDArray[np.int64]
    engine: Engine


def block_token_counts(trace: CostTrace) -> npt.NDArray[np.int64]:
    """``int64[offsets[-1]]``: tokens each block holds (``block_tokens``; fewer in a partial last block)."""
    lengths = trace.blocks_per_request
    req = np.repeat(np.arange(trace.num_requests), lengths)
    pos = np.arange(int(trace.offsets[-1]), dtype=np.int64) - np.repeat(trace.offsets[:-1].astype(np.int64), lengths)
    return np.asarray(np.clip(trace.input_tokens[req] - pos * trace.block_tokens, 0, trace.block_tokens), dtype=np.int64)


def replay_cache(
    trace: CostTrace, rule: CacheRule, *, storage: bool = False, reuse: bool = False, engine: Engine | None = None
) -> CacheReplay:
    """Replays ``trace`` through a TTL cache of unlimited capacity.

    Parameters
    ----------
    storage
        Also integrate token-seconds of cache life per writing request.
    reuse
        Also find which written tokens a later request reads (hindsight: what a client that caches
        only prefixes it will reuse writes). Needs the numpy engine, chosen by default.
    engine
        Force an engine (``"numpy"`` handles every rule; ``"core"`` only refreshed TTLs). Default:
        :attr:`CacheRule.engine`.
    """
    chosen = ("numpy" if reuse else rule.engine) if engine is None else engine
    reused = np.zeros(trace.num_requests, dtype=np.int64)
    if chosen == "core":
        if rule.engine != "core":
            raise InvalidArgumentError("the core's TTL refreshes on every hit: this rule needs engine='numpy'")
        if reuse:
            raise InvalidArgumentError("reuse=True needs engine='numpy' (the store does not report reads per write)")
        hit, store_s = _core_replay(trace, rule, storage)
    elif chosen == "numpy":
        hit, store_s, reused = _numpy_replay(trace, rule, storage, reuse)
    else:
        raise InvalidArgumentError(f"engine must be 'core' or 'numpy', got {engine!r}")
    tokens = np.minimum(hit * trace.block_tokens, trace.input_tokens)
    return CacheReplay(hit, tokens, store_s, reused, chosen)


# ------------------------------------------------------------------------------------------- core
def _core_replay(trace: CostTrace, rule: CacheRule, storage: bool) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    from kvtier.config import Namespace, StoreConfig, TierConfig
    from kvtier.replay import ReplayTrace
    from kvtier.store import Store

    n = trace.num_requests
    tier = TierConfig(capacity_bytes=None, policy="ttl", ttl_s=rule.ttl_s) if rule.ttl_s is not None else TierConfig(capacity_bytes=None)
    cfg = StoreConfig(block_size=trace.block_tokens, block_bytes=trace.block_tokens, metadata_only=True, content="block_ids", host=tier)
    namespaces = None
    table: tuple[Namespace, ...] = ()
    if trace.tenants is not None:
        namespaces = trace.tenants
        table = tuple(Namespace(model="kvtier-cost", tenant=t) for t in trace.tenant_table)
    sessions = np.arange(n, dtype=np.uint32) if storage else None
    stable = tuple(str(i) for i in range(n)) if storage else ()
    rt = ReplayTrace(trace.offsets, trace.block_ids, trace.timestamps, namespaces, table, sessions, stable)
    store_s = np.zeros(n, dtype=np.float64)
    with Store(cfg, namespace=Namespace(model="kvtier-cost")) as store:
        hits = store.replay(rt).astype(np.int64)
        if storage:
            end = float(trace.timestamps[-1]) + (rule.ttl_s or 0.0)
            for row in store.residency(now=end).rows:  # one row per (tenant, request): bytes = tokens here
                if row.session:
                    store_s[int(row.session)] += row.byte_seconds
    return hits, store_s


# ------------------------------------------------------------------------------------------- numpy
def _next_true(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """``out[i]`` = the smallest ``j > i`` with ``flags[j]`` (``len(flags)`` if none)."""
    n = flags.shape[0]
    idx = np.where(flags, np.arange(n, dtype=np.int64), n)
    at_or_after = np.minimum.accumulate(idx[::-1])[::-1]
    out = np.empty(n, dtype=np.int64)
    out[:-1] = at_or_after[1:]
    out[-1] = n
    return out


def _numpy_replay(
    trace: CostTrace, rule: CacheRule, storage: bool, reuse: bool
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    n = trace.num_requests
    total = int(trace.offsets[-1])
    hits = np.zeros(n, dtype=np.int64)
    store_s = np.zeros(n, dtype=np.float64)
    reused_tokens = np.zeros(n, dtype=np.int64)
    if total == 0:
        return hits, store_s, reused_tokens
    lengths = trace.blocks_per_request
    req = np.repeat(np.arange(n, dtype=np.int64), lengths)
    ns = trace.tenants[req] if trace.tenants is not None else np.zeros(total, dtype=np.uint32)
    order = np.lexsort((np.arange(total), trace.block_ids, ns))  # by tenant, id, then arrival
    t = trace.timestamps[req[order]]
    ids, nss = trace.block_ids[order], ns[order]
    first = np.ones(total, dtype=bool)
    first[1:] = (ids[1:] != ids[:-1]) | (nss[1:] != nss[:-1])
    group_end = _next_true(first)  # first index of the next group

    idle_next: npt.NDArray[np.int64] | None = None
    if rule.refresh_on_hit and rule.ttl_s is not None:
        brk = first.copy()
        brk[1:] |= (t[1:] - t[:-1]) > rule.ttl_s
        idle_next = _next_true(brk)
    age = rule.age_limit_s
    if age is not None:
        # A monotone key (group, time) so that one searchsorted finds, per write, the first later
        # occurrence of the same id older than `age`. Group g is shifted by g * span.
        gidx = np.cumsum(first) - 1
        t0 = float(t.min())
        span = 2.0 ** np.ceil(np.log2(float(t.max()) - t0 + age + 2.0))
        key = gidx.astype(np.float64) * span + (t - t0)

    is_write = np.zeros(total, dtype=bool)
    cur = np.flatnonzero(first)
    while cur.size:
        is_write[cur] = True
        nxt = np.full(cur.shape[0], total, dtype=np.int64)
        if idle_next is not None:
            nxt = idle_next[cur]
        if age is not None:
            nxt = np.minimum(nxt, np.searchsorted(key, key[cur] + age, side="right"))
        cur = nxt[nxt < group_end[cur]]

    alive = np.empty(total, dtype=bool)
    alive[order] = ~is_write
    pos = np.arange(total, dtype=np.int64) - np.repeat(trace.offsets[:-1].astype(np.int64), lengths)
    depth = np.where(alive, pos + 1, 0)
    nonempty = lengths > 0
    hits[nonempty] = np.maximum.reduceat(depth, trace.offsets[:-1][nonempty].astype(np.int64))

    tokens_sorted = block_token_counts(trace)[order] if (storage or reuse) else None
    if reuse:
        # a write is reused when the next occurrence of its id is in the same group and not a write
        read_next = np.zeros(total, dtype=bool)
        read_next[:-1] = ~is_write[1:] & ~first[1:]
        keep = is_write & read_next
        assert tokens_sorted is not None
        reused_tokens = np.bincount(req[order[keep]], weights=tokens_sorted[keep], minlength=n).astype(np.int64)
        is_write_billed = keep
    else:
        is_write_billed = is_write
    if storage:
        w = np.flatnonzero(is_write)
        nxt_w = _next_true(is_write)[w]
        last = np.minimum(nxt_w, group_end[w]) - 1  # last occurrence of this lifetime
        horizon = float(trace.timestamps[-1])
        if rule.refresh_on_hit:
            end = t[last] + rule.ttl_s if rule.ttl_s is not None else np.full(w.shape[0], horizon)
            if rule.max_age_s is not None:
                end = np.minimum(end, t[w] + rule.max_age_s)
        else:
            end = t[w] + rule.ttl_s if rule.ttl_s is not None else np.full(w.shape[0], horizon)
        assert tokens_sorted is not None
        billed = is_write_billed[w]
        life = tokens_sorted[w] * (end - t[w])
        store_s = np.bincount(req[order[w[billed]]], weights=life[billed], minlength=n).astype(np.float64)
    return hits, store_s, reused_tokens
