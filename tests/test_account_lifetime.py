"""Sessions that are gone release their memory, and residency stays exact (issue 17, item 4).

A store serving agents sees a new session name per conversation. Before, every (namespace, session)
pair kept an account forever (about 430 bytes each). Now an account that holds nothing in any tier
is retired once the store tracks more than ``SWEEP_FLOOR`` accounts, and its GB-hours move to its
namespace's row of ended sessions (``session=None``). The expected figures below are computed from
the workload's schedule (which block is resident when), not by the store.
"""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

import kvtier

SWEEP_FLOOR = 1024  # csrc/core/accounts.h, AccountTable::kSweepFloor
BLOCK = 4  # tokens per block
BB = 8  # bytes per block


def _store(capacity_blocks: int, **kw: object) -> kvtier.Store:
    cfg = kvtier.StoreConfig(
        block_size=BLOCK, block_bytes=BB, host=kvtier.TierConfig(capacity_bytes=capacity_bytes(capacity_blocks)), **kw
    )
    return kvtier.Store(cfg)


def capacity_bytes(blocks: int) -> int:
    return blocks * BB


def _prompt(i: int) -> list[int]:
    return [i * BLOCK + t for t in range(BLOCK)]  # one block, distinct per i


def test_unique_sessions_keep_the_account_table_bounded_and_residency_exact() -> None:
    n, cap = 6000, 32
    s = _store(cap)
    # Session "keeper" holds a pinned block all along: its account must survive every sweep.
    s.insert(_prompt(10**6), bytes(BB), session="keeper", now=0.0)
    pin = s.match(_prompt(10**6), pin=True, now=0.0)
    for i in range(n):  # one new session per request, at t = 1 .. n
        s.insert(_prompt(i), bytes(BB), session=f"agent-{i}", now=float(i + 1))
    st = s.stats()
    assert st.blocks == cap  # the keeper's block + the last cap-1 sessions' blocks
    # Without retirement the store would track n + 2 accounts; it keeps the live ones plus at most one
    # sweep's worth of ended ones.
    assert st.accounts <= 2 * SWEEP_FLOOR + 2, st.accounts
    s.check_invariants()

    now = float(n + 1)
    res = s.residency(now=now)
    # Block i (session agent-i) is inserted at i+1 and evicted (LRU, the keeper being pinned) when block
    # i + cap - 1 arrives, at i + cap; the last cap - 1 blocks are still resident at `now`.
    expected = {f"agent-{i}": BB * (min(now, i + cap) - (i + 1)) for i in range(n)}
    expected["keeper"] = BB * now
    by_session = {name: bs for (_, name), bs in _byte_seconds_by_session(res).items()}
    assert by_session.pop("keeper") == pytest.approx(expected["keeper"])
    ended = by_session.pop(None)
    live = {name: bs for name, bs in by_session.items() if bs > 0}
    assert set(live) >= {f"agent-{i}" for i in range(n - cap + 1, n)}  # the resident ones keep their rows
    for name, bs in live.items():
        assert bs == pytest.approx(expected[name])
    # Everything else was folded into the ended row, exactly.
    folded = sum(v for k, v in expected.items() if k != "keeper" and k not in live)
    assert ended == pytest.approx(folded, rel=1e-12)
    assert res.byte_seconds == pytest.approx(sum(expected.values()), rel=1e-12)
    s.unpin(pin, now=now)
    s.close()


def _byte_seconds_by_session(res: kvtier.Residency) -> dict[tuple[object, str | None], float]:
    out: dict[tuple[object, str | None], float] = {}
    for r in res.rows:
        out[(r.namespace, r.session)] = out.get((r.namespace, r.session), 0.0) + r.byte_seconds
    return out


def test_ended_row_is_per_namespace_and_sums_stay_exact() -> None:
    s = _store(4)
    a, b = kvtier.Namespace(model="a"), kvtier.Namespace(model="b")
    n = 3 * SWEEP_FLOOR
    for i in range(n):
        ns = a if i % 2 else b
        s.insert(_prompt(i), bytes(BB), namespace=ns, session=f"s{i}", now=float(i))
    res = s.residency(now=float(n))
    ended = {r.namespace: r.byte_seconds for r in res.rows if r.session is None}
    assert set(ended) == {a, b}
    # Each block lives 4 s (evicted by the fourth insert after it), except the last four.
    per_ns = {a: 0.0, b: 0.0}
    for i in range(n):
        per_ns[a if i % 2 else b] += BB * (min(n, i + 4) - i)
    by_ns = {ns: sum(r.byte_seconds for r in res.rows if r.namespace == ns) for ns in (a, b)}
    assert by_ns[a] == pytest.approx(per_ns[a], rel=1e-12)
    assert by_ns[b] == pytest.approx(per_ns[b], rel=1e-12)
    assert s.stats().accounts <= 2 * SWEEP_FLOOR + 2


def test_a_returning_session_starts_a_new_row_and_nothing_is_lost() -> None:
    s = _store(2)
    s.insert(_prompt(0), bytes(BB), session="returning", now=0.0)
    for i in range(1, 2 * SWEEP_FLOOR + 2):  # evicts "returning"'s block, then sweeps
        s.insert(_prompt(i), bytes(BB), session=f"x{i}", now=float(i))
    t = float(2 * SWEEP_FLOOR + 2)
    s.insert(_prompt(10**6), bytes(BB), session="returning", now=t)
    res = s.residency(now=t + 10)
    rows = [r for r in res.rows if r.session == "returning"]
    assert [r.byte_seconds for r in rows] == [pytest.approx(BB * 10.0)]  # the new block only
    total = sum(r.byte_seconds for r in res.rows)
    # Blocks 0 .. t-1 each live 2 s (capacity 2), the last one from t-1 to t+10, the new one 10 s.
    n_old = 2 * SWEEP_FLOOR + 2
    expected = sum(BB * (min(t + 10, i + 2) - i) for i in range(n_old - 1)) + BB * 11 + BB * 10
    assert total == pytest.approx(expected, rel=1e-12)


def test_sessions_on_disk_keep_their_accounts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    disk = kvtier.DiskConfig(path=str(tmp_path / "kv"), capacity_bytes=1 << 20)
    s = _store(2, disk=disk)
    n = 2 * SWEEP_FLOOR + 8
    for i in range(n):
        s.insert(_prompt(i), bytes(BB), session=f"d{i}", now=float(i))
    s.flush()
    # Every block is still resident (on disk or host): no account may be retired.
    assert s.stats().accounts == n + 1  # + the namespace's default account
    res = s.residency(now=float(n))
    assert not [r for r in res.rows if r.session is None]
    assert {r.session for r in res.rows if r.resident_bytes > 0} == {f"d{i}" for i in range(n)}
    s.close()
    with kvtier.Store(kvtier.StoreConfig(block_size=BLOCK, block_bytes=BB, disk=disk)) as s2:
        sessions = {r.session for r in s2.residency().rows if r.tier is kvtier.Tier.DISK and r.resident_bytes > 0}
        assert sessions == {f"d{i}" for i in range(n)}  # the sessions come back with their blocks


def test_python_side_keeps_nothing_per_session() -> None:
    s = _store(8)
    for i in range(2000):  # warm up allocator pools and the core's tables
        s.insert(_prompt(i), bytes(BB), session=f"w{i}", now=float(i))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2000, 12000):
        s.insert(_prompt(i), bytes(BB), session=f"w{i}", now=float(i))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 10_000 * 8, f"{grown / 10_000:.1f} B of Python memory per unique session"
    assert s.stats().accounts <= 2 * SWEEP_FLOOR + 1


def test_replay_with_a_session_per_request_stays_bounded() -> None:
    cfg = kvtier.StoreConfig(
        block_size=BLOCK, content="block_ids", metadata_only=True, host=kvtier.TierConfig(capacity_bytes=16 * 1024)
    )
    s = kvtier.Store(cfg)
    n = 5000
    blocks = np.arange(n, dtype=np.uint64)  # one distinct block per request
    trace = kvtier.ReplayTrace(
        offsets=np.arange(n + 1, dtype=np.uint64),
        blocks=blocks,
        timestamps=np.arange(n, dtype=np.float64),
        sessions=np.arange(n, dtype=np.uint32),
        session_table=tuple(f"r{i}" for i in range(n)),
    )
    hits = s.replay(trace)
    assert hits.sum() == 0
    assert s.stats().accounts <= 2 * SWEEP_FLOOR + 1
    res = s.residency(now=float(n))
    assert sum(r.byte_seconds for r in res.rows) > 0
    s.check_invariants()


def test_threads_inserting_unique_sessions_keep_invariants() -> None:
    s = _store(64)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(1500):
                j = k * 10**5 + i
                s.insert(_prompt(j), bytes(BB), session=f"t{k}-{i}")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s.check_invariants()
    assert s.stats().accounts <= 2 * SWEEP_FLOOR + 1
    res = s.residency()
    assert sum(r.resident_bytes for r in res.rows) == s.stats().resident_bytes


# ----------------------------------------------------------------- tenants (namespaces)
NS_FLOOR = 1024  # csrc/store/store.h, Store::kNamespaceSweepFloor


def _tenant(k: int) -> kvtier.Namespace:
    return kvtier.Namespace(model="m", tenant=f"tenant-{k}")


def test_tenants_that_hold_nothing_leave_and_residency_stays_exact() -> None:
    n, cap = 5000, 16
    s = _store(cap)
    for k in range(n):  # a tenant per request; each block lives cap seconds (LRU, capacity cap)
        s.insert(_prompt(k), bytes(BB), namespace=_tenant(k), session=f"u{k}", now=float(k))
    st = s.stats()
    assert st.namespaces <= 2 * NS_FLOOR + 1, st.namespaces  # not n + 1
    assert st.accounts <= 2 * NS_FLOOR + 2 * SWEEP_FLOOR + 2, st.accounts
    assert len(s._ns_ids) == len(s._ns_by_id) <= 2 * NS_FLOOR + 1  # the facade forgot them too
    s.check_invariants()
    now = float(n)
    res = s.residency(now=now)
    expected = sum(BB * (min(now, k + cap) - k) for k in range(n))
    assert res.byte_seconds == pytest.approx(expected, rel=1e-12)
    gone = res.by_namespace().pop(None)
    assert gone > 0
    # The tenants still holding blocks keep their own rows, exact.
    for k in range(n - cap, n):
        assert res.by_namespace()[_tenant(k)] * 3.6e12 == pytest.approx(BB * (now - k))
    # A tenant that left is served again like a new one.
    assert s.match(_prompt(3), namespace=_tenant(3), now=now).num_blocks == 0
    s.insert(_prompt(3), bytes(BB), namespace=_tenant(3), now=now)
    assert s.match(_prompt(3), namespace=_tenant(3), now=now + 1).num_blocks == 1
    s.check_invariants()


def test_a_tenant_with_blocks_on_disk_stays(tmp_path) -> None:  # type: ignore[no-untyped-def]
    disk = kvtier.DiskConfig(path=str(tmp_path / "kv"), capacity_bytes=1 << 20)
    s = _store(2, disk=disk)
    keep = kvtier.Namespace(model="m", tenant="on-disk")
    s.insert(_prompt(10**6), bytes(BB), namespace=keep, now=0.0)
    for k in range(2 * NS_FLOOR + 8):  # the kept tenant's block goes to disk; many tenants come and go
        s.register(_tenant(k))
        s.insert(_prompt(k), bytes(BB), namespace=_tenant(k), now=float(k + 1))
    s.flush()
    assert s.match(_prompt(10**6), namespace=keep).num_blocks == 1
    s.close()


def test_python_side_keeps_nothing_per_tenant() -> None:
    s = _store(4)
    for k in range(3000):
        s.register(_tenant(k))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for k in range(3000, 33000):
        s.register(_tenant(k))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # At most the live set (2 x NS_FLOOR namespaces between sweeps) is held: kept forever, 30,000
    # tenants took about 27 MB here (910 B each).
    assert grown < 2_000_000, f"{grown / 30_000:.1f} B of Python memory per tenant"
    assert s.stats().namespaces <= 2 * NS_FLOOR + 1


def test_threads_using_tenants_while_others_come_and_go() -> None:
    """Ids of namespaces that leave are never reused: a call racing the sweep registers again, never
    reaches another tenant's blocks."""
    s = _store(64)
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn() -> None:
        k = 0
        while not stop.is_set():
            s.register(_tenant(10**6 + k))
            k += 1

    def user(u: int) -> None:
        try:
            mine = kvtier.Namespace(model="m", tenant=f"user-{u}")
            for i in range(400):
                toks = _prompt(u * 10**4 + i)
                s.insert(toks, np.full(BB, u, np.uint8), namespace=mine)
                out = np.zeros(BB, np.uint8)
                got = s.load(toks, out, namespace=mine)
                assert got == 0 or (out == u).all()  # evicted (capacity), or this tenant's own payload
                assert s.peek(toks, namespace=kvtier.Namespace(model="m", tenant=f"user-{(u + 1) % 3}")).num_blocks == 0
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t_churn = threading.Thread(target=churn)
    users = [threading.Thread(target=user, args=(u,)) for u in range(3)]
    t_churn.start()
    for t in users:
        t.start()
    for t in users:
        t.join()
    stop.set()
    t_churn.join()
    assert not errors, errors[0]
    s.check_invariants()


def test_replay_with_many_tenants() -> None:
    cfg = kvtier.StoreConfig(
        block_size=BLOCK, content="block_ids", metadata_only=True, host=kvtier.TierConfig(capacity_bytes=64 * 2048)
    )
    s = kvtier.Store(cfg)
    n = 3 * NS_FLOOR
    for k in range(n):  # registered before: many have left by the time the trace runs
        s.register(_tenant(k))
    trace = kvtier.ReplayTrace(
        offsets=np.arange(2 * n + 1, dtype=np.uint64),
        blocks=np.tile(np.arange(n, dtype=np.uint64), 2),  # each tenant's block twice
        timestamps=np.arange(2 * n, dtype=np.float64),
        namespaces=np.tile(np.arange(n, dtype=np.uint32), 2),
        namespace_table=tuple(_tenant(k) for k in range(n)),
    )
    hits = s.replay(trace)
    assert hits[:n].sum() == 0  # the same block id in different tenants is a different block
    res = s.residency(now=float(2 * n))
    assert res.byte_seconds > 0
    assert all(r.namespace is None or isinstance(r.namespace, kvtier.Namespace) for r in res.rows)
    s.check_invariants()
