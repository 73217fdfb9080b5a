"""The Postgres front: a plain startup packet on the proxy, answered in Postgres' own protocol (glue).

psql and libpq start in plain text (PostgreSQL protocol v3, "Message Flow / SSL Session
Encryption"): ``GSSENCRequest`` is answered ``N`` (not offered), ``SSLRequest`` ``S``, after
which the ClientHello follows and TLS is terminated here with the proxy's certificate (a client
certificate is requested and checked against the cluster CA). The ``StartupMessage`` then
arrives inside TLS and goes to ``on_startup`` (the database proxy, once a database service
exists). A plain-text ``StartupMessage`` is closed without an answer, as Teleport does, and a
``CancelRequest`` is dropped.

Exactly the startup bytes are read from the socket (never more), so the TLS stack still finds the
ClientHello in the kernel's queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from tpemu.net.sockets import close_with_answer, read_exact
from tpemu.net.tls import ContextCache
from tpemu.net.tls_alerting import accept_stream_with_alerts
from tpemu.proxy.frontdoor import Accepted
from tpemu.wire import postgres as pg
from tpemu.wire.errors import WireError

log = logging.getLogger(__name__)

#: What libpq >= 17 offers (``postgresql``) and what tsh-style tunnels offer.
POSTGRES_ALPN = ("postgresql", "teleport-postgres")

OnStartup = Callable[[Accepted, pg.StartupMessage, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_startup_packet(read: Callable[[int], Awaitable[bytes]]) -> pg.StartupPacket:
    """Read one length-prefixed startup packet with ``read(n)`` (exact reads)."""
    head = await read(8)
    packet = pg.parse_startup(head)
    if packet is None:
        length = int.from_bytes(head[:4], "big")
        packet = pg.parse_startup(head + await read(length - 8))
        assert packet is not None
    return packet


async def refuse_not_available(acc: Accepted, startup: pg.StartupMessage, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
    """The ``on_startup`` used while no database service exists."""
    msg = "database access (postgres) is not available in this cluster"
    log.warning("%s user=%s database=%s: %s", acc.ctx, startup.get("user"), startup.get("database"), msg)
    writer.write(pg.encode_error_response(msg, code="08004"))
    await writer.drain()
    writer.close()


async def postgres_front(acc: Accepted, contexts: ContextCache, on_startup: OnStartup,
                         timeout: float = 10.0) -> None:
    """Serve the plain-text start of a Postgres connection, then hand the TLS stream on."""
    loop = asyncio.get_running_loop()
    sock = acc.sock
    try:
        async with asyncio.timeout(timeout):
            for _ in range(3):  # GSSENCRequest, then SSLRequest, then (at most) a StartupMessage
                packet = await read_startup_packet(lambda n: read_exact(sock, n))
                if isinstance(packet, pg.GSSENCRequest):
                    await loop.sock_sendall(sock, b"N")
                    continue
                if isinstance(packet, pg.CancelRequest):
                    log.info("%s: CancelRequest for backend pid %d dropped (no session to cancel)", acc.ctx, packet.pid)
                    close_with_answer(sock)
                    return
                if isinstance(packet, pg.StartupMessage):
                    # Teleport's lib/srv/db/postgres/proxy.go handleStartup: a StartupMessage outside
                    # TLS is trace.BadParameter("expected tls connection, got %T") and the connection
                    # is closed without a Postgres answer (psql: "server closed the connection
                    # unexpectedly"); the hint goes to the log.
                    log.warning("%s: expected tls connection, got a plain-text StartupMessage (user=%s): connect "
                                "with sslmode=require or stronger and the client certificate from 'tpemu db login'",
                                acc.ctx, packet.get("user"))
                    close_with_answer(sock)
                    return
                await loop.sock_sendall(sock, b"S")
                ctx = contexts.get(POSTGRES_ALPN)
                reader, writer = await accept_stream_with_alerts(sock, ctx, timeout)  # alerts on refusal
                startup = await read_startup_packet(reader.readexactly)
                break
            else:
                close_with_answer(sock, pg.encode_error_response("too many startup requests", code="08P01"))
                return
    except TimeoutError:
        log.warning("%s: Postgres startup not completed within %gs", acc.ctx, timeout)
        close_with_answer(sock)
        return
    except WireError as exc:
        log.warning("%s: bad Postgres startup packet: %s", acc.ctx, exc)
        close_with_answer(sock, pg.encode_error_response(f"invalid startup packet: {exc}", code="08P01"))
        return
    except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
        log.info("%s: client left during Postgres startup: %s", acc.ctx, exc)
        close_with_answer(sock)
        return
    if not isinstance(startup, pg.StartupMessage):
        log.warning("%s: expected a StartupMessage inside TLS, got %s", acc.ctx, type(startup).__name__)
        writer.write(pg.encode_error_response("expected a StartupMessage after TLS", code="08P01"))
        writer.close()
        return
    await on_startup(acc, startup, reader, writer)
