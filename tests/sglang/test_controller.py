"""SGLang's real HiCacheController threads driving kvtier's backend: backup (write_storage -> backup thread ->
batch_set_v1) and prefetch (prefetch -> prefetch thread: batch_exists -> the scheduler's host allocation ->
prefetch-IO thread: batch_get_v1 -> prefetch-sync thread acks), on SGLang's CPU device and host pools."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from engine import PAGE, controller, publish
from kvtier.integrations.sglang import KVTierHiCacheStorage
from sglang.srt.mem_cache.utils import get_storage_hash_str

CASES = [("mha", "page_first"), ("mha", "layer_first"), ("mla", "page_first"), ("mla", "page_first_direct")]


@pytest.fixture(autouse=True)
def _context(tmp_path: Path) -> None:
    publish(tmp_path / "disk")


@pytest.fixture
def ctl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    kind, layout = request.param
    c = controller(kind, layout, tmp_path / "disk")
    yield c
    c._stop_storage_threads()
    c.storage_backend.close()


def tokens(n_pages: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n_pages * PAGE))


def page_data(pool: Any, idx: torch.Tensor) -> list[torch.Tensor]:
    return [pool.get_data_page(int(idx[i]), flat=True).clone() for i in range(0, len(idx), PAGE)]


def backup(ctl: Any, toks: list[int]) -> tuple[torch.Tensor, int]:
    """Random KV in fresh host slots, backed up by the controller's backup thread; returns the slots and the
    tokens it reports written."""
    host = ctl.mem_pool_host
    idx = host.alloc(len(toks))
    g = torch.Generator().manual_seed(len(toks))
    host.kv_buffer.copy_(torch.randn(host.kv_buffer.shape, generator=g).to(host.dtype))
    op_id = ctl.write_storage(idx, toks, hash_value=get_storage_hash_str(toks, None, page_size=PAGE))
    op = ctl.ack_backup_queue.get(timeout=30)
    assert op.id == op_id
    return idx, op.completed_tokens


def prefetch(ctl: Any, toks: list[int]) -> tuple[int, int, torch.Tensor | None]:
    """One prefetch as the scheduler drives it: the prefetch thread's hit count, host slots for the hits, the
    IO thread's load; returns (tokens hit, tokens loaded, slots)."""
    op = ctl.prefetch("req", toks)
    hit = ctl.prefetch_hit_queue.get(timeout=30)
    assert hit is op
    if hit.storage_hit_count == 0:
        return 0, 0, None
    hit.host_indices = ctl.mem_pool_host.alloc(hit.storage_hit_count)
    ctl.prefetch_buffer.put(hit)
    loaded = 0
    while True:
        ack = ctl.ack_prefetch_queue.get(timeout=30)
        if ack.completed_req:
            return hit.storage_hit_count, loaded, hit.host_indices
        loaded = ack.completed_tokens


@pytest.mark.parametrize("ctl", CASES, indirect=True, ids=["-".join(c) for c in CASES])
def test_backup_then_prefetch_through_the_controller_threads(ctl: Any) -> None:
    b = ctl.storage_backend
    assert isinstance(b, KVTierHiCacheStorage)
    assert ctl.page_set_func == ctl._page_set_zero_copy and ctl.page_get_func == ctl._page_get_zero_copy
    stored = tokens(5)
    src, written = backup(ctl, stored)
    assert written == 5 * PAGE and b.get_stats()["set_stored"] == 5
    # The same pages again (SGLang may back a prefix up twice): acknowledged, nothing copied.
    _, again = backup(ctl, stored)
    assert again == 5 * PAGE and b.get_stats()["set_present"] == 5
    # A request sharing 3 of the 5 pages then diverging: the leading run is found and loaded, bytes equal.
    hit, loaded, dst = prefetch(ctl, stored[: 3 * PAGE] + tokens(4, start=5000))
    assert (hit, loaded) == (3 * PAGE, 3 * PAGE) and dst is not None
    assert all(torch.equal(a, w) for a, w in zip(page_data(ctl.mem_pool_host, dst), page_data(ctl.mem_pool_host, src)))
    # All five plus a page never stored.
    hit, loaded, dst = prefetch(ctl, stored + tokens(1, start=9000))
    assert (hit, loaded) == (5 * PAGE, 5 * PAGE) and dst is not None
    assert all(torch.equal(a, w) for a, w in zip(page_data(ctl.mem_pool_host, dst), page_data(ctl.mem_pool_host, src)))
    # Nothing shared: a miss.
    assert prefetch(ctl, tokens(3, start=7000))[:2] == (0, 0)
    assert b.get_stats()["errors"] == 0


@pytest.mark.parametrize("ctl", [("mha", "page_first")], indirect=True, ids=["mha-page_first"])
def test_a_failing_store_is_a_logged_miss_not_a_dead_thread(ctl: Any, tmp_path: Path) -> None:
    b = ctl.storage_backend
    stored = tokens(2)
    backup(ctl, stored)
    b.store.close()  # the store goes away under the controller
    _, written = backup(ctl, tokens(2, start=3000))
    assert written == 0  # a failed batch ends the backup; the thread lives on
    assert prefetch(ctl, stored)[:2] == (0, 0)
    assert b.get_stats()["errors"] >= 2
