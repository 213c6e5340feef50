"""SGLang's real host pools and backend factory, on CPU. Skipped unless sglang imports (KVTIER_REQUIRE_SGLANG=1
makes a missing sglang a failure: .ci/run sets it)."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND", "python")

try:
    # sglang warns at import that its GGUF and AWQ kernels need a GPU: nothing to do with kvtier, and the
    # suite turns warnings into errors. Imported once here, with those warnings off.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sglang.srt.mem_cache.pool_host.mha  # noqa: F401
        import sglang.srt.mem_cache.storage.backend_factory  # noqa: F401
        import torch  # noqa: F401
except ImportError as e:
    if os.environ.get("KVTIER_REQUIRE_SGLANG") == "1":
        raise RuntimeError(f"KVTIER_REQUIRE_SGLANG=1 but sglang cannot be imported: {e}") from e
    collect_ignore_glob = ["test_*.py"]
