"""What a user of kvtier.Store notices: matching, payloads, namespaces, policies, residency, stats."""

from __future__ import annotations

import array
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kvtier
from kvtier import InsertResult, Namespace, ReplayTrace, Store, StoreConfig, TierConfig, TokenSequence

BS = 4
BB = 16


def store(capacity_blocks: int = 64, *, block_bytes: int = BB, **kw: object) -> Store:
    policy = kw.pop("policy", "lru")
    ttl_s = kw.pop("ttl_s", None)
    host = TierConfig(capacity_bytes=capacity_blocks * block_bytes, policy=policy, ttl_s=ttl_s)  # type: ignore[arg-type]
    return Store(StoreConfig(block_size=BS, block_bytes=block_bytes, host=host, **kw))  # type: ignore[arg-type]


def meta(capacity_blocks: int | None = 64, **kw: object) -> Store:
    return Store(StoreConfig.for_blocks(capacity_blocks, block_size=BS, **kw))


def prompt(n_tokens: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50_000, n_tokens, dtype=np.int64).astype(np.int32)


def kv_of(tokens: np.ndarray, first_block: int, n_blocks: int, block_bytes: int = BB) -> np.ndarray:
    """Deterministic payload of blocks first_block.. of tokens: a function of each block's prefix."""
    out = np.empty((n_blocks, block_bytes), np.uint8)
    for i in range(n_blocks):
        b = first_block + i
        h = int(np.sum(tokens[: (b + 1) * BS].astype(np.uint64) * np.uint64(2654435761)) & 0xFFFFFFFF)
        out[i] = np.random.default_rng(h).integers(0, 256, block_bytes, dtype=np.uint8)
    return out


def full_kv(tokens: np.ndarray, block_bytes: int = BB) -> np.ndarray:
    return kv_of(tokens, 0, len(tokens) // BS, block_bytes)


# =========================================================================== matching
def test_insert_then_match_hits_every_full_block() -> None:
    s = store()
    t = prompt(14)  # 3 full blocks + 2 tokens
    r = s.insert(t, full_kv(t))
    assert r == InsertResult(matched_blocks=0, inserted_blocks=3, full_blocks=3)
    assert r.stored_blocks == 3
    m = s.match(t)
    assert (m.num_blocks, m.num_tokens) == (3, 12)
    # The partial trailing block was never cached: completing it finds only the 3 blocks...
    longer = np.concatenate([t, prompt(2, seed=9)])
    assert s.match(longer).num_blocks == 3
    # ...and inserting the completed prompt stores exactly the 4th block.
    r = s.insert(longer, kv_of(longer, 3, 1), start_block=3)
    assert (r.matched_blocks, r.inserted_blocks, r.full_blocks) == (3, 1, 4)
    assert s.match(longer).num_blocks == 4
    assert s.stats().blocks == 4


def test_short_prompts_cache_nothing() -> None:
    s = store()
    for n in range(BS):
        assert s.insert(prompt(n), b"").stored_blocks == 0
        assert s.match(prompt(n)).num_blocks == 0
    assert s.stats().blocks == 0


def test_diverging_prompt_returns_the_common_prefix() -> None:
    s = store()
    a = prompt(5 * BS)
    s.insert(a, full_kv(a))
    for diverge_at in range(len(a)):
        b = a.copy()
        b[diverge_at] += 1
        m = s.match(b)
        assert m.num_blocks == diverge_at // BS, diverge_at
        assert m.num_tokens == m.num_blocks * BS
    # A prompt that is a prefix of the cached one hits all its full blocks.
    assert s.match(a[:9]).num_blocks == 2
    s.check_invariants()


def test_two_branches_share_their_prefix() -> None:
    s = store()
    a = prompt(4 * BS)
    b = a.copy()
    b[2 * BS + 1] += 1  # diverges in block 2
    s.insert(a, full_kv(a))
    r = s.insert(b, kv_of(b, 2, 2), start_block=2)
    assert (r.matched_blocks, r.inserted_blocks) == (2, 2)
    assert s.stats().blocks == 6
    assert s.match(a).num_blocks == 4 and s.match(b).num_blocks == 4
    s.check_invariants()


def test_num_tokens_and_tiers() -> None:
    s = store()
    t = prompt(7 * BS + 3)
    s.insert(t, full_kv(t))
    for n in range(0, len(t) + 1, 3):
        m = s.match(t[:n])
        assert m.num_tokens == m.num_blocks * BS == (n // BS) * BS
        assert m.tiers.dtype == np.uint8 and m.tiers.shape == (m.num_blocks,)
        assert all(kvtier.Tier(x) is kvtier.Tier.HOST for x in m.tiers)
        p = s.peek(t[:n])
        assert (p.num_blocks, p.num_tokens, p.pinned) == (m.num_blocks, m.num_tokens, False)
        assert np.array_equal(p.tiers, m.tiers)


# =========================================================================== payloads
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float16, np.float32, np.int64, np.float64, np.complex128])
def test_load_returns_exact_bytes_for_numpy_dtypes(dtype) -> None:  # type: ignore[no-untyped-def]
    bb = 64
    s = store(block_bytes=bb, payload_dtype=np.dtype(dtype).name)
    t = prompt(3 * BS + 1)
    per_block = bb // np.dtype(dtype).itemsize
    kv = np.frombuffer(full_kv(t, bb).tobytes(), dtype=dtype).reshape(3, 2, per_block // 2)  # (blocks, ...)
    s.insert(t, kv)
    out = np.zeros_like(kv)
    assert s.load(t, out) == 3
    assert out.tobytes() == kv.tobytes()  # bytes, not values: NaN payloads compare equal too
    # A pinned match copies exactly its blocks.
    with s.pinned(t) as m:
        out2 = np.zeros_like(kv)
        assert s.load(m, out2) == 3
        assert out2.tobytes() == kv.tobytes()


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(bytes, id="bytes"),
        pytest.param(bytearray, id="bytearray"),
        pytest.param(memoryview, id="memoryview"),
        pytest.param(lambda b: memoryview(bytearray(b)).cast("I"), id="memoryview-uint32"),
        pytest.param(lambda b: array.array("B", b), id="array.array"),
    ],
)
def test_payloads_from_python_buffers(wrap) -> None:  # type: ignore[no-untyped-def]
    s = store()
    t = prompt(2 * BS)
    raw = full_kv(t).tobytes()
    s.insert(t, wrap(raw))
    out = bytearray(len(raw))
    assert s.load(t, out) == 2
    assert bytes(out) == raw
    mv = memoryview(bytearray(len(raw)))
    assert s.load(t, mv) == 2
    assert mv.tobytes() == raw
    big = bytearray(b"\xaa" * (len(raw) + 5))  # a larger out: only the blocks' bytes are written
    assert s.load(t, big) == 2
    assert bytes(big[: len(raw)]) == raw and bytes(big[len(raw) :]) == b"\xaa" * 5


def test_load_of_a_partial_match_writes_only_the_hit_blocks() -> None:
    s = store()
    t = prompt(4 * BS)
    s.insert(t[: 2 * BS], full_kv(t[: 2 * BS]))
    out = np.full((4, BB), 0xEE, np.uint8)
    assert s.load(t, out) == 2
    assert np.array_equal(out[:2], full_kv(t)[:2])
    assert np.all(out[2:] == 0xEE)


def test_start_block_adds_one_block_on_top_of_a_cached_prefix() -> None:
    s = store()
    t = prompt(6 * BS)
    s.insert(t[: 4 * BS], full_kv(t[: 4 * BS]))
    written = s.stats().bytes_written
    r = s.insert(t[: 5 * BS], kv_of(t, 4, 1), start_block=4)
    assert (r.matched_blocks, r.inserted_blocks, r.full_blocks) == (4, 1, 5)
    assert s.stats().bytes_written == written + BB  # only the new block was copied
    out = np.zeros((6, BB), np.uint8)
    assert s.load(t, out) == 5
    assert np.array_equal(out[:5], full_kv(t)[:5])


def test_payload_of_an_already_cached_block_is_not_rewritten() -> None:
    s = store()
    t = prompt(2 * BS)
    s.insert(t, full_kv(t))
    r = s.insert(t, np.zeros((2, BB), np.uint8))  # different bytes, same blocks: a no-op
    assert (r.matched_blocks, r.inserted_blocks) == (2, 0)
    out = np.zeros((2, BB), np.uint8)
    s.load(t, out)
    assert np.array_equal(out, full_kv(t))


def test_start_block_with_a_gap_stores_nothing() -> None:
    s = store()
    t = prompt(6 * BS)
    s.insert(t[: 2 * BS], full_kv(t[: 2 * BS]))
    r = s.insert(t[: 5 * BS], kv_of(t, 4, 1), start_block=4)  # blocks 2, 3 are missing
    assert (r.matched_blocks, r.inserted_blocks, r.stored_blocks) == (2, 0, 2)
    assert s.match(t).num_blocks == 2


# =========================================================================== token inputs
def test_token_sequence_extended_incrementally_matches_like_numpy() -> None:
    s = store()
    t = prompt(9 * BS + 2)
    s.insert(t[: 6 * BS], full_kv(t[: 6 * BS]))
    seq = TokenSequence()
    rng = np.random.default_rng(1)
    pos = 0
    while pos < len(t):
        step = int(rng.integers(1, 7))
        chunk = t[pos : pos + step]
        seq.extend(chunk.tolist() if step % 2 else chunk)  # lists and arrays alike
        pos += len(chunk)
        assert len(seq) == pos
        assert s.peek(seq).num_blocks == s.peek(t[:pos]).num_blocks
    assert np.array_equal(seq.numpy(), t)
    assert s.match(seq).num_blocks == 6
    # Inserting from the sequence stores the same blocks as from the array.
    r = s.insert(seq, kv_of(t, 6, 3), start_block=6)
    assert (r.matched_blocks, r.inserted_blocks) == (6, 3)
    assert s.match(t).num_blocks == 9
    seq.truncate(5 * BS + 1)
    assert s.match(seq).num_blocks == 5
    seq2 = TokenSequence(seq)  # from another sequence
    assert s.match(seq2).num_blocks == 5
    assert np.array_equal(
        kvtier.block_keys(seq, Namespace(model="m"), block_size=BS),
        kvtier.block_keys(t[: 5 * BS + 1], Namespace(model="m"), block_size=BS),
    )


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda a: a.tolist(), id="list"),
        pytest.param(lambda a: tuple(a.tolist()), id="tuple"),
        pytest.param(lambda a: a.astype(np.int64), id="int64"),
        pytest.param(lambda a: a.astype(np.uint32), id="uint32"),
        pytest.param(lambda a: a.astype(np.uint64), id="uint64"),
        pytest.param(lambda a: a.astype(np.uint16), id="uint16"),
        pytest.param(lambda a: array.array("i", a.tolist()), id="array.array"),
        pytest.param(lambda a: memoryview(a), id="memoryview"),
        pytest.param(lambda a: TokenSequence(a), id="TokenSequence"),
    ],
)
def test_every_token_container_equals_numpy(convert) -> None:  # type: ignore[no-untyped-def]
    s = store()
    t = (prompt(5 * BS + 3) % 60_000).astype(np.int32)
    s.insert(t[: 3 * BS], full_kv(t[: 3 * BS]))
    other = convert(t)
    assert s.match(other).num_blocks == s.match(t).num_blocks == 3
    r = s.insert(other, kv_of(t, 3, 2), start_block=3)
    assert (r.matched_blocks, r.inserted_blocks) == (3, 2)
    assert s.match(t).num_blocks == 5
    ns = Namespace(model="m")
    assert np.array_equal(kvtier.block_keys(other, ns, block_size=BS), kvtier.block_keys(t, ns, block_size=BS))


def test_block_ids_content() -> None:
    s = Store(StoreConfig(block_size=16, block_bytes=8, content="block_ids", host=TierConfig(capacity_bytes=8 * 100)))
    big = 2**64 - 1  # the whole uint64 range is usable
    ids = np.array([11, 22, 33, big], dtype=np.uint64)
    r = s.insert(ids, np.arange(32, dtype=np.uint8))
    assert (r.inserted_blocks, r.full_blocks) == (4, 4)
    m = s.match([11, 22, 34])
    assert (m.num_blocks, m.num_tokens) == (2, 32)  # tokens = blocks x block_size
    assert s.match(np.array([11, 22, 33, big], dtype=np.uint64)).num_blocks == 4
    assert s.match(ids.tolist()[:3]).num_blocks == 3
    assert s.match(np.array([11, 22], dtype=np.int32)).num_blocks == 2
    assert s.match([22]).num_blocks == 0  # ids name the prefix: order matters
    # Ids differing only in their upper 32 bits are different blocks.
    assert s.match([11 + (1 << 32)]).num_blocks == 0
    out = bytearray(32)
    assert s.load(ids, out) == 4
    assert bytes(out) == bytes(range(32))
    hits = Store(StoreConfig.for_blocks(None, content="block_ids")).replay(
        ReplayTrace.from_block_ids([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 4, 6]], [0.0, 1.0, 2.0, 3.0])
    )
    assert hits.tolist() == [0, 2, 1, 3]


def test_block_ids_as_a_python_list_cover_the_uint64_range() -> None:
    s = Store(StoreConfig.for_blocks(None, content="block_ids"))
    ids = [11, 2**63, 2**64 - 1]
    assert s.insert(ids).inserted_blocks == 3
    assert s.match(ids).num_blocks == 3


def test_replay_of_tokens_equals_calls_one_by_one() -> None:
    reqs = [prompt(n, seed=n % 3) for n in (16, 20, 8, 33, 16, 40)]
    ts = [float(i) for i in range(len(reqs))]
    a = meta(6, policy="lru")
    hits = a.replay(ReplayTrace.from_tokens(reqs, ts, block_size=BS))
    b = meta(6, policy="lru")
    expect = []
    for t, now in zip(reqs, ts):
        expect.append(b.match(t, now=now).num_blocks)
        b.insert(t, now=now)
    assert hits.tolist() == expect
    sa, sb = a.stats(), b.stats()
    assert (sa.hits, sa.misses, sa.inserted, sa.evicted, sa.blocks) == (sb.hits, sb.misses, sb.inserted, sb.evicted, sb.blocks)


# =========================================================================== namespaces
def test_namespaces_isolate_tenants() -> None:
    a, b = Namespace(model="llama", tenant="a"), Namespace(model="llama", tenant="b")
    s = store()
    t = prompt(4 * BS)
    s.insert(t, full_kv(t), namespace=a)
    assert s.match(t, namespace=a).num_blocks == 4
    assert s.match(t, namespace=b).num_blocks == 0
    assert s.match(t).num_blocks == 0  # the default namespace is a third one
    assert s.peek(t, namespace=Namespace(model="llama", tenant="a")).num_blocks == 4  # equal by value
    assert s.peek(t, namespace=Namespace(model="llama", tenant="a", revision="v2")).num_blocks == 0
    # Storing the same tokens for b makes separate blocks.
    r = s.insert(t, np.zeros((4, BB), np.uint8), namespace=b)
    assert r.inserted_blocks == 4 and s.stats().blocks == 8
    out_a, out_b = np.zeros((4, BB), np.uint8), np.ones((4, BB), np.uint8)
    s.load(t, out_a, namespace=a)
    s.load(t, out_b, namespace=b)
    assert np.array_equal(out_a, full_kv(t)) and not out_b.any()
    with s.pinned(t, namespace=a) as ma, s.pinned(t, namespace=b) as mb:
        ka, kb = s.block_keys_of(ma), s.block_keys_of(mb)
    assert not np.any(np.all(ka == kb, axis=1))
    assert np.array_equal(ka, kvtier.block_keys(t, a, block_size=BS))


def test_default_namespace_of_a_store() -> None:
    ns = Namespace(model="qwen", tenant="x")
    s = Store(StoreConfig.for_blocks(10, block_size=BS), namespace=ns)
    t = prompt(2 * BS)
    s.insert(t)
    assert s.match(t, namespace=ns).num_blocks == 2
    assert s.register(ns) == s.register(ns)


def test_namespace_ids_are_isolated_in_replay() -> None:
    s = Store(StoreConfig.for_blocks(None, content="block_ids"))
    ns = (Namespace(model="m", tenant="a"), Namespace(model="m", tenant="b"))
    tr = ReplayTrace(
        np.array([0, 2, 4, 6], np.uint64),
        np.array([1, 2, 1, 2, 1, 2], np.uint64),
        np.array([0.0, 1.0, 2.0]),
        namespaces=np.array([0, 1, 0], np.uint32),
        namespace_table=ns,
    )
    assert s.replay(tr).tolist() == [0, 0, 2]


# =========================================================================== policies
def test_lru_evicts_the_least_recently_used_leaf_first() -> None:
    s = store(3)
    a, b, c, d = (prompt(BS, seed=i) for i in range(4))
    for i, t in enumerate((a, b, c)):
        s.insert(t, full_kv(t), now=float(i))
    assert s.match(a, now=3.0).num_blocks == 1  # a is now the most recent
    s.peek(b, now=3.5)  # peek does not refresh recency
    s.insert(d, full_kv(d), now=4.0)  # full: evicts b, the least recently used
    assert [s.peek(t).num_blocks for t in (a, b, c, d)] == [1, 0, 1, 1]
    assert s.stats().evicted == 1


def test_lru_eviction_is_leaf_first_and_from_the_tail() -> None:
    s = store(4)
    t = prompt(4 * BS)
    s.insert(t, full_kv(t), now=0.0)  # one 4-block run: its parent blocks are older than nothing
    other = prompt(BS, seed=5)
    s.insert(other, full_kv(other), now=1.0)  # full: the oldest leaf loses its last block only
    assert s.peek(t, now=1.0).num_blocks == 3
    s.insert(prompt(BS, seed=6), full_kv(prompt(BS, seed=6)), now=2.0)
    assert s.peek(t, now=2.0).num_blocks == 2
    out = np.zeros((4, BB), np.uint8)
    assert s.load(t, out, now=3.0) == 2
    assert np.array_equal(out[:2], full_kv(t)[:2])
    s.check_invariants()


def test_insert_never_evicts_its_own_prefix() -> None:
    s = store(3)
    p = prompt(4 * BS)
    s.insert(p[: 2 * BS], full_kv(p[: 2 * BS]), now=0.0)  # oldest
    q = prompt(BS, seed=3)
    s.insert(q, full_kv(q), now=1.0)
    r = s.insert(p, kv_of(p, 2, 2), start_block=2, now=2.0)  # needs 2 slots, 0 free
    assert (r.matched_blocks, r.inserted_blocks, r.stored_blocks) == (2, 1, 3)
    assert s.peek(p).num_blocks == 3 and s.peek(q).num_blocks == 0
    s.check_invariants()


def test_pinned_prefix_survives_a_flood_of_inserts() -> None:
    s = store(8)
    keep = prompt(3 * BS, seed=100)
    s.insert(keep, full_kv(keep), now=0.0)
    m = s.match(keep, pin=True, now=0.0)
    assert m.pinned and s.stats().pinned_blocks == 3
    for i in range(200):
        t = prompt(2 * BS, seed=1000 + i)
        r = s.insert(t, full_kv(t), now=1.0 + i)
        assert r.stored_blocks == 2
    assert s.peek(keep, now=300.0).num_blocks == 3
    assert s.clear(now=500.0) == 5  # everything unpinned goes (8 slots - 3 pinned); the pinned prefix stays
    assert s.peek(keep, now=500.0).num_blocks == 3
    assert s.evict(10 * BB, now=500.0) == 0
    out = np.zeros((3, BB), np.uint8)
    assert s.load(m, out) == 3 and np.array_equal(out, full_kv(keep))
    s.unpin(m)
    assert s.stats().pinned_blocks == 0
    for i in range(10):
        t = prompt(2 * BS, seed=5000 + i)
        s.insert(t, full_kv(t), now=600.0 + i)
    assert s.peek(keep, now=700.0).num_blocks == 0
    s.check_invariants()


def test_pinned_blocks_filling_the_tier_limit_inserts() -> None:
    s = store(4)
    keep = prompt(3 * BS, seed=1)
    s.insert(keep, full_kv(keep))
    with s.pinned(keep):
        t = prompt(3 * BS, seed=2)
        r = s.insert(t, full_kv(t))
        assert (r.inserted_blocks, r.stored_blocks, r.full_blocks) == (1, 1, 3)
    r = s.insert(t, kv_of(t, 1, 2), start_block=1)
    assert r.stored_blocks == 3


def test_ttl_idle_blocks_never_hit_and_expire_reclaims_them() -> None:
    s = store(16, policy="ttl", ttl_s=10.0)
    a, b = prompt(2 * BS, seed=1), prompt(2 * BS, seed=2)
    s.insert(a, full_kv(a), now=0.0)
    s.insert(b, full_kv(b), now=0.0)
    assert s.match(a, now=8.0).num_blocks == 2  # refreshes a
    assert s.peek(b, now=10.0).num_blocks == 2  # idle exactly ttl_s: still live
    assert s.peek(b, now=10.5).num_blocks == 0  # idle longer: never hits
    assert s.peek(a, now=10.5).num_blocks == 2
    assert s.stats().blocks == 4  # peek reclaims nothing
    assert s.expire(now=11.0) == 2  # b's two blocks
    st = s.stats()
    assert (st.blocks, st.expired, st.evicted) == (2, 2, 0)
    assert s.match(a, now=18.0).num_blocks == 2
    assert s.match(a, now=28.5).num_blocks == 0  # a lookup that reaches an expired block reclaims it
    assert s.stats().blocks == 0 and s.stats().expired == 4
    s.check_invariants()


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_ttl_works_with_any_policy(policy) -> None:  # type: ignore[no-untyped-def]
    s = store(16, policy=policy, ttl_s=5.0)
    a = prompt(3 * BS)
    s.insert(a, full_kv(a), now=0.0)
    s.insert(a[: 2 * BS], full_kv(a[: 2 * BS]), now=4.0)  # refreshes only blocks 0, 1
    assert s.peek(a, now=6.0).num_blocks == 2
    assert s.expire(now=6.0) == 1
    assert s.expire(now=9.5) == 2
    assert s.stats().blocks == 0


def test_pinned_blocks_do_not_expire() -> None:
    s = store(16, ttl_s=5.0)
    a = prompt(2 * BS)
    s.insert(a, full_kv(a), now=0.0)
    m = s.match(a, now=0.0, pin=True)
    assert s.expire(now=100.0) == 0
    assert s.stats().blocks == 2
    s.unpin(m)  # releasing is an access at the latest time seen (100): idle time starts there
    assert s.expire(now=105.0) == 0
    assert s.expire(now=105.5) == 2


def test_lfu_keeps_hot_blocks() -> None:
    def run(policy: str) -> list[int]:
        s = store(3, policy=policy)
        hot, warm, cold, new = (prompt(BS, seed=i) for i in range(4))
        now = 0.0
        for t in (hot, warm, cold):
            s.insert(t, full_kv(t), now=now)
            now += 1
        for _ in range(5):
            s.match(hot, now=now)
            now += 1
        for _ in range(2):
            s.match(warm, now=now)
            now += 1
        s.match(cold, now=now)  # cold is the most recent, but the least hit
        s.insert(new, full_kv(new), now=now + 1)
        return [s.peek(t).num_blocks for t in (hot, warm, cold, new)]

    assert run("lfu") == [1, 1, 0, 1]  # fewest hits goes
    assert run("lru") == [0, 1, 1, 1]  # least recent goes


def test_lfu_ties_break_by_age() -> None:
    s = store(2, policy="lfu")
    a, b, c = (prompt(BS, seed=i) for i in range(3))
    s.insert(a, full_kv(a), now=0.0)
    s.insert(b, full_kv(b), now=1.0)
    s.insert(c, full_kv(c), now=2.0)  # a and b: no hits; a is older
    assert [s.peek(t).num_blocks for t in (a, b, c)] == [0, 1, 1]


# =========================================================================== residency
GB = 10**9


def test_residency_gb_hours_by_hand() -> None:
    """Blocks of 1e9 bytes and whole hours: every expected figure is exact in binary floating point.

    t=0     ns A, session s1 stores P (2 blocks)                   -> 2 GB from 0
    t=1800  ns A, session s2 stores P + 1 block: only the new one   -> 1 GB from 1800 (first writer pays)
    t=2700  ns B (default session) stores Q (1 block)              -> 1 GB from 2700
    t=3600  report
    A/s1: 2 GB x 1 h = 2.0; A/s2: 1 GB x 0.5 h = 0.5; B/"": 1 GB x 0.25 h = 0.25
    """
    ns_a, ns_b = Namespace(model="m", tenant="A"), Namespace(model="m", tenant="B")
    s = Store(StoreConfig.for_blocks(None, block_size=BS, block_bytes=GB))
    p = prompt(3 * BS)
    s.insert(p[: 2 * BS], namespace=ns_a, session="s1", now=0.0)
    s.insert(p, namespace=ns_a, session="s2", now=1800.0)
    s.insert(prompt(BS, seed=7), namespace=ns_b, now=2700.0)
    s.match(p, namespace=ns_a, now=3000.0)  # a hit costs nothing
    res = s.residency(now=3600.0)
    assert res.now == 3600.0
    by_session = res.by_session()
    assert by_session[(ns_a, "s1")] == pytest.approx(2.0, rel=1e-12)
    assert by_session[(ns_a, "s2")] == pytest.approx(0.5, rel=1e-12)
    assert by_session[(ns_b, "")] == pytest.approx(0.25, rel=1e-12)
    by_ns = res.by_namespace()
    assert by_ns[ns_a] == pytest.approx(2.5, rel=1e-12)
    assert by_ns[ns_b] == pytest.approx(0.25, rel=1e-12)
    assert by_ns[s.default_namespace] == 0.0
    assert res.gb_hours == pytest.approx(2.75, rel=1e-12)
    assert res.byte_seconds == 2 * GB * 3600 + GB * 1800 + GB * 900
    rows = {(r.namespace, r.session): r for r in res.rows}
    assert rows[(ns_a, "s1")].resident_bytes == 2 * GB
    assert rows[(ns_a, "s1")].byte_seconds == 2 * GB * 3600.0
    assert all(r.tier is kvtier.Tier.HOST for r in res.rows)
    # The integral keeps growing with time at the resident rate (4 GB now).
    assert s.residency(now=7200.0).gb_hours == pytest.approx(2.75 + 4.0, rel=1e-12)


def test_residency_stops_when_a_block_leaves() -> None:
    s = Store(StoreConfig.for_blocks(None, block_size=BS, block_bytes=GB))
    s.insert(prompt(2 * BS), now=0.0)
    assert s.evict(GB, now=1800.0) == GB  # one block leaves at 0.5 h
    res = s.residency(now=3600.0)
    assert res.gb_hours == pytest.approx(1.0 + 0.5, rel=1e-12)
    assert [r.resident_bytes for r in res.rows if r.namespace == s.default_namespace] == [GB]
    s.clear(now=3600.0)
    assert s.residency(now=36000.0).gb_hours == pytest.approx(1.5, rel=1e-12)


def test_residency_of_expired_blocks_stops_at_the_expiry_instant() -> None:
    s = Store(StoreConfig.for_blocks(None, block_size=BS, block_bytes=GB, policy="ttl", ttl_s=900.0))
    s.insert(prompt(BS), now=0.0)  # expires at 900 s = 0.25 h
    assert s.residency(now=3600.0).gb_hours == pytest.approx(0.25, rel=1e-12)
    st = s.stats()
    assert (st.blocks, st.expired) == (0, 1)  # residency() reclaimed it


def test_residency_never_decreases_for_blocks_pinned_past_ttl() -> None:
    s = Store(StoreConfig.for_blocks(None, block_size=2, block_bytes=1000, ttl_s=10.0))
    s.insert([1, 2], now=0.0)
    m = s.match([1, 2], now=0.0, pin=True)
    at_50 = s.residency(now=50.0).byte_seconds  # pinned: resident, not expired -> 50 s counted
    assert at_50 == 1000 * 50.0
    s.unpin(m)  # at 50: the TTL counts from the release
    at_60 = s.residency(now=60.0).byte_seconds
    assert at_60 == 1000 * 60.0
    at_90 = s.residency(now=90.0).byte_seconds  # expired at 60 + nothing more
    assert at_90 == 1000 * 60.0
    assert s.stats().blocks == 0


def test_residency_with_sessions_in_replay() -> None:
    s = Store(StoreConfig.for_blocks(None, block_bytes=GB, content="block_ids"))
    tr = ReplayTrace.from_block_ids([[1, 2], [1, 2, 3], [9]], [0.0, 1800.0, 1800.0], sessions=["x", "y", "x"])
    assert s.replay(tr).tolist() == [0, 2, 0]
    got = s.residency(now=3600.0).by_session()
    ns = s.default_namespace
    assert got[(ns, "x")] == pytest.approx(2.0 + 0.5, rel=1e-12)
    assert got[(ns, "y")] == pytest.approx(0.5, rel=1e-12)


# =========================================================================== stats
def test_stats_counters() -> None:
    s = store(4)
    a = prompt(3 * BS, seed=1)
    st = s.stats()
    assert (st.hits, st.misses, st.blocks, st.capacity_bytes, st.hit_ratio) == (0, 0, 0, 4 * BB, 0.0)
    s.insert(a, full_kv(a), now=1.0)  # insert counts no hits or misses
    s.match(a, now=2.0)  # 3 hits
    s.match(np.concatenate([a, prompt(2 * BS, seed=2)]), now=3.0)  # 3 hits, 2 misses
    s.peek(prompt(4 * BS, seed=3), now=4.0)  # peek counts nothing
    out = np.zeros((3, BB), np.uint8)
    s.load(a[: 2 * BS + 1], out, now=5.0)  # 2 hits, 2 blocks read
    with s.pinned(a, now=6.0) as m:  # 3 hits
        assert s.stats().pinned_blocks == 3
        s.load(m, out)  # 3 blocks read, no hit counted
    b = prompt(2 * BS, seed=4)
    s.insert(b, full_kv(b), now=7.0)  # 1 free slot: evicts 1 block of a
    st = s.stats()
    assert st.hits == 3 + 3 + 2 + 3
    assert st.misses == 2
    assert st.hit_ratio == pytest.approx(11 / 13)
    assert st.inserted == 5 and st.evicted == 1 and st.expired == 0
    assert st.bytes_written == 5 * BB
    assert st.bytes_read == (2 + 3) * BB
    assert st.blocks == 4 and st.resident_bytes == 4 * BB
    assert st.pinned_blocks == 0
    assert st.nodes == 2  # a's remaining run, b
    s.check_invariants()


def test_stats_of_an_unlimited_metadata_store() -> None:
    s = meta(None)
    s.insert(prompt(5 * BS))
    st = s.stats()
    assert st.capacity_bytes is None
    assert (st.blocks, st.resident_bytes, st.bytes_written) == (5, 5, 0)


def test_context_manager_closes_the_store() -> None:
    with store() as s:
        assert not s.closed
        s.insert(prompt(BS), full_kv(prompt(BS)))
    assert s.closed
    with pytest.raises(kvtier.StoreClosedError):
        s.match(prompt(BS))


# =========================================================================== processes
def test_import_needs_only_numpy() -> None:
    code = textwrap.dedent(
        """
        import importlib.abc, sys
        allowed = set(sys.stdlib_module_names) | {"numpy", "kvtier"}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] not in allowed:
                    raise ImportError(f"kvtier must not import {name}")
                return None
        sys.meta_path.insert(0, Block())
        import kvtier
        with kvtier.Store(kvtier.StoreConfig(block_size=2, block_bytes=4,
                          host=kvtier.TierConfig(capacity_bytes=64))) as s:
            s.insert([1, 2], b"abcd")
            out = bytearray(4)
            assert s.load([1, 2], out) == 1 and out == b"abcd"
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in {"torch", "vllm", "sglang", "transformers", "pandas", "scipy", "jax"})
        print("heavy:", heavy)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "heavy: []"


def test_keys_identical_across_processes_with_different_hash_seeds() -> None:
    code = textwrap.dedent(
        """
        import json
        import numpy as np
        import kvtier
        ns = kvtier.Namespace(model="meta-llama/Llama-3.1-8B", tenant="acme", kv_dtype="bf16")
        toks = np.arange(1000, 1000 + 12 * 4, dtype=np.int32)
        s = kvtier.Store(kvtier.StoreConfig(block_size=4, block_bytes=8, host=kvtier.TierConfig(capacity_bytes=800)),
                         namespace=ns)
        s.insert(toks, np.zeros(12 * 8, np.uint8))
        with s.pinned(toks) as m:
            store_keys = s.block_keys_of(m).tobytes().hex()
        print(json.dumps({
            "ns": ns.key(4).hex(),
            "keys": kvtier.block_keys(toks, ns, block_size=4, extra=b"lora-1").tobytes().hex(),
            "store": store_keys,
            "hash": hash("kvtier"),
        }))
        """
    )
    outs = []
    for seed in ("0", "4242", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert len({o["hash"] for o in outs}) > 1  # the seeds really differed
    for key in ("ns", "keys", "store"):
        assert len({o[key] for o in outs}) == 1, key
    assert outs[0]["store"] == kvtier.block_keys(
        np.arange(1000, 1048, dtype=np.int32),
        Namespace(model="meta-llama/Llama-3.1-8B", tenant="acme", kv_dtype="bf16"),
        block_size=4,
    ).tobytes().hex()


def test_torch_cpu_tensors_as_payloads_and_out() -> None:
    """Host tensors without the buffer protocol (PyTorch CPU tensors, read through DLPack) work like numpy."""
    torch = pytest.importorskip("torch")
    with store() as s:
        toks = prompt(3 * BS, seed=5)
        kv = kv_of(toks, 0, 3)
        s.insert(toks, torch.from_numpy(kv.copy()))
        out = torch.zeros((3, BB), dtype=torch.uint8)
        assert s.load(toks, out) == 3
        assert np.array_equal(out.numpy(), kv)
        with pytest.raises(kvtier.KvtierTypeError, match="out must be C-contiguous"):
            s.load(toks, torch.zeros((BB, 3), dtype=torch.uint8).t())
        with pytest.raises(kvtier.InvalidArgumentError, match="out has 8 bytes; it must hold 3 blocks"):
            s.load(toks, torch.zeros((2, BB // 4), dtype=torch.uint8))


def test_a_tuple_is_not_memory() -> None:
    """Only the facade describes raw memory to the core; a tuple of ints is refused, never dereferenced."""
    with store() as s:
        toks = prompt(2 * BS, seed=6)
        with pytest.raises(kvtier.KvtierTypeError, match="payloads must support the buffer protocol"):
            s.insert(toks, (16, 2 * BB, -1))  # type: ignore[arg-type]
        s.insert(toks, kv_of(toks, 0, 2))
        with pytest.raises(kvtier.KvtierTypeError, match="out must support the buffer protocol"):
            s.load(toks, (16, 2 * BB, -1))  # type: ignore[arg-type]
        with pytest.raises(kvtier.InvalidArgumentError, match="address must not be null"):
            kvtier._core.Memory(0, 16, -1)
