"""The store's device tier against the fake driver (fake_libcuda.c), whose device memory is host memory.

``python store_checks.py NAME`` runs ``check_NAME()`` in a process whose libcuda.so.1 is the fake (see
test_cuda_fake.py). Payloads are compared byte for byte with what was inserted; every check also verifies the
store's invariants and that no driver call was made without a current context.
"""

from __future__ import annotations

import gc
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
from checks import FakeDeviceTensor, counter

import kvtier
from kvtier import DeviceTierConfig, DiskConfig, StoreConfig, Tier, TierConfig
from kvtier.errors import InvalidArgumentError, KvtierTypeError

BS = 4  # tokens per block
_clock = [100_000.0]


def T() -> float:
    """A time after every explicit time the checks pass (loads need no particular one)."""
    _clock[0] += 1.0
    return _clock[0]

BB = 512  # payload bytes per block


def config(host_blocks: int, device_blocks: int, **kw: Any) -> StoreConfig:
    return StoreConfig(
        block_size=BS,
        block_bytes=BB,
        host=TierConfig(capacity_bytes=host_blocks * BB),
        device=DeviceTierConfig(capacity_bytes=device_blocks * BB, **kw.pop("device_kw", {})),
        **kw,
    )


def prompt(seed: int, blocks: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50_000, size=blocks * BS, dtype=np.int32)


def payload(seed: int, blocks: int) -> np.ndarray:
    return np.random.default_rng(seed + 1_000_000).integers(0, 256, size=(blocks, BB), dtype=np.uint8)


def on_gpu(a: np.ndarray) -> FakeDeviceTensor:
    t = FakeDeviceTensor(a.shape, a.dtype)
    t.host[...] = a
    return t


def load_host(store: kvtier.Store, tokens: np.ndarray, blocks: int, now: float) -> np.ndarray:
    out = np.zeros((blocks, BB), np.uint8)
    got = store.load(tokens, out, now=now)
    return out[:got]


def load_gpu(store: kvtier.Store, tokens: np.ndarray, blocks: int, now: float) -> np.ndarray:
    out = FakeDeviceTensor((blocks, BB), np.uint8)
    out.host[...] = 0
    got = store.load(tokens, out, now=now)
    return out.host[:got].copy()


def check_insert_from_gpu_and_write_back() -> None:
    with kvtier.Store(config(host_blocks=32, device_blocks=8)) as s:
        a, pa = prompt(1, 4), payload(1, 4)
        r = s.insert(a, on_gpu(pa), now=T())
        assert r.inserted_blocks == 4
        d = s.stats().device
        assert d is not None and (d.inserted, d.blocks, d.dirty_blocks, d.written_back) == (4, 4, 4, 0), d
        m = s.match(a, now=T())
        assert m.device_blocks == 4 and m.tiers.tolist() == [int(Tier.DEVICE)] * 4
        # Device-only blocks load from the device, into host or GPU memory.
        assert np.array_equal(load_host(s, a, 4, now=T()), pa)
        assert np.array_equal(load_gpu(s, a, 4, now=T()), pa)
        assert s.stats().device.hits == 8
        s.check_invariants()
        # A second prompt does not fit beside the first: the first (least recent) is written back to host.
        b, pb = prompt(2, 6), payload(2, 6)
        s.insert(b, on_gpu(pb), now=T())
        d = s.stats().device
        assert (d.blocks, d.dirty_blocks, d.written_back, d.evicted) == (6, 6, 4, 4), d
        assert s.match(a, now=T()).device_blocks == 0
        s.check_invariants()
        # Its host copy is the written-back one; loading it promotes it again, evicting (and writing back) b.
        assert np.array_equal(load_host(s, a, 4, now=T()), pa)
        d = s.stats().device
        assert (d.promoted, d.written_back, d.blocks, d.dirty_blocks) == (4, 10, 4, 0), d
        assert np.array_equal(load_gpu(s, b, 6, now=T()), pb)  # from the host now (device has a)
        assert np.array_equal(load_gpu(s, a, 4, now=T()), pa)
        s.check_invariants()


def check_promote_and_evict() -> None:
    with kvtier.Store(config(host_blocks=32, device_blocks=8)) as s:
        a, pa = prompt(3, 5), payload(3, 5)
        s.insert(a, pa, now=T())  # host memory: the host tier only
        assert s.match(a, now=T()).device_blocks == 0 and s.stats().device.blocks == 0
        assert np.array_equal(load_gpu(s, a, 5, now=T()), pa)  # host -> GPU, then promoted
        d = s.stats().device
        assert (d.promoted, d.blocks, d.hits) == (5, 5, 0), d
        assert s.match(a, now=T()).device_blocks == 5
        assert np.array_equal(load_gpu(s, a, 5, now=T()), pa)
        assert s.stats().device.hits == 5
        # A shared prefix splits the device node; both halves stay on the device.
        ext = np.concatenate([a[: 3 * BS], prompt(4, 2)])
        s.insert(ext, payload(4, 2), start_block=3, now=T())
        m = s.match(ext, now=T())
        assert m.tiers.tolist() == [0, 0, 0, 1, 1], m.tiers
        s.check_invariants()
        # evict(tier=DEVICE) frees whole nodes, coldest first; clean blocks need no copy.
        freed = s.evict(BB, tier=Tier.DEVICE, now=T())
        assert freed >= BB and s.stats().device.written_back == 0
        s.check_invariants()
        assert s.evict(1 << 40, tier=Tier.DEVICE, now=T()) == (5 - freed // BB) * BB
        assert s.stats().device.blocks == 0
        assert np.array_equal(load_host(s, a, 5, now=T()), pa)
        # Host eviction of a block on the device takes it off the device too.
        s.clear(now=T())
        d = s.stats().device
        assert d.blocks == 0 and s.stats().blocks == 0
        s.check_invariants()


def check_no_promotion() -> None:
    with kvtier.Store(config(host_blocks=16, device_blocks=8, device_kw={"promote": False})) as s:
        a, pa = prompt(5, 3), payload(5, 3)
        s.insert(a, pa, now=T())
        assert np.array_equal(load_gpu(s, a, 3, now=T()), pa)
        assert s.stats().device.blocks == 0 and s.match(a, now=T()).device_blocks == 0


def check_write_through() -> None:
    with kvtier.Store(config(host_blocks=16, device_blocks=8, device_kw={"write_through": True})) as s:
        a, pa = prompt(11, 3), payload(11, 3)
        s.insert(a, on_gpu(pa), now=T())
        d = s.stats().device
        assert (d.inserted, d.blocks, d.dirty_blocks) == (3, 3, 0), d
        assert np.array_equal(load_gpu(s, a, 3, now=T()), pa) and s.stats().device.hits == 3
        s.evict(1 << 30, tier=Tier.DEVICE, now=T())
        assert s.stats().device.written_back == 0 and s.stats().device.blocks == 0
        assert np.array_equal(load_host(s, a, 3, now=T()), pa)
        s.check_invariants()
    try:
        DeviceTierConfig(capacity_bytes=1 << 20, write_through=1)  # type: ignore[arg-type]
    except KvtierTypeError as e:
        assert "write_through must be a bool" in str(e), e
    else:
        raise AssertionError("write_through=1 was accepted")


def check_too_big_for_device() -> None:
    with kvtier.Store(config(host_blocks=32, device_blocks=2)) as s:
        a, pa = prompt(6, 5), payload(6, 5)
        s.insert(a, on_gpu(pa), now=T())  # a 5-block node cannot go to a 2-block device: host copy
        assert s.stats().device.inserted == 0 and s.stats().device.blocks == 0
        assert np.array_equal(load_gpu(s, a, 5, now=T()), pa)
        assert s.stats().device.blocks == 0
        s.check_invariants()


def check_residency() -> None:
    with kvtier.Store(config(host_blocks=16, device_blocks=8)) as s:
        s.insert(prompt(7, 2), on_gpu(payload(7, 2)), session="agent", now=10.0)
        rows = {(r.tier, r.session): r for r in s.residency(now=20.0).rows if r.byte_seconds}
        assert rows[(Tier.DEVICE, "agent")].byte_seconds == 2 * BB * 10.0
        assert rows[(Tier.HOST, "agent")].byte_seconds == 2 * BB * 10.0  # the reserved host slots
        s.evict(1, tier=Tier.DEVICE, now=25.0)
        rows = {(r.tier, r.session): r for r in s.residency(now=30.0).rows if r.byte_seconds}
        assert rows[(Tier.DEVICE, "agent")].byte_seconds == 2 * BB * 15.0
        assert rows[(Tier.DEVICE, "agent")].resident_bytes == 0


def check_disk_round_trip() -> None:
    """GPU -> device tier -> host -> disk -> (restart) -> GPU, byte-exact, for write-back and write-through."""
    for write_through in (False, True):
        with tempfile.TemporaryDirectory() as folder:
            disk = DiskConfig(path=folder, capacity_bytes=64 * BB, write_through=write_through, sync=False)
            a, pa = prompt(8, 6), payload(8, 6)
            with kvtier.Store(config(host_blocks=8, device_blocks=8, disk=disk), now=0.0) as s:
                s.insert(a, on_gpu(pa), now=T())
                if write_through:
                    assert s.stats().device.written_back == 6  # the writer reads the host slots
                s.check_invariants()
                # Other prompts push it out of the host tier (its dirty blocks are written back, then queued).
                for k in range(3):
                    s.insert(prompt(20 + k, 4), payload(20 + k, 4), now=T())
                s.flush()
                m = s.match(a, now=T())
                assert m.num_blocks == 6 and m.disk_blocks > 0, m
                # Disk blocks into GPU memory go through a host staging buffer.
                assert np.array_equal(load_gpu(s, a, 6, now=T()), pa)
                s.check_invariants()
            with kvtier.Store(config(host_blocks=8, device_blocks=8, disk=disk), now=0.0) as s:
                m = s.match(a, now=T())
                assert m.num_blocks == 6 and m.disk_blocks == 6, m
                # Disk blocks loaded into host memory are promoted to the host tier and on to the device.
                assert np.array_equal(load_host(s, a, 6, now=T()), pa)
                assert s.match(a, now=T()).tiers.tolist() == [int(Tier.DEVICE)] * 6
                assert s.stats().device.promoted == 6
                assert np.array_equal(load_gpu(s, a, 6, now=T()), pa)
                assert s.stats().device.hits == 6
                s.check_invariants()


def check_other_gpu_goes_to_host() -> None:
    """A payload on another GPU than the device tier's is copied to the host tier."""
    with kvtier.Store(config(host_blocks=16, device_blocks=8)) as s:
        a, pa = prompt(9, 3), payload(9, 3)
        t = FakeDeviceTensor(pa.shape, pa.dtype, device=1)
        t.host[...] = pa
        s.insert(a, t, now=T())
        assert s.stats().device.inserted == 0
        assert np.array_equal(load_host(s, a, 3, now=T()), pa)


def check_bad_input() -> None:
    for kw, what in [({"policy": "lfu"}, "policy must be 'lru'"), ({"ttl_s": 5.0}, "ttl_s None")]:
        try:
            DeviceTierConfig(capacity_bytes=1 << 20, **kw)
        except InvalidArgumentError as e:
            assert what in str(e), e
        else:
            raise AssertionError(f"DeviceTierConfig accepted {kw}")
    try:
        config(host_blocks=4, device_blocks=8)
    except InvalidArgumentError as e:
        assert "exceeds host.capacity_bytes" in str(e), e
    else:
        raise AssertionError("a device tier larger than the host tier was accepted")
    try:
        StoreConfig(metadata_only=True, device=DeviceTierConfig(capacity_bytes=1 << 20))
    except InvalidArgumentError as e:
        assert "metadata_only" in str(e), e
    else:
        raise AssertionError("a metadata-only store with a device tier was accepted")
    with kvtier.Store(config(host_blocks=16, device_blocks=8)) as s:
        a = prompt(10, 2)
        backing = FakeDeviceTensor((2, 2 * BB), np.uint8)

        class Rows:  # two blocks' rows with a gap between them: not contiguous
            __cuda_array_interface__ = {
                "shape": (2, BB),
                "typestr": "|u1",
                "data": (backing.ptr, False),
                "strides": (2 * BB, 1),
                "version": 3,
            }

        for bad, exc, what in [
            (Rows(), KvtierTypeError, "C-contiguous"),
            (FakeDeviceTensor((3, BB), np.uint8), InvalidArgumentError, "expected 1024"),
        ]:
            try:
                s.insert(a, bad, now=T())
            except exc as e:
                assert what in str(e), e
            else:
                raise AssertionError(f"insert accepted {what}")
        class ReadOnly:
            __cuda_array_interface__ = {
                "shape": (2, BB),
                "typestr": "|u1",
                "data": (backing.ptr, True),
                "version": 3,
            }

        try:
            s.load(a, ReadOnly(), now=T())
        except KvtierTypeError as e:
            assert "out must be writable" in str(e), e
        else:
            raise AssertionError("load wrote into a read-only CUDA buffer")
        small = FakeDeviceTensor((1, BB), np.uint8)
        s.insert(a, on_gpu(payload(10, 2)), now=T())
        try:
            s.load(a, small, now=T())
        except InvalidArgumentError as e:
            assert "must hold 2 blocks" in str(e), e
        else:
            raise AssertionError("load accepted a GPU buffer too small")
        try:
            s.evict(1, tier=Tier.DISK, now=T())
        except InvalidArgumentError as e:
            assert "Tier.HOST or Tier.DEVICE" in str(e), e
        else:
            raise AssertionError("evict accepted tier=DISK")
        s.check_invariants()


def check_payload_dtype() -> None:
    """A store with payload_dtype refuses CUDA tensors of another dtype, as it does numpy arrays."""
    cfg = StoreConfig(
        block_size=BS,
        block_bytes=BB,
        payload_dtype="float16",
        host=TierConfig(capacity_bytes=16 * BB),
        device=DeviceTierConfig(capacity_bytes=8 * BB),
    )
    with kvtier.Store(cfg) as s:
        a = prompt(12, 2)
        try:
            s.insert(a, FakeDeviceTensor((2, BB // 4), np.float32), now=T())
        except KvtierTypeError as e:
            assert "payloads must have dtype float16, got <f4" in str(e), e
        else:
            raise AssertionError("a float32 CUDA payload was accepted by a float16 store")
        good = FakeDeviceTensor((2, BB // 2), np.float16)
        good.host[...] = np.arange(BB, dtype=np.float16).reshape(2, BB // 2)
        s.insert(a, good, now=T())
        out = FakeDeviceTensor((2, BB // 2), np.float16)
        assert s.load(a, out, now=T()) == 2 and np.array_equal(out.host, good.host)


def check_copy_failures() -> None:
    """A device copy that fails (the fake fails the next copy; CUDA errors are sticky on the stream) raises
    CudaError and leaves the store consistent: no slot leaked, the tree, the LRU list and the ledger agree."""
    from checks import LIB

    from kvtier.errors import CudaError

    def expect_cuda_error(fn: Callable[[], object], what: str) -> None:
        try:
            fn()
        except CudaError as e:
            assert "CUDA_ERROR_LAUNCH_FAILED" in str(e), e
        else:
            raise AssertionError(f"{what}: a failed copy was not reported")

    # A write-back that fails while an insert from GPU memory makes room on the device.
    with kvtier.Store(config(host_blocks=16, device_blocks=2)) as s:
        a, pa = prompt(40, 2), payload(40, 2)
        s.insert(a, on_gpu(pa), now=T())
        before = s.stats()
        LIB.fake_cuda_fail_next_copy()
        expect_cuda_error(lambda: s.insert(prompt(41, 2), on_gpu(payload(41, 2)), now=T()), "insert")
        s.check_invariants()
        after = s.stats()
        assert after.blocks == before.blocks == 2 and after.device.blocks == 2 and after.device.dirty_blocks == 2
        # Host-only work goes on (the device stream stays broken, as CUDA's does).
        c, pc = prompt(42, 3), payload(42, 3)
        s.insert(c, pc, now=T())
        s.check_invariants()
    # A write-back that fails while a host eviction demotes a dirty node to disk, inside an insert.
    with tempfile.TemporaryDirectory() as folder:
        disk = DiskConfig(path=folder, capacity_bytes=64 * BB, sync=False)
        s = kvtier.Store(config(host_blocks=4, device_blocks=2, disk=disk), now=0.0)
        try:
            a, pa = prompt(43, 2), payload(43, 2)
            s.insert(a, on_gpu(pa), now=T())
            b = prompt(44, 3)
            s.insert(b[:BS], payload(44, 1), now=T())
            rows = s.residency(now=T()).rows
            LIB.fake_cuda_fail_next_copy()
            expect_cuda_error(lambda: s.insert(b, payload(44, 3)[1:], start_block=1, now=T()), "evicting insert")
            s.check_invariants()
            host = sum(r.resident_bytes for r in s.residency(now=T()).rows if r.tier == Tier.HOST)
            assert host == s.stats().blocks * BB == sum(r.resident_bytes for r in rows if r.tier == Tier.HOST)
            assert s.match(a, now=T()).device_blocks == 2  # still there, still dirty
        finally:
            # Closing persists the host tier: the dirty blocks cannot be written back over the broken stream.
            # The error is raised after the store is closed (the folder too).
            expect_cuda_error(s.close, "close")
            assert s.closed
        with kvtier.Store(config(host_blocks=4, device_blocks=2, disk=disk), now=0.0) as s:
            assert s.match(b, now=T()).num_blocks == 1  # what was persisted before the failure reopens
    # A copy from GPU memory that fails while an insert spills blocks the full host tier cannot take straight to
    # the disk's write queue: the host slot and the disk entry it had reserved are both given back.
    with tempfile.TemporaryDirectory() as folder:
        disk = DiskConfig(path=folder, capacity_bytes=64 * BB, sync=False)
        with kvtier.Store(config(host_blocks=2, device_blocks=1, disk=disk), now=0.0) as s:
            c, pc = prompt(45, 4), payload(45, 4)
            s.insert(c[: 2 * BS], pc[:2], now=T())  # the host tier is full of the prefix the insert extends
            LIB.fake_cuda_fail_next_copy()
            expect_cuda_error(lambda: s.insert(c, on_gpu(pc[2:]), start_block=2, now=T()), "spilling insert")
            s.check_invariants()
            d = s.stats().disk
            assert d is not None and d.blocks == 0 and d.pending == 0 and d.queued == 0
            assert all(r.resident_bytes == 0 for r in s.residency(now=T()).rows if r.tier == Tier.DISK)
            assert s.match(c, now=T()).num_blocks == 2


def check_model() -> None:
    """Random inserts (host or GPU memory), loads (into host or GPU memory), evictions of either tier and
    expiry, against a dict of what each prompt's blocks hold; invariants after every step."""
    rng = np.random.default_rng(12)
    with tempfile.TemporaryDirectory() as folder:
        disk = DiskConfig(path=folder, capacity_bytes=40 * BB, sync=False, queue_blocks=8)
        with kvtier.Store(config(host_blocks=24, device_blocks=10, disk=disk), now=0.0) as s:
            prompts: list[tuple[np.ndarray, np.ndarray]] = []
            now = 1.0
            for step in range(600):
                now += float(rng.random())
                op = rng.integers(0, 10)
                if op < 4 or not prompts:
                    if prompts and rng.random() < 0.5:  # extend a known prompt (shared prefix)
                        base, pbase = prompts[rng.integers(0, len(prompts))]
                        keep = int(rng.integers(1, len(base) // BS + 1))
                        extra = int(rng.integers(1, 4))
                        toks = np.concatenate([base[: keep * BS], prompt(10_000 + step, extra)])
                        pay = np.concatenate([pbase[:keep], payload(10_000 + step, extra)])
                    else:
                        n = int(rng.integers(1, 7))
                        toks, pay = prompt(20_000 + step, n), payload(20_000 + step, n)
                    src: Any = on_gpu(pay) if rng.random() < 0.5 else pay
                    s.insert(toks, src, now=now)
                    prompts.append((toks, pay))
                elif op < 8:
                    toks, pay = prompts[rng.integers(0, len(prompts))]
                    n = len(toks) // BS
                    got = load_gpu(s, toks, n, now=now) if rng.random() < 0.5 else load_host(s, toks, n, now=now)
                    assert np.array_equal(got, pay[: len(got)]), f"step {step}: wrong payload"
                elif op == 8:
                    s.evict(int(rng.integers(1, 6)) * BB, tier=Tier.DEVICE, now=now)
                else:
                    s.evict(int(rng.integers(1, 6)) * BB, now=now)
                s.check_invariants()
            d = s.stats().device
            assert d.inserted > 0 and d.promoted > 0 and d.written_back > 0 and d.hits > 0, d
            s.flush()


def check_threads() -> None:
    """Four threads insert (host or GPU memory), load (into host or GPU memory) and evict either tier of one
    store with a disk below; every load returns the bytes inserted for its prompt."""
    import threading

    prompts = [(prompt(30_000 + k, 1 + k % 5), payload(30_000 + k, 1 + k % 5)) for k in range(24)]
    errors: list[BaseException] = []
    with tempfile.TemporaryDirectory() as folder:
        disk = DiskConfig(path=folder, capacity_bytes=48 * BB, sync=False, queue_blocks=8)
        with kvtier.Store(config(host_blocks=16, device_blocks=8, disk=disk)) as s:

            def worker(seed: int) -> None:
                rng = np.random.default_rng(seed)
                try:
                    for _ in range(200):
                        toks, pay = prompts[int(rng.integers(0, len(prompts)))]
                        n = len(toks) // BS
                        op = rng.random()
                        if op < 0.35:
                            s.insert(toks, on_gpu(pay) if rng.random() < 0.5 else pay)
                        elif op < 0.85:
                            out: Any = FakeDeviceTensor((n, BB), np.uint8) if rng.random() < 0.5 else None
                            if out is None:
                                host = np.zeros((n, BB), np.uint8)
                                got = s.load(toks, host)
                                data = host[:got]
                            else:
                                out.host[...] = 0
                                got = s.load(toks, out)
                                data = out.host[:got]
                            assert np.array_equal(data, pay[:got]), "wrong payload"
                        elif op < 0.93:
                            s.evict(int(rng.integers(1, 4)) * BB, tier=Tier.DEVICE)
                        else:
                            s.evict(int(rng.integers(1, 4)) * BB)
                except BaseException as e:  # reported below
                    errors.append(e)

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not any(t.is_alive() for t in threads), "a thread hung"
            assert not errors, repr(errors[0])
            s.flush(host=True)
            s.check_invariants()
            d = s.stats().device
            assert d.hits > 0 and d.inserted > 0 and d.written_back > 0, d


def check_gpu_inserts_reach_the_remote_tier() -> None:
    """Blocks inserted from GPU memory into the device tier are not sent to the server at insert; they reach it
    when the host tier evicts them (written back from the device first). The server: $KVTIER_TEST_REDIS_URL."""
    import os

    from kvtier import Namespace, RemoteConfig

    url = os.environ["KVTIER_TEST_REDIS_URL"]
    ns = Namespace(model="gpu-demotion")
    a, pa = prompt(7, 4), payload(7, 4)
    with kvtier.Store(config(host_blocks=8, device_blocks=4, remote=RemoteConfig(url=url)), namespace=ns) as s:
        assert s.insert(a, on_gpu(pa), now=T()).inserted_blocks == 4
        s.flush()
        assert s.stats().remote.written == 0 and s.stats().device.dirty_blocks == 4
        assert s.evict(8 * BB, now=T()) == 4 * BB  # device -> host (written back) -> the remote tier
        s.flush()
        r = s.stats().remote
        assert (r.demoted, r.written, r.demote_rejected) == (4, 4, 0), r
        assert s.stats().device.written_back == 4
        s.check_invariants()
    other = StoreConfig(block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=8 * BB), remote=RemoteConfig(url=url))
    with kvtier.Store(other, namespace=ns) as t:
        m = t.match(a)
        assert (m.num_blocks, m.remote_blocks) == (4, 4), m
        out = np.zeros((4, BB), np.uint8)
        assert t.load(a, out) == 4 and np.array_equal(out, pa)


def main() -> None:
    name = sys.argv[1]
    fn: Callable[[], None] = globals()[f"check_{name}"]
    fn()
    gc.collect()
    errors = counter("ctx_errors")
    assert errors == 0, f"{errors} driver call(s) were made without a current context"
    print(f"check {name}: ok")


if __name__ == "__main__":
    main()
