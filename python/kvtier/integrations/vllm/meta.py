"""What travels between the scheduler and the workers each step (pickled by vLLM), and the shared namespace.

Scheduler -> worker (:class:`KVTierConnectorMetadata`), per scheduled request with work this step::

    ReqStep(req_id, tenant, token_start, tokens,  # tokens[token_start:] of the request, not sent before
            load=LoadSpec | None,                  # blocks to copy from kvtier into the engine before the forward
            save=SaveSpec | None)                  # full blocks computed by this step's forward, to store after it

Worker -> scheduler (:class:`KVTierWorkerMetadata`): the saves the worker finished (each ``SaveSpec.save_id`` is
acknowledged exactly once by every worker, with the blocks its store holds), and measurements for the cost model
(load bandwidth per tier, fixed cost per load, forward-pass throughput).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata, KVConnectorWorkerMetadata

from kvtier import Namespace

__all__ = [
    "LoadSpec",
    "SaveSpec",
    "ReqStep",
    "KVTierConnectorMetadata",
    "KVTierWorkerMetadata",
    "base_namespace_fields",
    "rank_namespace",
]

#: Version of the payload format (layer order, per-block sub-tensor bytes); part of every namespace.
PAYLOAD_FORMAT = "kvtier-vllm-1"


@dataclass
class LoadSpec:
    """Copy kvtier's blocks ``engine_blocks .. engine_blocks + len(block_ids) - 1`` into engine blocks ``block_ids``."""

    engine_blocks: int  # leading blocks the engine already holds (its own prefix-cache hit)
    block_ids: list[int]


@dataclass
class SaveSpec:
    """After the forward, store the request's full blocks ``0 .. end_block - 1`` (engine blocks ``block_ids``)."""

    end_block: int
    block_ids: list[int]
    save_id: int = 0  # acknowledged in KVTierWorkerMetadata.saves


@dataclass
class ReqStep:
    req_id: str
    tenant: str
    token_start: int  # 0: (re)start the worker's copy of the tokens
    tokens: list[int]
    load: LoadSpec | None = None
    save: SaveSpec | None = None


@dataclass
class KVTierConnectorMetadata(KVConnectorMetadata):
    steps: list[ReqStep] = field(default_factory=list)
    num_scheduled_tokens: int = 0  # tokens this step's forward computes (prefill throughput)
    num_loaded_tokens: int = 0  # tokens loaded (not computed) this step
    finished: list[str] = field(default_factory=list)  # requests whose worker state can go


@dataclass
class KVTierWorkerMetadata(KVConnectorWorkerMetadata):
    #: (save id, blocks of the request the worker's store holds from block 0 on; 0 if the save failed)
    saves: list[tuple[int, int]] = field(default_factory=list)
    #: (tier, bytes, seconds) of loads served by one tier alone
    loads: list[tuple[int, int, float]] = field(default_factory=list)
    #: seconds per load outside the store's copy
    load_fixed: list[float] = field(default_factory=list)
    #: (tokens, seconds) of forward passes
    forwards: list[tuple[int, float]] = field(default_factory=list)

    def aggregate(self, other: KVConnectorWorkerMetadata) -> "KVTierWorkerMetadata":
        if isinstance(other, KVTierWorkerMetadata):
            self.saves.extend(other.saves)
            self.loads.extend(other.loads)
            self.load_fixed.extend(other.load_fixed)
            self.forwards.extend(other.forwards)
        return self

    def empty(self) -> bool:
        return not (self.saves or self.loads or self.load_fixed or self.forwards)


def base_namespace_fields(vllm_config: Any, model: str | None, revision: str | None, tokenizer: str | None) -> dict[str, str]:
    """The namespace fields both processes compute alike from the engine's config (tenant and rank aside).

    ``kv_layout`` binds the vLLM version, the device type, the engine's KV cache layout name, the attention spec of
    every layer (block size, heads, head size, dtype, page bytes) and kvtier's payload format, so a cache written for
    another layout, model shape or version is never served.
    """
    import vllm

    mc = vllm_config.model_config
    cc = vllm_config.cache_config
    kv_dtype = cc.cache_dtype if cc.cache_dtype not in (None, "auto") else str(mc.dtype).replace("torch.", "")
    tok = tokenizer or f"{mc.tokenizer}@{getattr(mc, 'tokenizer_revision', None) or ''}"
    device = getattr(vllm_config.device_config, "device_type", "") or ""
    layout_name = getattr(cc, "kv_cache_layout", None) or "default"
    return {
        "model": model or str(mc.model),
        "revision": revision if revision is not None else (mc.revision or ""),
        "tokenizer": tok,
        "kv_dtype": str(kv_dtype),
        "kv_layout": f"{PAYLOAD_FORMAT}|vllm-{vllm.__version__}|{device}|{layout_name}",
    }


def rank_namespace(fields: dict[str, str], spec_desc: str, rank: int, world: int, tenant: str) -> Namespace:
    """The namespace of one worker rank's shard of the KV (``spec_desc``: the attention specs of its layers)."""
    return Namespace(
        model=fields["model"],
        revision=fields["revision"],
        tokenizer=fields["tokenizer"],
        kv_dtype=fields["kv_dtype"],
        kv_layout=f"{fields['kv_layout']}|{spec_desc}|rank{rank}/{world}",
        tenant=tenant,
    )
