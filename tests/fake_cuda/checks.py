"""Checks that run in a subprocess whose libcuda.so.1 is the fake driver (fake_libcuda.c); see test_cuda_fake.py.

``python checks.py NAME`` runs ``check_NAME()`` and exits 0 if it passed. Each check also verifies that kvtier never
called the driver without a current context (the fake counts such calls).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import kvtier
from kvtier.copy_engine import CopyEngine
from kvtier.device import DeviceArena, DeviceTierConfig, host_buffer, is_page_locked
from kvtier.errors import CapacityError, CudaError, CudaUnavailableError, InvalidArgumentError

LIB = ctypes.CDLL("libcuda.so.1")  # the copy kvtier loaded (same file, same handle)
LIB.fake_cuda_counter.restype = ctypes.c_longlong
LIB.fake_cuda_counter.argtypes = [ctypes.c_char_p]
LIB.fake_cuda_alloc.restype = ctypes.c_ulonglong
LIB.fake_cuda_alloc.argtypes = [ctypes.c_int, ctypes.c_size_t]
LIB.fake_cuda_pause.argtypes = [ctypes.c_int]


def counter(name: str) -> int:
    value = int(LIB.fake_cuda_counter(name.encode()))
    assert value >= 0, name
    return value


class FakeDeviceTensor:
    """A tensor in the fake driver's "device memory", exposing ``__cuda_array_interface__`` like a CUDA tensor.

    ``host`` is a numpy view of the same memory (the fake's device memory is host memory), to check contents.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any, device: int = 0) -> None:
        assert kvtier.cuda_available()  # kvtier loads the driver (cuInit) on first use
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dt.itemsize
        self.ptr = int(LIB.fake_cuda_alloc(device, nbytes))
        assert self.ptr, "fake_cuda_alloc failed"
        raw = (ctypes.c_char * nbytes).from_address(self.ptr)
        self.host = np.ndarray(shape, dtype=dt, buffer=raw)
        self.strides: tuple[int, ...] | None = None

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": self.host.shape,
            "typestr": self.host.dtype.str,
            "data": (self.ptr, False),
            "strides": self.strides,
            "version": 3,
        }


def per_layer_cache(rng: np.random.Generator, layers: int, blocks: int, device: int = 0) -> list[FakeDeviceTensor]:
    out = []
    for _ in range(layers):
        t = FakeDeviceTensor((2, blocks, 16, 2, 8), np.float16, device)
        t.host[...] = rng.standard_normal(t.host.shape).astype(np.float16)
        out.append(t)
    return out


def expected_payload(caches: list[FakeDeviceTensor], ids: np.ndarray) -> np.ndarray:
    return np.stack(
        [np.concatenate([c.host[k, b].reshape(-1).view(np.uint8) for c in caches for k in (0, 1)]) for b in ids]
    )


# ------------------------------------------------------------------------------------------------- checks
def check_probe() -> None:
    s = kvtier.cuda_available()
    assert s and s.reason == "", s
    assert s.library.endswith("libcuda.so.1") and os.path.isabs(s.library), s.library
    assert s.driver_version == int(os.environ.get("FAKE_CUDA_VERSION", "12080"))
    assert s.devices == tuple(f"kvtier fake CUDA device {i}" for i in range(int(os.environ.get("FAKE_CUDA_DEVICES", "1"))))
    expect_batch = "FAKE_CUDA_NO_BATCH" not in os.environ and s.driver_version >= 12080
    assert s.batched_memcpy is expect_batch, s
    assert "CUDA 12" in str(s)


def check_cuda_command() -> None:
    import contextlib
    import io
    import json

    from kvtier.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["cuda", "--json"]) == 0
    status = json.loads(buf.getvalue())
    assert status["available"] is True and status["reason"] == "" and len(status["devices"]) >= 1, status
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["cuda"]) == 0
    assert buf.getvalue().startswith("CUDA ") and "devices 0: " in buf.getvalue(), buf.getvalue()


def check_probe_reason() -> None:
    s = kvtier.cuda_available()
    assert not s
    print(s.reason)  # the test matches it
    try:
        DeviceTierConfig(capacity_bytes=1 << 20)
    except CudaUnavailableError as e:
        assert s.reason in str(e), e
    else:
        raise AssertionError("DeviceTierConfig accepted a machine without CUDA")


def _round_trip(batched: bool | None, expect_path: str) -> kvtier.copy_engine.CopyStats:
    rng = np.random.default_rng(1)
    src = per_layer_cache(rng, layers=3, blocks=24)
    dst = per_layer_cache(rng, layers=3, blocks=24)
    for t in dst:
        t.host[...] = 0
    src_layout = kvtier.KVLayout.from_tensors(src, block_dim=1, kv_dim=0)
    dst_layout = kvtier.KVLayout.from_tensors(dst, block_dim=1, kv_dim=0)
    assert src_layout.device == 0 and src_layout.on_device
    ids = np.array([5, 0, 23, 7, 8, 9], dtype=np.int64)
    staging = host_buffer(len(ids) * src_layout.payload_bytes).reshape(len(ids), -1)
    assert is_page_locked(staging)
    with CopyEngine(batched=batched) as engine:
        h = engine.gather(src_layout, ids, staging)
        assert h.path == expect_path, h.path
        assert h.wait(timeout=10.0)
        assert np.array_equal(staging, expected_payload(src, ids))
        h = engine.scatter(dst_layout, ids, staging)
        h.wait()
        for s_, d_ in zip(src, dst):
            assert np.array_equal(s_.host[:, ids].view(np.uint16), d_.host[:, ids].view(np.uint16))
            rest = np.setdiff1d(np.arange(24), ids)
            assert not d_.host[:, rest].view(np.uint16).any(), "a scatter wrote blocks it was not given"
        stats = engine.stats()
    assert stats.device_submits == 2
    return stats


def check_batched() -> None:
    before = counter("batch_calls")
    stats = _round_trip(None, "cuda-batched")
    assert stats.batch_calls == 2 and stats.copy_calls == 0 and stats.batch_fallbacks == 0, stats
    assert counter("batch_calls") - before == 2


def check_loop() -> None:
    before = counter("memcpy_calls")
    stats = _round_trip(False, "cuda-loop")
    assert stats.batch_calls == 0 and stats.copy_calls == stats.runs, stats
    assert counter("memcpy_calls") - before == stats.runs


def check_no_batch_driver() -> None:
    stats = _round_trip(None, "cuda-loop")  # FAKE_CUDA_NO_BATCH: the driver lacks cuMemcpyBatchAsync
    assert stats.batch_calls == 0 and stats.copy_calls == stats.runs
    try:
        _round_trip(True, "cuda-batched")
    except CudaUnavailableError as e:
        assert "cuMemcpyBatchAsync" in str(e) and "12.8" in str(e), e
    else:
        raise AssertionError("batched=True accepted a driver without cuMemcpyBatchAsync")


def check_batch_fallback() -> None:
    stats = _round_trip(None, "cuda-loop")  # FAKE_CUDA_BATCH_FAILS: the first batch fails, then the loop
    assert stats.batch_fallbacks == 1 and "CUDA_ERROR_NOT_SUPPORTED" in stats.last_batch_error, stats
    assert stats.batch_calls == 0 and stats.copy_calls == stats.runs


def check_async_poll_and_wait() -> None:
    rng = np.random.default_rng(2)
    src = per_layer_cache(rng, layers=2, blocks=8)
    layout = kvtier.KVLayout.from_tensors(src, block_dim=1, kv_dim=0)
    out = np.zeros((8, layout.payload_bytes), np.uint8)
    engine = CopyEngine()
    LIB.fake_cuda_pause(1)
    try:
        h = engine.gather(layout, np.arange(8), out)
        assert not h.poll() and not h.done
        assert h.wait(timeout=0.05) is False
        # Polled from another thread: the engine must make its context current there too.
        seen: list[bool] = []
        t = threading.Thread(target=lambda: seen.append(h.poll()))
        t.start()
        t.join()
        assert seen == [False]
    finally:
        LIB.fake_cuda_pause(0)
    assert h.wait() and h.poll()
    assert np.array_equal(out, expected_payload(src, np.arange(8)))
    # Dropping an unfinished handle waits for it: the buffer it writes is complete afterwards.
    out2 = np.zeros_like(out)
    LIB.fake_cuda_pause(1)
    h2 = engine.gather(layout, np.arange(8), out2)
    threading.Timer(0.05, LIB.fake_cuda_pause, args=(0,)).start()
    del h2
    gc.collect()
    assert np.array_equal(out2, out)
    del h
    engine.close()
    gc.collect()
    assert counter("events_live") == 0 and counter("streams_live") == 0


def check_device_error() -> None:
    rng = np.random.default_rng(3)
    src = per_layer_cache(rng, layers=1, blocks=4)
    layout = kvtier.KVLayout.from_tensors(src, block_dim=1, kv_dim=0)
    out = np.zeros((4, layout.payload_bytes), np.uint8)
    with CopyEngine() as engine:
        LIB.fake_cuda_fail_next_copy()
        h = engine.gather(layout, np.arange(4), out)
        for call in (h.wait, h.poll):
            try:
                call()
            except CudaError as e:
                assert "CUDA_ERROR_LAUNCH_FAILED" in str(e), e
            else:
                raise AssertionError("a failed device copy was reported as done")


def check_device_arena() -> None:
    allocations = counter("allocations")
    cfg = DeviceTierConfig(capacity_bytes=64 * 4096, device=0)
    rng = np.random.default_rng(4)
    src = per_layer_cache(rng, layers=2, blocks=16)
    layout = kvtier.KVLayout.from_tensors(src, block_dim=1, kv_dim=0)
    with DeviceArena(cfg, block_bytes=layout.payload_bytes) as arena, CopyEngine() as engine:
        assert counter("allocations") == allocations + 1 + 2  # the arena, and the two layers above
        assert arena.num_slots == 64 * 4096 // layout.payload_bytes and arena.free_slots == arena.num_slots
        slots = arena.take(5)
        assert arena.free_slots == arena.num_slots - 5 and len(set(slots.tolist())) == 5
        ids = np.array([1, 15, 3, 4, 2])
        # engine cache -> device tier (device to device)
        engine.gather(layout, ids, arena.slot_buffer(slots)).wait()
        # device tier -> host (demote), host -> device tier (promote) into other slots
        host = np.zeros((5, arena.block_bytes), np.uint8)
        h = engine.gather(arena.layout(), slots, host)
        assert h.path == "cuda-batched"
        h.wait()
        assert np.array_equal(host, expected_payload(src, ids))
        other = arena.take(5)
        engine.scatter(arena.layout(), other, host).wait()
        back = np.zeros_like(host)
        engine.gather(arena.layout(), other, back).wait()
        assert np.array_equal(back, host)
        arena.give_back(slots)
        for bad in ([slots[0]], [other[0], other[0]], [arena.num_slots]):
            try:
                arena.give_back(bad)
            except InvalidArgumentError:
                pass
            else:
                raise AssertionError(f"give_back accepted {bad}")
        assert arena.free_slots == arena.num_slots - 5
        try:
            arena.take(arena.num_slots)
        except CapacityError:
            pass
        else:
            raise AssertionError("take() handed out more slots than are free")
    assert arena.closed and counter("allocations") == allocations + 2
    try:
        DeviceTierConfig(capacity_bytes=1 << 20, device=3)
    except InvalidArgumentError as e:
        assert "device=3" in str(e) and "1 device" in str(e), e
    else:
        raise AssertionError("DeviceTierConfig accepted a device that does not exist")


def check_device_out_of_memory() -> None:
    cfg = DeviceTierConfig(capacity_bytes=1 << 30)  # FAKE_CUDA_MEMORY is smaller
    try:
        DeviceArena(cfg, block_bytes=1 << 20)
    except CapacityError as e:
        assert "out of memory" in str(e) and "kvtier fake CUDA device 0" in str(e), e
    else:
        raise AssertionError("an arena larger than the device was allocated")


def check_two_devices() -> None:
    rng = np.random.default_rng(5)
    on1 = per_layer_cache(rng, layers=1, blocks=4, device=1)
    layout = kvtier.KVLayout.from_tensors(on1, block_dim=1, kv_dim=0)
    on0 = FakeDeviceTensor((4, layout.payload_bytes), np.uint8, device=0)
    assert layout.device == 1
    with CopyEngine() as engine:
        try:
            engine.gather(layout, np.arange(4), on0)
        except InvalidArgumentError as e:
            assert "device 1" in str(e) and "device 0" in str(e), e
        else:
            raise AssertionError("a copy between two devices' memory was accepted")
        out = np.zeros((4, layout.payload_bytes), np.uint8)
        engine.gather(layout, np.arange(4), out).wait()
        assert np.array_equal(out, expected_payload(on1, np.arange(4)))
    try:
        kvtier.KVLayout.from_tensors([on1[0], per_layer_cache(rng, 1, 4, device=0)[0]], block_dim=1, kv_dim=0)
    except InvalidArgumentError as e:
        assert "CUDA device 0" in str(e) and "CUDA device 1" in str(e), e
    else:
        raise AssertionError("a layout over two devices was accepted")


def check_host_tier_page_locked() -> None:
    base = counter("registered_bytes")
    cfg = kvtier.StoreConfig(block_size=4, block_bytes=256, host=kvtier.TierConfig(capacity_bytes=64 * 256))
    store = kvtier.Store(cfg)
    assert counter("registered_bytes") - base >= 64 * 256  # the whole arena, whole pages
    tokens = np.arange(16, dtype=np.int32)
    payload = np.random.default_rng(6).integers(0, 256, (4, 256), dtype=np.uint8)
    store.insert(tokens, payload)
    out = np.zeros_like(payload)
    with store.pinned(tokens) as hit:
        store.load(hit, out)
    assert np.array_equal(out, payload)
    store.close()
    assert counter("registered_bytes") == base, "closing the store left its arena page-locked"
    buf = host_buffer(10_000)
    assert is_page_locked(buf) and buf.ctypes.data % 4096 == 0
    assert not is_page_locked(np.zeros(10_000, np.uint8))
    del buf
    gc.collect()
    assert counter("registered_bytes") == base


def check_fork() -> None:
    assert kvtier.cuda_available()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: CUDA state of the parent must not be used
        os.close(read)
        s = kvtier.cuda_available()
        ok = not s and "fork" in s.reason
        store = kvtier.Store(kvtier.StoreConfig(block_size=4, block_bytes=64, host=kvtier.TierConfig(capacity_bytes=4096)))
        store.close()  # a host tier still works, pageable
        os.write(write, (("ok " if ok else "bad ") + s.reason).encode())
        os._exit(0)
    os.close(write)
    msg = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    assert msg.startswith("ok "), msg


def main() -> None:
    name = sys.argv[1]
    fn: Callable[[], None] = globals()[f"check_{name}"]
    fn()
    gc.collect()
    time.sleep(0)
    errors = counter("ctx_errors")
    assert errors == 0, f"{errors} driver call(s) were made without a current context"
    print(f"check {name}: ok")


if __name__ == "__main__":
    main()
