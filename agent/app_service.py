"""The agent's Application Service: HTTP and TCP applications behind the reverse tunnel (glue).

Teleport's app agent (``lib/srv/app``): the proxy sends each application connection through the
reverse tunnel (``conn_type: app``, the app's name, the caller's identity as the proxy verified it
from the ``tsh apps login`` certificate). Then:

* **HTTP apps** (``uri: http://…``/``https://…``): every request is forwarded to the application
  with the headers Teleport's forwarder sets — ``teleport-jwt-assertion``, a JWT the Auth Service
  signs with the cluster's JWT key for this user and app (``GenerateAppToken``; verifiable with
  the proxy's ``/.well-known/jwks.json``; a client-supplied one is removed), and
  ``X-Forwarded-For``/``-Host``/``-Proto``/``-Server``; bodies stream both ways
  (:mod:`tpemu.agent.app_http`).
* **TCP apps** (``uri: tcp://host:port``): the connection is spliced to the address.
* **Emulated apps**: ``uri: emulated-echo`` answers every request with a JSON echo of what it
  received (method, path, headers — the JWT among them); ``debug_app: true`` adds Teleport's
  ``dumper`` app, which does the same (``lib/srv/app`` ``debugApp``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tpemu import authapi
from tpemu import identity as ident
from tpemu.agent import app_http
from tpemu.agent.access import RoleCache
from tpemu.agent.app_rewrite import Rewrite, RewriteError
from tpemu.config import App
from tpemu.errors import PeerFault
from tpemu.net.channel import open_streams
from tpemu.net.http_server import Request, Response, serve_http
from tpemu.net.pipe import Parked, Pipe
from tpemu.wire.tunnel import DialRequest, Resource

if TYPE_CHECKING:
    from tpemu.agent.process import AgentContext
    from tpemu.agent.tunnel import Offer

log = logging.getLogger(__name__)

APP = "app"
JWT_HEADER = "teleport-jwt-assertion"
EMULATED_ECHO = "emulated-echo"
#: Request bodies to the emulated apps (echo, dumper), which answer whole.
MAX_BODY = 10 * 1024 * 1024
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "content-length", JWT_HEADER})


@dataclass(frozen=True)
class AppDef:
    name: str
    uri: str
    description: str
    labels: dict[str, str]
    public_addr: str = ""
    insecure_skip_verify: bool = False
    #: ``rewrite`` (headers, redirect), compiled.
    rewrite: Rewrite | None = None

    @property
    def kind(self) -> str:
        return "tcp" if self.uri.startswith("tcp://") else "http"

    @property
    def emulated(self) -> bool:
        return self.uri == EMULATED_ECHO


class AppError(PeerFault):
    pass


def app_defs(apps: tuple[App, ...], debug_app: bool) -> list[AppDef]:
    out = []
    for app in apps:
        if not app.name or not app.uri:
            raise AppError(f"app_service.apps: every app needs a name and a uri (got {app.name!r}, {app.uri!r})")
        if app.uri != EMULATED_ECHO and urlsplit(app.uri).scheme not in ("http", "https", "tcp"):
            raise AppError(f"app {app.name!r}: uri must be http://, https://, tcp:// or {EMULATED_ECHO}")
        try:
            rewrite = Rewrite(app.name, app.rewrite.headers, app.rewrite.redirect)
        except RewriteError as exc:
            raise AppError(f"app_service.apps: {exc}") from None
        out.append(AppDef(app.name, app.uri, app.description, dict(app.labels), app.public_addr,
                          app.insecure_skip_verify, rewrite if rewrite.headers or rewrite.redirect else None))
    if debug_app:
        out.append(AppDef("dumper", EMULATED_ECHO, "Teleport's debug app: echoes each request", {}))
    return out


def echo(request: Request, app: str) -> Response:
    """The emulated echo app: what it received, as JSON."""
    return Response.json({"app": app, "method": request.method, "path": request.target,
                          "headers": {k: v for k, v in request.headers},
                          "body": request.body.decode("utf-8", "replace")[:4096]})


class AppService:
    def __init__(self, apps: list[AppDef], auth: Any, cluster: str) -> None:
        self.apps = {a.name: a for a in apps}
        self.auth = auth
        self.cluster = cluster
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self.access = RoleCache(auth)

    def resources(self) -> tuple[Resource, ...]:
        return tuple(Resource(APP, a.name, a.labels, protocol=a.kind, description=a.description,
                              addr=a.uri) for a in self.apps.values())

    async def close(self) -> None:
        return None

    async def token(self, identity: ident.Identity, app: AppDef) -> str:
        """A JWT for ``identity`` and ``app`` from the Auth Service, reused for a minute."""
        key = (identity.username, app.name)
        cached = self._tokens.get(key)
        now = time.time()
        if cached is not None and cached[1] > now + 30:
            return cached[0]
        expires = now + 90
        body = {"username": identity.username, "roles": list(identity.groups),
                "traits": {k: list(v) for k, v in identity.traits.items()}, "uri": app.uri,
                "expires": authapi.rfc3339(expires)}
        answer = await self.auth.call("POST", "/v1/apps/token", body)
        token = str(answer.get("token", "")) if isinstance(answer, dict) else ""
        self._tokens[key] = (token, expires)
        return token

    async def serve(self, transport: asyncio.Transport, request: DialRequest) -> None:
        """A connection through the reverse tunnel (its channel, a parked transport)."""
        app = self.apps.get(request.name)
        try:
            identity = ident.Identity.from_json(request.identity or {})
        except ident.IdentityError as exc:
            log.warning("app service: dial without a valid identity: %s", exc)
            transport.close()
            return
        if app is None:
            transport.close()
            return
        reason = await self.access.check(identity.groups, "app_labels", app.labels)
        if reason:
            # lib/srv/app authorize: CheckAccess(app) per connection, whatever the certificate says.
            log.warning("app service: %s refused app %s: %s", identity.username, app.name, reason)
            if app.kind != "tcp":
                body = f"access denied to application {app.name!r}: {reason}\n".encode()
                transport.write(b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            transport.close()
            return
        client = request.client_src_addr.rsplit(":", 1)[0]
        log.info("app service: %s → app %s (%s)", identity.username, app.name, app.kind)
        if app.kind == "tcp":
            await self._tcp(app, transport)
            return
        reader, writer = await open_streams(transport)
        if not app.emulated:
            async def rewrite(headers: list[tuple[str, str]]) -> list[tuple[str, str]] | str:
                return await self._headers(app, identity, headers, client, request.client_dst_addr)

            public_port = int(request.client_dst_addr.rsplit(":", 1)[1]) if ":" in request.client_dst_addr and \
                request.client_dst_addr.rsplit(":", 1)[1].isdigit() else 0
            public_host = identity.route_to_app.public_addr.rsplit(":", 1)[0] or app.public_addr

            def response(status: int, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
                if app.rewrite is None:
                    return headers
                return [(k, app.rewrite.location(status, v, public_host, public_port) if k.lower() == "location"
                         else v) for k, v in headers]

            await app_http.relay(reader, writer, app.uri, rewrite, app.insecure_skip_verify, app.name, response)
            return

        async def handle(req: Request) -> Response:
            return await self._http(app, identity, req, client, request.client_dst_addr)

        await serve_http(reader, writer, handle, peer=request.client_src_addr, max_body=MAX_BODY,
                         read_timeout=120.0)

    async def _tcp(self, app: AppDef, channel: asyncio.Transport) -> None:
        target = urlsplit(app.uri)
        try:
            async with asyncio.timeout(10):
                backend, _ = await asyncio.get_running_loop().create_connection(
                    Parked, target.hostname or "", target.port or 0)
        except (OSError, TimeoutError) as exc:
            log.warning("app service: tcp app %s at %s unreachable: %s", app.name, app.uri, exc)
            channel.close()
            return
        Pipe.join(channel, backend, name=f"app {app.name}")  # the channel to the app: no socket, no task

    async def _headers(self, app: AppDef, identity: ident.Identity, incoming: list[tuple[str, str]], client: str,
                       host: str) -> list[tuple[str, str]] | str:
        """The headers toward the app (lib/srv/app forwarder: the JWT, X-Forwarded-*), or why not."""
        try:
            token = await self.token(identity, app)
        except authapi.AuthAPIError as exc:
            log.warning("app service: no JWT for %s: %s", identity.username, exc.message)
            return f"the Auth Service did not sign a token for this request: {exc.message}\n"
        given_host = next((v for k, v in incoming if k == "host"), "")
        headers = [(k, v) for k, v in incoming if k not in _HOP_BY_HOP and not k.startswith("x-forwarded-")]
        if not app.emulated:
            # oxy's forwarder: the request goes out with the app's own host (outReq.Host = target.Host).
            headers = [(k, v) for k, v in headers if k != "host"] + [("host", urlsplit(app.uri).netloc)]
        if app.rewrite is not None:
            # lib/srv/app/transport.go rewriteRequest: rewrite.headers, then the JWT (reserved names
            # never come from the rewrite, so the order only matters for what the app sees first).
            headers = app.rewrite.request_headers(headers, identity.traits, identity.username)
        return [*headers, (JWT_HEADER, token), ("x-forwarded-for", client), ("x-forwarded-host", given_host or host),
                ("x-forwarded-proto", "https"), ("x-forwarded-server", app.name)]

    async def _http(self, app: AppDef, identity: ident.Identity, req: Request, client: str, host: str) -> Response:
        """The emulated apps (echo, dumper): answered here, whole."""
        headers = await self._headers(app, identity, list(req.headers), client, host)
        if isinstance(headers, str):
            return Response.text(headers, 502)
        return echo(Request(req.method, req.target, headers, req.body, req.peer, req.tls), app.name)


async def make_offers(ctx: AgentContext) -> list[Offer]:
    """The agent's ``app`` role: the apps of ``app_service``."""
    from tpemu.agent.process import AgentError
    from tpemu.agent.tunnel import Offer

    cfg = ctx.cfg.app_service
    try:
        apps = app_defs(cfg.apps, cfg.debug_app)
    except AppError as exc:
        raise AgentError(str(exc)) from None
    if not apps:
        raise AgentError("the Application Service has no apps: set app_service.apps or debug_app: true")
    service = AppService(apps, ctx.auth, ctx.identity.cluster_name)
    for a in apps:
        log.info("application service: %s (%s) → %s", a.name, a.kind, "emulated echo app" if a.emulated else a.uri)
    return [Offer(r, service) for r in service.resources()]

