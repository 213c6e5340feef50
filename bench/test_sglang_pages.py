"""SGLang HiCache backend: pages moved straight between kvtier and the host pool's runs, against the staging path.

Workload: SGLang's real ``MHATokenToKVPoolHost`` (sglang 0.5.23, CPU, unpinned) with a Llama-8B-like page scaled
down in layers: 64 tokens x 8 KV heads x 128 dims fp16, 8 layers (Llama 3 8B has 32: a quarter, so a batch fits
this machine beside its neighbours), i.e. a 1 MiB K run and a 1 MiB V run per page, 2 MiB a page. A batch is 128
pages (256 MiB) at scattered pool pages, as SGLang's controller hands them over.

Subjects, interleaved in every round, for the host layouts ``page_first`` (SGLang's default) and
``page_first_direct``:

- ``batch_get_v1`` of 128 pages held in kvtier's host tier: direct (kvtier copies each page's K and V runs into the
  pool, ``Store.block_runs``) against the staging path (``load_keys`` into a staging array, then one torch
  ``index_copy_`` into the pool: what the backend did before).
- ``batch_set_v1`` of 128 new pages (the store cleared between rounds, untimed): direct against staging (one torch
  ``index_select`` into a staging array, then ``insert_keys``).

Gate: direct >= 1.0x staging for each (ratio of medians; the staging path copies every byte twice). Absolute
times are reported, never asserted. Skipped without sglang (its own virtual environment: .ci/run).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from typing import Any

import pytest
from harness import gate, interleaved

os.environ.setdefault("SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND", "python")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch = pytest.importorskip("torch")
    pytest.importorskip("sglang.srt.mem_cache.pool_host.mha")
    from sglang.srt.mem_cache.device_pool_info import KVBuffers, KVBufferLayout, MHABufferInfo
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost

from kvtier.integrations.sglang import KVTierHiCacheStorage

PAGE, HEADS, DIM, LAYERS = 64, 8, 128, 8
BATCH = 128
POOL_PAGES = 2 * BATCH + 1  # SGLang's padding page included
MIN_RATIO = 1.0


def host_pool(layout: str) -> Any:
    k = tuple(torch.zeros(PAGE, HEADS, DIM, dtype=torch.float16) for _ in range(LAYERS))
    v = tuple(torch.zeros(PAGE, HEADS, DIM, dtype=torch.float16) for _ in range(LAYERS))
    info = MHABufferInfo(
        buffers=KVBuffers(k=k, v=v, k_data_ptrs=torch.tensor([t.data_ptr() for t in k]),
                          v_data_ptrs=torch.tensor([t.data_ptr() for t in v]), layout=KVBufferLayout.NHD),
        page_size=PAGE, head_num=HEADS, head_dim=DIM, v_head_dim=DIM, dtype=torch.float16,
        device=torch.device("cpu"),
    )
    return MHATokenToKVPoolHost(info, 1.0, 0, PAGE, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=PAGE, start_layer=0, end_layer=LAYERS,
                                host_token_capacity=POOL_PAGES * PAGE)


def backend(pool: Any, disk: str) -> KVTierHiCacheStorage:
    page_bytes = 2 * LAYERS * PAGE * HEADS * DIM * 2
    cfg = {"backend_name": "kvtier", "module_path": "kvtier.integrations.sglang",
           "class_name": "KVTierHiCacheStorage", "interface_v1": 1, "disk_path": disk,
           "host_capacity": str((BATCH + 2) * page_bytes), "disk_capacity": str(4 * BATCH * page_bytes)}
    sc = HiCacheStorageConfig(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
                              is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
                              model_name="bench", extra_config=cfg)
    b = KVTierHiCacheStorage(sc)
    b.register_mem_pool_host(pool)
    return b


@pytest.mark.parametrize("layout", ["page_first", "page_first_direct"])
def test_direct_runs_vs_staging(benchmark: Any, report: Any, layout: str) -> None:
    pool = host_pool(layout)
    g = torch.Generator().manual_seed(3)
    pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape, generator=g, dtype=torch.float32).to(torch.float16))
    perm = torch.randperm(POOL_PAGES, generator=g)
    src_pages, dst_pages = perm[:BATCH], perm[BATCH : 2 * BATCH]  # scattered, apart
    as_slots = lambda p: (p[:, None] * PAGE + torch.arange(PAGE)).reshape(-1)  # noqa: E731
    src, dst = as_slots(src_pages), as_slots(dst_pages)
    keys = [hashlib.sha256(f"page{i}".encode()).hexdigest() for i in range(BATCH)]
    with tempfile.TemporaryDirectory() as disk:
        b = backend(pool, disk)
        assert b._pages.runs_per_page == 2 and b._pages.page_bytes == 2 * 1024 * 1024
        assert all(b.batch_set_v1(keys, src))
        ref = [pool.get_data_page(int(src[i * PAGE]), flat=True).clone() for i in (0, BATCH // 2, BATCH - 1)]
        dst_index = b._pages.index(dst, BATCH)

        def get(direct: bool) -> None:
            b._direct = direct
            assert b.batch_get_v1(keys, dst) == [True] * BATCH

        def put(direct: bool) -> None:
            b._direct = direct
            assert all(b.batch_set_v1(keys, src))

        def fresh() -> None:
            b.clear()

        for direct in (True, False):  # both paths land the same bytes
            pool.kv_buffer.index_fill_(b._pages.axis, dst_index, 0)
            get(direct)
            got = [pool.get_data_page(int(dst[i * PAGE]), flat=True) for i in (0, BATCH // 2, BATCH - 1)]
            assert all(torch.equal(x, y) for x, y in zip(got, ref)), direct
        t = interleaved(
            {"get_direct": lambda: get(True), "get_staged": lambda: get(False),
             "set_direct": lambda: put(True), "set_staged": lambda: put(False)},
            rounds=7, warmup=1,
            setup={"set_direct": fresh, "set_staged": fresh},
        )
        benchmark.pedantic(lambda: get(True), rounds=3, warmup_rounds=0)
        st = b.get_stats()
        b.store.close(persist=False)  # nothing to keep
    assert st["errors"] == 0 and st["direct_pages"] > 0 and st["staged_pages"] > 0
    gd, gs, sd, ss = (t[n].median for n in ("get_direct", "get_staged", "set_direct", "set_staged"))
    batch_bytes = BATCH * 2 * 1024 * 1024
    report(
        benchmark,
        **{
            "layout": layout,
            "batch": f"{BATCH} pages x 2 MiB (K run + V run of 1 MiB)",
            "get direct median ms": gd * 1e3,
            "get staged median ms": gs * 1e3,
            "set direct median ms": sd * 1e3,
            "set staged median ms": ss * 1e3,
            "get direct GB/s": batch_bytes / gd / 1e9,
            "set direct GB/s": batch_bytes / sd / 1e9,
            "ratio get staged / direct time": gs / gd,
            "ratio set staged / direct time": ss / sd,
            **gate(f"{layout} get direct vs staged", gs / gd, MIN_RATIO),
            **gate(f"{layout} set direct vs staged", ss / sd, MIN_RATIO),
        },
    )
    assert gs / gd >= MIN_RATIO and ss / sd >= MIN_RATIO, (gs / gd, ss / sd)
