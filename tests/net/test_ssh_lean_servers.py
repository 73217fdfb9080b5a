"""tpemu.net.ssh_lean's server and client connections: the proxy's and the node's SSH servers
(:class:`ServerOptions`), tpemu's own client (:func:`connect_client`).

Real asyncssh peers on loopback (port 0); the stock asyncssh peer on the other side shows what is on
the wire (no ignore packet in front of every packet, as Go's x/crypto/ssh).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest
from asyncssh.constants import MSG_IGNORE

from tpemu.net import ssh_lean

CIPHER = "aes128-gcm@openssh.com"


class _Echo(asyncssh.SSHServerSession[bytes]):
    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def shell_requested(self) -> bool:
        return True

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.chan.write(data)


class _Open(asyncssh.SSHServer):
    """No authentication; an echo shell."""

    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self) -> Any:
        return _Echo()


class _Closed(asyncssh.SSHServer):
    """Authentication required, no method offered: every login fails."""

    def begin_auth(self, username: str) -> bool:
        return True


def _count_received(monkeypatch: pytest.MonkeyPatch, cls: type) -> list[int]:
    """The packet types every connection of stock class ``cls`` handles itself (channel data is
    logged by its channel, MSG_IGNORE by the connection)."""
    seen: list[int] = []
    real = cls.log_received_packet

    def counting(self: Any, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        seen.append(pkttype)
        real(self, pkttype, pktid, packet, note)

    monkeypatch.setattr(cls, "log_received_packet", counting)
    return seen


@contextlib.asynccontextmanager
async def _lean_server(server: ssh_lean.ServerOptions, factory: Any) -> AsyncIterator[tuple[int, list[Any]]]:
    """A listener whose connections :meth:`ServerOptions.accept` serves; yields its port and the
    outcomes (connections, or the exceptions accept raised)."""
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    outcomes: list[Any] = []
    tasks: set[asyncio.Task[None]] = set()

    async def serve_one(sock: socket.socket) -> None:
        try:
            outcomes.append(await server.accept(ssh_lean.OnSocket(sock), factory))
        except Exception as exc:  # recorded for the test to judge
            outcomes.append(exc)

    async def accept_loop() -> None:
        while True:
            sock, _ = await loop.sock_accept(lsock)
            task = loop.create_task(serve_one(sock))
            tasks.add(task)

    acceptor = loop.create_task(accept_loop())
    try:
        yield lsock.getsockname()[1], outcomes
    finally:
        acceptor.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(acceptor, *tasks, return_exceptions=True)
        for conn in outcomes:
            if isinstance(conn, asyncssh.SSHServerConnection):
                conn.close()
        lsock.close()


async def _echo(client: Any, n: int = 3) -> None:
    writer, reader, _ = await client.open_session(encoding=None)
    for i in range(n):
        writer.write(b"ping %d\n" % i)
        assert await asyncio.wait_for(reader.readline(), 10) == b"ping %d\n" % i


async def test_the_options_are_built_once_for_every_connection_and_the_paths_are_lean(
        monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    real = asyncssh.SSHServerConnectionOptions.construct.__func__  # type: ignore[attr-defined]

    async def counted(cls: Any, options: Any = None, **kwargs: Any) -> Any:
        made = await real(cls, options, **kwargs)
        built.append(made)
        return made

    monkeypatch.setattr(asyncssh.SSHServerConnectionOptions, "construct", classmethod(counted))
    got_ignore = _count_received(monkeypatch, asyncssh.SSHClientConnection)
    server = ssh_lean.ServerOptions(server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                    encryption_algs=[CIPHER], encoding=None)
    owners: list[_Open] = []

    def factory() -> _Open:
        owners.append(_Open())
        return owners[-1]

    async with _lean_server(server, factory) as (port, outcomes):
        for _ in range(3):  # stock asyncssh clients
            async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u",
                                        encryption_algs=[CIPHER]) as client:
                await _echo(client)
        # Not again per connection, nor at the first userauth request (asyncssh's reload_config).
        assert len(built) == 1, "one options object for every connection"
        assert len(outcomes) == 3 and all(isinstance(c, ssh_lean.LeanServerConnection) for c in outcomes)
        assert len({id(o) for o in owners}) == 3  # each connection its own SSHServer
    assert got_ignore and MSG_IGNORE not in got_ignore


async def test_a_session_channel_is_lean_both_ways() -> None:
    server = ssh_lean.ServerOptions(server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                    encryption_algs=[CIPHER], encoding=None)
    async with _lean_server(server, _Open) as (port, outcomes), \
            asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u", encryption_algs=[CIPHER]) as client:
        writer, reader, _ = await client.open_session(encoding=None)
        writer.write(b"x" * 200_000 + b"\n")  # past the window and the packet size: asyncssh's paths too
        assert await asyncio.wait_for(reader.readline(), 10) == b"x" * 200_000 + b"\n"
        chans = list(outcomes[0]._channels.values())
        assert [type(c) for c in chans] == [ssh_lean.LeanServerChannel]


async def test_a_failed_login_ends_the_connection_and_accept_raises() -> None:
    server = ssh_lean.ServerOptions(server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                    encryption_algs=[CIPHER], login_timeout=30)
    async with _lean_server(server, _Closed) as (port, outcomes):
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u", encryption_algs=[CIPHER],
                                   client_keys=None, agent_path=None, password=None)
        deadline = asyncio.get_running_loop().time() + 10
        while not outcomes and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert len(outcomes) == 1 and isinstance(outcomes[0], asyncssh.Error)


async def test_connect_client_is_lean_and_needs_no_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("options built in the thread pool")

    monkeypatch.setattr(asyncssh.SSHClientConnectionOptions, "construct", no_thread)
    got = _count_received(monkeypatch, asyncssh.SSHServerConnection)
    loop = asyncio.get_running_loop()
    opts = await asyncssh.SSHServerConnectionOptions.construct(
        None, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")], server_factory=_Open,
        encryption_algs=[CIPHER], encoding=None)

    def factory() -> asyncssh.SSHServerConnection:  # a stock server connection
        return asyncssh.SSHServerConnection(loop, opts, wait=None)

    opts.waiter = None
    listener = await loop.create_server(factory, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        client = await ssh_lean.connect_client("127.0.0.1", port, known_hosts=None, username="u",
                                               encryption_algs=[CIPHER], agent_path=None, config=None,
                                               connect_timeout=10)
        async with client:
            assert isinstance(client, ssh_lean.LeanClientConnection)
            await _echo(client)
    finally:
        listener.close()
    assert got and MSG_IGNORE not in got


async def test_a_client_session_channel_becomes_lean(monkeypatch: pytest.MonkeyPatch) -> None:
    """tpemu ssh's session channels (the proxy: subsystem carries the whole inner connection)
    take the lean data paths once open; bulk data past the window still goes through."""
    server = ssh_lean.ServerOptions(server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                    encryption_algs=[CIPHER], encoding=None)
    on_stock_path: list[Any] = []
    real = asyncssh.connection.SSHConnection._recv_packet

    def counted(self: Any) -> Any:
        if isinstance(self, ssh_lean.LeanClientConnection):
            on_stock_path.append(self)
        return real(self)

    monkeypatch.setattr(asyncssh.connection.SSHConnection, "_recv_packet", counted)
    async with _lean_server(server, _Open) as (port, _):
        client = await ssh_lean.connect_client("127.0.0.1", port, known_hosts=None, username="u",
                                               encryption_algs=[CIPHER], agent_path=None, config=None,
                                               connect_timeout=10)
        async with client:
            writer, reader, _ = await client.open_session(encoding=None)
            assert type(writer.channel) is ssh_lean.LeanClientChannel
            before = len(on_stock_path)
            for i in range(20):
                writer.write(b"ping %d\n" % i)
                assert await asyncio.wait_for(reader.readline(), 10) == b"ping %d\n" % i
            assert len(on_stock_path) == before, "the echoes took asyncssh's receive path"
            writer.write(b"x" * 200_000 + b"\n")
            assert await asyncio.wait_for(reader.readline(), 10) == b"x" * 200_000 + b"\n"


def test_a_certificate_is_decoded_once_by_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    ca = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    user = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    cert = ca.generate_user_certificate(user, "alice", principals=["alice"])
    decoded: list[bytes] = []
    real = ssh_lean.decode_ssh_certificate

    def counted(data: bytes) -> Any:
        decoded.append(data)
        return real(data)

    monkeypatch.setattr(ssh_lean, "decode_ssh_certificate", counted)
    monkeypatch.setattr(ssh_lean, "_certs", {})
    first = ssh_lean.decoded_certificate(cert.public_data)
    assert first is not None and first.signing_key == ca.convert_to_public() and first.principals == ["alice"]
    assert ssh_lean.decoded_certificate(cert.public_data) is first and len(decoded) == 1
    assert ssh_lean.decoded_certificate(user.public_data) is None  # a plain key: asyncssh's path
    forged = bytearray(cert.public_data)
    forged[-1] ^= 1  # the CA's signature no longer holds: refused, and nothing kept
    assert ssh_lean.decoded_certificate(bytes(forged)) is None and len(ssh_lean._certs) == 1


def test_user_names_are_prepared_once() -> None:
    from asyncssh.saslprep import SASLPrepError, saslprep

    assert asyncssh.connection.saslprep is ssh_lean.saslprep_kept
    for name in ("alice", "Ｉｖａｎ\u00ad", "root"):
        assert ssh_lean.saslprep_kept(name) == saslprep(name)
        assert ssh_lean._names[name] == saslprep(name)
    with pytest.raises(SASLPrepError):
        ssh_lean.saslprep_kept("bad\x07name")
    assert "bad\x07name" not in ssh_lean._names


def test_asyncssh_formats_a_log_line_only_when_it_is_logged(caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncssh.logging import logger

    class Loud:
        def __str__(self) -> str:
            formatted.append(self)
            return "loud"

    formatted: list[Any] = []
    with caplog.at_level(logging.INFO, logger="asyncssh"):
        logger.debug1("dropped %s", ["alg-a", Loud()])  # asyncssh joined the list before the level check
        assert formatted == [] and "dropped" not in caplog.text
    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        logger.debug1("kept %s %s %s", Loud(), ["alg-a", "alg-b"], b"bytes\x00")
        assert formatted and "kept loud alg-a,alg-b bytes\\x00" in caplog.text
