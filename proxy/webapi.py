"""The proxy's web API over TLS: ``/webapi/ping``, ``/webapi/find`` and friends (glue + JSON shapes).

JSON shapes follow Teleport's ``api/client/webclient/webclient.go`` (``PingResponse``,
``ProxySettings``, ``SSHProxySettings`` …; see ``shared/TELEPORT_NETWORKING.md``): address fields
are ``omitempty`` (absent when unset), ``dial_timeout`` is a Go duration in nanoseconds,
``kube.enabled`` is omitted when false. Values come from the listeners actually bound, so a
proxy started on port 0 advertises its real port.

Routes are registered in a table; later services add theirs with :meth:`WebAPI.add`. As in
``lib/web/apiserver.go`` ``NewHandler``: a path no route matches that starts with ``/v1/`` and
whose next part is ``webapi``, ``enterprise``, ``scripts``, ``.well-known``, ``workload-identity``
or ``web`` is served again without the prefix (tsh posts ``/v1/webapi/ssh/certs``); ``GET /``
redirects (302) to ``/web``; an unknown path gets ``httplib.RouteNotFoundResponse``'s body
(``path not found`` plus the proxy's version).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tpemu import MIN_CLIENT_VERSION, TELEPORT_VERSION
from tpemu.config import Addr, Config
from tpemu.net.http_server import HTTPError, Request, Response
from tpemu.proxy.decide import ListenerKind

log = logging.getLogger(__name__)

#: Teleport's default SSH dial timeout (``defaults.DefaultIOTimeout``), 30 s in nanoseconds.
DIAL_TIMEOUT_NS = 30 * 1_000_000_000


@dataclass
class ProxyInfo:
    """What the proxy advertises: its config and the addresses its listeners really bound."""

    cfg: Config
    bound: dict[ListenerKind, Addr] = field(default_factory=dict)
    #: Set by the Auth integration: the auth connector type, second factor …
    auth_type: str = "local"

    def web_addr(self) -> str:
        return str(self.bound.get(ListenerKind.WEB, self.cfg.proxy_service.web_listen_addr))

    def public_addr(self) -> str | None:
        """The first ``public_addr`` (Teleport redirects to the first one), with the web port."""
        addrs = self.cfg.proxy_service.public_addr
        if not addrs:
            return None
        web_port = self.bound.get(ListenerKind.WEB, self.cfg.proxy_service.web_listen_addr).port
        return str(Addr.parse(addrs[0], default_port=web_port))

    def _addr(self, kind: ListenerKind) -> str | None:
        a = self.bound.get(kind)
        return str(a) if a is not None else None


def _first(values: tuple[str, ...], default_port: int) -> str | None:
    return str(Addr.parse(values[0], default_port=default_port)) if values else None


def proxy_settings(info: ProxyInfo) -> dict[str, Any]:
    """``ProxySettings`` (``proxy`` in the ping response)."""
    cfg = info.cfg
    ps = cfg.proxy_service
    web = info.web_addr()
    multiplex = cfg.multiplex

    ssh: dict[str, Any] = {}
    db: dict[str, Any] = {}
    kube: dict[str, Any] = {}
    if multiplex:
        # TLS routing: every protocol is reached through the web address.
        ssh = {"listen_addr": web, "tunnel_listen_addr": web, "web_listen_addr": web}
        db = {"postgres_listen_addr": web, "mysql_listen_addr": web}
        # The Kubernetes proxy is on the web port too (SNI kube-teleport-proxy-alpn.*).
        kube = {"enabled": True, "listen_addr": web}
    else:
        ssh = {"listen_addr": info._addr(ListenerKind.SSH), "tunnel_listen_addr": info._addr(ListenerKind.TUNNEL),
               "web_listen_addr": web}
        db = {"postgres_listen_addr": info._addr(ListenerKind.POSTGRES) or web,
              "mysql_listen_addr": info._addr(ListenerKind.MYSQL),
              "mongo_listen_addr": info._addr(ListenerKind.MONGO)}
    ssh["public_addr"] = info.public_addr()
    ssh["ssh_public_addr"] = _first(ps.ssh_public_addr, 3023)
    ssh["ssh_tunnel_public_addr"] = _first(ps.tunnel_public_addr, 3024)
    ssh["dial_timeout"] = DIAL_TIMEOUT_NS
    db["postgres_public_addr"] = _first(ps.postgres_public_addr, 5432)
    db["mysql_public_addr"] = _first(ps.mysql_public_addr, 3036)
    db["mongo_public_addr"] = _first(ps.mongo_public_addr, 27017)
    if ListenerKind.KUBE in info.bound:
        kube = {"enabled": True, "listen_addr": info._addr(ListenerKind.KUBE),
                "public_addr": _first(ps.kube_public_addr, 3026)}
    return {
        "kube": _omit_empty(kube),
        "ssh": _omit_empty(ssh),
        "db": _omit_empty(db),
        "tls_routing_enabled": multiplex,
    }


def _omit_empty(d: dict[str, Any]) -> dict[str, Any]:
    # Go's `omitempty`: zero values are left out.
    return {k: v for k, v in d.items() if v not in (None, "", 0, False)}


def _auto_update() -> dict[str, Any]:
    return {"tools_version": TELEPORT_VERSION, "tools_auto_update": False, "agent_version": TELEPORT_VERSION,
            "agent_auto_update": False, "agent_update_jitter_seconds": 0}


#: ``second_factor`` advertised: Teleport 17 no longer allows ``off`` (``api/constants``:
#: ``SecondFactorOff … DELETE IN 17``); ``otp`` is its default (``types.DefaultSecondFactor``).
#: tpemu does not verify one-time codes: tsh asks for one and any code is accepted.
SECOND_FACTOR = "otp"
#: The values Teleport 17 accepts for ``auth_service.authentication.second_factor``.
SECOND_FACTORS_V17 = ("otp", "webauthn", "on", "optional")


def auth_settings(info: ProxyInfo) -> dict[str, Any]:
    """``AuthenticationSettings`` for a cluster with local (password) users."""
    return {
        "type": info.auth_type,
        "second_factor": SECOND_FACTOR,
        "local": {"name": ""},
        "private_key_policy": "none",
        "piv_slot": "",
        "piv_pin_cache_duration": 0,
        "device_trust": {},
        "has_motd": False,
        "default_session_ttl": "12h0m0s",
    }


def ping_response(info: ProxyInfo, with_auth: bool = True) -> dict[str, Any]:
    """The ``/webapi/ping`` body (``with_auth=False``: ``/webapi/find``, zero-valued ``auth``)."""
    auth = auth_settings(info) if with_auth else {
        "type": "", "private_key_policy": "", "piv_slot": "", "piv_pin_cache_duration": 0,
        "device_trust": {}, "has_motd": False, "default_session_ttl": "0s"}
    return {
        "auth": auth,
        "proxy": proxy_settings(info),
        "server_version": TELEPORT_VERSION,
        "min_client_version": MIN_CLIENT_VERSION,
        "auto_update": _auto_update(),
        "cluster_name": info.cfg.auth_service.cluster_name,
        "automatic_upgrades": False,
        "edition": "community",
        "fips": False,
    }


Route = Callable[[Request], Awaitable[Response]]

V1_PREFIX = "/v1"
#: The second path parts for which Teleport strips ``/v1`` (apiserver.go ``NewHandler``).
V1_PARTS = frozenset({"webapi", "enterprise", "scripts", ".well-known", "workload-identity", "web"})


def route_not_found() -> Response:
    """``lib/httplib`` ``RouteNotFoundResponse``: a ``trace.NotFound`` plus the proxy version."""
    major, minor, patch = (int(x) for x in TELEPORT_VERSION.split("-")[0].split("."))
    pre = TELEPORT_VERSION.partition("-")[2]
    return Response.json({"error": {"message": "path not found"}, "fields": {"proxyVersion": {
        "major": major, "minor": minor, "patch": patch, "preRelease": pre, "string": TELEPORT_VERSION}}},
        status=404)


class WebAPI:
    """Dispatches web requests by method and exact path (or path prefix ending in ``/``)."""

    def __init__(self, info: ProxyInfo) -> None:
        self.info = info
        self._routes: dict[tuple[str, str], Route] = {}
        self._prefixes: list[tuple[str, str, Route]] = []
        self._patterns: list[tuple[str, tuple[str, ...], Route]] = []
        self.add("GET", "/webapi/ping", self._ping)
        self.add("GET", "/webapi/ping/", self._ping)  # /webapi/ping/:connector
        self.add("GET", "/webapi/find", self._find)
        self.add("GET", "/web", self._root)

    def add(self, method: str, path: str, handler: Route) -> None:
        """Register ``handler``; a path ending in ``/`` (other than ``/``) matches as a prefix, and
        ``:name`` segments match any one segment (httprouter's syntax, as Teleport registers)."""
        if ":" in path:
            self._patterns.append((method, tuple(path.split("/")), handler))
        elif path.endswith("/") and path != "/":
            self._prefixes.append((method, path, handler))
        else:
            self._routes[(method, path)] = handler

    def _match_pattern(self, method: str | None, path: str) -> Route | None:
        parts = path.split("/")
        for m, pattern, h in self._patterns:
            if (method is None or m == method) and len(pattern) == len(parts) and all(
                    p == q or (p.startswith(":") and q) for p, q in zip(pattern, parts, strict=True)):
                return h
        return None

    def _lookup(self, method: str, path: str) -> Route | None:
        handler = self._routes.get((method, path)) or self._match_pattern(method, path)
        if handler is None:
            for m, prefix, h in self._prefixes:
                if m == method and path.startswith(prefix):
                    return h
        return handler

    def _known(self, path: str) -> bool:
        return (any(p == path for _, p in self._routes) or self._match_pattern(None, path) is not None
                or any(path.startswith(p) for _, p, _ in self._prefixes))

    async def __call__(self, request: Request) -> Response:
        path = request.path
        handler = self._lookup(request.method, path)
        if handler is None and path.startswith(V1_PREFIX + "/"):
            # notFoundRoutingHandler: /v1/<known part>/… is served again without the prefix.
            parts = path.split("/")
            if len(parts) > 2 and parts[2] in V1_PARTS:
                stripped = path[len(V1_PREFIX):]
                handler = self._lookup(request.method, stripped)
                if handler is not None:
                    request.target = request.target[len(V1_PREFIX):]
                elif self._known(stripped):
                    raise HTTPError(405, f"method {request.method} not allowed on {stripped}")
            if handler is None:
                return route_not_found()
        if handler is None:
            if self._known(path):
                raise HTTPError(405, f"method {request.method} not allowed on {path}")
            if request.method in ("GET", "HEAD") and path == "/":
                # "redirect to "/web" when someone hits "/"" (apiserver.go notFoundRoutingHandler).
                return Response(302, b"", [("Location", "/web")])
            return route_not_found()
        return await handler(request)

    async def _ping(self, request: Request) -> Response:
        return Response.json(ping_response(self.info))

    async def _find(self, request: Request) -> Response:
        return Response.json(ping_response(self.info, with_auth=False))

    async def _root(self, request: Request) -> Response:
        cluster = self.info.cfg.auth_service.cluster_name
        return Response.text(
            f"tpemu proxy for cluster {cluster}\n"
            "The Teleport web UI is not emulated. Try /webapi/ping (curl -sk https://HOST:PORT/webapi/ping).\n")
