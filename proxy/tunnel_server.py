"""The SSH server of one agent's reverse tunnel on the proxy: login, channel opens, heartbeats (glue).

Teleport's ``lib/reversetunnel/srv.go`` (``keyAuth``/``checkClientCert``, ``HandleNewChan``,
``handleHeartbeat``) and ``local_cluster.go`` (every request on the heartbeat channel is a
heartbeat), per tunnel connection:

* the agent logs in with SSH publickey auth presenting its host certificate:
  :meth:`_Tunnel.check_cert` accepts a host certificate with the ``x-teleport-authority`` and
  ``x-teleport-role`` extensions, signed by this cluster's host CA, valid now, for the login
  name among its principals, with a role that serves something over a tunnel
  (:data:`ROLE_TUNNEL_TYPES`); refusals are logged in Teleport's words;
* channel opens (:meth:`_Tunnel.on_open`): ``teleport-heartbeat`` registers the agent with the
  registry, ``teleport-transport`` opened by the agent goes to the Auth Service (the only target
  an agent may dial), anything else is refused with Teleport's text;
* heartbeat requests keep the tunnel alive; tpemu's ``resources@tpemu`` says what the agent serves
  (only kinds its certificate's role may serve, :data:`ROLE_SERVES`);
* :class:`_AcceptedSocket` runs the SSH connection on the socket the front door accepted, with the
  tunnel's TLS (TLS routing) in :mod:`tpemu.net.tls_link`.

The registry that owns the tunnels and dials agents over them is :mod:`tpemu.proxy.tunnels`
(its module docstring has the whole wire contract); it is the only user of this module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncssh

from tpemu import identity as ident
from tpemu import sshcert
from tpemu.logs import RateLimiter
from tpemu.net import teleport_ssh as tssh
from tpemu.net import tls_link
from tpemu.net.channel import ChannelTransport
from tpemu.wire import tunnel as tw
from tpemu.wire.errors import WireError

if TYPE_CHECKING:
    from tpemu.proxy.tunnels import AgentConn, TunnelRegistry

#: The registry's logger: these lines were always its own (log filters and tests name it).
log = logging.getLogger("tpemu.proxy.tunnels")
#: Shared with the registry: one rate limit per kind of refusal, whichever side logs it.
_limiter = RateLimiter()

TRANSPORT_LISTENER = tw.CHANNEL_TRANSPORT
HEARTBEAT_CHANNEL = tw.CHANNEL_HEARTBEAT
#: Certificate system roles → Teleport's tunnel types (``srv.go`` ``handleHeartbeat``: Node →
#: NodeTunnel, Db → DatabaseTunnel …; anything else "Unsupported role attempting to connect").
ROLE_TUNNEL_TYPES = {"Node": tw.NODE, "Db": tw.DATABASE, "App": tw.APP, "Kube": tw.KUBE,
                     "WindowsDesktop": "windows_desktop", "Okta": "okta"}
#: What a tunnel may carry, by the system role in its host certificate; ``localsite.go`` dials a
#: resource only over a connection of its type (``getRemoteConn``: key ``{hostID, connType}``).
ROLE_SERVES: dict[str, frozenset[str]] = {role: frozenset({kind}) for role, kind in ROLE_TUNNEL_TYPES.items()}


@dataclass(frozen=True)
class _Authenticated:
    """What ``keyAuth`` puts in ``ssh.Permissions``: login, role, authority."""

    host: str
    role: str
    authority: str


class _TunnelServer(asyncssh.SSHServer):
    """asyncssh's callbacks for one tunnel: publickey auth only; the connection does the rest."""

    def __init__(self, registry: TunnelRegistry, peer: str) -> None:
        self.registry = registry
        self.peer = peer
        self.agents: list[AgentConn] = []

    def connection_lost(self, exc: Exception | None) -> None:
        for agent in self.agents:
            self.registry._lost(agent, exc)

    def begin_auth(self, username: str) -> bool:
        return True

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # A plain key (no certificate): srv.go keyAuth's first check.
        _limiter.warning(log, "tunnel-auth", 'Failed to authenticate client remote_addr=%s user=%s '
                         'error="server doesn\'t support provided key type"', self.peer, username)
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
            # tpemu.net.tls_link rather than the loop's SSL protocol: the same TLS, a fraction of
            # the CPU per record (every tunnelled byte crosses it), and a failed handshake gets
            # its alert.
            try:
                transport = await tls_link.accept_tls(self.sock, protocol, self.ssl_context, self.timeout)
            except BaseException:
                # A failed TLS handshake: the SSH connection made for it must not wait for its
                # login timer to be freed (as proxy/ssh_proxy.py _AcceptedTLS; asyncssh has no
                # public call, and connection_lost is a no-op without a transport).
                cancel = getattr(protocol, "_cancel_login_timer", None)
                if cancel is not None:
                    cancel()
                raise
        return transport, protocol


class _Tunnel:
    """The per-connection handlers: certificate check, channel opens, heartbeat requests."""

    def __init__(self, registry: TunnelRegistry, peer: str, server: _TunnelServer) -> None:
        self.registry = registry
        self.peer = peer
        self.server = server
        self.auth: _Authenticated | None = None
        self.conn: tssh.TunnelServerConnection | None = None

    # -- srv.go keyAuth --------------------------------------------------------------------------

    def check_cert(self, username: str, cert: Any) -> bool:
        try:
            error = self._cert_error(username, cert)
        except Exception as exc:  # the error boundary of a peer-supplied certificate
            error = f"certificate check failed: {type(exc).__name__}: {exc}"
        if error is not None:
            _limiter.warning(log, "tunnel-auth", "Failed to authenticate client remote_addr=%s user=%s error=%r",
                             self.peer, username, error)
            return False
        return True

    def _cert_error(self, username: str, cert: Any) -> str | None:
        reg = self.registry
        try:
            info = sshcert.certificate_info(cert.algorithm + b" " + _b64(cert.public_data))
        except (ValueError, asyncssh.KeyImportError, IndexError, UnicodeDecodeError) as exc:
            return f"bad certificate: {exc}"
        if info.cert_type != sshcert.HOST_CERT:
            # tpemu serves agents only: a user certificate here is a client at the wrong port.
            return "user certificates are not accepted on the reverse tunnel (this port serves agents)"
        authority = info.extensions.get(ident.SSH_EXT_HOST_AUTHORITY, "")
        role = info.extensions.get(ident.SSH_EXT_HOST_ROLE, "")
        hint = ("this SSH host certificate was not issued by Teleport or issued by an older version of Teleport; "
                "try upgrading your Teleport nodes/proxies")
        if not authority:
            return f'certificate missing "{ident.SSH_EXT_HOST_AUTHORITY}" extension; {hint}'
        if not role:
            return f'certificate missing "{ident.SSH_EXT_HOST_ROLE}" extension; {hint}'
        signer = cert.signing_key.public_data
        if authority != reg.cluster or not any(k.public_data == signer for k in reg.host_ca_keys):
            return f"cluster {authority} has no matching CA keys"
        now = time.time()
        if info.valid_after > now:
            return "ssh: cert is not yet valid"
        if info.valid_before < now:
            return "ssh: cert has expired"
        if username not in info.principals:
            return (f'ssh: principal "{username}" not in the set of valid principals for given certificate: '
                    f'{list(info.principals)!r}')
        if role not in ROLE_TUNNEL_TYPES:
            # Teleport accepts the login and refuses the heartbeat ("Unsupported role attempting to
            # connect"; a Proxy role would be a trusted cluster, which tpemu does not emulate):
            # tpemu refuses at once, so such a host holds no idle tunnel.
            return f"Unsupported role attempting to connect: role {role} serves nothing over a reverse tunnel"
        self.auth = _Authenticated(username, role, authority)
        return None

    # -- srv.go HandleNewChan ----------------------------------------------------------------------

    def on_open(self, chantype: str) -> tuple[tssh.TeleportChannel, asyncssh.SSHTCPSession[bytes]]:
        assert self.conn is not None
        conn = self.conn
        if chantype == HEARTBEAT_CHANNEL:
            agent = self._heartbeat_opened()
            return tssh.TeleportChannel(conn, chantype, lambda ch, name, payload: self._ping(agent, name, payload)), \
                ChannelTransport()
        if chantype == TRANSPORT_LISTENER:
            stream = ChannelTransport()
            return tssh.TeleportChannel(conn, chantype, lambda ch, name, payload: self._agent_transport(
                ch, stream, name, payload)), stream
        if chantype == "session":
            msg = "Cannot open new SSH session on reverse tunnel. Are you connecting to the right port?"
        else:
            msg = f"reversetunnel received unknown channel request {chantype} from {self.peer}"
        _limiter.warning(log, "tunnel-channel", "%s (user=%s)", msg, self.auth.host if self.auth else "-")
        raise asyncssh.ChannelOpenError(tssh.OPEN_CONNECT_FAILED, msg)

    def _heartbeat_opened(self) -> AgentConn:
        auth = self.auth
        assert auth is not None and self.conn is not None
        conn_type = ROLE_TUNNEL_TYPES.get(auth.role)
        if conn_type is None:
            log.error("Unsupported role attempting to connect role=%s remote_addr=%s", auth.role, self.peer)
            raise asyncssh.ChannelOpenError(tssh.OPEN_CONNECT_FAILED, f"unsupported role {auth.role}")
        cluster = self.registry.cluster
        if auth.authority != cluster or not auth.host.endswith("." + cluster):
            raise asyncssh.ChannelOpenError(tssh.OPEN_CONNECT_FAILED, f"agent from cluster {auth.authority} "
                                            f"cannot register local service {conn_type}")
        agent = self.registry._register(auth.host[: -len(cluster) - 1], auth.role, conn_type, self.peer, self.conn)
        self.server.agents.append(agent)
        return agent

    def _ping(self, agent: AgentConn, name: str, payload: bytes) -> bool:
        # local_cluster.go handleHeartbeat: every request on the channel is a heartbeat.
        agent.last_heartbeat = time.monotonic()
        agent.pings += 1
        if agent.pings == 1:
            agent.transport_ready = True
            self.registry._first_heartbeat(agent)
        if name == tw.REQ_RESOURCES:
            try:
                announced = _parse_resources(payload)
                allowed = ROLE_SERVES.get(agent.role, frozenset())
                foreign = [r for r in announced if r.kind not in allowed]
                if foreign:
                    raise tw.TunnelProtocolError(
                        f"host {agent.host_id} with role {agent.role} announced "
                        + ", ".join(f"{r.kind} {r.name!r}" for r in foreign)
                        + f" (its certificate lets it serve only {', '.join(sorted(allowed)) or 'nothing'})")
            except (tw.TunnelProtocolError, WireError, ValueError) as exc:
                log.warning("agent %s: bad %s request, closing its tunnel: %s", agent.host_id, tw.REQ_RESOURCES, exc)
                agent.conn.close()
                return False
            agent.announced = announced
            self.registry._resolve(agent)
        return True

    def _agent_transport(self, chan: tssh.TeleportChannel, stream: ChannelTransport, name: str,
                         payload: bytes) -> bool | None:
        if name != tssh.REQ_DIAL:
            return False
        task = asyncio.get_running_loop().create_task(self.registry._to_auth(chan, stream, payload, self.peer))
        self.registry._tasks_bg.add(task)
        task.add_done_callback(self.registry._tasks_bg.discard)
        return None


def _b64(data: bytes) -> bytes:
    import base64

    return base64.b64encode(data)


def _parse_resources(payload: bytes) -> tuple[tw.Resource, ...]:
    if len(payload) > tw.MAX_FRAME:
        raise tw.TunnelProtocolError(f"{len(payload)} bytes exceed {tw.MAX_FRAME}")
    obj = json.loads(payload)
    items = obj.get("resources") if isinstance(obj, dict) else None
    if not isinstance(items, list) or len(items) > 1000:
        raise tw.TunnelProtocolError("expected {\"resources\": [...]} with at most 1000 items")
    return tuple(tw.Resource.from_json(r) for r in items)
