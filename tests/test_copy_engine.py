"""The copy engine on the CPU: layouts read from tensors, planning and merging, bit-exact host round trips of the
three engine layouts, the worker pool under threads, and bad input. The CUDA paths run against a fake driver in
test_cuda_fake.py and against a GPU in test_cuda_gpu.py."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import kvtier
from kvtier import CopyEngine, KVLayout, KVRegion, TensorView
from kvtier.copy_engine import SlotBuffer, gather, plan, scatter
from kvtier.device import host_buffer, is_page_locked
from kvtier.errors import (
    CudaUnavailableError,
    InvalidArgumentError,
    KvtierTypeError,
    StoreClosedError,
)

LAYERS, BLOCKS, BS, HEADS, DIM = 3, 40, 4, 2, 8


@pytest.fixture(scope="module")
def engine() -> Any:
    with CopyEngine(threads=3, inline_bytes=0) as e:  # every host copy goes through the pool
        yield e


def _rand(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float16) -> np.ndarray:
    """Random bit patterns (NaNs included: comparisons are of bytes)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return rng.integers(0, 256, n, dtype=np.uint8).view(dtype).reshape(shape)


def _bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


# ------------------------------------------------------------------------------------------ the three layouts
def per_layer(rng: np.random.Generator) -> tuple[list[np.ndarray], dict[str, Any], Any]:
    """vLLM's GPU layout per layer: [2, num_blocks, block_size, heads, dim]."""
    caches = [_rand(rng, (2, BLOCKS, BS, HEADS, DIM)) for _ in range(LAYERS)]

    def payload(cs: list[np.ndarray], b: int) -> np.ndarray:
        return np.concatenate([_bytes(c[k, b]) for c in cs for k in (0, 1)])

    return caches, {"block_dim": 1, "kv_dim": 0}, payload


def block_major(rng: np.random.Generator) -> tuple[list[np.ndarray], dict[str, Any], Any]:
    """All layers of a block contiguous: one tensor [num_blocks, layers, 2, block_size, heads, dim]."""
    cache = _rand(rng, (BLOCKS, LAYERS, 2, BS, HEADS, DIM))

    def payload(cs: list[np.ndarray], b: int) -> np.ndarray:
        return _bytes(cs[0][b])

    return [cache], {"block_dim": 0}, payload


def vllm_cpu(rng: np.random.Generator) -> tuple[list[np.ndarray], dict[str, Any], Any]:
    """vLLM's CPU layout per layer: [num_blocks, kv_heads, block_size, 2 * head_size]."""
    caches = [_rand(rng, (BLOCKS, HEADS, BS, 2 * DIM)) for _ in range(LAYERS)]

    def payload(cs: list[np.ndarray], b: int) -> np.ndarray:
        return np.concatenate([_bytes(c[b]) for c in cs])

    return caches, {"block_dim": 0}, payload


LAYOUTS = [per_layer, block_major, vllm_cpu]


def _layout(caches: list[np.ndarray], kw: dict[str, Any]) -> KVLayout:
    return KVLayout.from_tensors(caches if len(caches) > 1 else caches[0], **kw)


@pytest.mark.parametrize("make", LAYOUTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("path", ["inline", "threads"])
def test_round_trip_bit_exact(make: Any, path: str, engine: CopyEngine) -> None:
    rng = np.random.default_rng(11)
    src, kw, payload = make(rng)
    layout = _layout(src, kw)
    assert layout.payload_bytes == sum(r.nbytes for r in layout.regions) == payload(src, 0).nbytes
    ids = rng.permutation(BLOCKS)[:17]
    ids[3:7] = np.arange(20, 24)  # a consecutive stretch, which merges in block-major layouts
    ids = np.unique(ids)[rng.permutation(len(np.unique(ids)))]
    eng = CopyEngine(threads=0) if path == "inline" else engine
    out = np.full((len(ids), layout.payload_bytes), 0xEE, np.uint8)
    h = eng.gather(layout, ids, out)
    assert h.wait() and h.done
    assert h.path == ("inline" if path == "inline" else "host-threads")
    expected = np.stack([payload(src, int(b)) for b in ids])
    assert np.array_equal(out, expected), "the gathered payload is not the documented concatenation of runs"

    dst = [np.zeros_like(c) for c in src]
    h = eng.scatter(_layout(dst, kw), ids, out)
    h.wait()
    blocks_of = (lambda c: c[:, ids]) if kw.get("kv_dim") == 0 else (lambda c: c[ids])
    others = np.setdiff1d(np.arange(BLOCKS), ids)
    rest_of = (lambda c: c[:, others]) if kw.get("kv_dim") == 0 else (lambda c: c[others])
    for s, d in zip(src, dst):
        assert np.array_equal(_bytes(blocks_of(s)), _bytes(blocks_of(d)))
        assert not _bytes(rest_of(d)).any(), "scatter wrote engine blocks it was not given"


@pytest.mark.parametrize("make", LAYOUTS, ids=lambda f: f.__name__)
def test_round_trip_through_the_host_tier(make: Any, engine: CopyEngine) -> None:
    """Engine -> kvtier buffer -> Store (host tier) -> buffer -> another engine cache, bit-exact."""
    rng = np.random.default_rng(12)
    src, kw, _ = make(rng)
    layout = _layout(src, kw)
    ids = np.array([7, 8, 9, 2, 39])
    staged = np.zeros((len(ids), layout.payload_bytes), np.uint8)
    engine.gather(layout, ids, staged).wait()
    cfg = kvtier.StoreConfig(block_size=4, block_bytes=layout.payload_bytes, host=kvtier.TierConfig(capacity_bytes=1 << 20))
    tokens = np.arange(4 * len(ids), dtype=np.int32)
    with kvtier.Store(cfg) as store:
        store.insert(tokens, staged)
        back = np.zeros_like(staged)
        with store.pinned(tokens) as hit:
            assert hit.num_blocks == len(ids)
            store.load(hit, back)
    dst = [np.zeros_like(c) for c in src]
    engine.scatter(_layout(dst, kw), ids, back).wait()
    again = np.zeros_like(staged)
    engine.gather(_layout(dst, kw), ids, again).wait()
    assert np.array_equal(again, staged)


# ------------------------------------------------------------------------------------------ planning and merging
def test_block_major_merges_consecutive_blocks() -> None:
    cache = np.zeros((16, 2, 64), np.uint8)  # 128 bytes per block, contiguous
    layout = KVLayout.from_tensors(cache, block_dim=0)
    assert len(layout.regions) == 1 and layout.payload_bytes == 128
    out = np.zeros((6, 128), np.uint8)
    p = plan(layout, [4, 5, 6, 9, 10, 0], out)
    base, dst = cache.ctypes.data, out.ctypes.data
    assert p.unmerged_runs == 6 and p.nbytes == 6 * 128
    assert p.runs.tolist() == [
        [dst, base + 4 * 128, 3 * 128],
        [dst + 3 * 128, base + 9 * 128, 2 * 128],
        [dst + 5 * 128, base, 128],
    ]
    whole = plan(layout, np.arange(16), np.zeros((16, 128), np.uint8))
    assert whole.runs.shape == (1, 3) and whole.runs[0, 2] == 16 * 128
    # Padding between kvtier blocks (block_bytes > payload) stops merging across blocks.
    padded = plan(layout, [4, 5, 6], np.zeros((3, 256), np.uint8), block_bytes=256)
    assert padded.runs[:, 2].tolist() == [128, 128, 128]
    assert padded.runs[:, 0].tolist() == [out_ := padded.runs[0, 0], out_ + 256, out_ + 512]
    # A scatter swaps source and destination.
    back = plan(layout, [4, 5, 6], out[:3], direction="scatter")
    assert back.runs.tolist() == [[base + 4 * 128, dst, 3 * 128]]


def test_split_kv_merges_within_a_block_when_adjacent() -> None:
    # FlashInfer-style [num_blocks, 2, block_size, heads, dim]: K then V of a block are adjacent, so a K/V split
    # (kv_dim=1) still gives one run per block per layer.
    layers = [np.zeros((8, 2, 4, 2, 8), np.float16) for _ in range(2)]
    layout = KVLayout.from_tensors(layers, block_dim=0, kv_dim=1)
    assert len(layout.regions) == 4
    p = plan(layout, [1, 2, 3], np.zeros((3, layout.payload_bytes), np.uint8))
    assert p.unmerged_runs == 12 and len(p.runs) == 6  # (K,V) merged per block and layer; layers apart
    # The per-layer [2, num_blocks, ...] layout has K and V far apart: nothing merges.
    per = [np.zeros((2, 8, 4, 2, 8), np.float16) for _ in range(2)]
    lp = KVLayout.from_tensors(per, block_dim=1, kv_dim=0)
    assert len(plan(lp, [1, 2, 3], np.zeros((3, lp.payload_bytes), np.uint8)).runs) == 12


def test_permuted_view_copies_physical_order(engine: CopyEngine) -> None:
    """A cache stored [2, num_blocks, heads, block_size, dim] but viewed as [2, num_blocks, block_size, heads, dim]
    (an HND layout behind an NHD view): strides are read, and the payload is the physical run."""
    rng = np.random.default_rng(13)
    phys = _rand(rng, (2, 10, HEADS, BS, DIM))
    view = phys.transpose(0, 1, 3, 2, 4)
    layout = KVLayout.from_tensors([view], block_dim=1, kv_dim=0)
    out = np.zeros((2, layout.payload_bytes), np.uint8)
    engine.gather(layout, [3, 6], out).wait()
    assert np.array_equal(out[1], np.concatenate([_bytes(phys[0, 6]), _bytes(phys[1, 6])]))


def test_randomised_layouts_match_numpy(engine: CopyEngine) -> None:
    """Seeded random shapes, block/kv dims, memory orders and ids: gather equals a numpy reference."""
    rng = np.random.default_rng(2026)
    for trial in range(80):
        nd = int(rng.integers(3, 6))
        shape = [int(s) for s in rng.integers(1, 5, nd)]
        bd = int(rng.integers(0, nd))
        shape[bd] = int(rng.integers(2, 12))
        kd = None
        if rng.random() < 0.5:
            kd = int(rng.choice([d for d in range(nd) if d != bd]))
            shape[kd] = 2
        order = list(rng.permutation(nd))  # physical order of the dims
        phys = _rand(rng, tuple(shape[d] for d in order), np.float32 if rng.random() < 0.5 else np.float16)
        view = phys.transpose(np.argsort(order))
        inner = [d for d in range(nd) if d not in (bd, kd) and shape[d] > 1]
        nontrivial = [d for d in order if shape[d] > 1]  # physical order, size-1 dims dropped
        contiguous = set(nontrivial[len(nontrivial) - len(inner) :]) == set(inner)  # inner dims innermost
        if not contiguous:
            with pytest.raises(KvtierTypeError, match="contiguous run"):
                KVLayout.from_tensors(view, block_dim=bd, kv_dim=kd)
            continue
        layout = KVLayout.from_tensors([view], block_dim=bd, kv_dim=kd)
        ids = rng.integers(0, shape[bd], int(rng.integers(1, 8)))
        out = np.zeros((len(ids), layout.payload_bytes), np.uint8)
        engine.gather(layout, ids, out).wait()

        def run(b: int, k: int | None) -> np.ndarray:
            idx: list[Any] = [slice(None)] * nd
            idx[bd] = b
            if k is not None:
                idx[kd] = k  # type: ignore[index]
            sub = view[tuple(idx)]
            # Memory order of the run: sort the remaining dims by stride, largest first.
            dims = sorted(range(sub.ndim), key=lambda d: -sub.strides[d])
            return _bytes(sub.transpose(dims))

        ref = np.stack([np.concatenate([run(int(b), k) for k in ([None] if kd is None else [0, 1])]) for b in ids])
        assert np.array_equal(out, ref), f"trial {trial}: shape {shape} order {order} bd {bd} kd {kd}"


# ------------------------------------------------------------------------------------------ tensor interfaces
class DLPackOnly:
    """A tensor that exposes only DLPack (as a PyTorch CPU tensor does)."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __dlpack__(self, **kw: Any) -> Any:
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._a.__dlpack_device__()  # type: ignore[return-value]


def test_interfaces_give_the_same_layout(engine: CopyEngine) -> None:
    rng = np.random.default_rng(14)
    caches = [_rand(rng, (2, 8, BS, HEADS, DIM)) for _ in range(2)]
    ref = KVLayout.from_tensors(caches, block_dim=1, kv_dim=0)
    views = [
        TensorView(c.ctypes.data, c.shape, c.strides, c.itemsize, c.dtype.str, owner=c) for c in caches
    ]
    for tensors in ([DLPackOnly(c) for c in caches], views, [memoryview(c) for c in caches]):
        lay = KVLayout.from_tensors(tensors, block_dim=1, kv_dim=0)
        assert [(r.base, r.stride, r.nbytes) for r in lay.regions] == [(r.base, r.stride, r.nbytes) for r in ref.regions]
        assert lay.dtype == "<f2" and lay.signature == ref.signature == "4x128B <f2"
    out = bytearray(3 * ref.payload_bytes)  # a plain bytearray as the kvtier buffer
    engine.gather(KVLayout.from_tensors([DLPackOnly(c) for c in caches], block_dim=1, kv_dim=0), [1, 5, 7], out).wait()
    expect = np.zeros((3, ref.payload_bytes), np.uint8)
    engine.gather(ref, [1, 5, 7], expect).wait()
    assert bytes(out) == expect.tobytes()


def test_a_buffer_in_flight_cannot_be_resized() -> None:
    layout = KVLayout.from_tensors(np.zeros((8, 64), np.uint8), block_dim=0)
    out = bytearray(4 * 64)
    with CopyEngine(threads=1) as e:
        h = e.gather(layout, [0, 1, 2, 3], out)
        with pytest.raises(BufferError):
            out.extend(b"x")  # the handle holds the buffer's export until it is dropped
        h.wait()
        del h
    out.extend(b"x")


def test_layout_keeps_its_tensors_alive(engine: CopyEngine) -> None:
    layout = KVLayout.from_tensors(np.arange(64 * 32, dtype=np.uint8).reshape(64, 32), block_dim=0)
    out = np.zeros((2, 32), np.uint8)
    engine.gather(layout, [1, 63], out).wait()  # the array was created inline and is owned by the layout
    assert out[1].tolist() == list(range(63 * 32 % 256, 63 * 32 % 256 + 32))


# ------------------------------------------------------------------------------------------ threads
def test_concurrent_gathers_from_many_threads(engine: CopyEngine) -> None:
    rng = np.random.default_rng(15)
    cache = _rand(rng, (256, 2, 8, 4, 32))  # 4 KiB per block
    layout = KVLayout.from_tensors(cache, block_dim=0)
    errors: list[str] = []

    def worker(seed: int) -> None:
        r = np.random.default_rng(seed)
        for _ in range(20):
            ids = r.integers(0, 256, 96)
            out = np.empty((96, layout.payload_bytes), np.uint8)
            engine.gather(layout, ids, out).wait()
            if not np.array_equal(out, cache[ids].reshape(96, -1).view(np.uint8)):
                errors.append(f"seed {seed}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    st = engine.stats()
    assert st.host_submits >= 120 and st.bytes >= 120 * 96 * layout.payload_bytes


def test_handles_poll_wait_and_drop(engine: CopyEngine) -> None:
    cache = np.arange(512 * 8192, dtype=np.uint8).reshape(512, 8192)  # 4 MiB
    layout = KVLayout.from_tensors(cache, block_dim=0)
    ids = np.arange(511, -1, -1)
    out = np.zeros_like(cache)
    h = engine.gather(layout, ids, out)
    assert h.runs == 512 and h.unmerged_runs == 512 and h.nbytes == cache.nbytes
    assert h.wait(timeout=30.0) is True and h.poll() is True
    assert np.array_equal(out, cache[::-1])
    with pytest.raises(InvalidArgumentError, match="timeout"):
        h.wait(timeout=-1.0)
    # Dropping a handle before it finishes waits for it; the destination is complete afterwards.
    out2 = np.zeros_like(cache)
    engine.gather(layout, ids, out2)
    assert np.array_equal(out2, out)
    with engine.gather(layout, ids[:5], out[:5]) as h2:
        pass
    assert h2.done


def test_default_engine_functions() -> None:
    cache = np.arange(10 * 16, dtype=np.uint8).reshape(10, 16)
    layout = KVLayout.from_tensors(cache, block_dim=0)
    out = np.zeros((3, 16), np.uint8)
    gather(layout, [9, 0, 4], out).wait()
    assert np.array_equal(out, cache[[9, 0, 4]])
    dst = np.zeros_like(cache)
    scatter(KVLayout.from_tensors(dst, block_dim=0), [1, 2, 3], out).wait()
    assert np.array_equal(dst[1:4], out) and not dst[[0, 4, 5, 6, 7, 8, 9]].any()
    assert kvtier.copy_engine.default_engine() is kvtier.copy_engine.default_engine()


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def small() -> tuple[KVLayout, np.ndarray]:
    cache = np.zeros((2, 8, 4, 2, 8), np.float16)
    return KVLayout.from_tensors([cache], block_dim=1, kv_dim=0), cache


@pytest.mark.parametrize(
    ("ids", "exc", "match"),
    [
        ([0, 8], InvalidArgumentError, r"block_ids\[1\] = 8 is out of range: the layout has 8 blocks"),
        ([1, -2], InvalidArgumentError, r"block_ids\[1\] = -2 is negative"),
        ([1.0, 2.0], KvtierTypeError, "block_ids must be integers"),
        ([[1, 2]], KvtierTypeError, "block_ids must be 1-D"),
        (["a"], KvtierTypeError, "block_ids must be integers"),
    ],
)
def test_bad_block_ids(small: Any, ids: Any, exc: type[Exception], match: str, engine: CopyEngine) -> None:
    layout, _ = small
    with pytest.raises(exc, match=match):
        engine.gather(layout, ids, np.zeros((4, layout.payload_bytes), np.uint8))


def test_bad_buffers(small: Any, engine: CopyEngine) -> None:
    layout, _ = small
    pb = layout.payload_bytes
    assert pb == 256
    with pytest.raises(InvalidArgumentError, match=r"out has 256 bytes; 2 blocks x block_bytes=256 need 512"):
        engine.gather(layout, [0, 1], np.zeros(pb, np.uint8))
    ro = np.zeros((2, pb), np.uint8)
    ro.flags.writeable = False
    with pytest.raises(KvtierTypeError, match="out is read-only"):
        engine.gather(layout, [0, 1], ro)
    engine.scatter(layout, [0, 1], ro).wait()  # a read-only source is fine
    with pytest.raises(KvtierTypeError, match="C-contiguous"):
        engine.gather(layout, [0, 1], np.zeros((pb, 2), np.uint8).T)
    with pytest.raises(KvtierTypeError, match="out has dtype <f4 but the layout holds <f2"):
        engine.gather(layout, [0, 1], np.zeros((2, pb // 4), np.float32))
    engine.gather(layout, [0, 1], np.zeros((2, pb // 2), np.float16)).wait()  # the layout's dtype is fine
    with pytest.raises(InvalidArgumentError, match="rows of 128 bytes but blocks are block_bytes=256 apart"):
        engine.gather(layout, [0, 1], np.zeros((4, pb // 2), np.uint8))
    with pytest.raises(InvalidArgumentError, match="block_bytes=100 is smaller than the layout's payload of 256"):
        engine.gather(layout, [0, 1], np.zeros(4096, np.uint8), block_bytes=100)
    with pytest.raises(KvtierTypeError, match="out must be a tensor"):
        engine.gather(layout, [0, 1], [0] * 4096)
    with pytest.raises(KvtierTypeError, match="dtype object"):
        engine.gather(layout, [0], np.zeros(pb, dtype=object))
    with pytest.raises(InvalidArgumentError, match="out has 3 slots for 2 block ids"):
        engine.gather(layout, [0, 1], SlotBuffer(np.zeros(3, np.uint64), -1, pb))


def test_bad_scatter(small: Any, engine: CopyEngine) -> None:
    layout, cache = small
    src = np.zeros((3, layout.payload_bytes), np.uint8)
    with pytest.raises(InvalidArgumentError, match=r"block_ids\[2\] = 5 appears twice"):
        engine.scatter(layout, [5, 1, 5], src)
    engine.gather(layout, [5, 1, 5], src).wait()  # repeats are fine when reading
    cache.flags.writeable = False
    try:
        ro = KVLayout.from_tensors([cache], block_dim=1, kv_dim=0)
        assert ro.readonly
        with pytest.raises(KvtierTypeError, match="read-only"):
            engine.scatter(ro, [0], src[:1])
    finally:
        cache.flags.writeable = True


def test_bad_layouts() -> None:
    rng = np.random.default_rng(16)
    a = _rand(rng, (2, 8, 4, 2, 8))
    with pytest.raises(KvtierTypeError, match=r"tensors\[1\] has dtype <f4 but tensors\[0\] has <f2"):
        KVLayout.from_tensors([a, np.zeros((2, 8, 4, 2, 8), np.float32)], block_dim=1, kv_dim=0)
    with pytest.raises(InvalidArgumentError, match=r"tensors\[1\] has 9 blocks along block_dim=1, but tensors\[0\] has 8"):
        KVLayout.from_tensors([a, _rand(rng, (2, 9, 4, 2, 8))], block_dim=1, kv_dim=0)
    with pytest.raises(InvalidArgumentError, match="but num_blocks 7"):
        KVLayout.from_tensors([a], block_dim=1, kv_dim=0, num_blocks=7)
    with pytest.raises(InvalidArgumentError, match=r"tensors\[0\]\[kv=0\] and tensors\[1\]\[kv=0\] overlap"):
        KVLayout.from_tensors([a, a], block_dim=1, kv_dim=0)
    with pytest.raises(KvtierTypeError, match="not one contiguous run per block"):
        KVLayout.from_tensors([a[:, :, :, :, :4]], block_dim=1, kv_dim=0)
    with pytest.raises(KvtierTypeError, match="split it with kv_dim="):
        KVLayout.from_tensors([a], block_dim=1)  # K and V of a block are not adjacent
    with pytest.raises(InvalidArgumentError, match="kv_dim and block_dim are the same dimension"):
        KVLayout.from_tensors([a], block_dim=1, kv_dim=-4)
    with pytest.raises(InvalidArgumentError, match="block_dim=5 is out of range"):
        KVLayout.from_tensors([a], block_dim=5)
    with pytest.raises(KvtierTypeError, match="negative strides"):
        KVLayout.from_tensors([a[:, ::-1]], block_dim=1, kv_dim=0)
    with pytest.raises(InvalidArgumentError, match="is empty"):
        KVLayout.from_tensors([a[:, :, :0]], block_dim=1, kv_dim=0)
    with pytest.raises(InvalidArgumentError, match="tensors is empty"):
        KVLayout.from_tensors([], block_dim=0)
    with pytest.raises(KvtierTypeError, match=r"tensors\[0\] must be a tensor"):
        KVLayout.from_tensors([[1, 2, 3]], block_dim=0)
    with pytest.raises(InvalidArgumentError, match="shorter than its run"):
        KVLayout([KVRegion(4096, 10, 64)], 4)
    with pytest.raises(InvalidArgumentError, match="at least one region"):
        KVLayout([], 4)
    # Interleaved regions with a common stride are fine; with different strides they are refused.
    KVLayout([KVRegion(4096, 128, 64, "k"), KVRegion(4096 + 64, 128, 64, "v")], 4)
    with pytest.raises(InvalidArgumentError, match="k and v overlap"):
        KVLayout([KVRegion(4096, 128, 64, "k"), KVRegion(4096 + 32, 128, 64, "v")], 4)
    with pytest.raises(InvalidArgumentError, match="different block strides"):
        KVLayout([KVRegion(4096, 128, 64, "k"), KVRegion(4096 + 64, 192, 64, "v")], 4)


def test_closed_engine(small: Any) -> None:
    layout, _ = small
    e = CopyEngine(threads=1)
    e.close()
    e.close()
    assert e.closed
    with pytest.raises(StoreClosedError, match="copy engine is closed"):
        e.gather(layout, [0], np.zeros(layout.payload_bytes, np.uint8))
    with pytest.raises(InvalidArgumentError, match="threads must be >= 0"):
        CopyEngine(threads=-1)
    with pytest.raises(KvtierTypeError, match="batched must be None, True or False"):
        CopyEngine(batched="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ without CUDA
no_cuda = pytest.mark.skipif(bool(kvtier.cuda_available()), reason="this machine has CUDA")


@no_cuda
def test_cuda_unavailable_says_why() -> None:
    s = kvtier.cuda_available()
    assert not s and s.available is False and s.devices == () and not s.batched_memcpy
    assert "libcuda.so.1 not found" in s.reason and str(s).startswith("CUDA unavailable: ")


@no_cuda
def test_cuda_command_says_why_not(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from kvtier.cli import main

    assert main(["cuda"]) == 1
    assert capsys.readouterr().out.startswith("CUDA unavailable: libcuda.so.1 not found")
    assert main(["cuda", "--json"]) == 1
    status = json.loads(capsys.readouterr().out)
    assert status["available"] is False and "libcuda.so.1" in status["reason"] and status["devices"] == []


@no_cuda
def test_device_tier_without_cuda_names_what_is_missing() -> None:
    with pytest.raises(CudaUnavailableError, match="a device tier needs CUDA.*libcuda.so.1 not found"):
        kvtier.DeviceTierConfig(capacity_bytes=1 << 30)
    with pytest.raises(InvalidArgumentError, match="finite capacity_bytes"):
        kvtier.DeviceTierConfig(capacity_bytes=None)
    with pytest.raises(CudaUnavailableError, match="libcuda.so.1 not found"):
        kvtier._core.DeviceArena(device=0, slots=4, block_bytes=64)


@no_cuda
def test_store_device_tier_and_gpu_payloads_without_cuda() -> None:
    with pytest.raises(KvtierTypeError, match="device must be a DeviceTierConfig"):
        kvtier.StoreConfig(device="cuda:0")  # type: ignore[arg-type]
    with pytest.raises(CudaUnavailableError, match="libcuda.so.1 not found"):  # the core checks too
        spec = kvtier.StoreConfig(block_size=4, block_bytes=64, host=kvtier.TierConfig(capacity_bytes=1 << 16)).spec()
        spec.device.enabled = True  # a raw spec: DeviceTierConfig itself refuses to exist without CUDA
        spec.device.capacity_bytes = 1 << 12
        kvtier._core.Store(spec, ids=False, limit=1 << 31)
    with kvtier.Store(kvtier.StoreConfig(block_size=4, block_bytes=64)) as store:
        payload = np.zeros((2, 64), np.uint8)
        on_gpu = TensorView(payload.ctypes.data, payload.shape, payload.strides, 1, "|u1", device=0, owner=payload)
        with pytest.raises(CudaUnavailableError):
            store.insert(np.arange(8), on_gpu, now=1.0)
        store.insert(np.arange(8), payload, now=2.0)
        with pytest.raises(CudaUnavailableError):
            store.load(np.arange(8), on_gpu, now=3.0)
        # Nothing was half-stored by the failed insert; the host copy works.
        store.check_invariants()
        assert store.stats().blocks == 2 and store.stats().device is None


@no_cuda
def test_device_copies_without_cuda_raise(small: Any, engine: CopyEngine) -> None:
    layout, cache = small
    view = TensorView(cache.ctypes.data, cache.shape, cache.strides, 2, "<f2", device=0, owner=cache)
    dev = KVLayout.from_tensors([view], block_dim=1, kv_dim=0)
    assert dev.on_device and dev.device == 0
    with pytest.raises(CudaUnavailableError, match="CUDA is not available: libcuda.so.1 not found"):
        engine.gather(dev, [0], np.zeros(layout.payload_bytes, np.uint8))

    class CudaTensor:
        __cuda_array_interface__ = {"shape": (4, 4), "typestr": "<f2", "data": (1 << 40, False), "version": 3}

    with pytest.raises(CudaUnavailableError, match=r"tensors\[0\] is CUDA memory"):
        KVLayout.from_tensors([CudaTensor()], block_dim=0)


def test_host_buffer() -> None:
    b = host_buffer(3 * 4096 + 5)
    assert b.dtype == np.uint8 and b.shape == (3 * 4096 + 5,) and b.flags.writeable
    assert b.ctypes.data % 4096 == 0
    b[:] = 7
    assert int(b.sum()) == 7 * b.size
    assert is_page_locked(b) is bool(kvtier.cuda_available())
    with pytest.raises(InvalidArgumentError):
        host_buffer(0)
