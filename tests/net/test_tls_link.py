"""tpemu.net.tls_link: TLS through memory BIOs, both sides, against each other and against stock
TLS (the loop's SSL protocol, OpenSSL's ``s_client``), failures, deadlines, and the reverse
tunnel running on it at both ends."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
from pathlib import Path

import pytest
import trustme

from tpemu.net import tls_link
from tpemu.net.dial import DialError, dial
from tpemu.net.tls_alerting import _TLSTransport

pytestmark = pytest.mark.both_loops


class Collect(asyncio.Protocol):
    """Keeps what arrives; answers each chunk with ``reply(chunk)`` when given."""

    def __init__(self, reply: bool = False) -> None:
        self.reply = reply
        self.data = bytearray()
        self.made = asyncio.get_running_loop().create_future()
        self.eof = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.reply:
            assert self.transport is not None
            self.transport.write(data)

    def eof_received(self) -> bool | None:
        if not self.eof.done():
            self.eof.set_result(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("proxy.example.com").configure_cert(server)
    server.set_alpn_protocols(["teleport-reversetunnelv2", "teleport-reversetunnel"])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    client.set_alpn_protocols(["teleport-reversetunnel"])
    return server, client


async def serve_once(handle: object) -> tuple[asyncio.AbstractServer, int]:
    """A plain TCP listener whose accepted sockets go to ``handle(sock)`` (a coroutine)."""
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    port = lsock.getsockname()[1]

    handlers: set[asyncio.Future[None]] = set()

    async def accept() -> None:
        while True:
            sock, _ = await loop.sock_accept(lsock)
            handler = asyncio.ensure_future(handle(sock))  # type: ignore[operator]
            handlers.add(handler)
            handler.add_done_callback(handlers.discard)

    task = asyncio.ensure_future(accept())

    class _Server:
        def close(self) -> None:
            task.cancel()
            for handler in handlers:
                handler.cancel()
            lsock.close()

    return _Server(), port  # type: ignore[return-value]


async def serve_failing_handshakes(server_ctx: ssl.SSLContext, timeout: float
                                   ) -> tuple[asyncio.AbstractServer, int, asyncio.Future[BaseException]]:
    """:func:`serve_once` with ``accept_tls`` as the handler; the future gets what its handshake raised."""
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handle(sock: socket.socket) -> None:
        try:
            await tls_link.accept_tls(sock, Collect(), server_ctx, timeout)
        except BaseException as exc:
            if not outcome.done():
                outcome.set_result(exc)
            if not isinstance(exc, Exception):
                raise

    server, port = await serve_once(handle)
    return server, port, outcome


async def test_both_sides_carry_records_both_ways_and_close_notify(ca: trustme.CA) -> None:
    server_ctx, client_ctx = contexts(ca)
    served: asyncio.Future[tuple[asyncio.Transport, Collect]] = asyncio.get_running_loop().create_future()

    async def handle(sock: socket.socket) -> None:
        app = Collect(reply=True)
        served.set_result((await tls_link.accept_tls(sock, app, server_ctx, 5.0), app))

    server, port = await serve_once(handle)
    client = Collect()
    transport, got = await dial(lambda: client, "127.0.0.1", port, ssl_context=client_ctx,
                                server_hostname="proxy.example.com", lean_tls=True)
    assert got is client and isinstance(transport, _TLSTransport)
    assert transport.get_extra_info("ssl_object").selected_alpn_protocol() == "teleport-reversetunnel"
    assert transport.get_extra_info("peername")[1] == port
    s_transport, s_app = await asyncio.wait_for(served, 5)
    assert s_transport.get_extra_info("ssl_object").selected_alpn_protocol() == "teleport-reversetunnel"
    # Many small records, then one that spans several (16 KiB each), echoed back.
    for i in range(200):
        transport.write(b"%03d," % i)
    big = bytes(range(256)) * 1200
    transport.write(big)
    expected = b"".join(b"%03d," % i for i in range(200)) + big
    async with asyncio.timeout(10):
        while len(client.data) < len(expected):
            await asyncio.sleep(0.01)
    assert bytes(client.data) == expected == bytes(s_app.data)
    transport.close()  # close_notify: the server's application sees the end of the stream
    await asyncio.wait_for(s_app.eof, 5)
    server.close()


async def test_stock_tls_peers_interoperate(ca: trustme.CA) -> None:
    """The client against the loop's own TLS server, the server against the loop's TLS client."""
    server_ctx, client_ctx = contexts(ca)
    loop = asyncio.get_running_loop()
    stock = await loop.create_server(lambda: Collect(reply=True), "127.0.0.1", 0, ssl=server_ctx)
    port = stock.sockets[0].getsockname()[1]
    client = Collect()
    transport, _ = await dial(lambda: client, "127.0.0.1", port, ssl_context=client_ctx,
                              server_hostname="proxy.example.com", lean_tls=True)
    transport.write(b"ping")
    async with asyncio.timeout(5):
        while client.data != b"ping":
            await asyncio.sleep(0.01)
    transport.close()
    stock.close()

    served: asyncio.Future[Collect] = loop.create_future()

    async def handle(sock: socket.socket) -> None:
        app = Collect(reply=True)
        await tls_link.accept_tls(sock, app, server_ctx, 5.0)
        served.set_result(app)

    server, port = await serve_once(handle)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                  server_hostname="proxy.example.com")
    writer.write(b"pong")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"pong"
    writer.close()
    server.close()


async def test_untrusted_server_is_refused_and_the_server_gets_the_alert(ca: trustme.CA) -> None:
    server_ctx, _ = contexts(ca)
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    trustme.CA().configure_trust(stranger)  # another CA
    server, port, failed = await serve_failing_handshakes(server_ctx, 5.0)
    with pytest.raises(DialError, match="certificate verification failed"):
        await dial(Collect, "127.0.0.1", port, ssl_context=stranger, server_hostname="proxy.example.com",
                   lean_tls=True)
    # The client's OpenSSL sent its alert before closing, and the server read it as such.
    assert "UNKNOWN_CA" in str(await asyncio.wait_for(failed, 5)).upper()
    server.close()


async def test_refused_client_certificate_alert_reaches_openssl_s_client(ca: trustme.CA, tmp_path: Path) -> None:
    """A failed server handshake sends OpenSSL's alert (uvloop's SSL protocol closes without it)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    server_ctx, _ = contexts(ca)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    server, port, failed = await serve_failing_handshakes(server_ctx, 5.0)
    other = trustme.CA().issue_cert("client")  # a client certificate from an unknown CA
    cert = tmp_path / "client.pem"
    other.private_key_and_cert_chain_pem.write_to_path(str(cert))
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-cert", str(cert), "-tls1_2",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert isinstance(await asyncio.wait_for(failed, 5), ssl.SSLError)
    assert b"alert unknown ca" in out.lower() or b"alert number 48" in out.lower(), out[-600:]
    server.close()


async def test_silent_client_times_out_and_its_socket_is_closed(ca: trustme.CA) -> None:
    server_ctx, _ = contexts(ca)
    server, port, outcome = await serve_failing_handshakes(server_ctx, 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # says nothing
    assert isinstance(await asyncio.wait_for(outcome, 5), TimeoutError)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()
    server.close()


async def test_peer_gone_during_handshake_is_a_connection_reset(ca: trustme.CA) -> None:
    server_ctx, _ = contexts(ca)
    server, port, outcome = await serve_failing_handshakes(server_ctx, 5.0)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x16\x03\x01\x00")  # the start of a record, then gone
    await writer.drain()
    writer.close()
    assert isinstance(await asyncio.wait_for(outcome, 5), ConnectionResetError)
    server.close()
