"""Each peer's config routes a real ClientHello by SNI and by ALPN (bench/peers.py, bench/peers/).

A ``source`` backend gets the SNI route and a ``reply`` backend the ALPN route, so the answer
tells which route a connection took: a stream of bytes, one byte, or nothing (no route).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import loadgen, peers
from tpemu.wire.tls import parse_client_hello

STREAM_SNI = "stream.bench.tpemu.test"
ALPN = "teleport-postgres"


def test_client_hello_is_real_tls13_with_sni_and_alpn() -> None:
    data = peers.make_client_hello("bench.tpemu.test", ["teleport-postgres", "h2"])
    hello = parse_client_hello(data)
    assert hello is not None
    assert hello.sni == "bench.tpemu.test"
    assert list(hello.alpn) == ["teleport-postgres", "h2"]
    assert data[:3] == b"\x16\x03\x01"  # a TLS handshake record


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[loadgen.Backend, loadgen.Backend]]:
    with loadgen.Backend("reply") as reply, loadgen.Backend("source") as source:
        yield reply, source


def _answer(port: int, payload: bytes, want: int) -> bytes:
    """Up to ``want`` bytes answered to ``payload`` (fewer when the peer closes or goes quiet)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(payload)
        s.settimeout(0.3)
        try:
            while len(got) < want:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            pass
    return got


@pytest.mark.e2e
@pytest.mark.parametrize("name", peers.PEERS)
def test_peer_routes_by_sni_then_alpn(name: str, backends: tuple[loadgen.Backend, loadgen.Backend],
                                      tmp_path: Path) -> None:
    reply, source = backends
    routes = peers.Routes(sni={STREAM_SNI: source.port}, alpn={ALPN: reply.port})
    by_alpn = peers.make_client_hello("bench.tpemu.test", ["h2", ALPN])
    peer, reason = peers.start_peer(name, routes, tmp_path, probe=by_alpn, ready_timeout=15)
    if peer is None:
        pytest.skip(f"{name}: {reason}")
    try:
        assert peer.alive() and peer.rss_kib() > 0
        assert peer.version and peer.version != "unknown"
        assert _answer(peer.port, by_alpn, 10) == b"x"  # the reply backend: one byte
        by_sni = peers.make_client_hello(STREAM_SNI, ["h2"])
        assert len(_answer(peer.port, by_sni, 200_000)) >= 200_000  # the source backend streams
        nowhere = peers.make_client_hello("other.test", ["h2"])
        answer = _answer(peer.port, nowhere, 10)
        if name == "sslh":  # sslh cannot refuse: what no probe matches goes to a configured protocol
            assert answer.startswith(b"x")
        else:  # no route: closed, refused, or (tpemu) TLS answered by the router itself
            assert not answer.startswith(b"x")
    finally:
        peer.stop()
    assert not peer.alive()


def test_missing_binary_is_a_skip_with_a_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    peer, reason = peers.start_peer("haproxy", peers.Routes(alpn={ALPN: 1}), tmp_path, probe=b"")
    assert peer is None
    assert reason is not None and "haproxy" in reason


def test_process_tree_and_rss_include_children(tmp_path: Path) -> None:
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                               "subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"],
                              stdin=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 5
        while len(peers.process_tree([parent.pid])) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        tree = peers.process_tree([parent.pid])
        assert len(tree) == 2 and tree[0] == parent.pid
        assert peers.rss_kib(tree) > peers.rss_kib([parent.pid]) > 0
    finally:
        for pid in reversed(peers.process_tree([parent.pid])):  # the child, then the parent we started
            os.kill(pid, signal.SIGTERM)
        parent.wait(5)


def test_a_split_peer_that_cannot_start_every_process_leaves_none(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """HAProxy over two processes whose second cannot be started: the first is stopped too."""
    import shutil
    import subprocess

    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (make test installs it)")
    real = peers._spawn
    started: list[subprocess.Popen[bytes]] = []

    def spawn(*args: object) -> subprocess.Popen[bytes]:
        if started:
            raise OSError(24, "Too many open files")
        proc = real(*args)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    monkeypatch.setattr(peers, "_spawn", spawn)
    with pytest.raises(OSError, match="Too many open files"):
        peers.start_peer("haproxy", peers.Routes(alpn={ALPN: 1}), tmp_path, probe=b"", processes=2)
    assert len(started) == 1 and started[0].poll() is not None


def test_only_tpemu_and_haproxy_run_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only tpemu-uvloop, tpemu-asyncio and haproxy run split"):
        peers.start_peer("sslh", peers.Routes(alpn={ALPN: 1}), tmp_path, probe=b"", processes=2)
    with pytest.raises(ValueError, match="processes=0"):
        peers.start_peer("haproxy", peers.Routes(alpn={ALPN: 1}), tmp_path, probe=b"", processes=0)
