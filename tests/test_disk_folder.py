"""The disk folder is private, cannot be redirected, is kvtier's own, and its LMDB map never fills
before the capacity (issue 17: 2 and 3)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import kvtier
import lmdb
import numpy as np
import pytest
from disk_helpers import (
    check_prompt,
    close_opened,
    load_all,
    open_store,
    payload,
    popen_py,
    run_py,
    tokens,
)
from kvtier.errors import DiskFormatError, DiskPermissionError
from kvtier.tiers.disk_folder import MARKER
from kvtier.tiers.disk_io import map_size_for


@pytest.fixture(autouse=True)
def _close_stores():  # type: ignore[no-untyped-def]
    yield
    close_opened()


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


# =========================================================================== private
def test_folder_is_0700_and_files_0600_whatever_the_umask(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "cache"
    old = os.umask(0)
    try:
        with open_store(folder) as s:
            s.insert(tokens(1, 2), payload(1, 2))
    finally:
        os.umask(old)
    assert mode(folder) == 0o700
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["data.mdb", "lock.mdb", MARKER])
    for name in names:
        assert mode(folder / name) == 0o600, name


def test_an_existing_readable_folder_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    open_store(folder).close()
    assert mode(folder) == 0o700


@pytest.mark.parametrize("bits", [0o775, 0o757, 0o777])
def test_a_folder_writable_by_others_is_refused(tmp_path: Path, bits: int) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    os.chmod(folder, bits)
    with pytest.raises(DiskPermissionError, match=rf"{folder}.*writable by group or others.*chmod 700 {folder}"):
        open_store(folder)
    assert list(folder.iterdir()) == []  # nothing written into it
    assert isinstance(DiskPermissionError("x"), kvtier.DiskError)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(DiskPermissionError, match=rf"{folder} is owned by uid 65534.*folder of your own"):
        open_store(folder)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("name", ["data.mdb", "lock.mdb", MARKER])
def test_a_planted_symlink_is_never_followed(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "d"
    with open_store(folder) as s:
        s.insert(tokens(1, 2), payload(1, 2))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (folder / name).unlink()
    (folder / name).symlink_to(victim)
    with pytest.raises(DiskPermissionError, match=rf"{folder / name} is a symbolic link"):
        open_store(folder)
    assert victim.read_bytes() == b"precious"
    assert mode(victim) == 0o644 or mode(victim) != 0o600  # not chmod-ed through the link either


def test_a_planted_symlink_in_a_new_folder_is_never_followed(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (folder / "data.mdb").symlink_to(victim)
    with pytest.raises(kvtier.DiskError, match=str(folder)):
        open_store(folder)
    assert victim.read_bytes() == b"precious"


# =========================================================================== identity
def test_a_non_empty_folder_that_is_not_kvtiers_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DiskFormatError, match=rf"{tmp_path} is not empty and not a kvtier disk folder.*notes.txt"):
        open_store(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_another_applications_lmdb_environment_is_refused_and_left_alone(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), max_dbs=4, map_size=1 << 20)
    db = env.open_db(b"things")
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=db)
    env.close()
    before = (tmp_path / "data.mdb").read_bytes()
    with pytest.raises(DiskFormatError, match=rf"{tmp_path} is not a kvtier disk folder of this format"):
        open_store(tmp_path)
    assert (tmp_path / "data.mdb").read_bytes() == before
    assert not (tmp_path / MARKER).exists()


def test_a_kvtier_folder_from_before_the_marker_still_opens(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.insert(tokens(1, 2), payload(1, 2))
    (tmp_path / MARKER).unlink()
    with open_store(tmp_path) as s:
        assert check_prompt(s, 1, 2) == 2
    assert (tmp_path / MARKER).read_bytes() == b"kvtier-disk 1\n"


def test_a_marker_of_another_format_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    (tmp_path / MARKER).write_bytes(b"kvtier-disk 7\n")
    with pytest.raises(DiskFormatError, match="kvtier-disk 7"):
        open_store(tmp_path)


# =========================================================================== map size
@pytest.mark.parametrize(
    ("block_bytes", "capacity"),
    [(64, 1 << 20), (256, 1 << 20), (2048, 1 << 20), (4096, 1 << 20), (64 << 10, 4 << 20), (2048, 128 << 20)],
)
def test_the_map_never_fills_before_the_capacity(tmp_path: Path, block_bytes: int, capacity: int) -> None:
    """Filled to its capacity and beyond, the tier evicts by policy only: no write error, no map eviction.
    (2 KiB blocks and 128 MiB: the map filled at about 85 MiB before it was sized per record.)"""
    blocks = capacity // block_bytes
    s = open_store(
        tmp_path, host_blocks=8, block_bytes=block_bytes, disk_blocks=blocks, write_through=True, sync=False,
        queue_blocks=min(1024, blocks // 4), batch_blocks=min(256, blocks // 8), promote=False,
    )
    per = min(64, blocks // 8)
    same = payload(1, per, block_bytes)  # the bytes do not matter here, the keys do
    pid = 0
    while pid * per < blocks * 3 // 2:
        pid += 1
        assert s.insert(tokens(pid, per), same).stored_blocks == per
    s.flush()
    d = s.stats().disk
    assert d.write_errors == 0
    assert d.blocks == blocks  # full to the capacity
    assert d.evicted == pid * per - blocks  # capacity evictions only
    n, out = load_all(s, tokens(pid, per), per, block_bytes)
    assert n == per and np.array_equal(out, same)
    s.close()


def test_map_size_for_covers_what_lmdb_takes_per_record(tmp_path: Path) -> None:
    """The rule's bytes per block are at least LMDB's, measured on random keys, small and large values."""
    for value in (64, 256, 1900, 2000, 4096, 65536):
        env = lmdb.open(str(tmp_path / str(value)), map_size=1 << 30, max_dbs=4, sync=False)
        blocks_db, index_db = env.open_db(b"blocks"), env.open_db(b"index")
        n = 2000
        rng = np.random.default_rng(value)
        with env.begin(write=True) as txn:
            for _ in range(n):
                k = rng.bytes(32)
                txn.put(k, rng.bytes(value), db=blocks_db)
                txn.put(k, rng.bytes(96 + 4 * 16), db=index_db)
        used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        env.close()
        fixed = map_size_for(value, value, 1) - (64 << 20)  # one block plus one batch's room
        assert map_size_for(n * value, value, 1) - fixed >= used, value


GROWER = """
import sys
from disk_helpers import open_store, payload, tokens
s = open_store(sys.argv[1], host_blocks=4, block_bytes=65536, disk_blocks=4096, write_through=True, sync=False)
for pid in range(1000, 1000 + int(sys.argv[2])):
    s.insert(tokens(pid, 4), payload(pid, 4, 65536))
s.flush()
print("done", flush=True)
sys.stdin.readline()
s.close()
"""


def test_processes_with_different_capacities_share_a_folder(tmp_path: Path) -> None:
    """A small store beside a big one that grows the folder past the small one's map (MDB_MAP_RESIZED)."""
    small = open_store(tmp_path, host_blocks=4, block_bytes=65536, disk_blocks=16, map_size=4 << 20, sync=False)
    small.insert(tokens(1, 2), payload(1, 2, 65536))
    small.flush(host=True)
    big = popen_py(GROWER, str(tmp_path), "40")  # 10 MiB of blocks: past the small map
    assert big.stdout is not None and big.stderr is not None
    try:
        assert big.stdout.readline().strip() == "done", big.stderr.read()
        assert (tmp_path / "data.mdb").stat().st_size > 4 << 20
        assert check_prompt(small, 1000, 4, 65536) == 4  # found in the folder, read through the bigger map
        small.insert(tokens(2, 2), payload(2, 2, 65536))
        small.flush(host=True)
        assert check_prompt(small, 2, 2, 65536) == 2
        small.check_invariants()
    finally:
        big.communicate("\n", timeout=60)
    assert big.returncode == 0, big.stderr


# =========================================================================== full disk
TMPFS = """
import json, sys
import kvtier
from disk_helpers import check_prompt, open_store, payload, tokens
s = open_store(sys.argv[1], host_blocks=1024, block_bytes=65536, disk_blocks=4096, write_through=True)
out = {}
for pid in range(1, 60):
    s.insert(tokens(pid, 2), payload(pid, 2, 65536))
try:
    s.flush()
    out["error"] = None
except kvtier.DiskWriteError as e:
    out["error"] = str(e)
out["served"] = sum(check_prompt(s, pid, 2, 65536) for pid in range(1, 60))
s.check_invariants()
try:
    s.close(persist=False)
except kvtier.DiskWriteError:
    pass
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_disk_the_store_fills_says_no_space_left(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = run_py(TMPFS, str(mnt / "kv"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["error"] is not None and "No space left on device" in out["error"], out
    assert out["served"] == 118  # the host still serves every block, bytes checked
