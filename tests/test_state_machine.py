"""kvtier.Store against a plain-Python reference model (tests/model.py).

A hypothesis ``RuleBasedStateMachine`` drives one store and one model with the same random
operations and checks after every step:

* ``check_invariants()`` (aborts the process on internal corruption);
* the cached set: every leaf prefix of the model peeks to the same depth in the store, and
  ``stats().blocks`` equals the model's block count (so the sets are equal), within capacity;
* every counter of ``stats()`` (hits, misses, inserted, evicted, expired, bytes moved, resident and
  pinned blocks);
* pinned prefixes are still cached;
* residency per (namespace, session) and in total, to a relative error of 1e-9;
* payload stores: ``load`` returns exactly the bytes inserted for each matched block, and nothing
  past them.

Operations: insert (sessions, two namespaces, ``start_block``, four payload buffer types), match with
and without pin, an engine-style request (match then insert), unpin (an access at an explicit or
the default ``now``), peek, load by tokens, load of a pinned match, ``with store.pinned()``, evict,
expire, clear, drain, clock advances, and calls that must be refused without any change (time going
backwards by one ulp or one second, for every timed call including unpin; load on a metadata-only
store). Token ids come as lists, int32/int64/uint8 arrays and TokenSequences.

Prompts use a vocabulary of 3 with blocks of 1-3 tokens (mostly 2); most re-use an earlier inserted
prompt whole, or cut and extended, so prefixes share, diverge and split nodes all the time. Each
operation advances the clock by a small random step measured in TTLs (0, exact fractions, arbitrary
floats); a clock rule makes large jumps or lands exactly on, or one ulp around, the expiry instant
of a cached block. Clocks start near 0, at 1000 and at an epoch-like 1.7e9. Half of the runs audit
residency after every step (``residency()`` reclaims expired blocks), the other half only now and
then, so that expired blocks are mostly reclaimed lazily by walks and evictions.

Seeded plain-random runs (5,000 operations per configuration) cover long histories that the
machine's short runs do not reach. Regression tests pin down the bugs the machine found.

``DiskStoreMachine`` (at the end) does the same for a store with a disk tier against ``model.TieredModel``:
demotion, spills, promotion, flush, close and reopen of the folder, damaged payloads, and flushes on a full disk
(every write or commit failing through the disk I/O's fault hook: nothing acknowledged is lost).

The machines run derandomized (the same examples every run, about a minute for all of them on 2 cores). The long
run is randomized: ``KVTIER_MACHINE_EXAMPLES=2000 python -m pytest tests/test_state_machine.py -k runTest`` (N
examples per machine, twice as many steps each).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import kvtier
from disk_helpers import Faults, lmdb_env
from kvtier import DiskConfig, DiskWriteError, InvalidArgumentError, Namespace, Store, StoreConfig, Tier, TierConfig, TokenSequence
from model import DiskEntry, Key, Model, TieredModel

# On a failure, hypothesis's pytest plug-in imports libcst to write a patch, which warns on import (libcst's use of
# mypy_extensions.TypedDict); with warnings as errors that would hide the falsifying example behind an INTERNALERROR.
pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

VOCAB = 3
MAX_TOKENS = 11  # up to 5 full blocks of 2 tokens, plus a partial one
RESIDENCY_RTOL = 1e-9

# Namespace names used by the model -> the Namespace passed to the store (None: the store's default).
OTHER_NS = Namespace(model="other-model", tenant="acme")
NAMESPACES: dict[str, Namespace | None] = {"a": None, "b": OTHER_NS}
DEFAULT_NS = Namespace(model="default")


def payload_bytes(ns: str, prefix: tuple, nonce: int, block_bytes: int) -> bytes:
    """Deterministic, distinct bytes per (namespace, prefix, insert call)."""
    return hashlib.shake_128(repr((ns, prefix, nonce)).encode()).digest(block_bytes)


def close(got: float, want: float) -> bool:
    # Relative error below 1e-9; the floor of 1 byte-second only matters for values near zero.
    return abs(got - want) <= RESIDENCY_RTOL * max(abs(want), 1.0)


def account_of(row: kvtier.ResidencyRow) -> tuple[str, str]:
    """The model's account (namespace name, session) of a residency row."""
    name = "a" if row.namespace == DEFAULT_NS else "b"
    assert row.namespace == (DEFAULT_NS if name == "a" else OTHER_NS)
    return name, row.session


def compare_residency(res: kvtier.Residency, want: dict[Any, tuple[int, float]], key: Any) -> None:
    """Every row of ``res`` against the model's (resident bytes, byte-seconds) under ``key(row)``; one row per
    key, and a row for every key the model has a figure for."""
    seen = set()
    for row in res.rows:
        acc = key(row)
        assert acc not in seen, f"two residency rows for {acc}"
        seen.add(acc)
        nbytes, bs = want.get(acc, (0, 0.0))
        assert row.resident_bytes == nbytes, (acc, row.resident_bytes, nbytes)
        assert close(row.byte_seconds, bs), (acc, row.byte_seconds, bs)
    for acc, (nbytes, bs) in want.items():
        assert acc in seen or (nbytes == 0 and bs == 0.0), f"no residency row for {acc}"


def tokens_arg(tokens: list[int], kind: str) -> Any:
    """``tokens`` as the argument type ``kind`` (list, int32/int64/uint8 array, TokenSequence)."""
    if kind == "list":
        return list(tokens)
    if kind == "i32":
        return np.asarray(tokens, dtype=np.int32)
    if kind == "i64":
        return np.asarray(tokens, dtype=np.int64)
    if kind == "u8":
        return np.asarray(tokens, dtype=np.uint8)
    if kind == "seq":
        return TokenSequence(tokens, vocab_size=VOCAB)
    raise AssertionError(kind)


@dataclass
class Held:
    """A pin held by the test: the store's MatchResult and the model's matched keys."""

    result: kvtier.MatchResult
    keys: list[Key]
    ns: str
    tokens: list[int]


@dataclass
class Harness:
    """One store and one model driven in lockstep; every operation compares their answers."""

    policy: str
    ttl: float | None
    capacity_blocks: int | None
    metadata_only: bool
    block_size: int = 2
    block_bytes: int = 8
    extra_capacity_bytes: int = 0
    t0: float = 1000.0
    store: Store = field(init=False)
    model: Model = field(init=False)
    clock: float = field(init=False)
    store_clock: float = field(init=False, default=-math.inf)
    held: list[Held] = field(init=False, default_factory=list)
    nonce: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        cap = None if self.capacity_blocks is None else self.capacity_blocks * self.block_bytes
        if cap is not None:
            cap += self.extra_capacity_bytes  # a partial block of capacity is no block
        cfg = StoreConfig(
            block_size=self.block_size,
            block_bytes=self.block_bytes,
            metadata_only=self.metadata_only,
            vocab_size=VOCAB,
            host=TierConfig(capacity_bytes=cap, policy=self.policy, ttl_s=self.ttl),  # type: ignore[arg-type]
        )
        self.store = Store(cfg)
        self.model = Model(
            block_size=self.block_size,
            block_bytes=self.block_bytes,
            capacity_blocks=self.capacity_blocks,
            policy=self.policy,
            ttl=self.ttl,
            payloads=not self.metadata_only,
        )
        self.clock = self.t0

    # ------------------------------------------------------------------ plumbing
    @property
    def payloads(self) -> bool:
        return not self.metadata_only

    @property
    def unit(self) -> float:
        """The clock step unit: the TTL when there is one."""
        return self.ttl if self.ttl is not None else 1.0

    def tick(self, frac: float) -> float:
        self.clock = self.clock + frac * self.unit
        return self.clock

    def tick_to_expiry(self, which: int, nudge: int) -> float:
        """Moves the clock to the expiry instant ``last_access + ttl`` of a cached block (one ulp
        before, at, or one ulp after), when that is not in the past: the TTL boundary, where the
        float expressions ``now - last_access > ttl`` and ``now > last_access + ttl`` can differ."""
        if self.ttl is None or not self.model.cache:
            return self.clock
        times = sorted({e.last_access for e in self.model.cache.values()})
        target = times[which % len(times)] + self.ttl
        if nudge < 0:
            target = math.nextafter(target, -math.inf)
        elif nudge > 0:
            target = math.nextafter(target, math.inf)
        self.clock = max(self.clock, target)
        return self.clock

    def _now(self) -> float:
        self.store_clock = self.clock
        return self.clock

    @staticmethod
    def tokens_arg(tokens: list[int], kind: str) -> Any:
        return tokens_arg(tokens, kind)

    def full_blocks(self, tokens: list[int]) -> int:
        return len(tokens) // self.block_size

    def make_payload(self, ns: str, tokens: list[int], start: int, kind: str) -> Any:
        """Payload of blocks ``start..full-1``, as the buffer type ``kind``."""
        self.nonce += 1
        bb = self.block_bytes
        data = b"".join(
            payload_bytes(ns, key[1], self.nonce, bb) for key in self.model.keys_of(ns, tokens)[start:]
        )
        if kind == "bytes":
            return data
        if kind == "bytearray":
            return bytearray(data)
        if kind == "memoryview":
            return memoryview(data)
        arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, bb).copy()
        return arr

    # ------------------------------------------------------------------ operations
    def insert(self, ns: str, session: str | None, tokens: list[int], kind: str, start: int = 0,
               payload_kind: str = "ndarray") -> None:
        now = self._now()
        n = self.full_blocks(tokens)
        payload = None
        if self.payloads:
            start = min(start, n)
            payload = self.make_payload(ns, tokens, start, payload_kind)
        else:
            start = 0
        got = self.store.insert(
            self.tokens_arg(tokens, kind), payload, start_block=start, namespace=NAMESPACES[ns],
            session=session, now=now,
        )
        raw = None if payload is None else bytes(payload)
        want = self.model.insert(ns, session or "", tokens, now, raw, start)
        assert (got.matched_blocks, got.inserted_blocks, got.full_blocks) == want, (got, want)

    def match(self, ns: str, tokens: list[int], kind: str, pin: bool) -> None:
        now = self._now()
        got = self.store.match(self.tokens_arg(tokens, kind), namespace=NAMESPACES[ns], now=now, pin=pin)
        keys = self.model.match(ns, tokens, now, pin=pin)
        assert got.num_blocks == len(keys), (got, len(keys))
        assert got.num_tokens == len(keys) * self.block_size
        assert got.tiers.dtype == np.uint8 and got.tiers.tolist() == [Tier.HOST] * len(keys)
        assert got.pinned == (pin and len(keys) > 0)
        if got.pinned:
            self.held.append(Held(got, keys, ns, list(tokens)))
        elif pin:
            # Nothing matched: the model pinned nothing either.
            assert keys == []

    def unpin(self, i: int, explicit_now: bool = True) -> None:
        """Releases a held pin: an access of its blocks (recency, not hits) at ``now``, which
        defaults to the latest time the store has seen."""
        h = self.held.pop(i % len(self.held))
        if explicit_now:
            now = self._now()
            self.store.unpin(h.result, now=now)
        else:
            now = self.store_clock
            self.store.unpin(h.result)
        self.model.unpin(h.keys, now)
        with pytest.raises(InvalidArgumentError):
            self.store.unpin(h.result)  # a pin is released once

    def peek(self, ns: str, tokens: list[int], kind: str) -> None:
        now = self._now()
        got = self.store.peek(self.tokens_arg(tokens, kind), namespace=NAMESPACES[ns], now=now)
        want = self.model.peek(ns, tokens, now)
        assert got.num_blocks == want and not got.pinned

    def load(self, ns: str, tokens: list[int], kind: str, out_kind: str) -> None:
        now = self._now()
        bb = self.block_bytes
        n = self.full_blocks(tokens)
        size = n * bb + 3  # a little slack after the blocks, which must stay untouched
        out: Any
        if out_kind == "bytearray":
            out = bytearray(b"\xa5" * size)
        else:
            out = np.full(size, 0xA5, dtype=np.uint8)
        got = self.store.load(self.tokens_arg(tokens, kind), out, namespace=NAMESPACES[ns], now=now)
        m, data = self.model.load(ns, tokens, now)
        assert got == m, (got, m)
        raw = bytes(out)
        assert raw[: m * bb] == data, "load returned other bytes than were inserted"
        assert raw[m * bb :] == b"\xa5" * (size - m * bb), "load wrote past the matched blocks"

    def load_pinned(self, i: int) -> None:
        h = self.held[i % len(self.held)]
        bb = self.block_bytes
        out = np.full(h.result.num_blocks * bb, 0x5A, dtype=np.uint8)
        got = self.store.load(h.result, out)
        assert got == h.result.num_blocks
        assert out.tobytes() == self.model.load_pinned(h.keys), "load of a pinned match returned other bytes"

    def pinned_context(self, ns: str, tokens: list[int], kind: str) -> None:
        """``with store.pinned(...)``: match + pin, load the hit (payload stores), unpin on exit."""
        now = self._now()
        with self.store.pinned(self.tokens_arg(tokens, kind), namespace=NAMESPACES[ns], now=now) as m:
            keys = self.model.match(ns, tokens, now, pin=True)
            assert m.num_blocks == len(keys) and m.pinned == (len(keys) > 0)
            assert self.store.stats().pinned_blocks == self.model.stats()["pinned_blocks"]
            if self.payloads and m.pinned:
                out = bytearray(m.num_blocks * self.block_bytes)
                assert self.store.load(m, out) == m.num_blocks
                assert bytes(out) == self.model.load_pinned(keys)
        if keys:
            self.model.unpin(keys, now)  # pinned() releases at the time it matched

    def evict(self, nbytes: int) -> None:
        now = self._now()
        got = self.store.evict(nbytes, now=now)
        want = self.model.evict(nbytes, now)
        assert got == want, (got, want)

    def expire(self) -> None:
        now = self._now()
        got = self.store.expire(now=now)
        want = self.model.expire(now)
        assert got == want, (got, want)

    def clear(self) -> None:
        now = self._now()
        got = self.store.clear(now=now)
        want = self.model.clear(now)
        assert got == want, (got, want)

    def drain(self) -> None:
        """Releases every pin, then clears: the store must end empty."""
        while self.held:
            self.unpin(0)
        self.clear()
        assert self.store.stats().blocks == 0

    def backwards(self, op: str, tokens: list[int], ulp: bool) -> None:
        """An operation at a time before the store's clock is refused and changes nothing."""
        if self.store_clock == -math.inf:
            return
        past = math.nextafter(self.store_clock, -math.inf) if ulp else self.store_clock - 1.0
        s = self.store
        calls = {
            "match": lambda: s.match(tokens, now=past),
            "pin": lambda: s.match(tokens, now=past, pin=True),
            "peek": lambda: s.peek(tokens, now=past),
            "insert": lambda: s.insert(
                tokens, None if self.metadata_only else bytes(self.full_blocks(tokens) * self.block_bytes), now=past
            ),
            "load": lambda: s.load(tokens, bytearray(self.full_blocks(tokens) * self.block_bytes), now=past),
            "evict": lambda: s.evict(10**6, now=past),
            "expire": lambda: s.expire(now=past),
            "clear": lambda: s.clear(now=past),
            "residency": lambda: s.residency(now=past),
        }
        if op == "load" and self.metadata_only:
            op = "clear"
        if op == "unpin":
            if not self.held:
                return
            # Refused before anything is released: the pin stays held (and is released later).
            calls["unpin"] = lambda: s.unpin(self.held[-1].result, now=past)
        with pytest.raises(InvalidArgumentError, match="backwards") as info:
            calls[op]()
        assert isinstance(info.value, ValueError)

    def load_metadata_only(self, tokens: list[int]) -> None:
        """A metadata-only store has no payloads: load is refused and changes nothing."""
        with pytest.raises(InvalidArgumentError):
            self.store.load(tokens, bytearray(64), now=self.clock)

    # ------------------------------------------------------------------ checks
    def check_residency(self) -> None:
        now = self._now()
        res = self.store.residency(now=now)
        want = self.model.residency(now)
        assert res.now == now
        assert all(row.tier == Tier.HOST for row in res.rows)
        compare_residency(res, want, account_of)
        total = sum(bs for _, bs in want.values())
        assert close(res.byte_seconds, total), (res.byte_seconds, total)

    def check(self, residency: bool) -> None:
        s, m = self.store, self.model
        s.check_invariants()
        m.check_prefix_closed()
        if residency:
            self.check_residency()
        stats = s.stats()
        want = m.stats()
        got = {k: getattr(stats, k) for k in want}
        assert got == want, {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        if self.capacity_blocks is not None:
            assert stats.blocks <= self.capacity_blocks
        leaves = m.leaves()
        # Every leaf block ends a distinct node; every node holds at least one block.
        assert len(leaves) <= stats.nodes <= stats.blocks
        # The cached sets are equal: every model leaf is found as deep in the store (up to an expired
        # block, where both walks stop), and the block counts are equal.
        if leaves or self.held:
            now = self._now()
            for ns, prefix in leaves:
                tokens = [t for block in prefix for t in block]
                got_n = s.peek(tokens, namespace=NAMESPACES[ns], now=now).num_blocks
                assert got_n == m.peek(ns, tokens, now), ("cached sets differ at", ns, prefix)
            # Pinned blocks are never evicted (nor expired).
            for h in self.held:
                assert all(k in m.cache and m.cache[k].pins > 0 for k in h.keys)
                got_n = s.peek(h.tokens, namespace=NAMESPACES[h.ns], now=now).num_blocks
                assert got_n >= h.result.num_blocks, "a pinned prefix was evicted"


# ---------------------------------------------------------------------- the state machine

# A prompt spec: (source, cut, suffix, fresh), where suffix and fresh are (length, code) pairs whose
# tokens are the base-VOCAB digits of code (two draws instead of one per token: generation is most
# of the machine's cost).
token_specs = st.tuples(
    st.integers(0, 63),  # which earlier inserted prompt to start from (>= 48: the fresh prompt)
    st.one_of(st.just(MAX_TOKENS), st.integers(0, MAX_TOKENS)),  # how much of it to keep (often all)
    st.one_of(st.just((0, 0)), st.tuples(st.integers(0, 5), st.integers(0, VOCAB**5 - 1))),  # what to append
    st.tuples(st.integers(4, MAX_TOKENS), st.integers(0, VOCAB**MAX_TOKENS - 1)),  # the fresh prompt
)


def prompt_from(history: list[list[int]], spec: tuple[int, int, tuple[int, int], tuple[int, int]], block_size: int,
                remember: bool) -> list[int]:
    """A prompt: mostly an earlier inserted prompt (``history``), whole or cut somewhere and extended, so that
    prompts re-use, extend and diverge from cached prefixes. ``remember``: a prompt of two blocks or more joins
    the history."""
    src, cut, suffix, fresh = spec
    if history and src < 48:
        tokens = (history[src % len(history)][:cut] + digits(suffix))[:MAX_TOKENS]
    else:
        tokens = digits(fresh)
    if remember and len(tokens) >= 2 * block_size:
        history.append(tokens)
        del history[:-16]
    return tokens


def digits(length_code: tuple[int, int]) -> list[int]:
    length, code = length_code
    out = []
    for _ in range(length):
        code, d = divmod(code, VOCAB)
        out.append(d)
    return out


# Clock steps in TTLs (or seconds without a TTL): 0, exact fractions and multiples, arbitrary floats.
# Mostly small steps, so that blocks live long enough for the policies' orders to matter; the
# advance_clock rule also jumps to (one ulp around) the expiry instant of a cached block.
steps = st.one_of(
    st.just(0.0),
    st.floats(0.0, 0.05, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.25, 0.5]),
)
namespaces = st.sampled_from(["a", "a", "a", "b"])
sessions = st.sampled_from([None, None, "s1", "s2"])
token_kinds = st.sampled_from(["list", "i32", "i64", "u8", "seq"])
payload_kinds = st.sampled_from(["ndarray", "bytes", "bytearray", "memoryview"])


class PromptMachine(RuleBasedStateMachine):
    """What the machines share: the prompt history, and the rules that only release pins and peek."""

    def __init__(self) -> None:
        super().__init__()
        self.h: Any = None  # the harness (Harness or DiskHarness), made by the machine's initialize rule
        self.history: list[list[int]] = []

    def _tokens(self, spec: tuple[int, int, tuple[int, int], tuple[int, int]], remember: bool = False) -> list[int]:
        assert self.h is not None
        return prompt_from(self.history, spec, self.h.block_size, remember)

    @precondition(lambda self: self.h is not None and bool(self.h.held))
    @rule(i=st.integers(0, 15), dt=steps, explicit_now=st.booleans())
    def unpin(self, i, dt, explicit_now) -> None:
        assert self.h is not None
        self.h.tick(dt)
        self.h.unpin(i, explicit_now)

    @rule(spec=token_specs, dt=steps, ns=namespaces, kind=token_kinds)
    def peek(self, spec, dt, ns, kind) -> None:
        assert self.h is not None
        self.h.tick(dt)
        self.h.peek(ns, self._tokens(spec), kind)


class StoreMachine(PromptMachine):
    POLICY = "lru"
    METADATA_ONLY = True

    def __init__(self) -> None:
        super().__init__()
        self.audit_residency = True

    @initialize(
        ttl=st.sampled_from([None, None, 0.3, 1.0, 2.5]),
        capacity=st.one_of(st.integers(2, 8), st.integers(1, 12)),
        unlimited=st.booleans(),
        extra=st.integers(0, 7),
        block_size=st.sampled_from([2, 2, 2, 1, 3]),
        block_bytes=st.sampled_from([8, 24]),
        t0=st.sampled_from([0.0, 0.1, 1000.0, 1.7e9]),
        audit_residency=st.booleans(),
    )
    def setup(self, ttl, capacity, unlimited, extra, block_size, block_bytes, t0, audit_residency) -> None:
        if self.POLICY == "ttl" and ttl is None:
            ttl = 1.0
        self.h = Harness(
            policy=self.POLICY,
            ttl=ttl,
            capacity_blocks=None if (unlimited and self.METADATA_ONLY and capacity > 6) else capacity,
            metadata_only=self.METADATA_ONLY,
            block_size=block_size,
            block_bytes=block_bytes,
            extra_capacity_bytes=min(extra, block_bytes - 1),
            t0=t0,
        )
        # Half the runs audit residency after every step (residency() reclaims expired blocks);
        # the other half only when the advance rule asks for it, leaving expired blocks to walks
        # and evictions.
        self.audit_residency = audit_residency

    # The three rules that build and use the cache come first and make up most of a run.
    @rule(spec=token_specs, dt=steps, ns=namespaces, session=sessions, kind=token_kinds,
          start=st.sampled_from([0, 0, 0, 1, 2]), payload_kind=payload_kinds)
    def insert(self, spec, dt, ns, session, kind, start, payload_kind) -> None:
        assert self.h is not None
        self.h.tick(dt)
        self.h.insert(ns, session, self._tokens(spec, remember=True), kind, start, payload_kind)

    @rule(spec=token_specs, dt=steps, ns=namespaces, kind=token_kinds, pin=st.booleans())
    def match(self, spec, dt, ns, kind, pin) -> None:
        assert self.h is not None
        self.h.tick(dt)
        self.h.match(ns, self._tokens(spec), kind, pin)

    @rule(spec=token_specs, dt=steps, ns=namespaces, session=sessions, kind=token_kinds)
    def request(self, spec, dt, ns, session, kind) -> None:
        """What an engine does per request: match the prompt, then insert what was missing."""
        assert self.h is not None
        self.h.tick(dt)
        tokens = self._tokens(spec, remember=True)
        self.h.match(ns, tokens, kind, pin=False)
        self.h.insert(ns, session, tokens, kind)

    @precondition(lambda self: self.h is not None and self.h.payloads)
    @rule(spec=token_specs, dt=steps, ns=namespaces, kind=token_kinds,
          out_kind=st.sampled_from(["ndarray", "bytearray"]), pinned=st.integers(-1, 15))
    def load(self, spec, dt, ns, kind, out_kind, pinned) -> None:
        """Load by tokens, or (pinned >= 0, a pin held) load of a pinned match."""
        assert self.h is not None
        if pinned >= 0 and self.h.held:
            self.h.load_pinned(pinned)
            return
        self.h.tick(dt)
        self.h.load(ns, self._tokens(spec), kind, out_kind)

    @rule(spec=token_specs, dt=steps, ns=namespaces, kind=token_kinds)
    def pinned_context(self, spec, dt, ns, kind) -> None:
        assert self.h is not None
        self.h.tick(dt)
        self.h.pinned_context(ns, self._tokens(spec), kind)

    @rule(blocks=st.one_of(st.integers(0, 2), st.integers(0, 9)), remainder=st.sampled_from([0, 0, 1]), dt=steps)
    def evict(self, blocks, remainder, dt) -> None:
        assert self.h is not None
        self.h.tick(dt)
        self.h.evict(max(0, blocks * self.h.block_bytes - remainder))

    @rule(op=st.sampled_from(["expire", "expire", "expire", "expire", "clear", "drain"]), dt=steps)
    def maintenance(self, op, dt) -> None:
        assert self.h is not None
        self.h.tick(dt)
        getattr(self.h, op)()

    @rule(dt=st.floats(0.0, 2.5, allow_nan=False, allow_infinity=False), to_expiry=st.booleans(),
          which=st.integers(0, 7), nudge=st.sampled_from([-1, 0, 0, 1]), audit=st.booleans())
    def advance_clock(self, dt, to_expiry, which, nudge, audit) -> None:
        """Advances the clock by a step, or to (around) the expiry instant of a cached block;
        optionally audits residency there."""
        assert self.h is not None
        if to_expiry:
            self.h.tick_to_expiry(which, nudge)
        else:
            self.h.tick(dt)
        if audit:
            self.h.check_residency()

    @rule(op=st.sampled_from(["match", "pin", "peek", "insert", "load", "evict", "expire", "clear", "residency",
                              "unpin", "metadata_load"]),
          spec=token_specs, ulp=st.booleans())
    def refused(self, op, spec, ulp) -> None:
        """Calls the store must refuse without any change: time going backwards (by one ulp or by a
        second), and load on a metadata-only store."""
        assert self.h is not None
        tokens = self._tokens(spec)
        if op == "metadata_load":
            if self.h.metadata_only:
                self.h.load_metadata_only(tokens)
            return
        self.h.backwards(op, tokens, ulp)

    @invariant()
    def consistent(self) -> None:
        if self.h is not None:
            self.h.check(residency=self.audit_residency)

    def teardown(self) -> None:
        if self.h is not None:
            for held in self.h.held:  # before close: unpin() after close() raises StoreClosedError
                self.h.store.unpin(held.result)
            self.h.store.close()


def machine_settings(examples: int, steps: int) -> settings:
    """The machines' settings: ``examples`` derandomized runs of up to ``steps`` steps (quick, the same every run),
    or, with ``KVTIER_MACHINE_EXAMPLES=N`` in the environment, N randomized runs of twice as many steps (the long
    run; see the module docstring)."""
    long_run = int(os.environ.get("KVTIER_MACHINE_EXAMPLES", "0"))
    return settings(
        max_examples=long_run or examples,
        stateful_step_count=2 * steps if long_run else steps,
        derandomize=not long_run,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        report_multiple_bugs=False,
    )


MACHINE_SETTINGS = machine_settings(80, 50)


def _machine(policy: str, metadata_only: bool) -> type[StoreMachine]:
    return type(
        f"StoreMachine_{policy}_{'meta' if metadata_only else 'payload'}",
        (StoreMachine,),
        {"POLICY": policy, "METADATA_ONLY": metadata_only},
    )


TestLRUMetadata = _machine("lru", True).TestCase
TestLRUPayload = _machine("lru", False).TestCase
TestLFUMetadata = _machine("lfu", True).TestCase
TestLFUPayload = _machine("lfu", False).TestCase
TestTTLMetadata = _machine("ttl", True).TestCase
TestTTLPayload = _machine("ttl", False).TestCase
for _case in (TestLRUMetadata, TestLRUPayload, TestLFUMetadata, TestLFUPayload, TestTTLMetadata, TestTTLPayload):
    _case.settings = MACHINE_SETTINGS
del _case


# ---------------------------------------------------------------------- seeded long random runs

LONG_CONFIGS = [
    # policy, ttl, capacity blocks, metadata_only, t0, seed
    ("lru", None, 12, False, 1000.0, 1),
    ("lru", 1.0, 10, True, 0.1, 2),
    ("lfu", None, 12, True, 1000.0, 3),
    ("lfu", 0.75, 10, False, 1.7e9, 4),
    ("ttl", 0.5, 12, False, 0.0, 5),
    ("ttl", 0.3, None, True, 1000.0, 6),
]


def _random_tokens(rng: random.Random, history: list[list[int]]) -> list[int]:
    if history and rng.random() < 0.8:
        base = rng.choice(history)[: rng.randint(0, 16)]
    else:
        base = []
    tokens = (base + [rng.randrange(VOCAB) for _ in range(rng.randint(0, 6))])[:17]
    history.append(tokens)
    del history[:-24]
    return tokens


def run_random(policy: str, ttl: float | None, capacity: int | None, metadata_only: bool, t0: float,
               seed: int, ops: int) -> Harness:
    rng = random.Random(seed)
    h = Harness(policy=policy, ttl=ttl, capacity_blocks=capacity, metadata_only=metadata_only, t0=t0,
                extra_capacity_bytes=3)
    history: list[list[int]] = []
    names = ["insert"] * 8 + ["match"] * 5 + ["pin"] * 2 + ["unpin"] * 2 + ["peek"] * 2 + ["load"] * 2
    names += ["load_pinned", "evict", "expire", "clear", "backwards", "pinned_context"]
    for step in range(ops):
        r = rng.random()
        if r < 0.1:
            h.tick_to_expiry(rng.randrange(8), rng.choice([-1, 0, 0, 1]))
        else:
            frac = 0.0 if r < 0.4 else rng.choice([0.25, 0.5, 1.0, 2.0]) if r < 0.6 else rng.uniform(0.0, 0.6)
            h.tick(frac)
        ns = "b" if rng.random() < 0.2 else "a"
        kind = rng.choice(["list", "i32", "i64", "seq"])
        name = rng.choice(names)
        if name == "insert":
            start = rng.choice([0, 0, 0, 1])
            h.insert(ns, rng.choice([None, "s1", "s2"]), _random_tokens(rng, history), kind, start)
        elif name in ("match", "pin"):
            h.match(ns, _random_tokens(rng, history), kind, pin=name == "pin")
        elif name == "unpin" and h.held:
            h.unpin(rng.randrange(len(h.held)), explicit_now=rng.random() < 0.7)
        elif name == "peek":
            h.peek(ns, _random_tokens(rng, history), kind)
        elif name == "load" and h.payloads:
            h.load(ns, _random_tokens(rng, history), kind, "ndarray")
        elif name == "load_pinned" and h.payloads and h.held:
            h.load_pinned(rng.randrange(len(h.held)))
        elif name == "pinned_context":
            h.pinned_context(ns, _random_tokens(rng, history), kind)
        elif name == "evict":
            h.evict(rng.randint(0, 4 * h.block_bytes))
        elif name == "expire":
            h.expire()
        elif name == "clear" and rng.random() < 0.2:
            h.clear()
        elif name == "backwards":
            h.backwards(rng.choice(["match", "peek", "insert", "evict", "residency", "unpin"]), [0, 1, 2, 0], True)
        # Keep the pins from filling the tier for good.
        while len(h.held) > 8:
            h.unpin(0)
        h.check(residency=step % 37 == 36)
    h.drain()
    h.check(residency=True)
    return h


@pytest.mark.parametrize(("policy", "ttl", "capacity", "metadata_only", "t0", "seed"), LONG_CONFIGS)
def test_long_random_sequence(policy, ttl, capacity, metadata_only, t0, seed) -> None:
    h = run_random(policy, ttl, capacity, metadata_only, t0, seed=seed, ops=5000)
    try:
        stats = h.store.stats()
        # The run did exercise the interesting paths.
        assert stats.hits > 0 and stats.misses > 0 and stats.inserted > 0
        if capacity is not None:
            assert stats.evicted > 0
        if ttl is not None:
            assert stats.expired > 0
    finally:
        h.store.close()


# ---------------------------------------------------------------------- regressions found by the machine


def _ttl_store(ttl: float, capacity_blocks: int = 10) -> Store:
    return Store(StoreConfig(block_size=2, block_bytes=8, metadata_only=True,
                             host=TierConfig(capacity_bytes=capacity_blocks * 8, policy="ttl", ttl_s=ttl)))


@pytest.mark.parametrize("how", ["match", "expire", "evict", "residency"])
def test_ttl_boundary_block_is_expired_everywhere(how: str) -> None:
    """0.4 - 0.1 > 0.3 but 0.4 > 0.1 + 0.3 is false in doubles: a block idle for just over its TTL must be
    expired for lookups *and* counted as expired (not evicted) when it is reclaimed, whatever reclaims it."""
    t0, ttl, now = 0.1, 0.3, 0.4
    assert now - t0 > ttl and not now > t0 + ttl  # the float boundary this test is about
    with _ttl_store(ttl, capacity_blocks=1) as s:
        s.insert([0, 1], now=t0)
        if how == "match":
            assert s.match([0, 1], now=now).num_blocks == 0
        elif how == "expire":
            assert s.expire(now=now) == 1
        elif how == "evict":
            assert s.insert([2, 2], now=now).inserted_blocks == 1  # makes room by removing [0, 1]
        else:
            rows = s.residency(now=now).rows
            assert sum(r.resident_bytes for r in rows) == 0
        stats = s.stats()
        assert (stats.expired, stats.evicted) == (1, 0), stats
        s.check_invariants()


def test_evict_of_huge_byte_count_evicts_everything() -> None:
    """ceil(nbytes / block_bytes) must not overflow: evict(2**64 - 1) frees every unpinned block."""
    with Store(StoreConfig.for_blocks(8, block_size=2, block_bytes=8)) as s:
        s.insert([0, 1, 0, 1, 0, 1], now=0.0)
        assert s.evict(2**64 - 1, now=1.0) == 3 * 8
        assert s.stats().blocks == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_now_must_be_finite(bad: float) -> None:
    """A NaN ``now`` is an error, not "use the monotonic clock" (which jumps the store's clock ahead
    of the caller's, so that every later call with the caller's clock fails)."""
    with Store(StoreConfig.for_blocks(8, block_size=2, block_bytes=8)) as s:
        s.insert([0, 1, 0, 1], now=5.0)
        pin = s.match([0, 1], now=5.0, pin=True)
        calls = [
            lambda: s.match([0, 1], now=bad),
            lambda: s.peek([0, 1], now=bad),
            lambda: s.insert([0, 2], now=bad),
            lambda: s.evict(8, now=bad),
            lambda: s.expire(now=bad),
            lambda: s.clear(now=bad),
            lambda: s.residency(now=bad),
            lambda: s.unpin(pin, now=bad),
        ]
        for call in calls:
            with pytest.raises(InvalidArgumentError):
                call()
        # Nothing changed, and the caller's clock still works.
        stats = s.stats()
        assert (stats.blocks, stats.hits, stats.misses, stats.pinned_blocks) == (2, 1, 0, 1)
        s.unpin(pin, now=5.0)
        assert s.match([0, 1, 0, 1], now=5.0).num_blocks == 2


# ---------------------------------------------------------------------- the disk tier
# DiskStoreMachine drives a payload store with a host tier over a disk tier (an LMDB folder of its own) against
# model.TieredModel: write-back (host evictions, expiry and reclaiming walks demote to disk) or write-through,
# spills of what the host cannot take, disk hits and their promotion on load (or none: promote=False), flush
# (with and without the host tier), close (persisting the host or not) and reopen of the same folder by a new
# Store, and damage done to block payloads in the folder between close and reopen (bytes flipped, a byte cut off,
# the payload deleted): a damaged block must never be served. After every step it checks the host counters, the disk tier's counters
# (``written + pending == queued``: the writer commits when it likes), which blocks each tier holds (every cached
# prefix peeks to the same host and disk depth), pins, and (half the runs) residency per account and tier.
# At every reopen it also checks that the folder holds exactly the model's disk blocks, byte for byte.
#
# Injected write failures (``failed_flush``): through the disk I/O's fault hook every write (or commit) fails, as
# on a full disk, while a flush runs. The flush must raise DiskWriteError naming how many blocks are not
# persisted, keep them queued (still served, still counted as the disk's: the model's disk index holds queued
# and committed blocks alike), count each once in ``write_errors``, and a later flush, close or reopen must
# commit them: the reopen check then finds every model block in the folder, byte for byte.

DISK_BLOCKS = 4096  # the disk tier never fills in these runs (its eviction order after a restart is a freedom)
PENDING_LIMIT = 16  # the check flushes when more blocks than this wait for the writer (see TieredModel)
DAMAGE = ("flip", "cut", "delete", "record", "record_cut")  # payload bytes; index records (bits of keys, a cut)


@dataclass
class DiskHeld:
    """A pin held by the test: the store's MatchResult and the model's matched host keys and disk entries."""

    result: kvtier.MatchResult
    host: list[Key]
    disk: list[DiskEntry]
    ns: str
    tokens: list[int]


class DiskHarness:
    """A store with a disk tier and a TieredModel driven in lockstep (explicit ``now`` everywhere)."""

    def __init__(self, *, policy: str, ttl: float | None, capacity_blocks: int, write_through: bool, promote: bool,
                 block_size: int, block_bytes: int, t0: float, audit_residency: bool) -> None:
        self.block_size = block_size
        self.block_bytes = block_bytes
        self.ttl = ttl
        self.capacity_blocks = capacity_blocks
        self.audit_residency = audit_residency
        self.path = tempfile.mkdtemp(prefix="kvtier-machine-")
        self.cfg = StoreConfig(
            block_size=block_size,
            block_bytes=block_bytes,
            vocab_size=VOCAB,
            host=TierConfig(capacity_bytes=capacity_blocks * block_bytes, policy=policy, ttl_s=ttl),  # type: ignore[arg-type]
            disk=DiskConfig(path=self.path, capacity_bytes=DISK_BLOCKS * block_bytes, write_through=write_through,
                            promote=promote, sync=False),
        )
        self.model = TieredModel(block_size=block_size, block_bytes=block_bytes, capacity_blocks=capacity_blocks,
                                 policy=policy, ttl=ttl, payloads=True, write_through=write_through, promote=promote)
        self.clock = t0
        self.held: list[DiskHeld] = []
        self.nonce = 0
        self.store = Store(self.cfg, now=t0)
        self.model.reopen(t0)

    # ------------------------------------------------------------------ plumbing
    def tick(self, frac: float) -> float:
        self.clock += frac * (self.ttl if self.ttl is not None else 1.0)
        return self.clock

    def tokens_of(self, key: Key) -> list[int]:
        return [t for block in key[1] for t in block]

    def payload(self, ns: str, tokens: list[int], start: int) -> bytes:
        self.nonce += 1
        keys = self.model.keys_of(ns, tokens)[start:]
        return b"".join(payload_bytes(ns, k[1], self.nonce, self.block_bytes) for k in keys)

    def expect_match(self, got: kvtier.MatchResult, host: list[Key], disk: list[Any]) -> None:
        assert (got.host_blocks, got.num_blocks) == (len(host), len(host) + len(disk)), (got, len(host), len(disk))
        assert got.num_tokens == got.num_blocks * self.block_size
        assert got.tiers.tolist() == [Tier.HOST] * len(host) + [Tier.DISK] * len(disk)

    # ------------------------------------------------------------------ operations
    def insert(self, ns: str, session: str | None, tokens: list[int], kind: str, start: int) -> None:
        now = self.clock
        start = min(start, len(tokens) // self.block_size)
        data = self.payload(ns, tokens, start)
        got = self.store.insert(tokens_arg(tokens, kind), np.frombuffer(data, np.uint8), start_block=start,
                                namespace=NAMESPACES[ns], session=session, now=now)
        want = self.model.insert(ns, session or "", tokens, now, data, start)
        assert (got.matched_blocks, got.inserted_blocks, got.full_blocks) == want, (got, want)

    def match(self, ns: str, tokens: list[int], kind: str, pin: bool) -> None:
        now = self.clock
        got = self.store.match(tokens_arg(tokens, kind), namespace=NAMESPACES[ns], now=now, pin=pin)
        host, disk = self.model.lookup(ns, tokens, now, pin)
        self.expect_match(got, host, disk)
        assert got.pinned == (pin and got.num_blocks > 0)
        if got.pinned:
            self.held.append(DiskHeld(got, host, disk, ns, list(tokens)))

    def unpin(self, i: int, explicit_now: bool) -> None:
        h = self.held.pop(i % len(self.held))
        if explicit_now:
            self.store.unpin(h.result, now=self.clock)
            self.model.release(h.host, h.disk, self.clock)
        else:
            self.store.unpin(h.result)  # at the latest time the store has seen
            self.model.release(h.host, h.disk)

    def peek(self, ns: str, tokens: list[int], kind: str) -> None:
        got = self.store.peek(tokens_arg(tokens, kind), namespace=NAMESPACES[ns], now=self.clock)
        host, disk = self.model.peek_tiers(ns, tokens, self.clock)
        self.expect_match(got, [None] * host, [None] * disk)  # type: ignore[list-item]

    def load(self, ns: str, tokens: list[int], kind: str) -> None:
        now = self.clock
        bb = self.block_bytes
        full = len(tokens) // self.block_size
        out = np.full(full * bb + 3, 0xA5, dtype=np.uint8)
        got = self.store.load(tokens_arg(tokens, kind), out, namespace=NAMESPACES[ns], now=now)
        n, data = self.model.load(ns, tokens, now)
        assert got == n, (got, n)
        assert out[: n * bb].tobytes() == data, "load served other bytes than were stored (or a damaged block)"
        # The bytes after the blocks served are the store's to use (verified copies of later blocks), up to the
        # prompt's full blocks: past those, nothing.
        assert out[full * bb :].tobytes() == b"\xa5" * 3, "load wrote past the prompt's blocks"

    def load_pinned(self, i: int) -> None:
        h = self.held[i % len(self.held)]
        out = np.full(h.result.num_blocks * self.block_bytes, 0x5A, dtype=np.uint8)
        got = self.store.load(h.result, out)
        n, data = self.model.load_tiers(h.ns, h.host, h.disk, self.model.clock)
        assert got == n, (got, n)
        assert out[: n * self.block_bytes].tobytes() == data, "load of a pinned match served other bytes"

    def evict(self, nbytes: int) -> None:
        assert self.store.evict(nbytes, now=self.clock) == self.model.evict(nbytes, self.clock)

    def expire(self) -> None:
        assert self.store.expire(now=self.clock) == self.model.expire(self.clock)

    def clear(self) -> None:
        self.store.flush()  # blocks still queued stay through a clear: commit them first (a freedom otherwise)
        assert self.store.clear(now=self.clock) == self.model.clear(self.clock)

    def flush(self, host: bool) -> None:
        self.store.flush(host=host)
        if host:
            self.model.persist_host(self.model.clock)
        d = self.store.stats().disk
        assert d is not None and d.pending == 0 and d.written == d.queued

    def failed_flush(self, host: bool, op: str) -> None:
        """A flush while every ``op`` ("write" or "commit") of the folder fails with ENOSPC."""
        s = self.store
        assert s._disk is not None
        before = s.stats().disk.write_errors  # type: ignore[union-attr]
        s._disk.io.fault = Faults({op: None})
        raised: DiskWriteError | None = None
        try:
            s.flush(host=host)
        except DiskWriteError as e:
            raised = e
        finally:
            s._disk.io.fault = None
        if host:
            self.model.persist_host(self.model.clock)
        d = s.stats().disk
        assert d is not None
        failed = d.write_errors - before
        # Blocks the writer committed before the hook was in place are persisted; every other one is still queued
        # and failed at least once (the writer may have tried it before the flush did: each try counts).
        assert d.pending <= failed, (failed, d.pending)
        assert (raised is not None) == (d.pending > 0), raised
        if raised is not None:
            assert f"{d.pending} blocks not persisted ({d.pending} kept queued" in str(raised), str(raised)
            assert "No space left on device" in str(raised)
        self.model.dcounters["write_errors"] += failed  # how many tries failed depends on the writer's timing

    def reopen(self, persist: bool, damage: list[tuple[int, str, int]]) -> None:
        """Release the pins, close(persist=...), damage payloads in the folder, and open a new Store on it at the
        clock's time."""
        while self.held:  # before close: unpin() after close() raises StoreClosedError
            self.unpin(0, explicit_now=False)
        self.store.close(persist=persist)
        if persist:
            self.model.persist_host(self.model.clock)
        damaged = self.check_folder(damage)
        self.store = Store(self.cfg, now=self.clock)
        self.model.reopen(self.clock)
        report = self.store.restore_report
        assert report is not None
        assert (report.restored, report.damaged, report.foreign) == (len(self.model.disk), damaged, 0), report

    def check_folder(self, damage: list[tuple[int, str, int]]) -> int:
        """The closed folder holds exactly the model's disk blocks with their bytes; then ``damage`` is done:
        (which block, how, which byte) for blocks not damaged yet. Returns how many index records it damaged:
        the next open drops those blocks (and counts them)."""
        damaged = 0
        keys = sorted(self.model.disk, key=repr)
        chained = {}
        for key in keys:
            ns = NAMESPACES[key[0]] or DEFAULT_NS
            chained[key] = kvtier.block_keys(self.tokens_of(key), ns, block_size=self.block_size)[-1].tobytes()
        env = lmdb_env(self.path)
        try:
            index, blocks = env.open_db(b"index"), env.open_db(b"blocks")
            with env.begin(write=True) as txn:
                assert {bytes(k) for k, _ in txn.cursor(db=index)} == set(chained.values()), "folder index != model"
                stored = {bytes(k): bytes(v) for k, v in txn.cursor(db=blocks)}
                for key in keys:
                    e = self.model.disk[key]
                    if e.damage is None:
                        assert stored.pop(chained[key]) == e.payload, f"the folder lost the bytes of {key}"
                    elif e.damage == "corrupt":
                        assert stored.pop(chained[key]) != e.payload
                assert not stored, "payloads without a model block in the folder"
                for which, how, at in damage:
                    if not keys:
                        break
                    key = keys[which % len(keys)]
                    e = self.model.disk.get(key)
                    if e is None or e.damage is not None:  # its record is gone, or it is damaged already
                        continue
                    k = chained[key]
                    if how.startswith("record"):
                        record = bytearray(txn.get(k, db=index))
                        if how == "record":  # a bit of the namespace key, parent key or tokens: the key no longer matches
                            record[32 + at % (64 + 4 * self.block_size)] ^= 1 << (at % 8)
                        else:
                            del record[-1]
                        txn.put(k, bytes(record), db=index)
                        del self.model.disk[key]
                        damaged += 1
                        continue
                    value = bytearray(txn.get(k, db=blocks))
                    if how == "delete":
                        txn.delete(k, db=blocks)
                        e.damage = "missing"
                        continue
                    if how == "flip":
                        value[at % len(value)] ^= 1 << (at % 8)
                    else:
                        del value[-1]
                    txn.put(k, bytes(value), db=blocks)
                    e.damage = "corrupt"
        finally:
            env.close()
        return damaged

    def backwards(self, op: str, tokens: list[int]) -> None:
        """A call at a time before the store's clock is refused and changes nothing."""
        past = math.nextafter(self.model.clock, -math.inf)
        s = self.store
        bb = self.block_bytes
        calls = {
            "match": lambda: s.match(tokens, now=past),
            "peek": lambda: s.peek(tokens, now=past),
            "insert": lambda: s.insert(tokens, bytes(len(tokens) // self.block_size * bb), now=past),
            "load": lambda: s.load(tokens, bytearray(len(tokens) // self.block_size * bb), now=past),
            "evict": lambda: s.evict(10**6, now=past),
            "residency": lambda: s.residency(now=past),
        }
        with pytest.raises(InvalidArgumentError, match="backwards"):
            calls[op]()

    # ------------------------------------------------------------------ checks
    def check_residency(self) -> None:
        now = self.clock
        res = self.store.residency(now=now)
        assert all(row.tier in (Tier.HOST, Tier.DISK) for row in res.rows)
        compare_residency(res, self.model.tier_residency(now), lambda row: (account_of(row), int(row.tier)))

    def check(self) -> None:
        s, m = self.store, self.model
        s.check_invariants()
        m.check_prefix_closed()
        if self.audit_residency:
            self.check_residency()
        stats = s.stats()
        want = m.stats()
        got = {k: getattr(stats, k) for k in want}
        assert got == want, {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        assert stats.blocks <= self.capacity_blocks
        d = stats.disk
        assert d is not None
        dwant = m.disk_stats()
        dgot = {k: getattr(d, k) for k in dwant}
        assert dgot == dwant, {k: (dgot[k], dwant[k]) for k in dwant if dgot[k] != dwant[k]}
        assert d.written + d.pending == d.queued and d.bytes_written == d.written * self.block_bytes
        # Which blocks each tier holds: every cached prefix (host or disk) peeks to the model's depths.
        for key in sorted(set(m.cache) | set(m.disk), key=repr):
            tokens = self.tokens_of(key)
            got_m = s.peek(tokens, namespace=NAMESPACES[key[0]], now=self.clock)
            host, disk = m.peek_tiers(key[0], tokens, self.clock)
            assert (got_m.host_blocks, got_m.num_blocks) == (host, host + disk), ("tiers differ at", key)
        for h in self.held:  # pinned host blocks are never evicted
            assert all(k in m.cache and m.cache[k].pins > 0 for k in h.host)
        if d.pending > PENDING_LIMIT:
            s.flush()

    def close(self) -> None:
        try:
            if not self.store.closed:
                self.store.close(persist=False)
        finally:
            shutil.rmtree(self.path, ignore_errors=True)


class DiskStoreMachine(PromptMachine):
    @initialize(
        policy=st.sampled_from(["lru", "lru", "lfu", "ttl"]),
        ttl=st.sampled_from([None, 0.5, 2.0]),
        capacity=st.integers(1, 8),
        write_through=st.sampled_from([False, False, True]),
        promote=st.sampled_from([True, True, False]),
        block_size=st.sampled_from([2, 2, 1, 3]),
        block_bytes=st.sampled_from([8, 24]),
        t0=st.sampled_from([0.0, 1000.0, 1.7e9]),
        audit_residency=st.booleans(),
    )
    def setup(self, policy, ttl, capacity, write_through, promote, block_size, block_bytes, t0, audit_residency) -> None:
        if policy == "ttl" and ttl is None:
            ttl = 1.0
        self.h = DiskHarness(policy=policy, ttl=ttl, capacity_blocks=capacity, write_through=write_through,
                             promote=promote, block_size=block_size, block_bytes=block_bytes, t0=t0, audit_residency=audit_residency)

    @rule(spec=token_specs, dt=steps, ns=namespaces, session=sessions, kind=token_kinds,
          start=st.sampled_from([0, 0, 0, 1, 2]))
    def insert(self, spec, dt, ns, session, kind, start) -> None:
        assert self.h is not None
        self.h.tick(dt)
        self.h.insert(ns, session, self._tokens(spec, remember=True), kind, start)

    @rule(spec=token_specs, dt=steps, ns=namespaces, kind=token_kinds, pin=st.booleans())
    def match(self, spec, dt, ns, kind, pin) -> None:
        assert self.h is not None
        self.h.tick(dt)
        self.h.match(ns, self._tokens(spec), kind, pin)

    @rule(spec=token_specs, dt=steps, ns=namespaces, session=sessions, kind=token_kinds, load=st.booleans())
    def request(self, spec, dt, ns, session, kind, load) -> None:
        """What an engine does per request: match (or load) the prompt, then insert what was missing."""
        assert self.h is not None
        self.h.tick(dt)
        tokens = self._tokens(spec, remember=True)
        if load:
            self.h.load(ns, tokens, kind)
        else:
            self.h.match(ns, tokens, kind, pin=False)
        self.h.insert(ns, session, tokens, kind, 0)

    @rule(spec=token_specs, dt=steps, ns=namespaces, kind=token_kinds, pinned=st.integers(-2, 15))
    def load(self, spec, dt, ns, kind, pinned) -> None:
        """Load by tokens (promotes disk hits), or (pinned >= 0, a pin held) load of a pinned match."""
        assert self.h is not None
        if pinned >= 0 and self.h.held:
            self.h.load_pinned(pinned)
            return
        self.h.tick(dt)
        self.h.load(ns, self._tokens(spec), kind)

    @rule(blocks=st.integers(0, 4), dt=steps)
    def evict(self, blocks, dt) -> None:
        """Host evictions: demoted to the disk (write-back)."""
        assert self.h is not None
        self.h.tick(dt)
        self.h.evict(blocks * self.h.block_bytes)

    @rule(op=st.sampled_from(["expire", "clear", "flush", "flush_host", "reopen", "reopen"]),
          dt=st.one_of(steps, st.sampled_from([0.5, 3.0])), persist=st.booleans(),
          damage=st.lists(st.tuples(st.integers(0, 63), st.sampled_from(DAMAGE), st.integers(0, 255)), max_size=3))
    def maintenance(self, op, dt, persist, damage) -> None:
        """expire, clear, flush (``host=True`` or not), or reopen: close (persisting the host tier or not), damage
        payloads in the folder, open a new Store on it."""
        assert self.h is not None
        self.h.tick(dt)
        if op == "reopen":
            self.h.reopen(persist, damage)
        elif op.startswith("flush"):
            self.h.flush(host=op == "flush_host")
        else:
            getattr(self.h, op)()

    @rule(op=st.sampled_from(["match", "peek", "insert", "load", "evict", "residency"]), spec=token_specs)
    def refused(self, op, spec) -> None:
        assert self.h is not None
        self.h.backwards(op, self._tokens(spec))

    @rule(host=st.booleans(), op=st.sampled_from(["commit", "write"]), dt=steps)
    def failed_flush(self, host, op, dt) -> None:
        """A flush on a full disk: refused with nothing lost; a later flush, close or reopen commits the blocks."""
        assert self.h is not None
        self.h.tick(dt)
        self.h.failed_flush(host, op)

    @invariant()
    def consistent(self) -> None:
        if self.h is not None:
            self.h.check()

    def teardown(self) -> None:
        if self.h is not None:
            self.h.close()


TestDiskTier = DiskStoreMachine.TestCase
TestDiskTier.settings = machine_settings(100, 50)
