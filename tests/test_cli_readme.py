"""README.md's examples, run as written: the Python API block, the text-log `kvtier analyze` commands, and the
configure step of the C++ sanitizer build."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block_with(marker: str, lang: str = "") -> str:
    """The README code block (```lang) that contains ``marker``."""
    blocks: list[tuple[str, list[str]]] = []
    inside = False
    for line in README.splitlines():
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append((line[3:].strip(), []))
        elif inside:
            blocks[-1][1].append(line)
    for fence, lines in blocks:
        text = "\n".join(lines) + "\n"
        if marker in text and (not lang or fence == lang):
            return text
    raise AssertionError(f"no README code block with {marker!r}")


def _commands(block: str) -> list[str]:
    """Shell lines of a block: continuations joined, trailing comments dropped."""
    text = block.replace("\\\n", " ")
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in text.splitlines() if line.strip()]


def test_python_api_example_prints_what_its_comments_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _block_with("store.pinned(prompt)", "python")
    assert "# 4096 [1 1 ... 1]: all Tier.HOST" in code
    monkeypatch.chdir(tmp_path)  # the example's disk folder "kv-cache" goes here
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    first = out.getvalue().split("]")[0]
    assert first.startswith("4096 [1 1")
    assert set(first.removeprefix("4096 [").split()) == {"1"}  # every block on the host tier


def test_text_log_analyze_example_runs_verbatim(tmp_path: Path) -> None:
    for mod in ("tokenizers", "matplotlib", "jinja2"):
        pytest.importorskip(mod)
    block = _block_with("make_agents_log.py")
    commands = [c for c in _commands(block) if "make_agents_log" in c or "examples/agents.jsonl" in c]
    assert len(commands) == 2
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "make_agents_log.py", tmp_path / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in commands:
        cmd = re.sub(r"^python ", f"{sys.executable} ", cmd)
        proc = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["input"]["requests"] == 64
    # 256 MiB of Llama-3.1-8B KV (128 KiB per token) is 128 blocks of 16 tokens and 32 of 64.
    caps = {(r["block_size"], r["capacity_blocks"]) for r in doc["results"]}
    assert caps == {(16, 128), (16, 512), (16, None), (64, 32), (64, 128), (64, None)}
    # The three sessions that break their prefix: every step of two, one step of the third.
    causes = doc["breaks"]["by_cause"]
    assert (causes["timestamp"], causes["random_id"], causes["tools_changed"] + causes["tools_reordered"]) == (7, 7, 1)
    assert (tmp_path / "out" / "report.html").is_file()


def test_sanitizer_build_configures_as_written(tmp_path: Path) -> None:
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("cmake and ninja are not installed")
    pytest.importorskip("pybind11")
    block = _block_with("copy_engine_test")
    configure = next(c for c in _commands(block) if c.startswith("cmake -S"))
    configure = configure.replace("build/tsan", str(tmp_path / "tsan")).replace("python -m", f"{sys.executable} -m")
    proc = subprocess.run(configure, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "tsan" / "build.ninja").is_file()
    assert "copy_engine_test" in (tmp_path / "tsan" / "build.ninja").read_text()
