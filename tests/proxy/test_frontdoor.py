"""The front door over loopback: real TLS handshakes, splicing, refusals, slow and hostile clients.

Every test runs on uvloop (the default loop of ``tpemu start``) and on plain asyncio.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import ssl
import threading
import time
from typing import Any

import pytest
import trustme

from tests.conftest import ProxyFactory, base_config, eventually, wait_closed, web_port
from tpemu import testing
from tpemu.proxy.decide import ListenerKind
from tpemu.wire import postgres as pg
from tpemu.wire import proxy_protocol, ssh

pytestmark = pytest.mark.both_loops


def client_ctx(ca: Any = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def http_get(port: int, path: str, ctx: ssl.SSLContext | None,
                   host: str = "localhost") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname=host if ctx else None)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    data = await wait_closed(reader)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


async def test_webapi_ping_over_tls_with_every_alpn_offer(proxy_factory: ProxyFactory) -> None:
    svc = await proxy_factory(public_addr=["proxy.example.com:443", "other.example.com"])
    port = web_port(svc)
    for alpn in (["http/1.1"], ["h2", "http/1.1"], None):
        status, headers, body = await http_get(port, "/webapi/ping", client_ctx(svc.tls_files.ca, alpn))
        assert status == 200 and headers["content-type"] == "application/json"
        ping = json.loads(body)
        assert ping["proxy"]["ssh"]["web_listen_addr"] == f"127.0.0.1:{port}"
        assert ping["proxy"]["ssh"]["public_addr"] == "proxy.example.com:443"
        assert ping["proxy"]["ssh"]["dial_timeout"] == 30_000_000_000
        assert ping["proxy"]["tls_routing_enabled"] is True
        assert ping["cluster_name"] == "tpemu.local" and ping["auth"]["type"] == "local"
    status, _, body = await http_get(port, "/webapi/find", client_ctx(svc.tls_files.ca))
    assert status == 200 and json.loads(body)["auth"]["type"] == ""
    status, _, body = await http_get(port, "/webapi/nope", client_ctx(svc.tls_files.ca))
    # lib/httplib RouteNotFoundResponse
    assert status == 404 and json.loads(body)["error"] == {"message": "path not found"}
    assert json.loads(body)["fields"]["proxyVersion"]["major"] == 17


async def test_cert_has_teleport_sans(proxy_factory: ProxyFactory) -> None:
    svc = await proxy_factory()
    ctx = client_ctx(svc.tls_files.ca)
    # The hex form of the cluster name (seed, "Authentication handshake failed").
    for name in ("localhost", "746c70656d752e6c6f63616c.teleport.cluster.local", "x.teleport.cluster.local"):
        status, _, _ = await http_get(web_port(svc), "/webapi/ping", ctx, host=name)
        assert status == 200


async def test_no_session_tickets_as_teleports_proxy(proxy_factory: ProxyFactory) -> None:
    """Teleport's proxy sends no session tickets (lib/utils/tls.go SetupTLSConfig:
    SessionTicketsDisabled = true), in TLS 1.3 (no NewSessionTicket) and TLS 1.2 (no ticket
    extension). A server with OpenSSL's default (two TLS 1.3 tickets) serves the same client as a
    control, so the check sees tickets when there are some."""
    from tpemu.net.tls import server_context

    svc = await proxy_factory()

    async def session_after_get(port: int, version: ssl.TLSVersion) -> ssl.SSLSession:
        ctx = client_ctx(svc.tls_files.ca)
        ctx.maximum_version = version
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        writer.write(f"GET /webapi/ping HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode())
        data = await wait_closed(reader)  # the tickets, if any, came before the answer
        sslobj = writer.get_extra_info("ssl_object")
        writer.close()
        assert data.startswith(b"HTTP/1.1 200") and sslobj.version() == {
            ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
        session = sslobj.session
        assert session is not None
        return session

    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        assert not (await session_after_get(web_port(svc), version)).has_ticket, version

    tickets = server_context(svc.tls_files.cert, svc.tls_files.key)
    tickets.num_tickets = 2
    tickets.options &= ~ssl.OP_NO_TICKET

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    control = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tickets)
    try:
        port = control.sockets[0].getsockname()[1]
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            assert (await session_after_get(port, version)).has_ticket, version
    finally:
        control.close()
        await control.wait_closed()


async def test_plain_http_is_closed_without_an_answer(proxy_factory: ProxyFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    # lib/multiplexer/multiplexer.go: detectProto knows HTTP, but Mux.protocolListener has no HTTP
    # listener, so detectAndForward logs "Detected an HTTP request. If this is for a health check,
    # use an HTTPS request instead." / "Closing HTTP connection: HTTP listener is disabled." and
    # closes the connection: no redirect, no 400, not one byte.
    caplog.set_level(logging.INFO)
    svc = await proxy_factory()
    port = web_port(svc)
    for request in (b"GET /webapi/ping HTTP/1.1\r\nHost: localhost\r\n\r\n",
                    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        try:
            answer = await wait_closed(reader)
        except ConnectionResetError:  # the request left unread: Linux resets, as after Go's Close
            answer = b""
        writer.close()
        assert answer == b""
    await eventually(lambda: caplog.text.count("Detected an HTTP request. If this is for a health check, use an "
                                               "HTTPS request instead. Closing HTTP connection: HTTP listener is "
                                               "disabled") == 2)
    # The web port still serves HTTPS afterwards.
    status, _, _ = await http_get(port, "/webapi/ping", client_ctx(svc.tls_files.ca))
    assert status == 200


async def test_unavailable_service_is_answered_after_the_handshake(proxy_factory: ProxyFactory,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    # lib/srv/alpnproxy/proxy.go handleConn: the handler is chosen, the TLS handshake negotiates
    # (NextProtos = SupportedProtocols), and only then does the service answer, in its protocol.
    svc = await proxy_factory()
    caplog.set_level(logging.INFO)
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc), ssl=client_ctx(
        None, ["teleport-proxy-ssh"]), server_hostname="proxy.example")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "teleport-proxy-ssh"
    data = await wait_closed(reader)
    writer.close()
    assert data == ssh.encode_ssh_ident("tpemu") + ssh.encode_disconnect(
        ssh.DISCONNECT_SERVICE_NOT_AVAILABLE, "SSH proxy is not available in this cluster")
    assert "route=ssh-proxy (ALPN 'teleport-proxy-ssh')" in caplog.text
    # Offered [teleport-postgres, teleport-postgres-ping]: Teleport's order puts -ping forms first.
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc), ssl=client_ctx(
        None, ["teleport-postgres", "teleport-postgres-ping"]), server_hostname="proxy.example")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "teleport-postgres-ping"
    writer.close()


async def test_unknown_alpn_is_closed_without_an_alert(proxy_factory: ProxyFactory,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # lib/srv/alpnproxy/proxy.go getHandleDescBasedOnALPNVal: no handler → BadParameter, the
    # connection is closed; the ClientHello was read through readOnlyConn (conn.go), so no alert.
    svc = await proxy_factory()
    caplog.set_level(logging.INFO)
    with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", web_port(svc), ssl=client_ctx(None, ["nope", "nada"]),
                                      server_hostname="proxy.example")
    words = 'failed to find ALPN handler based on received client supported protocols ["nope" "nada"]'
    deadline = time.monotonic() + 5
    while words not in caplog.text and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert words in caplog.text
    # teleport-reversetunnelv2 alone is no handler's name either (only load balancers route on it).
    with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", web_port(svc), ssl=client_ctx(None, ["teleport-reversetunnelv2"]),
                                      server_hostname="proxy.example")


async def test_plain_ssh_gets_ssh_disconnect(proxy_factory: ProxyFactory) -> None:
    svc = await proxy_factory()
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc))
    writer.write(b"SSH-2.0-OpenSSH_9.2p1\r\n")
    data = await wait_closed(reader)
    assert data.startswith(b"SSH-2.0-tpemu\r\n")
    assert data[len(b"SSH-2.0-tpemu\r\n"):] == ssh.encode_disconnect(
        ssh.DISCONNECT_SERVICE_NOT_AVAILABLE, "SSH proxy is not available in this cluster")


async def test_postgres_sslrequest_gets_s_then_tls_then_error(proxy_factory: ProxyFactory) -> None:
    svc = await proxy_factory()
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc))
    writer.write(pg.GSSENC_REQUEST)
    assert await reader.readexactly(1) == b"N"
    writer.write(pg.SSL_REQUEST)
    assert await reader.readexactly(1) == b"S"
    await writer.start_tls(client_ctx(svc.tls_files.ca), server_hostname="localhost")
    writer.write(pg.encode_startup({"user": "alice", "database": "postgres"}))
    data = await wait_closed(reader)
    assert data[:1] == b"E" and b"database access (postgres) is not available in this cluster" in data


async def test_plaintext_postgres_startup_is_closed_as_teleport_closes_it(proxy_factory: ProxyFactory,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    # lib/srv/db/postgres/proxy.go handleStartup: "expected tls connection, got %T", no answer.
    svc = await proxy_factory()
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc))
    writer.write(pg.encode_startup({"user": "alice"}))
    data = await wait_closed(reader)
    assert data == b""
    assert "expected tls connection, got a plain-text StartupMessage (user=alice)" in caplog.text


async def test_garbage_refused_with_readable_log(proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture) -> None:
    svc = await proxy_factory()
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc))
    writer.write(b"hello\x01\x02 world")
    assert await wait_closed(reader) == b""
    await asyncio.sleep(0.05)
    assert "refused (unknown-protocol): unrecognized protocol: first bytes 68 65 6c 6c 6f 01 02" in caplog.text
    assert svc.door.stats.refused["unknown-protocol"] == 1


async def test_proxy_protocol_off_is_refused_on_is_used(proxy_factory: ProxyFactory,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    header = proxy_protocol.encode_v2(("192.0.2.7", 40000), ("127.0.0.1", 3080))
    off = await proxy_factory(proxy_protocol=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(off))
    writer.write(header + b"SSH-2.0-x\r\n")
    assert await wait_closed(reader) == b""
    await asyncio.sleep(0.05)
    assert "PROXY protocol v2 header received but proxy_protocol is off for the web listener" in caplog.text
    on = await proxy_factory(proxy_protocol=True)
    for hdr in (header, proxy_protocol.encode_v1(("192.0.2.7", 40000), ("127.0.0.1", 3080))):
        reader, writer = await asyncio.open_connection("127.0.0.1", web_port(on))
        writer.write(hdr + b"SSH-2.0-probe\r\n")  # plain SSH: answered, so the header was accepted
        assert (await wait_closed(reader)).startswith(b"SSH-2.0-")
        await eventually(lambda: "peer=192.0.2.7:40000 listener=web proto=ssh" in caplog.text)
        caplog.clear()


class Backend:
    """A TCP server recording the first bytes of each connection; echoes, or replies TLS."""

    def __init__(self, tls_ctx: ssl.SSLContext | None = None) -> None:
        self.tls_ctx = tls_ctx
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        first = await reader.read(65536)
        self.received.append(first)
        writer.write(b"echo:" + first[:8])
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write(b"bye")  # after the client's EOF: the half-close must let this through
            await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_passthrough_splices_from_byte_zero_with_proxy_header(proxy_factory: ProxyFactory) -> None:
    backend = Backend()
    bport = await backend.start()
    svc = await proxy_factory(passthrough=[
        {"name": "pg", "alpn": ["teleport-postgres"], "target": f"127.0.0.1:{bport}", "send_proxy": "v2"},
        {"name": "sshd", "protocol": "ssh", "target": f"127.0.0.1:{bport}"}])
    hello = testing.client_hello("db.example", ["teleport-postgres"])
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc))
    local = writer.get_extra_info("sockname")
    writer.write(hello)
    await asyncio.sleep(0.1)
    writer.write_eof()
    data = await wait_closed(reader)
    assert data.endswith(b"bye")
    header = proxy_protocol.parse_proxy_header(backend.received[0])
    assert header is not None and header.src == (local[0], local[1])
    rest = backend.received[0][header.length:]
    assert hello.startswith(rest) and rest  # the ClientHello, untouched, from its first byte
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc))
    writer.write(b"SSH-2.0-client\r\n")
    assert (await reader.readexactly(13)) == b"echo:SSH-2.0-"
    writer.close()
    await backend.close()


async def test_passthrough_to_a_backend_that_speaks_first(proxy_factory: ProxyFactory) -> None:
    """An SSH-style backend greets as soon as it is dialled, before the client side of the splice
    exists: the greeting reaches the client whole, and the backend gets the PROXY header and the
    client's bytes in order."""
    got: list[bytes] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-backend\r\n")
        data = b""
        while chunk := await reader.read(65536):
            data += chunk
        got.append(data)
        writer.write(b"bye")
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    bport = server.sockets[0].getsockname()[1]
    svc = await proxy_factory(passthrough=[{"name": "sshd", "protocol": "ssh", "target": f"127.0.0.1:{bport}",
                                            "send_proxy": "v1"}])
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc))
        writer.write(b"SSH-2.0-client\r\n")
        assert await reader.readexactly(17) == b"SSH-2.0-backend\r\n"
        writer.write(b"more")
        writer.write_eof()
        assert await wait_closed(reader) == b"bye"
        writer.close()
    assert len(got) == 20
    for data in got:
        assert data.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ") and data.endswith(b"\r\nSSH-2.0-client\r\nmore")
    await eventually(lambda: svc.door.stats.spliced == 0)
    server.close()


def _reset(sock_or_writer: Any) -> None:
    """Close with SO_LINGER 0: the kernel sends RST, not FIN."""
    sock = sock_or_writer.get_extra_info("socket") if hasattr(sock_or_writer, "get_extra_info") else sock_or_writer
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


async def test_passthrough_churn_with_resets_leaves_no_descriptor(proxy_factory: ProxyFactory) -> None:
    """Backends that reset at once (from a thread, racing the client side of the splice being
    made; tests/net/test_pipe.py makes each order deterministic), greet and leave, or echo;
    clients that reset after their first bytes or half-close: every splice ends (``spliced`` back
    to 0), no descriptor is left, and a normal connection works afterwards."""
    resetter = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def reset_all() -> None:
        resetter.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = resetter.accept()
            except (TimeoutError, OSError):
                continue
            _reset(conn)
            conn.close()

    thread = threading.Thread(target=reset_all, daemon=True)
    thread.start()
    greet = {"n": 0}

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greet["n"] += 1
        try:
            if greet["n"] % 2:
                writer.write(b"SSH-2.0-greeter\r\n")  # speak and leave
            else:
                while chunk := await reader.read(65536):
                    writer.write(chunk)
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    bport = server.sockets[0].getsockname()[1]
    svc = await proxy_factory(passthrough=[
        {"name": "reset", "alpn": ["x-reset"], "target": f"127.0.0.1:{resetter.getsockname()[1]}", "send_proxy": "v1"},
        {"name": "sshd", "protocol": "ssh", "target": f"127.0.0.1:{bport}", "send_proxy": "v1"}])
    port = web_port(svc)
    hello = testing.client_hello("reset.example", ["x-reset"])

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello if i % 3 == 0 else b"SSH-2.0-client\r\n")
        try:
            if i % 2:
                await reader.read(1)
                _reset(writer)
            else:
                writer.write_eof()
                await wait_closed(reader)
        except OSError:
            pass
        finally:
            writer.close()

    try:
        await one(0)  # warm up lazy imports and the loop's own descriptors
        before = open_fds()
        for _ in range(4):
            await asyncio.gather(*(one(i) for i in range(24)))
        await eventually(lambda: svc.door.stats.spliced == 0, 10, "every splice ended")
        await eventually(lambda: svc.door.stats.active == 0, 10, "every dial ended")
        await eventually(lambda: open_fds() <= before + 2, 10, "no descriptor left behind")
        greet["n"] = 1  # the next backend connection echoes
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"SSH-2.0-client\r\n")
        writer.write_eof()
        assert (await wait_closed(reader)).endswith(b"SSH-2.0-client\r\n")
        writer.close()
    finally:
        stop.set()
        thread.join(5)
        resetter.close()
        server.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_passthrough_real_tls_end_to_end_and_bulk_integrity(proxy_factory: ProxyFactory) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("backend.example")
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(sctx)
    sctx.set_alpn_protocols(["teleport-tcp"])
    total = 0
    digest = hashlib.sha256()
    blob = bytes(range(256)) * 4096
    expected = 16 * len(blob)

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal total
        while total < expected and (data := await reader.read(1 << 16)):
            total += len(data)
            digest.update(data)
        writer.write(b"done")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=sctx)
    bport = server.sockets[0].getsockname()[1]
    svc = await proxy_factory(passthrough=[{"name": "app", "sni": ["backend.example"],
                                            "target": f"127.0.0.1:{bport}"}])
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)
    cctx.set_alpn_protocols(["teleport-tcp"])
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc), ssl=cctx,
                                                   server_hostname="backend.example")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "teleport-tcp"
    sent = hashlib.sha256()
    for _ in range(16):  # 16 MiB through the router; backpressure must hold it together
        writer.write(blob)
        sent.update(blob)
        await writer.drain()
    assert await reader.readexactly(4) == b"done"
    assert total == expected and digest.hexdigest() == sent.hexdigest()
    writer.close()
    server.close()


async def test_backend_down_closes_client_with_log(proxy_factory: ProxyFactory,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    svc = await proxy_factory(passthrough=[{"name": "gone", "sni": ["gone.example"], "target": f"127.0.0.1:{dead}"}])
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(svc))
    writer.write(testing.client_hello("gone.example"))
    assert await wait_closed(reader) == b""
    await asyncio.sleep(0.05)
    assert f"backend 127.0.0.1:{dead} unreachable" in caplog.text


def _full_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it
    hangs (retrying) instead of failing."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    fillers = []
    for _ in range(8):
        f = socket.socket()
        f.settimeout(0.3)
        fillers.append(f)
        try:
            f.connect(lst.getsockname())
        except TimeoutError:
            break
    else:
        raise AssertionError("the accept queue never filled up")
    return lst, fillers


@pytest.mark.parametrize("how", ["task", "driven"])
async def test_passthrough_connect_deadline(caplog: pytest.LogCaptureFixture, how: str) -> None:
    """Dials to a backend that never answers end at their deadline (checked every
    DEADLINE_TICK, one timer for all of them): the clients are closed, the reason logged, no
    deadline is left pending, and a dial that connects in time is not touched. ``task``: the
    coroutine awaited in a task (as auth_routes does); ``driven``: started without a task, as the
    front door does (start_splice), its end seen in ``stats.active``."""
    from tpemu.config import Addr
    from tpemu.proxy import passthrough
    from tpemu.proxy.frontdoor import Accepted, Stats
    from tpemu.proxy.route import Route, RouteKind

    loop = asyncio.get_running_loop()
    hung, fillers = _full_listener()
    alive = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    front = socket.create_server(("127.0.0.1", 0))
    clients: list[socket.socket] = []
    stats = Stats()

    def accepted(port: int) -> Accepted:
        c = socket.create_connection(front.getsockname())
        clients.append(c)
        sock, peer = front.accept()
        route = Route(RouteKind.PASSTHROUGH, "passthrough/t", "test", target=Addr("127.0.0.1", port))
        return Accepted(sock, len(clients), ListenerKind.WEB, peer, peer, None, route, None, None)

    ports = [hung.getsockname()[1]] * 3 + [alive.sockets[0].getsockname()[1]]
    try:
        t0 = time.monotonic()
        async with asyncio.timeout(10):  # (a deadline that never fires would hang here for minutes)
            if how == "task":
                await asyncio.gather(*(passthrough.splice_to_target(accepted(p), connect_timeout=0.3, loop=loop)
                                       for p in ports))
            else:
                for p in ports:
                    passthrough.start_splice(accepted(p), stats, loop, connect_timeout=0.3)
                assert stats.active == 4  # dialling (the live one connects on a later loop turn)
                await eventually(lambda: stats.active == 0, 10, "every driven dial ended")
        elapsed = time.monotonic() - t0
        assert 0.3 <= elapsed < 3, elapsed
        assert caplog.text.count("unreachable: connect timed out after 0.3s") == 3
        deadlines = passthrough._deadlines_of(loop)
        assert not deadlines.pending
        await eventually(lambda: deadlines.timer is None, 2, "the sweep timer stops when nothing is pending")
        for c in clients[:3]:
            c.settimeout(5)
            assert c.recv(10) == b""  # closed by the proxy
        clients[3].settimeout(0.2)
        with pytest.raises(TimeoutError):
            clients[3].recv(10)  # spliced, still open
        if how == "driven":
            assert stats.spliced == 1
    finally:
        for c in clients:
            c.close()
        for f in fillers:
            f.close()
        hung.close()
        front.close()
        alive.close()


async def test_passthrough_dials_in_flight_end_at_shutdown(proxy_factory: ProxyFactory) -> None:
    """A pass-through dial runs without a task: closing the service cancels the dials still in
    flight (to a backend that never answers, within their 10 s connect deadline) and waits for
    them: each client is closed, nothing stays counted or pending."""
    from tpemu.proxy import passthrough

    hung, fillers = _full_listener()
    svc = await proxy_factory(passthrough=[
        {"name": "hung", "alpn": ["x-hung"], "target": f"127.0.0.1:{hung.getsockname()[1]}"}])
    port = web_port(svc)
    hello = testing.client_hello("hung.example", ["x-hung"])
    conns = []
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(hello)
            conns.append((reader, writer))
        await eventually(lambda: svc.door.stats.active == 3, 5, "three dials in flight")
        t0 = time.monotonic()
        await svc.close()
        assert time.monotonic() - t0 < 3  # not their 10 s deadline
        assert svc.door.stats.active == 0 and svc.door.stats.spliced == 0
        assert not passthrough._deadlines_of(asyncio.get_running_loop()).pending
        for reader, _ in conns:
            assert await wait_closed(reader) == b""
    finally:
        for _, writer in conns:
            writer.close()
        for f in fillers:
            f.close()
        hung.close()


async def test_passthrough_handler_bug_is_logged_and_closes_the_client(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected exception inside a driven splice (here: a route with no target) is logged
    with the connection's context, the client is closed, and it no longer counts as active."""
    from tpemu.proxy import passthrough
    from tpemu.proxy.frontdoor import Accepted, Stats
    from tpemu.proxy.route import Route, RouteKind

    front = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(front.getsockname())
    sock, peer = front.accept()
    stats = Stats()
    try:
        route = Route(RouteKind.PASSTHROUGH, "passthrough/broken", "test", target=None)
        passthrough.start_splice(Accepted(sock, 7, ListenerKind.WEB, peer, peer, None, route, None, None), stats,
                                 asyncio.get_running_loop())
        assert stats.active == 0
        assert "conn=7" in caplog.text and "handler failed" in caplog.text
        c.settimeout(5)
        assert c.recv(10) == b""
    finally:
        c.close()
        front.close()


async def test_slow_truncated_and_oversized_do_not_delay_others(proxy_factory: ProxyFactory,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    svc = await proxy_factory(sniff_timeout="1s", max_client_hello=2048)
    port = web_port(svc)
    hello = testing.client_hello("slow.example", ["teleport-proxy-ssh"])
    # A slow client: one byte every 100 ms.
    slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)

    async def dribble() -> None:
        for b in hello[:30]:
            slow_w.write(bytes([b]))
            await asyncio.sleep(0.1)

    task = asyncio.create_task(dribble())
    # A truncated hello, then FIN.
    tr_r, tr_w = await asyncio.open_connection("127.0.0.1", port)
    tr_w.write(hello[:200])
    tr_w.write_eof()
    # An oversized hello (header says 60 KB).
    big = testing.large_client_hello("big.example", target_size=4000, records=1)
    big_r, big_w = await asyncio.open_connection("127.0.0.1", port)
    big_w.write(big)
    # Random garbage from many clients.
    junk = []
    for i in range(20):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(bytes([0x80 + i]) * 7)
        junk.append((r, w))
    # Meanwhile a well-behaved client is served quickly.
    t0 = time.monotonic()
    status, _, _ = await http_get(port, "/webapi/ping", client_ctx(svc.tls_files.ca))
    assert status == 200 and time.monotonic() - t0 < 0.5
    assert await wait_closed(tr_r) == b""
    assert (await wait_closed(big_r))[:2] == b"\x15\x03"  # a TLS alert
    for r, _ in junk:
        assert await wait_closed(r) == b""
    assert await wait_closed(slow_r, 3) == b""
    task.cancel()
    await asyncio.sleep(0.05)
    text = caplog.text
    assert "refused (truncated): peer closed after sending 200 bytes: the TLS ClientHello is incomplete" in text
    assert "ClientHello exceeds the 2048-byte limit" in text
    assert "refused (timeout): the TLS ClientHello not complete within 1s" in text
    assert svc.door.stats.pending == 0


async def test_idle_client_times_out_and_max_pending(proxy_factory: ProxyFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    svc = await proxy_factory(sniff_timeout="500ms", max_pending=2)
    port = web_port(svc)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    for r, _ in idle:
        assert await wait_closed(r, 3) == b""
    await eventually(lambda: "no bytes within 0.5s" in caplog.text, 2)
    # At the cap, the connection that waited longest is shed, not the newcomer (issue 16: legitimate
    # clients were reset while slowloris connections held every pending slot).
    svc = await proxy_factory(sniff_timeout="5s", max_pending=2)
    port = web_port(svc)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    for _, w in idle:
        w.write(b"\x16\x03\x01\x02\x00\x01")  # a slow client: accepted (TCP_DEFER_ACCEPT wakes on data), never finished
    await eventually(lambda: len(svc.door.waiting) == 2, 3, "two slow clients pending")
    oldest = next(iter(svc.door.waiting.values())).socket_peer
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"SSH-2.0-probe\r\n")
    assert (await wait_closed(reader, 2)).startswith(b"SSH-2.0-")
    assert svc.door.stats.refused["shed-oldest"] == 1 and svc.door.stats.refused["too-many-pending"] == 0
    shed = next(r for r, w in idle if w.get_extra_info("sockname")[1] == oldest[1])
    assert await wait_closed(shed, 1) == b""
    assert len(svc.door.waiting) == 1
    for _, w in idle:
        w.close()


async def test_separate_mode_listeners(proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture) -> None:
    cfg = base_config(listen_addr="127.0.0.1:0", tunnel_listen_addr="127.0.0.1:0", peer_listen_addr="127.0.0.1:0",
                      mysql_listen_addr="127.0.0.1:0", postgres_listen_addr="127.0.0.1:0",
                      mongo_listen_addr="127.0.0.1:0")
    cfg["auth_service"] = {"proxy_listener_mode": "separate"}
    svc = await proxy_factory(cfg)
    bound = svc.info.bound
    # Plain bytes on a TLS-only listener: Go's message; the peer listener is Teleport's gRPC server
    # (lib/proxy/peer), which closes without a byte (only net/http servers answer HTTP with 400).
    reader, writer = await asyncio.open_connection("127.0.0.1", bound[ListenerKind.PEER].port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    assert await wait_closed(reader) == b""
    await asyncio.sleep(0.05)
    assert "tls: first record does not look like a TLS handshake: got http on the TLS-only peer listener" in caplog.text
    # MySQL: the server speaks first; no service yet → an ERR packet as the greeting.
    reader, writer = await asyncio.open_connection("127.0.0.1", bound[ListenerKind.MYSQL].port)
    err = await wait_closed(reader)
    assert err[4] == 0xFF and b"database access (mysql) is not available in this cluster" in err
    # SSH listener takes SSH only; the tunnel listener routes SSH to the reverse tunnel server.
    reader, writer = await asyncio.open_connection("127.0.0.1", bound[ListenerKind.TUNNEL].port)
    writer.write(b"SSH-2.0-agent\r\n")
    assert b"reverse tunnel server is not available" in await wait_closed(reader)
    reader, writer = await asyncio.open_connection("127.0.0.1", bound[ListenerKind.SSH].port)
    writer.write(testing.client_hello("x"))
    assert (await wait_closed(reader))[:1] == b"\x15"
    # Postgres listener: SSLRequest path.
    reader, writer = await asyncio.open_connection("127.0.0.1", bound[ListenerKind.POSTGRES].port)
    writer.write(pg.SSL_REQUEST)
    assert await reader.readexactly(1) == b"S"
    ping = json.loads((await http_get(web_port(svc), "/webapi/ping", client_ctx(svc.tls_files.ca)))[2])
    assert ping["proxy"]["tls_routing_enabled"] is False
    assert ping["proxy"]["ssh"]["listen_addr"] == str(bound[ListenerKind.SSH])
    assert ping["proxy"]["ssh"]["tunnel_listen_addr"] == str(bound[ListenerKind.TUNNEL])
    assert ping["proxy"]["db"]["mysql_listen_addr"] == str(bound[ListenerKind.MYSQL])
    assert ping["proxy"]["db"]["postgres_listen_addr"] == str(bound[ListenerKind.POSTGRES])
    assert ping["proxy"]["db"]["mongo_listen_addr"] == str(bound[ListenerKind.MONGO])


async def test_plain_socket_reports_ints_and_is_closed_once_by_the_loop() -> None:
    """The door's accepted sockets (PlainSocket) answer family/type with plain ints, equal to the
    enum members, and a transport made from one closes its descriptor exactly once: afterwards the
    Python socket is detached (fileno -1), so a descriptor number reused by a new socket is never
    closed by the old object's finalizer."""
    from tpemu.proxy.frontdoor import PlainSocket

    loop = asyncio.get_running_loop()
    lst = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lst.getsockname())
    fd, _ = lst._accept()  # type: ignore[attr-defined]
    sock = PlainSocket(socket.AF_INET, socket.SOCK_STREAM, 0, fileno=fd)
    try:
        assert type(sock.family) is int and sock.family == socket.AF_INET
        assert type(sock.type) is int and sock.type == socket.SOCK_STREAM
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(exc)

        transport, _ = await loop.connect_accepted_socket(P, sock)
        transport.close()
        async with asyncio.timeout(5):
            await lost
        await eventually(lambda: sock.fileno() == -1, 5, "the socket object let go of its descriptor")
        reused = socket.socket()  # likely takes the freed number
        try:
            sock.close()  # what its finalizer would do: must not touch the reused number
            assert reused.fileno() != -1 and reused.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        finally:
            reused.close()
        client.settimeout(5)
        assert client.recv(10) == b""
    finally:
        client.close()
        lst.close()
