"""The disk tier against a bare py-lmdb loop of the same bytes, and the reopen time of a large folder.

1. Write and read of 2 MiB blocks (issue 3: at least 85% of a bare py-lmdb put/get loop of the same bytes).
   32 blocks of 2 MiB per round, in interleaved rounds:
   - kvtier write: the disk tier persisting 32 blocks that the host tier holds (``flush(host=True)`` of a
     write-back store: the writer thread puts each payload and its index record into LMDB, 32 blocks per
     transaction). Both sides run with ``sync=False``: an fsync costs both the same and its latency on this VM
     varies several-fold between rounds, which would drown the difference the gate is about. Untimed before each round: ``clear()`` + ``flush()`` and the ``insert`` into the host.
     Reported beside it, ungated: insert + flush of a write-through store (adds the copy into the host tier).
   - bare write: the same 32 payloads ``txn.put`` into an LMDB environment opened with the same settings, one
     transaction. Untimed before each round: the keys are deleted and the payloads copied into the buffer the
     puts read (as kvtier's untimed insert copies them into host slots: both write freshly produced bytes).
   - kvtier read: ``Store.load`` of the prompt after the host tier dropped it (``evict``), so all 32 blocks come
     from the folder: zero-copy LMDB buffers, copied into ``out`` with the checksum verified, in C++ without the GIL.
   - bare read: one read transaction, ``txn.get`` with ``buffers=True`` and a numpy copy into the same ``out``.
   Gate: bare time / kvtier time >= 0.85 for write and for read (medians).
2. Reopen of a folder holding 100,000 blocks: ``Store(config)`` + ``close()`` on the existing folder (restore
   reads the index records only, never the payloads), against a bare py-lmdb cursor pass over the same index
   database (open, read every record, close), in interleaved rounds. Gate: reopen median <= 12x the cursor's
   median (restore reads what the cursor reads and rebuilds the tree from it). Issue 3 asked for under 2 s; that
   absolute time is reported, not asserted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest
from harness import gate, interleaved
from kvtier import DiskConfig, Store, StoreConfig, TierConfig

BLOCK_BYTES = 2 << 20
BLOCKS = 32
MIN_FRACTION_OF_BARE = 0.85
REOPEN_BLOCKS = 100_000
# Restoring reads every index record (as the bare cursor does) and rebuilds the tree from it: 0.36 s against the
# cursor's 0.05 s (7x) in the README's figures, where issue 3 asked for under 2 s.
MAX_REOPEN_VS_CURSOR = 12.0


def _disk_store(path: Path, *, host_blocks: int, block_bytes: int, block_size: int = 16, **disk: Any) -> Store:
    return Store(
        StoreConfig(
            block_size=block_size,
            block_bytes=block_bytes,
            host=TierConfig(capacity_bytes=host_blocks * block_bytes),
            disk=DiskConfig(path=str(path), capacity_bytes=1 << 40, **disk),
        )
    )


def test_disk_write_read_vs_bare_lmdb(benchmark: Any, report: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 50_000, BLOCKS * 16, dtype=np.int32)
    payload = rng.integers(0, 256, (BLOCKS, BLOCK_BYTES), dtype=np.uint8)
    out = np.empty_like(payload)
    store = _disk_store(
        tmp_path / "kvtier", host_blocks=BLOCKS, block_bytes=BLOCK_BYTES, promote=False,
        batch_blocks=BLOCKS, queue_blocks=4 * BLOCKS, sync=False,
    )
    through = _disk_store(
        tmp_path / "through", host_blocks=BLOCKS, block_bytes=BLOCK_BYTES, write_through=True, promote=False,
        batch_blocks=BLOCKS, queue_blocks=4 * BLOCKS, sync=False,
    )
    env = lmdb.open(
        str(tmp_path / "bare"), map_size=1 << 32, max_dbs=2, sync=False, metasync=False, writemap=False,
        readahead=False,
    )
    db = env.open_db(b"blocks")
    keys = [os.urandom(32) for _ in range(BLOCKS)]

    def kv_clear() -> None:
        store.clear()
        store.flush()
        store.insert(tokens, payload)

    def kv_write() -> None:
        store.flush(host=True)

    def through_clear() -> None:
        through.clear()
        through.flush()

    def through_write() -> None:
        through.insert(tokens, payload)
        through.flush()

    def kv_drop_host() -> None:
        store.evict(1 << 62)

    def kv_read() -> None:
        assert store.load(tokens, out) == BLOCKS

    staged = np.empty_like(payload)

    def bare_clear() -> None:
        with env.begin(write=True) as txn:
            for k in keys:
                txn.delete(k, db=db)
        # Like kvtier's untimed insert: the bytes to write were just produced (copied) by the caller.
        np.copyto(staged, payload)

    def bare_write() -> None:
        with env.begin(write=True) as txn:
            for k, p in zip(keys, staged):
                txn.put(k, p, db=db)

    def bare_read() -> None:
        with env.begin(buffers=True) as txn:
            for i, k in enumerate(keys):
                np.copyto(out[i], np.frombuffer(txn.get(k, db=db), dtype=np.uint8))

    # Correctness of both paths before timing.
    kv_clear()
    kv_write()
    kv_drop_host()
    assert store.match(tokens).tiers.tolist() == [2] * BLOCKS
    kv_read()
    assert np.array_equal(out, payload)
    bare_clear()
    bare_write()
    bare_read()
    assert np.array_equal(out, payload)

    # The gated pair alone (a third writer in the same rounds adds dirty-page writeback that lands on
    # whichever subject runs next), then the write-through figure on its own.
    w = interleaved(
        {"kvtier_write": kv_write, "bare_write": bare_write},
        rounds=16,
        setup={"kvtier_write": kv_clear, "bare_write": bare_clear},
        warmup=1,
    )
    w.update(interleaved({"through_write": through_write}, rounds=4, setup={"through_write": through_clear}, warmup=1))
    kv_write()
    bare_write()
    r = interleaved(
        {"kvtier_read": kv_read, "bare_read": bare_read},
        rounds=12,
        setup={"kvtier_read": kv_drop_host},
        warmup=1,
    )
    benchmark.pedantic(kv_read, setup=kv_drop_host, rounds=5, warmup_rounds=1)
    stats = store.stats().disk
    assert stats is not None and stats.corrupted == 0 and stats.write_errors == 0
    store.close()
    through.close()
    env.close()

    nbytes = payload.nbytes
    write_fraction = w["bare_write"].median / w["kvtier_write"].median
    write_fraction_min = w["bare_write"].min / w["kvtier_write"].min
    read_fraction = r["bare_read"].median / r["kvtier_read"].median
    figures = {
        "bytes per round": nbytes,
        "kvtier write GB/s": nbytes / w["kvtier_write"].median / 1e9,
        "bare py-lmdb write GB/s": nbytes / w["bare_write"].median / 1e9,
        "write: fraction of bare": write_fraction,
        "write: fraction of bare (best rounds)": write_fraction_min,
        "write-through insert + flush GB/s (ungated)": nbytes / w["through_write"].median / 1e9,
        "kvtier read GB/s (checksummed)": nbytes / r["kvtier_read"].median / 1e9,
        "bare py-lmdb read GB/s": nbytes / r["bare_read"].median / 1e9,
        "read: fraction of bare": read_fraction,
    }
    figures.update(gate("write fraction of bare py-lmdb", write_fraction, MIN_FRACTION_OF_BARE))
    figures.update(gate("read fraction of bare py-lmdb", read_fraction, MIN_FRACTION_OF_BARE))
    report(benchmark, **figures)
    assert write_fraction >= MIN_FRACTION_OF_BARE, figures
    assert read_fraction >= MIN_FRACTION_OF_BARE, figures


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, dict[str, float]]:
    """A folder with 100,000 blocks (1,000 prompts x 100 blocks of 16 tokens, 256-byte payloads).

    Also times writing them (insert + the writer's commits, unsynced) against a bare py-lmdb ``put`` loop of as
    many records of the same sizes (32-byte keys, 4,096 puts a transaction), once each: the per-block cost of
    small blocks the issue asked to see.
    """
    path = tmp_path_factory.mktemp("reopen")
    block_bytes = 256
    rng = np.random.default_rng(11)
    payload = rng.integers(0, 256, (100, block_bytes), dtype=np.uint8)
    prompts = [rng.integers(0, 50_000, 1_600, dtype=np.int32) for _ in range(REOPEN_BLOCKS // 100)]
    start = time.perf_counter()
    store = _disk_store(
        path, host_blocks=128, block_bytes=block_bytes, write_through=True, sync=False, batch_blocks=4096,
        queue_blocks=8192,
    )
    for tokens in prompts:
        store.insert(tokens, payload)
    store.close(persist=False)
    kvtier_s = time.perf_counter() - start

    bare = tmp_path_factory.mktemp("bare-puts")
    value = bytes(block_bytes)
    start = time.perf_counter()
    env = lmdb.open(str(bare), map_size=1 << 30, sync=False, max_dbs=2)
    db = env.open_db(b"blocks")
    for first in range(0, REOPEN_BLOCKS, 4096):
        with env.begin(write=True, db=db) as txn:
            for i in range(first, min(first + 4096, REOPEN_BLOCKS)):
                txn.put(i.to_bytes(32, "big"), value)
    env.close()
    bare_s = time.perf_counter() - start
    return path, block_bytes, {"kvtier_s": kvtier_s, "bare_s": bare_s}


def test_reopen_100k_blocks(benchmark: Any, report: Any, big_folder: tuple[Path, int, dict[str, float]]) -> None:
    path, block_bytes, written = big_folder

    def reopen() -> None:
        s = _disk_store(path, host_blocks=128, block_bytes=block_bytes)
        s.close(persist=False)

    def bare_cursor() -> int:
        env = lmdb.open(str(path), max_dbs=4, readonly=True, lock=True)
        try:
            db = env.open_db(b"index", create=False)
            with env.begin() as txn:
                return sum(1 for _ in txn.cursor(db=db).iternext(keys=True, values=True))
        finally:
            env.close()

    # Correctness once, untimed: every block restored, and the bare pass sees the same index.
    s = _disk_store(path, host_blocks=128, block_bytes=block_bytes)
    rep = s.restore_report
    assert rep is not None and rep.restored == REOPEN_BLOCKS, rep
    stats = s.stats().disk
    assert stats is not None and stats.blocks == REOPEN_BLOCKS
    s.close(persist=False)
    assert bare_cursor() == REOPEN_BLOCKS

    t = interleaved({"reopen": reopen, "bare_cursor": bare_cursor}, rounds=5, warmup=1)
    benchmark.pedantic(reopen, rounds=2, warmup_rounds=0)
    ratio = t["reopen"].median / t["bare_cursor"].median
    figures = {
        "blocks in the folder": REOPEN_BLOCKS,
        "reopen median s": t["reopen"].median,
        "bare py-lmdb cursor over the index median s": t["bare_cursor"].median,
        "reopen / bare cursor": ratio,
        "folder bytes (data.mdb)": (path / "data.mdb").stat().st_size,
        "writing them, us per block (insert + commit, unsynced; once)": written["kvtier_s"] / REOPEN_BLOCKS * 1e6,
        "bare py-lmdb put of as many records, us per block (once)": written["bare_s"] / REOPEN_BLOCKS * 1e6,
        "write per block / bare put per block": written["kvtier_s"] / written["bare_s"],
    }
    figures.update(gate("reopen time / bare index cursor time", ratio, MAX_REOPEN_VS_CURSOR, higher_is_better=False))
    report(benchmark, **figures)
    assert ratio <= MAX_REOPEN_VS_CURSOR, figures
