"""Teleport identities in X.509 certificate subjects: encode and decode (pure).

Follows gravitational/teleport ``lib/tlsca/ca.go`` (``Identity.Subject`` and ``FromSubject``),
read at commit 00885ac35638 through the search tool. The Auth Service encodes; the proxy, the
Database Service and ``tpemu status`` decode the identity from a client certificate.

The subject (one RDN per attribute type, all values of a type in that RDN, as Go's
``pkix.Name.ToRDNSequence`` builds it; extra names each in their own RDN, after the standard ones):

=====================  ==========================  =====================================
attribute              OID                         identity field
=====================  ==========================  =====================================
L (locality)           2.5.4.7                     principals: the allowed SSH logins
STREET                 2.5.4.9                     route_to_cluster (always present)
postalCode             2.5.4.17                    traits, JSON ``{"logins": [...], ...}``
O (organization)       2.5.4.10                    groups: the Teleport roles
OU                     2.5.4.11                    usage (``usage:db`` …)
CN                     2.5.4.3                     username
1.3.9999.1.1 / .1.2    KubeUsers / KubeGroups      kubernetes_users / kubernetes_groups
1.3.9999.1.4/.5/.6/.10 App{SessionID,ClusterName,  route_to_app (session id, cluster,
                       PublicAddr,Name}            public address, app name)
1.3.9999.1.7           TeleportCluster             teleport_cluster
1.3.9999.1.9           ClientIP                    client_ip
1.3.9999.2.1 … .2.4    Database{ServiceName,       route_to_database (service, protocol,
                       Protocol,Username,Name}     username, database)
1.3.9999.2.5 / .2.6    DatabaseNames / Users       database_names / database_users
1.3.9999.2.7           Impersonator                impersonator
1.3.9999.2.11          SystemRoles                 system_roles (multi-role host certs)
=====================  ==========================  =====================================

**Confirmed** against ``lib/tlsca/ca.go``: every OID above, which subject field carries which
identity field, that STREET and postalCode are always emitted (postalCode ``null`` for no traits),
the RDN order, that expiry is the certificate's NotAfter (not in the subject). Also confirmed
(``lib/auth``): host identities use ``<host_id>.<cluster>`` as username and the system role
(``Proxy``, ``Node``, ``Db`` …) as the only group.

**tpemu's own choices** (not checked line by line): strings are PrintableString when every
character allows it, otherwise UTF8String — this is what Go's ``encoding/asn1`` does for a string
without an explicit type; decoders accept either. Fields Teleport has that tpemu does not
emulate (AWS/Azure identities, MFA, device trust, access requests, generation …)
are neither encoded nor decoded; their OIDs are listed in :data:`OTHER_TELEPORT_OIDS` so that a
reader of a real Teleport certificate knows what it is skipping.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID, ObjectIdentifier

from tpemu.errors import LocalFault
from tpemu.wire.alpn import INTERNAL_DOMAIN, cluster_sni

__all__ = ["cluster_sni"]  # re-exported: the SNI that :func:`decode_cluster_sni` reads

# -- OIDs (lib/tlsca/ca.go) -------------------------------------------------------------------

KUBE_USERS_OID = ObjectIdentifier("1.3.9999.1.1")
KUBE_GROUPS_OID = ObjectIdentifier("1.3.9999.1.2")
KUBE_CLUSTER_OID = ObjectIdentifier("1.3.9999.1.3")
APP_SESSION_ID_OID = ObjectIdentifier("1.3.9999.1.4")
APP_CLUSTER_NAME_OID = ObjectIdentifier("1.3.9999.1.5")
APP_PUBLIC_ADDR_OID = ObjectIdentifier("1.3.9999.1.6")
APP_NAME_OID = ObjectIdentifier("1.3.9999.1.10")
TELEPORT_CLUSTER_OID = ObjectIdentifier("1.3.9999.1.7")
CLIENT_IP_OID = ObjectIdentifier("1.3.9999.1.9")
DB_SERVICE_NAME_OID = ObjectIdentifier("1.3.9999.2.1")
DB_PROTOCOL_OID = ObjectIdentifier("1.3.9999.2.2")
DB_USERNAME_OID = ObjectIdentifier("1.3.9999.2.3")
DB_NAME_OID = ObjectIdentifier("1.3.9999.2.4")
DB_NAMES_OID = ObjectIdentifier("1.3.9999.2.5")
DB_USERS_OID = ObjectIdentifier("1.3.9999.2.6")
IMPERSONATOR_OID = ObjectIdentifier("1.3.9999.2.7")
SYSTEM_ROLES_OID = ObjectIdentifier("1.3.9999.2.11")

#: Teleport OIDs tpemu recognises but does not emulate (decoding skips them).
OTHER_TELEPORT_OIDS: Mapping[str, str] = {
    "1.3.9999.1.8": "MFAVerified", "1.3.9999.1.11": "AppAWSRoleARN",
    "1.3.9999.1.12": "AWSRoleARNs", "1.3.9999.1.13": "RenewableCertificate", "1.3.9999.1.14": "Generation",
    "1.3.9999.1.15": "PrivateKeyPolicy", "1.3.9999.1.16": "AppAzureIdentity", "1.3.9999.1.17": "AzureIdentity",
    "1.3.9999.2.8": "ActiveRequests", "1.3.9999.2.9": "DisallowReissue", "1.3.9999.2.10": "AllowedResources",
    "1.3.9999.2.12": "PreviousIdentityExpires", "1.3.9999.2.13": "ConnectionDiagnosticID",
    "1.3.9999.3.1": "DeviceID", "1.3.9999.3.2": "DeviceAssetTag", "1.3.9999.3.3": "DeviceCredentialID",
}

#: ``usage:db`` (``teleport.UsageDatabaseOnly``): a certificate only good for database access.
USAGE_DATABASE_ONLY = "usage:db"
#: ``usage:apps`` (``teleport.UsageAppsOnly``): an application session certificate.
USAGE_APPS_ONLY = "usage:apps"
#: ``usage:kube`` (``teleport.UsageKubeOnly``): a certificate only good for Kubernetes access.
USAGE_KUBE_ONLY = "usage:kube"
#: What a refused usage is told (``lib/authz`` ``Middleware.GetUser``).
INVALID_USAGE = "access denied: invalid client certificate"


def usage_refusal(usage: tuple[str, ...], accepted: tuple[str, ...], service: str) -> str:
    """Why a certificate restricted to ``usage`` may not be used by ``service``, or ``""``.

    Teleport's rule (``lib/authz`` / ``lib/auth/middleware.go`` ``Middleware.GetUser`` with each
    service's ``AcceptedUsage``): a certificate with no usage is good everywhere; one with a usage
    only where every one of its usages is accepted — the database proxy accepts ``usage:db``
    (``lib/srv/db/proxyserver.go`` ``NewProxyServer``), the Kubernetes proxy ``usage:kube``
    (``lib/kube/proxy/server.go`` ``NewTLSServer``), the application proxy ``usage:apps``
    (``lib/srv/app/server.go``), the Auth API none.
    """
    extra = [u for u in usage if u not in accepted]
    if not extra:
        return ""
    return f"{INVALID_USAGE} (a certificate restricted to {', '.join(usage)} is not for {service})"

# -- system roles (api/types/system_role.go) ------------------------------------------------------

ROLE_AUTH = "Auth"
ROLE_PROXY = "Proxy"
ROLE_NODE = "Node"
ROLE_DB = "Db"
ROLE_ADMIN = "Admin"
ROLE_APP = "App"
ROLE_KUBE = "Kube"
ROLE_WINDOWS_DESKTOP = "WindowsDesktop"
#: The identity of a process that runs several services: it joins once with the token and asks for
#: one certificate per service with it (``lib/auth/auth_with_roles.go`` ``GenerateHostCerts``).
ROLE_INSTANCE = "Instance"
SYSTEM_ROLES = (ROLE_AUTH, ROLE_PROXY, ROLE_NODE, ROLE_DB, ROLE_ADMIN, ROLE_APP, ROLE_KUBE, ROLE_WINDOWS_DESKTOP,
                ROLE_INSTANCE)
_ROLE_BY_LOWER = {r.lower(): r for r in SYSTEM_ROLES}
_ROLE_BY_LOWER["database"] = ROLE_DB
_ROLE_BY_LOWER["windows_desktop"] = ROLE_WINDOWS_DESKTOP


def parse_system_role(text: str) -> str:
    """``node`` → ``Node`` (case-insensitive, as ``tctl tokens add --type`` takes them).

    Raises :class:`ValueError` naming the known roles.
    """
    role = _ROLE_BY_LOWER.get(text.strip().lower())
    if role is None:
        raise ValueError(f"unknown role {text!r} (known: {', '.join(r.lower() for r in SYSTEM_ROLES)})")
    return role


def parse_system_roles(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"node,db"`` or ``["node", "db"]`` → ``("Node", "Db")``, de-duplicated."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        if item.strip():
            role = parse_system_role(item)
            if role not in out:
                out.append(role)
    if not out:
        raise ValueError("no role given")
    return tuple(out)


def host_fqdn(host_id: str, cluster_name: str) -> str:
    """``<host_id>.<cluster_name>``: the username of a host identity (``HostFQDN``)."""
    return f"{host_id}.{cluster_name}"


def decode_cluster_sni(sni: str) -> str | None:
    """The cluster name from a ``<hex>.teleport.cluster.local`` SNI, or ``None``."""
    suffix = "." + INTERNAL_DOMAIN
    if not sni.endswith(suffix):
        return None
    try:
        return bytes.fromhex(sni[: -len(suffix)]).decode("utf-8")
    except ValueError:
        return None


# -- the identity ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteToDatabase:
    """Where a database certificate leads: service name, protocol, default user and database."""

    service_name: str = ""
    protocol: str = ""
    username: str = ""
    database: str = ""

    def __bool__(self) -> bool:
        return bool(self.service_name or self.protocol or self.username or self.database)


@dataclass(frozen=True, slots=True)
class RouteToApp:
    """Where an application certificate leads (``tlsca.RouteToApp``): ``tsh apps login``."""

    session_id: str = ""
    public_addr: str = ""
    cluster_name: str = ""
    name: str = ""

    def __bool__(self) -> bool:
        return bool(self.name or self.public_addr)


@dataclass(frozen=True)
class Identity:
    """A user's or a host's identity as carried by an X.509 certificate."""

    username: str
    groups: tuple[str, ...] = ()
    usage: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()
    route_to_cluster: str = ""
    traits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    teleport_cluster: str = ""
    system_roles: tuple[str, ...] = ()
    kubernetes_users: tuple[str, ...] = ()
    kubernetes_groups: tuple[str, ...] = ()
    kubernetes_cluster: str = ""
    client_ip: str = ""
    route_to_database: RouteToDatabase = RouteToDatabase()
    route_to_app: RouteToApp = RouteToApp()
    database_names: tuple[str, ...] = ()
    database_users: tuple[str, ...] = ()
    impersonator: str = ""
    #: The certificate's NotAfter (not part of the subject).
    expires: dt.datetime | None = None

    __hash__ = None  # type: ignore[assignment]  # traits is a mapping

    @property
    def roles(self) -> tuple[str, ...]:
        """The Teleport roles (the ``O`` values): user roles, or a host's system role."""
        return self.groups

    @property
    def logins(self) -> tuple[str, ...]:
        return self.principals

    def to_json(self) -> dict[str, Any]:
        """Every field as a JSON object (see :func:`identity_to_json`)."""
        return identity_to_json(self)

    @classmethod
    def from_json(cls, data: object) -> Identity:
        """The identity in a :meth:`to_json` object; raises :class:`IdentityError`."""
        return identity_from_json(data)

    def is_system(self, role: str) -> bool:
        """Whether this is a host identity holding system role ``role``."""
        return role in self.groups or role in self.system_roles

    def subject(self) -> x509.Name:
        """The X.509 subject for this identity (``Identity.Subject``)."""
        rdns: list[x509.RelativeDistinguishedName] = []

        def add(oid: ObjectIdentifier, values: Iterable[str]) -> None:
            # An RDN is a SET: equal values cannot repeat (Go would write them; they mean nothing).
            attrs = [_attr(oid, v) for v in dict.fromkeys(values)]
            if attrs:
                rdns.append(x509.RelativeDistinguishedName(attrs))

        add(NameOID.LOCALITY_NAME, self.principals)
        add(NameOID.STREET_ADDRESS, [self.route_to_cluster])
        add(NameOID.POSTAL_CODE, [marshal_traits(self.traits)])
        add(NameOID.ORGANIZATION_NAME, self.groups)
        add(NameOID.ORGANIZATIONAL_UNIT_NAME, self.usage)
        if self.username:
            add(NameOID.COMMON_NAME, [self.username])
        extra: list[tuple[ObjectIdentifier, str]] = []
        extra += [(SYSTEM_ROLES_OID, v) for v in self.system_roles]
        extra += [(KUBE_USERS_OID, v) for v in self.kubernetes_users]
        extra += [(KUBE_GROUPS_OID, v) for v in self.kubernetes_groups]
        if self.kubernetes_cluster:
            extra.append((KUBE_CLUSTER_OID, self.kubernetes_cluster))
        app = self.route_to_app
        for oid, value in ((APP_SESSION_ID_OID, app.session_id), (APP_CLUSTER_NAME_OID, app.cluster_name),
                           (APP_PUBLIC_ADDR_OID, app.public_addr), (APP_NAME_OID, app.name)):
            if value:
                extra.append((oid, value))
        if self.teleport_cluster:
            extra.append((TELEPORT_CLUSTER_OID, self.teleport_cluster))
        if self.client_ip:
            extra.append((CLIENT_IP_OID, self.client_ip))
        route = self.route_to_database
        for oid, value in ((DB_SERVICE_NAME_OID, route.service_name), (DB_PROTOCOL_OID, route.protocol),
                           (DB_USERNAME_OID, route.username), (DB_NAME_OID, route.database)):
            if value:
                extra.append((oid, value))
        extra += [(DB_NAMES_OID, v) for v in self.database_names]
        extra += [(DB_USERS_OID, v) for v in self.database_users]
        if self.impersonator:
            extra.append((IMPERSONATOR_OID, self.impersonator))
        for oid, value in extra:
            rdns.append(x509.RelativeDistinguishedName([_attr(oid, value)]))
        return x509.Name(rdns)


class IdentityError(LocalFault, ValueError):
    """A certificate subject that does not hold a valid identity."""


# -- JSON (the reverse tunnel's dial request carries the caller's verified identity) -------------

_JSON_LISTS = ("groups", "usage", "principals", "system_roles", "kubernetes_users", "kubernetes_groups",
               "database_names", "database_users")
_JSON_STRINGS = ("username", "route_to_cluster", "teleport_cluster", "kubernetes_cluster", "client_ip",
                 "impersonator")
_ROUTE_FIELDS = ("service_name", "protocol", "username", "database")
_APP_FIELDS = ("session_id", "public_addr", "cluster_name", "name")


def identity_to_json(identity: Identity) -> dict[str, Any]:
    """A JSON object holding every field of ``identity`` (``expires`` as Unix seconds)."""
    out: dict[str, Any] = {k: getattr(identity, k) for k in _JSON_STRINGS}
    out.update({k: list(getattr(identity, k)) for k in _JSON_LISTS})
    out["traits"] = {k: list(v) for k, v in identity.traits.items()}
    route = identity.route_to_database
    out["route_to_database"] = {k: getattr(route, k) for k in _ROUTE_FIELDS}
    out["route_to_app"] = {k: getattr(identity.route_to_app, k) for k in _APP_FIELDS}
    out["expires"] = identity.expires.timestamp() if identity.expires is not None else None
    return out


def identity_from_json(data: object) -> Identity:
    """The inverse of :func:`identity_to_json`; raises :class:`IdentityError` naming the bad field."""
    if not isinstance(data, dict):
        raise IdentityError("identity must be a JSON object")

    def text(obj: dict[str, Any], key: str) -> str:
        value = obj.get(key, "")
        if not isinstance(value, str) or len(value) > 4096:
            raise IdentityError(f"identity field {key!r} must be a string")
        return value

    def strings(key: str) -> tuple[str, ...]:
        value = data.get(key)
        value = [] if value is None else value
        if not isinstance(value, list) or len(value) > 1024 or not all(isinstance(v, str) for v in value):
            raise IdentityError(f"identity field {key!r} must be a list of strings")
        return tuple(value)

    route = data.get("route_to_database")
    route = {} if route is None else route
    if not isinstance(route, dict):
        raise IdentityError("identity field 'route_to_database' must be an object")
    app = data.get("route_to_app")
    app = {} if app is None else app
    if not isinstance(app, dict):
        raise IdentityError("identity field 'route_to_app' must be an object")
    raw_traits = data.get("traits")
    raw_traits = {} if raw_traits is None else raw_traits
    if not isinstance(raw_traits, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in raw_traits.values()):
        raise IdentityError("identity field 'traits' must map names to lists of strings")
    expires_at = data.get("expires")
    if expires_at is not None and (isinstance(expires_at, bool) or not isinstance(expires_at, int | float)):
        raise IdentityError("identity field 'expires' must be Unix seconds or null")
    return Identity(
        username=text(data, "username"),
        groups=strings("groups"), usage=strings("usage"), principals=strings("principals"),
        route_to_cluster=text(data, "route_to_cluster"),
        traits={str(k): tuple(v) for k, v in raw_traits.items()},
        teleport_cluster=text(data, "teleport_cluster"), system_roles=strings("system_roles"),
        kubernetes_users=strings("kubernetes_users"), kubernetes_groups=strings("kubernetes_groups"),
        kubernetes_cluster=text(data, "kubernetes_cluster"), client_ip=text(data, "client_ip"),
        route_to_database=RouteToDatabase(*(text(route, k) for k in _ROUTE_FIELDS)),
        route_to_app=RouteToApp(*(text(app, k) for k in _APP_FIELDS)),
        database_names=strings("database_names"), database_users=strings("database_users"),
        impersonator=text(data, "impersonator"),
        expires=dt.datetime.fromtimestamp(expires_at, dt.UTC) if expires_at is not None else None,
    )


def from_subject(subject: x509.Name, expires: dt.datetime | None = None) -> Identity:
    """The identity in ``subject`` (``FromSubject``); raises :class:`IdentityError`."""
    lists: dict[str, list[str]] = {}
    for attr in subject:
        value = attr.value
        if isinstance(value, bytes):  # only for bit-string attributes, which Teleport never uses
            continue
        lists.setdefault(attr.oid.dotted_string, []).append(value)

    def many(oid: ObjectIdentifier) -> tuple[str, ...]:
        return tuple(lists.get(oid.dotted_string, ()))

    def one(oid: ObjectIdentifier) -> str:
        values = lists.get(oid.dotted_string)
        return values[0] if values else ""

    raw_traits = one(NameOID.POSTAL_CODE)
    traits = unmarshal_traits(raw_traits) if raw_traits else {}
    return Identity(
        username=one(NameOID.COMMON_NAME),
        groups=many(NameOID.ORGANIZATION_NAME),
        usage=many(NameOID.ORGANIZATIONAL_UNIT_NAME),
        principals=many(NameOID.LOCALITY_NAME),
        route_to_cluster=one(NameOID.STREET_ADDRESS),
        traits=traits,
        teleport_cluster=one(TELEPORT_CLUSTER_OID),
        system_roles=many(SYSTEM_ROLES_OID),
        kubernetes_users=many(KUBE_USERS_OID),
        kubernetes_groups=many(KUBE_GROUPS_OID),
        kubernetes_cluster=one(KUBE_CLUSTER_OID),
        client_ip=one(CLIENT_IP_OID),
        route_to_database=RouteToDatabase(one(DB_SERVICE_NAME_OID), one(DB_PROTOCOL_OID), one(DB_USERNAME_OID),
                                          one(DB_NAME_OID)),
        route_to_app=RouteToApp(one(APP_SESSION_ID_OID), one(APP_PUBLIC_ADDR_OID), one(APP_CLUSTER_NAME_OID),
                                one(APP_NAME_OID)),
        database_names=many(DB_NAMES_OID),
        database_users=many(DB_USERS_OID),
        impersonator=one(IMPERSONATOR_OID),
        expires=expires,
    )


def from_certificate(cert: x509.Certificate) -> Identity:
    """The identity of a certificate, with ``expires`` from its NotAfter."""
    with warnings.catch_warnings():
        # cryptography warns about subject values past RFC 5280's 64-character bound when it
        # parses them; Teleport writes such values (long host names), so they are expected.
        warnings.simplefilter("ignore", UserWarning)
        return from_subject(cert.subject, cert.not_valid_after_utc)


def from_der(der: bytes) -> Identity:
    """The identity of a DER certificate (as ``SSLObject.getpeercert(binary_form=True)`` gives it)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise IdentityError(f"not an X.509 certificate: {exc}") from None
    return from_certificate(cert)


# -- traits (api/types/wrappers: JSON map of string lists) --------------------------------------------


def marshal_traits(traits: Mapping[str, Iterable[str]]) -> str:
    """Go's ``json.Marshal`` of a ``map[string][]string``: sorted keys, no spaces; ``null`` if nil."""
    if not traits:
        return "null"
    return json.dumps({k: list(v) for k, v in traits.items()}, sort_keys=True, separators=(",", ":"))


def unmarshal_traits(text: str) -> dict[str, tuple[str, ...]]:
    """The inverse of :func:`marshal_traits`; raises :class:`IdentityError` on bad JSON."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise IdentityError(f"traits are not JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()):
        raise IdentityError("traits must be a JSON object of string lists")
    return {str(k): tuple(v) for k, v in data.items()}


# -- SSH certificate extensions (constants.go, lib/services/role.go) -----------------------------

#: ``teleport-roles``: ``{"version":"v1","roles":[...]}`` in user SSH certificates.
SSH_EXT_ROLES = "teleport-roles"
SSH_EXT_TRAITS = "teleport-traits"
SSH_EXT_ROUTE_TO_CLUSTER = "teleport-route-to-cluster"
SSH_EXT_PERMIT_PTY = "permit-pty"
SSH_EXT_PERMIT_PORT_FORWARDING = "permit-port-forwarding"
SSH_EXT_PERMIT_AGENT_FORWARDING = "permit-agent-forwarding"
#: Host certificates: the system role and the cluster (``utils.CertExtensionRole/Authority``).
SSH_EXT_HOST_ROLE = "x-teleport-role"
SSH_EXT_HOST_AUTHORITY = "x-teleport-authority"


def marshal_cert_roles(roles: Iterable[str]) -> str:
    """The ``teleport-roles`` extension value (``services.MarshalCertRoles``)."""
    return json.dumps({"version": "v1", "roles": list(roles)}, separators=(",", ":"))


def unmarshal_cert_roles(text: str) -> tuple[str, ...]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise IdentityError(f"teleport-roles is not JSON: {exc}") from None
    roles = data.get("roles") if isinstance(data, dict) else None
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise IdentityError("teleport-roles must be {\"version\": ..., \"roles\": [strings]}")
    return tuple(roles)


# -- string types -------------------------------------------------------------------------------

_PRINTABLE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")


def _attr(oid: ObjectIdentifier, value: str) -> x509.NameAttribute[str]:
    # Go's asn1.Marshal picks PrintableString when every character allows it, else UTF8String.
    kind = _ASN1Type.PrintableString if all(c in _PRINTABLE for c in value) else _ASN1Type.UTF8String
    if len(value.encode("utf-8")) <= 64:  # cryptography counts UTF-8 bytes
        return x509.NameAttribute(oid, value, _type=kind)
    # RFC 5280's upper bound of 64 characters for CN is not enforced by Go, and a host identity
    # ``<uuid>.<cluster name>`` easily exceeds it; cryptography only warns with _validate=False.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x509.NameAttribute(oid, value, _type=kind, _validate=False)
