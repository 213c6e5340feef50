"""`kvtier analyze` outputs: the terminal table, the --json schema, --csv, and --report (PNGs + one HTML page,
rendered in headless Chromium when Debian's `chromium` is installed)."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvtier.analytics.analyze import SCHEMA, AnalyzeOptions, analyze
from kvtier.analytics.output import CSV_COLUMNS, render_text, write_csv, write_json
from kvtier.cli import main

pytest.importorskip("tqdm")

CHROMIUM = "/usr/bin/chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def token_log(tmp_path: Path) -> str:
    """Three agent sessions of six steps on a shared system prompt; one session stamps the time into it."""
    system = list(range(1000, 1064))
    recs = []
    for step in range(6):
        for s in range(3):
            history = [2000 + 100 * s + i for i in range(16 * (step + 1))]
            head = system if s != 2 else [step] + system  # session 2: a changing token before everything
            recs.append(
                {"timestamp": 60 * step + s, "session": f"agent-{s}", "tokens": head + history, "output_length": 20}
            )
    return write(tmp_path / "agents.jsonl", recs)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["analyze", "--no-progress", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_terminal_table(capsys: pytest.CaptureFixture[str], token_log: str) -> None:
    rc, out, err = _run(
        capsys,
        token_log,
        "--capacity",
        "8,inf",
        "--policy",
        "lru,lfu",
        "--block-size",
        "8,16",
        "--model",
        "Llama-3.1-8B",
    )
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "kvtier analyze: agents.jsonl"
    assert "kvtier log, 18 requests, 3 sessions" in lines[1]
    header = next(i for i, line in enumerate(lines) if line.startswith("policy"))
    assert lines[header].split()[:4] == ["policy", "ttl", "block", "capacity"] and "GB-hours" in lines[header]
    rows = lines[header + 2 : header + 2 + 8]
    assert [r.split()[:3] for r in rows] == [[p, "-", bs] for bs in ("8", "16") for p in ("lru", "lru", "lfu", "lfu")]
    assert all(re.search(r"\d+\.\d\d%\s+\d+\.\d\d%", r) for r in rows)
    assert "Prefix breaks (blocks of 8 tokens): 5 of 15 steps in 3 sessions" in out
    assert "other edit" in out


def test_json_schema(capsys: pytest.CaptureFixture[str], token_log: str, tmp_path: Path) -> None:
    rc, out, _ = _run(
        capsys,
        token_log,
        "--capacity",
        "4,inf",
        "--policy",
        "lru,ttl",
        "--ttl",
        "1m,1h",
        "--kv-bytes-per-token",
        "1024",
        "--json",
    )
    assert rc == 0
    doc = json.loads(out)  # --json without a path: the document alone on stdout
    assert doc["schema"] == SCHEMA and isinstance(doc["kvtier_version"], str)
    inp = doc["input"]
    assert inp["format"] == "kvtier" and inp["content"] == "tokens" and inp["block_tokens"] is None
    assert (inp["requests"], inp["sessions"], inp["tenants"]) == (18, 3, 0)
    assert isinstance(inp["sha256"], str) and len(inp["sha256"]) == 64 and inp["reordered_by_time"] is False
    assert doc["model"] == {"name": None, "kv_bytes_per_token": 1024}
    types: dict[str, type | tuple[type, ...]] = {
        "policy": str,
        "capacity_blocks": (int, type(None)),
        "capacity_tokens": (int, type(None)),
        "ttl_s": (float, type(None)),
        "block_size": int,
        "requests": int,
        "total_blocks": int,
        "hit_blocks": int,
        "hit_ratio": float,
        "input_tokens": int,
        "hit_tokens": int,
        "token_hit_ratio": float,
        "evicted_blocks": int,
        "expired_blocks": int,
        "resident_blocks_end": int,
        "gb_hours": float,
        "replay_s": float,
    }
    assert len(doc["results"]) == 2 * 3
    for r in doc["results"]:
        assert set(r) == set(types) == set(CSV_COLUMNS)
        for k, t in types.items():
            assert isinstance(r[k], t), (k, r[k])
        assert r["hit_ratio"] == pytest.approx(r["hit_blocks"] / r["total_blocks"])
        assert r["token_hit_ratio"] == pytest.approx(r["hit_tokens"] / r["input_tokens"])
        assert (r["ttl_s"] is None) == (r["policy"] != "ttl")
    assert [r["capacity_blocks"] for r in doc["results"][:2]] == [4, None]
    assert {r["ttl_s"] for r in doc["results"]} == {None, 60.0, 3600.0}
    b = doc["breaks"]
    assert set(b) == {
        "block_size",
        "sessions",
        "steps_compared",
        "breaks",
        "blocks_lost",
        "by_cause",
        "blocks_lost_by_cause",
        "examples",
    }
    assert b["breaks"] == 5 and b["by_cause"]["other"] == 5
    e = b["examples"][0]
    assert e["session"] == "agent-2" and e["position"] == 0 and isinstance(e["prev_tokens"], list)
    assert doc["paper"] is None
    assert set(doc["timing"]) == {"parse_s", "sweep_s"}
    # Written to a file, alongside the table on stdout.
    path = tmp_path / "out.json"
    rc, out, _ = _run(capsys, token_log, "--json", str(path))
    assert (
        rc == 0 and out.startswith("kvtier analyze:") and json.loads(path.read_text())["results"][0]["gb_hours"] is None
    )


def test_csv(capsys: pytest.CaptureFixture[str], token_log: str, tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    rc, _, _ = _run(capsys, token_log, "--capacity", "4,16,inf", "--csv", str(path))
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert list(rows[0]) == list(CSV_COLUMNS) and len(rows) == 3
    assert [r["capacity_blocks"] for r in rows] == ["4", "16", ""]  # null -> empty cell
    assert rows[2]["gb_hours"] == "" and float(rows[2]["hit_ratio"]) > float(rows[0]["hit_ratio"])
    rc, out, _ = _run(capsys, token_log, "--csv")
    assert rc == 0 and out.splitlines()[0] == ",".join(CSV_COLUMNS) and len(out.splitlines()) == 2


def test_api_renders_the_same(token_log: str) -> None:
    a = analyze(AnalyzeOptions(token_log, capacities=[None, 8]))
    assert render_text(a).startswith("kvtier analyze: agents.jsonl")
    buf = io.StringIO()
    write_json(a, buf)
    assert json.loads(buf.getvalue())["results"][1]["capacity_blocks"] == 8
    buf = io.StringIO()
    write_csv(a.results, buf)
    assert buf.getvalue().count("\n") == 3


def _check_html(html: str) -> None:
    for table in ("input", "results", "breaks", "break-examples"):
        assert f'<table id="{table}">' in html
    # Self-contained: no network resources of any kind.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == 3
    assert all(base64.b64decode(u).startswith(PNG_MAGIC) for u in uris)


def test_report_files(capsys: pytest.CaptureFixture[str], token_log: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "report"
    rc, _, err = _run(capsys, token_log, "--capacity", "8,32,inf", "--policy", "lru,lfu", "--report", str(out_dir))
    assert rc == 0, err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["hit_ratio_vs_capacity.png", "prefix_breaks.png", "report.html", "residency_over_time.png"]
    for n in names:
        if n.endswith(".png"):
            assert (out_dir / n).read_bytes().startswith(PNG_MAGIC)
    _check_html((out_dir / "report.html").read_text())
    assert f"report: {out_dir / 'report.html'}" in err


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (Debian package 'chromium'); apt-get install chromium"
)
def test_report_renders_in_headless_chromium(
    capsys: pytest.CaptureFixture[str], token_log: str, tmp_path: Path
) -> None:
    out_dir = tmp_path / "report"
    rc, _, _ = _run(capsys, token_log, "--capacity", "8,inf", "--report", str(out_dir))
    assert rc == 0
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    # The DOM after rendering: a script-free page, so this is the parsed page; images must have decoded
    # (Chromium drops nothing, but an <img> whose data URI is broken still appears: check sizes via a screenshot).
    page = (out_dir / "report.html").as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    _check_html(dom.stdout)
    assert re.search(r"<td[^>]*>lru</td>", dom.stdout)
    shot = tmp_path / "shot.png"
    flags[-1] = f"--user-data-dir={tmp_path / 'chromium-profile-2'}"
    p = subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,3000", f"--screenshot={shot}", page],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0 and shot.read_bytes().startswith(PNG_MAGIC), p.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # tables and plots drawn, not a blank page


def test_chromium_is_where_the_test_expects_it_or_skips() -> None:
    # Documents the skip reason above; fails only if chromium exists but is not executable.
    if Path(CHROMIUM).exists():
        assert shutil.which(CHROMIUM) is not None


def test_report_with_paper_comparison(tmp_path: Path) -> None:
    """The paper section and plot, on the committed slice standing in for the full trace (tests/data)."""
    import dataclasses

    from kvtier.analytics.paper import PAPER_TRACES, compare
    from kvtier.analytics.report import write_report

    slice_path = Path(__file__).parent / "data" / "mooncake_conversation_head500.jsonl"
    a = analyze(AnalyzeOptions(str(slice_path), capacities=[1000, None], timeline_points=10))
    paper = next(p for p in PAPER_TRACES.values() if p.name == "Conversation")
    rows, runs = compare(a.log, paper)
    a = dataclasses.replace(a, paper=paper, paper_rows=rows, paper_runs=runs)
    files = [Path(f).name for f in write_report(a, str(tmp_path / "r"))]
    assert files == ["hit_ratio_vs_capacity.png", "residency_over_time.png", "paper_figure9.png", "report.html"]
    html = (tmp_path / "r" / "report.html").read_text()
    assert '<table id="paper">' in html and "Figure 9" in html and "Qin et al." in html
    assert "Compared with Mooncake FAST'25 (Conversation trace" in render_text(a)
    assert json.loads(json.dumps(a.to_dict()))["paper"]["rows"][3]["quantity"] == "cache ratio (unlimited capacity)"
