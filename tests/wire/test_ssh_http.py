"""SSH identification line and HTTP request line parsers; SSH plain packets."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import feed_three_ways
from tpemu.wire import LimitExceeded, WireError, http, ssh


def test_openssh_banner() -> None:
    data = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
    ident = feed_three_ways(ssh.parse_ssh_ident, data)
    assert (ident.proto_version, ident.software, ident.comments, ident.length) == (
        "2.0", "OpenSSH_9.2p1", "Debian-2+deb12u3", len(data))


def test_asyncssh_banner_captured() -> None:
    # Provenance: the identification line asyncssh's client actually sends, captured over loopback.
    async def capture() -> bytes:
        import asyncssh

        got = asyncio.get_running_loop().create_future()

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.readline())
            writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncssh.connect("127.0.0.1", port, known_hosts=None, login_timeout=2)
        except (OSError, asyncssh.Error):
            pass
        server.close()
        return await got

    data = asyncio.run(capture())
    ident = feed_three_ways(ssh.parse_ssh_ident, data)
    assert ident.proto_version == "2.0" and ident.software.startswith("AsyncSSH_")


def test_lf_only_and_199() -> None:
    assert feed_three_ways(ssh.parse_ssh_ident, b"SSH-1.99-old\n").proto_version == "1.99"


@pytest.mark.parametrize("data,message", [
    (b"SSH-1.5-ancient\r\n", "unsupported SSH protocol version"),
    (b"SSH-2.0\r\n", "malformed"),
    (b"SSX-2.0-x\r\n", "must start with"),
    (b"SSH-2.0-x\x00y\r\n", "NUL"),
])
def test_ssh_errors(data: bytes, message: str) -> None:
    with pytest.raises(ssh.SSHIdentError, match=message):
        ssh.parse_ssh_ident(data)


def test_ssh_cap() -> None:
    with pytest.raises(LimitExceeded):
        ssh.parse_ssh_ident(b"SSH-2.0-" + b"x" * 300)


def test_disconnect_packet_layout() -> None:
    pkt = ssh.encode_disconnect(ssh.DISCONNECT_SERVICE_NOT_AVAILABLE, "nope")
    length = int.from_bytes(pkt[:4], "big")
    assert len(pkt) == 4 + length and len(pkt) % 8 == 0
    pad = pkt[4]
    assert pad >= 4
    payload = pkt[5:4 + length - pad + 0][: length - pad - 1]
    assert payload[0] == ssh.MSG_DISCONNECT and int.from_bytes(payload[1:5], "big") == 7
    assert payload[5:9] == (4).to_bytes(4, "big") and payload[9:13] == b"nope"
    assert ssh.encode_ssh_ident("tpemu") == b"SSH-2.0-tpemu\r\n"


@pytest.mark.parametrize("data", [b"GET /webapi/ping HTTP/1.1\r\n", b"CONNECT host:443 HTTP/1.1\r\n",
                                  b"OPTIONS * HTTP/1.0\n"])
def test_request_line(data: bytes) -> None:
    line = feed_three_ways(http.parse_request_line, data)
    assert line.length == len(data) and line.version in ("HTTP/1.0", "HTTP/1.1")


@pytest.mark.parametrize("data,message", [
    (b"GET /\r\n", "malformed"), (b"GET / HTTP/2.0\r\n", "unsupported HTTP version"),
    (b"G(T / HTTP/1.1\r\n", "bad HTTP method"), (b"GET /a\x01b HTTP/1.1\r\n", "bad HTTP request target"),
])
def test_request_line_errors(data: bytes, message: str) -> None:
    with pytest.raises(http.HTTPLineError, match=message):
        http.parse_request_line(data)


def test_request_line_cap_and_methods() -> None:
    with pytest.raises(LimitExceeded):
        http.parse_request_line(b"GET /" + b"a" * 9000)
    assert http.starts_with_method(b"GET ") is True
    assert http.starts_with_method(b"PU") is None
    assert http.starts_with_method(b"GETX") is False


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz(data: bytes) -> None:
    for parse in (ssh.parse_ssh_ident, http.parse_request_line):
        for prefix in (b"", b"SSH-2.0-", b"GET "):
            try:
                parse(prefix + data)
            except WireError:
                pass
