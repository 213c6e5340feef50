"""The disk tier's folder and all of its LMDB I/O, in batches.

Nothing else in kvtier calls ``lmdb``: the disk tier (:mod:`kvtier.tiers.disk`) and ``kvtier fsck`` go
through :class:`DiskIO`. What this module owns:

- **A private folder that cannot be redirected.** The folder is made 0700 and its files 0600 whatever
  the umask; a folder owned by another user, or writable by group or others, is refused; a symlink (or
  a hard link, or anything but a plain file of ours) planted as one of the folder's files is refused and
  never followed (the files are created with ``O_NOFOLLOW`` before LMDB opens them).
- **Identity.** A marker file, ``kvtier-format``, records the format version. A folder without it is
  taken only if it is empty (a new folder) or is a kvtier folder of this format made before markers
  existed (its ``meta`` database says so: the marker is then added). Another application's LMDB
  environment, another format, and any other non-empty folder are refused with a
  :class:`~kvtier.errors.DiskFormatError` and left as they were.
- **Map size.** The LMDB map is sized from the capacity with LMDB's per-record overhead
  (:func:`map_size_for`), grown with ``set_mapsize`` when it fills anyway, and re-read when another
  process grew it (``MDB_MAP_RESIZED``).
- **Batches and faults.** Reads, writes, deletes and commits are batches (:class:`ReadBatch`,
  :class:`WriteBatch`); before each, ``DiskIO.fault`` (when set) is called with the operation's name
  and batch size, and whatever it raises is what the operation raises: tests fail writes, reads and
  commits at chosen points through it.
- **Errors.** :func:`disk_error` turns every LMDB (and OS) error into a :class:`~kvtier.errors.DiskError`
  subclass with one line that says what failed; a disk that filled up says "No space left on device".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from kvtier.errors import DiskBusyError, DiskError, DiskFormatError, DiskPermissionError, DiskReadError, InvalidArgumentError

__all__ = [
    "DBS",
    "DiskIO",
    "FORMAT",
    "FaultHook",
    "MARKER",
    "VALUE_LIMIT",
    "ReadBatch",
    "WriteBatch",
    "check_folder",
    "claim_folder",
    "describe",
    "disk_error",
    "import_lmdb",
    "map_size_for",
    "mend_file_size",
    "rebuild",
    "remove_environment",
    "reset_environment",
]

FORMAT = b"kvtier-disk 1"
MARKER = "kvtier-format"  # holds FORMAT + b"\n"
DBS = (b"meta", b"namespaces", b"index", b"blocks")
_FILES = ("data.mdb", "lock.mdb")
_REBUILD = ".kvtier-rebuild"  # a rebuild in progress (removed when done, or by the next rebuild)

# Called before every batch operation with its name ("read", "write", "delete", "commit") and its size in
# entries; an exception it raises is what the operation raises (tests fail the disk on purpose with it).
FaultHook = Callable[[str, int], None]

_PAGE = 4096  # LMDB's page size on the platforms kvtier runs on (env.stat()["psize"] checks it)
_NODE = 8 + 2  # an LMDB leaf node's header plus its slot in the page's offset table, bytes
_RECORD_MAX = 96 + 4 * 1024 + 256  # an index record: header, up to 1024 words, a session name
# Index and namespace values are far smaller; a longer one is a damaged length field, and copying it
# could read past the mapped file. Checked on the zero-copy view before any byte is read.
VALUE_LIMIT = 1 << 20


def import_lmdb() -> Any:
    try:
        import lmdb
    except ImportError as e:  # pragma: no cover - lmdb is a dependency
        raise DiskError("the disk tier needs the 'lmdb' package: pip install lmdb") from e
    return lmdb


# --------------------------------------------------------------------------- errors
def _cause(e: BaseException, path: str) -> tuple[str, int | None]:
    """(one line saying what went wrong, errno or None)."""
    lmdb = import_lmdb()
    if isinstance(e, lmdb.MapFullError):
        return "the LMDB map is full", errno.ENOSPC
    if isinstance(e, OSError) and e.errno is not None:
        return os.strerror(e.errno), e.errno
    text = str(e).split(": ", 1)[-1] if str(e) else type(e).__name__
    code = {"Input/output error": errno.EIO, "No space left on device": errno.ENOSPC}.get(text)
    if code in (errno.EIO, errno.ENOSPC):  # LMDB reports a short write as EIO: say why it was short
        if _disk_nearly_full(path):
            return os.strerror(errno.ENOSPC), errno.ENOSPC
        if _file_limit_reached(path):
            return f"{os.strerror(errno.EFBIG)} (the process's file size limit, ulimit -f)", errno.EFBIG
    if isinstance(e, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadValsizeError)):
        return f"the folder is damaged ({text}); run kvtier fsck --repair", None
    return text, code


def _disk_nearly_full(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 4 << 20


def _file_limit_reached(path: str) -> bool:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if soft == resource.RLIM_INFINITY:
        return False
    try:
        return os.path.getsize(os.path.join(path, "data.mdb")) + (1 << 20) > soft
    except OSError:
        return False


def disk_error(e: BaseException, path: str, doing: str, kind: type[DiskError] = DiskError) -> DiskError:
    """A kvtier error for ``e`` (an LMDB or OS error) met while ``doing`` something with folder ``path``."""
    if isinstance(e, DiskError):
        return e
    text, code = _cause(e, path)
    err = kind(f"disk folder {path}: {doing}: {text}")
    err.errno = code  # type: ignore[misc]
    return err


def describe(e: BaseException, path: str) -> str:
    """The cause of ``e`` in one short line (for the write queue's error report)."""
    if isinstance(e, DiskError):
        return str(e).rsplit(": ", 1)[-1]
    return _cause(e, path)[0]


# --------------------------------------------------------------------------- map size
def map_size_for(capacity_bytes: int, block_bytes: int, batch_blocks: int, page: int = _PAGE) -> int:
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


# --------------------------------------------------------------------------- the folder
def _refuse_link(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise DiskPermissionError(
            f"disk folder file {path} is a symbolic link: kvtier never follows links in its folder; remove it"
        )
    if not stat.S_ISREG(st.st_mode):
        raise DiskPermissionError(f"disk folder file {path} is not a regular file; remove it")
    if st.st_nlink > 1:
        raise DiskPermissionError(f"disk folder file {path} has other hard links; remove it (kvtier recreates it)")
    if st.st_uid != os.geteuid():
        raise DiskPermissionError(
            f"disk folder file {path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}); remove it"
        )


def _open_nofollow(path: str, flags: int, *, create: bool) -> int:
    """An fd of ``path`` (made 0600), never through a link; a link or a foreign file raises."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        _refuse_link(path, st)
    if create:
        flags |= os.O_CREAT
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DiskPermissionError(
                f"disk folder file {path} is a symbolic link: kvtier never follows links in its folder; remove it"
            ) from None
        raise disk_error(e, os.path.dirname(path), f"cannot open {os.path.basename(path)}") from e
    try:
        _refuse_link(path, os.fstat(fd))
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_folder(path: str, *, create: bool) -> None:
    """Creates ``path`` (0700) if asked and missing; refuses a folder anyone else could write or redirect."""
    if "\0" in path:
        raise InvalidArgumentError(f"disk path must not contain a NUL character, got {path!r}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise DiskError(f"disk path {path} is a file, not a folder")
    if not os.path.isdir(path):
        if not create:
            raise InvalidArgumentError(f"{path} is not a kvtier disk folder (no such directory)")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as e:
            raise disk_error(e, path, "cannot create the folder") from e
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        raise DiskPermissionError(
            f"disk folder {path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}): its blocks "
            "hold prompts; use a folder of your own"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise DiskPermissionError(
            f"disk folder {path} is writable by group or others (mode {mode:o}): another user could plant files "
            f"in it; run chmod 700 {path}"
        )
    if mode != 0o700 and create:
        os.chmod(path, 0o700)  # its records hold token ids and session names: private


def _read_marker(path: str) -> bytes | None:
    marker = os.path.join(path, MARKER)
    try:
        fd = _open_nofollow(marker, os.O_RDONLY, create=False)
    except DiskError as e:
        if isinstance(e.__cause__, FileNotFoundError) or not os.path.lexists(marker):
            return None
        raise
    try:
        return os.read(fd, 256).rstrip(b"\n")
    finally:
        os.close(fd)


def _write_marker(path: str) -> None:
    fd = _open_nofollow(os.path.join(path, MARKER), os.O_WRONLY | os.O_TRUNC, create=True)
    try:
        os.write(fd, FORMAT + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _legacy_format(path: str) -> str | None:
    """What is wrong with a folder without a marker as a kvtier folder of this format (None: nothing)."""
    lmdb = import_lmdb()
    try:
        env = lmdb.open(path, readonly=True, lock=False, max_dbs=len(DBS), map_size=1 << 20, create=False)
    except lmdb.Error as e:
        return f"LMDB cannot open it: {e}"
    try:
        problems = []
        with env.begin() as txn:
            problems += [f"no {name.decode()!r} database" for name in DBS if txn.get(name) is None]
            has_meta = txn.get(b"meta") is not None
        if has_meta:
            db = env.open_db(b"meta", create=False)
            with env.begin() as txn:
                v = txn.get(b"format", db=db)
            if v is None:
                problems.append("no format record")
            elif bytes(v) != FORMAT:
                problems.append(f"it holds format {bytes(v)!r}")
        return "; ".join(problems) or None
    except lmdb.Error as e:
        return f"not kvtier's databases: {e}"
    finally:
        env.close()


def claim_folder(path: str, *, create: bool) -> None:
    """Makes sure ``path`` is a kvtier folder of this format (marking a new or pre-marker one)."""
    marker = _read_marker(path)
    if marker is not None:
        if marker != FORMAT:
            raise DiskFormatError(f"disk folder {path} holds format {marker!r}; this kvtier reads {FORMAT!r}")
        return
    others = sorted(n for n in os.listdir(path) if n not in (*_FILES, _REBUILD))
    if not os.path.lexists(os.path.join(path, "data.mdb")):
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise DiskFormatError(
                f"disk folder {path} is not empty and not a kvtier disk folder (it holds {shown}): "
                "name a new or empty folder"
            )
        if not create:
            raise DiskFormatError(f"{path} is not a kvtier disk folder (no data.mdb)")
        _write_marker(path)
        return
    for name in _FILES:  # before LMDB reads them
        p = os.path.join(path, name)
        if os.path.lexists(p):
            _refuse_link(p, os.lstat(p))
    what = _legacy_format(path)
    if what is not None:
        raise DiskFormatError(
            f"disk folder {path} is not a kvtier disk folder of this format ({what}; this kvtier reads "
            f"{FORMAT!r}): name a new or empty folder"
        )
    if others:
        raise DiskFormatError(
            f"disk folder {path} holds files kvtier did not write ({', '.join(others[:5])}): remove them"
        )
    if create:
        _write_marker(path)


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


class ReadBatch:
    """Reads inside one read transaction (values are valid until the transaction ends)."""

    def __init__(self, io: DiskIO, txn: Any) -> None:
        self._io = io
        self._txn = txn

    def get(self, db: bytes, keys: Sequence[bytes]) -> list[Any]:
        """The values of ``keys`` (None where absent). Raises what LMDB raises (see ``get_each``)."""
        self._io._fault("read", len(keys))
        d = self._io.dbs[db]
        return [self._txn.get(k, db=d) for k in keys]

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
        check_folder(path, create=create and not readonly)
        claim_folder(path, create=create and not readonly)
        self._lock_fd = _open_nofollow(os.path.join(path, MARKER), os.O_RDONLY, create=False)
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
        if not self.readonly and self.try_exclusive():
            try:
                mend_file_size(self.path)
            finally:
                self.shared()
        lmdb = self.lmdb
        for name in _FILES:  # created here, 0600, never through a planted link
            if not self.readonly or name == "lock.mdb":
                os.close(_open_nofollow(os.path.join(self.path, name), os.O_RDWR, create=True))
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
        return True

    def shared(self) -> None:
        assert self._lock_fd is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def close(self) -> None:
        self.close_env()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


_META_MAGIC = 0xBEEFC0DE
_P_META = 0x08


def _metas(head: bytes, psize: int) -> list[tuple[int, int, int] | None]:
    """(txnid, last page, page size) of LMDB's two meta pages, None for one that is not valid.

    Layout (lmdb.h, 64-bit): page header 16 bytes (flags at 10); MDB_meta: magic at 16, version at 20,
    the free database's md_pad (the page size) at 40, last page at 136, txnid at 144."""
    out: list[tuple[int, int, int] | None] = []
    for i in range(2):
        page = head[i * psize : i * psize + 152]
        if len(page) < 152:
            out.append(None)
            continue
        flags = int.from_bytes(page[10:12], "little")
        magic, version = int.from_bytes(page[16:20], "little"), int.from_bytes(page[20:24], "little")
        if not flags & _P_META or magic != _META_MAGIC or version != 1:
            out.append(None)
            continue
        pad = int.from_bytes(page[40:44], "little")
        out.append((int.from_bytes(page[144:152], "little"), int.from_bytes(page[136:144], "little"), pad))
    return out


def mend_file_size(path: str) -> bool:
    """Makes a damaged ``data.mdb`` safe to map (the caller holds the folder alone). Returns whether it
    changed the file.

    LMDB trusts its meta page: pages it believes exist but lie past the end of the file raise SIGBUS when
    read. A healthy file always covers its meta's last page, so a shorter one is damaged (a flipped byte in
    the meta page, a truncated file): the file is extended with zero pages, which LMDB then reports as
    damaged pages (an error, not a signal). A meta page that is not valid beside one that is, or one that
    claims an absurd size, is replaced by the valid one (LMDB refuses a file with one bad meta page).
    """
    p = os.path.join(path, "data.mdb")
    if not os.path.exists(p):
        return False
    fd = _open_nofollow(p, os.O_RDWR, create=False)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        head = os.pread(fd, 2 * 65536, 0)
        psize = int.from_bytes(head[40:44], "little") if len(head) >= 44 else 0
        if psize not in (4096, 8192, 16384, 32768, 65536):
            psize = _PAGE
        metas = _metas(head, psize)
        limit = max(size * 4, 1 << 30)  # a meta that claims more than this is damaged
        sane = [i for i, m in enumerate(metas) if m is not None and (m[1] + 1) * psize <= limit]
        changed = False
        if len(sane) == 1:  # copy the good meta over the bad one (its page number fixed)
            good, bad = sane[0], 1 - sane[0]
            page = bytearray(head[good * psize : (good + 1) * psize])
            page[0:8] = bad.to_bytes(8, "little")
            os.pwrite(fd, bytes(page), bad * psize)
            changed = True
        if sane:
            newest = max((metas[i] for i in sane), key=lambda m: m[0])  # type: ignore[index]
            need = (newest[1] + 1) * psize  # type: ignore[index]
            if need > size:
                os.ftruncate(fd, need)
                changed = True
        if changed:
            os.fsync(fd)
        return changed
    finally:
        os.close(fd)


def reset_environment(path: str) -> None:
    """Removes the LMDB environment of kvtier folder ``path`` (too damaged to open), if nobody has it open."""
    fd = _open_nofollow(os.path.join(path, MARKER), os.O_RDONLY, create=False)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DiskBusyError(
                f"disk folder {path} is damaged beyond opening and another process has it open: stop the stores "
                "using it, then open it again (or run kvtier fsck --repair)"
            ) from None
        remove_environment(path)
    finally:
        os.close(fd)


def remove_environment(path: str) -> None:
    """Deletes the folder's LMDB files; the caller holds the folder alone."""
    for name in _FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))


def rebuild(path: str, *, map_size: int, items: Iterable[tuple[bytes, bytes, Any]]) -> int:
    """Replaces the folder's environment by a fresh one holding ``items`` ((database, key, value)).

    The caller holds the folder alone (:meth:`DiskIO.try_exclusive`); ``items`` may read the old
    environment (which keeps the old files until the caller reopens it). Returns the entries copied.
    """
    lmdb = import_lmdb()
    tmp = os.path.join(path, _REBUILD)
    if os.path.lexists(tmp):
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    os.mkdir(tmp, 0o700)
    for name in _FILES:
        os.close(_open_nofollow(os.path.join(tmp, name), os.O_RDWR, create=True))
    env = lmdb.open(tmp, map_size=map_size, max_dbs=len(DBS), sync=False, metasync=False, mode=0o600)
    copied = 0
    try:
        dbs = {n: env.open_db(n, create=True) for n in DBS}
        txn = env.begin(write=True)
        try:
            txn.put(b"format", FORMAT, db=dbs[b"meta"])
            for n, (db, key, value) in enumerate(items, 1):
                txn.put(key, value, db=dbs[db])
                copied += 1
                if n % 1024 == 0:  # bounded dirty pages per transaction
                    txn.commit()
                    txn = env.begin(write=True)
        except BaseException:
            txn.abort()
            raise
        txn.commit()
        env.sync(True)
    finally:
        env.close()
    os.replace(os.path.join(tmp, "data.mdb"), os.path.join(path, "data.mdb"))
    os.replace(os.path.join(tmp, "lock.mdb"), os.path.join(path, "lock.mdb"))
    os.rmdir(tmp)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return copied
