"""The CUDA paths on a machine without a GPU: kvtier's driver loader, streams, events, batched and loop copies,
device arena and page-locked host tier, run against a fake libcuda.so.1 (tests/fake_cuda/fake_libcuda.c) whose
device memory is host memory.

Each check runs in a fresh Python process (``tests/fake_cuda/checks.py NAME``) with ``LD_LIBRARY_PATH`` pointing at
the compiled fake, because kvtier loads ``libcuda.so.1`` once per process, like the real driver. Only the final
driver calls differ from a GPU machine; tests/test_cuda_gpu.py covers those.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAKE_SRC = HERE / "fake_cuda" / "fake_libcuda.c"
CHECKS = HERE / "fake_cuda" / "checks.py"
STORE_CHECKS = HERE / "fake_cuda" / "store_checks.py"


def _compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "").split()
    for candidate in [cc[0] if cc else "", "cc", "gcc", "clang"]:
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _build(out_dir: Path, *defines: str) -> Path:
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler to build the fake CUDA driver")
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / "libcuda.so.1"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-pthread", *defines, "-o", str(lib), str(FAKE_SRC)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out_dir


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("fake_cuda"))


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("fake_cuda_broken"), "-DFAKE_OMIT_MEMCPY")


def _run(lib_dir: Path, name: str, script: Path = CHECKS, **env: str) -> str:
    e = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_CUDA_")}
    e["LD_LIBRARY_PATH"] = str(lib_dir) + (os.pathsep + e["LD_LIBRARY_PATH"] if e.get("LD_LIBRARY_PATH") else "")
    e.update(env)
    r = subprocess.run(
        [sys.executable, str(script), name], env=e, capture_output=True, text=True, timeout=120, cwd=str(HERE)
    )
    assert r.returncode == 0, f"check {name} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert f"check {name}: ok" in r.stdout
    return r.stdout


@pytest.mark.parametrize(
    "env",
    [{}, {"FAKE_CUDA_DEVICES": "3"}, {"FAKE_CUDA_NO_BATCH": "1"}, {"FAKE_CUDA_VERSION": "12040"}],
    ids=["default", "three-devices", "no-batch-symbol", "cuda-12.4"],
)
def test_probe(fake_dir: Path, env: dict[str, str]) -> None:
    _run(fake_dir, "probe", **env)


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({"FAKE_CUDA_INIT_ERROR": "100"}, "cuInit failed: CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)"),
        ({"FAKE_CUDA_DEVICES": "0"}, "sees no device"),
    ],
    ids=["cuinit-fails", "no-device"],
)
def test_probe_reasons(fake_dir: Path, env: dict[str, str], expect: str) -> None:
    assert expect in _run(fake_dir, "probe_reason", **env)


def test_cuda_command(fake_dir: Path) -> None:
    _run(fake_dir, "cuda_command")


def test_probe_library_lacking_a_call(broken_dir: Path) -> None:
    out = _run(broken_dir, "probe_reason")
    assert "does not export cuMemcpyAsync" in out and "libcuda.so.1" in out


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("batched", {}),
        ("loop", {}),
        ("no_batch_driver", {"FAKE_CUDA_NO_BATCH": "1"}),
        ("batch_fallback", {"FAKE_CUDA_BATCH_FAILS": "1"}),
        ("async_poll_and_wait", {}),
        ("device_error", {}),
        ("device_arena", {}),
        ("device_out_of_memory", {"FAKE_CUDA_MEMORY": str(64 << 20)}),
        ("two_devices", {"FAKE_CUDA_DEVICES": "2"}),
        ("host_tier_page_locked", {}),
        ("fork", {}),
    ],
)
def test_fake_driver(fake_dir: Path, name: str, env: dict[str, str]) -> None:
    _run(fake_dir, name, **env)


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("insert_from_gpu_and_write_back", {}),
        ("promote_and_evict", {}),
        ("no_promotion", {}),
        ("write_through", {}),
        ("too_big_for_device", {}),
        ("residency", {}),
        ("disk_round_trip", {}),
        ("other_gpu_goes_to_host", {"FAKE_CUDA_DEVICES": "2"}),
        ("bad_input", {}),
        ("payload_dtype", {}),
        ("copy_failures", {}),
        ("model", {}),
        ("model", {"FAKE_CUDA_NO_BATCH": "1"}),
        ("threads", {}),
    ],
    ids=[
        "insert-from-gpu-write-back",
        "promote-evict",
        "no-promotion",
        "write-through",
        "too-big",
        "residency",
        "disk-round-trip",
        "other-gpu",
        "bad-input",
        "payload-dtype",
        "copy-failures",
        "model",
        "model-copy-loop",
        "threads",
    ],
)
def test_store_device_tier(fake_dir: Path, name: str, env: dict[str, str]) -> None:
    """The store's device tier (csrc/store/device.cpp) with the fake driver: GPU payloads in and out, write-back,
    promotion, eviction, residency and the disk below it."""
    _run(fake_dir, name, STORE_CHECKS, **env)


def test_gpu_inserts_reach_the_remote_tier(fake_dir: Path, tmp_path: Path) -> None:
    """Device-tier blocks reach a real redis-server when the host tier evicts them (tests/test_remote_demotion.py
    has the host and disk cases)."""
    from redis_helpers import RedisServer, need_redis

    need_redis()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        _run(fake_dir, "gpu_inserts_reach_the_remote_tier", STORE_CHECKS, KVTIER_TEST_REDIS_URL=server.url)
    finally:
        server.stop()
