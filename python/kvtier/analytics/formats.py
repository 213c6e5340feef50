"""Request-log formats: detection and one parser per format, record by record.

Each parser turns one decoded JSON object into a :class:`Record` (times in seconds, lengths in
tokens) or raises :class:`LogFormatError` naming the file, the line and the field. Streaming the
file, tokenizing text and assembling arrays is :mod:`kvtier.analytics.logs`' job.

=========  ====================================================================================
format     fields of one JSON line
=========  ====================================================================================
mooncake   ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids`` (chained prefix
           ids of 512-token blocks)
bailian    ``chat_id``, ``parent_chat_id`` (-1: a root), ``timestamp`` (s), ``input_length``,
           ``output_length``, ``hash_ids`` (one hash per 16-token block, *not* chained)
kvtier     ``timestamp`` (s or ISO 8601), ``session``, optional ``tenant``, one of ``tokens`` /
           ``text`` / ``hash_ids`` + ``block_size``; optional ``input_length``, ``output_length``
openai     ``messages`` (chat request body, optionally under ``request``), optional ``tools``,
           ``timestamp`` or ``created``, ``session`` / ``session_id`` / ``user``, ``tenant``,
           ``output_length`` or ``usage.completion_tokens``
=========  ====================================================================================
"""

from __future__ import annotations

import json
import reprlib
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from kvtier.errors import InvalidArgumentError

__all__ = [
    "Format",
    "FORMATS",
    "LogFormatError",
    "Record",
    "ChatTools",
    "detect_format",
    "parse_record",
    "render_chat",
    "MOONCAKE_BLOCK_TOKENS",
    "BAILIAN_BLOCK_TOKENS",
]

Format = Literal["mooncake", "bailian", "kvtier", "openai"]
FORMATS: tuple[Format, ...] = ("mooncake", "bailian", "kvtier", "openai")
MOONCAKE_BLOCK_TOKENS = 512  # Mooncake FAST'25 appendix A.1: hash_ids cover 512-token blocks
BAILIAN_BLOCK_TOKENS = 16  # qwen-bailian-usagetraces-anon: files are named *_blksz_16.jsonl
_TOKEN_LIMIT = 1 << 31  # the core's default bound on token ids
_ID_LIMIT = 1 << 64
# Times and counts land in float64 / int64 columns: every number of a record is below 2**63.
_NUMBER_LIMIT = 1 << 63
_NUMBER_BOUND = "2**63"
_SHOW = reprlib.Repr()  # containers too deep or too long for json.dumps are shown in bounded form
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother = 3, 30, 30


class LogFormatError(InvalidArgumentError):
    """A malformed record: the message names the file, the line (1-based) and the field.

    Attributes
    ----------
    path, line, field
        Where the problem is; ``field`` is ``None`` when the whole line is at fault (not JSON).
    """

    def __init__(self, path: str, line: int, field: str | None, message: str) -> None:
        self.path, self.line, self.field = path, line, field
        where = f"{path}, line {line}" + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class ChatTools:
    """The tool list of a chat request, kept to classify prefix breaks.

    Attributes
    ----------
    names
        Tool names in the order given.
    canonical
        One JSON string per tool (keys sorted): equal sets in another order mean "reordered".
    end
        Character offset where the rendered tool section ends in the prompt text.
    """

    names: tuple[str, ...]
    canonical: tuple[str, ...]
    end: int


class Record(NamedTuple):
    """One request, normalised.

    ``blocks`` holds chained prefix ids (uint64; mooncake, kvtier ``hash_ids``) or per-block
    hashes (bailian, uint64 before remapping); ``tokens`` int32 ids; ``text`` text still to tokenize.
    Exactly one of the three is set.
    """

    line: int
    timestamp: float  # seconds
    session: str | None
    tenant: str | None
    input_length: int | None  # tokens; None: the length of ``tokens`` / ``text`` once tokenized
    output_length: int
    blocks: npt.NDArray[np.uint64] | None
    block_size: int | None  # tokens per block of ``blocks``
    tokens: npt.NDArray[np.int32] | None
    text: str | None
    tools: ChatTools | None
    parent: str | None  # bailian: parent chat id ("" for a root)
    chat_id: str | None


class _Ctx:
    """Where a record came from, to raise errors that name it."""

    __slots__ = ("path", "line")

    def __init__(self, path: str, line: int) -> None:
        self.path = path
        self.line = line

    def error(self, field: str | None, message: str) -> LogFormatError:
        return LogFormatError(self.path, self.line, field, message)


class _LongInt:
    """An integer literal with more digits than Python converts (``sys.get_int_max_str_digits``).

    Only the error path decodes with it (see :func:`_object`), so the field validators can name the
    field that holds it instead of failing the whole line.
    """

    __slots__ = ("digits",)

    def __init__(self, literal: str) -> None:
        self.digits = len(literal.lstrip("-"))

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"


def _show(value: object) -> str:
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError, RecursionError):  # _LongInt, or nesting deeper than the encoder goes
            text = _SHOW.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(rec: dict[str, Any], field: str, ctx: _Ctx) -> Any:
    if field not in rec:
        raise ctx.error(field, "missing")
    return rec[field]


def _too_big(value: object) -> bool:
    """A JSON number of a record that does not fit its column (see ``_NUMBER_LIMIT``)."""
    if isinstance(value, _LongInt):
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= _NUMBER_LIMIT


def _number(value: object, field: str, ctx: _Ctx) -> float:
    if _too_big(value):  # inf too
        raise ctx.error(field, f"expected a number below {_NUMBER_BOUND}, got {_show(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:  # NaN fails >= 0
        raise ctx.error(field, f"expected a finite number >= 0, got {_show(value)}")
    return float(value)


def _count(value: object, field: str, ctx: _Ctx) -> int:
    if _too_big(value):
        raise ctx.error(field, f"expected an integer below {_NUMBER_BOUND}, got {_show(value)}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ctx.error(field, f"expected an integer >= 0, got {_show(value)}")
    return value


def _text(value: str, field: str, ctx: _Ctx) -> str:
    """``value`` if it can be written as UTF-8 (JSON's ``\\ud800`` escapes decode to lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ctx.error(field, f"not valid Unicode text ({e.reason} at character {e.start})") from None
    return value


def _json(value: object, field: str, ctx: _Ctx, *, sort_keys: bool = False) -> str:
    """``value`` re-encoded as JSON text for a prompt (it came from the record, so it encodes unless it holds
    an integer too long for Python or a lone surrogate)."""
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=sort_keys)
    except (TypeError, ValueError):  # a _LongInt (TypeError), or one the digit limit refuses (ValueError)
        raise ctx.error(field, f"an integer of more than {sys.get_int_max_str_digits()} digits") from None
    return _text(text, field, ctx)


def _seconds(value: object, field: str, ctx: _Ctx) -> float:
    """A number of seconds, or an ISO 8601 date-time (naive means UTC) as seconds since the epoch."""
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ctx.error(field, f"expected seconds or an ISO 8601 date-time, got {_show(value)}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return _number(dt.timestamp(), field, ctx)
    return _number(value, field, ctx)


def _key(value: object, field: str, ctx: _Ctx) -> str:
    """A session / tenant / chat id: a string or an integer."""
    if isinstance(value, str):
        return _text(value, field, ctx)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, _LongInt):
        limit = sys.get_int_max_str_digits()
        raise ctx.error(field, f"expected a string or an integer of at most {limit} digits, got {_show(value)}")
    raise ctx.error(field, f"expected a string or an integer, got {_show(value)}")


def _int_array(
    value: object, field: str, ctx: _Ctx, limit: int, what: str
) -> npt.NDArray[np.int64] | npt.NDArray[np.uint64]:
    if not isinstance(value, list):
        raise ctx.error(field, f"expected a list of {what}, got {_show(value)}")
    if not value:
        return np.zeros(0, dtype=np.int64)
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError):
        arr = np.asarray(value, dtype=object)
    if arr.dtype.kind in "fO" and limit > 1 << 63 and all(type(v) is int and 0 <= v < limit for v in value):
        arr = np.asarray(value, dtype=np.uint64)  # ids >= 2**63 next to smaller ones (numpy made floats)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        bad = next((v for v in value if isinstance(v, bool) or not isinstance(v, int)), value[0])
        if isinstance(bad, int) and not isinstance(bad, bool):  # big ints that numpy keeps as objects
            bad = next((v for v in value if isinstance(v, int) and not 0 <= v < limit), bad)
            raise ctx.error(field, f"expected a list of {what}, got {_show(bad)} (out of range)")
        raise ctx.error(field, f"expected a list of {what}, got {_show(bad)}")
    if arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise ctx.error(field, f"expected a list of {what}, got {int(arr.min())}")
    if int(arr.max()) >= limit:
        raise ctx.error(field, f"expected a list of {what}, got {int(arr.max())} (out of range)")
    return arr


def _ids(value: object, field: str, ctx: _Ctx) -> npt.NDArray[np.uint64]:
    return _int_array(value, field, ctx, _ID_LIMIT, "integers in [0, 2**64)").astype(np.uint64, copy=False)


def _tokens(value: object, field: str, ctx: _Ctx) -> npt.NDArray[np.int32]:
    return _int_array(value, field, ctx, _TOKEN_LIMIT, "token ids in [0, 2**31)").astype(np.int32, copy=False)


def _int_literal(literal: str) -> int | _LongInt:
    try:
        return int(literal)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        return _LongInt(literal)


def _decode(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError:  # an integer too long for int(): decode again, keeping it for its field to name
        return json.loads(line, parse_int=_int_literal)


def _object(line: bytes, ctx: _Ctx) -> dict[str, Any]:
    try:
        rec = _decode(line)
    except UnicodeDecodeError as e:
        raise ctx.error(None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ctx.error(None, f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise _too_deep(line, ctx) from None
    if not isinstance(rec, dict):
        raise ctx.error(None, f"expected a JSON object, got {type(rec).__name__}")
    return rec


def _too_deep(line: bytes, ctx: _Ctx) -> LogFormatError:
    """The error for a record nested deeper than Python can decode, naming the top-level field that is."""
    limit = sys.getrecursionlimit() // 4  # the decoder failed at about the recursion limit; any deep field will do
    depth, field, key, i, n = 0, None, None, 0, len(line)
    while i < n:
        c = line[i]
        if c == 0x22:  # a string: skip it, remembering it as a key of the top-level object
            j = i + 1
            while j < n and line[j] != 0x22:
                j += 2 if line[j] == 0x5C else 1
            if depth == 1:
                key = line[i + 1 : j].decode("utf-8", "replace")
            i = j
        elif c in b"[{":
            depth += 1
            if depth == 2:
                field = key
            if depth > limit:
                break
        elif c in b"]}":
            depth -= 1
        i += 1
    return ctx.error(field, "nested too deeply for Python's JSON decoder")


def detect_format(rec: dict[str, Any], path: str, line: int) -> Format:
    """The format of a log from its first record's fields."""
    request = rec.get("request")
    if "messages" in rec or (isinstance(request, dict) and "messages" in request):
        return "openai"
    if "chat_id" in rec or "parent_chat_id" in rec:
        return "bailian"
    if any(k in rec for k in ("session", "tokens", "text", "block_size")):
        return "kvtier"
    if "hash_ids" in rec and "timestamp" in rec:
        return "mooncake"
    fields = ", ".join(sorted(rec)[:8]) or "none"
    raise LogFormatError(
        path,
        line,
        None,
        f"cannot tell the log format from its fields ({fields}); name it with --format {'|'.join(FORMATS)}",
    )


# ------------------------------------------------------------------------------------------- per format
def _mooncake(rec: dict[str, Any], ctx: _Ctx) -> Record:
    ts = _number(_get(rec, "timestamp", ctx), "timestamp", ctx) / 1000.0
    inp = _count(_get(rec, "input_length", ctx), "input_length", ctx)
    out = _count(_get(rec, "output_length", ctx), "output_length", ctx)
    ids = _ids(_get(rec, "hash_ids", ctx), "hash_ids", ctx)
    return Record(ctx.line, ts, None, None, inp, out, ids, MOONCAKE_BLOCK_TOKENS, None, None, None, None, None)


def _bailian(rec: dict[str, Any], ctx: _Ctx) -> Record:
    chat = _key(_get(rec, "chat_id", ctx), "chat_id", ctx)
    parent_v = _get(rec, "parent_chat_id", ctx)
    parent = "" if parent_v in (-1, "-1", None) else _key(parent_v, "parent_chat_id", ctx)
    ts = _number(_get(rec, "timestamp", ctx), "timestamp", ctx)
    inp = _count(_get(rec, "input_length", ctx), "input_length", ctx)
    out = _count(_get(rec, "output_length", ctx), "output_length", ctx)
    hashes = _ids(_get(rec, "hash_ids", ctx), "hash_ids", ctx)
    return Record(ctx.line, ts, None, None, inp, out, hashes, BAILIAN_BLOCK_TOKENS, None, None, None, parent, chat)


def _optional_count(rec: dict[str, Any], field: str, ctx: _Ctx) -> int | None:
    v = rec.get(field)
    return None if v is None else _count(v, field, ctx)


def _kvtier(rec: dict[str, Any], ctx: _Ctx) -> Record:
    ts = _seconds(_get(rec, "timestamp", ctx), "timestamp", ctx)
    session = _key(_get(rec, "session", ctx), "session", ctx)
    tenant = None if rec.get("tenant") is None else _key(rec["tenant"], "tenant", ctx)
    out = _optional_count(rec, "output_length", ctx) or 0
    inp = _optional_count(rec, "input_length", ctx)
    given = [k for k in ("tokens", "text", "hash_ids") if rec.get(k) is not None]
    if len(given) != 1:
        raise ctx.error(
            given[1] if len(given) > 1 else "tokens",
            "expected exactly one of 'tokens', 'text', 'hash_ids'" + (f", got {' and '.join(given)}" if given else ""),
        )
    if given[0] == "tokens":
        return Record(
            ctx.line,
            ts,
            session,
            tenant,
            inp,
            out,
            None,
            None,
            _tokens(rec["tokens"], "tokens", ctx),
            None,
            None,
            None,
            None,
        )
    if given[0] == "text":
        text = rec["text"]
        if not isinstance(text, str):
            raise ctx.error("text", f"expected a string, got {_show(text)}")
        text = _text(text, "text", ctx)
        return Record(ctx.line, ts, session, tenant, inp, out, None, None, None, text, None, None, None)
    ids = _ids(rec["hash_ids"], "hash_ids", ctx)
    bs = _count(_get(rec, "block_size", ctx), "block_size", ctx)
    if bs == 0:
        raise ctx.error("block_size", "expected an integer >= 1 (tokens per block of hash_ids), got 0")
    return Record(ctx.line, ts, session, tenant, inp, out, ids, bs, None, None, None, None, None)


def _content_text(content: object, field: str, ctx: _Ctx) -> str:
    """A message's content: a string, or a list of parts (text parts kept, others as placeholders)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type", "text")
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                else:
                    parts.append(f"[{kind}]")
            else:
                raise ctx.error(field, f"expected text parts, got {_show(part)}")
        return "".join(parts)
    raise ctx.error(field, f"expected a string or a list of parts, got {_show(content)}")


def render_chat(messages: list[Any], tools: list[Any] | None, ctx: _Ctx | None = None) -> tuple[str, ChatTools | None]:
    """Renders a chat request to one prompt string (a generic ChatML layout).

    ::

        <|im_start|>system
        # Tools
        {"type": "function", "function": {...}}       one JSON line per tool, in the order given
        <|im_end|>
        <|im_start|>{role}
        {content}{tool calls as JSON}<|im_end|>        one block per message

    Engines apply their own chat template; what matters for prefix reuse is that the rendering is
    deterministic and append-only, which this one is. No generation prompt is appended, so a
    step's prompt is a prefix of the next step's when the conversation only grows.
    """
    c = ctx if ctx is not None else _Ctx("<chat>", 0)
    if not isinstance(messages, list):
        raise c.error("messages", f"expected a list of messages, got {_show(messages)}")
    out: list[str] = []
    info: ChatTools | None = None
    if tools:
        if not isinstance(tools, list):
            raise c.error("tools", f"expected a list of tools, got {_show(tools)}")
        lines, names, canon = [], [], []
        for t in tools:
            if not isinstance(t, dict):
                raise c.error("tools", f"expected tool objects, got {_show(t)}")
            fn = t.get("function", t)
            names.append(str(fn.get("name", "")) if isinstance(fn, dict) else "")
            lines.append(_json(t, "tools", c))
            canon.append(_json(t, "tools", c, sort_keys=True))
        out.append("<|im_start|>system\n# Tools\n" + "\n".join(lines) + "\n<|im_end|>\n")
        info = ChatTools(tuple(names), tuple(canon), len(out[0]))
    for i, m in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(m, dict):
            raise c.error(field, f"expected a message object, got {_show(m)}")
        role = m.get("role")
        if not isinstance(role, str):
            raise c.error(f"{field}.role", f"expected a string, got {_show(role)}")
        _text(role, f"{field}.role", c)
        body = _text(_content_text(m.get("content"), f"{field}.content", c), f"{field}.content", c)
        calls = m.get("tool_calls")
        if calls:
            body += "\n" + _json(calls, f"{field}.tool_calls", c)
        out.append(f"<|im_start|>{role}\n{body}<|im_end|>\n")
    return "".join(out), info


def _openai(rec: dict[str, Any], ctx: _Ctx) -> Record:
    body = rec
    if "messages" not in rec and isinstance(rec.get("request"), dict):
        body = rec["request"]
    if "timestamp" in rec:
        ts = _seconds(rec["timestamp"], "timestamp", ctx)
    elif "created" in rec:
        ts = _seconds(rec["created"], "created", ctx)
    else:
        raise ctx.error("timestamp", "missing (seconds or ISO 8601; 'created' is accepted too)")
    session = None
    for field in ("session", "session_id", "user"):
        if rec.get(field) is not None:
            session = _key(rec[field], field, ctx)
            break
    if session is None and isinstance(body.get("user"), (str, int)):
        session = _key(body["user"], "request.user", ctx)
    tenant = None if rec.get("tenant") is None else _key(rec["tenant"], "tenant", ctx)
    out = _optional_count(rec, "output_length", ctx)
    if out is None:
        for holder in (
            rec.get("usage"),
            (rec.get("response") or {}).get("usage") if isinstance(rec.get("response"), dict) else None,
        ):
            if isinstance(holder, dict) and holder.get("completion_tokens") is not None:
                out = _count(holder["completion_tokens"], "usage.completion_tokens", ctx)
                break
    text, tools = render_chat(body.get("messages"), body.get("tools"), ctx)  # type: ignore[arg-type]
    return Record(ctx.line, ts, session, tenant, None, out or 0, None, None, None, text, tools, None, None)


_PARSERS = {"mooncake": _mooncake, "bailian": _bailian, "kvtier": _kvtier, "openai": _openai}


def parse_record(fmt: Format, line: bytes, path: str, lineno: int) -> Record:
    """Parses one line of a log in format ``fmt``; raises :class:`LogFormatError` naming line and field."""
    ctx = _Ctx(path, lineno)
    rec = _object(line, ctx)
    try:
        return _PARSERS[fmt](rec, ctx)
    except RecursionError:  # re-encoding a value nested almost as deep as the decoder allows (tool calls)
        raise _too_deep(line, ctx) from None


def first_object(line: bytes, path: str, lineno: int) -> dict[str, Any]:
    """Decodes one line to a JSON object (for format detection)."""
    return _object(line, _Ctx(path, lineno))
