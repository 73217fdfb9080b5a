"""The Auth API: HTTP/1.1 + JSON over mutual TLS on ``auth_service.listen_addr`` (glue).

Teleport serves gRPC on 3025; tpemu serves the same operations as JSON over h11 (the server loop of
:mod:`tpemu.net.http_server`), with the paths of Teleport's former HTTP API. TLS: the Auth
Service's own host certificate (role Auth; SANs ``*.teleport.cluster.local`` and
``<hex(cluster)>.teleport.cluster.local``); client certificates are *requested* and verified
against the host and user CAs, as Teleport's ``VerifyClientCertIfGiven`` does: a certificate from
another CA, an expired one or a forged one ends the handshake (the reason is logged:
``certificate signed by unknown authority``, ``certificate expired`` …), while a client without a
certificate gets in as *nobody* and may only ping, read the public CA certificates, and join with a
token. ALPN ``teleport-auth@`` (what the proxy forwards unchanged) and ``http/1.1`` are accepted.

Who may call what (``Admin`` is the identity ``tpemu tokens``/``tpemu users`` use, written into
``data_dir/auth`` at start-up, as ``tctl`` uses the Auth Service's own admin identity):

=======  ====================================  ======================  ================================
method   path                                  callers                 body → answer
=======  ====================================  ======================  ================================
GET      /v1/ping                              anyone                  → cluster_name, versions, caller
GET      /v1/authorities/{host,user,db}        anyone                  → tls_certs, ssh_public_keys
POST     /v1/tokens/register                   anyone (token checks)   RegisterUsingTokenRequest → Certs
POST     /v1/users/{user}/ssh/authenticate     Proxy, Admin            CreateSSHCertReq → SSHLoginResponse
POST     /v1/users/{user}/certs                that user, Admin        UserCertsRequest → Certs
GET      /v1/tokens  POST /v1/tokens           Admin                   {roles, ttl, single_use, token}
DELETE   /v1/tokens/{token}                    Admin
GET      /v1/users   POST /v1/users            Admin                   {user: UserV2, password}
GET|PUT|DELETE /v1/users/{name}                Admin                   PUT: {user, password} (upsert)
PUT      /v1/users/{name}/password             Admin                   {password}
POST     /v1/{nodes,proxies,db_servers}        that host's role, Admin resource (+ "ttl" ns) → stored
GET      /v1/{nodes,proxies,db_servers}        any certificate         → {"items": [...]}
DELETE   /v1/{nodes,proxies,db_servers}/{name} Admin
POST     /v1/db/certs                          Db, Admin               {public_key, server_names, ttl}
POST     /v1/hosts/certs                       Instance                HostCertsRequest → Certs (its roles)
=======  ====================================  ======================  ================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from tpemu import MIN_CLIENT_VERSION, TELEPORT_VERSION, authapi, pki, versioncheck
from tpemu import identity as ident
from tpemu.auth import backend as backend_mod
from tpemu.auth.authority import CAType
from tpemu.auth.server import PRESENCE, AuthServer
from tpemu.config import Addr
from tpemu.logs import RateLimiter
from tpemu.net.h2_server import GrpcStatus, serve_h2
from tpemu.net.http_server import Request, Response, serve_http
from tpemu.net.sockets import format_addr, sockaddr
from tpemu.net.tls_bio import BIOConnection, streams

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
MAX_CONNECTIONS = 2048

NOBODY = "nobody"
USER = "user"
#: A verified certificate restricted to a usage (``usage:db`` …): refused on every Auth API call.
RESTRICTED = "restricted"
INVALID_USAGE = "access denied: invalid client certificate"
HOSTS = frozenset(ident.SYSTEM_ROLES)
ANY_CERT = frozenset({USER, *HOSTS})
ANYONE = frozenset({NOBODY, *ANY_CERT})


@dataclass(frozen=True)
class Caller:
    """Who is calling: ``kind`` is ``nobody`` (no certificate), ``user`` or a system role."""

    kind: str
    identity: ident.Identity | None = None
    host_id: str = ""

    @property
    def name(self) -> str:
        if self.identity is None:
            return "nobody"
        return f"{self.kind}:{self.identity.username}" if self.kind != USER else f"user:{self.identity.username}"


def caller_from_cert(der: bytes | None, server: AuthServer) -> Caller:
    """The caller a verified client certificate stands for (which CA issued it decides whether it
    is a host or a user: a user's roles are never taken for system roles)."""
    if not der:
        return Caller(NOBODY)
    cert = x509.load_der_x509_certificate(der)
    identity = ident.from_certificate(cert)
    if identity.usage:
        # lib/auth/middleware.go ``Middleware.GetUser``: "If there is any restriction on the
        # certificate usage reject the API server request" (the Auth API accepts no usage), so a
        # database-only certificate cannot re-issue itself full credentials.
        return Caller(RESTRICTED, identity)
    host_ca = server.ca(CAType.HOST).tls_cert
    try:
        pki.verify_issued_by(cert, [host_ca])
    except pki.CertificateError:
        return Caller(USER, identity)
    role = identity.groups[0] if identity.groups else ""
    if role not in HOSTS or identity.teleport_cluster not in ("", server.cluster_name):
        raise authapi.AccessDenied(f"host certificate of {identity.username!r} has no valid role")
    host_id = identity.username.removesuffix("." + server.cluster_name)
    return Caller(role, identity, host_id)


def describe_verify_error(exc: ssl.SSLCertVerificationError) -> str:
    """Go's wording for a client certificate OpenSSL refused."""
    code = exc.verify_code
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return "certificate expired"
    if code == 9:
        return "certificate is not yet valid"
    if code in (2, 18, 19, 20, 21):  # no issuer, self-signed, unknown issuer
        return "certificate signed by unknown authority"
    if code == 7:
        return "certificate signature is invalid"
    return f"certificate refused: {exc.verify_message}"


Handler = Callable[[Request, Caller, dict[str, str]], Awaitable[Response]]


class AuthAPI:
    """Routes and serves Auth API requests for one :class:`AuthServer`."""

    def __init__(self, server: AuthServer, reject_old_clients: bool = False) -> None:
        self.server = server
        #: Teleport's ``TELEPORT_UNSTABLE_REJECT_OLD_CLIENTS`` (or ``tpemu.reject_old_clients``).
        self.reject_old_clients = reject_old_clients or os.environ.get(versioncheck.REJECT_ENV, "") == "yes"
        self.limiter = RateLimiter()
        self._routes: list[tuple[str, re.Pattern[str], frozenset[str], Handler]] = []
        self._lsock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.ctx: ssl.SSLContext | None = None
        self.refused_handshakes = 0
        r = self._route
        r("GET", "/v1/ping", ANYONE, self._ping)
        r("GET", "/v1/authorities/{type}", ANYONE, self._authority)
        r("POST", "/v1/tokens/register", frozenset({NOBODY, *HOSTS}), self._register)
        r("POST", "/v1/users/{user}/ssh/authenticate", frozenset({ident.ROLE_PROXY, ident.ROLE_ADMIN}), self._login)
        r("POST", "/v1/users/{user}/certs", frozenset({USER, ident.ROLE_ADMIN}), self._user_certs)
        admin = frozenset({ident.ROLE_ADMIN})
        r("GET", "/v1/tokens", admin, self._list_tokens)
        r("POST", "/v1/tokens", admin, self._create_token)
        r("DELETE", "/v1/tokens/{token}", admin, self._delete_token)
        # Agents read roles to check access per connection (Teleport's builtin Kube/App roles read KindRole).
        r("GET", "/v1/roles/{name}", frozenset({ident.ROLE_ADMIN, ident.ROLE_APP, ident.ROLE_KUBE}), self._get_role)
        r("PUT", "/v1/roles/{name}", admin, self._upsert_role)
        r("GET", "/v1/users", admin, self._list_users)
        r("POST", "/v1/users", admin, self._create_user)
        r("GET", "/v1/users/{name}", admin, self._get_user)
        r("PUT", "/v1/users/{name}", admin, self._upsert_user)
        r("DELETE", "/v1/users/{name}", admin, self._delete_user)
        r("PUT", "/v1/users/{name}/password", admin, self._set_password)
        r("POST", "/v1/db/certs", frozenset({ident.ROLE_DB, ident.ROLE_ADMIN}), self._db_cert)
        r("POST", "/v1/hosts/certs", frozenset({ident.ROLE_INSTANCE}), self._host_certs)
        r("POST", "/v1/apps/token", frozenset({ident.ROLE_APP, ident.ROLE_ADMIN}), self._app_token)
        r("GET", "/v1/jwks", ANYONE, self._jwks)
        r("POST", "/v1/{kind}", frozenset(HOSTS), self._heartbeat)
        r("GET", "/v1/{kind}", ANY_CERT, self._list_servers)
        r("DELETE", "/v1/{kind}/{name}", admin, self._delete_server)

    def _route(self, method: str, pattern: str, allowed: frozenset[str], handler: Handler) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        self._routes.append((method, regex, allowed, handler))

    # -- serving ----------------------------------------------------------------------------------

    async def listen(self, addr: Addr, ctx: ssl.SSLContext) -> Addr:
        """Bind ``addr`` and serve; returns the bound address."""
        self.ctx = ctx
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sa = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sa)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._lsock = sock
        host, port = sockaddr(sock.getsockname())
        self._accept_task = loop.create_task(self._accept_loop(sock))
        return Addr(host, port)

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(lsock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                self.limiter.warning(log, "accept", "auth api: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if len(self._tasks) >= MAX_CONNECTIONS:
                self.limiter.warning(log, "busy", "auth api: %d connections open; refusing %s", len(self._tasks),
                                     format_addr(peer))
                sock.close()
                continue
            task = loop.create_task(self._serve(sock, format_addr(peer)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket, peer: str) -> None:
        assert self.ctx is not None
        conn = BIOConnection(sock, self.ctx)
        try:
            await conn.handshake(HANDSHAKE_TIMEOUT)
        except ssl.SSLCertVerificationError as exc:
            self.refused_handshakes += 1
            self.limiter.warning(log, "cert", "auth api: peer=%s client certificate refused: %s (%s)", peer,
                                 describe_verify_error(exc), exc.verify_message)
            sock.close()
            return
        except (OSError, TimeoutError) as exc:
            self.refused_handshakes += 1
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            if isinstance(exc, ssl.SSLError) and exc.reason == "HTTP_REQUEST":
                # Teleport's Auth listener is a multiplexer with only a TLS listener
                # (lib/service/service.go initAuthService: mux.TLS()), so plain HTTP is closed
                # without a byte (lib/multiplexer/multiplexer.go detectAndForward), not answered
                # with Go's net/http 400.
                reason = ("plain HTTP on the TLS port: Detected an HTTP request. If this is for a health check, "
                          "use an HTTPS request instead. Closing HTTP connection: HTTP listener is disabled")
            self.limiter.warning(log, "tls", "auth api: peer=%s TLS handshake failed: %s", peer, reason)
            sock.close()
            return
        try:
            caller = caller_from_cert(conn.sslobj.getpeercert(binary_form=True), self.server)
        except (authapi.AuthAPIError, ValueError) as exc:
            log.warning("auth api: peer=%s refused: %s", peer, exc)
            await conn.close()
            return
        reader, writer = streams(conn)

        async def app(request: Request) -> Response:
            if self.reject_old_clients:
                self._check_client_version(request, caller, peer, conn)
            return await self.handle(request, caller)

        try:
            if conn.sslobj.selected_alpn_protocol() == "h2":
                # Teleport's clients send [teleport-auth@<route>, h2] and speak gRPC: they get a real
                # gRPC status; HTTP/2 requests to the JSON API are served as over HTTP/1.1.
                await serve_h2(reader, writer, peer=peer, app=app, what="auth api", grpc=lambda path: (
                    GrpcStatus.UNIMPLEMENTED, f"tpemu's Auth Service speaks HTTP/JSON, not Teleport's gRPC API "
                    f"({path}): offer http/1.1"))
            else:
                await serve_http(reader, writer, app, peer=peer, server_header="tpemu-auth")
        finally:
            await conn.close()

    def _check_client_version(self, request: Request, caller: Caller, peer: str, conn: BIOConnection) -> None:
        """``lib/auth/middleware.go`` ``ValidateClientVersion``: an old (or unparsable) ``version``
        ends the connection with a reset; a request without one passes."""
        version = request.header("version")
        if version is None:
            return
        fields = (f'user_agent="{request.header("user-agent") or ""}" identity={caller.name} version={version} '
                  f"addr={peer}")
        try:
            too_old = versioncheck.client_too_old(version, MIN_CLIENT_VERSION)
        except ValueError as exc:
            log.warning("%s error=%r %s", versioncheck.UNPARSABLE_LOG, str(exc), fields)
            too_old = True
        else:
            if too_old:
                log.info("%s %s (oldest supported: %s)", versioncheck.REJECT_LOG, fields, MIN_CLIENT_VERSION)
        if too_old:
            conn.abort()
            raise ConnectionResetError(versioncheck.REJECT_ERROR)

    async def handle(self, request: Request, caller: Caller) -> Response:
        """Answer one request from ``caller`` (errors become Teleport-shaped JSON errors)."""
        path = request.path
        matched_path = False
        for method, regex, allowed, handler in self._routes:
            m = regex.match(path)
            if m is None:
                continue
            params = m.groupdict()
            if "kind" in params and params["kind"] not in PRESENCE:
                continue
            matched_path = True
            if method != request.method:
                continue
            try:
                if caller.kind == RESTRICTED:
                    assert caller.identity is not None
                    raise authapi.AccessDenied(f"{INVALID_USAGE} (a certificate restricted to "
                                               f"{', '.join(caller.identity.usage)} cannot call the Auth API)")
                if caller.kind not in allowed:
                    raise authapi.AccessDenied(_denied(caller, allowed))
                return await handler(request, caller, params)
            except authapi.AuthAPIError as exc:
                if exc.status == 403:
                    self.limiter.warning(log, "denied", "auth api: %s %s from %s (%s): %s", request.method, path,
                                         request.peer, caller.name, exc.message)
                return Response.error(exc.status, exc.message)
            except (backend_mod.NotFound, backend_mod.AlreadyExists, backend_mod.CompareFailed) as exc:
                return Response.error(404 if isinstance(exc, backend_mod.NotFound) else 409, str(exc))
            except backend_mod.BackendError as exc:
                self.limiter.warning(log, "backend", "auth api: %s %s: backend error: %s", request.method, path, exc)
                return Response.error(503, f"the Auth Service's backend is unavailable: {exc}")
        if matched_path:
            return Response.error(405, f"method {request.method} not allowed on {path}")
        return Response.error(404, f"{path} not found")

    async def close(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        if self._lsock is not None:
            self._lsock.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- handlers ---------------------------------------------------------------------------------

    async def _ping(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        who: dict[str, Any] = {"kind": caller.kind}
        if caller.identity is not None:
            who.update(username=caller.identity.username, roles=list(caller.identity.groups),
                       expires=authapi.rfc3339(caller.identity.expires))
        return Response.json({"cluster_name": self.server.cluster_name, "server_version": TELEPORT_VERSION,
                              "min_client_version": MIN_CLIENT_VERSION, "caller": who})

    async def _authority(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        try:
            ca_type = CAType(p["type"])
        except ValueError:
            raise authapi.NotFound(f"no {p['type']!r} authority (host, user or db)") from None
        return Response.json(self.server.ca(ca_type).public_json())

    async def _register(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        body = authapi.body_object(request.json())
        # A proxy forwards joins for agents (/webapi/host/credentials) and says where they came from.
        remote = request.peer if caller.kind != ident.ROLE_PROXY else ""
        return Response.json(await self.server.register(body, remote))

    async def _login(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        body = authapi.body_object(request.json())
        if authapi.field_str(body, "user") != p["user"]:
            raise authapi.BadParameter("the user in the path and in the body differ")
        remote = authapi.field_str(body, "remote_addr", max_len=256) or request.peer
        return Response.json(await self.server.authenticate_ssh_user(body, remote))

    async def _user_certs(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        assert caller.identity is not None
        if caller.kind == USER and caller.identity.username != p["user"]:
            raise authapi.AccessDenied(f"user {caller.identity.username!r} cannot get certificates for "
                                       f"{p['user']!r}")
        body = authapi.body_object(request.json())
        return Response.json(await self.server.reissue_user_certs(caller.identity, p["user"], body))

    async def _list_tokens(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        return Response.json({"items": [t.resource() for t in await self.server.tokens.list()]})

    async def _create_token(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        token = await self.server.create_token(authapi.body_object(request.json()))
        return Response.json(token.resource(), 201)

    async def _delete_token(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        await self.server.tokens.delete(p["token"])
        return Response.json({"message": "ok"})

    async def _list_users(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        return Response.json({"items": [u.resource() for u in await self.server.users.list()]})

    async def _create_user(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        user = await self.server.upsert_user(authapi.body_object(request.json()), create_only=True)
        log.info("user %s created by %s: roles %s", user.name, caller.name, ",".join(user.roles))
        return Response.json(user.resource(), 201)

    async def _get_role(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        return Response.json((await self.server.roles.get(p["name"])).resource())

    async def _upsert_role(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        body = authapi.body_object(request.json())
        name = authapi.body_object(body.get("metadata") or {}).get("name")
        if name != p["name"]:
            raise authapi.BadParameter("the role name in the path and in the body differ")
        role = await self.server.roles.upsert(body)
        log.info("role %s updated by %s", role.name, caller.name)
        return Response.json(role.resource())

    async def _get_user(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        return Response.json((await self.server.users.get(p["name"])).resource())

    async def _upsert_user(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        body = authapi.body_object(request.json())
        meta = authapi.body_object(body.get("user") or {}).get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if name != p["name"]:
            raise authapi.BadParameter("the user name in the path and in the body differ")
        user = await self.server.upsert_user(body, create_only=False)
        log.info("user %s updated by %s", user.name, caller.name)
        return Response.json(user.resource())

    async def _delete_user(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        await self.server.users.delete(p["name"])
        log.info("user %s deleted by %s", p["name"], caller.name)
        return Response.json({"message": "ok"})

    async def _set_password(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        body = authapi.body_object(request.json())
        await self.server.users.set_password(p["name"], authapi.field_str(body, "password", required=True,
                                                                           max_len=4096))
        return Response.json({"message": "ok"})

    async def _db_cert(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        return Response.json(await self.server.sign_database_cert(authapi.body_object(request.json())))

    async def _host_certs(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        assert caller.identity is not None
        return Response.json(await self.server.generate_host_certs(caller.identity, caller.host_id,
                                                                   authapi.body_object(request.json())))

    async def _app_token(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        return Response.json(await self.server.generate_app_token(authapi.body_object(request.json())))

    async def _jwks(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        return Response.json((await self.server.jwt_key()).jwks())

    async def _heartbeat(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        kind = p["kind"]
        body = authapi.body_object(request.json())
        role = PRESENCE[kind][2]
        if caller.kind not in (role, ident.ROLE_ADMIN):
            raise authapi.AccessDenied(f"{caller.name} cannot announce {kind} (needs role {role})")
        if caller.kind != ident.ROLE_ADMIN:
            hosted = kind in ("db_servers", "kube_servers", "app_servers")
            part = body.get("spec") if hosted else body.get("metadata")
            owner = part.get("host_id" if hosted else "name") if isinstance(part, dict) else None
            if owner != caller.host_id:
                raise authapi.AccessDenied(f"{caller.name} can only announce itself (host id {caller.host_id})")
        ttl = authapi.duration_ns(body, "ttl", authapi.SERVER_ANNOUNCE_TTL)
        body.pop("ttl", None)
        return Response.json(await self.server.upsert_server(kind, body, ttl))

    async def _list_servers(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        return Response.json({"items": await self.server.list_servers(p["kind"])})

    async def _delete_server(self, request: Request, caller: Caller, p: dict[str, str]) -> Response:
        await self.server.delete_server(p["kind"], p["name"])
        return Response.json({"message": "ok"})


def _denied(caller: Caller, allowed: frozenset[str]) -> str:
    if caller.kind == NOBODY:
        return "access denied: this call needs a client certificate issued by the cluster"
    roles = sorted(a for a in allowed if a != NOBODY)
    return f"access denied: {caller.name} may not make this call (allowed: {', '.join(roles)})"
