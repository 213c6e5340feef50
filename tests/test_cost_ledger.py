"""Residency ledger: GB-hours per tier, tenant and session worked out by hand, live store and replayed trace."""

from __future__ import annotations

import numpy as np
import pytest

import kvtier
from kvtier.cost.catalog import load_catalog
from kvtier.cost.ledger import ATTRIBUTION, ledger_from_store, ledger_from_trace
from kvtier.cost.trace import CostTrace

GB = 1_000_000_000


def test_replayed_trace_by_hand() -> None:
    # blocks of 2 tokens x 500,000,000 KV bytes per token = 1 GB per block; TTL 1 hour
    tr = CostTrace.from_requests(
        [[1, 2], [1, 3], [1]],
        [0.0, 1800.0, 1800.0],
        [4, 4, 2],
        block_tokens=2,
        sessions=["A", "B", "C"],
        tenants=["t1", "t1", "t2"],
    )
    ledger, hits = ledger_from_trace(tr, GB // 2)
    assert hits.tolist() == [0, 1, 0]  # B hits A's block 1; C is another tenant: no sharing
    assert ledger.until == 1800.0 + 3600.0
    s = ledger.by_session()
    # A stored blocks 1 and 2 at 0. Block 1 is touched by B at 1800, so it expires at 5400: 1.5 GB-h;
    # block 2 expires at 3600: 1.0 GB-h. A pays 2.5 GB-h, including the 0.5 that B's hit added.
    assert s[("t1", "A")] == pytest.approx(2.5)
    assert s[("t1", "B")] == pytest.approx(1.0)  # block 3, 1800 -> 5400
    assert s[("t2", "C")] == pytest.approx(1.0)  # its own copy of block 1, 1800 -> 5400
    assert ledger.by_tenant() == pytest.approx({"t1": 3.5, "t2": 1.0})
    assert ledger.by_tier() == pytest.approx({"host": 4.5})
    assert ledger.gb_hours == pytest.approx(4.5)
    assert ledger.attribution == ATTRIBUTION == "first-writer"
    hw = load_catalog().hardware_spec("h100-sxm")
    assert ledger.usd(hw) == pytest.approx(4.5 * 0.004237)
    assert ledger.usd(hw, as_tier="disk") == pytest.approx(4.5 * 0.0001096)


def test_replayed_trace_until_and_lru() -> None:
    tr = CostTrace.from_requests([[1, 2], [1, 2, 3]], [0.0, 600.0], [4, 6], block_tokens=2)
    unlimited = kvtier.TierConfig(capacity_bytes=None)
    ledger, hits = ledger_from_trace(tr, GB // 2, tier=unlimited, until=1200.0)
    assert hits.tolist() == [0, 2]
    # blocks 1, 2 from 0 to 1200 (2 x 1/3 h) + block 3 from 600 to 1200 (1/6 h); one unnamed session
    assert ledger.gb_hours == pytest.approx(2 / 3 + 1 / 6)
    assert list(ledger.by_session()) == [("", "")]


def test_live_store_by_hand() -> None:
    cfg = kvtier.StoreConfig(block_size=2, block_bytes=GB, metadata_only=True, host=kvtier.TierConfig(capacity_bytes=None))
    ns = kvtier.Namespace(model="m", tenant="acme")
    with kvtier.Store(cfg, namespace=ns) as store:
        store.insert(np.array([1, 2, 3, 4]), session="a", now=0.0)  # 2 blocks, a pays
        assert store.match(np.array([1, 2, 9, 9]), now=1800.0).num_blocks == 1
        store.insert(np.array([1, 2, 9, 9]), session="b", now=1800.0)  # 1 new block, b pays
        ledger = ledger_from_store(store, now=3600.0)
    assert ledger.by_session() == pytest.approx({("acme", "a"): 2.0, ("acme", "b"): 0.5})
    assert {r.model for r in ledger.rows} == {"m"}
    assert ledger.until == 3600.0


def test_ledger_needs_a_store() -> None:
    with pytest.raises(TypeError, match="kvtier.Store"):
        ledger_from_store(object())  # type: ignore[arg-type]
    tr = CostTrace.from_requests([[1]], [0.0], [2], block_tokens=2)
    with pytest.raises(ValueError, match="kv_bytes_per_token"):
        ledger_from_trace(tr, 0)
