"""Whether CUDA is usable in this process, found at run time (the driver is loaded with dlopen on first use).

Not a tier: the configuration (:class:`kvtier.DeviceTierConfig`) and the device tier's memory
(:mod:`kvtier.device`) both ask it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvtier import _core
from kvtier.errors import CudaUnavailableError, InvalidArgumentError

__all__ = ["CudaStatus", "cuda_available", "require_cuda"]


@dataclass(frozen=True)
class CudaStatus:
    """Whether kvtier can use CUDA in this process. Truthy when it can; ``reason`` says why not.

    Attributes
    ----------
    available
        The driver library loaded, ``cuInit`` succeeded and at least one device is visible.
    reason
        ``""`` when available; otherwise what is missing, e.g. ``"libcuda.so.1 not found (...)"``.
    library
        The driver library loaded (a path), ``""`` if none.
    driver_version
        The driver's CUDA version as ``1000 * major + 10 * minor`` (12080 is CUDA 12.8); 0 if unknown.
    devices
        Device names by ordinal (as ``CUDA_VISIBLE_DEVICES`` exposes them).
    batched_memcpy
        The driver has ``cuMemcpyBatchAsync`` (CUDA >= 12.8), which the copy engine uses.
    """

    available: bool
    reason: str
    library: str
    driver_version: int
    devices: tuple[str, ...]
    batched_memcpy: bool

    def __bool__(self) -> bool:
        return self.available

    def __str__(self) -> str:
        if not self.available:
            return f"CUDA unavailable: {self.reason}"
        v = f"{self.driver_version // 1000}.{self.driver_version % 1000 // 10}"
        names = ", ".join(f"{i}: {n}" for i, n in enumerate(self.devices))
        return f"CUDA {v} ({self.library}); devices {names}; batched memcpy {'yes' if self.batched_memcpy else 'no'}"


def cuda_available() -> CudaStatus:
    """Whether CUDA is usable here, and why not (loads the driver on the first call; cheap after)."""
    ok, reason, library, version, names, batched = _core.cuda_probe()
    return CudaStatus(bool(ok), str(reason), str(library), int(version), tuple(names), bool(batched))


def require_cuda(what: str, device: int) -> CudaStatus:
    """The CUDA status, or the error that says why ``what`` cannot run on ``device`` here."""
    status = cuda_available()
    if not status:
        raise CudaUnavailableError(
            f"{what} needs CUDA, which is not usable here: {status.reason}. Run on a machine with an NVIDIA GPU "
            f"and driver, or configure no device tier"
        )
    if device >= len(status.devices):
        raise InvalidArgumentError(
            f"device={device}, but CUDA sees {len(status.devices)} device(s) ({', '.join(status.devices)}); "
            f"CUDA_VISIBLE_DEVICES renumbers them"
        )
    return status
