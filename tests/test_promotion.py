"""Promotion on load follows one rule for every length (issue 12, item 8): a disk hit is copied up to host memory
as far as room can be made there, never waiting for the write queue."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kvtier
from disk_helpers import BB, T0, close_opened, load_all, open_store, payload, tokens


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    close_opened()


@pytest.mark.parametrize("blocks", [3, 64, 65, 200])
def test_a_disk_hit_of_any_length_is_promoted_after_a_restart(tmp_path: Path, blocks: int) -> None:
    s = open_store(tmp_path, host_blocks=256)
    s.insert(tokens(1, blocks), payload(1, blocks), now=T0)
    s.close()  # persists the host tier
    s = open_store(tmp_path, host_blocks=256)  # the default queue holds 64 blocks
    n, out = load_all(s, tokens(1, blocks), blocks, now=T0 + 1)
    assert n == blocks and (out == payload(1, blocks)).all()
    st = s.stats()
    assert st.disk is not None and st.disk.promoted == blocks
    assert st.blocks == blocks  # every block now in host memory
    before = st.disk.hits
    assert s.match(tokens(1, blocks), now=T0 + 2).tiers.tolist() == [int(kvtier.Tier.HOST)] * blocks
    assert s.stats().disk.hits == before  # the next lookup never reaches the disk


def test_promotion_stops_at_the_host_tiers_room(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=256)
    s.insert(tokens(1, 100), payload(1, 100), now=T0)
    s.close()
    s = open_store(tmp_path, host_blocks=40)
    n, out = load_all(s, tokens(1, 100), 100, now=T0 + 1)
    assert n == 100 and (out == payload(1, 100)).all()
    st = s.stats()
    assert st.disk is not None and 0 < st.disk.promoted <= 40
    assert st.blocks == st.disk.promoted
    s.check_invariants()


class _TimedCore:
    """The disk tier's view of the core, timing each disk_finish_load (where promotion runs)."""

    def __init__(self, core: object) -> None:
        self._core = core
        self.spans: list[tuple[float, float]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._core, name)

    def disk_finish_load(self, *args: object, **kw: object) -> object:
        t0 = time.perf_counter()
        try:
            return self._core.disk_finish_load(*args, **kw)  # type: ignore[attr-defined]
        finally:
            self.spans.append((t0, time.perf_counter()))


def test_a_promotions_copy_runs_outside_the_store_lock(tmp_path: Path) -> None:
    """A peek of an unrelated prompt never waits for the copy of a large promotion (256 MiB from a disk hit into the
    host tier; issue 12, items 2 and 8): each chunk is reserved, copied with the lock released, and committed. With
    the copy under the lock, a peek that arrives as the promotion starts waits for all of it."""
    bb, blocks = 8 << 20, 32
    data = np.repeat(np.arange(blocks, dtype=np.uint8)[:, None], bb, axis=1)
    kw = {"host_blocks": blocks + 2, "disk_blocks": blocks + 2, "block_bytes": bb, "sync": False}
    s = open_store(tmp_path, **kw)
    s.insert(tokens(1, blocks), data, now=T0)
    s.close()  # persists the host tier
    s = open_store(tmp_path, **kw)
    s.insert(tokens(2, 1), data[:1], now=T0 + 1)  # the unrelated prompt, in host memory
    assert s._disk is not None
    timed = _TimedCore(s._disk._core)
    s._disk._core = timed  # type: ignore[assignment]
    peeks: list[tuple[float, float]] = []
    stop = threading.Event()

    def peek() -> None:
        other = tokens(2, 1)
        while not stop.is_set():
            t0 = time.perf_counter()
            assert s.peek(other).num_blocks == 1
            peeks.append((t0, time.perf_counter()))

    t = threading.Thread(target=peek)
    t.start()
    try:
        out = np.zeros((blocks, bb), np.uint8)
        time.sleep(0.02)
        assert s.load(tokens(1, blocks), out, now=T0 + 2) == blocks
    finally:
        stop.set()
        t.join()
    assert (out == data).all()
    st = s.stats()
    assert st.disk is not None and st.disk.promoted == blocks
    [(start, end)] = timed.spans
    waits = [e - b for b, e in peeks if b < end and e > start]  # the peeks that overlap the promotion
    assert waits, "no peek ran during the promotion"
    assert max(waits) < 0.5 * (end - start), (
        f"a peek waited {max(waits) * 1e3:.1f} ms during a promotion of {(end - start) * 1e3:.1f} ms"
    )
    s.check_invariants()
