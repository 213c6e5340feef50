"""`kvtier fsck PATH`: checks a disk-tier folder block by block, and with ``repair`` removes the damage.

What is checked, per block (docs/disk.md):

- ``bad-record``: the index record is not a well-formed record.
- ``bad-key``: the record's key is not the chained key of its namespace, parent and tokens.
- ``no-payload``: the index names a block whose payload is missing.
- ``bad-length``: the payload's length differs from the record's.
- ``bad-checksum``: the payload does not match its checksum.
- ``stray-payload``: a payload without an index record.
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
from dataclasses import dataclass, field
from typing import Any

from kvtier import _core
from kvtier.disk import open_dbs, open_env
from kvtier.errors import DiskError

__all__ = ["FsckReport", "fsck"]

DAMAGE = ("bad-record", "bad-key", "no-payload", "bad-length", "bad-checksum", "stray-payload")


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

    def add(self, kind: str, key: bytes) -> None:
        self.problems[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < 5:
            ex.append(key.hex())

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
            lines.append(f"  {kind}: {n}{note}  e.g. {', '.join(k[:16] for k in self.examples.get(kind, []))}")
        if self.removed:
            lines.append(f"  removed: {self.removed} entries")
        return "\n".join(lines)


def _namespace_names(txn: Any, db: Any) -> dict[bytes, str]:
    names: dict[bytes, str] = {}
    for key, value in txn.cursor(db=db):
        try:
            d = json.loads(bytes(value))
            label = d.get("model", "?")
            if d.get("tenant"):
                label += f" tenant={d['tenant']}"
            label += f" block_size={d.get('block_size')}"
        except ValueError:
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

    Safe beside running stores: the check reads in one transaction; repairs are one write transaction
    (a store that has a removed block in its index finds it missing on load and counts it).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DiskError(f"{path} does not exist")
    if not os.path.isdir(path):
        raise DiskError(f"{path} is a file, not a disk-tier folder")
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        raise DiskError(f"{path} is not a kvtier disk folder (no data.mdb)")
    env = open_env(path, map_size=1 << 20, sync=True, readonly=not repair)
    try:
        dbs = open_dbs(env, create=False)
        report = FsckReport(path)
        remove: list[bytes] = []
        with env.begin(buffers=True) as txn:
            names = _namespace_names(txn, dbs[b"namespaces"])
            index_keys: set[bytes] = set()
            records: dict[bytes, dict[str, Any]] = {}
            for key, value in txn.cursor(db=dbs[b"index"]):
                k = bytes(key)
                index_keys.add(k)
                rec = _core.decode_record(k, bytes(value))
                report.blocks += 1
                if rec is None:
                    report.add("bad-record", k)
                    remove.append(k)
                    continue
                if not rec["key_ok"]:
                    report.add("bad-key", k)
                    remove.append(k)
                    continue
                payload = txn.get(k, db=dbs[b"blocks"])
                if payload is None:
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
            for key in txn.cursor(db=dbs[b"blocks"]).iternext(keys=True, values=False):
                k = bytes(key)
                if k not in index_keys:
                    report.add("stray-payload", k)
                    remove.append(k)
            for k in _unreachable(records):
                report.add("unreachable", k)
                if orphans:
                    remove.append(k)
        if repair and remove:
            with env.begin(write=True) as txn:
                for k in remove:
                    txn.delete(k, db=dbs[b"index"])
                    txn.delete(k, db=dbs[b"blocks"])
            report.removed = len(remove)
        return report
    finally:
        env.close()
