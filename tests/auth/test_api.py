"""The Auth API over real mutual TLS on a loopback port: joins, logins, refusals, restarts.

Every case runs against SQLite and against a real PostgreSQL server. Each refusal is checked
three ways: the client's exception and message, the Auth Service's log line, and a successful
request right after (the service keeps serving).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography import x509

from tpemu import authapi, authclient, config, pki
from tpemu import identity as ident
from tpemu.auth import authority as authority_mod
from tpemu.auth.authority import CAType
from tpemu.auth.service import AuthService

CLUSTER = "tpemu.local"


def auth_config(storage: dict[str, str], data_dir: Path) -> config.Config:
    return config.from_dict({"teleport": {"data_dir": str(data_dir), "storage": storage},
                             "auth_service": {"listen_addr": "127.0.0.1:0", "cluster_name": CLUSTER}})


@pytest.fixture
async def auth(storage: dict[str, str], tmp_path: Path) -> AsyncIterator[AuthService]:
    svc = AuthService(auth_config(storage, tmp_path / "data"))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


def admin(svc: AuthService) -> authclient.AuthClient:
    assert svc.addr is not None
    return authclient.AuthClient.with_identity(svc.addr, CLUSTER, svc.admin_files)


async def join_as(svc: AuthService, role: str, folder: Path, host_id: str = "host-1") -> pki.TLSFiles:
    token = await admin(svc).call("POST", "/v1/tokens", {"roles": [role]})
    assert svc.addr is not None
    identity = await authclient.join(svc.addr, token["metadata"]["name"], role, host_id, host_id,
                                     ca_pins=[svc.ca_pin])
    return identity.save(folder)


def client(svc: AuthService, files: pki.TLSFiles | None) -> authclient.AuthClient:
    assert svc.addr is not None
    ca = (svc.admin_files.ca).read_bytes()
    return authclient.AuthClient.with_identity(svc.addr, CLUSTER, files, ca)


async def add_user(svc: AuthService, name: str = "alice", password: str = "alice-password") -> None:
    await admin(svc).call("POST", "/v1/users", {"user": {"metadata": {"name": name}, "spec": {
        "roles": ["access"], "traits": {"logins": ["root", name], "db_users": [name], "db_names": ["app"]}}},
        "password": password})


def login_body(key: pki.PrivateKey, user: str = "alice", password: str = "alice-password") -> dict[str, Any]:
    ssh_pub = asyncssh.import_private_key(pki.key_pem(key)).export_public_key()
    return {"user": user, "password": password, "ssh_pub_key": authapi.b64(ssh_pub),
            "tls_pub_key": authapi.b64(pki.public_key_pem(key))}


async def still_serving(svc: AuthService) -> None:
    assert (await admin(svc).call("GET", "/v1/ping"))["caller"]["kind"] == "Admin"


async def test_join_heartbeat_and_list(auth: AuthService, tmp_path: Path) -> None:
    node = await join_as(auth, "Node", tmp_path / "node", "node-1")
    cert = x509.load_pem_x509_certificate(node.cert.read_bytes())
    assert ident.from_certificate(cert).groups == ("Node",)
    host_ca = x509.load_pem_x509_certificate(node.ca.read_bytes())
    assert pki.ca_pin(host_ca) == auth.ca_pin
    assert (tmp_path / "node" / "host-cert.pub").read_bytes().startswith(b"ecdsa-sha2-nistp256-cert-v01@openssh.com ")
    c = client(auth, node)
    stored = await c.call("POST", "/v1/nodes", {"metadata": {"name": "node-1"}, "spec": {"hostname": "node1"},
                                                "ttl": 60 * authapi.NS})
    assert stored["kind"] == "node" and stored["metadata"]["expires"]
    with pytest.raises(authapi.AccessDenied, match="can only announce itself"):
        await c.call("POST", "/v1/nodes", {"metadata": {"name": "node-2"}})
    with pytest.raises(authapi.AccessDenied, match=r"cannot announce db_servers \(needs role Db\)"):
        await c.call("POST", "/v1/db_servers", {"metadata": {"name": "pg"}, "spec": {"host_id": "node-1"}})
    assert [n["metadata"]["name"] for n in (await c.call("GET", "/v1/nodes"))["items"]] == ["node-1"]
    with pytest.raises(authapi.AccessDenied, match="needs a client certificate issued by the cluster"):
        await client(auth, None).call("GET", "/v1/nodes")
    auth_servers = (await c.call("GET", "/v1/auth_servers"))["items"]
    assert auth_servers[0]["metadata"]["name"] == auth.host_id


async def test_each_refusal_is_specific_and_the_service_keeps_serving(
        auth: AuthService, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert auth.addr is not None and auth.server is not None
    proxy = client(auth, await join_as(auth, "Proxy", tmp_path / "proxy"))
    await add_user(auth)

    # Wrong password.
    with pytest.raises(authapi.AccessDenied, match=r"^invalid username or password$"):
        await proxy.call("POST", "/v1/users/alice/ssh/authenticate", login_body(pki.generate_key(), password="x" * 9))
    assert "login refused: user 'alice'" in caplog.text
    await still_serving(auth)

    # Expired token.
    token = (await admin(auth).call("POST", "/v1/tokens", {"roles": ["node"], "ttl": authapi.NS}))["metadata"]["name"]
    await asyncio.sleep(1.1)
    with pytest.raises(authapi.AccessDenied, match=rf'^token "{token[:6]}…" expired at \d{{4}}-'):
        await authclient.join(auth.addr, token, "Node", "late-host", "late", ca_pins=[auth.ca_pin])
    assert 'join refused: host late-host (late) as Node from 127.0.0.1' in caplog.text
    await still_serving(auth)

    # A single-use token, used twice.
    token = (await admin(auth).call("POST", "/v1/tokens", {"roles": ["db"], "single_use": True}))["metadata"]["name"]
    await authclient.join(auth.addr, token, "Db", "db-1", "db1", ca_pins=[auth.ca_pin])
    with pytest.raises(authapi.AccessDenied, match=r"was already used at .* \(single-use\)$"):
        await authclient.join(auth.addr, token, "Db", "db-2", "db2", ca_pins=[auth.ca_pin])
    await still_serving(auth)

    # A certificate from another CA: refused in the TLS handshake, with the alert the client sees.
    evil_key = pki.generate_key()
    evil_ca = pki.make_ca(CLUSTER, evil_key, CLUSTER)  # same names as ours, different key
    key = pki.generate_key()
    subject = ident.Identity("mallory", groups=("Admin",), teleport_cluster=CLUSTER).subject()
    (tmp_path / "evil.crt").write_bytes(pki.cert_pem(pki.issue_cert(evil_ca, evil_key, key.public_key(), subject)))
    (tmp_path / "evil.key").write_bytes(pki.key_pem(key))
    evil = pki.TLSFiles(tmp_path / "evil.crt", tmp_path / "evil.key", auth.admin_files.ca)
    with pytest.raises(authclient.ClientCertRefused, match=r"refused our certificate: certificate signed by unknown "
                                                           r"authority$"):
        await client(auth, evil).call("GET", "/v1/tokens")
    assert "client certificate refused: certificate signed by unknown authority" in caplog.text
    await still_serving(auth)

    # An expired certificate from the right CA.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    old = authority_mod.issue_user_tls(auth.server.ca(CAType.USER), key.public_key(),
                                       ident.Identity("alice", groups=("access",)),
                                       not_after=past + dt.timedelta(hours=1), now=past)
    (tmp_path / "old.crt").write_bytes(pki.cert_pem(old))
    expired = pki.TLSFiles(tmp_path / "old.crt", tmp_path / "evil.key", auth.admin_files.ca)
    with pytest.raises(authclient.ClientCertRefused, match=r"refused our certificate: certificate expired$"):
        await client(auth, expired).call("GET", "/v1/ping")
    assert "client certificate refused: certificate expired" in caplog.text
    await still_serving(auth)
    assert auth.api is not None and auth.api.refused_handshakes == 2


async def test_who_may_call_what(auth: AuthService, tmp_path: Path) -> None:
    node = client(auth, await join_as(auth, "Node", tmp_path / "node"))
    with pytest.raises(authapi.AccessDenied, match=r"Node:host-1\.tpemu\.local may not make this call \(allowed: "
                                                   r"Admin, Proxy\)"):
        await node.call("POST", "/v1/users/alice/ssh/authenticate", {})
    with pytest.raises(authapi.AccessDenied, match="allowed: Admin"):
        await node.call("GET", "/v1/users")
    nobody = client(auth, None)
    assert (await nobody.call("GET", "/v1/authorities/user"))["tls_certs"][0].startswith("-----BEGIN CERTIFICATE")
    with pytest.raises(authapi.NotFound, match="no 'jwt' authority"):
        await nobody.call("GET", "/v1/authorities/jwt")
    with pytest.raises(authapi.AuthAPIError, match="method GET not allowed"):
        await nobody.call("GET", "/v1/tokens/register")
    with pytest.raises(authapi.NotFound, match="/v1/whatever not found"):
        await nobody.call("GET", "/v1/whatever")
    with pytest.raises(authapi.BadParameter, match="request body must be a JSON object"):
        await nobody.call("POST", "/v1/tokens/register", None)


async def test_a_user_reissues_certificates_only_for_itself(auth: AuthService, tmp_path: Path) -> None:
    proxy = client(auth, await join_as(auth, "Proxy", tmp_path / "proxy"))
    await add_user(auth)
    await add_user(auth, "bob", "bob-password")
    key = pki.generate_key()
    answer = await proxy.call("POST", "/v1/users/alice/ssh/authenticate", login_body(key))
    (tmp_path / "alice.crt").write_bytes(authapi.unb64(answer["tls_cert"], "tls_cert"))
    (tmp_path / "alice.key").write_bytes(pki.key_pem(key))
    alice = client(auth, pki.TLSFiles(tmp_path / "alice.crt", tmp_path / "alice.key", auth.admin_files.ca))
    route = {"service_name": "pg", "protocol": "postgres", "username": "alice", "database": "app"}
    db = await alice.call("POST", "/v1/users/alice/certs", {"tls_public_key": authapi.b64(pki.public_key_pem(key)),
                                                           "route_to_database": route})
    identity = ident.from_certificate(x509.load_pem_x509_certificate(authapi.unb64(db["tls"], "tls")))
    assert identity.route_to_database == ident.RouteToDatabase("pg", "postgres", "alice", "app")
    assert identity.usage == (ident.USAGE_DATABASE_ONLY,)
    login_cert = x509.load_pem_x509_certificate((tmp_path / "alice.crt").read_bytes())
    assert identity.expires is not None and identity.expires <= login_cert.not_valid_after_utc
    with pytest.raises(authapi.AccessDenied, match="user 'alice' cannot get certificates for 'bob'"):
        await alice.call("POST", "/v1/users/bob/certs", {"tls_public_key": authapi.b64(pki.public_key_pem(key))})


async def test_restart_keeps_authorities_users_and_tokens(storage: dict[str, str], tmp_path: Path) -> None:
    cfg = auth_config(storage, tmp_path / "data")
    first = AuthService(cfg)
    await first.start()
    try:
        pin = first.ca_pin
        await add_user(first)
        token = (await admin(first).call("POST", "/v1/tokens", {"roles": ["proxy"]}))["metadata"]["name"]
    finally:
        await first.close()
    second = AuthService(cfg)
    await second.start()
    try:
        assert second.ca_pin == pin
        assert second.addr is not None
        proxy_id = await authclient.join(second.addr, token, "Proxy", "p1", "p1", ca_pins=[pin])
        files = proxy_id.save(tmp_path / "proxy")
        answer = await client(second, files).call("POST", "/v1/users/alice/ssh/authenticate",
                                                  login_body(pki.generate_key()))
        assert answer["username"] == "alice"
        assert [u["metadata"]["name"] for u in (await admin(second).call("GET", "/v1/users"))["items"]] == ["alice"]
    finally:
        await second.close()


async def test_join_checks_the_ca_pin(auth: AuthService) -> None:
    token = (await admin(auth).call("POST", "/v1/tokens", {"roles": ["node"]}))["metadata"]["name"]
    assert auth.addr is not None
    with pytest.raises(authapi.AccessDenied, match="matches none of the CA pins"):
        await authclient.join(auth.addr, token, "Node", "n", "n", ca_pins=["sha256:" + "00" * 32])


async def test_garbage_and_plain_http_do_not_hurt(auth: AuthService) -> None:
    assert auth.addr is not None
    reader, writer = await asyncio.open_connection(auth.addr.host, auth.addr.port)
    writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        try:
            answer = await reader.read()
        except ConnectionResetError:
            answer = b""
    writer.close()
    # Teleport's Auth listener is a TLS-only multiplexer: plain HTTP is closed without a byte
    # (lib/service/service.go initAuthService, lib/multiplexer/multiplexer.go detectAndForward).
    assert answer == b""
    reader, writer = await asyncio.open_connection(auth.addr.host, auth.addr.port)
    writer.write(bytes(range(256)) * 4)
    async with asyncio.timeout(5):
        await reader.read()
    writer.close()
    await still_serving(auth)


async def test_database_agent_heartbeat_and_database_certificate(auth: AuthService, tmp_path: Path) -> None:
    db = client(auth, await join_as(auth, "Db", tmp_path / "db", "db-host"))
    server = {"kind": "db_server", "version": "v3", "metadata": {"name": "pg"},
              "spec": {"host_id": "db-host", "hostname": "db1",
                       "database": {"metadata": {"name": "pg"}, "spec": {"protocol": "postgres",
                                                                          "uri": "127.0.0.1:5432"}}}}
    await db.call("POST", "/v1/db_servers", {**server, "ttl": 60 * authapi.NS})
    items = (await db.call("GET", "/v1/db_servers"))["items"]
    assert [(i["metadata"]["name"], i["spec"]["host_id"]) for i in items] == [("pg", "db-host")]
    with pytest.raises(authapi.AccessDenied, match="can only announce itself"):
        await db.call("POST", "/v1/db_servers", {**server, "spec": {**server["spec"], "host_id": "other"}})
    key = pki.generate_key()
    answer = await db.call("POST", "/v1/db/certs", {"public_key": authapi.b64(pki.public_key_pem(key)),
                                                     "server_names": ["db.internal", "127.0.0.1"],
                                                     "ttl": 3600 * authapi.NS})
    cert = x509.load_pem_x509_certificate(authapi.unb64(answer["cert"], "cert"))
    db_ca = x509.load_pem_x509_certificate(authapi.unb64(answer["cacerts"][0], "cacerts"))
    assert pki.verify_issued_by(cert, [db_ca]) == db_ca and pki.san_strings(cert) == ["db.internal", "127.0.0.1"]
    await admin(auth).call("DELETE", "/v1/db_servers/pg")
    assert (await db.call("GET", "/v1/db_servers"))["items"] == []


def count_connections(svc: AuthService, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The peers of the TLS connections the Auth API accepts from now on, one entry each."""
    assert svc.api is not None
    peers: list[str] = []
    serve = svc.api._serve

    async def counted(sock: Any, peer: str) -> None:
        peers.append(peer)
        await serve(sock, peer)

    monkeypatch.setattr(svc.api, "_serve", counted)
    return peers


async def test_one_kept_connection_serves_a_client_and_each_request_is_still_authorised(
        auth: AuthService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 13: a new TLS connection (a full mutual-TLS handshake) per call; now the client keeps
    # one alive. The server still decides every request for the certificate the connection
    # presented: a node's may announce itself, not another node, and may not list users.
    node = client(auth, await join_as(auth, "Node", tmp_path / "node", "node-1"))
    peers = count_connections(auth, monkeypatch)
    for _ in range(3):
        await node.call("POST", "/v1/nodes", {"metadata": {"name": "node-1"}, "spec": {"hostname": "node1"}})
        with pytest.raises(authapi.AccessDenied, match="can only announce itself"):
            await node.call("POST", "/v1/nodes", {"metadata": {"name": "node-2"}})
        with pytest.raises(authapi.AccessDenied, match="allowed: Admin"):
            await node.call("GET", "/v1/users")
        assert [n["metadata"]["name"] for n in (await node.call("GET", "/v1/nodes"))["items"]] == ["node-1"]
    assert len(peers) == 1
    # Another certificate is another client, with its own connection and its own rights.
    assert (await client(auth, None).call("GET", "/v1/ping"))["caller"]["kind"] != "Node"
    assert len(peers) == 2
    # The kept connection is given up after KEEP_AGE: the certificates are verified again by a new
    # handshake (at least once a minute in use).
    monkeypatch.setattr(authclient, "KEEP_AGE", 0.0)
    for _ in range(2):
        await node.call("GET", "/v1/nodes")
    assert len(peers) == 4
    node.close()


async def test_a_kept_connection_the_server_closed_is_replaced(tmp_path: Path) -> None:
    # A kept connection the server closes without answering the next request (a restart, an idle
    # timeout racing the request): a GET is sent again on a new connection; a POST is not (it may
    # have been carried out) and fails as on a new connection.
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("auth.test").configure_cert(server_ctx)
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the next request on the kept connection: dropped
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.transport.abort()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    try:
        port = srv.sockets[0].getsockname()[1]
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        c = authclient.AuthClient(config.Addr("127.0.0.1", port), ctx, "auth.test")
        assert await c.call("GET", "/v1/ping") == {}
        assert await c.call("GET", "/v1/ping") == {}  # the kept one was dropped: again, on a new one
        assert connections == 2
        with pytest.raises(authapi.Unavailable, match="closed before answering"):
            await c.call("POST", "/v1/proxies", {})
        assert connections == 2
        c.close()
    finally:
        srv.close()
        await srv.wait_closed()
