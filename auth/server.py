"""The Auth Service's logic: joins, logins, certificates, presence (no network here).

``AuthServer`` owns the backend-backed stores (authorities, tokens, users, servers) and does what
Teleport's ``lib/auth.Server`` does for the paths tpemu emulates: ``register`` (a join token →
host certificates, ``RegisterUsingToken``), ``authenticate_ssh_user`` (password → user
certificates, ``AuthenticateSSHUser``), ``generate_user_certs`` (re-issue for an authenticated
user, e.g. with a database route), ``sign_database_cert`` and the heartbeats of nodes, proxies and
database servers. The HTTP layer (``tpemu.auth.api``) decides who may call what.

Bodies and answers are the JSON shapes of :mod:`tpemu.authapi` (base64 for Go ``[]byte``).
CPU-heavy steps (key generation, password hashing) run in threads so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tpemu import authapi, pki
from tpemu import identity as ident
from tpemu.auth import authority as authority_mod
from tpemu.auth.authority import CAType, CertAuthority
from tpemu.auth.backend import Backend, NotFound
from tpemu.auth.jwt_key import JWTKey, ensure_jwt_key
from tpemu.auth.roles import Roles, check_access
from tpemu.auth.tokens import ProvisionToken, TokenStore, mask, parse_static_tokens
from tpemu.auth.users import User, UserStore
from tpemu.roles import kube_principals

log = logging.getLogger(__name__)

_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RESOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,253}")

#: Presence kinds: the API path segment → (backend prefix, Teleport resource kind, system role).
PRESENCE = {
    "nodes": ("/nodes/default/", "node", ident.ROLE_NODE),
    "proxies": ("/proxies/", "proxy", ident.ROLE_PROXY),
    "db_servers": ("/databaseServers/default/", "db_server", ident.ROLE_DB),
    "auth_servers": ("/authservers/", "auth_server", ident.ROLE_AUTH),
    "kube_servers": ("/kubeServers/", "kube_server", ident.ROLE_KUBE),
    "app_servers": ("/appServers/default/", "app_server", ident.ROLE_APP),
}


#: Presence kinds whose owner is ``spec.host_id`` (the resource is named after what it serves).
_HOSTED = frozenset({"db_servers", "kube_servers", "app_servers"})

NO_ROUTE = ident.RouteToDatabase()
NO_APP = ident.RouteToApp()


@dataclass(frozen=True)
class IssuedUserCerts:
    ssh: bytes
    tls: bytes
    identity: ident.Identity


class AuthServer:
    """One cluster's Auth Service state and operations."""

    def __init__(self, backend: Backend, cluster_name: str, key_kind: str = "ecdsa",
                 static_tokens: Iterable[str] = (), clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.cluster_name = cluster_name
        self.key_kind = key_kind
        self.clock = clock
        self.tokens = TokenStore(backend, parse_static_tokens(static_tokens), clock)
        self.users = UserStore(backend, clock)
        self.roles = Roles(backend)
        self.cas: dict[CAType, CertAuthority] = {}
        self._jwt: JWTKey | None = None
        self._jwt_lock = asyncio.Lock()

    async def init(self) -> None:
        """Load or create the cluster's authorities."""
        self.cas = await authority_mod.ensure_authorities(self.backend, self.cluster_name, self.key_kind)

    async def jwt_key(self) -> JWTKey:
        """The cluster's JWT signing key (made on first use: an RSA key takes a moment to generate)."""
        async with self._jwt_lock:
            if self._jwt is None:
                self._jwt = await ensure_jwt_key(self.backend, self.cluster_name)
            return self._jwt

    async def generate_app_token(self, body: dict[str, Any]) -> dict[str, Any]:
        """``GenerateAppToken``: the JWT the Application Service sends in ``teleport-jwt-assertion``."""
        username = authapi.field_str(body, "username", required=True, max_len=256)
        uri = authapi.field_str(body, "uri", required=True, max_len=2048)
        roles = authapi.field_list(body, "roles")
        raw_traits = body.get("traits") or {}
        if not isinstance(raw_traits, dict) or not all(
                isinstance(v, list) and all(isinstance(s, str) for s in v) for v in raw_traits.values()):
            raise authapi.BadParameter("traits must map names to lists of strings")
        expires = authapi.parse_rfc3339(body.get("expires"), "expires") or (self.clock() + 60.0)
        expires = min(expires, self.clock() + authapi.MAX_CERT_TTL)
        key = await self.jwt_key()
        return {"token": key.app_token(username, list(roles), {str(k): list(v) for k, v in raw_traits.items()}, uri,
                                       expires, self.clock())}

    def ca(self, ca_type: CAType) -> CertAuthority:
        return self.cas[ca_type]

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    def trusted_host_certs(self) -> list[dict[str, Any]]:
        """``host_signers``: the host CA as ``TrustedCerts`` JSON (what clients trust)."""
        host = self.ca(CAType.HOST)
        return [{"domain_name": self.cluster_name, "checking_keys": [authapi.b64(host.ssh_public)],
                 "tls_certs": [authapi.b64(host.tls_cert_pem)]}]

    # -- hosts ------------------------------------------------------------------------------------

    def host_certs(self, host_id: str, nodename: str, role: str, tls_public: object, ssh_public: bytes = b"",
                   principals: Iterable[str] = (), dns_names: Iterable[str] = (),
                   ttl: dt.timedelta = authority_mod.HOST_CERT_TTL,
                   system_roles: tuple[str, ...] = ()) -> dict[str, Any]:
        """``proto.Certs`` JSON for a host: TLS (and SSH if ``ssh_public``) plus the host CA."""
        host = self.ca(CAType.HOST)
        principals = [p for p in principals if p]
        tls = authority_mod.issue_host_tls(host, tls_public, host_id, role, [nodename, *principals], dns_names,
                                           system_roles=system_roles, ttl=ttl, now=self._now())
        ssh = b""
        if ssh_public:
            ssh = authority_mod.issue_host_ssh(host, ssh_public, host_id, nodename, role, principals, ttl)
        return {"ssh": authapi.b64(ssh), "tls": authapi.b64(pki.cert_pem(tls)),
                "tls_ca_certs": [authapi.b64(host.tls_cert_pem)], "ssh_ca_certs": [authapi.b64(host.ssh_public)]}

    async def register(self, body: dict[str, Any], remote_addr: str = "") -> dict[str, Any]:
        """``RegisterUsingToken``: a join token and public keys → host certificates."""
        host_id = authapi.field_str(body, "hostID", required=True, max_len=128)
        if not _HOST_ID.fullmatch(host_id):
            raise authapi.BadParameter(f"invalid hostID {host_id[:64]!r}")
        nodename = authapi.field_str(body, "node_name", max_len=253)
        try:
            role = ident.parse_system_role(authapi.field_str(body, "role", required=True))
        except ValueError as exc:
            raise authapi.BadParameter(str(exc)) from None
        if role in (ident.ROLE_ADMIN, ident.ROLE_AUTH):
            raise authapi.AccessDenied(f"role {role} cannot join with a token")
        system_roles = _instance_roles(body, role)
        token_name = authapi.field_str(body, "token", max_len=256)
        tls_pem = authapi.unb64(body.get("public_tls_key"), "public_tls_key")
        ssh_line = authapi.unb64(body["public_ssh_key"], "public_ssh_key") if body.get("public_ssh_key") else b""
        try:
            tls_public = pki.load_public_key(tls_pem)
        except ValueError as exc:
            raise authapi.BadParameter(f"public_tls_key: {exc}") from None
        # A direct caller's address is what the socket says; a proxy passes on what it saw.
        remote = remote_addr or authapi.field_str(body, "remote_addr", max_len=256)
        remote_ip = remote.rsplit(":", 1)[0].strip("[]") if remote else ""
        principals = [remote_ip if p == "0.0.0.0" and remote_ip else p
                      for p in authapi.field_list(body, "additional_principals")]
        dns_names = authapi.field_list(body, "dns_names")
        try:
            token = await self.tokens.use(token_name, role, who=f"{host_id}@{remote or '?'}",
                                          system_roles=system_roles)
        except authapi.AccessDenied as exc:
            log.warning("join refused: host %s (%s) as %s from %s: %s", host_id, nodename or "-", role,
                        remote or "?", exc)
            raise
        try:
            certs = await asyncio.to_thread(self.host_certs, host_id, nodename, role, tls_public, ssh_line,
                                            principals, dns_names, authority_mod.HOST_CERT_TTL, system_roles)
        except ValueError as exc:
            raise authapi.BadParameter(str(exc)) from None
        log.info("host %s (%s) joined as %s%s from %s with token %s", host_id, nodename or "-", role,
                 f" ({', '.join(system_roles)})" if system_roles else "", remote or "?",
                 "(static)" if token.static else mask(token.name))
        return certs

    async def generate_host_certs(self, caller: ident.Identity, caller_host_id: str,
                                  body: dict[str, Any]) -> dict[str, Any]:
        """``GenerateHostCerts`` for an ``Instance`` identity: a certificate for one of the system
        roles it holds (``lib/auth/auth_with_roles.go``: the host ID must be the caller's own —
        "username mismatch" — and an instance cert may only ask for a role in its SystemRoles)."""
        host_id = authapi.field_str(body, "host_id", required=True, max_len=128)
        if host_id != caller_host_id:
            raise authapi.AccessDenied(f"username mismatch {caller.username!r} and "
                                       f"{ident.host_fqdn(host_id, self.cluster_name)!r}")
        try:
            role = ident.parse_system_role(authapi.field_str(body, "role", required=True))
        except ValueError as exc:
            raise authapi.BadParameter(str(exc)) from None
        if role not in caller.system_roles or role in (ident.ROLE_ADMIN, ident.ROLE_AUTH, ident.ROLE_INSTANCE):
            raise authapi.AccessDenied(f"roles do not match: the instance certificate of {host_id} holds "
                                       f"{', '.join(caller.system_roles) or 'no system roles'}, not {role}")
        nodename = authapi.field_str(body, "node_name", max_len=253)
        tls_pem = authapi.unb64(body.get("public_tls_key"), "public_tls_key")
        ssh_line = authapi.unb64(body["public_ssh_key"], "public_ssh_key") if body.get("public_ssh_key") else b""
        try:
            tls_public = pki.load_public_key(tls_pem)
            certs = await asyncio.to_thread(self.host_certs, host_id, nodename, role, tls_public, ssh_line,
                                            authapi.field_list(body, "additional_principals"),
                                            authapi.field_list(body, "dns_names"))
        except ValueError as exc:
            raise authapi.BadParameter(str(exc)) from None
        log.info("host %s (%s): %s certificate issued to its instance identity", host_id, nodename or "-", role)
        return certs

    # -- users ------------------------------------------------------------------------------------

    def _user_identity(self, user: User, not_after: dt.datetime,
                       route: ident.RouteToDatabase = NO_ROUTE,
                       usage: tuple[str, ...] = (), kube_cluster: str = "",
                       app: ident.RouteToApp = NO_APP,
                       kube: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())) -> ident.Identity:
        """``kube``: the Kubernetes groups and users the user's roles grant (:meth:`kube_principals`)."""
        return ident.Identity(
            username=user.name, groups=user.roles, usage=usage, principals=user.trait("logins"),
            route_to_cluster=self.cluster_name, traits=user.traits, teleport_cluster=self.cluster_name,
            kubernetes_users=kube[1], kubernetes_groups=kube[0],
            kubernetes_cluster=kube_cluster, route_to_app=app, route_to_database=route,
            database_names=user.trait("db_names"),
            database_users=user.trait("db_users"),
            expires=not_after)

    def _issue_user(self, user: User, ssh_public: bytes, tls_public: object, not_after: dt.datetime,
                    route: ident.RouteToDatabase, usage: tuple[str, ...], kube_cluster: str = "",
                    app: ident.RouteToApp = NO_APP,
                    kube: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())) -> IssuedUserCerts:
        ca = self.ca(CAType.USER)
        identity = self._user_identity(user, not_after, route, usage, kube_cluster, app, kube)
        now = self._now()
        tls = pki.cert_pem(authority_mod.issue_user_tls(ca, tls_public, identity, not_after, now)) \
            if tls_public is not None else b""
        ssh = b""
        if ssh_public:
            ssh = authority_mod.issue_user_ssh(ca, ssh_public, user.name, user.trait("logins"), user.roles,
                                               user.traits, self.cluster_name, not_after, now)
        return IssuedUserCerts(ssh, tls, identity)

    async def generate_user_certs(self, user: User, ssh_public: bytes, tls_pem: bytes, ttl: float,
                                  route: ident.RouteToDatabase = NO_ROUTE,
                                  usage: tuple[str, ...] = (), not_after_cap: float | None = None,
                                  kube_cluster: str = "", app: ident.RouteToApp = NO_APP) -> IssuedUserCerts:
        """Certificates for ``user``; TTL capped at :data:`~tpemu.authapi.MAX_CERT_TTL` (and at
        ``not_after_cap``: a re-issue never outlives the certificate that asked for it)."""
        if not ssh_public and not tls_pem:
            raise authapi.BadParameter("'ssh_pub_key' or 'tls_pub_key' must be set")
        tls_public = None
        if tls_pem:
            try:
                tls_public = pki.load_public_key(tls_pem)
            except ValueError as exc:
                raise authapi.BadParameter(f"tls_pub_key: {exc}") from None
        end = self.clock() + min(max(ttl, 60.0), authapi.MAX_CERT_TTL)
        if not_after_cap is not None:
            end = min(end, not_after_cap)
        not_after = dt.datetime.fromtimestamp(int(end), dt.UTC)
        kube = await self.kube_principals(user)
        try:
            return await asyncio.to_thread(self._issue_user, user, ssh_public, tls_public, not_after, route, usage,
                                           kube_cluster, app, kube)
        except ValueError as exc:
            raise authapi.BadParameter(str(exc)) from None

    async def authenticate_ssh_user(self, body: dict[str, Any], remote_addr: str = "") -> dict[str, Any]:
        """``AuthenticateSSHUser``: user + password + public keys → ``SSHLoginResponse`` JSON."""
        name = authapi.field_str(body, "user", required=True, max_len=256)
        password = authapi.field_str(body, "password", max_len=4096)
        ssh_public, tls_pem = _login_keys(body)
        ttl = authapi.duration_ns(body, "ttl", authapi.DEFAULT_CERT_TTL)
        try:
            user = await self.users.check_password(name, password)
        except authapi.AccessDenied as exc:
            log.warning("login refused: user %r from %s: %s", name[:64], remote_addr or "?", exc)
            raise
        issued = await self.generate_user_certs(user, ssh_public, tls_pem, ttl)
        log.info("user %s logged in from %s: roles %s, logins %s, certificates valid until %s", user.name,
                 remote_addr or "?", ",".join(user.roles), ",".join(user.trait("logins")) or "-",
                 authapi.rfc3339(issued.identity.expires))
        return {"username": user.name, "cert": authapi.b64(issued.ssh), "tls_cert": authapi.b64(issued.tls),
                "host_signers": self.trusted_host_certs()}

    async def reissue_user_certs(self, caller: ident.Identity, username: str, body: dict[str, Any]) -> dict[str, Any]:
        """``GenerateUserCerts`` for an authenticated user (or an admin on a user's behalf)."""
        user = await self.users.get(username)
        ssh_public = authapi.unb64(body["ssh_public_key"], "ssh_public_key") if body.get("ssh_public_key") else b""
        tls_pem = authapi.unb64(body["tls_public_key"], "tls_public_key") if body.get("tls_public_key") else b""
        expires = authapi.parse_rfc3339(body.get("expires"), "expires")
        ttl = (expires - self.clock()) if expires else authapi.DEFAULT_CERT_TTL
        raw_route = body.get("route_to_database") or {}
        route_body = authapi.body_object(raw_route)
        route = ident.RouteToDatabase(*(authapi.field_str(route_body, k, max_len=256)
                                        for k in ("service_name", "protocol", "username", "database")))
        usage_text = authapi.field_str(body, "usage")
        if usage_text not in ("", "all", "database"):
            raise authapi.BadParameter(f"usage must be all or database, got {usage_text!r}")
        usage = (ident.USAGE_DATABASE_ONLY,) if usage_text == "database" or (route and usage_text != "all") else ()
        # UserCertsRequest.KubernetesCluster (tsh kube login): the cluster the certificate routes to.
        kube_cluster = authapi.field_str(body, "kubernetes_cluster", max_len=256)
        # UserCertsRequest.RouteToApp (tsh apps login): a new app session, usage:apps.
        app_body = authapi.body_object(body.get("route_to_app") or {})
        app = NO_APP
        if app_body:
            app = ident.RouteToApp(str(uuid.uuid4()), authapi.field_str(app_body, "public_addr", max_len=256),
                                   authapi.field_str(app_body, "cluster_name", max_len=256) or self.cluster_name,
                                   authapi.field_str(app_body, "name", required=True, max_len=256))
            usage = (ident.USAGE_APPS_ONLY,)
            await self._check_resource(user.roles, "app_servers", app.name)
        if kube_cluster:
            await self._check_resource(user.roles, "kube_servers", kube_cluster)
        cap = caller.expires.timestamp() if caller.expires is not None and caller.username == username else None
        issued = await self.generate_user_certs(user, ssh_public, tls_pem, ttl, route, usage, cap, kube_cluster,
                                                app)
        log.info("certificates re-issued for %s by %s%s%s, valid until %s", username, caller.username,
                 f" (database {route.service_name} as {route.username or '-'})" if route else "",
                 f" (kubernetes cluster {kube_cluster})" if kube_cluster else "",
                 authapi.rfc3339(issued.identity.expires))
        return {"ssh": authapi.b64(issued.ssh), "tls": authapi.b64(issued.tls),
                "tls_ca_certs": [authapi.b64(self.ca(CAType.HOST).tls_cert_pem)]}

    async def kube_principals(self, user: User) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The Kubernetes groups and users of ``user``'s certificates: its roles' ``kubernetes_groups``
        / ``kubernetes_users`` templates over its traits (``lib/auth`` ``generateUserCert`` with
        ``CheckKubeGroupsAndUsers``; the preset ``access`` role passes the traits of those names)."""
        def warn(role: str, value: str, exc: Exception) -> None:
            log.warning("user %s: role %s: kubernetes principal %r skipped: %s", user.name, role, value[:200], exc)
        return kube_principals(await self.roles.resolve(user.roles), user.traits, warn)

    async def _check_resource(self, role_names: Iterable[str], kind: str, name: str) -> None:
        """Refuse a certificate for an app / Kubernetes cluster the user's roles do not allow
        (Teleport's ``lib/services/role.go`` ``RoleSet.checkAccess`` with the app / kube cluster
        label matchers, done when the session is created: ``lib/auth`` ``CreateAppSession`` and
        ``generateUserCerts``' kube cluster check). The labels are those the agents announce."""
        what = "application" if kind == "app_servers" else "kubernetes cluster"
        labels: dict[str, str] | None = None
        for item in await self.list_servers(kind):
            inner = (item.get("spec") or {}).get("app") if kind == "app_servers" else item
            meta = (inner or {}).get("metadata") or {}
            if meta.get("name") == name:
                labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
                break
        if labels is None:
            raise authapi.NotFound(f"{what} {name!r} not found")
        reason = check_access(await self.roles.resolve(role_names),
                              "app_labels" if kind == "app_servers" else "kubernetes_labels", labels)
        if reason:
            log.warning("certificate for %s %r refused: %s", what, name, reason)
            raise authapi.AccessDenied(f"access to {what} {name!r} denied: {reason}")

    async def sign_database_cert(self, body: dict[str, Any]) -> dict[str, Any]:
        """``GenerateDatabaseCert``: a certificate, signed by the database CA, for a database server."""
        pem = authapi.unb64(body.get("public_key"), "public_key")
        try:
            public = pki.load_public_key(pem)
        except ValueError as exc:
            raise authapi.BadParameter(f"public_key: {exc}") from None
        names = authapi.field_list(body, "server_names")
        if not names:
            raise authapi.BadParameter("missing parameter server_names")
        ttl = authapi.duration_ns(body, "ttl", 365 * 86400.0)
        ca = self.ca(CAType.DB)
        cert = await asyncio.to_thread(authority_mod.issue_db_cert, ca, public, names[0], names,
                                       dt.timedelta(seconds=ttl))
        return {"cert": authapi.b64(pki.cert_pem(cert)), "cacerts": [authapi.b64(ca.tls_cert_pem)]}

    # -- tokens and users (admin) ---------------------------------------------------------------

    async def create_token(self, body: dict[str, Any]) -> ProvisionToken:
        try:
            roles = ident.parse_system_roles(authapi.field_list(body, "roles"))
        except ValueError as exc:
            raise authapi.BadParameter(str(exc)) from None
        if ident.ROLE_ADMIN in roles or ident.ROLE_AUTH in roles or ident.ROLE_INSTANCE in roles:
            raise authapi.BadParameter("tokens cannot grant the Admin or Auth role, nor Instance (an instance joins "
                                       "with a token that allows each of its services' roles)")
        ttl = authapi.duration_ns(body, "ttl", authapi.DEFAULT_TOKEN_TTL)
        return await self.tokens.create(roles, ttl, bool(body.get("single_use")),
                                        authapi.field_str(body, "token", max_len=256))

    async def upsert_user(self, body: dict[str, Any], create_only: bool) -> User:
        user = User.from_resource(body.get("user"))
        password = authapi.field_str(body, "password", max_len=4096)
        if not password:
            raise authapi.BadParameter("missing parameter password")
        return await self.users.create(user, password, upsert=not create_only)

    # -- presence ---------------------------------------------------------------------------------

    async def upsert_server(self, kind: str, resource: dict[str, Any], ttl: float) -> dict[str, Any]:
        prefix, teleport_kind, _ = PRESENCE[kind]
        meta = authapi.body_object(resource.get("metadata") or {})
        name = authapi.field_str(meta, "name", required=True, max_len=253)
        if not _RESOURCE_NAME.fullmatch(name):
            raise authapi.BadParameter(f"invalid resource name {name[:64]!r}")
        key = prefix + name
        if kind in _HOSTED:
            host_id = authapi.field_str(authapi.body_object(resource.get("spec") or {}), "host_id", required=True)
            if not _HOST_ID.fullmatch(host_id):
                raise authapi.BadParameter(f"invalid host_id {host_id[:64]!r}")
            key = f"{prefix}{host_id}/{name}"
        ttl = min(max(ttl, 1.0), 24 * 3600.0)
        expires = self.clock() + ttl
        out = dict(resource)
        out["kind"] = teleport_kind
        out.setdefault("version", "v2")
        out["metadata"] = {**meta, "expires": authapi.rfc3339(expires)}
        # tpemu: when this heartbeat arrived, so that `tpemu ls` / `tpemu db ls` can show it.
        out["status"] = {**authapi.body_object(resource.get("status") or {}),
                         "last_heartbeat": authapi.rfc3339(self.clock())}
        data = json.dumps(out, sort_keys=True).encode()
        if len(data) > 64 * 1024:
            raise authapi.BadParameter("resource larger than 64 KiB")
        await self.backend.put(key, data, expires=expires)
        return out

    async def list_servers(self, kind: str) -> list[dict[str, Any]]:
        prefix = PRESENCE[kind][0]
        return [json.loads(item.value) for item in await self.backend.get_range(prefix)]

    async def delete_server(self, kind: str, name: str) -> None:
        prefix = PRESENCE[kind][0]
        if kind == "db_servers":
            removed = 0
            for item in await self.backend.get_range(prefix):
                if item.key.rsplit("/", 1)[-1] == name:
                    await self.backend.delete(item.key)
                    removed += 1
            if not removed:
                raise authapi.NotFound(f"database server {name!r} not found")
            return
        try:
            await self.backend.delete(prefix + name)
        except NotFound:
            raise authapi.NotFound(f"{PRESENCE[kind][1]} {name!r} not found") from None


def _login_keys(body: dict[str, Any]) -> tuple[bytes, bytes]:
    """``UserPublicKeys``: ``pub_key`` (deprecated: one SSH key for both certificates) or
    ``ssh_pub_key`` and/or ``tls_pub_key``."""
    pub = authapi.unb64(body["pub_key"], "pub_key") if body.get("pub_key") else b""
    ssh = authapi.unb64(body["ssh_pub_key"], "ssh_pub_key") if body.get("ssh_pub_key") else b""
    tls = authapi.unb64(body["tls_pub_key"], "tls_pub_key") if body.get("tls_pub_key") else b""
    if pub and (ssh or tls):
        raise authapi.BadParameter("'pub_key' cannot be combined with 'ssh_pub_key' or 'tls_pub_key'")
    if pub:
        ssh = pub
        tls = _ssh_to_pem(pub)
    if not ssh and not tls:
        raise authapi.BadParameter("'ssh_pub_key' or 'tls_pub_key' must be set")
    return ssh, tls


def _ssh_to_pem(line: bytes) -> bytes:
    import asyncssh

    try:
        key = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise authapi.BadParameter(f"pub_key: not an SSH public key: {exc}") from None
    pem: bytes = key.export_public_key("pkcs8-pem")
    return pem


def _instance_roles(body: dict[str, Any], role: str) -> tuple[str, ...]:
    """``RegisterUsingTokenRequest.SystemRoles``: only for an ``Instance`` join, and then required."""
    raw = body.get("system_roles")
    if role != ident.ROLE_INSTANCE:
        if raw:
            raise authapi.AccessDenied(f"additional system role encoding not supported for certs of type {role}")
        return ()
    try:
        roles = ident.parse_system_roles(authapi.field_list(body, "system_roles"))
    except ValueError as exc:
        raise authapi.BadParameter(f"system_roles: {exc}") from None
    bad = [r for r in roles if r in (ident.ROLE_ADMIN, ident.ROLE_AUTH, ident.ROLE_INSTANCE)]
    if bad:
        raise authapi.AccessDenied(f"an instance cannot hold the {', '.join(bad)} role")
    return roles
