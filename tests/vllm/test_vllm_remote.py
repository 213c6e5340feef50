"""A fleet sharing one Redis (issue 13, item 4): two vLLM engines in separate processes, each with its own disk
folder, point the connector's ``remote_url`` at one real redis-server. Engine B's first request loads the prefix
engine A computed, from Redis (B's own folder is empty), with the same outputs as an engine without a connector.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from vllm_engines import Engine, assert_same_output
from vllm_prompts import PROMPTS, claimable_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redis_helpers import RedisServer, need_redis  # noqa: E402


@pytest.fixture(scope="module")
def fleet(tiny_model: Path, vllm_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis-fleet"))
    server.start()
    result: dict[str, Any] = {}
    try:
        prompt = PROMPTS["restart_intact"]
        a_cfg = {"disk_path": str(tmp_path_factory.mktemp("kvtier-disk-a")), "remote_url": server.url}
        b_cfg = {"disk_path": str(tmp_path_factory.mktemp("kvtier-disk-b")), "remote_url": server.url}
        with Engine(tiny_model, vllm_workdir, connector=a_cfg, name="engine-a") as a:
            result["a"] = a.generate([prompt])[0]
        result["b_folder_before"] = sorted(p.name for p in Path(b_cfg["disk_path"]).iterdir())
        with Engine(tiny_model, vllm_workdir, connector=b_cfg, name="engine-b") as b:
            result["b"] = b.generate([prompt])[0]
            result["b_metrics"] = b.metrics()
    finally:
        server.stop()
    return result


def test_engine_b_loads_the_prefix_engine_a_computed(fleet: dict[str, Any], baseline: dict[str, Any]) -> None:
    prompt = PROMPTS["restart_intact"]
    assert fleet["b_folder_before"] == [], "engine B's disk folder was not empty: the hit would not be remote"
    assert fleet["a"]["num_cached_tokens"] == 0
    assert_same_output(fleet["a"], baseline["restart_intact"], "engine A")
    assert fleet["b"]["num_cached_tokens"] == claimable_tokens(len(prompt)), fleet["b_metrics"]
    assert_same_output(fleet["b"], baseline["restart_intact"], "engine B, a hit from Redis")
