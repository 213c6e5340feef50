"""``kvtier analyze`` as a function: read a log, sweep configurations, compare with the paper.

The CLI (``kvtier.cli``) parses arguments into :class:`AnalyzeOptions` and renders the
:class:`Analysis` this module returns (``kvtier.analytics.output`` and ``.report``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvtier import __version__
from kvtier.analytics.formats import Format
from kvtier.analytics.logs import RequestLog, read_log
from kvtier.analytics.paper import CITATION, PaperRow, PaperTrace, compare, paper_trace
from kvtier.analytics.sweep import SweepResult, build_configs, run_sweep
from kvtier.config import Policy
from kvtier.cost.catalog import ModelSpec, load_catalog
from kvtier.errors import InvalidArgumentError
from kvtier.units import Amount

__all__ = ["AnalyzeOptions", "Analysis", "analyze", "SCHEMA"]

SCHEMA = "kvtier.analyze/1"
DEFAULT_TOKEN_BLOCK_SIZE = 16


@dataclass(frozen=True)
class AnalyzeOptions:
    """What to analyse and how (the CLI's arguments, parsed).

    Attributes
    ----------
    path
        The request log.
    fmt
        Its format (``None``: detect).
    tokenizer
        A ``tokenizer.json`` for text and chat logs.
    capacities
        Capacities: blocks (an int), or an :class:`kvtier.units.Amount` of blocks, tokens or bytes (bytes need
        ``model`` or ``kv_bytes_per_token``), turned into whole blocks of each block size; ``None``: unlimited.
    policies, ttls
        Policies; maximum idle seconds for the ``ttl`` policy.
    block_sizes
        Block sizes (tokens) for token logs; empty: 16, or the log's own block for hash-id logs.
    model, kv_bytes_per_token
        A model of the cost catalogue (``kvtier cost --list``) or KV bytes per token, for GB-hours.
    timeline_points
        Time windows for the residency-over-time plot (0: one replay call per configuration).
    progress
        Progress bars on a terminal.
    break_examples
        Prefix-break examples kept per cause.
    compare_paper
        Compare with the Mooncake FAST'25 figures when the log is one of its traces.
    """

    path: str
    fmt: Format | None = None
    tokenizer: str | None = None
    capacities: Sequence[Amount | int | None] = (None,)
    policies: Sequence[Policy] = ("lru",)
    ttls: Sequence[float] = ()
    block_sizes: Sequence[int] = ()
    model: str | None = None
    kv_bytes_per_token: int | None = None
    timeline_points: int = 0
    progress: bool = False
    break_examples: int = 3
    compare_paper: bool = True


@dataclass(frozen=True)
class Analysis:
    """Everything ``kvtier analyze`` reports.

    Attributes
    ----------
    log
        The parsed log.
    results
        One result per configuration, in sweep order.
    model
        The catalogue model used for GB-hours, if any.
    kv_bytes_per_token
        KV bytes per token used for GB-hours (``None``: no GB-hours).
    paper, paper_rows, paper_runs
        The published trace this log is, its figures next to ours, and the LRU replays behind them.
    parse_s, sweep_s
        Wall seconds spent reading the log and replaying.
    """

    log: RequestLog
    results: list[SweepResult]
    model: ModelSpec | None
    kv_bytes_per_token: int | None
    paper: PaperTrace | None = None
    paper_rows: list[PaperRow] = field(default_factory=list)
    paper_runs: dict[int | None, SweepResult] = field(default_factory=dict)
    parse_s: float = 0.0
    sweep_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (schema in docs/analyze.md)."""
        log = self.log
        return {
            "schema": SCHEMA,
            "kvtier_version": __version__,
            "input": {
                "path": log.path,
                "format": log.format,
                "sha256": log.sha256,
                "content": log.kind,
                "block_tokens": log.block_tokens,
                "requests": log.num_requests,
                "sessions": len(log.session_table),
                "tenants": len(log.tenant_table),
                "input_tokens": int(log.input_tokens.sum()),
                "output_tokens": int(log.output_tokens.sum()),
                "duration_s": log.duration_s,
                "reordered_by_time": log.reordered,
            },
            "model": None
            if self.kv_bytes_per_token is None
            else {"name": self.model.name if self.model else None, "kv_bytes_per_token": self.kv_bytes_per_token},
            "results": [r.to_dict() for r in self.results],
            "breaks": None if log.breaks is None else log.breaks.to_dict(),
            "paper": None
            if self.paper is None
            else {
                "trace": self.paper.name,
                "citation": CITATION,
                "rows": [r.to_dict() for r in self.paper_rows],
            },
            "timing": {"parse_s": self.parse_s, "sweep_s": self.sweep_s},
        }


def analyze(opts: AnalyzeOptions) -> Analysis:
    """Reads ``opts.path``, runs the sweep and, for a published trace, the paper comparison.

    Raises
    ------
    kvtier.analytics.formats.LogFormatError
        A malformed record (names the line and the field).
    kvtier.InvalidArgumentError
        Inconsistent options (``--block-size`` on a hash-id log, ``ttl`` without ``--ttl``, ...).
    OSError
        The log cannot be read.
    """
    model = None
    kvbpt = opts.kv_bytes_per_token
    if opts.model is not None:
        model = load_catalog().model(opts.model)
        if kvbpt is not None and kvbpt != model.kv_bytes_per_token:
            raise InvalidArgumentError(
                f"--model {model.name} has {model.kv_bytes_per_token} KV bytes per token, "
                f"--kv-bytes-per-token says {kvbpt}: give one"
            )
        kvbpt = model.kv_bytes_per_token
    if kvbpt is not None and kvbpt < 1:
        raise InvalidArgumentError(f"--kv-bytes-per-token must be >= 1, got {kvbpt}")
    # Validate what can be before reading a large file: the grid, and bytes without KV bytes per token.
    build_configs([None], opts.policies, opts.ttls)
    for cap in opts.capacities:
        if isinstance(cap, Amount) and cap.unit == "bytes" and kvbpt is None:
            cap.blocks(DEFAULT_TOKEN_BLOCK_SIZE, None)  # raises, saying what to give
    t0 = time.perf_counter()
    break_bs = opts.block_sizes[0] if opts.block_sizes else DEFAULT_TOKEN_BLOCK_SIZE
    log = read_log(
        opts.path,
        fmt=opts.fmt,
        tokenizer_path=opts.tokenizer,
        progress=opts.progress,
        break_block_size=break_bs,
        break_examples=opts.break_examples,
    )
    parse_s = time.perf_counter() - t0
    if log.block_tokens is not None:
        if opts.block_sizes and list(opts.block_sizes) != [log.block_tokens]:
            raise InvalidArgumentError(
                f"--block-size needs token ids or text; {log.path} has hash ids of {log.block_tokens}-token blocks"
            )
        sizes: list[int | None] = [None]
    else:
        sizes = list(opts.block_sizes) or [DEFAULT_TOKEN_BLOCK_SIZE]
    configs = []
    for bs in sizes:
        block_tokens = bs if bs is not None else log.block_tokens
        assert block_tokens is not None
        caps = [c.blocks(block_tokens, kvbpt) if isinstance(c, Amount) else c for c in opts.capacities]
        configs += build_configs(caps, opts.policies, opts.ttls, [bs])
    t1 = time.perf_counter()
    results = run_sweep(
        log, configs, kv_bytes_per_token=kvbpt, timeline_points=opts.timeline_points, progress=opts.progress
    )
    sweep_s = time.perf_counter() - t1
    paper = paper_trace(log) if opts.compare_paper else None
    rows: list[PaperRow] = []
    runs: dict[int | None, SweepResult] = {}
    if paper is not None:
        rows, runs = compare(log, paper)
    return Analysis(log, results, model, kvbpt, paper, rows, runs, parse_s, sweep_s)
