"""The vLLM connector's pure-Python parts, which need neither vllm nor torch: extra-config validation and the
"a hit is taken only when it pays" cost model. (End-to-end tests with a real engine: tests/vllm/.)"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import kvtier
from kvtier.integrations.vllm.config import KVTierConnectorConfig, parse_extra_config, parse_size
from kvtier.integrations.vllm.cost import HitCostModel


def test_import_kvtier_imports_neither_vllm_nor_torch() -> None:
    code = (
        "import sys, kvtier, kvtier.integrations.vllm, kvtier.integrations.vllm.config; "
        "bad = [m for m in ('vllm', 'torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_only_disk_path_given_everything_else_defaults(tmp_path: object) -> None:
    cfg = parse_extra_config({"disk_path": str(tmp_path)})
    assert cfg.disk_path == str(tmp_path)
    assert cfg.host_capacity == 2 << 30
    assert 1 << 30 <= cfg.disk_capacity <= 64 << 30
    assert cfg.host_policy == cfg.disk_policy == "lru"
    assert cfg.hit_policy == "pays"
    assert cfg.save_generated is True
    assert cfg.save_buffer == 1 << 30
    assert cfg.model is None and cfg.revision is None and cfg.tokenizer is None


def test_all_keys_parse() -> None:
    cfg = parse_extra_config(
        {
            "disk_path": "~/kv",
            "disk_capacity": "100G",
            "host_capacity": 1 << 30,
            "host_policy": "ttl",
            "host_ttl_s": 3600,
            "disk_policy": "lfu",
            "disk_ttl_s": 86400.0,
            "model": "m",
            "revision": "r",
            "tokenizer": "t",
            "hit_policy": "always",
            "host_bandwidth": "8G",
            "disk_bandwidth": "1.5G",
            "save_generated": False,
            "save_buffer": "256M",
        }
    )
    assert isinstance(cfg, KVTierConnectorConfig)
    assert not cfg.disk_path.startswith("~")
    assert cfg.disk_capacity == 100 << 30 and cfg.host_capacity == 1 << 30
    assert cfg.disk_bandwidth == int(1.5 * (1 << 30))
    assert (cfg.host_policy, cfg.host_ttl_s, cfg.disk_policy) == ("ttl", 3600.0, "lfu")
    assert cfg.hit_policy == "always" and cfg.save_generated is False
    assert cfg.save_buffer == 256 << 20


@pytest.mark.parametrize(
    ("extra", "exc", "names"),
    [
        ({}, kvtier.InvalidArgumentError, "disk_path"),
        ({"disk_path": "/x", "disk_pth": "/y"}, kvtier.InvalidArgumentError, "disk_pth"),
        ({"disk_path": "/x", "host_capacity": "lots"}, kvtier.InvalidArgumentError, "host_capacity"),
        ({"disk_path": "/x", "host_capacity": -5}, kvtier.InvalidArgumentError, "host_capacity"),
        ({"disk_path": "/x", "disk_capacity": True}, kvtier.KvtierTypeError, "disk_capacity"),
        ({"disk_path": "/x", "host_policy": "fifo"}, kvtier.InvalidArgumentError, "host_policy"),
        ({"disk_path": "/x", "disk_policy": "ttl"}, kvtier.InvalidArgumentError, "disk_ttl_s"),
        ({"disk_path": "/x", "host_ttl_s": 0}, kvtier.InvalidArgumentError, "host_ttl_s"),
        ({"disk_path": "/x", "host_ttl_s": "1h"}, kvtier.KvtierTypeError, "host_ttl_s"),
        ({"disk_path": "/x", "hit_policy": "never"}, kvtier.InvalidArgumentError, "hit_policy"),
        ({"disk_path": "/x", "save_generated": "yes"}, kvtier.KvtierTypeError, "save_generated"),
        ({"disk_path": "", "model": "m"}, kvtier.KvtierTypeError, "disk_path"),
        ({"disk_path": "/x", "model": 3}, kvtier.KvtierTypeError, "model"),
        ({"disk_path": "/x", "disk_bandwidth": 0}, kvtier.InvalidArgumentError, "disk_bandwidth"),
        ({"disk_path": "/x", "save_buffer": "0M"}, kvtier.InvalidArgumentError, "save_buffer"),
        ({"disk_path": "/x", "remote_url": "http://h"}, kvtier.InvalidArgumentError, "remote_url"),
        ({"disk_path": "/x", "remote_url": 5}, kvtier.KvtierTypeError, "remote_url"),
        ({"disk_path": "/x", "remote_ttl_s": 60}, kvtier.InvalidArgumentError, "remote_url"),
        ({"disk_path": "/x", "remote_url": "redis://h", "remote_write": "later"}, kvtier.InvalidArgumentError,
         "remote_write"),
        ({"disk_path": "/x", "remote_url": "redis://h", "remote_capacity": "x"}, kvtier.InvalidArgumentError,
         "remote_capacity"),
    ],
)
def test_bad_extra_config_is_refused_naming_the_key(extra: dict[str, object], exc: type[Exception], names: str) -> None:
    with pytest.raises(exc, match=names):
        parse_extra_config(extra)


def test_remote_keys_make_the_stores_remote_config() -> None:
    cfg = parse_extra_config(
        {
            "disk_path": "/x",
            "remote_url": "redis+cluster://10.0.0.5:7000",
            "remote_capacity": "100G",
            "remote_ttl_s": 3600,
            "remote_write": "back",
            "remote_namespace_budget": "10G",
        }
    )
    rc = cfg.remote_config()
    assert rc == kvtier.RemoteConfig(
        url="redis+cluster://10.0.0.5:7000", capacity_bytes=100 << 30, ttl_s=3600.0, write="back",
        namespace_budget_bytes=10 << 30,
    )
    assert parse_extra_config({"disk_path": "/x"}).remote_config() is None
    assert parse_extra_config({"disk_path": "/x", "remote_url": "redis://h:1/0"}).remote_config().write == "through"  # type: ignore[union-attr]


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ValueError, match="did you mean 'disk_path'"):
        parse_extra_config({"disk_pth": "/x"})


def test_parse_size_units() -> None:
    assert parse_size("k", "512M") == 512 << 20
    assert parse_size("k", "2GiB") == 2 << 30
    assert parse_size("k", "1t") == 1 << 40
    assert parse_size("k", 4096) == 4096


# ---------------------------------------------------------------------------------------------------- cost model
HOST, DISK = 1, 2


def _model(host: float = 1e9, disk: float = 1e8) -> HitCostModel:
    return HitCostModel(block_bytes=1 << 20, block_size=32, host_bandwidth=host, disk_bandwidth=disk)


def test_without_a_prefill_estimate_every_hit_is_taken_and_says_so() -> None:
    d = _model().decide(np.full(10, DISK, np.uint8), engine_blocks=2, always=False)
    assert (d.blocks, d.offered, d.reason) == (8, 8, "no_estimate")


def test_a_hit_slower_than_prefill_is_declined() -> None:
    m = _model(disk=1e6)  # 1 MB/s: a 1 MiB block takes ~1 s to load
    m.observe_prefill(3200, 0.1)  # 32,000 tokens/s: a 32-token block prefills in 1 ms
    d = m.decide(np.full(10, DISK, np.uint8), engine_blocks=0, always=False)
    assert d.blocks == 0 and d.offered == 10 and d.reason == "declined"
    assert d.est_load_s > d.est_prefill_s
    forced = m.decide(np.full(10, DISK, np.uint8), engine_blocks=0, always=True)
    assert forced.blocks == 10 and forced.reason == "always"


def test_a_hit_faster_than_prefill_is_taken() -> None:
    m = _model(host=1e10)
    m.observe_prefill(320, 1.0)  # 320 tokens/s: a block takes 0.1 s to prefill, 0.1 ms to load
    d = m.decide(np.full(10, HOST, np.uint8), engine_blocks=0, always=False)
    assert (d.blocks, d.reason) == (10, "pays")
    assert d.est_load_s < d.est_prefill_s


def test_only_the_paying_part_of_a_mixed_hit_is_claimed() -> None:
    # host blocks are cheap, disk blocks cost more than they save: claim exactly the host prefix
    m = _model(host=1e10, disk=1e6)
    m.observe_prefill(3200, 1.0)  # 3,200 tokens/s: 10 ms per block; disk load ~1 s per block
    tiers = np.array([HOST] * 6 + [DISK] * 4, np.uint8)
    d = m.decide(tiers, engine_blocks=0, always=False)
    assert (d.blocks, d.reason) == (6, "pays")


def test_load_cost_counts_the_blocks_the_engine_already_holds() -> None:
    # kvtier loads blocks 0..k-1 whatever the engine holds: with 8 engine blocks on slow disk, 1 extra block
    # does not pay even though its own load would
    m = _model(host=1e10, disk=1e7)
    m.observe_prefill(3200, 1.0)  # 10 ms per block; disk 1 MiB / 10 MB/s = 0.1 s per block
    assert m.decide(np.full(9, DISK, np.uint8), engine_blocks=8, always=False).blocks == 0
    assert m.decide(np.full(9, HOST, np.uint8), engine_blocks=8, always=False).blocks == 1


def test_measurements_move_the_estimates() -> None:
    m = _model(host=1e9, disk=1e8)
    for _ in range(20):
        m.observe_load(DISK, 1 << 30, 1.0)
        m.observe_prefill(1000, 0.5)
    assert abs(m.bandwidth[DISK] - (1 << 30)) / (1 << 30) < 0.01
    assert m.prefill_tokens_per_s is not None and abs(m.prefill_tokens_per_s - 2000) < 20
    m.observe_prefill(10, 1.0)  # a decode step: not a prefill measurement
    assert abs(m.prefill_tokens_per_s - 2000) < 20
