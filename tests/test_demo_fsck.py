"""`kvtier demo` on its embedded defaults (host + an LMDB folder) and `kvtier fsck` on damaged folders."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest

import kvtier
from kvtier.cli import main


def _demo(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["demo", *args])
    return rc, capsys.readouterr().out


def _figures(out: str) -> str:
    """The demo's output without what may differ between runs (wall time, the folder's state)."""
    return "\n".join(line for line in out.splitlines() if "restored in" not in line and "cache folder" not in line)


def test_demo_runs_host_and_disk_and_restarts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "cache"
    rc, out = _demo(capsys, "--disk", str(folder))
    assert rc == 0, out
    assert "MISMATCH" not in out
    assert f"cache folder: {folder} (new)" in out
    lines = out.splitlines()
    rows = [line.split() for line in lines if re.match(r"\s*\d+ agent-\d", line)]
    assert len(rows) == 3 * 8
    # The first request finds nothing (no KV check is claimed for it); the next ones load the shared system prompt.
    assert rows[0][3] == "0" and rows[0][-1] == "-"
    assert {r[-1] for r in rows[1:]} == {"ok"} and all(int(r[3]) >= 2048 for r in rows[1:])
    # Hits per tier and overall; the overall figure is the step rows' hits over their full blocks.
    m = re.search(
        r"block lookups: ([\d,]+); hits: host ([\d,]+) \(.*?\), disk ([\d,]+) \(.*?\), overall ([\d,]+) \(([\d.]+)%\)",
        out,
    )
    assert m, out
    looked_up, host, disk, overall = (int(g.replace(",", "")) for g in m.groups()[:4])
    assert looked_up == sum(int(r[2]) // 16 for r in rows)
    assert overall == sum(int(r[3]) for r in rows) // 16 == host + disk
    assert host > 0 and disk > 0  # the host tier is smaller than the working set: some hits come from disk
    assert float(m.group(5)) == pytest.approx(100 * overall / looked_up, abs=0.05)
    # Per-session GB-hours add up to the total (the sessions' blocks on both tiers).
    total = re.search(r"residency over 240 s: ([\d.]+) GB-hours \(host ([\d.]+), disk ([\d.]+)\)", out)
    assert total, out
    sessions = [float(x) for x in re.findall(r"^  agent-\d\s+([\d.]+) GB-hours$", out, re.M)]
    assert len(sessions) == 3
    assert sum(sessions) == pytest.approx(float(total.group(1)), abs=4 * 0.00005)
    assert float(total.group(2)) + float(total.group(3)) == pytest.approx(float(total.group(1)), abs=3 * 0.00005)
    # Sizes print in a readable unit.
    assert "block 16 tokens = 512 KiB of KV" in out and "host tier: 128 MiB, LRU" in out
    # After the restart every session's whole prompt is found again, all of it on disk.
    restart_lines = [line for line in lines if "from disk)" in line]
    assert len(restart_lines) == 3
    for line in restart_lines:
        assert "(100.0%" in line and "KV check ok" in line, line
    # The folder is clean.
    assert main(["fsck", str(folder)]) == 0


def test_demo_is_repeatable_and_starts_clean_unless_keep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "cache"
    args = ("--sessions", "2", "--steps", "5", "--capacity", "8MiB", "--disk", str(folder))
    rc, first = _demo(capsys, *args)
    assert rc == 0
    # A second run on the same folder empties it first, says so, and prints the same figures.
    rc, second = _demo(capsys, *args)
    assert rc == 0
    emptied = rf"cache folder: {re.escape(str(folder))} \(emptied: it held \d+(\.\d+)? MiB from an earlier run"
    assert re.search(emptied, second)
    assert _figures(second) == _figures(first)
    # A run in another folder (another writer, other timings) too.
    rc, third = _demo(capsys, *args[:-1], str(tmp_path / "other"))
    assert _figures(third) == _figures(first)
    # --keep reuses the folder, says what it held, and its first step then hits.
    rc, kept = _demo(capsys, *args, "--keep")
    assert rc == 0
    assert re.search(r"\(reused, --keep: it holds \d+ blocks, \d+(\.\d+)? MiB of KV, from an earlier run", kept)
    def first_request(out: str) -> list[str]:
        return next(line.split() for line in out.splitlines() if re.match(r"\s*0 agent-0 ", line))

    assert first_request(first)[3] == "0"
    assert int(first_request(kept)[3]) > 2048 and first_request(kept)[-1] == "ok"


def test_demo_default_folder_is_the_user_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(sys, "platform", "linux")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    rc, out = _demo(capsys, "--sessions", "1", "--steps", "2")
    assert rc == 0
    expected = tmp_path / "xdg" / "kvtier" / "demo"
    assert f"cache folder: {expected} (new)" in out
    assert sorted(p.name for p in expected.iterdir()) == ["data.mdb", "kvtier-format", "lock.mdb"]
    assert list(work.iterdir()) == []  # nothing left in the working directory


def test_demo_refuses_a_folder_that_is_not_a_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert main(["demo", "--disk", str(folder)]) == 2
    assert "holds files that are not a kvtier cache (notes.txt): give a new or empty folder" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "keep me"


def test_demo_never_empties_another_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, _ = _folder(tmp_path)  # a kvtier folder of namespace model "m", tenant "t"
    before = sorted((p.name, p.stat().st_size) for p in path.iterdir())
    assert main(["demo", "--disk", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is a kvtier cache with other blocks than the demo's (model 'm' tenant 't')" in err, err
    assert sorted((p.name, p.stat().st_size) for p in path.iterdir()) == before
    assert main(["fsck", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["blocks"] == 6


def test_demo_names_a_folder_whose_namespaces_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged page under the namespace records is a DiskReadError (exit 2), never a raw lmdb.Error."""
    from kvtier.demo import prepare_folder
    from kvtier.tiers.disk_io import DiskIO

    path, _, _ = _folder(tmp_path)

    def damaged(self: DiskIO, op: str, n: int) -> None:
        if op == "read":
            raise lmdb.CorruptedError("injected")

    monkeypatch.setattr(DiskIO, "_fault", damaged)
    with pytest.raises(kvtier.errors.DiskReadError, match="cannot read the namespaces.*injected"):
        prepare_folder(str(path), keep=True)
    assert main(["demo", "--disk", str(path)]) == 2
    assert "cannot read the namespaces" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["fsck", str(path), "--json"]) == 0  # untouched
    assert json.loads(capsys.readouterr().out)["blocks"] == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--capacity", "12x"], "argument --capacity: '12x' is not bytes such as 512MiB"),
        (["--capacity", "100 blocks"], "argument --capacity: '100 blocks' is blocks; expected bytes"),
        (["--disk-capacity", "0"], "argument --disk-capacity: '0' is below the minimum of 1 byte"),
        (["--sessions", "0"], "argument --sessions: '0' is not a whole number >= 1"),
        (["--system-tokens", "2MiB"], "argument --system-tokens: '2MiB' is bytes; expected tokens"),
    ],
)
def test_demo_bad_options_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["demo", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


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
