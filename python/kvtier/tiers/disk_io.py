"""The disk tier's LMDB I/O, in batches, and the size of its map.

Nothing else in kvtier calls ``lmdb`` for the disk tier's data: the tier (:mod:`kvtier.tiers.disk`) and
``kvtier fsck`` go through :class:`DiskIO`, which opens the folder through the checks of
:mod:`kvtier.tiers.disk_folder` (private, never redirected, kvtier's own, mended before LMDB maps it).

- **Batches and faults.** Reads, writes, deletes and commits are batches (:class:`ReadBatch`,
  :class:`WriteBatch`); before each, ``DiskIO.fault`` (when set) is called with the operation's name
  and batch size, and whatever it raises is what the operation raises: tests fail writes, reads and
  commits at chosen points through it.
- **Map size.** The LMDB map is sized from the capacity with LMDB's per-record overhead
  (:func:`map_size_for`), grown with ``set_mapsize`` when it fills anyway, and re-read when another
  process grew it (``MDB_MAP_RESIZED``).
- **One folder, many processes.** Every process that has the folder open holds a shared ``flock`` on its
  marker; work that replaces the environment's files (a rebuild) needs it exclusively (:meth:`DiskIO.try_exclusive`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from kvtier.errors import DiskDamagedError, DiskError, DiskFormatError, DiskReadError, DiskWriteError
from kvtier.tiers.disk_folder import (
    FILES,
    DBS,
    FORMAT,
    MARKER,
    PAGE,
    check_folder,
    claim_folder,
    disk_error,
    import_lmdb,
    mend_file_size,
    open_nofollow,
    salvage,
    walk_pages,
)

__all__ = ["DiskIO", "FaultHook", "ReadBatch", "WriteBatch", "map_size_for"]

# Called before every batch operation with its name ("read", "write", "delete", "commit") and its size in
# entries; an exception it raises is what the operation raises (tests fail the disk on purpose with it).
FaultHook = Callable[[str, int], None]

_NODE = 8 + 2  # an LMDB leaf node's header plus its slot in the page's offset table, bytes
_RECORD_MAX = 96 + 4 * 1024 + 256  # an index record: header, up to 1024 words, a session name


# --------------------------------------------------------------------------- map size
def map_size_for(capacity_bytes: int, block_bytes: int, batch_blocks: int, page: int = PAGE) -> int:
    """An LMDB map that holds ``capacity_bytes`` of ``block_bytes`` payloads, their index records and the
    copy-on-write room of a batch, before it is full.

    Per block: the payload, in a leaf (a node with a 32-byte key, leaves half full at worst after random
    inserts) or, past LMDB's node limit of half a page, in a run of its own overflow pages (whole pages,
    16 bytes of header) plus a leaf node; and an index record in a leaf. Measured here (random 32-byte
    keys, 4 KiB pages): 64 B values take 179 B, 256 B take 498 B, 2,000 B take 4,187 B (an overflow page),
    64 KiB take 69,257 B; this rule gives 212, 596, 4,184 and 69,724. A quarter more covers branch pages
    and free pages that wait for old readers, then room for 4 batches in flight and 64 MiB.
    """
    blocks = max(1, capacity_bytes // block_bytes)
    node = _NODE + 32 + block_bytes
    if node > (page - 16) // 2:  # an overflow run: whole pages
        payload = -(-(block_bytes + 16) // page) * page + 2 * (_NODE + 32 + 8)
    else:
        payload = 2 * node
    record = 2 * (_NODE + 32 + _RECORD_MAX // 8)  # records are mostly a few hundred bytes
    per_block = payload + record
    return int(blocks * per_block * 5 // 4 + 4 * batch_blocks * per_block + (64 << 20))


# --------------------------------------------------------------------------- batches
class _Gate:
    """Transactions share the gate; a map resize (set_mapsize) takes it alone: LMDB remaps the file."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    def acquire_shared(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._shared += 1

    def release_shared(self) -> None:
        with self._cond:
            self._shared -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def _get(io: DiskIO, txn: Any, db: bytes, keys: Sequence[bytes]) -> list[Any]:
    """Values of ``keys`` in ``db`` inside ``txn`` (None where absent), through the "read" fault point."""
    io._fault("read", len(keys))
    d = io.dbs[db]
    return [txn.get(k, db=d) for k in keys]


class ReadBatch:
    """Reads inside one read transaction (values are valid until the transaction ends)."""

    def __init__(self, io: DiskIO, txn: Any) -> None:
        self._io = io
        self._txn = txn

    def get(self, db: bytes, keys: Sequence[bytes]) -> list[Any]:
        """The values of ``keys`` (None where absent). Raises what LMDB raises (see ``get_each``)."""
        return _get(self._io, self._txn, db, keys)

    def get_each(self, db: bytes, keys: Sequence[bytes]) -> list[Any]:
        """Like :meth:`get`, but a key whose read fails (a damaged page) gives its exception, not a value."""
        self._io._fault("read", len(keys))
        d = self._io.dbs[db]
        lmdb = self._io.lmdb
        out: list[Any] = []
        for k in keys:
            try:
                out.append(self._txn.get(k, db=d))
            except lmdb.Error as e:
                out.append(e)
        return out

    def scan(self, db: bytes, *, values: bool = True, errors: list[BaseException] | None = None) -> Iterator[Any]:
        """Every (key, value) (or key) of ``db``. A damaged page ends the scan (its error goes to ``errors``)
        after a few tries to skip past it; without ``errors`` the error is raised."""
        self._io._fault("read", 0)
        lmdb = self._io.lmdb
        cur = self._txn.cursor(db=self._io.dbs[db])
        try:
            ok = cur.first()
        except lmdb.Error as e:
            if errors is None:
                raise
            errors.append(e)
            return
        last = b""
        while ok:
            try:
                key = bytes(cur.key())
                item = (key, cur.value()) if values else key
                last = key
            except lmdb.Error as e:
                if errors is None:
                    raise
                errors.append(e)
                ok = _skip(cur, last, lmdb)
                continue
            yield item
            try:
                ok = cur.next()
            except lmdb.Error as e:
                if errors is None:
                    raise
                errors.append(e)
                ok = _skip(cur, last, lmdb)


def _skip(cur: Any, last: bytes, lmdb: Any) -> bool:
    """Moves ``cur`` past a damaged stretch after key ``last``: to the first readable key at or after
    ``last`` with byte 31, 3, 2, 1 or 0 raised (keys are uniform hashes). False when nothing is left."""
    base = (last or b"\0").ljust(32, b"\0")[:32]
    for pos in (31, 3, 2, 1, 0):
        prefix = int.from_bytes(base[: pos + 1], "big") + 1
        if prefix >= 1 << (8 * (pos + 1)):
            continue
        probe = prefix.to_bytes(pos + 1, "big").ljust(32, b"\0")
        try:
            if not cur.set_range(probe):
                return False
            cur.key()
            return True
        except lmdb.Error:
            continue
    return False


class WriteBatch:
    """Puts and deletes inside one write transaction; :meth:`DiskIO.writing` commits it."""

    def __init__(self, io: DiskIO, txn: Any) -> None:
        self._io = io
        self._txn = txn

    def put(self, db: bytes, items: Iterable[tuple[bytes, Any]], *, overwrite: bool = True) -> None:
        items = list(items)
        self._io._fault("write", len(items))
        d = self._io.dbs[db]
        for key, value in items:
            self._txn.put(key, value, db=d, overwrite=overwrite)

    def get(self, db: bytes, keys: Sequence[bytes]) -> list[Any]:
        """The values of ``keys`` as this transaction sees them (None where absent)."""
        return _get(self._io, self._txn, db, keys)

    def delete(self, dbs: Sequence[bytes], keys: Sequence[bytes]) -> None:
        self._io._fault("delete", len(keys))
        for name in dbs:
            d = self._io.dbs[name]
            for key in keys:
                self._txn.delete(key, db=d)

    def delete_here(self, cursor: Any) -> None:
        """Deletes the entry under ``cursor`` (opened with :meth:`cursor`): works where the key order is damaged."""
        self._io._fault("delete", 1)
        cursor.delete()

    def cursor(self, db: bytes) -> Any:
        return self._txn.cursor(db=self._io.dbs[db])


class DiskIO:
    """One folder's LMDB environment behind batches (see the module docstring)."""

    env: Any  # lmdb.Environment, None once closed
    dbs: dict[bytes, Any]

    def __init__(
        self,
        path: str,
        *,
        map_size: int,
        max_map_size: int | None = None,
        sync: bool = True,
        readonly: bool = False,
        create: bool = True,
    ) -> None:
        self.lmdb = import_lmdb()
        self.path = path
        self.readonly = readonly
        self.fault: FaultHook | None = None
        self._want = map_size
        self._max = max(map_size, max_map_size or map_size)
        self._gate = _Gate()
        self._sync = sync
        self._lock_fd: int | None = None
        self._exclusive = False  # the folder's lock is held exclusively (try_exclusive) until shared()
        self.salvaged = 0  # damage found by the page walk at open, the folder rebuilt around it (0: none)
        check_folder(path, create=create and not readonly)
        claim_folder(path, create=create and not readonly)
        self._lock_fd = open_nofollow(os.path.join(path, MARKER), os.O_RDONLY, create=False)
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # "in use" (a rebuild waits for the folder to itself)
        try:
            self._open_env()
        except BaseException:
            self.close()
            raise

    def close_env(self) -> None:
        """Closes the environment only (a rebuild swaps its files), keeping the folder's lock."""
        env = getattr(self, "env", None)
        if env is not None:
            with self._gate.exclusive():
                env.close()
            self.env = None

    def reopen_env(self) -> None:
        self._open_env()

    def _open_env(self) -> None:
        sync = self._sync
        # Damage LMDB would read without checking is found (and, with the folder to ourselves, mended or
        # salvaged) before LMDB maps the file; a folder another process has open was checked by whoever
        # opened it first, and cannot be walked while that process may be writing.
        held = self._exclusive
        if held or self.try_exclusive():
            try:
                if not self.readonly:
                    mend_file_size(self.path)
                    data = os.path.join(self.path, "data.mdb")
                    map_size = max(self._want, os.path.getsize(data) if os.path.isfile(data) else 0)
                    try:
                        self.salvaged = salvage(self.path, map_size=map_size)[0] or self.salvaged
                    except (self.lmdb.Error, OSError) as e:  # e.g. no room for the rebuilt copy
                        raise disk_error(e, self.path, "cannot rebuild the damaged folder", DiskWriteError) from e
                else:
                    _pages, damaged, first, _records = walk_pages(self.path)
                    if damaged:
                        raise DiskDamagedError(
                            f"disk folder {self.path} has {damaged} damaged pages or references ({first}): "
                            "`kvtier fsck --repair` rebuilds it from what can be read"
                        )
            finally:
                if not held:
                    self.shared()
        lmdb = self.lmdb
        for name in FILES:  # created here, 0600, never through a planted link
            if not self.readonly or name == "lock.mdb":
                os.close(open_nofollow(os.path.join(self.path, name), os.O_RDWR, create=True))
        self.env = None
        try:
            self.env = lmdb.open(
                self.path,
                map_size=self._want,
                max_dbs=len(DBS),
                sync=sync,
                metasync=sync,
                writemap=False,  # a full disk is an error from write(), not a SIGBUS
                readahead=False,
                max_readers=256,
                readonly=self.readonly,
                lock=True,
                mode=0o600,
                create=False,
            )
            self._folder_map_size()  # the folder's own map size, if another process grew it
            if self.env.info()["map_size"] < self._want and not self.readonly:
                self.env.set_mapsize(self._want)
            self.dbs = self._open_dbs()
        except lmdb.Error as e:
            if self.env is not None:
                self.env.close()
            raise disk_error(e, self.path, "cannot open the LMDB environment", DiskReadError) from e
        self.page = int(self.env.stat()["psize"])

    def _open_dbs(self) -> dict[bytes, Any]:
        lmdb = self.lmdb
        dbs = {}
        with self.env.begin() as txn:
            missing = [n for n in DBS if txn.get(n) is None]
        if missing and self.readonly:
            raise DiskFormatError(f"{self.path} is not a kvtier disk folder (no {missing[0].decode()!r} database)")
        for name in DBS:
            try:
                dbs[name] = self.env.open_db(name, create=not self.readonly)
            except lmdb.IncompatibleError as e:  # a plain key of that name
                raise DiskFormatError(f"{self.path} is not a kvtier disk folder ({name.decode()!r}: {e})") from e
        with self.env.begin(write=not self.readonly) as txn:
            meta = txn.get(b"format", db=dbs[b"meta"])
            if meta is None and not self.readonly:
                txn.put(b"format", FORMAT, db=dbs[b"meta"])
            elif meta is not None and bytes(meta) != FORMAT:
                raise DiskFormatError(f"{self.path} holds format {bytes(meta)!r}; this kvtier reads {FORMAT!r}")
        return dbs

    # ------------------------------------------------------------------- transactions
    def _fault(self, op: str, n: int) -> None:
        if self.fault is not None:
            self.fault(op, n)

    def _begin(self, *, write: bool, buffers: bool = False) -> Any:
        """A transaction, with the gate held shared (the caller releases it)."""
        for _attempt in range(8):
            self._gate.acquire_shared()
            try:
                return self.env.begin(write=write, buffers=buffers)
            except self.lmdb.MapResizedError:
                self._gate.release_shared()
                self.adopt_map_size()
            except BaseException:
                self._gate.release_shared()
                raise
        raise DiskError(f"disk folder {self.path}: its map keeps being resized by another process")

    @contextlib.contextmanager
    def reading(self, *, buffers: bool = False) -> Iterator[ReadBatch]:
        txn = self._begin(write=False, buffers=buffers)
        try:
            with txn:
                yield ReadBatch(self, txn)
        finally:
            self._gate.release_shared()

    @contextlib.contextmanager
    def writing(self) -> Iterator[WriteBatch]:
        """One write transaction: committed when the block ends (after the "commit" fault point)."""
        txn = self._begin(write=True)
        try:
            try:
                yield WriteBatch(self, txn)
                self._fault("commit", 0)
            except BaseException:
                txn.abort()
                raise
            txn.commit()
        finally:
            self._gate.release_shared()

    # ------------------------------------------------------------------- map size
    @property
    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def _folder_map_size(self) -> None:
        """Takes the map size the folder records (another process's), unless it cannot be mapped (damage)."""
        try:
            self.env.set_mapsize(0)
        except self.lmdb.Error:
            self.env.set_mapsize(max(self._want, os.path.getsize(os.path.join(self.path, "data.mdb"))))

    def adopt_map_size(self) -> None:
        """Another process grew the map (MDB_MAP_RESIZED): take the folder's size (or ours, if larger)."""
        with self._gate.exclusive():
            self._folder_map_size()
            if self.map_size < self._want:
                self.env.set_mapsize(self._want)

    def grow(self) -> bool:
        """Grows the map by half, up to its limit. False if it is at the limit already."""
        with self._gate.exclusive():
            self._folder_map_size()
            size = self.map_size
            if size >= self._max:
                return False
            self.env.set_mapsize(min(self._max, size + size // 2))
            return True

    # ------------------------------------------------------------------- exclusive work
    def try_exclusive(self) -> bool:
        """Whether no other process has the folder open (then nobody can open it until :meth:`shared`)."""
        assert self._lock_fd is not None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # a failed conversion drops the shared lock (flock(2))
            return False
        self._exclusive = True
        return True

    @property
    def exclusive(self) -> bool:
        """Whether this process holds the folder alone (:meth:`try_exclusive`, until :meth:`shared`)."""
        return self._exclusive

    def shared(self) -> None:
        assert self._lock_fd is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        self._exclusive = False

    def close(self) -> None:
        self.close_env()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


