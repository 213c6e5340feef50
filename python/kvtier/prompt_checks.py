"""Record an agent's prompts step by step and assert what a prompt cache makes of them (the ``prefix_cache`` fixture).

:class:`PrefixCache` replays each recorded step, as it comes, through a metadata-only :class:`kvtier.Store` with
the engine's block size and eviction policy (:class:`Settings`), and its assertions explain their failures: the
step, the first differing token, the text around it and the likely cause (the break classes of
:mod:`kvtier.analytics.breaks`). The pytest plug-in (:mod:`kvtier.pytest_plugin`) hands one to every test that asks
for ``prefix_cache``; it works without pytest too.

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
  step (plus the TTL when one is set), as ``kvtier cost``'s ledger.

Importing this module loads only the standard library; the store, analytics, cost and tokenizer code are
imported on first use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kvtier.config import DEFAULT_BLOCK_SIZE, _check_int
from kvtier.errors import InvalidArgumentError, KvtierTypeError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from kvtier.analytics.breaks import BreakExample, BreakFinder
    from kvtier.analytics.formats import ChatTools
    from kvtier.config import Policy, StoreConfig
    from kvtier.cost.providers import ProviderCost, Writes
    from kvtier.cost.trace import CostTrace
    from kvtier.store import Store

__all__ = ["DEFAULT_SESSION", "PrefixCache", "Settings", "Step", "check_number"]

DEFAULT_SESSION = "default"
_SHOWN_STEPS = 12  # steps listed in a hit-ratio failure
_SHOWN_BREAKS = 3  # further breaks summarised after the first


def check_number(name: str, value: object, *, upper: float = math.inf) -> float:
    """``value`` as a float in ``[0, upper]`` (``upper`` excluded when infinite); raises naming ``name``."""
    __tracebackhide__ = True  # a failure points at the caller's argument (pytest)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KvtierTypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (0 <= value <= upper and value < math.inf):
        bound = f"in [0, {upper:g}]" if upper < math.inf else "finite and >= 0"
        raise InvalidArgumentError(f"{name} must be {bound}, got {value!r}")
    return float(value)


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

    block_size: int = DEFAULT_BLOCK_SIZE
    policy: Policy = "lru"
    ttl_s: float | None = None
    capacity_blocks: int | None = None
    step_seconds: float = 30.0
    model: str | None = None

    def store_config(self, block_bytes: int = 1) -> StoreConfig:
        """The metadata-only replay store, at ``block_bytes`` per block (KV bytes, for residency; the live replay
        needs none: :meth:`PrefixCache.assert_residency` replays again at the model's size)."""
        from kvtier.config import StoreConfig

        check_number("step_seconds", self.step_seconds)
        if self.model is not None and not isinstance(self.model, str):
            raise InvalidArgumentError(f"model must be a model name (str), got {self.model!r}")
        return StoreConfig.for_blocks(
            self.capacity_blocks,
            block_size=self.block_size,
            block_bytes=block_bytes,
            policy=self.policy,
            ttl_s=self.ttl_s,
        )

    def describe(self) -> str:
        cap = "unlimited capacity" if self.capacity_blocks is None else f"{self.capacity_blocks:,} blocks"
        ttl = f" {self.ttl_s:g} s" if self.ttl_s is not None else ""
        return f"block size {self.block_size}, {self.policy}{ttl}, {cap}"


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
                raise InvalidArgumentError(
                    "prompt is text: give prefix_cache a tokenizer (--kvtier-tokenizer PATH or "
                    "prefix_cache.use_tokenizer(path), a tokenizer.json), or record token ids"
                )
            self.use_tokenizer(self._tokenizer_path)
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int32)

    def record(
        self, prompt: str | Mapping[str, Any] | Sequence[int] | npt.ArrayLike, session: str | None = None, *,
        at: float | None = None,
        output_tokens: int = 0,
    ) -> Step:
        """Replays one step: looks its prompt up in the cache, then stores its full blocks.

        Parameters
        ----------
        prompt
            Text (needs a tokenizer), an OpenAI-style chat request ``{"messages": [...], "tools": [...]}`` (rendered
            as ``kvtier analyze`` renders chat logs, then tokenized; a reordered tool list is recognised as such),
            or token ids (a sequence of ints or a 1-D integer array).
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
        from kvtier.store import Store

        if session is None:
            session = DEFAULT_SESSION
        elif not isinstance(session, str):
            raise KvtierTypeError(f"session must be a str or None, got {type(session).__name__}")
        _check_int("output_tokens", output_tokens, 0)
        last = self._steps[-1].at if self._steps else None
        if at is None:
            at = 0.0 if last is None else last + self.settings.step_seconds
        elif isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            raise InvalidArgumentError(f"at must be a finite number of seconds, got {at!r}")
        elif last is not None and at < last:
            raise InvalidArgumentError(f"at={at:g} is before the previous step (at={last:g}): record steps in time order")
        text: str | None = None
        tools: ChatTools | None = None
        if isinstance(prompt, Mapping):
            from kvtier.analytics.formats import render_chat

            unknown = sorted(set(prompt) - {"messages", "tools"})
            if unknown:
                raise InvalidArgumentError(f"a chat prompt has 'messages' and 'tools', got {', '.join(map(repr, unknown))}")
            messages: Any = prompt.get("messages")
            text, tools = render_chat(messages, prompt.get("tools"))
            tokens = self._encode(text)
        elif isinstance(prompt, str):
            text = prompt
            tokens = self._encode(prompt)
        else:
            arr = np.asarray(prompt)
            if arr.size == 0:
                arr = arr.astype(np.int32)
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise KvtierTypeError(
                    f"prompt must be text, a chat request (dict) or a 1-D sequence of integer token ids, "
                    f"got {arr.dtype} with shape {arr.shape}"
                )
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) > np.iinfo(np.int32).max):
                raise InvalidArgumentError(f"prompt token ids must be in [0, 2**31), got {int(arr.min())}..{int(arr.max())}")
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
        self._finder.observe(session, step.index, tokens, text, tools)
        return step

    # ----------------------------------------------------------------- figures
    def _selected(self, session: str | None) -> list[Step]:
        if session is None:
            return self._steps
        if session not in self._per_session:
            known = ", ".join(repr(s) for s in self._per_session) or "none"
            raise InvalidArgumentError(f"session {session!r} has no recorded steps (sessions: {known})")
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
        check_number("min_ratio", min_ratio, upper=1.0)
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
        _check_int("min_tokens", min_tokens, 1)
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

        check_number("max_usd", max_usd)
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

        check_number("max_gb_hours", max_gb_hours)
        name = model if model is not None else self.settings.model
        if name is None:
            raise InvalidArgumentError(
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
