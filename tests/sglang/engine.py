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


# --------------------------------------------------------------------------------------------- shims (tests only)
# SGLang's device <-> host KV copies are CUDA / JIT kernels (sgl_kernel's transfer_kv_*), absent on a CPU machine.
# These two stand-ins do the same copies with torch indexing, for the host layouts the radix tree tests use. They
# replace the host pool classes' two "physical" transfer hooks (pool_host/base.py), which SGLang's L2 transfer
# engine calls; nothing on the storage path (HiCacheController's storage threads, the backend) is replaced.


def _host_rows(host: Any, layer: int) -> tuple[torch.Tensor, ...]:
    """Views of one layer of the host pool, indexed by host token slot: (K, V) for MHA, (latent,) for MLA."""
    if host.layout not in ("page_first", "layer_first"):
        raise NotImplementedError(f"the CPU copy shim covers page_first and layer_first, not {host.layout}")
    bufs = (host.kv_buffer,) if isinstance(host, MLATokenToKVPoolHost) else (host.k_buffer, host.v_buffer)
    return tuple(b[:, layer] if host.layout == "page_first" else b[layer] for b in bufs)


def _device_rows(dev: Any, layer: int) -> tuple[torch.Tensor, ...]:
    if isinstance(dev, MLATokenToKVPool):
        return (dev.kv_buffer[layer],)
    return dev.k_buffer[layer], dev.v_buffer[layer]


def _backup_from_device(host: Any, device_pool: Any, host_indices: torch.Tensor, device_indices: torch.Tensor,
                        io_backend: str) -> None:
    h, d = host_indices.long().cpu(), device_indices.long().cpu()
    for layer in range(host.layer_num):
        for dst, src in zip(_host_rows(host, layer), _device_rows(device_pool, layer)):
            dst[h] = src[d].to(dst.dtype)


def _load_to_device(host: Any, device_pool: Any, host_indices: torch.Tensor, device_indices: torch.Tensor,
                    layer_id: int, io_backend: str, *, is_draft: bool = False) -> None:
    h, d = host_indices.long().cpu(), device_indices.long().cpu()
    for src, dst in zip(_host_rows(host, layer_id), _device_rows(device_pool, layer_id)):
        dst[d] = src[h].to(dst.dtype)


def cpu_device_host_copies(monkeypatch: Any) -> None:
    """Installs the torch stand-ins for SGLang's device <-> host kernels, and leaves host pools unpinned:
    SGLang's assembler builds them with pin_memory=True, whose cudaHostRegister needs a CUDA driver; page
    locking changes how fast a copy runs, not its bytes."""
    import sglang.srt.mem_cache.pool_host.common as host_common

    for cls in (MHATokenToKVPoolHost, MLATokenToKVPoolHost):
        monkeypatch.setattr(cls, "backup_from_device_all_layer_physical", _backup_from_device)
        monkeypatch.setattr(cls, "load_to_device_per_layer_physical", _load_to_device)
    monkeypatch.setattr(host_common, "_cuda_host_register", lambda *a, **k: None)
