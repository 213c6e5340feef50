"""Lookups by key (Store.insert_keys / find_keys / has_keys / load_keys, content="keys").

Each key is a one-block prompt in a namespace whose key binds ``content=keys``: the same tiers, policies,
residency, checksums and disk records as token blocks. Keys here are random 32-byte strings, as SGLang's
page hashes are; payloads are a function of the key, so any load is checked byte for byte.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from disk_helpers import T0, close_opened, folder_get, folder_put, run_py
from kvtier import (
    DiskConfig,
    InvalidArgumentError,
    KvtierTypeError,
    Namespace,
    Store,
    StoreConfig,
    TierConfig,
)

BB = 48  # payload bytes per block
PAGE = 8  # tokens per page (bound in the namespace key through block_size)


def key(i: int, salt: str = "") -> bytes:
    return hashlib.sha256(f"{salt}page{i}".encode()).digest()


def keys(n: int, start: int = 0, salt: str = "") -> list[str]:
    return [key(i, salt).hex() for i in range(start, start + n)]


def payload_of(ks: list[str]) -> np.ndarray:
    out = np.empty((len(ks), BB), np.uint8)
    for i, k in enumerate(ks):
        out[i] = np.frombuffer(hashlib.shake_128(bytes.fromhex(k)).digest(BB), np.uint8)
    return out


def cfg(host_blocks: int = 64, disk: Path | None = None, **kw: object) -> StoreConfig:
    return StoreConfig(
        block_size=PAGE,
        block_bytes=BB,
        content="keys",
        host=TierConfig(capacity_bytes=host_blocks * BB, **kw),  # type: ignore[arg-type]
        disk=None if disk is None else DiskConfig(path=disk, capacity_bytes=1 << 20),
    )


@pytest.fixture(autouse=True)
def _close() -> object:
    yield
    close_opened()


def loaded(store: Store, ks: list[str], **kw: object) -> tuple[int, np.ndarray]:
    out = np.zeros((len(ks), BB), np.uint8)
    n = store.load_keys(ks, out, **kw)  # type: ignore[arg-type]
    return n, out


def test_round_trip_leading_run_and_mid_chain() -> None:
    with Store(cfg()) as s:
        ks = keys(10)
        ok = s.insert_keys(ks[:6], payload_of(ks[:6]))
        assert ok.tolist() == [True] * 6
        assert s.find_keys(ks) == 6
        assert s.has_keys(ks).tolist() == [True] * 6 + [False] * 4
        n, out = loaded(s, ks)
        assert n == 6 and (out[:6] == payload_of(ks[:6])).all() and not out[6:].any()
        # A lookup may start anywhere in a chain: the key names its prefix.
        assert s.find_keys(ks[3:]) == 3
        n, out = loaded(s, ks[4:])
        assert n == 2 and (out[:2] == payload_of(ks[4:6])).all()
        # A hole stops the run; keys after it are not loaded.
        assert s.find_keys([ks[0], keys(1, 99)[0], ks[1]]) == 1
        # bytes keys and a uint8[n, 32] array name the same blocks.
        raw = [bytes.fromhex(k) for k in ks[:6]]
        assert s.find_keys(raw) == 6
        assert s.find_keys(np.frombuffer(b"".join(raw), np.uint8).reshape(6, 32)) == 6
        assert s.find_keys([]) == 0
        s.check_invariants()


def test_reput_copies_nothing_and_counts_hits() -> None:
    with Store(cfg()) as s:
        ks = keys(5)
        s.insert_keys(ks, payload_of(ks))
        written = s.stats().bytes_written
        assert written == 5 * BB
        assert s.insert_keys(ks, payload_of(ks)).all()
        assert s.stats().bytes_written == written  # re-puts: a lookup, no copy
        hits = s.stats().hits
        assert s.find_keys(ks) == 5 and s.stats().hits == hits  # not touched
        assert s.find_keys(ks, touch=True) == 5 and s.stats().hits == hits + 5
        loaded(s, ks)
        assert s.stats().hits == hits + 10


def test_namespaces_isolate_and_never_meet_token_blocks() -> None:
    a, b = Namespace(model="m", tenant="a"), Namespace(model="m", tenant="b")
    with Store(cfg(), namespace=a) as s:
        ks = keys(3)
        s.insert_keys(ks, payload_of(ks))
        assert s.find_keys(ks, namespace=b) == 0
        assert s.find_keys(ks, namespace=a) == 3
    assert a.key(PAGE, "keys") != a.key(PAGE, "tokens")
    assert a.key(PAGE, "keys") != a.key(PAGE + 1, "keys")  # the page geometry is bound in


def test_host_eviction_and_residency() -> None:
    with Store(cfg(host_blocks=4)) as s:
        ks = keys(6)
        s.insert_keys(ks, payload_of(ks), session="agent", now=T0)
        assert s.has_keys(ks, now=T0).sum() == 4  # LRU made room: the first two left
        assert s.find_keys(ks[2:], now=T0) == 4
        rows = s.residency(now=T0 + 10).rows
        assert sum(r.byte_seconds for r in rows if r.session == "agent") == pytest.approx(4 * BB * 10)


def test_disk_restart_corrupt_payload_and_other_process(tmp_path: Path) -> None:
    ks = keys(8)
    with Store(cfg(host_blocks=2, disk=tmp_path)) as s:
        s.insert_keys(ks[:6], payload_of(ks[:6]))
        s.flush(host=True)
    # A fresh store serves what the folder holds (host tier of 2: the rest from disk).
    s = Store(cfg(host_blocks=2, disk=tmp_path))
    try:
        assert s.find_keys(ks) == 6
        n, out = loaded(s, ks)
        assert n == 6 and (out[:6] == payload_of(ks[:6])).all()
        # Another process stores the next keys: this store finds and loads them (the folder's index).
        code = """
            import sys, numpy as np
            sys.path.insert(0, sys.argv[2])
            from test_store_keys import cfg, keys, payload_of
            from kvtier import Store
            ks = keys(8)
            with Store(cfg(host_blocks=2, disk=sys.argv[1])) as o:
                assert o.insert_keys(ks[6:], payload_of(ks[6:])).all()
                o.flush(host=True)
        """
        r = run_py(code, str(tmp_path), str(Path(__file__).parent))
        assert r.returncode == 0, r.stderr
        assert s.find_keys(ks) == 8
        n, out = loaded(s, ks)
        assert n == 8 and (out == payload_of(ks)).all()
    finally:
        s.close(persist=False)
    # A payload damaged on disk is never served: the run stops there and the block is dropped.
    ns_store = Store(cfg(host_blocks=1, disk=tmp_path))
    try:
        block_keys = ns_store._core.keys_block_keys(ns_store._ns(None), np.frombuffer(b"".join(bytes.fromhex(k) for k in ks), np.uint8).reshape(-1, 32))
    finally:
        ns_store.close(persist=False)
    victim = block_keys[3].tobytes()
    good = folder_get(tmp_path, b"blocks", victim)
    assert good is not None
    folder_put(tmp_path, b"blocks", victim, bytes(b ^ 0xFF for b in good))
    s = Store(cfg(host_blocks=1, disk=tmp_path))
    try:
        n, out = loaded(s, ks)
        assert n == 3 and (out[:3] == payload_of(ks[:3])).all()
        assert s.stats().disk is not None and s.stats().disk.corrupted == 1
        assert s.find_keys(ks) == 3  # dropped: a miss from now on
        assert s.find_keys(ks[4:]) == 4
        s.check_invariants()
    finally:
        s.close(persist=False)


def test_bad_input_named() -> None:
    with Store(cfg()) as s:
        with pytest.raises(InvalidArgumentError, match=r"keys\[1\] must be 64 hex"):
            s.find_keys(["00" * 32, "00" * 31])
        with pytest.raises(InvalidArgumentError, match="hex"):
            s.find_keys(["zz" * 32])
        with pytest.raises(InvalidArgumentError, match=r"keys\[0\] must be 32 bytes"):
            s.has_keys([b"short"])
        with pytest.raises(KvtierTypeError, match=r"keys\[1\]"):
            s.find_keys([b"\0" * 32, 7])  # type: ignore[list-item]
        with pytest.raises(KvtierTypeError, match="keys must be a sequence"):
            s.find_keys("00" * 32)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="uint8"):
            s.find_keys(np.zeros((2, 16), np.uint8))
        with pytest.raises(InvalidArgumentError, match="payloads has"):
            s.insert_keys(keys(2), np.zeros((1, BB), np.uint8))
        with pytest.raises(InvalidArgumentError, match="payloads are required"):
            s.insert_keys(keys(1))
        with pytest.raises(InvalidArgumentError, match="out has"):
            s.load_keys(keys(2), np.zeros(BB, np.uint8))
        with pytest.raises(KvtierTypeError, match="touch"):
            s.find_keys(keys(1), touch=1)  # type: ignore[arg-type]
        with pytest.raises(KvtierTypeError, match="out"):
            s.load_keys(keys(1), bytes(BB))  # type: ignore[arg-type]
    with Store(StoreConfig(block_size=PAGE, block_bytes=BB)) as tokens_store:
        with pytest.raises(InvalidArgumentError, match="content='keys'"):
            tokens_store.find_keys(keys(1))
    with pytest.raises(InvalidArgumentError, match="vocab_size"):
        StoreConfig(content="keys", vocab_size=100)


def test_threads_share_keys() -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(t: int) -> int:
        for r in range(30):
            ks = keys(4, start=(t * 7 + r) % 40)
            s.insert_keys(ks, payload_of(ks))
            n, out = loaded(s, ks)
            assert (out[:n] == payload_of(ks[:n])).all()
        return t

    with Store(cfg(host_blocks=32)) as s, ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(work, range(4))) == [0, 1, 2, 3]  # map re-raises a worker's error
        s.check_invariants()
