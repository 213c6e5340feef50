"""The shared remote tier (Redis, Valkey, Redis Cluster): the one place its protocol with the store lives.

The server is the tier's index: a block is on the remote tier when its key is on the server. :class:`RemoteTier`
is all the store sees of it::

    store.py                      RemoteTier                             server (remote_io.py)
    ----------------------------  -------------------------------------  -----------------------------
    match / peek: past the        lookup: EXISTS of the next keys,       one pipelined round trip per
      local tiers' prefix     ->    batch by batch, stop at a miss   ->    batch of lookup_batch keys
    load (remote blocks)      ->  read: GET (+PEXPIRE), verify each  ->  one round trip per batch
                                    header and checksum in C++ while
                                    copying into ``out``; then promote
    insert (new blocks)       ->  queue; writer thread: SET (PX)     ->  one round trip per batch
                                    batches; "through": insert waits
    flush                     ->  wait until the queue is written
    stats / residency         <-  counters; bytes x seconds of the blocks this store wrote

Failure: any error of a batch marks the server unreachable. One line is logged (``kvtier.remote`` logger, WARNING)
per outage; lookups and reads skip the server until the writer thread, which tries every ``retry_s``, reaches it
again (logged once at INFO); queued writes stay queued (up to ``queue_bytes``, the oldest dropped beyond) and are
written then. A store opened while the server is down starts with its local tiers and connects when it comes up.
Keys and values on the server: :mod:`kvtier.tiers.remote_io`; guarantees: docs/remote.md.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvtier import _core
from kvtier.config import Namespace, RemoteConfig
from kvtier.errors import RemoteUnavailableError, RemoteWriteError, StoreClosedError
from kvtier.tiers.remote_io import (
    PREFIX,
    VALUE_HEADER,
    Parts,
    RemoteIO,
    block_key,
    decode_header,
    encode_header,
    ns_prefix,
)

__all__ = ["RemoteTier", "RemoteStats"]

log = logging.getLogger("kvtier.remote")

LOOKUP_BATCH = 1024  # keys per lookup round trip (EXISTS replies are a few bytes each)
_KNOWN = 1 << 18  # keys remembered as on the server (so an insert does not write them again)


@dataclass(frozen=True)
class RemoteStats:
    """Counters of the remote tier since the store was opened (blocks unless the name says bytes).

    ``hits`` are blocks found on the server beyond the local tiers' match (``misses``: full blocks found in no
    tier); ``corrupted`` values failed their header or checksum on a read (never served, deleted);
    ``missing`` were found by a lookup and gone by the read (expired or evicted meanwhile); ``written`` blocks were
    acknowledged by the server; ``write_errors`` block writes failed (each retry counts); ``dropped`` were
    dropped from a full queue while the server was unreachable; ``failures`` counts failed round trips,
    ``reconnects`` the times the server was reached again; ``round_trips`` every pipelined batch sent;
    ``connected`` whether the last round trip succeeded. ``demoted`` blocks reached the writer because a local tier
    evicted them (write-back from the tiers above; those the server holds already are not sent again),
    ``demote_rejected`` were evicted while the demotion queue was full and were lost. ``blocks`` and ``resident_bytes`` are this store's
    blocks on the server by its own account (its acknowledged writes that have not expired, been trimmed or found
    gone); ``kvtier remote URL`` counts the whole server.
    """

    hits: int
    misses: int
    queued: int
    written: int
    bytes_written: int
    bytes_read: int
    promoted: int
    corrupted: int
    missing: int
    write_errors: int
    dropped: int
    demoted: int
    demote_rejected: int
    trimmed: int
    failures: int
    reconnects: int
    round_trips: int
    pending: int
    connected: bool
    blocks: int
    resident_bytes: int
    capacity_bytes: int | None


class _Ticket:
    """What an insert waits for in write-through mode: its blocks written (or failed)."""

    __slots__ = ("left", "failed", "sending", "queued")

    def __init__(self, n: int) -> None:
        self.left = n
        self.queued = n  # blocks the enqueue queued (those known to be on the server or queued are not)
        self.failed = 0
        self.sending = 0  # its blocks in the batch being sent now


@dataclass
class _Write:
    skey: bytes  # the server key
    value: bytes | Parts  # Parts: header + the caller's payload (write-through, while the insert waits)
    key: bytes  # the chained block key
    ns: bytes  # namespace key
    account: tuple[Namespace, str]
    nbytes: int
    ticket: _Ticket | None
    t: float | None  # the insert's time on the caller's clock (None: the store's clock at the acknowledgement)
    score: float  # its recency in the bounds' sets: the insert's wall time, less 1 us per block of the prompt


class _Ledger:
    """Resident bytes x seconds per (namespace, session) of the blocks this store wrote to the server."""

    def __init__(self, ttl_s: float | None) -> None:
        self.ttl = ttl_s
        self.rows: dict[tuple[Namespace, str], list[float]] = {}  # account -> [bytes, byte_seconds, since]
        self.blocks: dict[bytes, tuple[tuple[Namespace, str], int, float]] = {}  # skey -> (account, nbytes, expiry)
        self.heap: list[tuple[float, bytes]] = []

    def _advance(self, row: list[float], t: float) -> None:
        if t > row[2]:
            row[1] += row[0] * (t - row[2])
            row[2] = t

    def add(self, skey: bytes, account: tuple[Namespace, str], nbytes: int, t: float) -> None:
        self.expire(t)
        if skey in self.blocks:
            self.refresh(skey, t)
            return
        row = self.rows.setdefault(account, [0.0, 0.0, t])
        self._advance(row, t)
        row[0] += nbytes
        expiry = math.inf if self.ttl is None else t + self.ttl
        self.blocks[skey] = (account, nbytes, expiry)
        if self.ttl is not None:
            heapq.heappush(self.heap, (expiry, skey))

    def refresh(self, skey: bytes, t: float) -> None:
        entry = self.blocks.get(skey)
        if entry is None or self.ttl is None:
            return
        self.blocks[skey] = (entry[0], entry[1], t + self.ttl)
        heapq.heappush(self.heap, (t + self.ttl, skey))

    def remove(self, skey: bytes, t: float) -> None:
        entry = self.blocks.pop(skey, None)
        if entry is None:
            return
        row = self.rows[entry[0]]
        self._advance(row, t)
        row[0] -= entry[1]

    def expire(self, t: float) -> list[bytes]:
        """Ends the blocks whose TTL ran out by ``t``, each at its expiry instant. Returns their server keys."""
        gone = []
        while self.heap and self.heap[0][0] <= t:
            expiry, skey = heapq.heappop(self.heap)
            entry = self.blocks.get(skey)
            if entry is None or entry[2] != expiry:
                continue  # refreshed or gone
            self.remove(skey, expiry)
            gone.append(skey)
        return gone

    def report(self, t: float) -> list[tuple[Namespace, str, int, float]]:
        self.expire(t)
        out = []
        for (namespace, session), row in self.rows.items():
            self._advance(row, t)
            out.append((namespace, session, int(row[0]), row[1]))
        return out


# A bound's scripts (Lua, atomic on the server; KEYS: the bound's sorted set and byte counter, one hash tag).
# _ADD: ARGV = (score, member, bytes) per block; adds or refreshes each member, counts the bytes of new ones, returns
# the total. _TRIM: ARGV = (limit, cutoff score); drops members scored at or below the cutoff (idle past the TTL: their
# keys expired), then pops the oldest until the total fits; returns the popped members (their keys to delete).
_ADD = """
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
for i = 1, #ARGV, 3 do
  if redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then total = total + tonumber(ARGV[i + 2]) end
end
redis.call('SET', KEYS[2], tostring(total))
return total
"""
_TRIM = """
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
local limit = tonumber(ARGV[1])
local idle = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 100000)
for _, m in ipairs(idle) do
  redis.call('ZREM', KEYS[1], m)
  total = total - tonumber(string.match(m, ':(%d+)$'))
end
local out = {}
while total > limit do
  local p = redis.call('ZPOPMIN', KEYS[1])
  if #p == 0 then total = 0 break end
  total = total - tonumber(string.match(p[1], ':(%d+)$'))
  out[#out + 1] = p[1]
end
if total < 0 then total = 0 end
redis.call('SET', KEYS[2], tostring(total))
return out
"""


def _score(wall: float, block: int) -> float:
    """A block's recency in a bound's set: a prompt's later blocks count as a little older than its earlier ones, so
    the bounds drop a prompt's tail before its head (leaf first: a block is of no use without the blocks before it)."""
    return wall - block * 1e-6


def _delete_each(p: Any, keys: Sequence[bytes]) -> None:
    """One DEL per key (a cluster pipeline refuses a DEL of keys in several slots)."""
    for k in keys:
        p.delete(k)


def _member(skey: bytes, nbytes: int) -> bytes:
    """A block's member in a bound's sorted set: its server key without the prefix, and its payload bytes."""
    return skey[len(PREFIX) :] + b":" + str(nbytes).encode()


class RemoteTier:
    """The remote tier of one :class:`kvtier.Store`: lookups, verified reads, the writer thread, accounting."""

    def __init__(self, core: Any, config: RemoteConfig, block_bytes: int, demotions: bool = False) -> None:
        self._core = core
        self.config = config
        self._block_bytes = block_bytes
        self.io = RemoteIO(config.url, config.timeout_s)
        self.url = self.io.display_url
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._queue: deque[_Write] = deque()
        self._queued_bytes = 0
        self._in_flight = 0
        self._commit = threading.Lock()  # one batch in flight at a time (writer thread or a write-through caller)
        self._closed = False
        self._down_since: float | None = None  # monotonic time of the first failure of this outage
        self._next_try = 0.0
        self._last_error = ""
        self._failed_since_flush = 0
        self._dropped_since_flush = 0
        self._meta: dict[bytes, bytes] = {}  # namespace key -> JSON, to write (SET NX) with the next batch
        self._meta_done: set[bytes] = set()
        self._known: OrderedDict[bytes, None] = OrderedDict()
        self._unsent: dict[bytes, int] = {}  # server key -> its writes queued or in flight (not demoted again)
        self._ledger = _Ledger(config.ttl_s)
        self._c = dict.fromkeys(
            (
                "hits", "misses", "queued", "written", "bytes_written", "bytes_read", "promoted", "corrupted",
                "missing", "write_errors", "dropped", "demoted", "trimmed", "failures", "reconnects",
            ),
            0,
        )
        self._namespaces: dict[bytes, Namespace] = {}  # namespace key -> namespace (the ledger's accounts)
        self._writer = threading.Thread(target=self._writer_loop, name=f"kvtier-remote-writer:{self.url}", daemon=True)
        self._writer.start()
        # With no disk tier, blocks the host tier evicts come here (the core's demotion queue, core/remote.cpp).
        self._demoter: threading.Thread | None = None
        self._rejected_seen = 0  # the core's rejected demotions reported by flush so far
        if demotions:
            self._demoter = threading.Thread(
                target=self._demoter_loop, name=f"kvtier-remote-demoter:{self.url}", daemon=True
            )
            self._demoter.start()

    # ----------------------------------------------------------------- state
    @property
    def available(self) -> bool:
        """Whether lookups and reads go to the server now (not while it is known to be unreachable)."""
        return self._down_since is None

    def _failed(self, e: BaseException) -> None:
        with self._lock:
            self._c["failures"] += 1
            self._last_error = str(e)
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            self._next_try = time.monotonic() + self.config.retry_s
            self._cv.notify_all()
        if first:
            log.warning(
                "kvtier remote tier %s unreachable (%s): serving from local tiers, retrying every %.1f s",
                self.url, e, self.config.retry_s,
            )

    def _reached(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            down = time.monotonic() - self._down_since
            self._down_since = None
            self._c["reconnects"] += 1
            failures = self._c["failures"]
            self._cv.notify_all()
        log.info("kvtier remote tier %s reachable again after %.1f s (%d failed round trips)", self.url, down, failures)

    def record_namespace(self, ns_key: bytes, namespace: Namespace, block_size: int) -> None:
        """Records the namespace's fields on the server (with the next write batch) so ``kvtier remote`` names it."""
        with self._lock:
            self._namespaces[ns_key] = namespace
            if ns_key in self._meta_done or ns_key in self._meta:
                return
            fields = {f: getattr(namespace, f) for f in ("model", "revision", "tokenizer", "kv_dtype", "kv_layout", "tenant")}
            self._meta[ns_key] = json.dumps({**fields, "block_size": block_size}, sort_keys=True).encode()

    # ----------------------------------------------------------------- lookups
    def lookup(self, ns_key: bytes, keys: Sequence[bytes], touch: bool) -> int:
        """How many of ``keys`` (chained keys of consecutive blocks) are on the server, from the first on.

        One round trip per ``LOOKUP_BATCH`` keys, stopping at the batch with the first miss. 0 (no round trip)
        while the server is unreachable."""
        if not keys or not self.available:
            return 0
        found = 0
        try:
            for i in range(0, len(keys), LOOKUP_BATCH):
                chunk = [block_key(ns_key, k) for k in keys[i : i + LOOKUP_BATCH]]
                present = self.io.exists(chunk)
                n = present.index(False) if False in present else len(present)
                found += n
                if n < len(present):
                    break
        except RemoteUnavailableError as e:
            self._failed(e)
            return 0
        if touch:
            with self._lock:
                self._c["hits"] += found
                self._c["misses"] += len(keys) - found
        return found

    def present(self, ns_key: bytes, keys: Sequence[bytes]) -> list[bool]:
        """Per key (blocks that need not be consecutive: lookups by key), whether it is on the server. One round
        trip per ``LOOKUP_BATCH`` keys; nothing is counted. All False (no round trip) while it is unreachable."""
        return self._on_server([block_key(ns_key, k) for k in keys])

    # ----------------------------------------------------------------- reads
    def read(
        self, ns_key: bytes, keys: Sequence[bytes], out: Any, first_block: int, t: float, probe: bool = False
    ) -> int:
        """Copies the blocks of ``keys`` from the server into ``out`` (key i at block ``first_block + i``),
        verifying each; returns how many leading blocks are good (a missing, partial or corrupt value ends it:
        nothing of it or after it is served). Corrupt values are deleted from the server. ``probe``: the keys were
        not looked up first, so an absent key is the end of the prefix (hits and misses are counted here)."""
        if not keys or not self.available:
            return 0
        bb = self._block_bytes
        ttl_ms = self.config.ttl_ms
        good = 0
        corrupt: list[bytes] = []
        try:
            for i in range(0, len(keys), self.config.batch_blocks):
                chunk = list(keys[i : i + self.config.batch_blocks])
                skeys = [block_key(ns_key, k) for k in chunk]
                scopes = self._scopes(ns_key)
                wall = time.time()

                def touch(p: Any, skeys: list[bytes] = skeys, scopes: list[tuple[bytes, bytes, int]] = scopes) -> None:
                    for lru, _counter, _limit in scopes:  # recency for the bounds (only members still there)
                        scores = {_member(s, bb): _score(wall, first_block + i + n) for n, s in enumerate(skeys)}
                        p.zadd(lru, scores, xx=True)

                values = self.io.get(skeys, ttl_ms, touch if scopes else None)
                reads = []
                for j, (key, value) in enumerate(zip(chunk, values)):
                    if value is None:
                        with self._lock:
                            if not probe:  # a lookup found it: gone since (expired, evicted)
                                self._c["missing"] += 1
                            self._ledger.remove(skeys[j], t)
                        break
                    h = decode_header(value)
                    if h is None or h[1] != bb or h[3] != key or len(value) != VALUE_HEADER + bb:
                        corrupt.append(skeys[j])
                        break
                    reads.append((first_block + i + j, memoryview(value)[VALUE_HEADER:], h[0]))
                oks = _core.copy_verified(out, bb, reads) if reads else []
                n = oks.index(False) if False in oks else len(oks)
                if n < len(oks):
                    corrupt.append(skeys[n])
                good += n
                with self._lock:
                    self._c["bytes_read"] += n * bb
                    for s in skeys[:n]:
                        self._ledger.refresh(s, t)
                del reads
                if n < len(chunk):
                    break
            if corrupt:
                with self._lock:
                    self._c["corrupted"] += len(corrupt)
                    for s in corrupt:
                        self._ledger.remove(s, t)
                self.io.pipeline("delete", len(corrupt), lambda p: _delete_each(p, corrupt))
        except RemoteUnavailableError as e:
            self._failed(e)
        if probe:
            with self._lock:
                self._c["hits"] += good
                self._c["misses"] += len(keys) - good
        return good

    def promoted(self, blocks: int) -> None:
        with self._lock:
            self._c["promoted"] += blocks

    def remember(self, ns_key: bytes, keys: Sequence[bytes]) -> None:
        """Records blocks read from the server as on it (:meth:`known`), so inserting them does not write them
        again."""
        with self._lock:
            for k in keys:
                self._known[block_key(ns_key, k)] = None
            while len(self._known) > _KNOWN:
                self._known.popitem(last=False)

    # ----------------------------------------------------------------- writes
    def forget_expired(self) -> None:
        """With a TTL: blocks this store wrote whose TTL ran out are no longer known to be on the server (the
        server expired them), so an insert or a demotion writes them again."""
        if self.config.ttl_s is None:
            return
        t = self._core.clock()
        with self._lock:
            for skey in self._ledger.expire(t):
                self._known.pop(skey, None)

    def known(self, ns_key: bytes, key: bytes, queued: bool = False) -> bool:
        """Whether this store knows the block is on the server (it wrote or read it); with ``queued``, also when a
        write of it is queued or in flight (a block evicted between an insert and its write is queued once)."""
        skey = block_key(ns_key, key)
        with self._lock:
            return skey in self._known or (queued and skey in self._unsent)

    def enqueue(
        self,
        ns_key: bytes,
        account: tuple[Namespace, str],
        keys: Sequence[bytes],
        payloads: Sequence[Any],
        wall: float,
        t: float | None,
        borrow: bool = False,
        positions: Sequence[int] | None = None,
        skip_queued: bool = False,
    ) -> _Ticket:
        """Queues blocks for the writer: ``payloads[i]`` (block_bytes each) under ``keys[i]``. Checksums are made
        here. The values are copied, unless ``borrow``: then the caller must :meth:`wait` for the ticket before
        its buffers change (write-through); the blocks not written by then are copied. Blocks known to be on the
        server are skipped (checked with the queue's lock held, so two callers never queue one block twice), and
        with ``skip_queued`` those already queued too; ``ticket.left`` counts the blocks queued."""
        ticket = _Ticket(len(keys))
        items = []
        for n, (key, payload) in enumerate(zip(keys, payloads)):
            crc = _core.block_checksum(payload)
            score = _score(wall, n if positions is None else positions[n])
            header = encode_header(crc, self._block_bytes, wall, key)
            value: bytes | Parts = (
                Parts((header, payload)) if borrow and self.io.zero_copy else b"".join((header, payload))
            )
            items.append(_Write(block_key(ns_key, key), value, key, ns_key, account, self._block_bytes, ticket, t, score))
        with self._lock:
            if self._closed:
                raise StoreClosedError("the store is closed")
            unsent = self._unsent if skip_queued else {}
            items = [w for w in items if w.skey not in self._known and w.skey not in unsent]
            ticket.left = ticket.queued = len(items)
            for w in items:
                self._queue.append(w)
                self._unsent[w.skey] = self._unsent.get(w.skey, 0) + 1
                self._queued_bytes += w.nbytes
            self._c["queued"] += len(items)
            while self._queued_bytes > self.config.queue_bytes and len(self._queue) > 1:
                old = self._queue.popleft()
                self._sent(old.skey)
                self._queued_bytes -= old.nbytes
                self._c["dropped"] += 1
                self._dropped_since_flush += 1
                self._settle(old, False)
            self._cv.notify_all()
        return ticket

    def wait(self, ticket: _Ticket, timeout: float) -> None:
        """Writes until the ticket's blocks are written, or the server is found unreachable, or ``timeout`` s
        pass; then copies the ticket's blocks still queued (they borrowed the caller's buffers).

        The calling thread sends the batches itself (the queue's order kept: one batch in flight at a time, the
        writer thread's or a caller's), as the disk tier's flush commits on the calling thread: a write-through
        insert waits for its blocks anyway, and no hand-off to the writer thread is added to that wait."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if ticket.left <= 0 or self._closed or self._down_since is not None:
                    break
            left = deadline - time.monotonic()
            if left <= 0 or not self._commit.acquire(timeout=left):
                break
            try:
                sent = self._send_next()
            finally:
                self._commit.release()
            if not sent:
                break
        with self._lock:
            self._cv.wait_for(lambda: ticket.sending == 0)  # a batch in flight ends within timeout_s
            if ticket.left > 0:
                for w in self._queue:
                    if w.ticket is ticket and isinstance(w.value, Parts):
                        w.value = b"".join(w.value)

    def _sent(self, skey: bytes) -> None:
        """Under the lock: one queued write of ``skey`` left the queue (written or dropped)."""
        left = self._unsent[skey] - 1
        if left:
            self._unsent[skey] = left
        else:
            del self._unsent[skey]

    def _settle(self, w: _Write, ok: bool) -> None:
        """Under the lock: a block's write ended."""
        t = w.ticket
        if t is not None:
            t.left -= 1
            if not ok:
                t.failed += 1

    def _take(self) -> list[_Write]:
        """Under the lock: the next batch (its blocks stay counted as pending until written)."""
        batch: list[_Write] = []
        while self._queue and len(batch) < self.config.batch_blocks:
            w = self._queue.popleft()
            if w.ticket is not None:
                w.ticket.sending += 1
            batch.append(w)
        self._in_flight += len(batch)
        return batch

    def _writer_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._closed and (not self._queue or self._down_since is not None):
                        return
                    now = time.monotonic()
                    if self._down_since is not None and now < self._next_try:
                        self._cv.wait(self._next_try - now)
                        continue
                    if self._down_since is not None or self._queue or self._meta:
                        break
                    self._cv.wait(1.0)
                down = self._down_since is not None
            if down:
                try:
                    self.io.ping()
                except RemoteUnavailableError as e:
                    self._failed(e)
                    continue
                self._reached()
                continue
            with self._commit:
                self._send_next()

    def _send_next(self) -> bool:
        """Takes and writes the next batch (the caller holds ``_commit``); False if there was nothing to write."""
        with self._lock:
            batch = self._take()
            meta = list(self._meta.items())
        if not batch and not meta:
            return False
        self._write_batch(batch, meta)
        return True

    def _write_batch(self, batch: list[_Write], meta: list[tuple[bytes, bytes]]) -> None:
        cfg = self.config
        ttl_ms = cfg.ttl_ms
        bounded = cfg.capacity_bytes is not None or cfg.namespace_budget_bytes is not None
        wall = time.time()

        # Per bound: its members (score, member, bytes) in this batch, added by one script in the same round trip.
        added: dict[tuple[bytes, bytes, int], list[Any]] = {}
        if bounded:
            for w in batch:
                for scope in self._scopes(w.ns):
                    added.setdefault(scope, []).extend((w.score, _member(w.skey, w.nbytes), w.nbytes))

        def extra(p: Any) -> None:
            for ns_key, value in meta:
                p.set(ns_prefix(ns_key) + b"meta", value, nx=True)
            for (lru, counter, _limit), args in added.items():
                p.execute_command("EVAL", _ADD, 2, lru, counter, *args)  # (a cluster pipeline has no .eval)

        try:
            replies = self.io.set([(w.skey, w.value) for w in batch], ttl_ms, extra)
        except Exception as e:  # the server's failure, or any other: the writer thread must never die
            if not isinstance(e, RemoteUnavailableError):
                log.exception("kvtier remote tier %s: a write batch failed", self.url)
            with self._lock:
                self._in_flight -= len(batch)
                self._c["write_errors"] += len(batch)
                self._failed_since_flush += len(batch)
                for w in reversed(batch):  # back at the front, in order, for the retry
                    self._queue.appendleft(w)
                for w in batch:
                    self._settle(w, False)
                    if w.ticket is not None:
                        w.ticket.sending -= 1
                self._cv.notify_all()
            self._failed(e)
            return
        t = self._core.clock()
        with self._lock:
            for ns_key, _v in meta:
                self._meta.pop(ns_key, None)
                self._meta_done.add(ns_key)
            for w in batch:
                self._queued_bytes -= w.nbytes
                self._c["written"] += 1
                self._c["bytes_written"] += w.nbytes
                self._ledger.add(w.skey, w.account, w.nbytes, t if w.t is None else w.t)
                self._known[w.skey] = None
                self._sent(w.skey)
            while len(self._known) > _KNOWN:
                self._known.popitem(last=False)
        totals = replies[len(meta) :]
        over = [scope for scope, total in zip(added, totals) if int(total) > scope[2]]
        if over:  # before the batch is reported written: a write-through insert returns with its bounds kept
            try:
                self._trim(over, wall)
            except Exception as e:  # counted; the next batch over the bound trims again
                if not isinstance(e, RemoteUnavailableError):
                    log.exception("kvtier remote tier %s: trimming to the bounds failed", self.url)
                self._failed(e)
        with self._lock:
            self._in_flight -= len(batch)
            for w in batch:
                self._settle(w, True)
                if w.ticket is not None:
                    w.ticket.sending -= 1
            self._cv.notify_all()

    def _scopes(self, ns_key: bytes) -> list[tuple[bytes, bytes, int]]:
        """(lru set, byte counter, limit) of the bounds that apply to a namespace's blocks."""
        out = []
        if self.config.capacity_bytes is not None:
            out.append((PREFIX + b"{all}:lru", PREFIX + b"{all}:bytes", self.config.capacity_bytes))
        if self.config.namespace_budget_bytes is not None:
            tag = PREFIX + b"{" + ns_key.hex().encode() + b"}:"
            out.append((tag + b"lru", tag + b"bytes", self.config.namespace_budget_bytes))
        return out

    def _trim(self, scopes: list[tuple[bytes, bytes, int]], wall: float) -> None:
        """Brings each bound back under its limit: one script per bound drops the members idle past the TTL (their
        keys expired on the server), then pops the least recently written or read until the counted bytes fit; the
        popped blocks are then deleted (one round trip)."""
        cutoff = "-inf" if self.config.ttl_s is None else repr(wall - self.config.ttl_s)

        def build(p: Any) -> None:
            for lru, counter, limit in scopes:
                p.execute_command("EVAL", _TRIM, 2, lru, counter, limit, cutoff)

        popped = [m for reply in self.io.pipeline("trim", len(scopes), build) for m in reply]
        if not popped:
            return
        skeys = [PREFIX + m.rpartition(b":")[0] for m in popped]
        self.io.pipeline("trim", len(skeys), lambda p: _delete_each(p, skeys))
        t = self._core.clock()
        with self._lock:
            self._c["trimmed"] += len(skeys)
            for s in skeys:
                self._ledger.remove(s, t)
                self._known.pop(s, None)

    # ----------------------------------------------------------------- flush, close
    # ----------------------------------------------------------------- demotion (write-back from the tiers above)
    def demote(self, blocks: Sequence[tuple[bytes, bytes, str, int, Any]]) -> int:
        """Queues blocks a local tier evicted: ``(ns_key, key, session, position, payload)`` each. Those whose write
        is queued already are skipped, and so are those the server holds: one EXISTS round trip per batch asks it
        (this store's memory of what it wrote goes stale when the server expires, evicts or loses blocks; entries
        found stale are forgotten). While the server is unreachable every block not queued is queued. The payloads
        are copied (the caller may reuse them on return). Returns the blocks queued."""
        with self._lock:
            todo = [
                b for b in blocks if b[0] in self._namespaces and block_key(b[0], b[1]) not in self._unsent
            ]
        if not todo:
            return 0
        by_ns: dict[tuple[bytes, str], list[tuple[bytes, int, Any]]] = {}
        on_server = self._on_server([block_key(b[0], b[1]) for b in todo])
        with self._lock:
            for (ns_key, key, session, position, payload), there in zip(todo, on_server):
                if there:
                    continue
                self._known.pop(block_key(ns_key, key), None)  # stale if it was there
                by_ns.setdefault((ns_key, session), []).append((key, position, payload))
        wall = time.time()
        n = 0
        for (ns_key, session), items in by_ns.items():
            account = (self._namespaces[ns_key], session)
            ticket = self.enqueue(
                ns_key, account, [k for k, _p, _v in items], [v for _k, _p, v in items], wall, None,
                positions=[p for _k, p, _v in items], skip_queued=True,
            )
            n += ticket.queued
        with self._lock:
            self._c["demoted"] += n
        return n

    def _on_server(self, skeys: list[bytes]) -> list[bool]:
        """Per server key, whether the server has it: pipelined EXISTS, ``LOOKUP_BATCH`` a round trip. All False
        while the server is unreachable (the blocks are queued and written when it answers again)."""
        out = [False] * len(skeys)
        if not self.available:
            return out
        try:
            for i in range(0, len(skeys), LOOKUP_BATCH):
                out[i : i + LOOKUP_BATCH] = self.io.exists(skeys[i : i + LOOKUP_BATCH])
        except RemoteUnavailableError as e:
            self._failed(e)
            return [False] * len(skeys)
        return out

    def _rejected_since_flush(self) -> int:
        """Evicted blocks the core's full demotion queue turned away since the last call (flush)."""
        if self._demoter is None:
            return 0
        total = int(self._core.remote_stats()["rejected"])
        new, self._rejected_seen = total - self._rejected_seen, total
        return new

    def _demote_batch(self, timeout: float) -> tuple[bool, int]:
        """Takes one batch of the core's demotion queue (waiting up to ``timeout`` s for one), queues it for the
        writer and gives the slots back. Returns (the store closed, blocks taken)."""
        closed, blocks = self._core.remote_take(self.config.batch_blocks, timeout)
        if not blocks:
            return closed, 0
        try:
            self.demote(blocks)
        finally:
            self._core.remote_finish()
        return closed, len(blocks)

    def drain_demotions(self) -> None:
        """Queues every block the core holds for demotion now (a clean close: before the writer's last flush)."""
        while True:
            closed, n = self._demote_batch(0.0)
            if closed or (n == 0 and self._core.remote_stats()["pending"] == 0):
                return
            if n == 0:
                time.sleep(0.001)  # the demoter thread's batch is out

    def _demoter_loop(self) -> None:
        while not self._closed:
            try:
                closed, _n = self._demote_batch(1.0)
            except StoreClosedError:
                return
            except Exception:  # the demoter must never die: the evicted blocks are lost, the store serves on
                log.exception("kvtier remote tier %s: demoting evicted blocks failed", self.url)
                continue
            if closed:
                return

    def flush(self, timeout: float | None) -> None:
        """Waits until every queued block is written. Raises RemoteWriteError when the server is unreachable with
        blocks still queued (they stay queued), or when blocks were dropped since the last flush."""
        if self._demoter is not None:
            self.drain_demotions()  # what the host evicted so far is part of what the flush waits for
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._queue or self._in_flight:
                if self._down_since is not None and not self._in_flight:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"flush: remote writes still queued after {timeout} s")
                self._cv.wait(left if left is not None else 1.0)
            pending = len(self._queue) + self._in_flight
            rejected = self._rejected_since_flush()
            dropped = self._dropped_since_flush
            failed = self._failed_since_flush
            self._dropped_since_flush = self._failed_since_flush = 0
            error = self._last_error
        if pending or dropped or rejected:
            raise RemoteWriteError(
                f"remote tier {self.url}: {pending} blocks not written (kept queued, written when the server is "
                f"reachable), {dropped} dropped from the full queue, {rejected} evicted blocks not demoted (the "
                f"demotion queue stayed full), {failed} failed block writes; first cause: {error}"
            )

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued (while the server answers, at most ``timeout`` s), stops the writer."""
        with self._lock:
            if self._closed:
                return
        try:
            self.flush(timeout)
        except (RemoteWriteError, TimeoutError):
            pass  # counted; the store closes anyway
        with self._lock:
            self._closed = True
            self._cv.notify_all()
        self._writer.join(timeout)
        self.io.close()  # the demoter thread stops when the core closes, or within its 1 s wait (join_demoter)

    def join_demoter(self, timeout: float = 10.0) -> None:
        """After the core closed (which wakes it): waits for the demoter thread to stop."""
        if self._demoter is not None:
            self._demoter.join(timeout)

    # ----------------------------------------------------------------- reporting
    def stats(self) -> RemoteStats:
        with self._lock:
            for skey in self._ledger.expire(self._core.clock()):
                self._known.pop(skey, None)
            c = dict(self._c)
            return RemoteStats(
                **c,
                demote_rejected=int(self._core.remote_stats()["rejected"]) if self._demoter is not None else 0,
                round_trips=self.io.round_trips,
                pending=len(self._queue) + self._in_flight,
                connected=self._down_since is None,
                blocks=len(self._ledger.blocks),
                resident_bytes=sum(e[1] for e in self._ledger.blocks.values()),
                capacity_bytes=self.config.capacity_bytes,
            )

    def residency(self, t: float) -> list[tuple[Namespace, str, int, float]]:
        with self._lock:
            return self._ledger.report(t)
