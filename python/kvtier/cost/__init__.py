"""Cost accounting: what a KV prefix cache costs, self-hosted and at hosted providers.

* :mod:`~kvtier.cost.catalog` - models, hardware and provider caching rules from TOML data files
  (validated by :mod:`~kvtier.cost.schema`);
* :mod:`~kvtier.cost.trace` - a request trace as arrays of chained prefix-block ids (read by
  ``kvtier analyze``'s parsers);
* :mod:`~kvtier.cost.cachesim` - which prefix of each request a TTL cache holds (core or numpy);
* :mod:`~kvtier.cost.ledger` - GB-hours per tier, tenant and session (first-writer attribution);
* :mod:`~kvtier.cost.tco` - three-part TCO: KV residency + compute + shard footprint;
* :mod:`~kvtier.cost.providers` - every request priced under a provider's caching rules;
* :mod:`~kvtier.cost.rank` - a shortlist ranked by cache-aware cost per task against the sticker price;
* :mod:`~kvtier.cost.command` - ``kvtier cost``.

``import kvtier`` does not import this package, and importing it does no work: names are loaded on
first use (``kvtier.cost.rank`` is the module; its function is ``kvtier.cost.rank.rank``). See
docs/cost.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvtier.cost.cachesim import CacheReplay, CacheRule, replay_cache
    from kvtier.cost.catalog import (
        Catalog,
        CatalogError,
        HardwareSpec,
        ModelPrice,
        ModelSpec,
        ProviderRules,
        UnknownNameError,
        load_catalog,
    )
    from kvtier.cost.ledger import Ledger, LedgerRow, ledger_from_store, ledger_from_trace
    from kvtier.cost.providers import ProviderCost, price_provider
    from kvtier.cost.rank import CostLine, Ranking, line_of
    from kvtier.cost.tco import Tco, TcoAssumptions, compute_tco
    from kvtier.cost.trace import CostTrace, read_trace

_WHERE = {
    "CacheReplay": "cachesim",
    "CacheRule": "cachesim",
    "replay_cache": "cachesim",
    "Catalog": "catalog",
    "CatalogError": "catalog",
    "HardwareSpec": "catalog",
    "ModelPrice": "catalog",
    "ModelSpec": "catalog",
    "ProviderRules": "catalog",
    "UnknownNameError": "catalog",
    "load_catalog": "catalog",
    "Ledger": "ledger",
    "LedgerRow": "ledger",
    "ledger_from_store": "ledger",
    "ledger_from_trace": "ledger",
    "ProviderCost": "providers",
    "price_provider": "providers",
    "CostLine": "rank",
    "Ranking": "rank",
    "line_of": "rank",
    "Tco": "tco",
    "TcoAssumptions": "tco",
    "compute_tco": "tco",
    "CostTrace": "trace",
    "read_trace": "trace",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kvtier.cost' has no attribute {name!r}")
    return getattr(importlib.import_module(f"kvtier.cost.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
