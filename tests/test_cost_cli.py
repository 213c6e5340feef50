"""`kvtier cost`: JSON schema on a small Mooncake trace, errors with exit code 2, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvtier.cli import main

REQUIRED = {"provider", "model", "naive_usd", "cache_aware_usd"}


@pytest.fixture()
def trace(tmp_path: Path) -> str:
    """Two Mooncake-format requests one minute apart; the second extends the first's 3 full blocks."""
    rows = [
        {"timestamp": 0, "input_length": 2000, "output_length": 10, "hash_ids": [0, 1, 2, 3]},
        {"timestamp": 60000, "input_length": 2500, "output_length": 10, "hash_ids": [0, 1, 2, 4, 5]},
    ]
    p = tmp_path / "mini.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(p)


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:  # type: ignore[type-arg]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_json_schema_and_figures(trace: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, ["cost", trace, "--provider", "anthropic-5m,anthropic-1h,gemini-explicit", "--model", "llama-3.1-8b", "--json"])
    assert doc["trace"]["requests"] == 2 and doc["trace"]["format"] == "mooncake" and doc["trace"]["task"] == "request"
    assert doc["trace"]["block_tokens"] == 512
    results = doc["results"]
    assert [(r["provider"], r["model"]) for r in results] == [
        ("anthropic-5m", "claude-sonnet-4.5"),
        ("anthropic-1h", "claude-sonnet-4.5"),
        ("gemini-explicit", "gemini-2.5-pro"),
        ("self-hosted", "llama-3.1-8b"),
    ]
    for r in results:
        assert REQUIRED <= set(r)
        assert isinstance(r["naive_usd"], float) and isinstance(r["cache_aware_usd"], float)
        assert r["sessions"] is None  # Mooncake names no sessions
    a5 = results[0]
    # r0 writes 2,000 tokens at 1.25 x $3; r1 reads 3 x 512 = 1,536 at $0.30 and writes 964 at 1.25 x $3;
    # 20 output tokens at $15
    expected = (2000 * 3.75 + 1536 * 0.30 + 964 * 3.75 + 20 * 15.0) / 1e6
    assert a5["cache_aware_usd"] == pytest.approx(expected)
    assert a5["naive_usd"] == pytest.approx((4500 * 3.0 + 20 * 15.0) / 1e6)
    assert a5["breakdown"]["cached_tokens"] == 1536
    assert a5["rules"]["engine"] == "core" and results[2]["rules"]["engine"] == "numpy"
    # gemini-2.5-pro: 2,000 and 2,500 tokens are below its 4,096-token minimum: no cache at all
    assert results[2]["cache_aware_usd"] == pytest.approx(results[2]["naive_usd"])
    own = results[3]
    assert own["hardware"] == "h100-sxm"
    assert {"kv_residency_usd", "compute_usd", "footprint_usd", "gpus", "kv_bytes_per_token"} <= set(own["breakdown"])
    assert own["breakdown"]["kv_bytes_per_token"] == 131_072
    assert own["ledger"]["attribution"] == "first-writer"
    ranking = doc["ranking"]
    assert sorted(ranking["cache_aware"]) == sorted(ranking["sticker"])
    assert len(ranking["cache_aware"]) == 4


def test_sessions_in_kvtier_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("kvtier.analytics.logs")  # kvtier JSONL is read by kvtier analyze's parsers
    rows = [
        {"timestamp": 0, "session": "s1", "tenant": "acme", "hash_ids": [1, 2, 3], "block_size": 512, "output_length": 5},
        {"timestamp": 30, "session": "s1", "tenant": "acme", "hash_ids": [1, 2, 3, 4], "block_size": 512, "output_length": 5},
        {"timestamp": 40, "session": "s2", "tenant": "acme", "hash_ids": [1, 9], "block_size": 512, "output_length": 5},
    ]
    p = tmp_path / "agents.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    doc = _json(capsys, ["cost", str(p), "--provider", "deepseek", "--model", "llama-3.1-8b", "--json"])
    assert doc["trace"]["task"] == "session" and doc["trace"]["tasks"] == 2
    for r in doc["results"]:
        sessions = {s["session"]: s for s in r["sessions"]}
        assert set(sessions) == {"s1", "s2"} and sessions["s1"]["tenant"] == "acme"
        assert sum(s["cache_aware_usd"] for s in r["sessions"]) == pytest.approx(r["cache_aware_usd"])
    led = doc["results"][1]["ledger"]
    gbh = {s["session"]: s["gb_hours"] for s in led["by_session_gb_hours"]}
    assert gbh["s1"] > gbh["s2"] > 0  # s2 reuses s1's first block: it pays only for its own


def test_text_output(trace: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", trace, "--provider", "anthropic-5m,openai", "--model", "deepseek-v3", "--hardware", "h200"]) == 0
    out = capsys.readouterr().out
    assert "anthropic-5m" in out and "deepseek-v3" in out and "h200" in out
    assert "ranking by cache-aware cost per task" in out


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--list"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b" in out and "anthropic-1h" in out and "h100-sxm" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--provider", "anthropic"], "unknown provider 'anthropic': known providers are anthropic-1h, anthropic-5m, deepseek"),
        (["--model", "gpt-9"], "unknown model 'gpt-9': known models are"),
        (["--provider", "openai:claude-sonnet-4.5"], "unknown model 'claude-sonnet-4.5': known models at provider 'openai' are gpt-4.1, gpt-4o, gpt-5, gpt-5-mini"),
        (["--model", "llama-3.1-8b", "--hardware", "tpu-v9"], "unknown hardware 'tpu-v9': known hardware entries are a100-80gb"),
        (["--model", "gpt-5@h100-sxm"], "only catalogued models run self-hosted"),
        (["--provider", "openai", "--hardware", "h100-sxm"], "--hardware needs a --model"),
    ],
)
def test_unknown_names_exit_2(trace: str, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    assert main(["cost", trace, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvtier: error: ") and message in err


def test_bad_input_exit_2(tmp_path: Path, trace: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.x]\nlayers = "many"\nsource = "s"\nas_of = "2026-01-01"\n', encoding="utf-8")
    assert main(["cost", trace, "--catalog", str(bad)]) == 2
    assert "field 'layers': expected an integer >= 1" in capsys.readouterr().err
    assert main(["cost"]) == 2
    assert "needs a TRACE" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": "x"}\n', encoding="utf-8")
    assert main(["cost", str(broken), "--format", "mooncake"]) == 2
    assert "line 1" in capsys.readouterr().err


def test_catalog_override_changes_prices(tmp_path: Path, trace: str, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text(
        '[providers."anthropic-5m".prices."claude-sonnet-4.5"]\ninput_usd_per_mtok = 6.0\ncached_input_usd_per_mtok = 0.6\n'
        'output_usd_per_mtok = 30.0\nsource = "test"\nas_of = "2026-01-01"\n',
        encoding="utf-8",
    )
    base = _json(capsys, ["cost", trace, "--provider", "anthropic-5m", "--json"])["results"][0]
    doubled = _json(capsys, ["cost", trace, "--provider", "anthropic-5m", "--json", "--catalog", str(mine)])["results"][0]
    assert doubled["cache_aware_usd"] == pytest.approx(2 * base["cache_aware_usd"])


def test_import_kvtier_does_not_import_cost() -> None:
    code = (
        "import sys, kvtier\n"
        "assert 'kvtier.cost' not in sys.modules\n"
        "import kvtier.cost\n"
        "assert 'kvtier.cost.catalog' not in sys.modules, 'importing kvtier.cost must do no work'\n"
        "assert kvtier.cost.load_catalog().model('llama-3.1-8b').kv_bytes_per_token == 131072\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_token_logs_are_cut_into_chained_blocks(tmp_path: Path) -> None:
    pytest.importorskip("kvtier.analytics.logs")
    from kvtier.cost.cachesim import CacheRule, replay_cache
    from kvtier.cost.trace import read_trace

    rows = [
        {"timestamp": 0, "session": "a", "tokens": list(range(1, 11)), "output_length": 3},
        {"timestamp": 10, "session": "a", "tokens": list(range(1, 14)), "output_length": 3},
        {"timestamp": 20, "session": "b", "tokens": [1, 2, 3, 4, 9, 9, 9, 9], "output_length": 3},
    ]
    p = tmp_path / "tokens.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tr = read_trace(str(p), block_size=4)
    assert tr.source_format == "kvtier" and tr.input_tokens.tolist() == [10, 13, 8]
    assert tr.blocks_per_request.tolist() == [2, 3, 2]  # full blocks only
    # request 1 shares 2 blocks with request 0; request 2 shares [1 2 3 4] only
    assert replay_cache(tr, CacheRule(None)).hit_blocks.tolist() == [0, 2, 1]
