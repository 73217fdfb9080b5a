"""The seed's three troubleshooting cases, each reproducible on purpose (glue).

Teleport's networking reference, "Troubleshooting":

* **connection reset by peer** — :func:`reset_peer`: a fault proxy in front of the proxy whose
  ``reset_peer`` toxic (on the downstream: the proxy's first answer) ends the connection with a
  TCP RST ``after_ms`` later, as a load balancer or a dying agent does; both ends read Go's
  ``connection reset by peer`` (the client while waiting for the answer, the proxy on its next
  read or write).
* **first record does not look like a TLS handshake** — :class:`NotTLS`: a port that answers in
  plain HTTP where TLS is expected (an LB listener configured for HTTP); a TLS client gets
  ``tls: first record does not look like a TLS handshake``. The other direction — plain bytes
  sent to a TLS-only proxy listener — is refused by the front door with the same text.
* **authentication handshake failed (x509)** — :class:`L7LoadBalancer`: a layer-7 load balancer
  that terminates TLS with *its own* certificate (default names ``*.example.teleport.sh``,
  ``example.teleport.sh``, the seed's), negotiates only ``http/1.1`` (a client's Teleport ALPN
  is dropped, as by an ALB), and re-encrypts to the proxy. Teleport-internal dials through it get
  ``x509: certificate is valid for *.example.teleport.sh, example.teleport.sh, not
  <hex>.teleport.cluster.local``; the ALPN connection upgrade makes them work again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from tpemu import pki
from tpemu.faults.engine import FaultProxy
from tpemu.faults.toxics import Toxic
from tpemu.net.pipe import Pipe, park_streams
from tpemu.net.tls import new_context

log = logging.getLogger(__name__)

SEED_LB_NAMES = ("*.example.teleport.sh", "example.teleport.sh")
#: What an HTTP listener answers to bytes it cannot parse (Go's net/http, as most LBs).
PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     b"Connection: close\r\n\r\n400 Bad Request")


async def reset_peer(listen: str, upstream: str, after_ms: int = 0) -> FaultProxy:
    """A fault proxy that resets every connection ``after_ms`` after the proxy's first answer."""
    proxy = FaultProxy("reset-peer", listen, upstream)
    proxy.toxics["reset_peer_downstream"] = Toxic("reset_peer", "reset_peer_downstream", "downstream", 1.0,
                                                  {"timeout": after_ms})
    await proxy.start()
    return proxy


class NotTLS:
    """A listener that speaks plain HTTP to whoever connects (TLS clients included)."""

    def __init__(self, listen: str) -> None:
        self.listen = listen
        self._server: asyncio.Server | None = None
        self.answered = 0

    async def start(self) -> None:
        host, _, port = self.listen.rpartition(":")
        self._server = await asyncio.start_server(self._answer, host.strip("[]"), int(port))
        bound = self._server.sockets[0].getsockname()
        self.listen = f"{bound[0]}:{bound[1]}"
        log.info("not-TLS fault: plain HTTP on %s (TLS clients: \"tls: first record does not look like a TLS "
                 "handshake\")", self.listen)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                first = await reader.read(5)
            if first[:1] == b"\x16":
                log.warning("not-TLS fault: %s sent a TLS handshake to a plain HTTP port",
                            writer.get_extra_info("peername"))
            writer.write(PLAIN_HTTP_ANSWER)
            await writer.drain()
            self.answered += 1
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def lb_identity(folder: Path, names: tuple[str, ...]) -> tuple[Path, Path, Path]:
    """The load balancer's own CA and certificate for ``names`` (written to ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = pki.generate_key()
    ca = pki.make_ca("tpemu fault L7 load balancer CA", ca_key, "Load Balancer Inc")
    key = pki.generate_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0].lstrip("*."))])
    cert = pki.issue_cert(ca, ca_key, key.public_key(), subject, sans=names, ttl=dt.timedelta(days=30))
    paths = folder / "lb-ca.crt", folder / "lb.crt", folder / "lb.key"
    pki.write_public(paths[0], pki.cert_pem(ca))
    pki.write_public(paths[1], pki.cert_pem(cert))
    pki.write_private(paths[2], pki.key_pem(key))
    return paths


class L7LoadBalancer:
    """TLS terminated here with the LB's own certificate, re-encrypted to ``upstream``."""

    def __init__(self, listen: str, upstream: str, folder: Path, names: tuple[str, ...] = SEED_LB_NAMES) -> None:
        self.listen, self.upstream, self.folder, self.names = listen, upstream, folder, names
        self.ca, cert, key = lb_identity(folder, names)
        self.server_ctx = new_context(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(cert, key)
        # Only HTTP: a Teleport ALPN offered by the client is not negotiated (no ALPN in the answer,
        # as an AWS ALB does), so TLS routing cannot work through this LB.
        self.server_ctx.set_alpn_protocols(["http/1.1"])
        self.client_ctx = ssl.create_default_context()
        self.client_ctx.check_hostname = False
        self.client_ctx.verify_mode = ssl.CERT_NONE  # like nginx's proxy_ssl_verify off
        self.client_ctx.set_alpn_protocols(["http/1.1"])
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pipes: set[Pipe] = set()

    async def start(self) -> None:
        host, _, port = self.listen.rpartition(":")
        self._server = await asyncio.start_server(self._serve, host.strip("[]"), int(port), ssl=self.server_ctx,
                                                  ssl_handshake_timeout=10)
        bound = self._server.sockets[0].getsockname()
        self.listen = f"{bound[0]}:{bound[1]}"
        log.info("L7 load balancer fault on %s → %s, its own certificate for %s (CA %s)", self.listen,
                 self.upstream, ", ".join(self.names), self.ca)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, _, port = self.upstream.rpartition(":")
        try:
            async with asyncio.timeout(10):
                up_r, up_w = await asyncio.open_connection(host.strip("[]"), int(port), ssl=self.client_ctx)
        except (OSError, TimeoutError) as exc:
            log.warning("L7 load balancer: upstream %s unreachable: %s", self.upstream, exc or "timed out")
            writer.close()
            return
        # The one splice of this module: a Pipe, which outlives this handler.
        pipe = Pipe.join(park_streams(reader, writer), park_streams(up_r, up_w),
                         on_close=lambda p, exc: self._pipes.discard(p))
        if not pipe.closed:
            self._pipes.add(pipe)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.close()
