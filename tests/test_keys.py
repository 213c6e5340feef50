"""Block keys: golden vectors, an independent BLAKE3 cross-check, and process independence."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kvtier

VECTORS = json.loads((Path(__file__).parent / "data" / "key_vectors.json").read_text())


def _vector_ids() -> list[str]:
    return [v["name"] for v in VECTORS]


@pytest.mark.parametrize("vec", VECTORS, ids=_vector_ids())
def test_golden_vectors(vec: dict) -> None:
    ns = kvtier.Namespace(**vec["namespace"])
    assert ns.key(vec["block_size"]).hex() == vec["namespace_key"]
    keys = kvtier.block_keys(
        np.asarray(vec["tokens"], dtype=np.int64), ns, block_size=vec["block_size"], extra=vec["extra"].encode()
    )
    assert keys.shape == (len(vec["block_keys"]), 32)
    assert [bytes(k).hex() for k in keys] == vec["block_keys"]


@pytest.mark.parametrize("vec", VECTORS, ids=_vector_ids())
def test_layout_matches_independent_blake3(vec: dict) -> None:
    """docs/keys.md's layout, computed with the PyPI `blake3` package (a different implementation)."""
    blake3 = pytest.importorskip("blake3")

    def le32(n: int) -> bytes:
        return struct.pack("<I", n)

    ns = kvtier.Namespace(**vec["namespace"])
    material = b"".join(le32(len(f.encode())) + f.encode() for f in ns.fields(vec["block_size"]))
    ns_key = blake3.blake3(material, derive_key_context="kvtier namespace v1").digest()
    assert ns_key.hex() == vec["namespace_key"]
    extra = vec["extra"].encode()
    bs = vec["block_size"]
    parent = bytes(32)
    expected = []
    toks = vec["tokens"]
    for b in range(len(toks) // bs):
        msg = parent + le32(len(extra)) + extra + b"".join(le32(t) for t in toks[b * bs : (b + 1) * bs])
        parent = blake3.blake3(msg, key=ns_key).digest()
        expected.append(parent.hex())
    assert expected == vec["block_keys"]


def test_chain_continues_from_parent() -> None:
    ns = kvtier.Namespace(model="m")
    toks = np.arange(64, dtype=np.int32)
    whole = kvtier.block_keys(toks, ns, block_size=16)
    tail = kvtier.block_keys(toks[32:], ns, block_size=16, parent=bytes(whole[1]))
    assert np.array_equal(whole[2:], tail)


def test_every_field_changes_the_keys() -> None:
    base = dict(model="m", revision="r", tokenizer="t", kv_dtype="bf16", kv_layout="NHD", tenant="")
    toks = np.arange(32, dtype=np.int32)
    ref = kvtier.block_keys(toks, kvtier.Namespace(**base), block_size=16)
    for field in base:
        changed = dict(base, **{field: base[field] + "x"})
        other = kvtier.block_keys(toks, kvtier.Namespace(**changed), block_size=16)
        assert not np.array_equal(ref[0], other[0]), field
    # the block size is bound in even for the same token run
    assert kvtier.Namespace(**base).key(16) != kvtier.Namespace(**base).key(32)
    # a different token in block 0 changes every later key (chaining)
    toks2 = toks.copy()
    toks2[3] += 1
    other = kvtier.block_keys(toks2, kvtier.Namespace(**base), block_size=16)
    assert not np.any(np.all(ref == other, axis=1))


def test_store_keys_equal_block_keys() -> None:
    ns = kvtier.Namespace(model="m", tenant="t1")
    cfg = kvtier.StoreConfig(block_size=16, block_bytes=64, host=kvtier.TierConfig(capacity_bytes=64 * 64))
    toks = np.arange(16 * 10, dtype=np.int32)
    with kvtier.Store(cfg, namespace=ns) as store:
        store.insert(toks[:80], np.zeros((5, 64), np.uint8), now=0.0)
        store.insert(toks, np.zeros((5, 64), np.uint8), start_block=5, now=1.0)
        with store.pinned(toks, now=2.0) as m:
            assert m.num_blocks == 10
            assert np.array_equal(store.block_keys_of(m), kvtier.block_keys(toks, ns, block_size=16))


def test_keys_identical_across_processes_and_hash_seeds() -> None:
    code = (
        "import numpy as np, kvtier;"
        "k = kvtier.block_keys(np.arange(48, dtype=np.int32), kvtier.Namespace(model='m', tenant='x'), block_size=16);"
        "print(k.tobytes().hex())"
    )
    outs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1
