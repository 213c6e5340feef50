"""The typed facade over the C++ store.

A :class:`Store` holds one handle to ``kvtier._core.Store`` and crosses the boundary once per
request (one call per prompt, never per block). It is thread-safe: the core serialises calls on one
lock and every call releases the GIL.

::

    tokens  [t0 .. t15 | t16 .. t31 | t32 .. t47 | t48 ..t50]      block_size = 16
             block 0     block 1      block 2      (partial: never cached)
    payload [ block 0 KV | block 1 KV | block 2 KV ]             block_bytes each, back to back
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, TypeVar, Union

import numpy as np
import numpy.typing as npt

from kvtier import _core, store_keys
from kvtier._core import BlockRuns
from kvtier.config import Namespace, StoreConfig, _check_bool, _check_str, token_limit
from kvtier.errors import (
    CudaError,
    DiskWriteError,
    InvalidArgumentError,
    KvtierTypeError,
    StoreClosedError,
    UnknownNamespaceError,
)

if TYPE_CHECKING:
    from kvtier.tiers.disk import DiskTier, RestoreReport
    from kvtier.tiers.remote import RemoteStats, RemoteTier
    from kvtier.replay import ReplayTrace
    from kvtier.store_keys import Keys

__all__ = [
    "Store",
    "Tier",
    "MatchResult",
    "InsertResult",
    "StoreStats",
    "DiskStats",
    "DeviceStats",
    "ResidencyRow",
    "Residency",
    "TokenSequence",
    "Tokens",
]

_T = TypeVar("_T")

Tokens = Union[npt.ArrayLike, "TokenSequence", Sequence[int]]
_SECONDS_PER_HOUR = 3600.0
_GB = 1e9


class Tier(IntEnum):
    """Where a block lives: DEVICE (the device tier's GPU memory), HOST memory, the DISK folder or the shared
    REMOTE server (Redis, Valkey, Redis Cluster)."""

    DEVICE = 0
    HOST = 1
    DISK = 2
    REMOTE = 3


class TokenSequence:
    """A request's tokens held on the C++ side, extended as they arrive.

    Engines keep prompts as Python lists; converting a 32k-token list costs more than the lookup.
    Keep one TokenSequence per request, ``extend`` it with each step's new tokens, and pass it to
    :meth:`Store.match` / :meth:`Store.insert`: no conversion on the lookup path.
    """

    def __init__(self, tokens: Tokens | None = None, *, vocab_size: int | None = None) -> None:
        limit = token_limit(vocab_size)
        self._seq = _core.TokenSequence(limit)
        if tokens is not None:
            self.extend(tokens)

    def extend(self, tokens: Tokens) -> None:
        self._seq.extend(tokens._seq if isinstance(tokens, TokenSequence) else tokens)

    def truncate(self, n: int) -> None:
        """Keeps the first ``n`` tokens (a request rolled back, or a branch taken from an earlier step)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(self._seq):
            raise InvalidArgumentError(f"n must be an int in [0, {len(self._seq)}], got {n!r}")
        self._seq.truncate(n)

    def __len__(self) -> int:
        return len(self._seq)

    def numpy(self) -> npt.NDArray[np.int32]:
        return self._seq.numpy()


class MatchResult:
    """The longest cached prefix of a prompt (read-only).

    Attributes
    ----------
    num_blocks
        Leading full blocks found.
    num_tokens
        ``num_blocks * block_size``.
    host_blocks
        Leading blocks found in the host tier; then ``disk_blocks`` on disk, then ``remote_blocks`` on the remote
        server.
    device_blocks
        Of the host blocks, those also held by the device tier (a load copies them GPU to GPU).
    tiers
        ``uint8[num_blocks]``: the :class:`Tier` of each matched block (the fastest that holds it).
    pinned
        Whether the prefix is held (never evicted) until :meth:`Store.unpin` and can be passed to
        :meth:`Store.load`. Remote blocks are not held: the server may expire or evict them before the load, which
        then returns fewer blocks.
    """

    __slots__ = ("num_blocks", "num_tokens", "host_blocks", "remote_blocks", "_pin", "_on_device", "_remote")
    num_blocks: int
    num_tokens: int
    host_blocks: int
    remote_blocks: int
    _pin: Any
    _on_device: bytes | None
    _remote: Any  # (ns id, ns key, keys of the remote blocks, tokens) for a pinned match with remote blocks

    def __init__(
        self,
        num_blocks: int,
        num_tokens: int,
        pin: Any = None,
        host_blocks: int | None = None,
        on_device: bytes | None = None,
        remote_blocks: int = 0,
        remote: Any = None,
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "num_blocks", num_blocks)
        setattr_(self, "num_tokens", num_tokens)
        setattr_(self, "host_blocks", num_blocks - remote_blocks if host_blocks is None else host_blocks)
        setattr_(self, "remote_blocks", remote_blocks)
        setattr_(self, "_pin", pin)
        setattr_(self, "_on_device", on_device)
        setattr_(self, "_remote", remote)

    @property
    def pinned(self) -> bool:
        return self._pin is not None or self._remote is not None

    @property
    def disk_blocks(self) -> int:
        return self.num_blocks - self.host_blocks - self.remote_blocks

    @property
    def device_blocks(self) -> int:
        return 0 if not self._on_device else self._on_device.count(1)

    @property
    def tiers(self) -> npt.NDArray[np.uint8]:
        out = np.full(self.num_blocks, int(Tier.DISK), dtype=np.uint8)
        out[: self.host_blocks] = int(Tier.HOST)
        if self.remote_blocks:
            out[self.num_blocks - self.remote_blocks :] = int(Tier.REMOTE)
        if self._on_device:
            out[: self.host_blocks][np.frombuffer(self._on_device, dtype=np.uint8) == 1] = int(Tier.DEVICE)
        return out

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("MatchResult is read-only")

    def __repr__(self) -> str:
        return (
            f"MatchResult(num_blocks={self.num_blocks}, num_tokens={self.num_tokens}, "
            f"host_blocks={self.host_blocks}, remote_blocks={self.remote_blocks}, pinned={self.pinned})"
        )


@dataclass(frozen=True)
class InsertResult:
    """What an insert did: blocks already present and blocks newly stored.

    ``stored_blocks`` is the prefix now cached; it is shorter than the prompt's full blocks only
    when pinned blocks fill the tier, or when a block below ``start_block`` was evicted meanwhile.
    """

    matched_blocks: int
    inserted_blocks: int
    full_blocks: int

    @property
    def stored_blocks(self) -> int:
        return self.matched_blocks + self.inserted_blocks


@dataclass(frozen=True)
class DiskStats:
    """Counters of the disk tier since the store was opened (blocks unless the name says bytes).

    ``hits`` are blocks found on disk beyond the host match; ``corrupted`` blocks failed their
    checksum on a read (removed, never served); ``missing`` were in the index but gone from the folder
    (another process evicted them); ``write_errors`` counts block writes that failed (e.g. a full disk; a
    block kept queued counts again each time its retry fails);
    ``rejected`` demotions found the disk full of pinned or queued blocks; ``restored`` entries came from
    the folder at open or from other processes; ``pending`` are queued or being written now.
    """

    hits: int
    misses: int
    queued: int
    written: int
    bytes_written: int
    bytes_read: int
    evicted: int
    expired: int
    corrupted: int
    missing: int
    write_errors: int
    rejected: int
    promoted: int
    restored: int
    pending: int
    blocks: int
    resident_bytes: int
    capacity_bytes: int
    pinned_blocks: int


@dataclass(frozen=True)
class DeviceStats:
    """Counters of the device tier since the store was created (blocks unless the name says bytes).

    ``hits`` are blocks a load copied out of the device tier; ``inserted`` came from GPU memory straight into
    it; ``promoted`` were copied up from the host by a load; ``evicted`` left it (least recently used first,
    :meth:`Store.evict` with ``tier=Tier.DEVICE``, or with their host block); ``written_back`` were copied
    down to their host slot first because the device held their only copy (``dirty_blocks`` now).
    """

    hits: int
    inserted: int
    promoted: int
    evicted: int
    written_back: int
    bytes_written: int
    bytes_read: int
    blocks: int
    dirty_blocks: int
    resident_bytes: int
    capacity_bytes: int


@dataclass(frozen=True)
class StoreStats:
    """Counters of the host tier since the store was created (blocks unless the name says bytes).

    ``disk``, ``device`` and ``remote`` hold those tiers' counters when the store has them.
    """

    hits: int
    misses: int
    inserted: int
    evicted: int
    expired: int
    bytes_written: int
    bytes_read: int
    resident_bytes: int
    capacity_bytes: int | None
    blocks: int
    pinned_blocks: int
    nodes: int
    accounts: int  # residency accounts (namespace, session) tracked now: live sessions, and ended ones not yet folded
    namespaces: int  # namespaces registered and not yet left (a namespace that holds nothing leaves)
    disk: DiskStats | None = None
    device: DeviceStats | None = None
    remote: RemoteStats | None = None

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(frozen=True)
class ResidencyRow:
    """Residency of one (namespace, session) in one tier.

    ``session`` is ``None`` for the namespace's sessions that ended: a session that holds nothing in
    any tier is folded into that row once the store tracks more than a thousand sessions, so memory
    stays bounded by the live sessions while every total stays exact. Likewise ``namespace`` is
    ``None`` (with ``session`` ``None``) for namespaces (tenants) that ended: no block in any tier and
    no session left, once more than a thousand namespaces are registered.
    """

    namespace: Namespace | None
    session: str | None
    tier: Tier
    resident_bytes: int
    byte_seconds: float

    @property
    def gb_hours(self) -> float:
        """Decimal GB (1e9 bytes) x hours."""
        return self.byte_seconds / _GB / _SECONDS_PER_HOUR


@dataclass(frozen=True)
class Residency:
    """Exact resident bytes x time, integrated at every state change, up to ``now``."""

    now: float
    rows: tuple[ResidencyRow, ...]

    @property
    def byte_seconds(self) -> float:
        return sum(r.byte_seconds for r in self.rows)

    @property
    def gb_hours(self) -> float:
        return self.byte_seconds / _GB / _SECONDS_PER_HOUR

    def by_namespace(self) -> dict[Namespace | None, float]:
        """GB-hours per namespace (``None``: the namespaces that ended, see :class:`ResidencyRow`)."""
        out: dict[Namespace | None, float] = {}
        for r in self.rows:
            out[r.namespace] = out.get(r.namespace, 0.0) + r.gb_hours
        return out

    def by_session(self) -> dict[tuple[Namespace | None, str | None], float]:
        """GB-hours per (namespace, session), all tiers together; session ``""`` is what no session was named
        for, ``None`` the sessions that ended (see :class:`ResidencyRow`)."""
        out: dict[tuple[Namespace | None, str | None], float] = {}
        for r in self.rows:
            out[(r.namespace, r.session)] = out.get((r.namespace, r.session), 0.0) + r.gb_hours
        return out

    def by_tier(self) -> dict[Tier, float]:
        """GB-hours per tier, all namespaces and sessions together."""
        out: dict[Tier, float] = {}
        for r in self.rows:
            out[r.tier] = out.get(r.tier, 0.0) + r.gb_hours
        return out


class Store:
    """A KV prefix-cache store: radix tree + host tier + exact residency accounting.

    Parameters
    ----------
    config
        Block geometry, content kind and the host tier (:class:`StoreConfig`).
    namespace
        The default namespace for calls that name none (default: ``Namespace(model="default")``).
    now
        With a disk tier: the time (on the clock later calls use) at which blocks restored from the
        folder are dated; their idle time before the restart is kept. Default: the monotonic clock.

    Every method takes an optional ``now`` (seconds on the caller's clock; default: a monotonic
    clock). Time must not go backwards. Use as a context manager to close it.
    """

    def __init__(
        self, config: StoreConfig | None = None, *, namespace: Namespace | None = None, now: float | None = None
    ) -> None:
        self.config = config if config is not None else StoreConfig()
        if not isinstance(self.config, StoreConfig):
            raise KvtierTypeError(f"config must be a StoreConfig, got {type(self.config).__name__}")
        host = self.config.host
        disk = self.config.disk
        device = self.config.device
        self._core = _core.Store(
            self.config.spec(), ids=self.config.content == "block_ids", limit=self.config.token_limit
        )
        self._disk: DiskTier | None = None
        self._remote: RemoteTier | None = None
        self._finalizer: weakref.finalize[[], Store] | None = None
        self._ns_lock = threading.Lock()
        self._staging: npt.NDArray[np.uint8] | None = None  # see _staging_for
        self._staging_lock = threading.Lock()
        self._ns_ids: dict[Namespace, int] = {}
        self._ns_by_id: dict[int, Namespace] = {}
        self.default_namespace = namespace if namespace is not None else Namespace(model="default")
        self._default_ns: int | None = None  # the default namespace's id (None after it left: registered again)
        self.register(self.default_namespace)  # validates it
        self._default_key = self.default_namespace.key(self.config.block_size, self.config.content)
        self._block_size = self.config.block_size
        self._dtype = None if self.config.payload_dtype is None else np.dtype(self.config.payload_dtype)
        if disk is not None:
            self._open_disk(now)
        if self.config.remote is not None:
            from kvtier.tiers.remote import RemoteTier

            # Never connects here: a store starts while the server is down (its writer thread connects).
            self._remote = RemoteTier(
                self._core, self.config.remote, self.config.block_bytes, demotions=self.config.spec().remote.enabled
            )
            # A store dropped without close() still writes its queue (while the server answers) and stops the
            # writer thread.
            self._remote_finalizer = weakref.finalize(self, self._remote.close)
            if self._disk is not None:
                self._disk.below = self._remote.demote  # blocks evicted from the folder go down to the server
            for namespace in list(self._ns_by_id.values()):
                self._remote.record_namespace(
                    namespace.key(self.config.block_size, self.config.content), namespace, self.config.block_size
                )

    def _open_disk(self, now: float | None) -> None:
        from kvtier.tiers.disk import DiskTier

        assert self.config.disk is not None
        folder = DiskTier(self._core, self.config.disk, self.config.block_size, self.config.block_bytes)
        try:
            self._disk = folder
            # Namespaces registered before the folder was open are recorded in it.
            content = self.config.content
            registered = [(namespace.key(self.config.block_size, content), namespace) for namespace in self._ns_by_id.values()]
            folder.open(registered, self.register, now)
            self._sync_namespaces()
            folder.start_writer()
            # A store dropped or left open at interpreter exit still commits its queued writes and
            # stops its writer thread (a writer still waiting in the core when Python finalizes would
            # abort the process).
            self._finalizer = weakref.finalize(self, folder.shutdown)
        except BaseException:
            self._core.close()
            folder.close()
            self._disk = None
            raise

    def _sync_namespaces(self) -> None:
        """Names namespaces the core learned from the folder without a recorded Namespace."""
        with self._ns_lock:
            for ns in self._core.namespaces():
                if ns in self._ns_by_id:
                    continue
                try:
                    key = self._core.namespace_key_of(ns)
                except KeyError:
                    continue  # it held nothing and left already
                unnamed = Namespace(model=f"unrecorded:{key.hex()[:16]}")
                self._ns_ids[unnamed] = ns
                self._ns_by_id[ns] = unnamed

    @property
    def restore_report(self) -> RestoreReport | None:
        """What opening the disk folder restored (``None`` without a disk tier)."""
        return None if self._disk is None else self._disk.restore_report

    # ----------------------------------------------------------------- namespaces
    def register(self, namespace: Namespace) -> int:
        """Registers ``namespace`` (idempotent) and returns its id in this store."""
        if not isinstance(namespace, Namespace):
            raise KvtierTypeError(f"namespace must be a kvtier.Namespace, got {type(namespace).__name__}")
        with self._ns_lock:
            ns = self._ns_ids.get(namespace)
            if ns is None:
                key = namespace.key(self.config.block_size, self.config.content)
                if self._disk is not None:
                    self._disk.record_namespace(key, namespace)
                if self._remote is not None:
                    self._remote.record_namespace(key, namespace, self.config.block_size)
                ns = self._core.add_namespace(key)
                self._forget_retired()
                self._name(ns, namespace)
            return ns

    def _name(self, ns: int, namespace: Namespace) -> None:
        """Records that core id ``ns`` is ``namespace``. Under _ns_lock."""
        old = self._ns_by_id.get(ns)
        if old is not None:  # "unrecorded": the core learned it from the folder; the caller's name is better
            self._ns_ids.pop(old, None)
        stale = self._ns_ids.get(namespace)
        if stale is not None:  # an id it had before it left
            self._ns_by_id.pop(stale, None)
        self._ns_ids[namespace] = ns
        self._ns_by_id[ns] = namespace
        if namespace == self.default_namespace:
            self._default_ns = ns

    def _forget_retired(self) -> None:
        """Drops namespaces that held nothing and left the core (``_core.Store.add_namespace``). Under _ns_lock."""
        for ns in self._core.take_retired_namespaces():
            namespace = self._ns_by_id.pop(ns, None)
            if namespace is not None and self._ns_ids.get(namespace) == ns:
                del self._ns_ids[namespace]
            if ns == self._default_ns:
                self._default_ns = None

    def _ns(self, namespace: Namespace | None) -> int:
        if namespace is None:
            ns = self._default_ns
            if ns is not None:
                return ns
            namespace = self.default_namespace
        return self.register(namespace)

    def _again(self, namespace: Namespace | None, ns: int, error: UnknownNamespaceError, call: Callable[[int], _T]) -> _T:
        """After ``call(ns)`` raised ``error``. A namespace that held nothing may leave the core between the
        lookup of its id and the call (another thread registering many namespaces): it is then registered
        again and the call repeated (it failed before changing anything)."""
        for _ in range(3):
            with self._ns_lock:
                self._forget_retired()
                if ns in self._ns_by_id:
                    raise error  # not a namespace that left: a real error
            ns = self._ns(namespace)
            try:
                return call(ns)
            except UnknownNamespaceError as e:
                error = e
        raise UnknownNamespaceError(f"namespace {namespace!r} left the store three times while this call ran")

    @staticmethod
    def _session(session: str | None) -> str:
        """The residency account's name as the core takes it ("" for none). The core keeps an account
        only while its session holds blocks (or has a call in flight), so nothing is cached here."""
        if session is None:
            return ""
        if not isinstance(session, str):
            raise KvtierTypeError(f"session must be a str, got {type(session).__name__}")
        _check_str("session", session)  # crosses into the core as UTF-8
        return session

    @staticmethod
    def _arg(tokens: Tokens) -> Any:
        return tokens._seq if isinstance(tokens, TokenSequence) else tokens

    def _lookup(
        self, ns: int, tokens: Any, now: float | None, touch: bool, pin: bool, remote_probe: bool = True
    ) -> MatchResult:
        """The match. Without ``remote_probe`` (a load that reads at once) the remote tier is not asked: the
        result carries every key past the local prefix, and the read stops at the first that is absent."""
        if self._disk is not None:
            # First without side effects: where the disk lookup stops at a key this process does not
            # know, another process sharing the folder may have stored it (and what follows). Import
            # those entries before the real lookup, so that hits and recency are counted once.
            host, disk, handle, probe, dev = self._core.match(ns, tokens, now, False, False)
            if probe is not None and self._disk.import_chain(ns, tokens, host + disk, probe):
                host, disk, handle, probe, dev = self._core.match(ns, tokens, now, False, False)
            if touch or pin:
                host, disk, handle, probe, dev = self._core.match(ns, tokens, now, touch, pin)
        else:
            host, disk, handle, probe, dev = self._core.match(ns, tokens, now, touch, pin)
        blocks = host + disk
        remote_blocks, remote = 0, None
        if self._remote is not None and self._remote.available and self._full_blocks(tokens) > blocks:
            # Past the local prefix, the server by chained key: one round trip per batch of keys.
            keys = self._core.chain_keys_from(ns, tokens, 0, None)
            if len(keys) > blocks:
                ns_key = self._core.namespace_key_of(ns)
                want = [k.tobytes() for k in keys[blocks:]]
                if not remote_probe:
                    remote = (ns, ns_key, want, tokens)
                else:
                    remote_blocks = self._remote.lookup(ns_key, want, touch or pin)
                    if pin and remote_blocks:
                        remote = (ns, ns_key, want[:remote_blocks], tokens)
        total = blocks + remote_blocks
        return MatchResult(total, total * self._block_size, handle, host, dev, remote_blocks, remote)

    # ----------------------------------------------------------------- lookups
    def match(
        self, tokens: Tokens, *, namespace: Namespace | None = None, now: float | None = None, pin: bool = False
    ) -> MatchResult:
        """Longest cached prefix of ``tokens``; refreshes its recency and counts hits and misses.

        With ``pin=True`` the prefix is held (never evicted) until :meth:`unpin`; a request in flight
        pins its prefix as SGLang's ``inc_lock_ref`` does.
        """
        if not isinstance(pin, bool):
            raise KvtierTypeError(f"pin must be a bool, got {type(pin).__name__}")
        seq = self._arg(tokens)
        ns = self._ns(namespace)
        try:
            return self._lookup(ns, seq, now, True, pin)
        except UnknownNamespaceError as e:
            return self._again(namespace, ns, e, lambda n: self._lookup(n, seq, now, True, pin))

    def peek(self, tokens: Tokens, *, namespace: Namespace | None = None, now: float | None = None) -> MatchResult:
        """Like :meth:`match` without side effects (no recency, no stats): what vLLM's scheduler asks."""
        seq = self._arg(tokens)
        ns = self._ns(namespace)
        try:
            return self._lookup(ns, seq, now, False, False)
        except UnknownNamespaceError as e:
            return self._again(namespace, ns, e, lambda n: self._lookup(n, seq, now, False, False))

    def unpin(self, result: MatchResult, *, now: float | None = None) -> None:
        """Releases a prefix pinned by ``match(..., pin=True)``.

        Releasing counts as an access at ``now`` (recency refreshed, no hit), so a TTL counts idle
        time from the release. ``now`` defaults to the latest time the store has seen (not the
        monotonic clock), so code that passes explicit times may release without one.
        """
        if not isinstance(result, MatchResult) or not result.pinned:
            raise InvalidArgumentError("unpin() needs a MatchResult returned by match(..., pin=True) with num_blocks > 0")
        if result._pin is not None:  # remote blocks are never held
            self._core.unpin(result._pin, now)

    @contextmanager
    def pinned(
        self, tokens: Tokens, *, namespace: Namespace | None = None, now: float | None = None
    ) -> Iterator[MatchResult]:
        """``with store.pinned(tokens) as m:`` — match and hold the prefix for the block's duration."""
        m = self.match(tokens, namespace=namespace, now=now, pin=True)
        try:
            yield m
        finally:
            if m.pinned and not self.closed:  # close() released every hold
                self.unpin(m, now=now)

    # ----------------------------------------------------------------- payloads
    def _check_payload(self, payloads: Any, name: str) -> None:
        if self._dtype is not None and isinstance(payloads, np.ndarray) and payloads.dtype != self._dtype:
            raise KvtierTypeError(f"{name} must have dtype {self._dtype}, got {payloads.dtype}")

    def _memory(self, obj: Any, name: str, writable: bool) -> Any:
        """What the core takes for a payload or output buffer: buffer-protocol objects as they are; tensors
        (CUDA memory, host tensors without the buffer protocol, a :class:`kvtier.TensorView`) as a
        ``_core.Memory``. The caller keeps ``obj`` alive for the call."""
        if isinstance(obj, (np.ndarray, bytes, bytearray, memoryview)):
            return obj
        from kvtier.kv_layout import TensorView, as_tensor_view

        if not (isinstance(obj, TensorView) or hasattr(obj, "__cuda_array_interface__") or hasattr(obj, "__dlpack__")):
            return obj

        view = as_tensor_view(obj, name)
        if not view.is_c_contiguous():
            raise KvtierTypeError(f"{name} must be C-contiguous (a tensor's .contiguous())")
        if writable and view.readonly:
            raise KvtierTypeError(f"{name} must be writable")
        if view.data_ptr == 0 and view.nbytes:
            raise InvalidArgumentError(f"{name} has no memory (a null data pointer)")
        if self._dtype is not None and view.dtype != self._dtype.str:
            raise KvtierTypeError(f"{name} must have dtype {self._dtype}, got {view.dtype}")
        return _core.Memory(view.data_ptr, view.nbytes, view.device)

    def insert(
        self,
        tokens: Tokens,
        payloads: npt.ArrayLike | memoryview | bytes | None = None,
        *,
        start_block: int = 0,
        namespace: Namespace | None = None,
        session: str | None = None,
        now: float | None = None,
    ) -> InsertResult:
        """Stores the full blocks of ``tokens`` that are not cached yet.

        Parameters
        ----------
        tokens
            Token ids (1-D integer array, list, or :class:`TokenSequence`); or block ids with
            ``content="block_ids"``.
        payloads
            KV bytes of blocks ``start_block .. full_blocks-1``, back to back, C-contiguous
            (``(n_blocks, ...)`` of any numeric dtype, ``block_bytes`` per block). Required unless the
            store is metadata-only. Only the blocks not yet cached are copied. A CUDA tensor (any object
            with ``__cuda_array_interface__`` or ``__dlpack__``) is copied on the GPU into the device tier
            when the store has one on that GPU and it has room (the host copy is written when the device
            evicts the blocks), else into the host tier. The copy runs on kvtier's own CUDA stream, not after
            the kernels that wrote the tensor: pass it when it is final (synchronize its stream first).
        start_block
            First block that ``payloads`` covers; the blocks before it must already be cached
            (an engine saving one new block passes the index of that block).
        session
            Residency account within the namespace (an agent session, a user); see :meth:`residency`.
        """
        if isinstance(start_block, bool) or not isinstance(start_block, int) or start_block < 0:
            raise InvalidArgumentError(f"start_block must be an int >= 0, got {start_block!r}")
        if start_block >= 1 << 32:
            raise InvalidArgumentError(f"start_block={start_block} is beyond any prompt (at most 2**32 blocks)")
        if payloads is not None:
            self._check_payload(payloads, "payloads")
        name = self._session(session)
        memory = None if payloads is None else self._memory(payloads, "payloads", False)
        seq = self._arg(tokens)
        ns = self._ns(namespace)
        try:
            matched, inserted, full = self._core.insert(ns, name, seq, memory, start_block, now)
        except UnknownNamespaceError as e:
            matched, inserted, full = self._again(
                namespace, ns, e, lambda n: self._core.insert(n, name, seq, memory, start_block, now)
            )
        if self._remote is not None and memory is not None and full > start_block:
            self._write_remote(self._ns(namespace), namespace, name, seq, memory, start_block, full, now)
        return InsertResult(matched, inserted, full)

    def _write_remote(
        self,
        ns: int,
        namespace: Namespace | None,
        session: str,
        seq: Any,
        memory: Any,
        start: int,
        full: int,
        now: float | None,
    ) -> None:
        """Queues blocks ``start .. full`` of an insert for the remote tier (those it does not know to be there);
        with write="through", waits until the server acknowledged them (or failed)."""
        remote = self._remote
        assert remote is not None and self.config.remote is not None
        if isinstance(memory, _core.Memory):
            return  # a tensor: its blocks reach the server from the local tiers only (docs/remote.md)
        ns_key = self._core.namespace_key_of(ns)
        keys = [k.tobytes() for k in self._core.chain_keys_from(ns, seq, 0, None)[start:full]]
        bb = self.config.block_bytes
        view = memoryview(memory).cast("B") if not isinstance(memory, np.ndarray) else memory.reshape(-1).view(np.uint8)
        remote.forget_expired()
        through = self.config.remote.write == "through"
        # write-through waits for its own blocks' acknowledgement, so only blocks already written are skipped
        todo = [(i, k) for i, k in enumerate(keys) if not remote.known(ns_key, k, queued=not through)]
        if not todo:
            return
        account = (self.default_namespace if namespace is None else namespace, session)
        ticket = remote.enqueue(
            ns_key, account, [k for _i, k in todo], [view[i * bb : (i + 1) * bb] for i, _k in todo], time.time(), now,
            borrow=through,  # the insert waits: the payloads go to the socket from the caller's buffer
            positions=[start + i for i, _k in todo], skip_queued=not through,
        )
        if through:
            batches = -(-len(todo) // self.config.remote.batch_blocks)
            remote.wait(ticket, self.config.remote.timeout_s * (batches + 1))

    def load(
        self,
        tokens: Tokens | MatchResult,
        out: npt.NDArray[Any] | bytearray | memoryview | BlockRuns,
        *,
        namespace: Namespace | None = None,
        now: float | None = None,
    ) -> int:
        """Copies the payloads of the cached prefix into ``out`` and returns the blocks copied.

        ``tokens`` may be a pinned :class:`MatchResult` (copies exactly its blocks), or a prompt
        (matches and copies in one step). ``out`` is a writable C-contiguous buffer of at least
        ``blocks x block_bytes`` bytes; block ``i`` lands at byte ``i * block_bytes``. It may be a CUDA
        tensor: blocks on the device tier are then copied GPU to GPU, the others from pinned host memory;
        the copies are complete when ``load`` returns (they ran on kvtier's own stream).
        With a device tier (``promote=True``), the host blocks a load reads are copied up to it.
        """
        self._check_payload(out, "out")
        memory = self._memory(out, "out", True)
        if isinstance(tokens, MatchResult):
            if not tokens.pinned:
                raise InvalidArgumentError("load() of a MatchResult needs one returned by match(..., pin=True)")
            return self._load_match(tokens, memory, now)
        if self._disk is None and self._remote is None:
            seq = self._arg(tokens)
            ns = self._ns(namespace)
            try:
                return int(self._core.load(ns, seq, memory, now))
            except UnknownNamespaceError as e:
                return int(self._again(namespace, ns, e, lambda n: self._core.load(n, seq, memory, now)))
        seq = self._arg(tokens)
        ns = self._ns(namespace)
        try:
            m = self._lookup(ns, seq, now, True, True, remote_probe=False)
        except UnknownNamespaceError as e:
            m = self._again(namespace, ns, e, lambda n: self._lookup(n, seq, now, True, True, remote_probe=False))
        if not m.pinned:
            return 0
        try:
            return self._load_match(m, memory, now, probe=True)
        finally:
            if m._pin is not None:
                self._core.unpin(m._pin, None)

    def _load_match(self, m: MatchResult, out: Any, now: float | None, probe: bool = False) -> int:
        """Loads a pinned match: its local blocks, then (when all of those were good) its remote ones. ``probe``:
        the remote keys were not looked up (the read stops at the first absent one, and counts hits)."""
        good = 0 if m._pin is None else self._load_pinned(m._pin, out, now)
        if m._remote is None or good < m.num_blocks - m.remote_blocks:
            return good
        return good + self._load_remote(m._remote, out, good, now, probe)

    def _load_remote(self, remote: Any, out: Any, first: int, now: float | None, probe: bool = False) -> int:
        """Reads remote blocks into ``out`` from block ``first`` on (each verified), then promotes them into the
        local tiers (an insert that is not written back to the server). Returns the good blocks read."""
        assert self._remote is not None
        ns, ns_key, keys, tokens = remote
        bb = self.config.block_bytes
        t = self._core.clock() if now is None else now
        if isinstance(out, _core.Memory):
            # A tensor: read into host memory, promote, then copy the whole prefix from the local tiers.
            staged = np.empty(len(keys) * bb, dtype=np.uint8)
            good = self._remote.read(ns_key, keys, staged, 0, t, probe)
            if good and self._promote(ns, tokens, first, good, staged[: good * bb], now):
                words = self._prefix_words(tokens, first + good)
                return max(0, int(self._core.load(ns, words, out, now)) - first)
            return 0
        good = self._remote.read(ns_key, keys, out, first, t, probe)
        if good and self.config.remote is not None and self.config.remote.promote:
            view = memoryview(out).cast("B") if not isinstance(out, np.ndarray) else out.reshape(-1).view(np.uint8)
            self._promote(ns, tokens, first, good, view[first * bb : (first + good) * bb], now)
        return good

    def _promote(self, ns: int, tokens: Any, first: int, good: int, payload: Any, now: float | None) -> bool:
        """Stores remote blocks ``first .. first+good`` in the local tiers. False if the store could not."""
        assert self._remote is not None
        words = self._prefix_words(tokens, first + good)
        try:
            _m, inserted, _full = self._core.insert(ns, "", words, payload, first, now)
        except (UnknownNamespaceError, InvalidArgumentError):
            return False  # the namespace left, or the prefix below `first` was evicted meanwhile
        self._remote.promoted(int(inserted))
        return True

    def _full_blocks(self, tokens: Any) -> int:
        """Full blocks of ``tokens`` (already accepted by the core), without converting them."""
        width = 1 if self.config.content == "block_ids" else self._block_size
        try:
            return len(tokens) // width
        except TypeError:
            return int(np.asarray(tokens).size) // width

    def _prefix_words(self, tokens: Any, blocks: int) -> Any:
        """The words of the first ``blocks`` blocks of ``tokens``."""
        width = 1 if self.config.content == "block_ids" else self._block_size
        arr = tokens.numpy() if isinstance(tokens, _core.TokenSequence) else np.asarray(tokens)
        return arr[: blocks * width]

    def _load_pinned(self, pin: Any, out: Any, now: float | None) -> int:
        planned, reads = self._core.load_pinned(pin, out)
        if self._disk is None:
            return int(planned)
        return self._disk.load(pin, out, planned, reads, now, self._staging_for)

    @contextmanager
    def _staging_for(self, nbytes: int) -> Iterator[npt.NDArray[np.uint8]]:
        """A page-locked host buffer of at least ``nbytes`` for disk reads bound for GPU memory: the store's
        own (grown as needed; page-locking is slow to repeat), or a fresh one while another load uses it."""
        from kvtier.device import host_buffer

        if not self._staging_lock.acquire(blocking=False):
            yield host_buffer(nbytes)
            return
        try:
            if self._staging is None or self._staging.nbytes < nbytes:
                self._staging = None
                self._staging = host_buffer(max(nbytes, 1 << 20))
            yield self._staging[:nbytes]
        finally:
            self._staging_lock.release()

    def block_keys_of(self, result: MatchResult) -> npt.NDArray[np.uint8]:
        """``uint8[num_blocks, 32]``: the chained keys of a pinned match (docs/keys.md)."""
        if not isinstance(result, MatchResult) or not result.pinned:
            raise InvalidArgumentError("block_keys_of() needs a MatchResult returned by match(..., pin=True)")
        local = (
            self._core.keys_pinned(result._pin) if result._pin is not None else np.zeros((0, 32), dtype=np.uint8)
        )
        if result._remote is None:
            return local
        remote = np.frombuffer(b"".join(result._remote[2][: result.remote_blocks]), dtype=np.uint8).reshape(-1, 32)
        return np.concatenate([local, remote])

    # ----------------------------------------------------------------- lookups by key
    # Stores with content="keys" (kvtier.store_keys): one 32-byte key per block, e.g. SGLang's page hashes.
    def _keys_call(self, keys: Keys, namespace: Namespace | None, call: Callable[[int, Any], _T]) -> _T:
        store_keys.check_keys_store(self)
        arr = store_keys.key_array(keys)
        ns = self._ns(namespace)
        try:
            return call(ns, arr)
        except UnknownNamespaceError as e:
            return self._again(namespace, ns, e, lambda n: call(n, arr))

    def find_keys(
        self, keys: Keys, *, namespace: Namespace | None = None, now: float | None = None, touch: bool = False
    ) -> int:
        """How many of ``keys``, from the first, are held in some tier (the leading run; with a remote tier, the
        run goes on with the server's blocks past the local ones: one round trip per batch).

        ``keys``: 32-byte ``bytes``, 64-character hex strings or a ``uint8[n, 32]`` array. With ``touch``
        the run's recency is refreshed and hits (and the first miss) are counted, as by :meth:`match`.
        """
        _check_bool("touch", touch)
        return self._keys_call(keys, namespace, lambda ns, arr: store_keys.find(self, ns, arr, now, touch))

    def has_keys(
        self, keys: Keys, *, namespace: Namespace | None = None, now: float | None = None
    ) -> npt.NDArray[np.bool_]:
        """Per key, whether it is held in some tier (as this process knows the disk folder; with a remote tier,
        the server is asked about the keys no local tier holds, in one round trip); nothing is counted."""
        return self._keys_call(keys, namespace, lambda ns, arr: store_keys.present(self, ns, arr, now))

    def block_runs(self, runs: npt.NDArray[Any], buffers: Sequence[Any], *, writable: bool) -> BlockRuns:
        """Blocks scattered in host buffers, for :meth:`insert_keys` (``writable=False``) and :meth:`load_keys`
        (``writable=True``): row ``i`` of ``runs`` (int64 or uint64 addresses, shape ``(blocks, parts)``) gives
        block ``i``'s ``parts`` runs of ``block_bytes / parts`` bytes each, in order::

            block i = [ runs[i, 0] : +part | runs[i, 1] : +part | ... ]      part = block_bytes / parts

        ``buffers`` are the host buffers (numpy arrays, buffer-protocol objects) that hold every run; each run
        is checked to lie inside one of them (:class:`InvalidArgumentError` names the first that does not),
        and they stay exported while the returned object lives. The store then copies between its tiers and
        the runs with no staging copy (an engine's page whose K and V halves, or layers, lie apart).
        """
        _check_bool("writable", writable)
        if isinstance(buffers, (bytes, bytearray, memoryview, np.ndarray)) or not isinstance(buffers, Sequence):
            raise KvtierTypeError(f"buffers must be a sequence of host buffers, got {type(buffers).__name__}")
        return _core.BlockRuns(runs, buffers, self.config.block_bytes, writable)

    def insert_keys(
        self,
        keys: Keys,
        payloads: npt.ArrayLike | memoryview | bytes | BlockRuns | None = None,
        *,
        namespace: Namespace | None = None,
        session: str | None = None,
        now: float | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Stores block ``i`` of ``payloads`` (``block_bytes`` each, back to back, or the blocks of a
        :meth:`block_runs`) under ``keys[i]``.

        A key already held costs a lookup and no copy. Returns, per key, whether it is held after the
        call (``False``: the host tier is full of pinned blocks). With a remote tier, the blocks held that this
        store does not know to be on the server are queued for it (``write="through"``: written before this
        returns, or found unreachable).
        """
        if payloads is not None and not isinstance(payloads, BlockRuns):
            self._check_payload(payloads, "payloads")
        name = self._session(session)
        return self._keys_call(
            keys, namespace, lambda ns, arr: store_keys.insert(self, ns, namespace, name, arr, payloads, now)
        )

    def load_keys(
        self,
        keys: Keys,
        out: npt.NDArray[Any] | bytearray | memoryview | BlockRuns,
        *,
        namespace: Namespace | None = None,
        now: float | None = None,
    ) -> int:
        """Copies the blocks of the leading run of held ``keys`` into ``out`` and returns how many.

        ``out`` is a writable C-contiguous host buffer of at least ``len(keys) x block_bytes`` bytes; block
        ``i`` lands at byte ``i * block_bytes``. The run stops at the first key not held and at the first
        block whose disk payload fails its checksum (that block is dropped from the store, never served).
        With a remote tier the run goes on with the server's blocks after the local ones (each verified; a
        missing, cut or corrupt value ends it), which are then promoted into the local tiers.
        ``out`` may instead be a writable :meth:`block_runs` of ``len(keys)`` blocks: host, disk and remote hits
        are copied straight into the runs.
        """
        store_keys.check_keys_store(self)
        arr = store_keys.key_array(keys)
        flat: Any
        if isinstance(out, BlockRuns):
            flat = out
        else:
            self._check_payload(out, "out")
            flat = store_keys.out_bytes(out, len(arr) * self.config.block_bytes)
        return self._keys_call(arr, namespace, lambda ns, a: store_keys.load(self, ns, a, flat, now))

    # ----------------------------------------------------------------- disk tier
    def flush(self, timeout: float | None = None, *, host: bool = False) -> None:
        """Waits until every block queued for the disk so far is committed to the folder.

        After it returns, those blocks survive a killed process and are visible to other processes
        that open the folder. With ``host=True`` the host tier's blocks that are not on disk yet are
        written too (write-back stores keep them only in memory until evicted; :meth:`close` does
        this). Raises :class:`DiskWriteError` if writes failed since the last flush (e.g. the disk is
        full; the store keeps serving what it holds), and ``TimeoutError`` if ``timeout`` seconds
        pass first. A store without a disk tier returns at once (its arguments are checked all the same).

        With a remote tier it then waits until every block queued for the server is acknowledged (other
        servers see them from then on), and raises :class:`kvtier.RemoteWriteError` while the server is
        unreachable with blocks still queued (they stay queued and are written when it is back) or when blocks
        were dropped from the full queue since the last flush.
        """
        if self._core.closed:
            raise StoreClosedError("the store is closed")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0 or timeout == math.inf
        ):
            raise InvalidArgumentError(f"timeout must be a finite number of seconds >= 0 or None, got {timeout!r}")
        if not isinstance(host, bool):
            raise KvtierTypeError(f"host must be a bool, got {type(host).__name__}")
        if self._disk is not None:
            self._disk.flush(timeout, host)
        if self._remote is not None:
            self._remote.flush(timeout)

    def take_removed_keys(self) -> tuple[list[bytes], int]:
        """Chained keys of blocks that left the disk tier since the last call, oldest first.

        Evicted, expired, corrupt, missing, not persisted and cleared blocks all count (a block leaving
        the host tier for the disk is not a removal). Returns (keys, dropped): at most 65,536 keys are
        kept between calls, and ``dropped`` says how many older ones were lost. For KV events
        (vLLM's ``BlockRemoved``). A store without a disk tier returns ``([], 0)``.
        """
        if self._disk is None:
            return [], 0
        keys, dropped = self._core.disk_take_removed()
        return list(keys), int(dropped)

    # ----------------------------------------------------------------- maintenance
    def evict(self, nbytes: int, *, tier: Tier = Tier.HOST, now: float | None = None) -> int:
        """Evicts blocks from ``tier`` until ``nbytes`` are freed there (or none is left). Returns bytes freed.

        ``Tier.HOST``: unpinned host blocks by policy; with a write-back disk tier they move to disk (and a block
        on the device tier leaves it too). ``Tier.DEVICE``: device blocks, least recently used first; blocks
        whose only copy is on the device are written back to the host first, so nothing is lost.
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise InvalidArgumentError(f"nbytes must be an int >= 0, got {nbytes!r}")
        if isinstance(tier, bool) or not isinstance(tier, (int, np.integer)):
            raise KvtierTypeError(f"tier must be Tier.HOST or Tier.DEVICE, got {type(tier).__name__}")
        if tier == Tier.DEVICE:
            return int(self._core.evict_device(min(nbytes, (1 << 64) - 1), now))
        if tier != Tier.HOST:
            raise InvalidArgumentError(f"tier must be Tier.HOST or Tier.DEVICE, got {tier!r}")
        return int(self._core.evict(min(nbytes, (1 << 64) - 1), now))

    def expire(self, *, now: float | None = None) -> int:
        """Reclaims every block idle longer than the TTL. Returns the blocks reclaimed."""
        return int(self._core.expire(now))

    def clear(self, *, now: float | None = None) -> int:
        """Removes every unpinned block from every tier (nothing is demoted, not even to the remote tier).
        Returns the blocks removed.

        Blocks still queued for the disk are written, then stay; call :meth:`flush` first to clear them too.
        The remote tier's server is shared by other stores and is left as it is (its TTL and bounds age blocks
        out; ``kvtier remote URL`` shows what it holds).
        """
        if self._disk is None or self._disk.below is None:
            return int(self._core.clear(now))
        self._disk.below_paused = True  # the folder deletes of a clear are not evictions: nothing goes to the server
        try:
            n = int(self._core.clear(now))
            self._disk.drain()  # those deletes commit now, while paused
        finally:
            self._disk.below_paused = False
        return n

    # ----------------------------------------------------------------- reporting
    def stats(self) -> StoreStats:
        d = self._core.stats()
        if d["capacity_bytes"] == 0:
            d["capacity_bytes"] = None
        if self._disk is not None:
            d["disk"] = DiskStats(**self._core.disk_stats())
        if self.config.device is not None:
            d["device"] = DeviceStats(**self._core.device_stats())
        if self._remote is not None:
            d["remote"] = self._remote.stats()
        return StoreStats(**d)

    def residency(self, *, now: float | None = None) -> Residency:
        """Exact GB-hours per tier, namespace and session up to ``now``.

        Blocks past their TTL stop counting at their expiry instant (this call reclaims them).
        """
        rows = []
        while True:
            t = self._core.clock() if now is None else now
            try:
                core_rows = self._core.residency(t)
                break
            except InvalidArgumentError:
                if now is not None:
                    raise
                # another thread's call moved the store's clock past t in between: read it again
        now = t
        if any(ns is not None and ns not in self._ns_by_id for ns, *_ in core_rows):
            self._sync_namespaces()  # the core learned a namespace from the folder
        # The remote tier's rows come from two ledgers, one row per account: the core's (blocks waiting in its
        # demotion queue) and the Python tier's (blocks this store wrote to the server).
        remote: dict[tuple[Namespace | None, str | None], list[float]] = {}
        for ns, session, tier, nbytes, byte_seconds in core_rows:
            namespace = None if ns is None else self._ns_by_id[ns]
            if tier == Tier.REMOTE:
                if nbytes == 0 and byte_seconds == 0.0:
                    continue  # an account that never had a block waiting
                acc = remote.setdefault((namespace, session), [0.0, 0.0])
                acc[0] += nbytes
                acc[1] += byte_seconds
                continue
            rows.append(ResidencyRow(namespace, session, Tier(tier), nbytes, byte_seconds))
        if self._remote is not None:
            for namespace, session, nbytes, byte_seconds in self._remote.residency(float(now)):
                acc = remote.setdefault((namespace, session), [0.0, 0.0])
                acc[0] += nbytes
                acc[1] += byte_seconds
        for (namespace, session), (held, held_seconds) in remote.items():
            rows.append(ResidencyRow(namespace, session, Tier.REMOTE, int(held), held_seconds))
        return Residency(float(now), tuple(rows))

    def check_invariants(self) -> None:
        """Aborts the process if an internal invariant is broken (for tests)."""
        self._core.check_invariants()

    # ----------------------------------------------------------------- replay
    def replay(self, trace: ReplayTrace) -> npt.NDArray[np.int32]:
        """Replays a whole trace in one call: per request, match (counting hits) then insert the rest.

        Returns ``int32[n_requests]``: blocks hit per request. No Python runs per request.
        """
        from kvtier.replay import ReplayTrace as _ReplayTrace

        if not isinstance(trace, _ReplayTrace):
            raise KvtierTypeError(f"trace must be a kvtier.ReplayTrace, got {type(trace).__name__}")
        # The core registers the trace's namespaces itself, under its lock, so none can leave before the
        # requests naming it ran (a namespace that holds nothing may, see _again).
        if trace.namespaces is None:
            namespaces, keys = [self.default_namespace], [self._default_key]
        else:
            namespaces = list(trace.namespace_table)
            for namespace in namespaces:
                if not isinstance(namespace, Namespace):
                    raise KvtierTypeError(f"namespace_table entries must be kvtier.Namespace, got {type(namespace).__name__}")
            keys = [namespace.key(self.config.block_size, self.config.content) for namespace in namespaces]
        sessions = [self._session(name) for name in trace.session_table] if trace.sessions is not None else []
        hits, ids = self._core.replay(
            trace.offsets, trace.blocks, trace.timestamps, keys, trace.namespaces, trace.sessions, sessions
        )
        if trace.namespaces is None and ids[0] == self._default_ns:
            return hits
        with self._ns_lock:  # the ids the core used (a namespace that had left came back under a new one)
            self._forget_retired()
            for namespace, ns in zip(namespaces, ids):
                self._name(ns, namespace)
        return hits

    # ----------------------------------------------------------------- lifetime
    def close(self, *, persist: bool = True) -> None:
        """Writes the host tier's blocks to disk (``persist``), stops the writer and frees the arena.

        With a disk tier, ``persist=True`` (default) makes a clean shutdown keep every block for the
        next open; ``persist=False`` only waits for writes already queued. Every later call raises
        :class:`StoreClosedError`. Write errors found by the final flush (and a :class:`CudaError` when a
        block held only by the device tier could not be written back) are raised after the store is closed.
        """
        if self._core.closed:
            return
        error: BaseException | None = None
        if self._disk is not None:
            try:
                # The disk only (blocks it evicts meanwhile are queued for the remote tier, closed next).
                self._disk.flush(None, persist)
            except (DiskWriteError, CudaError) as e:  # CudaError: a device block could not be written back
                error = e
        if self._remote is not None:
            # RemoteTier.close: writes what is queued while the server answers and counts what it could not write
            # (a server down at close must not keep the store open).
            self._remote_finalizer()
        if self._finalizer is not None:
            self._finalizer()  # closes the core (which stops the writer) and the folder
        else:
            self._core.close()
        if self._remote is not None:
            self._remote.join_demoter()  # woken by the core's close
        self._staging = None
        if error is not None:
            raise error

    @property
    def closed(self) -> bool:
        return bool(self._core.closed)

    def __enter__(self) -> "Store":
        if self.closed:
            raise StoreClosedError("the store is closed")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Store(block_size={c.block_size}, block_bytes={c.block_bytes}, content={c.content!r}, "
            f"metadata_only={c.metadata_only}, host={c.host}"
            + ("" if c.disk is None else f", disk={c.disk}")
            + ("" if c.device is None else f", device={c.device}")
            + ("" if c.remote is None else f", remote={c.remote}")
            + ")"
        )

