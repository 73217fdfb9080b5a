"""Certificate authorities and the certificates they issue (pure but for the backend calls).

Teleport keeps one authority per type and cluster in the backend (``/authorities/<type>/<cluster>``),
each with an X.509 key pair and, for the host and user CAs, an SSH key pair (``types.CAKeySet``).
tpemu has three: ``host`` (host certificates of Auth, proxies and agents; SSH host certificates),
``user`` (user certificates after login, X.509 and SSH) and ``db`` (certificates that databases
present, ``tctl auth sign --format=db``). They are created on first start, with ECDSA P-256
keys by default or RSA 2048 (``signature_algorithm_suite: legacy``), and never rotated.

Certificates follow ``lib/auth/auth.go`` (``GenerateHostCerts``, ``generateUserCert``) and
``lib/auth/keygen`` (SSH): host TLS certificates name ``<host_id>.<cluster>`` with the system role
as group and the cluster in 1.3.9999.1.7, their DNS SANs are the additional principals plus, for
services with TLS endpoints (Auth, Admin, Proxy, Db, Kube, App, WindowsDesktop: every role but
Node, as in ``DefaultDNSNamesForRole``), ``*.teleport.cluster.local`` and
``teleport.cluster.local``, and for Auth/Proxy/Admin also ``<hex(cluster)>.teleport.cluster.local``
(the SNI clients of the Auth API send; Teleport relies on the wildcard, tpemu lists it as well so
the name shows in ``openssl x509 -text``). SSH host principals are ``BuildPrincipals``:
``<host_id>.<cluster>``, ``<host_id>``, ``<nodename>.<cluster>``, ``<nodename>``, ``localhost``,
``127.0.0.1``, ``::1`` and the additional principals. The CA certificates carry an OU naming
their type (tpemu's choice, so the three are told apart in ``openssl`` output).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import asyncssh
from cryptography import x509

from tpemu import identity as ident
from tpemu import pki, sshcert
from tpemu.auth.backend import AlreadyExists, Backend, NotFound
from tpemu.wire.alpn import INTERNAL_DOMAIN

#: The principal of users without logins (``constants.NoLoginPrefix`` + a UUID).
NO_LOGIN_PREFIX = "-teleport-nologin-"
#: CA certificates live ten years (``defaults.CATTL``), as do host certificates.
CA_TTL = dt.timedelta(days=3650)
HOST_CERT_TTL = CA_TTL


class CAType(Enum):
    HOST = "host"
    USER = "user"
    DB = "db"


#: ``signature_algorithm_suite`` → key type (``legacy`` is RSA 2048; the others ECDSA P-256).
SUITE_KEYS = {"": "ecdsa", "balanced-v1": "ecdsa", "fips-v1": "ecdsa", "hsm-v1": "ecdsa", "legacy": "rsa"}

_SSH_ALG = {"ecdsa": "ecdsa-sha2-nistp256", "rsa": "ssh-rsa"}


def authority_key(ca_type: CAType, cluster_name: str) -> str:
    return f"/authorities/{ca_type.value}/{cluster_name}"


@dataclass(frozen=True)
class CertAuthority:
    """One authority: its X.509 certificate and key, and its SSH key (host and user CAs)."""

    type: CAType
    cluster_name: str
    tls_cert: x509.Certificate
    tls_key: pki.PrivateKey
    ssh_key: Any | None  # asyncssh.SSHKey (private)

    @property
    def tls_cert_pem(self) -> bytes:
        return pki.cert_pem(self.tls_cert)

    @property
    def ssh_public(self) -> bytes:
        """The SSH public key, ``authorized_keys`` style (``ecdsa-sha2-nistp256 AAAA…``)."""
        if self.ssh_key is None:
            return b""
        line: bytes = self.ssh_key.export_public_key("openssh")
        return line.strip()

    @property
    def pin(self) -> str:
        return pki.ca_pin(self.tls_cert)

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "kind": "cert_authority", "version": "v2",
            "metadata": {"name": self.cluster_name},
            "spec": {"type": self.type.value, "cluster_name": self.cluster_name,
                     "active_keys": {"tls": [{"cert": self.tls_cert_pem.decode(),
                                              "key": pki.key_pem(self.tls_key).decode()}]}},
        }
        if self.ssh_key is not None:
            data["spec"]["active_keys"]["ssh"] = [{
                "public_key": self.ssh_public.decode(),
                "private_key": self.ssh_key.export_private_key("pkcs8-pem").decode()}]
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> CertAuthority:
        data = json.loads(raw)
        spec = data["spec"]
        tls = spec["active_keys"]["tls"][0]
        ssh = spec["active_keys"].get("ssh")
        return cls(CAType(spec["type"]), spec["cluster_name"],
                   x509.load_pem_x509_certificate(tls["cert"].encode()), pki.load_key(tls["key"].encode()),
                   asyncssh.import_private_key(ssh[0]["private_key"]) if ssh else None)

    def public_json(self) -> dict[str, Any]:
        """What anyone may see (``GET /v1/authorities/<type>``): no private keys."""
        return {"type": self.type.value, "cluster_name": self.cluster_name,
                "tls_certs": [self.tls_cert_pem.decode()],
                "ssh_public_keys": [self.ssh_public.decode()] if self.ssh_key is not None else []}


def new_authority(ca_type: CAType, cluster_name: str, key_kind: str = "ecdsa") -> CertAuthority:
    key = pki.generate_key(key_kind)
    cert = pki.make_ca(cluster_name, key, cluster_name, CA_TTL, unit=f"{ca_type.value} CA")
    ssh_key = None
    if ca_type in (CAType.HOST, CAType.USER):
        ssh_key = asyncssh.import_private_key(pki.key_pem(pki.generate_key(key_kind)))
    return CertAuthority(ca_type, cluster_name, cert, key, ssh_key)


async def ensure_authorities(backend: Backend, cluster_name: str,
                             key_kind: str = "ecdsa") -> dict[CAType, CertAuthority]:
    """Load the cluster's authorities, creating the missing ones (``create``: if several Auth
    instances start at once on a shared backend, exactly one authority wins)."""
    import asyncio

    out: dict[CAType, CertAuthority] = {}
    for ca_type in CAType:
        key = authority_key(ca_type, cluster_name)
        try:
            out[ca_type] = CertAuthority.from_json((await backend.get(key)).value)
            continue
        except NotFound:
            pass
        ca = await asyncio.to_thread(new_authority, ca_type, cluster_name, key_kind)
        try:
            await backend.create(key, ca.to_json())
            out[ca_type] = ca
        except AlreadyExists:
            out[ca_type] = CertAuthority.from_json((await backend.get(key)).value)
    return out


# -- host certificates ----------------------------------------------------------------------------

_API_DOMAIN_ROLES = {ident.ROLE_AUTH, ident.ROLE_ADMIN, ident.ROLE_PROXY, ident.ROLE_DB, ident.ROLE_KUBE,
                     ident.ROLE_APP, ident.ROLE_WINDOWS_DESKTOP}
_HEX_NAME_ROLES = {ident.ROLE_AUTH, ident.ROLE_ADMIN, ident.ROLE_PROXY}
_DNS_NAME_ROLES = {ident.ROLE_AUTH, ident.ROLE_ADMIN, ident.ROLE_PROXY, ident.ROLE_KUBE, ident.ROLE_WINDOWS_DESKTOP}


def host_dns_names(role: str, cluster_name: str, principals: Iterable[str], dns_names: Iterable[str]) -> list[str]:
    """The SANs of a host TLS certificate (``GenerateHostCerts``)."""
    names = list(principals)
    if role in _API_DOMAIN_ROLES:
        names += [f"*.{INTERNAL_DOMAIN}", INTERNAL_DOMAIN]
    if role in _HEX_NAME_ROLES:
        names.append(ident.cluster_sni(cluster_name))
    if role in _DNS_NAME_ROLES:
        names += list(dns_names)
    return _dedup(names)


def ssh_host_principals(host_id: str, nodename: str, cluster_name: str, role: str,
                        extra: Iterable[str] = ()) -> list[str]:
    """``keygen.BuildPrincipals`` plus the additional principals."""
    if role == ident.ROLE_ADMIN:
        return _dedup([host_id, *extra])
    names = [ident.host_fqdn(host_id, cluster_name), host_id]
    if nodename:
        names += [f"{nodename}.{cluster_name}", nodename]
    names += ["localhost", "127.0.0.1", "::1", *extra]
    return _dedup(names)


def issue_host_tls(ca: CertAuthority, public_key: object, host_id: str, role: str,
                   principals: Iterable[str] = (), dns_names: Iterable[str] = (),
                   system_roles: Iterable[str] = (), ttl: dt.timedelta = HOST_CERT_TTL,
                   now: dt.datetime | None = None) -> x509.Certificate:
    identity = ident.Identity(ident.host_fqdn(host_id, ca.cluster_name), groups=(role,),
                              teleport_cluster=ca.cluster_name, system_roles=tuple(system_roles))
    sans = host_dns_names(role, ca.cluster_name, principals, dns_names)
    return pki.issue_cert(ca.tls_cert, ca.tls_key, public_key, identity.subject(), sans=sans, ttl=ttl, now=now)


def issue_host_ssh(ca: CertAuthority, ssh_public: bytes, host_id: str, nodename: str, role: str,
                   principals: Iterable[str] = (), ttl: dt.timedelta = HOST_CERT_TTL) -> bytes:
    """An SSH host certificate line for ``ssh_public`` (an ``authorized_keys`` line)."""
    assert ca.ssh_key is not None
    now = dt.datetime.now(dt.UTC)
    return sshcert.make_certificate(
        ca.ssh_key, _ssh_key(ssh_public), cert_type=sshcert.HOST_CERT, key_id="",
        principals=ssh_host_principals(host_id, nodename, ca.cluster_name, role, principals),
        valid_after=now - pki.BACKDATE, valid_before=now + ttl,
        extensions={ident.SSH_EXT_HOST_ROLE: role, ident.SSH_EXT_HOST_AUTHORITY: ca.cluster_name})


# -- user certificates ----------------------------------------------------------------------------


def issue_user_tls(ca: CertAuthority, public_key: object, identity: ident.Identity, not_after: dt.datetime,
                   now: dt.datetime | None = None) -> x509.Certificate:
    """A certificate carrying ``identity`` (no SANs, as Teleport's user certs). Its usages are
    every Teleport leaf's (``lib/tlsca/ca.go`` ``GenerateCertificate``: ServerAuth *and*
    ClientAuth, DigitalSignature|KeyEncipherment)."""
    return pki.issue_cert(ca.tls_cert, ca.tls_key, public_key, identity.subject(),
                          not_after=not_after, now=now)


def issue_user_ssh(ca: CertAuthority, ssh_public: bytes, username: str, logins: Iterable[str],
                   roles: Iterable[str], traits: Mapping[str, Iterable[str]], route_to_cluster: str,
                   not_after: dt.datetime, now: dt.datetime | None = None) -> bytes:
    """An SSH user certificate: key id = user, principals = logins, Teleport's extensions."""
    assert ca.ssh_key is not None
    now = now or dt.datetime.now(dt.UTC)
    extensions = {ident.SSH_EXT_PERMIT_PTY: "", ident.SSH_EXT_PERMIT_PORT_FORWARDING: "",
                  ident.SSH_EXT_PERMIT_AGENT_FORWARDING: "",
                  ident.SSH_EXT_ROLES: ident.marshal_cert_roles(roles),
                  ident.SSH_EXT_TRAITS: ident.marshal_traits(traits)}
    if route_to_cluster:
        extensions[ident.SSH_EXT_ROUTE_TO_CLUSTER] = route_to_cluster
    principals = list(logins)
    if not principals:
        # An SSH certificate without principals is valid for *every* login; Teleport gives users
        # without logins a placeholder that is never a Unix login (services.NoLoginPrefix).
        principals = [NO_LOGIN_PREFIX + str(uuid.uuid4())]
    return sshcert.make_certificate(ca.ssh_key, _ssh_key(ssh_public), cert_type=sshcert.USER_CERT,
                                    key_id=username, principals=principals, valid_after=now - pki.BACKDATE,
                                    valid_before=not_after, extensions=extensions)


def issue_db_cert(ca: CertAuthority, public_key: object, common_name: str, server_names: Iterable[str],
                  ttl: dt.timedelta) -> x509.Certificate:
    """A certificate a database presents (``tctl auth sign --format=db``): CN and SANs from the
    server names, server and client auth."""
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)])
    return pki.issue_cert(ca.tls_cert, ca.tls_key, public_key, subject, sans=server_names, ttl=ttl)


# -- helpers -----------------------------------------------------------------------------------------


def _ssh_key(line: bytes) -> Any:
    try:
        return asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"not an SSH public key: {exc}") from None


def _dedup(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n and n not in out:
            out.append(n)
    return out
