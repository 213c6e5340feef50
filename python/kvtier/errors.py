"""Exceptions raised by kvtier.

Every error kvtier raises for a user mistake is a :class:`KvtierError` and also subclasses the
matching built-in, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "KvtierError",
    "InvalidArgumentError",
    "KvtierTypeError",
    "StoreClosedError",
    "PinError",
    "UnknownNamespaceError",
    "CapacityError",
    "DiskError",
    "DiskWriteError",
    "DiskReadError",
    "DiskDamagedError",
    "DiskFormatError",
    "DiskPermissionError",
    "DiskBusyError",
    "RemoteError",
    "RemoteUnavailableError",
    "RemoteWriteError",
    "CudaUnavailableError",
    "CudaError",
]


class KvtierError(Exception):
    """Base class of kvtier's errors."""


class InvalidArgumentError(KvtierError, ValueError):
    """An argument has the right type but a wrong value (out of range, wrong size, inconsistent)."""


class KvtierTypeError(KvtierError, TypeError):
    """An argument has the wrong type, dtype or memory layout."""


class StoreClosedError(KvtierError, RuntimeError):
    """The store was used after :meth:`kvtier.Store.close`."""


class PinError(InvalidArgumentError):
    """A pinned :class:`kvtier.MatchResult` used after it was released (by :meth:`kvtier.Store.unpin`, possibly
    from another thread), or with a store that did not pin it."""


class UnknownNamespaceError(KvtierError, KeyError):
    """A namespace or session that the store does not know."""


class CapacityError(KvtierError, MemoryError):
    """A tier's memory could not be reserved."""


class DiskError(KvtierError, OSError):
    """The disk folder cannot be opened or used (not a kvtier folder, another format, no permission)."""


class DiskWriteError(DiskError):
    """Blocks queued for the disk were not persisted (e.g. the disk is full); the store keeps serving.

    The blocks stay queued (readable from host memory) and the next :meth:`kvtier.Store.flush` retries them,
    up to three quarters of ``DiskConfig.queue_blocks``; the message says how many were kept and dropped.
    """


class DiskReadError(DiskError):
    """The folder could not be read (an I/O error, or an LMDB environment too damaged to open)."""


class DiskDamagedError(DiskReadError):
    """The folder's data is damaged where kvtier cannot drop the damaged entries alone (the LMDB environment
    does not open, or a page of it cannot be read); ``kvtier fsck --repair`` rebuilds it."""


class DiskFormatError(DiskError):
    """The folder is not a kvtier disk folder of this format (another application's, another version)."""


class DiskPermissionError(DiskError, PermissionError):
    """The folder is not private: owned by another user, writable by others, or holds a planted link."""


class DiskBusyError(DiskError):
    """The operation needs the folder to itself (``kvtier fsck --repair`` of a damaged environment) and a
    running store has it open."""


class RemoteError(KvtierError, OSError):
    """The remote tier (a Redis or Valkey server or cluster) failed an operation."""


class RemoteUnavailableError(RemoteError, ConnectionError):
    """The remote server cannot be reached, or answered with an error. The store keeps serving from its local
    tiers and reconnects by itself; only ``kvtier remote`` and :meth:`kvtier.Store.flush` raise it to the caller."""


class RemoteWriteError(RemoteError):
    """Blocks queued for the remote tier were not stored (the server was unreachable or refused them); the
    message says how many are still queued (retried when the server is back) and how many were dropped."""


class CudaUnavailableError(KvtierError, RuntimeError):
    """CUDA is needed (a device tier, a copy to or from GPU memory) but cannot be used here.

    The message says what is missing: the driver library (``libcuda.so.1``), a device, or a device ordinal.
    """


class CudaError(KvtierError, RuntimeError):
    """A CUDA driver call failed; the message names the call and the driver's error."""
