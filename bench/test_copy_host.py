"""Host <-> host gather of scattered KV runs: kvtier's copy engine against numpy, in the same process.

Workload: vLLM's per-layer layout ``[2, num_blocks, block_size, heads, dim]`` float16, 8 layers, 256 blocks of
16 tokens x 8 heads x 64 dims, so every K or V run is 16 KiB; a gather of 128 random blocks into a kvtier buffer is
2,048 runs, 32 MiB. Each kvtier block holds its 16 runs back to back (the payload layout of kvtier.kv_layout).

Baselines, interleaved with kvtier in every round: numpy fancy indexing per region (``out[:, r] = region[ids]``,
the obvious numpy code) and ``numpy.take(..., out=...)`` per region (numpy's one-copy path; diagnostic).

Gate: kvtier's gather (default engine: worker threads, GIL released) >= 1.0x the fancy-index baseline (ratio of
medians). Absolute times are reported, never asserted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from harness import gate, interleaved

from kvtier import CopyEngine, KVLayout

LAYERS, BLOCKS, GATHERED = 8, 256, 128
BLOCK_SIZE, HEADS, DIM = 16, 8, 64
MIN_RATIO_TO_FANCY_INDEX = 1.0


def test_gather_scattered_runs_vs_numpy(benchmark: Any, report: Any) -> None:
    rng = np.random.default_rng(7)
    shape = (2, BLOCKS, BLOCK_SIZE, HEADS, DIM)
    caches = [rng.integers(0, 256, int(np.prod(shape)) * 2, dtype=np.uint8).view(np.float16).reshape(shape) for _ in range(LAYERS)]
    layout = KVLayout.from_tensors(caches, block_dim=1, kv_dim=0)
    ids = rng.permutation(BLOCKS)[:GATHERED]
    out = np.zeros((GATHERED, layout.payload_bytes), np.uint8)
    regions = [c[k].reshape(BLOCKS, -1).view(np.uint8) for c in caches for k in (0, 1)]
    run = regions[0].shape[1]
    out3 = out.reshape(GATHERED, len(regions), run)
    expected = np.stack([np.concatenate([r[b] for r in regions]) for b in ids])

    def numpy_fancy() -> None:
        for r, region in enumerate(regions):
            out3[:, r, :] = region[ids]

    def numpy_take() -> None:
        for r, region in enumerate(regions):
            np.take(region, ids, axis=0, out=out3[:, r, :], mode="wrap")

    with CopyEngine() as engine:

        def kvtier_gather() -> None:
            engine.gather(layout, ids, out).wait()

        for fn in (kvtier_gather, numpy_fancy, numpy_take):
            out[:] = 0
            fn()
            assert np.array_equal(out, expected), fn.__name__
        t = interleaved(
            {"kvtier": kvtier_gather, "numpy_fancy": numpy_fancy, "numpy_take": numpy_take}, rounds=30
        )
        benchmark.pedantic(kvtier_gather, rounds=20, warmup_rounds=2)
        stats = engine.stats()
        threads = engine.threads

    assert stats.host_submits + stats.inline_submits >= 50 and stats.runs >= 50 * GATHERED * len(regions)
    kv, fancy, take = t["kvtier"].median, t["numpy_fancy"].median, t["numpy_take"].median
    ratio = fancy / kv
    report(
        benchmark,
        **{
            "runs per gather (16 KiB each)": GATHERED * len(regions),
            "bytes per gather": out.nbytes,
            "kvtier threads": threads,
            "kvtier gather median ms": kv * 1e3,
            "numpy fancy-index median ms": fancy * 1e3,
            "numpy.take median ms": take * 1e3,
            "kvtier GB/s": out.nbytes / kv / 1e9,
            "numpy fancy-index GB/s": out.nbytes / fancy / 1e9,
            "ratio fancy-index / kvtier time": ratio,
            "diag: ratio numpy.take / kvtier time": take / kv,
            **gate("kvtier vs numpy fancy-index", ratio, MIN_RATIO_TO_FANCY_INDEX),
        },
    )
    assert ratio >= MIN_RATIO_TO_FANCY_INDEX, f"kvtier gather is {ratio:.2f}x numpy fancy indexing"
