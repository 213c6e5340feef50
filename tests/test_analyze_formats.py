"""`kvtier analyze` inputs: format detection, each parser, streaming details, and every malformed-record error.

Every error must name the line and the field, and the CLI must turn it into `kvtier: error: ...` with exit
code 2 and no traceback. Tokenizer tests train a tiny byte-level BPE in the test (no downloads).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvtier.analytics.formats import LogFormatError, render_chat
from kvtier.analytics.logs import read_log
from kvtier.analytics.sweep import SweepConfig, run_config
from kvtier.errors import InvalidArgumentError

pytest.importorskip("tokenizers")
pytest.importorskip("tqdm")


def write(path: Path, records: list[Any]) -> str:
    """One JSON line per record (strings are written as they are)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def make_tokenizer(path: Path) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["You are a helpful assistant. Answer briefly.", "user: what is the weather in Paris today?"] * 10
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


MOONCAKE = [
    {"timestamp": 0, "input_length": 1500, "output_length": 10, "hash_ids": [1, 2, 3]},
    {"timestamp": 1000, "input_length": 1100, "output_length": 20, "hash_ids": [1, 2, 4]},
]


# ------------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        (MOONCAKE[0], "mooncake"),
        (
            {
                "chat_id": 1,
                "parent_chat_id": -1,
                "timestamp": 0.5,
                "input_length": 40,
                "output_length": 3,
                "hash_ids": [7, 8, 9],
            },
            "bailian",
        ),
        ({"timestamp": 0, "session": "a", "tokens": [1, 2, 3]}, "kvtier"),
        ({"timestamp": 0, "session": "a", "hash_ids": [1], "block_size": 16}, "kvtier"),
        ({"timestamp": 0, "messages": [{"role": "user", "content": "hi"}]}, "openai"),
        ({"timestamp": 0, "request": {"messages": [{"role": "user", "content": "hi"}]}}, "openai"),
    ],
)
def test_detects_each_format(tmp_path: Path, tokenizer: str, record: dict[str, Any], fmt: str) -> None:
    log = read_log(write(tmp_path / "log.jsonl", [record]), tokenizer_path=tokenizer)
    assert log.format == fmt
    assert log.num_requests == 1


def test_undetectable_format_names_the_line_and_asks_for_format(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", ["", {"foo": 1, "bar": 2}])
    with pytest.raises(LogFormatError, match=r"line 2: cannot tell the log format .*bar, foo.*--format") as e:
        read_log(path)
    assert e.value.line == 2 and e.value.field is None


# ------------------------------------------------------------------------------------------- parsers
def test_mooncake_times_are_ms_and_blocks_are_512_tokens(tmp_path: Path) -> None:
    log = read_log(write(tmp_path / "m.jsonl", MOONCAKE))
    assert (log.format, log.kind, log.block_tokens, log.content) == ("mooncake", "block_ids", 512, "block_ids")
    np.testing.assert_array_equal(log.timestamps, [0.0, 1.0])
    np.testing.assert_array_equal(log.input_tokens, [1500, 1100])
    np.testing.assert_array_equal(log.output_tokens, [10, 20])
    np.testing.assert_array_equal(log.offsets, [0, 3, 6])
    np.testing.assert_array_equal(log.data, [1, 2, 3, 1, 2, 4])
    assert log.sessions is None and log.breaks is None


def test_bailian_hashes_are_matched_position_by_position(tmp_path: Path) -> None:
    # Request 3 has request 1's hashes at positions 1 and 2, but not at 0: per-block hashes are not
    # chained, so it shares nothing. Request 2 shares the first two blocks.
    recs = [
        {
            "chat_id": 1,
            "parent_chat_id": -1,
            "timestamp": 0,
            "input_length": 48,
            "output_length": 5,
            "hash_ids": [10, 20, 30],
            "type": "text",
            "turn": 1,
        },
        {
            "chat_id": 2,
            "parent_chat_id": 1,
            "timestamp": 1,
            "input_length": 40,
            "output_length": 5,
            "hash_ids": [10, 20, 40],
        },
        {
            "chat_id": 3,
            "parent_chat_id": -1,
            "timestamp": 2,
            "input_length": 48,
            "output_length": 5,
            "hash_ids": [99, 20, 30],
        },
        {
            "chat_id": 4,
            "parent_chat_id": 2,
            "timestamp": 3,
            "input_length": 64,
            "output_length": 5,
            "hash_ids": [10, 20, 40, 50],
        },
    ]
    log = read_log(write(tmp_path / "b.jsonl", recs))
    assert (log.format, log.kind, log.block_tokens, log.content) == ("bailian", "block_hashes", 16, "tokens")
    assert log.store_block_size(None) == 1 and log.tokens_per_block(None) == 16
    # Sessions follow parent_chat_id to the root.
    assert log.sessions is not None
    assert [log.session_table[i] for i in log.sessions] == ["1", "1", "3", "1"]
    r = run_config(log, SweepConfig("lru", None))
    assert r.hit_blocks == 0 + 2 + 0 + 3
    assert r.total_blocks == 13
    assert r.hit_tokens == 0 + 32 + 0 + 48  # 16 tokens per block, capped at input_length


def test_bailian_large_hashes_are_remapped(tmp_path: Path) -> None:
    big = [2**63 + 5, 2**40, 7]
    recs = [
        {"chat_id": "a", "parent_chat_id": -1, "timestamp": 0, "input_length": 48, "output_length": 1, "hash_ids": big},
        {
            "chat_id": "b",
            "parent_chat_id": "a",
            "timestamp": 1,
            "input_length": 48,
            "output_length": 1,
            "hash_ids": big[:2] + [8],
        },
    ]
    log = read_log(write(tmp_path / "b.jsonl", recs))
    assert log.data.dtype == np.int32 and int(log.data.max()) < 4
    assert run_config(log, SweepConfig("lru", None)).hit_blocks == 2
    # Only small ids and ids >= 2**63 (the largest stays above 2**31 once read as unsigned).
    for rec, ids in zip(recs, ([2**63, 1, 2], [2**63, 1, 3]), strict=True):
        rec["hash_ids"] = ids
    log = read_log(write(tmp_path / "b2.jsonl", recs))
    assert int(log.data.min()) >= 0 and run_config(log, SweepConfig("lru", None)).hit_blocks == 2


def test_kvtier_tokens_hash_ids_and_iso_times(tmp_path: Path) -> None:
    recs = [
        {
            "timestamp": "2025-01-01T00:00:00Z",
            "session": "s1",
            "tenant": "acme",
            "tokens": list(range(40)),
            "output_length": 7,
        },
        {"timestamp": "2025-01-01T00:00:30+00:00", "session": 2, "tokens": list(range(20))},
    ]
    log = read_log(write(tmp_path / "k.jsonl", recs))
    assert (log.format, log.kind, log.block_tokens) == ("kvtier", "tokens", None)
    np.testing.assert_allclose(log.timestamps - log.timestamps[0], [0.0, 30.0])
    np.testing.assert_array_equal(log.input_tokens, [40, 20])
    assert log.session_table == ("s1", "2")
    assert log.tenant_table == ("acme", "")  # a request without a tenant gets the unnamed one
    ids = [
        {"timestamp": 0, "session": "a", "hash_ids": [5, 6], "block_size": 32},
        {"timestamp": 1, "session": "a", "hash_ids": [5, 6, 7], "block_size": 32, "input_length": 90},
    ]
    log2 = read_log(write(tmp_path / "h.jsonl", ids))
    assert (log2.kind, log2.block_tokens) == ("block_ids", 32)
    np.testing.assert_array_equal(log2.input_tokens, [64, 90])


def test_kvtier_text_and_openai_chat_are_tokenized(tmp_path: Path, tokenizer: str) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer)
    text = "You are a helpful assistant. " * 5
    log = read_log(
        write(tmp_path / "t.jsonl", [{"timestamp": 0, "session": "s", "text": text}]), tokenizer_path=tokenizer
    )
    np.testing.assert_array_equal(log.data, tok.encode(text, add_special_tokens=False).ids)
    assert int(log.input_tokens[0]) == len(log.data)

    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    rec = {
        "created": 1_700_000_000,
        "user": "u1",
        "messages": messages,
        "tools": tools,
        "usage": {"completion_tokens": 12},
    }
    log = read_log(write(tmp_path / "o.jsonl", [rec]), tokenizer_path=tokenizer)
    rendered, info = render_chat(messages, tools)
    assert rendered.startswith("<|im_start|>system\n# Tools\n") and "<|im_start|>user\nweather?<|im_end|>\n" in rendered
    assert info is not None and info.names == ("get_weather",)
    np.testing.assert_array_equal(log.data, tok.encode(rendered, add_special_tokens=False).ids)
    assert log.session_table == ("u1",) and int(log.output_tokens[0]) == 12


def test_gzip_and_out_of_order_times(tmp_path: Path) -> None:
    recs = [
        dict(MOONCAKE[1]),
        dict(MOONCAKE[0]),
        {"timestamp": 1000, "input_length": 10, "output_length": 1, "hash_ids": [9]},
    ]
    path = tmp_path / "m.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    log = read_log(str(path))
    assert log.reordered
    np.testing.assert_array_equal(log.timestamps, [0.0, 1.0, 1.0])  # stable: file order among equal times
    np.testing.assert_array_equal(log.input_tokens, [1500, 1100, 10])
    np.testing.assert_array_equal(log.data, [1, 2, 3, 1, 2, 4, 9])
    plain = read_log(write(tmp_path / "p.jsonl", recs))
    assert plain.sha256 == log.sha256  # the hash is of the decompressed bytes


def test_streams_many_records_in_batches(tmp_path: Path) -> None:
    recs = [{"timestamp": i, "input_length": 512, "output_length": 1, "hash_ids": [0, i + 1]} for i in range(10_000)]
    log = read_log(write(tmp_path / "m.jsonl", recs), progress=True)  # tqdm stays quiet off a terminal
    assert log.num_requests == 10_000 and log.offsets[-1] == 20_000
    assert run_config(log, SweepConfig("lru", None)).hit_blocks == 9_999


def test_one_kind_of_content_per_log(tmp_path: Path, tokenizer: str) -> None:
    recs = [
        {"timestamp": 0, "session": "a", "tokens": [1, 2]},
        {"timestamp": 1, "session": "a", "hash_ids": [1], "block_size": 16},
    ]
    with pytest.raises(LogFormatError, match=r"line 2, field 'hash_ids': line 1 started a log of tokens") as e:
        read_log(write(tmp_path / "k.jsonl", recs))
    assert e.value.line == 2
    recs = [
        {"timestamp": 0, "session": "a", "hash_ids": [1], "block_size": 16},
        {"timestamp": 1, "session": "a", "hash_ids": [1], "block_size": 32},
    ]
    with pytest.raises(LogFormatError, match=r"line 2, field 'block_size'"):
        read_log(write(tmp_path / "k2.jsonl", recs))


def test_text_needs_a_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match=r"line 1, field 'text': text needs --tokenizer"):
        read_log(write(tmp_path / "t.jsonl", [{"timestamp": 0, "session": "s", "text": "hello"}]))
    with pytest.raises(LogFormatError, match=r"line 1, field 'messages': text needs --tokenizer"):
        read_log(write(tmp_path / "o.jsonl", [{"timestamp": 0, "messages": []}]))


def test_empty_log_and_bad_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no records"):
        read_log(write(tmp_path / "e.jsonl", ["", "  "]))
    with pytest.raises(InvalidArgumentError, match="cannot load tokenizer"):
        read_log(write(tmp_path / "m.jsonl", MOONCAKE), tokenizer_path=str(tmp_path / "missing.json"))


# ------------------------------------------------------------------------------------------- malformed records
M = {"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}
B = {"chat_id": 1, "parent_chat_id": -1, "timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}
K = {"timestamp": 0, "session": "s", "tokens": [1, 2, 3]}
O = {"timestamp": 0, "messages": [{"role": "user", "content": "hi"}]}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(base)
    for k, v in changes.items():
        if v is ...:
            out.pop(k)
        else:
            out[k] = v
    return out


MALFORMED: list[tuple[str, str, dict[str, Any] | str, str | None, str]] = [
    # (id, format, bad record, field, message fragment)
    ("not-json", "mooncake", '{"timestamp": 0,', None, "not valid JSON"),
    ("not-object", "mooncake", "[1, 2]", None, "expected a JSON object, got list"),
    ("not-utf8", "mooncake", "\udcff", None, "not UTF-8"),
    ("m-no-timestamp", "mooncake", _with(M, timestamp=...), "timestamp", "missing"),
    ("m-neg-timestamp", "mooncake", _with(M, timestamp=-5), "timestamp", "finite number >= 0, got -5"),
    ("m-str-timestamp", "mooncake", _with(M, timestamp="soon"), "timestamp", "finite number >= 0, got 'soon'"),
    ("m-bool-input", "mooncake", _with(M, input_length=True), "input_length", "integer >= 0, got true"),
    ("m-float-input", "mooncake", _with(M, input_length=1.5), "input_length", "integer >= 0, got 1.5"),
    ("m-no-output", "mooncake", _with(M, output_length=...), "output_length", "missing"),
    ("m-ids-not-list", "mooncake", _with(M, hash_ids="1,2"), "hash_ids", "expected a list of integers"),
    ("m-ids-float", "mooncake", _with(M, hash_ids=[1, 2.5]), "hash_ids", "got 2.5"),
    ("m-ids-negative", "mooncake", _with(M, hash_ids=[1, -2]), "hash_ids", "got -2"),
    ("m-ids-huge", "mooncake", _with(M, hash_ids=[1, 2**64]), "hash_ids", "out of range"),
    ("m-ids-str", "mooncake", _with(M, hash_ids=[1, "x"]), "hash_ids", "got 'x'"),
    ("m-ids-null", "mooncake", _with(M, hash_ids=None), "hash_ids", "got null"),
    ("b-no-chat", "bailian", _with(B, chat_id=...), "chat_id", "missing"),
    ("b-bad-chat", "bailian", _with(B, chat_id=[1]), "chat_id", "string or an integer"),
    ("b-no-parent", "bailian", _with(B, parent_chat_id=...), "parent_chat_id", "missing"),
    ("b-bad-parent", "bailian", _with(B, parent_chat_id=1.5), "parent_chat_id", "string or an integer"),
    ("b-bad-ids", "bailian", _with(B, hash_ids=[[1]]), "hash_ids", "expected a list of integers"),
    ("k-no-session", "kvtier", _with(K, session=...), "session", "missing"),
    ("k-bad-session", "kvtier", _with(K, session=None), "session", "string or an integer"),
    ("k-bad-time", "kvtier", _with(K, timestamp="yesterday"), "timestamp", "ISO 8601"),
    ("k-bad-tenant", "kvtier", _with(K, tenant={"a": 1}), "tenant", "string or an integer"),
    ("k-no-content", "kvtier", _with(K, tokens=...), "tokens", "exactly one of"),
    ("k-two-contents", "kvtier", _with(K, text="hi"), "text", "got tokens and text"),
    ("k-token-too-big", "kvtier", _with(K, tokens=[1, 2**31]), "tokens", "out of range"),
    ("k-token-negative", "kvtier", _with(K, tokens=[-1]), "tokens", "got -1"),
    ("k-text-not-str", "kvtier", _with(K, tokens=..., text=5), "text", "expected a string"),
    ("k-ids-no-block-size", "kvtier", _with(K, tokens=..., hash_ids=[1]), "block_size", "missing"),
    ("k-zero-block-size", "kvtier", _with(K, tokens=..., hash_ids=[1], block_size=0), "block_size", ">= 1"),
    ("k-bad-output", "kvtier", _with(K, output_length=-1), "output_length", "integer >= 0, got -1"),
    ("k-bad-input", "kvtier", _with(K, input_length="9"), "input_length", "integer >= 0"),
    ("o-no-time", "openai", _with(O, timestamp=...), "timestamp", "missing"),
    ("o-messages-not-list", "openai", _with(O, messages="hi"), "messages", "list of messages"),
    ("o-message-not-object", "openai", _with(O, messages=["hi"]), "messages[0]", "message object"),
    ("o-role", "openai", _with(O, messages=[{"content": "hi"}]), "messages[0].role", "expected a string"),
    (
        "o-content",
        "openai",
        _with(O, messages=[{"role": "user", "content": 5}]),
        "messages[0].content",
        "string or a list of parts",
    ),
    ("o-tools", "openai", _with(O, tools=["x"]), "tools", "tool objects"),
    ("o-usage", "openai", _with(O, usage={"completion_tokens": "many"}), "usage.completion_tokens", "integer >= 0"),
]


@pytest.mark.parametrize(("fmt", "bad", "field", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_record_names_line_and_field(
    tmp_path: Path, tokenizer: str, fmt: str, bad: dict[str, Any] | str, field: str | None, fragment: str
) -> None:
    good = {"mooncake": M, "bailian": B, "kvtier": K, "openai": O}[fmt]
    path = tmp_path / "log.jsonl"
    body = (
        json.dumps(good) + "\n" + json.dumps(good) + "\n\n" + (bad if isinstance(bad, str) else json.dumps(bad)) + "\n"
    )
    path.write_bytes(body.encode("utf-8", "surrogateescape"))
    with pytest.raises(LogFormatError) as e:
        read_log(str(path), fmt=fmt, tokenizer_path=tokenizer)  # type: ignore[arg-type]
    assert e.value.line == 4, str(e.value)
    assert e.value.field == field, str(e.value)
    assert fragment in str(e.value)
    assert str(e.value).startswith(f"{path}, line 4" + (f", field '{field}'" if field else "") + ": ")


# ------------------------------------------------------------------------------------------- CLI errors
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvtier", "analyze", "--no-progress", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_bad_record_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", [M, M, _with(M, hash_ids=[1, "x"])])
    p = _cli(path)
    assert p.returncode == 2
    assert p.stderr.startswith("kvtier: error: ") and "line 3, field 'hash_ids'" in p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def _cli_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from kvtier.cli import main

    try:
        rc = main(["analyze", "--no-progress", *args])
    except SystemExit as e:  # argparse's usage errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["MISSING"], "No such file or directory"),
        (["LOG", "--capacity", "10x"], "--capacity"),
        (["LOG", "--capacity", "0"], "argument --capacity: '0' is below the minimum of 1 block"),
        (["LOG", "--capacity", "32G"], "--capacity 32G is bytes (32 GiB; K/M/G alone mean KiB/MiB/GiB): give --model"),
        (["LOG", "--policy", "fifo"], "not one of lru, lfu, ttl"),
        (["LOG", "--ttl", "5 minutes"], "not a duration"),
        (["LOG", "--policy", "ttl"], "--policy ttl needs --ttl"),
        (["LOG", "--policy", "lru", "--ttl", "5m"], "add ttl to --policy"),
        (["LOG", "--block-size", "16"], "--block-size needs token ids or text"),
        (["LOG", "--block-size", "0"], "argument --block-size: '0' is below the minimum of 1 token"),
        (["LOG", "--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["LOG", "--kv-bytes-per-token", "0"], "argument --kv-bytes-per-token: '0' is below the minimum of 1 byte"),
        (["LOG", "--format", "kvtier"], "line 1, field 'session': missing"),
        (["LOG", "--tokenizer", "nope.json"], "cannot load tokenizer"),
        (["LOG", "--json", "--csv"], "cannot both write to standard output"),
        (["LOG", "--report", "FILE/sub"], "Not a directory"),
    ],
)
def test_cli_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    log = write(tmp_path / "m.jsonl", MOONCAKE)
    (tmp_path / "FILE").write_text("a file, not a folder")
    subst = {"LOG": log, "MISSING": str(tmp_path / "MISSING"), "FILE/sub": str(tmp_path / "FILE" / "sub")}
    rc, out, err = _cli_in_process(capsys, *[subst.get(a, a) for a in args])
    assert rc == 2, err
    assert "error: " in err and fragment in err, err
    assert "Traceback" not in err
