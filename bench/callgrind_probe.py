"""The operations the callgrind gate counts; run under valgrind by ``callgrind_gate.py``, never on its own.

``python bench/callgrind_probe.py HELPER.so`` under ``valgrind --tool=callgrind --instr-atstart=no``. Each
operation is prepared (and run once, so that first-call work such as imports and caches is not counted) with
instrumentation off; then ``begin()`` switches instrumentation and collection on, the operation runs as ONE
Python call, and ``end(name)`` switches them off and dumps the counts under ``name``. The dump holds the
instructions of that call (kvtier's facade, the binding, the core) plus a small constant for the two helper
calls around it, which the ``overhead`` entry measures on an empty call.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import PAYLOAD_BYTES, PROMPT_TOKENS, VOCAB, metadata_store  # noqa: E402

import kvtier  # noqa: E402
from kvtier.analytics.logs import read_log  # noqa: E402

MOONCAKE_SLICE = BENCH.parent / "tests" / "data" / "mooncake_conversation_head500.jsonl"
SLICE_CAPACITY_BLOCKS = 2_000  # small enough that the replay evicts


def main(helper_path: str) -> None:
    helper = ctypes.CDLL(helper_path)
    helper.kvtier_cg_end.argtypes = [ctypes.c_char_p]

    def measure(name: str, op: Callable[[], Any], prepare: Callable[[], Any] | None = None) -> None:
        if prepare is not None:
            prepare()
        helper.kvtier_cg_begin()
        op()
        helper.kvtier_cg_end(name.encode())

    prompt = np.random.default_rng(2026).integers(0, VOCAB, PROMPT_TOKENS, dtype=np.int32)
    ns = kvtier.Namespace(model="callgrind-gate")

    # Warm-up of every path (first calls import, fill caches and grow pools; none of that is counted).
    warm = metadata_store()
    warm.insert(prompt)
    warm.match(prompt)
    warm.evict(1 << 62)
    kvtier.block_keys(prompt[:64], ns)

    measure("overhead", lambda: None)

    store = metadata_store()
    measure("insert_32k", lambda: store.insert(prompt))
    measure("match_32k", lambda: store.match(prompt))
    measure("evict_32k", lambda: store.evict(1 << 62))
    assert store.stats().evicted == PROMPT_TOKENS // 16

    payloads = np.zeros((PROMPT_TOKENS // 16, PAYLOAD_BYTES), np.uint8)
    host = kvtier.Store(
        kvtier.StoreConfig(
            block_size=16, block_bytes=PAYLOAD_BYTES,
            host=kvtier.TierConfig(capacity_bytes=payloads.shape[0] * PAYLOAD_BYTES),
        )
    )
    host.insert(prompt, payloads)
    host.clear()
    measure("insert_32k_payload", lambda: host.insert(prompt, payloads))

    measure("block_keys_32k", lambda: kvtier.block_keys(prompt, ns))

    log = read_log(str(MOONCAKE_SLICE), progress=False)
    trace, _ = log.trace()
    cfg = kvtier.StoreConfig.for_blocks(
        SLICE_CAPACITY_BLOCKS, block_size=log.store_block_size(None), content=log.content
    )
    kvtier.Store(cfg).replay(trace)
    replay_store = kvtier.Store(cfg)
    hits: list[Any] = []
    measure("mooncake_replay_500", lambda: hits.append(replay_store.replay(trace)))
    assert int(hits[0].sum()) > 0 and replay_store.stats().evicted > 0


if __name__ == "__main__":
    main(sys.argv[1])
