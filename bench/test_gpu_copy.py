"""Issue 7's GPU bandwidth gates (marker ``gpu``; skipped where CUDA or PyTorch is missing): kvtier's gather and
scatter between a CUDA KV cache and page-locked host memory reach >= 80% of PyTorch's pinned
``copy_(non_blocking=True)`` for 2 MiB runs and >= 60% for scattered 16-64 KiB runs, in both directions.
The measurement is ``gpu_copy.measure`` (also a standalone script: ``python bench/gpu_copy.py``).
"""

from __future__ import annotations

from typing import Any

import pytest

import kvtier

_STATUS = kvtier.cuda_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _STATUS, reason=f"needs a usable CUDA driver and GPU: {_STATUS.reason}"),
]


def test_gpu_copy_bandwidth(benchmark: Any, report: Any) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch is installed without CUDA")
    import gpu_copy

    figures = gpu_copy.measure(rounds=10)
    gpu_copy.print_report(figures)
    g = gpu_copy.gates(figures)
    flat = {"device": figures["device"], "cuda": figures["cuda"]}
    for case in ("2MiB", "16KiB", "32KiB", "64KiB"):
        for k, v in figures[case].items():
            flat[f"{case} {k}"] = v
    report(benchmark, **flat)

    cache = torch.empty((64, 1 << 20), dtype=torch.uint8, device="cuda")
    layout = kvtier.KVLayout.from_tensors(cache, block_dim=0)
    host = kvtier.host_buffer(32 << 20).reshape(32, 1 << 20)
    with kvtier.CopyEngine() as engine:
        benchmark.pedantic(lambda: engine.gather(layout, list(range(0, 64, 2)), host).wait(), rounds=20, warmup_rounds=2)
    failed = {k: v for k, v in g.items() if v[0] < v[1]}
    assert not failed, "below issue 7's targets (ratio, target): " + ", ".join(f"{k}: {r:.3f} < {t}" for k, (r, t) in failed.items())
