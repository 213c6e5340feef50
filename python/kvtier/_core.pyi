"""Type stub of ``kvtier._core``, the pybind11 module built from csrc/bindings/module.cpp.

Hand-written; ``tests/test_stub.py`` checks it against the live module (names, parameter names,
parameter kinds and defaults, and the basic types). Update both when a binding changes.

The module is private: use the ``kvtier`` package. Errors raised by the core are the classes of
``kvtier.errors`` (``InvalidArgumentError``, ``KvtierTypeError``, ``StoreClosedError``,
``UnknownNamespaceError``, ``CapacityError``). Parameters the bindings leave unnamed are
positional-only here (pybind11 calls them ``arg0``, ``arg1``, ...).
"""

import enum
from collections.abc import Sequence
from typing import Any, TypeAlias, final

import numpy as np
import numpy.typing as npt

# The bindings take these arguments as plain Python objects (``py::handle``) and check them at run
# time, raising kvtier.KvtierTypeError / InvalidArgumentError; the aliases say what is accepted.
#
# Payloads: a C-contiguous readable buffer (numpy array of any numeric dtype, bytes, bytearray,
# memoryview), ``block_bytes`` per block. Not object dtype.
_ReadBuffer: TypeAlias = npt.ArrayLike | memoryview | bytes | bytearray
# ``out`` of load: a C-contiguous writable buffer (numpy array, bytearray, writable memoryview).
_WriteBuffer: TypeAlias = npt.NDArray[Any] | bytearray | memoryview
_Memory: TypeAlias = "Memory"
# Token ids: a TokenSequence, a 1-D contiguous integer buffer, or a list/tuple of ints (not bool);
# each in [0, limit). In a store made with ids=True: 64-bit block ids, a 1-D integer array or a
# list/tuple of ints >= 0 (a TokenSequence is refused there).
_Tokens: TypeAlias = TokenSequence | npt.ArrayLike | Sequence[int]
# One row of Store.residency: (namespace id, session, tier, resident bytes, byte-seconds).
_ResidencyRow: TypeAlias = tuple[int | None, str | None, int, int, float]

def blake3(data: bytes, *, key: bytes | None = None, context: str | None = None, out_len: int = 32) -> bytes:
    """BLAKE3 of ``data``: plain hash, keyed hash (``key``: 32 bytes) or derive_key (``context``)."""

def namespace_key(fields: Sequence[str]) -> bytes:
    """The 32-byte namespace key of ``fields`` (docs/keys.md)."""

def block_keys(
    ns_key: bytes,
    tokens: _Tokens,
    block_size: int,
    limit: int,
    extra: bytes,
    parent: bytes | None = None,
) -> npt.NDArray[np.uint8]:
    """``uint8[n_full_blocks, 32]``: chained keys of the full blocks of ``tokens``."""

def block_checksum(data: _ReadBuffer, *, portable: bool = False) -> int:
    """The disk tier's payload checksum (csrc/core/checksum.h, kvtier block checksum v1); ``portable``: without SIMD."""

def copy_verified(out: _WriteBuffer, block_bytes: int, reads: Sequence[tuple[int, Any, int]]) -> list[bool]:
    """Copies (block, payload, checksum) reads into ``out`` at ``block * block_bytes``; True where the checksum held."""

def decode_record(key: bytes, record: bytes) -> dict[str, Any] | None:
    """A disk index record as a dict (with ``key_ok``), or None if malformed."""

def lmdb_walk(
    file: _ReadBuffer, psize: int, last_pg: int, free_root: int, main_root: int, names: Sequence[str | bytes], *,
    collect: bool = False,
) -> tuple[int, int, str, list[tuple[int, bytes, int, int]]]:
    """The structural check of an LMDB data file: (pages, damaged, first damage, records (db, key, offset, length))."""

class TokenSequence:
    """An append-only buffer of token ids below ``limit``."""

    def __init__(self, limit: int) -> None: ...
    def extend(self, tokens: _Tokens) -> None: ...
    def clear(self) -> None: ...
    def truncate(self, n: int) -> None: ...
    def __len__(self) -> int: ...
    @property
    def limit(self) -> int: ...
    def numpy(self) -> npt.NDArray[np.int32]: ...

@final
class Memory:
    """Memory the facade describes from a tensor (CUDA memory, host tensors without the buffer protocol)."""

    def __init__(self, address: int, bytes: int, device: int) -> None: ...
    @property
    def address(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def device(self) -> int: ...

class Pin:
    """A held prefix returned by ``Store.match(..., pin=True)``. Not constructible from Python."""

    @property
    def blocks(self) -> int: ...
    @property
    def active(self) -> bool: ...

class Policy(enum.Enum):
    """A tier's eviction policy (csrc/core/spec.h)."""

    LRU = 0
    LFU = 1
    TTL = 2

class TierSpec:
    """One tier's capacity (bytes; 0 = unlimited), policy and TTL (seconds; None = none)."""

    def __init__(self) -> None: ...
    @property
    def capacity_bytes(self) -> int: ...
    @capacity_bytes.setter
    def capacity_bytes(self, arg0: int, /) -> None: ...
    @property
    def policy(self) -> Policy: ...
    @policy.setter
    def policy(self, arg0: Policy, /) -> None: ...
    @property
    def ttl_s(self) -> float | None: ...
    @ttl_s.setter
    def ttl_s(self, arg0: float | None, /) -> None: ...

class DiskSpec(TierSpec):
    """The disk tier's spec: a TierSpec plus whether it exists, write-through and the write queue's length."""

    def __init__(self) -> None: ...
    @property
    def enabled(self) -> bool: ...
    @enabled.setter
    def enabled(self, arg0: bool, /) -> None: ...
    @property
    def write_through(self) -> bool: ...
    @write_through.setter
    def write_through(self, arg0: bool, /) -> None: ...
    @property
    def queue_blocks(self) -> int: ...
    @queue_blocks.setter
    def queue_blocks(self, arg0: int, /) -> None: ...

class DeviceSpec:
    """The device tier's spec."""

    def __init__(self) -> None: ...
    @property
    def enabled(self) -> bool: ...
    @enabled.setter
    def enabled(self, arg0: bool, /) -> None: ...
    @property
    def capacity_bytes(self) -> int: ...
    @capacity_bytes.setter
    def capacity_bytes(self, arg0: int, /) -> None: ...
    @property
    def ordinal(self) -> int: ...
    @ordinal.setter
    def ordinal(self, arg0: int, /) -> None: ...
    @property
    def promote(self) -> bool: ...
    @promote.setter
    def promote(self, arg0: bool, /) -> None: ...
    @property
    def write_through(self) -> bool: ...
    @write_through.setter
    def write_through(self, arg0: bool, /) -> None: ...

class StoreSpec:
    """A whole store's configuration as the core takes it (built by ``kvtier.StoreConfig.spec()``)."""

    def __init__(self) -> None: ...
    @property
    def block_size(self) -> int: ...
    @block_size.setter
    def block_size(self, arg0: int, /) -> None: ...
    @property
    def width(self) -> int: ...
    @width.setter
    def width(self, arg0: int, /) -> None: ...
    @property
    def block_bytes(self) -> int: ...
    @block_bytes.setter
    def block_bytes(self, arg0: int, /) -> None: ...
    @property
    def payloads(self) -> bool: ...
    @payloads.setter
    def payloads(self, arg0: bool, /) -> None: ...
    @property
    def host(self) -> TierSpec: ...
    @host.setter
    def host(self, arg0: TierSpec, /) -> None: ...
    @property
    def disk(self) -> DiskSpec: ...
    @disk.setter
    def disk(self, arg0: DiskSpec, /) -> None: ...
    @property
    def device(self) -> DeviceSpec: ...
    @device.setter
    def device(self, arg0: DeviceSpec, /) -> None: ...

def validate_tier(tier: TierSpec, name: str) -> None:
    """Raises InvalidArgumentError unless the tier's values are valid (field names prefixed by ``name``)."""

def validate_spec(spec: StoreSpec) -> None:
    """Raises InvalidArgumentError unless the store's spec is valid (csrc/core/spec.cpp)."""

class Store:
    """The C++ store: radix tree, tiers, policies and residency ledger; one lock; host payload copies run outside it.

    ``now`` is seconds on the caller's clock, or ``None`` for the store's monotonic clock.
    """

    def __init__(self, spec: StoreSpec, *, ids: bool, limit: int) -> None: ...
    def add_namespace(self, arg0: bytes, /) -> int: ...
    def namespace_key_of(self, arg0: int, /) -> bytes: ...
    def take_retired_namespaces(self) -> list[int]: ...
    def namespaces(self) -> list[int]: ...
    # (host blocks, disk blocks after them, pin or None, key where the disk lookup stopped or None,
    #  per host block 1 if on the device tier (None without one))
    def match(
        self, ns: int, tokens: _Tokens, now: float | None, touch: bool, pin: bool
    ) -> tuple[int, int, Pin | None, bytes | None, bytes | None]: ...
    def unpin(self, pin: Pin, now: float | None = None) -> None: ...
    def insert(
        self,
        ns: int,
        session: str,
        tokens: _Tokens,
        payload: _ReadBuffer | _Memory | None,
        payload_first: int,
        now: float | None,
    ) -> tuple[int, int, int]: ...
    def load(self, ns: int, tokens: _Tokens, out: _WriteBuffer | _Memory, now: float | None) -> int: ...
    # (blocks planned, [(block, key, checksum)] to read from the disk folder)
    def load_pinned(self, pin: Pin, out: _WriteBuffer | _Memory) -> tuple[int, list[tuple[int, bytes, int]]]: ...
    def disk_finish_load(
        self,
        pin: Pin,
        out: _WriteBuffer | _Memory,
        good: int,
        corrupt: list[bytes],
        missing: list[bytes],
        promote: bool,
        now: float | None = None,
        staged: _ReadBuffer | None = None,
        staged_blocks: list[int] = ...,
    ) -> int: ...
    # (closed, [(key, index record, payload view)], [keys to delete])
    def disk_take(
        self, max_blocks: int, wall_now: float
    ) -> tuple[bool, list[tuple[bytes, bytes, memoryview]], list[bytes]]: ...
    def disk_wait(self, timeout_s: float) -> bool: ...
    def disk_finish(self, ok: bool, error: str = "") -> None: ...
    def disk_make_room(self, blocks: int) -> list[bytes]: ...
    def disk_flush(self, timeout_s: float | None = None, host: bool = False) -> tuple[bool, str]: ...
    # (restored, keys of damaged records, records of another geometry)
    def disk_restore(
        self,
        records: list[tuple[bytes, bytes]],
        wall_now: float,
        now: float | None = None,
        generation: int | None = None,
    ) -> tuple[int, list[bytes], int]: ...
    def delete_generation(self) -> int: ...
    def chain_keys_from(
        self, ns: int, tokens: _Tokens, from_block: int, parent: bytes | None = None
    ) -> npt.NDArray[np.uint8]: ...
    def disk_persist(self, max_blocks: int) -> int: ...
    def disk_take_removed(self) -> tuple[list[bytes], int]: ...
    def disk_stats(self) -> dict[str, Any]: ...
    def keys_pinned(self, arg0: Pin, /) -> npt.NDArray[np.uint8]: ...
    def evict(self, bytes: int, now: float | None) -> int: ...
    def evict_device(self, bytes: int, now: float | None) -> int: ...
    # Keys: hits, inserted, promoted, evicted, written_back, bytes_written, bytes_read, blocks, dirty_blocks,
    # resident_bytes, capacity_bytes; every value is an int.
    def device_stats(self) -> dict[str, Any]: ...
    def expire(self, now: float | None) -> int: ...
    def clear(self, now: float | None) -> int: ...
    def replay(
        self,
        offsets: npt.ArrayLike,
        blocks: _Tokens,
        times: npt.ArrayLike,
        ns_keys: list[bytes],
        ns_index: npt.ArrayLike | None = None,
        sessions: npt.ArrayLike | None = None,
        session_table: list[str] = ...,
    ) -> tuple[npt.NDArray[np.int32], list[int]]: ...
    # Keys: hits, misses, inserted, evicted, expired, bytes_written, bytes_read, resident_bytes,
    # capacity_bytes (0 = unlimited), blocks, pinned_blocks, nodes, accounts, namespaces; every value is an int.
    def stats(self) -> dict[str, Any]: ...
    def residency(self, now: float | None) -> list[_ResidencyRow]: ...
    def clock(self) -> float: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def check_invariants(self) -> None: ...

# ---------------------------------------------------------------------------------------------------------
# Copy engine, CUDA driver probe and device tier (csrc/bindings/copy.cpp). CUDA failures raise
# kvtier.CudaUnavailableError (CUDA missing) and kvtier.CudaError (a driver call failed).

def cuda_probe() -> tuple[bool, str, str, int, list[str], bool]:
    """(available, reason, driver library path, driver version, device names, has cuMemcpyBatchAsync)."""

def pointer_info(address: int) -> tuple[int, int]:
    """(CUmemorytype or 0 if CUDA does not know the address, device ordinal) of ``address``. Needs CUDA."""

def is_page_locked(address: int) -> bool:
    """True if CUDA reports the host address as page-locked; False without CUDA."""

@final
class KVLayout:
    """A validated engine KV layout: regions ``(base, stride, bytes)`` of ``num_blocks`` blocks."""

    def __init__(self, regions: npt.ArrayLike, num_blocks: int, device: int) -> None: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def device(self) -> int: ...
    @property
    def payload_bytes(self) -> int: ...
    @property
    def regions(self) -> npt.NDArray[np.uint64]: ...

def plan_copy(
    layout: KVLayout,
    block_ids: npt.ArrayLike,
    scatter: bool,
    buffer_base: int,
    buffer_stride: int,
    slots: npt.ArrayLike | None,
) -> tuple[npt.NDArray[np.uint64], int, int]:
    """(runs ``uint64[n, 3]`` of (dst, src, bytes) after merging, runs before merging, total bytes)."""

@final
class CopyHandle:
    """A submitted copy. Not constructible from Python."""

    def poll(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    @property
    def path(self) -> str: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def runs(self) -> int: ...
    @property
    def unmerged_runs(self) -> int: ...

@final
class CopyEngine:
    """Host worker threads and one CUDA stream per device. ``batch``: 0 auto, 1 off, 2 require."""

    def __init__(self, *, threads: int, inline_bytes: int, batch: int) -> None: ...
    def submit(
        self,
        layout: KVLayout,
        block_ids: npt.ArrayLike,
        scatter: bool,
        buffer_base: int,
        buffer_stride: int,
        buffer_device: int,
        slots: npt.ArrayLike | None,
        keep: object,
    ) -> CopyHandle: ...
    # Keys: submits, inline_submits, host_submits, device_submits, batch_calls, copy_calls, batch_fallbacks,
    # runs, bytes (ints) and last_batch_error (str).
    def stats(self) -> dict[str, Any]: ...
    @property
    def threads(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...

@final
class DeviceArena:
    """``slots`` blocks of ``block_bytes`` in one GPU's memory (cuMemAlloc on its primary context)."""

    def __init__(self, *, device: int, slots: int, block_bytes: int) -> None: ...
    def take(self, count: int) -> npt.NDArray[np.uint32]: ...
    def give_back(self, slots: npt.ArrayLike) -> None: ...
    def addresses(self, slots: npt.ArrayLike) -> npt.NDArray[np.uint64]: ...
    @property
    def device(self) -> int: ...
    @property
    def slots(self) -> int: ...
    @property
    def free_slots(self) -> int: ...
    @property
    def block_bytes(self) -> int: ...
    @property
    def base(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...

@final
class HostBuffer:
    """``nbytes`` of page-aligned host memory (page-locked where CUDA is usable); a writable uint8 buffer."""

    def __init__(self, nbytes: int) -> None: ...
    @property
    def address(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
