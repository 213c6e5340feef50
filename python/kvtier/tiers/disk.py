"""The disk tier: the one place where its protocol with the core lives.

The C++ core keeps the disk index (which blocks are on disk, their policy state and checksums), the
write queue and the eviction decisions. :class:`DiskTier` moves bytes between that queue and the
folder, and is all the store sees of the disk::

    store.py                  DiskTier                          core (csrc/store/disk.cpp)
    ------------------------  --------------------------------  ------------------------------
    Store(...)            ->  open: folder checks, restore   ->  disk_restore
    match (a key this         import_chain: probe the index  ->  disk_restore(generation)
      process lacks)      ->
    load (disk blocks)    ->  load: read, verify, report     ->  disk_finish_load
    insert, evictions         writer thread: take a batch,  <->  disk_wait, disk_take,
      (queued in the core)    commit it, finish it               disk_make_room, disk_finish
    flush(host)           ->  flush: drain, retry, wait      ->  disk_persist, disk_flush
    close                 ->  close: stop the writer, folder

Every LMDB call goes through :class:`~kvtier.tiers.disk_io.DiskIO` batches (``tier.io.fault`` fails them on
purpose in tests). Every LMDB error becomes a :class:`~kvtier.errors.DiskError` subclass, or, on the read
path, a miss: a block that cannot be read is dropped (counted as corrupt) and is a miss from then on.
A batch that fails to commit stays queued in the core and the next ``flush()`` retries it.
Layout of the folder: docs/disk.md.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvtier import _core
from kvtier.config import DiskConfig, Namespace
from kvtier.errors import DiskDamagedError, DiskError, DiskReadError, DiskWriteError, StoreClosedError
from kvtier.tiers.disk_folder import (
    VALUE_LIMIT,
    describe,
    disk_error,
    is_damage,
    remove_environment,
    reset_environment,
)
from kvtier.tiers.disk_io import DiskIO, map_size_for

__all__ = ["DiskTier", "RestoreReport"]

log = logging.getLogger("kvtier.disk")


@dataclass(frozen=True)
class RestoreReport:
    """What opening an existing folder found.

    ``damaged`` counts index entries dropped: records that failed their checks, and entries on pages that
    could not be read (``unreadable`` of them). ``rebuilt`` says the environment itself was damaged and was
    rebuilt from what could be read (or, when nothing could, made anew).
    """

    restored: int  # blocks put back into the index
    damaged: int  # index entries dropped (removed from the folder)
    foreign: int  # blocks of another block geometry (kept, never served here)
    seconds: float
    unreadable: int = 0  # damaged pages met while reading the index
    rebuilt: bool = False


class DiskTier:
    """The disk tier of one :class:`kvtier.Store`: folder, writer thread, restore, probes and reads."""

    def __init__(self, core: Any, config: DiskConfig, block_size: int, block_bytes: int) -> None:
        self._core = core
        self.config = config
        self.path = os.fspath(config.path)
        self._block_size = block_size
        self._block_bytes = block_bytes
        if config.map_size is not None:  # the caller's size, kept: a full map evicts
            want, limit = config.map_size, config.map_size
        else:  # sized for the capacity, and grown (up to twice that) if the map fills anyway
            want = map_size_for(config.capacity_bytes, block_bytes, config.batch_blocks)
            limit = 2 * want
        # A batch must fit the map after evictions (the blocks being written cannot be evicted), so a
        # small map takes smaller batches: at most a quarter of it per transaction.
        self._batch_blocks = max(1, min(config.batch_blocks, want // (4 * block_bytes)))
        self._rebuilt = False
        try:
            self.io = DiskIO(self.path, map_size=want, max_map_size=limit, sync=config.sync)
        except DiskDamagedError:
            # Our folder (the marker says so), but its environment is too damaged to open: start it anew.
            reset_environment(self.path)
            self._rebuilt = True
            self.io = DiskIO(self.path, map_size=want, max_map_size=limit, sync=config.sync)
        self._rebuilt = self._rebuilt or self.io.salvaged > 0
        self._known_ns: set[bytes] = set()
        # Namespaces registered but not in the folder yet: written by the writer in the same transaction as
        # the first blocks it commits (a namespace without blocks needs no record), never a synced write of
        # their own per registration.
        self._pending_ns: dict[bytes, bytes] = {}
        self._ns_lock = threading.Lock()
        # Keys found damaged here: their delete from the folder may fail (a damaged page), and a probe
        # must not import them again. A block this process writes again leaves the set.
        self._damaged: set[bytes] = set()
        # The tier below (the remote tier's ``demote``): blocks evicted from the folder are handed to it first.
        # None: nothing below, or paused while clear() removes blocks (those are not demoted).
        self.below: Callable[[list[tuple[bytes, bytes, str, int, Any]]], int] | None = None
        self.below_paused = False
        self._writer: threading.Thread | None = None
        self._commit_lock = threading.Lock()
        self.restore_report = RestoreReport(0, 0, 0, 0.0, rebuilt=self._rebuilt)

    # ----------------------------------------------------------------- opening
    def open(
        self, registered: Sequence[tuple[bytes, Namespace]], register: Callable[[Namespace], Any], now: float | None
    ) -> RestoreReport:
        """Records the namespaces the store has (``registered``), registers the folder's (``register``)
        and restores the index. A folder too damaged for that is repaired (rebuilt from what can be read,
        or made anew) when no other process has it open."""
        for attempt in range(2):
            try:
                for key, namespace in registered:
                    self.record_namespace(key, namespace)
                stored = self.stored_namespaces()
                break
            except DiskError as e:
                if attempt or not is_damage(e) or not self._recover():
                    raise
        for namespace in stored.values():
            register(namespace)
        return self.restore(now)

    def _recover(self) -> bool:
        """Rebuilds a damaged folder from what can be read (or anew); False if another process has it open."""
        from kvtier.fsck import check

        if not self.io.try_exclusive():
            return False
        try:
            try:
                check(self.io, repair=True, rebuild=True)
            except Exception as e:  # not even that: start anew (never for a full disk or an I/O error)
                if not is_damage(e):
                    raise
                self.io.close_env()
                remove_environment(self.path)
                self.io.reopen_env()
        finally:
            self.io.shared()
        self._rebuilt = True
        return True

    # ----------------------------------------------------------------- namespaces
    def stored_namespaces(self) -> dict[bytes, Namespace]:
        """Namespaces recorded in the folder with this store's block size, by key."""
        out: dict[bytes, Namespace] = {}
        try:
            with self.io.reading(buffers=True) as r:
                for key, value in r.scan(b"namespaces", errors=[]):
                    if len(value) > VALUE_LIMIT:
                        continue
                    try:
                        d = json.loads(bytes(value))
                        if d.pop("block_size") != self._block_size:
                            continue
                        out[bytes(key)] = Namespace(**d)
                    except (ValueError, TypeError, KeyError, AttributeError):
                        continue  # fsck reports it
        except (self.io.lmdb.Error, OSError) as e:
            raise disk_error(e, self.path, "cannot read the namespaces", DiskReadError) from e
        return out

    def record_namespace(self, key: bytes, namespace: Namespace) -> None:
        """Records the namespace's fields (once), so fsck and later opens can name it: the next commit of
        blocks writes it, in the same transaction (registering a tenant costs no disk write)."""
        with self._ns_lock:
            if key in self._known_ns or key in self._pending_ns:
                return
        value = json.dumps(
            {
                "model": namespace.model,
                "revision": namespace.revision,
                "tokenizer": namespace.tokenizer,
                "kv_dtype": namespace.kv_dtype,
                "kv_layout": namespace.kv_layout,
                "tenant": namespace.tenant,
                "block_size": self._block_size,
            },
            sort_keys=True,
        ).encode()
        with self._ns_lock:
            if key not in self._known_ns:
                self._pending_ns[key] = value

    # ----------------------------------------------------------------- restore
    def restore(self, now: float | None = None) -> RestoreReport:
        """Reads the index (never the payloads) into the core's disk index, dated at ``now``.

        Damaged records are dropped and removed; if pages of the folder cannot be read and no other
        process has it open, the folder is repaired first (``kvtier fsck --repair``), so it keeps working.
        """
        t0 = time.perf_counter()
        records, short, errors = self._read_index()
        if any(is_damage(e) for e in errors) and self._recover():
            records, short, more = self._read_index()
            errors += more
        restored, bad, foreign = self._core.disk_restore(records, time.time(), now)
        bad = list(bad) + short
        if bad:
            try:
                self._delete(bad)
            except Exception:
                pass  # dropped from the index all the same; fsck --repair removes them
        self.restore_report = RestoreReport(
            int(restored), len(bad) + len(errors), int(foreign), time.perf_counter() - t0, len(errors), self._rebuilt
        )
        return self.restore_report

    def _read_index(self) -> tuple[list[tuple[bytes, bytes]], list[bytes], list[BaseException]]:
        """(well-formed (key, record) pairs, malformed keys, errors of unreadable pages)."""
        records: list[tuple[bytes, bytes]] = []
        short: list[bytes] = []
        errors: list[BaseException] = []
        try:
            with self.io.reading(buffers=True) as r:
                for key, value in r.scan(b"index", errors=errors):
                    if len(key) == 32 and len(value) <= VALUE_LIMIT:
                        records.append((key, bytes(value)))
                    else:
                        short.append(key)  # one malformed entry is dropped, never the folder
        except (self.io.lmdb.Error, OSError) as e:
            errors.append(e)
        return records, short, errors

    def import_chain(self, ns: int, tokens: Any, first_block: int, probe: bytes) -> int:
        """Blocks another process stored from ``probe`` (block ``first_block``) on: into the index.

        Returns the blocks imported (0 if ``probe`` is not in the folder, or the folder cannot be read).
        """
        return self._import(
            probe, lambda: [k.tobytes() for k in self._core.chain_keys_from(ns, tokens, first_block + 1, probe)]
        )

    def import_keys(self, keys: Sequence[bytes]) -> int:
        """The leading run of ``keys`` (index keys) that another process stored: into the index."""
        return self._import(keys[0], lambda: list(keys[1:])) if keys else 0

    def _import(self, probe: bytes, following_keys: Callable[[], list[bytes]]) -> int:
        """Imports the index records of ``probe`` and then of ``following_keys()`` up to the first absent one."""
        # Deletes this store queued are not in the folder's snapshot yet, or are: the generation read
        # first lets the core refuse a snapshot older than a delete it committed meanwhile.
        generation = self._core.delete_generation()
        records: list[tuple[bytes, bytes]] = []
        if probe in self._damaged:
            return 0
        try:
            with self.io.reading(buffers=True) as r:
                record = r.get(b"index", [probe])[0]
                if record is None or len(record) > VALUE_LIMIT:
                    return 0
                records.append((probe, bytes(record)))
                following = following_keys()
                for key, rec in zip(following, r.get_each(b"index", following)):
                    bad = rec is None or isinstance(rec, BaseException) or len(rec) > VALUE_LIMIT
                    if bad or key in self._damaged:
                        break
                    records.append((key, bytes(rec)))
        except (self.io.lmdb.Error, OSError):
            return 0  # a miss; loads and fsck find the damage
        restored, _bad, _foreign = self._core.disk_restore(records, time.time(), None, generation)
        return int(restored)

    # ----------------------------------------------------------------- reads
    def read(self, out: Any, reads: Sequence[tuple[int, bytes, int]]) -> tuple[int | None, list[bytes], list[bytes]]:
        """Copies the listed blocks from the folder into ``out``, verifying each checksum.

        Returns (first bad block or None, corrupt keys, missing keys). A block whose page cannot be read
        is corrupt; when the folder cannot be read at all, nothing is served and nothing is dropped.
        """
        corrupt: list[bytes] = []
        missing: list[bytes] = []
        first_bad: int | None = None
        keys = [key for _b, key, _c in reads]
        try:
            with self.io.reading(buffers=True) as r:
                present = []
                for (block, key, checksum), view in zip(reads, r.get_each(b"blocks", keys)):
                    if view is None or isinstance(view, BaseException):
                        (missing if view is None else corrupt).append(key)
                        first_bad = block if first_bad is None else min(first_bad, block)
                    else:
                        present.append((block, view, checksum))
                oks = _core.copy_verified(out, self._block_bytes, present)
                for (block, _view, _c), ok in zip(present, oks):
                    if not ok:
                        first_bad = block if first_bad is None else min(first_bad, block)
                by_block = {block: key for block, key, _c in reads}
                corrupt += [by_block[b] for (b, _v, _c), ok in zip(present, oks) if not ok]
                del present
            self._damaged.update(corrupt)
        except (self.io.lmdb.Error, OSError):
            return min(b for b, _k, _c in reads), [], []
        return first_bad, corrupt, missing

    def load(
        self,
        pin: Any,
        out: Any,
        planned: int,
        reads: Sequence[tuple[int, bytes, int]],
        now: float | None,
        staging: Callable[[int], Any],
    ) -> int:
        """Reads a pinned load's disk blocks into ``out`` and reports them to the core (which drops the
        bad ones and promotes the good ones). ``staging(nbytes)``: a context manager giving a page-locked
        host buffer, for an ``out`` the reader cannot write into (a tensor's _core.Memory)."""
        good = int(planned)
        corrupt: list[bytes] = []
        missing: list[bytes] = []
        promote = self.config.promote
        if reads and isinstance(out, _core.Memory):
            with staging(len(reads) * self._block_bytes) as staged:
                staged_blocks = [block for block, _key, _crc in reads]
                first, corrupt, missing = self.read(staged, [(k, key, crc) for k, (_b, key, crc) in enumerate(reads)])
                good = good if first is None else staged_blocks[first]
                return int(
                    self._core.disk_finish_load(pin, out, good, corrupt, missing, promote, now, staged, staged_blocks)
                )
        if reads:
            first_bad, corrupt, missing = self.read(out, reads)
            if first_bad is not None:
                good = first_bad
        return int(self._core.disk_finish_load(pin, out, good, corrupt, missing, promote, now))

    # ----------------------------------------------------------------- writer
    def start_writer(self) -> None:
        self._writer = threading.Thread(target=self._writer_loop, name=f"kvtier-disk-writer:{self.path}", daemon=True)
        self._writer.start()

    def _writer_loop(self) -> None:
        while not self._core.disk_wait(0.25):
            self.drain(one_batch=True)

    def drain(self, one_batch: bool = False) -> None:
        """Commits queued writes on the calling thread (the writer thread, or a thread in flush())."""
        core = self._core
        with self._commit_lock:  # one batch in flight at a time, whoever commits it
            while True:
                closed, writes, deletes = core.disk_take(self._batch_blocks, time.time())
                if closed or (not writes and not deletes):
                    return
                try:
                    self._commit(writes, deletes)
                except BaseException as e:  # keep serving: the queue must never stall on a failed batch
                    core.disk_finish(False, describe(e, self.path))  # kept queued; flush() reports it
                else:
                    core.disk_finish(True, "")
                if one_batch:
                    return

    def _commit(self, writes: list[tuple[bytes, bytes, memoryview]], deletes: list[bytes]) -> None:
        lmdb = self.io.lmdb
        for _attempt in range(16):
            try:
                with self._ns_lock:
                    namespaces = list(self._pending_ns.items())
                with self.io.writing() as w:
                    if namespaces:  # before any block that names them
                        w.put(b"namespaces", namespaces, overwrite=False)
                    self._demote(w, deletes)
                    w.delete((b"index", b"blocks"), deletes)
                    # Payloads first, then the small records: each payload takes a contiguous run of
                    # overflow pages, and keeping the records' leaf pages out of those runs keeps the
                    # free space contiguous after deletes (LMDB searches its free list for runs).
                    w.put(b"blocks", [(key, payload) for key, _record, payload in writes])
                    w.put(b"index", [(key, record) for key, record, _payload in writes])
                if self._damaged:
                    self._damaged.difference_update(key for key, _r, _p in writes)
                with self._ns_lock:
                    for key, _value in namespaces:
                        self._known_ns.add(key)
                        self._pending_ns.pop(key, None)
                return
            except lmdb.MapFullError:
                if self.io.grow():  # room on the disk: a larger map, same blocks
                    continue
                # The map is at its limit: evict committed blocks and retry. LMDB reuses the pages a
                # transaction frees only in later transactions, so the deletes commit on their own
                # first, followed by one more small commit.
                more = self._core.disk_make_room(max(2 * len(writes), 1))
                if not more and not deletes:
                    raise
                self._delete(list(deletes) + list(more))
                with self.io.writing() as w:
                    w.put(b"meta", [(b"last_eviction", repr(time.time()).encode())])
                deletes = []
        raise DiskWriteError("the LMDB map stays full after evicting; raise DiskConfig.map_size")

    def _delete(self, keys: Sequence[bytes]) -> None:
        with self.io.writing() as w:
            self._demote(w, keys)
            w.delete((b"index", b"blocks"), keys)

    def _demote(self, w: Any, keys: Sequence[bytes]) -> None:
        """Hands the blocks about to be deleted (evicted or expired by the core) to the tier below, read in the
        deleting transaction: each whose payload matches its record's checksum (a damaged or absent one is not
        passed on). A failure here is logged and never fails the delete."""
        below = self.below
        if below is None or self.below_paused or not keys:
            return
        try:
            records = w.get(b"index", keys)
            payloads = w.get(b"blocks", keys)
            blocks = []
            for key, record, payload in zip(keys, records, payloads):
                if record is None or payload is None or len(payload) != self._block_bytes:
                    continue
                rec = _core.decode_record(bytes(key), bytes(record))
                if rec is None or not rec["key_ok"] or _core.block_checksum(payload) != rec["checksum"]:
                    continue
                blocks.append((rec["namespace"], bytes(key), rec["session"], 0, payload))
            if blocks:
                below(blocks)
        except Exception:  # the deletes go on: a block not demoted is one the tier below can recompute
            log.exception("kvtier disk tier %s: handing evicted blocks to the remote tier failed", self.path)

    # ----------------------------------------------------------------- flush, close
    def flush(self, timeout: float | None, host: bool) -> None:
        """Commits every queued block (retrying those that failed before); raises DiskWriteError for
        blocks still not persisted, TimeoutError after ``timeout`` seconds."""
        core = self._core
        if host:
            core.disk_persist(1 << 62)
        # The calling thread commits what is queued itself (no hand-off to the writer thread, which
        # keeps draining inserts in the background), then the core puts the failed writes back in the
        # queue and waits for the writer thread to retry them.
        self.drain()
        done, errors = core.disk_flush(None if timeout is None else float(timeout), False)
        if errors:
            raise DiskWriteError(f"disk tier {self.path}: {errors}")
        if not done:
            if core.closed:
                raise StoreClosedError("the store is closed")
            raise TimeoutError(f"flush: writes still queued after {timeout} s")

    def shutdown(self) -> None:
        """Commits what is queued (bounded wait), closes the core, stops the writer and closes the folder:
        the store's finalizer (also at interpreter exit). Runs once."""
        if not self._core.closed:
            self._core.disk_flush(60.0)
            self._core.close()
        self.close()

    def close(self) -> None:
        """Stops the writer (the core must be closed first, which wakes it) and closes the folder."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        self.io.close()

