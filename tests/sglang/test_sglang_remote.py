"""KVTierHiCacheStorage with ``remote_url``: SGLang servers with their own disk folders share pages through one real
redis-server on loopback (tests/redis_helpers.py; skipped when redis-server is not installed)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from kvtier import InvalidArgumentError, KvtierTypeError
from kvtier.integrations.sglang import KVTierHiCacheStorage, parse_extra_config
from kvtier.tiers.remote_io import block_key
from pools import PAGE, backend, mha_pool, mla_pool, storage_config
from test_backend import fill, keys, page_data, slots

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redis_helpers import RedisServer, server  # noqa: E402, F401 - server is a fixture


def server_key(b: KVTierHiCacheStorage, key: str) -> bytes:
    """Where the backend's store keeps page ``key`` on the server."""
    store = b.store
    assert store is not None
    ns = store._ns(None)
    arr = np.frombuffer(bytes.fromhex(key), np.uint8).reshape(1, 32)
    return block_key(store._core.namespace_key_of(ns), store._core.keys_block_keys(ns, arr)[0].tobytes())


_ROLE = """
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from pools import backend, mha_pool, mla_pool, PAGE
    from test_backend import keys, fill, page_data
    disk, tests, role, out, url, kind = sys.argv[1:7]
    pool = mla_pool("page_first") if kind == "mla" else mha_pool("page_first")
    b = backend(pool, disk, remote_url=url)
    idx = pool.alloc(6 * PAGE)
    if role == "put":
        fill(pool, idx, 9)
        assert b.batch_exists(keys(6)) == 0
        assert b.batch_set_v1(keys(6), idx) == [True] * 6
        st = b.get_stats()
        assert st["remote_written"] == 6 and st["remote_pending"] == 0, st
    else:
        assert b.batch_exists(keys(6) + keys(2, salt="x")) == 6
        assert b.batch_get_v1(keys(6) + keys(2, salt="x"), pool.alloc(8 * PAGE)) == [True] * 6 + [False] * 2
        assert b.batch_get_v1(keys(6), idx) == [True] * 6
        st = b.get_stats()
        assert st["remote_hits"] == 6 and st["remote_promoted"] == 6 and st["errors"] == 0, st
    torch.save(page_data(pool, idx), out)
    b.close()
"""


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_producer_and_consumer_processes_with_their_own_folders_share_one_redis(
    server: RedisServer, tmp_path: Path, kind: str
) -> None:
    tests = str(Path(__file__).parent)
    outs = []
    for role in ("put", "get"):
        disk = tmp_path / f"disk-{role}"
        out = tmp_path / f"{role}.pt"
        r = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_ROLE), str(disk), tests, role, str(out), server.url, kind],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(torch.load(out))
    assert len(outs[1]) == 6 and all(torch.equal(a, b) for a, b in zip(*outs))


def test_a_corrupt_remote_page_is_a_miss_and_counted(server: RedisServer, tmp_path: Path) -> None:
    import redis

    pool = mha_pool("page_first")
    ks = keys(5)
    p = backend(pool, tmp_path / "a", remote_url=server.url)
    src = slots(pool, 5)
    fill(pool, src, 4)
    want = page_data(pool, src)
    assert p.batch_set_v1(ks, src) == [True] * 5
    victim = server_key(p, ks[2])
    p.close()
    r = redis.Redis.from_url(server.url)
    value = r.get(victim)
    assert value is not None
    r.set(victim, value[:-1] + bytes([value[-1] ^ 0x10]))  # one bit of the payload
    c_pool = mha_pool("page_first")
    c = backend(c_pool, tmp_path / "b", remote_url=server.url)
    dst = slots(c_pool, 5)
    assert c.batch_exists(ks) == 5  # on the server ...
    assert c.batch_get_v1(ks, dst) == [True, True, False, False, False]  # ... never served
    assert all(torch.equal(a, w) for a, w in zip(page_data(c_pool, dst)[:2], want[:2]))
    st = c.get_stats()
    assert st["remote_corrupted"] == 1 and st["errors"] == 0
    assert r.get(victim) is None  # deleted
    assert c.batch_exists(ks) == 2  # the two good pages were promoted; the damaged one is gone
    c.close()


def test_rank_model_and_layout_isolation_through_the_server(server: RedisServer, tmp_path: Path) -> None:
    ks = keys(3)
    pool = mha_pool("page_first")
    p = backend(pool, tmp_path / "p", remote_url=server.url)
    src = slots(pool, 3)
    fill(pool, src, 5)
    assert all(p.batch_set_v1(ks, src))
    p.close()
    for i, (make, kw) in enumerate([
        (lambda: mha_pool("page_first"), {"tp_rank": 1}),
        (lambda: mha_pool("page_first"), {"model": "other"}),
        (lambda: mha_pool("page_first"), {"revision": "v2"}),
        (lambda: mha_pool("layer_first"), {}),
        (lambda: mha_pool("page_first", torch.float16), {}),
    ]):
        o_pool = make()
        o = backend(o_pool, tmp_path / f"o{i}", remote_url=server.url, **kw)
        assert o.batch_exists(ks) == 0, kw
        assert o.batch_get_v1(ks, slots(o_pool, 3)) == [False] * 3, kw
        o.close()
    same = backend(mha_pool("page_first"), tmp_path / "same", remote_url=server.url)
    assert same.batch_exists(ks) == 3  # the same model, rank and layout with another folder: found
    same.close()
    # MLA pools are rank-replicated: rank 1 reads through the server what rank 0 wrote; it writes nothing itself.
    w_pool, r_pool = mla_pool("page_first"), mla_pool("page_first")
    w = backend(w_pool, tmp_path / "mla0", remote_url=server.url, tp_rank=0)
    wsrc = slots(w_pool, 3)
    fill(w_pool, wsrc, 6)
    assert all(w.batch_set_v1(ks, wsrc))
    w.close()
    rd = backend(r_pool, tmp_path / "mla1", remote_url=server.url, tp_rank=1)
    dst = slots(r_pool, 3)
    assert rd.batch_exists(ks) == 3 and rd.batch_get_v1(ks, dst) == [True] * 3
    assert all(torch.equal(a, b) for a, b in zip(page_data(r_pool, dst), page_data(w_pool, wsrc)))
    rd.close()


def test_remote_keys_bad_values_fail_the_attach_naming_the_key(tmp_path: Path) -> None:
    d = str(tmp_path)
    for extra, error, key in [
        ({"remote_url": "http://h:1"}, InvalidArgumentError, "remote_url"),
        ({"remote_url": 5}, KvtierTypeError, "remote_url"),
        ({"remote_url": "redis://h:x/0"}, InvalidArgumentError, "remote_url"),
        ({"remote_ttl_s": 60}, InvalidArgumentError, "remote_url"),
        ({"remote_url": "redis://h:1/0", "remote_write": "later"}, InvalidArgumentError, "remote_write"),
        ({"remote_url": "redis://h:1/0", "remote_capacity": "lots"}, InvalidArgumentError, "remote_capacity"),
        ({"remote_url": "redis://h:1/0", "remote_ttl_s": -1}, InvalidArgumentError, "remote_ttl_s"),
        ({"remote_url": "redis://h:1/0", "remote_namespace_budget": True}, KvtierTypeError, "remote_namespace_budget"),
        ({"remote_urll": "redis://h:1/0"}, InvalidArgumentError, "did you mean 'remote_url'"),
    ]:
        with pytest.raises(error, match=key):
            parse_extra_config({"disk_path": d, **extra})
        with pytest.raises(error, match=key):  # through SGLang's factory: the attach fails
            backend(mha_pool("page_first"), tmp_path / "never", **extra)
        assert not (tmp_path / "never").exists()
    cfg = parse_extra_config({"disk_path": d, "remote_url": "redis://h:1/0", "remote_ttl_s": 3600,
                              "remote_capacity": "1G", "remote_write": "back", "remote_namespace_budget": "100M"})
    rc = cfg.remote_config()
    assert rc is not None and (rc.url, rc.ttl_s, rc.capacity_bytes, rc.write, rc.namespace_budget_bytes) == (
        "redis://h:1/0", 3600.0, 1 << 30, "back", 100 << 20)
    assert parse_extra_config({"disk_path": d, "remote_url": "redis://h:1/0"}).remote_config().write == "through"  # type: ignore[union-attr]
    # Nothing is opened before register_mem_pool_host (no store, no client, no folder).
    b = KVTierHiCacheStorage(storage_config(tmp_path / "later", remote_url="redis://127.0.0.1:1/0"), {})
    assert b.store is None and not (tmp_path / "later").exists()


def test_server_stopped_mid_run_serves_local_pages_and_counts(
    server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("kvtier.remote"), "disabled", False)
    caplog.set_level(logging.WARNING)
    ks = keys(4)
    pool = mha_pool("page_first")
    p = backend(pool, tmp_path / "p", remote_url=server.url)
    src = slots(pool, 4)
    fill(pool, src, 7)
    want = page_data(pool, src)
    assert all(p.batch_set_v1(ks, src))
    p.close()
    c_pool = mha_pool("page_first")
    c = backend(c_pool, tmp_path / "c", remote_url=server.url, remote_write="back")
    first = slots(c_pool, 2)
    assert c.batch_get_v1(ks[:2], first) == [True, True]  # from the server, promoted into c's tiers
    server.kill()
    dst = slots(c_pool, 4)
    for _ in range(3):
        assert c.batch_exists(ks) == 2
        assert c.batch_get_v1(ks, dst) == [True, True, False, False]  # local hits, then misses: no exception
        assert all(torch.equal(a, w) for a, w in zip(page_data(c_pool, dst)[:2], want[:2]))
    new = keys(2, salt="new")
    nsrc = slots(c_pool, 2)
    assert c.batch_set_v1(new, nsrc) == [True, True]  # stored locally; queued for the server
    assert c.batch_exists(new) == 2
    st = c.get_stats()
    assert st["errors"] == 0 and st["remote_failures"] >= 1 and not st["remote_connected"]
    assert st["remote_pending"] == 2
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # logged once
    c.close()  # does not wait for the server (its queue is counted, not written)


def test_radix_tree_consumer_with_an_empty_folder_loads_the_producers_kv_from_redis(
    server: RedisServer, tmp_path: Path
) -> None:
    """SGLang's UnifiedRadixCache with HiCache (real controller threads) in two processes, each with its own disk
    folder and ``remote_url`` on one server: the consumer's storage prefetch finds every page on the server and
    loads it back to the device pool with the producer's KV bytes; another ``cache_salt`` misses."""
    from test_radix import PAGES, run

    tokens = list(range(700, 700 + PAGES * PAGE))
    common = {"kind": "mha", "disk": str(tmp_path / "producer"), "tokens": tokens, "remote_url": server.url}
    made = run("produce", {**common, "layout": "page_first", "salt": "tenant-a", "seed": 21,
                           "out": str(tmp_path / "produced.pt")})
    assert made["set_stored"] == PAGES and made["errors"] == 0 and made["remote_written"] == PAGES, made
    cases = [
        {"layout": "page_first", "salt": "tenant-a", "disk": str(tmp_path / "consumer"), "out": str(tmp_path / "a.pt")},
        {"layout": "page_first", "salt": "tenant-b", "disk": str(tmp_path / "consumer-b"), "out": str(tmp_path / "b.pt")},
    ]
    same, other = run("consume", {**common, "cases": cases})
    n = PAGES * PAGE
    assert (same["device_before"], same["host_before"]) == (0, 0)
    assert same["storage_loaded"] == n and same["device_after_load"] == n, same
    assert same["backend"]["remote_hits"] == PAGES and same["backend"]["errors"] == 0, same
    want, got = torch.load(tmp_path / "produced.pt"), torch.load(tmp_path / "a.pt")
    assert len(want) == len(got) and all(torch.equal(w, g) for w, g in zip(want, got))
    assert other["storage_loaded"] == 0 and other["backend"]["remote_hits"] == 0 and other["backend"]["errors"] == 0
