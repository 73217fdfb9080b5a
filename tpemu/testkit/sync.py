"""``tpemu.SyncCluster``: :class:`tpemu.Cluster` served by an event loop on a thread of its own.

For plain (synchronous) pytest or unittest code: every method blocks until the cluster's loop has
done the work, and the cluster keeps serving while the test blocks in a client (``psycopg``,
``subprocess.run(["ssh", …])``). The loop is uvloop, tpemu's default.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tpemu.config import Addr
from tpemu.testkit.cluster import Cluster
from tpemu.testkit.user import User

T = TypeVar("T")
#: How long one call may take (a start with several agents is a few seconds on a busy machine).
CALL_TIMEOUT = 120.0


class SyncCluster:
    """``with tpemu.SyncCluster() as c: alice = c.user("alice")`` — the options of :class:`Cluster`."""

    def __init__(self, path: str | Path | None = None, **options: Any) -> None:
        self.cluster = Cluster(path, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SyncCluster:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``coro`` on the cluster's loop and wait for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("tpemu.SyncCluster is not running (use it as a context manager or call start())")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="tpemu-cluster", daemon=True)
        self._thread.start()
        try:
            self.call(self.cluster.start())
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self.call(self.cluster.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return

        async def drain() -> None:  # let the tasks the close cancelled finish before the loop stops
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(drain(), loop).result(CALL_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(CALL_TIMEOUT)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    # -- the Cluster API, blocking -------------------------------------------------------------------

    def user(self, name: str = "alice", **options: Any) -> SyncUser:
        """See :meth:`Cluster.user`."""
        return SyncUser(self, self.call(self.cluster.user(name, **options)))

    def reset(self) -> None:
        """See :meth:`Cluster.reset`."""
        self.call(self.cluster.reset())

    def token(self, *roles: str, ttl: float = 300.0, single_use: bool = False) -> str:
        return self.call(self.cluster.token(*roles, ttl=ttl, single_use=single_use))

    def add_node(self, name: str, **options: Any) -> Any:
        return self.call(self.cluster.add_node(name, **options))

    def add_databases(self, databases: Sequence[Any], name: str = "db") -> Any:
        return self.call(self.cluster.add_databases(databases, name))

    def add_kube_apps(self, kube: str | None = "emu", apps: Any = False, **options: Any) -> Any:
        return self.call(self.cluster.add_kube_apps(kube, apps, **options))

    @property
    def web(self) -> Addr:
        return self.cluster.web

    @property
    def ca(self) -> Path:
        return self.cluster.ca

    @property
    def cluster_name(self) -> str:
        return self.cluster.cluster_name


class SyncUser:
    """A :class:`tpemu.testkit.cluster.User` whose methods block (see :class:`SyncCluster`)."""

    def __init__(self, cluster: SyncCluster, user: User) -> None:
        self._cluster = cluster
        self.user = user
        self.name = user.name
        self.home = user.home
        self.profile = user.profile

    def env(self) -> dict[str, str]:
        return self.user.env()

    def db_login(self, db: str, db_user: str | None = None, db_name: str | None = None) -> Any:
        return self._cluster.call(self.user.db_login(db, db_user, db_name))

    def db_env(self, db: str = "pg", db_user: str | None = None, db_name: str | None = None) -> dict[str, str]:
        return self._cluster.call(self.user.db_env(db, db_user, db_name))

    def db_url(self, db: str = "pg", db_user: str | None = None, db_name: str | None = None) -> str:
        return self._cluster.call(self.user.db_url(db, db_user, db_name))

    def tunnel(self, db: str, db_user: str | None = None, db_name: str | None = None, port: int = 0) -> int:
        return self._cluster.call(self.user.tunnel(db, db_user, db_name, port))

    def ssh_config(self, login: str | None = None, port: int = 3022) -> Path:
        return self.user.ssh_config(login, port)

    def ssh_target(self, node: str, login: str | None = None) -> str:
        return self.user.ssh_target(node, login)

    def kubeconfig(self, kube: str | None = None, path: str | Path | None = None) -> Path:
        return self._cluster.call(self.user.kubeconfig(kube, path))

    def app_login(self, app: str) -> Any:
        return self._cluster.call(self.user.app_login(app))

    def app_tunnel(self, app: str, port: int = 0) -> int:
        return self._cluster.call(self.user.app_tunnel(app, port))
