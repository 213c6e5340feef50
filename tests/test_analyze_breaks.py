"""Prefix breaks on small hand-made session logs: which steps break, the cause of each, the tokens around it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvtier.analytics.breaks import CAUSES, BreakFinder, classify
from kvtier.analytics.logs import read_log

pytest.importorskip("tokenizers")
pytest.importorskip("tqdm")


def write(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([SYSTEM, "User: what is the weather? Assistant: sunny and warm."] * 10, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


SYSTEM = "System: You are a careful agent. Use the tools below when they help. " * 3
TURNS = [f"\nUser: question number {i} about the weather in city {i}?\nAssistant: answer {i}, sunny." for i in range(6)]


def session_log() -> list[dict[str, Any]]:
    """Seven sessions, two steps each (three for 'grows'), interleaved in time like a real log."""
    steps: dict[str, list[str]] = {
        # Each step extends the previous one: no break.
        "grows": [SYSTEM + TURNS[0], SYSTEM + TURNS[0] + TURNS[1], SYSTEM + "".join(TURNS[:3])],
        # The current time is rendered into the system prompt.
        "clock": [
            "Current time: 2025-03-01 12:00:00. " + SYSTEM + TURNS[0],
            "Current time: 2025-03-01 12:05:13. " + SYSTEM + TURNS[0] + TURNS[1],
        ],
        # A fresh request id in the prompt.
        "reqid": [
            SYSTEM + "Request id 3f2a9c1e-77b4-4d1a-9e0f-1a2b3c4d5e6f." + TURNS[0],
            SYSTEM + "Request id 0b8e4d2c-11aa-4f6e-8c3d-9f8e7d6c5b4a." + TURNS[0] + TURNS[1],
        ],
        # The template changed its indentation.
        "spaces": [
            SYSTEM + "Tools:\n  - search\n  - fetch" + TURNS[0],
            SYSTEM + "Tools:\n    - search\n    - fetch" + TURNS[0] + TURNS[1],
        ],
        # The oldest turns were dropped to fit the context.
        "trunc": [SYSTEM + "".join(TURNS[0:4]), SYSTEM + "".join(TURNS[2:5])],
        # An earlier message was edited.
        "edit": [SYSTEM + TURNS[0] + TURNS[1], SYSTEM + TURNS[0].replace("weather", "climate") + TURNS[1] + TURNS[2]],
        # A retry of an earlier, shorter step: a prefix of the previous prompt, so no break.
        "retry": [SYSTEM + TURNS[0] + TURNS[1], SYSTEM + TURNS[0]],
    }
    recs: list[dict[str, Any]] = []
    for k in range(3):
        for s, texts in steps.items():
            if k < len(texts):
                recs.append({"timestamp": 10 * k + len(recs), "session": s, "text": texts[k]})
    return recs


def test_breaks_by_cause_on_a_text_log(tmp_path: Path, tokenizer: str) -> None:
    log = read_log(
        write(tmp_path / "agents.jsonl", session_log()), tokenizer_path=tokenizer, break_block_size=4, break_examples=5
    )
    b = log.breaks
    assert b is not None
    assert b.sessions == 7 and b.steps_compared == 8
    by_session = {e.session: e for e in b.examples}
    assert {s: e.cause for s, e in by_session.items()} == {
        "clock": "timestamp",
        "reqid": "random_id",
        "spaces": "whitespace",
        "trunc": "truncated_history",
        "edit": "other",
    }
    assert b.breaks == 5 and "grows" not in by_session and "retry" not in by_session
    assert b.by_cause == {
        c: (1 if c in ("timestamp", "random_id", "whitespace", "truncated_history", "other") else 0) for c in CAUSES
    }
    assert b.blocks_lost == sum(b.blocks_lost_by_cause.values()) == sum(e.blocks_lost for e in b.examples)

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer)
    clock = by_session["clock"]
    prev = np.asarray(tok.encode(session_log()[1]["text"], add_special_tokens=False).ids)
    cur = np.asarray(tok.encode(session_log()[8]["text"], add_special_tokens=False).ids)
    p = int(np.flatnonzero(prev[: len(cur)] != cur[: len(prev)])[0])
    assert clock.position == p and clock.prev_length == len(prev)
    assert clock.blocks_lost == len(prev) // 4 - p // 4
    assert (
        clock.before.endswith("2025-03-01 12:0")
        and clock.prev_after.startswith("0:00")
        and clock.cur_after.startswith("5:13")
    )
    # Tokens around the break: decoded pieces, the divergent one at position - window_start.
    k = clock.position - clock.window_start
    assert "".join(clock.prev_tokens[:k]) == "".join(clock.cur_tokens[:k])
    assert clock.prev_tokens[k] != clock.cur_tokens[k]
    assert (clock.line, clock.prev_line) == (9, 2)


def test_tool_list_reordered_or_changed_in_chat_logs(tmp_path: Path, tokenizer: str) -> None:
    def tool(name: str) -> dict[str, Any]:
        return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}

    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "what is the weather?"}]
    more = [*msgs, {"role": "assistant", "content": "sunny"}, {"role": "user", "content": "and tomorrow?"}]
    recs = [
        {"timestamp": 0, "session": "r", "messages": msgs, "tools": [tool("search"), tool("fetch")]},
        {"timestamp": 1, "session": "r", "messages": more, "tools": [tool("fetch"), tool("search")]},
        {"timestamp": 2, "session": "c", "messages": msgs, "tools": [tool("search"), tool("fetch")]},
        {"timestamp": 3, "session": "c", "messages": more, "tools": [tool("search"), tool("browse")]},
        {"timestamp": 4, "session": "ok", "messages": msgs, "tools": [tool("search")]},
        {"timestamp": 5, "session": "ok", "messages": more, "tools": [tool("search")]},
    ]
    log = read_log(write(tmp_path / "chat.jsonl", recs), tokenizer_path=tokenizer)
    b = log.breaks
    assert b is not None and b.steps_compared == 3 and b.breaks == 2
    assert {e.session: e.cause for e in b.examples} == {"r": "tools_reordered", "c": "tools_changed"}


def test_token_log_without_text(tmp_path: Path) -> None:
    base = list(range(100, 164))
    recs = [
        {"timestamp": 0, "session": "t", "tokens": base},
        {"timestamp": 1, "session": "t", "tokens": base[:8] + base[24:] + [7, 7, 7]},  # tokens 8..23 dropped
        {"timestamp": 2, "session": "e", "tokens": base},
        {"timestamp": 3, "session": "e", "tokens": base[:40] + [1, 2, 3] + base[40:]},  # something inserted
    ]
    log = read_log(write(tmp_path / "tok.jsonl", recs), break_block_size=8)
    b = log.breaks
    assert b is not None and b.breaks == 2
    t, e = sorted(b.examples, key=lambda x: x.session, reverse=True)
    assert (t.session, t.cause, t.position, t.blocks_lost) == ("t", "truncated_history", 8, 51 // 8 - 1)
    assert (e.session, e.cause, e.position, e.blocks_lost) == ("e", "other", 40, 64 // 8 - 40 // 8)
    assert t.prev_after.split()[:2] == ["108", "109"] and t.cur_after.split()[:2] == ["124", "125"]
    assert t.prev_tokens[t.position - t.window_start] == "108"


def test_no_breaks_without_sessions_or_tokens(tmp_path: Path) -> None:
    recs = [{"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2]}]
    assert read_log(write(tmp_path / "m.jsonl", recs)).breaks is None


@pytest.mark.parametrize(
    ("prev", "cur", "cause"),
    [
        ("Today is Monday, the", "Today is Tuesday, the", "timestamp"),
        ("at 9:59 pm we", "at 10:00 pm we", "timestamp"),
        ("stamp 1712345678 ok", "stamp 1712349999 ok", "timestamp"),
        ("Date: March 3, 2025.", "Date: March 14, 2025.", "timestamp"),
        ("trace 9f86d081884c7d65 here", "trace 2c26b46b68ffc68f here", "random_id"),
        ("session sess_Ab3dE9fGh2Kq ok", "session sess_Zx8yW7vUt6Rs ok", "random_id"),
        ("a  b c d e f g", "a b c d e f g", "whitespace"),
        ("Hello world, friend", "Hello there, friend", "other"),
    ],
)
def test_classify(prev: str, cur: str, cause: str) -> None:
    c = next(i for i, (x, y) in enumerate(zip(prev, cur, strict=False)) if x != y)
    assert classify(prev, cur, c) == cause


def test_finder_ignores_growth_and_retries() -> None:
    f = BreakFinder(4)
    a = np.arange(20, dtype=np.int32)
    f.observe("s", 1, a[:10])
    f.observe("s", 2, a)  # grows
    f.observe("s", 3, a[:12])  # a retry of an earlier step
    f.observe("x", 4, a)  # another session's first step
    r = f.report()
    assert (r.sessions, r.steps_compared, r.breaks, r.blocks_lost) == (2, 2, 0, 0)
