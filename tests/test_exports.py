"""The compiled module exports one symbol, and errors format numbers without iostreams (issue 17, item 1)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

import kvtier
from kvtier import _core


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF dynamic symbol table")
def test_module_exports_only_its_init_function() -> None:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("binutils' nm is not installed")
    out = subprocess.run([nm, "-D", "--defined-only", _core.__file__], check=True, capture_output=True, text=True)
    names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    assert names == ["PyInit__core"], f"{_core.__file__} exports {len(names)} symbols: {names[:20]}"


@pytest.mark.parametrize(
    ("earlier", "text"), [(1.25, "now=1.25 "), (0.1, "now=0.1 "), (-1e300, "now=-1e+300 ")]
)
def test_time_error_prints_the_shortest_exact_number(earlier: float, text: str) -> None:
    cfg = kvtier.StoreConfig(block_size=4, block_bytes=8, host=kvtier.TierConfig(capacity_bytes=1024))
    with kvtier.Store(cfg) as store:
        store.match(np.arange(8), now=5.0)
        with pytest.raises(kvtier.InvalidArgumentError) as info:
            store.match(np.arange(8), now=earlier)
    assert text in str(info.value)
    assert "store's clock (5)" in str(info.value)
