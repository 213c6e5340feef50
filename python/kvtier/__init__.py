"""kvtier: a tiered KV prefix-cache store for LLM serving.

``import kvtier`` needs only numpy. The compiled core is ``kvtier._core`` (private).
"""

from __future__ import annotations

from kvtier.config import DiskConfig, Namespace, RemoteConfig, StoreConfig, TierConfig
from kvtier.copy_engine import CopyEngine, CopyHandle
from kvtier.device import CudaStatus, DeviceArena, DeviceTierConfig, cuda_available, host_buffer
from kvtier.errors import (
    CapacityError,
    CudaError,
    CudaUnavailableError,
    DiskError,
    DiskWriteError,
    InvalidArgumentError,
    KvtierError,
    KvtierTypeError,
    PinError,
    RemoteError,
    RemoteUnavailableError,
    RemoteWriteError,
    StoreClosedError,
    UnknownNamespaceError,
)
from kvtier.keys import block_keys
from kvtier.kv_layout import KVLayout, KVRegion, TensorView
from kvtier.replay import ReplayTrace
from kvtier.store import (
    DeviceStats,
    DiskStats,
    InsertResult,
    MatchResult,
    Residency,
    ResidencyRow,
    Store,
    StoreStats,
    Tier,
    TokenSequence,
)

__version__ = "0.1.0"

__all__ = [
    "Store",
    "StoreConfig",
    "TierConfig",
    "DiskConfig",
    "RemoteConfig",
    "Namespace",
    "Tier",
    "TokenSequence",
    "MatchResult",
    "InsertResult",
    "StoreStats",
    "DeviceStats",
    "DiskStats",
    "Residency",
    "ResidencyRow",
    "ReplayTrace",
    "block_keys",
    "KVLayout",
    "KVRegion",
    "TensorView",
    "CopyEngine",
    "CopyHandle",
    "cuda_available",
    "CudaStatus",
    "DeviceTierConfig",
    "DeviceArena",
    "host_buffer",
    "KvtierError",
    "InvalidArgumentError",
    "KvtierTypeError",
    "PinError",
    "StoreClosedError",
    "UnknownNamespaceError",
    "CapacityError",
    "DiskError",
    "DiskWriteError",
    "RemoteError",
    "RemoteUnavailableError",
    "RemoteWriteError",
    "CudaUnavailableError",
    "CudaError",
]
