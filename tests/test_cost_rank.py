"""Re-ranking a shortlist: the cache-aware order against the sticker order, on a constructed example."""

from __future__ import annotations

import pytest
from cost_fixtures import DENSE, HW, MOE, small_trace

from kvtier.cost.catalog import ModelPrice, ProviderRules
from kvtier.cost.providers import price_provider
from kvtier.cost.rank import explain, line_of, rank
from kvtier.cost.tco import compute_tco
from kvtier.cost.trace import CostTrace


def _provider(name: str, ttl: float, write: float, inp: float, cached: float) -> ProviderRules:
    price = ModelPrice("m", inp, cached, 10.0, source="test", as_of="2026-01-01")
    return ProviderRules(
        name=name, vendor="test", cache="test", ttl_s=ttl, refresh_on_hit=True, write_multiplier=write,
        min_cached_tokens=1024, granularity_tokens=1, default_model="m", prices=(price,), source="test", as_of="2026-01-01",
    )  # fmt: skip


def test_ttl_and_discount_flip_the_ranking() -> None:
    # 20 x the same 100,000-token prompt, 6 minutes apart
    trace = CostTrace.repeated_prompt(tokens=100_000, requests=20, gap_s=360.0)
    short = _provider("short", 300.0, 1.0, 2.0, 1.0)  # cheaper sticker, 5-minute TTL, half-price reads
    long = _provider("long", 3600.0, 2.0, 3.0, 0.3)  # dearer sticker, 1-hour TTL, 0.1x reads, 2x writes
    lines = [line_of(price_provider(trace, p), trace.num_tasks) for p in (short, long)]
    # short: every request misses (gaps > TTL): naive = cache-aware = 20 x 0.1M x $2 = $4.00
    # long: naive 20 x 0.1M x $3 = $6.00; cache-aware 0.1M x $3 x 2 + 19 x 0.1M x $0.30 = $1.17
    assert [(x.naive_usd, x.cache_aware_usd) for x in lines] == [pytest.approx((4.0, 4.0)), pytest.approx((6.0, 1.17))]
    r = rank(lines)
    assert r.sticker_rank == {"short:m": 1, "long:m": 2}
    assert r.cache_aware_rank == {"long:m": 1, "short:m": 2}
    assert [x.label for x in r.lines] == ["long:m", "short:m"]
    (d,) = r.disagreements
    assert (d.winner, d.loser) == ("long:m", "short:m")
    assert "TTL 5 min, refreshed on hit: 0% of input read from cache" in d.reason
    assert "TTL 1 h, refreshed on hit: 95% of input read from cache at 0.1x, 5% written at 2x" in d.reason
    assert lines[1].cache_aware_per_task == pytest.approx(1.17)  # one session = one task


def test_agreeing_rankings_and_self_hosted_lines() -> None:
    trace = small_trace()
    lines = [line_of(compute_tco(trace, m, HW), trace.num_tasks) for m in (DENSE, MOE)]
    r = rank(lines)
    assert r.disagreements == ()
    assert [x.label for x in r.lines] == ["dense-10b@toy", "moe-100b-a5b@toy"]
    assert lines[1].factors["dominant"] == "footprint" and lines[1].factors["gpus"] == 2
    text = explain(lines[1])
    assert "footprint-bound: 2 GPUs to hold 100B params" in text and "5B active params" in text
    assert trace.num_tasks == 2  # no sessions: a task is a request
