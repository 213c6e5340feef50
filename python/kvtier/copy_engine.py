"""Moving KV blocks between an engine's paged cache and kvtier buffers: plan, merge, copy, poll.

``gather`` copies engine blocks ``block_ids`` into a kvtier buffer (block ``i`` of the buffer receives engine
block ``block_ids[i]``); ``scatter`` copies them back. The layout of the engine's cache is a
:class:`kvtier.KVLayout`; the kvtier side is a C-contiguous buffer holding ``len(block_ids)`` blocks
``block_bytes`` apart (a numpy array, a CUDA tensor, :func:`kvtier.device.host_buffer`) or the slots of a
:class:`kvtier.DeviceArena`. The payload of a block is its runs in region order (see :mod:`kvtier.kv_layout`).

Both calls return at once with a :class:`CopyHandle`; ``wait()`` before reading the destination or reusing the
source. Host <-> host copies run as ``memcpy`` on the engine's worker threads (small ones on the calling
thread); copies that touch GPU memory go on the engine's own CUDA stream of that device, batched with
``cuMemcpyBatchAsync`` where the driver has it (CUDA >= 12.8), else as a loop of ``cuMemcpyAsync``. The GIL is
released throughout. The engine does not order its copies after the engine's own kernels: call it when the
blocks are final (vLLM's connector does, after the forward pass that wrote them).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from kvtier import _core
from kvtier.errors import InvalidArgumentError, KvtierTypeError, StoreClosedError
from kvtier.kv_layout import KVLayout, as_tensor_view

__all__ = [
    "CopyEngine",
    "CopyHandle",
    "CopyPlan",
    "CopyStats",
    "SlotBuffer",
    "default_engine",
    "gather",
    "scatter",
    "plan",
]

BlockIds = npt.ArrayLike | Sequence[int]
_BATCH = {None: 0, False: 1, True: 2}


@dataclass(frozen=True)
class SlotBuffer:
    """kvtier blocks at explicit addresses (the slots of a :class:`kvtier.DeviceArena`), one per block id."""

    addresses: npt.NDArray[np.uint64]
    device: int
    block_bytes: int
    owner: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class CopyPlan:
    """The runs a copy makes: ``runs[k] = (dst, src, nbytes)`` after merging, in submission order."""

    runs: npt.NDArray[np.uint64]
    unmerged_runs: int
    nbytes: int


@dataclass(frozen=True)
class CopyStats:
    """Counters of one engine since it was made (``batch_*`` and ``copy_calls`` count CUDA driver calls)."""

    submits: int
    inline_submits: int
    host_submits: int
    device_submits: int
    batch_calls: int
    copy_calls: int
    batch_fallbacks: int
    runs: int
    bytes: int
    last_batch_error: str


class CopyHandle:
    """A submitted copy. Poll it, or wait for it before touching the destination or the source.

    Dropping an unfinished handle waits for the copy (memory it touches is kept alive until then).
    ``path`` says how it ran: ``"inline"``, ``"host-threads"``, ``"cuda-batched"`` or ``"cuda-loop"``.
    """

    __slots__ = ("_h",)

    def __init__(self, handle: _core.CopyHandle) -> None:
        self._h = handle

    def poll(self) -> bool:
        """True once every run has been copied. Raises :class:`kvtier.CudaError` if the device failed a copy."""
        return bool(self._h.poll())

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until done (or ``timeout`` seconds pass); returns :meth:`poll`. The GIL is released."""
        return bool(self._h.wait(timeout))

    @property
    def done(self) -> bool:
        return self.poll()

    @property
    def path(self) -> str:
        return str(self._h.path)

    @property
    def nbytes(self) -> int:
        return int(self._h.nbytes)

    @property
    def runs(self) -> int:
        """Runs after merging."""
        return int(self._h.runs)

    @property
    def unmerged_runs(self) -> int:
        """Runs before merging: blocks x regions."""
        return int(self._h.unmerged_runs)

    def __enter__(self) -> CopyHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait()

    def __repr__(self) -> str:
        return f"CopyHandle({self.path}, {self.nbytes} bytes in {self.runs} runs, done={self._h.poll()})"


def _block_ids(block_ids: BlockIds) -> npt.NDArray[Any]:
    ids = np.asarray(block_ids)
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    if ids.dtype.kind not in "iu":
        raise KvtierTypeError(f"block_ids must be integers, got dtype {ids.dtype}")
    if ids.ndim != 1:
        raise KvtierTypeError(f"block_ids must be 1-D, got shape {ids.shape}")
    return ids


@dataclass(frozen=True)
class _Side:
    base: int
    stride: int
    device: int
    slots: npt.NDArray[np.uint64] | None
    owner: object


def _buffer(
    buf: object, n: int, layout: KVLayout, block_bytes: int | None, writable: bool, name: str
) -> _Side:
    """The kvtier side of a copy, checked against the layout and the number of blocks."""
    payload = layout.payload_bytes
    if isinstance(buf, SlotBuffer):
        if len(buf.addresses) != n:
            raise InvalidArgumentError(f"{name} has {len(buf.addresses)} slots for {n} block ids")
        if buf.block_bytes < payload:
            raise InvalidArgumentError(
                f"{name}: slots of {buf.block_bytes} bytes cannot hold the layout's payload of {payload} bytes per block"
            )
        return _Side(0, buf.block_bytes, buf.device, buf.addresses, buf)
    v = as_tensor_view(buf, name)
    if writable and v.readonly:
        raise KvtierTypeError(f"{name} is read-only")
    if v.dtype not in ("|u1", "|i1") and v.dtype != layout.dtype:
        raise KvtierTypeError(
            f"{name} has dtype {v.dtype} but the layout holds {layout.dtype}; pass a uint8 buffer or one of the "
            f"layout's dtype"
        )
    if not v.is_c_contiguous():
        raise KvtierTypeError(f"{name} must be C-contiguous (shape {v.shape}, strides {v.strides} bytes)")
    bb = payload if block_bytes is None else block_bytes
    if isinstance(bb, bool) or not isinstance(bb, int):
        raise KvtierTypeError(f"block_bytes must be an int, got {type(bb).__name__}")
    if bb < payload:
        raise InvalidArgumentError(f"block_bytes={bb} is smaller than the layout's payload of {payload} bytes per block")
    if len(v.shape) >= 2 and v.shape[0] > 0 and v.nbytes // v.shape[0] != bb:
        raise InvalidArgumentError(
            f"{name} has rows of {v.nbytes // v.shape[0]} bytes but blocks are block_bytes={bb} apart; pass "
            f"block_bytes= or a buffer of shape (n_blocks, {bb})"
        )
    if v.nbytes < n * bb:
        raise InvalidArgumentError(
            f"{name} has {v.nbytes} bytes; {n} blocks x block_bytes={bb} need {n * bb}"
        )
    return _Side(v.data_ptr, bb, v.device, None, v.owner)


class CopyEngine:
    """Worker threads for host copies and one CUDA stream per device for the rest.

    Parameters
    ----------
    threads
        Host copy threads (default ``min(4, cpu_count)``); ``0`` copies on the calling thread.
    batched
        ``None``: ``cuMemcpyBatchAsync`` where the driver has it, a ``cuMemcpyAsync`` loop otherwise;
        ``False``: always the loop; ``True``: batched or :class:`kvtier.CudaUnavailableError`.
    inline_bytes
        Host copies of at most this many bytes run on the calling thread (a hand-off costs more).

    Thread-safe. Close it (or use ``with``) to stop its threads; copies in flight finish first.
    """

    def __init__(self, threads: int | None = None, *, batched: bool | None = None, inline_bytes: int = 256 << 10) -> None:
        if threads is None:
            threads = min(4, os.cpu_count() or 1)
        for name, v in (("threads", threads), ("inline_bytes", inline_bytes)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise KvtierTypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < 0:
                raise InvalidArgumentError(f"{name} must be >= 0, got {v}")
        if threads > 256:
            raise InvalidArgumentError(f"threads must be <= 256, got {threads}")
        if batched not in _BATCH:
            raise KvtierTypeError(f"batched must be None, True or False, got {batched!r}")
        self._core = _core.CopyEngine(threads=threads, inline_bytes=inline_bytes, batch=_BATCH[batched])

    def _engine(self) -> _core.CopyEngine:
        if self._core.closed:
            raise StoreClosedError("the copy engine is closed")
        return self._core

    def _submit(
        self, layout: KVLayout, block_ids: BlockIds, buffer: object, block_bytes: int | None, scatter: bool
    ) -> CopyHandle:
        if not isinstance(layout, KVLayout):
            raise KvtierTypeError(f"layout must be a kvtier.KVLayout, got {type(layout).__name__}")
        ids = _block_ids(block_ids)
        if scatter and layout.readonly:
            raise KvtierTypeError("the layout's tensors are read-only; a scatter would write them")
        side = _buffer(buffer, len(ids), layout, block_bytes, not scatter, "src" if scatter else "out")
        h = self._engine().submit(
            layout._core,
            ids,
            scatter,
            side.base,
            side.stride,
            side.device,
            side.slots,
            (layout.owners, side.owner),
        )
        return CopyHandle(h)

    def gather(self, layout: KVLayout, block_ids: BlockIds, out: object, *, block_bytes: int | None = None) -> CopyHandle:
        """Copies engine blocks ``block_ids`` into ``out``: kvtier block ``i`` <- engine block ``block_ids[i]``.

        Parameters
        ----------
        layout
            The engine's cache.
        block_ids
            1-D integers in ``[0, layout.num_blocks)``; repeats are allowed.
        out
            A writable C-contiguous buffer of at least ``len(block_ids) * block_bytes`` bytes (host or CUDA
            memory), uint8 or the layout's dtype, or a :class:`SlotBuffer` of as many slots.
        block_bytes
            Bytes from one kvtier block to the next in ``out`` (default: ``layout.payload_bytes``).

        Raises
        ------
        InvalidArgumentError
            A block id out of range, ``out`` too small, rows of ``out`` not ``block_bytes`` long.
        KvtierTypeError
            ``out`` read-only, not contiguous, of another dtype, or not a buffer at all.
        CudaUnavailableError
            Either side is GPU memory and CUDA cannot be used here.
        CudaError
            The driver refused a copy (nothing is left in flight then).
        """
        return self._submit(layout, block_ids, out, block_bytes, scatter=False)

    def scatter(self, layout: KVLayout, block_ids: BlockIds, src: object, *, block_bytes: int | None = None) -> CopyHandle:
        """Copies kvtier blocks from ``src`` into engine blocks: engine block ``block_ids[i]`` <- kvtier block ``i``.

        Same parameters and errors as :meth:`gather`; a block id may appear only once (two kvtier blocks would
        race to write it), and the layout must be writable.
        """
        return self._submit(layout, block_ids, src, block_bytes, scatter=True)

    def stats(self) -> CopyStats:
        return CopyStats(**self._engine().stats())

    @property
    def threads(self) -> int:
        return int(self._engine().threads)

    @property
    def closed(self) -> bool:
        return bool(self._core.closed)

    def close(self) -> None:
        """Finishes queued host copies and stops the threads. Idempotent."""
        if not self._core.closed:
            self._core.close()

    def __enter__(self) -> CopyEngine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self.close()
        return False


def plan(
    layout: KVLayout,
    block_ids: BlockIds,
    buffer: object,
    *,
    direction: Literal["gather", "scatter"] = "gather",
    block_bytes: int | None = None,
) -> CopyPlan:
    """The merged runs that :meth:`CopyEngine.gather` or :meth:`~CopyEngine.scatter` would submit. Copies nothing."""
    if direction not in ("gather", "scatter"):
        raise InvalidArgumentError(f"direction must be 'gather' or 'scatter', got {direction!r}")
    if not isinstance(layout, KVLayout):
        raise KvtierTypeError(f"layout must be a kvtier.KVLayout, got {type(layout).__name__}")
    scatter = direction == "scatter"
    ids = _block_ids(block_ids)
    side = _buffer(buffer, len(ids), layout, block_bytes, not scatter, "src" if scatter else "out")
    runs, unmerged, nbytes = _core.plan_copy(layout._core, ids, scatter, side.base, side.stride, side.slots)
    return CopyPlan(runs, int(unmerged), int(nbytes))


_default_lock = threading.Lock()
_default: list[CopyEngine] = []


def default_engine() -> CopyEngine:
    """The engine :func:`gather` and :func:`scatter` use: made on first use (never at import), then shared."""
    with _default_lock:
        if not _default:
            _default.append(CopyEngine())
        return _default[0]


def gather(layout: KVLayout, block_ids: BlockIds, out: object, *, block_bytes: int | None = None) -> CopyHandle:
    """:meth:`CopyEngine.gather` on :func:`default_engine`."""
    return default_engine().gather(layout, block_ids, out, block_bytes=block_bytes)


def scatter(layout: KVLayout, block_ids: BlockIds, src: object, *, block_bytes: int | None = None) -> CopyHandle:
    """:meth:`CopyEngine.scatter` on :func:`default_engine`."""
    return default_engine().scatter(layout, block_ids, src, block_bytes=block_bytes)

