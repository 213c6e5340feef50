"""`kvtier fsck PATH`: checks a disk-tier folder block by block, and with ``repair`` removes the damage.

What is checked, per block (docs/disk.md):

- ``bad-record``: the index record is not a well-formed record.
- ``bad-key``: the record's key is not the chained key of its namespace, parent and tokens.
- ``no-payload``: the index names a block whose payload is missing.
- ``bad-length``: the payload's length differs from the record's.
- ``bad-checksum``: the payload does not match its checksum.
- ``stray-payload``: a payload without an index record.
- ``unreadable-page``: a page of the folder LMDB cannot read (its entries are lost).
- ``unreadable-environment``: the LMDB environment does not open at all.
- ``unreachable``: a block whose parent block is not in the folder. A write-back store demotes leaves before
  their parents, so a live store can hold such blocks for a while; after a crash they can never be loaded.
  Reported always, removed only with ``orphans=True``.

Blocks of every namespace are checked; the report counts blocks per namespace (named where the folder
records the namespace). Exit status of the command: 0 no damage, 1 damage (or, with ``--orphans``, unreachable
blocks) removed, 4 damage left.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kvtier import _core
from kvtier.errors import DiskBusyError, DiskDamagedError, DiskError, DiskWriteError
from kvtier.tiers.disk_folder import VALUE_LIMIT, disk_error, reset_environment, walk_pages
from kvtier.tiers.disk_folder import rebuild as rebuild_folder
from kvtier.tiers.disk_io import DiskIO, ReadBatch

__all__ = ["FsckReport", "fsck"]

DAMAGE = (
    "bad-record",
    "bad-key",
    "no-payload",
    "bad-length",
    "bad-checksum",
    "stray-payload",
    "unreadable-page",
    "unreadable-environment",
)


@dataclass
class FsckReport:
    """What :func:`fsck` found (and removed, with ``repair``)."""

    path: str
    blocks: int = 0
    payload_bytes: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    namespaces: dict[str, int] = field(default_factory=dict)  # name -> blocks
    removed: int = 0

    @property
    def damaged(self) -> int:
        return sum(self.problems[k] for k in DAMAGE)

    def add(self, kind: str, key: bytes | str) -> None:
        """Counts a problem; ``key``: the block's key, or (a damaged page, environment) what LMDB said."""
        self.problems[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < 5:
            ex.append(key.hex() if isinstance(key, bytes) else key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "blocks": self.blocks,
            "payload_bytes": self.payload_bytes,
            "damaged": self.damaged,
            "problems": dict(self.problems),
            "examples": self.examples,
            "namespaces": self.namespaces,
            "removed": self.removed,
        }

    def text(self) -> str:
        lines = [f"kvtier fsck {self.path}", f"  blocks: {self.blocks} ({self.payload_bytes / (1 << 20):.1f} MiB of payload)"]
        for name, n in sorted(self.namespaces.items()):
            lines.append(f"    {n:>9} blocks  {name}")
        if not self.problems:
            lines.append("  clean: every record, key, payload and checksum checks out")
        for kind, n in sorted(self.problems.items()):
            note = "" if kind in DAMAGE else " (not damage; --repair --orphans removes them)"
            shown = [k if kind.startswith("unreadable") else k[:16] for k in self.examples.get(kind, [])]
            lines.append(f"  {kind}: {n}{note}  e.g. {', '.join(shown)}")
        if self.removed:
            lines.append(f"  removed: {self.removed} entries")
        return "\n".join(lines)


def _namespace_names(entries: Iterable[tuple[bytes, Any]]) -> dict[bytes, str]:
    names: dict[bytes, str] = {}
    for key, value in entries:
        if len(value) > VALUE_LIMIT:
            continue
        try:
            d = json.loads(bytes(value))
            label = d.get("model", "?")
            if d.get("tenant"):
                label += f" tenant={d['tenant']}"
            label += f" block_size={d.get('block_size')}"
        except (ValueError, AttributeError):
            label = "unreadable namespace record"
        names[bytes(key)] = label
    return names


def _unreachable(records: dict[bytes, dict[str, Any]]) -> list[bytes]:
    """Keys whose chain does not lead back to a first block through good records."""
    reachable: dict[bytes, bool] = {}
    for start in records:
        chain: list[bytes] = []
        seen: set[bytes] = set()
        k: bytes | None = start
        while k is not None and k not in reachable:
            rec = records.get(k)
            if rec is None or k in seen:  # a missing parent (or a forged cycle)
                break
            chain.append(k)
            seen.add(k)
            k = None if rec["first_block"] else rec["parent"]
        ok = k is None or (k in reachable and reachable[k])
        for c in reversed(chain):
            reachable[c] = ok
    return [k for k, ok in reachable.items() if not ok]


def fsck(path: str | os.PathLike[str], *, repair: bool = False, orphans: bool = False) -> FsckReport:
    """Checks the folder; with ``repair`` removes damaged entries (and unreachable ones with ``orphans``).

    Safe beside running stores: the check reads in one transaction; repairs of damaged entries are one
    write transaction (a store that has a removed block in its index finds it missing on load and counts
    it). Damage to the folder's structure (pages LMDB cannot read, an environment that does not open)
    is repaired by rebuilding the environment from what can be read, which needs the folder to itself:
    beside a running store that raises :class:`DiskBusyError`. The folder is opened with its own map
    size, whatever another process grew it to.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DiskError(f"{path} does not exist")
    if not os.path.isdir(path):
        raise DiskError(f"{path} is a file, not a disk-tier folder")
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        raise DiskError(f"{path} is not a kvtier disk folder (no data.mdb)")
    try:
        io = DiskIO(path, map_size=1 << 20, readonly=not repair, create=False)
    except DiskDamagedError as e:  # the environment itself is damaged
        report = FsckReport(path)
        report.add("unreadable-environment", str(e))
        if repair:
            reset_environment(path)
            DiskIO(path, map_size=1 << 20, create=False).close()
            report.removed = 1
        return report
    try:
        return check(io, repair=repair, orphans=orphans)
    finally:
        io.close()


def check(io: DiskIO, *, repair: bool = False, orphans: bool = False, rebuild: bool = False) -> FsckReport:
    """:func:`fsck` of an open folder (the disk tier repairs a folder it opened this way). With ``rebuild``
    a repair rebuilds the environment even if no entry is damaged (damage that only writes meet)."""
    report, remove, keep, errors = _scan(io, orphans)
    if not repair or not (remove or errors or rebuild):
        return report
    if not errors and not rebuild:
        try:
            with io.writing() as w:
                w.delete((b"index", b"blocks"), remove)
        except (io.lmdb.Error, OSError) as e:
            errors.append(e)
        else:
            after, left, _keep, errors = _scan(io, orphans)
            if not left and not errors and _pages_sound(io):
                report.removed = len(remove)
                return report
    # Damage the entries' deletes did not clear (pages LMDB cannot read, keys out of order): rebuild.
    if not io.try_exclusive():
        raise DiskBusyError(
            f"disk folder {io.path} has damaged pages and a running store has it open: stop the stores "
            "using it and run kvtier fsck --repair again (their blocks stay served meanwhile)"
        )
    kept = [0]
    try:
        with io.reading(buffers=True) as r:
            rebuild_folder(io.path, map_size=io.map_size, items=_good_items(r, keep, kept))
        io.close_env()
        io.reopen_env()
    except (io.lmdb.Error, OSError) as e:  # e.g. no room for the rebuilt copy: the folder is as it was
        raise disk_error(e, io.path, "cannot rebuild the folder", DiskWriteError) from e
    finally:
        io.shared()
    report.removed = report.blocks - kept[0] + report.problems["stray-payload"]
    return report


def _pages_sound(io: DiskIO) -> bool:
    """Whether the deletes left every page sound: LMDB's deletes walk a damaged tree without checking it, and
    can leave damage that no entry shows (a later open would find it). Walked only when the folder is held
    alone (a writer reuses pages under the walk); beside a running store the store's own open walked it."""
    held = io.exclusive
    if not held and not io.try_exclusive():
        return True
    try:
        return walk_pages(io.path)[1] == 0
    finally:
        if not held:
            io.shared()


def _good_items(r: ReadBatch, keep: set[bytes], kept: list[int]) -> Iterator[tuple[bytes, bytes, Any]]:
    """What a rebuild copies: the readable namespace records, and the index records and payloads of
    ``keep`` (counted in ``kept[0]``)."""
    for key, value in r.scan(b"namespaces", errors=[]):
        if len(value) <= VALUE_LIMIT:
            yield b"namespaces", key, bytes(value)
    for key in sorted(keep):  # checked by _scan: lengths are sane
        rec, payload = r.get_each(b"index", [key])[0], r.get_each(b"blocks", [key])[0]
        if isinstance(rec, (bytes, memoryview)) and isinstance(payload, (bytes, memoryview)):
            kept[0] += 1
            yield b"index", key, bytes(rec)
            yield b"blocks", key, bytes(payload)


def _scan(io: DiskIO, orphans: bool) -> tuple[FsckReport, list[bytes], set[bytes], list[BaseException]]:
    """(report, keys to remove, keys to keep, errors of unreadable pages)."""
    report = FsckReport(io.path)
    remove: list[bytes] = []
    errors: list[BaseException] = []
    records: dict[bytes, dict[str, Any]] = {}
    try:
        with io.reading(buffers=True) as r:
            names = _namespace_names(r.scan(b"namespaces", errors=errors))
            index_keys: set[bytes] = set()
            for k, value in r.scan(b"index", errors=errors):
                index_keys.add(k)
                report.blocks += 1
                sane = len(k) == 32 and len(value) <= VALUE_LIMIT
                rec = _core.decode_record(k, bytes(value)) if sane else None
                if rec is None:
                    report.add("bad-record", k)
                    remove.append(k)
                    continue
                if not rec["key_ok"]:
                    report.add("bad-key", k)
                    remove.append(k)
                    continue
                payload = r.get_each(b"blocks", [k])[0]
                if payload is None or isinstance(payload, BaseException):
                    report.add("no-payload", k)
                    remove.append(k)
                    continue
                if len(payload) != rec["length"]:
                    report.add("bad-length", k)
                    remove.append(k)
                    continue
                if _core.block_checksum(payload) != rec["checksum"]:
                    report.add("bad-checksum", k)
                    remove.append(k)
                    continue
                report.payload_bytes += len(payload)
                records[k] = rec
                name = names.get(rec["namespace"], f"unrecorded namespace {rec['namespace'].hex()[:16]}")
                report.namespaces[name] = report.namespaces.get(name, 0) + 1
            for k in r.scan(b"blocks", values=False, errors=errors):
                if k not in index_keys:
                    report.add("stray-payload", k)
                    remove.append(k)
    except (io.lmdb.Error, OSError) as e:
        errors.append(e)
    for k in _unreachable(records):
        report.add("unreachable", k)
        if orphans:
            remove.append(k)
            records.pop(k)
    for err in errors:
        report.add("unreadable-page", str(err))
    return report, remove, set(records), errors
