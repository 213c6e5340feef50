"""One clock (issue 12, item 4): restoring a disk folder advances the store's clock like any call, so residency
never runs backwards, and the release rule (unpin without `now`) takes the latest time seen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kvtier
from disk_helpers import BB, close_opened, open_store, payload, tokens


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    close_opened()


def _rows_nonnegative(res: kvtier.Residency) -> None:
    for r in res.rows:
        assert r.byte_seconds >= 0.0 and r.resident_bytes >= 0, r


def test_reopen_without_now_then_an_earlier_time_is_refused_not_negative(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.insert(tokens(1, 4), payload(1, 4), now=5.0)
    s.close()
    s = open_store(tmp_path)  # restored blocks are dated on the monotonic clock, which the store's clock now reads
    assert s.restore_report is not None and s.restore_report.restored == 4
    with pytest.raises(kvtier.InvalidArgumentError, match="time must not go backwards"):
        s.residency(now=6.0)
    res = s.residency()
    _rows_nonnegative(res)
    assert res.byte_seconds >= 0.0


def test_reopen_with_now_dates_the_restored_blocks(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.insert(tokens(1, 4), payload(1, 4), now=5.0)
    s.close()
    s = kvtier.Store(s.config, now=100.0)
    try:
        res = s.residency(now=130.0)
        _rows_nonnegative(res)
        disk = sum(r.byte_seconds for r in res.rows if r.tier == kvtier.Tier.DISK)
        assert disk == pytest.approx(4 * BB * 30.0)  # resident on disk from the reopen at 100 s to 130 s
        with pytest.raises(kvtier.InvalidArgumentError, match="time must not go backwards"):
            s.match(tokens(1, 4), now=99.0)
    finally:
        s.close(persist=False)


def test_unpin_without_now_releases_at_the_latest_time_seen() -> None:
    cfg = kvtier.StoreConfig(
        block_size=4, block_bytes=64, host=kvtier.TierConfig(capacity_bytes=64 * 64, policy="ttl", ttl_s=10.0)
    )
    with kvtier.Store(cfg) as s:
        p = np.arange(16, dtype=np.int32)
        s.insert(p, np.zeros((4, 64), np.uint8), now=45.0)
        m = s.match(p, pin=True, now=50.0)
        s.unpin(m)  # at 50 s, the latest time seen (not the monotonic clock, nor 45 s)
        assert s.peek(p, now=59.0).num_blocks == 4  # idle 9 s < TTL
        assert s.peek(p, now=61.0).num_blocks == 0  # idle 11 s > TTL


def test_opening_an_empty_folder_with_now_sets_the_clock(tmp_path: Path) -> None:
    cfg = open_store(tmp_path).config
    close_opened()  # the folder exists and holds no block
    s = kvtier.Store(cfg, now=100.0)
    try:
        with pytest.raises(kvtier.InvalidArgumentError, match="time must not go backwards"):
            s.match(tokens(1, 2), now=50.0)
        assert s.match(tokens(1, 2), now=100.0).num_blocks == 0
    finally:
        s.close(persist=False)


def test_opening_an_empty_folder_without_now_leaves_the_clock_alone(tmp_path: Path) -> None:
    s = open_store(tmp_path)  # a store driven by explicit small times must still accept them
    s.insert(tokens(1, 2), payload(1, 2), now=1.0)
    assert s.match(tokens(1, 2), now=2.0).num_blocks == 2
