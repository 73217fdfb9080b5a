"""``tpemu.Cluster``: Auth + proxy + agents in this process, on loopback port 0, for tests.

Every part talks to the others over real sockets as separate Teleport processes would: the proxy
joins the Auth Service with a token minted here, each agent (an SSH node, the Database Service
with the embedded databases) joins through the proxy and holds reverse tunnels to it, users log in
through the proxy's web API (``POST /webapi/ssh/certs``) and get database certificates from the
Auth API (``POST /v1/users/<name>/certs``, ``usage: database``), as ``tpemu login`` and
``tpemu db login`` do. Nothing is stubbed; the cluster is only smaller and faster to start.

The databases are the Database Service's default for an all-in-one ``tpemu start`` (whatever
:func:`tpemu.runner.apply_start_flags` fills in), unless ``databases=`` names others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tpemu import config
from tpemu.config import Addr, Database, DBService
from tpemu.testkit.user import User

#: Every test user's password (tests log in with it; it is no secret).
PASSWORD = "correct horse battery staple"
CLUSTER = "tpemu.local"


async def wait_for(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``cond`` until it holds (no fixed sleeps), or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"tpemu.Cluster: timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _wait_listed(server: Any, kind: str, name: str, timeout: float = 15.0) -> None:
    """Poll the Auth Service's presence list ``kind`` (``kube_servers`` …) until ``name`` is in it."""
    deadline = time.monotonic() + timeout
    while name not in {item["metadata"]["name"] for item in await server.list_servers(kind)}:
        if time.monotonic() > deadline:
            raise TimeoutError(f"tpemu.Cluster: timed out waiting for the Auth Service to list {kind} {name}")
        await asyncio.sleep(0.02)


def default_databases() -> tuple[Database, ...]:
    """The databases an all-in-one ``tpemu start`` serves (the agent's default)."""
    from tpemu.runner import apply_start_flags

    cfg = dataclasses.replace(config.Config(), db_service=DBService(enabled=True))
    cfg, _ = apply_start_flags(cfg, argparse.Namespace(roles="auth,proxy,db"), all_in_one=True)
    return tuple(cfg.db_service.databases)


def _database(spec: Database | Mapping[str, Any]) -> Database:
    if isinstance(spec, Database):
        return spec
    cfg = config.from_dict({"db_service": {"enabled": True, "databases": [dict(spec)]}})
    return cfg.db_service.databases[0]


class Cluster:
    """An async context manager: ``async with tpemu.Cluster() as c: alice = await c.user("alice")``.

    ``nodes``: SSH nodes to start (each an agent joined through the proxy); ``databases``: ``True``
    for the default embedded set, a list of :class:`~tpemu.config.Database` (or config dicts) or
    ``()`` for none; ``mode``: ``multiplex`` (TLS routing, every protocol on the web port) or
    ``separate``; ``proxy``/``auth``: extra ``proxy_service``/``auth_service`` config keys;
    ``tpemu``: extra keys of the config's ``tpemu:`` section (tpemu-only settings such as
    ``{"proxy_service": {"sniff_timeout": "2s"}}``; one written in ``proxy`` is moved there with a
    ``DeprecationWarning``, as ``tpemu start`` warns about it in a file).
    ``path``: the folder to work in (default: a temporary one, removed on close). ``diag``: serve
    the diagnostics (``/metrics``, ``/healthz``, ``/readyz``, ``/routing``) on a port of their own
    (:attr:`diag_addr`); ``trace``: write every routing decision to this JSON-lines file.
    ``kube``: also start a Kubernetes Service agent serving the emulated cluster of this name
    (``kube_direct``: joined at the Auth Service and listening on its own port instead of a reverse
    tunnel); ``apps``: an Application Service on the same agent (``True``: the emulated ``echo``
    app and Teleport's ``dumper`` debug app; or a list of ``app_service.apps`` entries).
    """

    def __init__(self, path: str | Path | None = None, *, nodes: Sequence[str] = ("node1",),
                 databases: bool | Sequence[Database | Mapping[str, Any]] = True, mode: str = "multiplex",
                 cluster_name: str = CLUSTER, proxy: Mapping[str, Any] | None = None,
                 auth: Mapping[str, Any] | None = None, heartbeat: str = "1s", nodename: str = "proxyhost",
                 diag: bool = False, trace: str | Path | None = None, kube: str | None = None,
                 kube_direct: bool = False, apps: bool | Sequence[Mapping[str, Any]] = False,
                 tpemu: Mapping[str, Any] | None = None) -> None:
        if mode not in ("multiplex", "separate"):
            raise ValueError(f"mode must be multiplex or separate, got {mode!r}")
        self._own_dir = path is None
        self.root = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="tpemu-"))
        self.mode = mode
        self.cluster_name = cluster_name
        self.heartbeat = heartbeat
        self._nodes = tuple(nodes)
        self._databases = databases
        self._kube, self._kube_direct, self._apps = kube, kube_direct, apps
        proxy_cfg: dict[str, Any] = {"web_listen_addr": "127.0.0.1:0", **(proxy or {})}
        if mode == "separate":
            proxy_cfg.setdefault("listen_addr", "127.0.0.1:0")
            proxy_cfg.setdefault("tunnel_listen_addr", "127.0.0.1:0")
            if kube is not None:
                proxy_cfg.setdefault("kube_listen_addr", "127.0.0.1:0")
        doc: dict[str, Any] = {
            "teleport": {"data_dir": str(self.root / "data"), "nodename": nodename},
            "auth_service": {"listen_addr": "127.0.0.1:0", "cluster_name": cluster_name, "proxy_listener_mode": mode,
                             "keep_alive_interval": heartbeat, "keep_alive_count_max": 3, **(auth or {})},
            "proxy_service": proxy_cfg}
        if tpemu is not None:
            doc["tpemu"] = dict(tpemu)
        # Teleport's strict parser refuses unknown keys in proxy_service; the config loader still
        # moves tpemu's old spellings, but the test's author should hear of it as a file's does.
        for old, new in config.moved_keys(doc):
            warnings.warn(f"Cluster(proxy=...) key {old.partition('.')[2]!r} is tpemu-only: pass it as "
                          f"Cluster(tpemu={{'proxy_service': {{{new.rpartition('.')[2]!r}: ...}}}}) "
                          f"({new} in a config file)", DeprecationWarning, stacklevel=2)
        self.cfg = config.from_dict(doc)
        self.auth: Any = None
        self.proxy: Any = None
        #: Every agent by name: the SSH nodes, and ``db`` for the Database Service.
        self.agents: dict[str, Any] = {}
        self.users: dict[str, User] = {}
        self._saved_poll: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._want_diag = diag
        self._trace = str(trace) if trace is not None else None
        #: The :class:`tpemu.diag.server.DiagServer` (with ``diag=`` or ``trace=``).
        self.diag: Any = None

    # -- life cycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        from tpemu.auth.service import AuthService
        from tpemu.proxy.auth_routes import AuthLink
        from tpemu.proxy.service import ProxyService

        self.loop = asyncio.get_running_loop()
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.auth = auth = AuthService(self.cfg)
            await auth.start()
            assert auth.addr is not None
            link = AuthLink(auth.addr, ca_pins=(auth.ca_pin,),
                            mint=lambda: auth.mint_token(("Proxy",), ttl=300.0, single_use=True))
            self.proxy = ProxyService(self.cfg, auth=link)
            await self.proxy.start()
            if self._want_diag or self._trace:
                from tpemu.diag.metrics import Sources
                from tpemu.diag.server import DiagServer

                self.diag = DiagServer(Sources(auth=[auth]), trace_path=self._trace)
                self.diag.attach_proxy(self.proxy)
                if self._want_diag:
                    await self.diag.start(Addr("127.0.0.1", 0))
            for name in self._nodes:
                await self.add_node(name)
            if self._databases:
                specs = default_databases() if self._databases is True else self._databases
                await self.add_databases(specs)
            if self._kube is not None or self._apps:
                await self.add_kube_apps(self._kube, self._apps, direct=self._kube_direct)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.diag is not None:
            await self.diag.close()
            self.diag = None
        for user in list(self.users.values()):
            await user.close()
        self.users.clear()
        for agent in reversed(list(self.agents.values())):
            await agent.close()
        self.agents.clear()
        if self.proxy is not None:
            await self.proxy.close()
            self.proxy = None
        if self.auth is not None:
            await self.auth.close()
            self.auth = None
        if self._saved_poll is not None:
            from tpemu.proxy import tunnels

            tunnels.DIRECT_POLL, self._saved_poll = self._saved_poll, None
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    async def reset(self) -> None:
        """Back to a clean cluster between tests: the users made with :meth:`user` are deleted
        (with their profiles and tunnels) and the embedded databases emptied. Nodes, databases
        and the proxy keep running (that is what makes a shared cluster cheap)."""
        for user in list(self.users.values()):
            await user.close()
            with contextlib.suppress(Exception):
                await self.auth.server.users.delete(user.name)
            shutil.rmtree(user.home, ignore_errors=True)
        self.users.clear()
        for agent in self.agents.values():
            for offers in agent.offers.values():
                for offer in offers:
                    reset = getattr(offer.service, "reset", None)
                    if reset is not None:
                        result = reset()
                        if asyncio.iscoroutine(result):  # the Database Service empties its engines
                            await result

    # -- where things are ---------------------------------------------------------------------------

    @property
    def web(self) -> Addr:
        """The proxy's web address (in multiplex mode: every protocol)."""
        from tpemu.proxy.decide import ListenerKind

        addr: Addr = self.proxy.info.bound[ListenerKind.WEB]
        return addr

    def listener(self, kind: Any) -> Addr:
        """The bound address of one proxy listener (a :class:`tpemu.proxy.decide.ListenerKind`)."""
        addr: Addr = self.proxy.info.bound[kind]
        return addr

    @property
    def diag_addr(self) -> Addr:
        """Where the diagnostics listen (``Cluster(diag=True)``)."""
        if self.diag is None or self.diag.addr is None:
            raise RuntimeError("this cluster serves no diagnostics: tpemu.Cluster(diag=True)")
        addr: Addr = self.diag.addr
        return addr

    @property
    def auth_addr(self) -> Addr:
        addr: Addr = self.auth.addr
        return addr

    @property
    def data_dir(self) -> Path:
        return self.cfg.data_dir()

    @property
    def ca(self) -> Path:
        """The cluster CA certificate (PEM) clients verify the proxy with."""
        return self.data_dir / "pki" / "ca.crt"

    @property
    def kube_name(self) -> str:
        """The emulated Kubernetes cluster's name (``Cluster(kube=…)``)."""
        if self._kube is None:
            raise RuntimeError("this cluster serves no Kubernetes cluster: tpemu.Cluster(kube='emu')")
        return self._kube

    def databases(self) -> list[Any]:
        """The databases the proxy can reach now (``tpemu.wire.tunnel.Resource``)."""
        return [r for a, r in self.proxy.tunnels.resources("db") if a.transport_ready]

    # -- growing it -----------------------------------------------------------------------------------

    async def token(self, *roles: str, ttl: float = 300.0, single_use: bool = False) -> str:
        """A join token for ``roles`` (``Node``, ``Db``, ``Proxy`` …), as ``tpemu tokens add`` makes."""
        token: str = await self.auth.mint_token(roles, ttl=ttl, single_use=single_use)
        return token

    async def add_node(self, name: str, *, direct: bool = False, labels: Mapping[str, str] | None = None,
                       port_forwarding: bool = False) -> Any:
        """Start an SSH node: joined through the proxy (reverse tunnel), or ``direct`` (joined at the
        Auth Service, listening on a port of its own); returns once the proxy can reach it."""
        from tpemu.agent.process import AgentOptions, AgentProcess
        from tpemu.agent.services import MAKERS
        from tpemu.proxy import tunnels

        token = await self.token("Node", single_use=True)
        key = name if name not in self.agents else f"{name}-{len(self.agents)}"
        cfg = config.from_dict({
            "teleport": {"data_dir": str(self.root / "agents" / key), "nodename": name},
            "auth_service": {"enabled": False, "keep_alive_interval": self.heartbeat},
            "proxy_service": {"enabled": False},
            "ssh_service": {"listen_addr": "127.0.0.1:0", "labels": dict(labels or {}),
                            "port_forwarding": port_forwarding}})
        opts = AgentOptions(("node",), proxy_server=None if direct else self.web,
                            auth_server=self.auth_addr if direct else None, token=token,
                            ca_pins=(self.auth.ca_pin,), nodename=name)
        if direct and self._saved_poll is None:
            # The proxy polls the Auth Service for directly joined nodes; poll often enough for a test.
            self._saved_poll, tunnels.DIRECT_POLL = tunnels.DIRECT_POLL, 0.2
        agent = AgentProcess(cfg, opts, MAKERS)
        self.agents[key] = agent
        if self.diag is not None:
            self.diag.sources.agents.append(agent)
        await agent.start()
        await agent.wait_connected()
        host_id = agent.contexts["node"].identity.host_id
        reg = self.proxy.tunnels
        if direct:
            await wait_for(lambda: host_id in reg.direct, what=f"the proxy to see direct node {name}")
        else:
            await wait_for(lambda: any(a.host_id == host_id and a.transport_ready and r.name == name
                                       for a, r in reg.resources("node")), what=f"the tunnel of node {name}")
        return agent

    async def add_databases(self, databases: Sequence[Database | Mapping[str, Any]], name: str = "db") -> Any:
        """Start a Database Service agent serving ``databases``; returns once the proxy reaches them all."""
        from tpemu.agent.process import AgentOptions, AgentProcess
        from tpemu.agent.services import MAKERS

        dbs = tuple(_database(d) for d in databases)
        token = await self.token("Db", single_use=True)
        cfg = config.from_dict({
            "teleport": {"data_dir": str(self.root / "agents" / name), "nodename": name},
            "auth_service": {"enabled": False, "keep_alive_interval": self.heartbeat},
            "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}})
        cfg = dataclasses.replace(cfg, db_service=DBService(enabled=True, databases=dbs))
        agent = AgentProcess(cfg, AgentOptions(("db",), proxy_server=self.web, token=token,
                                               ca_pins=(self.auth.ca_pin,), nodename=name), MAKERS)
        self.agents[name] = agent
        if self.diag is not None:
            self.diag.sources.agents.append(agent)
        await agent.start()
        await agent.wait_connected()
        wanted = {d.name for d in dbs}
        await wait_for(lambda: wanted <= {r.name for r in self.databases()},
                       what=f"the proxy to reach databases {', '.join(sorted(wanted))}")
        return agent

    async def add_kube_apps(self, kube: str | None = "emu", apps: bool | Sequence[Mapping[str, Any]] = False, *,
                            direct: bool = False, name: str = "kubeagent") -> Any:
        """Start an agent with the Kubernetes Service (serving the emulated cluster ``kube``) and/or
        the Application Service (``apps``); returns once the proxy and the Auth Service list them.
        ``direct``: the Kubernetes Service joins the Auth Service and listens on its own port
        (``kubernetes_service.listen_addr``) instead of holding a reverse tunnel."""
        from tpemu.agent.process import AgentOptions, AgentProcess
        from tpemu.agent.services import MAKERS

        roles = (("kube",) if kube is not None else ()) + (("app",) if apps else ())
        if not roles:
            raise ValueError("add_kube_apps: name a Kubernetes cluster (kube=) or applications (apps=)")
        doc: dict[str, Any] = {"teleport": {"data_dir": str(self.root / "agents" / name), "nodename": name},
                               "auth_service": {"enabled": False, "keep_alive_interval": self.heartbeat},
                               "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
        if kube is not None:
            doc["kubernetes_service"] = {"enabled": True, "kube_cluster_name": kube,
                                         **({"listen_addr": "127.0.0.1:0"} if direct else {})}
        app_list = [{"name": "echo", "uri": "emulated-echo"}] if apps is True else [dict(a) for a in apps or ()]
        if apps:
            doc["app_service"] = {"enabled": True, "debug_app": apps is True, "apps": app_list}
        token = await self.token(*(r.capitalize() for r in roles))
        where: dict[str, Any] = {"auth_server": self.auth_addr} if direct else {"proxy_server": self.web}
        agent = AgentProcess(config.from_dict(doc), AgentOptions(roles, token=token, ca_pins=(self.auth.ca_pin,),
                                                                 nodename=name, **where),
                             {r: MAKERS[r] for r in roles})
        self.agents[name] = agent
        if self.diag is not None:
            self.diag.sources.agents.append(agent)
        await agent.start()
        await agent.wait_connected()
        admin = self.auth.server
        if kube is not None:
            # The proxy reaches it (its tunnel, or the address it announced) and Auth lists it.
            await wait_for(lambda: direct or kube in {r.name for _, r in self.proxy.tunnels.resources("kube")},
                           what=f"the tunnel of Kubernetes cluster {kube}")
            await _wait_listed(admin, "kube_servers", kube)
        if apps:
            wanted = {a["name"] for a in app_list} | ({"dumper"} if apps is True else set())
            await wait_for(lambda: wanted <= {r.name for _, r in self.proxy.tunnels.resources("app")},
                           what=f"the tunnel of applications {', '.join(sorted(wanted))}")
        return agent

    def db_service(self, name: str = "db") -> Any:
        """The :class:`tpemu.agent.db_service.DatabaseService` of the database agent ``name``."""
        return self.agents[name].offers["db"][0].service

    def ssh_service(self, node: str) -> Any:
        """The :class:`tpemu.agent.ssh_service.SSHService` of node ``node``."""
        return self.agents[node].offers["node"][0].service

    def host_id(self, node: str) -> str:
        host_id: str = self.agents[node].contexts[next(iter(self.agents[node].contexts))].identity.host_id
        return host_id

    # -- users ----------------------------------------------------------------------------------------

    async def add_user(self, name: str, *, logins: Sequence[str] = (), db_users: Sequence[str] = (),
                       db_names: Sequence[str] = (), roles: Sequence[str] = ("access",),
                       kube_groups: Sequence[str] = (), kube_users: Sequence[str] = (),
                       password: str = PASSWORD) -> None:
        """Create (or replace) a user in the Auth Service, as ``tpemu users add`` does."""
        traits = {"logins": list(logins), "db_users": list(db_users), "db_names": list(db_names),
                  "kubernetes_groups": list(kube_groups), "kubernetes_users": list(kube_users)}
        body = {"user": {"kind": "user", "version": "v2", "metadata": {"name": name},
                         "spec": {"roles": list(roles), "traits": traits}}, "password": password}
        await self.auth.server.upsert_user(body, create_only=False)

    async def user(self, name: str = "alice", *, logins: Sequence[str] | None = None,
                   db_users: Sequence[str] | None = None, db_names: Sequence[str] | None = None,
                   roles: Sequence[str] = ("access",), ttl: float = 3600.0, home: str | Path | None = None,
                   kube_groups: Sequence[str] = ("system:masters",), kube_users: Sequence[str] = ()) -> User:
        """Create user ``name`` and log it in through the proxy (a profile as ``tpemu login`` writes).

        Defaults: SSH logins ``root``, the local user and ``name``; database user ``name``;
        database name ``postgres``; Kubernetes group ``system:masters`` (``kube_groups=()`` and
        ``kube_users=()``: no Kubernetes access). The first of each is what the helpers use.
        """
        from tpemu.client import login as login_mod

        if logins is None:
            logins = list(dict.fromkeys(("root", getpass.getuser(), name)))
        db_users = (name,) if db_users is None else tuple(db_users)
        db_names = ("postgres",) if db_names is None else tuple(db_names)
        await self.add_user(name, logins=logins, db_users=db_users, db_names=db_names, roles=roles,
                            kube_groups=kube_groups, kube_users=kube_users)
        folder = Path(home) if home is not None else self.root / "users" / name
        prof = await asyncio.to_thread(login_mod.login, folder, self.web, name, PASSWORD, ttl,
                                       login_mod.Trust(self.ca))
        old = self.users.pop(name, None)
        if old is not None:
            await old.close()
        user = User(self, name, folder, prof, tuple(logins), db_users, db_names)
        self.users[name] = user
        return user

