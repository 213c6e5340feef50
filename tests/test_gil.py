"""Every call releases the GIL before it waits for the store lock (issue 12, item 2).

A replay of an 8-million-block trace holds the store lock for a tenth of a second or more. Each call below is made
while it runs, so it waits for the lock; meanwhile a pure-Python thread ticks every millisecond. A call that
waited for the lock holding the GIL would stop the ticks for as long as it waited (one did: polling
``store.closed`` during a 1 GiB load stalled every Python thread for 166 ms).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import kvtier

REQUESTS, PER_REQUEST = 800_000, 10  # about 0.1-0.5 s of replay under the lock on 2 cores, 120 MB of tree
MIN_WAIT_S = 0.03  # a call that waited less did not meet the replay (tried again)


@pytest.fixture(scope="module")
def trace() -> kvtier.ReplayTrace:
    blocks = np.random.default_rng(0).integers(1 << 20, 1 << 62, REQUESTS * PER_REQUEST, dtype=np.uint64)
    offsets = np.arange(0, REQUESTS * PER_REQUEST + 1, PER_REQUEST, dtype=np.uint64)
    return kvtier.ReplayTrace(offsets=offsets, blocks=blocks, timestamps=np.zeros(REQUESTS))


CALLS: dict[str, Callable[[kvtier.Store, Any], object]] = {
    "closed": lambda s, pin: s.closed,
    "stats": lambda s, pin: s.stats(),
    "residency": lambda s, pin: s.residency(now=0.0),
    "match": lambda s, pin: s.match([1, 2], now=0.0),
    "peek": lambda s, pin: s.peek([1, 2]),
    "insert": lambda s, pin: s.insert([5, 6], now=0.0),
    "unpin": lambda s, pin: s.unpin(pin, now=0.0),
    "evict": lambda s, pin: s.evict(1, now=0.0),
    "expire": lambda s, pin: s.expire(now=0.0),
    "clear": lambda s, pin: s.clear(now=0.0),
}


def _waits_while_a_replay_holds_the_lock(trace: kvtier.ReplayTrace, call: Callable[..., object]) -> tuple[float, float]:
    """(seconds the call took, the longest gap between 1 ms ticks of a Python thread meanwhile)."""
    s = kvtier.Store(kvtier.StoreConfig.for_blocks(None, content="block_ids"))
    try:
        s.insert([1, 2, 3], now=0.0)
        pin = s.match([1, 2, 3], now=0.0, pin=True)
        ticks: list[float] = []
        stop = threading.Event()

        def tick() -> None:
            while not stop.is_set():
                time.sleep(0.001)
                ticks.append(time.perf_counter())

        ticker = threading.Thread(target=tick)
        replay = threading.Thread(target=s.replay, args=(trace,))
        ticker.start()
        replay.start()
        try:
            time.sleep(0.02)  # the replay's arguments are converted; it holds the lock
            t0 = time.perf_counter()
            call(s, pin)
            t1 = time.perf_counter()
        finally:
            replay.join()
            time.sleep(0.005)
            stop.set()
            ticker.join()
        inside = [t0] + [t for t in ticks if t0 < t < t1] + [min(t for t in ticks if t >= t1)]
        return t1 - t0, max(b - a for a, b in zip(inside, inside[1:]))
    finally:
        s.close()


@pytest.mark.parametrize("name", list(CALLS))
def test_a_call_waiting_for_the_store_lock_lets_python_threads_run(trace: kvtier.ReplayTrace, name: str) -> None:
    for _attempt in range(6):
        waited, gap = _waits_while_a_replay_holds_the_lock(trace, CALLS[name])
        if waited >= MIN_WAIT_S:
            break
    else:
        pytest.fail(f"{name} never waited {MIN_WAIT_S * 1e3:.0f} ms for the replay's lock (took {waited * 1e3:.1f} ms)")
    assert gap < 0.5 * waited, (
        f"{name}: Python ticks stopped for {gap * 1e3:.1f} ms while it waited {waited * 1e3:.1f} ms for the store lock"
    )
