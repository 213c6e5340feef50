"""Fixtures of the vLLM end-to-end tests: the tiny local model, a no-connector baseline, a disk folder per module.

The tests need vLLM's CPU build; without it every test here skips, saying how to install it. Engines run in driver
processes (vllm_engines.py). The session starts one engine without the connector, whose outputs every test compares
against; each test module starts its own engine(s) with the connector.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vllm_engines import Engine, build_model, vllm_unavailable  # noqa: E402
from vllm_prompts import PROMPTS  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _needs_vllm() -> None:
    reason = vllm_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def vllm_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm")


@pytest.fixture(scope="session")
def tiny_model(vllm_workdir: Path) -> Path:
    return build_model(vllm_workdir / "tiny-model", vllm_workdir / "vllm-cache")


@pytest.fixture(scope="session")
def baseline(tiny_model: Path, vllm_workdir: Path) -> dict[str, Any]:
    """Outputs of an engine without the connector (and without prefix caching): every prompt of vllm_prompts.py,
    and the agent session."""
    t = time.perf_counter()
    with Engine(tiny_model, vllm_workdir, connector=None, name="baseline") as eng:
        names = list(PROMPTS)
        result: dict[str, Any] = dict(zip(names, eng.generate([PROMPTS[n] for n in names])))
        result["agent"] = eng.agent()
    result["_wall_s"] = time.perf_counter() - t
    return result
