"""Auth fixtures: backends (SQLite always; PostgreSQL when a real server can be had), a clock.

PostgreSQL: ``$TPEMU_TEST_PG`` (a libpq URL to a server where the test user may create
databases; CI sets it), else a throwaway server started once per session from the Debian
binaries (``initdb`` + ``pg_ctl`` under ``runuser -u postgres``, as shared/REAL_CLIENTS.md
§3 does it), else the PostgreSQL cases are skipped with the reason. Every test gets its own
database.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests import realservers
from tpemu.auth.backend import Backend

PG_BIN = Path("/usr/lib/postgresql/15/bin")
_counter = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A libpq URL (without database name) of a PostgreSQL server the tests may use."""
    url = os.environ.get("TPEMU_TEST_PG")
    if url:
        yield url.rstrip("/")
        return
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql)")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("starting a PostgreSQL server needs root (runuser -u postgres); set TPEMU_TEST_PG instead")
    base = Path(tempfile.mkdtemp(prefix="tpemu-pg-"))
    base.chmod(0o755)
    realservers.claim(base)  # pg_ctl daemonizes: a killed run's server is stopped by the next run
    data = base / "data"
    subprocess.run(["chown", "postgres:postgres", str(base)], check=True)
    port = _free_port()
    run = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*run, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync",
                        "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True, timeout=60)
        with (data / "postgresql.conf").open("a") as f:
            f.write(f"\nlisten_addresses='127.0.0.1'\nport={port}\nunix_socket_directories='{base}'\n"
                    "fsync=off\nfull_page_writes=off\nmax_connections=200\n")
        subprocess.run([*run, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t",
                        "30", "start"], check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server: {exc}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*run, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"],
                       check=False, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """A fresh, empty database on the test server."""
    import psycopg

    name = f"tpemu_t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{pg_server}/{name}"


@pytest.fixture(params=["sqlite", "postgres"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(backend_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """``teleport.storage`` for the backend under test."""
    if backend_kind == "postgres":
        return {"type": "postgresql", "conn_string": request.getfixturevalue("pg_url")}
    return {"type": "sqlite", "path": str(tmp_path / "backend" / "sqlite.db")}


async def open_storage(storage: dict[str, str]) -> Backend:
    from tpemu.auth.service import open_backend
    from tpemu.config import Storage

    return await open_backend(Storage(**storage), Path(storage.get("path", "/nonexistent")).parent)


@pytest.fixture
async def backend(storage: dict[str, str]) -> AsyncIterator[Backend]:
    b = await open_storage(storage)
    try:
        yield b
    finally:
        await b.close()
