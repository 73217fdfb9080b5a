"""The TLS termination benches (bench/tls.py, bench/tls_builds.py): the HAProxy reference that
sends no session tickets really sends none, and the one as configured by default sends some."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from bench import tls, tls_builds
from tests.conftest import need


def _has_ticket(port: int, version: ssl.TLSVersion) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        # HAProxy forwards to a closed backend and closes: reading to the end takes in the tickets
        # (sent right after the handshake), whatever comes after them.
        conn.settimeout(10)
        try:
            while conn.recv(4096):
                pass
        except (ssl.SSLError, OSError):
            pass
        session = conn.session
        return session is not None and session.has_ticket


@pytest.mark.parametrize("tickets", [True, False])
def test_haproxy_reference_tickets(tmp_path: Path, tickets: bool) -> None:
    need("haproxy")
    started = tls._start_haproxy("ecdsa", tmp_path, tickets=tickets)
    assert not isinstance(started, str), started
    proc, port = started
    try:
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            assert _has_ticket(port, version) is tickets, version
    finally:
        proc.terminate()
        proc.wait(10)


def test_tls_builds_table_names_both_references() -> None:
    fig = {"handshakes_per_s": 900.0, "cpu_us": 600.0, "runs": {"cpu_us": [590.0, 610.0]}}
    result = {"loadavg_start": (1.0, 1.0, 1.0), "loadavg_end": (2.0, 1.0, 1.0), "points": {"c1": {
        "haproxy": fig, "haproxy-notickets": fig,
        "now": {**fig, "cpu_vs_haproxy": 1.4, "cpu_vs_haproxy_notickets": 1.5}}}}
    out = tls_builds.table(result)
    assert "1.4x haproxy 1.5x haproxy-notickets" in out and "(rounds 590-610)" in out


def test_haproxy_reference_answers_requests_in_request_mode(tmp_path: Path) -> None:
    # bench.tls_builds --www: the HAProxys answer the request themselves (mode http), as tpemu's
    # web route does, so both sides do a handshake plus one HTTP exchange.
    need("haproxy")
    started = tls._start_haproxy("ecdsa", tmp_path, tickets=False, answer=True)
    assert not isinstance(started, str), started
    proc, port = started
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.settimeout(10)
            conn.sendall(b"GET /webapi/ping HTTP/1.0\r\n\r\n")
            data = b""
            try:
                while chunk := conn.recv(4096):
                    data += chunk
            except ssl.SSLError:
                pass
        assert data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200"), data[:100]
        assert data.endswith(b'{"ok":true}'), data[-100:]
    finally:
        proc.terminate()
        proc.wait(10)
