"""Three-part TCO on a tiny example worked out by hand, including a MoE model."""

from __future__ import annotations

import pytest

from cost_fixtures import DENSE, HW, MOE, small_trace

from kvtier.cost.catalog import HardwareSpec, load_catalog
from kvtier.cost.tco import TcoAssumptions, compute_tco, deployable_gpus, kv_working_set_bytes
from kvtier.cost.trace import CostTrace
from kvtier.errors import InvalidArgumentError

def test_dense_terms_by_hand() -> None:
    t = compute_tco(small_trace(), DENSE, HW, TcoAssumptions(kv_ttl_s=3600.0, inflight_s=10.0))
    assert DENSE.kv_bytes_per_token == 20_000
    assert (t.prefill_tokens, t.cached_tokens, t.output_tokens) == (3000, 2000, 1000)
    # 1. residency: a block is 1,000 x 20,000 B = 0.02 GB. Blocks 1, 2: 0 -> 7200 s (touched at 3600):
    #    2 x 0.02 x 2 h = 0.08; block 3: 3600 -> 7200: 0.02 GB-h. 0.10 GB-h x $0.01 = $0.001
    assert t.ledger.gb_hours == pytest.approx(0.10)
    assert t.kv_residency_usd == pytest.approx(0.001)
    # 2. compute: 2 x 10e9 x (3,000 missed + 1,000 output) = 8e13 FLOPs / 1e12 = 80 s = 1/45 GPU-h x $2
    assert t.flops == pytest.approx(8e13)
    assert t.compute_gpu_hours == pytest.approx(80 / 3600)
    assert t.compute_usd == pytest.approx(80 / 3600 * 2.0)
    # 3. footprint: 20 GB of weights + 3,000 tokens x 20,000 B in flight = 20.06 GB -> 1 GPU x $2 x 1 h
    assert t.kv_working_set_bytes == pytest.approx(6e7)
    assert t.gpus == 1
    assert t.footprint_usd == pytest.approx(2.0)
    assert t.dominant == "footprint"
    assert t.total_usd == pytest.approx(0.001 + 2.0)
    # no cache: 6,000 tokens -> 120 s of compute, still below the footprint
    assert t.naive_usd == pytest.approx(2.0)
    assert t.request_cache_aware_usd.sum() == pytest.approx(t.total_usd)
    assert t.request_naive_usd.sum() == pytest.approx(t.naive_usd)


def test_moe_active_params_drive_compute_total_params_drive_footprint() -> None:
    dense = compute_tco(small_trace(), DENSE, HW)
    moe = compute_tco(small_trace(), MOE, HW)
    # compute: 2 x 5e9 x 4,000 = 4e13 FLOPs, half the dense model's (5B active against 10B)
    assert moe.flops == pytest.approx(4e13)
    assert moe.compute_usd == pytest.approx(dense.compute_usd / 2)
    # footprint: 100 GB of experts + 3,000 x 10,000 B in flight = 100.03 GB -> 2 GPUs (dense: 1)
    assert moe.gpus == 2 and dense.gpus == 1
    assert moe.footprint_usd == pytest.approx(2 * dense.footprint_usd) == pytest.approx(4.0)
    # residency: half the KV bytes per token, half the GB-hours
    assert moe.ledger.gb_hours == pytest.approx(dense.ledger.gb_hours / 2)


def test_compute_bound_when_the_gpu_is_slow() -> None:
    slow = HardwareSpec(**{**HW.__dict__, "name": "slow", "peak_flops": 1e10, "achievable_flops": 1e10})
    t = compute_tco(small_trace(), DENSE, slow)
    # 8e13 FLOPs / 1e10 = 8,000 s = 2.22 GPU-h x $2 = $4.44 > 1 GPU x 1 h x $2
    assert t.compute_usd == pytest.approx(8000 / 3600 * 2.0)
    assert t.dominant == "compute"
    assert t.total_usd == pytest.approx(t.kv_residency_usd + t.compute_usd)
    # without the cache: 1.2e14 FLOPs = 12,000 s
    assert t.naive_usd == pytest.approx(12000 / 3600 * 2.0)


def test_deployable_gpus() -> None:
    assert [deployable_gpus(x * 80e9, HW) for x in (0.1, 1.0, 1.01, 2.5, 5, 8, 8.5, 17)] == [1, 1, 2, 4, 8, 8, 16, 24]
    h100 = load_catalog().hardware_spec("h100-sxm")  # 80 GB x 0.9 usable = 72 GB per GPU
    ds = load_catalog().model("deepseek-v3")
    assert deployable_gpus(ds.weight_bytes, h100) == 16  # 671 GB / 72 GB = 9.3 -> two nodes


def test_kv_working_set_window() -> None:
    tr = CostTrace.from_requests([[1], [2], [3], [4]], [0.0, 5.0, 9.0, 30.0], [1000, 1000, 1000, 1000], [0, 0, 0, 2000], block_tokens=1000)
    # requests 0-2 arrive within 10 s: 3,000 tokens; request 3 alone holds 3,000 tokens
    assert kv_working_set_bytes(tr, DENSE, 10.0) == pytest.approx(3000 * 20_000)
    assert kv_working_set_bytes(tr, DENSE, 4.0) == pytest.approx(3000 * 20_000)  # request 3 alone
    assert kv_working_set_bytes(tr, DENSE, 100.0) == pytest.approx(6000 * 20_000)


def test_disk_rate_and_duration_override() -> None:
    t = compute_tco(small_trace(), DENSE, HW, TcoAssumptions(kv_tier="disk", duration_s=7200.0))
    assert t.kv_residency_usd == pytest.approx(0.10 * 0.001)
    assert t.footprint_usd == pytest.approx(4.0)
    with pytest.raises(InvalidArgumentError, match="kv_tier"):
        TcoAssumptions(kv_tier="tape")
    with pytest.raises(InvalidArgumentError, match="inflight_s"):
        TcoAssumptions(inflight_s=-1.0)
