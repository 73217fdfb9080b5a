"""The authorization matrix (issue 16): every credential kind by every endpoint, each cell allow/deny.

One in-process cluster (Auth + proxy in separate-listener mode, a Database Service agent serving
``cache`` over its reverse tunnel). Each credential is minted here from the cluster's own
authorities (or a foreign one) and used for real on each endpoint:

* **web** — ``GET /webapi/sites/<cluster>/nodes`` over the proxy's web TLS with the certificate;
* **auth** — ``POST /v1/users/alice/certs`` (``GenerateUserCerts``) straight at the Auth API;
* **tunnel** — an SSH publickey login presenting the SSH form on the reverse-tunnel listener;
* **db** — TLS with ALPN ``teleport-redis`` to the proxy, then a line that only the agent answers;
* **ssh** — an SSH user login (``root``) on the proxy's SSH listener with the SSH form;
* **kube** — TLS to the proxy's web port with the Kubernetes SNI (``kube-teleport-proxy-alpn.``), then
  a line that only the Kubernetes agent answers;
* **app** — TLS with ALPN ``teleport-tcp`` (a TCP application), then a line only the App agent answers.

"allow" means the request did what it asks (200, certificates, an authenticated SSH session, the
agent's answer); anything else — a TLS alert, 403, a refused SSH login, the proxy's refusal in the
database protocol, a Kubernetes ``Status`` — is "deny". The Teleport rule each row follows is cited in
:data:`WHY`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from tests.agent.test_tunnel import Echo, agent_for, join, wait_for
from tpemu import authapi, authclient, pki
from tpemu import identity as ident
from tpemu.auth import authority as authority_mod
from tpemu.auth.authority import CAType
from tpemu.proxy.decide import ListenerKind
from tpemu.testkit import Cluster

ENDPOINTS = ("web", "auth", "tunnel", "db", "ssh", "kube", "app")
A, D = "allow", "deny"

#: credential kind → expected cell per endpoint (web, auth, tunnel, db, ssh, kube, app).
EXPECTED: dict[str, tuple[str, ...]] = {
    "user":            (A, A, D, A, A, A, D),
    "user usage:db":   (D, D, D, A, D, D, D),
    "user usage:apps": (D, D, D, D, D, D, A),
    "user usage:kube": (D, D, D, D, D, A, D),
    "host Node":       (D, D, A, D, D, D, D),
    "host Db":         (D, D, A, D, D, D, D),
    "host Kube":       (D, D, A, D, D, D, D),
    "host App":        (D, D, A, D, D, D, D),
    "host Proxy":      (D, D, D, D, D, D, D),
    "db server cert":  (D, D, D, D, D, D, D),
    "expired user":    (D, D, D, D, D, D, D),
    "other CA":        (D, D, D, D, D, D, D),
    "self-signed":     (D, D, D, D, D, D, D),
    "no cert":         (D, D, D, D, D, D, D),
}

#: The Teleport source each row follows (gravitational/teleport).
WHY: dict[str, str] = {
    "user": "lib/auth/auth_with_roles.go ServerWithRoles.GenerateUserCerts (a user renews its own certs); "
            "lib/srv/authhandlers.go UserKeyAuth (user CA); the tunnel needs a host cert "
            "(lib/reversetunnel/srv.go keyAuth: cert type must be HostCert); db: tpemu also takes the "
            "database from the SNI's first label when the cert has no route (tpemu extension); kube: "
            "lib/kube/proxy/server.go NewTLSServer (no usage = any service; the cluster is the only one served); "
            "app: lib/srv/app/server.go needs an app session certificate (RouteToApp), which a plain user "
            "cert is not",
    "user usage:db": "lib/auth/middleware.go Middleware.GetUser: a cert with a Usage is rejected on every Auth API "
                     "call ('access denied: invalid client certificate'); lib/tlsca/ca.go UsageDatabaseOnly; "
                     "tsh db login issues TLS only, so there is no SSH form; the db proxy accepts usage:db "
                     "(lib/srv/db/proxyserver.go NewProxyServer AcceptedUsage UsageDatabaseOnly), the kube "
                     "proxy (lib/kube/proxy/server.go AcceptedUsage UsageKubeOnly) and the app proxy "
                     "(lib/srv/app/server.go AcceptedUsage UsageAppsOnly) do not",
    "user usage:apps": "lib/auth/auth_with_roles.go GenerateUserCerts RouteToApp → usage:apps (an app session "
                       "certificate): only lib/srv/app/server.go (AcceptedUsage UsageAppsOnly) takes it; the Auth "
                       "API (lib/auth/middleware.go GetUser), db and kube proxies refuse a usage they do not accept",
    "user usage:kube": "lib/auth/auth_with_roles.go UserCertsRequest_Kubernetes → usage:kube: only the kube proxy "
                       "(lib/kube/proxy/server.go NewTLSServer AcceptedUsage UsageKubeOnly) takes it",
    "host Node": "lib/reversetunnel/srv.go handleNewChan: RoleNode → NodeTunnel; host certs are signed by the host "
                 "CA, which web/db TLS (user CA pool) and SSH user auth (lib/srv/authhandlers.go) do not trust; "
                 "auth_with_roles.go GenerateUserCerts is for users",
    "host Db": "lib/reversetunnel/srv.go handleNewChan: RoleDatabase → DatabaseTunnel; otherwise as host Node",
    "host Kube": "lib/reversetunnel/srv.go handleNewChan: RoleKube → KubeTunnel; otherwise as host Node (the kube "
                 "proxy verifies client certs against the user CA: lib/kube/proxy/server.go)",
    "host App": "lib/reversetunnel/srv.go handleNewChan: RoleApp → AppTunnel; otherwise as host Node",
    "host Proxy": "lib/reversetunnel/srv.go handleNewChan: RoleProxy → handleNewCluster (trusted clusters, which "
                  "tpemu does not emulate): no service tunnel; not a user anywhere",
    "db server cert": "signed by the database CA (lib/auth GenerateDatabaseCert), which no client-facing endpoint "
                      "trusts",
    "expired user": "crypto/tls and x/crypto/ssh CertChecker refuse an expired certificate (x509: certificate has "
                    "expired; ssh: cert has expired)",
    "other CA": "authclient.WithClusterCAs / lib/auth/middleware.go ClientCertPool: only this cluster's CAs",
    "self-signed": "not issued by any cluster CA (x509: certificate signed by unknown authority)",
    "no cert": "lib/auth/middleware.go: no cert → Nop user (only ping/CA/join); db proxy requires a cert "
               "(lib/srv/db/proxyserver.go Authorize); SSH needs a user cert",
}

CLUSTER = "tpemu.local"
NO_ROUTE = ident.RouteToDatabase()
NO_APP = ident.RouteToApp()
APP_ROUTE = ident.RouteToApp("matrix-session", "tcpapp.localhost", CLUSTER, "tcpapp")


@dataclass
class Credential:
    tls: tuple[bytes, bytes] | None  # cert PEM, key PEM
    ssh: tuple[asyncssh.SSHKey, asyncssh.SSHCertificate | None] | None
    host_fqdn: str = ""


def _ssh_key(key: pki.PrivateKey) -> asyncssh.SSHKey:
    return asyncssh.import_private_key(pki.key_pem(key))


def mint(cluster: Cluster) -> dict[str, Credential]:
    """Every credential kind, from the cluster's authorities (and a foreign cluster's)."""
    server = cluster.auth.server
    assert server is not None
    user_ca, host_ca, db_ca = (server.ca(t) for t in (CAType.USER, CAType.HOST, CAType.DB))
    now = dt.datetime.now(dt.UTC)
    soon = now + dt.timedelta(hours=1)

    def user(ca: authority_mod.CertAuthority, usage: tuple[str, ...] = (), when: dt.datetime = now,
             until: dt.datetime = soon, route: ident.RouteToDatabase = NO_ROUTE,
             ssh: bool = True, app: ident.RouteToApp = NO_APP) -> Credential:
        key = pki.generate_key()
        identity = ident.Identity("alice", groups=("access",), usage=usage, principals=("root", "alice"),
                                  route_to_cluster=ca.cluster_name, teleport_cluster=ca.cluster_name,
                                  route_to_database=route, database_users=("alice",), expires=until,
                                  route_to_app=app)
        tls = pki.cert_pem(authority_mod.issue_user_tls(ca, key.public_key(), identity, until, when))
        sshk = _ssh_key(key)
        cert = None
        if ssh:
            line = authority_mod.issue_user_ssh(ca, sshk.export_public_key(), "alice", ("root", "alice"),
                                                ("access",), {"logins": ("root", "alice")}, ca.cluster_name,
                                                until, when)
            cert = asyncssh.import_certificate(line)
        return Credential((tls, pki.key_pem(key)), (sshk, cert) if ssh else None)

    def host(role: str, ttl: dt.timedelta = dt.timedelta(hours=1)) -> Credential:
        key = pki.generate_key()
        host_id = f"matrix-{role.lower()}"
        tls = pki.cert_pem(authority_mod.issue_host_tls(host_ca, key.public_key(), host_id, role, [host_id]))
        sshk = _ssh_key(key)
        line = authority_mod.issue_host_ssh(host_ca, sshk.export_public_key(), host_id, host_id, role, ttl=ttl)
        return Credential((tls, pki.key_pem(key)), (sshk, asyncssh.import_certificate(line)),
                          ident.host_fqdn(host_id, CLUSTER))

    foreign = authority_mod.new_authority(CAType.USER, CLUSTER)
    db_key = pki.generate_key()
    db_cert = pki.cert_pem(authority_mod.issue_db_cert(db_ca, db_key.public_key(), "cache", ["localhost"],
                                                       dt.timedelta(hours=1)))
    self_key = pki.generate_key()
    self_ca = pki.make_ca("alice", self_key, CLUSTER)
    past = now - dt.timedelta(days=2)
    return {
        "user": user(user_ca),
        "user usage:db": user(user_ca, (ident.USAGE_DATABASE_ONLY,),
                              route=ident.RouteToDatabase("cache", "redis", "alice", ""), ssh=False),
        "user usage:apps": user(user_ca, (ident.USAGE_APPS_ONLY,), app=APP_ROUTE, ssh=False),
        "user usage:kube": user(user_ca, (ident.USAGE_KUBE_ONLY,), ssh=False),
        "host Node": host(ident.ROLE_NODE),
        "host Db": host(ident.ROLE_DB),
        "host Kube": host(ident.ROLE_KUBE),
        "host App": host(ident.ROLE_APP),
        "host Proxy": host(ident.ROLE_PROXY),
        "db server cert": Credential((db_cert, pki.key_pem(db_key)), None),
        "expired user": user(user_ca, when=past, until=past + dt.timedelta(hours=1)),
        "other CA": user(foreign),
        "self-signed": Credential((pki.cert_pem(self_ca), pki.key_pem(self_key)), (_ssh_key(self_key), None)),
        "no cert": Credential(None, None),
    }


def client_ctx(cred: Credential, folder: Path, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    if cred.tls is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "c.pem").write_bytes(cred.tls[0])
        (folder / "k.pem").write_bytes(cred.tls[1])
        ctx.load_cert_chain(folder / "c.pem", folder / "k.pem")
    return ctx


async def try_web(cluster: Cluster, cred: Credential, folder: Path) -> bool:
    ctx = client_ctx(cred, folder, ["http/1.1"])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.web.port, ssl=ctx,
                                                       server_hostname="localhost")
        writer.write(f"GET /webapi/sites/{CLUSTER}/nodes HTTP/1.1\r\nHost: localhost\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    except (OSError, ssl.SSLError):
        return False
    return data.startswith(b"HTTP/1.1 200")


async def try_auth(cluster: Cluster, cred: Credential, folder: Path) -> bool:
    assert cluster.auth.addr is not None
    files = None
    if cred.tls is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "a.pem").write_bytes(cred.tls[0])
        (folder / "ak.pem").write_bytes(cred.tls[1])
        files = pki.TLSFiles(folder / "a.pem", folder / "ak.pem", cluster.auth.admin_files.ca)
    client = authclient.AuthClient.with_identity(cluster.auth.addr, CLUSTER, files,
                                                 cluster.auth.admin_files.ca.read_bytes())
    key = pki.generate_key()
    try:
        answer = await client.call("POST", "/v1/users/alice/certs",
                                   {"tls_public_key": authapi.b64(pki.public_key_pem(key))})
    except (authapi.AuthAPIError, OSError, ssl.SSLError):
        return False
    return bool(answer.get("tls"))


async def try_db(cluster: Cluster, cred: Credential, folder: Path) -> bool:
    ctx = client_ctx(cred, folder, ["teleport-redis"])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.web.port, ssl=ctx,
                                                       server_hostname="cache.localhost")
        writer.write(b"q\n")
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
    except (OSError, ssl.SSLError, TimeoutError):
        return False
    return line == b"db:q\n"


async def _line_through(cluster: Cluster, cred: Credential, folder: Path, alpn: list[str], sni: str,
                        expect: bytes) -> bool:
    ctx = client_ctx(cred, folder, alpn)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.web.port, ssl=ctx, server_hostname=sni)
        writer.write(b"q\n")
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
    except (OSError, ssl.SSLError, TimeoutError):
        return False
    return line == expect


async def try_kube(cluster: Cluster, cred: Credential, folder: Path) -> bool:
    # constants.KubeTeleportProxyALPNPrefix: the ALPN router hands this SNI to the kube proxy.
    return await _line_through(cluster, cred, folder, ["http/1.1"], f"kube-teleport-proxy-alpn.{CLUSTER}",
                               b"kube:q\n")


async def try_app(cluster: Cluster, cred: Credential, folder: Path) -> bool:
    return await _line_through(cluster, cred, folder, ["teleport-tcp"], "localhost", b"app:q\n")


async def try_ssh(cluster: Cluster, cred: Credential, folder: Path) -> bool:
    addr = cluster.listener(ListenerKind.SSH)
    keys = [cred.ssh] if cred.ssh is not None else []
    try:
        async with asyncio.timeout(10):
            conn = await asyncssh.connect(addr.host, addr.port, username="root", client_keys=keys,
                                          known_hosts=None, agent_path=None, password_auth=False,
                                          kbdint_auth=False, gss_auth=False, host_based_auth=False)
    except (asyncssh.Error, OSError, TimeoutError):
        return False
    conn.close()
    return True


async def try_tunnel(cluster: Cluster, cred: Credential, folder: Path) -> bool:
    addr = cluster.listener(ListenerKind.TUNNEL)
    name = cred.host_fqdn or f"alice.{CLUSTER}"
    host_keys = [cred.ssh] if cred.ssh is not None else []
    try:
        async with asyncio.timeout(10):
            # lib/reversetunnel/agent.go: ssh.PublicKeys(signer) with the host certificate.
            conn = await asyncssh.connect(addr.host, addr.port, username=name, client_keys=host_keys,
                                          known_hosts=None, agent_path=None, password_auth=False,
                                          kbdint_auth=False, gss_auth=False, host_based_auth=False,
                                          public_key_auth=bool(host_keys))
    except (asyncssh.Error, OSError, TimeoutError):
        return False
    conn.close()
    return True


PROBES: dict[str, Callable[[Cluster, Credential, Path], object]] = {
    "web": try_web, "auth": try_auth, "tunnel": try_tunnel, "db": try_db, "ssh": try_ssh, "kube": try_kube,
    "app": try_app}


async def test_authorization_matrix(tmp_path: Path) -> None:
    assert set(EXPECTED) == set(WHY)
    async with Cluster(tmp_path / "cluster", nodes=(), databases=(), mode="separate") as cluster:
        assert cluster.auth.server is not None
        await cluster.auth.server.upsert_user({"user": {"metadata": {"name": "alice"}, "spec": {
            "roles": ["access"], "traits": {"logins": ["root", "alice"], "db_users": ["alice"]}}},
            "password": "alice-password"}, create_only=True)
        agents = [agent_for(cluster, await join(cluster, role, f"{kind}1"), Echo(kind), name, tls=False, kind=kind)
                  for role, kind, name in (("Db", "db", "cache"), ("Kube", "kube", "k8s"), ("App", "app", "tcpapp"))]
        for agent in agents:
            agent.start()
        try:
            await wait_for(lambda: all(cluster.proxy.tunnels.resources(k) for k in ("db", "kube", "app")))
            creds = mint(cluster)
            got: dict[str, tuple[str, ...]] = {}
            for kind, cred in creds.items():
                row = []
                for endpoint in ENDPOINTS:
                    probe = PROBES[endpoint]
                    ok = await probe(cluster, cred, tmp_path / kind.replace(" ", "_") / endpoint)  # type: ignore[misc]
                    row.append(A if ok else D)
                got[kind] = tuple(row)
        finally:
            for agent in agents:
                await agent.close()
    wrong = [f"{kind} × {ep}: expected {exp}, got {g}  ({WHY[kind]})"
             for kind in EXPECTED for ep, exp, g in zip(ENDPOINTS, EXPECTED[kind], got[kind], strict=True)
             if exp != g]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_every_row_cites_teleport(kind: str) -> None:
    assert "lib/" in WHY[kind] or "x509" in WHY[kind]


@pytest.mark.parametrize("kind", ["other CA", "expired user", "self-signed", "host Node"])
async def test_db_proxy_answers_a_refused_certificate_with_a_tls_alert(tmp_path: Path, kind: str) -> None:
    # Issue 16: the database proxy dropped such clients with a bare reset; Go's crypto/tls (and the
    # Auth API) answer with the alert saying why.
    async with Cluster(tmp_path / "cluster", nodes=(), databases=()) as cluster:
        cred = mint(cluster)[kind]
        ctx = client_ctx(cred, tmp_path / "c", ["teleport-redis"])
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the alert ends the handshake itself
        with pytest.raises(ssl.SSLError, match="alert"):
            reader, _w = await asyncio.open_connection("127.0.0.1", cluster.web.port, ssl=ctx,
                                                           server_hostname="cache.localhost")
            await asyncio.wait_for(reader.read(1), 5)
        ctx13 = client_ctx(cred, tmp_path / "c13", ["teleport-redis"])
        with pytest.raises(ssl.SSLError, match="alert"):  # TLS 1.3: the alert is the first record read
            reader, _w = await asyncio.open_connection("127.0.0.1", cluster.web.port, ssl=ctx13,
                                                           server_hostname="cache.localhost")
            await asyncio.wait_for(reader.read(1), 5)
