"""Published figures of the Mooncake FAST'25 traces, and kvtier's numbers next to them.

Source: Qin et al., "Mooncake: Trading More Storage for Less Computation — A KVCache-centric
Architecture for Serving LLM Chatbot", USENIX FAST 2025 (``FAST25-release/Mooncake-FAST25.pdf`` in
github.com/kvcache-ai/Mooncake). The traces are ``FAST25-release/traces/*.jsonl`` of the same
repository (Apache-2.0), recognised here by their SHA-256. ``../shared/traces/SOURCES.md`` records
where every number below was read.

* Table 2 (§5.2, PDF p.9) "Workload Statistics": requests, average input and output length, and the
  "Cache Ratio" (40% conversation, 66% synthetic).
* Figure 9 (§5.3.1, PDF p.11): prefix-cache hit rate against cache capacity in tokens, replaying
  only the order of requests. The points below were read off the log-scale plot by eye (SOURCES.md,
  "our reading"), so each carries a reading error of about ±0.02.
* Figure 9's annotations: at a 3M-token capacity the curves reach 41% (conversation) and 46%
  (synthetic) of their maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvtier.analytics.logs import RequestLog
from kvtier.analytics.sweep import SweepConfig, SweepResult, run_config

__all__ = ["PaperTrace", "PaperRow", "PAPER_TRACES", "CITATION", "paper_trace", "compare", "FIGURE9_BLOCK_TOKENS"]

CITATION = (
    'Qin et al., "Mooncake: Trading More Storage for Less Computation — A KVCache-centric Architecture for '
    'Serving LLM Chatbot", USENIX FAST 2025, Table 2 and Figure 9'
)
FIGURE9_BLOCK_TOKENS = 512  # the traces' block size; Figure 9's capacities are converted at 512 tokens per block


@dataclass(frozen=True)
class PaperTrace:
    """One published trace and what the paper says about it.

    Attributes
    ----------
    name, file, sha256
        Workload name in the paper, file name in the repository and its SHA-256.
    requests, avg_input, avg_output
        Table 2 "Num Requests", "Avg Input Len", "Avg Output Len" (tokens).
    cache_ratio
        Table 2 "Cache Ratio" (given in whole percent).
    figure9
        ``(capacity in tokens, hit rate)`` points read off Figure 9.
    fraction_at_3m
        Figure 9's annotation: hit rate at 3M tokens / maximum hit rate.
    """

    name: str
    file: str
    sha256: str
    requests: int
    avg_input: float
    avg_output: float
    cache_ratio: float
    figure9: tuple[tuple[int, float], ...]
    fraction_at_3m: float


PAPER_TRACES: dict[str, PaperTrace] = {
    t.sha256: t
    for t in (
        PaperTrace(
            name="Conversation",
            file="conversation_trace.jsonl",
            sha256="b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df",
            requests=12031,
            avg_input=12035,
            avg_output=343,
            cache_ratio=0.40,
            figure9=(
                (10_000, 0.045),
                (100_000, 0.073),
                (1_000_000, 0.087),
                (2_000_000, 0.12),
                (3_000_000, 0.165),
                (10_000_000, 0.33),
                (50_000_000, 0.40),
            ),
            fraction_at_3m=0.41,
        ),
        PaperTrace(
            name="Synthetic",
            file="synthetic_trace.jsonl",
            sha256="bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131",
            requests=3993,
            avg_input=15325,
            avg_output=149,
            cache_ratio=0.66,
            figure9=(
                (10_000, 0.00),
                (100_000, 0.012),
                (1_000_000, 0.147),
                (3_000_000, 0.30),
                (10_000_000, 0.59),
                (50_000_000, 0.66),
            ),
            fraction_at_3m=0.46,
        ),
    )
}


def paper_trace(log: RequestLog) -> PaperTrace | None:
    """The published trace ``log`` is (by SHA-256), if any."""
    return PAPER_TRACES.get(log.sha256) if log.format == "mooncake" else None


@dataclass(frozen=True)
class PaperRow:
    """One published figure next to kvtier's.

    Attributes
    ----------
    source
        ``"Table 2"`` or ``"Figure 9"``.
    quantity
        What is compared.
    capacity_tokens
        Figure 9's capacity (``None``: unlimited or not a hit rate).
    paper
        The published value.
    ours
        kvtier's comparable value (token-weighted hit ratio for hit rates).
    ours_blocks
        kvtier's block hit ratio, for hit rates (``None`` otherwise).
    """

    source: str
    quantity: str
    capacity_tokens: int | None
    paper: float
    ours: float
    ours_blocks: float | None = None

    @property
    def difference(self) -> float:
        return self.ours - self.paper

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "quantity": self.quantity,
            "capacity_tokens": self.capacity_tokens,
            "paper": self.paper,
            "ours": self.ours,
            "ours_blocks": self.ours_blocks,
            "difference": self.difference,
        }


def figure9_blocks(capacity_tokens: int) -> int:
    """Figure 9's capacity in 512-token blocks (rounded, at least one)."""
    return max(1, round(capacity_tokens / FIGURE9_BLOCK_TOKENS))


def compare(log: RequestLog, paper: PaperTrace) -> tuple[list[PaperRow], dict[int | None, SweepResult]]:
    """Replays ``log`` under LRU at Figure 9's capacities and unlimited; returns rows and the replays.

    The Table 2 cache ratio is compared with the unlimited replay; each Figure 9 point with an LRU
    replay of ``round(tokens / 512)`` blocks. "ours" is the token-weighted hit ratio.
    """
    runs: dict[int | None, SweepResult] = {None: run_config(log, SweepConfig("lru", None))}
    for tokens, _ in paper.figure9:
        runs[tokens] = run_config(log, SweepConfig("lru", figure9_blocks(tokens)))
    best = runs[None]
    rows = [
        PaperRow("Table 2", "requests", None, paper.requests, log.num_requests),
        PaperRow("Table 2", "average input length (tokens)", None, paper.avg_input, float(log.input_tokens.mean())),
        PaperRow("Table 2", "average output length (tokens)", None, paper.avg_output, float(log.output_tokens.mean())),
        PaperRow(
            "Table 2", "cache ratio (unlimited capacity)", None, paper.cache_ratio, best.token_hit_ratio, best.hit_ratio
        ),
    ]
    for tokens, value in paper.figure9:
        r = runs[tokens]
        rows.append(PaperRow("Figure 9", "hit rate, LRU", tokens, value, r.token_hit_ratio, r.hit_ratio))
    at3m = runs.get(3_000_000)
    if at3m is not None and best.token_hit_ratio > 0:
        rows.append(
            PaperRow(
                "Figure 9",
                "hit rate at 3M tokens / maximum",
                3_000_000,
                paper.fraction_at_3m,
                at3m.token_hit_ratio / best.token_hit_ratio,
            )
        )
    return rows, runs
