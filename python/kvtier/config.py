"""Configuration: one small frozen dataclass per concern, validated on construction.

Each dataclass checks its fields' Python types; the values and their combinations are checked by the core's
``validate`` (csrc/core/spec.cpp) on the :class:`kvtier._core.StoreSpec` that :meth:`StoreConfig.spec` builds, the one
place those rules live. Defaults shared with the core are read from the core's spec structs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from kvtier import _core
from kvtier.errors import InvalidArgumentError, KvtierTypeError

__all__ = ["Namespace", "TierConfig", "DiskConfig", "RemoteConfig", "DeviceTierConfig", "StoreConfig", "Policy"]

Policy = Literal["lru", "lfu", "ttl"]
_POLICIES: dict[str, _core.Policy] = {"lru": _core.Policy.LRU, "lfu": _core.Policy.LFU, "ttl": _core.Policy.TTL}
# The core's defaults (csrc/core/spec.h), the only place they are written.
_STORE = _core.StoreSpec()
_DISK = _core.DiskSpec()
_DEVICE = _core.DeviceSpec()
#: Tokens per block unless told otherwise: the core's default (csrc/core/spec.h), for every API and command.
DEFAULT_BLOCK_SIZE: int = _STORE.block_size
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


def _check_str(name: str, value: object) -> None:
    """A str that can cross into the core: UTF-8 encodable (no lone surrogate) and without NUL."""
    if not isinstance(value, str):
        raise KvtierTypeError(f"{name} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgumentError(f"{name} must be valid Unicode text: {e.reason} at index {e.start}") from None
    if "\0" in value:
        raise InvalidArgumentError(f"{name} must not contain a NUL character")


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise KvtierTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        if (maximum & (maximum + 1)) == 0:  # 2**k - 1
            bound = f"below 2**{maximum.bit_length()}"
        elif (maximum & (maximum - 1)) == 0:  # 2**k
            bound = f"<= 2**{maximum.bit_length() - 1}"
        else:
            bound = f"<= {maximum}"
        raise InvalidArgumentError(f"{name} must be {bound}, got {value}")


def token_limit(vocab_size: object) -> int:
    """The exclusive bound of token ids: ``vocab_size`` (an int in [1, 2**32]), or 2**31 when it is ``None``."""
    if vocab_size is None:
        return 1 << 31
    _check_int("vocab_size", vocab_size, 1, 1 << 32)
    assert isinstance(vocab_size, int)
    return vocab_size


def _check_content(content: object) -> None:
    """What a block's words are: token ids, one 64-bit id per block, or one 32-byte key per block."""
    if not isinstance(content, str) or content not in ("tokens", "block_ids", "keys"):
        raise InvalidArgumentError(f"content must be 'tokens', 'block_ids' or 'keys', got {content!r}")


def _fill_tier(spec: _core.TierSpec, capacity_bytes: int | None, policy: str, ttl_s: float | None) -> None:
    """A tier's capacity (``None``: 0, unlimited), policy and TTL as the core takes them."""
    spec.capacity_bytes = 0 if capacity_bytes is None else capacity_bytes
    spec.policy = _POLICIES[policy]
    spec.ttl_s = None if ttl_s is None else float(ttl_s)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise KvtierTypeError(f"{name} must be a bool, got {type(value).__name__}")


def _check_policy(name: str, policy: object, ttl_s: object) -> None:
    """The Python-side checks of a tier's policy and TTL (their types); the core checks the values."""
    if not isinstance(policy, str) or policy not in _POLICIES:
        raise InvalidArgumentError(f"{name}policy must be one of {sorted(_POLICIES)}, got {policy!r}")
    if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float))):
        raise KvtierTypeError(f"{name}ttl_s must be a number of seconds, got {type(ttl_s).__name__}")


@dataclass(frozen=True)
class Namespace:
    """What a cached block belongs to: two namespaces never share a block.

    The tenant salt (vLLM's ``cache_salt``) and the model fingerprint (model id, weights revision,
    tokenizer, KV dtype, KV layout) are bound into every block key, so a cache built for one model
    is never served to another. The block size is bound in by the store.
    """

    model: str
    revision: str = ""
    tokenizer: str = ""
    kv_dtype: str = ""
    kv_layout: str = ""
    tenant: str = ""

    def __post_init__(self) -> None:
        for name in ("model", "revision", "tokenizer", "kv_dtype", "kv_layout", "tenant"):
            _check_str(name, getattr(self, name))
        if not self.model:
            raise InvalidArgumentError("model must name the model (e.g. 'meta-llama/Llama-3.1-8B')")

    def fields(self, block_size: int, content: str = "tokens") -> list[str]:
        """The key fields in the order of docs/keys.md (stores of block ids add a content field)."""
        fields = [self.tenant, self.model, self.revision, self.tokenizer, self.kv_dtype, self.kv_layout, str(block_size)]
        if content != "tokens":
            fields.append(f"content={content}")
        return fields

    def key(self, block_size: int, content: str = "tokens") -> bytes:
        """The 32-byte namespace key (docs/keys.md)."""
        _check_int("block_size", block_size, 1, _U32)
        _check_content(content)
        return _core.namespace_key(self.fields(block_size, content))


@dataclass(frozen=True)
class TierConfig:
    """One tier's size and eviction policy.

    Parameters
    ----------
    capacity_bytes
        Bytes of block payload the tier may hold (``None``: unlimited, metadata-only stores only).
        Must hold at least one block.
    policy
        ``"lru"`` (default), ``"lfu"`` (fewest hits first, ties by age) or ``"ttl"`` (LRU plus a
        maximum idle time, ``ttl_s`` required).
    ttl_s
        Maximum idle seconds. Blocks idle longer never hit and are reclaimed on access or by
        :meth:`kvtier.Store.expire`. Allowed with any policy.
    """

    capacity_bytes: int | None = 1 << 30
    policy: Policy = "lru"
    ttl_s: float | None = None

    def __post_init__(self) -> None:
        if self.capacity_bytes is not None:
            _check_int("capacity_bytes", self.capacity_bytes, 1, _U64)
        _check_policy("", self.policy, self.ttl_s)
        _core.validate_tier(self.tier_spec(), "")

    def tier_spec(self) -> _core.TierSpec:
        """The core's view of this tier (capacity ``None`` is 0: unlimited)."""
        t = _core.TierSpec()
        _fill_tier(t, self.capacity_bytes, self.policy, self.ttl_s)
        return t


@dataclass(frozen=True)
class DiskConfig:
    """The disk tier: an LMDB folder under the host tier that survives restarts.

    Parameters
    ----------
    path
        The folder (created if missing). Several processes may open the same folder.
    capacity_bytes
        Payload bytes the tier may hold; evicted by ``policy`` beyond it.
    policy, ttl_s
        As for :class:`TierConfig`; ``ttl_s`` is the maximum idle time on disk.
    write_through
        ``False`` (default, write-back): blocks reach the disk when the host tier evicts them.
        ``True``: every inserted block is queued for the disk at once (other processes see it after
        :meth:`kvtier.Store.flush`).
    queue_blocks
        Blocks waiting for the background writer before an insert waits for it (back-pressure).
        The host arena holds this many extra slots for them.
    batch_blocks
        Blocks per LMDB write transaction (at most, and at most a quarter of the map's bytes).
    sync
        Flush to stable storage at every commit (LMDB's default). ``False`` is faster; a machine
        crash (not a process crash) may then lose the latest commits, never corrupt older ones.
    promote
        Copy disk hits back into the host tier (when that needs no wait).
    map_size
        LMDB map size in bytes, fixed: when it fills up, blocks are evicted and the write retried.
        Default (None): sized from the capacity with LMDB's per-record overhead
        (``kvtier.tiers.disk_io.map_size_for``) and grown, up to twice that, if it fills anyway.
    """

    path: str | os.PathLike[str]
    capacity_bytes: int = 16 << 30
    policy: Policy = "lru"
    ttl_s: float | None = None
    write_through: bool = _DISK.write_through
    queue_blocks: int = _DISK.queue_blocks
    batch_blocks: int = 32
    sync: bool = True
    promote: bool = True
    map_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)):
            raise KvtierTypeError(f"disk path must be a str or os.PathLike, got {type(self.path).__name__}")
        if not os.fspath(self.path):
            raise InvalidArgumentError("disk path must name a folder")
        if "\0" in os.fsdecode(self.path):
            raise InvalidArgumentError(f"disk path must not contain a NUL character, got {self.path!r}")
        _check_int("disk capacity_bytes", self.capacity_bytes, 1, _U64)
        _check_policy("", self.policy, self.ttl_s)  # the same rules as any tier
        for name in ("write_through", "sync", "promote"):
            _check_bool(f"disk {name}", getattr(self, name))
        _check_int("disk queue_blocks", self.queue_blocks, 1, _U32)
        _check_int("disk batch_blocks", self.batch_blocks, 1)
        _core.validate_tier(self.disk_spec(), "")
        if self.map_size is not None:
            _check_int("disk map_size", self.map_size, 1 << 20)

    def disk_spec(self) -> _core.DiskSpec:
        """The core's view of this tier."""
        d = _core.DiskSpec()
        d.enabled = True
        _fill_tier(d, self.capacity_bytes, self.policy, self.ttl_s)
        d.write_through = self.write_through
        d.queue_blocks = self.queue_blocks
        return d


@dataclass(frozen=True)
class RemoteConfig:
    """The shared remote tier: a Redis (or Valkey) server or Redis Cluster below disk (or below host).

    Several stores (servers of a fleet) that name the same server and namespace share its blocks: a prefix one
    of them stored is a hit on the others (docs/remote.md).

    Parameters
    ----------
    url
        ``redis://[[user]:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock`` or
        ``redis+cluster://host:port`` (``rediss+cluster://``: TLS) naming any seed node of a cluster. Without a
        password in the URL, ``$KVTIER_REDIS_PASSWORD`` is used when set.
    capacity_bytes
        Payload bytes kvtier keeps on the server, all namespaces and stores together (``None``: bounded only by
        the server's ``maxmemory`` and its eviction policy). Beyond it, writers remove the least recently
        written or read blocks.
    ttl_s
        Maximum idle seconds of a block on the server (Redis ``PEXPIRE``: every write and read restarts it).
        ``None``: no expiry.
    write
        ``"back"`` (default): inserted blocks are queued and written by a background thread in pipelined
        batches; other servers see them once written (:meth:`kvtier.Store.flush` waits for that).
        ``"through"``: an insert returns once the server acknowledged its new blocks (or failed).
        In both modes a block that leaves the local tiers (evicted by the host tier with no disk tier, or by the
        disk tier) is written first unless the server holds it (demotion; blocks inserted from GPU memory reach
        the server this way).
    namespace_budget_bytes
        Payload bytes one namespace (tenant) may keep on the server (``None``: no per-namespace bound); beyond
        it, that namespace's least recently used blocks are removed.
    batch_blocks
        Blocks per pipelined round trip (writes, reads and lookups).
    queue_bytes
        Payload bytes waiting for the writer (kept while the server is unreachable) before the oldest are
        dropped (counted in ``stats().remote.dropped``).
    timeout_s
        Seconds to connect or to wait for a reply before the server counts as unreachable.
    retry_s
        Seconds between reconnection attempts while it is unreachable (lookups skip it meanwhile).
    promote
        Copy remote hits into the local tiers on load.
    """

    url: str
    capacity_bytes: int | None = None
    ttl_s: float | None = None
    write: Literal["back", "through"] = "back"
    namespace_budget_bytes: int | None = None
    batch_blocks: int = 64
    queue_bytes: int = 256 << 20
    timeout_s: float = 2.0
    retry_s: float = 1.0
    promote: bool = True

    def __post_init__(self) -> None:
        from kvtier.tiers.remote_io import parse_url  # URL rules only: no client is created here

        if not isinstance(self.url, str):
            raise KvtierTypeError(f"remote url must be a str, got {type(self.url).__name__}")
        _check_str("remote url", self.url)
        parse_url(self.url)
        if self.capacity_bytes is not None:
            _check_int("remote capacity_bytes", self.capacity_bytes, 1, _U64)
        if self.namespace_budget_bytes is not None:
            _check_int("remote namespace_budget_bytes", self.namespace_budget_bytes, 1, _U64)
        for name in ("ttl_s", "timeout_s", "retry_s"):
            value = getattr(self, name)
            if value is None and name == "ttl_s":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise KvtierTypeError(f"remote {name} must be a number of seconds, got {type(value).__name__}")
            if not (value > 0 and value < float("inf")):
                raise InvalidArgumentError(f"remote {name} must be a finite number of seconds > 0, got {value!r}")
        if self.ttl_s is not None and self.ttl_s < 0.001:
            raise InvalidArgumentError(f"remote ttl_s must be at least 0.001 (Redis keeps milliseconds), got {self.ttl_s!r}")
        if not isinstance(self.write, str) or self.write not in ("back", "through"):
            raise InvalidArgumentError(f"remote write must be 'back' or 'through', got {self.write!r}")
        _check_int("remote batch_blocks", self.batch_blocks, 1, 1 << 20)
        _check_int("remote queue_bytes", self.queue_bytes, 1, _U64)
        _check_bool("remote promote", self.promote)

    def __repr__(self) -> str:
        from kvtier.tiers.remote_io import redacted

        return (
            f"RemoteConfig(url={redacted(self.url)!r}, capacity_bytes={self.capacity_bytes}, ttl_s={self.ttl_s}, "
            f"write={self.write!r}, namespace_budget_bytes={self.namespace_budget_bytes})"
        )

    @property
    def ttl_ms(self) -> int | None:
        return None if self.ttl_s is None else max(1, round(self.ttl_s * 1000))


@dataclass(frozen=True)
class DeviceTierConfig(TierConfig):
    """The device tier: a pool of block slots in one GPU's memory, allocated once.

    Validated on construction, CUDA included: without a usable CUDA driver and device this raises
    :class:`kvtier.CudaUnavailableError` naming what is missing.

    Parameters
    ----------
    capacity_bytes
        Bytes of GPU memory for block payloads, allocated up front (default 1 GiB, as for :class:`TierConfig`;
        ``None`` is refused).
    policy, ttl_s
        The device tier evicts the least recently used node: ``policy`` must be ``"lru"`` and ``ttl_s`` unset
        (idle blocks age out of the host and disk tiers, which keep a copy of every device block).
    device
        CUDA device ordinal.
    promote
        Loads copy the host blocks they read up to the device tier (so the next load of them is GPU to GPU).
    write_through
        ``False`` (default, write-back): blocks inserted from GPU memory reach their host slots only when the
        device tier evicts them (or the disk needs them). ``True``: the host slots are written at insert too
        (a second copy, GPU to host), so evicting them from the device costs nothing.
    """

    device: int = _DEVICE.ordinal
    promote: bool = _DEVICE.promote
    write_through: bool = _DEVICE.write_through

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.capacity_bytes is None:
            raise InvalidArgumentError("a device tier needs a finite capacity_bytes (GPU memory is allocated up front)")
        if self.policy != "lru" or self.ttl_s is not None:
            raise InvalidArgumentError(
                f"the device tier evicts least recently used blocks: policy must be 'lru' and ttl_s None, got "
                f"policy={self.policy!r}, ttl_s={self.ttl_s!r} (set TTLs on the host and disk tiers)"
            )
        for name in ("promote", "write_through"):
            _check_bool(name, getattr(self, name))
        _check_int("device", self.device, 0, (1 << 31) - 1)
        from kvtier.cuda import require_cuda  # CUDA discovery, not a tier

        require_cuda("a device tier", self.device)

    def device_spec(self) -> _core.DeviceSpec:
        """The core's view of this tier."""
        d = _core.DeviceSpec()
        d.enabled = True
        assert self.capacity_bytes is not None
        d.capacity_bytes = self.capacity_bytes
        d.ordinal = self.device
        d.promote = self.promote
        d.write_through = self.write_through
        return d


@dataclass(frozen=True)
class StoreConfig:
    """Shape of a store: block geometry, content kind, payloads and the host tier.

    Parameters
    ----------
    block_size
        Tokens per block; must match the engine's (vLLM: ``--block-size``). Only full blocks are cached.
    block_bytes
        KV payload bytes of one block (all layers). Also the size used for capacity and residency
        in a metadata-only store.
    metadata_only
        Keep the tree, policies and accounting without payloads (analytics, trace replay).
    content
        ``"tokens"``: blocks are compared by their token ids. ``"block_ids"``: each block is one
        64-bit id that already names its whole prefix (trace hash ids, engine block hashes).
        ``"keys"``: each block is found by a 32-byte key that already names its whole prefix (SGLang's
        page hashes), through :meth:`kvtier.Store.insert_keys` and the other ``*_keys`` methods.
    vocab_size
        If given, token ids must be below it.
    payload_dtype
        If given (a numpy dtype name), payload arrays must have this dtype.
    host
        The host-memory tier.
    disk
        The disk tier below it (:class:`DiskConfig`), or ``None``.
    remote
        The shared remote tier (:class:`RemoteConfig`: Redis, Valkey or Redis Cluster) below disk, or below the
        host tier when there is no disk, or ``None``. Needs payloads (not ``metadata_only``).
    device
        The device tier above it (:class:`kvtier.DeviceTierConfig`: GPU memory, needs CUDA), or ``None``.
        Every device block also keeps a host slot, so its capacity is at most the host tier's.
    """

    block_size: int = DEFAULT_BLOCK_SIZE
    block_bytes: int = 2048
    metadata_only: bool = False
    content: Literal["tokens", "block_ids", "keys"] = "tokens"
    vocab_size: int | None = None
    payload_dtype: str | None = None
    host: TierConfig = field(default_factory=TierConfig)
    disk: DiskConfig | None = None
    device: DeviceTierConfig | None = None
    remote: RemoteConfig | None = None

    def __post_init__(self) -> None:
        _check_int("block_size", self.block_size, 1, _U32)
        _check_int("block_bytes", self.block_bytes, 1, _U64)
        _check_bool("metadata_only", self.metadata_only)
        _check_content(self.content)
        token_limit(self.vocab_size)  # checks it
        if self.content == "keys" and self.vocab_size is not None:
            raise InvalidArgumentError("vocab_size must be None with content='keys' (a key's words are not token ids)")
        if not isinstance(self.host, TierConfig):
            raise KvtierTypeError(f"host must be a TierConfig, got {type(self.host).__name__}")
        if self.disk is not None and not isinstance(self.disk, DiskConfig):
            raise KvtierTypeError(f"disk must be a DiskConfig, got {type(self.disk).__name__}")
        if self.device is not None and not isinstance(self.device, DeviceTierConfig):
            raise KvtierTypeError(f"device must be a DeviceTierConfig, got {type(self.device).__name__}")
        if self.remote is not None:
            if not isinstance(self.remote, RemoteConfig):
                raise KvtierTypeError(f"remote must be a RemoteConfig, got {type(self.remote).__name__}")
            if self.metadata_only:
                raise InvalidArgumentError("a remote tier stores payloads: it needs metadata_only=False")
            for name in ("capacity_bytes", "namespace_budget_bytes"):
                value = getattr(self.remote, name)
                if value is not None and value < self.block_bytes:
                    raise InvalidArgumentError(
                        f"remote {name}={value} does not hold one block of block_bytes={self.block_bytes}"
                    )
        _core.validate_spec(self.spec())  # capacities against block_bytes, tiers against metadata_only, ...
        if self.payload_dtype is not None:
            import numpy as np

            try:
                dt = np.dtype(self.payload_dtype)
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(f"payload_dtype {self.payload_dtype!r} is not a numpy dtype") from e
            if dt.itemsize == 0:
                raise InvalidArgumentError(f"payload_dtype {self.payload_dtype!r} has no size (itemsize 0)")
            if dt.hasobject:
                raise KvtierTypeError(f"payload_dtype must be a numeric dtype, got {dt} (Python objects)")
            if self.block_bytes % dt.itemsize:
                raise InvalidArgumentError(
                    f"block_bytes={self.block_bytes} is not a multiple of payload_dtype's itemsize {dt.itemsize}"
                )

    def spec(self) -> _core.StoreSpec:
        """The whole configuration as the core takes it (csrc/core/spec.h)."""
        s = _core.StoreSpec()
        s.block_size = self.block_size
        # a 64-bit id is two 32-bit words, a 32-byte key eight
        s.width = {"block_ids": 2, "keys": 8}.get(self.content, self.block_size)
        s.block_bytes = self.block_bytes
        s.payloads = not self.metadata_only
        s.host = self.host.tier_spec()
        if self.disk is not None:
            s.disk = self.disk.disk_spec()
        if self.device is not None:
            s.device = self.device.device_spec()
        # With no disk tier below the host, what the host evicts goes down to the remote tier (write-back).
        s.remote.enabled = self.remote is not None and self.disk is None
        return s

    @property
    def token_limit(self) -> int:
        """Exclusive upper bound of token ids (every 32-bit word for keys)."""
        return 1 << 32 if self.content == "keys" else token_limit(self.vocab_size)

    @classmethod
    def for_blocks(
        cls,
        capacity_blocks: int | None,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        block_bytes: int = 1,
        content: Literal["tokens", "block_ids"] = "tokens",
        policy: Policy = "lru",
        ttl_s: float | None = None,
        vocab_size: int | None = None,
    ) -> StoreConfig:
        """A metadata-only config whose host tier holds ``capacity_blocks`` blocks (``None``: unlimited).

        ``block_bytes`` is the accounting size of a block (KV bytes per block for GB-hours).
        """
        if capacity_blocks is not None:
            _check_int("capacity_blocks", capacity_blocks, 1)
        _check_int("block_bytes", block_bytes, 1)
        cap = None if capacity_blocks is None else capacity_blocks * block_bytes
        return cls(
            block_size=block_size,
            block_bytes=block_bytes,
            metadata_only=True,
            content=content,
            vocab_size=vocab_size,
            host=TierConfig(capacity_bytes=cap, policy=policy, ttl_s=ttl_s),
        )
