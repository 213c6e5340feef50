"""The disk tier's folder: private, never redirected, kvtier's own, and mended before LMDB maps it.

- **A private folder that cannot be redirected.** The folder is made 0700 and its files 0600 whatever
  the umask; a folder owned by another user, or writable by group or others, is refused; a symlink (or
  a hard link, or anything but a plain file of ours) planted as one of the folder's files is refused and
  never followed (the files are created with ``O_NOFOLLOW`` before LMDB opens them).
- **Identity.** A marker file, ``kvtier-format``, records the format version. A folder without it is
  taken only if it is empty (a new folder) or is a kvtier folder of this format made before markers
  existed (its ``meta`` database says so: the marker is then added). Another application's LMDB
  environment, another format, and any other non-empty folder are refused with a
  :class:`~kvtier.errors.DiskFormatError` and left as they were.
- **Damage LMDB cannot survive** (a bad meta page, a file shorter than its meta says) is mended before
  LMDB maps the file. LMDB follows page numbers and node offsets without checking them, so a damaged one
  crashes the reading process (SIGBUS, SIGSEGV): every branch and leaf page is checked first
  (:func:`walk_pages`, csrc/tiers/lmdb_pages.h) and a folder that fails is rebuilt from the records
  reachable through sound pages (:func:`salvage`). An environment that does not open at all is removed (:func:`reset_environment`) or
  rebuilt from what can be read (:func:`rebuild`), only by a process that has the folder to itself.
- **Errors.** :func:`disk_error` turns every LMDB (and OS) error into a :class:`~kvtier.errors.DiskError`
  subclass with one line that says what failed; a disk that filled up says "No space left on device".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import stat
from collections.abc import Iterable, Iterator
from typing import Any

from kvtier import _core
from kvtier.errors import (
    DiskBusyError,
    DiskDamagedError,
    DiskError,
    DiskFormatError,
    DiskPermissionError,
    InvalidArgumentError,
)

__all__ = [
    "DBS",
    "FILES",
    "FORMAT",
    "MARKER",
    "PAGE",
    "VALUE_LIMIT",
    "check_folder",
    "claim_folder",
    "describe",
    "disk_error",
    "import_lmdb",
    "is_damage",
    "mend_file_size",
    "open_nofollow",
    "rebuild",
    "remove_environment",
    "reset_environment",
    "salvage",
    "walk_pages",
]

FORMAT = b"kvtier-disk 1"
MARKER = "kvtier-format"  # holds FORMAT + b"\n"
DBS = (b"meta", b"namespaces", b"index", b"blocks")
FILES = ("data.mdb", "lock.mdb")
_REBUILD = ".kvtier-rebuild"  # a rebuild in progress (removed when done, or by the next rebuild)

PAGE = 4096  # LMDB's page size on the platforms kvtier runs on (env.stat()["psize"] checks it)
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
    if is_damage(e):
        return f"the folder is damaged ({text}); run kvtier fsck --repair", None
    return text, code


def is_damage(e: BaseException) -> bool:
    """Whether ``e`` says the folder's data is damaged (not a full disk, a permission or an I/O error): only
    then may kvtier rebuild or remove what it cannot read."""
    if isinstance(e, DiskDamagedError):
        return True
    if isinstance(e, DiskError) and e.__cause__ is not None:
        return is_damage(e.__cause__)
    lmdb = import_lmdb()
    damage = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadValsizeError)
    return isinstance(e, damage) or (isinstance(e, lmdb.IncompatibleError) and "MDB_INCOMPATIBLE" in str(e))


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
    if is_damage(e) and issubclass(DiskDamagedError, kind):
        kind = DiskDamagedError
    err = kind(f"disk folder {path}: {doing}: {text}")
    err.errno = code
    return err


def describe(e: BaseException, path: str) -> str:
    """The cause of ``e`` in one short line (for the write queue's error report)."""
    if isinstance(e, DiskError):
        return str(e).rsplit(": ", 1)[-1]
    return _cause(e, path)[0]


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


def open_nofollow(path: str, flags: int, *, create: bool) -> int:
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
        fd = open_nofollow(marker, os.O_RDONLY, create=False)
    except DiskError as e:
        if isinstance(e.__cause__, FileNotFoundError) or not os.path.lexists(marker):
            return None
        raise
    try:
        return os.read(fd, 256).rstrip(b"\n")
    finally:
        os.close(fd)


def _write_marker(path: str) -> None:
    fd = open_nofollow(os.path.join(path, MARKER), os.O_WRONLY | os.O_TRUNC, create=True)
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
    try:
        others = sorted(n for n in os.listdir(path) if n not in (*FILES, _REBUILD))
    except OSError as e:
        raise disk_error(e, path, "cannot list the folder") from e
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
    for name in FILES:  # before LMDB reads them
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


_META_MAGIC = 0xBEEFC0DE
_P_META = 0x08


def _metas(head: bytes, psize: int) -> list[tuple[int, int, int, int, int] | None]:
    """(txnid, last page, page size, free database root, main database root) of LMDB's two meta pages, None
    for one that is not valid.

    Layout (lmdb.h, 64-bit): page header 16 bytes (flags at 10); MDB_meta: magic at 16, version at 20,
    the free database's MDB_db at 40 (md_pad, the page size, at 40; md_root at 80), the main database's at
    88 (md_root at 128), last page at 136, txnid at 144."""
    out: list[tuple[int, int, int, int, int] | None] = []
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
        txnid, last = int.from_bytes(page[144:152], "little"), int.from_bytes(page[136:144], "little")
        out.append((txnid, last, pad, int.from_bytes(page[80:88], "little"), int.from_bytes(page[128:136], "little")))
    return out


def _newest_meta(head: bytes, psize: int) -> tuple[int, int, int, int, int] | None:
    metas = [m for m in _metas(head, psize) if m is not None]
    return max(metas, key=lambda m: m[0]) if metas else None


def _page_size(head: bytes) -> int:
    psize = int.from_bytes(head[40:44], "little") if len(head) >= 44 else 0
    return psize if psize in (4096, 8192, 16384, 32768, 65536) else PAGE


def walk_pages(path: str, *, collect: bool = False) -> tuple[int, int, str, list[tuple[int, bytes, int, int]]]:
    """The structural check of the folder's ``data.mdb`` (``_core.lmdb_walk``, csrc/tiers/lmdb_pages.h): (pages
    checked, damage found, the first damage, and with ``collect`` the records reachable through sound pages as
    (index into DBS, key, value offset, value length)). Only for a folder no other process writes (a writer
    reuses pages under the walk); run after :func:`mend_file_size`."""
    p = os.path.join(path, "data.mdb")
    if not os.path.lexists(p):  # a new folder
        return 0, 0, "", []
    fd = open_nofollow(p, os.O_RDONLY, create=False)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, 0, "", []
        head = os.pread(fd, 2 * 65536, 0)
        psize = _page_size(head)
        newest = _newest_meta(head, psize)
        if newest is None:  # LMDB refuses such a file itself (MDB_INVALID), reading no other page
            return 0, 0, "", []
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as view:
            return _core.lmdb_walk(view, psize, newest[1], newest[3], newest[4], [n.decode() for n in DBS], collect=collect)
    finally:
        os.close(fd)


def salvage(path: str, *, map_size: int) -> tuple[int, str]:
    """Rebuilds the folder from the records reachable through sound pages if :func:`walk_pages` finds damage that
    LMDB would read without checking (it would crash the process: SIGBUS or SIGSEGV). The caller holds the folder
    alone. Returns (damage found, the first damage described); (0, "") when the folder is sound."""
    _pages, damaged, first, _records = walk_pages(path)
    if not damaged:
        return 0, ""
    _pages, damaged, first, records = walk_pages(path, collect=True)
    fd = open_nofollow(os.path.join(path, "data.mdb"), os.O_RDONLY, create=False)
    try:
        size = os.fstat(fd).st_size
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as view:

            def items() -> Iterator[tuple[bytes, bytes, Any]]:
                for db, key, offset, length in records:
                    if DBS[db] == b"meta" and key == b"format":
                        continue  # rebuild() writes this kvtier's own
                    if length <= VALUE_LIMIT or DBS[db] == b"blocks":
                        yield DBS[db], key, view[offset : offset + length]

            rebuild(path, map_size=map_size, items=items())
    finally:
        os.close(fd)
    return damaged, first


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
    fd = open_nofollow(p, os.O_RDWR, create=False)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        head = os.pread(fd, 2 * 65536, 0)
        psize = _page_size(head)
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
    fd = open_nofollow(os.path.join(path, MARKER), os.O_RDONLY, create=False)
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
    for name in FILES:
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
    for name in FILES:
        os.close(open_nofollow(os.path.join(tmp, name), os.O_RDWR, create=True))
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
