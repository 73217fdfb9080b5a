"""Teleport's reverse-tunnel SSH vocabulary on asyncssh: custom channel types and requests (glue).

Teleport's agents and proxy (``lib/reversetunnel``: ``agent.go``, ``srv.go``, ``local_cluster.go``,
``transport.go``; ``api/utils/sshutils`` ``ConnectProxyTransport``) talk over one SSH connection
with channel types of their own, which Go's ``x/crypto/ssh`` opens and accepts freely:

* ``teleport-heartbeat`` — opened by the agent right after authentication; it sends ``ping``
  requests (no reply wanted; payload: the send time as RFC 3339 text) every
  ``keep_alive_interval``;
* ``teleport-transport`` — opened by the proxy to reach something the agent serves: the first and
  only request is ``teleport-transport-dial`` (reply wanted) whose payload is ``sshutils.DialReq``
  as JSON; the agent first writes one space to the channel's stderr, refuses with the reason on
  stderr and a false reply, or accepts with a true reply and then the channel carries the bytes.
  Opened by the agent it reaches the Auth Service (``@remote-auth-server``);
* ``teleport-discovery`` — opened by the proxy; ``discovery`` requests carry the proxies' names;
* the global request ``x-teleport-version`` (proxy → agent), answered with the version.

asyncssh dispatches channel opens to ``_process_<type>_open`` and requests to
``_process_<name>_request`` on its connection and channel classes; this module extends those
classes the way asyncssh's own subclasses do (its ``SSHForwardChannel``, ``_open``,
``_send_request``, ``_make_request``, ``_report_response``, ``_make_global_request`` and
``_report_global_response``), checked against asyncssh 2.24: :class:`TeleportChannel` is a
channel of any type with stderr both ways and every request handed to one callback,
:class:`TunnelServerConnection` and :class:`TunnelClientConnection` accept only the channel types
a Teleport proxy or agent accepts, answering others with Teleport's refusal. Host certificates are
checked as in ``srv.go`` ``keyAuth`` (publickey auth with a *host* certificate, which stock
asyncssh refuses because it expects user certificates there).

A channel's session is a :class:`tpemu.net.channel.ChannelTransport`: the channel presented as
an asyncio transport (stderr kept apart), which a :class:`tpemu.net.pipe.Pipe` joins to the other
hop directly — no socket in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, cast

import asyncssh
from asyncssh.channel import SSHForwardChannel
from asyncssh.constants import EXTENDED_DATA_STDERR, MSG_CHANNEL_OPEN
from asyncssh.misc import ChannelOpenError
from asyncssh.packet import SSHPacket

from tpemu.net.ssh_lean import LeanChannel, LeanConnection

log = logging.getLogger(__name__)

CHAN_HEARTBEAT = "teleport-heartbeat"
CHAN_TRANSPORT = "teleport-transport"
CHAN_DISCOVERY = "teleport-discovery"
REQ_DIAL = "teleport-transport-dial"
REQ_PING = "ping"
REQ_DISCOVERY = "discovery"
REQ_VERSION = "x-teleport-version"
#: ``ssh.ConnectionFailed``: the reason code Teleport rejects channels with.
OPEN_CONNECT_FAILED = 2
#: A request payload larger than this is refused before it is parsed (a DialReq is < 1 KiB; the
#: tpemu identity it may carry a few KiB).
MAX_REQUEST_PAYLOAD = 64 * 1024
WINDOW = 2 * 1024 * 1024
MAX_PKTSIZE = 32768

#: ``request(name, payload)`` → ``True``/``False`` to answer now, ``None`` to answer later with
#: :meth:`TeleportChannel.reply`.
RequestHandler = Callable[["TeleportChannel", str, bytes], bool | None]


class TeleportChannel(LeanChannel, SSHForwardChannel[bytes]):
    """An SSH channel of a Teleport type: raw bytes, stderr both ways, requests to a callback."""

    _read_datatypes = {EXTENDED_DATA_STDERR}
    _write_datatypes = {EXTENDED_DATA_STDERR}

    def __init__(self, conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection,
                 chantype: str, on_request: RequestHandler | None = None) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(conn, loop, None, "strict", WINDOW, MAX_PKTSIZE)
        self.chantype = chantype
        self.on_request = on_request
        #: Set once the one ``teleport-transport-dial`` request has been taken.
        self.dialled = False

    def _service_next_request(self) -> None:
        request, packet, _ = self._request_queue[0]
        payload = packet.get_remaining_payload()
        result: bool | None = False
        if self.on_request is not None:
            result = self.on_request(self, request, payload)
        if result is not None:
            self._report_response(result)

    def reply(self, ok: bool) -> None:
        """Answer the request the handler left open (``x/crypto/ssh`` ``Request.Reply``)."""
        if self._request_queue:
            self._report_response(ok)

    async def request(self, name: str, payload: bytes = b"", want_reply: bool = True) -> bool:
        """Send a channel request with a raw payload (``Channel.SendRequest``)."""
        if not want_reply:
            self._send_request(name.encode(), payload)
            return True
        return bool(await self._make_request(name.encode(), payload))

    def write_stderr(self, data: bytes) -> None:
        self.write(data, EXTENDED_DATA_STDERR)

    async def open(self, session: asyncssh.SSHTCPSession[bytes]) -> None:
        """Open this channel toward the peer (no type-specific data, as Teleport opens them)."""
        await self._open_forward(lambda: session, self.chantype.encode())


# -- connections ------------------------------------------------------------------------------------

#: Accepts a channel the peer opened: ``(channel, session)`` or raises :class:`ChannelOpenError`.
OpenHandler = Callable[[str], tuple[TeleportChannel, asyncssh.SSHTCPSession[bytes]]]


def _dispatch_open(conn: Any, packet: SSHPacket, handler: OpenHandler) -> None:
    # asyncssh's SSHConnection._process_channel_open, with every type going to ``handler``.
    chantype_bytes = packet.get_string()
    send_chan = packet.get_uint32()
    send_window = packet.get_uint32()
    send_pktsize = packet.get_uint32()
    if send_pktsize <= 0:
        raise asyncssh.ProtocolError("Invalid maximum packet size")
    chantype = chantype_bytes.decode("ascii", "replace")
    extra = packet.get_remaining_payload()
    try:
        chan, session = handler(chantype if not extra else chantype + " (with type-specific data)")
        chan.process_open(send_chan, send_window, send_pktsize, session)
    except ChannelOpenError as exc:
        conn.send_channel_open_failure(send_chan, exc.code, exc.reason, exc.lang)


class TunnelServerConnection(LeanConnection, asyncssh.SSHServerConnection):
    """The proxy's end: channel opens go to ``on_open``; host certificates to ``check_cert``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, options: asyncssh.SSHServerConnectionOptions,
                 on_open: OpenHandler, check_cert: Callable[[str, asyncssh.SSHCertificate], bool]) -> None:
        super().__init__(loop, options, wait="auth")
        self.on_open = on_open
        self.check_cert = check_cert

    def _process_channel_open(self, _pkttype: int, _pktid: int, packet: SSHPacket) -> None:
        _dispatch_open(self, packet, self.on_open)

    # asyncssh dispatches packets through this class-level table, not by method lookup.
    _packet_handlers = {**asyncssh.SSHServerConnection._packet_handlers,
                        MSG_CHANNEL_OPEN: _process_channel_open}

    async def _validate_openssh_certificate(self, username: str, cert: Any) -> asyncssh.SSHKey | None:
        # srv.go keyAuth: the agent presents its *host* certificate in publickey auth.
        return cast(asyncssh.SSHKey, cert.key) if self.check_cert(username, cert) else None

    async def _validate_client_public_key(self, username: str, key_data: bytes) -> asyncssh.SSHKey | None:
        # A certificate was judged above (refusals logged there): it is not also a plain key.
        n = int.from_bytes(key_data[:4], "big")
        if key_data[4:4 + n].endswith(b"-cert-v01@openssh.com"):
            return None
        return await super()._validate_client_public_key(username, key_data)

    async def teleport_version(self, timeout: float = 10.0) -> str | None:
        """Ask the agent for its version (global request ``x-teleport-version``)."""
        from asyncssh.constants import MSG_REQUEST_SUCCESS

        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            async with asyncio.timeout(timeout):
                pkttype, packet = await self._make_global_request(REQ_VERSION.encode())
                if pkttype == MSG_REQUEST_SUCCESS:
                    return packet.get_remaining_payload().decode("utf-8", "replace")[:64]
        return None


class TunnelClientConnection(LeanConnection, asyncssh.SSHClientConnection):
    """The agent's end: channel opens go to ``on_open``; ``x-teleport-version`` is answered."""

    def __init__(self, loop: asyncio.AbstractEventLoop, options: asyncssh.SSHClientConnectionOptions,
                 on_open: OpenHandler, version: str) -> None:
        super().__init__(loop, options, wait="auth")
        self.on_open = on_open
        self.version = version

    def _process_channel_open(self, _pkttype: int, _pktid: int, packet: SSHPacket) -> None:
        _dispatch_open(self, packet, self.on_open)

    _packet_handlers = {**asyncssh.SSHClientConnection._packet_handlers,
                        MSG_CHANNEL_OPEN: _process_channel_open}

    def _process_x_teleport_version_global_request(self, packet: SSHPacket) -> None:
        # agent.go handleGlobalRequests: Reply(true, []byte(version)).
        self._report_global_response(self.version.encode())


async def establish(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection,
                    options: asyncssh.SSHClientConnectionOptions | asyncssh.SSHServerConnectionOptions,
                    tunnel: Any, timeout: float) -> None:
    """Run ``conn`` over ``tunnel`` (an asyncssh ``tunnel=`` object) until authentication is done.

    What asyncssh's ``connect``/``connect_reverse`` do, for connection classes of our own.
    """
    try:
        await tunnel.create_connection(lambda: conn, "", 0)
        waiter = options.waiter
        assert waiter is not None
        async with asyncio.timeout(timeout):
            await waiter
    except BaseException:
        conn.abort()
        raise


async def client_options(**kwargs: Any) -> asyncssh.SSHClientConnectionOptions:
    options = cast(asyncssh.SSHClientConnectionOptions,
                   await asyncssh.SSHClientConnectionOptions.construct(None, **kwargs))
    options.waiter = asyncio.get_running_loop().create_future()
    return options


async def server_options(**kwargs: Any) -> asyncssh.SSHServerConnectionOptions:
    options = cast(asyncssh.SSHServerConnectionOptions,
                   await asyncssh.SSHServerConnectionOptions.construct(None, **kwargs))
    options.waiter = asyncio.get_running_loop().create_future()
    return options
