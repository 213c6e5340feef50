"""Every bad input a user can hand kvtier: the exception class and that the message names the culprit.

Each error is a kvtier class that also subclasses the matching built-in
(InvalidArgumentError -> ValueError, KvtierTypeError -> TypeError, StoreClosedError -> RuntimeError).
The riskiest misuses (pins outliving their store, use after close through the private core) also run
in a subprocess, so a crash fails a test instead of killing the run.
"""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kvtier
from kvtier import (
    InvalidArgumentError,
    KvtierTypeError,
    Namespace,
    ReplayTrace,
    Store,
    StoreClosedError,
    StoreConfig,
    TierConfig,
    TokenSequence,
)

BS = 4  # tokens per block
BB = 8  # bytes per block


def meta_store(**kw: object) -> Store:
    kw.setdefault("host", TierConfig(capacity_bytes=64 * BB))
    return Store(StoreConfig(block_size=BS, block_bytes=BB, metadata_only=True, **kw))  # type: ignore[arg-type]


def payload_store(**kw: object) -> Store:
    kw.setdefault("host", TierConfig(capacity_bytes=64 * BB))
    return Store(StoreConfig(block_size=BS, block_bytes=BB, **kw))  # type: ignore[arg-type]


def toks(n_blocks: int = 2, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n_blocks * BS, dtype=np.int32)


def payload(n_blocks: int = 2) -> np.ndarray:
    return np.arange(n_blocks * BB, dtype=np.uint8)


def run_py(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_error_classes_subclass_builtins() -> None:
    assert issubclass(InvalidArgumentError, ValueError) and issubclass(InvalidArgumentError, kvtier.KvtierError)
    assert issubclass(KvtierTypeError, TypeError) and issubclass(KvtierTypeError, kvtier.KvtierError)
    assert issubclass(StoreClosedError, RuntimeError) and issubclass(StoreClosedError, kvtier.KvtierError)
    assert issubclass(kvtier.UnknownNamespaceError, KeyError)
    assert issubclass(kvtier.CapacityError, MemoryError)


# =========================================================================== token arrays
# The public entry points that take tokens: each is called as fn(store, tokens).
TOKEN_ENTRY_POINTS = {
    "match": lambda s, t: s.match(t),
    "peek": lambda s, t: s.peek(t),
    "insert": lambda s, t: s.insert(t),
    "pinned": lambda s, t: s.pinned(t).__enter__(),
    "TokenSequence": lambda s, t: TokenSequence(t),
    "block_keys": lambda s, t: kvtier.block_keys(t, Namespace(model="m"), block_size=BS),
}
ENTRY_IDS = list(TOKEN_ENTRY_POINTS)


@pytest.fixture(params=ENTRY_IDS)
def entry(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return TOKEN_ENTRY_POINTS[request.param]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_token_array(entry, dtype) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvtierTypeError, match=r"tokens must hold integer token ids.*floating point"):
        entry(meta_store(), np.arange(8, dtype=dtype))


def test_float_element_in_list(entry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvtierTypeError, match=r"tokens\[2\] must be an int, got float"):
        entry(meta_store(), [0, 1, 2.0, 3, 4, 5, 6, 7])


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda v: np.array(v, dtype=np.int32), id="int32"),
        pytest.param(lambda v: np.array(v, dtype=np.int64), id="int64"),
        pytest.param(lambda v: np.array(v, dtype=np.int16), id="int16"),
        pytest.param(lambda v: np.array(v, dtype=np.int8), id="int8"),
        pytest.param(list, id="list"),
        pytest.param(tuple, id="tuple"),
    ],
)
def test_negative_token_id_names_index(entry, make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=r"tokens\[5\] = -3 is negative"):
        entry(meta_store(), make([0, 1, 2, 3, 4, -3, 6, 7]))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda v: np.array(v, dtype=np.int32), id="int32"),
        pytest.param(lambda v: np.array(v, dtype=np.uint32), id="uint32"),
        pytest.param(lambda v: np.array(v, dtype=np.int64), id="int64"),
        pytest.param(lambda v: np.array(v, dtype=np.uint64), id="uint64"),
        pytest.param(lambda v: np.array(v, dtype=np.uint16), id="uint16"),
        pytest.param(list, id="list"),
    ],
)
def test_token_id_at_or_above_vocab_size(make) -> None:  # type: ignore[no-untyped-def]
    s = meta_store(vocab_size=100)
    s.insert(make([0, 1, 2, 99]))  # 99 < 100: fine
    with pytest.raises(InvalidArgumentError, match=r"tokens\[6\] = 100 is out of range.*below 100"):
        s.insert(make([0, 1, 2, 3, 4, 5, 100, 7]))
    with pytest.raises(InvalidArgumentError, match=r"tokens\[0\] = 5000 is out of range"):
        s.match(make([5000, 1, 2, 3]))


def test_token_id_above_default_limit() -> None:
    with pytest.raises(InvalidArgumentError, match=r"tokens\[1\] = 2147483648 is out of range"):
        meta_store().peek([0, 2**31, 0, 0])
    with pytest.raises(InvalidArgumentError, match=r"tokens\[1\] is out of range"):
        meta_store().peek([0, 2**64, 0, 0])  # beyond a C long long


def test_token_sequence_vocab_size() -> None:
    with pytest.raises(InvalidArgumentError, match=r"tokens\[1\] = 100 is out of range"):
        TokenSequence([1, 100], vocab_size=100)
    seq = TokenSequence([1, 2, 3, 99], vocab_size=1000)
    # A sequence checked against a larger vocabulary than the store's is refused as a whole.
    with pytest.raises(InvalidArgumentError, match=r"tokens: this TokenSequence allows ids up to 1000"):
        meta_store(vocab_size=100).match(seq)


def test_huge_unsigned_id_reported_as_out_of_range() -> None:
    with pytest.raises(InvalidArgumentError, match=r"tokens\[0\]"):
        meta_store().peek(np.array([2**63 + 5, 0, 0, 0], dtype=np.uint64))


def test_huge_unsigned_id_message_is_not_negative() -> None:
    with pytest.raises(InvalidArgumentError, match=r"tokens\[0\].*out of range"):
        meta_store().peek(np.array([2**63 + 5, 0, 0, 0], dtype=np.uint64))


def test_negative_int32_with_full_32bit_vocab() -> None:
    s = meta_store(vocab_size=2**32)
    with pytest.raises(InvalidArgumentError, match=r"tokens\[0\] = -1 is negative"):
        s.insert(np.array([-1, 0, 0, 0], dtype=np.int32))


def test_negative_int64_with_full_32bit_vocab() -> None:
    with pytest.raises(InvalidArgumentError, match=r"tokens\[0\] = -1 is negative"):
        meta_store(vocab_size=2**32).insert(np.array([-1, 0, 0, 0], dtype=np.int64))


def test_big_endian_tokens_mean_the_same_ids() -> None:
    s = meta_store()
    s.insert(np.arange(8, dtype=np.int32))
    try:
        got = s.peek(np.arange(8, dtype=">i4")).num_blocks
    except KvtierTypeError:
        return  # refusing a non-native byte order is fine too
    assert got == 2


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_non_contiguous_tokens(entry, dtype) -> None:  # type: ignore[no-untyped-def]
    a = np.arange(16, dtype=dtype)[::2]
    with pytest.raises(KvtierTypeError, match=r"tokens must be contiguous"):
        entry(meta_store(), a)


def test_reversed_tokens_are_not_contiguous() -> None:
    with pytest.raises(KvtierTypeError, match=r"tokens must be contiguous"):
        meta_store().peek(np.arange(8, dtype=np.int32)[::-1])


def test_two_dimensional_tokens(entry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvtierTypeError, match=r"tokens must be 1-D, got 2 dimensions"):
        entry(meta_store(), np.zeros((2, 4), dtype=np.int32))


def test_zero_dimensional_tokens() -> None:
    with pytest.raises(KvtierTypeError, match=r"tokens must be 1-D, got 0 dimensions"):
        meta_store().peek(np.int32(5))  # numpy scalars export a 0-d buffer


@pytest.mark.parametrize(
    ("bad", "type_name"), [(True, "bool"), (False, "bool"), ("7", "str"), (None, "NoneType"), (b"x", "bytes")]
)
def test_non_int_element_in_list(entry, bad, type_name) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvtierTypeError, match=rf"tokens\[1\] must be an int, got {type_name}"):
        entry(meta_store(), [0, bad, 2, 3])


def test_bool_array_tokens() -> None:
    with pytest.raises(KvtierTypeError, match=r"tokens must hold integer token ids, got buffer format '\?'"):
        meta_store().peek(np.ones(8, dtype=bool))


def test_object_array_tokens() -> None:
    with pytest.raises(KvtierTypeError, match=r"tokens must hold integer token ids"):
        meta_store().peek(np.array([1, 2, 3, 4], dtype=object))


@pytest.mark.parametrize("bad", ["abcd", 5, 3.0, {1, 2, 3, 4}, {1: 2}, range(8)])
def test_tokens_of_the_wrong_type(entry, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvtierTypeError, match=r"tokens must be a 1-D integer array, a list of ints or a TokenSequence"):
        entry(meta_store(), bad)


@pytest.mark.parametrize("name", [n for n in ENTRY_IDS if n != "TokenSequence"])  # TokenSequence(None) is empty
def test_tokens_none(name) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvtierTypeError, match=r"tokens must be a 1-D integer array, a list of ints or a TokenSequence, got NoneType"):
        TOKEN_ENTRY_POINTS[name](meta_store(), None)


def test_list_of_numpy_ints_is_taken_like_ints() -> None:
    # Lists built from numpy arrays hold numpy scalars; they are integers (__index__), so they count.
    s = meta_store()
    s.insert(np.arange(16, dtype=np.int64), now=0.0)
    assert s.peek(list(np.arange(16, dtype=np.int64)), now=1.0).num_blocks == s.peek(np.arange(16), now=1.0).num_blocks
    with pytest.raises(KvtierTypeError, match=r"tokens\[1\] must be an int, got numpy.float64"):
        s.peek([np.int64(1), np.float64(2.0)])


# =========================================================================== block-id stores
def id_store() -> Store:
    return Store(StoreConfig.for_blocks(100, content="block_ids"))


@pytest.mark.parametrize(
    ("bad", "exc", "msg"),
    [
        ([1.0, 2.0], KvtierTypeError, r"tokens\[0\] must be an int, got float"),
        (np.array([1, 2], dtype=np.float32), KvtierTypeError, r"tokens must hold integer block ids"),
        ([True, False], KvtierTypeError, r"tokens\[0\] must be an int, got bool"),
        (["a", "b"], KvtierTypeError, r"tokens\[0\] must be an int, got str"),
        ([1, -2], InvalidArgumentError, r"tokens\[1\] = -2 is negative"),
        (np.array([1, -2], dtype=np.int32), InvalidArgumentError, r"tokens\[1\] = -2 is negative"),
        (np.zeros((2, 2), dtype=np.int64), KvtierTypeError, r"tokens must be 1-D"),
        ("ab", KvtierTypeError, r"tokens must be a 1-D array of integer block ids"),
        (TokenSequence([1, 2]), KvtierTypeError, r"tokens must be a 1-D array of integer block ids"),
        ([1, 2**64], InvalidArgumentError, r"tokens\[1\] = 18446744073709551616 does not fit in 64 bits"),
    ],
)
def test_bad_block_ids(bad, exc, msg) -> None:  # type: ignore[no-untyped-def]
    s = id_store()
    with pytest.raises(exc, match=msg):
        s.insert(bad)
    with pytest.raises(exc, match=msg):
        s.match(bad)


# =========================================================================== payloads
def test_payload_too_few_bytes() -> None:
    with pytest.raises(InvalidArgumentError, match=r"payloads has 15 bytes; expected 16 \(2 blocks x block_bytes=8\)"):
        payload_store().insert(toks(2), np.zeros(15, np.uint8))


def test_payload_too_many_bytes() -> None:
    with pytest.raises(InvalidArgumentError, match=r"payloads has 24 bytes; expected 16"):
        payload_store().insert(toks(2), np.zeros(24, np.uint8))


def test_payload_size_counts_from_start_block() -> None:
    s = payload_store()
    s.insert(toks(1), payload(1))
    with pytest.raises(InvalidArgumentError, match=r"payloads has 16 bytes; expected 8 \(1 blocks"):
        s.insert(toks(2), payload(2), start_block=1)


def test_payload_for_a_trailing_partial_block_only() -> None:
    # 5 tokens = 1 full block + 1 token: the partial block has no payload.
    with pytest.raises(InvalidArgumentError, match=r"payloads has 16 bytes; expected 8"):
        payload_store().insert(np.arange(5, dtype=np.int32), payload(2))


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint16])
def test_payload_wrong_dtype(dtype) -> None:  # type: ignore[no-untyped-def]
    s = payload_store(payload_dtype="uint8")
    with pytest.raises(KvtierTypeError, match=rf"payloads must have dtype uint8, got {np.dtype(dtype)}"):
        s.insert(toks(2), np.zeros(16 // np.dtype(dtype).itemsize, dtype=dtype))


def test_payload_dtype_is_checked_for_out_too() -> None:
    s = payload_store(payload_dtype="float16")
    s.insert(toks(2), np.zeros(8, np.float16))
    with pytest.raises(KvtierTypeError, match=r"out must have dtype float16, got float32"):
        s.load(toks(2), np.zeros(4, np.float32))


def test_payload_object_dtype() -> None:
    with pytest.raises(KvtierTypeError, match=r"payloads holds Python objects \(dtype object\)"):
        payload_store().insert(toks(2), np.array([0] * 16, dtype=object))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: np.zeros(32, np.uint8)[::2], id="strided"),
        pytest.param(lambda: np.zeros((4, 4), np.uint8).T, id="fortran"),
        pytest.param(lambda: np.zeros((2, 16), np.uint8)[:, :8], id="sliced-2d"),
    ],
)
def test_payload_not_c_contiguous(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvtierTypeError, match=r"payloads must be C-contiguous"):
        payload_store().insert(toks(2), make())


@pytest.mark.parametrize("bad", [[0] * 16, "x" * 16, 16, 1.5])
def test_payload_not_a_buffer(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvtierTypeError, match=r"payloads must support the buffer protocol"):
        payload_store().insert(toks(2), bad)


def test_payload_on_metadata_only_store() -> None:
    with pytest.raises(InvalidArgumentError, match=r"payloads given to a metadata-only store"):
        meta_store().insert(toks(2), payload(2))


def test_missing_payload_on_payload_store() -> None:
    with pytest.raises(InvalidArgumentError, match=r"payloads are required"):
        payload_store().insert(toks(2))


@pytest.mark.parametrize("bad", [-1, True, 1.0, "0"])
def test_bad_start_block(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=r"start_block must be an int >= 0"):
        payload_store().insert(toks(2), payload(2), start_block=bad)


def test_start_block_beyond_the_blocks() -> None:
    with pytest.raises(InvalidArgumentError, match=r"start_block=3 is beyond the 2 full blocks"):
        payload_store().insert(toks(2), payload(0), start_block=3)


def test_start_block_too_large_for_the_core() -> None:
    with pytest.raises(InvalidArgumentError, match=r"start_block"):
        payload_store().insert(toks(2), payload(0), start_block=2**64)


def test_nothing_is_stored_after_a_rejected_insert() -> None:
    s = payload_store()
    with pytest.raises(InvalidArgumentError):
        s.insert(toks(2), np.zeros(15, np.uint8))
    with pytest.raises(InvalidArgumentError):
        s.insert([0, 1, 2, 3, 4, -1, 6, 7], payload(2))
    st = s.stats()
    assert (st.blocks, st.inserted, st.nodes) == (0, 0, 0)
    s.check_invariants()


# =========================================================================== out buffers of load
@pytest.fixture
def loaded() -> Store:
    s = payload_store()
    s.insert(toks(2), payload(2))
    return s


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: bytes(16), id="bytes"),
        pytest.param(lambda: memoryview(bytes(16)), id="memoryview-of-bytes"),
        pytest.param(lambda: memoryview(bytearray(16)).toreadonly(), id="readonly-memoryview"),
        pytest.param(lambda: np.zeros(16, np.uint8).view(), id="readonly-numpy"),
    ],
)
def test_load_into_read_only_out(loaded, make) -> None:  # type: ignore[no-untyped-def]
    out = make()
    if isinstance(out, np.ndarray):
        out.flags.writeable = False
    with pytest.raises(KvtierTypeError, match=r"out must be writable"):
        loaded.load(toks(2), out)
    m = loaded.match(toks(2), pin=True)
    with pytest.raises(KvtierTypeError, match=r"out must be writable"):
        loaded.load(m, out)
    loaded.unpin(m)


def test_load_into_too_small_out(loaded) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=r"out has 15 bytes; it must hold 2 blocks x block_bytes=8"):
        loaded.load(toks(2), bytearray(15))
    # The size is checked against the blocks asked for, before any copy.
    with pytest.raises(InvalidArgumentError, match=r"out has 8 bytes; it must hold 3 blocks"):
        loaded.load(toks(3), bytearray(8))
    m = loaded.match(toks(2), pin=True)
    with pytest.raises(InvalidArgumentError, match=r"out has 8 bytes; it must hold 2 blocks"):
        loaded.load(m, np.zeros(8, np.uint8))
    loaded.unpin(m)


def test_load_into_non_contiguous_out(loaded) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvtierTypeError, match=r"out must be C-contiguous"):
        loaded.load(toks(2), np.zeros(32, np.uint8)[::2])


@pytest.mark.parametrize("bad", [[0] * 16, None, "x" * 16])
def test_load_into_non_buffer(loaded, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvtierTypeError, match=r"out must support the buffer protocol"):
        loaded.load(toks(2), bad)


def test_load_from_metadata_only_store() -> None:
    with pytest.raises(InvalidArgumentError, match=r"metadata-only: it holds no payloads"):
        meta_store().load(toks(2), bytearray(16))


def test_rejected_load_leaves_out_untouched(loaded) -> None:  # type: ignore[no-untyped-def]
    out = bytearray(b"\xee" * 15)
    with pytest.raises(InvalidArgumentError):
        loaded.load(toks(2), out)
    assert out == bytearray(b"\xee" * 15)


# =========================================================================== configuration
@pytest.mark.parametrize(
    ("kw", "exc", "msg"),
    [
        ({"block_size": 0}, InvalidArgumentError, r"block_size must be >= 1, got 0"),
        ({"block_size": -16}, InvalidArgumentError, r"block_size must be >= 1, got -16"),
        ({"block_size": 16.0}, KvtierTypeError, r"block_size must be an int, got float"),
        ({"block_size": True}, KvtierTypeError, r"block_size must be an int, got bool"),
        ({"block_bytes": 0}, InvalidArgumentError, r"block_bytes must be >= 1, got 0"),
        ({"block_bytes": -1}, InvalidArgumentError, r"block_bytes must be >= 1, got -1"),
        ({"block_bytes": "8"}, KvtierTypeError, r"block_bytes must be an int, got str"),
        (
            {"block_bytes": 4096, "host": TierConfig(capacity_bytes=4095)},
            InvalidArgumentError,
            r"host.capacity_bytes=4095 is smaller than one block \(block_bytes=4096\)",
        ),
        (
            {"host": TierConfig(capacity_bytes=None)},
            InvalidArgumentError,
            r"host.capacity_bytes=None \(unlimited\) needs metadata_only=True",
        ),
        ({"content": "bytes"}, InvalidArgumentError, r"content must be 'tokens', 'block_ids' or 'keys', got 'bytes'"),
        ({"vocab_size": 0}, InvalidArgumentError, r"vocab_size must be >= 1, got 0"),
        ({"vocab_size": 2**32 + 1}, InvalidArgumentError, r"vocab_size must be <= 2\*\*32"),
        ({"vocab_size": 1.5}, KvtierTypeError, r"vocab_size must be an int"),
        ({"payload_dtype": "not-a-dtype"}, InvalidArgumentError, r"payload_dtype 'not-a-dtype' is not a numpy dtype"),
        (
            {"block_bytes": 6, "payload_dtype": "float32"},
            InvalidArgumentError,
            r"block_bytes=6 is not a multiple of payload_dtype's itemsize 4",
        ),
        ({"host": {"capacity_bytes": 1}}, KvtierTypeError, r"host must be a TierConfig, got dict"),
    ],
)
def test_bad_store_config(kw, exc, msg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc, match=msg):
        StoreConfig(**kw)


@pytest.mark.parametrize(
    ("kw", "exc", "msg"),
    [
        ({"capacity_bytes": 0}, InvalidArgumentError, r"capacity_bytes must be >= 1, got 0"),
        ({"capacity_bytes": -5}, InvalidArgumentError, r"capacity_bytes must be >= 1, got -5"),
        ({"capacity_bytes": 1.0e9}, KvtierTypeError, r"capacity_bytes must be an int, got float"),
        ({"policy": "fifo"}, InvalidArgumentError, r"policy must be one of \['lfu', 'lru', 'ttl'\], got 'fifo'"),
        ({"policy": "LRU"}, InvalidArgumentError, r"policy must be one of"),
        ({"policy": "ttl"}, InvalidArgumentError, r"policy 'ttl' needs ttl_s"),
        ({"ttl_s": -1.0}, InvalidArgumentError, r"ttl_s must be a finite number of seconds > 0, got -1"),
        ({"ttl_s": 0}, InvalidArgumentError, r"ttl_s must be a finite number of seconds > 0, got 0"),
        ({"ttl_s": math.nan}, InvalidArgumentError, r"ttl_s must be a finite number of seconds > 0, got nan"),
        ({"ttl_s": math.inf}, InvalidArgumentError, r"ttl_s must be a finite number of seconds > 0, got inf"),
        ({"ttl_s": -math.inf}, InvalidArgumentError, r"ttl_s must be a finite number of seconds > 0, got -inf"),
        ({"policy": "ttl", "ttl_s": -3}, InvalidArgumentError, r"ttl_s must be a finite number"),
        ({"ttl_s": "10"}, KvtierTypeError, r"ttl_s must be a number of seconds, got str"),
        ({"ttl_s": True}, KvtierTypeError, r"ttl_s must be a number of seconds, got bool"),
    ],
)
def test_bad_tier_config(kw, exc, msg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc, match=msg):
        TierConfig(**kw)


def test_for_blocks_capacity_zero() -> None:
    with pytest.raises(InvalidArgumentError, match=r"capacity_blocks must be >= 1, got 0"):
        StoreConfig.for_blocks(0)


def test_bad_store_arguments() -> None:
    with pytest.raises(KvtierTypeError, match=r"config must be a StoreConfig, got dict"):
        Store({"block_size": 16})  # type: ignore[arg-type]
    with pytest.raises(KvtierTypeError, match=r"namespace must be a kvtier.Namespace, got str"):
        Store(namespace="tenant-a")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "exc", "msg"),
    [
        ({"model": ""}, InvalidArgumentError, r"model must name the model"),
        ({"model": 5}, KvtierTypeError, r"model must be a str, got int"),
        ({"model": "m", "tenant": None}, KvtierTypeError, r"tenant must be a str, got NoneType"),
        ({"model": "m", "kv_dtype": b"fp8"}, KvtierTypeError, r"kv_dtype must be a str, got bytes"),
    ],
)
def test_bad_namespace(kw, exc, msg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc, match=msg):
        Namespace(**kw)


def test_namespace_and_session_arguments() -> None:
    s = meta_store()
    with pytest.raises(KvtierTypeError, match=r"namespace must be a kvtier.Namespace, got str"):
        s.match(toks(), namespace="m")  # type: ignore[arg-type]
    with pytest.raises(KvtierTypeError, match=r"namespace must be a kvtier.Namespace, got dict"):
        s.insert(toks(), namespace={"model": "m"})  # type: ignore[arg-type]
    with pytest.raises(KvtierTypeError, match=r"session must be a str, got int"):
        s.insert(toks(), session=7)  # type: ignore[arg-type]
    with pytest.raises(KvtierTypeError, match=r"namespace must be a kvtier.Namespace"):
        s.register("m")  # type: ignore[arg-type]


# =========================================================================== time
NOW_CALLS = {
    "match": lambda s, now: s.match(toks(), now=now),
    "peek": lambda s, now: s.peek(toks(), now=now),
    "insert": lambda s, now: s.insert(toks(3, 100), payload(3), now=now),
    "load": lambda s, now: s.load(toks(), bytearray(2 * BB), now=now),
    "evict": lambda s, now: s.evict(BB, now=now),
    "expire": lambda s, now: s.expire(now=now),
    "clear": lambda s, now: s.clear(now=now),
    "residency": lambda s, now: s.residency(now=now),
    "pinned": lambda s, now: s.pinned(toks(), now=now).__enter__(),
}


@pytest.fixture
def clocked() -> Store:
    s = payload_store(host=TierConfig(capacity_bytes=64 * BB, ttl_s=1000.0))
    s.insert(toks(), payload(), now=100.0)
    return s


@pytest.mark.parametrize("call", list(NOW_CALLS))
def test_time_going_backwards(clocked, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=r"now=99.5 is earlier than the store's clock \(100\)"):
        NOW_CALLS[call](clocked, 99.5)
    NOW_CALLS[call](clocked, 100.0)  # the same instant is fine


@pytest.mark.parametrize("call", list(NOW_CALLS))
@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_infinite_now(clocked, call, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=r"now must be a finite number of seconds"):
        NOW_CALLS[call](clocked, bad)


@pytest.mark.parametrize("call", ["match", "insert", "expire"])
def test_nan_now(clocked, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=r"now"):
        NOW_CALLS[call](clocked, math.nan)


def test_time_going_backwards_after_default_clock() -> None:
    # The default clock is monotonic; an explicit now far below it is refused.
    s = meta_store()
    s.insert(toks())
    with pytest.raises(InvalidArgumentError, match=r"now=-1 is earlier than the store's clock"):
        s.match(toks(), now=-1.0)


def test_rejected_time_does_not_move_the_clock(clocked) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError):
        clocked.match(toks(), now=50.0)
    with pytest.raises(InvalidArgumentError):
        clocked.match(toks(), now=math.inf)
    assert clocked.match(toks(), now=100.0).num_blocks == 2


@pytest.mark.parametrize("bad", ["soon", [1.0]])
def test_now_of_the_wrong_type(clocked, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError):
        clocked.match(toks(), now=bad)


# =========================================================================== evict / misc arguments
@pytest.mark.parametrize("bad", [-1, True, 1.5, "8", None])
def test_bad_evict_nbytes(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=r"nbytes must be an int >= 0"):
        meta_store().evict(bad)


def test_evict_more_bytes_than_64_bits_evicts_everything() -> None:
    s = meta_store()
    s.insert(toks(2))
    assert s.evict(2**70) == 2 * BB
    assert s.stats().blocks == 0


def test_evict_near_2_64_evicts_everything() -> None:
    s = meta_store()
    s.insert(toks(2))
    assert s.evict(2**64 - 1) == 2 * BB
    assert s.stats().blocks == 0


def test_token_sequence_truncate_beyond_length() -> None:
    seq = TokenSequence([1, 2, 3])
    with pytest.raises(InvalidArgumentError, match=r"n must be an int in \[0, 3\], got 4"):
        seq.truncate(4)
    assert len(seq) == 3


def test_token_sequence_truncate_negative() -> None:
    with pytest.raises(InvalidArgumentError, match=r"\bn\b"):
        TokenSequence([1, 2, 3]).truncate(-1)


def test_token_sequence_extend_keeps_earlier_tokens_on_error() -> None:
    seq = TokenSequence([1, 2, 3])
    with pytest.raises(InvalidArgumentError, match=r"tokens\[1\] = -1"):
        seq.extend([4, -1])
    with pytest.raises(KvtierTypeError, match=r"tokens must hold integer token ids"):
        seq.extend(np.zeros(2, np.float64))
    assert seq.numpy().tolist() == [1, 2, 3]


# =========================================================================== use after close
def _closed_store() -> tuple[Store, kvtier.MatchResult]:
    s = payload_store(host=TierConfig(capacity_bytes=64 * BB, ttl_s=100.0))
    s.insert(toks(), payload())
    m = s.match(toks(), pin=True)
    s.close()
    return s, m


CLOSED_CALLS = {
    "match": lambda s, m: s.match(toks()),
    "match-pin": lambda s, m: s.match(toks(), pin=True),
    "peek": lambda s, m: s.peek(toks()),
    "insert": lambda s, m: s.insert(toks(3), payload(3)),
    "insert-session": lambda s, m: s.insert(toks(3), payload(3), session="new"),
    "load": lambda s, m: s.load(toks(), bytearray(2 * BB)),
    "load-pinned": lambda s, m: s.load(m, bytearray(2 * BB)),
    "block_keys_of": lambda s, m: s.block_keys_of(m),
    "evict": lambda s, m: s.evict(BB),
    "expire": lambda s, m: s.expire(),
    "clear": lambda s, m: s.clear(),
    "stats": lambda s, m: s.stats(),
    "residency": lambda s, m: s.residency(),
    "residency-now": lambda s, m: s.residency(now=1e12),
    "__enter__": lambda s, m: s.__enter__(),
    "with": lambda s, m: s.__class__.__enter__(s),
    "pinned": lambda s, m: s.pinned(toks()).__enter__(),
    "register": lambda s, m: s.register(Namespace(model="new")),
    "other-namespace": lambda s, m: s.match(toks(), namespace=Namespace(model="new")),
    "replay": lambda s, m: s.replay(ReplayTrace.from_tokens([toks()], [1e12], block_size=BS)),
}


@pytest.mark.parametrize("call", list(CLOSED_CALLS))
def test_use_after_close(call) -> None:  # type: ignore[no-untyped-def]
    s, m = _closed_store()
    with pytest.raises(StoreClosedError, match=r"the store is closed"):
        CLOSED_CALLS[call](s, m)
    assert s.closed


def test_close_is_idempotent_and_unpin_after_close_is_harmless() -> None:
    s, m = _closed_store()
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(StoreClosedError):  # close() released every hold
        s.unpin(m)
    s.check_invariants()  # does not crash on a closed store
    assert "Store(" in repr(s)


def test_context_manager_closes_even_on_error() -> None:
    s = meta_store()
    with pytest.raises(ZeroDivisionError):
        with s:
            raise ZeroDivisionError
    assert s.closed
    with pytest.raises(StoreClosedError):
        with s:
            pass


# =========================================================================== pins
def test_double_unpin() -> None:
    s = payload_store()
    s.insert(toks(), payload())
    m = s.match(toks(), pin=True)
    s.unpin(m)
    with pytest.raises(InvalidArgumentError, match=r"this pin was already released"):
        s.unpin(m)
    with pytest.raises(InvalidArgumentError, match=r"this pin was already released"):
        s.load(m, bytearray(16))
    with pytest.raises(kvtier.PinError, match=r"this pin was already released"):
        s.block_keys_of(m)
    assert s.stats().pinned_blocks == 0
    s.check_invariants()


def test_double_unpin_through_pinned_context() -> None:
    s = payload_store()
    s.insert(toks(), payload())
    with pytest.raises(InvalidArgumentError, match=r"this pin was already released"):
        with s.pinned(toks()) as m:
            s.unpin(m)  # the context's own unpin then finds it released
    assert s.stats().pinned_blocks == 0


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s: s.match(toks()), id="match-without-pin"),
        pytest.param(lambda s: s.peek(toks()), id="peek"),
        pytest.param(lambda s: s.match(toks(5, 999), pin=True), id="pin-of-nothing"),
        pytest.param(lambda s: None, id="None"),
        pytest.param(lambda s: "pin", id="str"),
    ],
)
def test_unpin_of_something_not_pinned(make) -> None:  # type: ignore[no-untyped-def]
    s = payload_store()
    s.insert(toks(), payload())
    m = make(s)
    with pytest.raises(InvalidArgumentError, match=r"unpin\(\) needs a MatchResult returned by match\(\.\.\., pin=True\)"):
        s.unpin(m)
    if isinstance(m, kvtier.MatchResult):
        with pytest.raises(InvalidArgumentError, match=r"load\(\) of a MatchResult needs one returned by match"):
            s.load(m, bytearray(16))
        with pytest.raises(InvalidArgumentError, match=r"block_keys_of\(\) needs a MatchResult"):
            s.block_keys_of(m)


def test_pin_from_another_store() -> None:
    a, b = payload_store(), payload_store()
    for s in (a, b):
        s.insert(toks(), payload())
    m = a.match(toks(), pin=True)
    with pytest.raises(InvalidArgumentError, match=r"this pin belongs to another store"):
        b.unpin(m)
    with pytest.raises(InvalidArgumentError, match=r"this pin belongs to another store"):
        b.load(m, bytearray(16))
    with pytest.raises(kvtier.PinError, match=r"this pin belongs to another store"):
        b.block_keys_of(m)
    assert b.stats().pinned_blocks == 0 and a.stats().pinned_blocks == 2
    a.unpin(m)  # still valid in its own store
    assert a.stats().pinned_blocks == 0


_PIN_OUTLIVES_STORE = """
    import gc, sys
    import numpy as np
    import kvtier
    from kvtier import Store, StoreConfig, TierConfig
    cfg = StoreConfig(block_size=4, block_bytes=8, host=TierConfig(capacity_bytes=800))
    a = Store(cfg)
    a.insert(np.arange(8, dtype=np.int32), np.zeros(16, np.uint8))
    m = a.match(np.arange(8, dtype=np.int32), pin=True)
    del a
    gc.collect()
    b = Store(cfg)  # often lands at the freed store's address
    b.insert([9] * 8, np.full(16, 7, np.uint8))
    try:
        {call}
    except kvtier.InvalidArgumentError as e:
        print("refused:", e)
    else:
        print("accepted")
    b.check_invariants()
    print("ok")
"""


@pytest.mark.parametrize("call", ["b.unpin(m)", "b.load(m, bytearray(16))", "print(b.block_keys_of(m))"])
def test_pin_outliving_its_store(call) -> None:  # type: ignore[no-untyped-def]
    r = run_py(_PIN_OUTLIVES_STORE.format(call=call))
    assert r.returncode == 0, f"crashed with {r.returncode}: {r.stderr[-2000:]}"
    assert "refused:" in r.stdout and "ok" in r.stdout, r.stdout + r.stderr


# =========================================================================== replay
def test_replay_mismatched_timestamps_length() -> None:
    with pytest.raises(InvalidArgumentError, match=r"timestamps must have shape \(2,\), got \(1,\)"):
        ReplayTrace.from_block_ids([[1, 2], [1, 3]], [0.0])
    with pytest.raises(InvalidArgumentError, match=r"timestamps must have shape \(2,\), got \(3,\)"):
        ReplayTrace(np.array([0, 2, 4], np.uint64), np.array([1, 2, 1, 3], np.uint64), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(InvalidArgumentError, match=r"timestamps must have shape \(1,\), got \(1, 1\)"):
        ReplayTrace.from_block_ids([[1, 2]], [[0.0]])


def test_replay_mismatched_offsets_and_blocks() -> None:
    s = id_store()
    with pytest.raises(InvalidArgumentError, match=r"offsets\[-1\] = 5 blocks does not match 4 blocks given"):
        s.replay(ReplayTrace(np.array([0, 2, 5], np.uint64), np.array([1, 2, 1, 3], np.uint64), np.array([3.0, 4.0])))
    with pytest.raises(InvalidArgumentError, match=r"offsets must be non-decreasing \(at 2\)"):
        s.replay(ReplayTrace(np.array([0, 3, 2], np.uint64), np.array([1, 2], np.uint64), np.array([3.0, 4.0])))
    with pytest.raises(InvalidArgumentError, match=r"offsets\[0\] must be 0"):
        s.replay(ReplayTrace(np.array([1, 2], np.uint64), np.array([1], np.uint64), np.array([5.0])))
    # Token traces: offsets count blocks of block_size tokens.
    t = meta_store()
    with pytest.raises(InvalidArgumentError, match=r"offsets\[-1\] = 2 blocks does not match 1 blocks given"):
        t.replay(ReplayTrace(np.array([0, 2], np.uint64), np.arange(6, dtype=np.int64), np.array([1.0])))
    assert s.stats().inserted == 0 and t.stats().inserted == 0


@pytest.mark.parametrize("ts", [[1.0, 0.5], [0.0, 2.0, 1.999]])
def test_replay_decreasing_timestamps(ts) -> None:  # type: ignore[no-untyped-def]
    s = id_store()
    reqs = [[1, 2]] * len(ts)
    with pytest.raises(InvalidArgumentError, match=r"timestamps must be non-decreasing \(timestamps\[\d\] < timestamps\[\d\]\)"):
        s.replay(ReplayTrace.from_block_ids(reqs, ts))
    assert s.stats().inserted == 0  # checked before anything is replayed


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_replay_non_finite_timestamps(bad) -> None:  # type: ignore[no-untyped-def]
    s = id_store()
    with pytest.raises(InvalidArgumentError, match=r"timestamps\[1\] is not finite"):
        s.replay(ReplayTrace.from_block_ids([[1, 2], [1, 3], [4]], [1.0, bad, 3.0]))
    assert s.stats().inserted == 0


def test_replay_timestamps_before_the_store_clock() -> None:
    s = id_store()
    s.replay(ReplayTrace.from_block_ids([[1]], [10.0]))
    with pytest.raises(InvalidArgumentError, match=r"timestamps"):
        s.replay(ReplayTrace.from_block_ids([[1]], [5.0]))


def test_replay_bad_bits() -> None:
    s = id_store()
    with pytest.raises(KvtierTypeError, match=r"trace must be a kvtier.ReplayTrace, got list"):
        s.replay([[1, 2]])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"sessions must have shape \(2,\)"):
        ReplayTrace(
            np.array([0, 1, 2], np.uint64), np.array([1, 2], np.uint64), np.array([1.0, 2.0]),
            sessions=np.zeros(3, np.uint32), session_table=("a",),
        )
    with pytest.raises(InvalidArgumentError, match=r"namespaces indexes beyond its table of 1 entries"):
        ReplayTrace(
            np.array([0, 1, 2], np.uint64), np.array([1, 2], np.uint64), np.array([1.0, 2.0]),
            namespaces=np.array([0, 1], np.uint32), namespace_table=(Namespace(model="m"),),
        )
    with pytest.raises(KvtierTypeError, match=r"blocks must hold integer block ids"):
        s.replay(ReplayTrace(np.array([0, 1], np.uint64), np.array([1.5]), np.array([1.0])))
    with pytest.raises(InvalidArgumentError, match=r"blocks\[0\] = -1 is negative"):
        s.replay(ReplayTrace(np.array([0, 1], np.uint64), np.array([-1], np.int64), np.array([1.0])))
    with pytest.raises(InvalidArgumentError, match=r"blocks\[2\] = -7 is negative"):
        meta_store().replay(ReplayTrace(np.array([0, 1], np.uint64), np.array([0, 1, -7, 3]), np.array([1.0])))


# =========================================================================== block_keys
@pytest.mark.parametrize("parent", [b"", b"\0" * 31, b"\0" * 33, bytearray(32), "\0" * 32])
def test_block_keys_wrong_parent(parent) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=r"parent must be the 32-byte key of the previous block"):
        kvtier.block_keys([1, 2, 3, 4], Namespace(model="m"), block_size=4, parent=parent)


def test_block_keys_other_arguments() -> None:
    ns = Namespace(model="m")
    with pytest.raises(KvtierTypeError, match=r"namespace must be a kvtier.Namespace, got str"):
        kvtier.block_keys([1, 2, 3, 4], "m", block_size=4)  # type: ignore[arg-type]
    with pytest.raises(KvtierTypeError, match=r"extra must be bytes, got str"):
        kvtier.block_keys([1, 2, 3, 4], ns, block_size=4, extra="lora")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"block_size must be >= 1, got 0"):
        kvtier.block_keys([1, 2, 3, 4], ns, block_size=0)
    with pytest.raises(InvalidArgumentError, match=r"tokens\[3\] = 4 is out of range: ids must be below 4"):
        kvtier.block_keys([1, 2, 3, 4], ns, block_size=4, vocab_size=4)
    assert kvtier.block_keys([1, 2, 3, 4], ns, block_size=4, parent=bytes(32)).shape == (1, 32)


# =========================================================================== never a crash
_CORE_MISUSE = """
    import gc
    import numpy as np
    import kvtier
    from kvtier import _core

    def expect(exc, fn, *a, **kw):
        try:
            fn(*a, **kw)
        except exc:
            return
        raise SystemExit(f"{fn} did not raise {exc}")

    # Through the private core: wrong ids, foreign accounts, pins after close, unconstructible Pin.
    def spec(**kw):
        sp = kvtier.StoreConfig(block_size=2, block_bytes=4, host=kvtier.TierConfig(capacity_bytes=64)).spec()
        for k, v in kw.items():
            setattr(sp, k, v)
        return sp

    s = _core.Store(spec(), ids=False, limit=100)
    ns = s.add_namespace(b"k" * 32)
    ns2 = s.add_namespace(b"j" * 32)
    expect(kvtier.InvalidArgumentError, s.add_namespace, b"short")
    expect(kvtier.UnknownNamespaceError, s.match, 99, [1, 2], None, True, False)
    expect(kvtier.UnknownNamespaceError, s.insert, 99, "", [1, 2], bytes(4), 0, None)
    assert s.insert(ns2, "x", [1, 2], bytes(4), 0, None) == (0, 1, 1)  # a session is named, not numbered
    expect(kvtier.InvalidArgumentError, _core.Store, spec(block_size=0), ids=False, limit=100)
    expect(kvtier.InvalidArgumentError, _core.Store, spec(block_bytes=0), ids=False, limit=100)
    host = _core.TierSpec()  # capacity 0: unlimited, which a store with payloads cannot have
    expect(kvtier.InvalidArgumentError, _core.Store, spec(host=host), ids=False, limit=100)
    host.capacity_bytes = 64
    host.policy = _core.Policy.TTL  # with no ttl_s
    expect(kvtier.InvalidArgumentError, _core.Store, spec(host=host), ids=False, limit=100)
    host.ttl_s = float("nan")
    expect(kvtier.InvalidArgumentError, _core.Store, spec(host=host), ids=False, limit=100)
    expect(kvtier.InvalidArgumentError, _core.validate_tier, host, "host")
    expect(TypeError, _core.Pin)
    expect(kvtier.InvalidArgumentError, _core.blake3, b"", key=b"k" * 32, context="c")
    expect(kvtier.InvalidArgumentError, _core.blake3, b"", key=b"short")
    expect(kvtier.InvalidArgumentError, _core.block_keys, b"k" * 32, [1, 2], 0, 100, b"", None)
    expect(kvtier.InvalidArgumentError, _core.block_keys, b"k" * 31, [1, 2], 2, 100, b"", None)

    s.insert(ns, "", [1, 2, 3, 4], bytes(range(8)), 0, None)
    blocks, _disk, pin, _probe, _dev = s.match(ns, [1, 2, 3, 4], None, True, True)
    assert blocks == 2 and pin.active
    expect(TypeError, s.unpin, None)
    s.close()
    expect(kvtier.StoreClosedError, s.load_pinned, pin, bytearray(8))
    expect(kvtier.StoreClosedError, s.keys_pinned, pin)
    expect(kvtier.StoreClosedError, s.replay, [0, 1], [1, 2], [1e12], [b"k" * 32])
    expect(kvtier.StoreClosedError, s.add_namespace, b"z" * 32)
    expect(kvtier.StoreClosedError, s.insert, ns, "y", [1, 2, 3, 4], bytes(range(8)), 0, None)
    s.check_invariants()
    s.clock()
    expect(kvtier.StoreClosedError, s.unpin, pin)  # close() released every hold
    s.close()

    # Empty and tiny inputs everywhere.
    st = kvtier.Store(kvtier.StoreConfig(block_size=4, block_bytes=8, host=kvtier.TierConfig(capacity_bytes=16)))
    for empty in ([], (), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)[::2],
                  kvtier.TokenSequence(), [1, 2, 3]):
        assert st.match(empty).num_blocks == 0
        assert st.peek(empty).num_blocks == 0
        assert st.insert(empty, b"").stored_blocks == 0
        assert st.load(empty, bytearray(0)) == 0
        assert st.match(empty, pin=True).pinned is False
    # More blocks than the tier holds: only what fits is stored, the rest is dropped.
    r = st.insert(np.arange(40, dtype=np.int32), np.zeros(80, np.uint8))
    assert r.stored_blocks == 2, r
    # Pinned blocks fill the tier: inserts store nothing but do not fail.
    m = st.match(np.arange(40, dtype=np.int32), pin=True)
    assert m.num_blocks == 2
    assert st.insert(np.arange(100, 108, dtype=np.int32), np.zeros(16, np.uint8)).inserted_blocks == 0
    assert st.clear() == 0 and st.evict(1 << 20) == 0
    st.unpin(m)
    st.check_invariants()
    del m
    gc.collect()
    st.close()
    del st
    gc.collect()
    print("survived")
"""


def test_core_misuse_never_crashes() -> None:
    r = run_py(_CORE_MISUSE)
    assert r.returncode == 0 and "survived" in r.stdout, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"


_UNPIN_AFTER_CLOSE_AND_GC = """
    import gc
    import numpy as np
    import kvtier
    s = kvtier.Store(kvtier.StoreConfig(block_size=4, block_bytes=8, host=kvtier.TierConfig(capacity_bytes=64)))
    s.insert(np.arange(8, dtype=np.int32), np.zeros(16, np.uint8))
    ms = [s.match(np.arange(8, dtype=np.int32), pin=True) for _ in range(3)]
    s.close()
    for m in ms:
        try:
            s.unpin(m)
        except kvtier.StoreClosedError:  # close() released every hold
            pass
        else:
            raise SystemExit("unpin after close was accepted")
    # Drop the store while pins are still held, then the pins.
    s2 = kvtier.Store(kvtier.StoreConfig(block_size=4, block_bytes=8, host=kvtier.TierConfig(capacity_bytes=64)))
    s2.insert(np.arange(8, dtype=np.int32), np.zeros(16, np.uint8))
    held = s2.match(np.arange(8, dtype=np.int32), pin=True)
    del s2
    gc.collect()
    del held
    gc.collect()
    print("survived")
"""


def test_unpin_after_close_and_dropping_pinned_store_in_subprocess() -> None:
    r = run_py(_UNPIN_AFTER_CLOSE_AND_GC)
    assert r.returncode == 0 and "survived" in r.stdout, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"


def test_gc_of_a_store_is_clean() -> None:
    s = payload_store()
    s.insert(toks(), payload())
    del s
    gc.collect()
