"""The remote tier's Redis I/O, in batches: one pipelined round trip per batch.

Nothing else in kvtier talks to the remote server: the tier (:mod:`kvtier.tiers.remote`) and ``kvtier remote``
go through :class:`RemoteIO`. Every batch first calls ``RemoteIO.fault`` (when set) with the operation's name and
size, and whatever it raises is what the operation raises (tests fail the server on purpose with it). Every
error of the client or the connection becomes :class:`kvtier.errors.RemoteUnavailableError` (the server cannot
be reached or answered with an error), so the tier has one exception to handle.

Keys (all under ``kvtier:1:``, the format version; ``NS`` is the namespace key and ``KEY`` the chained block key,
docs/keys.md, both as 64 hex digits)::

    kvtier:1:NS:b:KEY     a block: VALUE_HEADER + payload (below); SET with EX/PX when the config has a TTL
    kvtier:1:NS:meta      JSON of the namespace's fields and block size (no TTL; kvtier remote names tenants by it)
    kvtier:1:{NS}:lru     (namespace_budget_bytes) sorted set of the namespace's blocks: members "NS:b:KEY:nbytes",
                          scored by their last write or read (wall seconds)
    kvtier:1:{NS}:bytes   (namespace_budget_bytes) the payload bytes of that set's members
    kvtier:1:{all}:lru, kvtier:1:{all}:bytes   (capacity_bytes) the same for every namespace together
    (a bound's two keys share a hash tag, so its scripts run on one node of a cluster)

A block's value (little-endian)::

    0   4   magic b"kvr1"
    4   4   payload checksum (kvtier block checksum v1, csrc/core/checksum.h)
    8   8   payload length, bytes
    16  8   write time, seconds since the Unix epoch (f64)
    24  32  the block's chained key (a value found under another key is corrupt)
    56  n   payload
"""

from __future__ import annotations

import importlib
import os
import struct
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kvtier.errors import InvalidArgumentError, RemoteUnavailableError

__all__ = [
    "RemoteIO",
    "FaultHook",
    "VALUE_HEADER",
    "PREFIX",
    "block_key",
    "encode_header",
    "decode_header",
    "parse_url",
    "Parts",
]

FaultHook = Callable[[str, int], None]
PREFIX = b"kvtier:1:"
MAGIC = b"kvr1"
_HEADER = struct.Struct("<4sIQd32s")
VALUE_HEADER = _HEADER.size  # 56 bytes
PASSWORD_ENV = "KVTIER_REDIS_PASSWORD"
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def block_key(ns_key: bytes, key: bytes) -> bytes:
    """The server key of block ``key`` (32 bytes) of namespace ``ns_key`` (32 bytes)."""
    return PREFIX + ns_key.hex().encode() + b":b:" + key.hex().encode()


def ns_prefix(ns_key: bytes) -> bytes:
    return PREFIX + ns_key.hex().encode() + b":"


def encode_header(checksum: int, length: int, wall_time: float, key: bytes) -> bytes:
    return _HEADER.pack(MAGIC, checksum, length, wall_time, key)


def decode_header(value: Any) -> tuple[int, int, float, bytes] | None:
    """(checksum, payload length, write time, key) of a value, or None if it is not a kvtier block value."""
    if value is None or len(value) < VALUE_HEADER:
        return None
    magic, checksum, length, wall, key = _HEADER.unpack_from(value, 0)
    if magic != MAGIC:
        return None
    return checksum, length, wall, key


def parse_url(url: str) -> tuple[str, bool, str | None]:
    """(the URL redis-py takes, cluster?, where the password came from: "url", "env" or None).

    ``redis+cluster://`` and ``rediss+cluster://`` name a seed node of a Redis Cluster. A password in the URL wins;
    otherwise ``$KVTIER_REDIS_PASSWORD`` is used when set. Raises InvalidArgumentError for anything else.
    """
    if not isinstance(url, str):
        raise InvalidArgumentError(f"remote url must be a str, got {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise InvalidArgumentError(
            f"remote url must start with one of {', '.join(s + '://' for s in SCHEMES)}, got {url!r}"
        )
    cluster = parts.scheme.endswith("+cluster")
    scheme = parts.scheme.removesuffix("+cluster")
    if scheme != "unix":
        if not parts.hostname:
            raise InvalidArgumentError(f"remote url must name a host (redis://HOST:PORT/DB), got {url!r}")
        try:
            parts.port
        except ValueError:
            raise InvalidArgumentError(f"remote url has a port that is not a number in [0, 65535]: {url!r}") from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise InvalidArgumentError(f"remote url's path must be a database number (redis://HOST:PORT/0), got {url!r}")
        if cluster and db not in ("", "0"):
            raise InvalidArgumentError(f"a Redis Cluster has only database 0, got {url!r}")
    source = "url" if parts.password else None
    netloc = parts.netloc
    if source is None and os.environ.get(PASSWORD_ENV):
        source = "env"
        user = urllib.parse.quote(parts.username or "", safe="")
        password = urllib.parse.quote(os.environ[PASSWORD_ENV], safe="")
        netloc = f"{user}:{password}@{netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment)), cluster, source


def redacted(url: str) -> str:
    """The URL without its password (for logs and messages)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


class Parts(tuple):  # type: ignore[type-arg]
    """One value sent as several buffers (a block's header, then its payload), without joining them: the command
    packer below writes the bulk string's length and then each part, so a payload goes to the socket from the
    caller's memory."""


class _Packer:
    """redis-py's RESP packer, plus :class:`Parts` values (redis-py sends memoryview chunks as they are)."""

    def __init__(self) -> None:
        rc: Any = importlib.import_module("redis.connection")

        self._encode: Callable[[Any], Any] = rc.Encoder("utf-8", "strict", False).encode
        python = rc.PythonRespSerializer(6000, self._encode)
        # What redis-py itself packs with: hiredis's packer when it is installed (redis[hiredis]).
        self._plain: Any = rc.HiredisRespSerializer(python.pack, self._encode) if rc.HIREDIS_AVAILABLE else python

    def pack(self, *args: Any) -> list[Any]:
        if not any(isinstance(a, Parts) for a in args):
            return list(self._plain.pack(*args))
        out: list[Any] = []
        buff = b"*%d\r\n" % len(args)
        for arg in args:
            if isinstance(arg, Parts):
                # bytes parts join the small buffer; others (the payload) go to the socket as they are
                total = sum(len(p) for p in arg)
                buff += b"$%d\r\n" % total
                for p in arg:
                    if isinstance(p, bytes):
                        buff += p
                    else:
                        out.append(buff)
                        out.append(p if isinstance(p, memoryview) and p.format == "B" else memoryview(p).cast("B"))
                        buff = b""
                buff += b"\r\n"
            else:
                a = self._encode(arg)
                buff += b"$%d\r\n%s\r\n" % (len(a), bytes(a))
        out.append(buff)
        return out


class RemoteIO:
    """One client of the remote server (a connection pool; thread-safe), with batch operations.

    ``timeout_s`` bounds every connect and every reply: a server that is gone costs at most that per batch.
    Creating it never connects (a store starts while the server is down).
    """

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        import redis
        import redis.cluster

        self.url = url
        self.display_url = redacted(url)
        self._redis = redis
        target, self.cluster, self.password_source = parse_url(url)
        self.fault: FaultHook | None = None
        self.round_trips = 0
        opts: dict[str, Any] = dict(
            socket_connect_timeout=timeout_s, socket_timeout=timeout_s, command_packer=_Packer()
        )
        # Parts values go to the socket unjoined on a single server; a cluster pipeline encodes every argument
        # itself first (to find its slot), so values are joined there.
        self.zero_copy = not self.cluster
        if self.cluster:
            self.client: Any = redis.cluster.RedisCluster.from_url(target, **opts)
        else:
            self.client = redis.Redis.from_url(target, **opts)
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)

    def _fault(self, op: str, n: int) -> None:
        if self.fault is not None:
            self.fault(op, n)

    def _run(self, op: str, n: int, build: Callable[[Any], None]) -> list[Any]:
        """Runs one pipeline (one round trip per node); RemoteUnavailableError for any failure."""
        try:
            self._fault(op, n)
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            self.round_trips += 1
            return list(pipe.execute(raise_on_error=True))
        except RemoteUnavailableError:
            raise
        except self._errors as e:
            raise RemoteUnavailableError(f"{self.display_url}: {type(e).__name__}: {e}") from e

    # ----------------------------------------------------------------- batches
    def ping(self) -> None:
        try:
            self._fault("ping", 0)
            self.client.ping()
        except RemoteUnavailableError:
            raise
        except self._errors as e:
            raise RemoteUnavailableError(f"{self.display_url}: {type(e).__name__}: {e}") from e

    def exists(self, keys: Sequence[bytes]) -> list[bool]:
        """Whether each key is on the server, in one round trip."""

        def build(p: Any) -> None:
            for k in keys:
                p.exists(k)

        return [bool(v) for v in self._run("exists", len(keys), build)]

    def get(
        self, keys: Sequence[bytes], ttl_ms: int | None, extra: Callable[[Any], None] | None = None
    ) -> list[bytes | None]:
        """The values of ``keys`` (None where absent), in one round trip; with ``ttl_ms`` each key's TTL restarts
        (a TTL is a maximum idle time); ``extra`` adds commands after them to the same pipeline."""

        def build(p: Any) -> None:
            for k in keys:
                p.get(k)
                if ttl_ms is not None:
                    p.pexpire(k, ttl_ms)
            if extra is not None:
                extra(p)

        out = self._run("read", len(keys), build)
        step = 2 if ttl_ms is not None else 1
        return out[: step * len(keys) : step]

    def set(
        self, items: Sequence[tuple[bytes, Any]], ttl_ms: int | None, extra: Callable[[Any], None] | None = None
    ) -> list[Any]:
        """Stores (key, value) pairs in one round trip; ``extra`` adds commands to the same pipeline, whose replies
        are returned."""

        def build(p: Any) -> None:
            for k, v in items:
                p.set(k, v, px=ttl_ms)
            if extra is not None:
                extra(p)

        return self._run("write", len(items), build)[len(items) :]

    def pipeline(self, op: str, n: int, build: Callable[[Any], None]) -> list[Any]:
        """Any other batch of commands, in one round trip."""
        return self._run(op, n, build)

    def scan(self, match: bytes, count: int = 1000) -> Iterator[bytes]:
        """Every key matching ``match`` (on every node of a cluster)."""
        try:
            self._fault("scan", 0)
            for key in self.client.scan_iter(match=match, count=count):
                yield key
        except RemoteUnavailableError:
            raise
        except self._errors as e:
            raise RemoteUnavailableError(f"{self.display_url}: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        try:
            self.client.close()
        except self._errors:
            pass
