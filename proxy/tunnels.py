"""The proxy's end of the agents' reverse tunnels: the registry that holds them and dials agents (glue).

Each tunnel's SSH server (the agent's login, channel opens, heartbeat requests) is
:mod:`tpemu.proxy.tunnel_server`; this module accepts the connections, keeps one
:class:`AgentConn` per tunnel, learns what each agent serves and dials resources through them.

Theory of operation — Teleport's wire contract (``lib/reversetunnel/srv.go``, ``local_cluster.go``,
``transport.go``, ``conn.go``; ``api/utils/sshutils`` ``ConnectProxyTransport``), carried over to
asyncssh by :mod:`tpemu.net.teleport_ssh`:

* An agent dials the proxy — ``tunnel_listen_addr`` (3024, plain SSH) or the web port with ALPN
  ``teleport-reversetunnelv2, teleport-reversetunnel`` (TLS routing; the handler is found by the
  second name) — and runs SSH as the *client*. The proxy presents its SSH host certificate; the
  agent authenticates with SSH **publickey** auth presenting *its host certificate*, checked as
  ``srv.go`` ``keyAuth``/``checkClientCert`` do: a host certificate with the
  ``x-teleport-authority`` and ``x-teleport-role`` extensions, signed by this cluster's host CA,
  valid now, for the login name (``<host_id>.<cluster>``) among its principals. Refusals are
  logged with Teleport's wording ("Failed to authenticate client … cluster … has no matching CA
  keys").
* The agent opens a ``teleport-heartbeat`` channel (``handleHeartbeat``: the role from the
  certificate picks the tunnel type — ``Node`` → node, ``Db`` → db …) and sends ``ping`` requests
  every ``keep_alive_interval``; the proxy asks its version (``x-teleport-version``), sends the
  proxy list on a ``teleport-discovery`` channel (``discovery`` requests), and drops the tunnel
  after ``keep_alive_count_max`` intervals without a ping (Teleport's defaults: 5 min, 3 times).
* To reach a resource the proxy opens a ``teleport-transport`` channel and sends one
  ``teleport-transport-dial`` request carrying ``sshutils.DialReq`` as JSON; a refusal is read
  from the channel's stderr (``ConnectProxyTransport``: "failed connecting to <addr> [<server
  id>]" when it is empty). :meth:`TunnelRegistry.dial` hands callers the channel itself as a
  parked asyncio transport (:class:`~tpemu.net.channel.ChannelTransport`): the SSH, database and
  kube proxies join it to the client with a :class:`~tpemu.net.pipe.Pipe` (no socket in between),
  or read a handshake through streams on it.
* An agent may open ``teleport-transport`` itself: the only valid target is the Auth Service
  (``@remote-auth-server``, ``handleTransportChannel``). Any other channel type is rejected with
  Teleport's text ("reversetunnel received unknown channel request …"; for ``session``: "Cannot
  open new SSH session on reverse tunnel. Are you connecting to the right port?").
* What an agent serves comes from the Auth Service's inventory (``/v1/nodes``,
  ``/v1/db_servers``, as Teleport's proxy finds servers by host id), refreshed every few seconds
  and at once on a miss; tpemu's own agents also announce it on the heartbeat channel with the
  extra request ``resources@tpemu`` (Teleport's proxy would count it as one more ping).
  Nodes that joined the Auth Service directly are dialled at the address they announce.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from typing import TYPE_CHECKING, Any

import asyncssh

from tpemu import authapi
from tpemu.errors import PeerFault
from tpemu.net import teleport_ssh as tssh
from tpemu.net.channel import ChannelTransport
from tpemu.net.pipe import Parked, Pipe
from tpemu.net.sockets import close_with_answer, format_addr
from tpemu.proxy.frontdoor import Accepted
from tpemu.proxy.tunnel_server import (
    ROLE_SERVES,
    TRANSPORT_LISTENER,
    _AcceptedSocket,
    _limiter,
    _Tunnel,
    _TunnelServer,
)
from tpemu.wire import alpn as names
from tpemu.wire import tunnel as tw
from tpemu.wire.errors import WireError
from tpemu.wire.sniff import Protocol

if TYPE_CHECKING:
    from tpemu.proxy.service import ProxyService

log = logging.getLogger(__name__)

#: Teleport's reverse-tunnel keep-alive: ``keep_alive_interval`` defaults to 5 minutes
#: (``lib/defaults`` ``KeepAliveInterval``), ``keep_alive_count_max`` to 3; the agent pings on the
#: heartbeat channel every interval (``agent.go``: ``time.NewTicker(a.keepAlive)``).
DEFAULT_HEARTBEAT = 300.0
DEFAULT_MISSED = 3
LOGIN_TIMEOUT = 10.0
DIRECT_POLL = 5.0
#: How old the inventory may be when the SSH proxy resolves a node name in it.
INVENTORY_FRESH = 1.0
#: ``apidefaults.DefaultIOTimeout``: how long the proxy waits for an agent's dial request answer
#: and an agent-opened transport for its dial request.
IO_TIMEOUT = 30.0


class TunnelError(PeerFault):
    """A resource cannot be reached; the message is for the client."""


class _Unrefreshed(TunnelError):
    """No local tunnel or direct node matched and the inventory was not refreshed (peers are asked first)."""


@dataclass
class AgentConn:
    """One agent's tunnel as the proxy sees it (Teleport's ``remoteConn``)."""

    host_id: str
    role: str
    peer: str
    conn: tssh.TunnelServerConnection
    conn_type: str = tw.NODE
    connected_at: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.monotonic)
    hostname: str = ""
    version: str = ""
    #: Announced by a tpemu agent on the heartbeat channel (``resources@tpemu``); else ``None``
    #: and the Auth Service's inventory says what this host serves.
    announced: tuple[tw.Resource, ...] | None = None
    resources: tuple[tw.Resource, ...] = ()
    transport_ready: bool = False
    pings: int = 0

    def describe(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "role": self.role, "conn_type": self.conn_type, "hostname": self.hostname,
                "peer": self.peer, "version": self.version, "connected_at": self.connected_at,
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
        #: Agents dropped for missing ``keep_alive_count_max`` heartbeats in a row (for /metrics).
        self.heartbeats_missed = 0
        #: The Auth Service's inventory: host id → resources it announced (nodes, databases).
        self.inventory: dict[str, tuple[tw.Resource, ...]] = {}
        self.host_ca_keys: list[asyncssh.SSHKey] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._tasks_bg: set[asyncio.Task[Any]] = set()
        self._host_keys: list[tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]] = []
        #: Set by install(): the proxy then routes reverse-tunnel connections to :meth:`serve`.
        self.installed = False
        #: ``/v1/nodes`` items as last fetched (:meth:`node_inventory`), and when.
        self.node_items: list[Any] = []
        self._inventory_at = -1e9
        #: Proxy peering (:mod:`tpemu.proxy.peering`): dials a tunnel held by another proxy.
        self.peer_dial: Callable[[tw.DialRequest, float], Awaitable[asyncio.Transport]] | None = None

    # -- setup -------------------------------------------------------------------------------------

    def install(self) -> None:
        """Serve reverse tunnels (needs the proxy's Auth-issued identity) and start the sweeper."""

        routes = self.proxy.auth_routes
        assert routes is not None and routes.identity is not None
        identity = routes.identity
        key = asyncssh.import_private_key(identity.key_pem)
        self._host_keys = [(key, asyncssh.import_certificate(identity.ssh_cert))]
        self.host_ca_keys = [asyncssh.import_public_key(k) for k in identity.ssh_ca_keys]
        self.installed = True  # the proxy routes reverse-tunnel connections to serve() now
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sweep()), loop.create_task(self._poll_direct())]

    async def close(self) -> None:
        for task in [*self._tasks, *self._tasks_bg]:
            task.cancel()
        for task in [*self._tasks, *self._tasks_bg]:
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
        server = _TunnelServer(self, peer)
        tunnel = _Tunnel(self, peer, server)
        try:
            options = await tssh.server_options(
                server_factory=lambda: server, server_host_keys=self._host_keys, public_key_auth=True,
                host_based_auth=False, password_auth=False, kbdint_auth=False, gss_auth=False, allow_pty=False,
                agent_forwarding=False, x11_forwarding=False, login_timeout=LOGIN_TIMEOUT,
                keepalive_interval=self.heartbeat, keepalive_count_max=self.missed, server_version="Teleport")
            conn = tssh.TunnelServerConnection(asyncio.get_running_loop(), options, tunnel.on_open, tunnel.check_cert)
            tunnel.conn = conn
            await tssh.establish(conn, options, _AcceptedSocket(acc.sock, ctx, LOGIN_TIMEOUT), LOGIN_TIMEOUT)
            assert tunnel.auth is not None
            log.info("reverse tunnel from %s authenticated as host %s (role %s)", peer, tunnel.auth.host,
                     tunnel.auth.role)
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

    def _register(self, host_id: str, role: str, conn_type: str, peer: str,
                  conn: tssh.TunnelServerConnection) -> AgentConn:
        agent = AgentConn(host_id, role, peer, conn, conn_type)
        self.agents[(host_id, f"{conn_type}/{id(conn)}")] = agent
        self._resolve(agent)
        log.info("reverse tunnel from %s: %s tunnel of host %s.%s", peer, conn_type, host_id, self.cluster)
        return agent

    def _first_heartbeat(self, agent: AgentConn) -> None:
        # As Teleport's proxy: learn the agent's version, send it the proxy list.
        async def greet() -> None:
            agent.version = await agent.conn.teleport_version() or ""
            with contextlib.suppress(asyncssh.Error, OSError, asyncssh.ChannelOpenError):
                chan = tssh.TeleportChannel(agent.conn, tssh.CHAN_DISCOVERY)
                await chan.open(ChannelTransport())
                body = {"proxies": [{"version": "v2", "metadata": {"name": self.proxy_name()}}]}
                await chan.request(tssh.REQ_DISCOVERY, json.dumps(body).encode(), want_reply=False)
            log.info("agent %s (%s tunnel) heartbeats; version %s", agent.host_id, agent.conn_type,
                     agent.version or "unknown")

        task = asyncio.get_running_loop().create_task(greet())
        self._tasks_bg.add(task)
        task.add_done_callback(self._tasks_bg.discard)

    def proxy_name(self) -> str:
        routes = self.proxy.auth_routes
        return routes.identity.host_id if routes is not None and routes.identity is not None else "proxy"

    def _lost(self, agent: AgentConn, exc: Exception | None) -> None:
        for key, known in list(self.agents.items()):
            if known is agent:
                del self.agents[key]
                what = ", ".join(f"{r.kind} {r.name}" for r in agent.resources) or "nothing announced"
                log.info("reverse tunnel from host %s (%s) closed%s; %s no longer reachable", agent.host_id,
                         agent.hostname or "-", f": {exc}" if exc else "", what)

    def _resolve(self, agent: AgentConn) -> None:
        """What ``agent`` serves: what it announced, else the inventory entries of its kind."""
        if agent.announced is not None:
            found = agent.announced
        else:
            found = tuple(r for r in self.inventory.get(agent.host_id, ()) if r.kind == agent.conn_type)
        if found and not agent.resources:
            log.info("agent %s (%s) serves %s", agent.host_id, agent.hostname or "-",
                     ", ".join(f"{r.kind} {r.name}" for r in found))
        agent.resources = found
        hostname = next((r.name for r in self.inventory.get(agent.host_id, ()) if r.kind == tw.NODE), "")
        if not hostname:
            hostname = next((r.name for r in found if r.kind == tw.NODE), "")
        if hostname:
            agent.hostname = hostname

    async def _to_auth(self, chan: tssh.TeleportChannel, stream: ChannelTransport, payload: bytes,
                       peer: str) -> None:
        """An agent-opened ``teleport-transport``: ``srv.go`` ``handleTransportChannel``."""
        try:
            request = tw.parse_dial_payload(payload)
        except (tw.TunnelProtocolError, WireError) as exc:
            _limiter.warning(log, "tunnel-dial", "reverse tunnel %s: teleport-transport-dial refused: %s", peer, exc)
            chan.write_stderr(f"connection rejected: {exc}".encode())
            chan.reply(False)
            chan.close()
            return
        if request.address != tw.REMOTE_AUTH_SERVER:
            log.warning("Received dial request for unexpected address, routing to the auth server anyway "
                        "address=%r remote_addr=%s", request.address[:200], peer)
        link = self.proxy.auth_link
        if link is None:
            log.error("No auth servers configured")
            chan.write_stderr(b"internal server error")
            chan.reply(False)
            chan.close()
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(IO_TIMEOUT):
                auth, _ = await loop.create_connection(Parked, link.addr.host, link.addr.port)
        except (OSError, TimeoutError) as exc:
            log.error("Failed to dial auth error=%r", str(exc))
            chan.write_stderr(b"failed to dial auth server")
            chan.reply(False)
            chan.close()
            return
        chan.reply(True)
        stream.stderr.clear()
        Pipe.join(stream, auth, name=f"agent {peer} → auth")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            window = self.heartbeat * self.missed
            now = time.monotonic()
            for agent in list(self.agents.values()):
                if now - agent.last_heartbeat > window:
                    self.heartbeats_missed += 1
                    log.warning("agent %s (%s) missed %d heartbeats (%.0fs); dropping its tunnel", agent.host_id,
                                agent.hostname or "-", self.missed, now - agent.last_heartbeat)
                    self._lost(agent, None)
                    agent.conn.close()

    async def _poll_direct(self) -> None:
        while True:
            await self._refresh_direct()
            await asyncio.sleep(DIRECT_POLL)

    async def node_inventory(self, fresh: bool = False) -> dict[str, Any]:
        """``/v1/nodes`` from this registry's inventory, refreshed when older than a second: what
        the SSH proxy resolves node names in (:class:`~tpemu.proxy.ssh_proxy.NodeDirectory`), so
        SSH and database dialling read one inventory instead of fetching their own. Raises the
        Auth Service's error (``AuthAPIError``) when it cannot be refreshed. ``fresh``: refresh now
        (a name not found may be a node that has just joined)."""
        if fresh or time.monotonic() - self._inventory_at > INVENTORY_FRESH:
            try:
                await self._fetch_inventory()
            except (AttributeError, TypeError, ValueError) as exc:  # a malformed answer: keep the last one
                log.warning("the Auth Service's node inventory is malformed: %s", exc)
        return {"items": list(self.node_items)}

    def kept_nodes(self) -> tuple[list[Any], float]:
        """The ``/v1/nodes`` items as last fetched and when (``time.monotonic()``), without asking;
        the list is replaced, never changed, by each fetch."""
        return self.node_items, self._inventory_at

    def tunnel_serves_node(self, host_id: str) -> bool:
        """Whether an authenticated tunnel of ``host_id`` whose certificate's role may serve nodes
        is connected now (what :meth:`dial` would use for it)."""
        return any(a.host_id == host_id and a.transport_ready for a, _ in self.resources(tw.NODE))

    def poll_interval(self) -> float:
        """How often :meth:`_poll_direct` refreshes the inventory (:data:`DIRECT_POLL`)."""
        return DIRECT_POLL

    async def _refresh_direct(self) -> None:
        try:
            await self._fetch_inventory()
        except (authapi.AuthAPIError, AttributeError, TypeError, ValueError) as exc:
            log.debug("listing nodes from the Auth Service failed: %s", exc)

    async def _fetch_inventory(self) -> None:
        """The Auth Service's inventory: directly-joined nodes (an address, no tunnel), and what
        each host serves (``/v1/nodes``, ``/v1/db_servers``) for tunnels that did not say."""
        routes = self.proxy.auth_routes
        if routes is None or routes.identity is None:
            return
        client = routes.client()
        nodes = (await client.call("GET", "/v1/nodes")).get("items") or []
        dbs = (await client.call("GET", "/v1/db_servers")).get("items") or []
        found: dict[str, DirectNode] = {}
        inventory: dict[str, list[tw.Resource]] = {}
        for item in nodes:
            spec = item.get("spec") or {}
            meta = item.get("metadata") or {}
            host_id, labels = str(meta.get("name", "")), dict(meta.get("labels") or {})
            if spec.get("addr") and not spec.get("use_tunnel"):
                found[host_id] = DirectNode(host_id, spec.get("hostname", ""), spec["addr"], labels)
            inventory.setdefault(host_id, []).append(
                tw.Resource(tw.NODE, str(spec.get("hostname") or host_id), labels, addr=str(spec.get("addr", ""))))
        for item in dbs:
            spec = item.get("spec") or {}
            db = spec.get("database") or {}
            db_meta, db_spec = db.get("metadata") or {}, db.get("spec") or {}
            name = str(db_meta.get("name") or (item.get("metadata") or {}).get("name", ""))
            if name:
                inventory.setdefault(str(spec.get("host_id", "")), []).append(tw.Resource(
                    tw.DATABASE, name, dict(db_meta.get("labels") or {}), str(db_spec.get("protocol", "")),
                    str(db_meta.get("description", ""))))
        self.direct = found
        self.inventory = {k: tuple(v) for k, v in inventory.items()}
        self.node_items = list(nodes)
        self._inventory_at = time.monotonic()
        for agent in list(self.agents.values()):
            self._resolve(agent)

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

    async def dial(self, req: tw.DialRequest, timeout: float = 10.0, local_only: bool = False) -> asyncio.Transport:
        """A parked transport to the resource ``req`` names: a tunnel channel, TCP to a direct node,
        or the stream to a peer proxy that holds the tunnel.

        Raises :class:`TunnelError` with a message for the client (unknown resource, agent
        offline, the agent's own refusal). Without a local tunnel for it, and unless
        ``local_only`` (a peer asking), proxy peering (:attr:`peer_dial`) is tried.
        """
        peering = self.peer_dial is not None and not local_only
        # With peers, a local miss asks them before refreshing the inventory from the Auth Service:
        # that refresh (two Auth calls, ~15 ms) on every dial of a tunnel held by a peer was most
        # of the peer hop's setup cost (bench.peering: 3.7x one proxy's connect time, 1.7x without).
        try:
            return await self._dial_local(req, timeout, refresh=not peering)
        except TunnelError as exc:
            if not peering:
                raise
            local_exc: TunnelError = exc
        assert self.peer_dial is not None
        try:
            return await self.peer_dial(req, timeout)
        except TunnelError as peer_exc:
            if isinstance(local_exc, _Unrefreshed):  # nobody has it: maybe it joined since the last poll
                try:
                    return await self._dial_local(req, timeout)
                except TunnelError as exc:
                    local_exc = exc
            raise TunnelError(f"{local_exc}; through peer proxies: {peer_exc}") from None

    async def _dial_local(self, req: tw.DialRequest, timeout: float, refresh: bool = True) -> asyncio.Transport:
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
        if direct is None and not agents:
            if not refresh:
                raise _Unrefreshed(f"{req.server_id or req.address or req.name} has no tunnel on this proxy")
            # An agent or a directly joined node may have announced itself since the last poll.
            await self._refresh_direct()
            agents, direct, what = self._match(req)
            agents = [a for a in agents if a.transport_ready]
            for agent in sorted(agents, key=lambda a: a.last_heartbeat, reverse=True):
                try:
                    return await self._dial_agent(agent, req, timeout)
                except TunnelError as exc:
                    errors.append(str(exc))
        if direct is not None:
            return await self._dial_direct(direct, timeout)
        if errors:
            raise TunnelError("; ".join(errors))
        known = [r.name for _, r in self.resources(req.conn_type)]
        if req.conn_type == tw.NODE:
            known += [n.hostname for n in self.direct.values()]
        hint = f" (known: {', '.join(sorted(set(known)))})" if known else " (no agent serves any right now)"
        if req.conn_type == tw.DATABASE:
            # lib/srv/db/proxyserver.go: trace.NotFound("database %q not found among registered
            # databases in cluster %q") — Go's %q quotes; tpemu adds what is known.
            name = req.name or req.address
            raise TunnelError(f"database {json.dumps(name)} not found among registered databases in cluster "
                              f"{json.dumps(self.cluster)}{hint}")
        raise TunnelError(f"{what} not found in cluster {self.cluster}: no connected agent serves it{hint}")

    async def _dial_agent(self, agent: AgentConn, req: tw.DialRequest, timeout: float) -> asyncio.Transport:
        """``sshutils.ConnectProxyTransport``: a ``teleport-transport`` channel, one dial request."""
        if not req.server_id:
            req = dataclass_replace(req, server_id=f"{agent.host_id}.{self.cluster}")
        if not req.address:
            req = dataclass_replace(req, address=tw.LOCAL_NODE)
        stream = ChannelTransport()
        chan = tssh.TeleportChannel(agent.conn, TRANSPORT_LISTENER)
        try:
            async with asyncio.timeout(timeout):
                await chan.open(stream)
                ok = await chan.request(tssh.REQ_DIAL, req.to_payload())
        except TimeoutError:
            chan.close()
            raise TunnelError(f"agent {agent.host_id} did not answer the dial request within {timeout:g}s") from None
        except (asyncssh.Error, OSError) as exc:
            reason = exc.reason if isinstance(exc, asyncssh.Error) else (str(exc) or type(exc).__name__)
            raise TunnelError(f"agent {agent.host_id} is offline ({reason})") from None
        if not ok:
            # Pull the error message from the agent, passed via stderr (ConnectProxyTransport).
            chan.close()
            text = await stream.stderr_text(timeout=2.0)
            raise TunnelError(text or f"failed connecting to {req.address} [{req.server_id}]")
        stream.stderr.clear()
        return stream  # parked: what the agent sends is kept until the caller joins it

    async def _dial_direct(self, node: DirectNode, timeout: float) -> asyncio.Transport:
        host, _, port = node.addr.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(Parked, host.strip("[]"), int(port))
        except (OSError, TimeoutError, ValueError) as exc:
            raise TunnelError(f"node {node.hostname} ({node.addr}) is unreachable: {exc or 'timed out'}") from None
        return transport
