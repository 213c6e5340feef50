"""Hostile input to the public API gets kvtier's named errors, never a bare built-in or a silent acceptance
(issue 17, item 4)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import kvtier
from kvtier import InvalidArgumentError, KvtierTypeError, StoreClosedError


def store() -> kvtier.Store:
    return kvtier.Store(kvtier.StoreConfig(block_size=2, block_bytes=8, host=kvtier.TierConfig(capacity_bytes=1024)))


def test_lone_surrogate_in_session_or_tenant() -> None:
    with store() as s:
        with pytest.raises(InvalidArgumentError, match=r"session must be valid Unicode text"):
            s.insert([1, 2], np.zeros(8, np.uint8), session="agent-\ud800")
        assert s.insert([1, 2], np.zeros(8, np.uint8), session="agent-7").inserted_blocks == 1
    with pytest.raises(InvalidArgumentError, match=r"tenant must be valid Unicode text"):
        kvtier.Namespace(model="m", tenant="\udfff")


@pytest.mark.parametrize("now", ["1", b"1", True, [1.0]])
def test_now_of_the_wrong_type(now: object) -> None:
    with store() as s:
        for call in (lambda: s.match([1, 2], now=now), lambda: s.residency(now=now), lambda: s.expire(now=now)):
            with pytest.raises(KvtierTypeError, match=r"now must be a number of seconds or None, got"):
                call()


def test_now_beyond_a_double() -> None:
    with store() as s, pytest.raises(InvalidArgumentError, match=r"now must be a finite number of seconds"):
        s.match([1, 2], now=10**400)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"block_size": 2**40}, r"block_size must be below 2\*\*32, got 1099511627776"),
        ({"block_bytes": 2**64}, r"block_bytes must be below 2\*\*64"),
    ],
)
def test_sizes_beyond_the_core_are_named(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(InvalidArgumentError, match=msg):
        kvtier.StoreConfig(**kw)  # type: ignore[arg-type]


def test_tier_capacity_beyond_u64_is_named() -> None:
    with pytest.raises(InvalidArgumentError, match=r"capacity_bytes must be below 2\*\*64"):
        kvtier.TierConfig(capacity_bytes=2**64)


def test_nul_in_a_disk_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"disk path must not contain a NUL character"):
        kvtier.DiskConfig(path=str(tmp_path / "a\0b"))


def test_a_huge_write_queue_names_queue_blocks(tmp_path: Path) -> None:
    cfg = kvtier.StoreConfig(
        block_size=2,
        block_bytes=1 << 20,
        host=kvtier.TierConfig(capacity_bytes=1 << 20),
        disk=kvtier.DiskConfig(path=tmp_path / "d", capacity_bytes=1 << 40, queue_blocks=2**31),
    )
    with pytest.raises(kvtier.KvtierError, match=r"queue_blocks=2147483648"):
        kvtier.Store(cfg)


@pytest.mark.parametrize("tokens", [b"\x01\x02\x03\x04", bytearray(b"\x01\x02")])
def test_bytes_are_not_token_ids(tokens: object) -> None:
    with store() as s:
        with pytest.raises(KvtierTypeError, match=r"tokens must be a 1-D integer array.*raw bytes are not ids"):
            s.match(tokens)  # type: ignore[arg-type]
        with pytest.raises(KvtierTypeError, match=r"raw bytes are not ids"):
            s.insert(tokens, np.zeros(8, np.uint8))  # type: ignore[arg-type]
        assert s.stats().inserted == 0


def test_unpin_after_close_is_refused() -> None:
    s = store()
    s.insert([1, 2], np.zeros(8, np.uint8))
    m = s.match([1, 2], pin=True)
    s.close()
    with pytest.raises(StoreClosedError):
        s.unpin(m)


def test_pinned_context_exits_cleanly_when_the_store_closes_inside() -> None:
    s = store()
    s.insert([1, 2], np.zeros(8, np.uint8))
    with s.pinned([1, 2]) as m:
        assert m.num_blocks == 1
        s.close()
    assert s.closed


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0])
def test_flush_timeout_must_be_finite(tmp_path: Path, timeout: float) -> None:
    cfg = kvtier.StoreConfig(
        block_size=2,
        block_bytes=8,
        host=kvtier.TierConfig(capacity_bytes=1024),
        disk=kvtier.DiskConfig(path=tmp_path / "d", capacity_bytes=1 << 20),
    )
    with kvtier.Store(cfg) as s, pytest.raises(InvalidArgumentError, match=r"timeout must be a finite number of seconds"):
        s.flush(timeout=timeout)


def test_object_payload_dtype_is_refused() -> None:
    with pytest.raises(KvtierTypeError, match=r"payload_dtype must be a numeric dtype"):
        kvtier.StoreConfig(payload_dtype="object")


def test_content_kind_is_part_of_the_namespace(tmp_path: Path) -> None:
    """Two tokens [5, 0] (block_size 2) and the block id 5 are the same 64 bits: a block_ids store on the same folder
    must still never be served the tokens store's block."""

    def cfg(content: str) -> kvtier.StoreConfig:
        return kvtier.StoreConfig(
            block_size=2,
            block_bytes=8,
            content=content,  # type: ignore[arg-type]
            host=kvtier.TierConfig(capacity_bytes=1024),
            disk=kvtier.DiskConfig(path=tmp_path / "d", capacity_bytes=1 << 20),
        )

    with kvtier.Store(cfg("tokens"), now=1.0) as s:
        s.insert(np.array([5, 0], np.int32), np.full(8, 7, np.uint8), now=1.0)
        s.flush(host=True)
    with kvtier.Store(cfg("block_ids"), now=2.0) as s:
        assert s.peek(np.array([5], np.uint64), now=2.0).num_blocks == 0
    with kvtier.Store(cfg("tokens"), now=3.0) as s:
        assert s.peek(np.array([5, 0], np.int32), now=3.0).num_blocks == 1


def test_registering_tenants_writes_nothing_until_blocks_are_committed(tmp_path: Path) -> None:
    """A new tenant's namespace record rides in the next commit of blocks: registering costs no disk transaction."""
    from kvtier.fsck import fsck

    cfg = kvtier.StoreConfig(
        block_size=2,
        block_bytes=8,
        host=kvtier.TierConfig(capacity_bytes=1024),
        disk=kvtier.DiskConfig(path=tmp_path / "d", capacity_bytes=1 << 20),
    )
    ops: list[str] = []
    with kvtier.Store(cfg, now=1.0) as s:
        s._disk.io.fault = lambda op, n: ops.append(op)  # type: ignore[union-attr]
        for k in range(50):
            s.register(kvtier.Namespace(model="m", tenant=f"tenant-{k}"))
        assert "commit" not in ops
        s.insert([1, 2], np.zeros(8, np.uint8), namespace=kvtier.Namespace(model="m", tenant="tenant-7"), now=2.0)
        s.flush(host=True)
        assert ops.count("commit") >= 1
    names = fsck(tmp_path / "d").namespaces
    assert any("tenant=tenant-7" in name for name in names), names
