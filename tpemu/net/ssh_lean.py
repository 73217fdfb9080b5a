"""Per-packet work asyncssh does that tpemu's SSH hops do not need (glue over asyncssh 2.24).

A Postgres ``select 1`` through proxy + reverse tunnel crossed asyncssh's packet path four times
(proxy → agent and back, each sent and received) and every crossing was doubled. Measured with
cProfile in the all-in-one process (issue 13): 4.05 packets sent and 4.05 received per round trip
where 2 carry data, the other two being the empty ``SSH_MSG_IGNORE`` asyncssh's
``SSHConnection.send_packet`` puts in front of *every* packet once encryption is on; plus 8 packet
log lines per round trip formatted (f-strings, ``plural``) and thrown away below debug level 3.

* **The ignore packet** is RFC 4251 §9.3.1's countermeasure to the chosen-plaintext attack on
  CBC mode (predictable IVs: the IV of a packet is the last ciphertext block of the previous one).
  With an AEAD cipher (``aes*-gcm@openssh.com``, ``chacha20-poly1305@openssh.com``, what both
  ends of tpemu's tunnels negotiate first) each packet has its own nonce and the attack does not
  apply, and Teleport's Go peers (``x/crypto/ssh``) never send one. :class:`LeanSSH` drops it for
  those ciphers only; a CBC or CTR connection keeps it. It is dropped before asyncssh gives it a
  sequence number, so both ends still agree on the numbering.
* **Packet logging** goes through unchanged when asyncssh's debug level is 3 (``asyncssh
  .set_debug_level(3)``, the only level that logs packets); below it the call returns at once.
* **The keepalive timer** was cancelled and armed again (a ``TimerHandle`` each time) on every
  read from the transport. Here a read only notes the time; when the armed timer fires and data
  came in meanwhile, it is armed again for the rest of the interval. It still fires
  ``keepalive_interval`` after the last read, as asyncssh's does.
* **AES-GCM** built a new ``AESGCM`` object (its key schedule) for every packet in each
  direction; :class:`_GCM` keeps one per key. Same nonce sequence (RFC 5647 §7.1: the 64-bit
  invocation counter of the IV goes up by one per packet), same bytes on the wire.
* **Channel data, both ways** (issue 13, the second pass). Sending a ``CHANNEL_DATA`` took
  asyncssh ten calls and five copies (``SSHChannel.write`` copies into a ``bytearray`` send
  buffer, ``_flush_send_buf`` slices it, ``String``, the channel's and the connection's
  ``send_packet`` each join again, padding, then ``packet + mac``); receiving one took eight
  (header and body decrypted in two steps, an ``SSHPacket`` parser, the handler table, two
  debug-log calls). :meth:`LeanChannel.write` builds the packet's payload in one step and
  :meth:`LeanConnection._lean_send_payload` pads, seals and writes it when the packet could go out
  at once anyway: keys in place, nothing deferred, no rekey due, AES-GCM, no compression, the
  channel's send buffer empty and the data within the peer's window and packet size. The padding
  comes from a pool filled by ``os.urandom`` (one ``getrandom`` per 4 KiB instead of one per
  packet; still random, never reused). On the way in, :meth:`LeanConnection._recv_pkthdr` opens a
  whole AES-GCM packet in one call and hands a well-formed ``CHANNEL_DATA`` for an open channel
  within its window straight to the channel's ``_accept_data`` (asyncssh's own: window
  accounting, pausing, window adjusts, delivery). Everything else, and every case that would be
  an error, takes asyncssh's path unchanged, with the packet already opened (:attr:`_GCM.opened`:
  the cipher hands it over instead of decrypting again, so the nonces stay in step). Debug
  levels 2 and 3 (asyncssh's data and packet logs) take asyncssh's path for everything.

* **Every SSH server and client tpemu runs** (issue 13, the third pass), not only the tunnel's:
  the proxy's SSH service and the node's serve :class:`LeanServerConnection` (session channels
  :class:`LeanServerChannel`) on options built once per service (:class:`ServerOptions`; asyncssh
  built them per connection *and again* at the first userauth request, ``reload_config``, each
  time in the thread pool), and ``tpemu ssh`` dials :class:`LeanClientConnection`
  (:func:`connect_client`: options built in the loop, no worker thread). Measured in
  ``bench.fullstack_builds``: SSH session setup with a new proxy connection, CPU per setup 21.0 →
  13.1 ms in the tpemu process and 14.1 → 9.5 ms in the client (load ~3.3).

* **Work per login that gives the same answer every time** (issue 13, the fourth pass): the
  user's certificate was decoded and its CA signature checked twice per login on the server (the
  publickey query, then the signed request) and the host's once per connection on the client;
  :func:`decoded_certificate` keeps the decoded certificate by its exact bytes. asyncssh's
  ``saslprep`` of the user name (RFC 4013 stringprep, ~70 µs) ran at each of the three userauth
  requests of a login and at each client connection; :func:`saslprep_kept` keeps its answers for
  user names (asyncssh's ``connection`` module calls it for those only; passwords, in ``auth``,
  are not kept). A session channel of ``tpemu ssh`` (:class:`LeanClientChannel`) takes the lean
  data paths too: the proxy connection's ``proxy:`` channel carries every packet of the inner
  connection to the node. asyncssh's logger formats every debug line's arguments before it
  checks the level (``SSHLogger.log``); it checks first now.

:class:`LeanConnection` and :class:`LeanChannel` are the first bases of tpemu's asyncssh connection
and channel subclasses (the reverse tunnel's ``TunnelServerConnection``/``TunnelClientConnection``,
``TeleportChannel``). Checked against asyncssh
2.24 (``pyproject.toml`` pins ``<3``); ``tests/net/test_ssh_lean.py`` fails if a new asyncssh
changes either path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import Callable
from typing import Any

import asyncssh
import asyncssh.connection as _asyncssh_connection
from asyncssh.channel import SSHClientChannel, SSHServerChannel
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE, MSG_USERAUTH_LAST
from asyncssh.encryption import ChachaEncryption, Encryption, GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import MACError
from asyncssh.public_key import KeyImportError, SSHCertificate, SSHKey, decode_ssh_certificate
from asyncssh.saslprep import saslprep as _original_saslprep
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: The payload of the ignore packet asyncssh inserts (``String(b'')``).
_EMPTY_STRING = b"\x00\x00\x00\x00"
_AEAD = (GCMEncryption, ChachaEncryption)
#: asyncssh logs packets at debug level 3 only (``SSHLogger.packet``).
PACKET_DEBUG_LEVEL = 3
#: asyncssh logs every channel write and read at debug level 2 (``SSHLogger.debug2``).
DATA_DEBUG_LEVEL = 2
_GCM_TAG = 16
#: A ``CHANNEL_DATA`` payload's head: type, recipient channel, data length (RFC 4254 §5.2).
_DATA_HEAD = struct.Struct(">BII")
_U32 = struct.Struct(">I")
#: Random padding is cut from a pool this large, filled again from ``os.urandom`` when used up.
PAD_POOL = 4096


class _Padding:
    """Random bytes for packet padding (RFC 4253 §6: random, 4 to 255 bytes), drawn from a pool."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        at = self._at
        if at + n > len(self._pool):
            self._pool, at = os.urandom(PAD_POOL), 0
        self._at = at + n
        return self._pool[at:at + n]


_PADDING = _Padding()


class _GCM:
    """asyncssh's ``GCMCipher`` interface with one ``AESGCM`` per key instead of one per packet,
    plus the one-call :meth:`seal`/:meth:`open` of the lean path."""

    __slots__ = ("_aead", "_fixed", "_invocation", "opened")

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._invocation = int.from_bytes(iv[4:], "big")
        #: A packet :meth:`open` decrypted that asyncssh's path is to process: returned by the next
        #: :meth:`verify_and_decrypt` instead of decrypting (its nonce is used already).
        self.opened: bytes | None = None

    def _nonce(self) -> bytes:
        nonce = self._fixed + self._invocation.to_bytes(8, "big")
        self._invocation = (self._invocation + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce

    def encrypt_and_sign(self, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = self._aead.encrypt(self._nonce(), data, header)
        return header + sealed[:-_GCM_TAG], sealed[-_GCM_TAG:]

    def verify_and_decrypt(self, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        if self.opened is not None:
            opened, self.opened = self.opened, None
            return opened
        nonce = self._nonce()
        try:
            return self._aead.decrypt(nonce, data + mac, header)
        except InvalidTag:
            return None

    def seal(self, header: bytes, data: bytes) -> bytes:
        """``header`` (the packet length, authenticated, not encrypted) + ciphertext + tag."""
        return header + self._aead.encrypt(self._nonce(), data, header)

    def open(self, header: bytes, sealed: bytes | memoryview) -> bytes | None:
        """The plaintext of ciphertext + tag ``sealed``; ``None`` when it does not verify."""
        nonce = self._nonce()
        try:
            return self._aead.decrypt(nonce, sealed, header)
        except InvalidTag:
            return None


def _gcm_of(enc: Encryption | None) -> _GCM | None:
    cipher = getattr(enc, "_cipher", None)
    return cipher if isinstance(cipher, _GCM) else None


def _lean_encryption(enc: Encryption | None) -> Encryption | None:
    if isinstance(enc, GCMEncryption):
        old = enc._cipher  # asyncssh's GCMCipher: its key and current IV
        enc._cipher = _GCM(old._key, old._iv)  # type: ignore[assignment]
    return enc


class LeanChannel:
    """Mixin for an asyncssh channel class: packet logging only at debug level 3; channel data
    written through :meth:`LeanConnection._lean_send_payload` when it can go out at once."""

    __slots__ = ()  # adds no state: a channel's class can become a lean one (LeanClientChannel)

    def log_sent_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        if SSHLogger._debug_level >= PACKET_DEBUG_LEVEL:
            super().log_sent_packet(pkttype, pktid, packet, note)  # type: ignore[misc]

    def log_received_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        if SSHLogger._debug_level >= PACKET_DEBUG_LEVEL:
            super().log_received_packet(pkttype, pktid, packet, note)  # type: ignore[misc]

    def write(self, data: Any, datatype: int | None = None) -> None:
        if not _lean_write(self, data, datatype):
            super().write(data, datatype)  # type: ignore[misc]


def _lean_write(c: Any, data: Any, datatype: int | None) -> bool:
    """asyncssh's ``SSHChannel.write`` when the data fits the peer's window and packet size and
    nothing is queued before it (so asyncssh would send it as one packet now, too); ``False``
    (nothing done) otherwise."""
    n = len(data)
    if (datatype is None and 0 < n <= c._send_window and n <= c._send_pktsize and not c._send_buf
            and c._send_state == "open" and c._encoding is None and isinstance(c._conn, LeanConnection)
            and c._conn._lean_send_payload(_DATA_HEAD.pack(MSG_CHANNEL_DATA, c._send_chan, n) + data)):
        c._send_window -= n
        return True
    return False


class LeanConnection(LeanChannel):
    """Mixin for an asyncssh connection class: see the module docstring."""

    _lean_last: float | None = None
    _lean_interval: float = 0.0
    _lean_send: Encryption | None = None
    _lean_recv: Encryption | None = None
    #: The AES-GCM ciphers of the lean paths (``None``: another cipher, asyncssh's paths only).
    _lean_seal: _GCM | None = None
    _lean_open: _GCM | None = None

    # asyncssh assigns these when keys change (``_send_newkeys``/``_process_newkeys``).
    @property
    def _send_encryption(self) -> Encryption | None:
        return self._lean_send

    @_send_encryption.setter
    def _send_encryption(self, enc: Encryption | None) -> None:
        self._lean_send = _lean_encryption(enc)
        self._lean_seal = _gcm_of(self._lean_send)

    @property
    def _recv_encryption(self) -> Encryption | None:
        return self._lean_recv

    @_recv_encryption.setter
    def _recv_encryption(self, enc: Encryption | None) -> None:
        self._lean_recv = _lean_encryption(enc)
        self._lean_open = _gcm_of(self._lean_recv)

    def _set_keepalive_timer(self) -> None:
        self._lean_last = None
        self._lean_interval = self._keepalive_interval  # type: ignore[attr-defined]
        super()._set_keepalive_timer()  # type: ignore[misc]

    def _reset_keepalive_timer(self) -> None:
        if (self._auth_complete and self._keepalive_timer is not None  # type: ignore[attr-defined]
                and self._keepalive_interval == self._lean_interval):  # type: ignore[attr-defined]
            self._lean_last = self._loop.time()  # type: ignore[attr-defined]
            return
        super()._reset_keepalive_timer()  # type: ignore[misc]

    def _keepalive_timer_callback(self) -> None:
        last, self._lean_last = self._lean_last, None
        if last is not None:
            rest = last + self._keepalive_interval - self._loop.time()  # type: ignore[attr-defined]
            if rest > 0:
                self._keepalive_timer = self._loop.call_later(  # type: ignore[attr-defined]
                    rest, self._keepalive_timer_callback)
                return
        super()._keepalive_timer_callback()  # type: ignore[misc]

    def send_packet(self, pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if (pkttype == MSG_IGNORE and args == (_EMPTY_STRING,)
                and isinstance(self._lean_send, _AEAD)):
            return
        # The connection protocol's packets (channel data, window adjusts, requests) take the lean
        # path when they can; key exchange and authentication always asyncssh's.
        if (pkttype > MSG_USERAUTH_LAST and SSHLogger._debug_level < PACKET_DEBUG_LEVEL
                and self._lean_send_payload(bytes((pkttype,)) + b"".join(args))):
            return
        super().send_packet(pkttype, *args, **kwargs)  # type: ignore[misc]

    # -- the lean data paths ------------------------------------------------------------------------

    def _lean_send_payload(self, payload: bytes) -> bool:
        """Pad, seal and write one packet (``payload``: type byte first); ``False`` (nothing done)
        when asyncssh's ``send_packet`` must: keys changing or not yet in place, packets deferred,
        a rekey due, another cipher than AES-GCM, compression, data debug logging."""
        gcm = self._lean_seal
        c: Any = self
        if (gcm is None or not c._kex_complete or not c._auth_complete or c._deferred_packets
                or c._compressor is not None or c._transport is None
                or SSHLogger._debug_level >= DATA_DEBUG_LEVEL
                or c._rekey_bytes_sent >= c._rekey_bytes
                or (c._rekey_seconds and time.monotonic() >= c._rekey_time)):
            return False
        n = len(payload)
        padlen = -(c._send_enchdrlen + n) % c._send_blocksize
        if padlen < 4:
            padlen += c._send_blocksize
        pktlen = 1 + n + padlen
        packet = gcm.seal(_U32.pack(pktlen), bytes((padlen,)) + payload + _PADDING.take(padlen))
        try:
            c._transport.write(packet)
        except ConnectionError:  # as asyncssh's _send
            pass
        c._send_seq = (c._send_seq + 1) & 0xFFFFFFFF
        c._rekey_bytes_sent += pktlen
        return True

    def _recv_pkthdr(self) -> bool:
        # asyncssh's loop calls this for every packet. A whole AES-GCM packet in the buffer is
        # opened here in one call; a CHANNEL_DATA that asyncssh would accept goes to its channel.
        gcm = self._lean_open
        c: Any = self
        buf: bytes = c._inpbuf
        if (gcm is None or not c._auth_complete or c._decompressor is not None or len(buf) < 4
                or SSHLogger._debug_level >= DATA_DEBUG_LEVEL):
            return bool(super()._recv_pkthdr())  # type: ignore[misc]
        pktlen = int.from_bytes(buf[:4], "big")
        end = 4 + pktlen + _GCM_TAG
        if pktlen > c._max_recv_pktlen or len(buf) < end:
            return bool(super()._recv_pkthdr())  # type: ignore[misc]  # too large, or not all here
        seq = c._recv_seq
        plain = gcm.open(buf[:4], buf[4:end])
        if plain is None:
            raise MACError("MAC verification failed")
        if len(plain) >= 10 and plain[1] == MSG_CHANNEL_DATA:
            found = c._channels.get(int.from_bytes(plain[2:6], "big"))
            chan: Any = found if isinstance(found, LeanChannel) else None
            datalen = int.from_bytes(plain[6:10], "big")
            if (chan is not None and 10 + datalen == len(plain) - plain[0]
                    and chan._recv_state == "open" and datalen <= chan._recv_window):
                c._inpbuf = buf[end:]
                chan._accept_data(plain[10:10 + datalen])
                c._finish_recv_packet(MSG_CHANNEL_DATA, seq)
                return True
        # Anything else (and every error) on asyncssh's path, which gets this plaintext back.
        gcm.opened = plain
        return bool(super()._recv_pkthdr())  # type: ignore[misc]


# -- per-login work that gives the same answer every time -------------------------------------------------

#: Decoded certificates and prepared user names kept, at most (the lot is dropped when full: both
#: come from peers before they are authenticated).
KEPT_MAX = 256
_certs: dict[bytes, SSHCertificate] = {}
_names: dict[str, str] = {}
_saslprep: Callable[[str], str] = _original_saslprep


def decoded_certificate(data: bytes) -> SSHCertificate | None:
    """asyncssh's ``decode_ssh_certificate(data)``, kept by ``data``; ``None`` when ``data`` is not
    a certificate (asyncssh's ``KeyImportError``).

    Decoding parses the certificate and checks its CA's signature over exactly these bytes, so the
    same bytes always give the same certificate and the same verdict. Everything that can change is
    checked at each use, after this, as before: the signing CA against the ones trusted now, the
    validity period, the principals, the source address (asyncssh's
    ``_validate_openssh_certificate``/``_validate_openssh_host_certificate``). The one thing
    asyncssh writes on a decoded certificate, its key's touch-required flag (security keys), is
    set at each use from the certificate's own options and the server's ``authorized_keys``
    options; tpemu's servers load none, so it is the same for the same bytes.

    The signature checked here is by the key the certificate names as its signer, whoever that
    is: a peer can make any number of certificates that decode, so at most :data:`KEPT_MAX` are
    kept (all dropped when full)."""
    cert = _certs.get(data)
    if cert is None:
        try:
            cert = decode_ssh_certificate(data)
        except KeyImportError:
            return None
        if len(_certs) >= KEPT_MAX:
            _certs.clear()
        _certs[bytes(data)] = cert
    return cert


def saslprep_kept(name: str) -> str:
    """asyncssh's ``saslprep`` (RFC 4013), kept for names up to 256 characters; an error
    (``SASLPrepError``) is raised each time and nothing is kept."""
    done = _names.get(name)
    if done is None:
        done = _saslprep(name)
        if len(name) <= 256:
            if len(_names) >= KEPT_MAX:
                _names.clear()
            _names[name] = done
    return done


def _log_if_enabled(self: SSHLogger, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
    # asyncssh's SSHLogger.log turns every argument into text (algorithm lists joined, bytes
    # decoded) before the logger looks at the level: ~50 debug lines per login at each end, all
    # formatted and dropped below DEBUG. The same check first (LoggerAdapter.log makes it too).
    if self.isEnabledFor(level):
        _asyncssh_log(self, level, msg, *args, **kwargs)


_asyncssh_log = SSHLogger.log
SSHLogger.log = _log_if_enabled  # type: ignore[method-assign]


# asyncssh's connection module prepares user names only (the client's and, at each userauth request,
# the server's); password changes go through asyncssh.auth's own import, not replaced.
setattr(_asyncssh_connection, "saslprep", saslprep_kept)  # noqa: B010 (a module's global, replaced)


# -- servers: the proxy's SSH service, the node's ------------------------------------------------------


class LeanServerChannel(LeanChannel, SSHServerChannel[Any]):
    """asyncssh's session channel with :class:`LeanChannel`'s data paths."""


class LeanServerConnection(LeanConnection, asyncssh.SSHServerConnection):
    """An asyncssh server connection with the lean paths, on options shared by many connections
    (:class:`ServerOptions`): its own ``SSHServer`` factory and waiter instead of the options'."""

    def __init__(self, loop: asyncio.AbstractEventLoop, options: asyncssh.SSHServerConnectionOptions,
                 server_factory: Callable[[], asyncssh.SSHServer], waiter: asyncio.Future[None]) -> None:
        super().__init__(loop, options, wait="auth")
        # SSHConnection.__init__ copies these two from the options; connection_made calls the
        # factory (asyncssh 2.24 connection.py: ``_protocol_factory``, ``_waiter``).
        self._protocol_factory = server_factory
        self._waiter = waiter

    async def reload_config(self) -> None:
        # asyncssh builds the whole options object again (in the thread pool) at the first userauth
        # request, to apply sshd_config ``Match`` blocks for that user and client address: with no
        # configuration file loaded (ServerOptions passes none) and no reverse DNS lookup it would
        # build the same options again.
        c: Any = self
        if c._rdns_lookup or c._options.config.loaded:
            await super().reload_config()

    async def _validate_client_certificate(self, username: str, key_data: bytes) -> SSHKey | None:
        # asyncssh's, with the decoded certificate kept (decoded_certificate).
        cert: Any = decoded_certificate(key_data)
        if cert is None or cert.is_x509_chain:
            return await super()._validate_client_certificate(username, key_data)
        return await self._validate_openssh_certificate(username, cert)

    def create_server_channel(self, encoding: str | None = "", errors: str = "", window: int = 0,
                              max_pktsize: int = 0) -> SSHServerChannel[Any]:
        # asyncssh's SSHServerConnection.create_server_channel, with the lean channel class.
        c: Any = self
        if not max_pktsize:
            max_pktsize = c._max_pktsize
        c._update_recv_pktlen(max_pktsize)
        return LeanServerChannel(self, c._loop, c._allow_pty, c._line_editor, c._line_echo, c._line_history,
                                 c._max_line_length, c._encoding if encoding == "" else encoding,
                                 c._errors if errors == "" else errors, window or c._window, max_pktsize)


class OnSocket:
    """asyncssh's ``tunnel=`` for an accepted, connected socket (what ``run_server`` does with one)."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock

    async def create_connection(self, session_factory: Callable[[], Any], host: str,
                                port: int) -> tuple[asyncio.BaseTransport, Any]:
        return await asyncio.get_running_loop().create_connection(session_factory, sock=self.sock)


class ServerOptions:
    """``SSHServerConnectionOptions`` prepared once for every connection of one SSH service.

    asyncssh's ``run_server``/``connect_reverse`` build them again for each connection, in the
    loop's thread pool (``SSHConnectionOptions.construct``: key pairs loaded, algorithm lists
    built, ``socket.getfqdn()`` for GSSAPI's host name), so every SSH login waited for a worker
    thread and back. Teleport's SSH servers keep one ``ssh.ServerConfig`` for all of theirs
    (``lib/sshutils/server.go``: ``s.cfg``, built in ``NewServer``). ``kwargs`` are asyncssh's
    server options without ``server_factory``, which each connection brings.
    """

    def __init__(self, **kwargs: Any) -> None:
        # No GSSAPI (Teleport's servers have none), no sshd_config file.
        self.kwargs = {"gss_host": None, "config": None, **kwargs}
        self._options: asyncssh.SSHServerConnectionOptions | None = None

    async def options(self) -> asyncssh.SSHServerConnectionOptions:
        if self._options is None:
            built = await asyncssh.SSHServerConnectionOptions.construct(None, **self.kwargs)
            built.waiter = None  # each connection has its own (LeanServerConnection)
            if self._options is None:
                self._options = built
        return self._options

    async def accept(self, tunnel: Any, server_factory: Callable[[], asyncssh.SSHServer]) -> LeanServerConnection:
        """Run an SSH server connection over ``tunnel`` (``create_connection`` as asyncssh's
        ``tunnel=``) until the client is authenticated (as ``connect_reverse``/``run_server``
        with ``wait='auth'``: the login timeout bounds it); the connection is aborted on failure."""
        options = await self.options()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        conn = LeanServerConnection(loop, options, server_factory, waiter)
        try:
            await tunnel.create_connection(lambda: conn, "", 0)
        except BaseException:
            waiter.cancel()
            raise
        try:
            await waiter
        except BaseException:  # as asyncssh's _connect: the connection is freed before the error
            conn.abort()
            with contextlib.suppress(Exception):
                await conn.wait_closed()
            raise
        return conn


# -- clients: tpemu's own (``tpemu ssh``: to the proxy, and to the node through it) -----------------------


class LeanClientChannel(SSHClientChannel[Any], LeanChannel):
    """asyncssh's client session channel with :class:`LeanChannel`'s data paths, which an open
    ``SSHClientChannel`` becomes (:meth:`LeanClientConnection.create_session`). Python allows that
    only with asyncssh's class first among the bases (the same layout), so :class:`LeanChannel`'s
    methods, which would come after asyncssh's, are named here."""

    __slots__ = ()

    def log_sent_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        if SSHLogger._debug_level >= PACKET_DEBUG_LEVEL:
            SSHClientChannel.log_sent_packet(self, pkttype, pktid, packet, note)

    def log_received_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        if SSHLogger._debug_level >= PACKET_DEBUG_LEVEL:
            SSHClientChannel.log_received_packet(self, pkttype, pktid, packet, note)

    def write(self, data: Any, datatype: int | None = None) -> None:
        if not _lean_write(self, data, datatype):
            SSHClientChannel.write(self, data, datatype)


class LeanClientConnection(LeanConnection, asyncssh.SSHClientConnection):
    """An asyncssh client connection with the lean paths (what Go's ``x/crypto/ssh``, tsh's
    library, sends: no ignore packet before every packet)."""

    async def create_session(self, session_factory: Any, *args: Any,
                             **kwargs: Any) -> tuple[SSHClientChannel[Any], Any]:
        # asyncssh's create_session builds its SSHClientChannel by name: once the session is open,
        # the channel takes the lean data paths (a subclass that adds no state; what arrived before
        # went through asyncssh's, as any packet the lean paths do not take).
        chan, session = await super().create_session(session_factory, *args, **kwargs)
        if type(chan) is SSHClientChannel:
            chan.__class__ = LeanClientChannel
        return chan, session

    def _validate_host_key(self, host: str, addr: str, port: int, key_data: bytes) -> SSHKey:
        # asyncssh's, with the decoded host certificate kept (decoded_certificate).
        cert: Any = decoded_certificate(key_data)
        if cert is None or cert.is_x509_chain:
            return super()._validate_host_key(host, addr, port, key_data)
        return self._validate_openssh_host_certificate(host, addr, port, cert)


async def connect_client(host: str, port: int, **kwargs: Any) -> LeanClientConnection:
    """``asyncssh.connect(host, port, **kwargs)`` with a :class:`LeanClientConnection`, and the
    options built here rather than in the loop's thread pool (``construct``): for options given as
    objects (keys, certificates, CA keys; ``config=None``) building them reads no file, so the
    round trip through a worker thread was all it cost."""
    from asyncssh.connection import _connect

    loop = asyncio.get_running_loop()
    options = asyncssh.SSHClientConnectionOptions(None, loop=loop, host=host, port=port, **kwargs)

    def factory() -> LeanClientConnection:
        return LeanClientConnection(loop, options, wait="auth")

    return await asyncio.wait_for(_connect(options, (), loop, 0, None, factory, "Opening SSH connection to"),
                                  timeout=options.connect_timeout)
