"""tpemu.net.ssh_lean: asyncssh connections without the per-packet extras, same wire behaviour.

A real asyncssh client/server pair on loopback (port 0) whose classes take the mixins, as the
reverse tunnel's do (tpemu/net/teleport_ssh.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest
from asyncssh.channel import SSHForwardChannel
from asyncssh.crypto.cipher import GCMCipher

from tpemu.net import ssh_lean
from tpemu.net import teleport_ssh as tssh
from tpemu.net.channel import ChannelTransport, open_streams
from tpemu.net.ssh_lean import LeanConnection


class _Counting:
    """Records the types of the packets the connection itself handles (MSG_IGNORE is one; channel
    data is logged by its channel)."""

    received: list[int]

    def log_received_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        self.received.append(pkttype)
        super().log_received_packet(pkttype, pktid, packet, note)  # type: ignore[misc]


class Server(_Counting, LeanConnection, asyncssh.SSHServerConnection):
    pass


class Client(LeanConnection, asyncssh.SSHClientConnection):
    pass


class PlainServer(_Counting, asyncssh.SSHServerConnection):
    """Stock asyncssh, to show what the lean one leaves out."""


class PlainClient(asyncssh.SSHClientConnection):
    pass


class _NoAuth(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self) -> Any:
        return _Echo()


class _Echo(asyncssh.SSHServerSession[bytes]):
    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def shell_requested(self) -> bool:
        return True

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.chan.write(data)


@contextlib.asynccontextmanager
async def _pair(server_cls: type, cipher: str, keepalive: float = 0.0,
                client_cls: type = Client, rekey_bytes: int = 1 << 30) -> AsyncIterator[tuple[Any, Any]]:
    loop = asyncio.get_running_loop()
    key = asyncssh.generate_private_key("ssh-ed25519")
    servers: list[Any] = []

    def factory() -> Any:
        conn = server_cls(loop, server_opts, wait=None)
        conn.received = []
        servers.append(conn)
        return conn

    server_opts = await asyncssh.SSHServerConnectionOptions.construct(
        None, server_host_keys=[key], server_factory=_NoAuth, encryption_algs=[cipher],
        encoding=None, rekey_bytes=rekey_bytes)
    listener = await loop.create_server(factory, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client_opts = await asyncssh.SSHClientConnectionOptions.construct(
        None, known_hosts=None, username="u", encryption_algs=[cipher], keepalive_interval=keepalive,
        keepalive_count_max=3, rekey_bytes=rekey_bytes)
    client_opts.waiter = loop.create_future()
    client = client_cls(loop, client_opts, wait="auth")
    await loop.create_connection(lambda: client, "127.0.0.1", port)
    await asyncio.wait_for(client_opts.waiter, 10)
    try:
        yield client, servers[0]
    finally:
        client.close()
        await client.wait_closed()
        listener.close()


async def _echo_round_trips(client: Any, n: int) -> None:
    writer, reader, _ = await client.open_session(encoding=None)
    for i in range(n):
        writer.write(b"ping %d\n" % i)
        assert await asyncio.wait_for(reader.readline(), 5) == b"ping %d\n" % i


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                                    "chacha20-poly1305@openssh.com"])
async def test_no_ignore_packet_in_front_of_every_packet_with_an_aead_cipher(cipher: str) -> None:
    async with _pair(Server, cipher) as (client, server):
        await _echo_round_trips(client, 20)
        assert client.get_extra_info("send_cipher") == cipher
        assert asyncssh.constants.MSG_IGNORE not in server.received


async def test_a_cbc_or_ctr_connection_keeps_the_ignore_packets() -> None:
    # RFC 4251 §9.3.1: the countermeasure for CBC's predictable IVs; only AEAD ciphers drop it.
    async with _pair(Server, "aes128-ctr") as (client, server):
        await _echo_round_trips(client, 5)
        assert server.received.count(asyncssh.constants.MSG_IGNORE) >= 5


async def test_stock_asyncssh_sends_them_which_is_what_the_mixin_removes() -> None:
    async with _pair(PlainServer, "aes128-gcm@openssh.com", client_cls=PlainClient) as (client, server):
        await _echo_round_trips(client, 5)
        assert server.received.count(asyncssh.constants.MSG_IGNORE) >= 5


async def test_a_read_does_not_rearm_the_keepalive_timer_and_it_still_fires_after_silence() -> None:
    async with _pair(Server, "aes128-gcm@openssh.com", keepalive=0.4) as (client, _server):
        timer = client._keepalive_timer
        assert timer is not None
        await _echo_round_trips(client, 10)
        assert client._keepalive_timer is timer  # stock asyncssh: a new TimerHandle per read
        sent = []
        real = client._make_keepalive_request

        async def counted() -> None:
            sent.append(asyncio.get_running_loop().time())
            await real()

        client._make_keepalive_request = counted
        last_read = asyncio.get_running_loop().time()
        deadline = last_read + 5
        while not sent and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert sent, "no keepalive request after a silent interval"
        assert sent[0] - last_read >= 0.4 - 0.05  # not before an interval of silence


def test_gcm_matches_asyncssh_byte_for_byte() -> None:
    key, iv = os.urandom(16), os.urandom(12)
    theirs, ours = GCMCipher("aes128-gcm", key, iv), ssh_lean._GCM(key, iv)
    for n in (16, 32, 1024, 16):
        header, data = os.urandom(4), os.urandom(n)
        assert ours.encrypt_and_sign(header, data) == theirs.encrypt_and_sign(header, data)
    # The invocation counter wraps at 2**64 as asyncssh's does.
    wrap_iv = iv[:4] + b"\xff" * 8
    theirs, ours = GCMCipher("aes128-gcm", key, wrap_iv), ssh_lean._GCM(key, wrap_iv)
    for _ in range(2):
        assert ours.encrypt_and_sign(b"hdr!", b"x" * 16) == theirs.encrypt_and_sign(b"hdr!", b"x" * 16)


def test_gcm_refuses_a_tampered_packet_and_stays_in_step() -> None:
    key, iv = os.urandom(32), os.urandom(12)
    sender, receiver = ssh_lean._GCM(key, iv), ssh_lean._GCM(key, iv)
    first, tag = sender.encrypt_and_sign(b"\x00\x00\x00\x10", b"a" * 16)
    assert receiver.verify_and_decrypt(first[:4], first[4:], tag) == b"a" * 16
    second, tag2 = sender.encrypt_and_sign(b"\x00\x00\x00\x10", b"b" * 16)
    bad = bytes([second[4] ^ 1]) + second[5:]
    assert receiver.verify_and_decrypt(second[:4], bad, tag2) is None


async def test_packets_are_logged_at_debug_level_3_only(caplog: pytest.LogCaptureFixture) -> None:
    async with _pair(Server, "aes128-gcm@openssh.com") as (client, _server):
        caplog.set_level(logging.DEBUG, logger="asyncssh")
        await _echo_round_trips(client, 2)
        assert not [r for r in caplog.records if "MSG_CHANNEL_DATA" in r.getMessage()]
        asyncssh.set_debug_level(3)
        try:
            await _echo_round_trips(client, 2)
        finally:
            asyncssh.set_debug_level(1)
        assert [r for r in caplog.records if "MSG_CHANNEL_DATA" in r.getMessage()]


# -- the lean channel-data paths ----------------------------------------------------------------------
# On channels of the reverse tunnel's kind (TeleportChannel, what tpemu's tunnels carry), through a
# ChannelTransport and asyncio streams as tpemu reads them.


class _PlainChannel(SSHForwardChannel[bytes]):
    """TeleportChannel without the lean mixin: stock asyncssh's channel of the same type."""

    def __init__(self, conn: Any, chantype: str) -> None:
        super().__init__(conn, asyncio.get_running_loop(), None, "strict", tssh.WINDOW, tssh.MAX_PKTSIZE)
        self.chantype = chantype

    async def open(self, session: Any) -> None:
        await self._open_forward(lambda: session, self.chantype.encode())


class _EchoTCP(asyncssh.SSHTCPSession[bytes]):
    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.chan.write(data)

    def eof_received(self) -> bool:
        self.chan.write_eof()
        return True


def _open_handler(conn: Any, chan_cls: Any) -> Any:
    def handler(chantype: str) -> tuple[Any, Any]:
        return chan_cls(conn, chantype), _EchoTCP()
    return handler


class _LeanTunnelServer(_Counting, LeanConnection, asyncssh.SSHServerConnection):
    def _process_channel_open(self, _pkttype: int, _pktid: int, packet: Any) -> None:
        tssh._dispatch_open(self, packet, _open_handler(self, tssh.TeleportChannel))

    _packet_handlers = {**asyncssh.SSHServerConnection._packet_handlers,
                        asyncssh.constants.MSG_CHANNEL_OPEN: _process_channel_open}


class _PlainTunnelServer(_Counting, asyncssh.SSHServerConnection):
    def _process_channel_open(self, _pkttype: int, _pktid: int, packet: Any) -> None:
        tssh._dispatch_open(self, packet, _open_handler(self, _PlainChannel))

    _packet_handlers = {**asyncssh.SSHServerConnection._packet_handlers,
                        asyncssh.constants.MSG_CHANNEL_OPEN: _process_channel_open}


async def _open_echo(client: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    chan_cls = tssh.TeleportChannel if isinstance(client, LeanConnection) else _PlainChannel
    transport = ChannelTransport()
    await chan_cls(client, tssh.CHAN_TRANSPORT).open(transport)
    return await open_streams(transport)


class _StockCalls:
    """Counts the packets that went through asyncssh's own send and receive paths."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[int] = []
        self.received = 0
        self.urandom = 0
        stock_send = asyncssh.connection.SSHConnection.send_packet
        stock_recv = asyncssh.connection.SSHConnection._recv_packet
        real_urandom = os.urandom

        def send(conn: Any, pkttype: int, *args: bytes, **kwargs: Any) -> None:
            self.sent.append(pkttype)
            stock_send(conn, pkttype, *args, **kwargs)

        def recv(conn: Any) -> bool:
            self.received += 1
            return bool(stock_recv(conn))

        def urandom(n: int) -> bytes:
            self.urandom += 1
            return real_urandom(n)

        monkeypatch.setattr(asyncssh.connection.SSHConnection, "send_packet", send)
        monkeypatch.setattr(asyncssh.connection.SSHConnection, "_recv_packet", recv)
        monkeypatch.setattr(os, "urandom", urandom)


async def _echo_chunks(client: Any, chunks: list[bytes]) -> bytes:
    reader, writer = await _open_echo(client)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    got = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return got


async def test_channel_data_skips_asyncssh_packet_path_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fails if the per-packet extras come back: every CHANNEL_DATA of a round trip went through
    # asyncssh's send_packet and _recv_packet (and one getrandom for its padding) before.
    async with _pair(_LeanTunnelServer, "aes128-gcm@openssh.com") as (client, _server):
        reader, writer = await _open_echo(client)
        calls = _StockCalls(monkeypatch)
        for i in range(50):
            writer.write(b"ping %d\n" % i)
            assert await asyncio.wait_for(reader.readline(), 5) == b"ping %d\n" % i
        assert calls.sent == []  # not one packet on asyncssh's send path, on either end
        assert calls.received == 0  # nor on its receive path
        assert calls.urandom <= 2  # the padding pool: 100 packets from at most two refills
        writer.close()


async def test_a_stock_peer_sees_the_same_wire() -> None:
    # The lean end talks to stock asyncssh (which checks padding, lengths, MACs, windows).
    data = os.urandom(300_000)
    async with _pair(_PlainTunnelServer, "aes128-gcm@openssh.com") as (client, _server):
        assert await _echo_chunks(client, [data[i:i + 999] for i in range(0, len(data), 999)]) == data
    async with _pair(_LeanTunnelServer, "aes256-gcm@openssh.com", client_cls=PlainClient) as (client, _server):
        assert await _echo_chunks(client, [data[i:i + 999] for i in range(0, len(data), 999)]) == data


async def test_bulk_data_larger_than_window_and_packet_size_arrives_intact() -> None:
    # Packets split across reads, a full window and window adjusts take asyncssh's path; the bytes
    # are the same.
    data = os.urandom(5 * 1024 * 1024 + 17)
    async with _pair(_LeanTunnelServer, "aes256-gcm@openssh.com") as (client, _server):
        assert await _echo_chunks(client, [data[i:i + 70_000] for i in range(0, len(data), 70_000)]) == data


async def test_data_goes_on_across_rekeys() -> None:
    # rekey_bytes 64 KiB: several key exchanges while data flows both ways (packets deferred, new
    # AES-GCM keys on both ends, the lean path declining during each exchange and back after).
    data = os.urandom(1024 * 1024)
    async with _pair(_LeanTunnelServer, "aes128-gcm@openssh.com", rekey_bytes=64 * 1024) as (client, server):
        first_key = client._lean_seal
        assert await _echo_chunks(client, [data[i:i + 4000] for i in range(0, len(data), 4000)]) == data
        assert client._lean_seal is not None and client._lean_seal is not first_key
        assert server.received.count(asyncssh.constants.MSG_NEWKEYS) >= 4


async def test_a_chacha_connection_takes_asyncssh_paths_intact() -> None:
    data = os.urandom(100_000)
    async with _pair(_LeanTunnelServer, "chacha20-poly1305@openssh.com") as (client, _server):
        assert client._lean_seal is None
        assert await _echo_chunks(client, [data[i:i + 5000] for i in range(0, len(data), 5000)]) == data


async def test_debug_level_2_uses_asyncssh_paths_and_logs_data(caplog: pytest.LogCaptureFixture) -> None:
    async with _pair(_LeanTunnelServer, "aes128-gcm@openssh.com") as (client, _server):
        caplog.set_level(logging.DEBUG, logger="asyncssh")
        asyncssh.set_debug_level(2)
        try:
            assert await _echo_chunks(client, [b"hello"]) == b"hello"
        finally:
            asyncssh.set_debug_level(1)
        assert [r for r in caplog.records if "Sending 5 data bytes" in r.getMessage()]
        assert [r for r in caplog.records if "Received 5 data bytes" in r.getMessage()]


def test_padding_is_random_and_never_reused() -> None:
    pad = ssh_lean._Padding()
    taken = [pad.take(16) for _ in range(ssh_lean.PAD_POOL // 16 * 3)]
    assert all(len(t) == 16 for t in taken)
    assert len(set(taken)) == len(taken)
