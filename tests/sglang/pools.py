"""SGLang host pools built from small CPU device buffers (SGLang's own classes, unpinned)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from sglang.srt.mem_cache.device_pool_info import KVBufferLayout, KVBuffers, MHABufferInfo, MLABufferInfo
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

L, H, D, PAGE, TOKENS = 2, 2, 8, 4, 64


def mha_pool(layout: str, dtype: torch.dtype = torch.bfloat16) -> MHATokenToKVPoolHost:
    k = tuple(torch.zeros(TOKENS, H, D, dtype=dtype) for _ in range(L))
    v = tuple(torch.zeros(TOKENS, H, D, dtype=dtype) for _ in range(L))
    info = MHABufferInfo(
        buffers=KVBuffers(k=k, v=v, k_data_ptrs=torch.tensor([t.data_ptr() for t in k]),
                          v_data_ptrs=torch.tensor([t.data_ptr() for t in v]), layout=KVBufferLayout.NHD),
        page_size=PAGE, head_num=H, head_dim=D, v_head_dim=D, dtype=dtype, device=torch.device("cpu"),
    )
    return MHATokenToKVPoolHost(info, 2.0, 0, PAGE, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=TOKENS, start_layer=0, end_layer=L)


def storage_config(disk: Path, *, tp_rank: int = 0, mla: bool = False, model: str = "m", layout: str = "page_first",
                   **extra: Any) -> HiCacheStorageConfig:
    cfg = {"backend_name": "kvtier", "module_path": "kvtier.integrations.sglang",
           "class_name": "KVTierHiCacheStorage", "interface_v1": 1, "disk_path": str(disk),
           "host_capacity": "64K", **extra}
    json.dumps(cfg)  # what --hicache-storage-backend-extra-config carries
    return HiCacheStorageConfig(tp_rank=tp_rank, tp_size=2, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
                                is_mla_model=mla, enable_storage_metrics=False,
                                is_page_first_layout=layout.startswith("page_first"), model_name=model,
                                extra_config=cfg)


def backend(pool: Any, disk: Path, **kw: Any) -> Any:
    """Through SGLang's factory, as the engine does, then attached to ``pool`` (an MLA pool: ``is_mla_model``)."""
    kw.setdefault("mla", isinstance(pool, MLATokenToKVPoolHost))
    b = StorageBackendFactory.create_backend("dynamic", storage_config(disk, layout=pool.layout, **kw), pool)
    b.register_mem_pool_host(pool)
    return b


def mla_pool(layout: str, dtype: torch.dtype = torch.bfloat16, lora: int = 6, rope: int = 2) -> MLATokenToKVPoolHost:
    """SGLang's MLA host pool (one latent row of ``lora + rope`` per token and layer) over CPU device rows."""
    rows = tuple(torch.zeros(TOKENS, 1, lora + rope, dtype=dtype) for _ in range(L))
    info = MLABufferInfo(buffers=rows, data_ptrs=torch.tensor([t.data_ptr() for t in rows]),
                         layer_indices=tuple(range(L)), device_layer_num=L, page_size=PAGE, kv_lora_rank=lora,
                         qk_rope_head_dim=rope, kv_cache_dim=lora + rope, dtype=dtype, device=torch.device("cpu"))
    return MLATokenToKVPoolHost(info, 2.0, 0, PAGE, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=TOKENS, start_layer=0, end_layer=L, target_layer_num=L)
