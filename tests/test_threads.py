"""Four threads hammer one shared payload store; afterwards its state and counters must add up.

Each thread runs 10,000 mixed operations (insert, match, pin + load + keys + unpin, peek, load,
evict, expire) on prompts that share prefixes, so nodes are split, pinned, evicted and expired under
each other's feet. Every call uses the store's default monotonic clock (no ``now``).

A block's payload is its chained block key (32 bytes): a deterministic function of the block's whole
prefix, so every load can be checked byte for byte, whatever was evicted and re-inserted meanwhile.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import kvtier
from kvtier import DiskConfig, Namespace, Store, StoreConfig, TierConfig, TokenSequence

BS = 4
BB = 32  # one block key per block
CAPACITY_BLOCKS = 48
N_THREADS = 4
OPS_PER_THREAD = 10_000
NS = Namespace(model="threads", tenant="t")


def _prompts() -> list[np.ndarray]:
    """8 system prompts of 2 blocks, each with 12 continuations of 1..4 blocks, some with a tail."""
    rng = np.random.default_rng(1234)
    out = []
    for s in range(8):
        system = rng.integers(0, 30_000, 2 * BS, dtype=np.int64)
        for c in range(12):
            n = int(rng.integers(1, 5)) * BS + int(rng.integers(0, BS)) * (c % 2)
            out.append(np.concatenate([system, rng.integers(0, 30_000, n)]).astype(np.int32))
    return out


PROMPTS = _prompts()
PAYLOADS = [kvtier.block_keys(p, NS, block_size=BS) for p in PROMPTS]  # uint8[n_blocks, 32]


@dataclass
class Tally:
    asked: int = 0  # full blocks asked by touching lookups (match, match+pin, load)
    hits: int = 0  # blocks those lookups returned
    read_blocks: int = 0  # blocks copied out by load and load of a pinned match
    ops: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def _worker(store: Store, seed: int, start: threading.Barrier, tally: Tally) -> None:
    rng = random.Random(seed)
    seq = TokenSequence()  # this thread's own, reused
    out = np.empty((8, BB), np.uint8)
    start.wait()
    for i in range(OPS_PER_THREAD):
        k = rng.randrange(len(PROMPTS))
        toks, kv = PROMPTS[k], PAYLOADS[k]
        n = len(kv)
        op = rng.choices(
            ["insert", "insert_tail", "match", "pin", "peek", "load", "evict", "expire", "check"],
            weights=[25, 10, 20, 15, 10, 15, 3, 2, 0.2],
        )[0]
        tally.ops[op] += 1
        try:
            if op == "insert":
                r = store.insert(toks, kv)
                assert r.full_blocks == n and r.stored_blocks <= n
            elif op == "insert_tail":
                # An engine saving only the blocks past what it found cached.
                first = store.peek(toks).num_blocks
                r = store.insert(toks, kv[first:], start_block=first)
                assert r.full_blocks == n
            elif op == "match":
                arg = toks
                if rng.random() < 0.3:
                    seq.truncate(0)
                    seq.extend(toks)
                    arg = seq  # type: ignore[assignment]
                m = store.match(arg)
                tally.asked += n
                tally.hits += m.num_blocks
                assert m.num_tokens == m.num_blocks * BS and 0 <= m.num_blocks <= n
            elif op == "pin":
                m = store.match(toks, pin=True)
                tally.asked += n
                tally.hits += m.num_blocks
                if m.pinned:
                    out[:] = 0
                    got = store.load(m, out)
                    tally.read_blocks += got
                    assert got == m.num_blocks, (got, m.num_blocks)
                    assert np.array_equal(out[:got], kv[:got]), f"pinned load of prompt {k} returned wrong bytes"
                    assert np.array_equal(store.block_keys_of(m), kv[: m.num_blocks])
                    if rng.random() < 0.5:
                        time.sleep(0)  # hold the pin across a switch
                    store.unpin(m)
                else:
                    assert m.num_blocks == 0
            elif op == "peek":
                m = store.peek(toks)
                assert 0 <= m.num_blocks <= n
            elif op == "load":
                out[:] = 0
                got = store.load(toks, out)
                tally.asked += n
                tally.hits += got
                tally.read_blocks += got
                assert np.array_equal(out[:got], kv[:got]), f"load of prompt {k} returned wrong bytes"
                assert not out[got:n].any(), "load wrote past the blocks it returned"
            elif op == "evict":
                freed = store.evict(rng.randrange(0, 4 * BB))
                assert freed % BB == 0
            elif op == "expire":
                store.expire()
            elif op == "check":
                store.check_invariants()
        except Exception as e:  # noqa: BLE001 - reported below with the op that raised
            tally.errors.append(f"thread {seed} op {i} {op} prompt {k}: {type(e).__name__}: {e}")
            if len(tally.errors) > 20:
                return


# TTLs of about a block's lifetime under this churn (milliseconds), so both eviction and expiry happen.
@pytest.mark.parametrize(("policy", "ttl_s"), [("lru", None), ("lru", 0.002), ("lfu", 0.001), ("ttl", 0.0005)])
def test_threads_share_one_store(policy: str, ttl_s: float | None) -> None:
    cfg = StoreConfig(
        block_size=BS,
        block_bytes=BB,
        payload_dtype="uint8",
        host=TierConfig(capacity_bytes=CAPACITY_BLOCKS * BB, policy=policy, ttl_s=ttl_s),  # type: ignore[arg-type]
    )
    store = Store(cfg, namespace=NS)
    start = threading.Barrier(N_THREADS)
    tallies = [Tally() for _ in range(N_THREADS)]
    threads = [
        threading.Thread(target=_worker, args=(store, seed, start, tallies[seed]), name=f"kvtier-worker-{seed}")
        for seed in range(N_THREADS)
    ]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the Python parts as well
    t0 = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(old)
    elapsed = time.perf_counter() - t0
    assert not any(t.is_alive() for t in threads), "a worker hung (deadlock?)"
    errors = [e for t in tallies for e in t.errors]
    assert not errors, "\n".join(errors[:20])

    store.check_invariants()
    st = store.stats()
    asked = sum(t.asked for t in tallies)
    hits = sum(t.hits for t in tallies)
    read = sum(t.read_blocks for t in tallies)
    ops = sum((t.ops for t in tallies), Counter())
    assert sum(ops.values()) == N_THREADS * OPS_PER_THREAD
    assert st.hits == hits, (st.hits, hits)
    assert st.hits + st.misses == asked, (st.hits, st.misses, asked)
    assert st.pinned_blocks == 0
    assert st.blocks <= CAPACITY_BLOCKS and st.capacity_bytes == CAPACITY_BLOCKS * BB
    assert st.resident_bytes == st.blocks * BB
    assert st.inserted - st.evicted - st.expired == st.blocks
    assert st.bytes_written == st.inserted * BB
    assert st.bytes_read == read * BB
    assert st.evicted + st.expired > 0, "the workload should overflow the tier"
    if ttl_s is None:
        assert st.expired == 0
        assert hits > 0  # with millisecond TTLs a slow machine may see every block expire first

    # Whatever survived is intact: load each prompt once more, single-threaded.
    out = np.empty((8, BB), np.uint8)
    for toks, kv in zip(PROMPTS, PAYLOADS):
        got = store.load(toks, out)
        assert np.array_equal(out[:got], kv[:got])
    store.clear()
    store.check_invariants()
    assert store.stats().blocks == 0
    store.close()
    assert elapsed < 60, f"took {elapsed:.1f} s"


def test_close_while_other_threads_work() -> None:
    """Closing under load: the other threads get StoreClosedError (or finish), never a crash."""
    cfg = StoreConfig(block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=CAPACITY_BLOCKS * BB))
    store = Store(cfg, namespace=NS)
    stop = threading.Event()
    seen: Counter[str] = Counter()
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        out = np.empty((8, BB), np.uint8)
        while not stop.is_set():
            k = rng.randrange(len(PROMPTS))
            try:
                store.insert(PROMPTS[k], PAYLOADS[k])
                m = store.match(PROMPTS[k], pin=True)
                if m.pinned:
                    try:
                        got = store.load(m, out)
                        assert np.array_equal(out[:got], PAYLOADS[k][:got])
                    finally:
                        store.unpin(m)
                seen["ok"] += 1
            except kvtier.StoreClosedError:
                seen["closed"] += 1
                return
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    store.close()
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert seen["ok"] > 0
    store.check_invariants()


def test_concurrent_unpin_of_one_pin_releases_it_once() -> None:
    """Two threads releasing the same pin: exactly one succeeds, the other is told it was released."""
    cfg = kvtier.StoreConfig(block_size=1, block_bytes=1 << 20, host=kvtier.TierConfig(capacity_bytes=256 << 20))
    s = kvtier.Store(cfg)
    toks = np.arange(256, dtype=np.int32)
    s.insert(toks, np.zeros((256, 1 << 20), np.uint8), now=1.0)
    out = np.empty((256, 1 << 20), np.uint8)
    for _ in range(20):
        other = s.match(toks[:1], now=1.0, pin=True)  # a second request holding the same prefix
        m = s.match(toks[:1], now=1.0, pin=True)
        barrier = threading.Barrier(3)
        errors: list[BaseException] = []

        def load() -> None:
            barrier.wait()
            s.load(toks, out, now=1.0)  # holds the store lock while copying 256 MiB

        def release() -> None:
            barrier.wait()
            try:
                s.unpin(m, now=1.0)
            except kvtier.InvalidArgumentError as e:
                errors.append(e)

        threads = [threading.Thread(target=f) for f in (load, release, release)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 1 and "already released" in str(errors[0])
        assert s.stats().pinned_blocks == 1  # `other` still holds its block
        s.unpin(other, now=1.0)
        assert s.stats().pinned_blocks == 0
    s.check_invariants()
    s.close()


# Ops per thread of the disk stress test, and a time bound: under ThreadSanitizer (.ci/sanitize) each op is
# several times slower, and the test stops at the bound with whatever it did (it needs STRESS_MIN_OPS).
STRESS_OPS = 2_000
STRESS_SECONDS = 20.0
STRESS_MIN_OPS = 200


@pytest.mark.parametrize("write_through", [False, True], ids=["write-back", "write-through"])
def test_threads_stress_host_and_disk_tiers(tmp_path: Path, write_through: bool) -> None:
    """4 threads: match, insert, pin + load + unpin, load, evict (demoting to disk) and flush on one store.

    The host tier holds 16 blocks and the disk 160, so blocks move down on eviction (write-back) or on
    insert (write-through) and back up on hits, while other threads pin, load and flush them.
    """
    cfg = StoreConfig(
        block_size=BS,
        block_bytes=BB,
        payload_dtype="uint8",
        host=TierConfig(capacity_bytes=16 * BB),
        disk=DiskConfig(path=tmp_path, capacity_bytes=160 * BB, write_through=write_through, queue_blocks=8,
                        batch_blocks=4, sync=False),
    )
    store = Store(cfg, namespace=NS)
    start = threading.Barrier(N_THREADS)
    deadline = time.monotonic() + STRESS_SECONDS
    done = [0] * N_THREADS
    flushes = [0] * N_THREADS
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        out = np.empty((8, BB), np.uint8)
        start.wait()
        for i in range(STRESS_OPS):
            if time.monotonic() > deadline:
                return
            k = rng.randrange(len(PROMPTS))
            toks, kv = PROMPTS[k], PAYLOADS[k]
            op = rng.choices(["insert", "match", "pin", "load", "evict", "flush"], weights=[30, 15, 25, 20, 7, 3])[0]
            try:
                if op == "insert":
                    store.insert(toks, kv)
                elif op == "match":
                    m = store.match(toks)
                    assert 0 <= m.num_blocks <= len(kv)
                elif op == "pin":
                    m = store.match(toks, pin=True)
                    if m.pinned:
                        try:
                            got = store.load(m, out)
                            assert got == m.num_blocks and np.array_equal(out[:got], kv[:got]), f"prompt {k}"
                        finally:
                            store.unpin(m)
                elif op == "load":
                    got = store.load(toks, out)
                    assert np.array_equal(out[:got], kv[:got]), f"load of prompt {k} returned wrong bytes"
                elif op == "evict":
                    store.evict(rng.randrange(1, 8) * BB)
                else:
                    store.flush(host=rng.random() < 0.3)
                    flushes[seed] += 1
            except Exception as e:  # noqa: BLE001 - reported below with the op that raised
                errors.append(f"thread {seed} op {i} {op} prompt {k}: {type(e).__name__}: {e}")
                return
            done[seed] += 1

    threads = [threading.Thread(target=work, args=(seed,), name=f"kvtier-stress-{seed}") for seed in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=STRESS_SECONDS + 60)
    assert not any(t.is_alive() for t in threads), "a worker hung (deadlock?)"
    assert not errors, "\n".join(errors)
    assert min(done) >= STRESS_MIN_OPS, done
    assert sum(flushes) > 0
    store.flush(host=True)
    store.check_invariants()
    st = store.stats()
    assert st.pinned_blocks == 0 and st.disk is not None
    assert (st.disk.write_errors, st.disk.corrupted) == (0, 0)
    assert st.disk.blocks > 0, "the workload should reach the disk"
    store.close()

    # What reached the folder is intact after a restart (a fresh store, empty host tier).
    with Store(cfg, namespace=NS) as again:
        served = 0
        for toks, kv in zip(PROMPTS, PAYLOADS):
            got = again.load(toks, out := np.empty((8, BB), np.uint8))
            assert np.array_equal(out[:got], kv[:got])
            served += got
        assert served > 0
        again.check_invariants()


def test_threads_inserting_one_prompt_at_once_report_it_stored() -> None:
    """Eight threads insert the same new prompt at once. Each reserves host slots and copies outside the lock; at
    the commit all but one find the blocks stored by another thread meanwhile and give their reservation back.
    Every insert reports the whole prompt as stored (matched + inserted), the blocks are stored once, and the host
    tier's room, slots and residency add up again."""
    n_blocks, bb, bs = 256, 32 << 10, 4  # 8 MiB a prompt: copies long enough for the inserts to overlap
    # Room for the three prompts and eight reservations at once (a reservation counts until its commit).
    cfg = StoreConfig(block_size=bs, block_bytes=bb, host=TierConfig(capacity_bytes=11 * n_blocks * bb))
    rng = np.random.default_rng(5)
    payload = rng.integers(0, 256, (n_blocks, bb), dtype=np.uint8)
    with Store(cfg, namespace=NS) as store:
        for round_ in range(3):
            tokens = rng.integers(0, 30_000, n_blocks * bs).astype(np.int32)
            start = threading.Barrier(8)
            results: list[kvtier.InsertResult] = []
            errors: list[str] = []

            def work() -> None:
                start.wait()
                try:
                    results.append(store.insert(tokens, payload, session=f"s{round_}"))
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{type(e).__name__}: {e}")

            threads = [threading.Thread(target=work) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not errors, errors
            assert [r.matched_blocks + r.inserted_blocks for r in results] == [n_blocks] * 8
            assert sum(r.inserted_blocks for r in results) == n_blocks
            out = np.empty_like(payload)
            assert store.load(tokens, out) == n_blocks and np.array_equal(out, payload)
            store.check_invariants()  # no reservation left, every slot held once
        stats = store.stats()
        assert stats.blocks == 3 * n_blocks and stats.inserted == 3 * n_blocks
        host = [r for r in store.residency().rows if r.tier == kvtier.Tier.HOST]
        assert sum(r.resident_bytes for r in host) == 3 * n_blocks * bb
        assert sorted(r.resident_bytes for r in host if r.session) == [n_blocks * bb] * 3
