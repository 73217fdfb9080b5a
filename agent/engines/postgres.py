"""The embedded PostgreSQL engine: the ``pgserver`` wheel's PostgreSQL 16 binaries (glue).

pgserver ships a full PostgreSQL build (``pgserver/pginstall/bin``); its Python API starts the
server through ``pg_ctl`` as a daemon behind an inter-process lock. tpemu runs the same binaries
itself instead — ``initdb`` once per data directory, then ``postgres`` as a supervised child —
so that it holds the postmaster's PID, sees a crash at once and restarts it
(:mod:`tpemu.agent.engines.supervisor`). Without pgserver, Debian's ``postgresql`` package
(``/usr/lib/postgresql/<major>/bin``) serves the same way.

The server listens on a unix socket only (``listen_addresses = ''``, the socket in a 0700 folder
of the engine's user): only the agent reaches it, so ``trust`` authentication is the Database
Service's certificate check and nothing else. A clean stop is ``SIGINT`` (PostgreSQL's "fast"
shutdown: sessions get ``FATAL 57P01 terminating connection due to administrator command``).
Database users and names are created with ``psql`` as the ``postgres`` superuser the first time
the RBAC lets someone use them: the user as a ``LOGIN`` role, the database owned by the first
user that asks for it, ``ALL`` on it and on its ``public`` schema granted to later ones.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
from pathlib import Path

from tpemu.agent.engines import Endpoint, Engine, binary_key
from tpemu.agent.engines.supervisor import EngineProcess

SOCKET = ".s.PGSQL.5432"
INSTALL_HINT = "pip install pgserver (the 'engines' extra) or apt-get install postgresql"


def bin_dir() -> tuple[Path | None, str]:
    """The folder with ``postgres``/``initdb``/``psql``, and where it comes from."""
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "pginstall" / "bin"
        if (candidate / "postgres").exists():
            return candidate, "pgserver"
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if debian:
        return debian[-1].parent, "Debian postgresql"
    return None, ""


def find(db_name: str, data_dir: Path) -> tuple[Engine | None, str]:
    where, source = bin_dir()
    if where is None:
        return None, f"no PostgreSQL engine: {INSTALL_HINT}"
    return PostgresEngine(db_name, data_dir, where, source), ""


class PostgresEngine(Engine):
    protocol = "postgres"

    def __init__(self, db_name: str, data_dir: Path, bin_path: Path, source: str) -> None:
        super().__init__(db_name, data_dir)
        self.bin = bin_path
        self.label = f"PostgreSQL ({source})"
        self.pgdata = data_dir / "pgdata"
        self.sockdir = data_dir

    def preferred_users(self) -> tuple[str, ...]:
        return ("postgres",)

    def needs_unprivileged(self) -> bool:
        return True

    async def prepare(self) -> EngineProcess:
        self.own_dir(self.data_dir)
        self.reach_binaries(self.bin / "postgres")
        self.sockdir = self.socket_dir(self.data_dir / "run", SOCKET)
        if not (self.pgdata / "PG_VERSION").exists():
            async def initdb(where: Path) -> None:
                await self.run_tool([str(self.bin / "initdb"), "-D", str(where), "-U", "postgres", "-A", "trust",
                                     "--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions", "--wal-segsize=1"],
                                    as_engine_user=True)

            shutil.rmtree(self.pgdata, ignore_errors=True)
            await self.from_template(self.pgdata, "pg-w1-" + binary_key(self.bin / "postgres", self.user), initdb)
        # fsync=off: a commit is written to the WAL (it survives a crash of the engine, which the
        # supervisor restarts) but not flushed to disk (it may not survive a crash of the machine).
        argv = [str(self.bin / "postgres"), "-D", str(self.pgdata), "-k", str(self.sockdir),
                "-c", "listen_addresses=", "-c", "fsync=off",
                "-c", "full_page_writes=off", "-c", "shared_buffers=32MB", "-c", "max_connections=200",
                "-c", "logging_collector=off", "-c", "log_min_messages=warning"]
        return EngineProcess(f"{self.db_name} ({self.label})", lambda: argv, self._ready,
                             log_path=self.data_dir / "postgres.log", cwd=self.data_dir, user=self.user,
                             before_start=self.grant,
                             env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}, stop_signal=signal.SIGINT)

    async def _ready(self) -> bool:
        # postmaster.pid: line 1 the postmaster's PID (a killed one leaves its file behind, "ready"),
        # line 8 its status, "ready" once it accepts connections.
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        pid = self.process.pid if self.process is not None else None
        return (len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"
                and (self.sockdir / SOCKET).exists())

    def endpoint_now(self) -> Endpoint:
        return Endpoint(unix=str(self.sockdir / SOCKET))

    async def psql(self, script: str, database: str = "postgres", **variables: str) -> str:
        argv = [str(self.bin / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", str(self.sockdir),
                "-U", "postgres", "-d", database]
        for k, v in variables.items():
            argv += ["-v", f"{k}={v}"]
        return await self.run_tool(argv, stdin=script.encode())

    async def wipe(self) -> None:
        await self.psql("""
SELECT format('DROP DATABASE %I WITH (FORCE)', datname) FROM pg_database
    WHERE NOT datistemplate AND datname <> 'postgres'\\gexec
DROP SCHEMA public CASCADE;
CREATE SCHEMA public;
GRANT ALL ON SCHEMA public TO PUBLIC;
""")

    async def provision(self, db_user: str, db_name: str) -> None:
        await self.psql("""
SELECT format('CREATE ROLE %I LOGIN', :'u') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u')\\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u')
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'d')\\gexec
SELECT format('GRANT ALL ON DATABASE %I TO %I', :'d', :'u')\\gexec
\\c :"d"
SELECT format('GRANT ALL ON SCHEMA public TO %I', :'u')\\gexec
""", u=db_user, d=db_name)
