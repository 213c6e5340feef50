"""The remote tier below the local tiers: blocks the lowest local tier evicts are written to the server (write-back
from the tiers above), against a real redis-server on loopback.

The blocks that reach the server this way are the ones its insert-time writes missed: here, blocks dropped from
the write queue while the server was unreachable (``queue_bytes`` of one block). Without demotion they would be lost
to the fleet when the store evicts them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import kvtier
from kvtier import DiskConfig, Namespace, RemoteConfig, StoreConfig, Tier, TierConfig
from redis_helpers import RedisServer, server  # noqa: F401 - server is a fixture

BS = 16
BB = 4096
NS = Namespace(model="demote")


def prompt(blocks: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50_000, blocks * BS, dtype=np.int32)


def payload(blocks: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, 256, blocks * BB, dtype=np.uint8)


def remote(url: str) -> RemoteConfig:
    # A queue of four blocks: a six-block insert made while the server is down keeps its last four queued.
    return RemoteConfig(url=url, queue_bytes=4 * BB, timeout_s=0.5, retry_s=0.1)


def wait_connected(store: kvtier.Store) -> None:
    deadline = time.monotonic() + 10
    while not store.stats().remote.connected:
        assert time.monotonic() < deadline, "the store did not reconnect"
        time.sleep(0.02)


def insert_while_down(store: kvtier.Store, server: RedisServer, tokens: np.ndarray, kv: np.ndarray) -> None:
    """Inserts with the server stopped (all but the newest four blocks dropped from the write queue), then
    restarts it and lets the queue drain."""
    server.kill()
    store.match(prompt(1, seed=99))  # a round trip that finds the server gone
    store.insert(tokens, kv)
    server.start()
    wait_connected(store)
    with pytest.raises(kvtier.RemoteWriteError, match="dropped from the full queue"):
        store.flush()  # reports the dropped blocks once
    assert store.stats().remote.dropped == len(kv) // BB - 4


def fresh_reader(url: str, tmp_path: Path, tokens: np.ndarray, kv: np.ndarray) -> tuple[int, bool]:
    """Another store (no disk) loads ``tokens`` from the server: (blocks found, bytes equal)."""
    cfg = StoreConfig(block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=64 * BB), remote=RemoteConfig(url=url))
    with kvtier.Store(cfg, namespace=NS) as b:
        m = b.match(tokens)
        out = np.zeros_like(kv)
        got = b.load(tokens, out) if m.num_blocks else 0
        return m.num_blocks, got == m.num_blocks and bool(np.array_equal(out, kv)) and m.remote_blocks == m.num_blocks


def test_host_evictions_reach_the_server(server: RedisServer, tmp_path: Path) -> None:
    cfg = StoreConfig(block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=8 * BB), remote=remote(server.url))
    tokens, kv = prompt(6), payload(6)
    with kvtier.Store(cfg, namespace=NS) as a:
        insert_while_down(a, server, tokens, kv)
        assert fresh_reader(server.url, tmp_path, tokens, kv)[0] == 0  # the first two blocks are missing
        assert a.evict(8 * BB) == 6 * BB  # the host tier evicts the prompt
        a.flush()
        st = a.stats().remote
        assert st.demoted == 2  # the last four were written at insert: known, not sent again
        assert st.demote_rejected == 0 and st.pending == 0
        a.check_invariants()
    assert fresh_reader(server.url, tmp_path, tokens, kv) == (6, True)


def test_the_last_evictions_are_written_at_close(server: RedisServer, tmp_path: Path) -> None:
    cfg = StoreConfig(block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=6 * BB), remote=remote(server.url))
    tokens, kv = prompt(6), payload(6)
    a = kvtier.Store(cfg, namespace=NS)
    insert_while_down(a, server, tokens, kv)
    a.evict(6 * BB)  # queued for the demoter; close() writes them before it returns
    a.close()
    assert fresh_reader(server.url, tmp_path, tokens, kv) == (6, True)


def test_cleared_blocks_are_not_demoted(server: RedisServer, tmp_path: Path) -> None:
    cfg = StoreConfig(block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=8 * BB), remote=remote(server.url))
    tokens, kv = prompt(6), payload(6)
    with kvtier.Store(cfg, namespace=NS) as a:
        insert_while_down(a, server, tokens, kv)
        assert a.clear() == 6
        a.flush()
        assert a.stats().remote.demoted == 0
    assert fresh_reader(server.url, tmp_path, tokens, kv)[0] == 0


def disk_config(folder: Path, url: str | None) -> StoreConfig:
    return StoreConfig(
        block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=8 * BB),
        disk=DiskConfig(path=str(folder), capacity_bytes=8 * BB),
        remote=None if url is None else RemoteConfig(url=url),
    )


def written_before_the_remote(folder: Path, tokens: np.ndarray, kv: np.ndarray) -> None:
    """A store without a remote tier persists ``tokens`` to the folder: blocks the server has never seen."""
    with kvtier.Store(disk_config(folder, None), namespace=NS) as a:
        a.insert(tokens, kv)


def push_out_of_the_disk(store: kvtier.Store) -> None:
    for seed in range(1, 4):  # 12 newer blocks through an 8-block disk: the oldest prompt leaves it
        store.insert(prompt(4, seed=seed), payload(4, seed=seed))
        store.flush(host=True)


def test_disk_evictions_reach_the_server(server: RedisServer, tmp_path: Path) -> None:
    folder = tmp_path / "disk"
    tokens, kv = prompt(6), payload(6)
    written_before_the_remote(folder, tokens, kv)
    with kvtier.Store(disk_config(folder, server.url), namespace=NS) as b:  # the restart, now with a remote tier
        assert b.peek(tokens).disk_blocks == 6 and b.stats().remote.demoted == 0
        assert fresh_reader(server.url, tmp_path, tokens, kv)[0] == 0
        push_out_of_the_disk(b)
        assert b.stats().disk.evicted >= 6 and b.peek(tokens).disk_blocks == 0
        assert b.stats().remote.demoted == 6  # read back from the folder in the deleting transaction
        b.check_invariants()
    assert fresh_reader(server.url, tmp_path, tokens, kv) == (6, True)


def test_a_damaged_disk_block_is_not_demoted(server: RedisServer, tmp_path: Path) -> None:
    """A block whose folder payload no longer matches its record is dropped, never handed to the server."""
    folder = tmp_path / "disk"
    tokens, kv = prompt(6), payload(6)
    written_before_the_remote(folder, tokens, kv)
    key = bytes(kvtier.block_keys(tokens, NS, block_size=BS)[2])
    with kvtier.Store(disk_config(folder, server.url), namespace=NS) as b:
        assert b._disk is not None
        with b._disk.io.writing() as w:  # one bit of the third block's payload flips on the disk
            value = bytearray(w.get(b"blocks", [key])[0])
            value[7] ^= 1
            w.put(b"blocks", [(key, bytes(value))])
        push_out_of_the_disk(b)
        assert b.stats().disk.evicted >= 6
        assert b.stats().remote.demoted == 5  # every block of the prompt but the damaged one
    assert fresh_reader(server.url, tmp_path, tokens, kv)[0] == 2  # the chain breaks at the third block


def test_the_cores_demotion_queue_is_a_tier_with_room_residency_and_slots() -> None:
    """The core half alone (no Python tier draining it): evicted blocks wait with their host slots, charged to
    their account as Tier.REMOTE; a full queue rejects; the writer's take and finish hand the payloads out and
    give the slots back. No server needed."""
    from kvtier import _core

    spec = StoreConfig(block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=4 * BB)).spec()
    spec.remote.enabled = True
    spec.remote.queue_blocks = 3
    core = _core.Store(spec, ids=False, limit=1 << 31)
    ns = core.add_namespace(NS.key(BS, "tokens"))
    tokens, kv = prompt(4), payload(4)
    assert core.insert(ns, "s1", tokens, kv, 0, 10.0)[1] == 4
    # Four evicted a chunk at a time, tail first: three fit in the queue; the fourth waited for room (no demoter
    # runs here) for Store::kRemoteRoomWait seconds and was turned away.
    assert core.evict(4 * BB, 20.0) == 4 * BB
    assert core.remote_stats() == {"demoted": 3, "rejected": 1, "pending": 3}
    core.check_invariants()  # the three queued slots are held by the queue
    rows = [r for r in core.residency(30.0) if r[2] == int(Tier.REMOTE) and r[1] == "s1"]
    assert len(rows) == 1 and rows[0][3] == 3 * BB and rows[0][4] == pytest.approx(3 * BB * 10.0)

    closed, blocks = core.remote_take(2, 0.0)
    assert not closed and [b[3] for b in blocks] == [3, 2]  # in eviction order, with their positions
    keys = kvtier.block_keys(tokens, NS, block_size=BS)
    for ns_key, key, session, pos, view in blocks:
        assert ns_key == NS.key(BS, "tokens") and key == bytes(keys[pos]) and session == "s1"
        assert bytes(view) == kv[pos * BB : (pos + 1) * BB].tobytes()
    assert core.remote_take(2, 0.0) == (False, [])  # one batch out at a time
    core.remote_finish()
    assert core.remote_stats()["pending"] == 1
    core.check_invariants()
    closed, blocks = core.remote_take(8, 0.0)
    assert len(blocks) == 1 and blocks[0][3] == 1
    core.remote_finish()
    rows = [r for r in core.residency(40.0) if r[2] == int(Tier.REMOTE) and r[1] == "s1"]
    assert rows[0][3] == 0  # nothing waits any more; the byte-seconds stay
    core.check_invariants()
    core.close()
    assert core.remote_take(1, 0.0)[0] is True  # the demoter stops


def test_a_large_eviction_waits_for_the_demotion_queue_instead_of_losing_blocks(
    server: RedisServer, tmp_path: Path
) -> None:
    """Blocks from tensors are not written at insert; evicting 128 of them at once (twice the core's 64-block
    demotion queue) waits for the demoter chunk by chunk: every one reaches the server."""
    torch = pytest.importorskip("torch")
    cfg = StoreConfig(block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=128 * BB), remote=RemoteConfig(url=server.url))
    tokens, kv = prompt(128), payload(128)
    with kvtier.Store(cfg, namespace=NS) as a:
        a.insert(tokens, torch.from_numpy(kv.reshape(128, BB)))
        a.flush()
        assert a.stats().remote.written == 0  # a tensor: its blocks reach the server by demotion only
        a.insert(prompt(128, seed=5), torch.from_numpy(payload(128, seed=5).reshape(128, BB)))  # evicts all 128
        a.flush()  # raises if any evicted block was turned away
        st = a.stats().remote
        assert (st.demoted, st.written, st.demote_rejected) == (128, 128, 0)
    assert fresh_reader(server.url, tmp_path, tokens, kv) == (128, True)


def test_blocks_the_server_expired_are_demoted_again(server: RedisServer, tmp_path: Path) -> None:
    """The store's memory of what it wrote goes stale when the server expires blocks (TTL): a demotion asks the
    server (EXISTS per batch) instead of trusting it."""
    cfg = StoreConfig(
        block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=8 * BB), remote=RemoteConfig(url=server.url, ttl_s=0.5)
    )
    tokens, kv = prompt(6), payload(6)
    with kvtier.Store(cfg, namespace=NS) as a:
        a.insert(tokens, kv)
        a.flush()
        assert a.stats().remote.written == 6
        time.sleep(1.0)  # the server expired them
        assert fresh_reader(server.url, tmp_path, tokens, kv)[0] == 0
        a.evict(8 * BB)
        a.flush()
        assert a.stats().remote.demoted == 6
    assert fresh_reader(server.url, tmp_path, tokens, kv) == (6, True)
