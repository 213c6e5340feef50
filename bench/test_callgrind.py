"""Instruction-count gate (callgrind): core operations against ``callgrind_baseline.json`` (see callgrind_gate.py).

Counted, one call each: insert, match and evict of a 32,768-token prompt (metadata-only store), an insert with
2 KiB payloads per block, the chained block keys of the prompt, and the batch replay of the first 500 requests
of the Mooncake conversation trace (``tests/data``) into a 2,000-block LRU cache. A count more than
``TOLERANCE`` over its baseline fails; update the baseline with ``python bench/callgrind_gate.py --update``.
"""

from __future__ import annotations

from typing import Any

import pytest
from callgrind_gate import TOLERANCE, UPDATE_COMMAND, compare, load_baseline, measure, valgrind


@pytest.mark.skipif(valgrind() is None, reason="valgrind is not installed (apt-get install valgrind): no callgrind gate")
def test_instruction_counts_within_the_baseline(report: Any) -> None:
    counts = measure()
    rows, failures = compare(counts, load_baseline())
    report(None, **{name: f"{n:,} instructions" for name, n in sorted(counts.items())},
           tolerance=f"+{TOLERANCE:.0%}", update=UPDATE_COMMAND)
    assert not failures, "\n".join(rows + failures)


def test_compare_flags_growth_missing_and_new_operations() -> None:
    baseline = {"counts": {"overhead": 1_000, "match_32k": 100_000, "evict_32k": 10_000}, "environment": {}}
    rows, failures = compare({"overhead": 5_000, "match_32k": 100_900, "evict_32k": 10_200}, baseline)
    assert rows[1].startswith("match_32k") and "(+0.900%)" in rows[1]
    assert failures[0] == "evict_32k: 10,200 instructions, +2.00% over the baseline's 10,000"
    assert failures[-1] == f"if the change is intended, update the baseline: {UPDATE_COMMAND}"
    assert not any(f.startswith(("overhead", "match_32k")) for f in failures)  # overhead is never gated
    _, failures = compare({"overhead": 1_000, "match_32k": 100_000, "insert_32k": 5}, baseline)
    assert failures[0] == f"evict_32k: in the baseline but not measured (update with `{UPDATE_COMMAND}`)"
    assert failures[1] == f"insert_32k: measured but not in the baseline (update with `{UPDATE_COMMAND}`)"
