"""Streams a request log into flat arrays (:class:`RequestLog`) and builds :class:`kvtier.ReplayTrace` s.

The file is read line by line (never whole), hashed on the way (to recognise published traces),
with a tqdm progress bar on a terminal. Text is tokenized in batches. Three kinds of content::

    kind          data (per request, back to back)          store content   store block
    block_ids     chained prefix ids (Mooncake, kvtier)     "block_ids"     1 id = 1 block
    block_hashes  per-block hashes (Bailian), remapped      "tokens"        1 "token" = 1 block
                  to dense int32 ids
    tokens        token ids (kvtier tokens/text, OpenAI)    "tokens"        block_size tokens

Per-block hashes that are not chained are matched position by position by the radix tree itself: each
hash is one "token" of a store whose block holds one token, so two requests share a block exactly when
all hashes up to it are equal.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from kvtier.analytics.formats import FORMATS, Format, LogFormatError, Record, detect_format, first_object, parse_record
from kvtier.config import DEFAULT_BLOCK_SIZE, Namespace
from kvtier.errors import InvalidArgumentError
from kvtier.replay import ReplayTrace

if TYPE_CHECKING:
    from kvtier.analytics.breaks import BreakReport

__all__ = ["RequestLog", "read_log", "load_tokenizer", "Kind"]

Kind = Literal["block_ids", "block_hashes", "tokens"]
_BATCH = 256  # records tokenized per encode_batch call
_FLUSH = 4096  # per-request arrays gathered into one chunk every this many requests
_ANALYZE_MODEL = "kvtier-analyze"  # the model name of the namespaces a replay uses (tenants differ)


@dataclass(frozen=True)
class RequestLog:
    """A whole log as arrays, in arrival order (stable-sorted by time if the file was not).

    Attributes
    ----------
    path, format, sha256
        The file, its format and the SHA-256 of its (decompressed) bytes.
    kind
        ``"block_ids"``, ``"block_hashes"`` or ``"tokens"`` (see the module docstring).
    block_tokens
        Tokens per block fixed by the log (512 Mooncake, 16 Bailian, ``block_size`` of kvtier
        ``hash_ids``); ``None`` for token logs, whose block size is chosen at replay.
    timestamps
        ``float64[n]`` seconds.
    input_tokens, output_tokens
        ``int64[n]`` tokens per request.
    offsets, data
        ``uint64[n + 1]`` and the content: request ``r`` is ``data[offsets[r]:offsets[r+1]]``
        (blocks for block kinds, tokens for ``tokens``).
    sessions, session_table, tenants, tenant_table
        Optional ``uint32[n]`` indices into the tables.
    lines
        ``int64[n]``: the line of the file each request came from (1-based), for errors found later.
    reordered
        The file was not in time order and was stable-sorted.
    breaks
        Prefix breaks between consecutive steps of a session (token logs with sessions), else ``None``.
    """

    path: str
    format: Format
    sha256: str
    kind: Kind
    block_tokens: int | None
    timestamps: npt.NDArray[np.float64]
    input_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.uint64]
    data: npt.NDArray[Any]
    sessions: npt.NDArray[np.uint32] | None = None
    session_table: tuple[str, ...] = ()
    tenants: npt.NDArray[np.uint32] | None = None
    tenant_table: tuple[str, ...] = ()
    lines: npt.NDArray[np.int64] | None = None
    reordered: bool = False
    breaks: BreakReport | None = None
    _traces: dict[int, tuple[ReplayTrace, npt.NDArray[np.int64]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def num_requests(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.timestamps[-1] - self.timestamps[0]) if self.num_requests else 0.0

    @property
    def content(self) -> Literal["block_ids", "tokens"]:
        """The store content that replays this log."""
        return "block_ids" if self.kind == "block_ids" else "tokens"

    def tokens_per_block(self, block_size: int | None) -> int:
        """Tokens in one cached block: the log's own block for block kinds, else ``block_size``."""
        if self.block_tokens is not None:
            return self.block_tokens
        if block_size is None:
            raise InvalidArgumentError("a token log needs a block size")
        return block_size

    def store_block_size(self, block_size: int | None) -> int:
        """The ``StoreConfig.block_size`` to replay with (1 for per-block hashes)."""
        if self.kind == "block_hashes":
            return 1
        return self.tokens_per_block(block_size)

    def trace(self, block_size: int | None = None) -> tuple[ReplayTrace, npt.NDArray[np.int64]]:
        """The replay trace at ``block_size`` (token logs only; block logs ignore it).

        Returns the trace and ``int64[n]``: full blocks per request. Built once per block size.
        """
        key = 0 if self.kind != "tokens" else self.tokens_per_block(block_size)
        hit = self._traces.get(key)
        if hit is not None:
            return hit
        lengths = np.diff(self.offsets).astype(np.int64)
        if self.kind != "tokens":
            offsets, data, nblocks = self.offsets, self.data, lengths
        else:
            bs = key
            nblocks = lengths // bs
            keep = nblocks * bs
            offsets = np.zeros(self.num_requests + 1, dtype=np.uint64)
            np.cumsum(nblocks, out=offsets[1:])
            if np.array_equal(keep, lengths):
                data = self.data
            else:  # cut each request to its full blocks: one gather, no Python per request
                starts = np.zeros(self.num_requests + 1, dtype=np.int64)
                np.cumsum(keep, out=starts[1:])
                shift = self.offsets[:-1].astype(np.int64) - starts[:-1]
                data = self.data[np.repeat(shift, keep) + np.arange(int(starts[-1]), dtype=np.int64)]
        namespaces = None
        table: tuple[Namespace, ...] = ()
        if self.tenants is not None:
            namespaces = self.tenants
            table = tuple(Namespace(model=_ANALYZE_MODEL, tenant=t) for t in self.tenant_table)
        tr = ReplayTrace(offsets, data, self.timestamps, namespaces=namespaces, namespace_table=table)
        self._traces[key] = (tr, nblocks)
        return tr, nblocks


def load_tokenizer(path: str) -> Any:
    """Loads a Hugging Face ``tokenizer.json`` (the ``tokenizers`` package, imported here)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - depends on the environment
        raise InvalidArgumentError(
            "--tokenizer needs the 'tokenizers' package: pip install 'kvtier[analytics]'"
        ) from None
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception for unreadable files
        raise InvalidArgumentError(f"cannot load tokenizer {path!r}: {e}") from None


def _open(path: str) -> tuple[io.BufferedReader, io.BufferedIOBase, int]:
    """(raw file, reader, size in bytes): gzip is read through, the progress follows the raw file."""
    if "\0" in path:
        raise InvalidArgumentError(f"cannot open {path!r}: a path cannot contain a NUL character")
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    size = os.fstat(raw.fileno()).st_size
    if path.endswith(".gz"):
        return raw, gzip.GzipFile(fileobj=raw, mode="rb"), size
    return raw, raw, size


def _lines(path: str, digest: Any, progress: bool) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line; hashes every byte into ``digest``."""
    from tqdm import tqdm

    raw, reader, size = _open(path)
    # disable=None: tqdm shows the bar only when stderr is a terminal.
    disable = None if progress else True
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=os.path.basename(path),
        disable=disable,
        file=sys.stderr,
        leave=False,
    )
    try:
        pending, done = 0, 0
        for n, line in enumerate(reader, 1):
            digest.update(line)
            pending += len(line)
            if pending >= 1 << 20:
                pos = raw.tell()
                bar.update(pos - done)
                done, pending = pos, 0
            if line.strip():
                yield n, line
        bar.update(size - done)
    except (OSError, EOFError, zlib.error) as e:  # truncated or damaged gzip and the like
        raise InvalidArgumentError(f"cannot read {path}: {e}") from None
    finally:
        bar.close()
        reader.close()
        raw.close()


class _Columns:
    """Growing per-request columns and content chunks."""

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.line: list[int] = []
        self.inp: list[int] = []
        self.out: list[int] = []
        self.sess: list[int] = []
        self.ten: list[int] = []
        self.lengths: list[int] = []
        self.pending: list[npt.NDArray[Any]] = []
        self.chunks: list[npt.NDArray[Any]] = []

    def add(self, line: int, ts: float, inp: int, out: int, sess: int, ten: int, content: npt.NDArray[Any]) -> None:
        self.line.append(line)
        self.ts.append(ts)
        self.inp.append(inp)
        self.out.append(out)
        self.sess.append(sess)
        self.ten.append(ten)
        self.lengths.append(int(content.shape[0]))
        self.pending.append(content)
        if len(self.pending) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.chunks.append(np.concatenate(self.pending))
            self.pending = []


class _Interner:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.ids)
        return i

    def table(self) -> tuple[str, ...]:
        return tuple(self.ids)


def read_log(
    path: str,
    *,
    fmt: Format | None = None,
    tokenizer: Any = None,
    tokenizer_path: str | None = None,
    progress: bool = False,
    break_block_size: int = DEFAULT_BLOCK_SIZE,
    break_examples: int = 3,
) -> RequestLog:
    """Reads a request log (streaming) into a :class:`RequestLog`.

    Parameters
    ----------
    path
        A JSON Lines file (``.gz`` is decompressed on the fly).
    fmt
        One of ``mooncake``, ``bailian``, ``kvtier``, ``openai``; ``None`` detects it from the first record.
    tokenizer, tokenizer_path
        A loaded ``tokenizers.Tokenizer`` or the path of a ``tokenizer.json``; needed for text and chat logs.
    progress
        Show a progress bar (on a terminal only).
    break_block_size
        Block size (tokens) at which prefix breaks count the blocks they lose.
    break_examples
        Examples kept per break cause.

    Raises
    ------
    LogFormatError
        A malformed record (the message names the line and the field).
    InvalidArgumentError
        An empty log, mixed content kinds, or text without a tokenizer.
    OSError
        The file cannot be opened.
    """
    if fmt is not None and fmt not in FORMATS:
        raise InvalidArgumentError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if tokenizer is None and tokenizer_path is not None:
        tokenizer = load_tokenizer(tokenizer_path)
    name = path
    digest = hashlib.sha256()
    cols = _Columns()
    sessions, tenants = _Interner(), _Interner()
    any_session = any_tenant = False
    kind: Kind | None = None
    block_tokens: int | None = None
    first_line = 0
    roots: dict[str, str] = {}  # bailian: chat id -> root chat id (the session)
    finder = None
    queue: list[Record] = []

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=False))

    def commit(batch: list[Record]) -> None:
        nonlocal finder
        texts = [r.text for r in batch if r.text is not None]
        encoded = iter(tokenizer.encode_batch(texts, add_special_tokens=False)) if texts else iter(())
        for r in batch:
            content: npt.NDArray[Any]
            if r.text is not None:
                content = np.asarray(next(encoded).ids, dtype=np.int32)
            elif r.tokens is not None:
                content = r.tokens
            else:
                assert r.blocks is not None
                content = r.blocks
            inp = r.input_length
            if inp is None:
                inp = int(content.shape[0]) if kind == "tokens" else int(content.shape[0]) * (block_tokens or 0)
            sess = -1
            if r.session is not None:
                sess = sessions(r.session)
                if kind == "tokens":
                    if finder is None:
                        from kvtier.analytics.breaks import BreakFinder

                        finder = BreakFinder(
                            break_block_size, decode if tokenizer is not None else None, break_examples
                        )
                    finder.observe(r.session, r.line, np.asarray(content, dtype=np.int32), r.text, r.tools)
            ten = tenants(r.tenant) if r.tenant is not None else -1
            cols.add(r.line, r.timestamp, inp, r.output_length, sess, ten, content)

    for lineno, line in _lines(name, digest, progress):
        if fmt is None:
            fmt = detect_format(first_object(line, name, lineno), name, lineno)
        rec = parse_record(fmt, line, name, lineno)
        if rec.text is not None or rec.tokens is not None:
            rkind: Kind = "tokens"
        else:
            rkind = "block_hashes" if fmt == "bailian" else "block_ids"
        if kind is None:
            kind, block_tokens, first_line = rkind, rec.block_size, lineno
        elif rkind != kind or rec.block_size != block_tokens:
            field = "hash_ids" if rkind != "tokens" else ("text" if rec.text is not None else "tokens")
            if rkind == kind:
                field = "block_size"
            what = f"{kind}" + (f" of {block_tokens}-token blocks" if block_tokens else "")
            raise LogFormatError(
                name,
                lineno,
                field,
                f"line {first_line} started a log of {what}; one log must use one kind of content throughout",
            )
        if rec.text is not None and tokenizer is None:
            raise LogFormatError(
                name,
                lineno,
                "text" if fmt == "kvtier" else "messages",
                "text needs --tokenizer FILE (a tokenizer.json)",
            )
        if fmt == "bailian":
            assert rec.chat_id is not None and rec.parent is not None
            root = roots.get(rec.parent, rec.parent) if rec.parent else rec.chat_id
            roots[rec.chat_id] = root
            rec = rec._replace(session=root)
        any_session |= rec.session is not None
        any_tenant |= rec.tenant is not None
        queue.append(rec)
        if len(queue) >= _BATCH:
            commit(queue)
            queue = []
    if queue:
        commit(queue)
    if fmt is None or kind is None:
        raise InvalidArgumentError(f"{name}: no records (the file is empty)")
    cols.flush()
    return _assemble(
        name, fmt, digest.hexdigest(), kind, block_tokens, cols, sessions, tenants, any_session, any_tenant, finder
    )


def _dense_int32(data: npt.NDArray[Any]) -> npt.NDArray[np.int32]:
    """Per-block hashes as int32 "tokens": kept if all are below 2**31, else remapped to dense ids."""
    if data.size == 0 or int(data.max()) < 1 << 31:
        return data.astype(np.int32)
    _, inverse = np.unique(data, return_inverse=True)
    return inverse.astype(np.int32).ravel()


def _assemble(
    name: str,
    fmt: Format,
    sha: str,
    kind: Kind,
    block_tokens: int | None,
    cols: _Columns,
    sessions: _Interner,
    tenants: _Interner,
    any_session: bool,
    any_tenant: bool,
    finder: Any,
) -> RequestLog:
    n = len(cols.ts)
    ts = np.asarray(cols.ts, dtype=np.float64)
    dtype = np.int32 if kind == "tokens" else np.uint64
    data = np.concatenate(cols.chunks).astype(dtype, copy=False) if cols.chunks else np.zeros(0, dtype=dtype)
    if kind == "block_hashes":
        data = _dense_int32(data)
    lengths = np.asarray(cols.lengths, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    inp = np.asarray(cols.inp, dtype=np.int64)
    out = np.asarray(cols.out, dtype=np.int64)
    lines = np.asarray(cols.line, dtype=np.int64)
    sess = ten = None
    if any_session:
        raw = np.asarray(cols.sess, dtype=np.int64)
        table = sessions.table()
        if (raw < 0).any():  # requests without a session share the unnamed one
            table = table + ("",)
            raw[raw < 0] = len(table) - 1
        sess, session_table = raw.astype(np.uint32), table
    else:
        session_table = ()
    if any_tenant:
        raw = np.asarray(cols.ten, dtype=np.int64)
        table = tenants.table()
        if (raw < 0).any():
            table = table + ("",) if "" not in table else table
            raw[raw < 0] = table.index("")
        ten, tenant_table = raw.astype(np.uint32), table
    else:
        tenant_table = ()
    reordered = bool(n > 1 and (np.diff(ts) < 0).any())
    if reordered:  # stable sort by time: per-request columns by index, content by one gather
        order = np.argsort(ts, kind="stable")
        starts = offsets[:-1].astype(np.int64)[order]
        lengths = lengths[order]
        new_off = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(lengths, out=new_off[1:])
        total = int(new_off[-1])
        data = data[np.repeat(starts - new_off[:-1].astype(np.int64), lengths) + np.arange(total, dtype=np.int64)]
        offsets, ts, inp, out, lines = new_off, ts[order], inp[order], out[order], lines[order]
        sess = None if sess is None else sess[order]
        ten = None if ten is None else ten[order]
    return RequestLog(
        path=name,
        format=fmt,
        sha256=sha,
        kind=kind,
        block_tokens=block_tokens,
        timestamps=ts,
        input_tokens=inp,
        output_tokens=out,
        offsets=offsets,
        data=data,
        sessions=sess,
        session_table=session_table,
        tenants=ten,
        tenant_table=tenant_table,
        lines=lines,
        reordered=reordered,
        breaks=None if finder is None else finder.report(),
    )
