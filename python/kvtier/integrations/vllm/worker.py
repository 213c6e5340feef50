"""The worker side: loads claimed blocks into the paged KV tensors before the forward, saves new full blocks after it.

One :class:`kvtier.Store` per worker process: a host tier in front of the disk folder shared with the scheduler,
written through (every saved block is queued for the disk at once). Saves are asynchronous (:mod:`saver`): the
step only starts copying a request's new blocks out of the engine's KV tensors; the insert into the store and the
disk commit run on a background thread, which acknowledges each save; the acknowledgements travel to the scheduler
in the worker metadata. The engine may write a block again only after the step that started its copy: the next
step waits for the copies of earlier steps before its forward (``handle_preemptions``), so no copy reads a page the
engine reuses.

Loads pin the matched prefix for the copy; a block that is gone (evicted since the scheduler looked) or fails its
checksum ends the load early, and the engine blocks that were not filled are reported through
``get_block_ids_with_load_errors``: vLLM then recomputes them or fails the request, as ``kv_load_failure_policy``
says. Wrong KV is never handed to the engine.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch
from vllm.logger import init_logger

import kvtier
from kvtier import DiskConfig, Namespace, Store, StoreConfig, TierConfig, TokenSequence
from kvtier.integrations.vllm.config import KVTierConnectorConfig
from kvtier.integrations.vllm.layout import PagedKVLayout, scatter_blocks, start_gather
from kvtier.integrations.vllm.meta import (
    KVTierConnectorMetadata,
    KVTierWorkerMetadata,
    ReqStep,
    rank_namespace,
)
from kvtier.integrations.vllm.saver import SaveBuffers, SaveJob, Saver, copy_tokens
from kvtier.integrations.vllm.stats import KVTierConnectorStats, KVTierKVEvents

__all__ = ["WorkerSide"]

logger = init_logger("vllm.kvtier.worker")

_HOST, _DISK = int(kvtier.Tier.HOST), int(kvtier.Tier.DISK)

#: A load whose prefix is short while saves are queued waits this long for them (seconds), then loads what is there.
LOAD_WAITS_FOR_SAVES_S = 10.0


class _ReqState:
    __slots__ = ("tokens", "ns", "event_ns", "last_save")

    def __init__(self, ns: Namespace, event_ns: Namespace) -> None:
        self.tokens = TokenSequence()
        self.ns = ns
        self.event_ns = event_ns
        self.last_save: SaveJob | None = None  # the request's latest save job


class WorkerSide:
    """Worker half of :class:`KVTierConnector` (one per worker process, i.e. per TP rank)."""

    def __init__(
        self,
        cfg: KVTierConnectorConfig,
        *,
        block_size: int,
        block_bytes: int,
        ns_fields: dict[str, str],
        spec_desc: str,
        rank: int,
        world: int,
        events_enabled: bool,
    ) -> None:
        self.cfg = cfg
        self.block_size = block_size
        self.block_bytes = block_bytes
        self._ns_fields = ns_fields
        self._spec_desc = spec_desc
        self._rank = rank
        self._world = world
        self._events_enabled = events_enabled
        self._ns_cache: dict[str, tuple[Namespace, Namespace]] = {}
        self.layout: PagedKVLayout | None = None
        self._copier: kvtier.CopyEngine | None = None
        self.store: Store | None = None
        self._staging: Any = None
        self._reqs: dict[str, _ReqState] = {}
        self._invalid: set[int] = set()
        self._bad_from: dict[str, int] = {}  # request -> first block of this step whose KV is not valid
        self._meta_back = KVTierWorkerMetadata()
        self._events: list[Any] = []  # guarded by _lock (the save thread adds BlockStored)
        self.stats = KVTierConnectorStats()  # guarded by _lock
        self._lock = threading.Lock()
        self._saver: Saver | None = None
        self._buffers: SaveBuffers | None = None
        self._gathers: list[kvtier.CopyHandle] = []  # copies started by earlier steps, maybe unfinished
        self._step_save_s = 0.0  # this step's time in save code so far
        self._step_waited = False
        self._t_bind = 0.0
        self._t_loaded = 0.0

    # ------------------------------------------------------------------ set-up
    def register(self, kv_caches: dict[str, Any], num_blocks: int, layer_order: list[str]) -> None:
        layout = PagedKVLayout.from_kv_caches(kv_caches, num_blocks, layer_order)
        if layout.block_bytes != self.block_bytes:
            raise RuntimeError(
                f"kvtier: the KV tensors hold {layout.block_bytes} bytes per block over all layers, but the engine's "
                f"KV cache spec says {self.block_bytes}; layout not understood: {layout.describe()}"
            )
        self.layout = layout
        self._copier = kvtier.CopyEngine() if layout.native is not None else None
        logger.info(
            "kvtier: KV layout %s; copies by %s", layout.describe(), "kvtier's copy engine" if self._copier else "torch"
        )
        cfg = self.cfg
        self.store = Store(
            StoreConfig(
                block_size=self.block_size,
                block_bytes=self.block_bytes,
                host=TierConfig(capacity_bytes=cfg.host_capacity, policy=cfg.host_policy, ttl_s=cfg.host_ttl_s),
                disk=DiskConfig(
                    path=cfg.disk_path,
                    capacity_bytes=cfg.disk_capacity,
                    policy=cfg.disk_policy,
                    ttl_s=cfg.disk_ttl_s,
                    write_through=True,
                ),
                remote=cfg.remote_config(),
            ),
            namespace=self._namespaces("")[0],
        )
        buffers = SaveBuffers(self.block_bytes, cfg.save_buffer, pinned=torch.cuda.is_available())
        on_stored = self._stored_event if self._events_enabled else None
        self._saver = Saver(self.store, buffers, self.stats, self._lock, on_stored)
        self._buffers = buffers

    def _namespaces(self, tenant: str) -> tuple[Namespace, Namespace]:
        """(this rank's namespace, the rank-independent one that names blocks in KV events)."""
        ns = self._ns_cache.get(tenant)
        if ns is None:
            ns = (
                rank_namespace(self._ns_fields, self._spec_desc, self._rank, self._world, tenant),
                rank_namespace(self._ns_fields, self._spec_desc, 0, 1, tenant),
            )
            self._ns_cache[tenant] = ns
        return ns

    def _rows(self, n: int) -> Any:
        """A staging tensor uint8[>= n, block_bytes] (pinned when a GPU is present), reused across steps."""
        if self._staging is None or self._staging.shape[0] < n:
            rows = 1 << max(0, (n - 1).bit_length())
            self._staging = torch.empty((rows, self.block_bytes), dtype=torch.uint8, pin_memory=torch.cuda.is_available())
        return self._staging

    # ------------------------------------------------------------------ per step
    def before_step(self) -> None:
        """Before anything of the step runs (vLLM's ``handle_preemptions``): the copies that earlier steps started
        finish before this step may write the engine's pages again (a finished or preempted request's blocks are
        freed at once; vLLM zeroes reallocated blocks in ``_update_states``, before ``bind_connector_metadata``,
        and the forward writes them). They are long done as a rule; then this costs nothing."""
        self._step_save_s = 0.0
        self._step_waited = False
        self._finish_gathers()

    def _finish_gathers(self) -> None:
        if not self._gathers:
            return
        t0 = time.perf_counter()
        waited = False
        for h in self._gathers:
            try:
                if not h.poll():
                    waited = True
                    h.wait()
            except Exception:  # the copy failed: the save thread counts it; the pages are not read any more
                pass
        self._gathers.clear()
        if waited:  # a step that only found them done does not count as saving
            self._step_save_s += time.perf_counter() - t0
            self._step_waited = True

    def bind(self, meta: KVTierConnectorMetadata) -> None:
        """Applies the step's token deltas and drops finished requests (before any load or save)."""
        self._finish_gathers()  # already done by before_step, unless the model runner does not call it
        self._t_bind = self._t_loaded = time.perf_counter()
        self._bad_from.clear()
        for req_id in meta.finished:
            self._reqs.pop(req_id, None)
        for step in meta.steps:
            self._apply_tokens(step)

    def _apply_tokens(self, step: ReqStep) -> None:
        st = self._reqs.get(step.req_id)
        if st is None or step.token_start == 0:
            ns, ens = self._namespaces(step.tenant)
            st = self._reqs[step.req_id] = _ReqState(ns, ens)
        if len(st.tokens) != step.token_start:
            raise RuntimeError(
                f"kvtier: worker holds {len(st.tokens)} tokens of request {step.req_id}, the scheduler sent tokens "
                f"from {step.token_start}"
            )
        if step.tokens:
            st.tokens.extend(np.asarray(step.tokens, dtype=np.int32))

    def start_load(self, meta: KVTierConnectorMetadata) -> None:
        # vLLM calls this before the forward when the step has loads, after it otherwise (nothing to do then)
        loaded = False
        for step in meta.steps:
            if step.load is not None:
                self._load(step)
                loaded = True
        if loaded:
            self._t_loaded = time.perf_counter()  # the forward starts now

    def _load(self, step: ReqStep) -> None:
        assert self.store is not None and self.layout is not None and step.load is not None
        t0 = time.perf_counter()
        spec = step.load
        st = self._reqs[step.req_id]
        bs = self.block_size
        want = spec.engine_blocks + len(spec.block_ids)
        toks = st.tokens.numpy()[: want * bs]
        m = self.store.match(toks, namespace=st.ns, pin=True)
        if m.num_blocks < want and self._saver is not None and self._saver.pending:
            # The prefix may be in a save still on its way into the store (claimed by the scheduler from another
            # source, e.g. the folder): saves and loads are applied in the order the steps started them.
            if m.pinned:
                self.store.unpin(m)
            self._saver.wait_finished(timeout=LOAD_WAITS_FOR_SAVES_S)
            m = self.store.match(toks, namespace=st.ns, pin=True)
        ok = 0
        copy_s = 0.0
        tiers = m.tiers
        try:
            have = min(m.num_blocks, want)
            if have > spec.engine_blocks:
                staging = self._rows(m.num_blocks)
                t1 = time.perf_counter()
                got = self.store.load(m, staging[: m.num_blocks].numpy())
                copy_s = time.perf_counter() - t1
                ok = min(got, have)
                if ok > spec.engine_blocks:
                    scatter_blocks(
                        self.layout, spec.block_ids[: ok - spec.engine_blocks], staging[spec.engine_blocks : ok], self._copier
                    )
        finally:
            if m.pinned:
                self.store.unpin(m)
        failed = spec.block_ids[max(0, ok - spec.engine_blocks) :]
        logger.debug(
            "kvtier: load %s: want %d blocks (engine holds %d), matched %d, loaded %d, failed %d",
            step.req_id, want, spec.engine_blocks, m.num_blocks, ok, len(failed),
        )
        if failed:
            self._invalid.update(failed)
            # Those engine blocks hold no valid KV, and this step's forward attends to them: nothing from the first
            # of them on may be saved in this step (vLLM recomputes them; the scheduler plans their save again).
            self._bad_from[step.req_id] = max(ok, spec.engine_blocks)
            with self._lock:
                self.stats.add("load_failed_blocks", len(failed))
            if self._events_enabled:
                self._removed_event(st, ok, want)
        loaded_tiers = tiers[:ok]
        n_host = int(np.count_nonzero(loaded_tiers == _HOST))
        n_disk = int(np.count_nonzero(loaded_tiers == _DISK))
        total_s = time.perf_counter() - t0
        with self._lock:
            s = self.stats
            s.add("load_requests", 1)
            s.add("loaded_blocks_host", n_host)
            s.add("loaded_blocks_disk", n_disk)
            s.add("loaded_bytes_host", n_host * self.block_bytes)
            s.add("loaded_bytes_disk", n_disk * self.block_bytes)
            s.add("load_ms", total_s * 1e3)
        if ok and (n_host == ok or n_disk == ok):
            self._meta_back.loads.append((_HOST if n_host == ok else _DISK, ok * self.block_bytes, copy_s))
        if ok:
            self._meta_back.load_fixed.append(max(0.0, total_s - copy_s))

    def get_invalid_blocks(self) -> set[int]:
        out, self._invalid = self._invalid, set()
        return out

    def save(self, meta: KVTierConnectorMetadata) -> None:
        """After the forward (``wait_for_save``): starts the copies of this step's saves; the save thread does the rest."""
        t_fwd = time.perf_counter() - max(self._t_bind, self._t_loaded)
        computed = meta.num_scheduled_tokens
        if computed > 0:
            self._meta_back.forwards.append((computed, t_fwd))
        t0 = time.perf_counter()
        planned = False
        for step in meta.steps:
            if step.save is not None:
                planned = True
                try:
                    self._start_save(step)
                except Exception as e:  # never into vLLM: logged, counted and acknowledged as failed
                    logger.warning("kvtier: the save of request %s could not start: %s", step.req_id, e)
                    assert self._saver is not None
                    self._saver.submit_failed(step.save.save_id, step.req_id, step.save.end_block)
        self._step_save_s += time.perf_counter() - t0
        if planned or self._step_waited:
            with self._lock:
                self.stats.add("save_ms", self._step_save_s * 1e3)
                self.stats.sample("save_step_ms", self._step_save_s * 1e3)
        self._step_save_s = 0.0
        self._step_waited = False

    def _start_save(self, step: ReqStep) -> None:
        assert self.store is not None and self.layout is not None and step.save is not None
        assert self._saver is not None and self._buffers is not None
        st = self._reqs[step.req_id]
        end = min(step.save.end_block, self._bad_from.get(step.req_id, step.save.end_block))
        toks = st.tokens.numpy()[: end * self.block_size]
        m = self.store.peek(toks, namespace=st.ns)
        start = m.num_blocks - m.remote_blocks  # blocks held locally: an insert continues after those
        last = st.last_save
        if last is not None and not last.done.is_set() and not last.failed:
            start = max(start, min(last.end, end))  # in the save queue already
        start = min(start, end)
        job = SaveJob(step.save.save_id, step.req_id, st.ns, st.event_ns, copy_tokens(toks), start, end)
        if end > start:
            job.buf, waited = self._buffers.take(end - start)
            if waited:
                logger.debug("kvtier: a save waited %.1f ms for room in save_buffer", waited * 1e3)
            try:
                job.handle = start_gather(self.layout, step.save.block_ids[start:end], job.buf, self._copier)
            except Exception as e:  # never into vLLM: the save thread acknowledges it as failed
                logger.warning("kvtier: copying blocks %d..%d of request %s failed: %s", start, end, step.req_id, e)
                job.failed = True
            if job.handle is not None:
                self._gathers.append(job.handle)
        logger.debug("kvtier: save %s: blocks %d..%d queued", step.req_id, start, end)
        st.last_save = job
        self._saver.submit(job)

    # ------------------------------------------------------------------ events
    def _stored_event(self, job: SaveJob, held: int) -> None:
        """``BlockStored`` for blocks ``job.start .. held - 1`` (on the save thread, after the insert)."""
        from vllm.distributed.kv_events import MEDIUM_CPU, BlockStored

        toks = job.tokens
        assert job.event_ns is not None  # a save that stored blocks had started
        keys = kvtier.block_keys(toks[: held * self.block_size], job.event_ns, block_size=self.block_size)
        event = BlockStored(
            block_hashes=[bytes(k) for k in keys[job.start : held]],
            parent_block_hash=bytes(keys[job.start - 1]) if job.start else None,
            token_ids=[int(t) for t in toks[job.start * self.block_size : held * self.block_size]],
            block_size=self.block_size,
            lora_id=None,
            medium=MEDIUM_CPU,
            lora_name=None,
        )
        with self._lock:
            self._events.append(event)

    def _removed_event(self, st: _ReqState, ok: int, want: int) -> None:
        from vllm.distributed.kv_events import MEDIUM_CPU, BlockRemoved

        toks = st.tokens.numpy()[: want * self.block_size]
        keys = kvtier.block_keys(toks, st.event_ns, block_size=self.block_size)
        with self._lock:
            self._events.append(BlockRemoved(block_hashes=[bytes(k) for k in keys[ok:want]], medium=MEDIUM_CPU))

    def take_events(self) -> KVTierKVEvents | None:
        removed: list[bytes] = []
        if self._events_enabled and self.store is not None and self._world == 1:
            # Blocks kvtier's disk tier dropped (evictions, expiry, damage). Their keys are the store's
            # chained keys, which name blocks in events only without tensor parallelism (with it, each
            # rank stores under its own namespace and removals are reported for failed loads only).
            removed, _dropped = self.store.take_removed_keys()
        from vllm.distributed.kv_events import MEDIUM_CPU, BlockRemoved

        with self._lock:
            if removed:
                # A corrupt block found by a failed load is already in that load's BlockRemoved.
                reported = {h for e in self._events if isinstance(e, BlockRemoved) for h in e.block_hashes}
                removed = [k for k in removed if k not in reported]
                if removed:
                    self._events.append(BlockRemoved(block_hashes=removed, medium=MEDIUM_CPU))
            events, self._events = self._events, []
        if not events:
            return None
        ev = KVTierKVEvents(num_workers=1)
        ev.add_events(events)
        return ev

    def take_stats(self) -> KVTierConnectorStats | None:
        with self._lock:
            return self.stats.take()

    def take_worker_meta(self) -> KVTierWorkerMetadata | None:
        if self._saver is not None:
            self._meta_back.saves.extend(self._saver.take_acks())
        if self._meta_back.empty():
            return None
        out, self._meta_back = self._meta_back, KVTierWorkerMetadata()
        return out

    def finished(self, req_ids: set[str]) -> None:
        for req_id in req_ids:
            self._reqs.pop(req_id, None)

    def close(self) -> None:
        """Shutdown: the queued saves are committed (bounded by ``saver.DRAIN_TIMEOUT_S``), then the store closes."""
        drained = True
        if self._saver is not None:
            drained = self._saver.close()
        if self.store is not None:
            if drained:
                try:
                    self.store.flush()
                except Exception as e:
                    logger.warning("kvtier: the last disk commit at shutdown failed: %s", e)
            self.store.close()
        if self._copier is not None:
            self._copier.close()
