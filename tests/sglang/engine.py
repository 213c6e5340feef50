"""SGLang's own cache machinery on CPU, around kvtier's backend: the runtime context, a device KV pool and its
host pool, the real ``HiCacheController`` (and, in test_radix.py, the real ``UnifiedRadixCache``).

No SGLang engine starts on this machine (the CPU engine needs sgl_kernel's CPU build, not on PyPI). What runs here
is SGLang 0.5.23's code from the device pool down, with its device set to "cpu" and its host pool unpinned (no CUDA
to page-lock with): both are ordinary constructor arguments, nothing is patched for them. The one shim, used only
by the radix tree tests, is documented where it is installed (``cpu_device_host_copies``). None of this is product
code: it lives in tests/sglang/ only.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch
from sglang.srt import runtime_context as rc
from sglang.srt.managers.cache_controller import HiCacheController
from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost
from sglang.srt.server_args import ServerArgs

L, H, D, PAGE, TOKENS = 2, 2, 8, 4, 64
LORA, ROPE = 6, 2


def extra_config(disk: Path, **kw: Any) -> dict[str, Any]:
    """What ``--hicache-storage-backend-extra-config`` carries for kvtier."""
    return {"backend_name": "kvtier", "module_path": "kvtier.integrations.sglang", "class_name": "KVTierHiCacheStorage",
            "interface_v1": 1, "disk_path": str(disk), "host_capacity": "64K", **kw}


def publish(disk: Path, layout: str = "page_first", **extra: Any) -> ServerArgs:
    """Publishes SGLang's process-wide runtime context for one CPU rank (tp 1, rank 0), as a scheduler process
    does at start, with HiCache on and kvtier as its storage backend."""
    # "dummy" is SGLang's placeholder model path: the context resolves without a model download.
    sa = ServerArgs(model_path="dummy", device="cpu", page_size=PAGE, enable_hierarchical_cache=True,
                    hicache_mem_layout=layout, hicache_write_policy="write_through",
                    hicache_storage_backend="dynamic",
                    hicache_storage_backend_extra_config=json.dumps(extra_config(disk, **extra)))
    rc.publish(sa, role="test", ranks=rc.SpawnRanks(world_rank=0))
    return sa


def device_pool(kind: str) -> Any:
    """SGLang's device KV pool, on the CPU."""
    if kind == "mla":
        return MLATokenToKVPool(TOKENS, PAGE, torch.bfloat16, LORA, ROPE, L, "cpu", False)
    return MHATokenToKVPool(TOKENS, PAGE, torch.bfloat16, H, D, L, "cpu", False)


def host_pool(dev: Any, layout: str) -> Any:
    """SGLang's host pool over ``dev``'s buffers, unpinned (pin_memory=False: no CUDA here)."""
    common = dict(pin_memory=False, device="cpu", device_capacity_tokens=TOKENS, start_layer=0, end_layer=L)
    if isinstance(dev, MLATokenToKVPool):
        return MLATokenToKVPoolHost(dev._mla_buffer_info(), 2.0, 0, PAGE, layout, target_layer_num=L, **common)
    return MHATokenToKVPoolHost(dev._mha_buffer_info(), 2.0, 0, PAGE, layout, **common)


def controller(kind: str, layout: str, disk: Path, **extra: Any) -> HiCacheController:
    """The real HiCacheController, attached to kvtier through SGLang's backend factory (interface v1: its
    zero-copy page functions), with its prefetch, prefetch-IO, prefetch-sync and backup threads running."""
    dev = device_pool(kind)
    alloc = PagedTokenToKVPoolAllocator(TOKENS, PAGE, torch.bfloat16, "cpu", dev, False)
    return HiCacheController(alloc, host_pool(dev, layout), PAGE, None, threading.Event(),
                             write_policy="write_through", storage_backend="dynamic", model_name="kvtier-test-model",
                             storage_backend_extra_config=extra_config(disk, **extra))
