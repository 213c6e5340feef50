"""pytest plug-in: gate a prompt's prefix stability, cache hit ratio, cost and residency in CI.

Installed with kvtier (entry point ``pytest11``: ``kvtier = kvtier.pytest_plugin``; ``-p no:kvtier`` turns it
off). A test records each step's prompt into the ``prefix_cache`` fixture (a :class:`kvtier.prompt_checks.PrefixCache`,
where the definitions are), which replays the steps through a metadata-only :class:`kvtier.Store` with the engine's
block size and eviction policy, and checks what a prompt cache would do::

    def test_agent_keeps_its_prefix(prefix_cache):
        for step in range(8):
            prefix_cache.record(build_prompt(step), session="agent")     # text or token ids
        prefix_cache.assert_prefix_stable(2048)      # no step changes any of the first 2048 tokens
        prefix_cache.assert_hit_ratio(0.8)           # cached input tokens / input tokens
        prefix_cache.assert_cost(provider="anthropic-5m", model="claude-sonnet-4.5", max_usd=0.05)
        prefix_cache.assert_residency(0.01, model="llama-3.1-8b")   # KV GB-hours

Settings come from the command line (``--kvtier-block-size``, ``--kvtier-policy``, ``--kvtier-ttl``,
``--kvtier-capacity``, ``--kvtier-step-seconds``, ``--kvtier-model``, ``--kvtier-tokenizer``), and a test's
``@pytest.mark.kvtier(...)`` overrides them. The marker's ``min_hit_ratio`` and ``min_prefix_tokens`` run the
same checks after the test body. With pytest-benchmark, a test that also uses ``benchmark`` gets the figures in
``benchmark.extra_info["kvtier"]``; ``--kvtier-report PATH`` writes every test's figures as JSON.

This module loads in every pytest run once kvtier is installed: at load time it imports pytest, the standard library
and kvtier's configuration (which ``import kvtier`` has loaded already); the analytics, cost and tokenizer code
are imported when a test uses the fixture.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Generator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from kvtier.errors import InvalidArgumentError, KvtierError
from kvtier.config import DEFAULT_BLOCK_SIZE, _check_int
from kvtier.prompt_checks import PrefixCache, Settings, check_number

__all__ = ["prefix_cache"]

_MARKER = "kvtier"
_CHECK_ARGS = ("min_hit_ratio", "min_prefix_tokens")
_REPORT_KEY = pytest.StashKey[list[dict[str, Any]]]()
_OPTION_HINT = "block-size, --kvtier-policy, --kvtier-ttl, --kvtier-capacity, --kvtier-step-seconds"


# ------------------------------------------------------------------------------------------- settings
def _arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` that turns kvtier's validation errors into argparse's usage errors."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except KvtierError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def _one_capacity(text: str) -> int | None:
    """``--kvtier-capacity``: blocks (``10000``, ``10k blocks``), or ``inf`` for unlimited (kvtier.units)."""
    from kvtier.units import parse_amount

    if text.strip().lower() in ("inf", "none", "unlimited"):
        return None
    return parse_amount(text, units=("blocks",), plain="blocks", option="--kvtier-capacity").value


def _one_duration(text: str) -> float:
    """``--kvtier-ttl``: a duration (``300``, ``5m``, ``1h``) in seconds (kvtier.units)."""
    from kvtier.units import parse_duration

    return parse_duration(text, "--kvtier-ttl")


def _block_size(text: str) -> int:
    """``--kvtier-block-size``: tokens per block, a whole number >= 1."""
    t = text.strip()
    if not t.isdigit() or int(t) < 1:
        raise InvalidArgumentError(f"--kvtier-block-size: {text!r} is not an integer >= 1")
    return int(t)


def _step_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgumentError(f"--kvtier-step-seconds: expected seconds, got {text!r}") from None
    return check_number("--kvtier-step-seconds", value)


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
        raise InvalidArgumentError(f"@pytest.mark.kvtier takes keyword arguments only, got {marker.args!r}")
    known = [f.name for f in fields(Settings)]
    unknown = sorted(set(marker.kwargs) - set(known) - set(_CHECK_ARGS))
    if unknown:
        raise InvalidArgumentError(
            f"@pytest.mark.kvtier got unknown argument(s) {', '.join(unknown)}; "
            f"known: {', '.join(_CHECK_ARGS + tuple(known))}"
        )
    checks = {k: v for k, v in marker.kwargs.items() if k in _CHECK_ARGS}
    settings = replace(settings, **{k: v for k, v in marker.kwargs.items() if k in known})
    if checks.get("min_hit_ratio") is not None:
        check_number("@pytest.mark.kvtier: min_hit_ratio", checks["min_hit_ratio"], upper=1.0)
    if checks.get("min_prefix_tokens") is not None:
        _check_int("@pytest.mark.kvtier: min_prefix_tokens", checks["min_prefix_tokens"], 1)
    return settings, checks


# ------------------------------------------------------------------------------------------- hooks
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvtier", "kvtier prompt-prefix cache checks (the prefix_cache fixture)")
    group.addoption("--kvtier-block-size", type=_arg_type(_block_size), default=DEFAULT_BLOCK_SIZE, metavar="TOKENS",
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
    settings = _settings_from_options(config)
    if settings != Settings():
        try:
            settings.store_config()
        except KvtierError as e:
            raise pytest.UsageError(f"kvtier options: {e} (set by --kvtier-{_OPTION_HINT})") from None


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
