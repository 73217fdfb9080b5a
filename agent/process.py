"""The agent process: join the cluster, hold reverse tunnels (or listen directly), serve, heartbeat (glue).

An agent runs one or more services (``node``: the SSH service, ``db``: the Database Service), as
``tpemu start --roles node,db --token T --proxy HOST:PORT`` or from ``ssh_service``/``db_service``
in a config. Following the seed ("Architecture overview", "Agent ports", "Direct connections to
agents"):

* **Joining.** With ``teleport.proxy_server`` the agent joins *through the proxy*: it fetches the
  cluster's host CA from the proxy's web API (``/webapi/auth/export``), checks it against
  ``teleport.ca_pin`` (or trusts it on first use, with a warning, as Teleport does without a pin),
  and calls ``POST /webapi/host/credentials`` with the join token, once per service role (Teleport
  gives each service its own identity). With ``teleport.auth_server`` it joins the Auth Service
  directly, which the seed allows only for the SSH, Kubernetes and Windows Desktop services: a
  database service is refused with the seed's reason. Identities are kept in
  ``<data_dir>/<role>/`` and reused while valid, so the token is needed once.
* **Reaching the agent.** Through the proxy: one :class:`~tpemu.agent.tunnel.TunnelAgent` per
  service, to the web port with ALPN ``teleport-reversetunnel`` when the proxy's
  ``/webapi/find`` says TLS routing is on, otherwise to its tunnel address (3024). Directly
  joined: the SSH service opens its own listener (``ssh_service.listen_addr``, 3022) and the proxy
  dials it at the address announced to Auth.
* **Presence.** Every heartbeat interval the agent announces itself to the Auth Service
  (``/v1/nodes``, ``/v1/db_servers`` with a TTL of three intervals) — through the proxy with ALPN
  ``teleport-auth@`` when joined through it — so ``tpemu ls`` lists what is alive.

Every dial honours ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (:mod:`tpemu.net.proxyenv`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from tpemu import TELEPORT_VERSION, authapi, authclient, pki
from tpemu import identity as ident
from tpemu.agent.tunnel import Offer, TunnelAgent, TunnelTarget
from tpemu.config import Addr, Config
from tpemu.errors import LocalFault
from tpemu.net.pipe import Parked
from tpemu.net.proxyenv import ProxySettings
from tpemu.net.tls import new_context
from tpemu.wire import alpn
from tpemu.wire import tunnel as tw

log = logging.getLogger(__name__)

ROLES = {"node": ident.ROLE_NODE, "db": ident.ROLE_DB, "kube": ident.ROLE_KUBE, "app": ident.ROLE_APP}
#: Presence kind (Auth API path) per resource kind, and the agent role that announces it.
_PRESENCE = {tw.NODE: ("nodes", "node"), tw.DATABASE: ("db_servers", "db"), "kube": ("kube_servers", "kube"),
             "app": ("app_servers", "app")}
#: The seed's words ("Direct connections to agents").
DIRECT_JOIN_REFUSED = ("Direct Auth Service joining is only supported for Teleport Agents running the Teleport SSH "
                       "Service, Kubernetes Service, and Windows Desktop Service. Using Auth Service joining to "
                       "enroll applications, databases, and for other discovery-based features, is not supported.")


class AgentError(LocalFault):
    """The agent cannot start (the message says why and what to change)."""


@dataclass
class AgentOptions:
    roles: tuple[str, ...]
    proxy_server: Addr | None = None
    auth_server: Addr | None = None
    token: str = ""
    ca_pins: tuple[str, ...] = ()
    nodename: str = ""


@dataclass
class AgentContext:
    """What a service maker gets: the config, the role's identity, a way to call Auth."""

    cfg: Config
    data_dir: Path
    role: str
    identity: authclient.HostIdentity
    files: pki.TLSFiles
    nodename: str
    direct: bool
    auth: authclient.AuthClient
    labels: dict[str, str] = field(default_factory=dict)


#: A service maker returns the offers of one role (``node``, ``db``).
ServiceMaker = Callable[[AgentContext], Awaitable[list[Offer]]]


class AgentProcess:
    def __init__(self, cfg: Config, options: AgentOptions, makers: dict[str, ServiceMaker],
                 proxy: ProxySettings | None = None, data_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.opts = options
        self.makers = makers
        self.proxy_env = proxy if proxy is not None else ProxySettings()
        self.data_dir = data_dir or cfg.data_dir()
        self.nodename = options.nodename or cfg.teleport.nodename or socket.gethostname()
        self.heartbeat = float(cfg.auth_service.keep_alive_interval)
        self.missed = cfg.auth_service.keep_alive_count_max
        self.tunnels: list[TunnelAgent] = []
        self.contexts: dict[str, AgentContext] = {}
        self.offers: dict[str, list[Offer]] = {}
        self.direct_addr: Addr | None = None
        self.direct_kube_addr: Addr | None = None
        self._listeners: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._trusted_ca: bytes | None = None

    @property
    def via_proxy(self) -> bool:
        return self.opts.proxy_server is not None

    # -- start ------------------------------------------------------------------------------------

    async def start(self) -> None:
        opts = self.opts
        unknown = [r for r in opts.roles if r not in ROLES]
        if unknown or not opts.roles:
            raise AgentError(f"unknown agent role(s) {', '.join(unknown) or '(none)'}: use node, db, kube, app")
        if opts.proxy_server is None and opts.auth_server is None:
            raise AgentError("an agent needs teleport.proxy_server (--proxy) or teleport.auth_server (--auth-server)")
        if not self.via_proxy and "app" in opts.roles:
            raise AgentError(f"the Application Service cannot join the Auth Service directly: {DIRECT_JOIN_REFUSED} "
                             "(join through the proxy with --proxy)")
        if not self.via_proxy and "db" in opts.roles:
            raise AgentError(f"the Database Service cannot join the Auth Service directly: {DIRECT_JOIN_REFUSED} "
                             "(join through the proxy with --proxy)")
        host_id = await asyncio.to_thread(pki.ensure_host_uuid, self.data_dir)
        for role in opts.roles:
            identity, files = await self._identity(role, host_id)
            ctx = AgentContext(self.cfg, self.data_dir, role, identity, files, self.nodename, not self.via_proxy,
                               self._auth_client(identity, files), dict(self.cfg.ssh_service.labels))
            self.contexts[role] = ctx
            self.offers[role] = await self.makers[role](ctx)
        if self.via_proxy:
            target = await self._tunnel_target()
            for role in opts.roles:
                ctx = self.contexts[role]
                agent = TunnelAgent(ctx.identity, target, self.offers[role], hostname=self.nodename,
                                    proxy=self.proxy_env, heartbeat=self.heartbeat, missed=self.missed,
                                    name=f"{role} tunnel")
                agent.start()
                self.tunnels.append(agent)
        else:
            await self._listen_direct()
            await self._listen_direct_kube()
        self._tasks.append(asyncio.get_running_loop().create_task(self._presence()))

    async def wait_connected(self, timeout: float = 15.0) -> None:
        """Until every tunnel is up (direct agents: at once)."""
        async with asyncio.timeout(timeout):
            for t in self.tunnels:
                await t.state.connected.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for t in self.tunnels:
            await t.close()
        for lsock in self._listeners:
            lsock.close()
        # Services end their sessions themselves (the SSH service hangs up its processes).
        for offers in self.offers.values():
            for service in {id(o.service): o.service for o in offers}.values():
                close = getattr(service, "close", None)
                if close is not None:
                    result = close()
                    if asyncio.iscoroutine(result):
                        await result

    # -- identity -------------------------------------------------------------------------------------

    async def _identity(self, role: str, host_id: str) -> tuple[authclient.HostIdentity, pki.TLSFiles]:
        folder = self.data_dir / role
        system_role = ROLES[role]
        identity = authclient.HostIdentity.load(folder)
        why = "none saved" if identity is None else identity.usable()
        if identity is not None and why is None and (identity.host_id != host_id or identity.role != system_role):
            why = f"it is for {identity.role} {identity.host_id}"
        if identity is None or why is not None:
            if len(self.opts.roles) > 1:
                # Teleport's multi-service process: one join as Instance with every service's role,
                # then one certificate per service from that identity (lib/service/connect.go;
                # GenerateHostCerts), so a single-use token of type node,db starts --roles node,db.
                identity = await self._from_instance(system_role, host_id)
            elif not self.opts.token:
                raise AgentError(f"the {role} service has no identity in {folder} ({why}) and no join token "
                                 "(--token, or teleport.auth_token; make one with: tpemu tokens add --type "
                                 f"{role})")
            else:
                identity = await self._join(system_role, host_id)
            await asyncio.to_thread(identity.save, folder)
            log.info("%s service joined cluster %s as host %s (%s)", role, identity.cluster_name, host_id,
                     "through the proxy" if self.via_proxy else "directly at the Auth Service")
        return identity, identity.files(folder)

    async def _instance(self, host_id: str) -> authclient.HostIdentity:
        """The process's Instance identity (``<data_dir>/instance/``), joining once if needed."""
        folder = self.data_dir / "instance"
        roles = tuple(ROLES[r] for r in self.opts.roles)
        identity = authclient.HostIdentity.load(folder)
        why = "none saved" if identity is None else identity.usable()
        if identity is not None and why is None and identity.host_id != host_id:
            why = f"it is for host {identity.host_id}"
        if identity is not None and why is None:
            held = ident.from_certificate(identity.cert).system_roles
            if not set(roles) <= set(held):
                why = f"it holds {', '.join(held) or 'no roles'}, not {', '.join(roles)}"
        if identity is None or why is not None:
            if not self.opts.token:
                raise AgentError(f"the agent has no instance identity in {folder} ({why}) and no join token "
                                 "(--token, or teleport.auth_token; make one with: tpemu tokens add --type "
                                 f"{','.join(self.opts.roles)})")
            identity = await self._join(ident.ROLE_INSTANCE, host_id, roles)
            await asyncio.to_thread(identity.save, folder)
            log.info("joined cluster %s once as instance %s for %s", identity.cluster_name, host_id, ", ".join(roles))
        return identity

    async def _from_instance(self, system_role: str, host_id: str) -> authclient.HostIdentity:
        instance = await self._instance(host_id)
        files = instance.files(self.data_dir / "instance")
        kind = authclient.key_kind_of(pki.load_certs(instance.ca_pems)[0])
        key = await asyncio.to_thread(pki.generate_key, kind)
        body = authclient.host_certs_request(key, system_role, host_id, self.nodename, [self.nodename])
        try:
            answer = await self._auth_client(instance, files).call("POST", "/v1/hosts/certs", body)
        except authapi.AuthAPIError as exc:
            raise AgentError(f"getting the {system_role} certificate with the instance identity failed: "
                             f"{exc.message}") from None
        return authclient.identity_from_certs(answer, key, host_id, system_role, instance.cluster_name)

    async def _join(self, system_role: str, host_id: str,
                    system_roles: tuple[str, ...] = ()) -> authclient.HostIdentity:
        principals = [self.nodename]
        try:
            if not self.via_proxy:
                assert self.opts.auth_server is not None
                # The cluster name comes from the Auth Service's CA certificate.
                return await authclient.join(self.opts.auth_server, self.opts.token, system_role, host_id,
                                             self.nodename, principals=principals, ca_pins=self.opts.ca_pins,
                                             system_roles=system_roles)
            ca_pem = await self._proxy_ca()
            kind = authclient.key_kind_of(x509.load_pem_x509_certificate(ca_pem))
            key = await asyncio.to_thread(pki.generate_key, kind)
            body = authclient.register_request(key, self.opts.token, system_role, host_id, self.nodename, principals,
                                               system_roles=system_roles)
            answer = await self._web_client(ca_pem).call("POST", "/webapi/host/credentials", body)
            cluster = x509.load_pem_x509_certificate(ca_pem).subject.get_attributes_for_oid(
                x509.oid.NameOID.COMMON_NAME)[0].value
            return authclient.identity_from_certs(answer, key, host_id, system_role, str(cluster))
        except authapi.AuthAPIError as exc:
            where = self.opts.proxy_server if self.via_proxy else self.opts.auth_server
            raise AgentError(f"joining the cluster at {where} as {system_role} failed: {exc.message}") from None

    def _web_client(self, ca_pem: bytes | None) -> authclient.AuthClient:
        assert self.opts.proxy_server is not None
        ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if ca_pem is None:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            # The system's roots as Teleport's web client (api/client/webclient newWebClient: no
            # RootCAs, so the system pool; SSL_CERT_FILE applies) — a load balancer's own public
            # certificate in front of the proxy — plus the pinned cluster CA, which signs tpemu's
            # default web certificate.
            ctx.load_default_certs()
            ctx.load_verify_locations(cadata=ca_pem.decode())
        ctx.set_alpn_protocols([alpn.HTTP11])
        host = self.opts.proxy_server.host
        return authclient.AuthClient(self.opts.proxy_server, ctx, host, what="the proxy", proxy=self.proxy_env)

    async def _proxy_ca(self) -> bytes:
        """The cluster's host CA as the proxy exports it, checked against the CA pins."""
        if self._trusted_ca is not None:
            return self._trusted_ca
        data = await self._web_client(None).call("GET", "/webapi/auth/export?type=tls-host", raw=True)
        try:
            certs = pki.load_certs(data)
        except ValueError:
            raise AgentError(f"the proxy at {self.opts.proxy_server} did not export a CA certificate") from None
        pins = [p for p in self.opts.ca_pins if p]
        have = [pki.ca_pin(c) for c in certs]
        if pins and not set(pins) & set(have):
            raise AgentError(f"the proxy at {self.opts.proxy_server} presented a cluster CA ({', '.join(have)}) "
                             "that matches none of the CA pins (teleport.ca_pin / --ca-pin)")
        if not pins:
            log.warning("joining through %s without validating the cluster CA (set teleport.ca_pin to %s)",
                        self.opts.proxy_server, ", ".join(have))
        self._trusted_ca = b"".join(pki.cert_pem(c) for c in certs)
        return self._trusted_ca

    def _auth_client(self, identity: authclient.HostIdentity, files: pki.TLSFiles) -> authclient.AuthClient:
        if self.via_proxy:
            assert self.opts.proxy_server is not None
            client = authclient.AuthClient.with_identity(self.opts.proxy_server, identity.cluster_name, files,
                                                         via_proxy=True)
        else:
            assert self.opts.auth_server is not None
            client = authclient.AuthClient.with_identity(self.opts.auth_server, identity.cluster_name, files)
        client.proxy = self.proxy_env
        return client

    # -- reaching the agent ----------------------------------------------------------------------------

    async def _tunnel_target(self) -> TunnelTarget:
        """Teleport's ``tunnelProxyAddr``: the web address with TLS routing, else the tunnel address."""
        assert self.opts.proxy_server is not None
        proxy = self.opts.proxy_server
        ca = next(iter(self.contexts.values())).identity.ca_pems
        find = await self._web_client(ca).call("GET", "/webapi/find")
        settings = (find or {}).get("proxy") or {}
        ssh = settings.get("ssh") or {}
        if settings.get("tls_routing_enabled"):
            return TunnelTarget(proxy, True, proxy.host)
        for key in ("ssh_tunnel_public_addr", "tunnel_listen_addr"):
            value = ssh.get(key)
            if value:
                addr = Addr.parse(value, default_port=3024)
                # A listen address on all interfaces is reached at the proxy's own host.
                host = proxy.host if addr.host in ("0.0.0.0", "::", "") else addr.host
                return TunnelTarget(Addr(host, addr.port), False, host)
        return TunnelTarget(Addr(proxy.host, 3024), False, proxy.host)

    async def _listen_direct(self) -> None:
        """Directly-joined agents: the SSH service on its own listener (``ssh_service.listen_addr``)."""
        offers = self.offers.get("node") or []
        if not offers:
            return
        service = offers[0].service
        addr = self.cfg.ssh_service.listen_addr
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        lsock = socket.socket(infos[0][0], socket.SOCK_STREAM)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(infos[0][4])
            lsock.listen(512)
            lsock.setblocking(False)
        except OSError as exc:
            lsock.close()
            raise AgentError(f"the SSH service cannot listen on {addr}: {exc.strerror or exc}") from None
        self._listeners.append(lsock)
        host, port = lsock.getsockname()[:2]
        self.direct_addr = Addr(host, port)
        log.info("SSH service listening directly on %s (direct-dial mode: the proxy dials this address)",
                 self.direct_addr)
        served: set[asyncio.Task[None]] = set()

        async def accept_loop() -> None:
            while True:
                conn, peer = await loop.sock_accept(lsock)
                conn.setblocking(False)
                request = tw.DialRequest(address=str(self.direct_addr), conn_type=tw.NODE,
                                         client_src_addr=f"{peer[0]}:{peer[1]}")
                task = loop.create_task(_serve_and_close(service, conn, request))
                served.add(task)
                task.add_done_callback(served.discard)

        self._tasks.append(loop.create_task(accept_loop()))

    async def _listen_direct_kube(self) -> None:
        """A directly-joined Kubernetes Service on ``kubernetes_service.listen_addr`` (3026), for the proxy."""
        offers = self.offers.get("kube") or []
        if not offers:
            return
        service: Any = offers[0].service
        ctx = self.contexts["kube"]
        tls = new_context(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(ctx.files.cert, ctx.files.key)
        tls.load_verify_locations(cafile=str(ctx.files.ca))  # the host CA: the proxy's certificate
        tls.verify_mode = ssl.CERT_REQUIRED
        tls.set_alpn_protocols([alpn.HTTP11])
        addr = self.cfg.kubernetes_service.listen_addr or Addr("127.0.0.1", 3026)
        try:
            host, port = await service.listen(addr.host, addr.port, tls)
        except OSError as exc:
            raise AgentError(f"the Kubernetes Service cannot listen on {addr}: {exc.strerror or exc}") from None
        self.direct_kube_addr = Addr(host, port)
        log.info("Kubernetes Service listening directly on %s (the proxy dials this address)", self.direct_kube_addr)

    # -- presence --------------------------------------------------------------------------------------

    def _resources(self) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for role, offers in self.offers.items():
            ctx = self.contexts[role]
            for offer in offers:
                r = offer.resource
                if r.kind == tw.NODE:
                    out.append(("nodes", {
                        "kind": "node", "version": "v2",
                        "metadata": {"name": ctx.identity.host_id, "labels": r.labels},
                        "spec": {"hostname": self.nodename, "addr": str(self.direct_addr) if self.direct_addr else "",
                                 "use_tunnel": self.via_proxy, "version": TELEPORT_VERSION}}))
                elif r.kind in ("kube", "app"):
                    out.append((_PRESENCE[r.kind][0], self._hosted(ctx, r)))
                elif r.kind == tw.DATABASE:
                    out.append(("db_servers", {
                        "kind": "db_server", "version": "v3",
                        "metadata": {"name": r.name, "labels": r.labels},
                        "spec": {"host_id": ctx.identity.host_id, "hostname": self.nodename,
                                 "version": TELEPORT_VERSION,
                                 "database": {"metadata": {"name": r.name, "description": r.description,
                                                           "labels": r.labels},
                                              "spec": {"protocol": r.protocol, "uri": r.addr or "emulated"}}}}))
        return out

    def _hosted(self, ctx: AgentContext, r: tw.Resource) -> dict[str, Any]:
        """A ``kube_server`` (``spec.cluster``) or ``app_server`` (``spec.app``) resource."""
        inner: dict[str, Any] = {"metadata": {"name": r.name, "description": r.description, "labels": r.labels},
                                 "spec": {"uri": r.addr, "protocol": r.protocol} if r.kind == "app" else {}}
        direct = str(self.direct_kube_addr) if r.kind == "kube" and self.direct_kube_addr else ""
        return {"kind": "kube_server" if r.kind == "kube" else "app_server", "version": "v3",
                "metadata": {"name": r.name, "labels": r.labels},
                "spec": {"host_id": ctx.identity.host_id, "hostname": self.nodename, "version": TELEPORT_VERSION,
                         "addr": direct, "use_tunnel": self.via_proxy,
                         ("app" if r.kind == "app" else "cluster"): inner}}

    async def _presence(self) -> None:
        ttl_ns = int(self.heartbeat * 3 * 1e9)
        failing = False
        while True:
            for kind, resource in self._resources():
                role = next(v[1] for v in _PRESENCE.values() if v[0] == kind)
                try:
                    await self.contexts[role].auth.call("POST", f"/v1/{kind}", {**resource, "ttl": ttl_ns})
                    if failing:
                        log.info("presence heartbeats to the Auth Service work again")
                    failing = False
                except authapi.AuthAPIError as exc:
                    if not failing:
                        log.warning("presence heartbeat (%s) to the Auth Service failed: %s", kind, exc.message)
                    failing = True
            await asyncio.sleep(self.heartbeat)


async def _serve_and_close(service: Any, sock: socket.socket, request: tw.DialRequest) -> None:
    transport: asyncio.BaseTransport | None = None
    try:
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(Parked, sock)
        await service.serve(transport, request)
    except Exception:
        log.exception("SSH service failed on a direct connection from %s", request.client_src_addr)
        if transport is not None:
            transport.close()
        else:
            sock.close()


def parse_roles(text: str | Sequence[str]) -> tuple[str, ...]:
    """``node,db`` → ``("node", "db")`` (Teleport's ``--roles`` spelling: ``node``, ``db``)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(dict.fromkeys(i.strip().lower() for i in items if i.strip()))
