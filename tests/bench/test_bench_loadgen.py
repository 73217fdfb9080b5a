"""The benchmark's C load generator against a direct loadgen backend (bench/loadgen)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from bench import loadgen
from bench.peers import free_port, make_client_hello


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loadgen") / "hello.bin"
    path.write_bytes(make_client_hello("bench.tpemu.test", ["teleport-postgres"]))
    return path


def test_build_gives_an_up_to_date_executable() -> None:
    path = loadgen.build()
    assert path == loadgen.BINARY
    assert os.access(path, os.X_OK)
    assert path.stat().st_mtime >= loadgen.SOURCE.stat().st_mtime
    assert loadgen.build() == path  # up to date: no rebuild needed


def test_reply_backend_answers_one_byte_only_after_the_client_speaks() -> None:
    with loadgen.Backend("reply") as backend, socket.create_connection(("127.0.0.1", backend.port)) as s:
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(10)
        s.sendall(b"hello")
        s.settimeout(2)
        assert s.recv(10) == b"x"
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(10)


def test_source_backend_streams_after_the_first_bytes() -> None:
    with loadgen.Backend("source") as backend, socket.create_connection(("127.0.0.1", backend.port)) as s:
        s.sendall(b"go")
        s.settimeout(2)
        got = 0
        while got < 1_000_000:
            chunk = s.recv(65536)
            assert chunk
            got += len(chunk)


def test_connrate_direct_gives_a_sane_result(hello: Path) -> None:
    with loadgen.Backend("reply") as backend:
        out = loadgen.connrate(backend.target, concurrency=4, duration=0.5, payload=hello, warmup=0.1)
    assert out["errors"] == 0, out
    assert out["connections"] >= 100, out  # a few thousand per second even on a busy machine
    assert out["all_connections"] >= out["connections"]
    assert out["conn_per_s"] == pytest.approx(out["connections"] / out["duration_s"], rel=0.01)
    assert 0 < out["p50_us"] <= out["p99_us"]


def test_connrate_counts_refused_connections_as_errors(hello: Path) -> None:
    started = time.monotonic()
    out = loadgen.connrate(f"127.0.0.1:{free_port()}", concurrency=2, duration=0.3, payload=hello)
    assert time.monotonic() - started < 5
    assert out["connections"] == 0
    assert out["errors"] > 0
    assert set(out["error_kinds"]) <= {"connect", "reset", "eof"}


def test_throughput_direct_reads_the_source_stream(hello: Path) -> None:
    with loadgen.Backend("source") as backend:
        out = loadgen.throughput(backend.target, streams=2, duration=0.3, payload=hello)
    assert out["errors"] == 0
    assert out["mb_per_s"] > 10
    assert out["bytes"] > 0 and out["all_bytes"] >= out["bytes"]


def test_idle_holds_connections_until_stdin_closes(hello: Path) -> None:
    with loadgen.Backend("reply") as backend:
        with loadgen.IdleConnections(backend.target, count=200, payload=hello, hold=30) as idle:
            assert idle.ready["ready"] == 200
            assert idle.ready["errors"] == 0
        assert idle.final == {"held": 200, "dropped": 0}
        assert idle.proc.returncode == 0


def test_idle_reports_connections_that_get_no_answer(hello: Path) -> None:
    with socket.socket() as silent:  # listens, never answers: every connection times out
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        with loadgen.IdleConnections(target, count=3, payload=hello, hold=1, open_timeout=1) as idle:
            assert idle.ready["ready"] == 0


def test_idle_connects_from_the_bind_address(hello: Path) -> None:
    """``--bind``: the connections come from that loopback source (the growth bench spreads its
    held connections over several so one source's ~28,000 ephemeral ports are not the limit)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        target = f"127.0.0.1:{server.getsockname()[1]}"
        with loadgen.IdleConnections(target, count=1, payload=hello, hold=5, open_timeout=3,
                                     bind="127.0.0.7"):
            server.settimeout(5)
            conn, addr = server.accept()
            with conn:
                assert addr[0] == "127.0.0.7"
