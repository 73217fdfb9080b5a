"""The SSH Service of an agent: an SSH server that runs commands and shells as sshd does (glue).

Teleport's node (``lib/srv/regular/sshserver.go``) on asyncssh; this module is the server and its
connections, :mod:`tpemu.agent.ssh_session` one session channel (exec or shell, pty, environment,
hang-ups: ``lib/srv/sess.go``, ``lib/srv/ctx.go``):

* **Host identity.** The server presents the agent's key with the SSH host certificate the Auth
  Service issued at join (principals ``<host_id>.<cluster>``, ``<host_id>``,
  ``<nodename>.<cluster>``, ``<nodename>``, loopback names), so an OpenSSH client with
  ``@cert-authority *.<cluster> <host CA>`` in its known_hosts verifies it.
* **Users.** Only certificates signed by the cluster's *user* CA are accepted, for a login that
  is one of the certificate's principals (asyncssh checks principals and validity; logins that
  start with ``-`` — Teleport's ``-teleport-nologin-…`` placeholders — are never accepted).
  Plain keys and passwords are refused.
* **Forwarding.** Port forwarding is off unless ``ssh_service.port_forwarding`` is on *and* the
  certificate permits it; agent and X11 forwarding and subsystems (sftp) are refused.

Connections arrive on :meth:`SSHService.serve`, one parked transport each (a tunnel channel, or a
TCP connection): the agent's
reverse-tunnel client calls it for every ``DialRequest`` the proxy sends, and in direct-dial mode
the agent process calls it for every connection accepted on ``ssh_service.listen_addr`` (3022).
:func:`make_offers` is the ``node`` role for ``tpemu.agent.services``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import asyncssh

from tpemu import authclient
from tpemu.agent.ssh_session import KILL_GRACE, Session
from tpemu.agent.tunnel import Offer
from tpemu.authclient import HostIdentity
from tpemu.errors import describe as describe_error
from tpemu.net.channel import OverTransport
from tpemu.net.sockets import format_addr
from tpemu.net.ssh_lean import ServerOptions
from tpemu.wire import tunnel as tw
from tpemu.wire.tunnel import DialRequest

if TYPE_CHECKING:
    from tpemu.agent.process import AgentContext

log = logging.getLogger(__name__)

#: What Teleport's SSH servers call themselves (``sshutils.SSHVersionPrefix``).
SERVER_VERSION = "Teleport"
LOGIN_TIMEOUT = 30.0
_LOGIN = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,255}$")


def refuse_login(login: str) -> str | None:
    """Why ``login`` can never be used on a node (``None`` if it may be, given a certificate).

    Teleport's placeholder principals (``-teleport-nologin-<uuid>``, ``-teleport-internal-join``)
    start with ``-``: never a Unix login.
    """
    if not _LOGIN.fullmatch(login):
        return f"{login[:64]!r} is not a valid login"
    return None


# -- the service ------------------------------------------------------------------------------------


class SSHService:
    """One agent's SSH Service: host identity, trusted user CA, sessions.

    ``user_ca_keys`` are the user CA's SSH public keys (``authorized_keys`` lines, as
    ``GET /v1/authorities/user`` returns them: :func:`tpemu.authclient.fetch_user_ca_ssh_keys`).
    """

    def __init__(self, identity: HostIdentity, user_ca_keys: Iterable[bytes | str], *, nodename: str,
                 labels: Mapping[str, str] | None = None, port_forwarding: bool = False,
                 login_timeout: float = LOGIN_TIMEOUT) -> None:
        if not identity.ssh_cert:
            raise ValueError(f"host {identity.host_id} has no SSH host certificate (join with a public SSH key)")
        self.identity = identity
        self.cluster_name = identity.cluster_name
        self.nodename = nodename
        self.labels = dict(labels or {})
        self.port_forwarding = port_forwarding
        self.login_timeout = login_timeout
        self.host_key = asyncssh.import_private_key(identity.key_pem)
        self.host_cert = asyncssh.import_certificate(identity.ssh_cert)
        self._user_cas: list[Any] = []
        self.set_user_ca_keys(user_ca_keys)
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._ssh_options: ServerOptions | None = None
        self._sessions: set[Session] = set()

    def set_user_ca_keys(self, keys: Iterable[bytes | str]) -> None:
        """Trust these user CA keys from now on (CA rotation: the agent refetches them)."""
        cas = []
        for key in keys:
            try:
                cas.append(asyncssh.import_public_key(key))
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise ValueError(f"not an SSH public key for the user CA: {exc}") from None
        if not cas:
            raise ValueError("no user CA key: the SSH Service could not authenticate anyone")
        self._user_cas = cas

    def is_user_ca(self, key: Any) -> bool:
        return any(key.public_data == ca.public_data for ca in self._user_cas)

    # -- connections ---------------------------------------------------------------------------

    def _server_options(self) -> ServerOptions:
        # Built once for every connection (the host identity is fixed for the service's life).
        if self._ssh_options is None:
            self._ssh_options = ServerOptions(
                server_host_keys=[(self.host_key, self.host_cert)],
                server_version=SERVER_VERSION,
                encoding=None,  # sessions carry bytes
                line_editor=False,  # the remote shell or the pty does line editing, as with sshd
                allow_pty=True,
                x11_forwarding=False,
                agent_forwarding=False,
                sftp_factory=None,
                allow_scp=False,
                login_timeout=self.login_timeout,
                keepalive_interval=300,
            )
        return self._ssh_options

    async def serve(self, transport: asyncio.BaseTransport, request: DialRequest) -> None:
        """Serve one SSH connection on ``transport`` (a parked tunnel channel or TCP connection)
        until it ends.

        The reverse-tunnel client calls this for each dial request the proxy sends, with the
        channel itself: SSH runs on it directly (:class:`~tpemu.net.channel.OverTransport`, the
        server side over a transport that already exists). The client's address is
        ``request.client_src_addr`` (the transport's peer is the tunnel).
        """
        peer = request.client_src_addr or _peer_of(transport)
        try:
            conn = await self._server_options().accept(OverTransport(transport),
                                                       lambda: NodeServer(self, request, peer))
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            # ValueError: asyncssh's PacketDecodeError, a peer that is not speaking SSH.
            log.info("ssh service: connection from %s ended before login: %s", peer, describe_error(exc))
            with contextlib.suppress(Exception):
                transport.close()
            return
        await self._run(conn)

    async def _run(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conns.add(conn)
        try:
            await conn.wait_closed()
        finally:
            self._conns.discard(conn)

    @property
    def server_id(self) -> str:
        return f"{self.identity.host_id}.{self.cluster_name}"

    async def close(self) -> None:
        """Close every connection and hang up every session (the agent is stopping)."""
        for conn in list(self._conns):
            conn.close()
        for session in list(self._sessions):
            session.hang_up("the SSH Service is stopping")
        waits = [s.finished.wait() for s in self._sessions]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), KILL_GRACE + 1)


async def make_offers(ctx: AgentContext) -> list[Offer]:
    """The ``node`` role of an agent (``tpemu.agent.services``): one SSH service, announced as a node.

    The user CA comes from the Auth Service (through the proxy for agents joined through it). The
    dial names the proxy may use for this node: its host ID, ``<host_id>.<cluster>`` and
    ``@local-node`` (Teleport's name for "the node this agent runs").
    """
    keys = await authclient.fetch_user_ca_ssh_keys(ctx.auth)
    ssh = ctx.cfg.ssh_service
    service = SSHService(ctx.identity, keys, nodename=ctx.nodename, labels=ctx.labels,
                         port_forwarding=ssh.port_forwarding)
    host_id = ctx.identity.host_id
    resource = tw.Resource(tw.NODE, ctx.nodename, dict(ctx.labels))
    return [Offer(resource, service, aliases=(host_id, service.server_id, tw.LOCAL_NODE))]


def _peer_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return format_addr(peer[:2]) if isinstance(peer, tuple) and len(peer) >= 2 else "?"


# -- one connection -------------------------------------------------------------------------------


class NodeServer(asyncssh.SSHServer):
    """Authentication and channel policy for one client connection."""

    def __init__(self, service: SSHService, request: DialRequest | None, peer: str) -> None:
        self.service = service
        self.request = request
        self.peer = peer
        self.conn: asyncssh.SSHServerConnection | None = None
        self.login = ""
        self.offered_ca = False
        self.authenticated = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.authenticated and self.offered_ca:
            # asyncssh checked the certificate after we accepted its CA: the login is not one of
            # its principals, or it is not valid now.
            log.warning("ssh service: peer=%s login %r refused: the certificate (signed by the user CA) does not "
                        "allow this login, or has expired", self.peer, self.login)
        elif self.authenticated:
            log.info("ssh service: peer=%s login=%s disconnected%s", self.peer, self.login,
                     f" ({describe_error(exc)})" if exc else "")

    def begin_auth(self, username: str) -> bool:
        self.login = username
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: Any) -> bool:
        return False  # only certificates from the user CA

    def validate_ca_key(self, username: str, key: Any) -> bool:
        why = refuse_login(username)
        if why is not None:
            log.warning("ssh service: peer=%s refused: %s", self.peer, why)
            return False
        if not self.service.is_user_ca(key):
            log.warning("ssh service: peer=%s login %r refused: certificate not signed by the user CA of %s",
                        self.peer, username, self.service.cluster_name)
            return False
        self.offered_ca = True
        return True

    def auth_completed(self) -> None:
        self.authenticated = True
        log.info("ssh service: peer=%s logged in as %s", self.peer, self.login)

    def session_requested(self) -> Session:
        assert self.conn is not None
        return Session(self.service, self, self.conn)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        if not self.service.port_forwarding:
            log.info("ssh service: peer=%s port forwarding to %s:%d refused (ssh_service.port_forwarding is off)",
                     self.peer, dest_host, dest_port)
            return False
        return True  # asyncssh also checks the certificate's permit-port-forwarding

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return self.service.port_forwarding


__all__ = ["NodeServer", "SSHService", "make_offers", "refuse_login"]
