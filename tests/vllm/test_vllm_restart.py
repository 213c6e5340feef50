"""Restart and corruption: a fresh engine process pointed at the same disk folder hits from disk with the same outputs,
and a payload corrupted on disk is never served (the engine recomputes it; the output still equals the baseline).
Also "a hit is taken only when it pays": the writer believes loads crawl (1 byte/s priors) and declines its hits.

Three engines in this module, one after the other: the writer, a fresh reader (a new process tree), and a fresh
engine with ``kv_load_failure_policy="fail"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from vllm_engines import Engine, assert_same_output
from vllm_prompts import PROMPTS, claimable_tokens

def _block_keys(folder: Path) -> set[bytes]:
    """Keys of the payloads in the disk folder (LMDB database ``blocks``, docs/disk.md)."""
    import lmdb

    env = lmdb.open(str(folder), readonly=True, lock=True, max_dbs=4, subdir=True)
    try:
        db = env.open_db(b"blocks", create=False)
        with env.begin(db=db) as txn:
            return {bytes(k) for k, _ in txn.cursor()}
    finally:
        env.close()


def _corrupt(folder: Path, key: bytes) -> None:
    """Flips bytes in the middle of one stored payload, in place (its checksum in the index stays the old one)."""
    import lmdb

    env = lmdb.open(str(folder), max_dbs=4, subdir=True)
    try:
        db = env.open_db(b"blocks", create=False)
        with env.begin(db=db, write=True) as txn:
            value = bytearray(txn.get(key))
            mid = len(value) // 2
            for i in range(mid, mid + 64):
                value[i] ^= 0x5A
            txn.put(key, bytes(value))
    finally:
        env.close()


@pytest.fixture(scope="module")
def restarted(
    tiny_model: Path, vllm_workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    disk = tmp_path_factory.mktemp("kvtier-disk-restart")
    cfg = {"disk_path": str(disk)}
    result: dict[str, Any] = {}
    slow = {**cfg, "host_bandwidth": 1, "disk_bandwidth": 1}
    with Engine(tiny_model, vllm_workdir, connector=slow, name="writer") as writer:
        result["writer_intact"] = writer.generate([PROMPTS["restart_intact"]])[0]
        keys_intact = _block_keys(disk)  # restart_intact's blocks alone
        m0 = writer.metrics()
        result["declined"] = [writer.generate([PROMPTS["declined"]])[0] for _ in range(2)]
        result["metrics_declined"] = (m0, writer.metrics())
        keys_before = _block_keys(disk)
        result["writer_corrupt"] = writer.generate([PROMPTS["restart_corrupt"]])[0]
        keys_all = _block_keys(disk)
    new_keys = keys_all - keys_before  # restart_corrupt's blocks alone
    result["new_keys"] = len(new_keys)
    # Any one of the prompt's blocks: the reader claims the whole chain, so its load reaches the bad block wherever
    # it is (the set does not tell the chain order).
    result["corrupted"] = sorted(new_keys)[0]
    _corrupt(disk, result["corrupted"])
    with Engine(tiny_model, vllm_workdir, connector=cfg, name="reader", kv_events=True) as reader:
        result["reader_intact"] = reader.generate([PROMPTS["restart_intact"]])[0]
        result["metrics_intact"] = reader.metrics()
        result["reader_corrupt"] = reader.generate([PROMPTS["restart_corrupt"]])[0]
        result["metrics_corrupt"] = reader.metrics()
        result["events_corrupt"] = reader.events()
        result["reader_corrupt_again"] = reader.generate([PROMPTS["restart_corrupt"]])[0]
    # kv_load_failure_policy="fail": a corrupt block fails the request loudly instead of recomputing it.
    _corrupt(disk, sorted(keys_intact)[0])
    with Engine(tiny_model, vllm_workdir, connector=cfg, name="failer", failure_policy="fail") as failer:
        try:
            result["fail_policy"] = failer.generate([PROMPTS["restart_intact"]])[0]
        except RuntimeError as e:  # the engine refused the request as a whole
            result["fail_policy"] = {"raised": str(e)[-2000:]}
        result["metrics_fail_policy"] = failer.metrics()
    return result


def test_fresh_process_hits_from_disk_with_the_same_outputs(restarted: dict[str, Any], baseline: dict[str, Any]) -> None:
    prompt = PROMPTS["restart_intact"]
    assert restarted["writer_intact"]["num_cached_tokens"] == 0
    assert_same_output(restarted["writer_intact"], baseline["restart_intact"], "writer")
    got = restarted["reader_intact"]
    assert got["num_cached_tokens"] == claimable_tokens(len(prompt))
    assert_same_output(got, baseline["restart_intact"], "fresh process, disk hit")
    m = restarted["metrics_intact"]
    assert m.get("vllm:kvtier_loaded_blocks_disk", 0) == claimable_tokens(len(prompt)) // 32
    assert m.get("vllm:kvtier_loaded_blocks_host", 0) == 0, "a fresh process has nothing in its host tier"


def test_a_hit_that_does_not_pay_is_declined_and_counted(restarted: dict[str, Any], baseline: dict[str, Any]) -> None:
    first, second = restarted["declined"]
    assert first["num_cached_tokens"] == 0 and second["num_cached_tokens"] == 0, "a hit estimated slower was taken"
    for out in (first, second):
        assert_same_output(out, baseline["declined"], "declined hit")
    before, after = restarted["metrics_declined"]

    def delta(key: str) -> float:
        return after.get(f"vllm:kvtier_{key}", 0.0) - before.get(f"vllm:kvtier_{key}", 0.0)

    full = claimable_tokens(len(PROMPTS["declined"]))
    assert delta("decision_declined") == 1  # the second run: kvtier held the prompt, prefill was measured faster
    assert delta("offered_tokens") == full and delta("declined_tokens") == full
    assert delta("claimed_tokens") == 0 and delta("loaded_blocks_host") + delta("loaded_blocks_disk") == 0


def test_corrupted_payload_is_never_served(restarted: dict[str, Any], baseline: dict[str, Any]) -> None:
    prompt = PROMPTS["restart_corrupt"]
    blocks = claimable_tokens(len(prompt)) // 32
    assert restarted["new_keys"] == blocks, "the writer stored one payload per full block of the prompt"
    before, after = restarted["metrics_intact"], restarted["metrics_corrupt"]
    failed = after.get("vllm:kvtier_load_failed_blocks", 0) - before.get("vllm:kvtier_load_failed_blocks", 0)
    assert failed >= 1, "the corrupted block was not detected"
    removed = [e for e in restarted["events_corrupt"] if e["type"] == "BlockRemoved"]
    assert sum(e["blocks"] for e in removed) == failed, restarted["events_corrupt"]
    # Whatever was loaded before the bad block, and whatever was recomputed after it, the output is the baseline's.
    assert_same_output(restarted["reader_corrupt"], baseline["restart_corrupt"], "after corruption")
    # The recomputed blocks were saved again: the next run hits in full.
    again = restarted["reader_corrupt_again"]
    assert again["num_cached_tokens"] == claimable_tokens(len(prompt))
    assert_same_output(again, baseline["restart_corrupt"], "after re-save")


def test_fail_policy_fails_the_request_loudly(restarted: dict[str, Any]) -> None:
    out = restarted["fail_policy"]
    assert restarted["metrics_fail_policy"].get("vllm:kvtier_load_failed_blocks", 0) >= 1
    assert "raised" in out or out["finish_reason"] == "error", f"a failed load under policy 'fail' gave {out}"
