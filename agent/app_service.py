"""The agent's Application Service: HTTP and TCP applications behind the reverse tunnel (glue).

Teleport's app agent (``lib/srv/app``): the proxy sends each application connection through the
reverse tunnel (``conn_type: app``, the app's name, the caller's identity as the proxy verified it
from the ``tsh apps login`` certificate). Then:

* **HTTP apps** (``uri: http://…``/``https://…``): every request is forwarded to the application
  with the headers Teleport's forwarder sets — ``teleport-jwt-assertion``, a JWT the Auth Service
  signs with the cluster's JWT key for this user and app (``GenerateAppToken``; verifiable with
  the proxy's ``/.well-known/jwks.json``; a client-supplied one is removed), and
  ``X-Forwarded-For``/``-Host``/``-Proto``/``-Server``; bodies are buffered (at most
  :data:`MAX_BODY` each way) rather than streamed.
* **TCP apps** (``uri: tcp://host:port``): the connection is spliced to the address.
* **Emulated apps**: ``uri: emulated-echo`` answers every request with a JSON echo of what it
  received (method, path, headers — the JWT among them); ``debug_app: true`` adds Teleport's
  ``dumper`` app, which does the same (``lib/srv/app`` ``debugApp``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import h11

from tpemu import authapi
from tpemu import identity as ident
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
MAX_BODY = 10 * 1024 * 1024
BACKEND_TIMEOUT = 30.0
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
        out.append(AppDef(app.name, app.uri, app.description, dict(app.labels), app.public_addr,
                          app.insecure_skip_verify))
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
        client = request.client_src_addr.rsplit(":", 1)[0]
        log.info("app service: %s → app %s (%s)", identity.username, app.name, app.kind)
        if app.kind == "tcp":
            await self._tcp(app, transport)
            return
        reader, writer = await open_streams(transport)

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

    async def _http(self, app: AppDef, identity: ident.Identity, req: Request, client: str, host: str) -> Response:
        try:
            token = await self.token(identity, app)
        except authapi.AuthAPIError as exc:
            log.warning("app service: no JWT for %s: %s", identity.username, exc.message)
            return Response.text(f"the Auth Service did not sign a token for this request: {exc.message}\n", 502)
        headers = [(k, v) for k, v in req.headers if k not in _HOP_BY_HOP and not k.startswith("x-forwarded-")]
        headers += [(JWT_HEADER, token), ("x-forwarded-for", client), ("x-forwarded-host",
                                                                        req.header("host") or host),
                    ("x-forwarded-proto", "https"), ("x-forwarded-server", app.name)]
        forwarded = Request(req.method, req.target, headers, req.body, req.peer, req.tls)
        if app.emulated:
            return echo(forwarded, app.name)
        try:
            return await forward(app, forwarded)
        except (OSError, TimeoutError, h11.ProtocolError, AppError) as exc:
            log.warning("app service: app %s (%s) failed: %s", app.name, app.uri, exc)
            return Response.text(f"application {app.name!r} is unreachable: {exc or type(exc).__name__}\n", 502)


async def forward(app: AppDef, req: Request) -> Response:
    """One HTTP/1.1 request to the application (a new connection each time)."""
    target = urlsplit(app.uri)
    tls: ssl.SSLContext | None = None
    if target.scheme == "https":
        tls = ssl.create_default_context()
        if app.insecure_skip_verify:
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
    port = target.port or (443 if tls else 80)
    conn = h11.Connection(h11.CLIENT)
    async with asyncio.timeout(BACKEND_TIMEOUT):
        reader, writer = await asyncio.open_connection(target.hostname, port, ssl=tls)
        try:
            headers = [(k, v) for k, v in req.headers if k != "host"]
            headers = [("host", target.netloc), *headers, ("content-length", str(len(req.body))),
                       ("connection", "close")]
            writer.write((conn.send(h11.Request(method=req.method, target=req.target, headers=headers)) or b"") +
                         (conn.send(h11.Data(data=req.body)) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            await writer.drain()
            status, out_headers, body = 0, [], bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    out_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers
                                   if k.decode("latin-1").lower() not in _HOP_BY_HOP]
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        raise AppError(f"the response is larger than {MAX_BODY} bytes")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        finally:
            writer.close()
    return Response(status, bytes(body), out_headers)


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

