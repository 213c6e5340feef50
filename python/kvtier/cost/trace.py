"""A request trace as the cost models see it: per-request lengths, times and chained prefix-block ids.

::

    request r   t=timestamps[r]  input_tokens[r]  output_tokens[r]  session / tenant
                blocks offsets[r] .. offsets[r+1]-1 of block_ids       one id per block of
                [ id(b0) | id(b0 b1) | id(b0 b1 b2) | ... ]            block_tokens tokens

Each id names its block *and every block before it* (a chained prefix id, as Mooncake's
``hash_ids``), so two requests share a cached prefix of k blocks exactly when their first k ids are
equal. The last block of a request may be partial (Mooncake: ``ceil(input/512)`` ids); a cached prefix
of ``k`` blocks covers ``min(k * block_tokens, input_tokens)`` tokens.

Traces read by ``kvtier analyze``'s parsers (:func:`kvtier.analytics.logs.read_log`) convert with
:meth:`CostTrace.from_request_log`: chained ids are kept; per-block hashes (Bailian) and token ids
are turned into chained ids exactly (equal ids mean equal prefixes, with no hash collisions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kvtier.config import DEFAULT_BLOCK_SIZE
from kvtier.errors import InvalidArgumentError

__all__ = ["CostTrace", "chain_prefix_ids", "read_trace"]


def chain_prefix_ids(offsets: npt.NDArray[np.uint64], content: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """Chained prefix ids from per-block content ids, exactly.

    Parameters
    ----------
    offsets
        ``uint64[n + 1]``: request ``r`` holds blocks ``offsets[r] .. offsets[r+1]-1``.
    content
        ``[offsets[-1]]`` integers: one id per block's *content* (equal blocks, equal ids).

    Returns
    -------
    ``uint64[offsets[-1]]``: dense ids, equal exactly when the whole prefix up to that block is equal.
    Numpy work per block position (one ``np.unique`` per depth), no Python per block.
    """
    total = int(offsets[-1])
    out = np.zeros(total, dtype=np.uint64)
    if total == 0:
        return out
    lengths: npt.NDArray[np.int64] = np.diff(offsets.astype(np.int64)).astype(np.int64)
    _, dense = np.unique(content, return_inverse=True)
    dense = dense.ravel().astype(np.uint64)
    starts = offsets[:-1].astype(np.int64)
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    order = np.argsort(pos, kind="stable")
    bounds = np.searchsorted(pos[order], np.arange(int(lengths.max()) + 1), side="left")
    next_id = 1
    for depth in range(int(lengths.max())):
        idx = order[bounds[depth] : bounds[depth + 1]]
        parent = out[idx - 1] if depth else np.zeros(idx.shape[0], dtype=np.uint64)
        key = (parent << np.uint64(32)) | dense[idx]
        _, inv = np.unique(key, return_inverse=True)
        inv = inv.ravel()
        out[idx] = inv.astype(np.uint64) + np.uint64(next_id)
        next_id += int(inv.max()) + 1
    return out


@dataclass(frozen=True)
class CostTrace:
    """A trace for the cost models (see the module docstring for the layout).

    Attributes
    ----------
    timestamps
        ``float64[n]`` seconds, non-decreasing.
    input_tokens, output_tokens
        ``int64[n]`` tokens per request.
    offsets, block_ids
        ``uint64[n + 1]`` and ``uint64[offsets[-1]]`` chained prefix ids.
    block_tokens
        Tokens per block id.
    sessions, session_table
        Optional ``uint32[n]`` indices: the agent session (task) of each request.
    tenants, tenant_table
        Optional ``uint32[n]`` indices: tenants never share cached blocks.
    name, source_format
        Where the trace came from and its format (for reports).
    """

    timestamps: npt.NDArray[np.float64]
    input_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.uint64]
    block_ids: npt.NDArray[np.uint64]
    block_tokens: int
    sessions: npt.NDArray[np.uint32] | None = None
    session_table: tuple[str, ...] = ()
    tenants: npt.NDArray[np.uint32] | None = None
    tenant_table: tuple[str, ...] = ()
    name: str = ""
    source_format: str = ""

    def sum_by_task(self, per_request: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``float64[len(task_table)]``: a per-request quantity summed over each task (session)."""
        return np.bincount(self.task_index, weights=per_request, minlength=len(self.task_table)).astype(np.float64)

    def __post_init__(self) -> None:
        n = self.num_requests
        if n < 1:
            raise InvalidArgumentError("a cost trace needs at least one request")
        if isinstance(self.block_tokens, bool) or not isinstance(self.block_tokens, int) or self.block_tokens < 1:
            raise InvalidArgumentError(f"block_tokens must be an int >= 1, got {self.block_tokens!r}")
        for name in ("timestamps", "input_tokens", "output_tokens"):
            a = getattr(self, name)
            if a.shape != (n,):
                raise InvalidArgumentError(f"{name} must have shape ({n},), got {a.shape}")
        if not np.isfinite(self.timestamps).all():
            raise InvalidArgumentError("timestamps must be finite seconds")
        if n > 1 and (np.diff(self.timestamps) < 0).any():
            raise InvalidArgumentError("timestamps must be non-decreasing (sort the trace by arrival time)")
        if (self.input_tokens < 0).any() or (self.output_tokens < 0).any():
            raise InvalidArgumentError("token counts must be >= 0")
        if self.offsets[0] != 0 or (np.diff(self.offsets.astype(np.int64)) < 0).any():
            raise InvalidArgumentError("offsets must start at 0 and be non-decreasing")
        if self.block_ids.shape != (int(self.offsets[-1]),):
            raise InvalidArgumentError(f"block_ids must have shape ({int(self.offsets[-1])},), got {self.block_ids.shape}")
        r = _first_uncovered(self.offsets, self.input_tokens, self.block_tokens)
        if r is not None:
            raise InvalidArgumentError(f"request {r} {_uncovered(self.offsets, self.input_tokens, self.block_tokens, r)}")
        for name, idx, table in (("sessions", self.sessions, self.session_table), ("tenants", self.tenants, self.tenant_table)):
            if idx is None:
                continue
            if idx.shape != (n,):
                raise InvalidArgumentError(f"{name} must have shape ({n},), got {idx.shape}")
            if int(idx.max()) >= len(table):
                raise InvalidArgumentError(f"{name} indexes beyond its table of {len(table)} entries")

    # ----------------------------------------------------------------- shape
    @property
    def num_requests(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def blocks_per_request(self) -> npt.NDArray[np.int64]:
        out: npt.NDArray[np.int64] = np.diff(self.offsets.astype(np.int64)).astype(np.int64)
        return out

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last arrival."""
        return float(self.timestamps[-1] - self.timestamps[0])

    @property
    def has_sessions(self) -> bool:
        return self.sessions is not None

    @property
    def task_index(self) -> npt.NDArray[np.int64]:
        """``int64[n]``: the task of each request (its session, else the request itself)."""
        if self.sessions is not None:
            return self.sessions.astype(np.int64)
        return np.arange(self.num_requests, dtype=np.int64)

    @property
    def num_tasks(self) -> int:
        """Sessions that have requests (a trace without sessions: one task per request)."""
        if self.sessions is None:
            return self.num_requests
        return int(np.unique(self.sessions).shape[0])

    @property
    def task_table(self) -> tuple[str, ...]:
        if self.sessions is not None:
            return self.session_table
        return tuple(f"request-{i}" for i in range(self.num_requests))

    def tenant_of_task(self) -> npt.NDArray[np.int64]:
        """``int64[len(task_table)]``: the tenant of each task's first request (-1: no tenants)."""
        out = np.full(len(self.task_table), -1, dtype=np.int64)
        if self.tenants is not None:
            task = self.task_index
            first = np.unique(task, return_index=True)[1]
            out[task[first]] = self.tenants[first]
        return out

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_requests(
        cls,
        blocks: Sequence[Sequence[int]],
        timestamps: npt.ArrayLike,
        input_tokens: npt.ArrayLike,
        output_tokens: npt.ArrayLike | None = None,
        *,
        block_tokens: int,
        sessions: Sequence[str] | None = None,
        tenants: Sequence[str] | None = None,
        chained: bool = True,
        name: str = "",
    ) -> CostTrace:
        """From per-request lists of block ids (small traces, tests).

        ``chained=False``: the ids name block contents only; they are chained here.
        """
        lengths = [len(b) for b in blocks]
        offsets = np.zeros(len(lengths) + 1, dtype=np.uint64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.asarray([i for b in blocks for i in b], dtype=np.uint64)
        ids = flat if chained else chain_prefix_ids(offsets, flat)
        inp = np.asarray(input_tokens, dtype=np.int64)
        out = np.zeros_like(inp) if output_tokens is None else np.asarray(output_tokens, dtype=np.int64)
        sess, stab = _index(sessions)
        ten, ttab = _index(tenants)
        return cls(
            np.asarray(timestamps, dtype=np.float64), inp, out, offsets, ids, block_tokens, sess, stab, ten, ttab, name
        )

    @classmethod
    def from_request_log(cls, log: Any, *, block_size: int = DEFAULT_BLOCK_SIZE) -> CostTrace:
        """From a :class:`kvtier.analytics.logs.RequestLog` (any format ``kvtier analyze`` reads).

        ``block_size`` (tokens) cuts token logs into blocks; block logs keep their own block.
        """
        kind = log.kind
        if kind == "block_ids":
            bt, offsets, ids = int(log.block_tokens), log.offsets, log.data.astype(np.uint64, copy=False)
        elif kind == "block_hashes":
            bt, offsets = int(log.block_tokens), log.offsets
            ids = chain_prefix_ids(offsets, log.data)
        elif kind == "tokens":
            if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
                raise InvalidArgumentError(f"block_size must be an int >= 1, got {block_size!r}")
            bt = block_size
            lengths = np.diff(log.offsets.astype(np.int64))
            nblocks = lengths // bt
            offsets = np.zeros(lengths.shape[0] + 1, dtype=np.uint64)
            np.cumsum(nblocks, out=offsets[1:])
            # token index of every token of every full block, gathered in one step
            first = np.repeat(log.offsets[:-1].astype(np.int64), nblocks) + bt * (
                np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1].astype(np.int64), nblocks)
            )
            toks = np.ascontiguousarray(log.data[first[:, None] + np.arange(bt)], dtype=np.int32)
            rows = toks.view(np.dtype((np.void, 4 * bt))).ravel()
            content = np.unique(rows, return_inverse=True)[1].ravel()
            ids = chain_prefix_ids(offsets, content)
        else:
            raise InvalidArgumentError(f"unknown request-log kind {kind!r}")
        inp = np.asarray(log.input_tokens, dtype=np.int64)
        r = _first_uncovered(offsets, inp, bt)
        if r is not None and log.lines is not None:  # a malformed record: name its line
            from kvtier.analytics.formats import LogFormatError

            field = "input_length" if kind == "tokens" else "hash_ids"
            raise LogFormatError(str(log.path), int(log.lines[r]), field, _uncovered(offsets, inp, bt, r))
        return cls(
            np.asarray(log.timestamps, dtype=np.float64),
            inp,
            np.asarray(log.output_tokens, dtype=np.int64),
            offsets,
            ids,
            bt,
            log.sessions,
            tuple(log.session_table),
            log.tenants,
            tuple(log.tenant_table),
            str(log.path),
            str(log.format),
        )

    @classmethod
    def repeated_prompt(
        cls, *, tokens: int, requests: int, gap_s: float, block_tokens: int = 512, output_tokens: int = 0, session: str = "s0"
    ) -> CostTrace:
        """One session sending the same ``tokens``-token prompt ``requests`` times, ``gap_s`` apart."""
        nb = -(-tokens // block_tokens)
        return cls.from_requests(
            [list(range(1, nb + 1))] * requests,
            np.arange(requests, dtype=np.float64) * gap_s,
            [tokens] * requests,
            [output_tokens] * requests,
            block_tokens=block_tokens,
            sessions=[session] * requests,
        )


def _first_uncovered(
    offsets: npt.NDArray[np.uint64], input_tokens: npt.NDArray[np.int64], block_tokens: int
) -> int | None:
    """The first request with more blocks than its input tokens fill (the last block may be partial), or None."""
    blocks = np.diff(offsets.astype(np.int64))
    over = np.flatnonzero(blocks > -(-input_tokens // block_tokens))
    return int(over[0]) if over.size else None


def _uncovered(offsets: npt.NDArray[np.uint64], input_tokens: npt.NDArray[np.int64], block_tokens: int, r: int) -> str:
    blocks = int(offsets[r + 1]) - int(offsets[r])
    return f"has {blocks} blocks of {block_tokens} tokens but only {int(input_tokens[r])} input tokens"


def _index(names: Sequence[str] | None) -> tuple[npt.NDArray[np.uint32] | None, tuple[str, ...]]:
    if names is None:
        return None, ()
    table: dict[str, int] = {}
    idx = np.asarray([table.setdefault(str(s), len(table)) for s in names], dtype=np.uint32)
    return idx, tuple(table)


def read_trace(path: str, *, fmt: str | None = None, tokenizer: str | None = None, block_size: int = DEFAULT_BLOCK_SIZE) -> CostTrace:
    """Reads a request log with ``kvtier analyze``'s parsers (Mooncake, Bailian, kvtier, OpenAI chat logs).

    Parameters
    ----------
    path
        JSON Lines file (``.gz`` too).
    fmt
        ``mooncake``, ``bailian``, ``kvtier`` or ``openai``; ``None`` detects it.
    tokenizer
        Path of a ``tokenizer.json`` for text and chat logs.
    block_size
        Tokens per block for token logs.
    """
    from kvtier.analytics.formats import FORMATS
    from kvtier.analytics.logs import read_log

    known = None
    if fmt is not None:
        known = next((f for f in FORMATS if f == fmt), None)
        if known is None:
            raise InvalidArgumentError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    log = read_log(path, fmt=known, tokenizer_path=tokenizer)
    return CostTrace.from_request_log(log, block_size=block_size)
