"""Lookups by key: what :class:`kvtier.Store`'s ``*_keys`` methods do (stores with ``content="keys"``).

An engine that computes its own chained page hashes (SGLang's HiCache: one SHA-256 per page, chained
over the prefix) hands kvtier one 32-byte key per block. Each key is a one-block prompt whose eight
words are the key's bytes, in a namespace whose key binds ``content=keys``, so a key block is never
confused with a token block and two namespaces never share one::

    key (32 bytes) --> words w0..w7 (little-endian uint32) --> block H(namespace, w0..w7)
                                                              host / disk / device tiers, as any block

Lookups can start at any key (an engine's key already names its whole prefix). A batch crosses into
the core once (csrc/store/keys_lookup.cpp, GIL released); Python runs only the folder reads of a load
and, when a lookup stops at a key another process stored, one import of the batch's remaining keys.

With a remote tier (:class:`kvtier.tiers.remote.RemoteTier`) the server holds key blocks under their block
keys (``keys_block_keys``: H(namespace, key words)), so any store of the same namespace sharing the server
finds them; each call asks the server once per batch, past what the local tiers hold::

    find_keys    local leading run, then EXISTS of the keys after it        (stops at the first miss)
    has_keys     local flags, then EXISTS of the keys no local tier holds   (per key)
    load_keys    local leading run, then GET of the keys after it, each verified while copied into ``out``;
                 good blocks promoted into the local tiers (not written back)
    insert_keys  the core's insert, then the keys held and not known to be on the server queued for it
                 (``write="through"``: the call returns once the server acknowledged them)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import numpy.typing as npt

from kvtier import _core
from kvtier.errors import InvalidArgumentError, KvtierTypeError, UnknownNamespaceError

if TYPE_CHECKING:
    from kvtier.store import Store

__all__ = ["Keys", "key_array"]

#: A batch of keys: 32-byte ``bytes``, 64-character hex strings (SGLang's page hashes), or a
#: ``uint8[n, 32]`` array.
Keys = Union[Sequence[bytes], Sequence[str], npt.NDArray[np.uint8]]


def key_array(keys: object, name: str = "keys") -> npt.NDArray[np.uint8]:
    """``keys`` as a C-contiguous ``uint8[n, 32]`` array (one conversion for the batch)."""
    if isinstance(keys, np.ndarray):
        if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 32:
            raise InvalidArgumentError(f"{name} as an array must be uint8[n, 32], got {keys.dtype}{list(keys.shape)}")
        return np.ascontiguousarray(keys)
    if isinstance(keys, (str, bytes, bytearray)) or not isinstance(keys, Sequence):
        raise KvtierTypeError(f"{name} must be a sequence of keys (bytes or hex str) or a uint8[n, 32] array, "
                              f"got {type(keys).__name__}")
    if not keys:
        return np.empty((0, 32), np.uint8)
    kinds = set(map(type, keys))
    if kinds == {str}:
        if set(map(len, keys)) != {64}:
            bad = next(i for i, k in enumerate(keys) if len(k) != 64)
            raise InvalidArgumentError(f"{name}[{bad}] must be 64 hex characters (32 bytes), got {len(keys[bad])}")
        try:
            raw = bytes.fromhex("".join(keys))
        except ValueError as e:
            raise InvalidArgumentError(f"{name} must be hex strings: {e}") from None
    elif kinds == {bytes}:
        if set(map(len, keys)) != {32}:
            bad = next(i for i, k in enumerate(keys) if len(k) != 32)
            raise InvalidArgumentError(f"{name}[{bad}] must be 32 bytes, got {len(keys[bad])}")
        raw = b"".join(keys)
    else:
        bad = next(i for i, k in enumerate(keys) if not isinstance(k, (str, bytes)))
        if bad < len(keys) and not isinstance(keys[bad], (str, bytes)):
            raise KvtierTypeError(f"{name}[{bad}] must be bytes or a hex str, got {type(keys[bad]).__name__}")
        raise KvtierTypeError(f"{name} must be all bytes or all hex str, not a mix")
    return np.frombuffer(raw, np.uint8).reshape(-1, 32)


def out_bytes(out: Any, nbytes: int) -> npt.NDArray[np.uint8]:
    """``out`` (a writable C-contiguous host buffer) as a flat uint8 array of its first ``nbytes`` bytes."""
    try:
        flat = np.frombuffer(out, np.uint8) if not isinstance(out, np.ndarray) else out.reshape(-1).view(np.uint8)
    except (TypeError, ValueError) as e:
        raise KvtierTypeError(f"out must be a writable C-contiguous host buffer: {e}") from None
    if isinstance(out, np.ndarray) and not out.flags.c_contiguous:
        raise KvtierTypeError("out must be C-contiguous; pass numpy.ascontiguousarray(out)")
    if flat.nbytes < nbytes:
        raise InvalidArgumentError(f"out has {flat.nbytes} bytes; it must hold {nbytes} (keys x block_bytes)")
    return flat[:nbytes]


def check_keys_store(store: Store) -> None:
    if store.config.content != "keys":
        raise InvalidArgumentError(
            f"lookups by key need StoreConfig(content='keys'); this store's content is {store.config.content!r}"
        )


def _import(store: Store, ns: int, arr: npt.NDArray[np.uint8], start: int) -> int:
    """After a lookup stopped at key ``start`` with a disk probe: imports the folder's records of the
    leading run of keys[start:] that another process stored. Returns the blocks imported."""
    assert store._disk is not None
    block_keys = store._core.keys_block_keys(ns, arr[start:])
    return store._disk.import_keys([k.tobytes() for k in block_keys])


def _remote_keys(store: Store, ns: int, arr: npt.NDArray[np.uint8]) -> tuple[bytes, list[bytes]]:
    """(namespace key, the block key of each of ``arr``): the names the remote tier gives key blocks."""
    return store._core.namespace_key_of(ns), [k.tobytes() for k in store._core.keys_block_keys(ns, arr)]


def _remote_up(store: Store) -> bool:
    return store._remote is not None and store._remote.available


def find(store: Store, ns: int, arr: npt.NDArray[np.uint8], now: float | None, touch: bool) -> int:
    found, probe = store._core.keys_leading(ns, arr, 0, now, touch)
    while probe is not None and store._disk is not None and found < len(arr) and _import(store, ns, arr, found):
        more, probe = store._core.keys_leading(ns, arr, found, now, touch)
        found += more
    found = int(found)
    if found < len(arr) and _remote_up(store):
        assert store._remote is not None
        ns_key, block_keys = _remote_keys(store, ns, arr[found:])
        found += store._remote.lookup(ns_key, block_keys, touch)
    return found


def present(store: Store, ns: int, arr: npt.NDArray[np.uint8], now: float | None) -> npt.NDArray[np.bool_]:
    """Per key, whether a local tier or the remote server holds it (one round trip for the keys no local tier
    holds)."""
    held: npt.NDArray[np.bool_] = store._core.keys_present(ns, arr, now).astype(np.bool_)
    if _remote_up(store) and not held.all():
        assert store._remote is not None
        rest = np.flatnonzero(~held)
        ns_key, block_keys = _remote_keys(store, ns, arr[rest])
        held[rest] = store._remote.present(ns_key, block_keys)
    return held


def insert(
    store: Store, ns: int, namespace: Any, session: str, arr: npt.NDArray[np.uint8], payloads: Any, now: float | None
) -> npt.NDArray[np.bool_]:
    """The core's insert of key blocks, then the remote tier's writes of those it does not know on the server."""
    ok: npt.NDArray[np.bool_] = store._core.keys_insert(ns, session, arr, payloads, now).astype(np.bool_)
    remote = store._remote
    if remote is None or payloads is None or not ok.any():
        return ok
    ns_key, block_keys = _remote_keys(store, ns, arr)
    cfg = store.config.remote
    assert cfg is not None
    through = cfg.write == "through"
    remote.forget_expired()
    # as on the token path: write-through waits for its own blocks, so only blocks already written are skipped
    todo = [i for i in np.flatnonzero(ok).tolist() if not remote.known(ns_key, block_keys[i], queued=not through)]
    if not todo:
        return ok
    bb = store.config.block_bytes
    if isinstance(payloads, _core.BlockRuns):
        # Scattered runs: gathered once (C++, no GIL) into a buffer of this call's own, which no one changes, so
        # the queue may send from it as it is, in either write mode.
        flat = np.empty(len(payloads) * bb, np.uint8)
        payloads.gather(flat)
        borrow = True
    else:
        flat = payloads.reshape(-1).view(np.uint8) if isinstance(payloads, np.ndarray) else np.frombuffer(payloads, np.uint8)
        borrow = through  # the caller's buffer: only while this call waits for the server
    account = (store.default_namespace if namespace is None else namespace, session)
    ticket = remote.enqueue(
        ns_key, account, [block_keys[i] for i in todo], [flat[i * bb : (i + 1) * bb] for i in todo], time.time(),
        now, borrow=borrow, positions=todo, skip_queued=not through,
    )
    if through:
        remote.wait(ticket, cfg.timeout_s * (-(-len(todo) // cfg.batch_blocks) + 1))
    return ok


def load(store: Store, ns: int, arr: npt.NDArray[np.uint8], out: Any, now: float | None) -> int:
    """Loads the leading run of held keys into ``out`` (block i at i * block_bytes, or the runs of block i of
    a ``_core.BlockRuns``); returns its length."""
    bb = store.config.block_bytes
    runs = isinstance(out, _core.BlockRuns)
    view = out if runs else out.reshape(-1)
    done = 0
    while done < len(arr):
        part = view.tail(done) if runs else view[done * bb :]
        handle = store._core.keys_load_begin(ns, arr[done:], part, now)
        finished = False
        try:
            good = int(handle.planned)
            corrupt: list[bytes] = []
            missing: list[bytes] = []
            reads = handle.reads
            promote = False
            if store._disk is not None:
                promote = store._disk.config.promote
                if reads:
                    first_bad, corrupt, missing = store._disk.read(part, reads)
                    if first_bad is not None:
                        good = min(good, int(first_bad))
            loaded = int(store._core.keys_load_finish(handle, good, corrupt, missing, promote, now))
            finished = True
        finally:
            if not finished:
                store._core.keys_load_release(handle, None)
        done += loaded
        if loaded < int(handle.planned) or handle.probe is None or store._disk is None:
            break
        if not _import(store, ns, arr, done):
            break
    if done < len(arr) and _remote_up(store):
        done += _load_remote(store, ns, arr, out if runs else view, done, now)
    return done


def _load_remote(store: Store, ns: int, arr: npt.NDArray[np.uint8], out: Any, done: int, now: float | None) -> int:
    """Reads keys ``done ..`` from the server into blocks ``done ..`` of ``out`` (the leading run on it; header and
    checksum verified while copied: a missing, cut or corrupt value ends the run), then promotes them into the
    local tiers (an insert that is not written back to the server). Returns the good blocks read."""
    remote = store._remote
    assert remote is not None
    ns_key, block_keys = _remote_keys(store, ns, arr[done:])
    t = store._core.clock() if now is None else now
    good = remote.read(ns_key, block_keys, out, done, t, probe=True)
    if not good:
        return 0
    remote.remember(ns_key, block_keys[:good])
    cfg = store.config.remote
    if cfg is not None and cfg.promote:
        bb = store.config.block_bytes
        payload = out.slice(done, good) if isinstance(out, _core.BlockRuns) else out[done * bb : (done + good) * bb]
        try:
            held = store._core.keys_insert(ns, "", arr[done : done + good], payload, now)
        except (UnknownNamespaceError, InvalidArgumentError):
            held = None  # the namespace left meanwhile: the blocks were served, not kept
        if held is not None:
            remote.promoted(int(np.count_nonzero(held)))
    return good
