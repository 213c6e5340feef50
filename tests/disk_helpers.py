"""Shared pieces of the disk-tier tests: configs, deterministic prompts and payloads, folder surgery.

A prompt is named by an int id. Its tokens start with the id (two prompts never share a first
block, so they never share a prefix) and its payload is a function of (id, block): every load can be
checked byte for byte in any process, whatever was evicted, written or lost meanwhile.

Child processes import this module too (``child_env()`` puts the tests folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from kvtier import DiskConfig, Namespace, Store, StoreConfig, TierConfig

BS = 4  # tokens per block
BB = 64  # payload bytes per block: tiny, the tests are about semantics
NS = Namespace(model="default")
TESTS_DIR = Path(__file__).resolve().parent
# Explicit times far above any monotonic clock: opening a disk folder sets the store's clock.
T0 = 1e9


def config(
    path: str | os.PathLike[str],
    *,
    host_blocks: int = 8,
    disk_blocks: int = 1 << 14,
    block_bytes: int = BB,
    block_size: int = BS,
    host_policy: str = "lru",
    **disk: Any,
) -> StoreConfig:
    """A payload store with a host tier of ``host_blocks`` and a disk tier of ``disk_blocks``."""
    return StoreConfig(
        block_size=block_size,
        block_bytes=block_bytes,
        host=TierConfig(capacity_bytes=host_blocks * block_bytes, policy=host_policy),  # type: ignore[arg-type]
        disk=DiskConfig(path=path, capacity_bytes=disk_blocks * block_bytes, **disk),
    )


# Stores opened by open_store(), so that a test's fixture can close what a failing test left open
# (an open disk store's writer thread must not outlive the interpreter).
OPENED: list[Store] = []


def open_store(path: str | os.PathLike[str], *, namespace: Namespace | None = None, **kw: Any) -> Store:
    s = Store(config(path, **kw), namespace=namespace)
    OPENED.append(s)
    return s


def close_opened() -> None:
    """Closes (without persisting) every store open_store() opened; errors are the test's business."""
    while OPENED:
        s = OPENED.pop()
        if not s.closed:
            try:
                s.close(persist=False)
            except Exception:  # the test failed already, or checked this store's error itself
                pass


def tokens(pid: int, n_blocks: int, block_size: int = BS) -> np.ndarray:
    """The tokens of prompt ``pid``: ``n_blocks`` full blocks, first token = pid."""
    t = np.random.default_rng([pid, 7]).integers(0, 50_000, n_blocks * block_size, dtype=np.int64).astype(np.int32)
    t[0] = pid
    return t


def payload(pid: int, n_blocks: int, block_bytes: int = BB) -> np.ndarray:
    """``uint8[n_blocks, block_bytes]``: block ``b`` depends only on (pid, b), not on n_blocks."""
    out = np.empty((n_blocks, block_bytes), np.uint8)
    for b in range(n_blocks):
        out[b] = np.random.default_rng([pid, b, 11]).integers(0, 256, block_bytes, dtype=np.uint8)
    return out


def load_all(store: Store, t: np.ndarray, n_blocks: int, block_bytes: int = BB, **kw: Any) -> tuple[int, np.ndarray]:
    """(blocks loaded, the output buffer) for a load of prompt ``t``."""
    out = np.zeros((n_blocks, block_bytes), np.uint8)
    n = store.load(t, out, **kw)
    return n, out


def check_prompt(store: Store, pid: int, n_blocks: int, block_bytes: int = BB) -> int:
    """Loads prompt ``pid``; asserts every block served has its own bytes. Returns the blocks served."""
    n, out = load_all(store, tokens(pid, n_blocks), n_blocks, block_bytes)
    want = payload(pid, n_blocks, block_bytes)
    assert 0 <= n <= n_blocks
    for b in range(n):
        assert np.array_equal(out[b], want[b]), f"prompt {pid} block {b}: wrong bytes served"
    return n


def keys_of(t: np.ndarray, namespace: Namespace = NS, block_size: int = BS) -> list[bytes]:
    """The LMDB keys of the full blocks of ``t`` (the chained block keys of docs/keys.md)."""
    import kvtier

    return [k.tobytes() for k in kvtier.block_keys(t, namespace, block_size=block_size)]


# --------------------------------------------------------------------------- folder surgery
# Only on a folder no store of this process has open (LMDB forbids two handles in one process).
def lmdb_env(path: str | os.PathLike[str]) -> Any:
    import lmdb

    return lmdb.open(os.fspath(path), max_dbs=4, map_size=1 << 30)


def folder_keys(path: str | os.PathLike[str], db: bytes) -> set[bytes]:
    env = lmdb_env(path)
    try:
        d = env.open_db(db)
        with env.begin() as txn:
            return {bytes(k) for k, _v in txn.cursor(db=d)}
    finally:
        env.close()


def folder_put(path: str | os.PathLike[str], db: bytes, key: bytes, value: bytes | None) -> None:
    """Overwrites (or with ``None`` deletes) one value of the folder."""
    env = lmdb_env(path)
    try:
        d = env.open_db(db)
        with env.begin(write=True) as txn:
            if value is None:
                assert txn.delete(key, db=d)
            else:
                txn.put(key, value, db=d)
    finally:
        env.close()


def folder_get(path: str | os.PathLike[str], db: bytes, key: bytes) -> bytes | None:
    env = lmdb_env(path)
    try:
        d = env.open_db(db)
        with env.begin() as txn:
            v = txn.get(key, db=d)
            return None if v is None else bytes(v)
    finally:
        env.close()


# --------------------------------------------------------------------------- child processes
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_py(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter (argv[1:] = args); disk_helpers is importable there."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def finish(proc: subprocess.Popen[str], stdin: str = "\n", timeout: float = 30) -> tuple[int, str, str]:
    """Sends ``stdin``, waits, closes the pipes. Returns (exit code, rest of stdout, stderr)."""
    try:
        out, err = proc.communicate(input=stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def popen_py(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


# --------------------------------------------------------------------------- crash-test prompts
def crash_prompt(pid: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, payload) of prompt ``pid`` of the crash test.

    Prompts 2g and 2g+1 share a 2-block head (group g), then have their own tail of 1..4 blocks,
    so the folder holds parents with several children. Every block's bytes are fixed by the prompt
    id (tail) or the group (head), in any process.
    """
    g = pid // 2
    tail = 1 + pid % 4
    t = np.concatenate([tokens(1_000_000 + g, 2), tokens(pid, tail)])
    p = np.concatenate([payload(1_000_000 + g, 2), payload(pid, tail)])
    return t, p


# --------------------------------------------------------------------------- fault injection
class Faults:
    """A fault hook for the disk tier's I/O (``store._disk.io.fault = Faults(...)``).

    ``fail`` maps an operation ("read", "write", "delete", "commit") to the calls of it that fail, counted
    from 0 since the hook was installed (``None``: every call). A failing call raises ``error`` (default:
    ENOSPC, as from a full disk). ``calls`` counts the calls seen per operation.
    """

    def __init__(self, fail: dict[str, set[int] | None], error: BaseException | None = None) -> None:
        import errno

        self.fail = fail
        self.error = error if error is not None else OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.calls: dict[str, int] = {}
        self.failed = 0

    def __call__(self, op: str, n: int) -> None:
        k = self.calls.get(op, 0)
        self.calls[op] = k + 1
        if op in self.fail and (self.fail[op] is None or k in self.fail[op]):  # type: ignore[operator]
            self.failed += 1
            raise self.error
