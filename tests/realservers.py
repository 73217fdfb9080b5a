"""Start and stop real third-party servers on loopback for tests (squid, tinyproxy, …).

Recipes from shared/REAL_CLIENTS.md §3: every server gets its own temporary directory, a free
port, bounded readiness waits, and is stopped by PID. A missing binary skips the test with the
reason (``make test`` installs them on Debian as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_tcp(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def binary(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)),
                                      None)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it on Debian as root)")
    return path


@contextmanager
def server_dir(name: str) -> Iterator[Path]:
    """A fresh directory that unprivileged server users (proxy, nobody, postgres) can traverse:
    pytest's tmp_path sits under a 0700 directory they cannot enter."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=f"tpemu-{name}-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class HTTPProxy:
    kind: str
    host: str
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def squid(tmp: Path, host: str = "127.0.0.2") -> Iterator[HTTPProxy]:
    """squid as a CONNECT proxy on ``host`` allowing loopback sources and destinations, any port."""
    exe = binary("squid")
    port = free_port(host)
    with server_dir("squid") as d:
        yield from _squid(exe, d, host, port)


def _squid(exe: str, d: Path, host: str, port: int) -> Iterator[HTTPProxy]:
    conf = d / "squid.conf"
    conf.write_text(f"""http_port {host}:{port}
acl src_loop src 127.0.0.0/8
acl dst_loop dst 127.0.0.0/8
http_access allow src_loop dst_loop
http_access deny all
cache deny all
cache_mem 8 MB
cache_effective_user proxy
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log stdio:{d}/access.log
coredump_dir {d}
shutdown_lifetime 1 seconds
""")
    shutil.chown(d, "proxy", "proxy")
    proc = subprocess.Popen([exe, "-N", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_tcp(host, port, 15, proc)
        yield HTTPProxy("squid", host, port, d / "access.log")
    finally:
        stop(proc, 10)


@contextmanager
def tinyproxy(tmp: Path, host: str = "127.0.0.3", basic_auth: tuple[str, str] | None = None) -> Iterator[HTTPProxy]:
    """tinyproxy on ``host``; with ``basic_auth`` it demands Proxy-Authorization."""
    exe = binary("tinyproxy")
    port = free_port(host)
    with server_dir("tinyproxy") as d:
        yield from _tinyproxy(exe, d, host, port, basic_auth)


def _tinyproxy(exe: str, d: Path, host: str, port: int, basic_auth: tuple[str, str] | None) -> Iterator[HTTPProxy]:
    d.chmod(0o777)
    log = d / "tinyproxy.log"
    auth = f"BasicAuth {basic_auth[0]} {basic_auth[1]}\n" if basic_auth else ""
    conf = d / "tinyproxy.conf"
    conf.write_text(f"""User nobody
Group nogroup
Port {port}
Listen {host}
Timeout 60
Allow 127.0.0.0/8
LogLevel Info
LogFile "{log}"
PidFile "{d}/tinyproxy.pid"
{auth}""")
    proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_tcp(host, port, 10, proc)
        yield HTTPProxy("tinyproxy", host, port, log)
    finally:
        stop(proc)


@contextmanager
def redis_unix(base: Path) -> Iterator[Path]:
    """A real redis-server on a unix socket in ``base`` (no TCP port to race for)."""
    exe = binary("redis-server")
    sock = base / "redis.sock"
    proc = subprocess.Popen([exe, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
                             "--dir", str(base), "--logfile", str(base / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Ready when a connection succeeds: the socket file appears at bind(), before listen().
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (see {base / 'redis.log'})")
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(sock))
                break
            except OSError:
                time.sleep(0.01)
        yield sock
    finally:
        stop(proc, 10)
