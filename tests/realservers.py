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


#: In each server folder: the pid and start time of the pytest process that made it.
OWNER = ".tpemu-test-owner"


def _started(pid: int) -> str | None:
    """A process's start time (``/proc/<pid>/stat`` field 22): with the pid, one process, whatever
    reuses the number later."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def claim(d: Path) -> None:
    """Mark ``d`` as this run's, for :func:`reap_orphans` in a later run should this one be killed."""
    (d / OWNER).write_text(f"{os.getpid()} {_started(os.getpid())}\n")


def reap_orphans() -> list[str]:
    """Stop the servers of a test run that was killed before its finalizers ran.

    ``pg_ctl start`` daemonizes PostgreSQL (its parent becomes init) and the Popen'ed servers are
    not tied to pytest either, so a run killed by a signal leaves them running for ever (one was
    found after 93 minutes). Each server folder names the pytest process that made it
    (:func:`claim`); for every folder whose owner is gone, every process whose command line names
    the folder (``postgres -D <d>/data``, ``squid -f <d>/…``) is killed by its PID, and the folder
    removed. Only folders whose owner file this user wrote count (the temporary folder is shared)."""
    import signal
    import tempfile

    reaped: list[str] = []
    me = os.geteuid()
    for d in Path(tempfile.gettempdir()).glob("tpemu-*"):
        mark = d / OWNER
        try:
            if mark.is_symlink() or mark.lstat().st_uid != me:
                continue
            pid_text, start = mark.read_text().split()
            if _started(int(pid_text)) == start:
                continue  # its run is still going
        except (OSError, ValueError):
            continue
        needle = os.fsencode(d)
        killed = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(arg == needle or arg.startswith(needle + b"/") or (b"=" + needle + b"/") in arg
                   for arg in argv.split(b"\0")):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(entry.name)
                except OSError:
                    pass
        shutil.rmtree(d, ignore_errors=True)
        reaped.append(f"{d} (left by pid {pid_text}; killed {', '.join(killed) or 'nothing'})")
    return reaped


@contextmanager
def server_dir(name: str) -> Iterator[Path]:
    """A fresh directory that unprivileged server users (proxy, nobody, postgres) can traverse:
    pytest's tmp_path sits under a 0700 directory they cannot enter."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=f"tpemu-{name}-"))
    d.chmod(0o755)
    claim(d)
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


# -- database servers ------------------------------------------------------------------------------
# Each takes ``pki``: a folder with ca.crt (trusted for client certificates), server.crt, server.key.

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class DBServer:
    kind: str
    host: str
    port: int
    dir: Path

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, capture_output=True, timeout=60, **kw)  # type: ignore[call-overload]


@contextmanager
def postgres(pki: Path, users: tuple[str, ...] = ("alice",),
             databases: tuple[str, ...] = ("app",)) -> Iterator[DBServer]:
    """PostgreSQL 15 (initdb + pg_ctl as the postgres user) with TLS; TCP clients must present a
    certificate from ``pki/ca.crt`` whose CN is the database user (``hostssl … cert``)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql)")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("starting PostgreSQL needs root (runuser -u postgres)")
    port = free_port()
    run = ["runuser", "-u", "postgres", "--"]
    with server_dir("pg") as d:
        shutil.chown(d, "postgres", "postgres")
        data = d / "data"
        _run([*run, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E",
              "UTF8", "--locale=C.UTF-8"])
        for name, mode in (("server.crt", 0o644), ("server.key", 0o600), ("ca.crt", 0o644)):
            shutil.copy(pki / name, data / name)
            shutil.chown(data / name, "postgres", "postgres")
            (data / name).chmod(mode)
        with (data / "postgresql.conf").open("a") as f:
            f.write(f"\nlisten_addresses='127.0.0.1'\nport={port}\nunix_socket_directories='{d}'\nfsync=off\n"
                    "ssl=on\nssl_cert_file='server.crt'\nssl_key_file='server.key'\nssl_ca_file='ca.crt'\n")
        (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 cert\n")
        _run([*run, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(d / "server.log"), "-w", "-t", "30", "start"])
        try:
            sql = "".join(f"create role {u} login; " for u in users) + "".join(
                f"create database {db} owner {users[0]}; " for db in databases)
            for stmt in sql.split("; "):
                if stmt.strip():
                    _run(["psql", "-h", str(d), "-p", str(port), "-U", "postgres", "-qc", stmt])
            yield DBServer("postgres", "127.0.0.1", port, d)
        finally:
            subprocess.run([*run, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30",
                            "stop"], check=False, capture_output=True, timeout=60)


@contextmanager
def mariadb(pki: Path, users: tuple[str, ...] = ("alice",),
            databases: tuple[str, ...] = ("app",)) -> Iterator[DBServer]:
    """mariadbd with TLS; each user must present a certificate with subject ``/CN=<user>`` from
    ``pki/ca.crt`` (``REQUIRE SUBJECT``) and has no password."""
    exe = binary("mariadbd")
    install = binary("mariadb-install-db")
    client = binary("mariadb")
    port = free_port()
    with server_dir("mariadb") as d:
        ssl_dir = d / "ssl"
        ssl_dir.mkdir()
        for name in ("server.crt", "server.key", "ca.crt"):
            shutil.copy(pki / name, ssl_dir / name)
        subprocess.run(["chown", "-R", "mysql:mysql", str(d)], check=True)
        _run([install, "--no-defaults", "--user=mysql", f"--datadir={d}/data",
              "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"])
        proc = subprocess.Popen([exe, "--no-defaults", "--user=mysql", f"--datadir={d}/data",
                                 "--bind-address=127.0.0.1", f"--port={port}", f"--socket={d}/mysqld.sock",
                                 f"--pid-file={d}/mysqld.pid",
                                 f"--log-error={d}/error.log", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
                                 "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin",
                                 f"--ssl-cert={ssl_dir}/server.crt", f"--ssl-key={ssl_dir}/server.key",
                                 f"--ssl-ca={ssl_dir}/ca.crt"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"mariadbd exited: {(d / 'error.log').read_text()[-2000:]}")
                ok = subprocess.run([client, "--no-defaults", f"--socket={d}/mysqld.sock", "-u", "root", "-e",
                                     "select 1"], capture_output=True, timeout=10)
                if ok.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("mariadbd not ready after 30s")
                time.sleep(0.1)
            sql = "".join(f"CREATE DATABASE {db}; " for db in databases) + "".join(
                f"CREATE USER '{u}'@'%' REQUIRE SUBJECT '/CN={u}'; GRANT ALL ON *.* TO '{u}'@'%'; " for u in users)
            _run([client, "--no-defaults", f"--socket={d}/mysqld.sock", "-u", "root", "-e", sql])
            yield DBServer("mysql", "127.0.0.1", port, d)
        finally:
            stop(proc, 20)


@contextmanager
def redis_tls(pki: Path) -> Iterator[DBServer]:
    """redis-server on a TLS port only, requiring client certificates from ``pki/ca.crt``."""
    exe = binary("redis-server")
    port = free_port()
    with server_dir("redis") as d:
        proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port), "--save", "",
                                 "--appendonly", "no", "--dir", str(d), "--logfile", str(d / "redis.log"),
                                 "--tls-cert-file", str(pki / "server.crt"), "--tls-key-file", str(pki / "server.key"),
                                 "--tls-ca-cert-file", str(pki / "ca.crt"), "--tls-auth-clients", "yes"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_tcp("127.0.0.1", port, 10, proc)
            yield DBServer("redis", "127.0.0.1", port, d)
        finally:
            stop(proc)


@contextmanager
def nx_mongo() -> Iterator[DBServer]:
    """nx-27017 (PyPI), a MongoDB wire-protocol server on SQLite, in memory; no TLS."""
    import sys

    exe = shutil.which("nx-27017") or str(Path(sys.executable).with_name("nx-27017"))
    if not Path(exe).exists():
        pytest.skip("nx-27017 is not installed (pip install nx-27017; it is in the test extras)")
    port = free_port()
    with server_dir("nx") as d:
        proc = subprocess.Popen([exe, "--db", "memory", "--host", "127.0.0.1", "-p", str(port), "--log-file",
                                 str(d / "nx.log"), "--pid-file", str(d / "nx.pid")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_tcp("127.0.0.1", port, 15, proc)
            yield DBServer("mongodb", "127.0.0.1", port, d)
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
