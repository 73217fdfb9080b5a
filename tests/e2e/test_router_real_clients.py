"""`tpemu start` as a user runs it, driven by real clients: curl, openssl s_client, OpenSSH, psql.

The proxy runs as a subprocess (the real CLI, uvloop) on a free loopback port; each client's own
output is checked, and the proxy's log says which route each connection took.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path, data: Path) -> None:
        self.proc, self.port, self.log_path, self.data = proc, port, log, data

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert time.monotonic() < deadline, f"{text!r} not in the proxy log:\n{self.log[-3000:]}"
            time.sleep(0.05)


def tpemu_bin() -> str:
    return str(Path(sys.executable).with_name("tpemu"))


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proc]:
    port = free_port()
    cfg = tmp_path / "tpemu.yaml"
    cfg.write_text(f"auth_service:\n  listen_addr: 127.0.0.1:0\nproxy_service:\n  web_listen_addr: 127.0.0.1:{port}\n"
                   "tpemu:\n  proxy_service:\n    sniff_timeout: 2s\n")
    log = tmp_path / "proxy.log"
    with log.open("w") as f:
        proc = subprocess.Popen([tpemu_bin(), "start", "--config", str(cfg), "--data-dir", str(tmp_path / "data")],
                                stdout=f, stderr=subprocess.STDOUT, text=True)
    p = Proc(proc, port, log, tmp_path / "data")
    try:
        p.wait_log("listeners:", 15)
        yield p
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(cmd: list[str], input: bytes | None = None, timeout: float = 15,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=env)


def test_banner_and_curl_ping(proxy: Proc) -> None:
    curl = need("curl")
    assert "tpemu 0.1.0: Teleport" in proxy.log and f"127.0.0.1:{proxy.port}" in proxy.log
    ca = proxy.data / "pki" / "ca.crt"
    out = run([curl, "-sS", "--cacert", str(ca), f"https://127.0.0.1:{proxy.port}/webapi/ping"])
    assert out.returncode == 0, out.stderr
    ping = json.loads(out.stdout)
    assert ping["proxy"]["ssh"]["web_listen_addr"] == f"127.0.0.1:{proxy.port}"
    assert ping["proxy"]["tls_routing_enabled"] is True
    out = run([curl, "-sk", f"https://127.0.0.1:{proxy.port}/webapi/ping"])
    assert json.loads(out.stdout)["cluster_name"] == "tpemu.local"
    proxy.wait_log("alpn=h2,http/1.1 route=web (ALPN 'h2')")
    # Plain HTTP on the TLS port: closed without an answer, as Teleport's multiplexer does
    # (lib/multiplexer/multiplexer.go detectAndForward: no HTTP listener). curl: 52 "Empty reply
    # from server", or 56 when the unread request makes the close a reset.
    out = run([curl, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{proxy.port}/webapi/ping"])
    assert out.returncode in (52, 56), (out.returncode, out.stderr)
    proxy.wait_log("proto=http route=web-plain-http")
    proxy.wait_log("Closing HTTP connection: HTTP listener is disabled")


def test_tpemu_ping_and_inspect_cli(proxy: Proc) -> None:
    out = run([tpemu_bin(), "ping", "--proxy", f"127.0.0.1:{proxy.port}", "--ca", str(proxy.data / "pki/ca.crt")])
    assert out.returncode == 0 and json.loads(out.stdout)["proxy"]["tls_routing_enabled"] is True
    out = run([tpemu_bin(), "ping", "--proxy", f"127.0.0.1:{proxy.port}", "--insecure", "--find"])
    assert out.returncode == 0 and "auth" in json.loads(out.stdout)
    out = run([tpemu_bin(), "ping", "--proxy", f"127.0.0.1:{proxy.port}", "--ca", "/etc/ssl/certs/ca-certificates.crt"])
    assert out.returncode == 1 and b"cannot verify the proxy's certificate" in out.stderr


def test_openssl_s_client_alpn_routes(proxy: Proc) -> None:
    openssl = need("openssl")
    out = run([openssl, "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-alpn", "teleport-proxy-ssh",
               "-servername", "node1.tpemu.local"], input=b"")
    # The all-in-one cluster serves SSH: TLS with ALPN teleport-proxy-ssh, then SSH inside.
    assert b"ALPN protocol: teleport-proxy-ssh" in out.stdout, out.stdout + out.stderr
    proxy.wait_log("sni=node1.tpemu.local alpn=teleport-proxy-ssh route=ssh-proxy (ALPN 'teleport-proxy-ssh')")
    out = run([openssl, "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-alpn", "http/1.1",
               "-CAfile", str(proxy.data / "pki/ca.crt"), "-verify_return_error"], input=b"")
    assert b"ALPN protocol: http/1.1" in out.stdout and b"Verify return code: 0 (ok)" in out.stdout
    out = run([openssl, "s_client", "-starttls", "postgres", "-connect", f"127.0.0.1:{proxy.port}"], input=b"")
    assert b"BEGIN CERTIFICATE" in out.stdout
    proxy.wait_log("proto=postgres route=database/postgres (Postgres startup packet)")


def test_openssh_client_gets_a_clear_disconnect(proxy: Proc) -> None:
    ssh = need("ssh")
    out = run([ssh, "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-p", str(proxy.port), "alice@127.0.0.1", "true"])
    # The all-in-one cluster serves SSH: without a user certificate, the proxy's SSH server says no.
    assert out.returncode == 255
    assert b"alice@127.0.0.1: Permission denied (publickey)." in out.stderr, out.stderr
    proxy.wait_log("proto=ssh route=ssh-proxy (plain SSH identification line)")


def test_psql_sslrequest_path_reaches_the_postgres_route(proxy: Proc) -> None:
    psql = need("psql")
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    out = run([psql, f"host=127.0.0.1 port={proxy.port} user=alice dbname=postgres sslmode=require", "-c",
               "select 1"], env=env)
    assert out.returncode == 2
    # the database proxy answers inside TLS, in Postgres' protocol: psql presented no certificate
    assert b"FATAL:  a client certificate is required: run 'tpemu db login NAME'" in out.stderr, out.stderr
    out = run([psql, f"host=127.0.0.1 port={proxy.port} user=alice dbname=postgres sslmode=disable", "-c",
               "select 1"], env=env)
    # Teleport closes a plain-text StartupMessage without an answer (postgres/proxy.go handleStartup).
    assert b"server closed the connection unexpectedly" in out.stderr, out.stderr
    proxy.wait_log("expected tls connection, got a plain-text StartupMessage")


def test_garbage_and_slow_clients_with_python_sockets(proxy: Proc) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"\x01\x02garbage")
        s.settimeout(5)
        assert s.recv(100) == b""
    proxy.wait_log("refused (unknown-protocol): unrecognized protocol: first bytes 01 02 67 61 72 62")
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"\x16\x03")
        s.settimeout(5)
        assert s.recv(100) == b""
    proxy.wait_log("not complete within 2s")
    assert proxy.proc.poll() is None
