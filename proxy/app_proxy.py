"""The proxy's application access: HTTP apps by SNI on the web port, TCP apps by ALPN, the JWKS (glue).

Teleport's app proxy (``lib/web/app``, ``lib/srv/alpnproxy``):

* **HTTP apps** are reached at ``https://<app>.<proxy public address>`` — the web listener sees an
  SNI whose first label names an app that an agent serves, and hands the connection here instead
  of to the web API. The client authenticates with the certificate of ``tsh apps login``
  (``RouteToApp``: the app's name, public address, a session id); curl does it with
  ``--cert``/``--key``. Teleport's browser flow (a web session and an app session cookie) is not
  emulated: without an app certificate the answer is a 403 saying how to get one.
* **TCP apps** use ALPN ``teleport-tcp`` (or ``teleport-tcp-ping``) with the app certificate;
  ``tpemu proxy app NAME`` opens a local plain port for clients that cannot (``tsh proxy app``).
* Either way the proxy opens a channel through the reverse tunnel of the agent serving the app
  (``conn_type: app``, the app's name, the caller's identity) and relays; the agent's Application
  Service adds ``teleport-jwt-assertion`` (signed by the cluster's JWT key) to each HTTP request.
* ``GET /.well-known/jwks.json`` on the web API publishes that key (``{"keys": [...]}``), so an
  application can verify the JWT.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Protocol

from tpemu import authapi
from tpemu import identity as ident
from tpemu.logs import RateLimiter
from tpemu.net.http_server import Request, Response, serve_http
from tpemu.net.pipe import Pipe, park_streams
from tpemu.net.sockets import format_addr
from tpemu.net.streams import PingTransport
from tpemu.net.tls import ContextCache, accept_stream, peer_certificate
from tpemu.proxy.frontdoor import Accepted
from tpemu.wire import alpn
from tpemu.wire.tunnel import DialRequest, Resource

log = logging.getLogger(__name__)
APP = "app"


class Dialer(Protocol):
    async def dial(self, request: DialRequest, timeout: float = 10.0) -> asyncio.Transport: ...

    def resources(self, kind: str | None = None) -> Sequence[tuple[object, Resource]]: ...


class AuthCaller(Protocol):
    async def call(self, method: str, path: str, body: object = None) -> object: ...


class AppProxy:
    def __init__(self, contexts: Callable[[], ContextCache | None], dialer: Callable[[], Dialer | None],
                 auth: Callable[[], AuthCaller | None], handshake_timeout: float = 10.0,
                 dial_timeout: float = 10.0) -> None:
        self._contexts, self._dialer, self._auth = contexts, dialer, auth
        self.handshake_timeout = handshake_timeout
        self.dial_timeout = dial_timeout
        self.limiter = RateLimiter()

    # -- which connections are for apps ---------------------------------------------------------------

    def apps(self) -> dict[str, Resource]:
        dialer = self._dialer()
        return {r.name: r for _, r in dialer.resources(APP)} if dialer is not None else {}

    def app_of_sni(self, sni: str | None) -> str | None:
        """The HTTP app an SNI names (``<app>.<host>``), if an agent serves it."""
        # On every web connection: cheap refusals first, no dictionary built.
        if not sni or "." not in sni or sni.endswith("." + alpn.INTERNAL_DOMAIN):
            return None
        dialer = self._dialer()
        if dialer is None:
            return None
        name = sni.split(".", 1)[0]
        found = any(r.name == name and r.protocol != "tcp" for _, r in dialer.resources(APP))
        return name if found else None

    # -- JWKS -------------------------------------------------------------------------------------------

    async def jwks(self, request: Request) -> Response:
        auth = self._auth()
        if auth is None:
            return Response.error(503, "this proxy has no Auth Service")
        try:
            return Response.json(await auth.call("GET", "/v1/jwks"))
        except authapi.AuthAPIError as exc:
            return Response.error(502, exc.message)

    # -- connections ------------------------------------------------------------------------------------

    async def _accept(self, acc: Accepted, alpn_offer: tuple[str, ...]) -> tuple[
            asyncio.StreamReader, asyncio.StreamWriter] | None:
        cache = self._contexts()
        assert cache is not None, "the proxy has not started"
        try:
            return await accept_stream(acc.sock, cache.get(alpn_offer), self.handshake_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.limiter.warning(log, "tls", "%s: app TLS handshake failed: %s", acc.ctx, exc)
            acc.sock.close()
            return None

    def _identity(self, writer: asyncio.StreamWriter, app: str | None) -> tuple[ident.Identity | None, str]:
        der = peer_certificate(writer)
        if not der:
            return None, ("this application needs the certificate of 'tpemu apps login NAME' (curl --cert/--key "
                          "with the files it names)")
        try:
            identity = ident.from_der(der)
        except ident.IdentityError as exc:
            return None, f"the client certificate holds no valid identity: {exc}"
        # lib/srv/app/server.go: Middleware with AcceptedUsage UsageAppsOnly.
        refused = ident.usage_refusal(identity.usage, (ident.USAGE_APPS_ONLY,), "application access")
        if refused:
            return None, refused
        routed = identity.route_to_app.name
        if not routed:
            return None, "the client certificate is not an application certificate: run 'tpemu apps login NAME'"
        if app is not None and routed != app:
            return None, f"the certificate is for app {routed!r}, not {app!r} (run 'tpemu apps login {app}')"
        return identity, ""

    async def _dial(self, acc: Accepted, name: str, identity: ident.Identity) -> asyncio.Transport | str:
        """The tunnel channel to the app's agent (a parked transport), or the reason it is unavailable."""
        dialer = self._dialer()
        request = DialRequest(conn_type=APP, name=name, identity=identity.to_json(),
                              client_src_addr=format_addr(acc.peer), client_dst_addr=format_addr(acc.local_addr()))
        try:
            if dialer is None:
                raise LookupError("no agent is connected to this proxy (no reverse tunnels)")
            return await dialer.dial(request, timeout=self.dial_timeout)
        except Exception as exc:  # the tunnel registry's errors (TunnelError, timeouts) end here
            message = f'app "{name}" is unavailable: {exc}'
            self.limiter.warning(log, "app-dial", "%s: %s", acc.ctx, message)
            return message

    async def handle_http(self, acc: Accepted, name: str) -> None:
        """An HTTPS connection to ``<name>.<proxy host>``."""
        streams = await self._accept(acc, (alpn.HTTP11,))
        if streams is None:
            return
        reader, writer = streams
        identity, why = self._identity(writer, name)
        if identity is None:
            self.limiter.warning(log, "app-auth", "%s: app %s refused: %s", acc.ctx, name, why)
            await self._answer(acc, reader, writer, Response.text(f"403 Forbidden: {why}\n", 403))
            return
        agent = await self._dial(acc, name, identity)
        if isinstance(agent, str):
            await self._answer(acc, reader, writer, Response.text(f"502 Bad Gateway: {agent}\n", 502))
            return
        log.info("%s: user %s → app %s through its agent", acc.ctx, identity.username, name)
        Pipe.join(park_streams(reader, writer), agent, name=f"app {name}")  # the tunnel channel: no socket

    async def handle_tcp(self, acc: Accepted) -> None:
        """ALPN ``teleport-tcp``: a TCP app, named by the certificate's app route."""
        # NextProtos = SupportedProtocols, the server's preference (teleport-tcp-ping before teleport-tcp).
        streams = await self._accept(acc, alpn.SUPPORTED_PROTOCOLS)
        if streams is None:
            return
        reader, writer = streams
        negotiated = writer.get_extra_info("ssl_object").selected_alpn_protocol() or ""
        identity, why = self._identity(writer, None)
        if identity is None:
            self.limiter.warning(log, "app-auth", "%s: TCP app refused: %s", acc.ctx, why)
            writer.close()
            return
        name = identity.route_to_app.name
        agent = await self._dial(acc, name, identity)
        if isinstance(agent, str):
            writer.close()
            return
        client: asyncio.Transport = park_streams(reader, writer)
        if negotiated.endswith(alpn.PING_SUFFIX):
            client = PingTransport.wrap(client)
        log.info("%s: user %s → TCP app %s through its agent", acc.ctx, identity.username, name)
        Pipe.join(client, agent, name=f"tcp app {name}")

    async def _answer(self, acc: Accepted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      response: Response) -> None:
        async def app(request: Request) -> Response:
            return response

        await serve_http(reader, writer, app, peer=format_addr(acc.peer), read_timeout=10, max_requests=1)
