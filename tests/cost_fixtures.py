"""Shared toy hardware, models and trace for the cost tests (every figure chosen for hand arithmetic)."""

from __future__ import annotations

from kvtier.cost.catalog import HardwareSpec, ModelSpec
from kvtier.cost.trace import CostTrace

__all__ = ["HW", "DENSE", "MOE", "small_trace"]

HW = HardwareSpec(
    name="toy",
    gpu="toy GPU",
    gpu_usd_per_hour=2.0,
    hbm_gb=80.0,
    peak_flops=2e12,
    achievable_flops=1e12,
    host_dram_usd_per_gb_hour=0.01,
    nvme_usd_per_gb_hour=0.001,
    source="test",
    as_of="2026-01-01",
    hbm_usable_fraction=1.0,
)
# dense: 2 x 10 layers x 5 KV heads x 100 dim x 2 bytes = 20,000 KV bytes per token; 10B params x 2 bytes
DENSE = ModelSpec(
    name="dense-10b", layers=10, attention="gqa", kv_heads=5, head_dim=100, kv_dtype="bfloat16",
    total_params=10e9, active_params=10e9, bytes_per_param=2.0, source="test", as_of="2026-01-01",
)  # fmt: skip
# MoE: MLA 10 layers x 500 x 2 bytes = 10,000 KV bytes per token; 100B params (5B active) x 1 byte
MOE = ModelSpec(
    name="moe-100b-a5b", layers=10, attention="mla", kv_latent_dim=500, kv_dtype="bfloat16",
    total_params=100e9, active_params=5e9, bytes_per_param=1.0, source="test", as_of="2026-01-01",
)  # fmt: skip


def small_trace() -> CostTrace:
    # blocks of 1,000 tokens; r1 comes back exactly one TTL later and finds its first 2 blocks
    return CostTrace.from_requests([[1, 2], [1, 2, 3]], [0.0, 3600.0], [2000, 3000], [1000, 0], block_tokens=1000)
