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

import difflib
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from kvtier.config import RemoteConfig
from kvtier.errors import InvalidArgumentError, KvtierTypeError

__all__ = ["KVTierConnectorConfig", "parse_extra_config", "parse_size"]

_GIB = 1 << 30
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_POLICIES = ("lru", "lfu", "ttl")
_HIT_POLICIES = ("pays", "always")
_PREFIX = "kv_connector_extra_config"


def parse_size(key: str, value: object) -> int:
    """Bytes from an int or a string such as ``"512M"``, ``"8G"``, ``"1.5GiB"`` (binary units)."""
    if isinstance(value, bool):
        raise KvtierTypeError(f"{_PREFIX}[{key!r}] must be a number of bytes or a size such as '8G', got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise InvalidArgumentError(
                f"{_PREFIX}[{key!r}]={value!r} is not a size: use bytes (an int) or a number with K, M, G or T"
            )
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise KvtierTypeError(
            f"{_PREFIX}[{key!r}] must be a number of bytes or a size such as '8G', got {type(value).__name__}"
        )
    if n <= 0:
        raise InvalidArgumentError(f"{_PREFIX}[{key!r}] must be > 0 bytes, got {value!r}")
    return n


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KvtierTypeError(f"{_PREFIX}[{key!r}] must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{_PREFIX}[{key!r}] must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f"{_PREFIX}[{key!r}] must be one of {list(choices)}, got {value!r}")
    return value


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise KvtierTypeError(f"{_PREFIX}[{key!r}] must be a non-empty str, got {value!r}")
    return value


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise KvtierTypeError(f"{_PREFIX}[{key!r}] must be true or false, got {value!r}")
    return value


def default_disk_capacity(path: str) -> int:
    """Half the free space of ``path``'s file system, at most 64 GiB and at least 1 GiB."""
    probe = path
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    free = shutil.disk_usage(probe or ".").free
    return max(_GIB, min(64 * _GIB, free // 2))


@dataclass(frozen=True)
class KVTierConnectorConfig:
    """The connector's settings (see the module docstring for each key). Build with :func:`parse_extra_config`."""

    disk_path: str
    disk_capacity: int
    host_capacity: int = 2 * _GIB
    host_policy: Literal["lru", "lfu", "ttl"] = "lru"
    disk_policy: Literal["lru", "lfu", "ttl"] = "lru"
    host_ttl_s: float | None = None
    disk_ttl_s: float | None = None
    model: str | None = None
    revision: str | None = None
    tokenizer: str | None = None
    hit_policy: Literal["pays", "always"] = "pays"
    host_bandwidth: int = 4 * _GIB
    disk_bandwidth: int = 500 << 20
    save_generated: bool = True
    save_buffer: int = _GIB
    remote_url: str | None = None
    remote_capacity: int | None = None
    remote_ttl_s: float | None = None
    remote_write: Literal["back", "through"] = "through"
    remote_namespace_budget: int | None = None

    def __post_init__(self) -> None:
        remote_keys = ("remote_capacity", "remote_ttl_s", "remote_namespace_budget")
        if self.remote_url is None and any(getattr(self, k) is not None for k in remote_keys):
            raise InvalidArgumentError(f"{_PREFIX}: the remote_* keys need {_PREFIX}['remote_url']")
        self.remote_config()  # validates the URL and the remote keys
        for tier in ("host", "disk"):
            if getattr(self, f"{tier}_policy") == "ttl" and getattr(self, f"{tier}_ttl_s") is None:
                raise InvalidArgumentError(
                    f"{_PREFIX}[{tier + '_policy'!r}]='ttl' needs {_PREFIX}[{tier + '_ttl_s'!r}] (maximum idle seconds)"
                )

    def remote_config(self) -> RemoteConfig | None:
        """The stores' :class:`kvtier.RemoteConfig` (``None`` without ``remote_url``)."""
        if self.remote_url is None:
            return None
        try:
            return RemoteConfig(
                url=self.remote_url,
                capacity_bytes=self.remote_capacity,
                ttl_s=self.remote_ttl_s,
                write=self.remote_write,
                namespace_budget_bytes=self.remote_namespace_budget,
            )
        except (InvalidArgumentError, KvtierTypeError) as e:
            raise type(e)(f"{_PREFIX}['remote_url'] and the remote_* keys: {e}") from None


_PARSERS: dict[str, Any] = {
    "disk_path": _text,
    "disk_capacity": parse_size,
    "host_capacity": parse_size,
    "host_policy": lambda k, v: _choice(k, v, _POLICIES),
    "disk_policy": lambda k, v: _choice(k, v, _POLICIES),
    "host_ttl_s": _seconds,
    "disk_ttl_s": _seconds,
    "model": _text,
    "revision": _text,
    "tokenizer": _text,
    "hit_policy": lambda k, v: _choice(k, v, _HIT_POLICIES),
    "host_bandwidth": parse_size,
    "disk_bandwidth": parse_size,
    "save_generated": _flag,
    "save_buffer": parse_size,
    "remote_url": _text,
    "remote_capacity": parse_size,
    "remote_ttl_s": _seconds,
    "remote_write": lambda k, v: _choice(k, v, ("back", "through")),
    "remote_namespace_budget": parse_size,
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
    if extra is None:
        extra = {}
    if not isinstance(extra, Mapping):
        raise KvtierTypeError(f"{_PREFIX} must be a mapping of keys to values, got {type(extra).__name__}")
    values: dict[str, Any] = {}
    for key, value in extra.items():
        parser = _PARSERS.get(key) if isinstance(key, str) else None
        if parser is None:
            close = difflib.get_close_matches(str(key), list(_PARSERS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidArgumentError(f"{_PREFIX}: unknown key {key!r}{hint} (known keys: {', '.join(_PARSERS)})")
        values[key] = parser(key, value)
    if "disk_path" not in values:
        raise InvalidArgumentError(
            f"{_PREFIX}[{'disk_path'!r}] is required: the folder of kvtier's disk tier, which the scheduler and "
            "worker processes share (e.g. {'disk_path': '/var/cache/kvtier'})"
        )
    values["disk_path"] = os.path.abspath(os.path.expanduser(values["disk_path"]))
    if "disk_capacity" not in values:
        values["disk_capacity"] = default_disk_capacity(values["disk_path"])
    return KVTierConnectorConfig(**values)
