"""SGLang's UnifiedRadixCache with HiCache over kvtier, across a restart: a producer process backs a request's
KV up through the real tree, controller and backend; fresh consumer trees in another process on the same folder
prefetch it from storage and load it back to the device pool. Each role runs in its own process (radix_roles.py)
because SGLang's runtime context is process-wide, as in a server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from engine import PAGE

HERE = Path(__file__).parent
PAGES = 5


def run(role: str, args: dict[str, Any]) -> Any:
    r = subprocess.run([sys.executable, str(HERE / "radix_roles.py"), role, json.dumps(args)], cwd=HERE,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_restart_consumer_loads_the_producers_kv(tmp_path: Path, kind: str) -> None:
    tokens = list(range(500, 500 + PAGES * PAGE))
    common = {"kind": kind, "disk": str(tmp_path / "disk"), "tokens": tokens}
    made = run("produce", {**common, "layout": "page_first", "salt": "tenant-a", "seed": 11,
                           "out": str(tmp_path / "produced.pt")})
    assert made["set_stored"] == PAGES and made["errors"] == 0
    cases = [
        {"layout": "page_first", "salt": "tenant-a", "out": str(tmp_path / "a.pt")},  # the producer's tenant
        {"layout": "page_first", "salt": "tenant-b", "out": str(tmp_path / "b.pt")},  # another cache_salt
        {"layout": "page_first", "salt": None, "out": str(tmp_path / "none.pt")},  # no salt
        {"layout": "layer_first", "salt": "tenant-a", "out": str(tmp_path / "lf.pt")},  # another host layout
    ]
    same, other_salt, no_salt, other_layout = run("consume", {**common, "cases": cases})
    n = PAGES * PAGE
    # A fresh tree: nothing on device or host; storage serves every page; loaded back to the device pool.
    assert (same["device_before"], same["host_before"]) == (0, 0)
    assert same["storage_loaded"] == n and same["host_after_prefetch"] == n and same["device_after_load"] == n
    assert same["backend"]["get_hits"] == PAGES and same["backend"]["errors"] == 0
    # MLA page_first pages are one run each: loaded straight into the host pool; MHA through staging.
    assert same["backend"]["direct_pages" if kind == "mla" else "staged_pages"] == PAGES
    want, got = torch.load(tmp_path / "produced.pt"), torch.load(tmp_path / "a.pt")
    assert len(want) == len(got) and all(torch.equal(w, g) for w, g in zip(want, got))  # KV bytes equal
    for miss in (other_salt, no_salt, other_layout):
        assert miss["storage_loaded"] == 0 and miss["device_after_load"] == 0, miss
        # The storage was asked (batch_exists) and answered a miss: nothing loaded, nothing failed.
        assert miss["backend"]["exists_calls"] >= 1 and miss["backend"]["exists_pages"] == 0, miss
        assert miss["backend"]["get_pages"] == 0 and miss["backend"]["errors"] == 0
