"""``--hicache-storage-backend-extra-config`` of :class:`KVTierHiCacheStorage`: parsed at construction.

No sglang or torch import here. The keys mirror the vLLM connector's (docs/sglang.md has the table):

===========================  =========================  ==========================================================
key                          value                      default
===========================  =========================  ==========================================================
``disk_path``                folder (created if absent)  required: the disk tier, shared by the engine's ranks
``host_capacity``            bytes, int or "8G"         ``"2G"``: kvtier's host-memory tier (beside SGLang's pool)
``disk_capacity``            bytes, int or "100G"       half the free space of ``disk_path``'s file system, <= 64G
``host_policy``              "lru" | "lfu" | "ttl"      ``"lru"``
``disk_policy``              "lru" | "lfu" | "ttl"      ``"lru"``
``host_ttl_s``               seconds > 0                none (``"ttl"`` needs it)
``disk_ttl_s``               seconds > 0                none
``model``                    str                        SGLang's ``model_name``
``revision``                 str                        none: the weights revision, bound into the namespace
``remote_url``               redis://, rediss://,        none: the shared remote tier (docs/remote.md) that SGLang
                             redis+cluster:// URL        servers of a fleet share, below the disk tier
``remote_capacity``          bytes, int or "100G"       none: bounded by the server's maxmemory
``remote_ttl_s``             seconds > 0                none: no expiry on the server
``remote_write``             "back" | "through"         ``"through"``: a backed-up page is on the server when
                                                        ``batch_set_v1`` returns
``remote_namespace_budget``  bytes, int or "10G"        none: no per-tenant bound on the server
===========================  =========================  ==========================================================

The ``remote_*`` keys are the vLLM connector's, parsed by the same code (``kvtier.integrations.extra_config``).

SGLang's own keys of the same mapping (``backend_name``, ``module_path``, ``class_name``, ``interface_v1``,
``interface_v2``) are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from kvtier.config import RemoteConfig
from kvtier.integrations import extra_config as ec

__all__ = ["KVTierHiCacheConfig", "parse_extra_config"]

_PREFIX = "hicache_storage_backend_extra_config"
_SGLANG_KEYS = ("backend_name", "module_path", "class_name", "interface_v1", "interface_v2")


@dataclass(frozen=True)
class KVTierHiCacheConfig(ec.TierSettings):
    """The backend's settings (see the module docstring). Build with :func:`parse_extra_config`."""

    model: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        ec.check_settings(_PREFIX, self)

    def remote_config(self) -> RemoteConfig | None:
        """The store's :class:`kvtier.RemoteConfig` (``None`` without ``remote_url``)."""
        return ec.remote_config(_PREFIX, self)


_PARSERS: dict[str, ec.Parser] = {
    **ec.TIER_PARSERS,
    "model": ec.text,
    "revision": ec.text,
}
assert set(_PARSERS) == {f.name for f in fields(KVTierHiCacheConfig)}


def parse_extra_config(extra: Mapping[str, Any] | None) -> KVTierHiCacheConfig:
    """Validates the extra config and fills the defaults; an unknown key or a bad value raises
    :class:`kvtier.InvalidArgumentError` / :class:`kvtier.KvtierTypeError` naming the key."""
    return KVTierHiCacheConfig(**ec.parse_fields(_PREFIX, extra, _PARSERS, ignored=_SGLANG_KEYS))
