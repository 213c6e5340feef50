"""kvtier as an SGLang HiCache storage backend (L3 under SGLang's host pool). See docs/sglang.md.

Load it with::

    --enable-hierarchical-cache --hicache-storage-backend dynamic \
    --hicache-storage-backend-extra-config '{"backend_name": "kvtier",
        "module_path": "kvtier.integrations.sglang", "class_name": "KVTierHiCacheStorage",
        "interface_v1": 1, "disk_path": "/var/cache/kvtier"}'

sglang is imported only when :class:`KVTierHiCacheStorage` is first used.
"""

from __future__ import annotations

from typing import Any

from kvtier.integrations.sglang.config import KVTierHiCacheConfig, parse_extra_config

__all__ = ["KVTierHiCacheConfig", "KVTierHiCacheStorage", "parse_extra_config"]


def __getattr__(name: str) -> Any:
    if name == "KVTierHiCacheStorage":
        from kvtier.integrations.sglang.storage import KVTierHiCacheStorage

        return KVTierHiCacheStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
