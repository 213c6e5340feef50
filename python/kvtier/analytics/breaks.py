"""Prefix breaks: where consecutive steps of a session stop sharing a prefix, and why.

An agent re-sends its whole history at every step, so step k's prompt should be a prefix of step
k+1's. When it is not, every cached block after the first difference is lost. For each session the
finder compares each request with the previous one (file order)::

    step k     [system prompt ..... | history ........ 12:00 | obs k ]
    step k+1   [system prompt ..... | history ........ 12:05 | obs k | obs k+1 ]
                                                         ^ first divergent token: a break
                                                           blocks lost = full blocks after it that
                                                           step k+1 could have hit (of the shorter prompt)

A request that only extends the previous one, or is a prefix of it (a retry of an earlier step), is
no break. Text logs are compared as text (so re-tokenization where a step ends is no break); token
logs token by token. Each break gets one cause, tried in this order:

=================  =====================================================================================
tools_reordered    the tool list differs only in order (chat logs with ``tools``)
tools_changed      the tool list differs otherwise (or tool-schema JSON around the break, in plain text)
timestamp          a date, time, weekday or epoch time spans the first difference
random_id          a UUID, long hex string or random-looking id spans it
whitespace         the texts agree after the difference once whitespace is ignored
truncated_history  the new prompt skips text the old one had (earlier turns dropped or summarised)
other              anything else (an edited earlier message, a changed system prompt)
=================  =====================================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from kvtier.analytics.formats import ChatTools

__all__ = ["CAUSES", "CAUSE_LABELS", "BreakExample", "BreakReport", "BreakFinder", "classify"]

CAUSES = ("tools_reordered", "tools_changed", "timestamp", "random_id", "whitespace", "truncated_history", "other")
CAUSE_LABELS = {
    "tools_reordered": "tool list reordered",
    "tools_changed": "tool list changed",
    "timestamp": "timestamp or date",
    "random_id": "UUID or random id",
    "whitespace": "whitespace change",
    "truncated_history": "truncated history",
    "other": "other edit",
}
_CONTEXT_CHARS = 48  # text shown (and classified) on each side of a break
_CONTEXT_TOKENS = 6  # tokens shown on each side
_PROBE = 32  # characters (or 8 tokens) of the new prompt searched for in the old one


@cache
def _patterns() -> dict[str, re.Pattern[str]]:
    months = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?"
    return {
        "timestamp": re.compile(
            "|".join(
                [
                    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?",
                    r"\d{4}/\d{1,2}/\d{1,2}",
                    r"\d{1,2}/\d{1,2}/\d{2,4}",
                    r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s?[AaPp]\.?[Mm]\.?)?",
                    rf"{months}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}",
                    rf"\d{{1,2}}\s+{months}\s+\d{{4}}",
                    r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day",
                    r"\b1[5-9]\d{8}(?:\d{3}|\.\d+)?\b",  # Unix time in s or ms (2017-2033)
                ]
            )
        ),
        "random_id": re.compile(
            "|".join(
                [
                    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
                    r"\b[0-9a-fA-F]{12,}\b",
                    r"\b(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{12,}\b",
                ]
            )
        ),
        "tool_schema": re.compile(r'"(?:parameters|input_schema|function)"\s*:'),
    }


def _spans(pattern: re.Pattern[str], text: str, pos: int) -> bool:
    """Whether a match of ``pattern`` in ``text`` covers character ``pos``."""
    return any(m.start() <= pos < m.end() for m in pattern.finditer(text))


def _strip_ws(text: str) -> str:
    return "".join(text.split())


def classify(
    prev_window: str,
    cur_window: str,
    offset: int,
    *,
    prev_tools: ChatTools | None = None,
    cur_tools: ChatTools | None = None,
    char_position: int | None = None,
    truncated: bool = False,
) -> str:
    """The cause of a break (one of :data:`CAUSES`).

    Parameters
    ----------
    prev_window, cur_window
        Text around the break in the earlier and the later prompt; both start at the same position
        of the shared prefix, and differ from ``offset`` on.
    prev_tools, cur_tools, char_position
        The tool lists of chat requests and the break's character position in the prompt.
    truncated
        Whether the later prompt continues with text that comes later in the earlier one.
    """
    if prev_tools is not None or cur_tools is not None:
        prev_canon = prev_tools.canonical if prev_tools else ()
        cur_canon = cur_tools.canonical if cur_tools else ()
        tools_end = max(prev_tools.end if prev_tools else 0, cur_tools.end if cur_tools else 0)
        if prev_canon != cur_canon and (char_position is None or char_position < tools_end):
            return "tools_reordered" if sorted(prev_canon) == sorted(cur_canon) else "tools_changed"
    pats = _patterns()
    if prev_tools is None and cur_tools is None:
        if pats["tool_schema"].search(prev_window) and pats["tool_schema"].search(cur_window):
            return "tools_changed"
    for cause in ("timestamp", "random_id"):
        if _spans(pats[cause], prev_window, offset) or _spans(pats[cause], cur_window, offset):
            return cause
    a, b = prev_window[offset:], cur_window[offset:]
    if (a[:1].isspace() or b[:1].isspace()) and a and b:
        sa, sb = _strip_ws(a), _strip_ws(b)
        k = min(len(sa), len(sb))
        if k >= 4 and sa[:k] == sb[:k]:
            return "whitespace"
    if truncated:
        return "truncated_history"
    return "other"


@dataclass(frozen=True)
class BreakExample:
    """One break, with what surrounds it.

    Attributes
    ----------
    session, line, prev_line
        The session, and the lines of the later and the earlier request.
    position
        Tokens the two prompts share (index of the first divergent token).
    prev_length
        Tokens of the earlier prompt.
    blocks_lost
        Full blocks after the break that the later request could have hit: ``min(len(earlier),
        len(later)) // block_size - position // block_size`` (at the finder's block size).
    cause
        One of :data:`CAUSES`.
    before, prev_after, cur_after
        Text just before the break, and what follows it in the earlier and the later prompt
        (token ids as text when the log has no text and no tokenizer was given).
    prev_tokens, cur_tokens
        Tokens around the break (decoded pieces, or ids), ``window_start`` being the index of the first.
    """

    session: str
    line: int
    prev_line: int
    position: int
    prev_length: int
    blocks_lost: int
    cause: str
    before: str
    prev_after: str
    cur_after: str
    prev_tokens: tuple[str, ...]
    cur_tokens: tuple[str, ...]
    window_start: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prev_tokens"], d["cur_tokens"] = list(self.prev_tokens), list(self.cur_tokens)
        return d


@dataclass(frozen=True)
class BreakReport:
    """Prefix breaks of a log, counted by cause.

    Attributes
    ----------
    block_size
        Tokens per block for ``blocks_lost``.
    sessions
        Sessions seen (with at least one request).
    steps_compared
        Requests that had a previous request in their session.
    breaks
        Of those, how many broke the prefix.
    blocks_lost
        Cached blocks the breaks cost, summed (see :attr:`BreakExample.blocks_lost`).
    by_cause, blocks_lost_by_cause
        The same per cause (every cause listed, zeros included).
    examples
        Up to a few breaks per cause, the earliest in the file.
    """

    block_size: int
    sessions: int
    steps_compared: int
    breaks: int
    blocks_lost: int
    by_cause: dict[str, int]
    blocks_lost_by_cause: dict[str, int]
    examples: tuple[BreakExample, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "block_size": self.block_size,
            "sessions": self.sessions,
            "steps_compared": self.steps_compared,
            "breaks": self.breaks,
            "blocks_lost": self.blocks_lost,
            "by_cause": dict(self.by_cause),
            "blocks_lost_by_cause": dict(self.blocks_lost_by_cause),
            "examples": [e.to_dict() for e in self.examples],
        }


def _common_prefix_str(a: str, b: str) -> int:
    """Length of the common prefix, in O(len) string compares done in C."""
    hi = min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    lo = 0
    hi -= 1
    while lo < hi:  # a[:lo] == b[:lo]; the answer is in [lo, hi]
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_prefix(a: npt.NDArray[np.int32], b: npt.NDArray[np.int32]) -> int:
    n = min(a.shape[0], b.shape[0])
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def _contains(hay: npt.NDArray[np.int32], needle: npt.NDArray[np.int32]) -> bool:
    k = needle.shape[0]
    if k == 0 or hay.shape[0] < k:
        return False
    windows = np.lib.stride_tricks.sliding_window_view(hay, k)
    return bool((windows == needle).all(axis=1).any())


class BreakFinder:
    """Compares each request with the previous one of its session (feed requests in file order).

    Parameters
    ----------
    block_size
        Tokens per block, to count the blocks each break loses.
    decode
        Token ids -> text (a tokenizer's ``decode``), to show and classify token logs; optional.
    examples_per_cause
        Breaks kept as examples for each cause.
    """

    def __init__(
        self, block_size: int, decode: Callable[[list[int]], str] | None = None, examples_per_cause: int = 3
    ) -> None:
        self.block_size = block_size
        self.decode = decode
        self.examples_per_cause = examples_per_cause
        self._last: dict[str, tuple[int, npt.NDArray[np.int32], str | None, ChatTools | None]] = {}
        self._steps = 0
        self._by_cause = dict.fromkeys(CAUSES, 0)
        self._lost = dict.fromkeys(CAUSES, 0)
        self._examples: list[BreakExample] = []

    def observe(
        self,
        session: str,
        line: int,
        tokens: npt.NDArray[np.int32],
        text: str | None = None,
        tools: ChatTools | None = None,
    ) -> None:
        """Records one request of ``session``; compares it with the session's previous request."""
        prev = self._last.get(session)
        self._last[session] = (line, tokens, text, tools)
        if prev is None:
            return
        self._steps += 1
        prev_line, ptok, ptext, ptools = prev
        if text is not None and ptext is not None:
            if text.startswith(ptext) or ptext.startswith(text):
                return
            p = _common_prefix(ptok, tokens)
            c = _common_prefix_str(ptext, text)
            lo = max(0, c - _CONTEXT_CHARS)
            prev_win, cur_win, off = ptext[lo : c + _CONTEXT_CHARS], text[lo : c + _CONTEXT_CHARS], c - lo
            probe = text[c : c + _PROBE]
            truncated = len(probe) > 0 and ptext.find(probe, c + 1) >= 0
            char_pos: int | None = c
        else:
            p = _common_prefix(ptok, tokens)
            if p >= min(ptok.shape[0], tokens.shape[0]):
                return
            truncated = _contains(ptok[p + 1 :], tokens[p : p + 8])
            char_pos = None
            if self.decode is not None:
                before = self.decode(ptok[max(0, p - 16) : p].tolist())
                prev_win = before + self.decode(ptok[p : p + 16].tolist())
                cur_win = before + self.decode(tokens[p : p + 16].tolist())
                off = len(before)
            else:
                prev_win = cur_win = ""
                off = 0
        bs = self.block_size
        n = min(ptok.shape[0], tokens.shape[0])
        lost = max(0, n // bs - p // bs)
        cause = classify(
            prev_win, cur_win, off, prev_tools=ptools, cur_tools=tools, char_position=char_pos, truncated=truncated
        )
        self._by_cause[cause] += 1
        self._lost[cause] += lost
        if sum(e.cause == cause for e in self._examples) < self.examples_per_cause:
            self._examples.append(
                self._example(session, line, prev_line, p, ptok, tokens, lost, cause, prev_win, cur_win, off)
            )

    def _pieces(self, toks: Sequence[int]) -> tuple[str, ...]:
        if self.decode is None:
            return tuple(str(t) for t in toks)
        decode = self.decode
        return tuple(decode([t]) for t in toks)

    def _example(
        self,
        session: str,
        line: int,
        prev_line: int,
        p: int,
        ptok: npt.NDArray[np.int32],
        tokens: npt.NDArray[np.int32],
        lost: int,
        cause: str,
        prev_win: str,
        cur_win: str,
        off: int,
    ) -> BreakExample:
        start = max(0, p - _CONTEXT_TOKENS)
        end = p + _CONTEXT_TOKENS
        if prev_win or cur_win:
            before, prev_after, cur_after = prev_win[:off], prev_win[off:], cur_win[off:]
        else:  # token ids only
            before = " ".join(map(str, ptok[start:p].tolist()))
            prev_after = " ".join(map(str, ptok[p:end].tolist()))
            cur_after = " ".join(map(str, tokens[p:end].tolist()))
        return BreakExample(
            session=session,
            line=line,
            prev_line=prev_line,
            position=p,
            prev_length=int(ptok.shape[0]),
            blocks_lost=lost,
            cause=cause,
            before=before,
            prev_after=prev_after,
            cur_after=cur_after,
            prev_tokens=self._pieces(ptok[start:end].tolist()),
            cur_tokens=self._pieces(tokens[start:end].tolist()),
            window_start=start,
        )

    def report(self) -> BreakReport:
        return BreakReport(
            block_size=self.block_size,
            sessions=len(self._last),
            steps_compared=self._steps,
            breaks=sum(self._by_cause.values()),
            blocks_lost=sum(self._lost.values()),
            by_cause=dict(self._by_cause),
            blocks_lost_by_cause=dict(self._lost),
            examples=tuple(self._examples),
        )
