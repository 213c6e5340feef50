"""Pins are generation-tagged handles: a released or foreign pin is refused with PinError, never taken for another
request's prefix, also when another thread releases it during a load (issue 12, item 5); copies outside the store
lock keep the blocks they read and write (item 2)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import kvtier

BLOCK = 4
BYTES = 64


def make_store(blocks: int = 64) -> kvtier.Store:
    cfg = kvtier.StoreConfig(
        block_size=BLOCK, block_bytes=BYTES, host=kvtier.TierConfig(capacity_bytes=blocks * BYTES)
    )
    return kvtier.Store(cfg)


def prompt(first: int, blocks: int) -> np.ndarray:
    return np.arange(first, first + blocks * BLOCK, dtype=np.int32)


def kv(blocks: int, fill: int) -> np.ndarray:
    return np.full((blocks, BYTES), fill, np.uint8)


def test_released_pin_is_refused_everywhere() -> None:
    with make_store() as s:
        s.insert(prompt(0, 2), kv(2, 7))
        m = s.match(prompt(0, 2), pin=True)
        s.unpin(m)
        out = np.zeros((2, BYTES), np.uint8)
        for call in (lambda: s.load(m, out), lambda: s.unpin(m), lambda: s.block_keys_of(m)):
            with pytest.raises(kvtier.PinError, match="already released"):
                call()
        assert not out.any()  # nothing was copied
        assert s.stats().pinned_blocks == 0


def test_pin_error_is_an_invalid_argument() -> None:
    assert issubclass(kvtier.PinError, kvtier.InvalidArgumentError)
    assert issubclass(kvtier.PinError, ValueError)


def test_load_racing_unpin_never_aborts_and_never_copies_another_prompt() -> None:
    """10,000 rounds: one thread loads a pinned prefix while another releases that pin and at once pins a different
    prompt (which reuses the released pin record). Each load either copies the right KV or raises PinError."""
    rounds = 10_000
    with make_store() as s:
        a, b = prompt(0, 4), prompt(1000, 4)
        s.insert(a, kv(4, 0xAA), now=1.0)
        s.insert(b, kv(4, 0xBB), now=1.0)
        out = np.zeros((4, BYTES), np.uint8)
        barrier = threading.Barrier(2)
        pins: list[kvtier.MatchResult] = []
        counts = {"loaded": 0, "refused": 0}
        failures: list[BaseException] = []

        def release_and_reuse() -> None:
            for _ in range(rounds):
                barrier.wait()
                try:
                    s.unpin(pins[-1], now=1.0)
                    other = s.match(b, pin=True, now=1.0)  # takes the record the unpin freed
                    s.unpin(other, now=1.0)
                except BaseException as e:  # noqa: BLE001 - reported by the main thread
                    failures.append(e)
                barrier.wait()

        t = threading.Thread(target=release_and_reuse)
        t.start()
        try:
            for _ in range(rounds):
                pins.append(s.match(a, pin=True, now=1.0))
                out[:] = 0
                barrier.wait()
                try:
                    s.load(pins[-1], out)
                    assert (out == 0xAA).all(), "a load copied KV that is not its prefix's"
                    counts["loaded"] += 1
                except kvtier.PinError:
                    counts["refused"] += 1
                barrier.wait()
                pins.pop()
        except BaseException:
            barrier.abort()  # frees the other thread
            raise
        finally:
            t.join(timeout=60)
        assert not failures, failures[:3]
        assert counts["loaded"] + counts["refused"] == rounds
        assert s.stats().pinned_blocks == 0
        s.check_invariants()


def test_threads_inserting_one_prompt_store_it_once() -> None:
    """Inserts copy their payloads outside the store lock: four threads racing to store the same blocks leave one
    copy of each, the right bytes, and every slot accounted for."""
    blocks = 48
    with make_store(blocks=64) as s:
        p = prompt(0, blocks)
        payload = np.arange(blocks * BYTES, dtype=np.uint32).astype(np.uint8).reshape(blocks, BYTES)
        barrier = threading.Barrier(4)
        inserted: list[int] = []

        def insert(start: int) -> None:
            barrier.wait()
            lengths = [12, 24, 36, 48]
            for n in lengths[start:] + lengths[:start]:  # each thread in its own order of prefix lengths
                r = s.insert(p[: n * BLOCK], payload[:n])
                inserted.append(r.inserted_blocks)

        threads = [threading.Thread(target=insert, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(inserted) == blocks
        st = s.stats()
        assert st.blocks == blocks and st.inserted == blocks
        out = np.zeros((blocks, BYTES), np.uint8)
        assert s.load(p, out) == blocks
        assert (out == payload).all()
        s.check_invariants()


def test_a_node_split_during_a_load_keeps_no_pin() -> None:
    """A load holds its blocks while it copies outside the lock; another thread's match may split a held node
    meanwhile (a shorter prefix of it). Releasing the hold must release both halves: no block stays pinned."""
    bb = 1 << 20
    cfg = kvtier.StoreConfig(block_size=BLOCK, block_bytes=bb, host=kvtier.TierConfig(capacity_bytes=64 * bb))
    with kvtier.Store(cfg) as s:
        for rnd in range(6):
            p = prompt(rnd * 10_000, 48)
            s.evict(64 * bb)
            s.insert(p, np.full((48, bb), rnd, np.uint8))  # one node of 48 blocks
            out = np.empty((48, bb), np.uint8)
            done = threading.Event()

            def split_while_loading() -> None:
                for k in range(47, 0, -1):  # spread over the load's copy (tens of ms for 48 MiB)
                    if done.is_set():
                        return
                    s.match(p[: k * BLOCK])  # ends inside a node: splits it
                    time.sleep(0.0002)

            t = threading.Thread(target=split_while_loading)
            t.start()
            try:
                assert s.load(p, out) == 48
            finally:
                done.set()
                t.join()
            assert (out == rnd).all()
            assert s.stats().pinned_blocks == 0
            s.check_invariants()
