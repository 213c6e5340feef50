"""The engine's paged KV tensors, read from their shapes and strides, and the block copies in and out of them.

vLLM hands the worker one tensor per attention layer. Which dimension indexes the block differs by backend::

    CPU (measured):        [num_blocks, kv_heads, block_size, 2 * head_size]    block dim 0, one run per block
    FlashAttention (GPU):  [2, num_blocks, block_size, kv_heads, head_size]     block dim 1, two runs per block

so nothing here assumes one: the block dimension is the one whose size is ``num_blocks`` (the engine's
``KVCacheConfig``), confirmed by the largest stride when sizes are ambiguous. One (layer, block) is the
sub-tensor ``layer.select(block_dim, b)``, copied in its logical order. kvtier's payload of one block is all layers'
sub-tensors back to back, as raw bytes::

    payload[block] = [ layer 0: select(block_dim, b) | layer 1: ... | ... ]      block_bytes = sum of layer bytes

The payload format depends on the backend's layout, so the layout's name, the vLLM version and the per-layer
shapes go into the namespace (``describe``): a cache written under one layout is never served to another.

The copies (:func:`start_gather` / :func:`gather_blocks`, :func:`scatter_blocks`) go through kvtier's copy engine
(:class:`kvtier.CopyEngine`: memcpy runs on worker threads, CUDA copies on GPUs, the GIL released) whenever the
layout is one it expresses (each layer's block one contiguous run, or a K and a V run); that payload is byte for
byte the one described above. Other layouts (a block's data scattered by strides) fall back to torch
``index_select`` / ``index_copy_``, which handle any strides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import kvtier
from kvtier.errors import InvalidArgumentError, KvtierError

__all__ = ["PagedKVLayout", "LayerView", "gather_blocks", "start_gather", "scatter_blocks"]


@dataclass(frozen=True)
class LayerView:
    """One layer's KV tensor, with the block dimension found and the per-block sub-shape."""

    name: str
    tensor: Any  # torch.Tensor
    block_dim: int
    block_shape: tuple[int, ...]  # the layer's shape without the block dimension
    block_bytes: int  # bytes of one block of this layer


@dataclass(frozen=True)
class PagedKVLayout:
    """All attention layers of the engine, in a fixed order, and the size of one kvtier payload."""

    layers: tuple[LayerView, ...]
    num_blocks: int
    block_bytes: int  # sum over layers
    device: Any  # torch.device
    native: kvtier.KVLayout | None = None  # the same layout for kvtier's copy engine, when it can express it

    @classmethod
    def from_kv_caches(cls, kv_caches: dict[str, Any], num_blocks: int, layer_order: list[str] | None = None) -> "PagedKVLayout":
        """Reads the layout of ``register_kv_caches``' tensors; ``num_blocks`` from the engine's KVCacheConfig.

        Raises ``InvalidArgumentError`` if a tensor has no dimension of ``num_blocks``, or several that its
        strides cannot tell apart, or if the layers disagree on device.
        """
        if not kv_caches:
            raise InvalidArgumentError("register_kv_caches() got no KV tensors")
        names = list(layer_order) if layer_order else sorted(kv_caches)
        missing = [n for n in names if n not in kv_caches]
        if missing:
            raise InvalidArgumentError(f"KV tensors missing for layers {missing}")
        views = []
        device = None
        for name in names:
            t = kv_caches[name]
            if not isinstance(t, torch.Tensor):
                raise InvalidArgumentError(f"KV cache of layer {name!r} is a {type(t).__name__}, not a torch.Tensor")
            dims = [d for d, size in enumerate(t.shape) if size == num_blocks]
            if not dims:
                raise InvalidArgumentError(
                    f"KV tensor of layer {name!r} has shape {tuple(t.shape)}: no dimension of num_blocks={num_blocks}"
                )
            if len(dims) > 1:
                strides = [t.stride(d) for d in dims]
                top = max(strides)
                if strides.count(top) > 1:
                    raise InvalidArgumentError(
                        f"KV tensor of layer {name!r} (shape {tuple(t.shape)}, strides {t.stride()}): cannot tell "
                        f"which of dims {dims} indexes blocks"
                    )
                dims = [dims[strides.index(top)]]
            d = dims[0]
            shape = tuple(int(s) for i, s in enumerate(t.shape) if i != d)
            nbytes = t.element_size()
            for s in shape:
                nbytes *= s
            if device is None:
                device = t.device
            elif t.device != device:
                raise InvalidArgumentError(f"KV tensors are on several devices ({device} and {t.device})")
            views.append(LayerView(name, t, d, shape, nbytes))
        block_bytes = sum(v.block_bytes for v in views)
        return cls(tuple(views), num_blocks, block_bytes, device, _native(views, num_blocks, block_bytes))

    def describe(self) -> str:
        """Layout fingerprint: per layer the dtype, block dimension and per-block shape (not the block count)."""
        parts = [f"{v.tensor.dtype}:d{v.block_dim}:{'x'.join(map(str, v.block_shape))}" for v in self.layers]
        return ";".join(parts)


def _native(views: list[LayerView], num_blocks: int, block_bytes: int) -> kvtier.KVLayout | None:
    """The copy engine's layout for these tensors, if it expresses the same payload (else ``None``: torch copies)."""
    dims = {v.block_dim for v in views}
    if len(dims) != 1 or len({v.tensor.dtype for v in views}) != 1:
        return None
    (d,) = dims
    tensors = [v.tensor for v in views]
    candidates: list[int | None] = [None]
    # a [2, num_blocks, ...] layer holds a block's K and V as two runs: K first, as select(block_dim) orders them
    if d == 1 and all(t.shape[0] == 2 for t in tensors):
        candidates.append(0)
    for kv_dim in candidates:
        try:
            native = kvtier.KVLayout.from_tensors(tensors, block_dim=d, kv_dim=kv_dim, num_blocks=num_blocks)
        except KvtierError:
            continue
        if native.payload_bytes == block_bytes:
            return native
    return None


def _staging_rows(staging: Any, n: int, block_bytes: int) -> Any:
    if staging.dtype != torch.uint8 or staging.dim() != 2 or staging.shape[1] != block_bytes or staging.shape[0] < n:
        raise InvalidArgumentError(
            f"staging must be uint8[>= {n}, {block_bytes}], got {staging.dtype}{list(staging.shape)}"
        )
    return staging[:n]


def start_gather(
    layout: PagedKVLayout, block_ids: list[int], staging: Any, copier: kvtier.CopyEngine | None = None
) -> kvtier.CopyHandle | None:
    """Starts copying engine blocks ``block_ids`` into rows ``0 .. n-1`` of ``staging`` (uint8[>= n, block_bytes], CPU).

    With a ``copier`` and a layout it expresses, kvtier's copy engine copies (its worker threads, or its own CUDA
    stream) and the handle is returned: wait for it before reading the rows, and before the engine may write the
    blocks again. On a GPU the engine's current stream is synchronized first (the copy engine's stream is not
    ordered after the forward's kernels). Otherwise torch copies at once and ``None`` is returned.
    """
    n = len(block_ids)
    rows = _staging_rows(staging, n, layout.block_bytes)
    if n == 0:
        return None
    if layout.native is not None and copier is not None:
        if layout.device.type == "cuda":
            torch.cuda.current_stream(layout.device).synchronize()  # the forward's writes are final
        return copier.gather(layout.native, np.asarray(block_ids, dtype=np.int64), rows.numpy())
    idx = torch.tensor(block_ids, dtype=torch.long, device=layout.device)
    off = 0
    for v in layout.layers:
        picked = v.tensor.index_select(v.block_dim, idx).movedim(v.block_dim, 0).reshape(n, -1)
        flat = picked.contiguous().view(torch.uint8)
        rows[:, off : off + v.block_bytes].copy_(flat)  # device -> host when the engine runs on a GPU
        off += v.block_bytes
    return None


def gather_blocks(layout: PagedKVLayout, block_ids: list[int], staging: Any, copier: kvtier.CopyEngine | None = None) -> Any:
    """Copies engine blocks ``block_ids`` into rows ``0 .. n-1`` of ``staging`` and waits: :func:`start_gather`, done.

    Returns the filled rows, ``uint8[n, block_bytes]``.
    """
    handle = start_gather(layout, block_ids, staging, copier)
    if handle is not None:
        handle.wait()
    return staging[: len(block_ids)]


def scatter_blocks(layout: PagedKVLayout, block_ids: list[int], staging: Any, copier: kvtier.CopyEngine | None = None) -> None:
    """Copies rows ``0 .. n-1`` of ``staging`` into engine blocks ``block_ids`` (the inverse of :func:`gather_blocks`)."""
    n = len(block_ids)
    rows = _staging_rows(staging, n, layout.block_bytes)
    if n == 0:
        return
    if layout.native is not None and copier is not None:
        copier.scatter(layout.native, np.asarray(block_ids, dtype=np.int64), rows.numpy()).wait()
        return
    idx = torch.tensor(block_ids, dtype=torch.long, device=layout.device)
    off = 0
    for v in layout.layers:
        src = rows[:, off : off + v.block_bytes]
        if layout.device.type != "cpu":
            src = src.to(layout.device, non_blocking=True)
        typed = src.view(v.tensor.dtype).reshape((n, *v.block_shape)).movedim(0, v.block_dim)
        v.tensor.index_copy_(v.block_dim, idx, typed)
        off += v.block_bytes
    if layout.device.type == "cuda":
        torch.cuda.synchronize(layout.device)
