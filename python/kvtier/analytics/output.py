"""Text outputs of ``kvtier analyze``: the terminal table, ``--json`` and ``--csv``."""

from __future__ import annotations

import csv
import json
import os
from typing import IO, Any

from kvtier.analytics.analyze import Analysis
from kvtier.analytics.breaks import CAUSE_LABELS, BreakReport
from kvtier.analytics.logs import RequestLog
from kvtier.analytics.paper import PaperRow
from kvtier.analytics.sweep import SweepResult, format_duration
from kvtier.units import plural

__all__ = [
    "render_text",
    "write_json",
    "write_csv",
    "result_table",
    "paper_cells",
    "CSV_COLUMNS",
    "fmt_capacity",
    "fmt_tokens",
    "fmt_sessions",
    "fmt_gb_hours",
    "one_line",
]

CSV_COLUMNS = (
    "policy",
    "capacity_blocks",
    "capacity_tokens",
    "ttl_s",
    "block_size",
    "requests",
    "total_blocks",
    "hit_blocks",
    "hit_ratio",
    "input_tokens",
    "hit_tokens",
    "token_hit_ratio",
    "evicted_blocks",
    "expired_blocks",
    "resident_blocks_end",
    "gb_hours",
    "replay_s",
)


def fmt_capacity(blocks: int | None) -> str:
    return "unlimited" if blocks is None else f"{blocks:,}"


def fmt_tokens(tokens: int | None) -> str:
    """``3_000_000`` -> ``3M``; ``None`` -> ``unlimited``."""
    if tokens is None:
        return "unlimited"
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if tokens >= size:
            return f"{tokens / size:g}{unit}"
    return str(tokens)


def fmt_gb_hours(v: float) -> str:
    """4 significant digits below 1,000 (small logs), whole thousands-separated numbers above."""
    return f"{v:,.0f}" if v >= 1000 else f"{v:.4g}"


def fmt_sessions(log: RequestLog) -> str:
    return f"{len(log.session_table):,} sessions" if log.sessions is not None else "no sessions"


def one_line(text: str, limit: int = 60) -> str:
    """Text for one table cell: control characters escaped, cut to ``limit``."""
    s = text.encode("unicode_escape").decode("ascii") if any(c < " " for c in text) else text
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def result_table(results: list[SweepResult]) -> tuple[list[str], list[list[str]]]:
    gbh = any(r.gb_hours is not None for r in results)
    ttl = any(r.config.ttl_s is not None for r in results)
    header = [
        "policy",
        "ttl",
        "block",
        "capacity (blocks)",
        "hit ratio",
        "token hit ratio",
        "evicted",
        "resident at end",
    ]
    if ttl:
        header.insert(7, "expired")
    if gbh:
        header.append("GB-hours")
    rows = []
    for r in results:
        c = r.config
        row = [
            c.policy,
            "-" if c.ttl_s is None else format_duration(c.ttl_s),
            str(r.block_tokens),
            fmt_capacity(c.capacity_blocks),
            f"{r.hit_ratio:.2%}",
            f"{r.token_hit_ratio:.2%}",
            f"{r.evicted_blocks:,}",
            f"{r.resident_blocks_end:,}",
        ]
        if ttl:
            row.insert(7, f"{r.expired_blocks:,}")
        if gbh:
            row.append("-" if r.gb_hours is None else fmt_gb_hours(r.gb_hours))
        rows.append(row)
    return header, rows


def paper_cells(r: PaperRow) -> list[str]:
    """One paper-comparison row as table cells (hit rates in percent, differences in points)."""
    pct = r.quantity.startswith(("cache ratio", "hit rate"))

    def value(v: float) -> str:
        if pct:
            return f"{v:.1%}"
        return f"{v:,.0f}" if r.quantity == "requests" else f"{v:,.1f}"

    return [
        r.source,
        r.quantity,
        "" if r.capacity_tokens is None else fmt_tokens(r.capacity_tokens),
        value(r.paper),
        value(r.ours),
        "" if r.ours_blocks is None else f"{r.ours_blocks:.1%}",
        f"{r.difference * 100:+.1f} pts"
        if pct
        else value(r.difference)
        if r.difference < 0
        else "+" + value(r.difference),
    ]


def _breaks_lines(b: BreakReport) -> list[str]:
    out = [
        f"Prefix breaks (blocks of {b.block_size} tokens): {b.breaks:,} of {b.steps_compared:,} steps in "
        f"{b.sessions:,} sessions did not extend the previous step's prompt, losing {b.blocks_lost:,} cached blocks"
    ]
    if not b.breaks:
        return out
    rows = [[CAUSE_LABELS[c], f"{n:,}", f"{b.blocks_lost_by_cause[c]:,}"] for c, n in b.by_cause.items() if n]
    out += ["  " + s for s in _table(["cause", "breaks", "blocks lost"], rows, {1, 2})]
    out.append("  first examples (text before the break | earlier step | this step):")
    for e in b.examples:
        out.append(
            f"  - session {e.session!r}, line {e.line} vs line {e.prev_line}: {CAUSE_LABELS[e.cause]}, "
            f"diverges at token {e.position:,} of {e.prev_length:,}, {e.blocks_lost:,} blocks lost"
        )
        out.append(
            f"      ...{one_line(e.before[-40:], 44)} | {one_line(e.prev_after, 44)} | {one_line(e.cur_after, 44)}"
        )
        if e.prev_tokens:
            k = e.position - e.window_start
            prev = " ".join(repr(t) for t in e.prev_tokens[k : k + 4])
            cur = " ".join(repr(t) for t in e.cur_tokens[k : k + 4])
            out.append(f"      tokens from the break: earlier {one_line(prev, 50)} | this {one_line(cur, 50)}")
    return out


def render_text(a: Analysis) -> str:
    """The terminal report: input summary, results table, paper comparison, prefix breaks."""
    log = a.log
    bt = f"{log.block_tokens}-token blocks" if log.block_tokens else "token ids"
    lines = [
        f"kvtier analyze: {os.path.basename(log.path)}",
        f"  {log.format} log, {log.num_requests:,} requests, {fmt_sessions(log)}, "
        f"{int(log.input_tokens.sum()):,} input tokens ({bt}), {log.duration_s / 60:.1f} min"
        + (" (sorted by time)" if log.reordered else ""),
    ]
    if a.kv_bytes_per_token is not None:
        name = a.model.name if a.model else "--kv-bytes-per-token"
        lines.append(f"  KV: {a.kv_bytes_per_token:,} bytes per token ({name}); GB-hours up to the last arrival")
    lines.append("")
    header, rows = result_table(a.results)
    lines += _table(header, rows, set(range(2, len(header))))
    if a.paper is not None and a.paper_rows:
        lines += [
            "",
            f"Compared with Mooncake FAST'25 ({a.paper.name} trace; LRU; see docs/analyze.md for definitions):",
        ]
        prow = [paper_cells(r) for r in a.paper_rows]
        lines += _table(
            ["source", "quantity", "capacity (tokens)", "paper", "kvtier (tokens)", "kvtier (blocks)", "difference"],
            prow,
            {2, 3, 4, 5, 6},
        )
    if log.breaks is not None:
        lines += [""] + _breaks_lines(log.breaks)
    else:
        why = "they need token ids or text, and sessions" if log.kind != "tokens" else "the log names no sessions"
        lines += ["", f"Prefix breaks: not analysed ({why})"]
    lines.append(f"\nread in {a.parse_s:.2f} s, {plural(len(a.results), 'replay')} in {a.sweep_s:.2f} s")
    return "\n".join(lines)


def write_json(a: Analysis, out: IO[str]) -> None:
    json.dump(a.to_dict(), out, indent=2)
    out.write("\n")


def write_csv(results: list[SweepResult], out: IO[str]) -> None:
    """One row per configuration; empty cells for null values."""
    w = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in results:
        d: dict[str, Any] = r.to_dict()
        w.writerow({k: "" if d[k] is None else d[k] for k in CSV_COLUMNS})
