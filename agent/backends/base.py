"""The contract between the Database Service and the emulated database servers (glue types).

An emulated backend speaks its database's wire protocol to an unmodified client over an asyncio
stream pair. It runs in two ways:

* standalone, as a real TCP server (``serve_tcp``), where it authenticates clients itself
  (passwords, as the real database would), optionally with TLS;
* behind the Database Service, which has already authenticated the client by its certificate and
  authorised it (RBAC): then ``handle`` gets a :class:`Session` and must not ask for a password,
  but still refuses a client whose database user/name differ from the session's.

Bytes outside the emulated subset get a proper error in the database's protocol saying the
emulator does not support them; never a hang.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import ClassVar, Protocol


@dataclass(frozen=True)
class Session:
    """A client already authenticated and authorised by the Database Service."""

    teleport_user: str
    db_user: str
    db_name: str | None = None
    client: str = ""


class EmulatedBackend(Protocol):
    #: ``postgres``, ``mysql`` or ``redis`` (the ``db_service`` protocol names).
    protocol: ClassVar[str]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     session: Session | None = None) -> None:
        """Serve one client connection until it ends; closes ``writer``."""
        ...


async def serve_tcp(backend: EmulatedBackend, host: str = "127.0.0.1", port: int = 0,
                    ssl_context: ssl.SSLContext | None = None, session: Session | None = None) -> asyncio.Server:
    """Run ``backend`` as a standalone TCP server (TLS from the first byte if ``ssl_context``);
    with ``session``, every client is treated as that already-authenticated caller."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await backend.handle(reader, writer, session)

    return await asyncio.start_server(on_client, host, port, ssl=ssl_context)
