"""The Proxy Service: listeners per ``proxy_listener_mode``, and the route → handler table (glue).

``multiplex`` (TLS routing) serves every protocol on ``web_listen_addr``: TLS by ALPN/SNI, plain
SSH, plain HTTP and Postgres startup packets. ``separate`` adds Teleport's per-service listeners:
``listen_addr`` (SSH, 3023) and ``tunnel_listen_addr`` (reverse tunnels, 3024) by default, and
``peer_listen_addr``, ``postgres_listen_addr``, ``mysql_listen_addr``, ``mongo_listen_addr``,
``kube_listen_addr`` (and tpemu's ``tpemu.proxy_service.redis_listen_addr``) when set. Any
listener set explicitly is opened in either mode.

Later services plug in with :meth:`ProxyService.set_handler`; a route with no handler is
refused in the client's protocol with "… is not available in this cluster".
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpemu.config import Addr, Config
from tpemu.net.tls import ContextCache
from tpemu.pki import TLSFiles, ensure_bootstrap_pki
from tpemu.proxy import postgres_front, webcert
from tpemu.proxy.auth_routes import AuthLink, AuthRoutes
from tpemu.proxy.conn_upgrade import ConnectionUpgrade
from tpemu.proxy.db_proxy import DatabaseProxy, Dialer
from tpemu.proxy.decide import ListenerKind, ListenerPolicy
from tpemu.proxy.frontdoor import Accepted, FrontDoor, Handler
from tpemu.proxy.passthrough import close_dials, start_splice
from tpemu.proxy.route import Route, RouteKind, RouteTable
from tpemu.proxy.tunnels import TunnelRegistry
from tpemu.proxy.unavailable import refuse_unavailable
from tpemu.proxy.web_route import WebRoute
from tpemu.proxy.webapi import ProxyInfo, WebAPI
from tpemu.wire import alpn
from tpemu.wire.sniff import Protocol

if TYPE_CHECKING:
    from tpemu.proxy.app_proxy import AppProxy
    from tpemu.proxy.kube_proxy import KubeProxy
    from tpemu.proxy.peering import Peering
    from tpemu.proxy.ssh_proxy import SSHProxy

log = logging.getLogger(__name__)

_ALL_PLAIN = frozenset({Protocol.TLS, Protocol.SSH, Protocol.HTTP, Protocol.POSTGRES})


def _fixed(kind: RouteKind, name: str, why: str, db: str | None = None, alpn_name: str | None = None) -> Route:
    return Route(kind, name, why, alpn=alpn_name, db_protocol=db)


def listener_plan(cfg: Config) -> list[tuple[ListenerPolicy, Addr]]:
    """Which listeners to open for ``cfg``, each with its policy."""
    ps = cfg.proxy_service
    trusted = tuple(ipaddress.ip_network(c, strict=False) for c in cfg.tpemu.proxy_service.proxy_protocol_trusted_cidrs)

    def policy(kind: ListenerKind, accepts: set[Protocol] | frozenset[Protocol],
               fixed: dict[Protocol, Route] | None = None, server_first: Route | None = None) -> ListenerPolicy:
        return ListenerPolicy(kind, frozenset(accepts), fixed or {}, server_first, ps.proxy_protocol, trusted)

    plan: list[tuple[ListenerPolicy, Addr]] = []
    web_accepts = set(_ALL_PLAIN) if cfg.multiplex else {Protocol.TLS, Protocol.HTTP, Protocol.POSTGRES}
    if ps.postgres_listen_addr is not None and not cfg.multiplex:
        web_accepts.discard(Protocol.POSTGRES)
    plan.append((policy(ListenerKind.WEB, web_accepts), ps.web_listen_addr))
    ssh_addr = ps.listen_addr or (None if cfg.multiplex else Addr("127.0.0.1", 3023))
    tunnel_addr = ps.tunnel_listen_addr or (None if cfg.multiplex else Addr("127.0.0.1", 3024))
    if ssh_addr is not None:
        plan.append((policy(ListenerKind.SSH, {Protocol.SSH}), ssh_addr))
    if tunnel_addr is not None:
        route = _fixed(RouteKind.REVERSE_TUNNEL, "reverse-tunnel", "SSH on the tunnel listener")
        plan.append((policy(ListenerKind.TUNNEL, {Protocol.SSH}, {Protocol.SSH: route}), tunnel_addr))
    if ps.peer_listen_addr is not None:
        route = _fixed(RouteKind.PEER, "peer", "TLS on the peer listener")
        plan.append((ListenerPolicy(ListenerKind.PEER, frozenset({Protocol.TLS}), {Protocol.TLS: route}),
                     ps.peer_listen_addr))
    if ps.postgres_listen_addr is not None:
        route = _fixed(RouteKind.DATABASE, "database/postgres", "TLS on the Postgres listener", "postgres",
                       alpn.POSTGRESQL_NATIVE)
        plan.append((policy(ListenerKind.POSTGRES, {Protocol.POSTGRES, Protocol.TLS}, {Protocol.TLS: route}),
                     ps.postgres_listen_addr))
    if ps.mysql_listen_addr is not None:
        route = _fixed(RouteKind.DATABASE, "database/mysql", "connection on the MySQL listener", "mysql")
        plan.append((policy(ListenerKind.MYSQL, frozenset(), server_first=route),
                     ps.mysql_listen_addr))
    for kind, addr, db, name in ((ListenerKind.MONGO, ps.mongo_listen_addr, "mongodb", alpn.MONGODB),
                                 (ListenerKind.REDIS, cfg.tpemu.proxy_service.redis_listen_addr, "redis", alpn.REDIS)):
        if addr is not None:
            route = _fixed(RouteKind.DATABASE, f"database/{db}", f"TLS on the {kind.value} listener", db, name)
            plan.append((policy(kind, {Protocol.TLS}, {Protocol.TLS: route}),
                         addr))
    if ps.kube_listen_addr is not None:
        route = _fixed(RouteKind.KUBE, "kube", "TLS on the Kubernetes listener")
        plan.append((ListenerPolicy(ListenerKind.KUBE, frozenset({Protocol.TLS}), {Protocol.TLS: route}),
                     ps.kube_listen_addr))
    return plan


OnPostgres = postgres_front.OnStartup


class ProxyService:
    """Owns the front door, the TLS material and the handlers of one proxy."""

    def __init__(self, cfg: Config, data_dir: Path | None = None, tls_files: TLSFiles | None = None,
                 auth: AuthLink | None = None) -> None:
        self.cfg = cfg
        #: With an Auth Service: the proxy joins it and serves the join/login web endpoints.
        self.auth_link = auth
        self.auth_routes: AuthRoutes | None = None
        #: The SSH proxy (``RouteKind.SSH_PROXY``), started with the Auth Service link.
        self.ssh_proxy: SSHProxy | None = None
        #: The Kubernetes proxy (``RouteKind.KUBE``), started with the Auth Service link.
        self.kube: KubeProxy | None = None
        #: Application access (HTTP apps by SNI, ``teleport-tcp``), started with the Auth Service link.
        self.apps: AppProxy | None = None
        #: Proxy peering on ``peer_listen_addr`` (with an Auth Service only).
        self.peering: Peering | None = None
        self.tunnels = TunnelRegistry(self, heartbeat=cfg.auth_service.keep_alive_interval,
                                      missed=cfg.auth_service.keep_alive_count_max)
        self.data_dir = data_dir or cfg.data_dir()
        self.info = ProxyInfo(cfg)
        self.web = WebAPI(self.info)
        ext = cfg.tpemu.proxy_service
        self.table = RouteTable(ext.passthrough)
        self._tls_files = tls_files
        self.contexts: ContextCache | None = None
        #: What the web routes present when it is not the Auth-issued certificate (start()).
        self.web_certs: webcert.WebCertificates | None = None
        #: Workers (:mod:`tpemu.proxy.workers`): every listener bound with SO_REUSEPORT, and a
        #: child worker binds the addresses worker 0 got (a ``:0`` in the config became a port).
        self.reuse_port = ext.workers > 1
        self.listen_override: dict[ListenerKind, Addr] = {}
        self.door = FrontDoor(self.table, self._dispatch, sniff_timeout=ext.sniff_timeout,
                              max_hello=ext.max_client_hello, max_pending=ext.max_pending)
        #: ``RouteKind.WEB``: the web API over HTTPS.
        self.web_route = WebRoute(self.door, self.web, handshake_timeout=ext.sniff_timeout)
        #: ``/webapi/connectionupgrade``: streams tunnelled through an L7 load balancer re-enter the door.
        self.conn_upgrade = ConnectionUpgrade(self.door, listener_plan(cfg)[0][0])
        self.conn_upgrade.install(self.web)
        #: Handlers registered with :meth:`set_handler` (services outside this module); the
        #: built-in wiring is :meth:`_dispatch`.
        self.extra_handlers: dict[RouteKind, Handler] = {}
        #: The database proxy; it reaches agents through :attr:`db_dialer`, else ``self.tunnels``
        #: (the reverse-tunnel registry) when there is one.
        self.db_dialer: Dialer | None = None
        self.db = DatabaseProxy(lambda: self.contexts, self._find_db_dialer,
                                handshake_timeout=max(10.0, ext.sniff_timeout),
                                mysql_server_version=cfg.proxy_service.mysql_server_version)
        #: Called with the StartupMessage of a Postgres connection that arrived as plain SSLRequest.
        self.on_postgres_startup: OnPostgres = self.db.on_postgres_startup

    @property
    def tls_files(self) -> TLSFiles:
        assert self._tls_files is not None, "start() first"
        return self._tls_files

    def set_handler(self, kind: RouteKind, handler: Handler) -> None:
        """Serve ``kind`` with ``handler``: for a service outside this module (a test, a plug-in);
        it takes precedence over the built-in wiring of :meth:`_dispatch`."""
        self.extra_handlers[kind] = handler

    def cert_names(self) -> list[str]:
        names = [socket.gethostname()]
        if self.cfg.teleport.nodename:
            names.append(self.cfg.teleport.nodename)
        for value in (*self.cfg.proxy_service.public_addr, *self.cfg.proxy_service.ssh_public_addr,
                      *self.cfg.proxy_service.tunnel_public_addr):
            names.append(Addr.parse(value, default_port=0).host)
        # Applications live at <app>.<public address> (Teleport's default app public_addr), or at
        # <app>.<cluster name> for a proxy reached by IP (TLS clients refuse *.localhost: one label).
        hosts = [Addr.parse(v, default_port=0).host for v in self.cfg.proxy_service.public_addr]
        names += [f"*.{h}" for h in (*hosts, self.cfg.auth_service.cluster_name)
                  if "." in h and not h.replace(".", "").isdigit() and ":" not in h]
        # tsh kube login's tls-server-name for a proxy with a host name (GetKubeTLSServerName).
        names += [alpn.KUBE_SNI_PREFIX + h for h in hosts if h and h != "localhost" and not h.replace(".", "").isdigit()
                  and ":" not in h]
        return names

    async def start(self) -> None:
        """Make or load TLS material, bind every listener, start accepting."""
        if self._tls_files is None and self.auth_link is not None:
            self.auth_routes = AuthRoutes(self, self.auth_link)
            self._tls_files = await self.auth_routes.start()  # raises JoinError
            self.auth_routes.install()
            self.tunnels.install()
            if self.cfg.proxy_service.peer_listen_addr is not None:
                from tpemu.proxy.peering import Peering

                self.peering = Peering(self)
                self.peering.install()
            await self._start_ssh_proxy()
            self._start_kube_proxy()
        if self._tls_files is None:
            self._tls_files = await asyncio.to_thread(
                ensure_bootstrap_pki, self.data_dir, self.cfg.auth_service.cluster_name, self.cert_names())
        self.contexts = ContextCache(self.tls_files.cert, self.tls_files.key,
                                     client_ca=self.tls_files.client_ca or self.tls_files.ca)
        # https_keypairs, or Teleport's self-signed certificate; None: the Auth-issued one.
        self.web_certs = await asyncio.to_thread(
            webcert.for_config, self.cfg, self.data_dir, self.tls_files.client_ca or self.tls_files.ca)
        try:
            for policy, addr in listener_plan(self.cfg):
                listener = await self.door.listen(policy, self.listen_override.get(policy.kind, addr),
                                                  reuse_port=self.reuse_port)
                self.info.bound[policy.kind] = listener.addr
                log.info("proxy %s listener on %s (accepts: %s%s)", policy.kind.value, listener.addr,
                         ", ".join(sorted(p.value for p in policy.accepts)) or "server speaks first",
                         {True: ", PROXY protocol required", None: ", PROXY protocol allowed"}.get(
                             policy.proxy_protocol, ""))
        except OSError:
            await self.close()
            raise

    async def _start_ssh_proxy(self) -> None:
        # SSH needs the cluster's user CA and the proxy's SSH host certificate: with an Auth Service only.
        from tpemu import authapi
        from tpemu.proxy.ssh_proxy import SSHProxy

        ssh_proxy = SSHProxy(self)
        try:
            await ssh_proxy.start()
        except (authapi.AuthAPIError, ValueError) as exc:
            log.warning("proxy: SSH is not available: %s", getattr(exc, "message", exc))
            return
        ssh_proxy.install()
        self.ssh_proxy = ssh_proxy

    def _start_kube_proxy(self) -> None:
        # Kubernetes access goes through the agents' reverse tunnels: with an Auth Service only.
        from tpemu.proxy.kube_proxy import KubeProxy

        def direct() -> Any:
            routes = self.auth_routes
            return (routes.client(), self.tls_files) if routes is not None and routes.identity else None

        self.kube = KubeProxy(lambda: self.contexts, lambda: self.tunnels,
                              handshake_timeout=max(10.0, self.cfg.tpemu.proxy_service.sniff_timeout), direct=direct)
        # Applications too: HTTP apps by SNI on the web listener, TCP apps by ALPN teleport-tcp.
        from tpemu.proxy.app_proxy import AppProxy

        routes = self.auth_routes
        self.apps = AppProxy(lambda: self.contexts, lambda: self.tunnels,
                             lambda: routes.client() if routes is not None and routes.identity else None,
                             handshake_timeout=max(10.0, self.cfg.tpemu.proxy_service.sniff_timeout))
        self.web.add("GET", "/.well-known/jwks.json", self.apps.jwks)

    async def close(self) -> None:
        if self.ssh_proxy is not None:
            await self.ssh_proxy.close()
        await self.tunnels.close()
        if self.auth_routes is not None:
            await self.auth_routes.close()
        await self.door.close()
        self.web_route.close()
        await close_dials(self.door.loop)

    def _dispatch(self, acc: Accepted) -> Awaitable[None] | None:
        """The proxy's wiring, in one place: route kind → the handler that serves it.

        A kind whose service is not running in this cluster (no Auth Service: no SSH, tunnels,
        kube, apps; no ``peer_listen_addr``) is answered "not available" in the client's
        protocol. Not a coroutine itself: it returns the handler's, one frame less per connection
        (pass-through starts without a task and returns ``None``).
        """
        kind = acc.route.kind
        if self.extra_handlers:
            extra = self.extra_handlers.get(kind)
            if extra is not None:
                return extra(acc)
        match kind:
            case RouteKind.PASSTHROUGH:
                start_splice(acc, self.door.stats, self.door.loop)  # no task: see start_splice
                return None
            case RouteKind.WEB:
                return self._serve_web(acc)
            case RouteKind.DATABASE:
                return self._serve_database(acc)
            case RouteKind.SSH_PROXY if self.ssh_proxy is not None:
                return self.ssh_proxy.handle(acc)
            case RouteKind.REVERSE_TUNNEL if self.tunnels.installed:
                return self.tunnels.serve(acc)
            case RouteKind.KUBE if self.kube is not None:
                return self.kube.handle(acc)
            case RouteKind.APP_TCP if self.apps is not None:
                return self.apps.handle_tcp(acc)
            case RouteKind.AUTH if self.auth_routes is not None and self.auth_routes.installed:
                return self.auth_routes.forward_auth(acc)
            case RouteKind.PEER if self.peering is not None:
                return self.peering.serve(acc)
            case RouteKind.WEB_PLAIN_HTTP:
                return self._serve_plain_http(acc)
        return refuse_unavailable(acc, lambda: self.contexts)

    def served(self) -> set[RouteKind]:
        """The route kinds :meth:`_dispatch` gives a handler now (for the banner)."""
        out = {RouteKind.PASSTHROUGH, RouteKind.WEB, RouteKind.DATABASE, RouteKind.WEB_PLAIN_HTTP,
               *self.extra_handlers}
        for kind, on in ((RouteKind.SSH_PROXY, self.ssh_proxy is not None),
                         (RouteKind.REVERSE_TUNNEL, self.tunnels.installed), (RouteKind.KUBE, self.kube is not None),
                         (RouteKind.APP_TCP, self.apps is not None),
                         (RouteKind.AUTH, self.auth_routes is not None and self.auth_routes.installed),
                         (RouteKind.PEER, self.peering is not None)):
            if on:
                out.add(kind)
        return out

    # -- built-in handlers -----------------------------------------------------------------


    def _serve_web(self, acc: Accepted) -> Awaitable[None] | None:
        assert self.contexts is not None
        apps, hello = self.apps, acc.hello
        if apps is not None and hello is not None:
            app = apps.app_of_sni(hello.sni)
            if app is not None:
                return apps.handle_http(acc, app)
        # Every name Teleport knows, in its order (Proxy.Serve sets NextProtos to SupportedProtocols),
        # with the web certificate (Teleport's WebTLSConfig: https_keypairs or self-signed).
        sni = hello.sni if hello is not None else None
        ctx = (self.web_certs.get(sni, alpn.SUPPORTED_PROTOCOLS) if self.web_certs is not None
               else self.contexts.get(alpn.SUPPORTED_PROTOCOLS))
        self.web_route.start(acc, ctx)  # no task until the client sends (tpemu.proxy.web_route)
        return None

    async def _serve_plain_http(self, acc: Accepted) -> None:
        # Teleport's multiplexer detects HTTP (lib/multiplexer/multiplexer.go detectProto) but
        # registers no listener for it: detectAndForward logs "Detected an HTTP request. If this
        # is for a health check, use an HTTPS request instead." and "Closing HTTP connection:
        # HTTP listener is disabled." and closes the connection without a byte (the request is
        # left unread, so Linux answers with a reset, as Go's Close does).
        log.info("%s: Detected an HTTP request. If this is for a health check, use an HTTPS request instead. "
                 "Closing HTTP connection: HTTP listener is disabled (as Teleport's multiplexer does)", acc.ctx)
        acc.sock.close()

    def _find_db_dialer(self) -> Dialer | None:
        dialer: Dialer | None = self.db_dialer or getattr(self, "tunnels", None)
        return dialer

    async def _serve_database(self, acc: Accepted) -> None:
        assert self.contexts is not None
        # A proxy without an Auth Service has no reverse tunnels, hence no databases: it says so
        # in the client's protocol, as for any service this cluster does not run.
        serving = self.db_dialer is not None or self.auth_link is not None
        if acc.protocol is Protocol.POSTGRES:
            self.db.context(postgres_front.POSTGRES_ALPN)  # records the SNI, which can name the database
            on_startup = self.on_postgres_startup if serving else postgres_front.refuse_not_available
            await postgres_front.postgres_front(acc, self.contexts, on_startup)
            return
        if not serving:
            await refuse_unavailable(acc, lambda: self.contexts)
            return
        await self.db.handle(acc)

