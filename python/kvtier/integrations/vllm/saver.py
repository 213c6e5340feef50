"""Saves off the engine step: the step starts the gather of a request's new blocks into a buffer it takes from
:class:`SaveBuffers`; one background thread (:class:`Saver`) waits for the copy, inserts the blocks into the
worker's :class:`kvtier.Store` and commits the disk folder, and reports each save back (``take_acks``)::

    engine step (model-runner thread)                 kvtier-save thread
    ──────────────────────────────────                ─────────────────────────────────────────
    handle_preemptions: wait for the gathers of       ┌▶ job: wait for its gather
      earlier steps (done long ago, as a rule)        │       Store.insert(tokens, rows)  ─▶ ack (save id, blocks held)
    wait_for_save: peek, take a buffer,               │       give the buffer back             BlockStored event
      start the gather (copy engine) ────── queue ────┘  queue empty: Store.flush() (one disk commit for the batch)

A save never raises into vLLM: a failed copy, insert or commit is logged and counted (``save_errors``,
``save_failed_blocks``) and acknowledged as holding nothing, so the scheduler never claims it.

No vllm import here (the logger is a child of vLLM's ``vllm`` logger by name), so this is tested without an engine.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kvtier import CopyHandle, Namespace, Store

if TYPE_CHECKING:
    from kvtier.integrations.vllm.stats import KVTierConnectorStats

__all__ = ["SaveBuffers", "SaveJob", "Saver", "copy_tokens"]

logger = logging.getLogger("vllm.kvtier.saver")

#: How long shutdown waits for the saves still queued before it closes the store without them (seconds).
DRAIN_TIMEOUT_S = 30.0


class SaveBuffers:
    """Host buffers ``uint8[rows, block_bytes]`` for gathered blocks on their way into the store, reused.

    At most ``limit`` bytes are handed out at once: :meth:`take` waits for :meth:`give` beyond that (unless
    nothing is out, so one save larger than ``limit`` still runs alone). Pinned when a GPU is present (page-locking
    is slow, hence the reuse). Thread-safe.
    """

    def __init__(self, block_bytes: int, limit: int, pinned: bool) -> None:
        self.block_bytes = block_bytes
        self.limit = limit
        self._pinned = pinned
        self._cv = threading.Condition()
        self._free: dict[int, list[Any]] = {}  # rows -> buffers
        self._free_bytes = 0
        self.out_bytes = 0

    def take(self, n: int) -> tuple[Any, float]:
        """A buffer of at least ``n`` rows, and the seconds spent waiting for room."""
        rows = 1 << max(0, (n - 1).bit_length())
        size = rows * self.block_bytes
        waited = 0.0
        with self._cv:
            if self.out_bytes and self.out_bytes + size > self.limit:
                t0 = time.perf_counter()
                self._cv.wait_for(lambda: not self.out_bytes or self.out_bytes + size <= self.limit)
                waited = time.perf_counter() - t0
            self.out_bytes += size
            free = self._free.get(rows)
            if free:
                self._free_bytes -= size
                return free.pop(), waited
        return torch.empty((rows, self.block_bytes), dtype=torch.uint8, pin_memory=self._pinned), waited

    def give(self, buf: Any) -> None:
        size = buf.shape[0] * self.block_bytes
        with self._cv:
            self.out_bytes -= size
            if self._free_bytes + size <= self.limit:
                self._free.setdefault(buf.shape[0], []).append(buf)
                self._free_bytes += size
            self._cv.notify_all()


@dataclass
class SaveJob:
    """Blocks ``start .. end - 1`` of a request, gathered (or being gathered) into ``rows``."""

    save_id: int
    req_id: str
    ns: Namespace | None  # the rank's namespace (the store's); None for a save that failed before it started
    event_ns: Namespace | None  # the rank-independent one (KV events)
    tokens: Any  # int32[end * block_size], a copy owned by the job
    start: int
    end: int
    buf: Any = None  # from SaveBuffers, None when there is nothing to copy
    handle: CopyHandle | None = None  # the gather, None once complete
    done: threading.Event = field(default_factory=threading.Event)
    failed: bool = False
    held: int = 0  # after the save: the request's blocks the store holds from block 0 (0 if it failed)


class Saver:
    """The background thread that commits :class:`SaveJob` s in the order they were started."""

    def __init__(
        self,
        store: Store,
        buffers: SaveBuffers,
        stats: "KVTierConnectorStats",
        stats_lock: threading.Lock,
        on_stored: Callable[[SaveJob, int], None] | None,
    ) -> None:
        self._store = store
        self._buffers = buffers
        self._stats = stats
        self._stats_lock = stats_lock
        self._on_stored = on_stored
        self._queue: queue.SimpleQueue[SaveJob | None] = queue.SimpleQueue()
        self._cv = threading.Condition()
        self._started = 0  # jobs queued (model-runner thread)
        self._finished = 0  # jobs inserted or failed (save thread)
        self._acks: list[tuple[int, int]] = []  # (save id, blocks of the request held from block 0; 0: failed)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="kvtier-save", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ model-runner thread
    def submit(self, job: SaveJob) -> int:
        """Queues ``job``; returns its sequence number (see :meth:`wait_finished`)."""
        with self._cv:
            self._started += 1
            seq = self._started
        self._queue.put(job)
        return seq

    def submit_failed(self, save_id: int, req_id: str, blocks: int) -> None:
        """Acknowledges save ``save_id`` (``blocks`` blocks) as failed, in order with the others."""
        self.submit(SaveJob(save_id, req_id, None, None, None, 0, blocks, failed=True))

    @property
    def pending(self) -> int:
        """Jobs queued and not finished yet."""
        with self._cv:
            return self._started - self._finished

    def wait_finished(self, seq: int | None = None, timeout: float | None = None) -> bool:
        """Waits until jobs ``1 .. seq`` (default: every job queued so far) are inserted or failed."""
        with self._cv:
            target = self._started if seq is None else seq
            return self._cv.wait_for(lambda: self._finished >= target, timeout)

    def take_acks(self) -> list[tuple[int, int]]:
        with self._cv:
            acks, self._acks = self._acks, []
        return acks

    def close(self) -> bool:
        """Stops the thread once the queued saves are committed, waiting at most :data:`DRAIN_TIMEOUT_S`.

        Returns False if saves were still queued then (they are dropped with the process); calling it again waits
        again.
        """
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join(DRAIN_TIMEOUT_S)
        if self._thread.is_alive():
            logger.warning(
                "kvtier: %d saves still queued after %.0f s at shutdown; they are dropped", self.pending, DRAIN_TIMEOUT_S
            )
            return False
        return True

    # ------------------------------------------------------------------ save thread
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                self._commit()
                return
            try:
                self._save(job)
            except Exception:  # a bug; the job is still acknowledged (as failed) below
                logger.exception("kvtier: save of request %s", job.req_id)
                job.failed = True
            finally:
                self._finish(job)
            if self._queue.empty():
                self._commit()  # one disk commit for what is queued (group commit)

    def _save(self, job: SaveJob) -> None:
        t0 = time.perf_counter()
        n = job.end - job.start
        try:
            if job.failed:
                pass  # it failed in the step, which logged why
            elif n > 0:
                if job.handle is not None:
                    job.handle.wait()
                res = self._store.insert(job.tokens, job.buf[:n].numpy(), start_block=job.start, namespace=job.ns)
                job.held = min(res.stored_blocks, job.end)
            else:  # nothing new: the store held the blocks, or an earlier job of the request was inserting them
                m = self._store.peek(job.tokens, namespace=job.ns)
                job.held = min(m.num_blocks - m.remote_blocks, job.end)
        except Exception as e:  # a save is best effort: never into vLLM
            job.failed = True
            logger.warning("kvtier: saving blocks %d..%d of request %s failed: %s", job.start, job.end, job.req_id, e)
        finally:
            job.handle = None
            if job.buf is not None:
                self._buffers.give(job.buf)
                job.buf = None
        stored = 0 if job.failed else max(0, job.held - job.start)
        if stored and self._on_stored is not None:
            try:
                self._on_stored(job, job.held)
            except Exception as e:
                logger.warning("kvtier: KV event for request %s failed: %s", job.req_id, e)
        with self._stats_lock:
            s = self._stats
            if job.failed:
                s.add("save_errors", 1)
                s.add("save_failed_blocks", n)
            s.add("saved_blocks", stored)
            s.add("saved_bytes", stored * self._buffers.block_bytes)
            s.add("save_commit_ms", (time.perf_counter() - t0) * 1e3)

    def _finish(self, job: SaveJob) -> None:
        """Acknowledges ``job`` (exactly once) and wakes whoever waits for it."""
        with self._cv:
            self._acks.append((job.save_id, 0 if job.failed else job.held))
            self._finished += 1
            self._cv.notify_all()
        job.done.set()

    def _commit(self) -> None:
        t0 = time.perf_counter()
        try:
            self._store.flush()
        except Exception as e:
            logger.warning("kvtier: committing saved blocks to the disk folder failed: %s", e)
            with self._stats_lock:
                self._stats.add("save_errors", 1)
        with self._stats_lock:
            self._stats.add("save_commit_ms", (time.perf_counter() - t0) * 1e3)


def copy_tokens(tokens: Any) -> Any:
    """A copy of ``tokens`` that the job owns (the request's sequence keeps growing on the model-runner thread)."""
    return np.array(tokens, dtype=np.int32, copy=True)
