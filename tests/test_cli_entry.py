"""The `kvtier` command as a newcomer meets it: units on every option, a missing extra, a closed pipe,
`cost --list`, and ranking ties."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvtier.cli import main
from kvtier.cost.rank import CostLine, rank

pytest.importorskip("tqdm")


def _log(tmp_path: Path) -> str:
    """Two agent sessions of five steps over a shared 64-token prompt (kvtier JSONL with token ids)."""
    recs = []
    for step in range(5):
        for s in range(2):
            history = [2000 + 100 * s + i for i in range(32 * (step + 1))]
            recs.append({"timestamp": 30 * step + s, "session": f"a{s}", "tokens": list(range(64)) + history})
    path = tmp_path / "agents.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def _analyze(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        rc = main(["analyze", "--no-progress", "--no-paper", *args])
    except SystemExit as e:
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_analyze_capacity_in_blocks_tokens_and_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path)
    # 20 blocks written four ways; bytes at 32 KiB per token x 16 tokens = 512 KiB per block.
    rc, out, err = _analyze(
        capsys, log, "--capacity", "20,20 blocks,320 tokens,10MiB,inf", "--kv-bytes-per-token", "32KiB", "--json"
    )
    assert rc == 0, err
    results = json.loads(out)["results"]
    assert [r["capacity_blocks"] for r in results] == [20, None]  # the four spellings are one configuration
    # Per block size: 640 tokens are 40 blocks of 16 and 10 blocks of 64.
    rc, out, err = _analyze(capsys, log, "--capacity", "640 tokens", "--block-size", "16,64 tokens", "--json")
    assert rc == 0, err
    assert [(r["block_size"], r["capacity_blocks"]) for r in json.loads(out)["results"]] == [(16, 40), (64, 10)]


def test_analyze_counts_read_as_english(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _analyze(capsys, _log(tmp_path))
    assert rc == 0 and re.search(r"read in [\d.]+ s, 1 replay in [\d.]+ s$", out.rstrip()), out[-200:]
    rc, out, _ = _analyze(capsys, _log(tmp_path), "--capacity", "8,inf")
    assert rc == 0 and re.search(r", 2 replays in ", out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--capacity", "32G"], "--capacity 32G is bytes (32 GiB; K/M/G alone mean KiB/MiB/GiB): give --model or "
         "--kv-bytes-per-token"),
        (["--capacity", "1k", "--kv-bytes-per-token", "32768"], "--capacity 1k is less than one block (16 tokens, "
         "512 KiB)"),
        (["--capacity", "1.5 blocks"], "argument --capacity: '1.5 blocks' is not a whole number of blocks"),
        (["--block-size", "16MiB"], "argument --block-size: '16MiB' is bytes; expected tokens"),
        (["--kv-bytes-per-token", "2 tokens"], "argument --kv-bytes-per-token: '2 tokens' is tokens; expected bytes"),
        (["--break-examples", "-1"], "argument --break-examples: '-1' is not a whole number >= 0"),
    ],
)
def test_analyze_unit_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc, _, err = _analyze(capsys, _log(tmp_path), *args)
    assert rc == 2 and message in err, err
    assert "Traceback" not in err


def test_every_size_option_says_its_unit(capsys: pytest.CaptureFixture[str]) -> None:
    helps = {}
    for cmd in ("demo", "analyze", "cost"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        helps[cmd] = " ".join(capsys.readouterr().out.split())
    assert "host tier, bytes: 512MiB, 2G (binary)" in helps["demo"]
    assert "shared system prompt, tokens" in helps["demo"]
    assert "each in blocks (a plain number, or 10k blocks), tokens (1M tokens) or bytes of KV" in helps["analyze"]
    assert "KV bytes per token (all layers) for GB-hours and byte capacities: 131072 or 128KiB" in helps["analyze"]
    assert "tokens per block for token logs: 16 or 16 tokens" in helps["cost"]


def test_report_without_the_analytics_extra_exits_2_before_the_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    analyze_mod = importlib.import_module("kvtier.analytics.analyze")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails, as without the extra

    def no_replay(*_: Any, **__: Any) -> None:
        raise AssertionError("the replay ran")

    monkeypatch.setattr(analyze_mod, "analyze", no_replay)
    out_dir = tmp_path / "report"
    rc, out, err = _analyze(capsys, _log(tmp_path), "--report", str(out_dir))
    assert rc == 2 and out == ""
    assert err == "kvtier: error: --report needs matplotlib (the analytics extra): pip install 'kvtier[analytics]'\n"
    assert not out_dir.exists()


def test_failed_analyze_leaves_no_empty_report_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("jinja2")
    out_dir = tmp_path / "report"
    rc, _, err = _analyze(capsys, str(tmp_path / "missing.jsonl"), "--report", str(out_dir))
    assert rc == 2 and "No such file" in err
    assert not out_dir.exists()


@pytest.mark.parametrize("cmd", [["cost", "--list"], ["demo", "--sessions", "1", "--steps", "2"]])
def test_closed_pipe_stops_quietly(tmp_path: Path, cmd: list[str]) -> None:
    """`kvtier ... | head`: the reader goes away first; no BrokenPipeError traceback, exit 0."""
    args = [*cmd, "--disk", str(tmp_path / "d")] if cmd[0] == "demo" else cmd
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvtier", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command prints anything
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


def test_cost_list_shows_sources_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--list"]) == 0
    text = capsys.readouterr().out
    assert main(["cost", "--list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"models", "hardware", "providers", "files"} <= set(doc)
    llama = next(m for m in doc["models"] if m["name"] == "llama-3.2-1b")
    assert llama["kv_bytes_per_token"] == 32_768 and llama["source"] and llama["as_of"]
    # Every source and date of the catalogue is printed, prices' too.
    for entry in (*doc["models"], *doc["hardware"], *doc["providers"]):
        assert f"{entry['source']} ({entry['as_of']})" in text, entry["name"]
    for p in doc["providers"]:
        for price in p["prices"]:
            assert f"source: {price['source']} ({price['as_of']})" in text


def _line(model: str, naive: float, aware: float) -> CostLine:
    return CostLine(kind="hosted", provider="p", model=model, hardware=None, naive_usd=naive, cache_aware_usd=aware,
                    tasks=1)


def test_ranking_ties_share_a_rank() -> None:
    rk = rank([_line("a", 1.0, 0.5), _line("b", 2.0, 1.0), _line("c", 2.0, 1.0), _line("d", 3.0, 2.0)])
    assert rk.sticker_rank == {"p:a": 1, "p:b": 2, "p:c": 2, "p:d": 4}
    assert rk.cache_aware_rank == {"p:a": 1, "p:b": 2, "p:c": 2, "p:d": 4}
    assert rk.disagreements == ()
