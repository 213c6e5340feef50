"""`kvtier demo`: an agent-like workload stored and matched through the host and disk tiers.

Several agent sessions share a system prompt (tool schemas); at every step each session re-sends its
whole history plus a new observation. The store saves each step's new full blocks and, at the next
step, the returning prefix is matched and its KV loaded instead of being prefilled again. The host tier
is smaller than the working set, so older blocks move to the disk tier (an LMDB folder) and come back
from there. At the end the store is closed and reopened on the same folder, as a restarted server
would: every session's prefix is found again and its KV checked. Time is simulated (``step_seconds``
apart) so residency comes out in meaningful GB-hours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kvtier.config import DiskConfig, Namespace, StoreConfig, TierConfig
from kvtier.store import Store, TokenSequence

__all__ = ["DemoConfig", "StepReport", "RestartReport", "run_demo", "restart"]


@dataclass(frozen=True)
class DemoConfig:
    sessions: int = 3
    steps: int = 8
    system_tokens: int = 2048
    step_tokens: int = 384
    step_seconds: float = 30.0
    block_size: int = 16
    kv_bytes_per_token: int = 32_768  # Llama-3.2-1B, bf16: 16 layers x 8 KV heads x 64 dim x 2 (K,V) x 2 bytes
    capacity_bytes: int = 128 << 20
    policy: str = "lru"
    disk_path: str = "kvtier-demo-cache"
    disk_capacity_bytes: int = 4 << 30
    seed: int = 0


@dataclass(frozen=True)
class StepReport:
    step: int
    session: str
    prompt_tokens: int
    hit_tokens: int
    new_blocks: int
    verified: bool


@dataclass(frozen=True)
class RestartReport:
    session: str
    prompt_tokens: int
    hit_tokens: int
    disk_tokens: int
    verified: bool


def _store(cfg: DemoConfig, now: float) -> Store:
    return Store(
        StoreConfig(
            block_size=cfg.block_size,
            block_bytes=cfg.kv_bytes_per_token * cfg.block_size,
            host=TierConfig(capacity_bytes=cfg.capacity_bytes, policy=cfg.policy),  # type: ignore[arg-type]
            disk=DiskConfig(path=cfg.disk_path, capacity_bytes=cfg.disk_capacity_bytes),
        ),
        namespace=Namespace(model="meta-llama/Llama-3.2-1B", kv_dtype="bfloat16", tenant="demo"),
        now=now,
    )


def _payload(tokens: np.ndarray, first_block: int, n_blocks: int, block_size: int, block_bytes: int) -> np.ndarray:
    """Stand-in KV for blocks [first_block, first_block + n_blocks): bytes derived from each block's prefix."""
    out = np.empty((n_blocks, block_bytes), dtype=np.uint8)
    for i in range(n_blocks):
        b = first_block + i
        out[i] = (int(tokens[: (b + 1) * block_size].sum()) + b) % 251
    return out


def run_demo(
    cfg: DemoConfig, emit: Callable[[StepReport], None] | None = None
) -> tuple[Store, list[StepReport], dict[str, np.ndarray]]:
    """Runs the demo; returns the (open) store, one report per (step, session) and each session's prompt."""
    rng = np.random.default_rng(cfg.seed)
    block_bytes = cfg.kv_bytes_per_token * cfg.block_size
    store = _store(cfg, 0.0)
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
    return store, reports, {name: seq.numpy() for name, seq in histories.items()}


def restart(cfg: DemoConfig, prompts: dict[str, np.ndarray]) -> tuple[Store, list[RestartReport]]:
    """Opens a new store on the demo's folder (as a restarted server) and looks every session up again."""
    end = cfg.steps * cfg.step_seconds
    store = _store(cfg, end)
    block_bytes = cfg.kv_bytes_per_token * cfg.block_size
    out: list[RestartReport] = []
    for name, tokens in prompts.items():
        with store.pinned(tokens, now=end) as hit:
            kv = np.empty((hit.num_blocks, block_bytes), dtype=np.uint8)
            loaded = store.load(hit, kv) if hit.num_blocks else 0
            ok = loaded == hit.num_blocks and bool(
                np.array_equal(kv[:loaded, :64], _payload(tokens, 0, loaded, cfg.block_size, 64))
            )
            out.append(
                RestartReport(name, len(tokens), hit.num_tokens, hit.disk_blocks * cfg.block_size, ok)
            )
    return store, out
