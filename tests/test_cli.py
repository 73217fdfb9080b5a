"""The CLI without a running cluster: configure, inspect, config errors."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpemu import cli, testing
from tpemu.config_example import EXAMPLE_CONFIG
from tpemu.wire import postgres, proxy_protocol


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_configure_prints_the_example(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "configure")
    assert code == 0 and out == EXAMPLE_CONFIG
    target = tmp_path / "t.yaml"
    assert run(capsys, "configure", "-o", str(target))[0] == 0 and target.read_text() == EXAMPLE_CONFIG
    code, _, err = run(capsys, "configure", "-o", str(target))
    assert code == 1 and "not overwriting" in err


def test_inspect_tls(capsys: pytest.CaptureFixture[str]) -> None:
    hello = testing.client_hello("node1.tpemu.local", ["teleport-reversetunnelv2", "teleport-reversetunnel"])
    code, out, _ = run(capsys, "inspect", hello.hex())
    assert code == 0
    assert "ClientHello in 1 record(s)" in out and "SNI=node1.tpemu.local" in out
    # teleport-reversetunnelv2 is a client-side name only (protocols.go): the handler is found by the second.
    assert "route:    reverse-tunnel" in out and "why:      ALPN 'teleport-reversetunnel'" in out


def test_inspect_proxy_header_then_postgres(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = proxy_protocol.encode_v2(("192.0.2.1", 1234), ("127.0.0.1", 3080)) + postgres.SSL_REQUEST
    # Unset proxy_protocol (Teleport's default): one header is accepted (lib/multiplexer, unspecified mode).
    code, out, _ = run(capsys, "inspect", data.hex())
    assert code == 0 and "PROXY protocol unset" in out and "PROXY v2 header (28 bytes, consumed)" in out
    code, out, _ = run(capsys, "inspect", "--proxy-protocol", data.hex())
    assert code == 0 and "PROXY v2 header (28 bytes, consumed): PROXY TCP4 client 192.0.2.1:1234" in out
    assert "route:    database/postgres" in out
    f = tmp_path / "capture.bin"
    f.write_bytes(b"SSH-2.0-OpenSSH_9.2\r\n")
    code, out, _ = run(capsys, "inspect", "--file", str(f))
    assert code == 0 and "route:    ssh-proxy" in out


def test_inspect_incomplete_refused_and_passthrough(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    hello = testing.client_hello("app.example.com", ["h2"])
    code, out, _ = run(capsys, "inspect", hello[:100].hex())
    assert code == 3 and "incomplete" in out
    code, out, _ = run(capsys, "inspect", "16 03 01 00 00")
    assert code == 2 and "record length 0" in out and "answer:" in out
    code, out, _ = run(capsys, "inspect", "0x68:0x65:0x6c:0x6c:0x6f")
    assert code == 2 and "unrecognized protocol" in out
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tpemu:\n  proxy_service:\n    passthrough:\n"
                   "      - {name: app, sni: ['*.example.com'], target: '127.0.0.1:8443', send_proxy: v1}\n")
    code, out, _ = run(capsys, "inspect", "--config", str(cfg), hello.hex())
    assert code == 0 and "route:    passthrough/app" in out and "PROXY v1 header sent first" in out
    code, out, _ = run(capsys, "inspect", "--listener", "mysql", hello.hex())
    assert code == 2 and "not opened" in out


def test_config_error_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("proxy_service:\n  web_listen_adr: ':1'\n")
    code, _, err = run(capsys, "inspect", "--config", str(cfg), "16")
    assert code == 2 and err.startswith("tpemu: config error: proxy_service.web_listen_adr: unknown key")
    code, _, err = run(capsys, "inspect", "zz")
    assert code == 2 and "not hex" in err


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _subcommands(child, (*path, name))


def test_every_command_has_examples_and_every_positional_help() -> None:
    top = cli.build_parser()
    assert top.epilog and "examples:" in top.epilog
    commands = dict(_subcommands(top))
    assert {"start", "configure", "ping", "inspect", "tokens", "users", "login", "ssh", "db", "proxy",
            ("db", "connect"), ("proxy", "db")} <= {k[0] if len(k) == 1 else k for k in commands}
    for path, parser in [((), top), *commands.items()]:
        if path != ("bench",):  # bench hands --help to bench/run.py's own parser
            assert parser.epilog and parser.epilog.startswith("examples:\n  "), f"tpemu {' '.join(path)}: no examples"
        for action in parser._actions:
            if not action.option_strings:
                assert action.help, f"tpemu {' '.join(path)}: positional {action.dest} has no help"


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["db", "connect", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n  tpemu db connect pg" in out and "the database's name" in out
