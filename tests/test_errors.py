"""tpemu's one error model (:mod:`tpemu.errors`): every public exception class is a TpemuError of
a known fault kind, :func:`tpemu.errors.describe` gives one line per failure, and the CLI exits
with the error's code (1 for a peer fault, 2 for a local fault) after one line on stderr."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import asyncssh
import pytest

from tpemu import cli
from tpemu.errors import LocalFault, PeerFault, TpemuError, describe, exit_code

ROOT = Path(__file__).resolve().parent.parent
#: Source folder → package (pyproject's [tool.setuptools.package-dir]).
PACKAGES = {"tpemu": "tpemu", "proxy": "tpemu.proxy", "agent": "tpemu.agent", "auth": "tpemu.auth",
            "bench": "bench"}


def _modules() -> Iterator[ModuleType]:
    # The source tree, not pkgutil.walk_packages: the strict editable install links the package
    # folders into one another, and the walk would not end.
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if parts[-1:] == ["__main__"] or "results" in parts:
                continue
            yield importlib.import_module(".".join([package, *parts]))


def _public_exceptions() -> list[type[BaseException]]:
    found = []
    for mod in _modules():
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == mod.__name__
                    and not name.startswith("_")):
                found.append(obj)
    return found


def test_every_public_exception_has_the_one_root() -> None:
    classes = _public_exceptions()
    # The walk really finds the package's errors (tpemu.proxy, tpemu.agent, tpemu.auth, bench).
    names = {c.__qualname__ for c in classes}
    assert {"WireError", "ConfigError", "DialError", "AuthAPIError", "TunnelError", "StatusError",
            "BackendError", "LoadgenError", "CLIError"} <= names, names
    assert len(classes) >= 60
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, TpemuError)]
    assert strays == []
    for c in classes:
        assert c.fault in ("peer", "local"), c
        assert issubclass(c, PeerFault) or issubclass(c, LocalFault) or c in (TpemuError, cli.CLIError), c


def test_kinds_and_kept_bases() -> None:
    from tpemu.auth.backend import NotFound as BackendNotFound
    from tpemu.config import ConfigError
    from tpemu.net.dial import DialError
    from tpemu.net.kube_status import StatusError
    from tpemu.wire.tls import NotTLS

    # A peer's malformed bytes, a refused dial, a Kubernetes Status: the peer's fault, exit code 1.
    for cls in (NotTLS, DialError, StatusError):
        assert issubclass(cls, PeerFault) and cls.exit_code == 1
    # A bad teleport.yaml, the Auth storage: local, exit code 2.
    for local in (ConfigError, BackendNotFound):
        assert issubclass(local, LocalFault) and local.exit_code == 2
    # Older bases stay, so `except ValueError` / `except OSError` still match.
    assert issubclass(ConfigError, ValueError) and issubclass(DialError, OSError)
    err = DialError("dial 127.0.0.1:1: cannot connect")
    assert isinstance(err, OSError) and str(err) == "dial 127.0.0.1:1: cannot connect"


def test_exit_codes() -> None:
    from tpemu.client.ssh import SSHError

    assert exit_code(PeerFault("x")) == 1 and exit_code(LocalFault("x")) == 2
    assert exit_code(SSHError("remote command failed", 7)) == 7  # the code travels, as asyncssh's does
    assert exit_code(cli.CLIError("x", 3)) == 3
    assert exit_code(RuntimeError("a bug")) == 1
    import tpemu

    assert (tpemu.TpemuError, tpemu.PeerFault, tpemu.LocalFault) == (TpemuError, PeerFault, LocalFault)


def test_describe() -> None:
    from tpemu.config import ConfigError

    assert describe(ConnectionResetError(104, "Connection reset by peer")) == "read: connection reset by peer"
    assert describe(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert describe(TimeoutError()) == "timed out"
    assert describe(asyncio.IncompleteReadError(b"ab", 5)) == "the peer closed the connection"
    assert describe(asyncssh.DisconnectError(asyncssh.DISC_BY_APPLICATION, "bye")) == "bye"
    assert describe(asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "node offline")) == "node offline"
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate"
    assert describe(verify) == "certificate verify failed: self-signed certificate"
    assert describe(ConfigError("proxy_service.x", "unknown key")) == "proxy_service.x: unknown key"
    assert describe(KeyError()) == "KeyError"
    assert describe(PeerFault()) == "PeerFault"


def test_describe_a_real_reset_and_a_real_non_tls_answer() -> None:
    # Real sockets: a peer that resets (SO_LINGER 0), and a server answering a ClientHello in plain text.
    a, b = socket.socketpair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    try:
        a.sendall(b"x")
        b.close()
        with pytest.raises(OSError) as info:
            for _ in range(100):
                a.sendall(b"y" * 65536)
        assert describe(info.value) in ("read: connection reset by peer", "Broken pipe")
    finally:
        a.close()
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def answer() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    ctx = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, pytest.raises(ssl.SSLError) as info2:
        ctx.wrap_socket(raw, server_hostname="x")
    t.join(5)
    srv.close()
    assert describe(info2.value) == "tls: first record does not look like a TLS handshake"


def test_cli_turns_any_tpemu_error_into_one_line_and_its_code(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from tpemu.cli import diagnose
    from tpemu.identity import IdentityError
    from tpemu.net.dial import DialError

    for exc, code in ((IdentityError("identity file x: no certificate"), 2),
                      (DialError("dial 127.0.0.1:9: cannot connect to 127.0.0.1:9: Connection refused"), 1)):
        def boom(args: object, exc: Exception = exc) -> int:
            raise exc

        monkeypatch.setattr(diagnose, "cmd_ping", boom)
        assert cli.main(["ping"]) == code
        out, err = capsys.readouterr()
        assert err == f"tpemu: {exc}\n" and out == ""


def test_cli_exit_codes_of_real_failures(tmp_path: Path) -> None:
    """A real ``tpemu`` process: a local fault (bad config) exits 2, a peer fault (a proxy that
    hangs up on the TLS handshake) exits 1; one line on stderr, no traceback."""
    env = {**os.environ, "TPEMU_HOME": str(tmp_path / "home"), "TPEMU_PASSWORD": "pw"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("teleport:\n  nodename: [1\n")
    res = subprocess.run([sys.executable, "-m", "tpemu", "inspect", "--config", str(bad), "16"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("tpemu: config error:"), res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def hang_up() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conn.close()

    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    try:
        res = subprocess.run([sys.executable, "-m", "tpemu", "login", "--proxy", f"127.0.0.1:{port}", "--user",
                              "alice", "--insecure"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        t.join(5)
        srv.close()
    assert res.returncode == 1, res.stderr
    # The insecure-connection warning, then the one error line.
    assert res.stderr.splitlines()[-1].startswith("tpemu: login failed:"), res.stderr
    assert "Traceback" not in res.stderr, res.stderr

