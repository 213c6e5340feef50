"""Shared helpers for kvtier's pytest-benchmark suites.

Run with ``python -m pytest bench/ -p no:cacheprovider`` from the repository root.

Every performance claim in ``bench/`` is a ratio against a baseline measured in the same process, in the same
test, with the subject and its baselines run in interleaved rounds (so a noisy neighbour or a frequency change hits
both alike). Gates compare medians of those rounds. Absolute times are recorded for the README, never asserted.

The ``benchmark`` fixture additionally times the kvtier subject of each test (pedantic mode, fixed rounds), so
``--benchmark-json`` and the pytest-benchmark table carry it; every figure also goes into
``benchmark.extra_info`` and into the summary printed at the end of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from harness import PROMPT_TOKENS, STEP_TOKENS, STEPS, VOCAB, AgentWorkload, fmt

# ---------------------------------------------------------------------------------------------------- reporting
_REPORT: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``report(benchmark, key=value, ...)``: stores figures in extra_info, the end-of-run summary and stdout."""

    def _report(benchmark: Any = None, **figures: Any) -> None:
        name = request.node.name
        if benchmark is not None:
            benchmark.extra_info.update(figures)
        _REPORT.append((name, figures))
        print(f"\n[{name}]")
        for k, v in figures.items():
            print(f"  {k} = {fmt(v)}")

    return _report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REPORT:
        return
    tr = terminalreporter
    tr.section("kvtier benchmark figures (medians of interleaved rounds; ratios are baseline/kvtier time)")
    for name, figures in _REPORT:
        tr.write_line(f"{name}")
        for k, v in figures.items():
            tr.write_line(f"    {k:<44} {fmt(v)}")


@pytest.fixture(scope="session")
def prompt() -> np.ndarray:
    return np.random.default_rng(2026).integers(0, VOCAB, PROMPT_TOKENS, dtype=np.int32)


@pytest.fixture(scope="session")
def agent(prompt: np.ndarray) -> AgentWorkload:
    rng = np.random.default_rng(7)
    prompts, branches = [], []
    for k in range(STEPS):
        p = prompt[: (k + 1) * STEP_TOKENS]
        b = p.copy()
        b[k * STEP_TOKENS :] = rng.integers(0, VOCAB, STEP_TOKENS, dtype=np.int32)
        prompts.append(p)
        branches.append(b)
    return AgentWorkload(prompt, tuple(prompts), tuple(branches))
