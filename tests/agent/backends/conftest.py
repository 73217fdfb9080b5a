"""Fixtures for the emulated database backends: a server on 127.0.0.1:0 and test TLS material."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tpemu.agent.backends.base import EmulatedBackend, Session, serve_tcp


@dataclass
class TLSFiles:
    server: ssl.SSLContext
    ca_file: Path
    client: ssl.SSLContext


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server)
    ca_file = tmp_path_factory.mktemp("pki") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ssl.create_default_context(cafile=str(ca_file))
    return TLSFiles(server, ca_file, client)


Start = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    """``port = await serve(backend, session=None)``: the backend on 127.0.0.1:0.

    Without a session it runs through ``serve_tcp`` (the standalone contract); with one, each
    connection is handed to ``backend.handle(reader, writer, session)`` as the Database Service
    does. Handler tasks are awaited at teardown so none outlives the test's event loop.
    """
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def start(backend: EmulatedBackend, session: Session | None = None) -> int:
        class Tracked:
            protocol = backend.protocol

            async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             _: Session | None = None) -> None:
                task = asyncio.current_task()
                assert task is not None
                tasks.add(task)
                try:
                    await backend.handle(reader, writer, session)
                finally:
                    tasks.discard(task)

        server = await serve_tcp(Tracked())
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for server in servers:
        await server.wait_closed()

