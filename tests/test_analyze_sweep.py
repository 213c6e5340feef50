"""Sweep semantics on tiny hand-worked traces: hit ratios, token hit ratios, policies, TTL, block sizes, tenants,
GB-hours, the residency timeline, and the parsing of sweep arguments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvtier.analytics.logs import RequestLog, read_log
from kvtier.cost.catalog import load_catalog
from kvtier.analytics.sweep import (
    SweepConfig,
    build_configs,
    format_duration,
    parse_policies,
    run_config,
    run_sweep,
)
from kvtier.errors import InvalidArgumentError

pytest.importorskip("tqdm")


def write(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# Four requests of 512-token blocks (prefix ids), worked by hand below.
#   t=0   [1 2 3]  input 1500
#   t=1   [1 2 4]  input 1100
#   t=2   [1 5]    input  700
#   t=10  [1 2 3]  input 1536
HAND = [
    {"timestamp": 0, "input_length": 1500, "output_length": 1, "hash_ids": [1, 2, 3]},
    {"timestamp": 1000, "input_length": 1100, "output_length": 1, "hash_ids": [1, 2, 4]},
    {"timestamp": 2000, "input_length": 700, "output_length": 1, "hash_ids": [1, 5]},
    {"timestamp": 10000, "input_length": 1536, "output_length": 1, "hash_ids": [1, 2, 3]},
]


@pytest.fixture
def hand(tmp_path: Path) -> RequestLog:
    return read_log(write(tmp_path / "hand.jsonl", HAND))


def test_unlimited(hand: RequestLog) -> None:
    r = run_config(hand, SweepConfig("lru", None))
    # Hits 0, 2, 1, 3 of 3, 3, 2, 3 blocks.
    assert (r.hit_blocks, r.total_blocks) == (6, 11)
    assert r.hit_ratio == pytest.approx(6 / 11)
    # Hit tokens: 0, min(2*512, 1100), min(512, 700), min(3*512, 1536).
    assert (r.hit_tokens, r.input_tokens) == (1024 + 512 + 1536, 1500 + 1100 + 700 + 1536)
    assert r.token_hit_ratio == pytest.approx(3072 / 4836)
    assert (r.evicted_blocks, r.resident_blocks_end, r.gb_hours) == (0, 5, None)


def test_lru_capacity_evicts_least_recent_leaf(hand: RequestLog) -> None:
    # Capacity 4. After t=1: {1 2 3 4}. t=2 hits 1, inserts 5, evicts the least recent leaf 3 (t=0).
    # t=10 hits 1 2, inserts 3 and evicts leaf 4 (t=1, older than 5). Hits 0 2 1 2.
    r = run_config(hand, SweepConfig("lru", 4))
    assert (r.hit_blocks, r.evicted_blocks, r.resident_blocks_end) == (5, 2, 4)
    assert r.hit_tokens == 1024 + 512 + 1024


def test_lfu_keeps_the_most_hit_block(tmp_path: Path) -> None:
    # Capacity 2: [1] [1] [2] [3] [1]. At [3], LFU evicts 2 (no hits) and keeps 1 (one hit); LRU evicts 1.
    recs = [
        {"timestamp": i * 1000, "input_length": 512, "output_length": 1, "hash_ids": [h]}
        for i, h in enumerate([1, 1, 2, 3, 1])
    ]
    log = read_log(write(tmp_path / "lfu.jsonl", recs))
    assert run_config(log, SweepConfig("lfu", 2)).hit_blocks == 2
    assert run_config(log, SweepConfig("lru", 2)).hit_blocks == 1


def test_ttl_expires_idle_blocks(hand: RequestLog) -> None:
    # TTL 5 s: at t=10 every block has been idle >= 8 s, so the last request misses entirely.
    r = run_config(hand, SweepConfig("ttl", None, 5.0))
    assert r.hit_blocks == 0 + 2 + 1 + 0
    assert r.expired_blocks == 5
    assert run_config(hand, SweepConfig("ttl", None, 20.0)).hit_blocks == 6


def test_gb_hours_integrate_resident_bytes_to_the_last_arrival(hand: RequestLog) -> None:
    # 1,000 KV bytes per token -> 512,000 bytes per block. Unlimited, no TTL, up to t=10:
    # 3 blocks from t=0, 1 from t=1, 1 from t=2 -> 3*10 + 9 + 8 = 47 block-seconds.
    r = run_config(hand, SweepConfig("lru", None), kv_bytes_per_token=1000)
    assert r.gb_hours == pytest.approx(47 * 512_000 / 1e9 / 3600)
    # Capacity is in blocks whatever the block bytes: the same hits as without a model.
    assert run_config(hand, SweepConfig("lru", 4), kv_bytes_per_token=1000).hit_blocks == 5
    # TTL 5 s: a block stops counting 5 s after its last use. Block 1 (last hit t=2) 0..7 s, block 2 (t=1) 0..6,
    # block 3 (t=0) 0..5, block 4 (t=1) 1..6, block 5 (t=2) 2..7; at t=10 the re-inserted blocks have 0 s so far.
    ttl = run_config(hand, SweepConfig("ttl", None, 5.0), kv_bytes_per_token=1000)
    assert ttl.gb_hours == pytest.approx((7 + 6 + 5 + 5 + 5) * 512_000 / 1e9 / 3600)


def test_token_log_block_sizes(tmp_path: Path) -> None:
    recs = [
        {"timestamp": 0, "session": "a", "tokens": list(range(10))},
        {"timestamp": 1, "session": "a", "tokens": list(range(13))},
    ]
    log = read_log(write(tmp_path / "t.jsonl", recs))
    r4 = run_config(log, SweepConfig("lru", None, None, 4))
    assert (r4.block_tokens, r4.total_blocks, r4.hit_blocks, r4.hit_tokens) == (4, 2 + 3, 2, 8)
    assert r4.token_hit_ratio == pytest.approx(8 / 23)
    r2 = run_config(log, SweepConfig("lru", None, None, 2))
    assert (r2.total_blocks, r2.hit_blocks, r2.hit_tokens) == (5 + 6, 5, 10)
    r16 = run_config(log, SweepConfig("lru", None, None, 16))
    assert (r16.total_blocks, r16.hit_blocks, r16.hit_ratio, r16.token_hit_ratio) == (0, 0, 0.0, 0.0)


def test_tenants_never_share_blocks(tmp_path: Path) -> None:
    recs = [
        {"timestamp": 0, "session": "a", "tenant": "t1", "tokens": list(range(8))},
        {"timestamp": 1, "session": "b", "tenant": "t2", "tokens": list(range(8))},
        {"timestamp": 2, "session": "c", "tenant": "t1", "tokens": list(range(8))},
    ]
    log = read_log(write(tmp_path / "t.jsonl", recs))
    assert run_config(log, SweepConfig("lru", None, None, 4)).hit_blocks == 2  # only the third request hits


def test_timeline_replays_in_windows_with_the_same_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    recs = []
    for i in range(400):
        n = int(rng.integers(1, 12))
        prefix = int(rng.integers(0, 5))
        recs.append(
            {
                "timestamp": i * 250,
                "input_length": n * 512,
                "output_length": 1,
                "hash_ids": [prefix * 1000 + j for j in range(n)],
            }
        )
    log = read_log(write(tmp_path / "r.jsonl", recs))
    for cfg in (SweepConfig("lru", None), SweepConfig("lru", 20), SweepConfig("ttl", None, 3.0)):
        whole = run_config(log, cfg)
        windows = run_config(log, cfg, timeline_points=17)
        tl = windows.timeline
        assert tl is not None and whole.timeline is None
        assert (windows.hit_blocks, windows.evicted_blocks) == (whole.hit_blocks, whole.evicted_blocks)
        assert int(tl.hit_blocks.sum()) == whole.hit_blocks and int(tl.total_blocks.sum()) == whole.total_blocks
        assert np.all(np.diff(tl.t) > 0) and tl.t[-1] == log.timestamps[-1]
        assert 1 < tl.t.size <= 17
        if cfg.capacity_blocks is not None:
            assert tl.resident_blocks.max() <= cfg.capacity_blocks
    unlimited = run_config(log, SweepConfig("lru", None), timeline_points=10).timeline
    assert unlimited is not None and np.all(np.diff(unlimited.resident_blocks) >= 0)


def test_run_sweep_keeps_config_order(hand: RequestLog) -> None:
    configs = build_configs([4, None], ["lru", "lfu"])
    results = run_sweep(hand, configs)
    assert [r.config for r in results] == configs
    assert [r.hit_blocks for r in results] == [5, 6, 5, 6]


def test_result_dict_has_the_documented_fields(hand: RequestLog) -> None:
    d = run_config(hand, SweepConfig("ttl", 4, 300.0), kv_bytes_per_token=10).to_dict()
    assert d["policy"] == "ttl" and d["capacity_blocks"] == 4 and d["capacity_tokens"] == 2048 and d["ttl_s"] == 300.0
    assert d["block_size"] == 512 and d["hit_ratio"] == pytest.approx(5 / 11) and isinstance(d["gb_hours"], float)
    assert run_config(hand, SweepConfig("lru", None)).to_dict()["capacity_blocks"] is None


# ------------------------------------------------------------------------------------------- argument parsing
def test_format_duration() -> None:
    assert [format_duration(s) for s in (300, 5400, 3600, 45, 86400, 90)] == ["5m", "1.5h", "1h", "45s", "1d", "1.5m"]


def test_parse_policies() -> None:
    assert parse_policies("LRU,lfu,ttl") == ["lru", "lfu", "ttl"]
    with pytest.raises(InvalidArgumentError, match="'fifo' is not one of"):
        parse_policies("lru,fifo")


def test_build_configs_grid() -> None:
    cfgs = build_configs([10, None], ["lru", "ttl"], [60.0, 300.0], [16, 32])
    assert len(cfgs) == 2 * (1 + 2) * 2
    assert cfgs[0] == SweepConfig("lru", 10, None, 16)
    assert SweepConfig("ttl", None, 300.0, 32) in cfgs
    assert all(c.ttl_s is None for c in cfgs if c.policy == "lru")
    assert build_configs([5, 5], ["lru", "lru"]) == [SweepConfig("lru", 5)]  # duplicates dropped
    with pytest.raises(InvalidArgumentError, match="needs --ttl"):
        build_configs([None], ["ttl"])
    with pytest.raises(InvalidArgumentError, match="add ttl to --policy"):
        build_configs([None], ["lru"], [60.0])


def test_models_come_from_the_cost_catalogue() -> None:
    cat = load_catalog()
    assert cat.model("Llama-3.1-8B").kv_bytes_per_token == 131_072
    assert cat.model("meta-llama/llama-3.1-70b").kv_bytes_per_token == 327_680  # Mooncake §5.3.1: 320 KB
    assert cat.model("deepseek-v3").kv_bytes_per_token == 70_272
    with pytest.raises(InvalidArgumentError, match="unknown model 'gpt-9': known models are"):
        cat.model("gpt-9")
