"""`kvtier demo`: an agent-like workload stored and matched through the host tier.

Several agent sessions share a system prompt (tool schemas); at every step each session re-sends its
whole history plus a new observation. The store saves each step's new full blocks and, at the next
step, the returning prefix is matched and its KV loaded instead of being prefilled again. Time is
simulated (``step_seconds`` apart) so residency comes out in meaningful GB-hours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kvtier.config import Namespace, StoreConfig, TierConfig
from kvtier.store import Store, TokenSequence

__all__ = ["DemoConfig", "StepReport", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    sessions: int = 3
    steps: int = 8
    system_tokens: int = 2048
    step_tokens: int = 384
    step_seconds: float = 30.0
    block_size: int = 16
    kv_bytes_per_token: int = 32_768  # Llama-3.2-1B, bf16: 16 layers x 8 KV heads x 64 dim x 2 (K,V) x 2 bytes
    capacity_bytes: int = 1 << 30
    policy: str = "lru"
    seed: int = 0


@dataclass(frozen=True)
class StepReport:
    step: int
    session: str
    prompt_tokens: int
    hit_tokens: int
    new_blocks: int
    verified: bool


def _payload(tokens: np.ndarray, first_block: int, n_blocks: int, block_size: int, block_bytes: int) -> np.ndarray:
    """Stand-in KV for blocks [first_block, first_block + n_blocks): bytes derived from each block's prefix."""
    out = np.empty((n_blocks, block_bytes), dtype=np.uint8)
    for i in range(n_blocks):
        b = first_block + i
        out[i] = (int(tokens[: (b + 1) * block_size].sum()) + b) % 251
    return out


def run_demo(cfg: DemoConfig, emit: Callable[[StepReport], None] | None = None) -> tuple[Store, list[StepReport]]:
    """Runs the demo and returns the (open) store and one report per (step, session)."""
    rng = np.random.default_rng(cfg.seed)
    block_bytes = cfg.kv_bytes_per_token * cfg.block_size
    store = Store(
        StoreConfig(
            block_size=cfg.block_size,
            block_bytes=block_bytes,
            host=TierConfig(capacity_bytes=cfg.capacity_bytes, policy=cfg.policy),  # type: ignore[arg-type]
        ),
        namespace=Namespace(model="meta-llama/Llama-3.2-1B", kv_dtype="bfloat16", tenant="demo"),
    )
    system = rng.integers(0, 128_000, cfg.system_tokens, dtype=np.int32)
    histories = {f"agent-{i}": TokenSequence(system) for i in range(cfg.sessions)}
    reports: list[StepReport] = []
    for step in range(cfg.steps):
        now = step * cfg.step_seconds
        for name, seq in histories.items():
            seq.extend(rng.integers(0, 128_000, cfg.step_tokens, dtype=np.int32))
            tokens = seq.numpy()
            full = len(tokens) // cfg.block_size
            with store.pinned(seq, now=now) as hit:
                verified = True
                if hit.num_blocks:
                    kv = np.empty((hit.num_blocks, block_bytes), dtype=np.uint8)
                    store.load(hit, kv)
                    verified = bool(
                        np.array_equal(kv[:, :64], _payload(tokens, 0, hit.num_blocks, cfg.block_size, 64))
                    )
                new = full - hit.num_blocks
                res = store.insert(
                    seq,
                    _payload(tokens, hit.num_blocks, new, cfg.block_size, block_bytes),
                    start_block=hit.num_blocks,
                    session=name,
                    now=now,
                )
            report = StepReport(step, name, len(tokens), hit.num_tokens, res.inserted_blocks, verified)
            reports.append(report)
            if emit is not None:
                emit(report)
    return store, reports
