"""The disk tier as a user sees it: what is stored where, what survives a restart, what is never served.

Every test opens its own LMDB folder under ``tmp_path``. Blocks are tiny (``BB`` bytes) except where
size matters (LMDB's map filling up). Payloads are a function of (prompt id, block) or of the block's
key, so every load is checked byte for byte. Explicit times start at ``T0`` (far above any monotonic
clock). Crash safety under SIGKILL is in test_disk_crash.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import kvtier
import numpy as np
import pytest
from disk_helpers import (
    BB,
    BS,
    T0,
    check_prompt,
    close_opened,
    config,
    finish,
    folder_get,
    folder_keys,
    folder_put,
    keys_of,
    lmdb_env,
    load_all,
    open_store,
    payload,
    popen_py,
    run_py,
    tokens,
)
from kvtier import (
    DiskConfig,
    DiskError,
    InvalidArgumentError,
    KvtierTypeError,
    Namespace,
    Store,
    StoreClosedError,
    StoreConfig,
    Tier,
    _core,
)


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    close_opened()


def host_disk(store: Store, t: np.ndarray) -> tuple[int, int]:
    """(host blocks, disk blocks) of a side-effect-free lookup."""
    m = store.peek(t)
    assert m.num_blocks == m.host_blocks + m.disk_blocks
    expected_tiers = [int(Tier.HOST)] * m.host_blocks + [int(Tier.DISK)] * m.disk_blocks
    assert m.tiers.tolist() == expected_tiers
    return m.host_blocks, m.disk_blocks


def reachable_disk_keys(store: Store, prompts: list[np.ndarray]) -> set[bytes]:
    """Keys of the disk blocks that some prompt's lookup reaches."""
    out: set[bytes] = set()
    for t in prompts:
        m = store.peek(t)
        out.update(keys_of(t)[m.host_blocks : m.num_blocks])
    return out


HOLD_WRITE_LOCK = """
import lmdb, sys
env = lmdb.open(sys.argv[1], max_dbs=4, map_size=1 << 30)
txn = env.begin(write=True)
print("locked", flush=True)
sys.stdin.readline()
txn.abort()
env.close()
"""


class WriteLockHolder:
    """Another process (sharing the folder, as documented) holding LMDB's write lock: our writer waits.

    ``with WriteLockHolder(path):`` — the lock is released when the block ends.
    """

    def __init__(self, path: Path) -> None:
        self.proc = popen_py(HOLD_WRITE_LOCK, str(path))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "locked":
            rc, _out, err = finish(self.proc)
            raise AssertionError(f"lock holder failed ({rc}): {err}")

    def __enter__(self) -> WriteLockHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        rc, _out, err = finish(self.proc)
        assert rc == 0, err

    def release_later(self, seconds: float) -> threading.Thread:
        """Releases the lock from another thread after ``seconds`` (join the returned thread)."""

        def release() -> None:
            time.sleep(seconds)
            self.__exit__()

        th = threading.Thread(target=release)
        th.start()
        return th


# =========================================================================== round trip
def test_round_trip_through_host_and_disk(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=8)
    ids = list(range(1, 9))  # 8 prompts x 5 blocks: 5x what the host tier holds
    for pid in ids:
        r = s.insert(tokens(pid, 5), payload(pid, 5))
        assert (r.matched_blocks, r.inserted_blocks) == (0, 5)
    s.check_invariants()
    st = s.stats()
    # Write-back: every block is in exactly one tier; the host is full, the rest went to disk.
    assert st.blocks == 8
    assert st.blocks + st.disk.blocks == 40
    split = [host_disk(s, tokens(pid, 5)) for pid in ids]
    assert all(h + d == 5 for h, d in split)
    assert sum(h for h, _ in split) == 8 and sum(d for _, d in split) == 32
    assert split[0] == (0, 5)  # the oldest prompt is entirely on disk
    for pid in ids:
        t = tokens(pid, 5)
        m = s.match(t, pin=True)
        assert m.num_blocks == 5
        out = np.zeros((5, BB), np.uint8)
        assert s.load(m, out) == 5
        s.unpin(m)
        assert np.array_equal(out, payload(pid, 5)), f"prompt {pid}"
        s.check_invariants()
    s.close()


def test_a_prompt_longer_than_the_host_tier_spills_to_disk(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=8, queue_blocks=8)
    t, p = tokens(1, 30), payload(1, 30)
    r = s.insert(t, p)
    assert r.stored_blocks == 30
    h, d = host_disk(s, t)
    assert (h + d, h) == (30, 8)
    n, out = load_all(s, t, 30)
    assert n == 30 and np.array_equal(out, p)
    s.flush()
    s.check_invariants()
    s.close()
    s = open_store(tmp_path, host_blocks=8)
    assert s.restore_report is not None and s.restore_report.restored == 30
    assert check_prompt(s, 1, 30) == 30
    s.close()


def test_partial_prefix_on_disk_and_stats_add_up(tmp_path: Path) -> None:
    """A prompt whose head is on disk and whose continuation is inserted later: one chain, two tiers."""
    s = open_store(tmp_path, host_blocks=8)
    t, p = tokens(3, 6), payload(3, 6)
    s.insert(t[: 3 * BS], p[:3])
    s.evict(1 << 30)  # the 3 head blocks go to disk
    s.flush()
    assert host_disk(s, t) == (0, 3)
    # The engine computed blocks 3..5 after a disk hit on 0..2: it saves only those.
    m = s.match(t, pin=True)
    assert (m.host_blocks, m.disk_blocks) == (0, 3)
    out = np.zeros((6, BB), np.uint8)
    assert s.load(m, out) == 3
    s.unpin(m)
    assert np.array_equal(out[:3], p[:3])
    r = s.insert(t, p[3:], start_block=3)
    assert r.stored_blocks == 6
    n, out = load_all(s, t, 6)
    assert n == 6 and np.array_equal(out, p)
    d = s.stats().disk
    assert (d.hits, d.bytes_read, d.promoted) == (3, 3 * BB, 3)
    assert host_disk(s, t) == (6, 0)
    s.check_invariants()
    s.close()


# =========================================================================== restart
def test_reopen_restores_the_index_and_serves_the_same_bytes(tmp_path: Path) -> None:
    ids = range(1, 7)
    with open_store(tmp_path, host_blocks=8) as s:
        for pid in ids:
            s.insert(tokens(pid, 5), payload(pid, 5))
    # close() persisted the host's blocks too: all 30 are in the folder.
    assert len(folder_keys(tmp_path, b"blocks")) == 30
    assert folder_keys(tmp_path, b"index") == folder_keys(tmp_path, b"blocks")

    s = open_store(tmp_path, host_blocks=8)
    rep = s.restore_report
    assert rep is not None
    assert (rep.restored, rep.damaged, rep.foreign) == (30, 0, 0)
    st = s.stats()
    assert st.blocks == 0 and st.disk.blocks == 30 and st.disk.restored == 30
    assert st.disk.resident_bytes == 30 * BB
    for pid in ids:
        assert host_disk(s, tokens(pid, 5)) == (0, 5)
        assert check_prompt(s, pid, 5) == 5
    assert s.stats().disk.hits == 30
    s.check_invariants()
    s.close()

    # Reopening again: the same counts and bytes (nothing duplicated, nothing lost).
    s = open_store(tmp_path, host_blocks=8)
    assert s.restore_report is not None and s.restore_report.restored == 30
    assert s.stats().disk.resident_bytes == 30 * BB
    for pid in ids:
        assert check_prompt(s, pid, 5) == 5
    s.check_invariants()
    s.close()
    assert len(folder_keys(tmp_path, b"blocks")) == 30


def test_reopen_with_a_smaller_capacity_keeps_the_most_recent_prompts(tmp_path: Path) -> None:
    with open_store(tmp_path, host_blocks=4) as s:
        for pid in range(1, 7):
            s.insert(tokens(pid, 2), payload(pid, 2), now=T0 + 10 * pid)
    s = open_store(tmp_path, host_blocks=4, disk_blocks=4)
    assert s.stats().disk.blocks == 4
    assert [s.peek(tokens(pid, 2)).num_blocks for pid in range(1, 7)] == [0, 0, 0, 0, 2, 2]
    for pid in (5, 6):
        assert check_prompt(s, pid, 2) == 2
    s.check_invariants()
    s.close()
    assert len(folder_keys(tmp_path, b"blocks")) == 4


def test_context_manager_persists_and_closed_store_refuses_calls(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.insert(tokens(1, 3), payload(1, 3))
    assert s.closed
    with pytest.raises(StoreClosedError):
        s.peek(tokens(1, 3))
    with pytest.raises(StoreClosedError):
        s.insert(tokens(2, 3), payload(2, 3))
    s.close()  # idempotent
    with open_store(tmp_path) as s2:
        assert check_prompt(s2, 1, 3) == 3


def test_flush_after_close_raises(tmp_path: Path) -> None:
    """Store.close(): 'Every later call raises StoreClosedError' — flush() included."""
    s = open_store(tmp_path)
    s.close()
    with pytest.raises(StoreClosedError):
        s.flush(host=True)
    with pytest.raises(StoreClosedError):
        s.flush()


# =========================================================================== write-back / write-through
def test_write_back_keeps_blocks_in_memory_until_evicted_or_persisted(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=16)
    for pid in (1, 2, 3):
        s.insert(tokens(pid, 4), payload(pid, 4))
    s.flush()
    d = s.stats().disk
    assert (d.queued, d.written, d.blocks) == (0, 0, 0)
    s.flush(host=True)  # also writes the host-only blocks; the host keeps them
    d = s.stats().disk
    assert (d.written, d.blocks, d.pending) == (12, 12, 0)
    assert s.stats().blocks == 12
    assert host_disk(s, tokens(1, 4)) == (4, 0)
    s.flush(host=True)  # nothing new: nothing written twice
    assert s.stats().disk.written == 12
    s.close(persist=False)
    assert len(folder_keys(tmp_path, b"blocks")) == 12


@pytest.mark.parametrize("write_through", [False, True])
@pytest.mark.parametrize("persist", [False, True])
def test_close_persist_and_write_through(tmp_path: Path, write_through: bool, persist: bool) -> None:
    s = open_store(tmp_path, host_blocks=16, write_through=write_through)
    for pid in (1, 2, 3):
        s.insert(tokens(pid, 4), payload(pid, 4))
    s.flush()
    d = s.stats().disk
    if write_through:
        # Every inserted block is on disk after flush(), and still in the host.
        assert (d.queued, d.written, d.blocks, d.pending) == (12, 12, 12, 0)
    else:
        assert (d.written, d.blocks) == (0, 0)
    assert s.stats().blocks == 12
    s.close(persist=persist)
    on_disk = write_through or persist
    expected_keys = {k for pid in (1, 2, 3) for k in keys_of(tokens(pid, 4))}
    assert folder_keys(tmp_path, b"blocks") == (expected_keys if on_disk else set())
    s = open_store(tmp_path, host_blocks=16)
    assert s.restore_report is not None and s.restore_report.restored == (12 if on_disk else 0)
    for pid in (1, 2, 3):
        assert check_prompt(s, pid, 4) == (4 if on_disk else 0)
    s.close()


def test_write_through_blocks_are_readable_while_queued(tmp_path: Path) -> None:
    """A write-through or demoted block is served from its host slot until the writer commits it."""
    s = open_store(tmp_path, host_blocks=2, queue_blocks=64)
    with WriteLockHolder(tmp_path):  # the writer cannot commit meanwhile
        for pid in range(1, 6):
            s.insert(tokens(pid, 2), payload(pid, 2))
        assert s.stats().disk.pending == 8
        for pid in range(1, 6):
            assert check_prompt(s, pid, 2) == 2
    s.flush()
    assert s.stats().disk.pending == 0
    s.check_invariants()
    s.close()


@pytest.mark.parametrize("how", ["flush", "close"])
def test_host_blocks_are_persisted_even_when_the_queue_is_full(tmp_path: Path, how: str) -> None:
    """flush(host=True) and close() write every host block, whatever the write queue holds when called."""
    s = open_store(tmp_path, host_blocks=4, queue_blocks=2)
    s.insert(tokens(1, 2), payload(1, 2))
    s.insert(tokens(2, 2), payload(2, 2))
    holder = WriteLockHolder(tmp_path)  # another process is writing: our writer waits a moment
    s.insert(tokens(3, 2), payload(3, 2))  # demotes prompt 1: the queue (2 blocks) is full
    assert s.stats().disk.pending == 2
    releaser = holder.release_later(0.3)
    try:
        if how == "flush":
            s.flush(host=True)
            assert s.stats().disk.pending == 0
            assert s.stats().disk.blocks == 6
            s.close(persist=False)
        else:
            s.close()
    finally:
        releaser.join()
    assert len(folder_keys(tmp_path, b"blocks")) == 6
    with open_store(tmp_path, host_blocks=4) as s:
        assert [check_prompt(s, pid, 2) for pid in (1, 2, 3)] == [2, 2, 2]


# =========================================================================== demotion and promotion
def test_host_eviction_demotes_to_disk(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=4)
    a, b = tokens(1, 4), tokens(2, 4)
    s.insert(a, payload(1, 4), now=T0)
    assert s.stats().disk.queued == 0
    s.insert(b, payload(2, 4), now=T0 + 1)
    st = s.stats()
    assert st.evicted == 4 and st.disk.queued == 4
    s.flush()
    d = s.stats().disk
    assert (d.written, d.blocks, d.pending) == (4, 4, 0)
    assert host_disk(s, a) == (0, 4)
    assert host_disk(s, b) == (4, 0)
    # An explicit evict() demotes too.
    assert s.evict(4 * BB, now=T0 + 2) == 4 * BB
    s.flush()
    assert s.stats().blocks == 0 and s.stats().disk.blocks == 8
    assert host_disk(s, b) == (0, 4)
    assert check_prompt(s, 1, 4) == 4 and check_prompt(s, 2, 4) == 4
    s.check_invariants()
    s.close()


@pytest.mark.parametrize("promote", [True, False])
def test_disk_hit_promotes_into_the_host(tmp_path: Path, promote: bool) -> None:
    s = open_store(tmp_path, host_blocks=8, promote=promote)
    t, p = tokens(1, 4), payload(1, 4)
    s.insert(t, p)
    s.evict(1 << 30)
    s.flush()
    assert host_disk(s, t) == (0, 4)
    m = s.match(t, pin=True)
    assert (m.host_blocks, m.disk_blocks) == (0, 4)
    out = np.zeros((4, BB), np.uint8)
    assert s.load(m, out) == 4
    s.unpin(m)
    assert np.array_equal(out, p)
    d = s.stats().disk
    assert d.promoted == (4 if promote else 0)
    assert d.bytes_read == 4 * BB
    m2 = s.match(t)
    assert (m2.host_blocks, m2.disk_blocks) == ((4, 0) if promote else (0, 4))
    assert check_prompt(s, 1, 4) == 4
    assert s.stats().disk.blocks == 4  # promotion copies: the disk keeps its copy
    s.check_invariants()
    s.close()


def test_pinned_disk_blocks_outlive_disk_pressure(tmp_path: Path) -> None:
    """A request in flight pins its disk prefix: the disk evicts around it, the load still gets its bytes."""
    s = open_store(tmp_path, host_blocks=2, disk_blocks=4, promote=False)
    s.insert(tokens(1, 2), payload(1, 2), now=T0)
    s.insert(tokens(2, 2), payload(2, 2), now=T0 + 1)  # 1 -> disk
    s.flush()
    m = s.match(tokens(1, 2), pin=True, now=T0 + 2)
    assert (m.host_blocks, m.disk_blocks) == (0, 2)
    assert s.stats().disk.pinned_blocks == 2
    for pid in range(3, 8):  # each demotes the previous prompt; only prompt 1 is the oldest
        s.insert(tokens(pid, 2), payload(pid, 2), now=T0 + pid)
        s.flush()
    out = np.zeros((2, BB), np.uint8)
    assert s.load(m, out) == 2
    assert np.array_equal(out, payload(1, 2))
    assert s.stats().disk.evicted >= 4
    s.unpin(m)
    assert s.stats().disk.pinned_blocks == 0
    s.insert(tokens(8, 2), payload(8, 2), now=T0 + 20)  # now the oldest unpinned: prompt 1 may go
    s.insert(tokens(9, 2), payload(9, 2), now=T0 + 21)
    s.flush()
    s.check_invariants()
    assert s.stats().disk.blocks <= 4
    s.close()


def test_clear_removes_disk_blocks_too(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=4)
    for pid in (1, 2, 3):
        s.insert(tokens(pid, 2), payload(pid, 2))
    s.flush()
    assert s.stats().disk.blocks == 2
    assert s.clear() == 6
    assert s.stats().disk.blocks == 0 and s.stats().blocks == 0
    s.flush()
    s.close()
    assert folder_keys(tmp_path, b"blocks") == set()
    with open_store(tmp_path) as s:
        assert s.restore_report is not None and s.restore_report.restored == 0


# =========================================================================== capacity and policies
def test_disk_lru_evicts_the_least_recently_used_prompt(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=2, disk_blocks=6, promote=False)  # loads change no tier
    for pid in range(1, 5):  # disk: 1, 2, 3; host: 4
        s.insert(tokens(pid, 2), payload(pid, 2), now=T0 + pid)
        s.flush()
    assert [s.peek(tokens(pid, 2)).disk_blocks for pid in range(1, 5)] == [2, 2, 2, 0]
    s.match(tokens(1, 2), now=T0 + 10)  # a disk hit: prompt 1 is now the most recent on disk
    s.insert(tokens(5, 2), payload(5, 2), now=T0 + 11)  # demotes 4: the disk drops prompt 2
    s.flush()
    assert [s.peek(tokens(pid, 2)).num_blocks for pid in range(1, 6)] == [2, 0, 2, 2, 2]
    d = s.stats().disk
    assert (d.evicted, d.blocks) == (2, 6)
    s.insert(tokens(6, 2), payload(6, 2), now=T0 + 12)  # demotes 5: the disk drops prompt 3
    s.flush()
    assert [s.peek(tokens(pid, 2)).num_blocks for pid in range(1, 7)] == [2, 0, 0, 2, 2, 2]
    for pid in (1, 4, 5, 6):
        assert check_prompt(s, pid, 2) == 2
    s.check_invariants()
    s.close()


def test_disk_eviction_is_leaf_first(tmp_path: Path) -> None:
    """A prefix's head outlives its tail: the disk never drops a block whose child it still holds."""
    s = open_store(tmp_path, host_blocks=3, disk_blocks=4, promote=False)
    a, b, c, d = (tokens(pid, 3) for pid in (1, 2, 3, 4))
    s.insert(a, payload(1, 3), now=T0)
    s.insert(b, payload(2, 3), now=T0 + 1)  # a -> disk (3 blocks)
    s.flush()
    s.insert(c, payload(3, 3), now=T0 + 2)  # b -> disk: 2 of a's blocks must go, from its tail
    s.flush()
    assert [s.peek(t).num_blocks for t in (a, b, c)] == [1, 3, 3]  # peek: no access, no recency
    s.insert(d, payload(4, 3), now=T0 + 3)  # c -> disk: a's head (the oldest leaf), then b's tail
    s.flush()
    assert [s.peek(t).num_blocks for t in (a, b, c, d)] == [0, 1, 3, 3]
    assert s.stats().disk.blocks == 4
    assert [check_prompt(s, pid, 3) for pid in (1, 2, 3, 4)] == [0, 1, 3, 3]
    s.check_invariants()
    s.close()


def test_shared_prefixes_under_disk_pressure_leave_no_orphans(tmp_path: Path) -> None:
    """Random traffic over shared prefixes; afterwards every block in the folder chains from a block in it."""
    rng = random.Random(5)
    systems = [tokens(900 + i, 3) for i in range(3)]
    prompts = []
    for i in range(18):
        sys_t = systems[i % 3]
        tail = tokens(100 + i, rng.randint(1, 3))
        prompts.append(np.concatenate([sys_t, tail]))

    def kv(t: np.ndarray) -> np.ndarray:  # a block's payload: its key, twice (a function of its prefix)
        ks = keys_of(t)
        return np.frombuffer(b"".join(k + k for k in ks), np.uint8).reshape(len(ks), BB)

    s = open_store(tmp_path, host_blocks=5, disk_blocks=12, promote=True)
    now = T0
    for _step in range(80):
        now += 1
        t = rng.choice(prompts)
        if rng.random() < 0.5:
            s.insert(t, kv(t), now=now)
        else:
            n, out = load_all(s, t, len(t) // BS, now=now)
            assert np.array_equal(out[:n], kv(t)[:n])
        if rng.random() < 0.3:
            s.flush()
        s.check_invariants()
    s.close()
    index = folder_keys(tmp_path, b"index")
    assert index == folder_keys(tmp_path, b"blocks")
    env = lmdb_env(tmp_path)
    try:
        db = env.open_db(b"index")
        with env.begin() as txn:
            records = {bytes(k): _core.decode_record(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)}
    finally:
        env.close()
    assert len(records) <= 12
    for key, rec in records.items():
        assert rec is not None, key.hex()
        parent = bytes(rec["parent"])
        assert parent == bytes(32) or parent in records, "a block outlived its parent on disk"
    # Reopened, every block in the folder is reachable by some prompt.
    s = open_store(tmp_path, host_blocks=5, disk_blocks=12)
    assert s.stats().disk.blocks == len(records)
    assert reachable_disk_keys(s, prompts) == set(records)
    for t in prompts:
        n, out = load_all(s, t, len(t) // BS)
        assert np.array_equal(out[:n], kv(t)[:n])
    s.close()


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_disk_lfu_evicts_the_least_hit(tmp_path: Path, policy: str) -> None:
    s = open_store(tmp_path, host_blocks=1, disk_blocks=4, policy=policy)
    for pid in range(1, 6):  # disk: 1..4; host: 5
        s.insert(tokens(pid, 1), payload(pid, 1), now=T0 + pid)
        s.flush()
    now = T0 + 10
    for _ in range(2):
        for pid in (2, 3, 4):
            now += 1
            assert s.match(tokens(pid, 1), now=now).disk_blocks == 1
    assert s.match(tokens(1, 1), now=now + 1).disk_blocks == 1  # one hit, but the latest
    s.insert(tokens(6, 1), payload(6, 1), now=now + 2)  # demotes 5: one disk block must go
    s.flush()
    victim = 1 if policy == "lfu" else 2
    found = {pid: s.peek(tokens(pid, 1)).num_blocks for pid in range(1, 7)}
    assert found == {pid: int(pid != victim) for pid in range(1, 7)}
    s.check_invariants()
    s.close()


def test_disk_ttl(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=2, policy="ttl", ttl_s=100)
    a, b = tokens(1, 2), tokens(2, 2)
    s.insert(a, payload(1, 2), now=T0, session="alice")
    s.insert(b, payload(2, 2), now=T0 + 10)  # a -> disk at T0+10; idle since T0
    s.flush()
    assert host_disk(s, a) == (0, 2)
    assert s.peek(a, now=T0 + 99).disk_blocks == 2
    assert s.peek(a, now=T0 + 101).num_blocks == 0  # idle > ttl_s: never a hit
    assert s.match(a, now=T0 + 101).num_blocks == 0
    n, _ = load_all(s, a, 2, now=T0 + 101)
    assert n == 0
    assert s.expire(now=T0 + 102) == 2
    d = s.stats().disk
    assert (d.expired, d.blocks, d.resident_bytes) == (2, 0, 0)
    disk_rows = {r.session: r for r in s.residency(now=T0 + 1000).rows if r.tier == Tier.DISK}
    # Resident from the demotion (T0+10) to the expiry instant (T0+100), not to the reclaim.
    assert disk_rows["alice"].resident_bytes == 0
    assert disk_rows["alice"].byte_seconds == pytest.approx(2 * BB * 90)
    later = {r.session: r for r in s.residency(now=T0 + 5000).rows if r.tier == Tier.DISK}
    assert later["alice"].byte_seconds == disk_rows["alice"].byte_seconds
    s.flush()
    s.check_invariants()
    s.close()
    assert folder_keys(tmp_path, b"blocks") == set(keys_of(b))  # close() persisted b; a is gone


def test_disk_capacity_is_never_exceeded(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=3, disk_blocks=10)
    for pid in range(1, 40):
        s.insert(tokens(pid, 1 + pid % 3), payload(pid, 1 + pid % 3), now=T0 + pid)
        d = s.stats().disk
        assert d.blocks <= 10 and d.resident_bytes <= 10 * BB
    s.flush()
    d = s.stats().disk
    # Demotions beyond the capacity evicted older blocks, or were dropped while the disk held
    # only queued blocks (documented as "rejected").
    assert d.evicted + d.rejected > 0 and d.write_errors == 0
    s.check_invariants()
    s.close()
    assert len(folder_keys(tmp_path, b"blocks")) <= 10


# =========================================================================== integrity
@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "delete"])
def test_damaged_payload_is_a_miss_never_served(tmp_path: Path, damage: str) -> None:
    t, p = tokens(1, 5), payload(1, 5)
    with open_store(tmp_path) as s:
        s.insert(t, p)
    key = keys_of(t)[2]
    value = folder_get(tmp_path, b"blocks", key)
    assert value == p[2].tobytes()
    if damage == "flip":
        v = bytearray(value)
        v[BB // 2] ^= 0x10
        folder_put(tmp_path, b"blocks", key, bytes(v))
    elif damage == "truncate":
        folder_put(tmp_path, b"blocks", key, value[:-1])
    elif damage == "extend":
        folder_put(tmp_path, b"blocks", key, value + b"\0")
    else:
        folder_put(tmp_path, b"blocks", key, None)

    s = open_store(tmp_path)
    m = s.match(t, pin=True)
    assert (m.host_blocks, m.disk_blocks) == (0, 5)
    out = np.zeros((5, BB), np.uint8)
    n = s.load(m, out)
    s.unpin(m)
    assert n == 2  # the damaged block and everything after it: not served
    assert np.array_equal(out[:2], p[:2])
    d = s.stats().disk
    if damage == "delete":
        assert (d.missing, d.corrupted) == (1, 0)
    else:
        assert (d.corrupted, d.missing) == (1, 0)
    assert d.blocks == 4  # removed from the index
    s.check_invariants()
    s.close(persist=False)
    # ... and from the folder.
    assert key not in folder_keys(tmp_path, b"index")
    assert key not in folder_keys(tmp_path, b"blocks")

    s = open_store(tmp_path)
    assert s.restore_report is not None and (s.restore_report.restored, s.restore_report.damaged) == (4, 0)
    assert check_prompt(s, 1, 5) == 2
    assert s.stats().disk.corrupted == 0
    # The engine recomputes the rest and saves it: the whole prompt is served again, and persists.
    r = s.insert(t, p[2:], start_block=2)
    assert r.stored_blocks == 5
    assert check_prompt(s, 1, 5) == 5
    s.check_invariants()
    s.close()
    assert folder_get(tmp_path, b"blocks", key) == p[2].tobytes()
    with open_store(tmp_path) as s:
        assert check_prompt(s, 1, 5) == 5


def test_reinsert_right_after_a_corrupt_load_persists(tmp_path: Path) -> None:
    """The natural engine flow: load (corrupt block found) -> recompute -> insert -> restart."""
    t, p = tokens(1, 5), payload(1, 5)
    with open_store(tmp_path) as s:
        s.insert(t, p)
    key = keys_of(t)[2]
    folder_put(tmp_path, b"blocks", key, bytes(BB))
    s = open_store(tmp_path)
    assert check_prompt(s, 1, 5) == 2
    s.insert(t, p[2:], start_block=2)
    assert check_prompt(s, 1, 5) == 5
    s.close()
    with open_store(tmp_path) as s:
        assert check_prompt(s, 1, 5) == 5
        assert s.stats().disk.corrupted == 0


@pytest.mark.parametrize("cause", ["expire", "clear", "corrupt", "evict"])
def test_removed_blocks_stay_removed_while_their_delete_is_pending(tmp_path: Path, cause: str) -> None:
    """A block this store removed (expired, cleared, corrupt, evicted) is not found again by a lookup.

    The folder is shared with another process that holds LMDB's write lock for a moment (it is
    writing a batch), so our writer's delete is not committed yet when the next lookup runs. That
    lookup must not bring the block back from the folder (nor evict other blocks to make room for it).
    """
    a, pa = tokens(1, 3), payload(1, 3)
    b = tokens(2, 3)
    if cause == "corrupt":
        with open_store(tmp_path) as s:
            s.insert(a, pa)
        folder_put(tmp_path, b"blocks", keys_of(a)[0], bytes(BB))
    s = open_store(tmp_path, host_blocks=3, disk_blocks=6, ttl_s=100 if cause == "expire" else None)
    if cause != "corrupt":
        s.insert(a, pa, now=T0)
        s.insert(b, payload(2, 3), now=T0 + 1)  # a -> disk
        s.flush()
        assert host_disk(s, a) == (0, 3)
    if cause == "evict":
        s.insert(tokens(3, 3), payload(3, 3), now=T0 + 2)  # b -> disk: the disk is full
        s.flush()
    with WriteLockHolder(tmp_path):
        if cause == "expire":
            assert s.expire(now=T0 + 200) == 3  # a (the disk tier has the TTL)
        elif cause == "clear":
            assert s.clear(now=T0 + 2) == 6
        elif cause == "corrupt":
            assert check_prompt(s, 1, 3) == 0
            assert s.stats().disk.corrupted == 1
        else:
            s.insert(tokens(4, 3), payload(4, 3), now=T0 + 3)  # 3 -> disk: a is evicted
            assert s.stats().disk.evicted == 3
        assert s.peek(a).num_blocks == 0
    s.flush()
    assert s.peek(a).num_blocks == 0
    assert check_prompt(s, 1, 3) == 0
    if cause == "evict":  # the others were not pushed out for it (peek: a load would promote and shift LRU)
        assert s.peek(tokens(2, 3)).num_blocks == 3 and s.peek(tokens(3, 3)).num_blocks == 3
        assert check_prompt(s, 2, 3) == 3
    d = s.stats().disk
    assert d.missing == 0 and d.corrupted == (1 if cause == "corrupt" else 0)
    s.check_invariants()
    s.close(persist=False)
    if cause == "corrupt":
        # Only the damaged block goes; its children stay (sound, reachable again once it is re-stored).
        assert keys_of(a)[0] not in folder_keys(tmp_path, b"blocks")
    else:
        assert not set(keys_of(a)) & folder_keys(tmp_path, b"blocks")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_key", "bad_magic"])
def test_damaged_index_record_is_dropped_at_reopen(tmp_path: Path, damage: str) -> None:
    t, p = tokens(1, 4), payload(1, 4)
    with open_store(tmp_path) as s:
        s.insert(t, p)
    keys = keys_of(t)
    record = folder_get(tmp_path, b"index", keys[2])
    assert record is not None and _core.decode_record(keys[2], record) is not None
    if damage == "garbage":
        bad = b"\x00garbage\xff" * 3
    elif damage == "truncated":
        bad = record[:-3]
    elif damage == "wrong_key":
        bad = folder_get(tmp_path, b"index", keys[3])  # a well-formed record of another block
        assert bad is not None
    else:
        bad = b"XXXX" + record[4:]
    folder_put(tmp_path, b"index", keys[2], bad)

    s = open_store(tmp_path)
    rep = s.restore_report
    assert rep is not None and (rep.restored, rep.damaged) == (3, 1)
    assert s.peek(t).num_blocks == 2
    assert check_prompt(s, 1, 4) == 2
    s.check_invariants()
    s.close(persist=False)
    assert keys[2] not in folder_keys(tmp_path, b"index")
    assert keys[2] not in folder_keys(tmp_path, b"blocks")
    s = open_store(tmp_path)
    assert s.restore_report is not None and s.restore_report.damaged == 0
    s.insert(t, p[2:], start_block=2)
    assert check_prompt(s, 1, 4) == 4
    s.close()


def test_damaged_namespace_record_does_not_stop_the_store(tmp_path: Path) -> None:
    t, p = tokens(1, 3), payload(1, 3)
    with open_store(tmp_path) as s:
        s.insert(t, p)
    (ns_key,) = folder_keys(tmp_path, b"namespaces")
    folder_put(tmp_path, b"namespaces", ns_key, b"{not json")
    with open_store(tmp_path) as s:
        assert check_prompt(s, 1, 3) == 3


# =========================================================================== identity
def test_another_fingerprint_never_serves_the_blocks(tmp_path: Path) -> None:
    model_a = Namespace(model="org/model-a", revision="r1", kv_dtype="bf16")
    t, p = tokens(1, 4), payload(1, 4)
    with open_store(tmp_path, namespace=model_a) as s:
        s.insert(t, p)
    others = [
        Namespace(model="org/model-b", revision="r1", kv_dtype="bf16"),
        Namespace(model="org/model-a", revision="r2", kv_dtype="bf16"),
        Namespace(model="org/model-a", revision="r1", kv_dtype="fp8"),
        Namespace(model="org/model-a", revision="r1", kv_dtype="bf16", tenant="someone-else"),
        Namespace(model="org/model-a", revision="r1", kv_dtype="bf16", kv_layout="HND"),
    ]
    for other in others:
        s = open_store(tmp_path, namespace=other)
        assert s.peek(t).num_blocks == 0, other
        assert s.match(t).num_blocks == 0
        assert check_prompt(s, 1, 4) == 0
        assert s.stats().disk.hits == 0
        # The blocks are in the folder; only the namespace that made them is served them.
        assert s.peek(t, namespace=model_a).num_blocks == 4
        s.close()
    # Another block size with the same block bytes: a different geometry, never served.
    s = open_store(tmp_path, namespace=model_a, block_size=2 * BS)
    rep = s.restore_report
    assert rep is not None and (rep.restored, rep.foreign) == (0, 4)
    assert s.peek(t).num_blocks == 0
    n, _ = load_all(s, t, 2)
    assert n == 0
    s.close()
    # Another block byte size: also foreign.
    s = open_store(tmp_path, namespace=model_a, block_bytes=2 * BB)
    assert s.restore_report is not None and s.restore_report.foreign == 4
    assert s.peek(t).num_blocks == 0
    s.close()
    # None of them removed the blocks: the right namespace still gets identical bytes.
    with open_store(tmp_path, namespace=model_a) as s:
        assert s.restore_report is not None and s.restore_report.restored == 4
        assert check_prompt(s, 1, 4) == 4


def test_namespaces_from_the_folder_are_named_after_reopen(tmp_path: Path) -> None:
    tenant = Namespace(model="m", tenant="acme")
    with open_store(tmp_path) as s:
        s.insert(tokens(1, 2), payload(1, 2), namespace=tenant, session="chat-1")
    s = open_store(tmp_path)
    rows = [r for r in s.residency().rows if r.tier == Tier.DISK and r.resident_bytes > 0]
    assert [(r.namespace, r.session, r.resident_bytes) for r in rows] == [(tenant, "chat-1", 2 * BB)]
    assert s.peek(tokens(1, 2), namespace=tenant).num_blocks == 2
    assert s.peek(tokens(1, 2)).num_blocks == 0
    s.close()


# =========================================================================== faults
def test_lmdb_map_full_evicts_and_retries(tmp_path: Path) -> None:
    """A map smaller than the capacity: writes evict and retry; no error, correct bytes."""
    bb = 64 << 10
    # promote=False: the checks below must not move blocks (a promotion demotes others into the full map).
    s = open_store(tmp_path, host_blocks=4, block_bytes=bb, disk_blocks=256, map_size=2 << 20, sync=False, promote=False)
    n_prompts = 40  # 80 blocks of 64 KiB = 5 MiB through a 2 MiB map
    for pid in range(1, n_prompts + 1):
        r = s.insert(tokens(pid, 2), payload(pid, 2, bb))
        assert r.stored_blocks == 2
    s.flush()  # must not raise
    d = s.stats().disk
    assert d.write_errors == 0
    assert d.evicted > 0
    assert d.blocks >= 8  # the map holds ~29 such blocks; at least some of them stay
    served = [check_prompt(s, pid, 2, bb) for pid in range(1, n_prompts + 1)]
    assert served[-6:] == [2] * 6  # the latest prompts are all there
    s.flush()
    s.check_invariants()
    s.close()
    s = open_store(tmp_path, host_blocks=4, block_bytes=bb, disk_blocks=256, map_size=2 << 20, sync=False)
    assert s.restore_report is not None and s.restore_report.damaged == 0
    assert sum(check_prompt(s, pid, 2, bb) for pid in range(1, n_prompts + 1)) >= 8
    s.close()


def test_lmdb_map_full_with_the_writer_behind(tmp_path: Path) -> None:
    """A writer that fell behind takes a batch; it must fit a small map after evictions (batches are capped
    at a quarter of the map): no write error, the latest prompts intact."""
    bb = 64 << 10
    s = open_store(tmp_path, host_blocks=4, block_bytes=bb, disk_blocks=256, map_size=2 << 20, sync=False, promote=False)
    assert s._disk is not None
    with s._disk._commit_lock:  # holds the writer: 40 demoted blocks queue up (2.5 MiB, more than the map)
        for pid in range(1, 23):
            s.insert(tokens(pid, 2), payload(pid, 2, bb))
    s.flush()
    assert s.stats().disk.write_errors == 0
    assert [check_prompt(s, pid, 2, bb) for pid in range(19, 23)] == [2] * 4
    s.check_invariants()
    s.close()


FULL_DISK_CHILD = """
import json, os, resource, signal, sys
import numpy as np
import kvtier
from disk_helpers import check_prompt, open_store, payload, tokens

path = sys.argv[1]
BB = 4096
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full file is EFBIG from write(), not a signal
s = open_store(path, host_blocks=64, block_bytes=BB, write_through=True)
for pid in range(1, 4):
    s.insert(tokens(pid, 2), payload(pid, 2, BB))
s.flush()
size = os.path.getsize(os.path.join(path, "data.mdb"))
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 2 * BB, resource.RLIM_INFINITY))
for pid in range(4, 20):
    s.insert(tokens(pid, 2), payload(pid, 2, BB))
out = {}
try:
    s.flush()
    out["error"] = None
except kvtier.DiskWriteError as e:
    out["error"] = str(e)
out["write_errors"] = s.stats().disk.write_errors
out["served"] = [check_prompt(s, pid, 2, BB) for pid in range(1, 20)]
try:
    s.flush()  # a retry: the file is still too large
    out["retry_error"] = None
except kvtier.DiskWriteError as e:
    out["retry_error"] = str(e)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
s.flush()  # room again: the blocks that failed are written now
out["pending"] = s.stats().disk.pending
out["insert_after"] = s.insert(tokens(50, 2), payload(50, 2, BB)).stored_blocks
out["served_after"] = check_prompt(s, 50, 2, BB)
s.check_invariants()
os.kill(os.getpid(), signal.SIGKILL)  # no close(): what flush() returned for must be in the folder
"""


def test_full_disk_is_a_clear_error_the_store_keeps_serving_and_the_next_flush_retries(tmp_path: Path) -> None:
    r = run_py(FULL_DISK_CHILD, str(tmp_path))
    assert r.returncode == -signal.SIGKILL, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None
    assert out is None  # printed nothing: the kill came first; the checks below read the folder
    s = open_store(tmp_path, host_blocks=64, block_bytes=4096)
    assert s.restore_report is not None and s.restore_report.damaged == 0
    # Every prompt, including the 16 whose writes failed twice before the file limit was lifted.
    for pid in range(1, 20):
        assert check_prompt(s, pid, 2, 4096) == 2, pid
    s.check_invariants()
    s.close()


def test_full_disk_error_says_how_many_blocks_failed_and_why_once(tmp_path: Path) -> None:
    code = FULL_DISK_CHILD.replace("os.kill(os.getpid(), signal.SIGKILL)", "print(json.dumps(out))")
    r = run_py(code, str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    err = out["error"]
    assert err is not None and str(tmp_path) in err
    # One line: the count, what was kept for the retry, and the first cause once (not one clause per batch).
    assert "32 blocks not persisted (32 kept queued: the next flush() retries them; 0 dropped)" in err, err
    assert err.count("File too large") == 1, err
    assert len(err) < 300
    assert out["retry_error"] is not None and "32 blocks not persisted" in out["retry_error"]
    assert out["write_errors"] > 0
    assert out["served"] == [2] * 19  # every block still in the host is served, bytes checked
    assert out["pending"] == 0
    assert out["insert_after"] == 2 and out["served_after"] == 2


@pytest.mark.parametrize("write_through", [False, True])
def test_back_pressure_bounds_the_queue(tmp_path: Path, write_through: bool) -> None:
    s = open_store(tmp_path, host_blocks=4, queue_blocks=2, batch_blocks=1, sync=False, write_through=write_through)
    total = 0
    for pid in range(1, 61):
        n = 1 + pid % 3
        assert s.insert(tokens(pid, n), payload(pid, n)).stored_blocks == n
        total += n
        assert s.stats().disk.pending <= 2
    s.flush(host=True)
    d = s.stats().disk
    assert (d.pending, d.write_errors, d.rejected) == (0, 0, 0)
    assert d.blocks == total and d.written == total
    s.check_invariants()
    s.close()
    assert len(folder_keys(tmp_path, b"blocks")) == total
    with open_store(tmp_path, host_blocks=4) as s:
        for pid in range(1, 61):
            assert check_prompt(s, pid, 1 + pid % 3) == 1 + pid % 3


# =========================================================================== residency
def test_residency_counts_disk_gb_hours(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=2)
    s.insert(tokens(1, 2), payload(1, 2), now=T0, session="s1")
    s.insert(tokens(2, 2), payload(2, 2), now=T0 + 10, session="s2")  # 1 -> disk at T0+10
    s.flush()
    res = s.residency(now=T0 + 3610)
    rows = {(r.tier, r.session): r for r in res.rows}
    disk = rows[(Tier.DISK, "s1")]
    assert disk.resident_bytes == 2 * BB
    assert disk.byte_seconds == pytest.approx(2 * BB * 3600)
    assert disk.gb_hours > 0
    assert rows[(Tier.HOST, "s1")].resident_bytes == 0
    assert rows[(Tier.HOST, "s1")].byte_seconds == pytest.approx(2 * BB * 10)
    assert rows[(Tier.HOST, "s2")].byte_seconds == pytest.approx(2 * BB * 3600)
    assert rows[(Tier.DISK, "s2")].byte_seconds == 0
    assert res.gb_hours == pytest.approx((2 * BB * 3610 + 2 * BB * 3600) / 1e9 / 3600)
    # Time passes: disk GB-hours grow.
    later = {(r.tier, r.session): r for r in s.residency(now=T0 + 7210).rows}
    assert later[(Tier.DISK, "s1")].byte_seconds == pytest.approx(2 * BB * 7200)
    s.check_invariants()
    s.close()


# =========================================================================== several processes
SHARE_CHILD_WRITER = """
import sys
from disk_helpers import open_store, payload, tokens
s = open_store(sys.argv[1], host_blocks=64)
for pid in (1, 2):
    s.insert(tokens(pid, 5), payload(pid, 5))
s.flush(host=True)
print("flushed", flush=True)
sys.stdin.readline()  # stay open while the parent reads
s.close()
"""

SHARE_CHILD_READER = """
import json, sys
from disk_helpers import check_prompt, open_store, tokens
s = open_store(sys.argv[1], host_blocks=64)
found = [s.peek(tokens(pid, 5)).num_blocks for pid in (7, 8)]
served = [check_prompt(s, pid, 5) for pid in (7, 8)]
s.check_invariants()
s.close()
print(json.dumps({"found": found, "served": served}))
"""


def test_a_block_written_by_another_process_is_found(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=64)
    t1 = tokens(1, 5)
    s.insert(t1[: 2 * BS], payload(1, 2))  # the parent knows prompt 1's head already
    assert s.peek(tokens(2, 5)).num_blocks == 0  # a lookup before the child wrote anything
    child = popen_py(SHARE_CHILD_WRITER, str(tmp_path))
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "flushed"
        # Both processes have the folder open now.
        assert host_disk(s, t1) == (2, 3)
        assert host_disk(s, tokens(2, 5)) == (0, 5)
        m = s.match(tokens(2, 5))
        assert (m.num_blocks, m.disk_blocks) == (5, 5)
        assert check_prompt(s, 1, 5) == 5
        assert check_prompt(s, 2, 5) == 5
    finally:
        rc, _out, err = finish(child)
    assert rc == 0, err
    s.check_invariants()
    s.close()


def test_a_block_written_by_this_process_is_found_by_another(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=64)
    for pid in (7, 8):
        s.insert(tokens(pid, 5), payload(pid, 5))
    s.flush(host=True)
    r = run_py(SHARE_CHILD_READER, str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"found": [5, 5], "served": [5, 5]}
    s.check_invariants()
    s.close()


# =========================================================================== threads
def test_threads_share_one_disk_store(tmp_path: Path) -> None:
    systems = [tokens(800 + i, 2) for i in range(4)]
    prompts = [np.concatenate([systems[i % 4], tokens(300 + i, 1 + i % 3)]) for i in range(24)]

    def kv(t: np.ndarray) -> np.ndarray:
        ks = keys_of(t)
        return np.frombuffer(b"".join(k + k for k in ks), np.uint8).reshape(len(ks), BB)

    expected = [kv(t) for t in prompts]
    s = open_store(tmp_path, host_blocks=10, disk_blocks=40, queue_blocks=8)
    errors: list[BaseException] = []
    loads = [0]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(250):
                i = rng.randrange(len(prompts))
                t, want = prompts[i], expected[i]
                op = rng.random()
                if op < 0.4:
                    s.insert(t, want)
                elif op < 0.7:
                    m = s.match(t, pin=True)
                    if m.pinned:
                        out = np.zeros((len(want), BB), np.uint8)
                        n = s.load(m, out)
                        s.unpin(m)
                        assert np.array_equal(out[:n], want[:n])
                        loads[0] += 1
                elif op < 0.85:
                    n, out = load_all(s, t, len(want))
                    assert np.array_equal(out[:n], want[:n])
                elif op < 0.95:
                    m = s.peek(t)
                    assert m.num_blocks <= len(want)
                else:
                    s.evict(2 * BB)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors[0]
    s.flush(host=True)
    s.check_invariants()
    d = s.stats().disk
    assert d.write_errors == 0 and d.corrupted == 0
    # One process on a fresh folder: nothing comes from the folder that this store did not put
    # there and still hold, and nothing it holds in its index goes missing from the folder.
    assert (d.restored, d.missing) == (0, 0)
    assert loads[0] > 0
    s.close()
    with open_store(tmp_path, host_blocks=10, disk_blocks=40) as s2:
        for t, want in zip(prompts, expected):
            n, out = load_all(s2, t, len(want))
            assert np.array_equal(out[:n], want[:n])
        s2.check_invariants()


# =========================================================================== configuration
@pytest.mark.parametrize(
    ("make", "error", "word"),
    [
        (lambda p: DiskConfig(path=123), KvtierTypeError, "path"),  # type: ignore[arg-type]
        (lambda p: DiskConfig(path=""), InvalidArgumentError, "path"),
        (lambda p: DiskConfig(path=p, capacity_bytes=0), InvalidArgumentError, "capacity_bytes"),
        (lambda p: DiskConfig(path=p, capacity_bytes=True), KvtierTypeError, "capacity_bytes"),
        (
            lambda p: StoreConfig(block_bytes=4096, disk=DiskConfig(path=p, capacity_bytes=4095)),
            InvalidArgumentError,
            "capacity_bytes",
        ),
        (lambda p: StoreConfig(metadata_only=True, disk=DiskConfig(path=p)), InvalidArgumentError, "metadata_only"),
        (lambda p: StoreConfig(disk=p), KvtierTypeError, "disk"),  # type: ignore[arg-type]
        (lambda p: DiskConfig(path=p, policy="ttl"), InvalidArgumentError, "ttl_s"),
        (lambda p: DiskConfig(path=p, policy="fifo"), InvalidArgumentError, "policy"),  # type: ignore[arg-type]
        (lambda p: DiskConfig(path=p, ttl_s=-1.0), InvalidArgumentError, "ttl_s"),
        (lambda p: DiskConfig(path=p, queue_blocks=0), InvalidArgumentError, "queue_blocks"),
        (lambda p: DiskConfig(path=p, queue_blocks=2.0), KvtierTypeError, "queue_blocks"),  # type: ignore[arg-type]
        (lambda p: DiskConfig(path=p, batch_blocks=0), InvalidArgumentError, "batch_blocks"),
        (lambda p: DiskConfig(path=p, map_size=4096), InvalidArgumentError, "map_size"),
        (lambda p: DiskConfig(path=p, write_through=1), KvtierTypeError, "write_through"),  # type: ignore[arg-type]
        (lambda p: DiskConfig(path=p, sync=0), KvtierTypeError, "sync"),  # type: ignore[arg-type]
        (lambda p: DiskConfig(path=p, promote=1), KvtierTypeError, "promote"),  # type: ignore[arg-type]
    ],
)
def test_disk_config_bad_input_names_the_argument(tmp_path: Path, make, error, word) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=word) as info:
        make(str(tmp_path))
    assert isinstance(info.value, kvtier.KvtierError)
    assert not os.listdir(tmp_path)  # nothing was created


def test_disk_path_may_be_a_pathlib_path(tmp_path: Path) -> None:
    folder = tmp_path / "nested" / "cache"
    with Store(config(folder)) as s:
        s.insert(tokens(1, 2), payload(1, 2))
    assert (folder / "data.mdb").exists()


def test_folder_of_another_format_is_refused(tmp_path: Path) -> None:
    folder_put(tmp_path, b"meta", b"format", b"kvtier-disk 99")
    with pytest.raises(DiskError, match="kvtier-disk 99"):
        open_store(tmp_path)
    # The folder is left as it was.
    assert folder_get(tmp_path, b"meta", b"format") == b"kvtier-disk 99"


def test_lmdb_folder_of_another_application_is_a_disk_error(tmp_path: Path) -> None:
    env = lmdb_env(tmp_path)
    with env.begin(write=True) as txn:  # plain keys in the main database, as any LMDB user may write
        txn.put(b"meta", b"somebody else's value")
        txn.put(b"blocks", b"x")
    env.close()
    with pytest.raises(DiskError, match=str(tmp_path)):
        open_store(tmp_path)


def test_path_that_is_a_file_is_a_disk_error(tmp_path: Path) -> None:
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    with pytest.raises(DiskError, match="not-a-folder"):
        open_store(f)


def test_fresh_disk_store_accepts_the_callers_clock(tmp_path: Path) -> None:
    """Explicit times are the caller's clock: a new store on an empty folder takes now=0 like one without disk."""
    s = open_store(tmp_path)
    r = s.insert(tokens(1, 2), payload(1, 2), now=0.0)
    assert r.stored_blocks == 2
    assert s.match(tokens(1, 2), now=1.0).num_blocks == 2
    s.close()


EXIT_WITHOUT_CLOSE = """
import sys, time
from disk_helpers import open_store, payload, tokens
s = open_store(sys.argv[1])
s.insert(tokens(1, 2), payload(1, 2))

class SlowTeardown:  # any interpreter shutdown that takes a while (freeing big objects, ...)
    def __del__(self):
        time.sleep(0.6)

slow = SlowTeardown()
"""


def test_process_exit_without_close_does_not_abort(tmp_path: Path) -> None:
    r = run_py(EXIT_WITHOUT_CLOSE, str(tmp_path))
    assert r.returncode == 0, f"exit code {r.returncode}: {r.stderr.strip()[-300:]}"


# =========================================================================== checksums
# "kvtier block checksum v1" (csrc/core/checksum.h) is part of the folder format: every payload in every
# existing folder is verified against it. A reference implementation from the header's description
# pins it, independently of the C++ (SIMD and portable) code.
_SEEDS = (
    0x9E3779B185EBCA87,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x85EBCA77C2B2AE63,
    0x27D4EB2F165667C5,
    0xD6E8FEB86659FD93,
    0xA0761D6478BD642F,
    0xE7037ED1A0B428DB,
)
_P1, _P2, _P3 = 0x8EBC6AF09C88C6E3, 0x589965CC75374CC3, 0x1D8E4E27C47D124F
_M64 = (1 << 64) - 1


def reference_checksum(data: bytes) -> int:
    n = len(data)
    padded = data + bytes(-n % 64)
    w = np.frombuffer(padded, "<u8").reshape(-1, 8)
    x = w ^ np.array(_SEEDS, np.uint64)
    products = (x & np.uint64(0xFFFFFFFF)) * (x >> np.uint64(32))  # wraps mod 2**64, as intended
    acc = [int(k) for k in _SEEDS]
    for j in range(8):
        acc[j] = (acc[j] + int(products[:, j].sum(dtype=np.uint64))) & _M64
        acc[j ^ 1] = (acc[j ^ 1] + int(w[:, j].sum(dtype=np.uint64))) & _M64

    def mix(v: int) -> int:
        return (((v ^ (v >> 33)) * _P3) & _M64) ^ (v >> 29)

    h = (n * _P1) & _M64
    for j in range(8):
        h = ((h ^ mix(acc[j])) * _P2) & _M64
    return (h ^ (h >> 29)) & 0xFFFFFFFF


SIZES = (0, 1, 3, 7, 31, 63, 64, 65, 127, 129, 4095, 4096, 4097, 12345, (256 << 10) + 65)


def test_block_checksum_matches_the_documented_algorithm() -> None:
    rng = np.random.default_rng(9)
    for n in SIZES:
        d = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        want = reference_checksum(d)
        assert _core.block_checksum(d) == want, n
        assert _core.block_checksum(d, portable=True) == want, n
    assert _core.block_checksum(bytes(100)) == reference_checksum(bytes(100))


def test_copy_verified_uses_the_same_checksum(tmp_path: Path) -> None:
    """The fused copy + checksum (SIMD, streaming stores for large blocks) agrees with block_checksum."""
    rng = np.random.default_rng(12)
    for n in (64, 1000, 4160, (256 << 10) + 64, (256 << 10) + 65):
        block = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        out = np.zeros(2 * n, np.uint8)
        oks = _core.copy_verified(
            out, n, [(0, block, _core.block_checksum(block)), (1, block, reference_checksum(block))]
        )
        assert list(oks) == [True, True], n
        assert out[:n].tobytes() == block and out[n:].tobytes() == block


def test_block_checksum_sees_every_bit() -> None:
    rng = np.random.default_rng(10)
    for n in (1, 17, 64, 100, 1031):
        d = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        base = _core.block_checksum(bytes(d))
        for pos in sorted({0, n // 2, n - 1}):
            for bit in (0, 7):
                d[pos] ^= 1 << bit
                assert _core.block_checksum(bytes(d)) != base, (n, pos, bit)
                assert _core.block_checksum(bytes(d), portable=True) != base, (n, pos, bit)
                d[pos] ^= 1 << bit
        assert _core.block_checksum(bytes(d)) == base
        # A zero byte appended (a torn or shifted write) changes the length, so the checksum.
        assert _core.block_checksum(bytes(d) + b"\0") != base
    # Zeroed pages and swapped words are caught too.
    d = rng.integers(0, 256, 8192, dtype=np.uint8).tobytes()
    base = _core.block_checksum(d)
    assert _core.block_checksum(d[:4096] + bytes(4096)) != base
    assert _core.block_checksum(d[8:16] + d[:8] + d[16:]) != base


def test_copy_verified_rejects_a_wrong_checksum() -> None:
    block = np.arange(BB, dtype=np.uint8).tobytes()
    good = _core.block_checksum(block)
    out = np.zeros((2, BB), np.uint8)
    oks = _core.copy_verified(out, BB, [(0, block, good), (1, block, good ^ 1)])
    assert list(oks) == [True, False]
    assert out[0].tobytes() == block


def test_payload_checksum_is_stored_in_the_index_record(tmp_path: Path) -> None:
    t, p = tokens(1, 2), payload(1, 2)
    with open_store(tmp_path) as s:
        s.insert(t, p, session="sess")
    k = keys_of(t)
    rec = _core.decode_record(k[1], folder_get(tmp_path, b"index", k[1]))  # type: ignore[arg-type]
    assert rec is not None
    assert rec["checksum"] == _core.block_checksum(p[1].tobytes())
    assert bytes(rec["parent"]) == k[0]
    assert rec["session"] == "sess"
    assert rec["length"] == BB


def test_load_into_host_tensors_reads_the_folder(tmp_path: Path) -> None:
    """A torch CPU tensor or a host TensorView as ``out`` (no buffer protocol): disk blocks come through the
    staging buffer, checksum-verified, like into numpy."""
    torch = pytest.importorskip("torch")
    s = open_store(tmp_path, host_blocks=8, disk_blocks=64)
    s.insert(tokens(1, 5), payload(1, 5))
    s.close()
    s = open_store(tmp_path, host_blocks=8, disk_blocks=64, promote=False)
    out = torch.zeros((5, BB), dtype=torch.uint8)
    assert s.match(tokens(1, 5)).disk_blocks == 5
    assert s.load(tokens(1, 5), out) == 5
    assert np.array_equal(out.numpy(), payload(1, 5))
    raw = np.zeros((5, BB), np.uint8)
    view = kvtier.TensorView(raw.ctypes.data, raw.shape, raw.strides, 1, "|u1", owner=raw)
    assert s.load(tokens(1, 5), view) == 5 and np.array_equal(raw, payload(1, 5))
    assert s.stats().disk.bytes_read == 10 * BB
    s.close()
