"""Time to first token with KVTierConnector in a real vLLM engine (CPU build, tiny random model, tests/vllm/).

A 4,000-token prompt (125 full blocks), three distinct prompts, each measured as the wall time of one request with
``max_tokens=1`` (offline, one request at a time: that is its TTFT, plus a few ms of engine overhead):

- cold: the first time a prompt is seen (prefill of all 4,000 tokens, plus kvtier saving its 124 claimable blocks);
- host hit: the same prompt again in the same engine (124 blocks loaded from kvtier's host tier, 32 tokens prefilled);
- disk hit: the same prompt in a fresh engine process pointed at the same folder (loaded from the disk tier).

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

from vllm_engines import Engine, build_model, vllm_unavailable  # noqa: E402

PROMPT_TOKENS = 4000
N_PROMPTS = 3
ROUNDS = 3


def _prompts() -> list[list[int]]:
    rng = np.random.default_rng(4000)
    return [[int(t) for t in rng.integers(16, 250, PROMPT_TOKENS)] for _ in range(N_PROMPTS)]


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
        cold = [eng.timed(p) for p in prompts]
        m1 = eng.metrics()
        host: list[float] = []
        for _ in range(ROUNDS):
            host += [eng.timed(p) for p in prompts]
        m2 = eng.metrics()
        out = eng.generate([prompts[0]], max_tokens=1)[0]
        assert out["num_cached_tokens"] == claimable, "host hit expected"
    figures["cold TTFT median (s)"] = statistics.median(cold)
    figures["host hit TTFT median (s)"] = statistics.median(host)
    figures["host hit: tokens claimed / loaded blocks host"] = (
        f"{_delta(m2, m1, 'claimed_tokens'):.0f} / {_delta(m2, m1, 'loaded_blocks_host'):.0f}"
    )
    figures["cold: kvtier save ms per prompt"] = 1e3 * _delta(m1, m0, "save_seconds") / N_PROMPTS
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
