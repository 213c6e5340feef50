"""Configuration: one small frozen dataclass per concern, validated on construction."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kvtier.errors import InvalidArgumentError, KvtierTypeError

if TYPE_CHECKING:
    from kvtier.device import DeviceTierConfig

__all__ = ["Namespace", "TierConfig", "DiskConfig", "StoreConfig", "Policy"]

Policy = Literal["lru", "lfu", "ttl"]
_POLICIES: dict[str, int] = {"lru": 0, "lfu": 1, "ttl": 2}


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise KvtierTypeError(f"{name} must be a str, got {type(value).__name__}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise KvtierTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {value}")


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

    def fields(self, block_size: int) -> list[str]:
        """The key fields in the order of docs/keys.md."""
        return [self.tenant, self.model, self.revision, self.tokenizer, self.kv_dtype, self.kv_layout, str(block_size)]

    def key(self, block_size: int) -> bytes:
        """The 32-byte namespace key (docs/keys.md)."""
        from kvtier import _core

        _check_int("block_size", block_size, 1)
        return _core.namespace_key(self.fields(block_size))


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
            _check_int("capacity_bytes", self.capacity_bytes, 1)
        if self.policy not in _POLICIES:
            raise InvalidArgumentError(f"policy must be one of {sorted(_POLICIES)}, got {self.policy!r}")
        if self.ttl_s is not None:
            if isinstance(self.ttl_s, bool) or not isinstance(self.ttl_s, (int, float)):
                raise KvtierTypeError(f"ttl_s must be a number of seconds, got {type(self.ttl_s).__name__}")
            if not math.isfinite(self.ttl_s) or self.ttl_s <= 0:
                raise InvalidArgumentError(f"ttl_s must be a finite number of seconds > 0, got {self.ttl_s}")
        if self.policy == "ttl" and self.ttl_s is None:
            raise InvalidArgumentError("policy 'ttl' needs ttl_s (maximum idle seconds)")

    @property
    def policy_code(self) -> int:
        return _POLICIES[self.policy]


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
    write_through: bool = False
    queue_blocks: int = 64
    batch_blocks: int = 32
    sync: bool = True
    promote: bool = True
    map_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)):
            raise KvtierTypeError(f"disk path must be a str or os.PathLike, got {type(self.path).__name__}")
        if not os.fspath(self.path):
            raise InvalidArgumentError("disk path must name a folder")
        _check_int("disk capacity_bytes", self.capacity_bytes, 1)
        # Policy and TTL: the same rules as any tier.
        TierConfig(capacity_bytes=self.capacity_bytes, policy=self.policy, ttl_s=self.ttl_s)
        for name in ("write_through", "sync", "promote"):
            if not isinstance(getattr(self, name), bool):
                raise KvtierTypeError(f"disk {name} must be a bool, got {type(getattr(self, name)).__name__}")
        _check_int("disk queue_blocks", self.queue_blocks, 1)
        if self.queue_blocks >= 1 << 32:
            raise InvalidArgumentError(f"disk queue_blocks must be below 2**32, got {self.queue_blocks}")
        _check_int("disk batch_blocks", self.batch_blocks, 1)
        if self.map_size is not None:
            _check_int("disk map_size", self.map_size, 1 << 20)

    @property
    def policy_code(self) -> int:
        return _POLICIES[self.policy]


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
    vocab_size
        If given, token ids must be below it.
    payload_dtype
        If given (a numpy dtype name), payload arrays must have this dtype.
    host
        The host-memory tier.
    disk
        The disk tier below it (:class:`DiskConfig`), or ``None``.
    device
        The device tier above it (:class:`kvtier.DeviceTierConfig`: GPU memory, needs CUDA), or ``None``.
        Every device block also keeps a host slot, so its capacity is at most the host tier's.
    """

    block_size: int = 16
    block_bytes: int = 2048
    metadata_only: bool = False
    content: Literal["tokens", "block_ids"] = "tokens"
    vocab_size: int | None = None
    payload_dtype: str | None = None
    host: TierConfig = field(default_factory=TierConfig)
    disk: DiskConfig | None = None
    device: DeviceTierConfig | None = None

    def __post_init__(self) -> None:
        _check_int("block_size", self.block_size, 1)
        _check_int("block_bytes", self.block_bytes, 1)
        if self.content not in ("tokens", "block_ids"):
            raise InvalidArgumentError(f"content must be 'tokens' or 'block_ids', got {self.content!r}")
        if self.vocab_size is not None:
            _check_int("vocab_size", self.vocab_size, 1)
            if self.vocab_size > 1 << 32:
                raise InvalidArgumentError(f"vocab_size must be <= 2**32, got {self.vocab_size}")
        if not isinstance(self.host, TierConfig):
            raise KvtierTypeError(f"host must be a TierConfig, got {type(self.host).__name__}")
        if self.disk is not None:
            if not isinstance(self.disk, DiskConfig):
                raise KvtierTypeError(f"disk must be a DiskConfig, got {type(self.disk).__name__}")
            if self.metadata_only:
                raise InvalidArgumentError("a disk tier stores payloads: it needs metadata_only=False")
            if self.disk.capacity_bytes < self.block_bytes:
                raise InvalidArgumentError(
                    f"disk.capacity_bytes={self.disk.capacity_bytes} is smaller than one block "
                    f"(block_bytes={self.block_bytes})"
                )
        if self.device is not None:
            from kvtier.device import DeviceTierConfig

            if not isinstance(self.device, DeviceTierConfig):
                raise KvtierTypeError(f"device must be a DeviceTierConfig, got {type(self.device).__name__}")
            if self.metadata_only:
                raise InvalidArgumentError("a device tier stores payloads: it needs metadata_only=False")
            assert self.device.capacity_bytes is not None
            if self.device.capacity_bytes < self.block_bytes:
                raise InvalidArgumentError(
                    f"device.capacity_bytes={self.device.capacity_bytes} is smaller than one block "
                    f"(block_bytes={self.block_bytes})"
                )
            host_cap = self.host.capacity_bytes
            if host_cap is not None and self.device.capacity_bytes // self.block_bytes > host_cap // self.block_bytes:
                raise InvalidArgumentError(
                    f"device.capacity_bytes={self.device.capacity_bytes} exceeds host.capacity_bytes={host_cap}: "
                    f"every device block keeps a host slot to be written back to"
                )
        if self.host.capacity_bytes is None and not self.metadata_only:
            raise InvalidArgumentError("host.capacity_bytes=None (unlimited) needs metadata_only=True")
        if self.host.capacity_bytes is not None and self.host.capacity_bytes < self.block_bytes:
            raise InvalidArgumentError(
                f"host.capacity_bytes={self.host.capacity_bytes} is smaller than one block "
                f"(block_bytes={self.block_bytes})"
            )
        if self.payload_dtype is not None:
            import numpy as np

            try:
                dt = np.dtype(self.payload_dtype)
            except TypeError as e:
                raise InvalidArgumentError(f"payload_dtype {self.payload_dtype!r} is not a numpy dtype") from e
            if self.block_bytes % dt.itemsize:
                raise InvalidArgumentError(
                    f"block_bytes={self.block_bytes} is not a multiple of payload_dtype's itemsize {dt.itemsize}"
                )

    @property
    def token_limit(self) -> int:
        """Exclusive upper bound of token ids."""
        if self.vocab_size is not None:
            return self.vocab_size
        return 1 << 31

    @classmethod
    def for_blocks(
        cls,
        capacity_blocks: int | None,
        *,
        block_size: int = 16,
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
