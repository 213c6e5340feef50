"""One role of the radix-tree restart test, run as its own process: ``python radix_roles.py ROLE ARGS_JSON``.

``produce``: SGLang's UnifiedRadixCache with HiCache (``init_hicache``: the assembler builds the host pool and the
HybridCacheController, which attaches kvtier through the backend factory) takes a request's KV on the device pool;
write-through copies it to the host pool, the controller's backup thread hands it to kvtier; the process saves the
request's device KV and detaches the backend (SGLang's shutdown path, which closes the store).

With ``remote_url`` in the arguments both roles' backends get kvtier's remote tier (a consumer case may name its
own ``disk`` folder: then only the server can serve it).

``consume``: for each case, a fresh tree in this process on the same folder (or the case's own): a device and host miss, a storage
prefetch (prefetch thread: batch_exists, IO thread: batch_get_v1), a load back from host to device; saves what
reached the device pool and the hit lengths.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from array import array
from pathlib import Path
from typing import Any

os.environ.setdefault("SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND", "python")
warnings.simplefilter("ignore")  # sglang's import-time GPU-kernel warnings (see conftest.py)

import pytest  # noqa: E402
import torch  # noqa: E402
from engine import PAGE, TOKENS, cpu_device_host_copies, device_pool, publish  # noqa: E402
from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.base_prefix_cache import CacheRequestHandle, InsertParams, MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.cache_init_params import CacheInitParams  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MLATokenToKVPool, ReqToTokenPool  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402
from sglang.srt.mem_cache.unified_cache.components import ComponentType  # noqa: E402
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache  # noqa: E402

DEADLINE_S = 30.0


def tree(kind: str, layout: str, disk: Path, remote_url: str | None = None) -> tuple[UnifiedRadixCache, Any]:
    """A scheduler's tree cache with HiCache and kvtier as its L3 (prefetch_threshold: one page; with
    ``remote_url``, kvtier's remote tier below its disk folder)."""
    remote = {} if remote_url is None else {"remote_url": remote_url}
    sa = publish(disk, layout, prefetch_threshold=PAGE, **remote)
    dev = device_pool(kind)
    alloc = PagedTokenToKVPoolAllocator(TOKENS, PAGE, torch.bfloat16, "cpu", dev, False)
    params = CacheInitParams(disable=False, req_to_token_pool=ReqToTokenPool(8, TOKENS, "cpu", False),
                             token_to_kv_pool_allocator=alloc, page_size=PAGE, tree_components=(ComponentType.FULL,))
    cache = UnifiedRadixCache(params)
    cache.init_hicache(sa, params)
    return cache, dev


def device_kv(dev: Any, idx: torch.Tensor) -> list[torch.Tensor]:
    bufs = dev.kv_buffer if isinstance(dev, MLATokenToKVPool) else [*dev.k_buffer, *dev.v_buffer]
    return [b[idx].clone() for b in bufs]


def until(what: str, done: Any, pump: Any) -> None:
    end = time.monotonic() + DEADLINE_S
    while not done():
        if time.monotonic() > end:
            raise TimeoutError(what)
        pump()
        time.sleep(0.005)


def produce(a: dict[str, Any]) -> dict[str, Any]:
    cache, dev = tree(a["kind"], a["layout"], Path(a["disk"]), a.get("remote_url"))
    toks = array("i", a["tokens"])
    idx = cache.token_to_kv_pool_allocator.alloc(len(toks))
    g = torch.Generator().manual_seed(a["seed"])
    for b in (dev.kv_buffer if isinstance(dev, MLATokenToKVPool) else [*dev.k_buffer, *dev.v_buffer]):
        b.copy_(torch.randn(b.shape, generator=g).to(b.dtype))
    cache.insert(InsertParams(key=RadixKey(toks, cache_salt=a["salt"]), value=idx))
    backend = cache.cache_controller.storage_backend
    pages = len(toks) // PAGE
    until("backup", lambda: backend.get_stats()["set_stored"] >= pages, cache.check_hicache_events)
    torch.save(device_kv(dev, idx), a["out"])
    stats = backend.get_stats()
    cache.shutdown()  # detaches the backend: its close() persists and closes the store
    return stats


def consume_one(a: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    cache, dev = tree(a["kind"], case["layout"], Path(case.get("disk", a["disk"])), a.get("remote_url"))
    toks = array("i", a["tokens"])

    def match() -> Any:
        return cache.match_prefix(MatchPrefixParams(key=RadixKey(toks, cache_salt=case["salt"])))

    first = match()
    handle = CacheRequestHandle("req", 0)
    cache.prefetch_from_storage(handle, first.last_host_node, toks, None, cache_salt=case["salt"])
    until("prefetch", lambda: cache.check_prefetch_progress(handle), cache.check_hicache_events)
    loaded_tokens, _ = cache.pop_prefetch_loaded_span(handle)
    second = match()
    out: dict[str, Any] = {"device_before": first.device_prefix_len, "host_before": first.host_hit_length,
                           "storage_loaded": loaded_tokens, "host_after_prefetch": second.host_hit_length}
    if second.host_hit_length:
        assert cache.load_back(second.last_host_node)
        cache.ready_to_load_host_cache()
        until("load back", lambda: match().device_prefix_len == second.host_hit_length, cache.loading_check)
    third = match()
    out["device_after_load"] = third.device_prefix_len
    if third.device_prefix_len:
        torch.save(device_kv(dev, cache.path_device_indices(third.last_device_node)), case["out"])
    out["backend"] = cache.cache_controller.storage_backend.get_stats()
    cache.shutdown()
    return out


def main() -> None:
    role, args = sys.argv[1], json.loads(sys.argv[2])
    mp = pytest.MonkeyPatch()
    cpu_device_host_copies(mp)
    if role == "produce":
        result: Any = produce(args)
    else:
        result = [consume_one(args, case) for case in args["cases"]]
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
