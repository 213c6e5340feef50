"""``KVTierConnector``: vLLM's v1 KV-connector interface over :mod:`scheduler` and :mod:`worker`.

vLLM builds two instances: role SCHEDULER in the engine-core process and role WORKER in each worker process.
They never share memory: the scheduler's metadata tells the workers what to load and save each step, the workers'
metadata (vLLM's connector output) tells the scheduler which saves are done, and the disk folder (``disk_path``)
keeps what earlier processes stored. Saves run off the engine step (:mod:`saver`). See docs/vllm.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorRole
from vllm.logger import init_logger

from kvtier.integrations.vllm.config import KVTierConnectorConfig, parse_extra_config
from kvtier.integrations.vllm.meta import KVTierConnectorMetadata, base_namespace_fields
from kvtier.integrations.vllm.scheduler import SchedulerSide
from kvtier.integrations.vllm.stats import KVTierConnectorStats, KVTierPromMetrics
from kvtier.integrations.vllm.worker import WorkerSide

if TYPE_CHECKING:
    from vllm.config import VllmConfig

__all__ = ["KVTierConnector"]

logger = init_logger("vllm.kvtier")


def _spec_desc(kv_cache_config: Any) -> tuple[str, int, list[str], int]:
    """(attention-spec fingerprint, bytes per block over all layers, layer order, block size) of the KV cache."""
    groups = kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        raise ValueError(
            f"KVTierConnector supports models with one KV cache group; this one has {len(groups)} "
            "(sliding-window or hybrid models with the hybrid KV cache manager)"
        )
    g = groups[0]
    spec = g.kv_cache_spec
    layers = list(g.layer_names)
    page = int(spec.page_size_bytes)
    desc = (
        f"{type(spec).__name__}:L{len(layers)}:bs{spec.block_size}:h{getattr(spec, 'num_kv_heads', '?')}"
        f":d{getattr(spec, 'head_size', '?')}:{str(getattr(spec, 'dtype', '?')).replace('torch.', '')}:p{page}"
    )
    return desc, page * len(layers), layers, int(spec.block_size)


class KVTierConnector(KVConnectorBase_V1):
    """kvtier's host and disk tiers as vLLM's external prefix cache (load on hit, save new full blocks).

    Extra config: :mod:`kvtier.integrations.vllm.config` (only ``disk_path`` is required).
    """

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.kvtier_config: KVTierConnectorConfig = parse_extra_config(self._kv_transfer_config.kv_connector_extra_config)
        if kv_cache_config is None:
            raise ValueError("KVTierConnector needs the engine's KVCacheConfig (vLLM >= 0.11 passes it)")
        pc = vllm_config.parallel_config
        if getattr(pc, "pipeline_parallel_size", 1) != 1:
            raise ValueError("KVTierConnector does not support pipeline parallelism yet (pipeline_parallel_size > 1)")
        desc, block_bytes, layers, block_size = _spec_desc(kv_cache_config)
        if block_size != vllm_config.cache_config.block_size:
            raise ValueError(f"KV cache spec block size {block_size} != cache_config.block_size")
        self._layers = layers
        self._num_blocks = int(kv_cache_config.num_blocks)
        fields = base_namespace_fields(
            vllm_config, self.kvtier_config.model, self.kvtier_config.revision, self.kvtier_config.tokenizer
        )
        world = int(pc.tensor_parallel_size)
        self._scheduler: SchedulerSide | None = None
        self._worker: WorkerSide | None = None
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler = SchedulerSide(
                self.kvtier_config,
                block_size=block_size,
                block_bytes=block_bytes,
                ns_fields=fields,
                spec_desc=desc,
                world=world,
            )
        else:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

            ev = vllm_config.kv_events_config
            self._worker = WorkerSide(
                self.kvtier_config,
                block_size=block_size,
                block_bytes=block_bytes,
                ns_fields=fields,
                spec_desc=desc,
                rank=int(get_tensor_model_parallel_rank()) if world > 1 else 0,
                world=world,
                events_enabled=bool(ev is not None and ev.enable_kv_cache_events),
            )
        logger.info(
            "KVTierConnector (%s): disk %s (%d bytes), host %d bytes, block %d bytes, namespace %s",
            role.name,
            self.kvtier_config.disk_path,
            self.kvtier_config.disk_capacity,
            self.kvtier_config.host_capacity,
            block_bytes,
            fields,
        )

    # ================================================================== worker side
    def _w(self) -> WorkerSide:
        if self._worker is None:
            raise RuntimeError("KVTierConnector: a worker-side method was called on the scheduler-side instance")
        return self._worker

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        self._w().register(kv_caches, self._num_blocks, self._layers)

    def handle_preemptions(self, kv_connector_metadata: Any) -> None:
        # called first in every step, before the forward: earlier steps' copies out of the KV pages finish here
        self._w().before_step()

    def bind_connector_metadata(self, connector_metadata: Any) -> None:
        super().bind_connector_metadata(connector_metadata)
        if isinstance(connector_metadata, KVTierConnectorMetadata):
            self._w().bind(connector_metadata)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, KVTierConnectorMetadata)
        self._w().start_load(meta)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads complete in start_load_kv, before the forward

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        return  # saves run once per step in wait_for_save, over all layers

    def wait_for_save(self) -> None:
        # starts this step's saves and returns; they are acknowledged through build_connector_worker_meta
        meta = self._get_connector_metadata()
        assert isinstance(meta, KVTierConnectorMetadata)
        self._w().save(meta)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        self._w().finished(finished_req_ids)
        return None, None

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._w().get_invalid_blocks()

    def get_kv_connector_stats(self) -> KVTierConnectorStats | None:
        if self._worker is not None:
            return self._worker.take_stats()
        return self._scheduler.stats.take() if self._scheduler is not None else None

    def get_kv_connector_kv_cache_events(self) -> Any:
        return self._w().take_events()

    def build_connector_worker_meta(self) -> Any:
        return self._w().take_worker_meta()

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.close()
        if self._scheduler is not None:
            self._scheduler.close()

    # ================================================================== scheduler side
    def _s(self) -> SchedulerSide:
        if self._scheduler is None:
            raise RuntimeError("KVTierConnector: a scheduler-side method was called on the worker-side instance")
        return self._scheduler

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        return self._s().get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        self._s().update_state_after_alloc(request, blocks, num_external_tokens)

    def get_external_cache_hit_sources(self, request: Any, num_external_tokens: int) -> dict[Any, int]:
        from vllm.v1.metrics.cache_hit_source import CacheHitSource

        if num_external_tokens <= 0:
            return {}
        host, disk = self._s().hit_sources(request, num_external_tokens)
        out = {CacheHitSource.HOST: host, CacheHitSource.DISK: disk}
        return {k: v for k, v in out.items() if v}

    def build_connector_meta(self, scheduler_output: Any) -> KVTierConnectorMetadata:
        manager = self._kv_cache_manager

        def block_ids_of(req_id: str) -> list[int]:
            if manager is None:
                raise RuntimeError("KVTierConnector: the scheduler did not bind its KV cache manager")
            return list(manager.get_block_ids(req_id)[0])

        return self._s().build_connector_meta(scheduler_output, block_ids_of)

    def update_connector_output(self, connector_output: Any) -> None:
        self._s().update_connector_output(connector_output.kv_connector_worker_meta, connector_output.kv_cache_events)

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        # The blocks may be freed at once: the copies out of them finish before the next step's forward
        # (handle_preemptions), and the rest of a save does not read them.
        self._s().request_finished(request)
        return False, None

    def has_pending_push_work(self) -> bool:
        # keeps the engine stepping (empty steps) until the workers acknowledge the saves in flight
        return self._scheduler is not None and self._scheduler.saves_in_flight()

    def take_events(self) -> Iterable[Any]:
        return self._s().take_events() if self._scheduler is not None else ()

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a best-effort cache: a dropped save is a future miss

    # ================================================================== stats classes
    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> KVTierConnectorStats:
        return KVTierConnectorStats(data=dict(data) if data else {})

    @classmethod
    def build_prom_metrics(
        cls,
        vllm_config: Any,
        metric_types: dict[type, type],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> KVTierPromMetrics:
        return KVTierPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)
