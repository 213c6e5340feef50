"""`kvtier demo` on its embedded defaults (host + an LMDB folder) and `kvtier fsck` on damaged folders."""

from __future__ import annotations

import json
from pathlib import Path

import lmdb
import numpy as np
import pytest

import kvtier
from kvtier.cli import main


def test_demo_runs_host_and_disk_and_restarts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "cache"
    rc = main(["demo", "--sessions", "2", "--steps", "4", "--capacity", "8M", "--disk", str(folder)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "MISMATCH" not in out
    assert "disk tier:" in out and "restart: reopened" in out
    # After the restart every session's whole prompt is found again, all of it on disk.
    restart_lines = [line for line in out.splitlines() if "from disk)" in line]
    assert len(restart_lines) == 2
    for line in restart_lines:
        assert "(100.0%" in line and "KV check ok" in line, line
    # The folder is clean.
    assert main(["fsck", str(folder)]) == 0


def _folder(tmp_path: Path, blocks: int = 6) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path / "f"
    cfg = kvtier.StoreConfig(
        block_size=4, block_bytes=256, host=kvtier.TierConfig(capacity_bytes=4096),
        disk=kvtier.DiskConfig(path=str(path), capacity_bytes=1 << 20),
    )
    tokens = np.arange(4 * blocks, dtype=np.int32)
    payload = np.random.default_rng(0).integers(0, 256, (blocks, 256), dtype=np.uint8)
    with kvtier.Store(cfg, namespace=kvtier.Namespace(model="m", tenant="t")) as s:
        s.insert(tokens, payload)
    return path, tokens, payload


def _edit(path: Path, fn: object) -> None:
    env = lmdb.open(str(path), max_dbs=4)
    try:
        dbs = {n: env.open_db(n) for n in (b"index", b"blocks")}
        with env.begin(write=True) as txn:
            fn(txn, dbs)  # type: ignore[operator]
    finally:
        env.close()


def _keys(txn: lmdb.Transaction, db: object) -> list[bytes]:
    return [bytes(k) for k in txn.cursor(db=db).iternext(values=False)]


def test_fsck_clean_folder_names_its_namespace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, _ = _folder(tmp_path)
    assert main(["fsck", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["blocks"] == 6 and report["damaged"] == 0 and report["problems"] == {}
    assert report["namespaces"] == {"m tenant=t block_size=4": 6}
    assert report["payload_bytes"] == 6 * 256


def test_fsck_orphans_are_not_damage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, _ = _folder(tmp_path)

    def orphan(txn: lmdb.Transaction, dbs: dict[bytes, object]) -> None:
        # Drop the first block (record and payload): the five after it no longer chain to a first block.
        first = [k for k in _keys(txn, dbs[b"index"]) if txn.get(k, db=dbs[b"index"])[64:96] == bytes(32)]
        assert len(first) == 1
        txn.delete(first[0], db=dbs[b"index"])
        txn.delete(first[0], db=dbs[b"blocks"])

    _edit(path, orphan)
    # Unreachable blocks are reported, and are not damage: exit 0, not 4.
    assert main(["fsck", str(path)]) == 0
    out = capsys.readouterr().out
    assert "unreachable: 5 (not damage; --repair --orphans removes them)" in out
    # --orphans without --repair is a usage error, not "damage left".
    assert main(["fsck", str(path), "--orphans"]) == 2
    assert "--orphans only applies with --repair" in capsys.readouterr().err
    assert main(["fsck", str(path), "--repair"]) == 0  # nothing to repair: orphans stay
    capsys.readouterr()
    assert main(["fsck", str(path), "--repair", "--orphans"]) == 1
    assert "removed: 5 entries" in capsys.readouterr().out
    assert main(["fsck", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["blocks"] == 0


def test_fsck_finds_each_kind_of_damage_and_repairs_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, tokens, payload = _folder(tmp_path)
    chosen: dict[str, bytes] = {}

    def damage(txn: lmdb.Transaction, dbs: dict[bytes, object]) -> None:
        keys = sorted(_keys(txn, dbs[b"blocks"]))
        flip, garbage, drop, shorten = keys[:4]
        v = bytearray(txn.get(flip, db=dbs[b"blocks"]))
        v[17] ^= 0x40
        txn.put(flip, bytes(v), db=dbs[b"blocks"])
        txn.put(garbage, b"not a record", db=dbs[b"index"])
        txn.delete(drop, db=dbs[b"blocks"])
        txn.put(shorten, bytes(txn.get(shorten, db=dbs[b"blocks"]))[:100], db=dbs[b"blocks"])
        rec = bytearray(txn.get(keys[4], db=dbs[b"index"]))
        rec[96] ^= 1  # a token changes: the key no longer chains
        txn.put(keys[4], bytes(rec), db=dbs[b"index"])
        txn.put(b"\x07" * 32, b"payload without a record", db=dbs[b"blocks"])
        chosen.update(flip=flip, garbage=garbage, drop=drop, shorten=shorten, badkey=keys[4])

    _edit(path, damage)
    assert main(["fsck", str(path), "--json"]) == 4
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == {
        "bad-checksum": 1, "bad-record": 1, "no-payload": 1, "bad-length": 1, "bad-key": 1, "stray-payload": 1,
        "unreachable": 1,
    }, report["problems"]
    assert report["examples"]["bad-checksum"] == [chosen["flip"].hex()]
    assert report["examples"]["stray-payload"] == [(b"\x07" * 32).hex()]
    # Repair removes the damage, keeps the healthy block (unreachable is reported, not removed).
    assert main(["fsck", str(path), "--repair"]) == 1
    capsys.readouterr()
    assert main(["fsck", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["blocks"] == 1 and report["problems"] == {"unreachable": 1}
    assert main(["fsck", str(path), "--repair", "--orphans"]) == 1
    capsys.readouterr()
    assert main(["fsck", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["blocks"] == 0


def test_fsck_bad_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fsck", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"kvtier: error: {tmp_path / 'missing'} does not exist\n"
    (tmp_path / "file").write_text("x")
    assert main(["fsck", str(tmp_path / "file")]) == 2
    assert "is a file, not a disk-tier folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["fsck", str(tmp_path / "empty")]) == 2
    assert "not a kvtier disk folder (no data.mdb)" in capsys.readouterr().err
    other = tmp_path / "other"
    env = lmdb.open(str(other), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"something else", db=env.open_db(b"meta", txn=txn))
    env.close()
    assert main(["fsck", str(other)]) == 2
    assert "no 'namespaces' database" in capsys.readouterr().err
    env = lmdb.open(str(other), max_dbs=4)
    for name in (b"namespaces", b"index", b"blocks"):
        env.open_db(name)
    env.close()
    assert main(["fsck", str(other)]) == 2
    assert "holds format b'something else'" in capsys.readouterr().err


def test_take_removed_keys_reports_blocks_that_left_the_disk(tmp_path: Path) -> None:
    """Keys of evicted disk blocks come back once, oldest first (what vLLM's BlockRemoved events carry)."""
    cfg = kvtier.StoreConfig(
        block_size=4, block_bytes=64, host=kvtier.TierConfig(capacity_bytes=64 * 2),
        disk=kvtier.DiskConfig(path=str(tmp_path / "d"), capacity_bytes=64 * 4),
    )
    ns = kvtier.Namespace(model="m")
    prompts = [np.arange(8, dtype=np.int32) + 100 * i for i in range(4)]
    with kvtier.Store(cfg, namespace=ns) as s:
        assert s.take_removed_keys() == ([], 0)
        for i, p in enumerate(prompts):
            s.insert(p, np.full((2, 64), i, np.uint8), now=float(i))
            s.flush()
        # Host holds the last prompt; the disk (4 blocks) held prompts 0-2 and had to evict the oldest.
        removed, dropped = s.take_removed_keys()
        assert dropped == 0
        first = [bytes(k) for k in kvtier.block_keys(prompts[0], ns, block_size=4)]
        assert removed == first[::-1]  # leaf first, then its parent
        assert s.peek(prompts[0]).num_blocks == 0
        assert s.take_removed_keys() == ([], 0)  # each key is reported once
    host_only = kvtier.Store(kvtier.StoreConfig(block_size=4, block_bytes=64))
    assert host_only.take_removed_keys() == ([], 0)
    host_only.close()
