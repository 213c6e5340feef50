"""The disk tier's folder: an LMDB environment driven by a background writer.

The C++ core keeps the disk index (which blocks are on disk, their policy state and checksums), the
write queue and the eviction decisions; this module moves bytes between that queue and the folder
with the `lmdb` package, and reads blocks back for loads. Layout of the folder (docs/disk.md)::

    PATH/data.mdb, PATH/lock.mdb     one LMDB environment, four named databases:
      meta        b"format" -> b"kvtier-disk 1"
      namespaces  namespace key (32 B) -> JSON of the Namespace fields and block size
      index       block key (32 B) -> index record (csrc/tiers/disk_record.h: parent, tokens, checksum, ...)
      blocks      block key (32 B) -> payload (block_bytes)

A block's index record and payload are written in one transaction, so a killed process leaves
either both or neither; a payload is checked against its checksum on every read.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvtier import _core
from kvtier.config import DiskConfig, Namespace
from kvtier.errors import DiskError, InvalidArgumentError

if TYPE_CHECKING:
    import lmdb

__all__ = ["DiskFolder", "RestoreReport", "FORMAT"]

FORMAT = b"kvtier-disk 1"
_DBS = (b"meta", b"namespaces", b"index", b"blocks")


def _import_lmdb() -> Any:
    try:
        import lmdb
    except ImportError as e:  # pragma: no cover - lmdb is a dependency
        raise DiskError("the disk tier needs the 'lmdb' package: pip install lmdb") from e
    return lmdb


@dataclass(frozen=True)
class RestoreReport:
    """What opening an existing folder found."""

    restored: int  # blocks put back into the index
    damaged: int  # index records that failed their checks (removed)
    foreign: int  # blocks of another block geometry (kept, never served here)
    seconds: float


def open_env(path: str, *, map_size: int, sync: bool = True, readonly: bool = False) -> Any:
    """The folder's LMDB environment (created if missing, unless ``readonly``)."""
    lmdb = _import_lmdb()
    if os.path.exists(path) and not os.path.isdir(path):
        raise DiskError(f"disk path {path} is a file, not a folder")
    if not readonly:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise DiskError(f"cannot create the disk folder {path}: {e}") from e
    elif not os.path.isdir(path):
        raise InvalidArgumentError(f"{path} is not a kvtier disk folder (no such directory)")
    try:
        return lmdb.open(
            path,
            map_size=map_size,
            max_dbs=len(_DBS),
            sync=sync,
            metasync=sync,
            writemap=False,  # a full disk is an error from write(), not a SIGBUS
            readahead=False,
            max_readers=256,
            readonly=readonly,
            lock=True,
        )
    except lmdb.Error as e:
        raise DiskError(f"cannot open the disk folder {path}: {e}") from e


def open_dbs(env: Any, *, create: bool) -> dict[bytes, Any]:
    lmdb = _import_lmdb()
    dbs = {}
    for name in _DBS:
        try:
            dbs[name] = env.open_db(name, create=create)
        except lmdb.NotFoundError:
            raise DiskError(f"{env.path()} is not a kvtier disk folder (no {name.decode()!r} database)") from None
        except lmdb.Error as e:  # e.g. a plain key of that name in another application's LMDB folder
            raise DiskError(f"{env.path()} is not a kvtier disk folder ({name.decode()!r}: {e})") from e
    with env.begin(write=create) as txn:
        meta = txn.get(b"format", db=dbs[b"meta"])
        if meta is None and create:
            txn.put(b"format", FORMAT, db=dbs[b"meta"])
        elif meta is None or bytes(meta) != FORMAT:
            found = "no format record" if meta is None else f"format {bytes(meta)!r}"
            raise DiskError(f"{env.path()} holds {found}; this kvtier reads {FORMAT!r}")
    return dbs


class DiskFolder:
    """The disk tier of one :class:`kvtier.Store`: folder, writer thread, reads and restore."""

    def __init__(self, core: Any, config: DiskConfig, block_size: int, block_bytes: int) -> None:
        self._lmdb = _import_lmdb()
        self._core = core
        self.config = config
        self.path = os.fspath(config.path)
        self._block_size = block_size
        self._block_bytes = block_bytes
        # A batch must fit the map after evictions (the blocks being written cannot be evicted), so a
        # small map takes smaller batches: at most a quarter of it per transaction.
        self._batch_blocks = max(1, min(config.batch_blocks, config.lmdb_map_size // (4 * block_bytes)))
        self._env = open_env(self.path, map_size=config.lmdb_map_size, sync=config.sync)
        self._dbs = open_dbs(self._env, create=True)
        self._meta, self._namespaces, self._index, self._blocks = (self._dbs[n] for n in _DBS)
        self._known_ns: set[bytes] = set()
        self._writer: threading.Thread | None = None
        self._commit_lock = threading.Lock()
        self.restore_report = RestoreReport(0, 0, 0, 0.0)

    # ----------------------------------------------------------------- namespaces
    def stored_namespaces(self) -> dict[bytes, Namespace]:
        """Namespaces recorded in the folder with this store's block size, by key."""
        out: dict[bytes, Namespace] = {}
        with self._env.begin() as txn:
            for key, value in txn.cursor(db=self._namespaces):
                try:
                    d = json.loads(bytes(value))
                    if d.pop("block_size") != self._block_size:
                        continue
                    out[bytes(key)] = Namespace(**d)
                except (ValueError, TypeError, KeyError):
                    continue  # fsck reports it
        return out

    def record_namespace(self, key: bytes, namespace: Namespace) -> None:
        """Writes the namespace's fields (once), so fsck and later opens can name it."""
        if key in self._known_ns:
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
        try:
            with self._env.begin(write=True) as txn:
                txn.put(key, value, db=self._namespaces, overwrite=False)
        except self._lmdb.Error as e:
            raise DiskError(f"cannot record a namespace in {self.path}: {e}") from e
        self._known_ns.add(key)

    # ----------------------------------------------------------------- restore
    def restore(self, now: float | None = None) -> RestoreReport:
        """Reads the index (never the payloads) into the core's disk index, dated at ``now``."""
        t0 = time.perf_counter()
        with self._env.begin() as txn:
            records = list(txn.cursor(db=self._index).iternext(keys=True, values=True))
        restored, bad, foreign = self._core.disk_restore(records, time.time(), now)
        if bad:
            self._delete(bad)
        self.restore_report = RestoreReport(restored, len(bad), foreign, time.perf_counter() - t0)
        return self.restore_report

    def import_chain(self, ns: int, tokens: Any, first_block: int, probe: bytes) -> int:
        """Blocks another process stored from ``probe`` (block ``first_block``) on: into the index.

        Returns the blocks imported (0 if ``probe`` is not in the folder).
        """
        # Deletes this store queued are not in the folder's snapshot yet, or are: the generation read
        # first lets the core refuse a snapshot older than a delete it committed meanwhile.
        generation = self._core.delete_generation()
        with self._env.begin() as txn:
            record = txn.get(probe, db=self._index)
            if record is None:
                return 0
            records = [(probe, bytes(record))]
            following = self._core.chain_keys_from(ns, tokens, first_block + 1, probe)
            for key in following:
                k = key.tobytes()
                record = txn.get(k, db=self._index)
                if record is None:
                    break
                records.append((k, bytes(record)))
        restored, _bad, _foreign = self._core.disk_restore(records, time.time(), None, generation)
        return int(restored)

    # ----------------------------------------------------------------- reads
    def read(self, out: Any, reads: Sequence[tuple[int, bytes, int]]) -> tuple[int | None, list[bytes], list[bytes]]:
        """Copies the listed blocks from the folder into ``out``, verifying each checksum.

        Returns (first bad block or None, corrupt keys, missing keys).
        """
        corrupt: list[bytes] = []
        missing: list[bytes] = []
        first_bad: int | None = None
        with self._env.begin(buffers=True) as txn:
            present = []
            for block, key, checksum in reads:
                view = txn.get(key, db=self._blocks)
                if view is None:
                    missing.append(key)
                    first_bad = block if first_bad is None else min(first_bad, block)
                else:
                    present.append((block, view, checksum))
            oks = _core.copy_verified(out, self._block_bytes, present)
            for (block, _view, _c), ok in zip(present, oks):
                if not ok:
                    first_bad = block if first_bad is None else min(first_bad, block)
            keys = {block: key for block, key, _c in reads}
            corrupt = [keys[b] for (b, _v, _c), ok in zip(present, oks) if not ok]
            del present
        return first_bad, corrupt, missing

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
                except self._lmdb.Error as e:
                    core.disk_finish(False, f"{type(e).__name__}: {e}")
                except BaseException as e:  # keep serving: the queue must never stall on a writer bug
                    core.disk_finish(False, f"{type(e).__name__}: {e}")  # flush() raises it as DiskWriteError
                else:
                    core.disk_finish(True, "")
                if one_batch:
                    return

    def _commit(self, writes: list[tuple[bytes, bytes, memoryview]], deletes: list[bytes]) -> None:
        lmdb = self._lmdb
        for _attempt in range(16):
            try:
                with self._env.begin(write=True) as txn:
                    for key in deletes:
                        txn.delete(key, db=self._index)
                        txn.delete(key, db=self._blocks)
                    # Payloads first, then the small records: each payload takes a contiguous run of
                    # overflow pages, and keeping the records' leaf pages out of those runs keeps the
                    # free space contiguous after deletes (LMDB searches its free list for runs).
                    for key, _record, payload in writes:
                        txn.put(key, payload, db=self._blocks)
                    for key, record, _payload in writes:
                        txn.put(key, record, db=self._index)
                return
            except lmdb.MapFullError:
                # The map is full: evict committed blocks and retry. LMDB reuses the pages a transaction
                # frees only in later transactions, so the deletes commit on their own first, followed
                # by one more small commit.
                more = self._core.disk_make_room(max(2 * len(writes), 1))
                if not more and not deletes:
                    raise
                self._delete(list(deletes) + list(more))
                with self._env.begin(write=True) as txn:
                    txn.put(b"last_eviction", repr(time.time()).encode(), db=self._meta)
                deletes = []
        raise DiskError("the LMDB map stays full after evicting; raise DiskConfig.map_size")

    def _delete(self, keys: Sequence[bytes]) -> None:
        with self._env.begin(write=True) as txn:
            for key in keys:
                txn.delete(key, db=self._index)
                txn.delete(key, db=self._blocks)

    def close(self) -> None:
        """Stops the writer (the core must be closed first, which wakes it) and closes the folder."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        self._env.close()
