"""Measures the resident memory of a metadata-only store holding ~1M blocks; run in a fresh process.

    python bench/memory_probe.py --content tokens --blocks 1000000

Prints one JSON object. The workload is shaped like agent sessions: every session starts with the same system
prompt (128 blocks), then runs 16 steps; each step extends the session's prompt by 32 blocks and also stores a
diverging 8-block branch off the previous step's prompt (a retried or alternative step). Sessions are added until
the store holds at least ``--blocks`` blocks. All token (or block id) input is generated before the first RSS
reading; inserts read slices of it, so the RSS growth is the store's own memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import numpy as np
import psutil

SYSTEM_BLOCKS = 128
STEPS = 16
EXTEND_BLOCKS = 32
BRANCH_BLOCKS = 8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--content", choices=["tokens", "block_ids"], required=True)
    ap.add_argument("--blocks", type=int, default=1_000_000)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--extend-blocks", type=int, default=EXTEND_BLOCKS, help="blocks a step adds to the prompt")
    ap.add_argument("--branch-blocks", type=int, default=BRANCH_BLOCKS, help="blocks of each step's branch")
    args = ap.parse_args()
    bs = args.block_size
    extend, branch_len = args.extend_blocks, args.branch_blocks
    per_session = STEPS * (extend + branch_len)
    sessions = -(-(args.blocks - SYSTEM_BLOCKS) // per_session)
    session_blocks = SYSTEM_BLOCKS + STEPS * extend  # the final prompt of a session

    # All input, generated up front: distinct fresh blocks for every block a session adds.
    fresh_blocks = SYSTEM_BLOCKS + sessions * per_session
    if args.content == "block_ids":
        width = 1
        pool = np.arange(fresh_blocks, dtype=np.uint64)  # each id names its whole prefix, as in Mooncake traces
    else:
        width = bs
        pool = np.random.default_rng(11).integers(0, 128_256, fresh_blocks * bs, dtype=np.int32)
    prompt = np.empty(session_blocks * width, dtype=pool.dtype)
    branch = np.empty((session_blocks + branch_len) * width, dtype=pool.dtype)
    prompt[: SYSTEM_BLOCKS * width] = pool[: SYSTEM_BLOCKS * width]

    from kvtier import Store, StoreConfig, TierConfig

    store = Store(
        StoreConfig(
            block_size=bs, block_bytes=1, metadata_only=True, content=args.content, host=TierConfig(capacity_bytes=None)
        )
    )

    gc.collect()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    nxt = SYSTEM_BLOCKS  # next fresh block in the pool
    for _ in range(sessions):
        length = SYSTEM_BLOCKS
        for _ in range(STEPS):
            # Branch: the previous prompt, then branch_len fresh blocks.
            branch[: length * width] = prompt[: length * width]
            branch[length * width : (length + branch_len) * width] = pool[nxt * width : (nxt + branch_len) * width]
            nxt += branch_len
            # Extension: extend fresh blocks appended to the prompt.
            prompt[length * width : (length + extend) * width] = pool[nxt * width : (nxt + extend) * width]
            nxt += extend
            length += extend
            store.insert(prompt[: length * width])
            store.insert(branch[: (length - extend + branch_len) * width])
    elapsed = time.perf_counter() - t0
    gc.collect()
    rss1 = proc.memory_info().rss
    st = store.stats()
    blocks, nodes = st.blocks, st.nodes
    growth = rss1 - rss0
    print(
        json.dumps(
            {
                "content": args.content,
                "block_size": bs,
                "extend_blocks": extend,
                "branch_blocks": branch_len,
                "sessions": sessions,
                "blocks": blocks,
                "nodes": nodes,
                "rss_growth_bytes": growth,
                "bytes_per_block": growth / blocks,
                "seconds": elapsed,
            }
        )
    )


if __name__ == "__main__":
    main()
