"""Promotion on load follows one rule for every length (issue 12, item 8): a disk hit is copied up to host memory
as far as room can be made there, never waiting for the write queue."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvtier
from disk_helpers import BB, T0, close_opened, load_all, open_store, payload, tokens


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    close_opened()


@pytest.mark.parametrize("blocks", [3, 64, 65, 200])
def test_a_disk_hit_of_any_length_is_promoted_after_a_restart(tmp_path: Path, blocks: int) -> None:
    s = open_store(tmp_path, host_blocks=256)
    s.insert(tokens(1, blocks), payload(1, blocks), now=T0)
    s.close()  # persists the host tier
    s = open_store(tmp_path, host_blocks=256)  # the default queue holds 64 blocks
    n, out = load_all(s, tokens(1, blocks), blocks, now=T0 + 1)
    assert n == blocks and (out == payload(1, blocks)).all()
    st = s.stats()
    assert st.disk is not None and st.disk.promoted == blocks
    assert st.blocks == blocks  # every block now in host memory
    before = st.disk.hits
    assert s.match(tokens(1, blocks), now=T0 + 2).tiers.tolist() == [int(kvtier.Tier.HOST)] * blocks
    assert s.stats().disk.hits == before  # the next lookup never reaches the disk


def test_promotion_stops_at_the_host_tiers_room(tmp_path: Path) -> None:
    s = open_store(tmp_path, host_blocks=256)
    s.insert(tokens(1, 100), payload(1, 100), now=T0)
    s.close()
    s = open_store(tmp_path, host_blocks=40)
    n, out = load_all(s, tokens(1, 100), 100, now=T0 + 1)
    assert n == 100 and (out == payload(1, 100)).all()
    st = s.stats()
    assert st.disk is not None and 0 < st.disk.promoted <= 40
    assert st.blocks == st.disk.promoted
    s.check_invariants()
