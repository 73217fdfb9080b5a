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

:class:`LeanConnection` and :class:`LeanChannel` are the first bases of tpemu's asyncssh connection
and channel subclasses (the reverse tunnel's ``TunnelServerConnection``/``TunnelClientConnection``,
``TeleportChannel``). Checked against asyncssh
2.24 (``pyproject.toml`` pins ``<3``); ``tests/net/test_ssh_lean.py`` fails if a new asyncssh
changes either path.
"""

from __future__ import annotations

from typing import Any

from asyncssh.constants import MSG_IGNORE
from asyncssh.encryption import ChachaEncryption, Encryption, GCMEncryption
from asyncssh.logging import SSHLogger
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: The payload of the ignore packet asyncssh inserts (``String(b'')``).
_EMPTY_STRING = b"\x00\x00\x00\x00"
_AEAD = (GCMEncryption, ChachaEncryption)
#: asyncssh logs packets at debug level 3 only (``SSHLogger.packet``).
PACKET_DEBUG_LEVEL = 3
_GCM_TAG = 16


class _GCM:
    """asyncssh's ``GCMCipher`` interface with one ``AESGCM`` per key instead of one per packet."""

    __slots__ = ("_aead", "_fixed", "_invocation")

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._invocation = int.from_bytes(iv[4:], "big")

    def _nonce(self) -> bytes:
        nonce = self._fixed + self._invocation.to_bytes(8, "big")
        self._invocation = (self._invocation + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce

    def encrypt_and_sign(self, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = self._aead.encrypt(self._nonce(), data, header)
        return header + sealed[:-_GCM_TAG], sealed[-_GCM_TAG:]

    def verify_and_decrypt(self, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        nonce = self._nonce()
        try:
            return self._aead.decrypt(nonce, data + mac, header)
        except InvalidTag:
            return None


def _lean_encryption(enc: Encryption | None) -> Encryption | None:
    if isinstance(enc, GCMEncryption):
        old = enc._cipher  # asyncssh's GCMCipher: its key and current IV
        enc._cipher = _GCM(old._key, old._iv)  # type: ignore[assignment]
    return enc


class LeanChannel:
    """Mixin for an asyncssh channel class: packet logging only at debug level 3."""

    def log_sent_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        if SSHLogger._debug_level >= PACKET_DEBUG_LEVEL:
            super().log_sent_packet(pkttype, pktid, packet, note)  # type: ignore[misc]

    def log_received_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        if SSHLogger._debug_level >= PACKET_DEBUG_LEVEL:
            super().log_received_packet(pkttype, pktid, packet, note)  # type: ignore[misc]


class LeanConnection(LeanChannel):
    """Mixin for an asyncssh connection class: see the module docstring."""

    _lean_last: float | None = None
    _lean_interval: float = 0.0
    _lean_send: Encryption | None = None
    _lean_recv: Encryption | None = None

    # asyncssh assigns these when keys change (``_send_newkeys``/``_process_newkeys``).
    @property
    def _send_encryption(self) -> Encryption | None:
        return self._lean_send

    @_send_encryption.setter
    def _send_encryption(self, enc: Encryption | None) -> None:
        self._lean_send = _lean_encryption(enc)

    @property
    def _recv_encryption(self) -> Encryption | None:
        return self._lean_recv

    @_recv_encryption.setter
    def _recv_encryption(self, enc: Encryption | None) -> None:
        self._lean_recv = _lean_encryption(enc)

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
        super().send_packet(pkttype, *args, **kwargs)  # type: ignore[misc]
