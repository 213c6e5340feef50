"""Array-encoded traces for :meth:`kvtier.Store.replay`.

::

    offsets    [0, 3, 5, 9]                 request r covers blocks offsets[r] .. offsets[r+1]-1
    blocks     [a b c | a d | a b c e]      block ids (content="block_ids"), or
                                            token ids, block_size per block (content="tokens")
    timestamps [0.0, 1.5, 3.0]              seconds, non-decreasing
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kvtier.config import Namespace
from kvtier.errors import InvalidArgumentError, KvtierTypeError

__all__ = ["ReplayTrace"]


@dataclass(frozen=True)
class ReplayTrace:
    """A whole trace as flat arrays (see the module docstring for the layout).

    Attributes
    ----------
    offsets
        ``uint64[n_requests + 1]``, in blocks.
    blocks
        ``uint64[offsets[-1]]`` block ids, or ``int32[offsets[-1] * block_size]`` token ids.
    timestamps
        ``float64[n_requests]`` seconds, non-decreasing.
    namespaces, namespace_table
        Optional ``uint32[n_requests]`` indices into ``namespace_table`` (tenants, models).
    sessions, session_table
        Optional ``uint32[n_requests]`` indices into ``session_table``: residency accounts.
    """

    offsets: npt.NDArray[np.uint64]
    blocks: npt.NDArray[np.generic]
    timestamps: npt.NDArray[np.float64]
    namespaces: npt.NDArray[np.uint32] | None = None
    namespace_table: tuple[Namespace, ...] = ()
    sessions: npt.NDArray[np.uint32] | None = None
    session_table: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("offsets", "blocks", "timestamps", "namespaces", "sessions"):
            value = getattr(self, name)
            if not (value is None and name in ("namespaces", "sessions")) and not isinstance(value, np.ndarray):
                raise KvtierTypeError(
                    f"{name} must be a numpy array (use ReplayTrace.from_block_ids / from_tokens), got {type(value).__name__}"
                )
        if self.offsets.ndim != 1 or self.offsets.shape[0] < 1:
            raise InvalidArgumentError(f"offsets must be 1-D with n_requests + 1 entries, got shape {self.offsets.shape}")
        n = self.num_requests
        if self.timestamps.shape != (n,):
            raise InvalidArgumentError(f"timestamps must have shape ({n},), got {self.timestamps.shape}")
        for name, idx, table in (
            ("namespaces", self.namespaces, self.namespace_table),
            ("sessions", self.sessions, self.session_table),
        ):
            if idx is None:
                continue
            if idx.shape != (n,):
                raise InvalidArgumentError(f"{name} must have shape ({n},), got {idx.shape}")
            if n and int(idx.max()) >= len(table):
                raise InvalidArgumentError(f"{name} indexes beyond its table of {len(table)} entries")

    @property
    def num_requests(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def num_blocks(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def from_block_ids(
        cls,
        requests: Iterable[Sequence[int]],
        timestamps: npt.ArrayLike,
        *,
        sessions: Sequence[str] | None = None,
    ) -> "ReplayTrace":
        """From per-request lists of prefix block ids (Mooncake's ``hash_ids``)."""
        lengths: list[int] = []
        flat: list[int] = []
        for ids in requests:
            lengths.append(len(ids))
            flat.extend(ids)
        offsets = np.zeros(len(lengths) + 1, dtype=np.uint64)
        np.cumsum(lengths, out=offsets[1:])
        return cls._with_sessions(offsets, np.asarray(flat, dtype=np.uint64), timestamps, sessions)

    @classmethod
    def from_tokens(
        cls,
        requests: Iterable[npt.ArrayLike],
        timestamps: npt.ArrayLike,
        *,
        block_size: int,
        sessions: Sequence[str] | None = None,
    ) -> "ReplayTrace":
        """From per-request token arrays; each is cut to its full blocks."""
        parts = []
        lengths = []
        for toks in requests:
            a = np.asarray(toks)
            nb = a.shape[0] // block_size
            parts.append(a[: nb * block_size])
            lengths.append(nb)
        offsets = np.zeros(len(lengths) + 1, dtype=np.uint64)
        np.cumsum(lengths, out=offsets[1:])
        blocks = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        return cls._with_sessions(offsets, blocks, timestamps, sessions)

    @classmethod
    def _with_sessions(
        cls,
        offsets: npt.NDArray[np.uint64],
        blocks: npt.NDArray[np.generic],
        timestamps: npt.ArrayLike,
        sessions: Sequence[str] | None,
    ) -> "ReplayTrace":
        ts = np.ascontiguousarray(timestamps, dtype=np.float64)
        if sessions is None:
            return cls(offsets, blocks, ts)
        table, idx = np.unique(np.asarray(sessions, dtype=object).astype(str), return_inverse=True)
        return cls(offsets, blocks, ts, sessions=idx.astype(np.uint32).ravel(), session_table=tuple(table.tolist()))
