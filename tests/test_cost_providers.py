"""Provider replay: every request priced under each provider's caching rules, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from kvtier.cost.cachesim import CacheRule, block_token_counts, replay_cache
from kvtier.cost.catalog import Catalog, load_catalog
from kvtier.cost.providers import price_provider
from kvtier.cost.trace import CostTrace
from kvtier.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def twenty() -> CostTrace:
    """One session, 20 requests of the same 100,000-token prompt 6 minutes apart, no output."""
    return CostTrace.repeated_prompt(tokens=100_000, requests=20, gap_s=360.0)


def test_hand_computed_anthropic(catalog: Catalog, twenty: CostTrace) -> None:
    a5 = price_provider(twenty, catalog.provider("anthropic-5m"), "claude-sonnet-4.5")
    a1 = price_provider(twenty, catalog.provider("anthropic-1h"), "claude-sonnet-4.5")
    # naive: 20 x 100,000 x $3/M = $6.00
    assert a5.naive_usd == pytest.approx(6.00) and a1.naive_usd == pytest.approx(6.00)
    # 5-minute TTL, 6-minute gaps: every request misses and rewrites at 1.25x: 20 x 0.1M x $3 x 1.25 = $7.50
    assert a5.cache_aware_usd == pytest.approx(7.50)
    assert a5.cached_tokens == 0 and a5.written_tokens == 2_000_000
    # 1-hour TTL: one write at 2x ($0.60), then 19 reads at 0.1x (19 x 0.1M x $0.30 = $0.57): $1.17
    assert a1.cache_aware_usd == pytest.approx(1.17)
    assert a1.write_usd == pytest.approx(0.60) and a1.read_usd == pytest.approx(0.57)
    assert a1.cached_tokens == 1_900_000 and a1.written_tokens == 100_000
    assert a5.engine == a1.engine == "core"  # refreshed TTLs replay through the store itself


def test_per_request_and_per_session_sum_to_totals(catalog: Catalog) -> None:
    tr = CostTrace.from_requests(
        [[1, 2], [1, 2, 3], [7], [1, 2, 3, 4]],
        [0.0, 60.0, 61.0, 120.0],
        [2000, 3000, 1000, 4000],
        [10, 20, 30, 40],
        block_tokens=1000,
        sessions=["a", "a", "b", "a"],
    )
    pc = price_provider(tr, catalog.provider("anthropic-5m"))
    assert pc.request_cache_aware_usd.sum() == pytest.approx(pc.cache_aware_usd)
    naive, aware = pc.by_task(tr)
    assert tr.task_table == ("a", "b")
    assert aware.sum() == pytest.approx(pc.cache_aware_usd) and naive.sum() == pytest.approx(pc.naive_usd)
    # session b: 1,000 tokens (< 1,024 minimum: not cached, not written) + 30 output tokens
    assert aware[1] == pytest.approx((1000 * 3.0 + 30 * 15.0) / 1e6)
    # session a: r0 writes 2,000; r1 reads 2,000, writes 1,000; r3 reads 3,000, writes 1,000
    a_in = (4000 * 3.0 * 1.25 + 5000 * 0.30) / 1e6
    assert aware[0] == pytest.approx(a_in + (10 + 20 + 40) * 15.0 / 1e6)


def test_openai_minimum_and_granularity(catalog: Catalog) -> None:
    # block_tokens 100: a 2,050-token prompt has 21 blocks, the last holding 50 tokens
    tr = CostTrace.from_requests(
        [list(range(1, 22)), list(range(1, 22)), list(range(100, 110)), list(range(100, 110))],
        [0.0, 10.0, 20.0, 30.0],
        [2050, 2050, 1000, 1000],
        block_tokens=100,
    )
    pc = price_provider(tr, catalog.provider("openai"), "gpt-5")
    # r1 finds 2,050 cached tokens -> 16 x 128 = 2,048 read at $0.125, 2 at $1.25
    # r2, r3: 1,000 tokens < 1,024: never cached
    expected = (2050 * 1.25 + (2048 * 0.125 + 2 * 1.25) + 1000 * 1.25 * 2) / 1e6
    assert pc.cache_aware_usd == pytest.approx(expected)
    assert pc.cached_tokens == 2048


def test_gemini_lifetime_is_not_refreshed_and_storage_is_billed(catalog: Catalog) -> None:
    tr = CostTrace.from_requests(
        [list(range(1, 11))] * 3, [0.0, 1800.0, 3601.0], [10_000] * 3, block_tokens=1000
    )
    rules = catalog.provider("gemini-explicit")
    pc = price_provider(tr, rules, "gemini-2.5-pro")
    assert pc.engine == "numpy"
    # t=1800 hits (age 1800 <= 3600); t=3601 misses: written at 0, not refreshed at 1800
    assert pc.cached_tokens == 10_000 and pc.written_tokens == 20_000
    # two writes x 10,000 tokens x 1 h of TTL = 0.02 Mtok-h x $4.50
    assert pc.storage_mtok_hours == pytest.approx(0.02)
    expected = (20_000 * 1.25 + 10_000 * 0.125) / 1e6 + 0.02 * 4.50
    assert pc.cache_aware_usd == pytest.approx(expected)
    # the same requests with a refreshed 1-hour TTL hit twice
    refreshed = replay_cache(tr, CacheRule(3600.0, refresh_on_hit=True))
    assert refreshed.hit_blocks.tolist() == [0, 10, 10]


def test_openai_max_age_caps_a_refreshed_entry(catalog: Catalog) -> None:
    # the same 2,000-token prompt every 4 minutes for 72 minutes: never idle 5 minutes, but older than 1 hour
    times = np.arange(19) * 240.0
    tr = CostTrace.from_requests([[1, 2]] * 19, times, [2000] * 19, block_tokens=1000)
    hits = replay_cache(tr, CacheRule.of(catalog.provider("openai"))).hit_blocks
    # written at 0; t=3600 has age 3600 (still alive); t=3840 is older than an hour: rewritten
    assert hits.tolist() == [0] + [2] * 15 + [0] + [2] * 2
    assert replay_cache(tr, CacheRule(300.0)).hit_blocks.tolist() == [0] + [2] * 18


def test_fixed_lifetime_longest_live_prefix_hits() -> None:
    # [1] written at 0; [1 2] written at 50 (its block 1 hit); at 120 with ttl 100 block 1 has expired
    # but the entry for the prefix [1 2] (written at 50) lives: the request reads 2 blocks.
    tr = CostTrace.from_requests([[1], [1, 2], [1, 2, 3], [1]], [0.0, 50.0, 120.0, 130.0], [10, 20, 30, 10], block_tokens=10)
    r = replay_cache(tr, CacheRule(100.0, refresh_on_hit=False), storage=True)
    assert r.hit_blocks.tolist() == [0, 1, 2, 1]  # block 1 was rewritten at 120 (expired inside the hit)
    # lifetimes: block 1 at 0 and 120, block 2 at 50, block 3 at 120: 4 x 10 tokens x 100 s
    assert r.storage_token_s.tolist() == [1000.0, 1000.0, 2000.0, 0.0]


def test_exact_ttl_boundary() -> None:
    tr = CostTrace.from_requests([[5]] * 3, [0.0, 300.0, 600.5], [100] * 3, block_tokens=100)
    for engine in ("core", "numpy"):
        assert replay_cache(tr, CacheRule(300.0), engine=engine).hit_blocks.tolist() == [0, 1, 0]  # type: ignore[arg-type]


def test_core_and_numpy_engines_agree_on_refreshed_ttls() -> None:
    rng = np.random.default_rng(7)
    for trial in range(60):
        n = int(rng.integers(1, 30))
        prompts: list[list[int]] = []
        for _ in range(n):
            if prompts and rng.random() < 0.7:
                base = prompts[int(rng.integers(len(prompts)))]
                p = base[: int(rng.integers(0, len(base) + 1))] + rng.integers(0, 3, int(rng.integers(0, 4))).tolist()
            else:
                p = rng.integers(0, 3, int(rng.integers(1, 5))).tolist()
            prompts.append(p)
        ts = np.cumsum(rng.choice([0.0, 0.5, 1.0, 2.0, 3.0], size=n))
        tenants = [str(rng.integers(0, 2)) for _ in range(n)] if trial % 2 else None
        tr = CostTrace.from_requests(prompts, ts, [4 * len(p) for p in prompts], block_tokens=4, chained=False, tenants=tenants)
        for ttl in (None, 1.0, 2.0):
            a = replay_cache(tr, CacheRule(ttl), engine="core", storage=True)
            b = replay_cache(tr, CacheRule(ttl), engine="numpy", storage=True)
            assert a.hit_blocks.tolist() == b.hit_blocks.tolist()
            np.testing.assert_allclose(a.storage_token_s, b.storage_token_s)


def test_chained_ids_are_exact() -> None:
    tr = CostTrace.from_requests([[5, 6, 7], [5, 6, 8], [6, 6], [5, 6, 7]], [0, 1, 2, 3], [3, 3, 2, 3], block_tokens=1, chained=False)
    ids = np.split(tr.block_ids, tr.offsets[1:-1].astype(np.int64))
    assert ids[0].tolist() == ids[3].tolist()
    assert ids[0][:2].tolist() == ids[1][:2].tolist() and ids[0][2] != ids[1][2]
    assert ids[2][1] != ids[0][1]  # block 6 after 6 is another prefix than 6 after 5
    assert block_token_counts(CostTrace.from_requests([[1, 2, 3]], [0], [2100], block_tokens=1000)).tolist() == [1000, 1000, 100]


def test_bad_rules_and_traces() -> None:
    with pytest.raises(InvalidArgumentError, match="max_age_s needs refresh_on_hit"):
        CacheRule(10.0, refresh_on_hit=False, max_age_s=20.0)
    tr = CostTrace.from_requests([[1]], [0.0], [10], block_tokens=10)
    with pytest.raises(InvalidArgumentError, match="needs engine='numpy'"):
        replay_cache(tr, CacheRule(10.0, refresh_on_hit=False), engine="core")
    with pytest.raises(InvalidArgumentError, match="non-decreasing"):
        CostTrace.from_requests([[1], [2]], [5.0, 1.0], [10, 10], block_tokens=10)
    with pytest.raises(InvalidArgumentError, match="3 blocks of 10 tokens but only 20 input tokens"):
        CostTrace.from_requests([[1, 2, 3]], [0.0], [20], block_tokens=10)


def test_hindsight_writes_only_what_is_read_again(catalog: Catalog, twenty: CostTrace) -> None:
    a5 = price_provider(twenty, catalog.provider("anthropic-5m"), writes="reused")
    a1 = price_provider(twenty, catalog.provider("anthropic-1h"), writes="reused")
    # 5 minutes: nothing written is read again (6-minute gaps), so nothing is written: the naive $6.00
    assert a5.cache_aware_usd == pytest.approx(6.00) and a5.written_tokens == 0 and a5.engine == "numpy"
    # 1 hour: the one write is read 19 times: unchanged $1.17
    assert a1.cache_aware_usd == pytest.approx(1.17)
    tr = CostTrace.from_requests([list(range(1, 11))] * 3, [0.0, 1800.0, 3601.0], [10_000] * 3, block_tokens=1000)
    g = price_provider(tr, catalog.provider("gemini-explicit"), "gemini-2.5-pro", writes="reused")
    # the write at 0 is read at 1800 (kept, 1 h of storage); the rewrite at 3601 is never read: plain input
    assert g.written_tokens == 10_000 and g.storage_mtok_hours == pytest.approx(0.01)
    expected = (10_000 * 1.25 + 10_000 * 0.125 + 10_000 * 1.25) / 1e6 + 0.01 * 4.50
    assert g.cache_aware_usd == pytest.approx(expected)
    with pytest.raises(InvalidArgumentError, match="writes must be"):
        price_provider(tr, catalog.provider("openai"), writes="some")  # type: ignore[arg-type]
