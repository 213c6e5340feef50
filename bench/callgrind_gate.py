"""Instruction-count gate: kvtier's core operations counted by valgrind's callgrind against a committed baseline.

Wall-clock figures on a shared 2-core VM move by tens of percent between runs; the number of instructions an
operation executes repeats to about 0.01%. ``callgrind_probe.py`` runs each operation once under callgrind and
dumps its count (instrumentation is switched on around that one call by valgrind's client requests, from a
small C helper compiled here against ``valgrind/callgrind.h``). ``test_callgrind.py`` compares the counts with
``callgrind_baseline.json`` and fails when one grew by more than ``TOLERANCE``.

Update the baseline (after a change that is meant to alter the counts, or on a new toolchain)::

    python bench/callgrind_gate.py --update

``python bench/callgrind_gate.py`` alone prints the counts against the baseline without writing anything.
Counts depend on the compiler, the Python and numpy versions and the pybind11 the core was built with; the
baseline records them, and a failure names any that differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
PROBE = BENCH / "callgrind_probe.py"
BASELINE = BENCH / "callgrind_baseline.json"
UPDATE_COMMAND = "python bench/callgrind_gate.py --update"
TOLERANCE = 0.01  # a count may grow by 1% before the gate fails (repeat runs agree to about 0.01%)

_HELPER_C = r"""
#include <valgrind/callgrind.h>
/* Instrumentation and collection on for exactly the call between begin() and end(name). */
void kvtier_cg_begin(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; CALLGRIND_TOGGLE_COLLECT; }
void kvtier_cg_end(const char *name) {
  CALLGRIND_TOGGLE_COLLECT;
  CALLGRIND_DUMP_STATS_AT(name);
  CALLGRIND_STOP_INSTRUMENTATION;
}
"""


class GateSetupError(RuntimeError):
    """valgrind is there but the gate cannot run (no C compiler or no callgrind.h): says what to install."""


def valgrind() -> str | None:
    return shutil.which("valgrind")


def _include_dir(valgrind_path: str) -> Path:
    candidates = [Path(valgrind_path).resolve().parents[1] / "include", Path("/usr/include"), Path("/usr/local/include")]
    for inc in candidates:
        if (inc / "valgrind" / "callgrind.h").is_file():
            return inc
    raise GateSetupError(
        "valgrind/callgrind.h not found (looked in " + ", ".join(map(str, candidates)) + "): install valgrind's "
        "headers (Debian and Ubuntu ship them in the valgrind package; Fedora: valgrind-devel)"
    )


def _build_helper(valgrind_path: str, workdir: Path) -> Path:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    compiler = cc.split()[0]
    if shutil.which(compiler) is None:
        raise GateSetupError(f"no C compiler ({compiler!r}) to build the callgrind client-request helper")
    src = workdir / "cg_helper.c"
    out = workdir / "cg_helper.so"
    src.write_text(_HELPER_C)
    cmd = [*cc.split(), "-O2", "-shared", "-fPIC", f"-I{_include_dir(valgrind_path)}", str(src), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GateSetupError(f"building the callgrind helper failed: {' '.join(cmd)}\n{proc.stderr}")
    return out


def _parse_dumps(workdir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in sorted(workdir.glob("callgrind.out*")):
        text = f.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: Client Request: (\S+)", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if trigger and total:
            counts[trigger.group(1)] = int(total.group(1))
    return counts


def environment() -> dict[str, str]:
    """What the counts depend on besides kvtier's code."""
    import numpy

    try:  # the build's own copy is not installed where the build ran isolated (pip's default)
        import pybind11

        pybind11_version = pybind11.__version__
    except ImportError:
        pybind11_version = "not installed"

    def first_line(tool: str | None) -> str:
        if tool is None:
            return ""
        out = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].strip() if out else ""

    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pybind11": pybind11_version,
        "c++ compiler": first_line(shutil.which(os.environ.get("CXX", "c++"))),
        "machine": platform.machine(),
        "valgrind": first_line(valgrind()),
    }


def measure(timeout_s: float = 300.0) -> dict[str, int]:
    """Runs the probe under callgrind once; returns instructions per operation."""
    vg = valgrind()
    if vg is None:
        raise GateSetupError("valgrind is not installed")
    with tempfile.TemporaryDirectory(prefix="kvtier-callgrind-") as tmp:
        work = Path(tmp)
        helper = _build_helper(vg, work)
        cmd = [
            vg, "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
            f"--callgrind-out-file={work / 'callgrind.out'}", sys.executable, str(PROBE), str(helper),
        ]
        setarch = shutil.which("setarch")
        if setarch is not None and sys.platform.startswith("linux"):
            cmd = [setarch, platform.machine(), "-R", *cmd]  # no address randomisation: same layout every run
        # A fixed, minimal environment: its size moves the stack, and with it the alignment of buffers whose
        # copies and compares take a different number of instructions (the same holds for the paths below:
        # the helper's temporary folder name always has the same length).
        env = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, cwd=work)
        if proc.returncode != 0:
            raise RuntimeError(f"the callgrind probe failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
        counts = _parse_dumps(work)
    if not counts:
        raise RuntimeError("callgrind wrote no dumps: did the probe reach its measurements?")
    return counts


def load_baseline(path: Path = BASELINE) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def compare(counts: dict[str, int], baseline: dict[str, Any], tolerance: float = TOLERANCE) -> tuple[list[str], list[str]]:
    """``(rows, failures)``: a line per operation, and the reasons the gate fails (empty: it passes)."""
    base: dict[str, int] = baseline["counts"]
    rows, failures = [], []
    for name in sorted(set(base) | set(counts)):
        if name not in counts:
            failures.append(f"{name}: in the baseline but not measured (update with `{UPDATE_COMMAND}`)")
            continue
        if name not in base:
            failures.append(f"{name}: measured but not in the baseline (update with `{UPDATE_COMMAND}`)")
            continue
        change = counts[name] / base[name] - 1.0
        rows.append(f"{name:<22} {counts[name]:>14,} instructions, baseline {base[name]:>14,} ({change:+.3%})")
        if name != "overhead" and change > tolerance:
            failures.append(f"{name}: {counts[name]:,} instructions, {change:+.2%} over the baseline's {base[name]:,}")
    if failures:
        env, then = environment(), baseline.get("environment", {})
        differ = [f"{k} {then.get(k)!r} -> {v!r}" for k, v in env.items() if then.get(k) != v]
        if differ:
            failures.append("the baseline was recorded with another toolchain: " + "; ".join(differ))
        failures.append(f"if the change is intended, update the baseline: {UPDATE_COMMAND}")
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--update", action="store_true", help=f"write the counts to {BASELINE.name}")
    args = p.parse_args(argv)
    counts = measure()
    if args.update:
        BASELINE.write_text(json.dumps({"environment": environment(), "counts": counts}, indent=1) + "\n")
        print(f"wrote {BASELINE}")
        for name, n in sorted(counts.items()):
            print(f"{name:<22} {n:>14,} instructions")
        return 0
    rows, failures = compare(counts, load_baseline())
    print("\n".join(rows + failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
