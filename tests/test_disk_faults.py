"""Disk faults injected through the tier's I/O hook: failed writes are kept and retried by the next
``flush()``, errors are one line, reads that fail are misses, and no raw LMDB error reaches a caller."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import kvtier
import lmdb
import pytest
from disk_helpers import Faults, check_prompt, close_opened, open_store, payload, popen_py, tokens


@pytest.fixture(autouse=True)
def _close_stores():  # type: ignore[no-untyped-def]
    yield
    close_opened()


@pytest.mark.parametrize("write_through", [False, True])
def test_a_failed_write_is_retried_by_the_next_flush(tmp_path: Path, write_through: bool) -> None:
    s = open_store(tmp_path, host_blocks=64, write_through=write_through, sync=False)
    assert s._disk is not None
    s._disk.io.fault = faults = Faults({"commit": None})
    for pid in range(1, 5):
        s.insert(tokens(pid, 2), payload(pid, 2))
    with pytest.raises(kvtier.DiskWriteError, match=r"8 blocks not persisted \(8 kept queued"):
        s.flush(host=True)
    assert faults.failed > 0
    d = s.stats().disk
    assert d.pending == 8 and d.write_errors >= 8
    assert [check_prompt(s, pid, 2) for pid in range(1, 5)] == [2] * 4  # still served, from memory
    with pytest.raises(kvtier.DiskWriteError, match="8 blocks not persisted"):  # still failing: said again
        s.flush()
    s._disk.io.fault = None
    s.flush()  # the retry writes them
    assert s.stats().disk.pending == 0
    s.check_invariants()
    s.close(persist=False)  # nothing left in memory only: the folder has every block
    with open_store(tmp_path, host_blocks=64) as s:
        assert s.restore_report is not None and s.restore_report.restored == 8
        assert [check_prompt(s, pid, 2) for pid in range(1, 5)] == [2] * 4


def test_many_failed_batches_make_one_short_error(tmp_path: Path) -> None:
    """Failures beyond what the queue keeps are dropped (and counted); the message stays one line."""
    s = open_store(tmp_path, host_blocks=512, write_through=True, queue_blocks=64, batch_blocks=4, sync=False)
    assert s._disk is not None
    s._disk.io.fault = Faults({"commit": None})
    for pid in range(1, 101):
        s.insert(tokens(pid, 2), payload(pid, 2))  # never waits for the failing writer for good
    with pytest.raises(kvtier.DiskWriteError) as e:
        s.flush()
    msg = str(e.value)
    assert "48 kept queued" in msg and "dropped" in msg, msg
    assert msg.count("No space left on device") == 1 and len(msg) < 300, msg
    assert "\n" not in msg
    s._disk.io.fault = None
    s.flush()
    s.check_invariants()


def test_reads_that_fail_are_misses_and_raise_nothing(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=2, sync=False, promote=False)
    for pid in range(1, 5):
        s.insert(tokens(pid, 3), payload(pid, 3))
    s.flush(host=True)
    assert s._disk is not None
    s._disk.io.fault = Faults({"read": None}, lmdb.CorruptedError("injected"))
    # Prompt 1's blocks are on disk only: a load that cannot read them serves none, raises nothing.
    assert check_prompt(s, 1, 3) == 0
    assert s.match(tokens(99, 3)).num_blocks == 0  # a probe of the folder that fails: a miss
    s._disk.io.fault = None
    assert check_prompt(s, 1, 3) == 3  # nothing was dropped for a read error of the whole batch
    s.check_invariants()


def test_a_namespace_that_cannot_be_recorded_is_a_disk_write_error(tmp_path: Path) -> None:
    """Registering writes nothing; the namespace's record rides the next commit of its blocks, fails with it, and is
    written by the flush that retries them."""
    from kvtier.fsck import fsck

    s = open_store(tmp_path)
    assert s._disk is not None
    s._disk.io.fault = Faults({"commit": None})
    ns = kvtier.Namespace(model="another")
    s.register(ns)  # no transaction
    s.insert(tokens(1, 2), payload(1, 2), namespace=ns)
    with pytest.raises(kvtier.DiskWriteError, match="No space left on device"):
        s.flush(host=True)
    s._disk.io.fault = None
    s.flush(host=True)
    s.close()
    assert any(name.startswith("another") for name in fsck(tmp_path).namespaces)


KILL_CHILD = """
import sys
import kvtier
from disk_helpers import Faults, open_store, payload, tokens

s = open_store(sys.argv[1], host_blocks=4, write_through=sys.argv[2] == "1")
s._disk.io.fault = Faults({"commit": None})
for pid in range(1, 5):
    s.insert(tokens(pid, 2), payload(pid, 2))
try:
    s.flush(host=True)
    print("no error", flush=True)
except kvtier.DiskWriteError as e:
    print("error", e, flush=True)
s._disk.io.fault = None
s.flush(host=True)  # the retry: from here on the 8 blocks survive a kill
print("flushed", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("write_through", [False, True])
def test_blocks_of_a_failed_flush_survive_a_kill_after_the_retry(tmp_path: Path, write_through: bool) -> None:
    proc = popen_py(KILL_CHILD, str(tmp_path), "1" if write_through else "0")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = proc.stdout.readline()
        assert first.startswith("error") and "not persisted" in first, first + proc.stderr.read()
        assert proc.stdout.readline().strip() == "flushed", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    with open_store(tmp_path, host_blocks=4) as s:
        survived = sum(check_prompt(s, pid, 2) for pid in range(1, 5))
    assert survived == 8, json.dumps({"survived": survived})


def test_a_full_disk_never_costs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only damage makes kvtier rebuild or remove a folder: on a full disk a store opens and serves (opening writes
    nothing), its new blocks fail to commit with the cause, and every block is there once it has room again."""
    with open_store(tmp_path, host_blocks=4) as s:
        for pid in range(1, 5):
            s.insert(tokens(pid, 2), payload(pid, 2))
    from kvtier.tiers.disk_io import DiskIO

    def full(self: DiskIO, op: str, n: int) -> None:
        if op == "commit":
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(DiskIO, "_fault", full)
    s = open_store(tmp_path, host_blocks=4)  # opening writes nothing (a registered namespace rides the next commit)
    assert [check_prompt(s, pid, 2) for pid in range(1, 5)] == [2] * 4  # a full disk still serves reads
    s.insert(tokens(9, 2), payload(9, 2))
    with pytest.raises(kvtier.DiskWriteError, match="No space left on device"):
        s.flush(host=True)
    monkeypatch.undo()
    s.flush(host=True)  # room again: the failed blocks are retried
    s.close()
    with open_store(tmp_path, host_blocks=4) as s:
        assert s.restore_report is not None and not s.restore_report.rebuilt
        assert [check_prompt(s, pid, 2) for pid in range(1, 5)] == [2] * 4


def test_a_full_map_grows_before_anything_is_evicted(tmp_path: Path) -> None:
    s = open_store(tmp_path, write_through=True, sync=False)
    assert s._disk is not None
    before = s._disk.io.map_size
    s._disk.io.fault = Faults({"commit": {0}}, lmdb.MapFullError("injected"))
    s.insert(tokens(1, 2), payload(1, 2))
    s.flush()
    d = s.stats().disk
    assert (d.write_errors, d.evicted, d.blocks) == (0, 0, 2)
    assert s._disk.io.map_size == before + before // 2


@pytest.mark.parametrize("op", ["commit", "delete"])
def test_a_failed_delete_is_retried_so_cleared_blocks_stay_gone(tmp_path: Path, op: str) -> None:
    """Blocks removed from the disk tier (here by clear()) are deleted from the folder even when the first
    transaction carrying the deletes fails: a restart must not bring them back."""
    s = open_store(tmp_path, host_blocks=64, write_through=True, sync=False)
    assert s._disk is not None
    for pid in range(1, 4):
        s.insert(tokens(pid, 2), payload(pid, 2))
    s.flush()
    s._disk.io.fault = faults = Faults({op: None})
    assert s.clear() == 12  # 6 blocks in each tier
    with contextlib.suppress(kvtier.DiskWriteError):
        s.flush()
    s._disk.io.fault = None
    assert faults.failed > 0
    s.insert(tokens(9, 1), payload(9, 1))  # the next batch carries the retried deletes
    s.flush()
    s.close(persist=False)
    with open_store(tmp_path, host_blocks=64) as s:
        assert s.restore_report is not None and s.restore_report.restored == 1
        assert [check_prompt(s, pid, 2) for pid in range(1, 4)] == [0, 0, 0]
        assert check_prompt(s, 9, 1) == 1
