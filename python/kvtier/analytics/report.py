"""``--report DIR``: PNG plots (matplotlib, Agg) and one self-contained HTML page (jinja2).

Files written::

    DIR/hit_ratio_vs_capacity.png   hit ratio against capacity, one line per policy / TTL / block size
    DIR/residency_over_time.png     resident KV (blocks, or GB with a model) and hit ratio per time window
    DIR/paper_figure9.png           (Mooncake traces only) kvtier's LRU curve on the paper's Figure 9 points
    DIR/prefix_breaks.png           (logs with breaks) breaks and blocks lost per cause
    DIR/report.html                 every table, and the plots embedded as base64 data URIs

The HTML page loads nothing from the network (no scripts, fonts or style sheets from elsewhere).
"""

from __future__ import annotations

import base64
import io
import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from kvtier import __version__
from kvtier.analytics.analyze import Analysis
from kvtier.analytics.breaks import CAUSE_LABELS
from kvtier.analytics.output import fmt_capacity, fmt_sessions, paper_cells, result_table
from kvtier.analytics.paper import CITATION
from kvtier.analytics.sweep import SweepResult, format_duration

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["write_report", "PLOT_FILES"]

PLOT_FILES = ("hit_ratio_vs_capacity.png", "residency_over_time.png", "paper_figure9.png", "prefix_breaks.png")


def _figure(width: float = 7.5, height: float = 4.2) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig: Figure, path: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return data


def _group_key(r: SweepResult) -> tuple[str, float | None, int]:
    return (r.config.policy, r.config.ttl_s, r.block_tokens)


_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v")


def _style(i: int) -> dict[str, Any]:
    """Colour, line style and marker of the i-th line (lines that coincide stay visible)."""
    return {"color": f"C{i % 10}", "linestyle": _STYLES[i % len(_STYLES)], "marker": _MARKERS[i % len(_MARKERS)]}


def _label(key: tuple[str, float | None, int], sizes: int) -> str:
    policy, ttl, bs = key
    text = policy.upper() + (f" {format_duration(ttl)}" if ttl is not None else "")
    return text + (f", block {bs}" if sizes > 1 else "")


def _plot_capacity(results: list[SweepResult], path: str) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    groups: dict[tuple[str, float | None, int], list[SweepResult]] = defaultdict(list)
    for r in results:
        groups[_group_key(r)].append(r)
    sizes = len({k[2] for k in groups})
    finite = [r.config.capacity_blocks for r in results if r.config.capacity_blocks is not None]
    for i, (key, rs) in enumerate(groups.items()):
        style = _style(i)
        pts = sorted((r.config.capacity_blocks, r.hit_ratio) for r in rs if r.config.capacity_blocks is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=_label(key, sizes), markersize=8 - i % 4, **style)
        for r in rs:
            if r.config.capacity_blocks is None:
                ax.axhline(
                    r.hit_ratio,
                    color=style["color"],
                    linestyle=":",
                    linewidth=1,
                    label=f"{_label(key, sizes)}, unlimited",
                )
    if finite:
        ax.set_xscale("log")
        lo, hi = min(finite), max(finite)
        if lo == hi:
            ax.set_xlim(lo / 2, hi * 2)
    else:
        ax.set_xticks([])
    ax.set_xlabel("cache capacity (blocks)")
    ax.set_ylabel("hit ratio (hit blocks / total blocks)")
    ax.set_ylim(0, max(0.05, max((r.hit_ratio for r in results), default=0) * 1.15))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Hit ratio against capacity")
    return _png(fig, path)


def _plot_residency(a: Analysis, path: str) -> bytes | None:
    with_tl = [r for r in a.results if r.timeline is not None and r.timeline.t.size]
    if not with_tl:
        return None
    # One line per policy / TTL / block size: its largest capacity (unlimited first), to keep the plot readable.
    best: dict[tuple[str, float | None, int], SweepResult] = {}
    for r in with_tl:
        k = _group_key(r)
        cap = r.config.capacity_blocks
        cur = best.get(k)
        if cur is None or cap is None or (cur.config.capacity_blocks is not None and cap > cur.config.capacity_blocks):
            best[k] = r
    sizes = len({k[2] for k in best})
    fig = _figure(7.5, 6.0)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    t0 = float(a.log.timestamps[0])
    gb = a.kv_bytes_per_token is not None
    for i, (key, r) in enumerate(best.items()):
        tl = r.timeline
        assert tl is not None
        minutes = (tl.t - t0) / 60.0
        label = f"{_label(key, sizes)}, capacity {fmt_capacity(r.config.capacity_blocks)}"
        if gb:
            resident = tl.resident_blocks * (r.block_tokens * (a.kv_bytes_per_token or 0)) / 1e9
        else:
            resident = tl.resident_blocks.astype(float)
        style = _style(i) | {"marker": None}
        ax1.plot(minutes, resident, label=label, **style)
        ratio = tl.hit_blocks / tl.total_blocks.clip(min=1)
        ax2.plot(minutes, ratio, label=label, **style)
    ax1.set_ylabel("resident KV (GB)" if gb else "resident blocks")
    ax1.set_title("Residency over time")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize="small")
    ax2.set_ylabel("hit ratio in window")
    ax2.set_xlabel("minutes since the first request")
    ax2.set_ylim(0, 1)
    ax2.grid(True, alpha=0.3)
    return _png(fig, path)


def _plot_paper(a: Analysis, path: str) -> bytes | None:
    if a.paper is None or not a.paper_runs:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    pts = sorted((k, r.token_hit_ratio) for k, r in a.paper_runs.items() if k is not None)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="kvtier LRU (hit tokens / input tokens)")
    ax.plot(
        [p[0] for p in a.paper.figure9],
        [p[1] for p in a.paper.figure9],
        marker="s",
        linestyle="--",
        label="paper Figure 9 (read off the plot)",
    )
    unlimited = a.paper_runs.get(None)
    if unlimited is not None:
        ax.axhline(unlimited.token_hit_ratio, color="C0", linestyle=":", label="kvtier, unlimited")
    ax.axhline(a.paper.cache_ratio, color="C1", linestyle=":", label="paper Table 2 cache ratio")
    ax.set_xscale("log")
    ax.set_xlabel("cache capacity (tokens; 512-token blocks)")
    ax.set_ylabel("prefix cache hit rate")
    top = max([a.paper.cache_ratio, *(p[1] for p in pts), *(p[1] for p in a.paper.figure9)])
    ax.set_ylim(0, min(1.0, top * 1.25))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"Mooncake FAST'25 {a.paper.name} trace: kvtier vs the paper")
    return _png(fig, path)


def _plot_breaks(a: Analysis, path: str) -> bytes | None:
    b = a.log.breaks
    if b is None or not b.breaks:
        return None
    causes = [c for c, n in b.by_cause.items() if n]
    fig = _figure(7.5, 1.2 + 0.45 * len(causes))
    ax = fig.add_subplot()
    ax.barh([CAUSE_LABELS[c] for c in causes], [b.blocks_lost_by_cause[c] for c in causes], color="C3")
    for y, c in enumerate(causes):
        ax.text(
            b.blocks_lost_by_cause[c],
            y,
            f"  {b.by_cause[c]} break{'s' if b.by_cause[c] != 1 else ''}",
            va="center",
            fontsize="small",
        )
    ax.invert_yaxis()
    ax.set_xlabel(f"cached blocks lost ({b.block_size}-token blocks)")
    ax.set_title("Prefix breaks by cause")
    return _png(fig, path)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>kvtier analyze: {{ name }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.6em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f0f0f0; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.92em; }
pre { background: #f7f7f7; padding: 0.4em; white-space: pre-wrap; word-break: break-all; margin: 0; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0 1.5em; }
.note { color: #555; font-size: 0.92em; }
</style>
</head>
<body>
<h1>kvtier analyze: {{ name }}</h1>
<p class="note">kvtier {{ version }}. Hit ratio = hit blocks / total blocks; token hit ratio = hit tokens / input tokens,
where a request's hit tokens are min(hit blocks x block tokens, input length).</p>

<h2>Input</h2>
<table id="input">
{% for k, v in summary %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>
{% endfor %}</table>

<h2>Results</h2>
<table id="results">
<tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for c in row %}<td class="{{ 'n' if loop.index > 3 else '' }}">{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table>

<h2>Plots</h2>
{% for title, uri in plots %}<figure><img src="{{ uri }}" alt="{{ title }}"><figcaption>{{ title }}</figcaption></figure>
{% endfor %}

{% if paper_rows %}
<h2>Compared with the paper</h2>
<p class="note">{{ citation }}. kvtier replays the same trace with LRU; Figure 9 capacities are converted at 512
tokens per block. Figure 9 values were read off the published plot.</p>
<table id="paper">
<tr><th>source</th><th>quantity</th><th>capacity (tokens)</th><th>paper</th><th>kvtier (tokens)</th><th>kvtier (blocks)</th><th>difference</th></tr>
{% for r in paper_rows %}<tr>{% for c in r %}<td class="{{ 'n' if loop.index > 2 else '' }}">{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endif %}

{% if breaks %}
<h2>Prefix breaks</h2>
<p>{{ breaks.breaks }} of {{ breaks.steps_compared }} steps in {{ breaks.sessions }} sessions did not extend the previous
step's prompt, losing {{ breaks.blocks_lost }} cached blocks of {{ breaks.block_size }} tokens.</p>
<table id="breaks">
<tr><th>cause</th><th>breaks</th><th>blocks lost</th></tr>
{% for label, n, lost in break_rows %}<tr><td>{{ label }}</td><td class="n">{{ n }}</td><td class="n">{{ lost }}</td></tr>
{% endfor %}</table>
{% if examples %}
<table id="break-examples">
<tr><th>session</th><th>line</th><th>cause</th><th>token</th><th>blocks lost</th><th>before the break</th><th>earlier step</th><th>this step</th></tr>
{% for e in examples %}<tr><td>{{ e.session }}</td><td class="n">{{ e.line }} (vs {{ e.prev_line }})</td><td>{{ labels[e.cause] }}</td>
<td class="n">{{ e.position }}</td><td class="n">{{ e.blocks_lost }}</td><td><pre>{{ e.before[-80:] }}</pre></td>
<td><pre>{{ e.prev_after }}</pre></td><td><pre>{{ e.cur_after }}</pre></td></tr>
{% endfor %}</table>
{% endif %}
{% endif %}
</body>
</html>
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


REPORT_PACKAGES = ("matplotlib", "jinja2")  # the `analytics` extra (tokenizers is for --tokenizer)


def missing_packages() -> list[str]:
    """The packages that ``write_report`` needs and that cannot be imported here."""
    import importlib

    missing = []
    for name in REPORT_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def write_report(a: Analysis, directory: str) -> list[str]:
    """Writes the plots and ``report.html`` into ``directory`` (created if missing); returns the paths."""
    import jinja2

    os.makedirs(directory, exist_ok=True)
    written: list[str] = []
    plots: list[tuple[str, str]] = []
    makers: list[tuple[str, str, Any]] = [
        ("Hit ratio against capacity", PLOT_FILES[0], lambda p: _plot_capacity(a.results, p)),
        ("Residency and hit ratio over time", PLOT_FILES[1], lambda p: _plot_residency(a, p)),
        ("kvtier against the paper's Figure 9", PLOT_FILES[2], lambda p: _plot_paper(a, p)),
        ("Prefix breaks by cause", PLOT_FILES[3], lambda p: _plot_breaks(a, p)),
    ]
    for title, name, make in makers:
        path = os.path.join(directory, name)
        png = make(path)
        if png is not None:
            written.append(path)
            plots.append((title, _data_uri(png)))
    log = a.log
    summary = [
        ("file", log.path),
        ("format", log.format),
        ("SHA-256", log.sha256),
        ("requests", f"{log.num_requests:,}"),
        ("sessions", fmt_sessions(log)),
        ("input tokens", f"{int(log.input_tokens.sum()):,}"),
        ("output tokens", f"{int(log.output_tokens.sum()):,}"),
        ("time span", f"{log.duration_s / 60:.1f} min"),
        (
            "blocks",
            f"{log.block_tokens}-token blocks (fixed by the log)"
            if log.block_tokens
            else "token ids, cut into blocks per configuration",
        ),
    ]
    if a.kv_bytes_per_token is not None:
        summary.append(("KV bytes per token", f"{a.kv_bytes_per_token:,}" + (f" ({a.model.name})" if a.model else "")))
    header, rows = result_table(a.results)
    paper_rows = [paper_cells(r) for r in a.paper_rows]
    b = log.breaks
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(_TEMPLATE).render(
        name=os.path.basename(log.path),
        version=__version__,
        summary=summary,
        header=header,
        rows=rows,
        plots=plots,
        paper_rows=paper_rows,
        citation=CITATION,
        breaks=b if b is not None and b.steps_compared else None,
        break_rows=[]
        if b is None
        else [(CAUSE_LABELS[c], n, b.blocks_lost_by_cause[c]) for c, n in b.by_cause.items() if n],
        examples=[] if b is None else list(b.examples),
        labels=CAUSE_LABELS,
    )
    page = os.path.join(directory, "report.html")
    with open(page, "w", encoding="utf-8") as f:
        f.write(html)
    written.append(page)
    return written
