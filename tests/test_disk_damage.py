"""Damaged folders: random byte flips in data.mdb never serve a wrong payload, every folder opens, fsck
never crashes and ``fsck --repair`` always leaves a consistent folder (issue 17, item 3).

One trial: a folder of 40 prompts (3 blocks each) is written and closed; 16 bytes at seeded random
offsets of ``data.mdb`` are flipped (meta, branch, leaf and payload pages alike); then, in a child process
(LMDB reads the damaged pages), on one copy of the folder: a store opens it, loads every prompt twice
(a damaged block must be a miss the second time), and on another copy: ``fsck``, ``fsck --repair``,
``fsck`` again (clean), and a store opens the repaired folder and loads every prompt.

The default run makes 12 trials; ``pytest -m slow tests/test_disk_damage.py`` makes the 100 of the issue
and prints the figures (docs/disk.md, Damage).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from kvtier.fsck import fsck
import subprocess
import sys

import disk_helpers
from disk_helpers import (
    check_prompt,
    child_env,
    close_opened,
    folder_keys,
    folder_put,
    keys_of,
    lmdb_env,
    load_all,
    open_store,
    payload,
    run_py,
    tokens,
)

PROMPTS = 40
BLOCKS = 3
BB = 512
FLIPS = 16

TRIAL = """
import faulthandler; faulthandler.enable()
import json, sys, traceback
from pathlib import Path
import numpy as np
import kvtier
from kvtier.fsck import fsck
from disk_helpers import load_all, open_store, payload, tokens

PROMPTS, BLOCKS, BB = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
out = {"wrong": 0, "opened": False, "served": 0, "served_again": 0, "errors": []}

def loads(s):
    served = wrong = 0
    for pid in range(1, PROMPTS + 1):
        n, got = load_all(s, tokens(pid, BLOCKS), BLOCKS, BB)
        want = payload(pid, BLOCKS, BB)
        served += n
        wrong += sum(not np.array_equal(got[b], want[b]) for b in range(n))
    return served, wrong

try:  # copy A: a store opens the damaged folder
    s = open_store(sys.argv[1], host_blocks=4, block_bytes=BB, promote=False)
    out["opened"] = True
    rep = s.restore_report
    out["restored"], out["damaged"], out["rebuilt"] = rep.restored, rep.damaged, rep.rebuilt
    out["served"], w1 = loads(s)
    s.flush()  # the damaged blocks' deletes commit (or fail)
    first = set(s.take_removed_keys()[0])
    out["served_again"], w2 = loads(s)
    s.flush()
    again = set(s.take_removed_keys()[0])
    out["wrong"] += w1 + w2
    out["dropped_on_load"] = len(first)
    out["dropped_twice"] = len(first & again)
    out["new_drops_second_pass"] = len(again - first)
    s.check_invariants()
    s.close(persist=False)
except Exception as e:
    out["errors"].append("store: " + "".join(traceback.format_exception_only(e)).strip())

try:  # copy B: fsck, repair, fsck
    r1 = fsck(sys.argv[2])
    out["fsck_damaged"] = r1.damaged
    r2 = fsck(sys.argv[2], repair=True)
    out["repair_removed"] = r2.removed
    r3 = fsck(sys.argv[2])
    out["after_repair_damaged"] = r3.damaged
    s = open_store(sys.argv[2], host_blocks=4, block_bytes=BB, promote=False)
    out["repaired_restore_damaged"] = s.restore_report.damaged
    served, w = loads(s)
    out["wrong"] += w
    out["repaired_served"] = served
    s.check_invariants()
    s.close(persist=False)
except Exception as e:
    out["errors"].append("fsck: " + "".join(traceback.format_exception_only(e)).strip())
print(json.dumps(out))
"""


def make_folder(path: Path) -> None:
    s = open_store(path, host_blocks=4, block_bytes=BB, write_through=True)
    try:
        for pid in range(1, PROMPTS + 1):
            s.insert(tokens(pid, BLOCKS), payload(pid, BLOCKS, BB))
        s.flush()
    finally:
        s.close(persist=False)
        close_opened()


def trial(template: Path, work: Path, seed: int) -> dict:  # type: ignore[type-arg]
    a, b = work / f"a{seed}", work / f"b{seed}"
    shutil.copytree(template, a)
    data = bytearray((a / "data.mdb").read_bytes())
    rng = random.Random(seed)
    for _ in range(FLIPS):
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
    (a / "data.mdb").write_bytes(bytes(data))
    shutil.copytree(a, b)
    r = run_py(TRIAL, str(a), str(b), str(PROMPTS), str(BLOCKS), str(BB), timeout=120)
    assert r.returncode == 0, f"seed {seed}: child died ({r.returncode}): {r.stderr[-2000:]}"
    out: dict = json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[type-arg]
    shutil.rmtree(a)
    shutil.rmtree(b)
    return out


def run_trials(tmp_path: Path, seeds: range) -> dict[str, int]:
    template = tmp_path / "template"
    make_folder(template)
    figures = {"trials": 0, "wrong_payloads": 0, "not_opened": 0, "fsck_crashed": 0, "repair_inconsistent": 0,
               "damage_found": 0, "dropped_twice": 0, "new_damage_on_second_pass": 0, "rebuilt_at_open": 0}
    for seed in seeds:
        out = trial(template, tmp_path, seed)
        figures["trials"] += 1
        figures["wrong_payloads"] += out["wrong"]
        figures["not_opened"] += not out["opened"]
        figures["fsck_crashed"] += any(e.startswith("fsck") for e in out["errors"])
        figures["repair_inconsistent"] += out.get("after_repair_damaged", 1) != 0 or out.get(
            "repaired_restore_damaged", 1
        ) != 0
        figures["damage_found"] += out.get("fsck_damaged", 0) > 0
        figures["rebuilt_at_open"] += bool(out.get("rebuilt"))
        figures["dropped_twice"] += out.get("dropped_twice", 0)
        figures["new_damage_on_second_pass"] += out.get("new_drops_second_pass", 0) > 0
        assert out["errors"] == [], f"seed {seed}: {out}"
        assert out["wrong"] == 0, f"seed {seed}: a wrong payload was served: {out}"
        assert out["dropped_twice"] == 0, f"seed {seed}: damage found twice: {out}"
        assert out["served_again"] <= out["served"], f"seed {seed}: {out}"
        assert out["after_repair_damaged"] == 0 and out["repaired_restore_damaged"] == 0, f"seed {seed}: {out}"
    return figures


def test_random_byte_flips_quick(tmp_path: Path) -> None:
    figures = run_trials(tmp_path, range(12))
    print(figures)
    assert figures["damage_found"] >= 1  # the flips did damage something fsck sees


@pytest.mark.slow
def test_random_byte_flips_100_trials(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("100 trials (several minutes): run with -m slow")
    figures = run_trials(tmp_path, range(1000, 1100))
    print("\nbyte-flip trials:", json.dumps(figures))
    assert figures["trials"] == 100


def test_one_malformed_index_key_does_not_refuse_the_folder(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.insert(tokens(1, 2), payload(1, 2))
    folder_put(tmp_path, b"index", b"short", b"not a record")
    try:
        s = open_store(tmp_path)
        assert s.restore_report is not None
        assert (s.restore_report.restored, s.restore_report.damaged) == (2, 1)
        n, _ = load_all(s, tokens(1, 2), 2)
        assert n == 2
        s.close()
    finally:
        close_opened()
    assert b"short" not in folder_keys(tmp_path, b"index")


def test_a_damaged_block_is_a_miss_after_it_is_found_once(tmp_path: Path) -> None:
    with open_store(tmp_path, host_blocks=2, promote=False) as s:
        s.insert(tokens(1, 3), payload(1, 3))
    key = keys_of(tokens(1, 3))[1]
    folder_put(tmp_path, b"blocks", key, b"x" * 64)  # wrong bytes for block 1
    try:
        s = open_store(tmp_path, host_blocks=2, promote=False)
        n1, _ = load_all(s, tokens(1, 3), 3)
        n2, _ = load_all(s, tokens(1, 3), 3)
        assert (n1, n2) == (1, 1)
        assert s.stats().disk.corrupted == 1
        s.close()
    finally:
        close_opened()


META_CHILD = """
import faulthandler; faulthandler.enable()
import json, sys
from disk_helpers import check_prompt, open_store
s = open_store(sys.argv[1])
rep = s.restore_report
print(json.dumps({"restored": rep.restored, "served": sum(check_prompt(s, pid, 2) for pid in range(1, 6))}))
s.close()
"""


@pytest.mark.parametrize("damage", ["magic", "last_page", "both_last_pages"])
def test_a_damaged_meta_page_never_crashes_the_open(tmp_path: Path, damage: str) -> None:
    """LMDB trusts its two meta pages: a bad one is replaced by the good one; pages past the end of the
    file are made readable zeros (a damaged page, not SIGBUS)."""
    with open_store(tmp_path, write_through=True) as s:
        for pid in range(1, 6):
            s.insert(tokens(pid, 2), payload(pid, 2))
            s.flush()  # a commit per prompt: the commit before the last holds prompts 1 to 4
    close_opened()
    path = tmp_path / "data.mdb"
    data = bytearray(path.read_bytes())
    newest = max((0, 1), key=lambda i: int.from_bytes(data[i * 4096 + 144 : i * 4096 + 152], "little"))
    if damage == "magic":
        data[newest * 4096 + 16] ^= 0xFF
    else:
        for i in (0, 1) if damage == "both_last_pages" else (newest,):
            data[i * 4096 + 136 : i * 4096 + 144] = (len(data) // 4096 + 50).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    r = run_py(META_CHILD, str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if damage == "last_page":
        assert out["served"] == 10, out  # every page is still there
    if damage == "magic":  # the other meta page: the commit before the last one
        assert out["served"] >= 8, out


STRAY = """
import sys
import lmdb
env = lmdb.open(sys.argv[1], max_dbs=4, map_size=1 << 30)
with env.begin(write=True) as txn:
    txn.put(bytes([int(sys.argv[2])]) * 32, b"stray", db=env.open_db(b"blocks", txn=txn))
env.close()
"""


def test_fsck_repair_beside_a_live_store_works(tmp_path: Path) -> None:
    """20 runs of ``kvtier fsck --repair`` while a store in this process writes (and grows the folder past
    the map fsck opened with): each one works, the strays planted meanwhile are removed, the store goes on."""
    s = open_store(tmp_path, host_blocks=4, block_bytes=4096, disk_blocks=4096, write_through=True, sync=False)
    try:
        for run in range(20):
            for pid in range(run * 10, run * 10 + 10):
                s.insert(tokens(pid, 4, 4), payload(pid, 4, 4096))
            s.flush()
            planted = run % 4 == 0
            if planted:
                assert run_py(STRAY, str(tmp_path), str(run + 1)).returncode == 0
            r = subprocess.run(
                [sys.executable, "-m", "kvtier", "fsck", "--repair", str(tmp_path)],
                capture_output=True, text=True, env=child_env(), timeout=120, check=False,
            )
            assert r.returncode == (1 if planted else 0), f"run {run}: {r.stdout}{r.stderr}"
            assert "Traceback" not in r.stderr
            if planted:
                assert "stray-payload: 1" in r.stdout
        assert all(check_prompt(s, pid, 4, 4096) == 4 for pid in range(190, 200))
        s.flush()
        assert s.stats().disk.write_errors == 0
        s.check_invariants()
    finally:
        s.close()
        close_opened()


BUSY = """
import sys
from kvtier.errors import DiskBusyError
from kvtier.fsck import check
from kvtier.tiers.disk_io import DiskIO
io = DiskIO(sys.argv[1], map_size=1 << 20, create=False)
try:
    check(io, repair=True, rebuild=True)
    print("rebuilt")
except DiskBusyError as e:
    print("busy:", e)
"""


def test_a_rebuild_beside_a_live_store_refuses_clearly(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    try:
        s.insert(tokens(1, 2), payload(1, 2))
        s.flush(host=True)
        r = run_py(BUSY, str(tmp_path))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("busy:") and "a running store has it open" in r.stdout, r.stdout
        assert check_prompt(s, 1, 2) == 2
    finally:
        s.close()
        close_opened()
    r = run_py(BUSY, str(tmp_path))  # alone with the folder: it rebuilds, and the blocks are all there
    assert r.stdout.strip() == "rebuilt", r.stdout + r.stderr
    with open_store(tmp_path) as s:
        assert check_prompt(s, 1, 2) == 2


def test_an_environment_that_does_not_open_is_reported_repaired_and_reopened(tmp_path: Path) -> None:
    from kvtier.fsck import fsck

    with open_store(tmp_path) as s:
        s.insert(tokens(1, 2), payload(1, 2))
    close_opened()
    path = tmp_path / "data.mdb"
    data = bytearray(path.read_bytes())
    for i in (0, 1):
        data[i * 4096 + 16] ^= 0xFF  # both meta pages: LMDB says MDB_INVALID
    path.write_bytes(bytes(data))
    damaged = tmp_path.parent / "copy"
    shutil.copytree(tmp_path, damaged)
    report = fsck(tmp_path)
    assert report.problems["unreadable-environment"] == 1 and report.damaged == 1
    assert "MDB_INVALID" in report.text()
    assert fsck(tmp_path, repair=True).removed == 1
    assert fsck(tmp_path).damaged == 0
    # A store opening such a folder starts it anew (nothing could be read) and says so.
    s = open_store(damaged)
    try:
        assert s.restore_report is not None and s.restore_report.rebuilt and s.restore_report.restored == 0
        s.insert(tokens(2, 2), payload(2, 2))
        assert check_prompt(s, 2, 2) == 2
    finally:
        s.close()
        close_opened()


@pytest.mark.parametrize("field", ["session", "wall_time"])
def test_a_record_with_a_damaged_session_or_time_is_dropped_not_fatal(tmp_path, field: str) -> None:  # type: ignore[no-untyped-def]
    """A session name that is not UTF-8 any more (or a time that is not finite) made every later residency()
    raise UnicodeDecodeError; such a record is damaged: dropped and counted, and the rest of the folder serves."""
    import struct

    s = open_store(tmp_path, host_blocks=64, write_through=True, sync=False)
    s.insert(tokens(1, 1), payload(1, 1), session="abc")
    s.insert(tokens(2, 1), payload(2, 1), session="xyz")
    s.flush()
    s.close(persist=False)
    env = lmdb_env(tmp_path)
    with env.begin(write=True) as txn:
        db = env.open_db(b"index", txn=txn)
        k, v = next(iter(txn.cursor(db=db)))
        v = bytearray(v)
        if field == "session":
            v[-1] = 0xFF
        else:
            v[16:24] = struct.pack("<d", float("nan"))
        txn.put(k, bytes(v), db=db)
    env.close()
    s = open_store(tmp_path, host_blocks=64)
    assert s.restore_report is not None
    assert (s.restore_report.restored, s.restore_report.damaged) == (1, 1)
    assert {r.session for r in s.residency().rows if r.resident_bytes} <= {"abc", "xyz"}
    assert sorted(check_prompt(s, pid, 1) for pid in (1, 2)) == [0, 1]


POINTER_CHILD = """
import faulthandler; faulthandler.enable()
import json, sys
from disk_helpers import check_prompt, open_store
from kvtier.fsck import fsck

if sys.argv[2] == "fsck":
    r1 = fsck(sys.argv[1])
    r2 = fsck(sys.argv[1], repair=True)
    r3 = fsck(sys.argv[1])
    print(json.dumps({"damaged": r1.damaged, "text": r1.text(), "after": r3.damaged}))
else:
    s = open_store(sys.argv[1], host_blocks=4)
    rep = s.restore_report
    served = sum(check_prompt(s, pid, 3) for pid in range(1, 201))
    s.check_invariants()
    s.close()
    print(json.dumps({"rebuilt": rep.rebuilt, "restored": rep.restored, "served": served}))
"""


def _written_folder(
    folder: Path, *, prompts: int, blocks: int, block_bytes: int = disk_helpers.BB
) -> tuple[Path, bytearray]:
    """Writes prompts 1..``prompts`` (``blocks`` blocks each) into a new folder and closes it: its data.mdb path and
    bytes, to damage."""
    s = open_store(folder, host_blocks=4, block_bytes=block_bytes)
    try:
        for pid in range(1, prompts + 1):
            s.insert(tokens(pid, blocks), payload(pid, blocks, block_bytes))
        s.flush()
    finally:
        s.close()
        close_opened()
    path = folder / "data.mdb"
    return path, bytearray(path.read_bytes())


@pytest.mark.parametrize("reader", ["store", "fsck"])
def test_a_branch_pointer_past_the_file_is_salvaged_not_a_crash(tmp_path: Path, reader: str) -> None:
    """LMDB follows a branch page's child page number without checking it: pointed past the end of the file it
    read there (SIGBUS) or past its map (SIGSEGV), killing the process. Every branch page's first child is
    pointed past the file here; the folder is found damaged before LMDB reads it and rebuilt from the rest."""
    folder = tmp_path / "f"
    path, data = _written_folder(folder, prompts=200, blocks=3)
    pages = len(data) // 4096
    branches = 0
    for pg in range(2, pages):
        page = pg * 4096
        if int.from_bytes(data[page + 10 : page + 12], "little") != 1:  # P_BRANCH
            continue
        node = page + int.from_bytes(data[page + 16 : page + 18], "little")
        far = pages + 5_000  # past the end of the file, inside the map
        data[node : node + 6] = (far & 0xFFFF).to_bytes(2, "little") + ((far >> 16) & 0xFFFF).to_bytes(
            2, "little"
        ) + (far >> 32).to_bytes(2, "little")
        branches += 1
    assert branches >= 2
    path.write_bytes(bytes(data))
    r = run_py(POINTER_CHILD, str(folder), reader, timeout=120)
    assert r.returncode == 0, f"the {reader} died ({r.returncode}): {r.stderr[-2000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if reader == "fsck":
        assert out["damaged"] >= 1 and "damaged pages or references" in out["text"], out
        assert out["after"] == 0, out
    else:
        assert out["rebuilt"] is True, out
        # What sound pages lead to is kept and served with its own bytes (check_prompt asserts them).
        assert 0 < out["served"] < 600 and out["restored"] > 0, out


def test_an_overflow_run_with_a_damaged_header_is_salvaged(tmp_path: Path) -> None:
    """LMDB frees a large value's pages by the count in its first overflow page's header, not by the value's
    length: a count that grew would hand out pages other blocks still use at the next delete, and later writes
    would overwrite them. The walk at open checks each run's header; the folder is rebuilt, and every block
    served afterwards has its own bytes."""
    folder, bb = tmp_path / "f", 8192  # 8 KiB blocks: three-page overflow runs
    path, data = _written_folder(folder, prompts=30, blocks=2, block_bytes=bb)
    runs = [  # a run's first page: its own number, then P_OVERFLOW
        pg
        for pg in range(2, len(data) // 4096)
        if int.from_bytes(data[pg * 4096 : pg * 4096 + 8], "little") == pg and data[pg * 4096 + 10] == 0x04
    ]
    assert len(runs) >= 30
    head = runs[len(runs) // 2] * 4096 + 12
    count = int.from_bytes(data[head : head + 4], "little")
    data[head : head + 4] = (count + 3).to_bytes(4, "little")  # claims the next run's pages too
    path.write_bytes(bytes(data))

    s = open_store(folder, host_blocks=4, block_bytes=bb)
    assert s.restore_report.rebuilt is True
    served = sum(check_prompt(s, pid, 2, bb) for pid in range(1, 31))
    assert 54 <= served < 60
    s.clear()
    s.flush()
    s.close()
    close_opened()
    report = fsck(folder)
    assert report.damaged == 0, report.text()
