"""Real redis-server processes on loopback for the remote tier's tests and benchmarks.

Each server gets a free port and its own folder; ``RedisServer.kill()`` is a SIGKILL, ``start()`` starts it again
on the same port and folder (with ``appendonly`` its acknowledged writes come back from the AOF).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
REDIS_CLI = shutil.which("redis-cli") or ("/usr/bin/redis-cli" if os.path.exists("/usr/bin/redis-cli") else None)


def need_redis() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")


def free_port(cluster: bool = False) -> int:
    """A free loopback port; for a cluster node one <= 55535 whose bus port (+10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if not cluster:
            return port
        if port <= 55535:
            try:
                with socket.socket() as b:
                    b.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue


class RedisServer:
    def __init__(self, folder: Path, *, persist: bool = False, cluster: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port(cluster)
        self.persist = persist
        self.cluster = cluster
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--save", "", "--protected-mode", "no", "--daemonize", "no", "--logfile", str(self.folder / "log"),
        ]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.folder / "nodes.conf")]
        args += list(self.extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = (self.folder / "log").read_text(errors="replace") if (self.folder / "log").exists() else ""
        raise RuntimeError(f"redis-server on port {self.port} did not start: {log[-2000:]}")

    def kill(self) -> None:
        """SIGKILL (no shutdown, no final fsync)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


def start_cluster(folder: Path, masters: int = 3) -> list[RedisServer]:
    """``masters`` cluster-enabled servers joined with ``redis-cli --cluster create`` (no replicas)."""
    assert REDIS_CLI is not None
    nodes = [RedisServer(folder / f"node{i}", cluster=True) for i in range(masters)]
    for n in nodes:
        n.start()
    subprocess.run(
        [REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-replicas", "0",
         "--cluster-yes"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = subprocess.run(
            [REDIS_CLI, "-p", str(nodes[0].port), "cluster", "info"], capture_output=True, text=True, timeout=10
        ).stdout
        if "cluster_state:ok" in out:
            return nodes
        time.sleep(0.1)
    raise RuntimeError("the cluster did not reach cluster_state:ok")
