"""The proxy's end of the agents' reverse tunnels, and the registry that dials agents (glue).

Theory of operation (Teleport's ``lib/reversetunnel``, as carried over to asyncssh):

* An agent dials the proxy — ``tunnel_listen_addr`` (3024, plain SSH) or the web port with
  ALPN ``teleport-reversetunnel`` (TLS routing; ``teleport-reversetunnelv2`` is accepted and
  handled the same way) — and runs SSH as the *client* over it. The proxy is the SSH server:
  it presents its SSH host certificate, and the agent authenticates with *its* host certificate
  using SSH host-based authentication (RFC 4252 §9), the standard form of "a host proves who it
  is with its host key": the certificate must be signed by the cluster's host CA and name the
  agent (``<host_id>.<cluster>``) among its principals.
* The agent then asks for remote forwarding of the pseudo-listener ``teleport-transport``
  (Teleport's transport channel name) and opens a session channel with subsystem
  ``teleport-heartbeat`` on which it sends a :class:`~tpemu.wire.tunnel.Heartbeat` frame every
  heartbeat interval (what it serves: nodes, databases). SSH keepalives run both ways as well.
* To reach a resource, the proxy opens a forwarded channel on that pseudo-listener and sends a
  :class:`~tpemu.wire.tunnel.DialRequest` (Teleport's ``DialReq`` fields); the agent answers with
  a :class:`~tpemu.wire.tunnel.DialResponse` (the refusal reason, as Teleport returns it on the
  channel's stderr), then the channel carries the client's bytes. :meth:`TunnelRegistry.dial`
  hands callers a plain connected socket (one end of a socketpair spliced to the channel), so
  the SSH proxy and the database proxy use ordinary asyncio/asyncssh APIs on it.
* An agent whose heartbeats stop for ``keep_alive_count_max`` intervals is dropped; a client
  asking for one of its resources then gets "… is offline" at once, not a hang. Nodes that
  joined the Auth Service directly are dialled at the address they announce to Auth (``3022``).

Where Teleport's wire format cannot carry over exactly — asyncssh does not let an SSH server
open arbitrary channel types, so the transport channel is SSH's standard ``forwarded-tcpip``
on the pseudo-listener — the names, fields and special addresses are Teleport's own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import asyncssh

from tpemu import authapi, sshcert
from tpemu import identity as ident
from tpemu.logs import RateLimiter
from tpemu.net.channel_bridge import FramedChannel
from tpemu.net.sockets import close_with_answer, format_addr
from tpemu.proxy.frontdoor import Accepted
from tpemu.wire import alpn as names
from tpemu.wire import tunnel as tw
from tpemu.wire.sniff import Protocol

if TYPE_CHECKING:
    from tpemu.proxy.service import ProxyService

log = logging.getLogger(__name__)
_limiter = RateLimiter()

TRANSPORT_LISTENER = tw.CHANNEL_TRANSPORT
HEARTBEAT_SUBSYSTEM = tw.CHANNEL_HEARTBEAT
#: Teleport's reverse-tunnel agent heartbeat period (``lib/reversetunnel``: 5 s), and how many may
#: be missed (``keep_alive_count_max`` defaults to 3).
DEFAULT_HEARTBEAT = 5.0
DEFAULT_MISSED = 3
LOGIN_TIMEOUT = 10.0
DIRECT_POLL = 5.0


def _host_cert_role(key_data: bytes) -> str:
    """The ``x-teleport-role`` extension of an SSH host certificate blob, or ``""``."""
    # The blob starts with its own type name (RFC 4253 §6.6 string): rebuild the certificate line.
    n = int.from_bytes(key_data[:4], "big")
    line = key_data[4:4 + n] + b" " + base64.b64encode(key_data)
    try:
        return sshcert.certificate_info(line).extensions.get(ident.SSH_EXT_HOST_ROLE, "")
    except (ValueError, asyncssh.KeyImportError, IndexError, UnicodeDecodeError, struct.error):
        return ""


class TunnelError(Exception):
    """A resource cannot be reached; the message is for the client."""


@dataclass
class AgentConn:
    """One agent's tunnel as the proxy sees it."""

    host_id: str
    role: str
    peer: str
    conn: asyncssh.SSHServerConnection
    connected_at: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.monotonic)
    hostname: str = ""
    version: str = ""
    resources: tuple[tw.Resource, ...] = ()
    transport_ready: bool = False

    def describe(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "role": self.role, "hostname": self.hostname, "peer": self.peer,
                "version": self.version, "connected_at": self.connected_at,
                "last_heartbeat_age_s": round(time.monotonic() - self.last_heartbeat, 1),
                "resources": [{"kind": r.kind, "name": r.name, "protocol": r.protocol, "labels": r.labels}
                              for r in self.resources]}


@dataclass(frozen=True)
class DirectNode:
    """A node that joined the Auth Service directly and serves SSH on its own listener."""

    host_id: str
    hostname: str
    addr: str
    labels: dict[str, str]


class _TransportListener(asyncssh.SSHListener):
    """The ``teleport-transport`` pseudo-listener an agent asked for: nothing is bound on the proxy."""

    def __init__(self, agent: AgentConn) -> None:
        super().__init__()
        self.agent = agent

    def get_port(self) -> int:
        return 0

    def close(self) -> None:
        self.agent.transport_ready = False

    async def wait_closed(self) -> None:
        return None


#: What a tunnel may carry, by the system role in its host certificate (``x-teleport-role``).
#: Teleport's ``lib/reversetunnel/srv.go`` ``handleNewChan`` maps the role to one tunnel type
#: (Node → NodeTunnel, Db → DatabaseTunnel …) and ``localsite.go`` dials a resource only over a
#: connection of that type (``getRemoteConn``: key ``{hostID, connType}``).
ROLE_SERVES: dict[str, frozenset[str]] = {"Node": frozenset({tw.NODE}), "Db": frozenset({tw.DATABASE})}


class _TunnelServer(asyncssh.SSHServer):
    def __init__(self, registry: TunnelRegistry, peer: str) -> None:
        self.registry = registry
        self.peer = peer
        self.conn: asyncssh.SSHServerConnection | None = None
        self.agent: AgentConn | None = None
        #: The system role of the host certificate the agent authenticated with.
        self.role = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        # asyncssh checks the host certificate (CA, principals, validity) but hands the owner only
        # the host name; the role lives in the certificate's ``x-teleport-role`` extension, so the
        # certificate blob is read on its way to that check.
        validate = conn.validate_host_based_auth

        async def validate_and_keep_role(username: str, key_data: bytes, *args: Any) -> bool:
            self.role = _host_cert_role(key_data)
            return bool(await validate(username, key_data, *args))

        conn.validate_host_based_auth = validate_and_keep_role  # type: ignore[method-assign,assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.agent is not None:
            self.registry._lost(self.agent, exc)

    def begin_auth(self, username: str) -> bool:
        return True

    def host_based_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return False

    def password_auth_supported(self) -> bool:
        return False

    def validate_host_ca_key(self, client_host: str, client_addr: str, client_port: int | None,
                             key: asyncssh.SSHKey) -> bool:
        # Called only for a CA that is not this cluster's host CA: a forged or foreign certificate.
        _limiter.warning(log, "tunnel-auth", "reverse tunnel from %s refused: host %r presented a host certificate "
                         "signed by %s, not by this cluster's host CA", self.peer, client_host,
                         key.get_fingerprint())
        return False

    def validate_host_based_user(self, username: str, client_host: str, client_username: str) -> bool:
        # asyncssh has checked that the host certificate is signed by the host CA and lists
        # client_host among its principals; the agent must log in as that same host name.
        cluster = self.registry.cluster
        if username != client_host or client_username != client_host or not client_host.endswith("." + cluster):
            log.warning("tunnel from %s refused: host-based login %r does not match its certificate name %r",
                        self.peer, username, client_host)
            return False
        host_id = client_host[: -len(cluster) - 1]
        if self.role not in ROLE_SERVES:
            # ``handleNewChan``: "Unsupported role attempting to connect".
            _limiter.warning(log, "tunnel-role", "tunnel from %s refused: host %s has role %r, which cannot serve "
                             "resources over a reverse tunnel (Node or Db)", self.peer, client_host, self.role or "-")
            return False
        assert self.conn is not None
        self.agent = self.registry._register(host_id, self.peer, self.conn, self.role)
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> asyncssh.SSHListener | bool:
        if self.agent is None or listen_host != TRANSPORT_LISTENER:
            log.warning("tunnel %s: refused forwarding request for %s:%d", self.peer, listen_host, listen_port)
            return False
        self.agent.transport_ready = True
        return _TransportListener(self.agent)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return False  # agents never open connections through the proxy

    def unix_server_requested(self, listen_path: str) -> bool:
        return False


class _AcceptedSocket:
    """An asyncssh ``tunnel=`` object that runs SSH on a socket the front door accepted (TLS optional)."""

    def __init__(self, sock: socket.socket, ssl_context: ssl.SSLContext | None, timeout: float) -> None:
        self.sock, self.ssl_context, self.timeout = sock, ssl_context, timeout

    async def create_connection(self, session_factory: Callable[[], Any], host: str, port: int) -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        # Return the protocol we made: uvloop's connect_accepted_socket(ssl=…) hands back its
        # internal SSL protocol instead of the application's.
        protocol = session_factory()
        if self.ssl_context is None:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, self.sock)
        else:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, self.sock, ssl=self.ssl_context,
                                                              ssl_handshake_timeout=self.timeout)
        return transport, protocol


class TunnelRegistry:
    """Agents connected over reverse tunnels, directly-joined nodes, and dialing either."""

    def __init__(self, proxy: ProxyService, heartbeat: float = DEFAULT_HEARTBEAT,
                 missed: int = DEFAULT_MISSED) -> None:
        self.proxy = proxy
        self.cluster = proxy.cfg.auth_service.cluster_name
        self.heartbeat = heartbeat
        self.missed = missed
        self.agents: dict[tuple[str, str], AgentConn] = {}
        self.direct: dict[str, DirectNode] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._host_keys: list[tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]] = []
        self._known_agents: Any = None
        #: Proxy peering (:mod:`tpemu.proxy.peering`): dials a tunnel held by another proxy.
        self.peer_dial: Callable[[tw.DialRequest, float], Awaitable[socket.socket]] | None = None

    # -- setup -------------------------------------------------------------------------------------

    def install(self) -> None:
        """Serve reverse tunnels (needs the proxy's Auth-issued identity) and start the sweeper."""
        from tpemu.proxy.route import RouteKind

        routes = self.proxy.auth_routes
        assert routes is not None and routes.identity is not None
        identity = routes.identity
        key = asyncssh.import_private_key(identity.key_pem)
        self._host_keys = [(key, asyncssh.import_certificate(identity.ssh_cert))]
        lines = [b"@cert-authority * " + k.strip() for k in identity.ssh_ca_keys]
        self._known_agents = asyncssh.import_known_hosts(b"\n".join(lines).decode())
        self.proxy.set_handler(RouteKind.REVERSE_TUNNEL, self.serve)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sweep()), loop.create_task(self._poll_direct())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for agent in list(self.agents.values()):
            agent.conn.close()

    # -- accepting tunnels ---------------------------------------------------------------------------

    async def serve(self, acc: Accepted) -> None:
        """Run the SSH server of one agent's tunnel on a routed connection."""
        ctx = None
        if acc.protocol is Protocol.TLS:
            assert self.proxy.contexts is not None
            ctx = self.proxy.contexts.get(names.SUPPORTED_PROTOCOLS)
        peer = format_addr(acc.peer)
        try:
            await asyncssh.connect_reverse(
                host=peer, tunnel=_AcceptedSocket(acc.sock, ctx, LOGIN_TIMEOUT),
                server_factory=lambda: _TunnelServer(self, peer),
                server_host_keys=self._host_keys, known_client_hosts=self._known_agents, trust_client_host=True,
                host_based_auth=True, public_key_auth=False, password_auth=False, kbdint_auth=False,
                gss_auth=False, allow_pty=False, agent_forwarding=False, x11_forwarding=False,
                process_factory=self._heartbeat_process, encoding=None, login_timeout=LOGIN_TIMEOUT,
                keepalive_interval=self.heartbeat, keepalive_count_max=self.missed,
                server_version="Teleport")
        except asyncssh.PermissionDenied as exc:
            _limiter.warning(log, "tunnel-auth", "%s: reverse tunnel refused: %s (the agent's host certificate "
                             "must be signed by this cluster's host CA)", acc.ctx, exc.reason)
        except asyncssh.ConnectionLost:
            # Closed right after TLS: tsh's probe for a layer-7 load balancer (IsALPNConnUpgradeRequired
            # dials with ALPN teleport-reversetunnel and hangs up), not a failing agent.
            log.debug("%s: closed before the SSH exchange (an ALPN probe)", acc.ctx)
            close_with_answer(acc.sock)
        except (asyncssh.Error, OSError, TimeoutError, ValueError) as exc:
            # ValueError covers asyncssh's PacketDecodeError: a peer that does not speak SSH.
            reason = exc.reason if isinstance(exc, asyncssh.Error) else (str(exc) or type(exc).__name__)
            _limiter.warning(log, "tunnel-proto", "%s: reverse tunnel failed before the agent was authenticated: %s",
                             acc.ctx, reason)
            close_with_answer(acc.sock)

    def _register(self, host_id: str, peer: str, conn: asyncssh.SSHServerConnection, role: str) -> AgentConn:
        # ``role`` is the host certificate's system role; the key tells tunnels of one host's
        # services apart (Teleport runs one tunnel per service, so does tpemu).
        agent = AgentConn(host_id, role, peer, conn)
        self.agents[(host_id, f"{role}/tunnel{id(conn)}")] = agent
        log.info("reverse tunnel from %s authenticated as host %s.%s", peer, host_id, self.cluster)
        return agent

    def _lost(self, agent: AgentConn, exc: Exception | None) -> None:
        key = (agent.host_id, f"{agent.role}/tunnel{id(agent.conn)}")
        if self.agents.get(key) is agent:
            del self.agents[key]
            what = ", ".join(f"{r.kind} {r.name}" for r in agent.resources) or "nothing announced"
            log.info("reverse tunnel from host %s (%s) closed%s; %s no longer reachable", agent.host_id,
                     agent.hostname or "-", f": {exc}" if exc else "", what)

    async def _heartbeat_process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        server = process.channel.get_connection()
        agent = next((a for a in self.agents.values() if a.conn is server), None)
        if agent is None or process.subsystem != HEARTBEAT_SUBSYSTEM:
            process.stderr.write(f"only the {HEARTBEAT_SUBSYSTEM} subsystem is served on reverse tunnels\n".encode())
            process.exit(1)
            return
        buf = bytearray()
        try:
            while True:
                chunk = await asyncio.wait_for(process.stdin.read(65536), self.heartbeat * (self.missed + 1))
                if not chunk:
                    break
                buf += chunk
                while (frame := tw.decode_frame(buf)) is not None:
                    obj, used = frame
                    del buf[:used]
                    hb = tw.Heartbeat.from_json(obj)
                    if hb.host_id != agent.host_id:
                        raise tw.TunnelProtocolError(f"heartbeat names host {hb.host_id}, tunnel is {agent.host_id}")
                    allowed = ROLE_SERVES.get(agent.role, frozenset())
                    foreign = [r for r in hb.resources if r.kind not in allowed]
                    if foreign:
                        raise tw.TunnelProtocolError(
                            f"host {agent.host_id} with role {agent.role} announced "
                            + ", ".join(f"{r.kind} {r.name!r}" for r in foreign)
                            + f" (its certificate lets it serve only {', '.join(sorted(allowed)) or 'nothing'})")
                    first = not agent.resources and hb.resources
                    agent.hostname, agent.version, agent.resources = hb.hostname, hb.version, hb.resources
                    agent.last_heartbeat = time.monotonic()
                    if first:
                        log.info("agent %s (%s) serves %s", agent.host_id, agent.hostname,
                                 ", ".join(f"{r.kind} {r.name}" for r in hb.resources))
        except TimeoutError:
            log.warning("agent %s: no heartbeat for %.0fs", agent.host_id, self.heartbeat * (self.missed + 1))
        except (tw.TunnelProtocolError, ValueError) as exc:
            log.warning("agent %s: bad heartbeat, closing its tunnel: %s", agent.host_id, exc)
            server.close()
        except (asyncssh.Error, OSError):
            pass
        process.exit(0)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            window = self.heartbeat * self.missed
            now = time.monotonic()
            for agent in list(self.agents.values()):
                if now - agent.last_heartbeat > window:
                    log.warning("agent %s (%s) missed %d heartbeats (%.0fs); dropping its tunnel", agent.host_id,
                                agent.hostname or "-", self.missed, now - agent.last_heartbeat)
                    self._lost(agent, None)
                    agent.conn.close()

    async def _poll_direct(self) -> None:
        while True:
            await self._refresh_direct()
            await asyncio.sleep(DIRECT_POLL)

    async def _refresh_direct(self) -> None:
        """Directly-joined nodes, from the Auth Service's inventory (``/v1/nodes`` with an address)."""
        routes = self.proxy.auth_routes
        if routes is None or routes.identity is None:
            return
        try:
            items = (await routes.client().call("GET", "/v1/nodes")).get("items") or []
            found = {}
            for item in items:
                spec = item.get("spec") or {}
                meta = item.get("metadata") or {}
                if spec.get("addr") and not spec.get("use_tunnel"):
                    node = DirectNode(meta.get("name", ""), spec.get("hostname", ""), spec["addr"],
                                      dict(meta.get("labels") or {}))
                    found[node.host_id] = node
            self.direct = found
        except (authapi.AuthAPIError, AttributeError, TypeError) as exc:
            log.debug("listing nodes from the Auth Service failed: %s", exc)

    # -- finding and dialing ---------------------------------------------------------------------------

    def resources(self, kind: str | None = None) -> list[tuple[AgentConn, tw.Resource]]:
        # Checked again here, at every lookup and so on every dial: a tunnel only ever offers what
        # its certificate's role may serve (``localsite.go`` ``getRemoteConn`` keys by conn type).
        return [(a, r) for a in self.agents.values() for r in a.resources
                if (kind is None or r.kind == kind) and r.kind in ROLE_SERVES.get(a.role, ())]

    def _match(self, req: tw.DialRequest) -> tuple[list[AgentConn], DirectNode | None, str]:
        """Agents that serve what ``req`` asks for, a direct node, and a description for errors."""
        want_host = req.server_id.removesuffix("." + self.cluster) if req.server_id else ""
        if req.conn_type in (tw.DATABASE, "kube", "app"):
            name = req.name or req.address
            agents = [a for a, r in self.resources(req.conn_type) if r.name == name]
            what = {tw.DATABASE: "database", "kube": "kubernetes cluster", "app": "app"}[req.conn_type]
            return agents, None, f"{what} {name!r}"
        target = req.address.rsplit(":", 1)[0] if req.address and not req.address.startswith("@") else ""
        agents = []
        for agent, res in self.resources(tw.NODE):
            names_ = (res.name, agent.hostname, agent.host_id, f"{agent.host_id}.{self.cluster}",
                      f"{res.name}.{self.cluster}")
            if (want_host and agent.host_id == want_host) or (target and target in names_):
                agents.append(agent)
        direct = None
        for node in self.direct.values():
            if (want_host and node.host_id == want_host) or (req.address and req.address == node.addr) or (
                    target and target in (
                    node.hostname, node.host_id, f"{node.hostname}.{self.cluster}", f"{node.host_id}.{self.cluster}")):
                direct = node
                break
        return agents, direct, f"node {req.address or req.server_id!r}"

    async def dial(self, req: tw.DialRequest, timeout: float = 10.0, local_only: bool = False) -> socket.socket:
        """A connected non-blocking socket spliced to the resource ``req`` names.

        Raises :class:`TunnelError` with a message for the client (unknown resource, agent
        offline, the agent's own refusal). Without a local tunnel for it, and unless
        ``local_only`` (a peer asking), proxy peering (:attr:`peer_dial`) is tried.
        """
        try:
            return await self._dial_local(req, timeout)
        except TunnelError as exc:
            if self.peer_dial is None or local_only:
                raise
            try:
                return await self.peer_dial(req, timeout)
            except TunnelError as peer_exc:
                raise TunnelError(f"{exc}; through peer proxies: {peer_exc}") from None

    async def _dial_local(self, req: tw.DialRequest, timeout: float) -> socket.socket:
        if not self._host_keys:
            raise TunnelError("reverse tunnels need an Auth Service: this proxy runs without one")
        agents, direct, what = self._match(req)
        agents = [a for a in agents if a.transport_ready]
        errors: list[str] = []
        for agent in sorted(agents, key=lambda a: a.last_heartbeat, reverse=True):
            try:
                return await self._dial_agent(agent, req, timeout)
            except TunnelError as exc:
                errors.append(str(exc))
        if direct is None and not agents and req.conn_type == tw.NODE:
            # A node that joined directly may have announced itself since the last poll.
            await self._refresh_direct()
            _, direct, _ = self._match(req)
        if direct is not None:
            return await self._dial_direct(direct, timeout)
        if errors:
            raise TunnelError("; ".join(errors))
        known = [r.name for _, r in self.resources(req.conn_type)]
        if req.conn_type == tw.NODE:
            known += [n.hostname for n in self.direct.values()]
        hint = f" (known: {', '.join(sorted(set(known)))})" if known else " (no agent serves any right now)"
        raise TunnelError(f"{what} not found in cluster {self.cluster}: no connected agent serves it{hint}")

    async def _dial_agent(self, agent: AgentConn, req: tw.DialRequest, timeout: float) -> socket.socket:
        src = req.client_src_addr.rsplit(":", 1)
        orig_host = src[0] if src[0] else ""
        orig_port = int(src[1]) if len(src) == 2 and src[1].isdigit() else 0
        try:
            async with asyncio.timeout(timeout):
                _, opened = await agent.conn.create_connection(FramedChannel, TRANSPORT_LISTENER, 0,
                                                               orig_host, orig_port, encoding=None)
                session = cast(FramedChannel, opened)
                session.write(req.encode())
                obj, rest = await session.frame(timeout)
        except TimeoutError:
            raise TunnelError(f"agent {agent.host_id} did not answer the dial request within {timeout:g}s") from None
        except (asyncssh.Error, OSError) as exc:
            reason = exc.reason if isinstance(exc, asyncssh.Error) else (str(exc) or type(exc).__name__)
            raise TunnelError(f"agent {agent.host_id} is offline ({reason})") from None
        except tw.TunnelProtocolError as exc:
            raise TunnelError(f"agent {agent.host_id} answered garbage: {exc}") from None
        try:
            answer = tw.DialResponse.from_json(obj)
        except tw.TunnelProtocolError as exc:
            session.close()
            raise TunnelError(f"agent {agent.host_id} answered garbage: {exc}") from None
        if not answer.ok:
            session.close()
            raise TunnelError(answer.error or f"agent {agent.host_id} refused the connection")
        return await session.attach(rest)

    async def _dial_direct(self, node: DirectNode, timeout: float) -> socket.socket:
        host, _, port = node.addr.rpartition(":")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host.strip("[]"), int(port)))
        except (OSError, TimeoutError, ValueError) as exc:
            sock.close()
            raise TunnelError(f"node {node.hostname} ({node.addr}) is unreachable: {exc or 'timed out'}") from None
        return sock
