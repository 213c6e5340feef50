"""Timing, gating and workload helpers shared by kvtier's benchmark suites (see conftest.py for the method)."""

from __future__ import annotations

import math

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kvtier import Store, StoreConfig, TierConfig

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO.parent / "shared" / "traces"
CONVERSATION_TRACE = TRACES / "mooncake-fast25" / "conversation_trace.jsonl"

BLOCK_SIZE = 16
PROMPT_TOKENS = 32_768
PROMPT_BLOCKS = PROMPT_TOKENS // BLOCK_SIZE  # 2,048
STEP_TOKENS = 1_024
STEPS = PROMPT_TOKENS // STEP_TOKENS  # 32
PAYLOAD_BYTES = 2_048  # per block: 2 KiB, so a prompt carries 4 MiB
VOCAB = 128_256  # Llama 3's vocabulary: realistic token ids


# ---------------------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Timing:
    """Per-call seconds of one subject over interleaved rounds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median_us(self) -> float:
        return self.median * 1e6


def interleaved(
    subjects: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    inner: dict[str, int] | int = 1,
    setup: dict[str, Callable[[], Any]] | None = None,
    warmup: int = 2,
) -> dict[str, Timing]:
    """Times each subject for ``rounds`` rounds, alternating subjects within every round.

    A round of subject ``s`` runs ``setup[s]()`` (untimed, if given) and then ``inner[s]`` calls of ``s`` back
    to back; the sample is the round's time divided by ``inner[s]``. The order of subjects is reversed every
    other round so that neither is always first. The garbage collector is off while timing (this favours the
    pure-Python baselines, which allocate; it never favours kvtier).
    """
    names = list(subjects)
    inner_of = {n: (inner if isinstance(inner, int) else inner.get(n, 1)) for n in names}
    setup = setup or {}
    samples: dict[str, list[float]] = {n: [] for n in names}
    perf = time.perf_counter
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmup + rounds):
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                fn, k, prep = subjects[n], inner_of[n], setup.get(n)
                if prep is not None:
                    prep()
                t0 = perf()
                for _ in range(k):
                    fn()
                dt = (perf() - t0) / k
                if r >= warmup:
                    samples[n].append(dt)
    finally:
        if was_enabled:
            gc.enable()
    return {n: Timing(tuple(s)) for n, s in samples.items()}


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def gate(name: str, value: float, threshold: float, *, higher_is_better: bool = True) -> dict[str, Any]:
    """The figures of one gate: its value, threshold and margin (value/threshold, >1 passes)."""
    if higher_is_better:
        margin = value / threshold
    else:  # a value at or below zero is as good as it gets
        margin = threshold / value if value > 0 else math.inf
    return {
        f"gate {name}": f"{value:.3g} vs {'>=' if higher_is_better else '<='} {threshold:g} "
        f"({'PASS' if margin >= 1 else 'FAIL'}, margin {margin:.2f}x)"
    }


# ---------------------------------------------------------------------------------------------------- workloads
def metadata_store(block_size: int = BLOCK_SIZE, **kw: Any) -> Store:
    return Store(
        StoreConfig(
            block_size=block_size,
            block_bytes=PAYLOAD_BYTES,
            metadata_only=True,
            host=TierConfig(capacity_bytes=None),
            **kw,
        )
    )


def payload_store(blocks: int, block_size: int = BLOCK_SIZE) -> Store:
    return Store(
        StoreConfig(
            block_size=block_size, block_bytes=PAYLOAD_BYTES, host=TierConfig(capacity_bytes=blocks * PAYLOAD_BYTES)
        )
    )


@dataclass(frozen=True)
class AgentWorkload:
    """32 steps, each extending the previous prompt by 1,024 tokens, plus one diverging branch per step.

    ``prompts[k]`` is step k's prompt (``(k + 1) * 1024`` tokens, the final one 32,768). ``branches[k]`` shares
    step k-1's prompt (empty for k=0) and then has 1,024 tokens of its own: a retried or alternative step.
    Insert order is prompts[0], branches[0], prompts[1], branches[1], ...
    """

    final: np.ndarray
    prompts: tuple[np.ndarray, ...]
    branches: tuple[np.ndarray, ...]

    def inserts(self) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for p, b in zip(self.prompts, self.branches, strict=True):
            out += [p, b]
        return out
