"""Parsers of an engine's extra-config mapping, shared by the vLLM connector and the SGLang backend.

No engine or torch import here. Each value parser takes ``where`` (how the message names the key, e.g.
``kv_connector_extra_config['disk_path']``) and the value, and raises a kvtier error naming it.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shutil
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kvtier.config import RemoteConfig
from kvtier.errors import InvalidArgumentError, KvtierTypeError

__all__ = [
    "POLICIES",
    "TIER_PARSERS",
    "TierSettings",
    "check_settings",
    "choice",
    "default_disk_capacity",
    "flag",
    "parse_fields",
    "remote_config",
    "seconds",
    "size",
    "text",
]

_GIB = 1 << 30
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
POLICIES = ("lru", "lfu", "ttl")

Parser = Callable[[str, object], Any]


def size(where: str, value: object) -> int:
    """Bytes from an int or a string such as ``"512M"``, ``"8G"``, ``"1.5GiB"`` (binary units)."""
    if isinstance(value, bool):
        raise KvtierTypeError(f"{where} must be a number of bytes or a size such as '8G', got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise InvalidArgumentError(f"{where}={value!r} is not a size: use bytes (an int) or a number with K, M, G or T")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise KvtierTypeError(f"{where} must be a number of bytes or a size such as '8G', got {type(value).__name__}")
    if n <= 0:
        raise InvalidArgumentError(f"{where} must be > 0 bytes, got {value!r}")
    return n


def seconds(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KvtierTypeError(f"{where} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{where} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def choice(where: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f"{where} must be one of {list(choices)}, got {value!r}")
    return value


def text(where: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise KvtierTypeError(f"{where} must be a non-empty str, got {value!r}")
    return value


def flag(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise KvtierTypeError(f"{where} must be true or false, got {value!r}")
    return value


def policy(where: str, value: object) -> str:
    return choice(where, value, POLICIES)


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


def parse_fields(
    prefix: str, extra: Mapping[str, Any] | None, parsers: Mapping[str, Parser], ignored: Collection[str] = ()
) -> dict[str, Any]:
    """Parses ``extra`` key by key (``ignored`` keys belong to the engine and are skipped). ``disk_path`` is
    required and made absolute; ``disk_capacity`` defaults to :func:`default_disk_capacity`. Unknown keys
    and bad values raise, naming the key (``prefix[key]``)."""
    if extra is None:
        extra = {}
    if not isinstance(extra, Mapping):
        raise KvtierTypeError(f"{prefix} must be a mapping of keys to values, got {type(extra).__name__}")
    values: dict[str, Any] = {}
    for key, value in extra.items():
        if key in ignored:
            continue
        parser = parsers.get(key) if isinstance(key, str) else None
        if parser is None:
            close = difflib.get_close_matches(str(key), list(parsers), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidArgumentError(f"{prefix}: unknown key {key!r}{hint} (known keys: {', '.join(parsers)})")
        values[key] = parser(f"{prefix}[{key!r}]", value)
    if "disk_path" not in values:
        raise InvalidArgumentError(
            f"{prefix}[{'disk_path'!r}] is required: the folder of kvtier's disk tier, which the engine's "
            "processes share (e.g. {'disk_path': '/var/cache/kvtier'})"
        )
    values["disk_path"] = os.path.abspath(os.path.expanduser(values["disk_path"]))
    if "disk_capacity" not in values:
        values["disk_capacity"] = default_disk_capacity(values["disk_path"])
    return values


def check_ttl_policies(prefix: str, values: Any) -> None:
    """A ``"ttl"`` host or disk policy needs its ``*_ttl_s``."""
    for tier in ("host", "disk"):
        if getattr(values, f"{tier}_policy") == "ttl" and getattr(values, f"{tier}_ttl_s") is None:
            raise InvalidArgumentError(
                f"{prefix}[{tier + '_policy'!r}]='ttl' needs {prefix}[{tier + '_ttl_s'!r}] (maximum idle seconds)"
            )


_REMOTE_KEYS = ("remote_capacity", "remote_ttl_s", "remote_namespace_budget")


def remote_config(prefix: str, values: Any) -> RemoteConfig | None:
    """The stores' :class:`kvtier.RemoteConfig` from a plug-in's ``remote_*`` settings (``None`` without
    ``remote_url``). Raises naming the keys: ``remote_*`` keys without ``remote_url``, a bad URL or value."""
    if values.remote_url is None:
        if any(getattr(values, k) is not None for k in _REMOTE_KEYS):
            raise InvalidArgumentError(f"{prefix}: the remote_* keys need {prefix}['remote_url']")
        return None
    try:
        return RemoteConfig(
            url=values.remote_url,
            capacity_bytes=values.remote_capacity,
            ttl_s=values.remote_ttl_s,
            write=values.remote_write,
            namespace_budget_bytes=values.remote_namespace_budget,
        )
    except (InvalidArgumentError, KvtierTypeError) as e:
        raise type(e)(f"{prefix}['remote_url'] and the remote_* keys: {e}") from None


def check_settings(prefix: str, values: Any) -> None:
    """The rules across keys of :class:`TierSettings`: ttl policies have their TTL; the remote keys make a
    valid :class:`kvtier.RemoteConfig`."""
    remote_config(prefix, values)
    check_ttl_policies(prefix, values)


@dataclass(frozen=True)
class TierSettings:
    """The keys every engine plug-in shares: kvtier's host, disk and remote tiers (a base of each plug-in's
    config; a subclass's ``__post_init__`` calls :func:`check_settings`)."""

    disk_path: str
    disk_capacity: int
    host_capacity: int = 2 * _GIB
    host_policy: Literal["lru", "lfu", "ttl"] = "lru"
    disk_policy: Literal["lru", "lfu", "ttl"] = "lru"
    host_ttl_s: float | None = None
    disk_ttl_s: float | None = None
    remote_url: str | None = None
    remote_capacity: int | None = None
    remote_ttl_s: float | None = None
    remote_write: Literal["back", "through"] = "through"
    remote_namespace_budget: int | None = None


TIER_PARSERS: dict[str, Parser] = {
    "disk_path": text,
    "disk_capacity": size,
    "host_capacity": size,
    "host_policy": policy,
    "disk_policy": policy,
    "host_ttl_s": seconds,
    "disk_ttl_s": seconds,
    "remote_url": text,
    "remote_capacity": size,
    "remote_ttl_s": seconds,
    "remote_write": lambda k, v: choice(k, v, ("back", "through")),
    "remote_namespace_budget": size,
}
