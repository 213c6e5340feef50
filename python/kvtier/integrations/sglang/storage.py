"""KVTierHiCacheStorage: SGLang's HiCache L3 storage backend (interface_v1) over a kvtier keys store.

SGLang hands the backend one 64-hex SHA-256 per page, already chained over the prefix (``cache_salt``
and ``extra_key`` folded in). kvtier stores each page under that key (a store of content ``"keys"``)
in a namespace that binds what the key does not: the model (and revision), the tp/pp/dp rank (not for
rank-replicated MLA pools), SGLang's host layout, the KV dtype and the page geometry. A store written by
one model, rank or layout is therefore never served to another, and a restart serves what the folder holds.

A page's payload is its runs in the host pool, back to back, in the order of SGLang's
``get_page_buffer_meta``::

    page_first        MHA (2, size, L, H, D)       [ K of the page's tokens | V of them ]     2 runs
    page_first_direct MHA (2, pages, L, page, H, D), page_head (2, pages, H, page, L, D)       2 runs
    layer_first       MHA (2, L, size, H, D)       [ K l0 | V l0 | K l1 | ... ]              2L runs
    layer_first       MLA (L, size, 1, dim)                                                   L runs
    MLA page_first (size, L, 1, dim), page_first_direct, page_unified (either kind)          1 run

kvtier copies between its tiers and those runs directly: each batch's run addresses are computed in one
numpy step from the pool's strides and handed to ``Store.load_keys`` / ``insert_keys`` as block runs (host
hits, disk hits and inserts; no staging copy). Slots that are not whole aligned pages (SGLang's controller
never sends those) go through a staging array in the same byte order, filled or emptied by one torch
index_select / index_copy_ per batch.

Nothing raises on the data path: a failure is counted in :meth:`get_stats` and logged once per kind,
and SGLang sees a miss (or a failed backup).

With ``remote_url`` the store has a remote tier (Redis, Valkey, Redis Cluster; docs/remote.md) below its disk
tier: the lookups by key go on in the server past the local tiers, loads read and verify its pages and promote
them, and backed-up pages are written to it, so SGLang servers with their own disk folders share pages. While
the server is unreachable the local tiers serve alone; the failures are counted (``remote_failures``) and the
remote tier logs one line per outage.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig

from kvtier import DiskConfig, Namespace, Store, StoreConfig, TierConfig
from kvtier.errors import InvalidArgumentError
from kvtier.integrations.sglang.config import KVTierHiCacheConfig, parse_extra_config

__all__ = ["KVTierHiCacheStorage"]

logger = logging.getLogger(__name__)

# (layout, MLA) -> (axis of kv_buffer indexed per batch, indexed per "token" or per "page"). The shapes are
# SGLang 0.5.23's (MHATokenToKVPoolHost / MLATokenToKVPoolHost.init_kv_buffer); ``page_unified`` is refused by
# SGLang's own storage helpers but its page axis is the first, so kvtier stores it like ``page_first_direct``.
_AXES: dict[tuple[str, bool], tuple[int, str]] = {
    ("page_first", False): (1, "token"),         # (2, size, L, H, D)
    ("layer_first", False): (2, "token"),        # (2, L, size, H, D)
    ("page_first_direct", False): (1, "page"),   # (2, pages, L, page, H, D)
    ("page_head", False): (1, "page"),           # (2, pages, H, page, L, D)
    ("page_unified", False): (0, "page"),        # (pages, groups, L, 2, page, H/groups, D)
    ("page_first", True): (0, "token"),          # (size, L, 1, dim)
    ("layer_first", True): (1, "token"),         # (L, size, 1, dim)
    ("page_first_direct", True): (0, "page"),    # (pages, L, page, 1, dim)
    ("page_unified", True): (0, "page"),         # (pages, L, page, dim)
}


# The order of a page's runs, as a permutation of the dimensions before the indexed axis (default: their own
# order). layer_first MHA runs go layer by layer, K then V, as SGLang's get_page_buffer_meta lists them.
_RUN_ORDER: dict[tuple[str, bool], tuple[int, ...]] = {("layer_first", False): (1, 0)}


class _PoolPages:
    """Moves whole pages between a host pool's ``kv_buffer`` and kvtier.

    With ``kv_buffer`` of shape ``before + (axis,) + after`` (the page or token axis at ``self.axis``), a page
    is ``R = prod(before)`` runs, each ``per x prod(after)`` elements that lie one after another in the pool;
    its bytes are its runs back to back, in the order SGLang's ``get_page_buffer_meta`` lists them (the
    pool's own order, but layer by layer for ``layer_first`` MHA)::

        page_first MHA (2, size, L, H, D)       R = 2       [ K: tokens x L x H x D | V: same ]
        page_first_direct (2, pages, L, page, H, D), page_head (2, pages, H, page, L, D): R = 2
        layer_first MHA (2, L, size, H, D)      R = 2L      [ K layer 0 | V layer 0 | K layer 1 | ... | V layer L-1 ]
        layer_first MLA (L, size, 1, dim)       R = L
        MLA page_first, page_first_direct, page_unified (both kinds): R = 1 (the page is one run)

    Where the slots SGLang hands over are whole aligned pages of a contiguous host buffer (always, from its
    controller), the batch's run addresses are computed in one numpy step (page number x page stride + each
    run's offset) and kvtier copies between its tiers and the pool's runs directly (``Store.block_runs``):
    no staging copy. Otherwise the pages go through a ``uint8[n, page_bytes]`` staging array filled or
    emptied by one torch ``index_select`` / ``index_copy_`` per batch, in the same byte order.
    """

    def __init__(self, pool: Any, mla: bool) -> None:
        layout = str(getattr(pool, "layout", None))
        buf = getattr(pool, "kv_buffer", None)
        if (layout, mla) not in _AXES or not isinstance(buf, torch.Tensor):
            kind = "MLA" if mla else "MHA"
            raise InvalidArgumentError(
                f"kvtier's SGLang backend supports {kind} host layouts "
                f"{sorted(lay for lay, m in _AXES if m == mla)} with a kv_buffer; "
                f"got layout {layout!r} of {type(pool).__name__}"
            )
        self.buf: torch.Tensor = buf
        self.axis, self.per = _AXES[(layout, mla)]
        self.page_size = int(pool.page_size)
        self.order: tuple[int, ...] = _RUN_ORDER.get((layout, mla), tuple(range(self.axis)))
        before, after = list(buf.shape[: self.axis]), list(buf.shape[self.axis + 1 :])
        rest = before + after
        self.per_page = self.page_size if self.per == "token" else 1  # entries of the axis per page
        esize = buf.element_size()
        self.runs_per_page = int(np.prod(before, dtype=np.int64))
        self.run_bytes = int(np.prod(after, dtype=np.int64)) * self.per_page * esize
        self.page_bytes = self.runs_per_page * self.run_bytes
        self.total_pages = int(buf.shape[self.axis]) // self.per_page
        # Direct copies need the pool's bytes as one host buffer, each run contiguous in it.
        self.flat: np.ndarray | None = None
        if buf.is_contiguous() and buf.device.type == "cpu" and buf.numel() > 0:
            self.flat = buf.view(-1).view(torch.uint8).numpy()  # a view: the pool's own bytes
            strides = np.array(buf.stride(), dtype=np.int64) * esize
            order = list(self.order)
            dims = [before[d] for d in order]
            grid = np.indices(dims, dtype=np.int64).reshape(len(dims), -1) if dims else np.zeros((0, 1), np.int64)
            self.run_offsets = (strides[order][:, None] * grid).sum(axis=0)  # (R,) bytes, in run order
            self.page_stride = int(strides[self.axis]) * self.per_page
            self.base = int(self.flat.ctypes.data)
        # What identifies the bytes of a page: bound into the namespace. Token-axis layouts with several runs
        # per page changed their page byte order (runs back to back, was token-major): ":runs" makes folders
        # written in the old order miss instead of being read in the new one.
        mark = ":runs" if self.per == "token" and self.axis > 0 else ""
        self.geometry = f"{layout}:{type(pool).__name__}:{'x'.join(map(str, rest))}:page{self.page_size}{mark}"

    def index(self, host_indices: torch.Tensor, n: int) -> torch.Tensor:
        idx = host_indices.to(device=self.buf.device, dtype=torch.int64).reshape(-1)
        if idx.numel() != n * self.page_size:
            raise InvalidArgumentError(f"host_indices has {idx.numel()} slots for {n} pages of {self.page_size}")
        return idx if self.per == "token" else idx[:: self.page_size] // self.page_size

    def page_numbers(self, host_indices: torch.Tensor, n: int) -> np.ndarray | None:
        """The pool page of each of the ``n`` pages, or ``None`` when the slots are not whole aligned pages of a
        contiguous host pool (the staging path checks and copies those)."""
        if self.flat is None or n == 0:
            return None
        idx = host_indices.to(device="cpu", dtype=torch.int64).reshape(-1)
        if idx.numel() != n * self.page_size:
            return None
        pages: np.ndarray = idx.reshape(n, self.page_size).numpy()
        starts: np.ndarray = pages[:, 0]
        if (starts % self.page_size != 0).any() or not np.array_equal(
            pages - starts[:, None], np.broadcast_to(np.arange(self.page_size), (n, self.page_size))
        ):
            return None
        page_no: np.ndarray = starts // self.page_size
        if page_no.min() < 0 or page_no.max() >= self.total_pages:
            return None
        return page_no

    def runs(self, store: Store, page_no: np.ndarray, writable: bool) -> Any:
        """The pages ``page_no`` as kvtier block runs over the pool's bytes: ``(n, R)`` addresses, one step."""
        assert self.flat is not None
        addrs = (self.base + page_no.astype(np.int64) * self.page_stride)[:, None] + self.run_offsets[None, :]
        return store.block_runs(addrs.astype(np.uint64), [self.flat], writable=writable)

    def gather(self, idx: torch.Tensor, n: int) -> np.ndarray:
        lead = self.axis
        sel = self.buf.index_select(self.axis, idx)  # before + (n * per,) + after
        shape = list(sel.shape[:lead]) + [n, self.per_page] + list(sel.shape[lead + 1 :])
        perm = [lead, *self.order, *range(lead + 1, len(shape))]  # (n, before in run order, per, after)
        pages = sel.reshape(shape).permute(perm).reshape(n, -1).contiguous()
        out: np.ndarray = pages.view(torch.uint8).numpy()
        return out

    def scatter(self, idx: torch.Tensor, staging: np.ndarray) -> None:
        n = staging.shape[0]
        lead = self.axis
        before, after = list(self.buf.shape[:lead]), list(self.buf.shape[lead + 1 :])
        ordered = [before[d] for d in self.order]
        src = torch.from_numpy(staging).view(self.buf.dtype).reshape([n, *ordered, self.per_page, *after])
        inv = [0] * lead
        for i, d in enumerate(self.order):
            inv[d] = i + 1
        src = src.permute([*inv, 0, *range(lead + 1, src.dim())]).reshape([*before, n * self.per_page, *after])
        self.buf.index_copy_(self.axis, idx, src)


class KVTierHiCacheStorage(HiCacheStorage):
    """HiCache storage backend: SGLang pages in kvtier's host and disk tiers (docs/sglang.md).

    Constructed by SGLang's backend factory as ``cls(storage_config, kwargs)``; the extra config is
    checked here (unknown keys and bad values raise, naming the key) and the store is opened in
    :meth:`register_mem_pool_host`, when the pool's layout, dtype and page geometry are known.
    """

    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: dict[str, Any] | None = None) -> None:
        self.storage_config = storage_config
        self.config: KVTierHiCacheConfig = parse_extra_config(getattr(storage_config, "extra_config", None))
        self.store: Store | None = None
        self.namespace: Namespace | None = None
        self._pages: _PoolPages | None = None
        self._logged: set[str] = set()
        # False: every batch through the staging path (bench/test_sglang_pages.py's baseline; tests).
        self._direct = True
        self._stats = {
            "exists_calls": 0, "exists_pages": 0, "get_pages": 0, "get_hits": 0, "set_pages": 0,
            "set_stored": 0, "set_present": 0, "set_skipped": 0, "direct_pages": 0, "staged_pages": 0, "errors": 0,
        }

    # ------------------------------------------------------------------ attach
    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        super().register_mem_pool_host(mem_pool_host)
        sc = self.storage_config
        mla = bool(sc.is_mla_model)
        pages = _PoolPages(mem_pool_host, mla)
        model = self.config.model or sc.model_name or "unnamed"
        ranks = f"pp{sc.pp_rank}of{sc.pp_size}"
        if not mla:  # an MLA pool is the same on every tp rank: they share pages
            ranks += f":tp{sc.tp_rank}of{sc.tp_size}:dp{getattr(sc, 'dp_rank', 0)}"
        # Shards that hold different bytes under the same page key (decode-context / attention-context
        # parallelism); absent when there is one shard, so the usual namespaces do not change.
        for name in ("dcp", "attn_cp"):
            size = int(getattr(sc, f"{name}_size", 1) or 1)
            if size > 1:
                ranks += f":{name}{int(getattr(sc, f'{name}_rank', 0))}of{size}"
        self.namespace = Namespace(
            model=model,
            revision=self.config.revision or "",
            kv_dtype=str(mem_pool_host.dtype),
            kv_layout=f"sglang:{pages.geometry}:{ranks}",
        )
        c = self.config
        self.store = Store(
            StoreConfig(
                block_size=pages.page_size,
                block_bytes=pages.page_bytes,
                content="keys",
                host=TierConfig(capacity_bytes=max(c.host_capacity, pages.page_bytes), policy=c.host_policy,
                                ttl_s=c.host_ttl_s),
                disk=DiskConfig(path=c.disk_path, capacity_bytes=max(c.disk_capacity, pages.page_bytes),
                                policy=c.disk_policy, ttl_s=c.disk_ttl_s),
                remote=c.remote_config(),  # never waits for the server: it connects in the background
            ),
            namespace=self.namespace,
        )
        self._pages = pages

    # ------------------------------------------------------------------ failures
    def _failed(self, what: str, e: BaseException) -> None:
        self._stats["errors"] += 1
        kind = f"{what}:{type(e).__name__}"
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning("kvtier HiCache backend: %s failed (%s: %s); counted in get_stats(), logged once",
                           what, type(e).__name__, e)

    def _ready(self) -> tuple[Store, _PoolPages]:
        if self.store is None or self._pages is None:
            raise RuntimeError("register_mem_pool_host() was not called")
        return self.store, self._pages

    # ------------------------------------------------------------------ interface_v1
    def batch_exists(self, keys: list[str], extra_info: Any = None) -> int:
        self._stats["exists_calls"] += 1
        try:
            store, _ = self._ready()
            found = store.find_keys(keys)
        except Exception as e:  # noqa: BLE001 - the data path never raises
            self._failed("batch_exists", e)
            return 0
        self._stats["exists_pages"] += found
        return found

    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        n = len(keys)
        self._stats["get_pages"] += n
        try:
            store, pages = self._ready()
            page_no = pages.page_numbers(host_indices, n) if self._direct else None
            if page_no is not None:  # straight into the pool's runs
                loaded = store.load_keys(keys, pages.runs(store, page_no, writable=True))
                self._stats["direct_pages"] += loaded
            else:
                idx = pages.index(host_indices, n)
                staging = np.empty((n, pages.page_bytes), np.uint8)
                loaded = store.load_keys(keys, staging)
                if loaded:
                    pages.scatter(idx[: loaded * (pages.page_size if pages.per == "token" else 1)], staging[:loaded])
                self._stats["staged_pages"] += loaded
        except Exception as e:  # noqa: BLE001
            self._failed("batch_get_v1", e)
            return [False] * n
        self._stats["get_hits"] += loaded
        return [True] * loaded + [False] * (n - loaded)

    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        n = len(keys)
        self._stats["set_pages"] += n
        if not self.storage_config.is_storage_writer:
            self._stats["set_skipped"] += n  # another rank writes the replicated MLA pages
            return [True] * n
        try:
            store, pages = self._ready()
            page_no = pages.page_numbers(host_indices, n) if self._direct else None
            idx = pages.index(host_indices, n) if page_no is None else None
            held = store.has_keys(keys)
            ok = held.copy()
            new = np.flatnonzero(~held)
            if len(new) and page_no is not None:  # from the pool's runs
                ok[new] = store.insert_keys([keys[i] for i in new], pages.runs(store, page_no[new], writable=False))
                self._stats["direct_pages"] += len(new)
            elif len(new):
                assert idx is not None
                per = pages.page_size if pages.per == "token" else 1
                sel = (torch.from_numpy(new)[:, None] * per + torch.arange(per)).reshape(-1)
                staging = pages.gather(idx[sel], len(new))
                ok[new] = store.insert_keys([keys[i] for i in new], staging)
                self._stats["staged_pages"] += len(new)
        except Exception as e:  # noqa: BLE001
            self._failed("batch_set_v1", e)
            return [False] * n
        self._stats["set_present"] += int(held.sum())
        self._stats["set_stored"] += int(ok.sum() - held.sum())
        return [bool(x) for x in ok]

    # ------------------------------------------------------------------ the older interface
    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> torch.Tensor | None:
        out = self.batch_get([key], [target_location] if target_location is not None else None)
        return out[0]

    def batch_get(self, keys: list[str], target_locations: Any = None, target_sizes: Any = None) -> list[Any]:
        try:
            store, pages = self._ready()
            staging = np.empty((len(keys), pages.page_bytes), np.uint8)
            loaded = store.load_keys(keys, staging)
        except Exception as e:  # noqa: BLE001
            self._failed("batch_get", e)
            return [None] * len(keys)
        out: list[Any] = []
        for i in range(len(keys)):
            if i >= loaded:
                out.append(None)
                continue
            page = torch.from_numpy(staging[i].copy()).view(pages.buf.dtype)
            if target_locations is not None:
                target_locations[i].view(-1).copy_(page)
                page = target_locations[i]
            out.append(page)
        return out

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys: list[str], values: Any = None, target_locations: Any = None,
                  target_sizes: Any = None) -> bool:
        try:
            store, pages = self._ready()
            staging = np.stack([v.contiguous().view(-1).view(torch.uint8).numpy() for v in values])
            return bool(store.insert_keys(keys, staging).all())
        except Exception as e:  # noqa: BLE001
            self._failed("batch_set", e)
            return False

    # ------------------------------------------------------------------ maintenance
    def clear(self) -> None:
        if self.store is not None:
            self.store.clear()

    def get_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(self._stats)
        if self.store is not None and not self.store.closed:
            s = self.store.stats()
            stats.update(host_blocks=s.blocks, host_bytes=s.resident_bytes)
            if s.disk is not None:
                stats.update(disk_blocks=s.disk.blocks, disk_corrupted=s.disk.corrupted)
            if s.remote is not None:
                r = s.remote
                stats.update(
                    remote_connected=r.connected, remote_hits=r.hits, remote_written=r.written,
                    remote_pending=r.pending, remote_promoted=r.promoted, remote_corrupted=r.corrupted,
                    remote_failures=r.failures, remote_write_errors=r.write_errors, remote_dropped=r.dropped,
                    remote_round_trips=r.round_trips,
                )
        return stats

    def close(self) -> None:
        if self.store is not None and not self.store.closed:
            self.store.close()
