"""`kvtier analyze` on the Mooncake FAST'25 conversation trace (12,031 requests, 288,500 blocks of 512 tokens).

The trace is read once by the analytics reader (``read_log``: JSON per line into arrays), untimed.

1. One configuration (LRU, 10,000 blocks = 5.12M tokens, between Figure 9's local-DRAM line and its plateau):
   kvtier's analyze path, ``run_config`` (a fresh metadata-only store, one ``Store.replay`` call, the hit and
   token-hit ratios), against a plain-Python replay of the same requests with the same block-level semantics: an
   OrderedDict of prefix ids, per request counting the leading ids present, inserting the rest and refreshing
   the hits deepest-first (so a parent is always more recent than its children and eviction takes leaves first,
   as kvtier's tree does), evicting the least recently used beyond capacity, then the same ratios with numpy.
   Its hits equal kvtier's request by request (tests/test_analyze_paper.py checks this on a slice; here the
   totals are compared). Interleaved rounds, medians. Gate (issue 5): kvtier >= 20x faster.
   Reported too, ungated: the OrderedDict LRU of bench/peers.py (bench/test_replay.py's baseline), which touches
   blocks front to back, so it can evict a parent before its children; at this capacity that costs it more work
   per request and gives slightly different hits (21.1% of blocks against 21.2%).
2. The sweep of 10 capacities x 2 policies (LRU, LFU) that ``kvtier analyze --capacity ... --policy lru,lfu``
   runs: wall time of ``run_sweep`` and of the whole command (read + sweep + table) for the README. No gate.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from harness import CONVERSATION_TRACE, gate, interleaved
from peers import ordered_dict_lru_replay

pytest.importorskip("tqdm")

from kvtier.analytics.logs import RequestLog, read_log  # noqa: E402
from kvtier.analytics.sweep import SweepConfig, build_configs, run_config, run_sweep  # noqa: E402

# Issue 5 asks for >= 20x. On the project's shared 2-core VM, runs measure 25-31x at load 4 (run_config 2.6-4.0 ms,
# the OrderedDict LRU 70-120 ms) and 21-48x at load 5-6 (other jobs on both cores), so the gate holds with a thin
# margin on the busiest runs.
MIN_RATIO_VS_ORDERED_DICT = 20.0
CAPACITY_BLOCKS = 10_000
BLOCK_TOKENS = 512
SWEEP_CAPACITIES: list[int | None] = [500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, None]


@pytest.fixture(scope="module")
def conversation() -> tuple[RequestLog, list[list[int]]]:
    if not CONVERSATION_TRACE.exists():
        pytest.skip(f"Mooncake conversation trace not found at {CONVERSATION_TRACE} (../shared/traces/ of the repo)")
    log = read_log(str(CONVERSATION_TRACE))
    with CONVERSATION_TRACE.open() as f:
        requests = [json.loads(line)["hash_ids"] for line in f if line.strip()]
    return log, requests


def python_lru_replay(requests: Sequence[list[int]], capacity_blocks: int) -> list[int]:
    """Blocks hit per request by an OrderedDict LRU of prefix ids that evicts leaves first (see the module doc)."""
    cache: OrderedDict[int, None] = OrderedDict()
    move, pop = cache.move_to_end, cache.popitem
    hits: list[int] = []
    for ids in requests:
        n = 0
        for h in ids:
            if h not in cache:
                break
            n += 1
        for h in reversed(ids[n:]):  # new blocks, deepest first
            cache[h] = None
        for h in reversed(ids[:n]):  # hit blocks, deepest first: the root ends most recent
            move(h)
        while len(cache) > capacity_blocks:
            pop(last=False)
        hits.append(n)
    return hits


def ratios(hits: Any, input_tokens: np.ndarray, total_blocks: int) -> tuple[float, float]:
    h = np.asarray(hits, dtype=np.int64)
    return float(h.sum() / total_blocks), float(np.minimum(h * BLOCK_TOKENS, input_tokens).sum() / input_tokens.sum())


def test_analyze_replay_vs_ordered_dict(
    benchmark: Any, report: Any, conversation: tuple[RequestLog, list[list[int]]]
) -> None:
    log, requests = conversation
    config = SweepConfig("lru", CAPACITY_BLOCKS)
    total = int(log.offsets[-1])
    log.trace()  # the per-block-size trace is built once per log, before any replay
    out: dict[str, Any] = {}

    def kvtier() -> None:
        out["kvtier"] = run_config(log, config)

    def python() -> None:
        out["python"] = ratios(python_lru_replay(requests, CAPACITY_BLOCKS), log.input_tokens, total)

    def forward() -> None:
        out["forward"] = ordered_dict_lru_replay(requests, CAPACITY_BLOCKS)

    t = interleaved({"kvtier": kvtier, "python_lru": python, "forward_lru": forward}, rounds=9, warmup=1)
    benchmark.pedantic(lambda: run_config(log, config), rounds=15, warmup_rounds=1)
    r = out["kvtier"]
    py_ratio, py_token_ratio = out["python"]
    assert (r.hit_ratio, r.token_hit_ratio) == pytest.approx((py_ratio, py_token_ratio), abs=0, rel=1e-12)
    ratio = t["python_lru"].median / t["kvtier"].median
    figures: dict[str, Any] = {
        "requests / blocks": f"{log.num_requests} / {total}",
        "config": f"LRU, {CAPACITY_BLOCKS} blocks",
        "kvtier run_config median ms": t["kvtier"].median * 1e3,
        "kvtier M blocks/s (incl. store + ratios)": total / t["kvtier"].median / 1e6,
        "kvtier replay call alone ms (last round)": r.replay_s * 1e3,
        "OrderedDict LRU median ms": t["python_lru"].median * 1e3,
        "OrderedDict LRU M blocks/s": total / t["python_lru"].median / 1e6,
        "ratio vs OrderedDict LRU": ratio,
        "bench/peers.py forward-touch LRU median ms": t["forward_lru"].median * 1e3,
        "ratio vs forward-touch LRU (ungated)": t["forward_lru"].median / t["kvtier"].median,
        "forward-touch LRU hit ratio": out["forward"] / total,
        "hit ratio (both)": r.hit_ratio,
        "token hit ratio (both)": r.token_hit_ratio,
        **gate("ratio vs OrderedDict LRU", ratio, MIN_RATIO_VS_ORDERED_DICT),
    }
    report(benchmark, **figures)
    assert ratio >= MIN_RATIO_VS_ORDERED_DICT, figures


def test_analyze_sweep_10x2(report: Any, conversation: tuple[RequestLog, list[list[int]]]) -> None:
    from kvtier.cli import main

    log, _ = conversation
    configs = build_configs(SWEEP_CAPACITIES, ["lru", "lfu"])
    assert len(configs) == 20
    samples = []
    results = []
    for _ in range(5):
        t0 = time.perf_counter()
        results = run_sweep(log, configs)
        samples.append(time.perf_counter() - t0)
    caps = ",".join("inf" if c is None else str(c) for c in SWEEP_CAPACITIES)
    t0 = time.perf_counter()
    rc = main(
        [
            "analyze",
            str(CONVERSATION_TRACE),
            "--capacity",
            caps,
            "--policy",
            "lru,lfu",
            "--no-progress",
            "--no-paper",
            "--csv",
            "/dev/null",
        ]
    )
    command_s = time.perf_counter() - t0
    assert rc == 0
    by = {(r.config.policy, r.config.capacity_blocks): r for r in results}
    # Unlimited capacity: both policies see every block ever stored, so they agree.
    assert by[("lru", None)].hit_blocks == by[("lfu", None)].hit_blocks
    report(
        None,
        **{
            "configurations": "10 capacities x {lru, lfu}",
            "run_sweep median s": float(np.median(samples)),
            "run_sweep min s": min(samples),
            "per configuration median ms": float(np.median(samples)) / 20 * 1e3,
            "kvtier analyze command s (read + sweep + CSV)": command_s,
            "LRU hit ratio at 10k / unlimited": f"{by[('lru', 10_000)].hit_ratio:.4f} / {by[('lru', None)].hit_ratio:.4f}",
            "LFU hit ratio at 10k / unlimited": f"{by[('lfu', 10_000)].hit_ratio:.4f} / {by[('lfu', None)].hit_ratio:.4f}",
        },
    )
