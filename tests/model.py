"""A plain-Python reference model of kvtier's host tier, for tests.

This is deliberately *not* a port of the C++ radix tree: the cache is a dict keyed by
``(namespace, prefix)`` where a prefix is a tuple of blocks and a block is a tuple of ``block_size``
token ids. Every cached block carries its own recency, hit count, pin count, account and insertion
time, and every operation is written as directly as the semantics allow (linear scans, no indexes),
so that it is obviously right rather than fast. The store is expected to agree with it exactly on
matches, capacity, counters and payload bytes, and to within rounding on residency.

Semantics (host tier, policy in {lru, lfu, ttl}, capacity C blocks, optional TTL T seconds):

* ``op`` counts touching operations (match, insert, load by tokens, unpin); peek does not count.
* Releasing a pin is an access of the pinned blocks at the latest time seen: ``seq`` and
  ``last_access`` are refreshed (hits are not), so a TTL counts idle time from the release.
* ``expired(b, now)``: T is set, ``b.pins == 0`` and ``now - b.last_access > T``.
* A walk matches leading full blocks while the prefix is cached and not expired; a touching walk
  that meets an expired prefix reclaims it and every cached prefix extending it.
* Eviction removes, one block at a time, the unpinned cached leaf with the smallest key
  (lru/ttl: ``seq``; lfu: ``(hits, seq)``). A removed block whose TTL has run out counts as
  ``expired`` and its residency ends at ``last_access + T``; otherwise it counts as ``evicted`` and
  its residency ends at the removal time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Block = tuple[int, ...]
Prefix = tuple[Block, ...]
Key = tuple[str, Prefix]  # (namespace name, prefix)
Account = tuple[str, str]  # (namespace name, session; "" = none named)

COUNTERS = ("hits", "misses", "inserted", "evicted", "expired", "bytes_written", "bytes_read")


@dataclass
class Entry:
    """One cached block."""

    seq: int
    last_access: float
    inserted_at: float
    account: Account
    hits: int = 0
    pins: int = 0
    payload: bytes | None = None


class Model:
    def __init__(
        self,
        *,
        block_size: int,
        block_bytes: int,
        capacity_blocks: int | None,
        policy: str,
        ttl: float | None,
        payloads: bool,
    ) -> None:
        assert policy in ("lru", "lfu", "ttl")
        assert policy != "ttl" or ttl is not None
        self.block_size = block_size
        self.block_bytes = block_bytes
        self.capacity = capacity_blocks
        self.policy = policy
        self.ttl = ttl
        self.payloads = payloads
        self.cache: dict[Key, Entry] = {}
        self.op = 0
        self.clock = -math.inf
        self.counters = dict.fromkeys(COUNTERS, 0)
        # Byte-seconds of blocks already removed, per account.
        self.closed_residency: dict[Account, float] = {}

    # ------------------------------------------------------------------ helpers
    def blocks_of(self, tokens: Sequence[int]) -> list[Block]:
        bs = self.block_size
        return [tuple(tokens[i * bs : (i + 1) * bs]) for i in range(len(tokens) // bs)]

    def keys_of(self, ns: str, tokens: Sequence[int]) -> list[Key]:
        blocks = self.blocks_of(tokens)
        return [(ns, tuple(blocks[: i + 1])) for i in range(len(blocks))]

    def _advance(self, now: float) -> None:
        assert now >= self.clock, "the test drove the model backwards in time"
        self.clock = now

    def expired(self, e: Entry, now: float) -> bool:
        return self.ttl is not None and e.pins == 0 and now - e.last_access > self.ttl

    def used(self) -> int:
        return len(self.cache)

    def has_child(self, key: Key) -> bool:
        ns, p = key
        return any(k[0] == ns and len(k[1]) == len(p) + 1 and k[1][:-1] == p for k in self.cache)

    def leaves(self) -> list[Key]:
        parents = {(ns, p[:-1]) for ns, p in self.cache if len(p) > 1}
        return [k for k in self.cache if k not in parents]

    def check_prefix_closed(self) -> None:
        for ns, p in self.cache:
            if len(p) > 1:
                assert (ns, p[:-1]) in self.cache, f"model lost the parent of {(ns, p)}"
            e = self.cache[(ns, p)]
            if len(p) > 1 and e.pins:
                assert self.cache[(ns, p[:-1])].pins >= e.pins, "a pin must hold the whole prefix"

    def _remove(self, key: Key, now: float) -> None:
        e = self.cache.pop(key)
        assert e.pins == 0, "the model removed a pinned block"
        if self.expired(e, now):
            self.counters["expired"] += 1
            end = e.last_access + self.ttl  # type: ignore[operator]
        else:
            self.counters["evicted"] += 1
            end = now
        acc = e.account
        self.closed_residency[acc] = self.closed_residency.get(acc, 0.0) + self.block_bytes * (end - e.inserted_at)

    def _remove_extensions(self, key: Key, now: float) -> None:
        """Removes ``key`` and every cached prefix extending it."""
        ns, p = key
        doomed = [k for k in self.cache if k[0] == ns and k[1][: len(p)] == p]
        for k in sorted(doomed, key=lambda k: -len(k[1])):  # leaves first
            self._remove(k, now)

    def _priority(self, e: Entry) -> tuple[int, ...]:
        if self.policy == "lfu":
            return (e.hits, e.seq)
        return (e.seq,)

    def _evict(self, count: int, now: float, protect: Iterable[Key] = ()) -> int:
        protected = set(protect)
        removed = 0
        while removed < count:
            cands = [k for k in self.leaves() if self.cache[k].pins == 0 and k not in protected]
            if not cands:
                break
            cands.sort(key=lambda k: self._priority(self.cache[k]))
            if len(cands) > 1:
                assert self._priority(self.cache[cands[0]]) != self._priority(self.cache[cands[1]]), (
                    "eviction tie: the model's assumption that ties cannot occur is wrong"
                )
            self._remove(cands[0], now)
            removed += 1
        return removed

    def _walk(self, ns: str, tokens: Sequence[int], now: float, reclaim: bool) -> list[Key]:
        path: list[Key] = []
        for key in self.keys_of(ns, tokens):
            e = self.cache.get(key)
            if e is None:
                break
            if self.expired(e, now):
                if reclaim:
                    self._remove_extensions(key, now)
                break
            path.append(key)
        return path

    # ------------------------------------------------------------------ operations
    def match(self, ns: str, tokens: Sequence[int], now: float, pin: bool = False) -> list[Key]:
        """Returns the matched keys (which are pinned if ``pin``)."""
        self._advance(now)
        self.op += 1
        path = self._walk(ns, tokens, now, reclaim=True)
        for k in path:
            e = self.cache[k]
            e.seq = self.op
            e.last_access = now
            e.hits += 1
            if pin:
                e.pins += 1
        self.counters["hits"] += len(path)
        self.counters["misses"] += len(self.blocks_of(tokens)) - len(path)
        return path

    def peek(self, ns: str, tokens: Sequence[int], now: float) -> int:
        self._advance(now)
        return len(self._walk(ns, tokens, now, reclaim=False))

    def load(self, ns: str, tokens: Sequence[int], now: float) -> tuple[int, bytes]:
        assert self.payloads
        path = self.match(ns, tokens, now)
        self.counters["bytes_read"] += len(path) * self.block_bytes
        return len(path), b"".join(self.cache[k].payload for k in path)  # type: ignore[misc]

    def load_pinned(self, keys: Sequence[Key]) -> bytes:
        assert self.payloads
        self.counters["bytes_read"] += len(keys) * self.block_bytes
        return b"".join(self.cache[k].payload for k in keys)  # type: ignore[misc]

    def unpin(self, keys: Sequence[Key], now: float | None = None) -> None:
        """Releasing is an access at ``now`` (default: the latest time seen): recency, not hits."""
        now = self.clock if now is None else now
        self._advance(now)
        self.op += 1
        for k in keys:
            e = self.cache[k]  # a pinned block is never removed
            assert e.pins > 0
            e.pins -= 1
            e.seq = self.op
            e.last_access = now

    def insert(
        self,
        ns: str,
        session: str,
        tokens: Sequence[int],
        now: float,
        payload: bytes | None = None,
        start_block: int = 0,
    ) -> tuple[int, int, int]:
        """Returns (matched_blocks, inserted_blocks, full_blocks)."""
        self._advance(now)
        self.op += 1
        keys = self.keys_of(ns, tokens)
        full = len(keys)
        path = self._walk(ns, tokens, now, reclaim=True)
        for k in path:
            self.cache[k].seq = self.op
            self.cache[k].last_access = now
        matched = len(path)
        want = full - matched
        if want == 0:
            return matched, 0, full
        if self.payloads and matched < start_block:
            return matched, 0, full  # no payload for the missing blocks below start_block
        if self.capacity is not None:
            free = self.capacity - self.used()
            if want > free:
                self._evict(want - free, now, protect=path)
            want = min(want, self.capacity - self.used())
        bb = self.block_bytes
        for i in range(matched, matched + want):
            data = None
            if self.payloads:
                assert payload is not None
                data = bytes(payload[(i - start_block) * bb : (i - start_block + 1) * bb])
                assert len(data) == bb
            self.cache[keys[i]] = Entry(
                seq=self.op, last_access=now, inserted_at=now, account=(ns, session), payload=data
            )
        self.counters["inserted"] += want
        if self.payloads:
            self.counters["bytes_written"] += want * bb
        return matched, want, full

    def evict(self, nbytes: int, now: float) -> int:
        """Returns bytes freed."""
        self._advance(now)
        blocks = -(-nbytes // self.block_bytes)
        return self._evict(blocks, now) * self.block_bytes

    def expire(self, now: float) -> int:
        """Returns blocks reclaimed."""
        self._advance(now)
        doomed = [k for k, e in self.cache.items() if self.expired(e, now)]
        for k in doomed:
            self._remove(k, now)
        return len(doomed)

    def clear(self, now: float) -> int:
        self._advance(now)
        doomed = [k for k, e in self.cache.items() if e.pins == 0]
        for k in doomed:
            self._remove(k, now)
        return len(doomed)

    def residency(self, now: float) -> dict[Account, tuple[int, float]]:
        """(resident bytes, byte-seconds) per account at ``now``; reclaims expired blocks first."""
        self.expire(now)
        out: dict[Account, tuple[int, float]] = {
            acc: (0, bs) for acc, bs in self.closed_residency.items()
        }
        for e in self.cache.values():
            nbytes, bs = out.get(e.account, (0, 0.0))
            out[e.account] = (nbytes + self.block_bytes, bs + self.block_bytes * (now - e.inserted_at))
        return out

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, int | None]:
        d: dict[str, int | None] = dict(self.counters)
        d["blocks"] = len(self.cache)
        d["resident_bytes"] = len(self.cache) * self.block_bytes
        d["pinned_blocks"] = sum(1 for e in self.cache.values() if e.pins > 0)
        d["capacity_bytes"] = None if self.capacity is None else self.capacity * self.block_bytes
        return d


# ====================================================================== host + disk tiers
DISK_COUNTERS = ("hits", "misses", "queued", "bytes_read", "evicted", "expired", "corrupted", "missing",
                 "write_errors", "rejected", "promoted", "restored")
HOST, DISK = 1, 2  # kvtier.Tier values, without importing kvtier here


@dataclass(eq=False)
class DiskEntry:
    """One block in the disk tier's index (queued for the writer or committed to the folder).

    ``damage`` is what the test did to the block's payload in the folder while the store was closed:
    ``"corrupt"`` (bytes flipped, or the wrong length) or ``"missing"`` (payload deleted, record kept).
    ``removed`` marks an entry a load took out of the index while a pin still referred to it.
    """

    account: Account
    stored_at: float  # residency start on this store's clock
    payload: bytes | None
    pins: int = 0
    damage: str | None = None
    removed: bool = False


class TieredModel(Model):
    """The host tier of :class:`Model` over a disk tier (``kvtier.DiskConfig``): the disk tier's index
    is a dict keyed like the host cache, one :class:`DiskEntry` per block.

    Semantics (beyond the host tier's, which are unchanged):

    * *Demotion* (write-back): a host block removed by eviction, expiry, a reclaiming walk or an
      insert making room is queued for the disk with its account and payload, unless its key is on
      disk already (same key, same tokens: the disk copy stays as it is). ``clear`` demotes nothing.
      Write-through: every block an insert stores in the host is queued at once (the host keeps it).
    * *Lookups* continue past the host match on disk, block by block, while the next key is in the
      disk index: ``match`` counts host hits/misses as the host tier alone (``misses = full - host``)
      and disk hits/misses beyond them. A damaged block is still in the index: it matches.
    * *Inserts* store in the host what the host takes (exactly :class:`Model`'s insert). What it
      cannot take (capacity held by pins or by the prompt's own prefix) is *spilled*: queued for the
      disk straight away, each block counted as stored whether it was queued now or already on disk.
      An insert whose ``start_block`` prefix is partly on disk (host match, then disk blocks up to
      ``start_block``) spills its new blocks after that prefix; with a gap, nothing is stored.
    * *Loads* copy host blocks, then disk blocks up to the first entry a load removed meanwhile. Every
      disk block read from the folder is verified: the load stops before the first damaged one, and
      every damaged one it read leaves the index (``corrupted`` / ``missing``). Blocks served from disk
      (``good``) are then *promoted*: inserted into the host (as :class:`Model`'s insert with the load's
      bytes and the account of the first disk block), counted in ``promoted``.
    * ``clear`` removes unpinned host blocks, then every unpinned disk block without a child on disk
      (repeatedly, so whole unpinned chains go).
    * ``persist_host`` (``flush(host=True)``, ``close()``) queues every host block not on disk.
    * ``reopen`` (a new store on the same folder): the host tier is empty, every disk block is back
      (pins gone, damage kept), counters and residency start again at the restore time.

    The store's freedoms, which the harness keeps out of reach (and the model therefore ignores):

    * when the writer commits a queued block (``written``/``pending``; the model checks
      ``written + pending == queued``), so ``clear`` is only driven after a ``flush``, and damage only
      while the store is closed (everything committed);
    * promotion and spills need room in the write queue and its arena slots: the harness keeps the
      queue short (it flushes when more than a few blocks are pending), so both always have room;
    * the disk tier's own eviction and TTL order after a restart (restored recency is dated on the
      wall clock): the machine's disk tier never fills and has no TTL;
    * the bytes ``load`` writes into ``out`` past the blocks it returns (verified copies of later blocks).
    """

    def __init__(self, *, write_through: bool, promote: bool = True, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        assert self.payloads, "a disk tier needs payloads"
        self.write_through = write_through
        self.promote = promote
        self.disk: dict[Key, DiskEntry] = {}
        self.dcounters = dict.fromkeys(DISK_COUNTERS, 0)
        self.disk_closed: dict[Account, float] = {}  # disk byte-seconds of removed blocks
        self.demote = True

    # ------------------------------------------------------------------ disk index
    def _queue(self, key: Key, account: Account, payload: bytes | None, now: float) -> bool:
        if key in self.disk:
            return False
        self.disk[key] = DiskEntry(account=account, stored_at=now, payload=payload)
        self.dcounters["queued"] += 1
        return True

    def _disk_remove(self, key: Key, now: float, why: str) -> None:
        e = self.disk.pop(key)
        e.removed = True
        self.dcounters[why] += 1
        self.disk_closed[e.account] = self.disk_closed.get(e.account, 0.0) + self.block_bytes * (now - e.stored_at)

    def _remove(self, key: Key, now: float) -> None:
        e = self.cache[key]
        super()._remove(key, now)
        if self.demote:
            self._queue(key, e.account, e.payload, now)

    def disk_walk(self, keys: Sequence[Key]) -> list[Key]:
        out: list[Key] = []
        for k in keys:
            if k not in self.disk:
                break
            out.append(k)
        return out

    def disk_has_child(self, key: Key) -> bool:
        ns, p = key
        return any(k[0] == ns and len(k[1]) == len(p) + 1 and k[1][:-1] == p for k in self.disk)

    # ------------------------------------------------------------------ operations
    def lookup(self, ns: str, tokens: Sequence[int], now: float, pin: bool) -> tuple[list[Key], list[DiskEntry]]:
        """``match``: (host keys, disk entries) matched; both pinned with ``pin``."""
        path = self.match(ns, tokens, now, pin=pin)
        keys = self.keys_of(ns, tokens)
        dkeys = self.disk_walk(keys[len(path) :]) if len(path) < len(keys) else []
        self.dcounters["hits"] += len(dkeys)
        self.dcounters["misses"] += len(keys) - len(path) - len(dkeys)
        entries = [self.disk[k] for k in dkeys]
        if pin and (path or entries):
            for e in entries:
                e.pins += 1
        return path, entries

    def peek_tiers(self, ns: str, tokens: Sequence[int], now: float) -> tuple[int, int]:
        """(host blocks, disk blocks) a peek finds."""
        host = self.peek(ns, tokens, now)
        return host, len(self.disk_walk(self.keys_of(ns, tokens)[host:]))

    def release(self, host: Sequence[Key], disk: Sequence[DiskEntry], now: float | None = None) -> None:
        self.unpin(host, now)
        for e in disk:
            assert e.pins > 0
            e.pins -= 1

    def insert_host(self, ns: str, session: str, tokens: Sequence[int], now: float, payload: bytes | None,
                    start_block: int) -> tuple[int, int, int]:
        """The host part of an insert (and of a promotion): :class:`Model`'s insert, then write-through."""
        matched, inserted, full = super().insert(ns, session, tokens, now, payload, start_block)
        if self.write_through:
            for k in self.keys_of(ns, tokens)[matched : matched + inserted]:
                e = self.cache[k]
                self._queue(k, e.account, e.payload, now)
        return matched, inserted, full

    def insert(self, ns: str, session: str, tokens: Sequence[int], now: float, payload: bytes | None = None,
               start_block: int = 0) -> tuple[int, int, int]:
        matched, inserted, full = self.insert_host(ns, session, tokens, now, payload, start_block)
        keys = self.keys_of(ns, tokens)
        if matched < start_block:
            if not all(k in self.disk for k in keys[matched:start_block]):
                return matched, inserted, full  # a gap: nothing to chain the new blocks on
            matched = start = start_block
        else:
            start = matched + inserted
        bb = self.block_bytes
        for i in range(start, full):  # spill what the host did not take
            assert payload is not None
            data = bytes(payload[(i - start_block) * bb : (i - start_block + 1) * bb])
            if self._queue(keys[i], (ns, session), data, now):
                self.counters["bytes_written"] += bb
        return matched, inserted + (full - start), full

    def load_tiers(self, ns: str, host: Sequence[Key], disk: Sequence[DiskEntry], now: float) -> tuple[int, bytes]:
        """Load of a pinned match (host keys, disk entries) at ``now``: (blocks served, their bytes)."""
        bb = self.block_bytes
        self.counters["bytes_read"] += len(host) * bb
        data = [self.cache[k].payload for k in host]
        reads: list[DiskEntry] = []
        for e in disk:
            if e.removed:
                break
            reads.append(e)
        bad = [e for e in reads if e.damage is not None]
        good = reads.index(bad[0]) if bad else len(reads)
        by_entry = {id(e): k for k, e in self.disk.items()}
        for e in bad:
            self._disk_remove(by_entry[id(e)], now, "corrupted" if e.damage == "corrupt" else "missing")
        data += [e.payload for e in reads[:good]]
        blocks = b"".join(data)  # type: ignore[arg-type]
        if good:
            self.dcounters["bytes_read"] += good * bb
            if self.promote:
                n = len(host) + good
                keys = [by_entry[id(e)] for e in reads[:good]]
                tokens = [t for block in keys[-1][1] for t in block]
                _m, promoted, _f = self.insert_host(ns, reads[0].account[1], tokens[: n * self.block_size], now,
                                                    blocks, 0)
                self.dcounters["promoted"] += promoted
        return len(host) + good, blocks

    def load(self, ns: str, tokens: Sequence[int], now: float) -> tuple[int, bytes]:
        """Load by tokens: match with a pin, load, release at the load's time."""
        host, disk = self.lookup(ns, tokens, now, pin=True)
        if not host and not disk:
            return 0, b""
        n, data = self.load_tiers(ns, host, disk, now)
        self.release(host, disk, self.clock)
        return n, data

    def clear(self, now: float) -> int:
        self.demote = False
        try:
            n = super().clear(now)
        finally:
            self.demote = True
        while True:
            doomed = [k for k, e in self.disk.items() if e.pins == 0 and not self.disk_has_child(k)]
            if not doomed:
                return n
            for k in doomed:
                self._disk_remove(k, now, "evicted")
                n += 1

    def persist_host(self, now: float) -> int:
        """``flush(host=True)``: queues every host block that is not on disk. Returns the blocks queued."""
        return sum(self._queue(k, e.account, e.payload, now) for k, e in list(self.cache.items()))

    def reopen(self, now: float) -> None:
        """A new store on the same folder, restored at ``now`` (after ``close``; see ``persist_host``)."""
        self._advance(now)
        self.cache.clear()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.dcounters = dict.fromkeys(DISK_COUNTERS, 0)
        self.closed_residency.clear()
        self.disk_closed.clear()
        for e in self.disk.values():
            e.pins = 0
            e.stored_at = now
        self.dcounters["restored"] = len(self.disk)

    # ------------------------------------------------------------------ reporting
    def tier_residency(self, now: float) -> dict[tuple[Account, int], tuple[int, float]]:
        """(resident bytes, byte-seconds) per (account, tier) at ``now``; reclaims expired host blocks."""
        out = {(acc, HOST): v for acc, v in self.residency(now).items()}  # reclaims (and demotes) first
        for acc, bs in self.disk_closed.items():
            out[(acc, DISK)] = (0, bs)
        for e in self.disk.values():
            nbytes, bs = out.get((e.account, DISK), (0, 0.0))
            out[(e.account, DISK)] = (nbytes + self.block_bytes, bs + self.block_bytes * (now - e.stored_at))
        return out

    def disk_stats(self) -> dict[str, int]:
        d = dict(self.dcounters)
        d["blocks"] = len(self.disk)
        d["resident_bytes"] = len(self.disk) * self.block_bytes
        d["pinned_blocks"] = sum(1 for e in self.disk.values() if e.pins > 0)
        return d
