"""The residency ledger: GB-hours per tier, tenant and session, from the core's exact counters.

The core integrates resident bytes x seconds at every state change (insert, hit, eviction, expiry),
per tier, namespace and session account (:meth:`kvtier.Store.residency`). The ledger regroups those
rows by tier, by tenant (``Namespace.tenant``) and by (tenant, session), and prices them with a
hardware entry's per-tier rates.

Attribution ("first writer"). A block is charged to the session whose insert stored it, for its
whole stay, even when other sessions hit it and so keep it resident::

    t=0     session A inserts [sys | a1]          A pays for sys and a1
    t=10    session B hits sys, inserts [b1]      B pays for b1 only
    t=20    session B hits sys again              sys's stay grows: still A's bill

Consequences: a shared prefix (a system prompt, tool schemas) is billed once, not once per user,
so per-session GB-hours add up to the tier's total exactly; but the session that happened to arrive
first carries the shared prefix, and sessions that only reuse it look free. When the prefix expires
and is stored again, the next writer pays for the new stay. Tenants never share blocks (the tenant
salt is in every key), so per-tenant totals need no attribution rule.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from kvtier.cost.catalog import HardwareSpec
from kvtier.cost.trace import CostTrace
from kvtier.errors import InvalidArgumentError, KvtierTypeError

if TYPE_CHECKING:
    from kvtier.config import TierConfig
    from kvtier.store import Store

__all__ = ["LedgerRow", "Ledger", "ledger_from_store", "ledger_from_trace", "ATTRIBUTION"]

_GB_HOUR = 1e9 * 3600.0
ENDED = "(ended)"  # the model, tenant or session label of rows folded from ended sessions and namespaces
_K = TypeVar("_K", bound=Hashable)
#: The attribution rule of every ledger (see the module docstring).
ATTRIBUTION = "first-writer"


@dataclass(frozen=True)
class LedgerRow:
    """Residency of one (model, tenant, session) in one tier.

    ``ENDED`` names the sessions (and namespaces) a live store folded into one row once they held nothing
    (:class:`kvtier.ResidencyRow`).
    """

    model: str
    tenant: str
    session: str
    tier: str
    resident_bytes: int
    byte_seconds: float

    @property
    def gb_hours(self) -> float:
        """Decimal GB (1e9 bytes) x hours."""
        return self.byte_seconds / _GB_HOUR


@dataclass(frozen=True)
class Ledger:
    """GB-hours up to ``until`` (seconds on the store's or the trace's clock), first-writer attribution.

    Attributes
    ----------
    rows
        One per (model, tenant, session, tier) with residency.
    until
        The instant the integral stops.
    """

    rows: tuple[LedgerRow, ...]
    until: float
    attribution: str = ATTRIBUTION

    @property
    def gb_hours(self) -> float:
        return sum(r.gb_hours for r in self.rows)

    def by_tier(self) -> dict[str, float]:
        """GB-hours per tier name (``device``, ``host``, ``disk``)."""
        return self._group(lambda r: r.tier)

    def by_tenant(self) -> dict[str, float]:
        """GB-hours per tenant (``""``: no tenant named)."""
        return self._group(lambda r: r.tenant)

    def by_session(self) -> dict[tuple[str, str], float]:
        """GB-hours per (tenant, session); session ``""`` holds what no session was named for."""
        return self._group(lambda r: (r.tenant, r.session))

    def usd(self, hardware: HardwareSpec, *, as_tier: str | None = None) -> float:
        """The ledger priced at ``hardware``'s GB-hour rate of each row's tier (or of ``as_tier`` for all rows)."""
        return sum(r.gb_hours * hardware.tier_usd_per_gb_hour(as_tier or r.tier) for r in self.rows)

    def usd_by_tier(self, hardware: HardwareSpec, *, as_tier: str | None = None) -> dict[str, float]:
        return {t: gbh * hardware.tier_usd_per_gb_hour(as_tier or t) for t, gbh in self.by_tier().items()}

    def usd_by_session(self, hardware: HardwareSpec, *, as_tier: str | None = None) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for r in self.rows:
            k = (r.tenant, r.session)
            out[k] = out.get(k, 0.0) + r.gb_hours * hardware.tier_usd_per_gb_hour(as_tier or r.tier)
        return out

    def _group(self, key: Callable[[LedgerRow], _K]) -> dict[_K, float]:
        out: dict[_K, float] = {}
        for r in self.rows:
            k = key(r)
            out[k] = out.get(k, 0.0) + r.gb_hours
        return out


def ledger_from_store(store: Store, *, now: float | None = None) -> Ledger:
    """The ledger of a live store up to ``now`` (default: the store's clock).

    One call to :meth:`kvtier.Store.residency`; blocks past their TTL stop counting at their expiry.
    """
    from kvtier.store import Store

    if not isinstance(store, Store):
        raise KvtierTypeError(f"store must be a kvtier.Store, got {type(store).__name__}")
    res = store.residency(now=now)
    rows = tuple(
        LedgerRow(
            ENDED if r.namespace is None else r.namespace.model,
            ENDED if r.namespace is None else r.namespace.tenant,
            ENDED if r.session is None else r.session,
            r.tier.name.lower(),
            r.resident_bytes,
            r.byte_seconds,
        )
        for r in res.rows
        if r.byte_seconds > 0 or r.resident_bytes > 0
    )
    return Ledger(rows, res.now)


def ledger_from_trace(
    trace: CostTrace,
    kv_bytes_per_token: int,
    *,
    tier: TierConfig | None = None,
    until: float | None = None,
    model: str = "kvtier-cost",
) -> tuple[Ledger, npt.NDArray[np.int64]]:
    """Replays ``trace`` through a metadata-only store sized in KV bytes and returns its ledger and hits.

    Parameters
    ----------
    kv_bytes_per_token
        KV bytes of one token (all layers): a block holds ``block_tokens x kv_bytes_per_token``.
    tier
        The host tier's capacity and policy (default: unlimited, TTL 1 hour).
    until
        End of the integral (default: the last arrival plus the TTL, when every block has expired;
        the last arrival without a TTL).
    model
        The namespace model name (ledger rows carry it).

    Returns
    -------
    The ledger (first-writer attribution, sessions and tenants from the trace) and ``int64[n]``:
    blocks hit per request.
    """
    from kvtier.config import Namespace, StoreConfig, TierConfig
    from kvtier.replay import ReplayTrace
    from kvtier.store import Store

    if isinstance(kv_bytes_per_token, bool) or not isinstance(kv_bytes_per_token, int) or kv_bytes_per_token < 1:
        raise InvalidArgumentError(f"kv_bytes_per_token must be an int >= 1, got {kv_bytes_per_token!r}")
    host = tier if tier is not None else TierConfig(capacity_bytes=None, policy="ttl", ttl_s=3600.0)
    block_bytes = kv_bytes_per_token * trace.block_tokens
    cfg = StoreConfig(block_size=trace.block_tokens, block_bytes=block_bytes, metadata_only=True, content="block_ids", host=host)
    namespaces = None
    table: tuple[Namespace, ...] = ()
    if trace.tenants is not None:
        namespaces = trace.tenants
        table = tuple(Namespace(model=model, tenant=t) for t in trace.tenant_table)
    rt = ReplayTrace(trace.offsets, trace.block_ids, trace.timestamps, namespaces, table, trace.sessions, trace.session_table)
    if until is None:
        until = float(trace.timestamps[-1]) + (host.ttl_s or 0.0)
    with Store(cfg, namespace=Namespace(model=model)) as store:
        hits = store.replay(rt).astype(np.int64)
        ledger = ledger_from_store(store, now=until)
    return ledger, hits
