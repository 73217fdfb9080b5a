"""A logged-in user of a :class:`tpemu.testkit.cluster.Cluster` and the ways in it offers: database
logins, URLs, environments and local tunnels; an OpenSSH config; a kubeconfig for ``kubectl``;
application certificates and local TCP-app tunnels. Each one goes through the same client code as
the ``tpemu`` CLI (``tpemu db login``, ``tpemu config``, ``tpemu kube login``, ``tpemu apps login``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tpemu.config import Addr

if TYPE_CHECKING:
    from tpemu.testkit.cluster import Cluster

#: The SSH port written into ``ssh_config()`` (the proxy only reads it from ProxyCommand's %p).
NODE_PORT = 3022


class User:
    """A logged-in user (``cluster.user(...)``): its profile and the ways in to the cluster."""

    def __init__(self, cluster: Cluster, name: str, home: Path, profile: Any, logins: tuple[str, ...],
                 db_users: tuple[str, ...], db_names: tuple[str, ...]) -> None:
        self.cluster = cluster
        self.name = name
        #: The profile folder (``--home`` / ``$TPEMU_HOME`` for the tpemu CLI).
        self.home = home
        self.profile = profile
        self.logins = logins
        self.db_users = db_users
        self.db_names = db_names
        self._logins: dict[tuple[str, str, str], Any] = {}
        self._tunnels: dict[tuple[str, str, str], tuple[int, asyncio.Event, asyncio.Task[None]]] = {}
        self._lock = asyncio.Lock()
        self._kubeconfig = home / "kubeconfig"
        self._app_tunnels: dict[str, tuple[int, asyncio.Event, asyncio.Task[None]]] = {}

    def env(self) -> dict[str, str]:
        """Environment for running the ``tpemu`` CLI as this user (``TPEMU_HOME``), and ``kubectl``
        once :meth:`kubeconfig` wrote one (``KUBECONFIG``)."""
        env = {"TPEMU_HOME": str(self.home)}
        if self._kubeconfig.exists():
            env["KUBECONFIG"] = str(self._kubeconfig)
        return env

    # -- databases ------------------------------------------------------------------------------------

    def _protocol(self, db: str) -> str:
        for r in self.cluster.databases():
            if r.name == db:
                protocol: str = r.protocol
                return protocol
        known = ", ".join(sorted({r.name for r in self.cluster.databases()})) or "none"
        raise LookupError(f"tpemu.Cluster: no database {db!r} (databases: {known})")

    def _route(self, db: str, db_user: str | None, db_name: str | None) -> tuple[str, str, str]:
        protocol = self._protocol(db)
        if db_user is None:
            if not self.db_users:
                raise ValueError(f"user {self.name!r} has no database users (cluster.user(..., db_users=[…]))")
            db_user = self.db_users[0]
        if db_name is None:
            db_name = self.db_names[0] if self.db_names and protocol in ("postgres", "mongodb") else ""
        return db, db_user, db_name

    async def db_login(self, db: str, db_user: str | None = None, db_name: str | None = None) -> Any:
        """A database certificate routed to ``db`` (``tpemu db login``): a :class:`tpemu.client.db.DBLogin`."""
        from tpemu.client.db import db_login

        key = self._route(db, db_user, db_name)
        async with self._lock:
            if key not in self._logins:
                login = await db_login(self.profile, key[0], key[1], key[2] or None)
                # db_login keeps one certificate per database; keep this route's apart.
                cert = Path(login.cert_path)
                mine = cert.with_name(f"{key[0]}-{key[1]}-{key[2] or '_'}-x509.pem")
                shutil.copyfile(cert, mine)
                self._logins[key] = dataclasses.replace(login, cert_path=str(mine))
            return self._logins[key]

    async def db_env(self, db: str = "pg", db_user: str | None = None, db_name: str | None = None) -> dict[str, str]:
        """libpq environment variables straight to the proxy (``tpemu db env``): Postgres only."""
        from tpemu.client.db import direct_postgres

        login = await self.db_login(db, db_user, db_name)
        if login.protocol != "postgres":
            raise ValueError(f"db_env is for Postgres databases; {db} is {login.protocol}: use db_url or tunnel")
        names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE", "sslmode": "PGSSLMODE",
                 "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY"}
        return {names[k]: v for k, v in direct_postgres(login).items()}

    async def db_url(self, db: str = "pg", db_user: str | None = None, db_name: str | None = None) -> str:
        """A connection URL for the protocol's usual clients.

        Postgres: straight to the proxy with the user's certificate (``sslmode=verify-full``), as
        ``tsh db config`` prints. MySQL, MongoDB, Redis: a plain local :meth:`tunnel` (those clients
        cannot put Teleport's ALPN on the connection themselves).
        """
        login = await self.db_login(db, db_user, db_name)
        user, name = quote(login.db_user, safe=""), quote(login.db_name, safe="")
        if login.protocol == "postgres":
            web = self.cluster.web
            query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in (
                ("sslmode", "verify-full"), ("sslrootcert", login.ca_path), ("sslcert", login.cert_path),
                ("sslkey", login.key_path)))
            return f"postgresql://{user}@{web.host}:{web.port}/{name or user}?{query}"
        port = await self.tunnel(db, db_user, db_name)
        if login.protocol == "mysql":
            return f"mysql://{user}@127.0.0.1:{port}/{name}"
        if login.protocol == "mongodb":
            return f"mongodb://127.0.0.1:{port}/{name}?directConnection=true"
        return f"redis://127.0.0.1:{port}/0"

    async def tunnel(self, db: str, db_user: str | None = None, db_name: str | None = None, port: int = 0) -> int:
        """A plain TCP port on 127.0.0.1 that carries each connection to ``db`` in TLS with this
        user's certificate (``tpemu proxy db --tunnel``); the same port again for the same route."""
        from tpemu.client.db import run_tunnel

        key = self._route(db, db_user, db_name)
        if key in self._tunnels:
            return self._tunnels[key][0]
        login = await self.db_login(*key)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Addr] = loop.create_future()
        stop = asyncio.Event()
        task = asyncio.ensure_future(run_tunnel(login, Addr("127.0.0.1", port), ready.set_result, stop))
        waiting: set[asyncio.Future[Any]] = {ready, task}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            task.result()  # raises why the tunnel could not listen
            raise RuntimeError("the tunnel stopped before it listened")
        bound = ready.result().port
        self._tunnels[key] = (bound, stop, task)
        return bound

    async def close(self) -> None:
        """Stop this user's tunnels."""
        for _, stop, task in [*self._tunnels.values(), *self._app_tunnels.values()]:
            stop.set()
            with contextlib.suppress(Exception):
                await task
        self._tunnels.clear()
        self._app_tunnels.clear()

    # -- Kubernetes and applications -------------------------------------------------------------------

    async def kubeconfig(self, kube: str | None = None, path: str | Path | None = None) -> Path:
        """Log in to Kubernetes cluster ``kube`` (default: the cluster's) as ``tpemu kube login``
        does and return the kubeconfig (``<home>/kubeconfig`` unless ``path``): ``kubectl
        --kubeconfig PATH …``, or ``env()`` for ``KUBECONFIG``. Raises
        :class:`tpemu.client.kube.KubeError` with tsh's words when the user has no Kubernetes access."""
        from tpemu.client.kube import kube_login

        name = kube or self.cluster.kube_name
        target = Path(path) if path is not None else self._kubeconfig
        await kube_login(self.profile, name, target)
        return target

    async def app_login(self, app: str) -> Any:
        """An application certificate (``tpemu apps login``): a :class:`tpemu.client.apps.AppLogin`
        with ``url()`` and ``curl()`` (HTTP apps through the proxy's web port, by SNI)."""
        from tpemu.client.apps import app_login

        return await app_login(self.profile, app)

    async def app_tunnel(self, app: str, port: int = 0) -> int:
        """A plain TCP port on 127.0.0.1 for a TCP app (``tpemu proxy app``): each connection goes to
        the proxy in TLS with ALPN ``teleport-tcp`` and this user's app certificate."""
        from tpemu.client.apps import run_tunnel

        if app in self._app_tunnels:
            return self._app_tunnels[app][0]
        login = await self.app_login(app)
        ready: asyncio.Future[Addr] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        task = asyncio.ensure_future(run_tunnel(login, Addr("127.0.0.1", port), ready.set_result, stop))
        waiting: set[asyncio.Future[Any]] = {ready, task}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            task.result()  # raises why the tunnel could not listen
            raise RuntimeError("the app tunnel stopped before it listened")
        bound = ready.result().port
        self._app_tunnels[app] = (bound, stop, task)
        return bound

    # -- SSH ----------------------------------------------------------------------------------------------

    def ssh_config(self, login: str | None = None, port: int = NODE_PORT) -> Path:
        """Write the OpenSSH config block (``tpemu config``) to ``<home>/ssh_config`` and return the
        path: ``ssh -F PATH NODE.CLUSTER cmd`` then goes through the proxy with this user's certificate."""
        from tpemu.client.openssh_config import openssh_config

        path = self.home / "ssh_config"
        path.write_text(openssh_config(self.profile, port=port, login=login or self.logins[0]), encoding="utf-8")
        return path

    def ssh_target(self, node: str, login: str | None = None) -> str:
        """``LOGIN@NODE.CLUSTER``: the host name the config's ``Host *.CLUSTER`` block matches."""
        return f"{login or self.logins[0]}@{node}.{self.profile.cluster}"
