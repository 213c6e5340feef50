"""The scheduler side's view of saves in flight (scheduler_saves_probe.py, run in a subprocess with vllm): a save is
claimed only once every worker acknowledged it, up to the blocks the worst rank holds; a request whose prefix
continues into a save in flight waits a step instead of taking a partial hit; a failed save is never claimed; a lost
acknowledgement is given up after its bound, so the engine does not step for ever."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from vllm_engines import HERE, engine_env


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("sched-saves")
    proc = subprocess.run(
        [sys.executable, str(HERE / "scheduler_saves_probe.py"), str(tmp / "disk")],
        capture_output=True,
        text=True,
        env=engine_env(tmp / "vllm-cache"),
        cwd=str(tmp),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_a_planned_save_is_in_flight_and_nothing_is_claimed_before_it_is_acknowledged(observed: dict[str, Any]) -> None:
    assert observed["a_lookup"] == 0
    assert observed["a_save"][0] == 10
    assert observed["in_flight_after_plan"] is True


def test_a_request_continuing_into_a_save_in_flight_waits_and_an_unrelated_one_does_not(observed: dict[str, Any]) -> None:
    assert observed["b_while_in_flight"] is None, "a partial (or empty) hit was offered instead of waiting"
    assert observed["c_while_in_flight"] == 0
    assert observed["in_flight_after_one_rank"] is True, "one rank's acknowledgement of two was taken as all"
    assert observed["b_after_one_rank"] is None
    assert observed["deferred"] == 2


def test_an_acknowledged_save_is_claimed_up_to_what_every_rank_holds(observed: dict[str, Any]) -> None:
    assert observed["in_flight_after_all_ranks"] is False
    assert observed["b_after_all_ranks"] == 8 * 32


def test_a_failed_save_is_never_claimed(observed: dict[str, Any]) -> None:
    assert observed["d_after_failed_save"] == 0


def test_a_lost_acknowledgement_is_given_up(observed: dict[str, Any]) -> None:
    assert observed["in_flight_e"] is True
    assert observed["in_flight_e_after_timeout"] is False
    assert any("not acknowledged" in w for w in observed["warnings"]), observed["warnings"]
