"""Tree layout: a node per run of blocks (path compression, what kvtier does) against a node per block.

The same core builds both shapes: inserting a 32,768-token prompt once makes one node of 2,048 blocks;
inserting it one block longer at a time (16, 32, ... tokens) makes a chain of 2,048 one-block nodes,
because an insert never extends an existing node. Matching the full prompt then walks either one node
(one exact comparison of the run) or 2,048 nodes (a child-index probe and a comparison per block).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from harness import BLOCK_SIZE, PROMPT_BLOCKS, gate, interleaved, metadata_store


def test_run_nodes_beat_node_per_block(benchmark: Any, report: Callable[..., None], prompt: np.ndarray) -> None:
    runs = metadata_store()
    runs.insert(prompt, now=0.0)
    per_block = metadata_store()
    for i in range(1, PROMPT_BLOCKS + 1):
        per_block.insert(prompt[: i * BLOCK_SIZE], now=0.0)
    assert runs.stats().nodes == 1
    assert per_block.stats().nodes == PROMPT_BLOCKS
    assert runs.peek(prompt).num_blocks == per_block.peek(prompt).num_blocks == PROMPT_BLOCKS

    t = interleaved(
        {"runs": lambda: runs.match(prompt), "per_block": lambda: per_block.match(prompt)},
        rounds=30,
        inner=20,
    )
    benchmark.pedantic(lambda: runs.match(prompt), rounds=50, iterations=10)
    ratio = t["per_block"].median / t["runs"].median
    report(
        benchmark,
        **{
            "run nodes (1 node) match median us": t["runs"].median_us,
            "node per block (2,048 nodes) match median us": t["per_block"].median_us,
            "ratio node-per-block / run nodes": ratio,
        },
        **gate("run nodes faster than node per block", ratio, 2.0),
    )
    assert ratio >= 2.0
