"""The proxy's SSH service: users in by certificate, their SSH sessions out to nodes (glue).

Teleport's SSH proxy (``lib/srv/regular`` in proxy mode, ``lib/proxy/router.go``), reached three
ways, all handed here by the front door as :data:`~tpemu.proxy.route.RouteKind.SSH_PROXY`:
``listen_addr`` (3023, separate mode), plain SSH sniffed on the multiplexed web port, and TLS
with ALPN ``teleport-proxy-ssh`` (TLS routing; the TLS is terminated here, SSH runs inside).

* **Authentication.** The proxy presents its host key with the SSH host certificate from its
  join, and accepts only user certificates signed by the cluster's user CA, for a login among
  their principals (``tsh`` and ``tpemu`` log in with the certificate's first principal).
* **To a node.** The client asks for the subsystem ``proxy:<host>:<port>[@<cluster>]`` (what
  ``tsh ssh`` and ``tsh proxy ssh`` send). The proxy finds the node among those heartbeating to
  the Auth Service (by hostname, host ID or address, as Teleport's router does: several matches
  are ambiguous, none is an error), dials it through :attr:`SSHProxy.dialer` (the reverse-tunnel
  registry: through the agent's tunnel, or by TCP for a directly joined node), and joins the
  channel to that connection with one :class:`~tpemu.net.pipe.Pipe` (both are transports: the
  client's channel and the tunnel's channel are :class:`~tpemu.net.channel.ChannelTransport`).
  The user's SSH session to the node runs end to end inside the
  channel: the node authenticates the user again, the proxy never sees the inner session.
  ``direct-tcpip`` channels (OpenSSH's ``-J``/``ProxyJump`` through the proxy) take the same path.
* **Errors** are specific and reach the user: for the subsystem on the channel's stderr with exit
  status 1 (``tpemu proxy ssh`` prints it, so OpenSSH users see it too); for ``direct-tcpip`` in
  the channel-open failure, which OpenSSH prints (``open failed: connect failed: …``).

The proxy also serves ``GET /webapi/sites/<cluster>/nodes`` (Teleport's web API shape,
``ui.Server``), the node list ``tpemu ls`` shows, to clients presenting a user certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import asyncssh

from tpemu import authapi, authclient
from tpemu import identity as ident
from tpemu.errors import PeerFault
from tpemu.errors import describe as describe_error
from tpemu.net.channel import ChannelTransport
from tpemu.net.http_server import Request, Response
from tpemu.net.pipe import Pipe
from tpemu.net.sockets import format_addr
from tpemu.net.ssh_lean import OnSocket, ServerOptions
from tpemu.proxy.frontdoor import Accepted
from tpemu.proxy.nodes import NodeDirectory, NodeInventory, NodeLookupError, NodeRecord, match_nodes
from tpemu.proxy.tunnels import TunnelError
from tpemu.wire import alpn
from tpemu.wire.sniff import Protocol as Sniffed
from tpemu.wire.tunnel import NODE, DialRequest

if TYPE_CHECKING:
    from tpemu.proxy.service import ProxyService

log = logging.getLogger(__name__)

SERVER_VERSION = "Teleport"
SUBSYSTEM_PREFIX = "proxy:"
DIAL_TIMEOUT = 10.0
LOGIN_TIMEOUT = 30.0
MAX_SUBSYSTEM = 1024


class NodeDialer(Protocol):
    """What dials a node for the proxy: ``TunnelRegistry`` (``ProxyService.tunnels``)."""

    async def dial(self, request: DialRequest, timeout: float = 10.0) -> asyncio.Transport:
        """A parked transport to the node's SSH service (a tunnel channel, or TCP); raises with a
        clear message."""
        ...


class ProxyTargetError(PeerFault, ValueError):
    """A ``proxy:`` subsystem name that does not parse."""


@dataclass(frozen=True, slots=True)
class ProxyTarget:
    host: str
    port: int  # 0: not given
    cluster: str


def parse_proxy_subsystem(name: str) -> ProxyTarget:
    """``proxy:host:port[@cluster]`` → :class:`ProxyTarget` (``lib/srv/regular/proxy.go``).

    Also accepted: ``proxy:host`` (no port), ``proxy:[v6]:port``, and Teleport's old
    ``proxy:host:port@namespace@cluster``. Raises :class:`ProxyTargetError`.
    """
    expected = f"invalid format for proxy request: {name[:200]!r}, expected 'proxy:host:port@cluster'"
    if not name.startswith(SUBSYSTEM_PREFIX) or len(name) > MAX_SUBSYSTEM:
        raise ProxyTargetError(expected)
    body = name[len(SUBSYSTEM_PREFIX):]
    hostport, _, cluster = body.partition("@")
    if "@" in cluster:  # host:port@namespace@cluster
        cluster = cluster.split("@", 1)[1]
    if hostport.startswith("["):
        host, sep, rest = hostport[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ProxyTargetError(expected)
        port_text = rest[1:]
    else:
        host, _, port_text = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if not host or any(c.isspace() for c in host):
        raise ProxyTargetError(expected)
    if port_text and not (port_text.isdigit() and int(port_text) <= 65535):
        raise ProxyTargetError(expected)
    return ProxyTarget(host, int(port_text) if port_text else 0, cluster)


# -- the service ---------------------------------------------------------------------------------------


class SSHProxy:
    """The SSH listener side of one :class:`~tpemu.proxy.service.ProxyService`."""

    def __init__(self, proxy: ProxyService, dialer: NodeDialer | None = None) -> None:
        self.proxy = proxy
        self.cluster = proxy.cfg.auth_service.cluster_name
        #: What dials nodes: the proxy's reverse-tunnel registry (through an agent's tunnel, or
        #: by TCP to a directly joined node).
        self.dialer: NodeDialer = dialer or proxy.tunnels
        self.host_key: Any = None
        self.host_cert: Any = None
        self.user_cas: list[Any] = []
        self.directory: NodeDirectory | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._ssh_options: ServerOptions | None = None
        self.stats = {"connections": 0, "sessions": 0, "refused": 0}

    async def start(self) -> None:
        """Load the proxy's SSH host identity and the user CA; raises ``AuthAPIError``/``ValueError``."""
        routes = self.proxy.auth_routes
        if routes is None or routes.identity is None:
            raise ValueError("the SSH proxy needs the proxy's identity from the Auth Service")
        identity = routes.identity
        if not identity.ssh_cert:
            raise ValueError(f"the proxy's identity in {routes.folder} has no SSH host certificate")
        self.host_key = asyncssh.import_private_key(identity.key_pem)
        self.host_cert = asyncssh.import_certificate(identity.ssh_cert)
        self._ssh_options = None
        keys = await authclient.fetch_user_ca_ssh_keys(routes.client())
        self.user_cas = [asyncssh.import_public_key(k) for k in keys]
        # The registry's inventory (the one the dial uses too), not a second /v1/nodes cache.
        self.directory = NodeDirectory(self.proxy.tunnels)

    def install(self) -> None:
        """Serve the node list web endpoint (the proxy routes SSH here once it is its ``ssh_proxy``)."""
        self.proxy.web.add("GET", "/webapi/sites/", self._web_nodes)

    async def close(self) -> None:
        if self.directory is not None:
            await self.directory.close()
        for conn in list(self._conns):
            conn.close()
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 2.0)

    def is_user_ca(self, key: Any) -> bool:
        return any(key.public_data == ca.public_data for ca in self.user_cas)

    # -- connections -----------------------------------------------------------------------------

    def _server_options(self) -> ServerOptions:
        # Built once (start() loads the host identity), shared by every connection.
        if self._ssh_options is None:
            self._ssh_options = ServerOptions(
                server_host_keys=[(self.host_key, self.host_cert)], server_version=SERVER_VERSION, encoding=None,
                line_editor=False, allow_pty=False, x11_forwarding=False, agent_forwarding=False, sftp_factory=None,
                allow_scp=False, login_timeout=LOGIN_TIMEOUT, keepalive_interval=300)
        return self._ssh_options

    async def handle(self, acc: Accepted) -> None:
        """Serve one routed connection: SSH from byte 0, or TLS (ALPN ``teleport-proxy-ssh``) then SSH."""
        self.stats["connections"] += 1
        peer = format_addr(acc.peer)
        tunnel: _AcceptedTLS | OnSocket
        try:
            if acc.protocol is Sniffed.TLS:
                contexts = self.proxy.contexts
                assert contexts is not None
                tunnel = _AcceptedTLS(acc.sock, contexts.get((alpn.PROXY_SSH,)),
                                      self.proxy.cfg.tpemu.proxy_service.sniff_timeout)
            else:
                tunnel = OnSocket(acc.sock)
            conn = await self._server_options().accept(tunnel, lambda: _ProxyServer(self, acc, peer))
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            # ValueError: asyncssh's PacketDecodeError, a peer that is not speaking SSH after all.
            self.stats["refused"] += 1
            log.info("%s: SSH connection ended before login: %s", acc.ctx, describe_error(exc))
            with contextlib.suppress(OSError):
                acc.sock.close()
            return
        self._conns.add(conn)
        try:
            await conn.wait_closed()
        finally:
            self._conns.discard(conn)

    async def dial_node(self, target: ProxyTarget, acc: Accepted,
                        login: str) -> tuple[asyncio.Transport, NodeRecord]:
        """Find and dial the node ``target`` names; raises :class:`DialFailed` with the user's message."""
        if target.cluster and target.cluster != self.cluster:
            raise DialFailed(f"unknown cluster {target.cluster!r} (this proxy serves {self.cluster!r})")
        if self.directory is None:
            raise DialFailed("the SSH proxy is not started")
        try:
            node = await self.directory.resolve(target.host, target.port)
        except NodeLookupError as exc:
            raise DialFailed(str(exc)) from None
        except authapi.AuthAPIError as exc:
            raise DialFailed(f"cannot list the cluster's nodes: {exc.message}") from None
        request = DialRequest(address=node.addr or node.hostname, server_id=f"{node.host_id}.{self.cluster}",
                              conn_type=NODE, client_src_addr=format_addr(acc.peer),
                              client_dst_addr=format_addr(acc.local_addr()))
        try:
            transport = await self.dialer.dial(request, timeout=DIAL_TIMEOUT)
        except (TunnelError, OSError, TimeoutError) as exc:
            why = describe_error(exc)
            raise DialFailed(f"failed connecting to node {node.hostname} ({node.host_id}): {why}") from None
        log.info("%s: login=%s → node %s (%s) %s", acc.ctx, login, node.hostname, node.host_id,
                 "through its tunnel" if node.use_tunnel else f"at {node.addr}")
        self.stats["sessions"] += 1
        return transport, node

    # -- web ---------------------------------------------------------------------------------------

    async def _web_nodes(self, request: Request) -> Response:
        parts = request.path.split("/")  # ['', 'webapi', 'sites', cluster, 'nodes' | 'databases']
        if len(parts) != 5 or parts[4] not in ("nodes", "databases"):
            return Response.error(404, f"{request.path} not found")
        cluster = parts[3]
        der = request.tls.get("peer_cert")
        if not der:
            return Response.error(403, "access denied: this endpoint needs a user certificate (tpemu login)")
        try:
            who = ident.from_der(der)
        except ident.IdentityError as exc:
            return Response.error(403, f"access denied: {exc}")
        if who.is_system(ident.ROLE_PROXY) or not who.username:
            return Response.error(403, "access denied: a user certificate is needed")
        if who.usage:
            # lib/auth/middleware.go ``GetUser``: a usage-restricted certificate (``usage:db``) is
            # good for its usage only.
            return Response.error(403, "access denied: invalid client certificate (restricted to "
                                  f"{', '.join(who.usage)})")
        if cluster not in (self.cluster, "-current-"):
            return Response.error(404, f"cluster {cluster!r} not found")
        if parts[4] == "databases":
            return await self._web_databases()
        if self.directory is None:
            return Response.error(503, "the SSH proxy is not started")
        try:
            # A listing is rare and must show a node that has just joined: asked fresh.
            nodes = await self.directory.nodes(fresh=True)
        except authapi.AuthAPIError as exc:
            return Response.error(502, f"cannot list the cluster's nodes: {exc.message}")
        items = [n.web(self.cluster) for n in sorted(nodes, key=lambda n: (n.hostname, n.host_id))]
        # The Auth Service's inventory lags a dead agent by its announce TTL; this proxy knows at
        # once when a tunnel is gone, so a tunnelled node is marked as its tunnel stands now.
        tunnelled = {a.host_id for a, _ in self.proxy.tunnels.resources("node") if a.transport_ready} \
            if self.proxy.tunnels is not None else set()
        for item in items:
            if item.get("tunnel"):
                item["connected"] = item["id"] in tunnelled
        logins = [p for p in who.principals if not p.startswith("-")]
        for item in items:
            item["sshLogins"] = logins
        return Response.json({"items": items, "startKey": "", "totalCount": len(items)})


    async def _web_databases(self) -> Response:
        """The Auth Service's ``db_server`` resources, each with ``status.connected``: whether this
        proxy has a live tunnel from that agent serving that database (tpemu's addition)."""
        routes = self.proxy.auth_routes
        if routes is None or routes.identity is None:
            return Response.error(503, "this proxy runs without an Auth Service")
        try:
            answer = await routes.client().call("GET", "/v1/db_servers")
        except authapi.AuthAPIError as exc:
            return Response.error(502, f"cannot list the cluster's databases: {exc.message}")
        live = {(a.host_id, r.name) for a, r in self.proxy.tunnels.resources("db") if a.transport_ready} \
            if self.proxy.tunnels is not None else set()
        items = answer.get("items") if isinstance(answer, dict) else None
        out = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            spec: dict[str, Any] = item["spec"] if isinstance(item.get("spec"), dict) else {}
            db: dict[str, Any] = spec["database"] if isinstance(spec.get("database"), dict) else {}
            meta: dict[str, Any] = db["metadata"] if isinstance(db.get("metadata"), dict) else {}
            status = dict(item["status"]) if isinstance(item.get("status"), dict) else {}
            status["connected"] = (str(spec.get("host_id") or ""), str(meta.get("name") or "")) in live
            out.append({**item, "status": status})
        return Response.json({"items": out})


class _DirectSession(ChannelTransport):
    """A ``direct-tcpip`` channel whose node is already dialled; joined when the channel opens."""

    def __init__(self, on_open: Callable[[ChannelTransport], object], node: asyncio.BaseTransport) -> None:
        super().__init__(on_open=on_open)
        self.node = node

    def connection_lost(self, exc: Exception | None) -> None:
        if self.chan is None or self._on_open is not None:  # never joined: the node would leak
            self.node.close()
        super().connection_lost(exc)


class DialFailed(PeerFault):
    """Reaching a node failed; the message is for the user."""


class _AcceptedTLS:
    """An asyncssh ``tunnel=``: the server side of TLS on an accepted socket (ClientHello unread)."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, timeout: float) -> None:
        self.sock, self.ctx, self.timeout = sock, ctx, timeout

    async def create_connection(self, session_factory: Callable[[], Any], host: str,
                                port: int) -> tuple[asyncio.BaseTransport, Any]:
        loop = asyncio.get_running_loop()
        # Return the protocol made here: uvloop's connect_accepted_socket(ssl=…) returns its own
        # SSL protocol rather than the application's.
        protocol = session_factory()
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, self.sock, ssl=self.ctx,
                                                              ssl_handshake_timeout=self.timeout)
        except BaseException:
            # The SSH connection object exists before TLS is done, with its login timer armed
            # (LOGIN_TIMEOUT): a client that sends a ClientHello and goes away would keep it, and
            # what it references, alive for 30 s — a flood of such hellos held memory for every
            # one (the reliability suite's network fuzz). Ending it here frees it at once.
            # connection_lost does nothing on a connection that never had a transport, so the
            # timer is cancelled directly (asyncssh has no public call for it).
            cancel = getattr(protocol, "_cancel_login_timer", None)
            if cancel is not None:
                cancel()
            raise
        return transport, protocol


# -- one client connection --------------------------------------------------------------------------


class _ProxyServer(asyncssh.SSHServer):
    def __init__(self, proxy: SSHProxy, acc: Accepted, peer: str) -> None:
        self.proxy = proxy
        self.acc = acc
        self.peer = peer
        self.login = ""
        self.offered_ca = False
        self.authenticated = False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.authenticated and self.offered_ca:
            log.warning("%s: SSH login %r refused: the certificate does not allow it or has expired",
                        self.acc.ctx, self.login)

    def begin_auth(self, username: str) -> bool:
        self.login = username
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: Any) -> bool:
        return False

    def validate_ca_key(self, username: str, key: Any) -> bool:
        if not self.proxy.is_user_ca(key):
            log.warning("%s: SSH login %r refused: certificate not signed by the user CA of %s", self.acc.ctx,
                        username, self.proxy.cluster)
            return False
        self.offered_ca = True
        return True

    def auth_completed(self) -> None:
        self.authenticated = True
        log.info("%s: SSH user authenticated (login %s)", self.acc.ctx, self.login)

    def session_requested(self) -> _SubsystemSession:
        return _SubsystemSession(self)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Awaitable[ChannelTransport]:
        # OpenSSH's ProxyJump (-J) through the proxy: a direct-tcpip channel to the node.
        return self._open_direct(dest_host, dest_port)

    async def _open_direct(self, host: str, port: int) -> ChannelTransport:
        target = ProxyTarget(host, port, "")
        try:
            node, _ = await self.proxy.dial_node(target, self.acc, self.login)
        except DialFailed as exc:
            log.warning("%s: direct-tcpip to %s:%d refused: %s", self.acc.ctx, host, port, exc)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        # The node is dialled before the channel exists (the open is confirmed after): its first
        # bytes stay parked until the channel opens and the pipe joins the two.
        return _DirectSession(lambda chan: Pipe.join(chan, node), node)


class _SubsystemSession(ChannelTransport, asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """A session channel on the proxy: only the ``proxy:`` subsystem is served.

    The channel is parked (the client's first bytes, its SSH banner, wait with reading paused)
    until the node is dialled; then one :class:`~tpemu.net.pipe.Pipe` joins it to the node.
    """

    def __init__(self, server: _ProxyServer) -> None:
        super().__init__()
        self.server = server
        self.target: ProxyTarget | None = None
        self.error = ""
        self.task: asyncio.Task[None] | None = None

    def shell_requested(self) -> bool:
        log.info("%s: shell refused (the proxy only forwards to nodes: proxy:host:port)", self.server.acc.ctx)
        return False

    def exec_requested(self, command: str) -> bool:
        log.info("%s: exec refused (the proxy only forwards to nodes: proxy:host:port)", self.server.acc.ctx)
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        if not subsystem.startswith(SUBSYSTEM_PREFIX):
            log.info("%s: subsystem %r refused", self.server.acc.ctx, subsystem[:100])
            return False
        try:
            self.target = parse_proxy_subsystem(subsystem)
        except ProxyTargetError as exc:
            self.error = str(exc)  # accepted, then reported on stderr: the client learns why
        return True

    def session_started(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        server = self.server
        try:
            if self.target is None:
                raise DialFailed(self.error)
            node, _ = await server.proxy.dial_node(self.target, server.acc, server.login)
        except DialFailed as exc:
            log.warning("%s: proxy subsystem for login %s: %s", server.acc.ctx, server.login, exc)
            if not self.is_closing():
                self.chan.write_stderr(f"ERROR: {exc}\n".encode())
                self.chan.exit(1)
            return
        if self.is_closing():
            node.close()
            return
        Pipe.join(self, node)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        super().connection_lost(exc)


__all__ = ["DialFailed", "NodeDialer", "NodeDirectory", "NodeInventory", "NodeRecord", "ProxyTarget", "SSHProxy",
           "match_nodes", "parse_proxy_subsystem"]
