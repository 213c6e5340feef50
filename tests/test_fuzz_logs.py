"""Malformed request logs never crash `kvtier analyze` or `kvtier cost` (issue 17, items 4 and 5).

A log either parses or raises :class:`LogFormatError` naming the line and the field; the CLI turns that into
``kvtier: error: ...`` and exit status 2. The first half pins the inputs that used to crash (integers past
int64, integer literals longer than Python converts, JSON nested past the recursion limit, lone surrogates);
the second half fuzzes the parsers with hypothesis on a fixed, derandomized budget (``FUZZ_EXAMPLES`` per test).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fuzz_helpers import fuzz_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from kvtier.analytics.formats import LogFormatError
from kvtier.analytics.logs import read_log
from kvtier.cost.trace import CostTrace, read_trace
from kvtier.errors import InvalidArgumentError, KvtierError

pytest.importorskip("tokenizers")
from test_analyze_formats import make_tokenizer  # noqa: E402 - one tiny trained tokenizer for text and chat logs

FUZZ_EXAMPLES = 150  # per fuzz test: a few seconds each
FUZZ = fuzz_settings(FUZZ_EXAMPLES)

# One valid record per format; fuzzing replaces their fields.
BASE: dict[str, dict[str, Any]] = {
    "mooncake": {"timestamp": 0, "input_length": 1100, "output_length": 1, "hash_ids": [1, 2, 3]},
    "bailian": {"chat_id": 1, "parent_chat_id": -1, "timestamp": 0, "input_length": 40, "output_length": 1, "hash_ids": [7, 8]},
    "kvtier": {"timestamp": 0, "session": "s", "tenant": "t", "tokens": [1, 2, 3, 4]},
    "openai": {
        "timestamp": 0,
        "session": "s",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "usage": {"completion_tokens": 3},
    },
}
FIELDS = sorted({k for r in BASE.values() for k in r} | {"block_size", "text", "created", "request", "user"})

DEEP = "[" * 100_000 + "]" * 100_000
LONG_INT = "9" * 5000  # more digits than Python's int-string limit (4,300)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def _line(fields: dict[str, str]) -> str:
    """A JSON object from already-encoded JSON values (so values json.dumps cannot write can be tested)."""
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in fields.items()) + "}"


def _encoded(rec: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in rec.items()}


def _log(tmp_path: Path, fmt: str, bad: str) -> str:
    """Two good records of ``fmt`` then ``bad`` on line 3."""
    good = json.dumps(BASE[fmt])
    path = tmp_path / f"{fmt}.jsonl"
    path.write_bytes((good + "\n" + good + "\n" + bad + "\n").encode("utf-8", "surrogateescape"))
    return str(path)


# ------------------------------------------------------------------------------------------- the crashes of issue 17
CRASHES: list[tuple[str, str, str, str, str, str]] = [
    # (id, format, field set, bad JSON value, field the error names, message fragment)
    ("ts-int64", "mooncake", "timestamp", str(2**63), "timestamp", "expected a number below 2**63"),
    ("ts-huge", "mooncake", "timestamp", str(10**400), "timestamp", "expected a number below 2**63"),
    ("ts-long-literal", "kvtier", "timestamp", LONG_INT, "timestamp", "got an integer of 5000 digits"),
    ("ts-inf", "mooncake", "timestamp", "1e400", "timestamp", "got Infinity"),
    ("ts-list", "kvtier", "timestamp", "[1]", "timestamp", "expected a finite number >= 0, got [1]"),
    ("input-int64", "mooncake", "input_length", str(2**63), "input_length", "expected an integer below 2**63"),
    ("input-float-huge", "mooncake", "input_length", "1e300", "input_length", "expected an integer below 2**63"),
    ("output-int64", "bailian", "output_length", str(2**64), "output_length", "expected an integer below 2**63"),
    ("output-long-literal", "mooncake", "output_length", LONG_INT, "output_length", "an integer of 5000 digits"),
    ("usage-int64", "openai", "usage", '{"completion_tokens": %d}' % 2**63, "usage.completion_tokens", "below 2**63"),
    ("block-size-int64", "kvtier", "block_size", str(2**63), "block_size", "expected an integer below 2**63"),
    ("ids-long-literal", "mooncake", "hash_ids", f"[1, {LONG_INT}]", "hash_ids", "an integer of 5000 digits"),
    ("tokens-long-literal", "kvtier", "tokens", f"[{LONG_INT}]", "tokens", "an integer of 5000 digits"),
    ("chat-long-literal", "bailian", "chat_id", LONG_INT, "chat_id", "an integer of at most"),
    ("ids-deep", "mooncake", "hash_ids", DEEP, "hash_ids", "nested too deeply"),
    ("messages-deep", "openai", "messages", DEEP, "messages", "nested too deeply"),
    ("tools-deep", "openai", "tools", DEEP, "tools", "nested too deeply"),
    ("session-surrogate", "kvtier", "session", '"a\\ud800"', "session", "not valid Unicode text"),
    ("tenant-surrogate", "kvtier", "tenant", '"\\udfff"', "tenant", "not valid Unicode text"),
    ("chat-surrogate", "bailian", "chat_id", '"\\ud800"', "chat_id", "not valid Unicode text"),
    ("content-surrogate", "openai", "messages", '[{"role": "user", "content": "x\\ud800"}]', "messages[0].content",
     "not valid Unicode"),
    ("tools-surrogate", "openai", "tools", '[{"type": "function", "function": {"name": "\\ud800"}}]', "tools",
     "not valid Unicode"),
    ("tool-calls-long-literal", "openai", "messages",
     '[{"role": "assistant", "content": "x", "tool_calls": [{"id": %s}]}]' % LONG_INT, "messages[0].tool_calls",
     "an integer of more than 4300 digits"),
    ("tools-long-literal", "openai", "tools", '[{"type": "function", "function": {"n": %s}}]' % LONG_INT, "tools",
     "an integer of more than 4300 digits"),
]


@pytest.mark.parametrize(
    ("fmt", "field", "value", "names", "fragment"), [c[1:] for c in CRASHES], ids=[c[0] for c in CRASHES]
)
def test_malformed_value_names_line_and_field(
    tmp_path: Path, tokenizer: str, fmt: str, field: str, value: str, names: str, fragment: str
) -> None:
    fields = _encoded(BASE[fmt])
    if field == "block_size":  # block_size goes with hash_ids
        fields.pop("tokens")
        fields["hash_ids"] = "[1]"
    fields[field] = value
    path = _log(tmp_path, fmt, _line(fields))
    with pytest.raises(LogFormatError) as e:
        read_log(path, fmt=fmt, tokenizer_path=tokenizer)  # type: ignore[arg-type]
    assert (e.value.line, e.value.field) == (3, names), str(e.value)
    assert fragment in str(e.value)
    assert str(e.value).startswith(f"{path}, line 3, field '{names}': ")


def test_deep_nesting_outside_fields_and_bad_utf8_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match=r"line 3: nested too deeply") as e:
        read_log(_log(tmp_path, "mooncake", DEEP), fmt="mooncake")
    assert e.value.field is None
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps(BASE["mooncake"]).encode() + b'\n{"timestamp": "\xc3\x28"}\n')
    with pytest.raises(LogFormatError, match=r"line 2: not UTF-8 text \(invalid continuation byte at byte 15\)"):
        read_log(str(path))


def test_cost_names_the_line_of_a_record_with_more_blocks_than_input(tmp_path: Path) -> None:
    """The cost models need every block inside the prompt; `kvtier analyze` takes such a log as it is."""
    fields = _encoded(BASE["mooncake"])
    fields["timestamp"] = "5"  # after the good records: line 3 is request 2 once sorted by time
    fields["hash_ids"] = "[1, 2, 3, 4]"  # 4 blocks of 512 tokens for 1,100 input tokens
    path = _log(tmp_path, "mooncake", _line(fields))
    with pytest.raises(LogFormatError, match=r"line 3, field 'hash_ids': has 4 blocks of 512 tokens but only 1100"):
        read_trace(path)
    assert read_log(path).num_requests == 3


def test_a_long_integer_in_an_unused_field_is_ignored(tmp_path: Path) -> None:
    """Python's digit limit is Python's, not JSON's: a field no parser reads may hold any integer."""
    fields = _encoded(BASE["mooncake"])
    fields["trace_note"] = LONG_INT
    log = read_log(_log(tmp_path, "mooncake", _line(fields)))
    assert log.num_requests == 3 and log.input_tokens.tolist() == [1100] * 3


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvtier", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("value", "field"),
    [(str(2**63), "input_length"), (LONG_INT, "input_length"), (DEEP, "hash_ids")],
    ids=["int64", "long-literal", "deep"],
)
def test_cli_exits_2_naming_line_and_field(tmp_path: Path, value: str, field: str) -> None:
    fields = _encoded(BASE["mooncake"])
    fields[field] = value
    path = _log(tmp_path, "mooncake", _line(fields))
    for cmd in (["analyze", "--no-progress", "--no-paper", path], ["cost", path]):
        p = _cli(*cmd)
        assert p.returncode == 2, (cmd, p.stderr[-2000:])
        assert p.stderr.startswith(f"kvtier: error: {path}, line 3, field '{field}': "), p.stderr[-2000:]
        assert "Traceback" not in p.stderr and p.stdout == ""


# ------------------------------------------------------------------------------------------- fuzzing
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_json_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
# Encoded JSON values, including ones json.dumps cannot produce (and Python cannot always decode).
_json_texts = st.one_of(
    _json_values.map(json.dumps),
    st.sampled_from(
        [LONG_INT, "-" + LONG_INT, DEEP, "[" * 990 + "]" * 990, '"\\ud800"', '["\\udc00"]', "1e400", "-0.0",
         str(2**63 - 1), str(2**63), str(2**64), f"[{2**64 - 1}, 1]", f"[{2**63}, 1]"]
    ),
    st.lists(st.integers(min_value=-(2**65), max_value=2**65), max_size=6).map(json.dumps),
    st.lists(st.sampled_from(["user", "system", "assistant", 5, None]), max_size=3).map(
        lambda roles: json.dumps([{"role": r, "content": "hi " * 3} for r in roles])
    ),
)


@st.composite
def _bad_records(draw: st.DrawFn) -> tuple[str | None, bytes]:
    """(format or None to detect, one line): a valid record with some fields replaced, dropped or added."""
    fmt = draw(st.sampled_from(sorted(BASE)))
    fields = _encoded(BASE[fmt])
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        if draw(st.integers(0, 5)) == 0:
            fields.pop(name, None)
        else:
            fields[name] = draw(_json_texts)
    line = _line(fields).encode("utf-8", "surrogatepass")
    cut = draw(st.sampled_from(["", "", "", "truncate", "byte"]))
    if cut == "truncate":
        line = line[: draw(st.integers(0, len(line)))]
    elif cut == "byte":
        at = draw(st.integers(0, len(line)))
        line = line[:at] + bytes([draw(st.integers(0, 255))]) + line[at:]
    return draw(st.sampled_from([fmt, None])), line.replace(b"\n", b" ")


def _check_parse(path: str, fmt: str | None, tokenizer: str, records: int) -> None:
    """read_log and the cost trace built from it: a result or a kvtier error, never anything else."""
    try:
        log = read_log(path, fmt=fmt, tokenizer_path=tokenizer)  # type: ignore[arg-type]
    except KvtierError:
        return
    assert log.num_requests == records
    try:
        CostTrace.from_request_log(log)  # what the parser accepted, the cost models take or refuse by line
    except LogFormatError as e:
        assert 1 <= e.line <= 3 and e.field is not None, str(e)


@FUZZ
@given(case=_bad_records())
def test_fuzz_log_parsers_raise_only_kvtier_errors(tmp_path: Path, tokenizer: str, case: tuple[str | None, bytes]) -> None:
    fmt, line = case
    path = tmp_path / "fuzz.jsonl"
    good = json.dumps(BASE[fmt or "mooncake"]).encode()
    path.write_bytes(good + b"\n" + good + b"\n" + line + b"\n")
    _check_parse(str(path), fmt, tokenizer, 2 + bool(line.strip()))


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_raw_bytes(tmp_path: Path, tokenizer: str, data: bytes) -> None:
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps(BASE["kvtier"]).encode() + b"\n" + data + b"\n")
    _check_parse(str(path), None, tokenizer, 1 + sum(1 for line in data.split(b"\n") if line.strip()))


_GZ_BODY = "".join(json.dumps(dict(BASE["mooncake"], timestamp=i)) + "\n" for i in range(500)).encode()
_GZ = gzip.compress(_GZ_BODY)


@settings(FUZZ, max_examples=FUZZ_EXAMPLES // 3)
@given(flips=st.lists(st.tuples(st.integers(10, len(_GZ) - 9), st.integers(0, 7)), min_size=1, max_size=4),
       cut=st.integers(0, len(_GZ)))
def test_fuzz_damaged_gzip(tmp_path: Path, flips: list[tuple[int, int]], cut: int) -> None:
    """Flipped bits and truncation of a .gz log: a kvtier error or the records that survived (zlib.error leaked)."""
    data = bytearray(_GZ)
    for at, bit in flips:
        data[at] ^= 1 << bit
    path = tmp_path / "damaged.jsonl.gz"
    path.write_bytes(bytes(data[: max(cut, len(data) // 2)]))
    try:
        log = read_log(str(path), fmt="mooncake")
    except KvtierError:
        return
    assert 1 <= log.num_requests <= 500


def test_nul_in_path_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="NUL"):
        read_log("log\0.jsonl")


@settings(FUZZ, max_examples=FUZZ_EXAMPLES // 5)
@given(case=_bad_records())
def test_fuzz_cli_exits_0_or_2(
    tmp_path: Path, tokenizer: str, capsys: pytest.CaptureFixture[str], case: tuple[str | None, bytes]
) -> None:
    """The commands themselves, in process: every malformed log ends in exit 2 with a one-line error."""
    from kvtier.cli import main

    fmt, line = case
    path = tmp_path / "cli.jsonl"
    good = json.dumps(BASE[fmt or "mooncake"]).encode()
    path.write_bytes(good + b"\n" + good + b"\n" + line + b"\n")
    fmt_args = ["--format", fmt] if fmt else []
    for cmd in (
        ["analyze", "--no-progress", "--no-paper", "--tokenizer", tokenizer, *fmt_args, str(path)],
        ["cost", "--tokenizer", tokenizer, *fmt_args, str(path)],
    ):
        rc = main(cmd)
        out, err = capsys.readouterr()
        assert rc in (0, 2), (cmd, rc, err)
        if rc == 2:
            assert err.startswith("kvtier: error: ") and err.count("\n") == 1, err
        else:
            assert out and not err.strip(), err
