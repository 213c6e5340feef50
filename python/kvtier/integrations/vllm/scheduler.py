"""The scheduler side: how many tokens kvtier supplies for a request, and each step's load and save plan.

The scheduler (vLLM's engine-core process) never holds KV payloads. It knows which blocks the workers hold from
two sources:

- ``known``: a metadata-only index of the blocks its workers acknowledged saving (``KVTierWorkerMetadata.saves``,
  every rank; a failed save is acknowledged as holding nothing and never claimed);
- ``index``: the disk folder, opened with its own ``Store`` (it never inserts): what earlier processes stored,
  restored at start, and what another process sharing the folder commits (a lookup that reaches a key the
  store does not know reads the folder's index for it).

A request whose prefix continues into a save still in flight waits a step (``get_num_new_matched_tokens`` returns
``None``; the engine keeps stepping while saves are in flight, see ``saves_in_flight``), so a request that follows
its predecessor at once still finds everything the predecessor computed. See docs/vllm.md.

Beside the index, a metadata-only "host mirror" replays the workers' saves and loads with the workers' host-tier
capacity and policy. It only estimates which matched blocks a worker still holds in memory (host bandwidth) and
which it must read from disk (disk bandwidth), for the cost model; it never decides what is claimed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vllm.logger import init_logger

from kvtier import DiskConfig, Namespace, Store, StoreConfig, TierConfig
from kvtier.integrations.vllm.config import KVTierConnectorConfig
from kvtier.integrations.vllm.cost import HitCostModel, HitDecision
from kvtier.integrations.vllm.meta import (
    KVTierConnectorMetadata,
    KVTierWorkerMetadata,
    LoadSpec,
    ReqStep,
    SaveSpec,
    rank_namespace,
)
from kvtier.integrations.vllm.stats import KVTierConnectorStats

__all__ = ["SchedulerSide"]

logger = init_logger("vllm.kvtier.scheduler")

_HOST, _DISK = 1, 2

#: A save not acknowledged by every worker after this long is given up (logged): a lost acknowledgement must not
#: keep the engine stepping, or requests waiting, for ever (seconds).
SAVE_ACK_TIMEOUT_S = 60.0


@dataclass
class _Req:
    request: Any  # vllm.v1.request.Request (same process)
    tenant: str
    sent_tokens: int = 0  # tokens the workers hold for this request
    saved_blocks: int = 0  # blocks whose save has been planned
    load: LoadSpec | None = None  # planned by update_state_after_alloc, sent with the next metadata


@dataclass
class _SaveInFlight:
    """A save sent to the workers and not acknowledged by all of them yet."""

    tenant: str
    tokens: Any  # int32[end * block_size]
    end: int
    planned_at: float  # time.monotonic()
    acks: int = 0
    held: int = field(default=1 << 62)  # min over the acknowledging workers of the blocks they hold


class SchedulerSide:
    """Scheduler half of :class:`KVTierConnector` (one instance in the engine-core process)."""

    def __init__(
        self,
        cfg: KVTierConnectorConfig,
        *,
        block_size: int,
        block_bytes: int,
        ns_fields: dict[str, str],
        spec_desc: str,
        world: int,
    ) -> None:
        self.cfg = cfg
        self.block_size = block_size
        self.block_bytes = block_bytes
        self._ns_fields = ns_fields
        self._spec_desc = spec_desc
        self._world = world
        self._ns_cache: dict[str, list[Namespace]] = {}
        store_cfg = StoreConfig(
            block_size=block_size,
            block_bytes=block_bytes,
            host=TierConfig(capacity_bytes=block_bytes),  # the scheduler stores nothing itself
            disk=DiskConfig(
                path=cfg.disk_path,
                capacity_bytes=cfg.disk_capacity,
                policy=cfg.disk_policy,
                ttl_s=cfg.disk_ttl_s,
            ),
            remote=cfg.remote_config(),  # the fleet's blocks count as hits too
        )
        self.index = Store(store_cfg, namespace=self._namespaces("")[0])
        self.mirror = self._tree(TierConfig(capacity_bytes=cfg.host_capacity, policy=cfg.host_policy, ttl_s=cfg.host_ttl_s))
        self.known = self._tree(TierConfig(capacity_bytes=cfg.disk_capacity, policy=cfg.disk_policy, ttl_s=cfg.disk_ttl_s))
        self._in_flight: dict[int, _SaveInFlight] = {}
        self._next_save_id = 1
        self.cost = HitCostModel(
            block_bytes=block_bytes,
            block_size=block_size,
            host_bandwidth=cfg.host_bandwidth,
            disk_bandwidth=cfg.disk_bandwidth,
        )
        self._reqs: dict[str, _Req] = {}
        self._decisions: dict[str, tuple[int, HitDecision, int]] = {}  # req -> (engine blocks, decision, in host)
        self._sources: dict[str, tuple[int, int]] = {}  # req -> estimated (host, disk) tokens of its planned load
        self._finished: list[str] = []
        self.stats = KVTierConnectorStats()
        self.events: list[Any] = []

    def _tree(self, tier: TierConfig) -> Store:
        """A metadata-only store (tree and policy, no payloads) with ``tier``'s capacity and policy."""
        return Store(
            StoreConfig(block_size=self.block_size, block_bytes=self.block_bytes, metadata_only=True, host=tier),
            namespace=self._namespaces("")[0],
        )

    # ------------------------------------------------------------------ namespaces
    def _namespaces(self, tenant: str) -> list[Namespace]:
        """One namespace per worker rank (each rank stores its own shard of the KV)."""
        ns = self._ns_cache.get(tenant)
        if ns is None:
            ns = [rank_namespace(self._ns_fields, self._spec_desc, r, self._world, tenant) for r in range(self._world)]
            self._ns_cache[tenant] = ns
        return ns

    def _tokens(self, request: Any, n: int) -> Any:
        return np.asarray(request.all_token_ids[:n], dtype=np.int32)

    # ------------------------------------------------------------------ vLLM hooks
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        """Tokens kvtier can supply beyond the engine's ``num_computed_tokens`` (whole blocks; no side effects).

        ``(None, False)`` when the request's prefix continues into a save in flight: vLLM asks again next step.
        """
        bs = self.block_size
        claimable = (request.num_tokens - 1) // bs  # the engine must compute at least one token
        engine_blocks = num_computed_tokens // bs
        if claimable <= engine_blocks:
            self._decisions[request.request_id] = (engine_blocks, HitDecision(0, 0, 0.0, 0.0, "none"), 0)
            return 0, False
        tenant = request.cache_salt or ""
        toks = self._tokens(request, claimable * bs)
        namespaces = self._namespaces(tenant)
        hit = min(self.index.peek(toks, namespace=ns).num_blocks for ns in namespaces)
        hit = max(hit, self.known.peek(toks, namespace=namespaces[0]).num_blocks)
        if self._extends_into_save_in_flight(tenant, toks, max(hit, engine_blocks)):
            logger.debug("kvtier: request %s waits a step for a save in flight", request.request_id)
            self.stats.add("lookups_deferred", 1)
            return None, False
        logger.debug("kvtier: request %s: %d claimable blocks, engine holds %d, kvtier %d", request.request_id, claimable, engine_blocks, hit)
        if hit <= engine_blocks:
            self._decisions[request.request_id] = (engine_blocks, HitDecision(0, 0, 0.0, 0.0, "none"), 0)
            return 0, False
        in_host = min(self.mirror.peek(toks, namespace=self._namespaces(tenant)[0]).num_blocks, hit)
        tiers = np.full(hit, _DISK, dtype=np.uint8)
        tiers[:in_host] = _HOST
        decision = self.cost.decide(tiers, engine_blocks, always=self.cfg.hit_policy == "always")
        logger.debug("kvtier: request %s: %s", request.request_id, decision)
        self._decisions[request.request_id] = (engine_blocks, decision, in_host)
        return decision.blocks * bs, False

    def _extends_into_save_in_flight(self, tenant: str, toks: Any, have: int) -> bool:
        """Whether a save in flight holds block ``have`` of ``toks`` (whole chain up to it equal): the hit may grow."""
        n = (have + 1) * self.block_size
        if n > len(toks):
            return False
        last = slice(n - self.block_size, n)  # compared first: unrelated prompts differ there (shared heads do not)
        return any(
            p.tenant == tenant
            and p.end > have
            and np.array_equal(p.tokens[last], toks[last])
            and np.array_equal(p.tokens[:n], toks[:n])
            for p in self._in_flight.values()
        )

    def saves_in_flight(self) -> bool:
        """True while a save is not acknowledged by every worker (vLLM keeps stepping: the acks come with steps)."""
        if self._in_flight:
            now = time.monotonic()
            late = [sid for sid, p in self._in_flight.items() if now - p.planned_at > SAVE_ACK_TIMEOUT_S]
            for sid in late:
                logger.warning("kvtier: save %d not acknowledged after %.0f s; given up", sid, SAVE_ACK_TIMEOUT_S)
                del self._in_flight[sid]
        return bool(self._in_flight)

    def _record(self, decision: HitDecision) -> None:
        s = self.stats
        s.add("lookups", 1)
        if decision.reason == "none":
            return
        bs = self.block_size
        s.add("offered_tokens", decision.offered * bs)
        s.add("claimed_tokens", decision.blocks * bs)
        if decision.reason == "declined":
            s.add("declined_tokens", decision.offered * bs)
        s.add(f"decision_{decision.reason}", 1)
        if decision.blocks:
            s.add("est_load_ms", decision.est_load_s * 1e3)
            s.add("est_prefill_saved_ms", decision.est_prefill_s * 1e3)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        req_id = request.request_id
        r = self._reqs.get(req_id)
        if r is None:
            r = self._reqs[req_id] = _Req(request, request.cache_salt or "")
        engine_blocks, decision, in_host = self._decisions.pop(req_id, (0, None, 0))
        if decision is not None:
            self._record(decision)
        if num_external_tokens <= 0:
            return
        bs = self.block_size
        if num_external_tokens % bs or decision is None or num_external_tokens > decision.blocks * bs:
            raise RuntimeError(
                f"kvtier: the engine asked to load {num_external_tokens} tokens for request {req_id}, which is not "
                f"what the connector offered ({0 if decision is None else decision.blocks * bs})"
            )
        n = num_external_tokens // bs
        block_ids = list(blocks.get_block_ids()[0][engine_blocks : engine_blocks + n])
        if len(block_ids) != n:
            raise RuntimeError(f"kvtier: request {req_id} has {len(block_ids)} blocks allocated for a load of {n}")
        r.load = LoadSpec(engine_blocks, block_ids)
        host = max(0, min(in_host, engine_blocks + n) - engine_blocks)
        self._sources[req_id] = (host * bs, (n - host) * bs)
        # the workers' host tier will hold (and touch) the loaded prefix
        self.mirror.match(self._tokens(request, (engine_blocks + n) * bs), namespace=self._namespaces(r.tenant)[0])

    def hit_sources(self, request: Any, num_external_tokens: int) -> tuple[int, int]:
        """Estimated (host, disk) split of the tokens the request loads (the workers' tier, from the host mirror)."""
        host, disk = self._sources.pop(request.request_id, (0, num_external_tokens))
        if host + disk != num_external_tokens:
            return 0, num_external_tokens
        return host, disk

    def build_connector_meta(self, scheduler_output: Any, block_ids_of: Any) -> KVTierConnectorMetadata:
        """This step's plan. ``block_ids_of(req_id)`` gives the request's engine block ids (first KV group)."""
        bs = self.block_size
        meta = KVTierConnectorMetadata(num_scheduled_tokens=int(scheduler_output.total_num_scheduled_tokens))
        computed: dict[str, int] = {nr.req_id: nr.num_computed_tokens for nr in scheduler_output.scheduled_new_reqs}
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            computed[req_id] = cached.num_computed_tokens[i]
        for req_id, n_sched in scheduler_output.num_scheduled_tokens.items():
            r = self._reqs.get(req_id)
            if r is None:
                continue
            request = r.request
            known = len(request.all_token_ids)
            start = computed.get(req_id, request.num_computed_tokens)
            if start < r.saved_blocks * bs:
                # The engine recomputes blocks whose save was planned (a failed load, a preemption): their saves may
                # have been skipped (the worker never saves KV that a failed load left invalid), so plan them again.
                r.saved_blocks = start // bs
            end = start + int(n_sched)
            limit = known if self.cfg.save_generated else request.num_prompt_tokens
            save_end = min(end, limit) // bs
            step = ReqStep(req_id, r.tenant, r.sent_tokens, [])
            need = 0
            if r.load is not None:
                step.load = r.load
                need = (r.load.engine_blocks + len(r.load.block_ids)) * bs
                meta.num_loaded_tokens += len(r.load.block_ids) * bs
                r.load = None
            if save_end > r.saved_blocks:
                ids = list(block_ids_of(req_id)[:save_end])
                if len(ids) == save_end:
                    step.save = SaveSpec(save_end, ids, self._next_save_id)
                    toks = self._tokens(request, save_end * bs)
                    self._in_flight[self._next_save_id] = _SaveInFlight(r.tenant, toks, save_end, time.monotonic())
                    self._next_save_id += 1
                    need = max(need, save_end * bs)
                    r.saved_blocks = save_end
                    self.mirror.insert(toks, namespace=self._namespaces(r.tenant)[0])
            if step.load is None and step.save is None:
                continue
            if need > r.sent_tokens:
                step.tokens = list(request.all_token_ids[r.sent_tokens : need])
                r.sent_tokens = need
            meta.steps.append(step)
        meta.finished = self._finished
        self._finished = []
        return meta

    def update_connector_output(self, worker_meta: Any, events: Any) -> None:
        if isinstance(worker_meta, KVTierWorkerMetadata):
            for save_id, held in worker_meta.saves:
                self._acknowledge(save_id, held)
            for tier, nbytes, seconds in worker_meta.loads:
                self.cost.observe_load(tier, nbytes, seconds)
            for seconds in worker_meta.load_fixed:
                self.cost.observe_load_fixed(seconds)
            for tokens, seconds in worker_meta.forwards:
                self.cost.observe_prefill(tokens, seconds)
        if events is not None:
            self.events.extend(events.get_all_events())

    def _acknowledge(self, save_id: int, held: int) -> None:
        p = self._in_flight.get(save_id)
        if p is None:
            return  # given up (SAVE_ACK_TIMEOUT_S)
        p.acks += 1
        p.held = min(p.held, held)
        if p.acks < self._world:
            return
        del self._in_flight[save_id]
        if p.held > 0:
            self.known.insert(p.tokens[: p.held * self.block_size], namespace=self._namespaces(p.tenant)[0])

    def request_finished(self, request: Any) -> None:
        req_id = request.request_id
        self._decisions.pop(req_id, None)
        self._sources.pop(req_id, None)
        if self._reqs.pop(req_id, None) is not None:
            self._finished.append(req_id)

    def take_events(self) -> list[Any]:
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        self.index.close()
        self.known.close()
        self.mirror.close()
