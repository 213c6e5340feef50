"""The connector's stats (vLLM ``KVConnectorStats``), Prometheus counters and KV-event container.

Every stat is a counter summed over an interval, so workers' and the scheduler's stats aggregate by addition;
besides them, :data:`SAMPLE_KEYS` are lists of per-step observations, concatenated (a Prometheus histogram each).

==========================  ========  ===================================================================
key                         side      meaning
==========================  ========  ===================================================================
``lookups``                 sched.    requests whose prefix kvtier was asked about
``lookups_deferred``        sched.    lookups told to wait a step: the prefix continues into a save in flight
``offered_tokens``          sched.    tokens kvtier held beyond the engine's own prefix hit
``claimed_tokens``          sched.    tokens the scheduler claimed (loaded instead of prefilled)
``declined_tokens``         sched.    tokens offered but not claimed because loading was slower than prefill
``decision_<reason>``       sched.    requests per decision: ``pays``, ``declined``, ``no_estimate``, ``always``
``est_load_ms``             sched.    estimated load time of the claimed prefixes
``est_prefill_saved_ms``    sched.    estimated prefill time those claims save
``load_requests``           worker    requests loaded
``loaded_blocks_host``      worker    blocks loaded from the host tier
``loaded_blocks_disk``      worker    blocks loaded from the disk tier
``loaded_bytes_host``       worker    bytes loaded from the host tier
``loaded_bytes_disk``       worker    bytes loaded from the disk tier
``load_ms``                 worker    time spent loading (match + copy out of kvtier + scatter into the engine)
``load_failed_blocks``      worker    claimed blocks that could not be loaded (evicted or corrupt)
``saved_blocks``            worker    blocks saved into kvtier
``saved_bytes``             worker    their bytes
``save_ms``                 worker    time the engine steps spent on saves (start the copies, wait for earlier ones)
``save_commit_ms``          worker    time off the step: inserts into the store, disk commits (save thread)
``save_errors``             worker    saves or disk commits that failed (logged; a failed save is never claimed)
``save_failed_blocks``      worker    blocks of the failed saves
==========================  ========  ===================================================================

Samples: ``save_step_ms``, the time one engine step spent in kvtier's save code (steps that saved), as the
histogram ``vllm:kvtier_save_step_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.distributed.kv_events import KVCacheEvent, KVConnectorKVEvents, KVEventAggregator
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorPromMetrics, KVConnectorStats
from vllm.v1.metrics.utils import create_metric_per_engine

__all__ = ["KVTierConnectorStats", "KVTierPromMetrics", "KVTierKVEvents", "STAT_KEYS", "SAMPLE_KEYS", "SAMPLE_BUCKETS_S"]

STAT_KEYS: dict[str, str] = {
    "lookups": "Requests whose prefix kvtier was asked about",
    "lookups_deferred": "Lookups told to wait a step because the prefix continues into a save in flight",
    "offered_tokens": "Tokens kvtier held beyond the engine's own prefix-cache hit",
    "claimed_tokens": "Tokens claimed from kvtier (loaded instead of prefilled)",
    "declined_tokens": "Tokens held by kvtier but not claimed: loading was estimated slower than prefill",
    "decision_pays": "Requests whose kvtier hit was taken because loading beats prefill",
    "decision_declined": "Requests whose kvtier hit was declined because prefill beats loading",
    "decision_no_estimate": "Requests whose kvtier hit was taken before prefill throughput was measured",
    "decision_always": "Requests whose kvtier hit was taken with hit_policy='always'",
    "est_load_ms": "Estimated load time of the claimed prefixes, milliseconds",
    "est_prefill_saved_ms": "Estimated prefill time saved by the claimed prefixes, milliseconds",
    "load_requests": "Requests loaded from kvtier",
    "loaded_blocks_host": "Blocks loaded from kvtier's host tier",
    "loaded_blocks_disk": "Blocks loaded from kvtier's disk tier",
    "loaded_bytes_host": "Bytes loaded from kvtier's host tier",
    "loaded_bytes_disk": "Bytes loaded from kvtier's disk tier",
    "load_ms": "Time spent loading from kvtier, milliseconds",
    "load_failed_blocks": "Claimed blocks that could not be loaded (evicted or corrupt); recomputed or failed",
    "saved_blocks": "Blocks saved into kvtier",
    "saved_bytes": "Bytes saved into kvtier",
    "save_ms": "Time engine steps spent on saves into kvtier (starting copies, waiting for them), milliseconds",
    "save_commit_ms": "Time spent off the engine step inserting saved blocks and committing them to disk, milliseconds",
    "save_errors": "Saves or disk commits that failed (logged; a failed save is never claimed)",
    "save_failed_blocks": "Blocks of the saves that failed",
}

#: Per-step observations (lists of milliseconds), exported as histograms ``vllm:kvtier_<name>_seconds``.
SAMPLE_KEYS: dict[str, str] = {
    "save_step_ms": "Time one engine step spent in kvtier's save code (steps that saved), seconds",
}

#: Histogram buckets (seconds): five per decade from 10 us to 10 s (1.6x apart; quantiles are interpolated within one).
SAMPLE_BUCKETS_S: tuple[float, ...] = tuple(round(10.0 ** (e / 5), 10) for e in range(-25, 6))

#: At most this many samples per key are kept per interval (the rest are dropped; counters keep counting).
MAX_SAMPLES = 4096


@dataclass
class KVTierConnectorStats(KVConnectorStats):
    """Counters of one interval (``data``: key -> number; keys in :data:`STAT_KEYS`)."""

    def add(self, key: str, value: float) -> None:
        if key not in STAT_KEYS:
            raise KeyError(f"unknown kvtier connector stat {key!r}")
        if value:
            self.data[key] = self.data.get(key, 0) + value

    def sample(self, key: str, value: float) -> None:
        """Appends one observation to the sample list ``key`` (a key of :data:`SAMPLE_KEYS`)."""
        if key not in SAMPLE_KEYS:
            raise KeyError(f"unknown kvtier connector sample {key!r}")
        samples = self.data.setdefault(key, [])
        if len(samples) < MAX_SAMPLES:
            samples.append(float(value))

    def reset(self) -> None:
        self.data.clear()

    def aggregate(self, other: KVConnectorStats) -> "KVTierConnectorStats":
        for key, value in other.data.items():
            if key in SAMPLE_KEYS:
                self.data.setdefault(key, []).extend(value)
            else:
                self.data[key] = self.data.get(key, 0) + value
        return self

    def reduce(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {k: self.data.get(k, 0) for k in STAT_KEYS}
        for key in SAMPLE_KEYS:
            samples = sorted(self.data.get(key, ()))
            if samples:
                out[f"{key}_p50"] = round(samples[len(samples) // 2], 3)
                out[f"{key}_p99"] = round(samples[min(len(samples) - 1, (len(samples) * 99) // 100)], 3)
        load_s = self.data.get("load_ms", 0) / 1e3
        loaded = self.data.get("loaded_bytes_host", 0) + self.data.get("loaded_bytes_disk", 0)
        out["load_GBps"] = round(loaded / load_s / 1e9, 3) if load_s > 0 else 0.0
        return out

    def is_empty(self) -> bool:
        return not any(self.data.values())

    def take(self) -> "KVTierConnectorStats | None":
        """This interval's stats (``None`` if empty); the counters restart from zero."""
        if self.is_empty():
            return None
        out = KVTierConnectorStats(data=dict(self.data))  # takes the sample lists along
        self.reset()
        return out


class KVTierPromMetrics(KVConnectorPromMetrics):
    """One Prometheus counter per stat key, named ``vllm:kvtier_<key>`` (``_ms`` keys in seconds: ``..._seconds``)."""

    def __init__(
        self,
        vllm_config: Any,
        metric_types: dict[type, type],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self.counters: dict[str, dict[int, Any]] = {}
        for key, doc in STAT_KEYS.items():
            name = f"vllm:kvtier_{key[:-3]}_seconds" if key.endswith("_ms") else f"vllm:kvtier_{key}"
            counter = self._counter_cls(name=name, documentation=doc, labelnames=labelnames)
            self.counters[key] = create_metric_per_engine(counter, self.per_engine_labelvalues)
        self.histograms: dict[str, dict[int, Any]] = {}
        for key, doc in SAMPLE_KEYS.items():
            hist = self._histogram_cls(
                name=f"vllm:kvtier_{key[:-3]}_seconds", documentation=doc, buckets=SAMPLE_BUCKETS_S, labelnames=labelnames
            )
            self.histograms[key] = create_metric_per_engine(hist, self.per_engine_labelvalues)

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for key, value in transfer_stats_data.items():
            hist = self.histograms.get(key)
            if hist is not None:
                for ms in value:
                    hist[engine_idx].observe(ms / 1e3)
                continue
            per_engine = self.counters.get(key)
            if per_engine is None or not value:
                continue
            per_engine[engine_idx].inc(value / 1e3 if key.endswith("_ms") else value)


class KVTierKVEvents(KVConnectorKVEvents):
    """KV events from the workers (``BlockStored`` / ``BlockRemoved``), kept only if every worker reported them."""

    def __init__(self, num_workers: int = 1) -> None:
        self._agg = KVEventAggregator(num_workers)

    def add_events(self, events: list[KVCacheEvent]) -> None:
        self._agg.add_events(events)

    def aggregate(self) -> "KVTierKVEvents":
        common = self._agg.get_common_events()
        self._agg.clear_events()
        self._agg.add_events(common)
        self._agg.reset_workers()
        return self

    def increment_workers(self, count: int = 1) -> None:
        self._agg.increment_workers(count)

    def get_all_events(self) -> list[KVCacheEvent]:
        return list(self._agg.get_all_events())

    def get_number_of_workers(self) -> int:
        return int(self._agg.get_number_of_workers())

    def clear_events(self) -> None:
        self._agg.clear_events()
        self._agg.reset_workers()
