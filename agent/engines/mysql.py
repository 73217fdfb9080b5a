"""The embedded MySQL engine: MariaDB's ``mariadbd`` from this machine (glue).

MySQL has no wheel; Debian's ``mariadb-server`` (``make test`` installs it) provides ``mariadbd``
and ``mariadb-install-db``. The data directory is made once with ``mariadb-install-db`` (a small
InnoDB redo log, no test database, a password-less ``root@localhost``), then ``mariadbd`` runs as
a supervised child (:mod:`tpemu.agent.engines.supervisor`) with ``skip-networking``: a unix
socket in a 0700 folder of the engine's user is its only way in. Database users are created
the first time the RBAC lets someone use them (``CREATE USER IF NOT EXISTS 'u'@'localhost'``
without a password, ``GRANT ALL`` on the database), and the Database Service logs in as them
over that socket with the same MySQL handshake it uses for a user's own server.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from tpemu.agent.engines import Endpoint, Engine, EngineUnavailable, binary_key
from tpemu.agent.engines.supervisor import EngineProcess

SOCKET = "mysqld.sock"
INSTALL_HINT = "apt-get install mariadb-server (mariadbd and mariadb-install-db)"
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/usr/bin")


def _which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or next((f"{d}/{name}" for d in _SBIN if Path(d, name).exists()), None)
        if found:
            return found
    return None


def find(db_name: str, data_dir: Path) -> tuple[Engine | None, str]:
    server = _which("mariadbd", "mysqld")
    install = _which("mariadb-install-db", "mysql_install_db")
    client = _which("mariadb", "mysql")
    if server is None or install is None or client is None:
        return None, f"no MySQL engine: {INSTALL_HINT}"
    return MariaDBEngine(db_name, data_dir, Path(server), Path(install), Path(client)), ""


def quote_literal(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "''") + "'"


def quote_ident(s: str) -> str:
    return "`" + s.replace("`", "``") + "`"


class MariaDBEngine(Engine):
    protocol = "mysql"
    label = "MariaDB"

    def __init__(self, db_name: str, data_dir: Path, server: Path, install: Path, client: Path) -> None:
        super().__init__(db_name, data_dir)
        self.server, self.install, self.client = server, install, client
        self.datadir = data_dir / "data"
        self.sockdir = data_dir

    def preferred_users(self) -> tuple[str, ...]:
        return ("mysql",)

    def needs_unprivileged(self) -> bool:
        return True

    def _server_options(self) -> list[str]:
        return ["--skip-name-resolve", "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M",
                "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin", "--performance-schema=OFF"]

    async def prepare(self) -> EngineProcess:
        self.own_dir(self.data_dir)
        self.reach_binaries(self.server)
        self.reach_binaries(self.install)
        self.sockdir = self.socket_dir(self.data_dir / "run", SOCKET)
        if not (self.datadir / "mysql").exists():
            async def install(where: Path) -> None:
                self.own_dir(where)
                await self.run_tool([str(self.install), "--no-defaults", f"--datadir={where}",
                                     "--auth-root-authentication-method=normal", "--skip-test-db",
                                     *self._server_options()], as_engine_user=True, timeout=120)

            shutil.rmtree(self.datadir, ignore_errors=True)
            await self.from_template(self.datadir, "mariadb-" + binary_key(self.server, self.user), install)
        argv = [str(self.server), "--no-defaults", f"--datadir={self.datadir}", "--skip-networking",
                f"--socket={self.sockdir / SOCKET}", f"--pid-file={self.data_dir / 'mysqld.pid'}",
                *self._server_options()]
        return EngineProcess(f"{self.db_name} ({self.label})", lambda: argv, self._ready,
                             log_path=self.data_dir / "mariadb.log", cwd=self.data_dir, user=self.user,
                             before_start=self.grant)

    async def _ready(self) -> bool:
        reader, writer = await self.endpoint_now().open()
        try:
            async with asyncio.timeout(5):
                head = await reader.readexactly(5)
        finally:
            writer.close()
        return head[4] == 0x0A  # HandshakeV10: the server is accepting logins

    def endpoint_now(self) -> Endpoint:
        return Endpoint(unix=str(self.sockdir / SOCKET))

    async def wipe(self) -> None:
        out = await self.run_tool([str(self.client), "--no-defaults", f"--socket={self.sockdir / SOCKET}", "-u", "root",
                                   "--batch", "-N", "-e", "SHOW DATABASES"])
        system = {"mysql", "information_schema", "performance_schema", "sys"}
        script = "".join(f"DROP DATABASE {quote_ident(name)};\n" for name in out.split() if name not in system)
        if script:
            await self.run_tool([str(self.client), "--no-defaults", f"--socket={self.sockdir / SOCKET}", "-u", "root",
                                 "--batch"], stdin=script.encode())

    async def provision(self, db_user: str, db_name: str) -> None:
        user = f"{quote_literal(db_user)}@'localhost'"
        script = f"CREATE USER IF NOT EXISTS {user};\n"
        if db_name:
            script += (f"CREATE DATABASE IF NOT EXISTS {quote_ident(db_name)};\n"
                       f"GRANT ALL ON {quote_ident(db_name)}.* TO {user};\n")
        try:
            await self.run_tool([str(self.client), "--no-defaults", f"--socket={self.sockdir / SOCKET}", "-u", "root",
                                 "--batch"], stdin=script.encode())
        except EngineUnavailable as exc:
            raise EngineUnavailable(f"cannot create MariaDB user {db_user!r}: {exc}") from None
