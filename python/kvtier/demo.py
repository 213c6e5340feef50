"""`kvtier demo`: an agent-like workload stored and matched through the host and disk tiers.

Several agent sessions share a system prompt (tool schemas); at every step each session re-sends its
whole history plus a new observation. The store saves each step's new full blocks and, at the next
step, the returning prefix is matched and its KV loaded instead of being prefilled again. The host tier
is smaller than the working set, so older blocks move to the disk tier (an LMDB folder) and come back
from there. At the end the store is closed and reopened on the same folder, as a restarted server
would: every session's prefix is found again and its KV checked.

A run is repeatable: the tokens come from a seeded generator, time is the demo's own clock (``step_seconds``
apart, passed as ``now=`` to every store call, so residency comes out in meaningful GB-hours), and every
step's disk writes are committed (:meth:`kvtier.Store.flush`) before the next lookup, so the background
writer's timing never changes what is found where. Only wall-clock times (the restart's) vary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kvtier.config import DEFAULT_BLOCK_SIZE, DiskConfig, Namespace, StoreConfig, TierConfig
from kvtier.errors import InvalidArgumentError
from kvtier.store import Store, Tier, TokenSequence
from kvtier.tiers.disk_folder import FILES, MARKER
from kvtier.units import format_bytes, plural

__all__ = [
    "DemoConfig",
    "StepReport",
    "RestartReport",
    "FolderState",
    "default_folder",
    "prepare_folder",
    "run_demo",
    "restart",
    "main",
]

_CACHE_FILES = (*FILES, MARKER)  # the disk tier's own files
_NAMESPACE = Namespace(model="meta-llama/Llama-3.2-1B", kv_dtype="bfloat16", tenant="demo")


def default_folder() -> str:
    """The demo's disk-tier folder: ``demo`` in the user's cache directory (platformdirs), e.g.
    ``~/.cache/kvtier/demo`` on Linux, ``~/Library/Caches/kvtier/demo`` on macOS."""
    import platformdirs

    return os.path.join(platformdirs.user_cache_dir("kvtier", appauthor=False), "demo")


@dataclass(frozen=True)
class DemoConfig:
    sessions: int = 3
    steps: int = 8
    system_tokens: int = 2048
    step_tokens: int = 384
    step_seconds: float = 30.0
    block_size: int = DEFAULT_BLOCK_SIZE
    kv_bytes_per_token: int = 32_768  # Llama-3.2-1B, bf16: 16 layers x 8 KV heads x 64 dim x 2 (K,V) x 2 bytes
    capacity_bytes: int = 128 << 20
    policy: str = "lru"
    disk_path: str = field(default_factory=default_folder)
    disk_capacity_bytes: int = 4 << 30
    seed: int = 0

    @property
    def block_bytes(self) -> int:
        return self.kv_bytes_per_token * self.block_size


@dataclass(frozen=True)
class StepReport:
    step: int
    session: str
    prompt_tokens: int
    hit_tokens: int
    new_blocks: int
    verified: bool | None  # the loaded KV matched what was stored; None: nothing was loaded


@dataclass(frozen=True)
class RestartReport:
    session: str
    prompt_tokens: int
    hit_tokens: int
    disk_tokens: int
    verified: bool


@dataclass(frozen=True)
class FolderState:
    """What :func:`prepare_folder` did: ``action`` is ``"new"``, ``"cleared"`` (emptied) or ``"kept"`` (--keep);
    ``held_bytes`` is what an earlier run had left in the folder."""

    path: str
    action: str
    held_bytes: int = 0


def prepare_folder(path: str, keep: bool) -> FolderState:
    """Makes ``path`` ready for the demo: a new folder, an earlier run's folder emptied, or (``keep``) reused.

    Only a kvtier disk folder that holds the demo's blocks and no others is emptied (or reused).

    Raises
    ------
    kvtier.InvalidArgumentError
        ``path`` is a file, a folder that holds other files, or a kvtier folder with other namespaces' blocks
        (a real cache: never emptied by the demo).
    """
    if not os.path.exists(path):
        return FolderState(path, "new")
    if not os.path.isdir(path):
        raise InvalidArgumentError(f"--disk {path} is a file, not a folder")
    names = os.listdir(path)
    if not names:
        return FolderState(path, "new")
    others = sorted(set(names) - set(_CACHE_FILES))
    if others:
        raise InvalidArgumentError(
            f"--disk {path} holds files that are not a kvtier cache ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}): give a new or empty folder"
        )
    _check_demo_folder(path)
    held = sum(os.path.getsize(os.path.join(path, n)) for n in names)
    if keep:
        return FolderState(path, "kept", held)
    shutil.rmtree(path)
    return FolderState(path, "cleared", held)


def _check_demo_folder(path: str) -> None:
    """Raises unless the LMDB folder ``path`` is a kvtier folder holding only the demo's namespace."""
    import json

    from kvtier.errors import DiskError, DiskReadError
    from kvtier.tiers.disk_folder import disk_error
    from kvtier.tiers.disk_io import DiskIO

    if not os.path.isfile(os.path.join(path, "data.mdb")):
        return  # a lock file alone: nothing stored
    others = []
    try:
        io = DiskIO(path, map_size=1 << 20, readonly=True, create=False)
    except DiskError as e:
        raise InvalidArgumentError(f"--disk {e}: give a new or empty folder") from None
    try:
        with io.reading() as r:
            for _key, value in r.scan(b"namespaces"):
                ns: Namespace | None = None
                try:
                    d = json.loads(bytes(value))
                    d.pop("block_size", None)
                    ns = Namespace(**d)
                except (ValueError, TypeError, AttributeError):  # not a record this kvtier can read
                    d = {}
                if ns != _NAMESPACE:
                    others.append(f"model {d.get('model')!r} tenant {d.get('tenant')!r}")
    except (io.lmdb.Error, OSError) as e:  # a damaged page: a kvtier error (exit 2), never a traceback
        raise disk_error(e, path, "cannot read the namespaces (kvtier fsck --repair mends it)", DiskReadError) from e
    finally:
        io.close()
    if others:
        raise InvalidArgumentError(
            f"--disk {path} is a kvtier cache with other blocks than the demo's ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}): give a new or empty folder"
        )


def _store(cfg: DemoConfig, now: float) -> Store:
    return Store(
        StoreConfig(
            block_size=cfg.block_size,
            block_bytes=cfg.block_bytes,
            host=TierConfig(capacity_bytes=cfg.capacity_bytes, policy=cfg.policy),  # type: ignore[arg-type]
            disk=DiskConfig(path=cfg.disk_path, capacity_bytes=cfg.disk_capacity_bytes),
        ),
        namespace=_NAMESPACE,
        now=now,
    )


def _payload(tokens: np.ndarray, first_block: int, n_blocks: int, block_size: int, block_bytes: int) -> np.ndarray:
    """Stand-in KV for blocks [first_block, first_block + n_blocks): bytes derived from each block's prefix."""
    out = np.empty((n_blocks, block_bytes), dtype=np.uint8)
    for i in range(n_blocks):
        b = first_block + i
        out[i] = (int(tokens[: (b + 1) * block_size].sum()) + b) % 251
    return out


def run_demo(
    cfg: DemoConfig, emit: Callable[[StepReport], None] | None = None
) -> tuple[Store, list[StepReport], dict[str, np.ndarray]]:
    """Runs the demo; returns the (open) store, one report per (step, session) and each session's prompt."""
    rng = np.random.default_rng(cfg.seed)
    store = _store(cfg, 0.0)
    system = rng.integers(0, 128_000, cfg.system_tokens, dtype=np.int32)
    histories = {f"agent-{i}": TokenSequence(system) for i in range(cfg.sessions)}
    reports: list[StepReport] = []
    for step in range(cfg.steps):
        now = step * cfg.step_seconds
        for name, seq in histories.items():
            seq.extend(rng.integers(0, 128_000, cfg.step_tokens, dtype=np.int32))
            tokens = seq.numpy()
            full = len(tokens) // cfg.block_size
            with store.pinned(seq, now=now) as hit:
                verified = None
                if hit.num_blocks:
                    kv = np.empty((hit.num_blocks, cfg.block_bytes), dtype=np.uint8)
                    store.load(hit, kv, now=now)
                    verified = bool(
                        np.array_equal(kv[:, :64], _payload(tokens, 0, hit.num_blocks, cfg.block_size, 64))
                    )
                new = full - hit.num_blocks
                res = store.insert(
                    seq,
                    _payload(tokens, hit.num_blocks, new, cfg.block_size, cfg.block_bytes),
                    start_block=hit.num_blocks,
                    session=name,
                    now=now,
                )
            # Demoted blocks are committed before the next lookup: what it finds never depends on how far
            # the background writer got (the repeatability of the run).
            store.flush()
            report = StepReport(step, name, len(tokens), hit.num_tokens, res.inserted_blocks, verified)
            reports.append(report)
            if emit is not None:
                emit(report)
    return store, reports, {name: seq.numpy() for name, seq in histories.items()}


def restart(cfg: DemoConfig, prompts: dict[str, np.ndarray]) -> tuple[Store, list[RestartReport]]:
    """Opens a new store on the demo's folder (as a restarted server) and looks every session up again."""
    end = cfg.steps * cfg.step_seconds
    store = _store(cfg, end)
    out: list[RestartReport] = []
    for name, tokens in prompts.items():
        with store.pinned(tokens, now=end) as hit:
            kv = np.empty((hit.num_blocks, cfg.block_bytes), dtype=np.uint8)
            loaded = store.load(hit, kv, now=end) if hit.num_blocks else 0
            ok = loaded == hit.num_blocks and bool(
                np.array_equal(kv[:loaded, :64], _payload(tokens, 0, loaded, cfg.block_size, 64))
            )
            out.append(RestartReport(name, len(tokens), hit.num_tokens, hit.disk_blocks * cfg.block_size, ok))
    return store, out


def _check(verified: bool | None) -> str:
    return "-" if verified is None else "ok" if verified else "MISMATCH"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def main(cfg: DemoConfig, keep: bool = False, out: Callable[[str], None] = print) -> int:
    """Runs the demo and prints it (``kvtier demo``). Returns 0, or 1 if a KV check failed."""
    folder = prepare_folder(cfg.disk_path, keep)
    out(
        f"kvtier demo: {plural(cfg.sessions, 'agent session')} x {plural(cfg.steps, 'step')}, shared system prompt of "
        f"{plural(cfg.system_tokens, 'token')}, +{plural(cfg.step_tokens, 'token')} per step, {cfg.step_seconds:g} s "
        f"apart on the demo's clock; seed {cfg.seed}\n"
        f"host tier: {format_bytes(cfg.capacity_bytes)}, {cfg.policy.upper()}; disk tier: "
        f"{format_bytes(cfg.disk_capacity_bytes)}, LMDB; block {cfg.block_size} tokens "
        f"= {format_bytes(cfg.block_bytes)} of KV (Llama-3.2-1B, bf16)"
    )
    if folder.action == "new":
        out(f"cache folder: {folder.path} (new)")
    elif folder.action == "cleared":
        out(f"cache folder: {folder.path} (emptied: it held {format_bytes(folder.held_bytes)} from an earlier run; "
            "--keep reuses it)")
    else:
        out(_describe_kept(cfg, folder))
    out(f"\n{'step':>4} {'session':<9} {'prompt':>7} {'hit':>7} {'hit %':>6} {'new blk':>7}  KV check")

    def emit(r: StepReport) -> None:
        out(
            f"{r.step:>4} {r.session:<9} {r.prompt_tokens:>7} {r.hit_tokens:>7} "
            f"{_pct(r.hit_tokens, r.prompt_tokens):>6} {r.new_blocks:>7}  {_check(r.verified)}"
        )

    store, reports, prompts = run_demo(cfg, emit)
    end = cfg.steps * cfg.step_seconds
    st = store.stats()
    disk = st.disk
    assert disk is not None
    looked_up = st.hits + st.misses  # every lookup starts at the host tier; disk hits are host misses
    hit = st.hits + disk.hits
    out("\n(KV check: the loaded KV equals what was stored; '-': nothing was loaded)")
    out(
        f"block lookups: {looked_up:,}; hits: host {st.hits:,} ({_pct(st.hits, looked_up)}), "
        f"disk {disk.hits:,} ({_pct(disk.hits, looked_up)}), overall {hit:,} ({_pct(hit, looked_up)}); "
        f"{looked_up - hit:,} blocks prefilled"
    )
    out(
        f"loaded instead of prefilled: {format_bytes(hit * cfg.block_bytes)} "
        f"({format_bytes(st.bytes_read)} from host memory, {format_bytes(disk.bytes_read)} from disk, checksummed)"
    )
    out(
        f"host tier: {plural(st.blocks, 'block')} resident ({format_bytes(st.resident_bytes)} of "
        f"{format_bytes(st.capacity_bytes or 0)}), {st.evicted:,} evicted to disk, "
        f"{disk.promoted:,} promoted back from disk"
    )
    out(f"disk tier: {plural(disk.blocks, 'block')} ({format_bytes(disk.resident_bytes)})")
    res = store.residency(now=end)
    tiers = ", ".join(f"{t.name.lower()} {g:.4f}" for t, g in sorted(res.by_tier().items()))
    out(f"residency over {end:g} s: {res.gb_hours:.4f} GB-hours ({tiers}); by session:")
    for (_, session), gbh in sorted(res.by_session().items(), key=lambda kv: (kv[0][1] is None, kv[0][1] or "")):
        if gbh == 0:
            continue  # an account that never held a block
        name = "(ended)" if session is None else session or "(earlier run)"
        out(f"  {name:<13} {gbh:.4f} GB-hours")
    store.close()  # a clean shutdown writes the host tier's blocks to the folder
    store2, after = restart(cfg, prompts)
    with store2:
        rep = store2.restore_report
        assert rep is not None
        out(f"\nrestart: reopened the folder: {plural(rep.restored, 'block')} restored in {rep.seconds:.3f} s")
        for r in after:
            out(
                f"  {r.session:<9} prompt {r.prompt_tokens:>6} tokens: {r.hit_tokens:>6} hit "
                f"({_pct(r.hit_tokens, r.prompt_tokens)}, {r.disk_tokens} from disk)  KV check {_check(r.verified)}"
            )
    held = sum(os.path.getsize(os.path.join(cfg.disk_path, n)) for n in os.listdir(cfg.disk_path))
    out(
        f"\nThe same options and seed give the same figures on every run (only the restart's wall time varies).\n"
        f"cache folder: {cfg.disk_path} holds {format_bytes(held)}; the next run empties it unless --keep is given"
    )
    ok = all(r.verified is not False for r in reports) and all(r.verified for r in after)
    return 0 if ok else 1


def _describe_kept(cfg: DemoConfig, folder: FolderState) -> str:
    """What a reused folder holds (opened once, read-only in effect: nothing is written to it)."""
    probe = _store(cfg, 0.0)
    rep = probe.restore_report
    disk = probe.stats().disk
    probe.close(persist=False)
    assert rep is not None and disk is not None
    return (
        f"cache folder: {folder.path} (reused, --keep: it holds {plural(rep.restored, 'block')}, "
        f"{format_bytes(disk.resident_bytes)} of KV, from an earlier run; the same seed finds them again, "
        "so the hits below include them)"
    )
