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
from collections.abc import Iterator
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
    def __init__(
        self,
        folder: Path,
        *,
        persist: bool = False,
        cluster: bool = False,
        extra: tuple[str, ...] = (),
        tls: tuple[Path, Path, Path] | None = None,  # (CA, certificate, key): TLS only, clients not verified
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port(cluster)
        self.persist = persist
        self.cluster = cluster
        self.extra = extra
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[0]}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        port = ["--port", str(self.port)]
        if self.tls is not None:
            ca, cert, key = self.tls
            port = ["--port", "0", "--tls-port", str(self.port), "--tls-ca-cert-file", str(ca), "--tls-cert-file",
                    str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no"]
        args = [
            REDIS_SERVER, *port, "--bind", "127.0.0.1", "--dir", str(self.folder),
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
            if self.tls is not None:
                log_file = self.folder / "log"
                if log_file.exists() and "Ready to accept connections" in log_file.read_text(errors="replace"):
                    return
                time.sleep(0.05)
                if self.proc.poll() is not None:
                    break
                continue
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
        self.kill()  # never leave a server behind
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


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for 127.0.0.1 signed by it (openssl): (CA, certificate, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr = folder / "server.crt", folder / "server.key", folder / "server.csr"
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run = lambda *a: subprocess.run(list(a), check=True, capture_output=True, timeout=60)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=kvtier test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))
    for p in (key, ca_key):
        p.chmod(0o600)
    return ca, cert, key


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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A single redis-server on loopback for one test (skips when redis-server is not installed)."""
    need_redis()
    s = RedisServer(tmp_path / "redis")
    s.start()
    yield s
    s.stop()
