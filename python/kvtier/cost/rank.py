"""Re-ranking a shortlist: cache-aware cost per task against the per-token sticker price.

Each candidate is a model served one way: hosted under a provider's caching rules
(:class:`~kvtier.cost.providers.ProviderCost`) or self-hosted on a hardware entry
(:class:`~kvtier.cost.tco.Tco`). Both give two prices for the same trace:

* *sticker* (``naive_usd``): every input token at the full input price (hosted), or every input token
  prefilled with no prefix cache (self-hosted);
* *cache-aware* (``cache_aware_usd``): the trace replayed through the cache rule that applies.

Ranked by each, the orders can disagree. For every pair that swaps, :func:`rank` says why, from the
factors that move a price away from its sticker: the TTL against the trace's gaps (how much of the
input is read from cache), the cache discount and write multiplier, storage fees, KV bytes per token
(residency), and active against total parameters (compute against footprint).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from kvtier.cost.providers import ProviderCost
from kvtier.cost.tco import Tco

__all__ = ["CostLine", "Disagreement", "Ranking", "line_of", "rank"]

Factor = float | int | str | bool | None


@dataclass(frozen=True)
class CostLine:
    """One candidate's prices on one trace.

    Attributes
    ----------
    kind
        ``"hosted"`` or ``"self-hosted"``.
    provider
        Provider name, or ``"self-hosted"``.
    hardware
        Hardware entry (self-hosted only).
    tasks
        Tasks in the trace (sessions; requests when it has none).
    factors
        What moves the cache-aware price away from the sticker (see :func:`explain`).
    """

    kind: Literal["hosted", "self-hosted"]
    provider: str
    model: str
    hardware: str | None
    naive_usd: float
    cache_aware_usd: float
    tasks: int
    factors: dict[str, Factor] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind == "hosted":
            return f"{self.provider}:{self.model}"
        return f"{self.model}@{self.hardware}"

    @property
    def naive_per_task(self) -> float:
        return self.naive_usd / self.tasks

    @property
    def cache_aware_per_task(self) -> float:
        return self.cache_aware_usd / self.tasks

    @property
    def ratio(self) -> float:
        """Cache-aware over sticker."""
        return self.cache_aware_usd / self.naive_usd if self.naive_usd else 1.0


def line_of(result: ProviderCost | Tco, tasks: int) -> CostLine:
    """A :class:`CostLine` from a provider replay or a TCO."""
    if isinstance(result, ProviderCost):
        r, p = result.rules, result.price
        return CostLine(
            "hosted",
            r.name,
            p.model,
            None,
            result.naive_usd,
            result.cache_aware_usd,
            tasks,
            {
                "cached_ratio": result.cached_ratio,
                "written_ratio": result.written_ratio,
                "read_multiplier": p.cached_input_usd_per_mtok / p.input_usd_per_mtok if p.input_usd_per_mtok else 1.0,
                "write_multiplier": r.write_multiplier,
                "ttl": r.describe_ttl(),
                "ttl_s": r.ttl_s,
                "refresh_on_hit": r.refresh_on_hit,
                "storage_usd": result.storage_usd,
                "input_usd_per_mtok": p.input_usd_per_mtok,
            },
        )
    m, h = result.model, result.hardware
    return CostLine(
        "self-hosted",
        "self-hosted",
        m.name,
        h.name,
        result.naive_usd,
        result.cache_aware_usd,
        tasks,
        {
            "cached_ratio": result.cached_ratio,
            "kv_bytes_per_token": m.kv_bytes_per_token,
            "kv_gb_hours": result.ledger.gb_hours,
            "kv_residency_usd": result.kv_residency_usd,
            "active_params": m.active_params,
            "total_params": m.total_params,
            "compute_usd": result.compute_usd,
            "footprint_usd": result.footprint_usd,
            "gpus": result.gpus,
            "dominant": result.dominant,
        },
    )


def _num(f: dict[str, Factor], key: str) -> float:
    v = f.get(key)
    return float(v) if isinstance(v, (int, float)) else 0.0


def _pct(x: float) -> str:
    return f"{100.0 * x:.0f}%"


def explain(line: CostLine) -> str:
    """One sentence: why ``line``'s cache-aware price is where it is relative to its sticker."""
    f = line.factors
    if line.kind == "hosted":
        text = f"TTL {f['ttl']}: {_pct(_num(f, 'cached_ratio'))} of input read from cache at {_num(f, 'read_multiplier'):.2g}x"
        if _num(f, "write_multiplier") != 1.0 and _num(f, "written_ratio") > 0:
            text += f", {_pct(_num(f, 'written_ratio'))} written at {_num(f, 'write_multiplier'):g}x"
        if _num(f, "storage_usd") > 0:
            text += f", storage ${_num(f, 'storage_usd'):,.2f}"
        return text + f" (cache-aware = {_pct(line.ratio)} of sticker)"
    kv = (
        f"{int(_num(f, 'kv_bytes_per_token')):,} KV bytes/token, {_num(f, 'kv_gb_hours'):,.1f} GB-h = "
        f"${_num(f, 'kv_residency_usd'):,.2f}"
    )
    active, total = _num(f, "active_params") / 1e9, _num(f, "total_params") / 1e9
    gpus, comp, foot = int(_num(f, "gpus")), _num(f, "compute_usd"), _num(f, "footprint_usd")
    if f.get("dominant") == "footprint":
        bound = f"footprint-bound: {gpus} GPUs to hold {total:g}B params (${foot:,.2f}) outweigh the FLOPs of {active:g}B active params (${comp:,.2f})"
    else:
        bound = f"compute-bound: {active:g}B active params x missed tokens (${comp:,.2f}) outweigh {gpus} GPUs for {total:g}B params (${foot:,.2f})"
    return f"{_pct(_num(f, 'cached_ratio'))} of input served by kvtier's cache ({kv}); {bound} (cache-aware = {_pct(line.ratio)} of sticker)"


@dataclass(frozen=True)
class Disagreement:
    """A pair the two rankings order differently: ``winner`` is dearer by sticker, cheaper cache-aware."""

    winner: str
    loser: str
    reason: str


@dataclass(frozen=True)
class Ranking:
    """Candidates ranked by cache-aware cost per task, next to their sticker ranks."""

    lines: tuple[CostLine, ...]
    sticker_rank: dict[str, int]
    cache_aware_rank: dict[str, int]
    disagreements: tuple[Disagreement, ...]


def _ranks(ordered: list[CostLine], cost: Callable[[CostLine], float]) -> dict[str, int]:
    """1 = cheapest; equal costs (to 1e-9 relative) share a rank and the next rank skips: 1, 2, 2, 4."""
    out: dict[str, int] = {}
    for i, x in enumerate(ordered):
        prev = ordered[i - 1] if i else None
        tied = prev is not None and math.isclose(cost(x), cost(prev), rel_tol=1e-9, abs_tol=1e-12)
        out[x.label] = out[prev.label] if tied and prev is not None else i + 1
    return out


def rank(lines: list[CostLine] | tuple[CostLine, ...]) -> Ranking:
    """Ranks ``lines`` both ways (1 = cheapest) and explains every pair whose order differs."""
    by_aware = sorted(lines, key=lambda x: (x.cache_aware_per_task, x.label))
    by_naive = sorted(lines, key=lambda x: (x.naive_per_task, x.label))
    aware_rank = _ranks(by_aware, lambda x: x.cache_aware_per_task)
    naive_rank = _ranks(by_naive, lambda x: x.naive_per_task)
    out = []
    for i, a in enumerate(by_naive):  # a costs no more by sticker than every b after it
        for b in by_naive[i + 1 :]:
            if b.cache_aware_per_task < a.cache_aware_per_task and b.naive_per_task > a.naive_per_task:
                reason = (
                    f"{b.label} costs more by sticker (${b.naive_per_task:,.4f} vs ${a.naive_per_task:,.4f} per task) "
                    f"but less with caching (${b.cache_aware_per_task:,.4f} vs ${a.cache_aware_per_task:,.4f}). "
                    f"{b.label}: {explain(b)}. {a.label}: {explain(a)}."
                )
                out.append(Disagreement(b.label, a.label, reason))
    return Ranking(tuple(by_aware), naive_rank, aware_rank, tuple(out))
