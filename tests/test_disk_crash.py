"""Crash safety: a writer process killed with SIGKILL at random points never leaves a block that is served wrong.

A child process inserts prompts into a disk store (write-back with a small host tier, so blocks are
demoted and written all the time; or write-through) and reports ``flushed <id>`` after each
``flush()`` (write-back: ``flush(host=True)``), the documented point from which every prompt inserted
so far survives a killed process. The parent kills it with SIGKILL at a seeded random moment, then
reopens the same folder with no manual step and checks:

* the folder opens, and no index record is damaged;
* every prompt ever reported flushed, in this run or an earlier one, is entirely present and loads
  its own bytes;
* any block served, of any prompt (flushed or not), has its own bytes: nothing partly written is
  ever served;
* the store's invariants hold.

The default run kills 11 children; ``KVTIER_CRASH_RUNS=200 python -m pytest tests/test_disk_crash.py`` kills 200
(the figure in the README's reliability section), eleven per folder. Every third child writes through, the others
write back.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import numpy as np
from disk_helpers import close_opened, crash_prompt, keys_of, open_store, popen_py

HOST_BLOCKS = 6
DISK_BLOCKS = 1 << 14  # never full here: a flushed prompt may not be evicted
RUNS = int(os.environ.get("KVTIER_CRASH_RUNS", "11"))
FOLDER_RUNS = 11
SEED = 20261128

CHILD = """
import sys
from disk_helpers import crash_prompt, open_store

path, start, write_through = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
s = open_store(path, host_blocks=int(sys.argv[4]), disk_blocks=int(sys.argv[5]),
               write_through=write_through, queue_blocks=16, batch_blocks=4)
print("open", flush=True)
pid = start
while True:
    t, p = crash_prompt(pid)
    s.insert(t, p)
    if pid % 3 == 2:
        s.flush(host=not write_through)
        print(f"flushed {pid}", flush=True)
    pid += 1
"""


def open_verifier(path: Path):  # type: ignore[no-untyped-def]
    return open_store(path, host_blocks=HOST_BLOCKS, disk_blocks=DISK_BLOCKS)


def served(store, pid: int) -> int:  # type: ignore[no-untyped-def]
    """Loads prompt ``pid``; asserts every block served has its own bytes. Returns blocks served."""
    t, p = crash_prompt(pid)
    out = np.zeros_like(p)
    n = store.load(t, out)
    for b in range(n):
        assert np.array_equal(out[b], p[b]), f"prompt {pid} block {b}: wrong bytes served after a crash"
    return n


def run_and_kill(path: Path, start: int, write_through: bool, rng: random.Random) -> tuple[int | None, int]:
    """Runs a child from prompt ``start``; kills it. Returns (last prompt reported flushed, reports)."""
    proc = popen_py(CHILD, str(path), str(start), "1" if write_through else "0", str(HOST_BLOCKS), str(DISK_BLOCKS))
    assert proc.stdout is not None and proc.stderr is not None
    last: int | None = None
    reports = 0
    try:
        line = proc.stdout.readline()
        assert line.strip() == "open", proc.stderr.read()
        target = rng.randint(1, 5)
        while reports < target:
            line = proc.stdout.readline()
            assert line.startswith("flushed "), f"child stopped: {line!r} {proc.stderr.read()}"
            last = int(line.split()[1])
            reports += 1
        time.sleep(rng.uniform(0.0, 0.12))
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err
    # Reports printed before the kill count too: the child said so.
    for line in rest.splitlines():
        if line.startswith("flushed "):
            last = int(line.split()[1])
            reports += 1
    return last, reports


def test_sigkill_during_writes_never_loses_flushed_prompts_nor_serves_torn_blocks(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    flushed: list[int] = []  # every prompt reported persisted, over the runs on this folder
    runs: list[tuple[int, int | None]] = []
    total_flushed = 0
    try:
        for run in range(RUNS):
            # Eleven kills per folder: a long run moves to a new folder then, so the folder never fills (a
            # flushed prompt may not be evicted) and each reopen checks every prompt flushed into it.
            folder = tmp_path / f"folder{run // FOLDER_RUNS}"
            if run % FOLDER_RUNS == 0:
                total_flushed += len(flushed)
                flushed, runs = [], []
            start = run * 10_000
            last, reports = run_and_kill(folder, start, run % 3 == 2, rng)
            assert reports >= 1 and last is not None
            flushed.extend(range(start, last + 1))
            runs.append((start, last))

            s = open_verifier(folder)
            rep = s.restore_report
            assert rep is not None
            assert rep.damaged == 0, f"run {run}: {rep.damaged} damaged index records after SIGKILL"
            flushed_keys = {k for pid in flushed for k in keys_of(crash_prompt(pid)[0])}
            assert rep.restored >= len(flushed_keys)
            for pid in flushed:
                t, p = crash_prompt(pid)
                assert s.peek(t).num_blocks == len(p), f"run {run}: flushed prompt {pid} incomplete"
                assert served(s, pid) == len(p), f"run {run}: flushed prompt {pid} not served whole"
            # Prompts of every run that were inserted after the last report (maybe partly written):
            # whatever is served is right. Scan on until 20 prompts in a row have nothing.
            for r_start, r_last in runs:
                pid, empty = (r_last or r_start) + 1, 0
                while empty < 20:
                    empty = empty + 1 if served(s, pid) == 0 else 0
                    pid += 1
            d = s.stats().disk
            assert d.corrupted == 0 and d.missing == 0, f"run {run}: {d}"
            s.check_invariants()
            s.close(persist=False)
    finally:
        close_opened()
    assert total_flushed + len(flushed) >= RUNS
