"""The CUDA paths on a real GPU (marker ``gpu``; skipped with the reason where CUDA is not usable).

Round trips an engine's paged cache GPU -> host -> disk tier (LMDB, a store reopened) -> host -> GPU, bit-exact,
for the per-layer ``[2, num_blocks, block_size, heads, dim]`` layout (float16 through ``__cuda_array_interface__``,
bfloat16 through DLPack) and the "all layers of a block contiguous" layout, on the batched and the loop paths; the
same through the store's device tier (GPU -> device tier -> host -> disk -> GPU); the device arena; page-locked
host memory; sharing the primary context with PyTorch.

Run on a GPU machine: ``python -m pytest -m gpu tests/test_cuda_gpu.py bench/test_gpu_copy.py -p no:cacheprovider``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kvtier
from kvtier import CopyEngine, KVLayout
from kvtier.device import DeviceArena, DeviceTierConfig, host_buffer, is_page_locked

_STATUS = kvtier.cuda_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _STATUS, reason=f"needs a usable CUDA driver and GPU: {_STATUS.reason}"),
]


@pytest.fixture(scope="module")
def torch() -> Any:
    t = pytest.importorskip("torch")
    if not t.cuda.is_available():
        pytest.skip("PyTorch is installed without CUDA")
    t.cuda.init()
    return t


def test_probe() -> None:
    s = kvtier.cuda_available()
    assert s.devices and s.library and s.driver_version >= 11000
    assert s.batched_memcpy == (s.driver_version >= 12080)
    print(s)


def test_host_memory_is_page_locked(torch: Any) -> None:
    assert is_page_locked(host_buffer(1 << 20))
    assert not is_page_locked(np.zeros(1 << 20, np.uint8))
    assert is_page_locked(torch.empty(1 << 20, dtype=torch.uint8, pin_memory=True))  # read through DLPack


LAYOUTS = {
    # name: (shape per tensor, tensors, block_dim, kv_dim)
    "per_layer": ((2, 64, 16, 8, 128), 4, 1, 0),
    "block_major": ((64, 4, 2, 16, 8, 128), 1, 0, None),
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("batched", [None, False], ids=["auto", "loop"])
def test_round_trip_gpu_host_disk_host_gpu(torch: Any, tmp_path: Path, name: str, dtype: str, batched: bool | None) -> None:
    shape, count, block_dim, kv_dim = LAYOUTS[name]
    g = torch.Generator(device="cuda").manual_seed(7)
    dt = getattr(torch, dtype)
    src = [torch.randn(shape, device="cuda", generator=g).to(dt) for _ in range(count)]
    dst = [torch.zeros_like(t) for t in src]
    src_layout = KVLayout.from_tensors(src, block_dim=block_dim, kv_dim=kv_dim)
    dst_layout = KVLayout.from_tensors(dst, block_dim=block_dim, kv_dim=kv_dim)
    assert src_layout.on_device and src_layout.device == torch.cuda.current_device()
    ids = np.array([5, 6, 7, 63, 0, 31, 30, 12])
    pb = src_layout.payload_bytes
    torch.cuda.synchronize()
    with CopyEngine(batched=batched) as engine:
        staging = host_buffer(len(ids) * pb).reshape(len(ids), pb)
        h = engine.gather(src_layout, ids, staging)
        assert h.wait(timeout=60.0) and h.poll()
        expect_path = "cuda-batched" if batched is None and _STATUS.batched_memcpy else "cuda-loop"
        assert h.path == expect_path
        # host tier (its arena is page-locked here) -> disk tier -> a reopened store -> host
        disk = kvtier.DiskConfig(path=tmp_path / "kv", capacity_bytes=64 * pb)
        cfg = kvtier.StoreConfig(
            block_size=16, block_bytes=pb, host=kvtier.TierConfig(capacity_bytes=64 * pb), disk=disk
        )
        tokens = np.arange(16 * len(ids), dtype=np.int32)
        with kvtier.Store(cfg) as store:
            store.insert(tokens, staging)
            store.flush(host=True)
        back = host_buffer(len(ids) * pb).reshape(len(ids), pb)
        with kvtier.Store(cfg) as store:
            with store.pinned(tokens) as hit:
                assert hit.disk_blocks == len(ids)
                assert store.load(hit, back) == len(ids)
        engine.scatter(dst_layout, ids, back).wait()
        stats = engine.stats()
    idx = torch.as_tensor(ids, device="cuda")
    for s, d in zip(src, dst):
        sel = (lambda t: t.index_select(block_dim, idx))
        assert torch.equal(sel(s).view(torch.int16), sel(d).view(torch.int16)), "GPU round trip is not bit-exact"
        others = torch.as_tensor(np.setdiff1d(np.arange(shape[block_dim]), ids), device="cuda")
        assert not d.index_select(block_dim, others).view(torch.int16).any()
    if expect_path == "cuda-batched":
        assert stats.batch_calls == 2 and stats.batch_fallbacks == 0 and stats.last_batch_error == "", stats
    else:
        assert stats.copy_calls == stats.runs


@pytest.mark.parametrize(
    ("disk_write_through", "device_write_through"),
    [(False, False), (True, False), (False, True)],
    ids=["write-back", "disk-write-through", "device-write-through"],
)
def test_store_device_tier_round_trip(
    torch: Any, tmp_path: Path, disk_write_through: bool, device_write_through: bool
) -> None:
    """Engine cache -> a contiguous CUDA tensor -> the store's device tier (GPU to GPU) -> written back to the host
    when evicted -> disk -> a reopened store -> loaded straight into a CUDA tensor -> the engine cache."""
    shape, count, block_dim, kv_dim = LAYOUTS["per_layer"]
    g = torch.Generator(device="cuda").manual_seed(11)
    src = [torch.randn(shape, device="cuda", generator=g).half() for _ in range(count)]
    dst = [torch.zeros_like(t) for t in src]
    src_layout = KVLayout.from_tensors(src, block_dim=block_dim, kv_dim=kv_dim)
    dst_layout = KVLayout.from_tensors(dst, block_dim=block_dim, kv_dim=kv_dim)
    pb = src_layout.payload_bytes
    ids = np.array([9, 10, 11, 12, 40, 2])
    dev = torch.cuda.current_device()
    disk = kvtier.DiskConfig(path=tmp_path / "kv", capacity_bytes=64 * pb, write_through=disk_write_through)
    cfg = kvtier.StoreConfig(
        block_size=16,
        block_bytes=pb,
        host=kvtier.TierConfig(capacity_bytes=16 * pb),
        disk=disk,
        device=DeviceTierConfig(capacity_bytes=8 * pb, device=dev, write_through=device_write_through),
    )
    tokens = np.arange(16 * len(ids), dtype=np.int32)
    # kvtier copies on its own stream: the tensors it reads and writes must be final (torch's stream is idle).
    staged = torch.empty((len(ids), pb), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    with CopyEngine() as engine:
        engine.gather(src_layout, ids, staged).wait()
        with kvtier.Store(cfg) as store:
            store.insert(tokens, staged)
            d = store.stats().device
            assert d is not None and d.inserted == len(ids) and d.blocks == len(ids)
            # Dirty until written back; a write-through disk makes the device write them back at insert.
            assert d.dirty_blocks == (0 if disk_write_through or device_write_through else len(ids))
            out = torch.empty_like(staged)
            assert store.load(tokens, out) == len(ids)  # device tier -> GPU
            assert store.stats().device.hits == len(ids)
            assert torch.equal(out, staged)
            store.evict(1 << 40, tier=kvtier.Tier.DEVICE)  # demotion: dirty blocks written back
            d = store.stats().device
            assert d.written_back == (0 if device_write_through else len(ids)) and d.blocks == 0
            store.check_invariants()
        with kvtier.Store(cfg) as store:  # close() persisted the host tier; reopen from the folder
            out = torch.empty_like(staged)
            with store.pinned(tokens) as hit:
                assert hit.disk_blocks == len(ids)
                assert store.load(hit, out) == len(ids)  # disk -> pinned staging -> GPU
            assert torch.equal(out, staged)
            engine.scatter(dst_layout, ids, out).wait()
    torch.cuda.synchronize()
    idx = torch.as_tensor(ids, device="cuda")
    for s_, d_ in zip(src, dst):
        assert torch.equal(s_.index_select(block_dim, idx).view(torch.int16), d_.index_select(block_dim, idx).view(torch.int16))


def test_pageable_host_buffers_work(torch: Any) -> None:
    src = torch.arange(32 * 4096, dtype=torch.int32, device="cuda").view(32, 4096)
    layout = KVLayout.from_tensors(src, block_dim=0)
    out = np.zeros((4, layout.payload_bytes), np.uint8)  # pageable numpy memory
    with CopyEngine() as engine:
        engine.gather(layout, [31, 0, 9, 10], out).wait()
    assert np.array_equal(out.view(np.int32), src[[31, 0, 9, 10]].cpu().numpy())


def test_device_arena_shares_pytorch_context(torch: Any) -> None:
    block = 1 << 20
    free0, _ = torch.cuda.mem_get_info()
    cfg = DeviceTierConfig(capacity_bytes=256 * block, device=torch.cuda.current_device())
    src = torch.randn((2, 32, 16, 8, 128), device="cuda").half()
    layout = KVLayout.from_tensors([src], block_dim=1, kv_dim=0)
    with DeviceArena(cfg, block_bytes=max(block, layout.payload_bytes)) as arena, CopyEngine() as engine:
        free1, _ = torch.cuda.mem_get_info()
        assert free0 - free1 >= 256 * block, "the arena is not in the device memory PyTorch sees"
        slots = arena.take(6)
        ids = np.array([3, 4, 5, 30, 31, 0])
        engine.gather(layout, ids, arena.slot_buffer(slots)).wait()  # device -> device tier
        host = np.zeros((6, arena.block_bytes), np.uint8)
        engine.gather(arena.layout(), slots, host).wait()  # demote
        other = arena.take(6)
        engine.scatter(arena.layout(), other, host).wait()  # promote
        out = torch.zeros_like(src)
        engine.scatter(KVLayout.from_tensors([out], block_dim=1, kv_dim=0), ids, arena.slot_buffer(other)).wait()
        torch.cuda.synchronize()
        idx = torch.as_tensor(ids, device="cuda")
        assert torch.equal(out.index_select(1, idx).view(torch.int16), src.index_select(1, idx).view(torch.int16))
        y = src.float().sum()  # PyTorch still works on its context after kvtier's calls
        torch.cuda.synchronize()
        assert torch.isfinite(y)
    free2, _ = torch.cuda.mem_get_info()
    assert free2 - free1 >= 256 * block - (64 << 20), "close() did not free the arena"


def test_arena_round_trip_without_torch() -> None:
    cfg = DeviceTierConfig(capacity_bytes=64 << 16, device=0)
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (8, 1 << 16), dtype=np.uint8)
    with DeviceArena(cfg, block_bytes=1 << 16) as arena, CopyEngine() as engine:
        slots = arena.take(8)
        engine.scatter(arena.layout(), slots, data).wait()
        back = host_buffer(data.nbytes).reshape(data.shape)
        h = engine.gather(arena.layout(), slots[::-1], back)
        h.wait()
        assert np.array_equal(back, data[::-1])
