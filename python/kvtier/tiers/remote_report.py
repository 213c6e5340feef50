"""``kvtier remote URL``: what a fleet's remote tier holds, per namespace (an operator's view of the server).

Walks every block key (``SCAN``, on every node of a cluster) and reads each value's header only (``GETRANGE`` of the
first 56 bytes, pipelined 1,000 keys a round trip): blocks, payload bytes, the oldest and newest write per
namespace, and values that are not kvtier blocks (``malformed``: loads treat them as corrupt).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from kvtier.tiers.remote_io import PREFIX, VALUE_HEADER, RemoteIO, decode_header

__all__ = ["NamespaceUsage", "RemoteReport", "survey"]

_BATCH = 1000


@dataclass
class NamespaceUsage:
    namespace: str  # the namespace key, 64 hex digits
    fields: dict[str, Any] | None  # model, tenant, ... as the first store that wrote it recorded them
    blocks: int = 0
    bytes: int = 0  # payload bytes
    oldest: float | None = None  # write time of the oldest block, seconds since the Unix epoch
    newest: float | None = None
    malformed: int = 0  # values that are not kvtier blocks (cut short, foreign)


@dataclass
class RemoteReport:
    url: str
    namespaces: list[NamespaceUsage] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def blocks(self) -> int:
        return sum(n.blocks for n in self.namespaces)

    @property
    def bytes(self) -> int:
        return sum(n.bytes for n in self.namespaces)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "blocks": self.blocks, "bytes": self.bytes, "seconds": self.seconds,
                "namespaces": [asdict(n) for n in self.namespaces]}

    def text(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        lines = [f"{self.url}: {self.blocks} blocks, {_size(self.bytes)} in {len(self.namespaces)} namespaces"]
        for n in self.namespaces:
            f = n.fields or {}
            name = f.get("model", "(no record)") + (f" tenant={f['tenant']!r}" if f.get("tenant") else "")
            age = "-" if n.oldest is None else _age(now - n.oldest)
            lines.append(
                f"  {n.namespace[:16]}  {name}: {n.blocks} blocks, {_size(n.bytes)}, oldest written {age} ago"
                + (f", {n.malformed} malformed" if n.malformed else "")
            )
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def survey(url: str, timeout_s: float = 5.0) -> RemoteReport:
    """Counts the server's kvtier blocks per namespace. Raises RemoteUnavailableError if it cannot be read."""
    t0 = time.perf_counter()
    io = RemoteIO(url, timeout_s)
    try:
        usage: dict[bytes, NamespaceUsage] = {}
        batch: list[bytes] = []

        def account(keys: list[bytes]) -> None:
            def build(p: Any) -> None:
                for k in keys:
                    p.getrange(k, 0, VALUE_HEADER - 1)
                    p.strlen(k)

            out = io.pipeline("survey", len(keys), build)
            for k, head, length in zip(keys, out[0::2], out[1::2]):
                ns = k[len(PREFIX) : len(PREFIX) + 64]
                u = usage.get(ns)
                if u is None:
                    u = usage[ns] = NamespaceUsage(ns.decode(), None)
                h = decode_header(head)
                if not length:
                    continue  # expired between the scan and the read
                if h is None or h[3].hex().encode() != k.rpartition(b":")[2] or length != VALUE_HEADER + h[1]:
                    u.malformed += 1
                    continue
                u.blocks += 1
                u.bytes += h[1]
                u.oldest = h[2] if u.oldest is None else min(u.oldest, h[2])
                u.newest = h[2] if u.newest is None else max(u.newest, h[2])

        for key in io.scan(PREFIX + b"*:b:*"):
            batch.append(key)
            if len(batch) >= _BATCH:
                account(batch)
                batch = []
        if batch:
            account(batch)
        metas = list(io.scan(PREFIX + b"*:meta"))

        def get_meta(p: Any) -> None:
            for k in metas:
                p.get(k)

        values = io.pipeline("survey", len(metas), get_meta) if metas else []
        for k, v in zip(metas, values):
            ns = k[len(PREFIX) : len(PREFIX) + 64]
            try:
                fields = json.loads(v) if v is not None else None
            except ValueError:
                fields = None
            if ns in usage:
                usage[ns].fields = fields
        rows = sorted((u for u in usage.values() if u.blocks or u.malformed), key=lambda u: -u.bytes)
        return RemoteReport(io.display_url, rows, time.perf_counter() - t0)
    finally:
        io.close()
