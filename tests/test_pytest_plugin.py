"""The pytest plug-in (kvtier.pytest_plugin, kvtier.prompt_checks), run on user test files through ``pytester``.

Each test writes a small user project (a test file and a pytest.ini with the repository's strictness:
``--strict-markers`` and warnings as errors) and runs pytest on it in-process, where the plug-in is loaded from
kvtier's ``pytest11`` entry point as in a user's environment. Expected figures are worked out by hand in the
comments (prices from the shipped catalogue's ``anthropic-5m`` entry, KV bytes from ``llama-3.1-8b``'s).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
addopts = --strict-markers -p no:randomly -p no:cacheprovider
filterwarnings = error
"""

# Token-id prompts: a 100-token system prompt, then a value that changes in the "broken" variant, then 40
# new tokens per step (an agent's growing history).
HELPERS = """
SYSTEM = list(range(1000, 1100))


def prompt(step, stamp=0):
    return SYSTEM + [7, stamp] + list(range(2000, 2000 + 40 * step))
"""


def lines(output: pytest.LineMatcher, expected: list[str]) -> None:
    """Asserts that ``expected`` lines appear in order, each exactly except where it has ``*`` (any text)."""
    output.re_match_lines([re.escape(line).replace(r"\*", ".*") + "$" for line in expected])


def project(pytester: pytest.Pytester, body: str, **files: str) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(**{"test_user": HELPERS + body}, **files)


def test_plugin_is_registered_by_the_entry_point() -> None:
    (ep,) = [e for e in entry_points(group="pytest11") if e.name == "kvtier"]
    assert ep.value == "kvtier.pytest_plugin"


def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    project(pytester, "\ndef test_agent(prefix_cache):\n    pass\n")
    result = pytester.runpytest("-p", "no:kvtier")
    result.assert_outcomes(errors=1)
    lines(result.stdout, ["E       fixture 'prefix_cache' not found"])


def test_importing_the_plugin_loads_no_analytics_cost_or_tokenizer() -> None:
    code = (
        "import sys, kvtier.pytest_plugin; "
        "print(sorted(m for m in sys.modules if m.startswith(('kvtier.analytics', 'kvtier.cost', 'tokenizers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_a_stable_agent_session_passes_every_check(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        """
def test_agent(prefix_cache):
    steps = [prefix_cache.record(prompt(k), session="agent") for k in range(5)]
    # step k hits the full blocks of step k-1: 102 + 40 (k-1) tokens -> 6, 8, 11, 13 blocks of 16
    assert [s.hit_tokens for s in steps] == [0, 96, 128, 176, 208]
    prefix_cache.assert_prefix_stable(100)
    assert abs(prefix_cache.assert_hit_ratio(0.6) - 608 / 910) < 1e-12
""",
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_prefix_break_fails_with_step_token_text_and_cause(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        """
def test_agent(prefix_cache):
    for k in range(3):
        prefix_cache.record(prompt(k, stamp=k), session="agent")
    prefix_cache.assert_prefix_stable(512)
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    lines(result.stdout, 
        [
            "E       AssertionError: kvtier: prefix broken at token 101 (session 'agent', step 2); "
            "the first 512 tokens must stay the same at every step",
            "E       likely cause: other edit (other)",
            "E         session 'agent' step 2 differs from step 1 at token 101 (0 cached blocks of 16 tokens lost)",
            "E         before  '1095 1096 1097 1098 1099 7'",
            "E         step 1  '0'",
            "E         step 2  '1 2000 2001 2002 2003 2004'",
            "E         other breaks before token 512: 'agent' step 3 at token 101 (other)",
            "test_user.py:10: AssertionError",
        ]
    )


def test_hit_ratio_failure_lists_steps_and_the_break(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        """
def test_agent(prefix_cache):
    for k in range(3):
        prefix_cache.record(prompt(k, stamp=k), session="agent")
    prefix_cache.assert_hit_ratio(0.5)
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    # 102 + 142 + 182 = 426 prompt tokens; steps 2 and 3 hit the 6 full blocks before token 101: 192 tokens.
    lines(result.stdout, 
        [
            "E       AssertionError: kvtier: hit ratio 0.451 is below 0.5: 192 of 426 prompt tokens were cached "
            "(3 steps; block size 16, lru, unlimited capacity)",
            "E         'agent' step 1: 0 of 102 tokens hit",
            "E         'agent' step 2: 96 of 142 tokens hit   <- prefix broken at token 101",
            "E         'agent' step 3: 96 of 182 tokens hit   <- prefix broken at token 101",
            "E       likely cause: a prefix break: other edit (other)",
            "E         session 'agent' step 2 differs from step 1 at token 101 (0 cached blocks of 16 tokens lost)",
        ]
    )


def test_block_size_option_and_eviction_cause(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        """
def test_agent(prefix_cache):
    a = list(range(64))
    b = list(range(100, 164))
    prefix_cache.record(a, session="a")
    prefix_cache.record(b, session="b")
    prefix_cache.record(a, session="a")
    prefix_cache.assert_hit_ratio(0.5)
""",
    )
    # Two 32-token blocks fit: b evicts a, so a's second step misses; no session ever breaks its prefix.
    result = pytester.runpytest("--kvtier-block-size", "32", "--kvtier-capacity", "2")
    result.assert_outcomes(failed=1)
    lines(result.stdout, 
        [
            "E       AssertionError: kvtier: hit ratio 0.000 is below 0.5: 0 of 192 prompt tokens were cached "
            "(3 steps; block size 32, lru, 2 blocks)",
            "E       likely cause: no prefix break between steps; misses are first steps (nothing cached yet), "
            "tokens after the last full block of 32, or eviction (4 blocks evicted, 0 expired)",
        ]
    )


TOKENIZER_CORPUS = "System: You are a careful agent. The current time is 2025-03-01 12:00:00. Use the tools. "


def make_tokenizer(path: Path) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([TOKENIZER_CORPUS] * 10, trainer)
    tok.save(str(path))
    return str(path)


TEXT_BODY = """
import pytest

SYSTEM_TEXT = "System: You are a careful agent. Use the tools below when they help. " * 4


def text_prompt(step, clock):
    return f"Current time: 2025-03-01 12:{clock:02d}:00. " + SYSTEM_TEXT + "".join(
        f"User: question {i}? Assistant: answer {i}. " for i in range(step)
    )


@pytest.mark.kvtier(min_prefix_tokens=64)
def test_clock_in_the_prompt(prefix_cache):
    for k in range(3):
        prefix_cache.record(text_prompt(k + 1, clock=5 * k), session="agent")
"""


@pytest.mark.parametrize("how", ["option", "use_tokenizer"])
def test_text_prompts_name_the_timestamp(pytester: pytest.Pytester, how: str) -> None:
    pytest.importorskip("tokenizers")
    tok = make_tokenizer(pytester.path / "tokenizer.json")
    body = TEXT_BODY
    args: list[str] = []
    if how == "option":
        args = [f"--kvtier-tokenizer={tok}"]
    else:
        body = body.replace("    for k in range(3):", f"    prefix_cache.use_tokenizer({tok!r})\n    for k in range(3):")
    project(pytester, body)
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=1)
    # The clock's minutes differ ("12:00" then "12:05"): the break is inside the prompt's first line.
    lines(result.stdout, 
        [
            "@pytest.mark.kvtier: prefix broken at token * (session 'agent', step 2); "
            "the first 64 tokens must stay the same at every step",
            "likely cause: timestamp or date (timestamp)",
            "  session 'agent' step 2 differs from step 1 at token *",
            "  before  'Current time: 2025-03-01 12:0'",
            "  step 1  '0:00. System: You are a careful agent. Use the t'",
            "  step 2  '5:00. System: You are a careful agent. Use the t'",
        ]
    )


def test_chat_requests_name_a_reordered_tool_list(pytester: pytest.Pytester) -> None:
    pytest.importorskip("tokenizers")
    tok = make_tokenizer(pytester.path / "tokenizer.json")
    project(
        pytester,
        """
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in ("read_file", "run_tests", "edit")]
SYSTEM = {"role": "system", "content": "You are a careful agent. Use the tools. " * 20}


def test_tools_reordered(prefix_cache):
    prefix_cache.record({"messages": [SYSTEM, {"role": "user", "content": "fix it"}], "tools": TOOLS})
    turn2 = [SYSTEM, {"role": "user", "content": "fix it"}, {"role": "assistant", "content": "done"}]
    prefix_cache.record({"messages": turn2, "tools": TOOLS[::-1]})
    prefix_cache.assert_prefix_stable(64)
""",
    )
    result = pytester.runpytest(f"--kvtier-tokenizer={tok}")
    result.assert_outcomes(failed=1)
    # The rendered chat starts with the tool list (one JSON line per tool): the first tool's name differs.
    lines(
        result.stdout,
        [
            "E       AssertionError: kvtier: prefix broken at token * (session 'default', step 2); "
            "the first 64 tokens must stay the same at every step",
            "E       likely cause: tool list reordered (tools_reordered)",
            "E         before  *{\"name\": \"'",
            "E         step 1  'read_file\", \"parameters\": {}}}*",
            "E         step 2  'edit\", \"parameters\": {}}}*",
        ],
    )


def test_text_without_a_tokenizer_is_a_clear_error(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        """
def test_agent(prefix_cache):
    prefix_cache.record("System: hello")
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    lines(result.stdout, 
        [
            "E       kvtier.errors.InvalidArgumentError: prompt is text: give prefix_cache a tokenizer "
            "(--kvtier-tokenizer PATH or prefix_cache.use_tokenizer(path), a tokenizer.json), or record token ids"
        ]
    )


def test_bad_record_arguments(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        """
import pytest
import kvtier
from kvtier.cost.catalog import UnknownNameError


def test_bad(prefix_cache):
    with pytest.raises(kvtier.KvtierTypeError, match=r"prompt must be text, a chat request \\(dict\\) or a 1-D sequence of integer token ids"):
        prefix_cache.record([1.5, 2.0])
    with pytest.raises(kvtier.InvalidArgumentError, match=r"prompt token ids must be in \\[0, 2\\*\\*31\\)"):
        prefix_cache.record([-1, 2])
    prefix_cache.record([1, 2], at=10)
    with pytest.raises(kvtier.InvalidArgumentError, match="at=5 is before the previous step"):
        prefix_cache.record([1, 2], at=5)
    with pytest.raises(kvtier.InvalidArgumentError, match="session 'x' has no recorded steps"):
        prefix_cache.assert_hit_ratio(0.5, session="x")
    with pytest.raises(kvtier.InvalidArgumentError, match="assert_residency needs a model"):
        prefix_cache.assert_residency(1.0)
    with pytest.raises(UnknownNameError, match="no-such-provider"):
        prefix_cache.assert_cost(provider="no-such-provider", max_usd=1.0)
""",
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_nothing_to_compare_fails(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        """
def test_one_step_per_session(prefix_cache):
    prefix_cache.record(prompt(1), session="a")
    prefix_cache.record(prompt(1), session="b")
    prefix_cache.assert_prefix_stable(64)


def test_nothing_recorded(prefix_cache):
    prefix_cache.assert_hit_ratio(0.5)
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=2)
    lines(result.stdout, 
        [
            "E       AssertionError: kvtier: prefix stability: no session has two recorded steps to compare "
            "(record each step of one agent session with the same session=...)",
            "E       AssertionError: kvtier: hit ratio: the test recorded no prompts (call prefix_cache.record(prompt))",
        ]
    )


def test_marker_passes_fails_and_overrides_the_block_size(pytester: pytest.Pytester) -> None:
    project(
        pytester,
        """
import pytest


@pytest.mark.kvtier(min_hit_ratio=0.6, min_prefix_tokens=100)
def test_stable(prefix_cache):
    for k in range(5):
        prefix_cache.record(prompt(k), session="agent")


@pytest.mark.kvtier(min_hit_ratio=0.6, min_prefix_tokens=200)
def test_broken(prefix_cache):
    for k in range(5):
        prefix_cache.record(prompt(k, stamp=k), session="agent")


@pytest.mark.kvtier(block_size=64)
def test_block_size(prefix_cache):
    assert prefix_cache.record(prompt(0)).hit_tokens == 0
    assert prefix_cache.record(prompt(2)).hit_tokens == 64   # one full block of 64 in the 102-token step


@pytest.mark.kvtier(min_hit_ratio=0.5)
def test_without_the_fixture():
    pass


@pytest.mark.kvtier(min_hit=0.5)
def test_unknown_argument(prefix_cache):
    pass


@pytest.mark.kvtier(min_hit_ratio=2)
def test_ratio_above_one(prefix_cache):
    pass
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=2, errors=2)
    lines(result.stdout, 
        [
            "*_ test_broken _*",
            "@pytest.mark.kvtier: prefix broken at token 101 (session 'agent', step 2); "
            "the first 200 tokens must stay the same at every step",
            "likely cause: other edit (other)",
            "*",
            "@pytest.mark.kvtier: hit ratio 0.422 is below 0.6: 384 of 910 prompt tokens were cached (5 steps; block size 16, lru, "
            "unlimited capacity)",
        ]
    )
    lines(result.stdout, 
        [
            "*@pytest.mark.kvtier on test_without_the_fixture needs the prefix_cache fixture among its arguments*",
        ]
    )
    lines(result.stdout, 
        ["E   kvtier.errors.InvalidArgumentError: @pytest.mark.kvtier got unknown argument(s) min_hit; known: *"]
    )
    lines(
        result.stdout,
        ["E   kvtier.errors.InvalidArgumentError: @pytest.mark.kvtier: min_hit_ratio must be in [0, 1], got 2"],
    )


def test_cost_priced_under_a_provider(pytester: pytest.Pytester) -> None:
    # anthropic-5m, claude-sonnet-4.5: input $3/M, cache write 1.25 x $3 = $3.75/M, cache read $0.30/M.
    # Step 1 (2,048 tokens, t=0) writes 2,048: $0.00768. Step 2 (3,072 tokens) reads 2,048 ($0.0006144) and writes
    # 1,024 ($0.00384): $0.0121344 in all; naive 5,120 x $3/M = $0.01536. At t=400 (past the 5-minute TTL) step 2
    # reads nothing and writes 3,072: $0.0192.
    project(
        pytester,
        """
import pytest

BASE = list(range(10_000, 12_048))
MORE = BASE + list(range(20_000, 21_024))


def test_warm(prefix_cache):
    prefix_cache.record(BASE, session="agent", at=0)
    prefix_cache.record(MORE, session="agent", at=60)
    cost = prefix_cache.assert_cost(provider="anthropic-5m", model="claude-sonnet-4.5", max_usd=0.0122)
    assert cost.cache_aware_usd == pytest.approx(0.0121344)
    assert cost.naive_usd == pytest.approx(0.01536)


def test_over_budget(prefix_cache):
    prefix_cache.record(BASE, session="agent", at=0)
    prefix_cache.record(MORE, session="agent", at=60)
    prefix_cache.assert_cost(provider="anthropic-5m", max_usd=0.012)


def test_idle_past_the_ttl(prefix_cache):
    prefix_cache.record(BASE, session="agent", at=0)
    prefix_cache.record(MORE, session="agent", at=400)
    prefix_cache.assert_cost(provider="anthropic-5m", max_usd=0.0122)


def test_short_prompts(prefix_cache):
    prefix_cache.record(BASE[:500], session="agent", at=0)
    prefix_cache.assert_cost(provider="anthropic-5m", max_usd=0.0)
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=3)
    lines(result.stdout, 
        [
            "E       AssertionError: kvtier: cache-aware cost $0.012134 under anthropic-5m (claude-sonnet-4.5) is "
            "above max_usd=$0.012",
            "E         naive (no cache) $0.015360; 2,048 of 5,120 input tokens read from the cache, 3,072 written; "
            "cache: 5 min, refreshed on hit",
            "E       likely cause: no prefix break between steps*",
            "E       AssertionError: kvtier: cache-aware cost $0.019200 under anthropic-5m (claude-sonnet-4.5) is "
            "above max_usd=$0.0122",
            "E       likely cause: steps idle past the 300 s TTL: 'agent' step 2 came 400 s after step 1",
            "E       likely cause: 1 of 1 prompts are shorter than anthropic-5m's minimum cacheable prompt of "
            "1,024 tokens (never cached)",
        ]
    )


def test_residency_in_gb_hours(pytester: pytest.Pytester) -> None:
    # llama-3.1-8b: 32 layers x 2 (K, V) x 8 KV heads x 128 x 2 bytes = 131,072 bytes per token. 1,024 tokens
    # resident from t=0 to the last step at t=3,600: 134,217,728 bytes for an hour = 0.134217728 GB-hours.
    project(
        pytester,
        """
import pytest

P = list(range(1024))


def test_residency(prefix_cache):
    prefix_cache.record(P, at=0)
    prefix_cache.record(P, at=3600)
    assert prefix_cache.assert_residency(0.2, model="llama-3.1-8b") == pytest.approx(0.134217728)
    prefix_cache.assert_residency(0.1)
""",
    )
    result = pytester.runpytest("--kvtier-model", "llama-3.1-8b")
    result.assert_outcomes(failed=1)
    lines(result.stdout, 
        [
            "E       AssertionError: kvtier: KV residency 0.134218 GB-hours of llama-3.1-8b (131,072 bytes per token) "
            "is above 0.1 (up to t=3600 s; block size 16, lru, unlimited capacity)",
            "E         by session: 'default' 0.134218",
        ]
    )


def test_report_json_and_benchmark_extra_info(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_benchmark")
    project(
        pytester,
        """
def test_agent(prefix_cache, benchmark):
    for k in range(3):
        prefix_cache.record(prompt(k), session="agent")
    benchmark(lambda: None)
    prefix_cache.assert_hit_ratio(0.3)


def test_two_sessions(prefix_cache):
    prefix_cache.record(prompt(1, stamp=1), session="a")
    prefix_cache.record(prompt(2, stamp=2), session="a")
    prefix_cache.record(prompt(1), session="b")
""",
    )
    report = pytester.path / "kvtier.json"
    bench = pytester.path / "bench.json"
    # In a child process: pytest-benchmark leaves its --benchmark-json file open, and the ResourceWarning that its
    # garbage collection raises would fail whichever test of this process happens to run then.
    result = pytester.runpytest_subprocess(
        f"--kvtier-report={report}", f"--benchmark-json={bench}", "--benchmark-max-time=0.01"
    )
    result.assert_outcomes(passed=2)
    entries = json.loads(report.read_text())["kvtier_prefix_cache"]
    by_test = {e["test"]: e for e in entries}
    agent = by_test["test_user.py::test_agent"]
    # 102 + 142 + 182 tokens; hits 96 (6 blocks) + 128 (8 blocks)
    assert (agent["steps"], agent["input_tokens"], agent["hit_tokens"]) == (3, 426, 224)
    assert agent["sessions"]["agent"]["hit_ratio"] == pytest.approx(224 / 426)
    assert agent["checks"] == [
        {"check": "hit_ratio", "required": 0.3, "value": pytest.approx(224 / 426), "passed": True, "session": None}
    ]
    two = by_test["test_user.py::test_two_sessions"]
    assert two["breaks"] == [{"session": "a", "step": 2, "token": 101, "cause": "other", "blocks_lost": 2}]
    assert sorted(two["sessions"]) == ["a", "b"]
    (b,) = json.loads(bench.read_text())["benchmarks"]
    assert b["extra_info"]["kvtier"]["hit_tokens"] == 224
    assert b["extra_info"]["kvtier"]["block_size"] == 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kvtier-policy", "fifo"], "ERROR: kvtier options: policy must be one of ['lfu', 'lru', 'ttl'], got 'fifo' *"),
        (["--kvtier-policy", "ttl"], "ERROR: kvtier options: policy 'ttl' needs ttl_s (maximum idle seconds) *"),
        (["--kvtier-step-seconds", "-1"], "*--kvtier-step-seconds must be finite and >= 0, got -1.0"),
        (["--kvtier-block-size", "0"], "*--kvtier-block-size: '0' is not an integer >= 1"),
        (["--kvtier-capacity", "lots"], "*--kvtier-capacity: 'lots' is not *blocks*"),
    ],
)
def test_bad_options_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    project(pytester, "\ndef test_x():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines(result.stderr, [message])
