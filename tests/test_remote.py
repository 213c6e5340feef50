"""The shared remote tier against real redis-server processes on loopback (tests/redis_helpers.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import kvtier
from kvtier import Namespace, RemoteConfig, StoreConfig, Tier, TierConfig
from redis_helpers import RedisServer, need_redis, server  # noqa: F401 - server is a fixture

BS = 16
BB = 4096
NS = Namespace(model="m")


def config(url: str, **kw: object) -> StoreConfig:
    host = kw.pop("host", TierConfig(capacity_bytes=64 * BB))
    return StoreConfig(block_size=BS, block_bytes=BB, host=host, remote=RemoteConfig(url=url, **kw))  # type: ignore[arg-type]


def prompt(blocks: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50_000, blocks * BS, dtype=np.int32)


def payload(blocks: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, 256, blocks * BB, dtype=np.uint8)


def client(server: RedisServer):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(server.url)


# --------------------------------------------------------------------------- config
def test_config_validation() -> None:
    with pytest.raises(kvtier.InvalidArgumentError, match="must start with one of"):
        RemoteConfig(url="http://x")
    with pytest.raises(kvtier.InvalidArgumentError, match="must name a host"):
        RemoteConfig(url="redis://")
    with pytest.raises(kvtier.InvalidArgumentError, match="database number"):
        RemoteConfig(url="redis://h:1/x")
    with pytest.raises(kvtier.InvalidArgumentError, match="only database 0"):
        RemoteConfig(url="redis+cluster://h:1/3")
    with pytest.raises(kvtier.KvtierTypeError, match="url must be a str"):
        RemoteConfig(url=b"redis://h")  # type: ignore[arg-type]
    with pytest.raises(kvtier.InvalidArgumentError, match="write must be 'back' or 'through'"):
        RemoteConfig(url="redis://h", write="around")  # type: ignore[arg-type]
    with pytest.raises(kvtier.InvalidArgumentError, match="ttl_s must be a finite number"):
        RemoteConfig(url="redis://h", ttl_s=0)
    with pytest.raises(kvtier.KvtierTypeError, match="ttl_s must be a number"):
        RemoteConfig(url="redis://h", ttl_s="5")  # type: ignore[arg-type]
    with pytest.raises(kvtier.InvalidArgumentError, match="capacity_bytes must be >= 1"):
        RemoteConfig(url="redis://h", capacity_bytes=0)
    with pytest.raises(kvtier.InvalidArgumentError, match="does not hold one block"):
        config("redis://h", namespace_budget_bytes=BB - 1)
    with pytest.raises(kvtier.KvtierTypeError, match="remote must be a RemoteConfig"):
        StoreConfig(remote="redis://h")  # type: ignore[arg-type]
    with pytest.raises(kvtier.InvalidArgumentError, match="needs metadata_only=False"):
        StoreConfig(metadata_only=True, host=TierConfig(capacity_bytes=None), remote=RemoteConfig(url="redis://h"))
    assert "***" in repr(RemoteConfig(url="redis://u:secret@h:1/0")) and "secret" not in repr(
        RemoteConfig(url="redis://u:secret@h:1/0")
    )


def test_password_from_url_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvtier.tiers.remote_io import parse_url

    monkeypatch.delenv("KVTIER_REDIS_PASSWORD", raising=False)
    assert parse_url("redis://h:1/0") == ("redis://h:1/0", False, None)
    assert parse_url("redis://:pw@h:1/0")[2] == "url"
    monkeypatch.setenv("KVTIER_REDIS_PASSWORD", "p@ss")
    url, cluster, source = parse_url("rediss+cluster://h:7000")
    assert (url, cluster, source) == ("rediss://:p%40ss@h:7000", True, "env")
    assert parse_url("redis://:mine@h:1/0") == ("redis://:mine@h:1/0", False, "url")


def test_password_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_redis()
    s = RedisServer(tmp_path / "r", extra=("--requirepass", "s3cret"))
    s.start()
    try:
        monkeypatch.setenv("KVTIER_REDIS_PASSWORD", "s3cret")
        with kvtier.Store(config(s.url, write="through"), namespace=NS) as a:
            a.insert(prompt(3), payload(3))
            assert a.stats().remote.written == 3
        monkeypatch.setenv("KVTIER_REDIS_PASSWORD", "wrong")
        with kvtier.Store(config(s.url, write="through"), namespace=NS) as b:
            assert b.match(prompt(3)).num_blocks == 0
            assert b.stats().remote.failures >= 1
    finally:
        s.stop()


# --------------------------------------------------------------------------- sharing
def test_a_prefix_stored_by_one_store_is_a_hit_on_another(server: RedisServer) -> None:
    p, x = prompt(10), payload(10)
    with kvtier.Store(config(server.url), namespace=NS) as a:
        assert a.insert(p, x).inserted_blocks == 10
        a.flush()
        assert a.stats().remote.written == 10
    with kvtier.Store(config(server.url), namespace=NS) as b:
        m = b.match(p, pin=True)
        assert (m.num_blocks, m.host_blocks, m.remote_blocks) == (10, 0, 10)
        assert list(m.tiers) == [Tier.REMOTE] * 10
        out = np.zeros(10 * BB, np.uint8)
        assert b.load(m, out) == 10
        b.unpin(m)
        assert np.array_equal(out, x)
        st = b.stats().remote
        assert (st.hits, st.bytes_read, st.promoted) == (10, 10 * BB, 10)
        # promoted: now a host hit, no remote round trip needed for the blocks
        m2 = b.match(p)
        assert (m2.host_blocks, m2.remote_blocks) == (10, 0)
        # a longer prompt: local prefix, then the server
        q = np.concatenate([p, prompt(4, seed=9)])
        assert b.match(q).num_blocks == 10


def test_local_prefix_then_remote_blocks(server: RedisServer) -> None:
    p, x = prompt(8), payload(8)
    with kvtier.Store(config(server.url, write="through"), namespace=NS) as a:
        a.insert(p, x)
    with kvtier.Store(config(server.url), namespace=NS) as b:
        b.insert(p[: 3 * BS], x[: 3 * BB])
        m = b.match(p, pin=True)
        assert (m.host_blocks, m.remote_blocks) == (3, 5)
        assert list(m.tiers) == [Tier.HOST] * 3 + [Tier.REMOTE] * 5
        assert np.array_equal(b.block_keys_of(m), kvtier.block_keys(p, NS, block_size=BS))
        out = np.zeros(8 * BB, np.uint8)
        assert b.load(m, out) == 8
        b.unpin(m)
        assert np.array_equal(out, x)
        out2 = np.zeros(8 * BB, np.uint8)
        assert b.load(p, out2) == 8 and np.array_equal(out2, x)


def test_namespaces_do_not_share(server: RedisServer) -> None:
    p, x = prompt(4), payload(4)
    with kvtier.Store(config(server.url, write="through"), namespace=NS) as a:
        a.insert(p, x)
    with kvtier.Store(config(server.url), namespace=Namespace(model="m", tenant="other")) as b:
        assert b.match(p).num_blocks == 0


def test_write_through_is_visible_when_insert_returns(server: RedisServer) -> None:
    with kvtier.Store(config(server.url, write="through"), namespace=NS) as a:
        a.insert(prompt(5), payload(5))
        assert client(server).dbsize() >= 5  # 5 blocks + the namespace record, before any flush
        assert len(list(client(server).scan_iter(match=b"kvtier:1:*:b:*"))) == 5


def test_lookup_round_trips_per_batch(server: RedisServer) -> None:
    n = 2048 + 10
    with kvtier.Store(
        config(server.url, host=TierConfig(capacity_bytes=4 * BB), batch_blocks=256), namespace=NS
    ) as a:
        a.insert(prompt(n), payload(n))
        a.flush()
    with kvtier.Store(config(server.url), namespace=NS) as b:
        before = b.stats().remote.round_trips
        assert b.peek(prompt(n)).remote_blocks == n
        assert b.stats().remote.round_trips - before == 3  # ceil(2058 / 1024) lookups


# --------------------------------------------------------------------------- integrity
def test_corrupt_partial_and_misplaced_values_are_never_served(server: RedisServer) -> None:
    p, x = prompt(6), payload(6)
    with kvtier.Store(config(server.url, write="through"), namespace=NS) as a:
        a.insert(p, x)
        keys = [k.tobytes() for k in kvtier.block_keys(p, NS, block_size=BS)]
    from kvtier.tiers.remote_io import block_key

    r = client(server)
    ns_key = NS.key(BS)
    k2, k4 = block_key(ns_key, keys[2]), block_key(ns_key, keys[4])
    v = r.get(k2)
    assert v is not None
    r.set(k2, v[:-1] + bytes([v[-1] ^ 1]))  # one flipped bit of the payload
    for variant in (v[: len(v) // 2], b"", r.get(k4)):  # cut short, empty, another block's value
        r.set(k2, variant if variant else b"x")
        with kvtier.Store(config(server.url), namespace=NS) as b:
            m = b.match(p, pin=True)
            assert m.remote_blocks == 6  # present ...
            out = np.zeros(6 * BB, np.uint8)
            assert b.load(m, out) == 2  # ... but only the blocks before the bad one are served
            assert np.array_equal(out[: 2 * BB], x[: 2 * BB]) and not out[2 * BB :].any()
            assert b.stats().remote.corrupted == 1
        assert r.get(k2) is None  # deleted
        r.set(k2, v)
    # the flipped bit alone
    r.set(k2, v[:-1] + bytes([v[-1] ^ 1]))
    with kvtier.Store(config(server.url), namespace=NS) as b:
        assert b.load(p, np.zeros(6 * BB, np.uint8)) == 2


def test_ttl_is_set_and_restarted_by_reads(server: RedisServer) -> None:
    p, x = prompt(2), payload(2)
    with kvtier.Store(config(server.url, write="through", ttl_s=30), namespace=NS) as a:
        a.insert(p, x)
    r = client(server)
    keys = list(r.scan_iter(match=b"kvtier:1:*:b:*"))
    assert len(keys) == 2 and all(0 < r.pttl(k) <= 30_000 for k in keys)
    for k in keys:
        r.pexpire(k, 5000)
    with kvtier.Store(config(server.url, ttl_s=30), namespace=NS) as b:
        assert b.load(p, np.zeros(2 * BB, np.uint8)) == 2
    assert all(r.pttl(k) > 25_000 for k in keys)
    with kvtier.Store(config(server.url, write="through", ttl_s=0.2), namespace=NS) as c:
        c.insert(prompt(3, seed=5), payload(3))
        time.sleep(0.4)
        assert c.peek(prompt(3, seed=5)).num_blocks == 3  # the host tier still has them
    with kvtier.Store(config(server.url), namespace=NS) as d:
        assert d.peek(prompt(3, seed=5)).num_blocks == 0  # expired on the server


def test_namespace_budget_and_capacity(server: RedisServer) -> None:
    r = client(server)
    with kvtier.Store(config(server.url, write="through", namespace_budget_bytes=10 * BB), namespace=NS) as a:
        for i in range(5):
            a.insert(prompt(4, seed=i), payload(4, seed=i))
        other = Namespace(model="m", tenant="t2")
        a.insert(prompt(4, seed=99), payload(4), namespace=other)
        assert a.stats().remote.trimmed == 10
    ns1 = NS.key(BS).hex().encode()
    blocks = list(r.scan_iter(match=b"kvtier:1:" + ns1 + b":b:*"))
    assert len(blocks) == 10
    with kvtier.Store(config(server.url), namespace=NS) as b:  # the newest prompts survive
        assert b.peek(prompt(4, seed=4)).num_blocks == 4
        assert b.peek(prompt(4, seed=0)).num_blocks == 0
        assert b.peek(prompt(4, seed=99), namespace=Namespace(model="m", tenant="t2")).num_blocks == 4
    r.flushall()
    with kvtier.Store(config(server.url, write="through", capacity_bytes=6 * BB), namespace=NS) as a:
        for i in range(4):
            a.insert(prompt(3, seed=i), payload(3, seed=i))
    assert len(list(r.scan_iter(match=b"kvtier:1:*:b:*"))) == 6
    assert int(r.get(b"kvtier:1:{all}:bytes")) == 6 * BB and r.zcard(b"kvtier:1:{all}:lru") == 6
    # blocks idle past the TTL leave the count without taking live blocks with them
    r.flushall()
    with kvtier.Store(config(server.url, write="through", ttl_s=0.3, capacity_bytes=6 * BB), namespace=NS) as a:
        a.insert(prompt(4, seed=1), payload(4, seed=1))
        time.sleep(0.5)  # expired on the server
        a.insert(prompt(4, seed=2), payload(4, seed=2))
        assert a.stats().remote.trimmed == 0
    assert len(list(r.scan_iter(match=b"kvtier:1:*:b:*"))) == 4
    assert int(r.get(b"kvtier:1:{all}:bytes")) == 4 * BB


# --------------------------------------------------------------------------- accounting
def test_stats_and_residency(server: RedisServer) -> None:
    with kvtier.Store(config(server.url, write="through"), namespace=NS) as a:
        a.insert(prompt(4), payload(4), session="s1", now=100.0)
        st = a.stats().remote
        assert (st.written, st.blocks, st.resident_bytes, st.connected) == (4, 4, 4 * BB, True)
        res = a.residency(now=3700.0)
        rows = [r for r in res.rows if r.tier == Tier.REMOTE]
        assert len(rows) == 1 and rows[0].session == "s1" and rows[0].namespace == NS
        assert rows[0].resident_bytes == 4 * BB
        assert rows[0].byte_seconds == pytest.approx(4 * BB * 3600, rel=1e-6)
        assert res.by_tier()[Tier.REMOTE] == pytest.approx(4 * BB * 3600 / 1e9 / 3600)


# --------------------------------------------------------------------------- failures
def test_server_gone_keeps_serving_logs_once_and_reconnects(
    server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a logging.config call elsewhere in the run (default disable_existing_loggers=True) may have disabled it
    monkeypatch.setattr(logging.getLogger("kvtier.remote"), "disabled", False)
    caplog.set_level(logging.INFO, logger="kvtier.remote")
    with kvtier.Store(config(server.url, timeout_s=0.5, retry_s=0.2), namespace=NS) as a:
        a.insert(prompt(3), payload(3))
        a.flush()
        server.kill()
        for i in range(5):  # local tiers still serve; inserts are queued
            out = np.zeros(3 * BB, np.uint8)
            assert a.load(prompt(3), out) == 3
            a.insert(prompt(2, seed=10 + i), payload(2, seed=i))
            a.match(prompt(6, seed=20 + i))
        with pytest.raises(kvtier.RemoteWriteError, match="10 blocks not written"):
            a.flush()
        st = a.stats().remote
        assert st.failures >= 1 and not st.connected and st.pending == 10
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
        assert "serving from local tiers" in warnings[0].getMessage()
        server.start()
        deadline = time.monotonic() + 10
        while not a.stats().remote.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        a.flush()  # the queued blocks are written now
        st = a.stats().remote
        assert st.connected and st.reconnects == 1 and st.pending == 0 and st.written == 13
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_a_store_starts_while_the_server_is_down(tmp_path: Path) -> None:
    need_redis()
    s = RedisServer(tmp_path / "r")
    t0 = time.monotonic()
    with kvtier.Store(config(s.url, timeout_s=0.3, retry_s=0.1), namespace=NS) as a:
        assert time.monotonic() - t0 < 1.0
        a.insert(prompt(3), payload(3))
        assert a.match(prompt(3)).num_blocks == 3
        s.start()
        try:
            a.flush(timeout=10) if a.stats().remote.connected else None
            deadline = time.monotonic() + 10
            while a.stats().remote.pending and time.monotonic() < deadline:
                time.sleep(0.05)
            a.flush()
            assert a.stats().remote.written == 3
            with kvtier.Store(config(s.url), namespace=NS) as b:
                assert b.match(prompt(3)).remote_blocks == 3
        finally:
            s.stop()


KILL_RUNS = int(os.environ.get("KVTIER_REMOTE_KILL_RUNS", "1"))


@pytest.mark.parametrize("run", range(KILL_RUNS))
def test_kill_9_with_persistence_loses_nothing_acknowledged(tmp_path: Path, run: int) -> None:
    """Write-through inserts race a SIGKILL of a server with appendonly/appendfsync always (from another thread,
    at a time that varies by run, so it lands inside a write batch): every insert whose blocks were all acknowledged
    is complete after the restart, and nothing partial is ever served. ``KVTIER_REMOTE_KILL_RUNS=N``: N trials."""
    import threading

    need_redis()
    s = RedisServer(tmp_path / "r", persist=True)
    s.start()
    n_prompts, blocks = 60, 4
    rng = np.random.default_rng(run)
    try:
        acked: list[int] = []
        with kvtier.Store(config(s.url, write="through", timeout_s=0.5, retry_s=0.1, batch_blocks=2), namespace=NS) as a:
            a.insert(prompt(blocks, seed=10_000), payload(blocks, seed=10_000))  # connected
            killer = threading.Timer(float(rng.uniform(0.005, 0.06)), s.kill)
            killer.start()
            for i in range(n_prompts):
                if i == n_prompts - 1:
                    killer.join()  # a kill no later than the last insert
                before = a.stats().remote.written
                a.insert(prompt(blocks, seed=i), payload(blocks, seed=i))
                if a.stats().remote.written - before == blocks:
                    acked.append(i)
            assert len(acked) < n_prompts
            print(f"kill trial {run}: {len(acked)} of {n_prompts} inserts acknowledged before the kill")
            s.start()
            with kvtier.Store(config(s.url), namespace=NS) as b:
                for i in acked:
                    out = np.zeros(blocks * BB, np.uint8)
                    assert b.peek(prompt(blocks, seed=i)).remote_blocks == blocks
                    assert b.load(prompt(blocks, seed=i), out) == blocks
                    assert np.array_equal(out, payload(blocks, seed=i))
                for i in range(n_prompts):
                    out = np.zeros(blocks * BB, np.uint8)
                    got = b.load(prompt(blocks, seed=i), out)
                    assert np.array_equal(out[: got * BB], payload(blocks, seed=i)[: got * BB])
                assert b.stats().remote.corrupted == 0
    finally:
        s.stop()


# --------------------------------------------------------------------------- processes
_CHILD = textwrap.dedent(
    """
    import sys, numpy as np, kvtier
    from kvtier import Namespace, RemoteConfig, StoreConfig, TierConfig
    url, seed, other = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    BS, BB = 16, 4096
    def prompt(n, s):
        return np.random.default_rng(s).integers(0, 50_000, n * BS, dtype=np.int32)
    def payload(n, s):
        return np.random.default_rng(s + 1000).integers(0, 256, n * BB, dtype=np.uint8)
    cfg = StoreConfig(block_size=BS, block_bytes=BB, host=TierConfig(capacity_bytes=64 * BB),
                      remote=RemoteConfig(url=url, write="through"))
    with kvtier.Store(cfg, namespace=Namespace(model="m")) as s:
        s.insert(prompt(8, seed), payload(8, seed))
        print("ready", flush=True)
        sys.stdin.readline()
        out = np.zeros(8 * BB, np.uint8)
        n = s.load(prompt(8, other), out)
        print(n, int(np.array_equal(out, payload(8, other))), s.stats().remote.hits, flush=True)
    """
)


def test_two_processes_share_prefixes(server: RedisServer, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), server.url, str(seed), str(other)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        for seed, other in ((1, 2), (2, 1))
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    outs = []
    for p in procs:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write("\n")
        p.stdin.close()
        outs.append(p.stdout.readline().split())
        p.stdout.close()
        assert p.wait(30) == 0
    assert outs == [["8", "1", "8"], ["8", "1", "8"]]


# --------------------------------------------------------------------------- kvtier remote
def test_cli_remote_reports_blocks_bytes_and_oldest_per_namespace(server: RedisServer) -> None:
    import json

    t0 = time.time()
    with kvtier.Store(config(server.url, write="through"), namespace=NS) as a:
        a.insert(prompt(5), payload(5))
        a.insert(prompt(3, seed=2), payload(3), namespace=Namespace(model="m", tenant="acme"))
    client(server).set(b"kvtier:1:" + NS.key(BS).hex().encode() + b":b:" + b"00" * 32, b"junk")
    run = [sys.executable, "-m", "kvtier", "remote", server.url, "--json"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert (rep["blocks"], rep["bytes"]) == (8, 8 * BB)
    rows = {r["fields"]["tenant"]: r for r in rep["namespaces"]}
    assert rows[""]["blocks"] == 5 and rows[""]["bytes"] == 5 * BB and rows[""]["malformed"] == 1
    assert rows["acme"]["blocks"] == 3 and rows["acme"]["fields"]["model"] == "m"
    assert t0 - 1 <= rows[""]["oldest"] <= rows[""]["newest"] <= time.time() + 1
    text = subprocess.run(run[:-1], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "8 blocks, 32.0 KiB in 2 namespaces" in text.stdout
    assert "tenant='acme': 3 blocks, 12.0 KiB" in text.stdout and "1 malformed" in text.stdout


def test_cli_remote_errors(tmp_path: Path) -> None:
    from redis_helpers import free_port

    bad = subprocess.run([sys.executable, "-m", "kvtier", "remote", "http://x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "must start with one of" in bad.stderr
    down = subprocess.run(
        [sys.executable, "-m", "kvtier", "remote", f"redis://127.0.0.1:{free_port()}/0"], capture_output=True, text=True
    )
    assert down.returncode == 2 and "kvtier: error:" in down.stderr and "onnect" in down.stderr


# --------------------------------------------------------------------------- cluster
@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[RedisServer]]:
    need_redis()
    from redis_helpers import start_cluster

    nodes = start_cluster(tmp_path / "cluster")
    yield nodes
    for n in nodes:
        n.stop()


def test_cluster_shares_prefixes_across_three_masters(cluster: list[RedisServer]) -> None:
    import redis

    url = f"redis+cluster://127.0.0.1:{cluster[1].port}"
    p, x = prompt(40), payload(40)
    bounds = dict(capacity_bytes=1000 * BB, namespace_budget_bytes=45 * BB)
    with kvtier.Store(config(url, write="through", ttl_s=600, **bounds), namespace=NS) as a:
        a.insert(p, x)
        a.insert(prompt(10, seed=3), payload(10, seed=3))  # over the namespace budget: 5 go, the older prompt's tail
        st = a.stats().remote
        assert (st.written, st.failures, st.trimmed) == (50, 0, 5)
    # the blocks are spread over the three masters
    per_node = [len(list(redis.Redis(port=n.port).scan_iter(match=b"kvtier:1:*:b:*"))) for n in cluster]
    assert sum(per_node) == 45 and all(k > 0 for k in per_node)
    with kvtier.Store(config(f"redis+cluster://127.0.0.1:{cluster[2].port}"), namespace=NS) as b:
        m = b.match(p, pin=True)
        assert m.remote_blocks == 35  # leaf first: the head of the prompt stays usable
        out = np.zeros(40 * BB, np.uint8)
        assert b.load(m, out) == 35
        b.unpin(m)
        assert np.array_equal(out[: 35 * BB], x[: 35 * BB])
        assert b.peek(prompt(10, seed=3)).remote_blocks == 10
    rep = subprocess.run([sys.executable, "-m", "kvtier", "remote", url, "--json"], capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr
    assert '"blocks": 45' in rep.stdout


def test_tls_rediss(tmp_path: Path) -> None:
    need_redis()
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (it makes the test's certificates)")
    from redis_helpers import make_certificates

    s = RedisServer(tmp_path / "tls", tls=make_certificates(tmp_path / "certs"))
    s.start()
    try:
        assert s.url.startswith("rediss://")
        p, x = prompt(6), payload(6)
        with kvtier.Store(config(s.url, write="through"), namespace=NS) as a:
            a.insert(p, x)
            assert a.stats().remote.written == 6
        with kvtier.Store(config(s.url), namespace=NS) as b:
            out = np.zeros(6 * BB, np.uint8)
            assert b.load(p, out) == 6 and np.array_equal(out, x)
        # plain redis:// to a TLS-only port fails (counted), the store still serves locally
        plain = f"redis://127.0.0.1:{s.port}/0"
        with kvtier.Store(config(plain, timeout_s=0.5), namespace=NS) as c:
            assert c.match(p).num_blocks == 0 and c.stats().remote.failures == 1
    finally:
        s.stop()


def test_block_ids_content_and_threads(server: RedisServer) -> None:
    import threading

    cfg = StoreConfig(
        block_size=BS, block_bytes=BB, content="block_ids", host=TierConfig(capacity_bytes=64 * BB),
        remote=RemoteConfig(url=server.url, write="through"),
    )
    ids = np.arange(1, 9, dtype=np.uint64) * 977
    with kvtier.Store(cfg, namespace=NS) as a:
        a.insert(ids, payload(8))
    with kvtier.Store(cfg, namespace=NS) as b:
        out = np.zeros(8 * BB, np.uint8)
        assert b.load(ids, out) == 8 and np.array_equal(out, payload(8))

    # threads inserting and loading through one store, a second store reading everything afterwards
    errors: list[BaseException] = []
    with kvtier.Store(config(server.url, host=TierConfig(capacity_bytes=16 * BB)), namespace=NS) as c:

        def work(t: int) -> None:
            try:
                for i in range(10):
                    seed = 100 + t * 10 + i
                    c.insert(prompt(4, seed), payload(4, seed))
                    out = np.zeros(4 * BB, np.uint8)
                    got = c.load(prompt(4, seed), out)
                    assert np.array_equal(out[: got * BB], payload(4, seed)[: got * BB])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        c.flush()
        assert c.stats().remote.written == 160
    with kvtier.Store(config(server.url), namespace=NS) as d:
        for seed in range(100, 140):
            out = np.zeros(4 * BB, np.uint8)
            assert d.load(prompt(4, seed), out) == 4 and np.array_equal(out, payload(4, seed))
