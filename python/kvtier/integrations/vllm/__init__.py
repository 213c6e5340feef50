"""kvtier as a vLLM v1 KV connector.

Load it by module path (vLLM imports it only when configured)::

    KVTransferConfig(
        kv_connector="KVTierConnector",
        kv_connector_module_path="kvtier.integrations.vllm",
        kv_role="kv_both",
        kv_load_failure_policy="recompute",
        kv_connector_extra_config={"disk_path": "/var/cache/kvtier"},
    )

``vllm`` and ``torch`` are imported only when a name that needs them is first used (PEP 562), so
``kvtier.integrations.vllm.config`` (the extra-config parser) works without either. Design, keys and
guarantees: ``docs/vllm.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KVTierConnector", "KVTierConnectorStats", "KVTierConnectorConfig", "parse_extra_config"]

_LAZY = {
    "KVTierConnector": "kvtier.integrations.vllm.connector",
    "KVTierConnectorStats": "kvtier.integrations.vllm.stats",
    "KVTierConnectorConfig": "kvtier.integrations.vllm.config",
    "parse_extra_config": "kvtier.integrations.vllm.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvtier.integrations.vllm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
