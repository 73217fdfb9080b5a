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
from asyncssh.crypto.cipher import GCMCipher

from tpemu.net import ssh_lean
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
                client_cls: type = Client) -> AsyncIterator[tuple[Any, Any]]:
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
        encoding=None)
    listener = await loop.create_server(factory, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client_opts = await asyncssh.SSHClientConnectionOptions.construct(
        None, known_hosts=None, username="u", encryption_algs=[cipher], keepalive_interval=keepalive,
        keepalive_count_max=3)
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
