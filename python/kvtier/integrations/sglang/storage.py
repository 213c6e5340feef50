"""KVTierHiCacheStorage: SGLang's HiCache L3 storage backend (interface_v1) over a kvtier keys store.

SGLang hands the backend one 64-hex SHA-256 per page, already chained over the prefix (``cache_salt``
and ``extra_key`` folded in). kvtier stores each page under that key (a store of content ``"keys"``)
in a namespace that binds what the key does not: the model (and revision), the tp/pp/dp rank (not for
rank-replicated MLA pools), SGLang's host layout, the KV dtype and the page geometry. A store written by
one model, rank or layout is therefore never served to another, and a restart serves what the folder holds.

A page's payload is its bytes in the host pool, gathered along the pool's token (or page) axis::

    page_first        MHA (2, size, L, H, D)       page p = [K rows of its tokens | V rows of its tokens]
    layer_first       MHA (2, L, size, H, D)       gathered per layer, same bytes in a fixed order
    page_first_direct MHA (2, pages, L, page, H, D), page_head (2, pages, H, page, L, D): a K and a V run
    MLA page_first (size, L, 1, dim), page_first_direct, page_unified (either kind): one run per page

One-run layouts move straight between kvtier and the pool's pages (a slice of ``kv_buffer`` per group of
pages that lie one after another; no staging copy). The others go through a staging array, filled or emptied
by one torch index_select / index_copy_ per batch (both release the GIL); kvtier copies it in and out of its
tiers in one core call per batch.

Nothing raises on the data path: a failure is counted in :meth:`get_stats` and logged once per kind,
and SGLang sees a miss (or a failed backup).
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


class _PoolPages:
    """Moves whole pages between a host pool's ``kv_buffer`` and kvtier.

    Where a page is one contiguous run of ``kv_buffer`` (the page axis, or the token axis of a page-first MLA
    pool, is the first: MLA ``page_first``, ``page_first_direct``, ``page_unified``; MHA ``page_unified``), a
    batch's pages that lie one after another in the pool are handed to kvtier as a slice of ``kv_buffer``
    itself (:meth:`direct_groups`): kvtier copies between its tiers and the pool with no staging copy. Other
    layouts (a K run and a V run per page, or one run per layer) go through a ``uint8[n, page_bytes]``
    staging array, filled or emptied by one torch ``index_select`` / ``index_copy_`` per batch.
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
        rest = [d for i, d in enumerate(buf.shape) if i != self.axis]
        per_page = self.page_size if self.per == "token" else 1
        self.page_bytes = int(np.prod(rest)) * per_page * buf.element_size()
        # One contiguous run per page: the page (or token) axis is the outermost of a contiguous buffer.
        self.one_run = self.axis == 0 and buf.is_contiguous() and buf.device.type == "cpu"
        # What identifies the bytes of a page: bound into the namespace.
        self.geometry = f"{layout}:{type(pool).__name__}:{'x'.join(map(str, rest))}:page{self.page_size}"

    def index(self, host_indices: torch.Tensor, n: int) -> torch.Tensor:
        idx = host_indices.to(device=self.buf.device, dtype=torch.int64).reshape(-1)
        if idx.numel() != n * self.page_size:
            raise InvalidArgumentError(f"host_indices has {idx.numel()} slots for {n} pages of {self.page_size}")
        return idx if self.per == "token" else idx[:: self.page_size] // self.page_size

    def direct_groups(self, host_indices: torch.Tensor, n: int) -> list[tuple[int, int, np.ndarray]] | None:
        """For one-run layouts: ``(first, last + 1, rows)`` per maximal group of pages ``keys[first:last + 1]``
        that lie one after another in the pool, ``rows`` being their bytes in ``kv_buffer`` (a view). ``None``
        when the layout has several runs per page or the slots are not whole aligned pages."""
        if not self.one_run or n == 0:
            return None
        idx = host_indices.to(device="cpu", dtype=torch.int64).reshape(-1)
        if idx.numel() != n * self.page_size:
            return None
        pages = idx.reshape(n, self.page_size)
        starts = pages[:, 0]
        if bool((starts % self.page_size != 0).any()) or not torch.equal(
            pages - starts[:, None], torch.arange(self.page_size).expand(n, -1)
        ):
            return None  # not whole aligned pages: the staging path checks and copies them
        page_no = (starts // self.page_size).numpy()
        total_pages = self.buf.shape[0] // (self.page_size if self.per == "token" else 1)
        if page_no.min() < 0 or page_no.max() >= total_pages:
            return None
        flat = self.buf.reshape(-1).view(torch.uint8).numpy()  # a view: the pool's own bytes
        rows = flat[: total_pages * self.page_bytes].reshape(total_pages, self.page_bytes)
        cut = np.flatnonzero(np.diff(page_no) != 1) + 1
        bounds = [0, *cut.tolist(), n]
        return [(a, b, rows[page_no[a] : page_no[a] + (b - a)]) for a, b in zip(bounds[:-1], bounds[1:])]

    def gather(self, idx: torch.Tensor, n: int) -> np.ndarray:
        pages = self.buf.index_select(self.axis, idx).movedim(self.axis, 0).reshape(n, -1).contiguous()
        out: np.ndarray = pages.view(torch.uint8).numpy()
        return out

    def scatter(self, idx: torch.Tensor, staging: np.ndarray) -> None:
        src = torch.from_numpy(staging).view(self.buf.dtype)
        shape = list(self.buf.shape)
        del shape[self.axis]
        self.buf.index_copy_(self.axis, idx, src.reshape(idx.numel(), *shape).movedim(0, self.axis))


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
            groups = pages.direct_groups(host_indices, n)
            if groups is not None:  # straight into the pool's pages
                loaded = 0
                for a, b, rows in groups:
                    got = store.load_keys(keys[a:b], rows)
                    loaded += got
                    if got < b - a:
                        break
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
            groups = pages.direct_groups(host_indices, n)
            idx = pages.index(host_indices, n) if groups is None else None
            held = store.has_keys(keys)
            ok = held.copy()
            new = np.flatnonzero(~held)
            if len(new) and groups is not None:  # from the pool's pages, runs of new pages at a time
                for a, b, rows in groups:
                    fresh = np.flatnonzero(~held[a:b])
                    if len(fresh) == 0:
                        continue
                    cut = np.flatnonzero(np.diff(fresh) != 1) + 1
                    for run in np.split(fresh, cut):
                        lo, hi = int(run[0]), int(run[-1]) + 1
                        ok[a + lo : a + hi] = store.insert_keys(keys[a + lo : a + hi], rows[lo:hi])
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
        return stats

    def close(self) -> None:
        if self.store is not None and not self.store.closed:
            self.store.close()
