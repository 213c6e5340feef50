"""Replays a :class:`~kvtier.analytics.logs.RequestLog` through the core under many configurations.

One metadata-only :class:`kvtier.Store` per configuration and one :meth:`kvtier.Store.replay` call
over the whole trace (or one per time window when a residency timeline is asked for): no Python
runs per request. Definitions (per configuration)::

    hit_ratio        = hit blocks / total blocks            blocks: the cached units of the trace
    token_hit_ratio  = hit tokens / input tokens            hit tokens of a request =
                                                              min(hit blocks x block tokens, input length)
    gb_hours         = resident KV bytes x hours, integrated exactly by the core from the first
                       request to the last one's arrival (needs KV bytes per token)

A request's hit blocks are the leading blocks of its prompt found in the cache when it arrives (the
core then stores the rest, evicting by policy).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kvtier.analytics.logs import RequestLog
from kvtier.config import Policy, StoreConfig
from kvtier.errors import InvalidArgumentError
from kvtier.replay import ReplayTrace
from kvtier.store import Store
from kvtier.units import split_list

__all__ = [
    "SweepConfig",
    "SweepResult",
    "Timeline",
    "parse_policies",
    "build_configs",
    "run_config",
    "run_sweep",
]

_POLICIES: tuple[Policy, ...] = ("lru", "lfu", "ttl")


# ------------------------------------------------------------------------------------------- parsing
def parse_policies(text: str) -> list[Policy]:
    """``"lru,lfu"`` -> ``["lru", "lfu"]``."""
    out: list[Policy] = []
    for item in split_list(text.lower(), "--policy"):
        if item not in _POLICIES:
            raise InvalidArgumentError(f"--policy: {item!r} is not one of {', '.join(_POLICIES)}")
        out.append(item)
    return out


# ------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class SweepConfig:
    """One replay configuration.

    Attributes
    ----------
    policy
        ``lru``, ``lfu`` or ``ttl`` (LRU order plus a maximum idle time).
    capacity_blocks
        Blocks the cache holds (``None``: unlimited).
    ttl_s
        Maximum idle seconds (``ttl`` policy only).
    block_size
        Tokens per block for token logs; ``None`` for logs whose blocks are fixed (hash ids).
    """

    policy: Policy
    capacity_blocks: int | None
    ttl_s: float | None = None
    block_size: int | None = None


def build_configs(
    capacities: Sequence[int | None],
    policies: Sequence[Policy],
    ttls: Sequence[float] = (),
    block_sizes: Sequence[int | None] = (None,),
) -> list[SweepConfig]:
    """The grid: block sizes x policies (x TTLs for the ``ttl`` policy) x capacities.

    ``--ttl`` values apply to the ``ttl`` policy only; ``lru`` and ``lfu`` run without expiry.
    """
    if "ttl" in policies and not ttls:
        raise InvalidArgumentError("--policy ttl needs --ttl (maximum idle times, e.g. 5m,1h)")
    if ttls and "ttl" not in policies:
        raise InvalidArgumentError("--ttl applies to the ttl policy: add ttl to --policy (e.g. --policy lru,ttl)")
    out = []
    for bs in block_sizes:
        for policy in dict.fromkeys(policies):
            for ttl in list(dict.fromkeys(ttls)) if policy == "ttl" else [None]:
                for cap in dict.fromkeys(capacities):
                    out.append(SweepConfig(policy, cap, ttl, bs))
    return out


# ------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Timeline:
    """State after each time window of a replay.

    Attributes
    ----------
    t
        ``float64[k]`` seconds: arrival of the window's last request.
    resident_blocks
        ``int64[k]`` blocks cached at ``t``.
    hit_blocks, total_blocks
        ``int64[k]`` blocks hit / looked up in the window.
    """

    t: npt.NDArray[np.float64]
    resident_blocks: npt.NDArray[np.int64]
    hit_blocks: npt.NDArray[np.int64]
    total_blocks: npt.NDArray[np.int64]


@dataclass(frozen=True)
class SweepResult:
    """What one configuration did over the whole log (see the module docstring for definitions).

    Attributes
    ----------
    config
        The configuration.
    block_tokens
        Tokens per cached block.
    requests, total_blocks, hit_blocks, input_tokens, hit_tokens
        Totals over the log.
    evicted_blocks, expired_blocks, resident_blocks_end
        Core counters at the end of the replay.
    gb_hours
        Exact KV residency (``None`` without KV bytes per token).
    replay_s
        Wall seconds of the replay call(s).
    timeline
        Per-window state, if asked for.
    """

    config: SweepConfig
    block_tokens: int
    requests: int
    total_blocks: int
    hit_blocks: int
    input_tokens: int
    hit_tokens: int
    evicted_blocks: int
    expired_blocks: int
    resident_blocks_end: int
    gb_hours: float | None
    replay_s: float
    timeline: Timeline | None = None

    @property
    def hit_ratio(self) -> float:
        """Hit blocks / total blocks (0 for a log without a full block)."""
        return self.hit_blocks / self.total_blocks if self.total_blocks else 0.0

    @property
    def token_hit_ratio(self) -> float:
        """Hit tokens / input tokens."""
        return self.hit_tokens / self.input_tokens if self.input_tokens else 0.0

    @property
    def label(self) -> str:
        c = self.config
        parts = [c.policy + (f" {format_duration(c.ttl_s)}" if c.ttl_s is not None else "")]
        if c.block_size is not None:
            parts.append(f"block {c.block_size}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """One row of ``--json``'s ``results`` (docs/analyze.md has the schema)."""
        c = self.config
        return {
            "policy": c.policy,
            "capacity_blocks": c.capacity_blocks,
            "capacity_tokens": None if c.capacity_blocks is None else c.capacity_blocks * self.block_tokens,
            "ttl_s": c.ttl_s,
            "block_size": self.block_tokens,
            "requests": self.requests,
            "total_blocks": self.total_blocks,
            "hit_blocks": self.hit_blocks,
            "hit_ratio": self.hit_ratio,
            "input_tokens": self.input_tokens,
            "hit_tokens": self.hit_tokens,
            "token_hit_ratio": self.token_hit_ratio,
            "evicted_blocks": self.evicted_blocks,
            "expired_blocks": self.expired_blocks,
            "resident_blocks_end": self.resident_blocks_end,
            "gb_hours": self.gb_hours,
            "replay_s": self.replay_s,
        }


def format_duration(seconds: float) -> str:
    """``300.0`` -> ``5m``; ``5400.0`` -> ``1.5h``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and (seconds / size) * 10 == int((seconds / size) * 10):
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _window(tr: ReplayTrace, width: int, a: int, b: int) -> ReplayTrace:
    """Requests ``a .. b-1`` of ``tr`` (views; ``width`` words per block)."""
    lo, hi = int(tr.offsets[a]), int(tr.offsets[b])
    return ReplayTrace(
        tr.offsets[a : b + 1] - tr.offsets[a],
        tr.blocks[lo * width : hi * width],
        tr.timestamps[a:b],
        namespaces=None if tr.namespaces is None else tr.namespaces[a:b],
        namespace_table=tr.namespace_table,
    )


def run_config(
    log: RequestLog, config: SweepConfig, *, kv_bytes_per_token: int | None = None, timeline_points: int = 0
) -> SweepResult:
    """Replays ``log`` under ``config`` in a fresh metadata-only store.

    Parameters
    ----------
    kv_bytes_per_token
        KV bytes of one token (all layers); gives blocks their real size so ``gb_hours`` is set.
    timeline_points
        If > 0, replays in that many equal time windows and records the state after each
        (one replay call per window).
    """
    trace, _ = log.trace(config.block_size)
    block_tokens = log.tokens_per_block(config.block_size)
    store_bs = log.store_block_size(config.block_size)
    block_bytes = kv_bytes_per_token * block_tokens if kv_bytes_per_token else 1
    cfg = StoreConfig.for_blocks(
        config.capacity_blocks,
        block_size=store_bs,
        content=log.content,
        policy=config.policy,
        ttl_s=config.ttl_s,
        block_bytes=block_bytes,
    )
    n = trace.num_requests
    timeline = None
    with Store(cfg) as store:
        t0 = time.perf_counter()
        if timeline_points <= 0 or n == 0:
            hits = store.replay(trace)
        else:
            ts = trace.timestamps
            edges = np.linspace(ts[0], ts[-1], timeline_points + 1)[1:]
            ends = np.unique(np.searchsorted(ts, edges, side="right"))
            ends = ends[ends > 0]
            width = 1 if log.content == "block_ids" else store_bs
            parts, t_end, resident, whits, wtotal = [], [], [], [], []
            a = 0
            for b in ends.tolist():
                w = _window(trace, width, a, b)
                h = store.replay(w)
                if config.ttl_s is not None:
                    store.expire(now=float(ts[b - 1]))
                parts.append(h)
                t_end.append(float(ts[b - 1]))
                resident.append(store.stats().blocks)
                whits.append(int(h.sum(dtype=np.int64)))
                wtotal.append(w.num_blocks)
                a = b
            hits = np.concatenate(parts)
            timeline = Timeline(
                np.asarray(t_end, dtype=np.float64),
                np.asarray(resident, dtype=np.int64),
                np.asarray(whits, dtype=np.int64),
                np.asarray(wtotal, dtype=np.int64),
            )
        replay_s = time.perf_counter() - t0
        st = store.stats()
        gbh = store.residency(now=float(trace.timestamps[-1])).gb_hours if kv_bytes_per_token and n else None
    # One int64 copy of the hits, then in place: hit blocks, then hit tokens per request.
    h = hits.astype(np.int64)
    hit_blocks = int(h.sum())
    h *= block_tokens
    np.minimum(h, log.input_tokens, out=h)
    return SweepResult(
        config=config,
        block_tokens=block_tokens,
        requests=n,
        total_blocks=trace.num_blocks,
        hit_blocks=hit_blocks,
        input_tokens=int(log.input_tokens.sum()),
        hit_tokens=int(h.sum()),
        evicted_blocks=st.evicted,
        expired_blocks=st.expired,
        resident_blocks_end=st.blocks,
        gb_hours=gbh,
        replay_s=replay_s,
        timeline=timeline,
    )


def run_sweep(
    log: RequestLog,
    configs: Sequence[SweepConfig],
    *,
    kv_bytes_per_token: int | None = None,
    timeline_points: int = 0,
    progress: bool = False,
) -> list[SweepResult]:
    """Runs every configuration (in order) and returns one result each."""
    from tqdm import tqdm

    out = []
    with tqdm(
        total=len(configs),
        desc="replay",
        unit="config",
        disable=None if progress else True,
        file=sys.stderr,
        leave=False,
    ) as bar:
        for c in configs:
            out.append(run_config(log, c, kv_bytes_per_token=kv_bytes_per_token, timeline_points=timeline_points))
            bar.update(1)
    return out
