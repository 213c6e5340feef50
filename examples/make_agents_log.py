"""Writes a small agent request log and a tokenizer for it, to try `kvtier analyze` on text logs.

    python examples/make_agents_log.py            # writes examples/agents.jsonl and examples/tokenizer.json
    kvtier analyze examples/agents.jsonl --tokenizer examples/tokenizer.json ...

The log is kvtier JSONL with `text` prompts (docs/analyze.md): eight agent sessions of eight steps on a shared
system prompt with tool descriptions, each step re-sending the whole history plus a new observation. Three sessions
break their own prefix the way real agents do: one stamps the current time into its system prompt, one puts a
random request id in it, and one moves a tool to the end of its list halfway. The tokenizer is a word-level
`tokenizer.json` (Hugging Face `tokenizers`, from the `analytics` extra) trained on the log itself, digits split
one by one, so every word of the log has its own id. The same files come out on every run (seeded).
"""

from __future__ import annotations

import json
import os
import random
import sys
from datetime import datetime, timedelta, timezone

WORDS = (
    "the agent reads file line error test build pass fail call tool result output input user request value list "
    "index cache block prefix token model server query table row column update insert delete select join where "
    "order group count sum check plan step next done found missing retry wait log trace span metric latency "
    "memory disk network host device queue batch thread lock open close write read parse format schema field "
    "config option default path folder module function class method return raise import export version branch "
    "commit merge diff patch review comment issue fix bug feature release deploy rollback status health ready"
).split()
TOOLS = [
    ("search_code", "Search the repository for a pattern and return matching lines with their paths."),
    ("read_file", "Read a file from the repository, optionally a range of lines."),
    ("run_tests", "Run the test suite or a subset of it and return the failures."),
    ("edit_file", "Replace a unique string in a file with another string."),
    ("list_folder", "List the files in a folder of the repository."),
    ("query_db", "Run a read-only SQL query against the analytics database."),
]
START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _system(tools: list[tuple[str, str]], head: str = "") -> str:
    lines = [head] if head else []
    lines.append("You are a careful software agent. Think step by step, call one tool at a time, and stop when done.")
    lines += [json.dumps({"type": "function", "function": {"name": n, "description": d}}) for n, d in tools]
    return "\n".join(lines) + "\n"


def make_log(seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(seed)
    records: list[dict[str, object]] = []
    for s in range(8):
        session = f"agent-{s}"
        history = f"User: {_words(rng, 40)}\n"
        t = START + timedelta(seconds=17 * s)
        tools = list(TOOLS)
        for step in range(8):
            if s == 0:
                system = _system(tools, f"Current time: {t.strftime('%Y-%m-%d %H:%M:%S')}")
            elif s == 1:
                system = _system(tools, f"Request id: {rng.randrange(10**12)}")
            else:
                if s == 2 and step == 4:
                    tools = tools[1:] + tools[:1]
                system = _system(tools)
            history += f"Observation: {_words(rng, 60)}\nAssistant: call {rng.choice(TOOLS)[0]} {_words(rng, 12)}\n"
            records.append(
                {"timestamp": t.isoformat().replace("+00:00", "Z"), "session": session, "text": system + history,
                 "output_length": 20 + rng.randrange(60)}
            )
            t += timedelta(seconds=45 + rng.randrange(120))
    records.sort(key=lambda r: str(r["timestamp"]))
    return records


def train_tokenizer(texts: list[str]) -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    return tok


def main(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    records = make_log()
    log = os.path.join(folder, "agents.jsonl")
    with open(log, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    tok = train_tokenizer([str(r["text"]) for r in records])
    tok.save(os.path.join(folder, "tokenizer.json"))  # type: ignore[attr-defined]
    print(f"wrote {log} ({len(records)} requests) and {os.path.join(folder, 'tokenizer.json')}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
