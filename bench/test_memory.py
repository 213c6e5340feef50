"""Metadata-only memory: RSS growth over ~1M blocks of agent-shaped sessions, measured in a fresh process.

Issue gate: at most 160 bytes per block (block_size 16, content="tokens"). Memory is deterministic enough to gate
on directly (no timing noise); the probe is ``bench/memory_probe.py`` (see its docstring for the workload).

Also reported (not gated): the block_ids content mode, and a node-heavy variant of the same sessions (steps of 4
blocks with 1-block branches: 8x more tree nodes per block) that shows the per-node cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import gate

MAX_BYTES_PER_BLOCK = 160.0
TARGET_BLOCKS = 1_000_000
TOKEN_BYTES_PER_BLOCK = 16 * 4  # the tokens themselves: 16 int32
PROBE = Path(__file__).with_name("memory_probe.py")


def probe(content: str, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(PROBE), "--content", content, "--blocks", str(TARGET_BLOCKS), *extra],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("content", ["tokens", "block_ids"])
def test_metadata_memory_per_block(report: Any, content: str) -> None:
    r = probe(content)
    assert r["blocks"] >= TARGET_BLOCKS
    per_block = r["bytes_per_block"]
    figures: dict[str, Any] = {
        "content": content,
        "blocks / tree nodes / sessions": f"{r['blocks']} / {r['nodes']} / {r['sessions']}",
        "RSS growth MiB": r["rss_growth_bytes"] / 2**20,
        "bytes per block": per_block,
        "insert seconds for all blocks": r["seconds"],
        "blocks inserted per second": r["blocks"] / r["seconds"],
    }
    if content == "tokens":
        figures["bytes per block beyond the 64 token bytes"] = per_block - TOKEN_BYTES_PER_BLOCK
        figures.update(gate("bytes per block", per_block, MAX_BYTES_PER_BLOCK, higher_is_better=False))
    report(None, **figures)
    if content == "tokens":
        assert per_block <= MAX_BYTES_PER_BLOCK, figures


def test_metadata_memory_node_heavy(report: Any) -> None:
    """Informational: the same session shape with 4-block steps and 1-block branches (1 node per 2.5 blocks)."""
    heavy = probe("tokens", "--extend-blocks", "4", "--branch-blocks", "1")
    words = TOKEN_BYTES_PER_BLOCK * heavy["blocks"]
    figures = {
        "blocks / tree nodes": f"{heavy['blocks']} / {heavy['nodes']}",
        "bytes per block": heavy["bytes_per_block"],
        "bytes per tree node beyond token bytes": (heavy["rss_growth_bytes"] - words) / heavy["nodes"],
        "min blocks per node for <= 160 B/block at this node cost": (
            ((heavy["rss_growth_bytes"] - words) / heavy["nodes"]) / (MAX_BYTES_PER_BLOCK - TOKEN_BYTES_PER_BLOCK)
        ),
    }
    report(None, **figures)
