"""CUDA at run time: whether it is usable, the device tier's configuration and memory, page-locked host buffers.

kvtier needs no CUDA to build or import. The driver library (``libcuda.so.1``) is loaded the first time
something asks for it (:func:`cuda_available`, a device layout, a :class:`DeviceArena`, a host tier made where
CUDA is present); without it every GPU path raises :class:`kvtier.CudaUnavailableError` saying what is missing,
and the host tier simply stays pageable.

A store gets a device tier from ``StoreConfig(device=DeviceTierConfig(...))`` (see docs/device.md): GPU block
slots above the host tier, filled by inserts from CUDA tensors and by loads (promotion), written back to the host
when evicted. :class:`DeviceArena` is the same memory for callers who manage slots themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from kvtier import _core
from kvtier.config import DeviceTierConfig, _check_int
from kvtier.copy_engine import SlotBuffer
from kvtier.cuda import CudaStatus, cuda_available, require_cuda
from kvtier.errors import InvalidArgumentError, KvtierTypeError, StoreClosedError
from kvtier.kv_layout import KVLayout, KVRegion, as_tensor_view

__all__ = [
    "CudaStatus",
    "cuda_available",
    "DeviceTierConfig",
    "DeviceArena",
    "host_buffer",
    "is_page_locked",
]


class DeviceArena:
    """The device tier's memory: ``capacity_bytes // block_bytes`` slots of ``block_bytes`` on one GPU.

    Allocated once (``cuMemAlloc`` on the device's primary context, shared with PyTorch) and freed by
    :meth:`close`. Slots move to and from the host through :class:`kvtier.CopyEngine`: :meth:`layout` describes
    the arena as a KV layout (slot number = block id), so ``engine.gather(arena.layout(), slots, host_out)``
    demotes and ``engine.scatter(arena.layout(), slots, host_src)`` promotes; :meth:`slot_buffer` makes slots
    the kvtier side of a copy from an engine's cache.

    Raises
    ------
    CudaUnavailableError
        No usable CUDA or no such device.
    CapacityError
        The device has not that much free memory.
    """

    def __init__(self, config: DeviceTierConfig, block_bytes: int) -> None:
        if not isinstance(config, DeviceTierConfig):
            raise KvtierTypeError(f"config must be a DeviceTierConfig, got {type(config).__name__}")
        _check_int("block_bytes", block_bytes, 1)
        assert config.capacity_bytes is not None
        slots = config.capacity_bytes // block_bytes
        if slots < 1:
            raise InvalidArgumentError(
                f"capacity_bytes={config.capacity_bytes} is smaller than one block (block_bytes={block_bytes})"
            )
        self._config = config
        self._core = _core.DeviceArena(device=config.device, slots=slots, block_bytes=block_bytes)
        self._layout = KVLayout(
            [KVRegion(int(self._core.base), block_bytes, block_bytes, "device arena")],
            slots,
            device=config.device,
            owners=(self._core,),  # the core arena, not self: no reference cycle
        )

    def _arena(self) -> _core.DeviceArena:
        if self._core.closed:
            raise StoreClosedError("the device arena is closed")
        return self._core

    @property
    def config(self) -> DeviceTierConfig:
        return self._config

    @property
    def device(self) -> int:
        return int(self._arena().device)

    @property
    def num_slots(self) -> int:
        return int(self._arena().slots)

    @property
    def free_slots(self) -> int:
        return int(self._arena().free_slots)

    @property
    def block_bytes(self) -> int:
        return int(self._arena().block_bytes)

    def take(self, count: int) -> npt.NDArray[np.uint32]:
        """``count`` free slots (:class:`kvtier.CapacityError` if fewer are free)."""
        _check_int("count", count, 0)
        return self._arena().take(count)

    def give_back(self, slots: npt.ArrayLike) -> None:
        """Returns slots taken from this arena (all are checked before any is returned)."""
        self._arena().give_back(np.asarray(slots, dtype=np.int64).reshape(-1))

    def addresses(self, slots: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """Device addresses of taken slots."""
        return self._arena().addresses(np.asarray(slots, dtype=np.int64).reshape(-1))

    def layout(self) -> KVLayout:
        """The arena as a KV layout of one region: block id = slot number, payload = ``block_bytes``."""
        self._arena()
        return self._layout

    def slot_buffer(self, slots: npt.ArrayLike) -> SlotBuffer:
        """Taken slots as the kvtier side of a copy (``CopyEngine.gather(engine_layout, ids, arena.slot_buffer(s))``)."""
        return SlotBuffer(self.addresses(slots), self.device, self.block_bytes, self)

    def close(self) -> None:
        """Frees the GPU memory. Wait for copies that touch it first. Idempotent."""
        if not self._core.closed:
            self._core.close()

    @property
    def closed(self) -> bool:
        return bool(self._core.closed)

    def __enter__(self) -> DeviceArena:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self.close()
        return False

    def __repr__(self) -> str:
        if self._core.closed:
            return "DeviceArena(closed)"
        return f"DeviceArena(device={self.device}, slots={self.num_slots}, block_bytes={self.block_bytes})"


def host_buffer(nbytes: int) -> npt.NDArray[np.uint8]:
    """``nbytes`` of page-aligned host memory as a uint8 array, page-locked where CUDA is usable.

    The memory the host tier uses, for staging copies to and from GPU memory at DMA speed. It is committed up
    front when page-locked, and freed with the last reference to the array.
    """
    _check_int("nbytes", nbytes, 1)
    # HostBuffer exports the buffer protocol, which its stub cannot declare before Python 3.12 (__buffer__).
    memory: Any = _core.HostBuffer(nbytes)
    array: npt.NDArray[np.uint8] = np.frombuffer(memory, dtype=np.uint8)
    return array


def is_page_locked(buffer: object) -> bool:
    """True if CUDA reports ``buffer``'s memory (host memory) as page-locked; False without CUDA."""
    v = as_tensor_view(buffer, "buffer")
    return v.device == -1 and v.data_ptr != 0 and bool(_core.is_page_locked(v.data_ptr))
