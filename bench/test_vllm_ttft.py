"""Time to first token with KVTierConnector in a real vLLM engine (CPU build, tiny random model, tests/vllm/).

A 4,000-token prompt (125 full blocks), three distinct prompts, each measured as the wall time of one request with
``max_tokens=1`` (offline, one request at a time: that is its TTFT, plus a few ms of engine overhead):

- cold: the first time a prompt is seen (prefill of all 4,000 tokens, plus kvtier saving its 124 claimable blocks);
- host hit: the same prompt again in the same engine (124 blocks loaded from kvtier's host tier, 32 tokens prefilled);
- disk hit: the same prompt in a fresh engine process pointed at the same folder (loaded from the disk tier).

Beside TTFT, the time each engine step spends in kvtier's save code (the histogram
``vllm:kvtier_save_step_seconds``, median and p99 interpolated within its buckets, 1.6x apart): over the cold
prompts (124 blocks saved per step) and over a save phase of distinct 1,000-token prompts (31 blocks per step). Saves are asynchronous: the step only starts the
copy of its blocks; the insert and the disk commit run beside it (``save_commit_ms``).

The tiny model prefills fast (2 layers, hidden 128), so this is the hard case for a cache: the loads have to beat a
cheap prefill. The figures are reported as they come; the only gate is that a host hit is faster than cold.
The connector runs with its default ``hit_policy="pays"``: the figures also say how many tokens it claimed.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "vllm"))

from vllm_engines import Engine, build_model, histogram_quantile, vllm_unavailable  # noqa: E402

PROMPT_TOKENS = 4000
N_PROMPTS = 3
ROUNDS = 3
SAVE_PROMPT_TOKENS = 1000  # the save phase: distinct prompts, one step each saving 31 blocks
N_SAVE_PROMPTS = 48
SAVE_STEP = "vllm:kvtier_save_step_seconds"  # histogram: time one engine step spends in kvtier's save code


def _prompts(n: int = N_PROMPTS, tokens: int = PROMPT_TOKENS, seed: int = 4000) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(16, 250, tokens)] for _ in range(n)]


def _save_figures(figures: dict[str, Any], what: str, after: Any, before: Any) -> None:
    p50, n_steps = histogram_quantile(after, before, 0.5)
    p99, _ = histogram_quantile(after, before, 0.99)
    figures[f"{what}: engine steps that saved"] = n_steps
    figures[f"{what}: kvtier save time per step, median (ms)"] = 1e3 * p50
    figures[f"{what}: kvtier save time per step, p99 (ms)"] = 1e3 * p99


def _delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(f"vllm:kvtier_{key}", 0.0) - before.get(f"vllm:kvtier_{key}", 0.0)


def test_ttft_cold_host_hit_disk_hit(tmp_path: Path, report: Callable[..., None]) -> None:
    reason = vllm_unavailable()
    if reason is not None:
        pytest.skip(reason)
    model = build_model(tmp_path / "tiny-model", tmp_path / "vllm-cache")
    disk = tmp_path / "kvtier-disk"
    cfg = {"disk_path": str(disk)}
    prompts = _prompts()
    claimable = (PROMPT_TOKENS - 1) // 32 * 32
    warm = [int(t) for t in np.random.default_rng(1).integers(16, 250, 512)]
    figures: dict[str, Any] = {}

    with Engine(model, tmp_path, connector=cfg, name="ttft-writer", max_model_len=8192) as eng:
        eng.timed(warm)  # first request pays one-time costs (allocations, thread start-up)
        m0 = eng.metrics()
        h0 = eng.histograms().get(SAVE_STEP)
        cold = [eng.timed(p) for p in prompts]
        m1 = eng.metrics()
        h1 = eng.histograms()[SAVE_STEP]
        host: list[float] = []
        for _ in range(ROUNDS):
            host += [eng.timed(p) for p in prompts]
        m2 = eng.metrics()
        h2 = eng.histograms()[SAVE_STEP]
        for p in _prompts(N_SAVE_PROMPTS, SAVE_PROMPT_TOKENS, seed=1000):
            eng.timed(p)
        h3 = eng.histograms()[SAVE_STEP]
        out = eng.generate([prompts[0]], max_tokens=1)[0]
        assert out["num_cached_tokens"] == claimable, "host hit expected"
    figures["cold TTFT median (s)"] = statistics.median(cold)
    figures["host hit TTFT median (s)"] = statistics.median(host)
    figures["host hit: tokens claimed / loaded blocks host"] = (
        f"{_delta(m2, m1, 'claimed_tokens'):.0f} / {_delta(m2, m1, 'loaded_blocks_host'):.0f}"
    )
    figures["cold: kvtier save ms per prompt, in the step"] = 1e3 * _delta(m1, m0, "save_seconds") / N_PROMPTS
    figures["cold: kvtier save ms per prompt, beside the step"] = 1e3 * _delta(m1, m0, "save_commit_seconds") / N_PROMPTS
    _save_figures(figures, "cold", h1, h0)
    _save_figures(figures, f"{N_SAVE_PROMPTS} prompts of {SAVE_PROMPT_TOKENS} tokens", h3, h2)
    figures["host hit: kvtier load ms per prompt"] = 1e3 * _delta(m2, m1, "load_seconds") / (ROUNDS * N_PROMPTS)

    with Engine(model, tmp_path, connector=cfg, name="ttft-reader", max_model_len=8192) as eng:
        eng.timed(warm)
        m0 = eng.metrics()
        disk_t = [eng.timed(p) for p in prompts]  # first sight in this process: read from the disk tier
        m1 = eng.metrics()
    figures["disk hit after restart TTFT median (s)"] = statistics.median(disk_t)
    figures["disk hit: tokens claimed / loaded blocks disk"] = (
        f"{_delta(m1, m0, 'claimed_tokens'):.0f} / {_delta(m1, m0, 'loaded_blocks_disk'):.0f}"
    )
    figures["disk hit: kvtier load ms per prompt"] = 1e3 * _delta(m1, m0, "load_seconds") / N_PROMPTS
    figures["cold / host hit"] = figures["cold TTFT median (s)"] / figures["host hit TTFT median (s)"]
    figures["cold / disk hit"] = figures["cold TTFT median (s)"] / figures["disk hit after restart TTFT median (s)"]
    report(None, **figures)
    assert figures["host hit TTFT median (s)"] < figures["cold TTFT median (s)"], figures
