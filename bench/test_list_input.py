"""Match when the engine holds tokens as a Python list (the agent-shaped tree of test_match, 32 steps).

Per step k an agent request has grown by 1,024 tokens. Three ways to look its prompt up:
  * ``list``:          ``store.match(lst_k)``: the core converts the whole list on every call;
  * ``numpy convert``: ``store.match(np.asarray(lst_k, dtype=np.int32))``: the whole list is converted on every call;
  * ``TokenSequence``: one ``kvtier.TokenSequence`` per request, ``extend``-ed by the step's 1,024 new tokens, then
    ``store.match(seq)``: only the new tokens are converted.
A round replays a whole 32-step session; the figures are per step (session time / 32), and the final step alone.

Issue gate: the TokenSequence path (extend + match) is faster than the convert-every-call path (ratio of medians).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from harness import PROMPT_BLOCKS, STEP_TOKENS, STEPS, AgentWorkload, gate, interleaved, metadata_store
from kvtier import TokenSequence

MIN_RATIO_SEQ_VS_CONVERT = 1.0


def test_list_input_per_step(benchmark: Any, report: Any, agent: AgentWorkload) -> None:
    store = metadata_store()
    for toks in agent.inserts():
        store.insert(toks)
    full_list = agent.final.tolist()
    step_lists = [full_list[: (k + 1) * STEP_TOKENS] for k in range(STEPS)]  # the engine's list at step k
    new_tokens = [full_list[k * STEP_TOKENS : (k + 1) * STEP_TOKENS] for k in range(STEPS)]  # arriving at step k
    final_list = step_lists[-1]

    def session_list() -> int:
        n = 0
        for lst in step_lists:
            n = store.match(lst).num_blocks
        return n

    def session_convert() -> int:
        n = 0
        for lst in step_lists:
            n = store.match(np.asarray(lst, dtype=np.int32)).num_blocks
        return n

    def session_seq() -> int:
        seq = TokenSequence()
        n = 0
        for new in new_tokens:
            seq.extend(new)
            n = store.match(seq).num_blocks
        return n

    assert session_list() == session_convert() == session_seq() == PROMPT_BLOCKS
    last_seq = TokenSequence(full_list[: (STEPS - 1) * STEP_TOKENS])

    def final_step_seq() -> None:
        last_seq.extend(new_tokens[-1])
        store.match(last_seq)
        last_seq.truncate((STEPS - 1) * STEP_TOKENS)

    t = interleaved(
        {
            "seq": session_seq,
            "convert": session_convert,
            "list": session_list,
            "final_seq": final_step_seq,
            "final_convert": lambda: store.match(np.asarray(final_list, dtype=np.int32)),
            "final_list": lambda: store.match(final_list),
            "final_asarray_only": lambda: np.asarray(final_list, dtype=np.int32),
        },
        rounds=15,
        inner={"seq": 3, "list": 1, "convert": 1, "final_seq": 20, "final_list": 5},
    )
    benchmark.pedantic(session_seq, rounds=30, iterations=1, warmup_rounds=2)

    per_step = {k: t[k].median_us / STEPS for k in ("seq", "convert", "list")}
    r_convert = t["convert"].median / t["seq"].median
    r_list = t["list"].median / t["seq"].median
    figures = {
        "per step us: TokenSequence (extend 1,024 + match)": per_step["seq"],
        "per step us: np.asarray(list) + match": per_step["convert"],
        "per step us: match(list)": per_step["list"],
        "final step (32,768 tokens) us: TokenSequence": t["final_seq"].median_us,
        "final step us: np.asarray(list) + match": t["final_convert"].median_us,
        "final step us: np.asarray(list) alone": t["final_asarray_only"].median_us,
        "final step us: match(list)": t["final_list"].median_us,
        "ratio convert / TokenSequence (session)": r_convert,
        "ratio match(list) / TokenSequence (session)": r_list,
        "ratio convert / match(list) (session)": t["convert"].median / t["list"].median,
        **gate("TokenSequence faster than convert", r_convert, MIN_RATIO_SEQ_VS_CONVERT),
    }
    report(benchmark, **figures)
    assert r_convert > MIN_RATIO_SEQ_VS_CONVERT, figures
