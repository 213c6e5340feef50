"""KVTierHiCacheStorage against SGLang's real host pools, built through SGLang's backend factory."""

from __future__ import annotations

import hashlib
import sys
import textwrap
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from kvtier import InvalidArgumentError, KvtierTypeError
from kvtier.integrations.sglang import KVTierHiCacheStorage, parse_extra_config
from pools import PAGE, backend, mha_pool, mla_pool, storage_config

# Every host layout SGLang 0.5.23's MHA and MLA pools build on CPU (page_first_kv_split is Ascend's, over split
# NPU buffers).
MHA_LAYOUTS = ["page_first", "layer_first", "page_first_direct", "page_head", "page_unified"]
MLA_LAYOUTS = ["page_first", "layer_first", "page_first_direct", "page_unified"]
POOLS = [("mha", lay) for lay in MHA_LAYOUTS] + [("mla", lay) for lay in MLA_LAYOUTS]
ONE_RUN = {("mla", "page_first"), ("mla", "page_first_direct"), ("mla", "page_unified"), ("mha", "page_unified")}


def make_pool(kind: str, layout: str, dtype: torch.dtype = torch.bfloat16) -> Any:
    return (mla_pool if kind == "mla" else mha_pool)(layout, dtype)


def keys(n: int, salt: str = "") -> list[str]:
    """Chained page hashes, as SGLang computes them (each over the previous one)."""
    out, prev = [], b""
    for i in range(n):
        prev = hashlib.sha256(prev + f"{salt}{i}".encode()).digest()
        out.append(prev.hex())
    return out


def slots(pool: Any, pages: int) -> torch.Tensor:
    got = pool.alloc(pages * PAGE)
    assert got is not None
    return got


def fill(pool: Any, idx: torch.Tensor, seed: int) -> None:
    """Seeded random KV in the whole pool (so the slots ``idx`` and every other slot differ from zeros)."""
    del idx
    g = torch.Generator().manual_seed(seed)
    pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape, generator=g).to(pool.dtype))


def page_data(pool: Any, idx: torch.Tensor) -> list[torch.Tensor]:
    """Each page's KV as SGLang reads it (``get_data_page``); SGLang has no page helper for ``page_unified``,
    whose page block is ``kv_buffer[page]`` (pool_host/page_unified.py: its C order is the byte order)."""
    if pool.layout == "page_unified":
        return [pool.kv_buffer[int(idx[i]) // PAGE].clone() for i in range(0, len(idx), PAGE)]
    return [pool.get_data_page(int(idx[i]), flat=True).clone() for i in range(0, len(idx), PAGE)]


@pytest.mark.parametrize(("kind", "layout"), POOLS)
def test_round_trip_partial_hits_reputs(tmp_path: Path, kind: str, layout: str) -> None:
    pool = make_pool(kind, layout)
    b = backend(pool, tmp_path)
    assert isinstance(b, KVTierHiCacheStorage)
    ks = keys(6)
    src = slots(pool, 6)
    fill(pool, src, 1)
    want = page_data(pool, src)
    assert b.batch_exists(ks) == 0
    assert b.batch_set_v1(ks[:4], src[: 4 * PAGE]) == [True] * 4
    assert b.batch_exists(ks) == 4
    written = b.store.stats().bytes_written
    assert b.batch_set_v1(ks[:4], src[: 4 * PAGE]) == [True] * 4  # re-put: nothing copied
    assert b.store.stats().bytes_written == written and b.get_stats()["set_present"] == 4
    dst = slots(pool, 6)
    before = page_data(pool, dst)
    got = b.batch_get_v1(ks, dst)
    assert got == [True] * 4 + [False] * 2
    after = page_data(pool, dst)
    assert all(torch.equal(a, w) for a, w in zip(after[:4], want[:4]))
    assert all(torch.equal(a, w) for a, w in zip(after[4:], before[4:]))  # the misses are left alone
    # A lookup from the middle of the chain (prefix_keys elsewhere) finds the rest of the run.
    assert b.batch_exists(ks[2:]) == 2
    # One-run layouts move between kvtier and the pool's pages directly; the others through staging.
    st = b.get_stats()
    path = "direct_pages" if (kind, layout) in ONE_RUN else "staged_pages"
    other = "staged_pages" if path == "direct_pages" else "direct_pages"
    assert st[path] == 8 and st[other] == 0, st
    b.close()


@pytest.mark.parametrize("layout", ["page_first", "page_first_direct"])
def test_mla_pages_are_one_run_moved_in_place(tmp_path: Path, layout: str) -> None:
    """MLA page-first pools: SGLang's own page map (get_page_buffer_meta) has one run per page, of kvtier's
    block size; pages in any order and in scattered groups land in place with no staging copy."""
    pool = mla_pool(layout)
    b = backend(pool, tmp_path)
    src = slots(pool, 8)
    ptrs, sizes = pool.get_page_buffer_meta(src)
    assert len(ptrs) == 8 and set(sizes) == {b._pages.page_bytes}
    fill(pool, src, 5)
    want = page_data(pool, src)
    ks = keys(8)
    # Pages out of order and split: three groups of consecutive pages, then the store holds all eight.
    order = torch.tensor([5, 6, 7, 0, 1, 3, 2, 4])
    by_page = src.view(8, PAGE)
    assert all(b.batch_set_v1([ks[i] for i in order], by_page[order].reshape(-1)))
    assert b.batch_exists(ks) == 8
    dst = slots(pool, 8)
    perm = torch.tensor([7, 0, 1, 2, 6, 5, 4, 3])
    assert b.batch_get_v1(ks, dst.view(8, PAGE)[perm].reshape(-1)) == [True] * 8
    got = page_data(pool, dst.view(8, PAGE)[perm].reshape(-1))
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    st = b.get_stats()
    assert st["direct_pages"] == 16 and st["staged_pages"] == 0
    # A page-first MHA pool has a K and a V run per page: staged.
    assert len(mha_pool("page_first").get_page_buffer_meta(torch.arange(PAGE))[0]) == 2
    b.close()


def test_mla_is_rank_replicated_and_only_the_writer_writes(tmp_path: Path) -> None:
    """MLA pools hold the same pages on every tp rank: not bound to the rank, written by rank 0 only."""
    # One LMDB environment per process: the ranks (separate processes in SGLang) take turns on the folder.
    writer_pool, reader_pool = mla_pool("page_first"), mla_pool("page_first")
    ks = keys(3)
    r = backend(reader_pool, tmp_path / "disk", tp_rank=1)
    assert not r.storage_config.is_storage_writer
    src = slots(reader_pool, 3)
    fill(reader_pool, src, 6)
    assert r.batch_set_v1(ks, src) == [True] * 3  # rank 1 reports success and writes nothing
    assert r.get_stats()["set_skipped"] == 3 and r.batch_exists(ks) == 0
    r.close()
    w = backend(writer_pool, tmp_path / "disk", tp_rank=0)
    assert w.storage_config.is_storage_writer and w.batch_exists(ks) == 0
    wsrc = slots(writer_pool, 3)
    fill(writer_pool, wsrc, 7)
    assert w.batch_set_v1(ks, wsrc) == [True] * 3
    w.close()
    r = backend(reader_pool, tmp_path / "disk", tp_rank=1)
    dst = slots(reader_pool, 3)
    assert r.batch_exists(ks) == 3  # rank 1 finds rank 0's pages in the shared folder
    assert r.batch_get_v1(ks, dst) == [True] * 3
    assert all(torch.equal(a, c) for a, c in zip(page_data(reader_pool, dst), page_data(writer_pool, wsrc)))
    r.close()
    # An MHA pool is bound to its rank: rank 1 never sees rank 0's pages.
    m0, m1 = mha_pool("page_first"), mha_pool("page_first")
    b0 = backend(m0, tmp_path / "mha", tp_rank=0)
    s0 = slots(m0, 3)
    fill(m0, s0, 8)
    assert all(b0.batch_set_v1(ks, s0))
    b0.close()
    b1 = backend(m1, tmp_path / "mha", tp_rank=1)
    assert b1.batch_exists(ks) == 0 and b1.batch_set_v1(ks, slots(m1, 3)) == [True] * 3  # and writes its own
    assert b1.get_stats()["set_stored"] == 3
    b1.close()


def test_unsupported_layout_is_refused_naming_it(tmp_path: Path) -> None:
    pool = mha_pool("page_first")
    pool.layout = "page_first_kv_split"  # Ascend's split-buffer layout: no kv_buffer kvtier can address
    with pytest.raises(InvalidArgumentError, match="page_first_kv_split"):
        backend(pool, tmp_path)


def test_restart_serves_the_folder_and_isolates_ranks_models_layouts(tmp_path: Path) -> None:
    pool = mha_pool("page_first")
    b = backend(pool, tmp_path)
    ks = keys(3)
    src = slots(pool, 3)
    fill(pool, src, 2)
    want = page_data(pool, src)
    assert all(b.batch_set_v1(ks, src))
    b.close()
    fresh = mha_pool("page_first")
    c = backend(fresh, tmp_path)
    dst = slots(fresh, 3)
    assert c.batch_get_v1(ks, dst) == [True] * 3
    assert all(torch.equal(a, w) for a, w in zip(page_data(fresh, dst), want))
    c.close()
    for kw in ({"tp_rank": 1}, {"model": "other"}, {"revision": "v2"}):
        o = backend(mha_pool("page_first"), tmp_path, **kw)
        assert o.batch_exists(ks) == 0, kw
        o.close()
    o = backend(mha_pool("layer_first"), tmp_path)
    assert o.batch_exists(ks) == 0  # a layout mismatch is a miss, never wrong bytes
    o.close()
    o = backend(mha_pool("page_first", torch.float16), tmp_path)
    assert o.batch_exists(ks) == 0  # another KV dtype
    o.close()


def test_cache_salt_isolation(tmp_path: Path) -> None:
    pool = mha_pool("page_first")
    b = backend(pool, tmp_path)
    src = slots(pool, 2)
    fill(pool, src, 3)
    b.batch_set_v1(keys(2, salt="tenant-a"), src)
    assert b.batch_exists(keys(2, salt="tenant-a")) == 2
    assert b.batch_exists(keys(2, salt="tenant-b")) == 0  # SGLang folds cache_salt into the page hash
    b.close()


def test_corrupt_payload_is_a_miss_and_counted(tmp_path: Path) -> None:
    import lmdb

    pool = mha_pool("page_first")
    b = backend(pool, tmp_path)
    ks = keys(4)
    src = slots(pool, 4)
    fill(pool, src, 4)
    b.batch_set_v1(ks, src)
    b.store.flush(host=True)
    import numpy as np

    arr = np.frombuffer(b"".join(bytes.fromhex(k) for k in ks), np.uint8).reshape(-1, 32)
    victim = b.store._core.keys_block_keys(b.store._ns(None), arr)[2].tobytes()
    b.close()
    env = lmdb.open(str(tmp_path), max_dbs=4, map_size=1 << 30)
    with env.begin(write=True) as txn:
        db = env.open_db(b"blocks", txn=txn)
        val = bytes(txn.get(victim, db=db))
        txn.put(victim, bytes(x ^ 0x5A for x in val), db=db)
    env.close()
    fresh = mha_pool("page_first")
    c = backend(fresh, tmp_path, host_capacity=1)
    assert c.batch_get_v1(ks, slots(fresh, 4)) == [True, True, False, False]
    assert c.get_stats()["disk_corrupted"] == 1
    assert c.batch_exists(ks) == 2
    c.close()


def test_data_path_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pool = mha_pool("page_first")
    b = backend(pool, tmp_path)
    bad = torch.arange(3)  # not a whole page of slots
    assert b.batch_set_v1(keys(1), bad) == [False]
    assert b.batch_set_v1(keys(1), bad) == [False]
    assert b.batch_get_v1(keys(1), bad) == [False]
    assert b.batch_exists(["not hex"]) == 0
    assert b.get_stats()["errors"] == 4
    assert sum("batch_set_v1 failed" in r.getMessage() for r in caplog.records) == 1  # logged once
    b.close()


def test_extra_config_named_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="disk_path'] is required"):
        parse_extra_config({"backend_name": "kvtier"})
    with pytest.raises(InvalidArgumentError, match="unknown key 'host_capacty'; did you mean 'host_capacity'"):
        parse_extra_config({"disk_path": str(tmp_path), "host_capacty": "1G"})
    with pytest.raises(InvalidArgumentError, match=r"\['host_policy'\]"):
        parse_extra_config({"disk_path": str(tmp_path), "host_policy": "fifo"})
    with pytest.raises(KvtierTypeError, match=r"\['disk_capacity'\]"):
        parse_extra_config({"disk_path": str(tmp_path), "disk_capacity": [1]})
    with pytest.raises(InvalidArgumentError, match="host_ttl_s"):
        parse_extra_config({"disk_path": str(tmp_path), "host_policy": "ttl"})
    # Nothing is opened before register_mem_pool_host.
    b = KVTierHiCacheStorage(storage_config(tmp_path / "later"), {})
    assert b.store is None and not (tmp_path / "later").exists()
    assert b.batch_exists(keys(1)) == 0 and b.get_stats()["errors"] == 1


def test_producer_and_consumer_processes(tmp_path: Path) -> None:
    tests = str(Path(__file__).parent)
    code = """
        import sys, torch
        sys.path.insert(0, sys.argv[2])
        from pools import backend, mha_pool, PAGE
        from test_backend import keys, fill, page_data
        pool = mha_pool("page_first")
        b = backend(pool, sys.argv[1])
        idx = pool.alloc(5 * PAGE)
        if sys.argv[3] == "put":
            fill(pool, idx, 9)
            assert all(b.batch_set_v1(keys(5), idx))
        else:
            assert b.batch_exists(keys(5)) == 5
            assert b.batch_get_v1(keys(5), idx) == [True] * 5
        torch.save(page_data(pool, idx), sys.argv[4])
        b.close()
    """
    outs = []
    for role in ("put", "get"):
        out = tmp_path / f"{role}.pt"
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "disk"), tests, role, str(out)],
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(torch.load(out))
    assert all(torch.equal(a, b) for a, b in zip(*outs))
