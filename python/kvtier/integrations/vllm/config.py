"""``kv_connector_extra_config`` of :class:`KVTierConnector`: parsed and validated at engine start.

No vllm or torch import here, so the parser is usable (and tested) without either.

Only ``disk_path`` is required. Every key, its type and default (docs/vllm.md has the same table):

===========================  =========================  ==========================================================
key                          value                      default
===========================  =========================  ==========================================================
``disk_path``                folder (created if absent)  required: the disk tier, shared by the engine's processes
``host_capacity``            bytes, int or "8G"         ``"2G"``: the worker's host-memory tier
``disk_capacity``            bytes, int or "100G"       half the free space of ``disk_path``'s file system, <= 64G
``host_policy``              "lru" | "lfu" | "ttl"      ``"lru"``
``disk_policy``              "lru" | "lfu" | "ttl"      ``"lru"``
``host_ttl_s``               seconds > 0                none (``"ttl"`` needs it)
``disk_ttl_s``               seconds > 0                none
``model``                    str                        the engine's model (path or hub id)
``revision``                 str                        the engine's model revision
``tokenizer``                str                        the engine's tokenizer and its revision
``hit_policy``               "pays" | "always"          ``"pays"``: claim a hit only if loading beats recompute
``host_bandwidth``           bytes/s > 0                ``"4G"``: prior for host loads until measured
``disk_bandwidth``           bytes/s > 0                ``"500M"``: prior for disk loads until measured
``save_generated``           bool                       ``true``: also save blocks of generated tokens
``save_buffer``              bytes, int or "1G"         ``"1G"``: host memory for blocks on their way into kvtier
``remote_url``               redis://, rediss://,        none: the shared remote tier (docs/remote.md) that engines
                             redis+cluster:// URL        of a fleet share, below the disk tier
``remote_capacity``          bytes, int or "100G"       none: bounded by the server's maxmemory
``remote_ttl_s``             seconds > 0                none: no expiry on the server
``remote_write``             "back" | "through"         ``"through"``: a saved block is on the server when its save ends
``remote_namespace_budget``  bytes, int or "10G"        none: no per-tenant bound on the server
===========================  =========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from kvtier.config import RemoteConfig
from kvtier.integrations import extra_config as ec

__all__ = ["KVTierConnectorConfig", "parse_extra_config", "parse_size"]

_GIB = 1 << 30
_HIT_POLICIES = ("pays", "always")
_PREFIX = "kv_connector_extra_config"


def parse_size(key: str, value: object) -> int:
    """Bytes from an int or a string such as ``"512M"``, ``"8G"``, ``"1.5GiB"`` (binary units)."""
    return ec.size(f"{_PREFIX}[{key!r}]", value)


@dataclass(frozen=True)
class KVTierConnectorConfig(ec.TierSettings):
    """The connector's settings (see the module docstring for each key). Build with :func:`parse_extra_config`."""

    model: str | None = None
    revision: str | None = None
    tokenizer: str | None = None
    hit_policy: Literal["pays", "always"] = "pays"
    host_bandwidth: int = 4 * _GIB
    disk_bandwidth: int = 500 << 20
    save_generated: bool = True
    save_buffer: int = _GIB

    def __post_init__(self) -> None:
        ec.check_settings(_PREFIX, self)

    def remote_config(self) -> RemoteConfig | None:
        """The stores' :class:`kvtier.RemoteConfig` (``None`` without ``remote_url``)."""
        return ec.remote_config(_PREFIX, self)


_PARSERS: dict[str, ec.Parser] = {
    **ec.TIER_PARSERS,
    "model": ec.text,
    "revision": ec.text,
    "tokenizer": ec.text,
    "hit_policy": lambda k, v: ec.choice(k, v, _HIT_POLICIES),
    "host_bandwidth": ec.size,
    "disk_bandwidth": ec.size,
    "save_generated": ec.flag,
    "save_buffer": ec.size,
}
assert set(_PARSERS) == {f.name for f in fields(KVTierConnectorConfig)}


def parse_extra_config(extra: Mapping[str, Any] | None) -> KVTierConnectorConfig:
    """Validates ``kv_connector_extra_config`` and fills the defaults.

    Raises
    ------
    kvtier.InvalidArgumentError
        (a ``ValueError``) for an unknown key, a missing ``disk_path`` or a bad value; the message names the key.
    kvtier.KvtierTypeError
        (a ``TypeError``) for a value of the wrong type; the message names the key.
    """
    return KVTierConnectorConfig(**ec.parse_fields(_PREFIX, extra, _PARSERS))
