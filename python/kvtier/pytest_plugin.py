"""pytest plug-in: gate a prompt's prefix stability, cache hit ratio, cost and residency in CI.

Installed with kvtier (entry point ``pytest11``: ``kvtier = kvtier.pytest_plugin``; ``-p no:kvtier`` turns it
off). A test records each step's prompt; the plug-in replays the steps, as they come, through a metadata-only
:class:`kvtier.Store` with the engine's block size and eviction policy, and checks what a prompt cache would do::

    def test_agent_keeps_its_prefix(prefix_cache):
        for step in range(8):
            prefix_cache.record(build_prompt(step), session="agent")     # text or token ids
        prefix_cache.assert_prefix_stable(2048)      # no step changes any of the first 2048 tokens
        prefix_cache.assert_hit_ratio(0.8)           # cached input tokens / input tokens
        prefix_cache.assert_cost(provider="anthropic-5m", model="claude-sonnet-4.5", max_usd=0.05)
        prefix_cache.assert_residency(0.01, model="llama-3.1-8b")   # KV GB-hours

Definitions:

- *step time*: ``record(..., at=seconds)``, else the previous step's time plus ``step_seconds`` (default 30;
  the first step is at 0). The store, the cost replay and the residency integral all run on this clock.
- *hit ratio*: prompt tokens found cached when the step arrived / prompt tokens, over the steps (only full
  blocks are cached; a session's first step hits only what other sessions left). It is the cached-input share
  a provider bills.
- *prefix break*: a step whose prompt is not an extension of the previous step of its session (nor a shorter
  retry of it); found and classified by :class:`kvtier.analytics.breaks.BreakFinder`, as in ``kvtier analyze``.
- *cost*: the steps as a trace priced by :func:`kvtier.cost.providers.price_provider`, as ``kvtier cost`` does.
- *residency*: :func:`kvtier.cost.ledger.ledger_from_trace` at the model's KV bytes per token, up to the last
  step (plus the TTL with policy ``ttl``), as ``kvtier cost``'s ledger.

Settings come from the command line (``--kvtier-block-size``, ``--kvtier-policy``, ``--kvtier-ttl``,
``--kvtier-capacity``, ``--kvtier-step-seconds``, ``--kvtier-model``, ``--kvtier-tokenizer``), and a test's
``@pytest.mark.kvtier(...)`` overrides them. The marker's ``min_hit_ratio`` and ``min_prefix_tokens`` run the
same checks after the test body. With pytest-benchmark, a test that also uses ``benchmark`` gets the figures in
``benchmark.extra_info["kvtier"]``; ``--kvtier-report PATH`` writes every test's figures as JSON.

This module imports only pytest and the standard library at load time (it loads in every pytest run once
kvtier is installed); the store, analytics and cost code are imported when a test uses the fixture.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from kvtier.analytics.breaks import BreakExample, BreakFinder
    from kvtier.config import StoreConfig
    from kvtier.cost.providers import ProviderCost, Writes
    from kvtier.cost.trace import CostTrace
    from kvtier.store import Store

__all__ = ["PrefixCache", "Settings", "Step"]

DEFAULT_SESSION = "default"
_MARKER = "kvtier"
_CHECK_ARGS = ("min_hit_ratio", "min_prefix_tokens")
_REPORT_KEY = pytest.StashKey[list[dict[str, Any]]]()
_SHOWN_STEPS = 12  # steps listed in a hit-ratio failure
_SHOWN_BREAKS = 3  # further breaks summarised after the first


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """How the steps are replayed: the engine's cache, as the store sees it.

    Attributes
    ----------
    block_size
        Tokens per cached block (must match the engine's).
    policy, ttl_s
        Eviction policy (``lru``, ``lfu``, ``ttl``) and, for ``ttl``, the maximum idle seconds.
    capacity_blocks
        Blocks the cache holds (``None``: unlimited).
    step_seconds
        Time between steps recorded without ``at=``.
    model
        Catalogued model whose KV bytes per token size :meth:`PrefixCache.assert_residency` (optional).
    """

    block_size: int = 16
    policy: str = "lru"
    ttl_s: float | None = None
    capacity_blocks: int | None = None
    step_seconds: float = 30.0
    model: str | None = None

    def store_config(self, block_bytes: int | None = None) -> StoreConfig:
        """The metadata-only replay store, at ``block_bytes`` per block (default: one per token, so that its
        residency counts tokens; :meth:`PrefixCache.assert_residency` prices it per model)."""
        from kvtier.config import StoreConfig

        s = self.step_seconds
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < math.inf:
            raise _invalid(f"step_seconds must be a finite number of seconds >= 0, got {s!r}")
        if self.model is not None and not isinstance(self.model, str):
            raise _invalid(f"model must be a model name (str), got {self.model!r}")
        return StoreConfig.for_blocks(
            self.capacity_blocks,
            block_size=self.block_size,
            block_bytes=self.block_size if block_bytes is None else block_bytes,
            policy=self.policy,  # type: ignore[arg-type]
            ttl_s=self.ttl_s,
        )

    def describe(self) -> str:
        cap = "unlimited capacity" if self.capacity_blocks is None else f"{self.capacity_blocks:,} blocks"
        ttl = f" {self.ttl_s:g} s" if self.ttl_s is not None else ""
        return f"block size {self.block_size}, {self.policy}{ttl}, {cap}"


def _invalid(message: str) -> Exception:
    from kvtier.errors import InvalidArgumentError

    return InvalidArgumentError(message)


def _arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` that turns kvtier's validation errors into argparse's usage errors."""

    def convert(text: str) -> Any:
        from kvtier.errors import KvtierError

        try:
            return parse(text)
        except KvtierError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def _one_capacity(text: str) -> int | None:
    from kvtier.analytics.sweep import parse_capacities

    values = parse_capacities(text)
    if len(values) != 1:
        raise _invalid(f"expected one capacity in blocks (e.g. 10k or inf), got {text!r}")
    return values[0]


def _one_duration(text: str) -> float:
    from kvtier.analytics.sweep import parse_durations

    values = parse_durations(text)
    if len(values) != 1:
        raise _invalid(f"expected one duration (e.g. 300, 5m, 1h), got {text!r}")
    return values[0]


def _block_size(text: str) -> int:
    from kvtier.analytics.sweep import parse_ints

    values = parse_ints(text, "--kvtier-block-size")
    if len(values) != 1:
        raise _invalid(f"--kvtier-block-size: expected one integer, got {text!r}")
    return values[0]


def _step_seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0 <= v < math.inf:
        raise _invalid(f"--kvtier-step-seconds: expected seconds >= 0, got {text!r}")
    return v


def _settings_from_options(config: pytest.Config) -> Settings:
    return Settings(
        block_size=config.getoption("kvtier_block_size"),
        policy=config.getoption("kvtier_policy"),
        ttl_s=config.getoption("kvtier_ttl"),
        capacity_blocks=config.getoption("kvtier_capacity"),
        step_seconds=config.getoption("kvtier_step_seconds"),
        model=config.getoption("kvtier_model"),
    )


def _settings_for(item: pytest.Item) -> tuple[Settings, dict[str, Any]]:
    """The item's settings (options, then its marker's overrides) and its marker's checks."""
    __tracebackhide__ = True
    settings = _settings_from_options(item.config)
    marker = item.get_closest_marker(_MARKER)
    if marker is None:
        return settings, {}
    if marker.args:
        raise _invalid(f"@pytest.mark.kvtier takes keyword arguments only, got {marker.args!r}")
    known = [f.name for f in fields(Settings)]
    unknown = sorted(set(marker.kwargs) - set(known) - set(_CHECK_ARGS))
    if unknown:
        raise _invalid(
            f"@pytest.mark.kvtier got unknown argument(s) {', '.join(unknown)}; "
            f"known: {', '.join(_CHECK_ARGS + tuple(known))}"
        )
    checks = {k: v for k, v in marker.kwargs.items() if k in _CHECK_ARGS}
    settings = replace(settings, **{k: v for k, v in marker.kwargs.items() if k in known})
    if settings.policy == "ttl" and settings.ttl_s is None:
        raise _invalid("@pytest.mark.kvtier(policy='ttl') needs ttl_s= (or --kvtier-ttl)")
    ratio = checks.get("min_hit_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1):
        raise _invalid(f"@pytest.mark.kvtier: min_hit_ratio must be a number in [0, 1], got {ratio!r}")
    tokens = checks.get("min_prefix_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise _invalid(f"@pytest.mark.kvtier: min_prefix_tokens must be an int >= 1, got {tokens!r}")
    return settings, checks


# ------------------------------------------------------------------------------------------- recordings
@dataclass(frozen=True)
class Step:
    """One recorded prompt and what the cache did with it.

    Attributes
    ----------
    index
        Recording number within the test, from 0.
    session, step
        The session and the step's number in it, from 1.
    at
        Seconds on the test's clock.
    input_tokens, hit_tokens, output_tokens
        Prompt tokens, those found cached when the step arrived, and the answer's tokens (for costs).
    """

    index: int
    session: str
    step: int
    at: float
    input_tokens: int
    hit_tokens: int
    output_tokens: int

    @property
    def hit_ratio(self) -> float:
        return self.hit_tokens / self.input_tokens if self.input_tokens else 0.0


def _fmt_ratio(x: float) -> str:
    return f"{x:.3f}"


class PrefixCache:
    """The ``prefix_cache`` fixture: record each step's prompt, then assert what a prompt cache makes of them.

    Assertion methods raise :class:`AssertionError` whose message names the step, the first differing
    token, the text around it and the likely cause. Bad arguments raise :class:`kvtier.KvtierError`.
    """

    def __init__(self, settings: Settings, *, tokenizer: str | None = None, name: str = "") -> None:
        self.settings = settings
        self.name = name
        self._tokenizer_path = tokenizer
        self._tokenizer: Any = None
        self._store: Store | None = None
        self._finder: BreakFinder | None = None
        self._steps: list[Step] = []
        self._tokens: list[npt.NDArray[np.int32]] = []
        self._per_session: dict[str, int] = {}
        self._checks: list[dict[str, Any]] = []
        self._config = settings.store_config()  # validates the settings before the test body runs

    # ----------------------------------------------------------------- recording
    @property
    def steps(self) -> tuple[Step, ...]:
        """Every recorded step, in order."""
        return tuple(self._steps)

    def use_tokenizer(self, path: str | Path) -> None:
        """Tokenizes text prompts with the ``tokenizers`` JSON at ``path`` (a Hugging Face ``tokenizer.json``)."""
        from kvtier.analytics.logs import load_tokenizer

        self._tokenizer = load_tokenizer(str(path))
        self._tokenizer_path = str(path)
        if self._finder is not None:
            self._finder.decode = self._decode

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=False))

    def _encode(self, text: str) -> npt.NDArray[np.int32]:
        __tracebackhide__ = True
        import numpy as np

        if self._tokenizer is None:
            if self._tokenizer_path is None:
                raise _invalid(
                    "prompt is text: give prefix_cache a tokenizer (--kvtier-tokenizer PATH or "
                    "prefix_cache.use_tokenizer(path), a tokenizer.json), or record token ids"
                )
            self.use_tokenizer(self._tokenizer_path)
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int32)

    def record(
        self, prompt: str | Sequence[int] | npt.ArrayLike, session: str | None = None, *, at: float | None = None,
        output_tokens: int = 0,
    ) -> Step:
        """Replays one step: looks its prompt up in the cache, then stores its full blocks.

        Parameters
        ----------
        prompt
            Text (needs a tokenizer) or token ids (a sequence of ints or a 1-D integer array).
        session
            The agent session (``"default"`` if ``None``); breaks are found between steps of one session.
        at
            Seconds on the test's clock (non-decreasing); default: the previous step plus ``step_seconds``.
        output_tokens
            Tokens of the answer (priced by :meth:`assert_cost`).
        """
        __tracebackhide__ = True
        import numpy as np

        from kvtier.analytics.breaks import BreakFinder
        from kvtier.errors import KvtierTypeError
        from kvtier.store import Store

        if session is None:
            session = DEFAULT_SESSION
        elif not isinstance(session, str):
            raise KvtierTypeError(f"session must be a str or None, got {type(session).__name__}")
        if isinstance(output_tokens, bool) or not isinstance(output_tokens, int) or output_tokens < 0:
            raise _invalid(f"output_tokens must be an int >= 0, got {output_tokens!r}")
        last = self._steps[-1].at if self._steps else None
        if at is None:
            at = 0.0 if last is None else last + self.settings.step_seconds
        elif isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            raise _invalid(f"at must be a finite number of seconds, got {at!r}")
        elif last is not None and at < last:
            raise _invalid(f"at={at:g} is before the previous step (at={last:g}): record steps in time order")
        text: str | None = None
        if isinstance(prompt, str):
            text = prompt
            tokens = self._encode(prompt)
        else:
            arr = np.asarray(prompt)
            if arr.size == 0:
                arr = arr.astype(np.int32)
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise KvtierTypeError(
                    f"prompt must be text or a 1-D sequence of integer token ids, got {arr.dtype} with shape {arr.shape}"
                )
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) > np.iinfo(np.int32).max):
                raise _invalid(f"prompt token ids must be in [0, 2**31), got {int(arr.min())}..{int(arr.max())}")
            tokens = arr.astype(np.int32)
        if self._store is None:
            self._store = Store(self._config)
            decode = self._decode if self._tokenizer is not None or self._tokenizer_path is not None else None
            if decode is not None and self._tokenizer is None:
                self.use_tokenizer(str(self._tokenizer_path))
            self._finder = BreakFinder(self.settings.block_size, decode=decode, examples_per_cause=1 << 30)
        assert self._finder is not None
        hit = self._store.match(tokens, now=float(at))
        self._store.insert(tokens, session=session, now=float(at))
        number = self._per_session.get(session, 0) + 1
        self._per_session[session] = number
        step = Step(len(self._steps), session, number, float(at), int(tokens.shape[0]), hit.num_tokens, output_tokens)
        self._steps.append(step)
        self._tokens.append(tokens)
        self._finder.observe(session, step.index, tokens, text)
        return step

    # ----------------------------------------------------------------- figures
    def _selected(self, session: str | None) -> list[Step]:
        if session is None:
            return self._steps
        if session not in self._per_session:
            known = ", ".join(repr(s) for s in self._per_session) or "none"
            raise _invalid(f"session {session!r} has no recorded steps (sessions: {known})")
        return [s for s in self._steps if s.session == session]

    def hit_ratio(self, session: str | None = None) -> float:
        """Prompt tokens found cached / prompt tokens, over all steps (or one session's)."""
        steps = self._selected(session)
        total = sum(s.input_tokens for s in steps)
        return sum(s.hit_tokens for s in steps) / total if total else 0.0

    def breaks(self) -> tuple[BreakExample, ...]:
        """Every prefix break between consecutive steps of a session, in recording order."""
        if self._finder is None:
            return ()
        return tuple(sorted(self._finder.report().examples, key=lambda e: e.line))

    def figures(self) -> dict[str, Any]:
        """What ``--kvtier-report`` and pytest-benchmark's ``extra_info`` get for this test."""
        sessions: dict[str, dict[str, Any]] = {}
        for s in self._steps:
            d = sessions.setdefault(s.session, {"steps": 0, "input_tokens": 0, "hit_tokens": 0})
            d["steps"] += 1
            d["input_tokens"] += s.input_tokens
            d["hit_tokens"] += s.hit_tokens
        for name, d in sessions.items():
            d["hit_ratio"] = d["hit_tokens"] / d["input_tokens"] if d["input_tokens"] else 0.0
        stats = self._store.stats() if self._store is not None else None
        return {
            "test": self.name,
            "block_size": self.settings.block_size,
            "policy": self.settings.policy,
            "ttl_s": self.settings.ttl_s,
            "capacity_blocks": self.settings.capacity_blocks,
            "steps": len(self._steps),
            "input_tokens": sum(s.input_tokens for s in self._steps),
            "hit_tokens": sum(s.hit_tokens for s in self._steps),
            "hit_ratio": self.hit_ratio(),
            "evicted_blocks": stats.evicted if stats is not None else 0,
            "expired_blocks": stats.expired if stats is not None else 0,
            "sessions": sessions,
            "breaks": [
                {
                    "session": e.session,
                    "step": self._steps[e.line].step,
                    "token": e.position,
                    "cause": e.cause,
                    "blocks_lost": e.blocks_lost,
                }
                for e in self.breaks()
            ],
            "checks": list(self._checks),
        }

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # ----------------------------------------------------------------- explanations
    def _describe_break(self, e: BreakExample) -> list[str]:
        """Where a break is and the text around its first differing token (indented lines)."""
        cur, prev = self._steps[e.line], self._steps[e.prev_line]
        a, b = f"step {prev.step}", f"step {cur.step}"
        w = max(len(a), len(b), len("before")) + 1
        lead = f"tokens from {e.window_start}: "
        return [
            f"  session {cur.session!r} step {cur.step} differs from step {prev.step} at token {e.position} "
            f"({e.blocks_lost} cached blocks of {self.settings.block_size} tokens lost)",
            f"  {'before':<{w}} {e.before!r}",
            f"  {a:<{w}} {e.prev_after!r}",
            f"  {b:<{w}} {e.cur_after!r}",
            f"  {lead}{a} {list(e.prev_tokens)}",
            f"  {' ' * len(lead)}{b} {list(e.cur_tokens)}",
        ]

    @staticmethod
    def _cause(e: BreakExample) -> str:
        from kvtier.analytics.breaks import CAUSE_LABELS

        return f"{CAUSE_LABELS[e.cause]} ({e.cause})"

    def _likely_cause(self, steps: Sequence[Step]) -> list[str]:
        indices = {s.index for s in steps}
        found = [e for e in self.breaks() if e.line in indices]
        if found:
            lines = [f"likely cause: a prefix break: {self._cause(found[0])}"] + self._describe_break(found[0])
            if len(found) > 1:
                more = ", ".join(f"step {self._steps[e.line].step} at token {e.position} ({e.cause})" for e in found[1:][:_SHOWN_BREAKS])
                extra = f" and {len(found) - 1 - _SHOWN_BREAKS} more" if len(found) - 1 > _SHOWN_BREAKS else ""
                lines.append(f"  other breaks: {more}{extra}")
            return lines
        stats = self._store.stats() if self._store is not None else None
        lost = f"{stats.evicted} blocks evicted, {stats.expired} expired" if stats is not None else "nothing cached"
        return [
            "likely cause: no prefix break between steps; misses are first steps (nothing cached yet), "
            f"tokens after the last full block of {self.settings.block_size}, or eviction ({lost})"
        ]

    def _require_steps(self, what: str) -> None:
        __tracebackhide__ = True
        if not self._steps:
            raise AssertionError(f"kvtier: {what}: the test recorded no prompts (call prefix_cache.record(prompt))")

    # ----------------------------------------------------------------- checks
    def _check(self, name: str, required: Any, value: Any, passed: bool, **extra: Any) -> None:
        self._checks.append({"check": name, "required": required, "value": value, "passed": passed, **extra})

    def hit_ratio_failure(self, min_ratio: float, session: str | None = None) -> str | None:
        """The failure message of :meth:`assert_hit_ratio`, or ``None`` when it passes."""
        __tracebackhide__ = True
        self._require_steps("hit ratio")
        if isinstance(min_ratio, bool) or not isinstance(min_ratio, (int, float)) or not 0 <= min_ratio <= 1:
            raise _invalid(f"min_ratio must be a number in [0, 1], got {min_ratio!r}")
        steps = self._selected(session)
        ratio = self.hit_ratio(session)
        ok = ratio >= min_ratio
        self._check("hit_ratio", min_ratio, ratio, ok, session=session)
        if ok:
            return None
        hit, total = sum(s.hit_tokens for s in steps), sum(s.input_tokens for s in steps)
        where = "" if session is None else f" in session {session!r}"
        broken = {e.line: e for e in self.breaks()}
        lines = [
            f"kvtier: hit ratio {_fmt_ratio(ratio)}{where} is below {min_ratio:g}: {hit:,} of {total:,} prompt tokens "
            f"were cached ({len(steps)} steps; {self.settings.describe()})"
        ]
        for s in steps[:_SHOWN_STEPS]:
            note = f"   <- prefix broken at token {broken[s.index].position}" if s.index in broken else ""
            lines.append(f"  {s.session!r} step {s.step}: {s.hit_tokens:,} of {s.input_tokens:,} tokens hit{note}")
        if len(steps) > _SHOWN_STEPS:
            lines.append(f"  ... {len(steps) - _SHOWN_STEPS} more steps")
        lines += self._likely_cause(steps)
        return "\n".join(lines)

    def prefix_failure(self, min_tokens: int, session: str | None = None) -> str | None:
        """The failure message of :meth:`assert_prefix_stable`, or ``None`` when it passes."""
        __tracebackhide__ = True
        self._require_steps("prefix stability")
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
            raise _invalid(f"min_tokens must be an int >= 1, got {min_tokens!r}")
        steps = self._selected(session)
        names = {s.session for s in steps}
        if all(self._per_session[n] < 2 for n in names):
            raise AssertionError(
                "kvtier: prefix stability: no session has two recorded steps to compare "
                "(record each step of one agent session with the same session=...)"
            )
        early = [e for e in self.breaks() if e.session in names and e.position < min_tokens]
        self._check("prefix_stable", min_tokens, early[0].position if early else None, not early, session=session)
        if not early:
            return None
        e = early[0]
        cur = self._steps[e.line]
        lines = [
            f"kvtier: prefix broken at token {e.position} (session {cur.session!r}, step {cur.step}); "
            f"the first {min_tokens:,} tokens must stay the same at every step",
            f"likely cause: {self._cause(e)}",
        ]
        lines += self._describe_break(e)
        if len(early) > 1:
            more = ", ".join(
                f"{self._steps[x.line].session!r} step {self._steps[x.line].step} at token {x.position} ({x.cause})"
                for x in early[1:][:_SHOWN_BREAKS]
            )
            extra = f" and {len(early) - 1 - _SHOWN_BREAKS} more" if len(early) - 1 > _SHOWN_BREAKS else ""
            lines.append(f"  other breaks before token {min_tokens:,}: {more}{extra}")
        return "\n".join(lines)

    def assert_hit_ratio(self, min_ratio: float, *, session: str | None = None) -> float:
        """Fails unless cached prompt tokens / prompt tokens >= ``min_ratio``; returns the ratio."""
        __tracebackhide__ = True
        failure = self.hit_ratio_failure(min_ratio, session)
        if failure is not None:
            raise AssertionError(failure)
        return self.hit_ratio(session)

    def assert_prefix_stable(self, min_tokens: int, *, session: str | None = None) -> None:
        """Fails if any step changes one of the first ``min_tokens`` tokens of its session's previous step."""
        __tracebackhide__ = True
        failure = self.prefix_failure(min_tokens, session)
        if failure is not None:
            raise AssertionError(failure)

    # ----------------------------------------------------------------- cost and residency
    def cost_trace(self) -> CostTrace:
        """The steps as a :class:`kvtier.cost.trace.CostTrace` (chained ids of full blocks)."""
        from kvtier.cost.trace import CostTrace

        self._require_steps("cost")
        bs = self.settings.block_size
        content: dict[bytes, int] = {}
        blocks = []
        for tokens in self._tokens:
            n = tokens.shape[0] // bs
            rows = tokens[: n * bs].reshape(n, bs)
            blocks.append([content.setdefault(r.tobytes(), len(content)) for r in rows])
        return CostTrace.from_requests(
            blocks,
            [s.at for s in self._steps],
            [s.input_tokens for s in self._steps],
            [s.output_tokens for s in self._steps],
            block_tokens=bs,
            sessions=[s.session for s in self._steps],
            chained=False,
            name=self.name,
        )

    def _gaps_past(self, ttl_s: float | None) -> list[str]:
        if ttl_s is None:
            return []
        out = []
        last: dict[str, Step] = {}
        for s in self._steps:
            p = last.get(s.session)
            if p is not None and s.at - p.at > ttl_s:
                out.append(f"{s.session!r} step {s.step} came {s.at - p.at:g} s after step {p.step}")
            last[s.session] = s
        return out

    def assert_cost(
        self, *, provider: str, model: str | None = None, max_usd: float, writes: str = "all"
    ) -> ProviderCost:
        """Fails if the steps, priced under ``provider``'s caching rules for ``model``, cost more than ``max_usd``.

        The steps are priced as ``kvtier cost`` prices a trace (:func:`kvtier.cost.providers.price_provider`;
        ``model`` defaults to the provider's default model, ``writes`` is ``"all"`` or ``"reused"``). Returns
        the :class:`~kvtier.cost.providers.ProviderCost`.
        """
        __tracebackhide__ = True
        from kvtier.cost.catalog import load_catalog
        from kvtier.cost.providers import price_provider

        if isinstance(max_usd, bool) or not isinstance(max_usd, (int, float)) or not 0 <= max_usd < math.inf:
            raise _invalid(f"max_usd must be a finite number of dollars >= 0, got {max_usd!r}")
        rules = load_catalog().provider(provider)
        cost = price_provider(self.cost_trace(), rules, model, writes=cast("Writes", writes))
        ok = cost.cache_aware_usd <= max_usd
        self._check(
            "cost", max_usd, cost.cache_aware_usd, ok, provider=cost.provider, model=cost.model,
            naive_usd=cost.naive_usd, cached_tokens=cost.cached_tokens, input_tokens=cost.input_tokens,
        )
        if ok:
            return cost
        lines = [
            f"kvtier: cache-aware cost ${cost.cache_aware_usd:.6f} under {cost.provider} ({cost.model}) is above "
            f"max_usd=${max_usd:g}",
            f"  naive (no cache) ${cost.naive_usd:.6f}; {cost.cached_tokens:,} of {cost.input_tokens:,} input tokens "
            f"read from the cache, {cost.written_tokens:,} written; cache: {rules.describe_ttl()}",
        ]
        gaps = self._gaps_past(rules.ttl_s)
        minimum = rules.min_tokens(cost.price)
        short = [s for s in self._steps if s.input_tokens < minimum]
        if short:
            lines.append(
                f"likely cause: {len(short)} of {len(self._steps)} prompts are shorter than {cost.provider}'s minimum "
                f"cacheable prompt of {minimum:,} tokens (never cached)"
            )
        elif gaps:
            lines.append(f"likely cause: steps idle past the {rules.ttl_s:g} s TTL: {'; '.join(gaps[:_SHOWN_BREAKS])}")
        else:
            lines += self._likely_cause(self._steps)
        raise AssertionError("\n".join(lines))

    def assert_residency(self, max_gb_hours: float, *, model: str | None = None, until: float | None = None) -> float:
        """Fails if the cache's KV residency exceeds ``max_gb_hours``; returns the GB-hours.

        The steps are replayed by :func:`kvtier.cost.ledger.ledger_from_trace` with this cache's block size,
        policy and capacity, at ``model``'s KV bytes per token (default ``--kvtier-model`` or the marker's
        ``model``), up to ``until`` seconds (default: the last step, plus the TTL with policy ``ttl``).
        """
        __tracebackhide__ = True
        from kvtier.cost.catalog import load_catalog
        from kvtier.cost.ledger import ledger_from_trace

        if isinstance(max_gb_hours, bool) or not isinstance(max_gb_hours, (int, float)) or not 0 <= max_gb_hours < math.inf:
            raise _invalid(f"max_gb_hours must be a finite number >= 0, got {max_gb_hours!r}")
        name = model if model is not None else self.settings.model
        if name is None:
            raise _invalid(
                "assert_residency needs a model for its KV bytes per token: model=..., --kvtier-model NAME "
                "or @pytest.mark.kvtier(model=...) (kvtier cost --list shows the catalogue)"
            )
        spec = load_catalog().model(name)
        trace = self.cost_trace()
        tier = self.settings.store_config(spec.kv_bytes_per_token * self.settings.block_size).host
        ledger, _ = ledger_from_trace(trace, spec.kv_bytes_per_token, tier=tier, until=until, model=spec.name)
        gbh = ledger.gb_hours
        ok = gbh <= max_gb_hours
        self._check("residency", max_gb_hours, gbh, ok, model=spec.name, until=ledger.until)
        if ok:
            return gbh
        by_session = sorted(ledger.by_session().items(), key=lambda kv: -kv[1])
        lines = [
            f"kvtier: KV residency {gbh:.6f} GB-hours of {spec.name} ({spec.kv_bytes_per_token:,} bytes per token) "
            f"is above {max_gb_hours:g} (up to t={ledger.until:g} s; {self.settings.describe()})",
            "  by session: " + ", ".join(f"{s!r} {v:.6f}" for (_, s), v in by_session[:_SHOWN_STEPS]),
        ]
        found = self.breaks()
        if found:
            lines.append(f"likely cause: a prefix break stores the rest of the prompt again: {self._cause(found[0])}")
            lines += self._describe_break(found[0])
        raise AssertionError("\n".join(lines))


# ------------------------------------------------------------------------------------------- hooks
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvtier", "kvtier prompt-prefix cache checks (the prefix_cache fixture)")
    group.addoption("--kvtier-block-size", type=_arg_type(_block_size), default=16, metavar="TOKENS",
                    help="tokens per cached block, as in your engine (default 16)")
    group.addoption("--kvtier-policy", default="lru", metavar="POLICY",
                    help="eviction policy of the replay cache: lru (default), lfu or ttl")
    group.addoption("--kvtier-ttl", type=_arg_type(_one_duration), default=None, metavar="DURATION",
                    help="maximum idle time for --kvtier-policy ttl (e.g. 300, 5m, 1h)")
    group.addoption("--kvtier-capacity", type=_arg_type(_one_capacity), default=None, metavar="BLOCKS",
                    help="blocks the replay cache holds (e.g. 10k; default unlimited)")
    group.addoption("--kvtier-step-seconds", type=_arg_type(_step_seconds), default=30.0, metavar="S",
                    help="time between steps recorded without at= (default 30)")
    group.addoption("--kvtier-model", default=None, metavar="NAME",
                    help="catalogued model whose KV bytes per token price assert_residency (kvtier cost --list)")
    group.addoption("--kvtier-tokenizer", default=None, metavar="PATH",
                    help="tokenizer.json (tokenizers) for text prompts")
    group.addoption("--kvtier-report", default=None, metavar="PATH",
                    help="write every test's prefix-cache figures to PATH as JSON")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kvtier(min_hit_ratio=None, min_prefix_tokens=None, block_size=, policy=, ttl_s=, capacity_blocks=, "
        "step_seconds=, model=): settings and checks for the test's prefix_cache recordings (kvtier plug-in)",
    )
    config.stash[_REPORT_KEY] = []
    if _settings_from_options(config) != Settings():
        from kvtier.errors import KvtierError

        try:
            settings = _settings_from_options(config)
            if settings.policy == "ttl" and settings.ttl_s is None:
                raise _invalid("--kvtier-policy ttl needs --kvtier-ttl DURATION")
            settings.store_config()
        except KvtierError as e:
            raise pytest.UsageError(f"kvtier: {e}") from None


@pytest.fixture
def prefix_cache(request: pytest.FixtureRequest) -> Generator[PrefixCache, None, None]:
    """Records prompts step by step and checks what a prompt cache makes of them (see kvtier.pytest_plugin)."""
    __tracebackhide__ = True
    settings, _ = _settings_for(request.node)
    cache = PrefixCache(settings, tokenizer=request.config.getoption("kvtier_tokenizer"), name=request.node.nodeid)
    try:
        yield cache
    finally:
        request.config.stash[_REPORT_KEY].append(cache.figures())
        cache.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    result = yield  # the test body; a failure there propagates and skips the checks below
    marker = item.get_closest_marker(_MARKER)
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    cache = funcargs.get("prefix_cache")
    if marker is not None:
        if not isinstance(cache, PrefixCache):
            pytest.fail(f"@pytest.mark.kvtier on {item.name} needs the prefix_cache fixture among its arguments", pytrace=False)
        _, checks = _settings_for(item)
        failures: list[str | None] = []
        try:
            if checks.get("min_prefix_tokens") is not None:
                failures.append(cache.prefix_failure(checks["min_prefix_tokens"]))
            if checks.get("min_hit_ratio") is not None:
                failures.append(cache.hit_ratio_failure(checks["min_hit_ratio"]))
        except AssertionError as e:  # nothing recorded, or nothing to compare
            failures.append(str(e))
        text = "\n".join(f"@pytest.mark.kvtier: {f.removeprefix('kvtier: ')}" for f in failures if f is not None)
        if text:
            pytest.fail(text, pytrace=False)
    if isinstance(cache, PrefixCache):
        bench = funcargs.get("benchmark")
        if bench is not None and isinstance(getattr(bench, "extra_info", None), dict):
            bench.extra_info["kvtier"] = cache.figures()
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("kvtier_report")
    if path is None:
        return
    entries = session.config.stash.get(_REPORT_KEY, [])
    Path(path).write_text(json.dumps({"kvtier_prefix_cache": entries}, indent=1) + "\n")
