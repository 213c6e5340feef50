"""Where an engine keeps its paged KV cache, read from its tensors without importing any framework.

A :class:`KVLayout` is a list of *regions*: one contiguous run of bytes per engine block, at
``base + block_id * stride``. It is read from the engine's tensors through the interfaces they expose
(``__cuda_array_interface__``, ``__array_interface__`` / the buffer protocol, ``__dlpack__``) or from a
:class:`TensorView` you fill in yourself (data pointer, shape, byte strides, item size). Strides are read,
never assumed, so permuted and sliced views work as long as each block's run is contiguous.

kvtier's block payload is the block's runs concatenated in region order::

    engine, per layer [2, num_blocks, block_size, heads, dim]  (block_dim=1, kv_dim=0: K and V regions)
      L0.K  | b0 | b1 | b2 | ...        region 0: base = &K[0],  stride = K.strides[block_dim]
      L0.V  | b0 | b1 | b2 | ...        region 1
      L1.K  | b0 | b1 | b2 | ...        region 2 ...

    engine, all layers of a block contiguous [num_blocks, layers, 2, block_size, heads, dim] (block_dim=0)
      | b0: L0.K L0.V L1.K ... | b1: ... |      one region; one run per block

    vLLM CPU, per layer [num_blocks, kv_heads, block_size, 2 * head_size]  (block_dim=0)
      L0    | b0 | b1 | ...            one region per layer

    kvtier buffer, block i = engine block block_ids[i]
      | L0.K | L0.V | L1.K | L1.V | ... | (unused up to block_bytes) |
      0                          payload_bytes                block_bytes

A run's bytes are in the engine's memory order (a permuted view copies its physical order), so gather and
scatter with the same layout round-trip bit-exactly. Put :attr:`KVLayout.signature` in
``Namespace(kv_layout=...)`` so caches of different layouts never mix.
"""

from __future__ import annotations

import ctypes
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvtier import _core
from kvtier.errors import CudaUnavailableError, InvalidArgumentError, KvtierTypeError

__all__ = ["KVLayout", "KVRegion", "TensorView", "as_tensor_view"]

HOST = -1  # the device value of host memory


@dataclass(frozen=True)
class TensorView:
    """A strided view of memory, as kvtier reads it from a tensor (or as you describe one).

    Parameters
    ----------
    data_ptr
        Address of element ``[0, 0, ...]``.
    shape
        Elements per dimension.
    strides
        **Bytes** (not elements) between neighbours along each dimension; torch's ``t.stride()`` times
        ``t.element_size()``.
    itemsize
        Bytes per element.
    dtype
        A numpy type string (``"<f2"``) or a name numpy lacks (``"bfloat16"``); compared, never interpreted.
    device
        CUDA device ordinal, or ``-1`` for host memory.
    readonly
        The memory must not be written (a scatter into it is refused).
    owner
        An object that keeps the memory alive; kvtier holds it while the view is in use.
    """

    data_ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    itemsize: int
    dtype: str = "|u1"
    device: int = HOST
    readonly: bool = False
    owner: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("data_ptr", "itemsize", "device"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise KvtierTypeError(f"TensorView.{name} must be an int, got {type(v).__name__}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if len(self.shape) != len(self.strides):
            raise InvalidArgumentError(f"TensorView: {len(self.shape)} dims in shape but {len(self.strides)} strides")
        if self.itemsize <= 0:
            raise InvalidArgumentError(f"TensorView.itemsize must be > 0, got {self.itemsize}")
        if self.device < HOST:
            raise InvalidArgumentError(f"TensorView.device must be a CUDA ordinal or -1 (host), got {self.device}")
        if any(s < 0 for s in self.shape):
            raise InvalidArgumentError(f"TensorView.shape has a negative size: {self.shape}")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    def is_c_contiguous(self) -> bool:
        expect = self.itemsize
        for size, stride in zip(reversed(self.shape), reversed(self.strides)):
            if size != 1 and stride != expect:
                return False
            expect *= size
        return True


# ------------------------------------------------------------------------------------------ interfaces
def _c_strides(shape: Sequence[int], itemsize: int) -> tuple[int, ...]:
    out, acc = [], itemsize
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


def _from_cuda_array_interface(obj: object, cai: dict[str, Any], name: str) -> TensorView:
    if cai.get("mask") is not None:
        raise KvtierTypeError(f"{name} is a masked array; kvtier copies plain memory")
    shape = tuple(int(s) for s in cai["shape"])
    dt = np.dtype(cai["typestr"])
    ptr, readonly = cai["data"]
    strides = cai.get("strides")
    strides = _c_strides(shape, dt.itemsize) if strides is None else tuple(int(s) for s in strides)
    device = HOST
    if ptr:
        status = _core.cuda_probe()
        if not status[0]:
            raise CudaUnavailableError(
                f"{name} is CUDA memory (__cuda_array_interface__), but CUDA is not usable here: {status[1]}"
            )
        mem_type, ordinal = _core.pointer_info(int(ptr))
        if mem_type == 0:
            raise InvalidArgumentError(f"{name}: CUDA does not know the address in its __cuda_array_interface__")
        # CU_MEMORYTYPE_HOST (1) is page-locked host memory; DEVICE (2) and UNIFIED (4) live on a device.
        device = HOST if mem_type == 1 else max(ordinal, 0)
    return TensorView(int(ptr or 0), shape, strides, dt.itemsize, dt.str, device, bool(readonly), obj)


def _from_numpy(obj: object, arr: np.ndarray[Any, Any]) -> TensorView:
    if arr.dtype.hasobject:
        raise KvtierTypeError("holds Python objects (dtype object); pass a numeric array")
    return TensorView(
        int(arr.__array_interface__["data"][0]),
        tuple(arr.shape),
        tuple(arr.strides),
        arr.dtype.itemsize,
        arr.dtype.str,
        HOST,
        not arr.flags.writeable,
        obj,
    )


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("major", ctypes.c_uint32),
        ("minor", ctypes.c_uint32),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    ]


_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13
_DL_READ_ONLY = 1


def _dl_dtype(dt: _DLDataType, name: str) -> tuple[str, int]:
    if dt.lanes != 1 or dt.bits % 8 != 0 or dt.bits == 0:
        raise KvtierTypeError(f"{name}: DLPack dtype (code {dt.code}, {dt.bits} bits x {dt.lanes} lanes) is not bytes")
    size = dt.bits // 8
    kinds = {0: "i", 1: "u", 2: "f", 5: "c"}
    if dt.code in kinds:
        return np.dtype(f"<{kinds[dt.code]}{size}").str, size
    if dt.code == 4:
        return f"bfloat{dt.bits}", size
    if dt.code == 6:
        return "|b1" if size == 1 else f"bool{dt.bits}", size
    return f"dlpack{dt.code}x{dt.bits}", size


def _from_dlpack(obj: Any, name: str) -> TensorView:
    capsule = obj.__dlpack__()
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    cname = get_name(capsule)
    readonly = False
    # The capsule is read, not consumed: it stays with the tensor in TensorView.owner, and when both are dropped
    # the capsule's destructor lets the producer free its DLPack header.
    if cname == b"dltensor":
        t = _DLManagedTensor.from_address(get_pointer(capsule, cname)).dl_tensor
    elif cname == b"dltensor_versioned":
        m = _DLManagedTensorVersioned.from_address(get_pointer(capsule, cname))
        t, readonly = m.dl_tensor, bool(m.flags & _DL_READ_ONLY)
    else:
        raise KvtierTypeError(f"{name}.__dlpack__() returned a capsule named {cname!r}, not a DLPack tensor")
    dtype, itemsize = _dl_dtype(t.dtype, name)
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    if t.strides:
        strides = tuple(int(t.strides[i]) * itemsize for i in range(t.ndim))
    else:
        strides = _c_strides(shape, itemsize)
    kind = t.device.device_type
    if kind in (_DL_CPU, _DL_CUDA_HOST):
        device = HOST
    elif kind in (_DL_CUDA, _DL_CUDA_MANAGED):
        device = int(t.device.device_id)
    else:
        raise KvtierTypeError(f"{name} lives on DLPack device type {kind}; kvtier copies host and CUDA memory")
    ptr = int(t.data or 0) + int(t.byte_offset)
    return TensorView(ptr, shape, strides, itemsize, dtype, device, readonly, (obj, capsule))


def as_tensor_view(obj: object, name: str = "tensor") -> TensorView:
    """The :class:`TensorView` of ``obj``, read from the first interface it exposes.

    Tried in order: a :class:`TensorView` itself; ``__cuda_array_interface__`` (CuPy, Numba, PyTorch CUDA
    tensors); ``__array_interface__`` and numpy arrays; the buffer protocol (``bytearray``, ``memoryview``,
    :func:`kvtier.device.host_buffer`); ``__dlpack__`` (PyTorch CPU tensors, and CUDA tensors whose dtype the
    CUDA array interface cannot express, such as bfloat16). Memory is never copied.

    Raises
    ------
    KvtierTypeError
        ``obj`` exposes none of these, or a dtype kvtier cannot copy as bytes. The message names ``name``.
    CudaUnavailableError
        ``obj`` is CUDA memory and CUDA cannot be used in this process.
    """
    if isinstance(obj, TensorView):
        return obj
    try:
        cai = obj.__cuda_array_interface__  # type: ignore[attr-defined]
    except (AttributeError, TypeError, RuntimeError, KeyError):
        cai = None  # absent, or a dtype the interface cannot express (bfloat16): try DLPack below
    try:
        if cai is not None:
            return _from_cuda_array_interface(obj, cai, name)
        if isinstance(obj, np.ndarray):
            return _from_numpy(obj, obj)
        if hasattr(obj, "__array_interface__"):
            return _from_numpy(obj, np.asarray(obj))
        try:
            view = memoryview(obj)  # type: ignore[arg-type]
        except TypeError:
            view = None
        if view is not None:
            # The owner holds the buffer export, so a bytearray cannot be resized under a copy in flight.
            arr = np.asarray(view)
            return _from_numpy((obj, arr), arr)
        if hasattr(obj, "__dlpack__"):
            return _from_dlpack(obj, name)
    except KvtierTypeError as e:
        msg = str(e)
        raise KvtierTypeError(msg if msg.startswith(name) else f"{name} {msg}") from None
    raise KvtierTypeError(
        f"{name} must be a tensor: an object with __cuda_array_interface__, __array_interface__ or __dlpack__, "
        f"a buffer (bytearray, memoryview), or a kvtier.TensorView; got {type(obj).__name__}"
    )


# ------------------------------------------------------------------------------------------ the layout
@dataclass(frozen=True)
class KVRegion:
    """One contiguous run per engine block: ``nbytes`` bytes at ``base + block_id * stride``."""

    base: int
    stride: int
    nbytes: int
    label: str = ""


def _dim(value: int, ndim: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise KvtierTypeError(f"{what} must be an int, got {type(value).__name__}")
    if not -ndim <= value < ndim:
        raise InvalidArgumentError(f"{what}={value} is out of range for a tensor of {ndim} dimensions")
    return value % ndim


class KVLayout:
    """The layout of an engine's paged KV cache: regions, block count, memory (host or a CUDA device).

    Build it with :meth:`from_tensors` (from the engine's tensors) or from :class:`KVRegion` objects. It keeps
    the tensors it was built from alive. Immutable.

    Parameters
    ----------
    regions
        Runs in payload order (see the module docstring's picture).
    num_blocks
        Engine blocks per region; block ids are ``0 .. num_blocks - 1``.
    device
        CUDA device ordinal of the memory, or ``-1`` for host memory.
    dtype
        The element type of the tensors (checked against buffers that are not plain bytes).
    readonly
        The memory must not be written: :meth:`kvtier.CopyEngine.scatter` refuses it.
    owners
        Objects that keep the memory alive.

    Raises
    ------
    InvalidArgumentError
        A region is empty, has a stride shorter than its run, or overlaps another region (named by label).
    """

    __slots__ = ("_core", "_regions", "_dtype", "_readonly", "_owners", "_signature")

    def __init__(
        self,
        regions: Sequence[KVRegion],
        num_blocks: int,
        *,
        device: int = HOST,
        dtype: str = "|u1",
        readonly: bool = False,
        owners: Sequence[object] = (),
    ) -> None:
        regions = tuple(regions)
        if not regions:
            raise InvalidArgumentError("a KV layout needs at least one region")
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks <= 0:
            raise InvalidArgumentError(f"num_blocks must be an int > 0, got {num_blocks!r}")
        for i, r in enumerate(regions):
            if not isinstance(r, KVRegion):
                raise KvtierTypeError(f"regions[{i}] must be a KVRegion, got {type(r).__name__}")
            if r.base <= 0 or r.stride < 0 or r.nbytes <= 0:
                raise InvalidArgumentError(
                    f"{r.label or f'regions[{i}]'}: base must be > 0, stride >= 0 and nbytes > 0, got {r}"
                )
        table = np.array([(r.base, r.stride, r.nbytes) for r in regions], dtype=np.uint64)
        try:
            core = _core.KVLayout(table, num_blocks, device)
        except InvalidArgumentError as e:
            labels = [r.label or f"regions[{i}]" for i, r in enumerate(regions)]
            raise InvalidArgumentError(re.sub(r"region (\d+)", lambda m: labels[int(m.group(1))], str(e))) from None
        self._core = core
        self._regions = regions
        self._dtype = str(dtype)
        self._readonly = bool(readonly)
        self._owners = tuple(owners)
        runs = [r.nbytes for r in regions]
        run = f"{runs[0]}B" if len(set(runs)) == 1 else "+".join(str(n) for n in runs) + "B"
        self._signature = f"{len(regions)}x{run} {self._dtype}"

    @classmethod
    def from_tensors(
        cls,
        tensors: object,
        *,
        block_dim: int,
        kv_dim: int | None = None,
        num_blocks: int | None = None,
    ) -> KVLayout:
        """The layout of one tensor or of a sequence of tensors (one per layer, in layer order).

        Parameters
        ----------
        tensors
            A tensor, or a list/tuple of tensors (see :func:`as_tensor_view` for what counts as one). All must
            have the same dtype, the same memory (host, or one CUDA device) and ``num_blocks`` along
            ``block_dim``.
        block_dim
            The dimension that indexes engine blocks (negative counts from the end).
        kv_dim
            A dimension that splits K from V (size 2, usually): each index along it becomes its own region, in
            index order. ``None``: every dimension except ``block_dim`` is part of one run.
        num_blocks
            Checked against the tensors when given.

        The dimensions other than ``block_dim`` and ``kv_dim`` must form one contiguous run per block (in any
        memory order). Examples::

            KVLayout.from_tensors(per_layer_caches, block_dim=1, kv_dim=0)  # [2, blocks, bs, heads, dim] each
            KVLayout.from_tensors(cache, block_dim=0)                       # [blocks, layers, 2, bs, heads, dim]
            KVLayout.from_tensors(cpu_caches, block_dim=0)                  # vLLM CPU [blocks, heads, bs, 2*dim]

        Raises
        ------
        KvtierTypeError
            Not a tensor; dtypes differ; a run is not contiguous; negative strides.
        InvalidArgumentError
            Dimensions out of range; block counts differ; empty tensors; overlapping regions.
        """
        items = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
        if not items:
            raise InvalidArgumentError("tensors is empty")
        regions: list[KVRegion] = []
        dtype: str | None = None
        device: int | None = None
        blocks = num_blocks
        readonly = False
        for j, obj in enumerate(items):
            name = f"tensors[{j}]" if isinstance(tensors, (list, tuple)) else "tensor"
            v = as_tensor_view(obj, name)
            nd = len(v.shape)
            if nd < 2:
                raise InvalidArgumentError(f"{name} has {nd} dimension(s); a paged KV cache has a block dimension and more")
            bd = _dim(block_dim, nd, "block_dim")
            kd = None if kv_dim is None else _dim(kv_dim, nd, "kv_dim")
            if kd == bd:
                raise InvalidArgumentError(f"kv_dim and block_dim are the same dimension ({bd})")
            if dtype is None:
                dtype, device = v.dtype, v.device
            elif v.dtype != dtype:
                raise KvtierTypeError(f"{name} has dtype {v.dtype} but tensors[0] has {dtype}; one layout holds one dtype")
            elif v.device != device:
                raise InvalidArgumentError(
                    f"{name} is on {_where(v.device)} but tensors[0] is on {_where(device)}; one layout is in one memory"
                )
            if any(s == 0 for s in v.shape):
                raise InvalidArgumentError(f"{name} is empty (shape {v.shape})")
            if blocks is None:
                blocks = v.shape[bd]
            elif v.shape[bd] != blocks:
                raise InvalidArgumentError(
                    f"{name} has {v.shape[bd]} blocks along block_dim={block_dim}, but "
                    + ("num_blocks" if num_blocks is not None else "tensors[0] has") + f" {blocks}"
                )
            if any(s < 0 for s in v.strides):
                raise KvtierTypeError(f"{name} has negative strides {v.strides}; pass a view with positive strides")
            inner = [(v.strides[d], v.shape[d]) for d in range(nd) if d not in (bd, kd) and v.shape[d] != 1]
            expect = v.itemsize
            for stride, size in sorted(inner):
                if stride != expect:
                    split = " or split it with kv_dim=" if kv_dim is None else ""
                    raise KvtierTypeError(
                        f"{name}: the dimensions other than block_dim{'/kv_dim' if kd is not None else ''} are not one "
                        f"contiguous run per block (shape {v.shape}, strides {v.strides} bytes); make the cache "
                        f"contiguous{split}"
                    )
                expect *= size
            run = expect
            stride = v.strides[bd] if v.shape[bd] > 1 else run
            readonly = readonly or v.readonly
            if kd is None:
                regions.append(KVRegion(v.data_ptr, stride, run, name))
            else:
                for k in range(v.shape[kd]):
                    regions.append(KVRegion(v.data_ptr + k * v.strides[kd], stride, run, f"{name}[kv={k}]"))
        assert dtype is not None and device is not None and blocks is not None
        return cls(regions, blocks, device=device, dtype=dtype, readonly=readonly, owners=items)

    # ---------------------------------------------------------------------------------------- properties
    @property
    def regions(self) -> tuple[KVRegion, ...]:
        return self._regions

    @property
    def num_blocks(self) -> int:
        return int(self._core.num_blocks)

    @property
    def device(self) -> int:
        """CUDA device ordinal of the memory, or ``-1`` for host memory."""
        return int(self._core.device)

    @property
    def on_device(self) -> bool:
        return self.device != HOST

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def payload_bytes(self) -> int:
        """Bytes of one block's payload: the sum of the regions' runs (the smallest ``block_bytes``)."""
        return int(self._core.payload_bytes)

    @property
    def signature(self) -> str:
        """What the payload bytes mean, without addresses: ``"64x32768B <f2"`` (regions x run, dtype)."""
        return self._signature

    @property
    def owners(self) -> tuple[object, ...]:
        return self._owners

    def __repr__(self) -> str:
        return (
            f"KVLayout({len(self._regions)} regions, num_blocks={self.num_blocks}, payload_bytes={self.payload_bytes}, "
            f"{_where(self.device)}, dtype={self._dtype})"
        )


def _where(device: int | None) -> str:
    return "host memory" if device is None or device == HOST else f"CUDA device {device}"
