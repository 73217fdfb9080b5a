"""Join tokens, users and passwords, on both backends (the Auth Service's logic, no network)."""

from __future__ import annotations

import asyncio
import time

import pytest
from cryptography import x509

from tpemu import authapi
from tpemu.auth import users as users_mod
from tpemu.auth.backend import Backend
from tpemu.auth.server import AuthServer
from tpemu.auth.tokens import parse_static_tokens


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server(backend: Backend) -> AuthServer:
    srv = AuthServer(backend, "tpemu.local", static_tokens=["node,db:static-secret-1"])
    await srv.init()
    return srv


async def test_expired_token_is_refused_with_its_expiry(backend: Backend) -> None:
    clock = Clock()
    srv = AuthServer(backend, "tpemu.local", clock=clock)
    token = await srv.tokens.create(["Node"], ttl=60)
    assert (await srv.tokens.use(token.name, "Node")).name == token.name  # reusable until it expires
    assert (await srv.tokens.use(token.name, "Node")).name == token.name
    clock.now += 61
    with pytest.raises(authapi.AccessDenied) as err:
        await srv.tokens.use(token.name, "Node")
    expected = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.expires or 0))
    assert str(err.value) == f'token "{token.name[:6]}…" expired at {expected}'
    assert token.name not in str(err.value)  # never the whole secret


async def test_single_use_token_is_refused_the_second_time(server: AuthServer) -> None:
    token = await server.tokens.create(["Proxy"], single_use=True)
    used = await server.tokens.use(token.name, "Proxy", who="host-a")
    assert used.used_by == "host-a"
    with pytest.raises(authapi.AccessDenied, match=r'was already used at .* \(single-use\)'):
        await server.tokens.use(token.name, "Proxy")


async def test_concurrent_joins_with_a_single_use_token_have_one_winner(server: AuthServer) -> None:
    token = await server.tokens.create(["Node"], single_use=True)
    results = await asyncio.gather(*(server.tokens.use(token.name, "Node", who=str(i)) for i in range(6)),
                                   return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, authapi.AccessDenied) for r in results if isinstance(r, BaseException))


async def test_token_role_and_existence_are_checked(server: AuthServer) -> None:
    token = await server.tokens.create(["Node", "Db"])
    with pytest.raises(authapi.AccessDenied, match=r"does not allow role Proxy \(it allows Node, Db\)"):
        await server.tokens.use(token.name, "Proxy")
    with pytest.raises(authapi.AccessDenied, match='token "nosuch…" not found'):
        await server.tokens.use("nosuchtokenvalue", "Node")
    with pytest.raises(authapi.AccessDenied, match="missing join token"):
        await server.tokens.use("", "Node")


async def test_static_tokens_from_the_config(server: AuthServer) -> None:
    assert (await server.tokens.use("static-secret-1", "Db")).static
    with pytest.raises(authapi.AccessDenied, match="does not allow role Proxy"):
        await server.tokens.use("static-secret-1", "Proxy")
    with pytest.raises(ValueError, match="expected 'role"):
        parse_static_tokens(["just-a-token"])
    listed = await server.tokens.list()
    assert any(t.static and t.roles == ("Node", "Db") for t in listed)


async def test_tokens_cannot_grant_admin_or_auth(server: AuthServer) -> None:
    with pytest.raises(authapi.BadParameter, match="Admin or Auth"):
        await server.create_token({"roles": ["admin"]})
    with pytest.raises(authapi.BadParameter, match="unknown role"):
        await server.create_token({"roles": ["wizard"]})
    token = await server.create_token({"roles": ["node"], "ttl": 5 * 60 * authapi.NS, "token": "chosen-value-1"})
    assert token.name == "chosen-value-1" and token.expires is not None
    with pytest.raises(authapi.AlreadyExists):
        await server.create_token({"roles": ["node"], "token": "chosen-value-1"})


async def test_users_and_passwords(server: AuthServer) -> None:
    user = users_mod.User("alice", ("access",), {"logins": ("root", "alice"), "db_users": ("alice",)})
    await server.users.create(user, "correct horse")
    stored = (await server.backend.get("/web/users/alice/pwd")).value.decode()
    assert stored.startswith("$scrypt$ln=15,r=8,p=1$") and "correct horse" not in stored
    assert (await server.users.check_password("alice", "correct horse")).trait("logins") == ("root", "alice")
    for name, password in (("alice", "wrong horse"), ("mallory", "correct horse"), ("../etc", "x" * 8)):
        with pytest.raises(authapi.AccessDenied) as err:
            await server.users.check_password(name, password)
        assert str(err.value) == "invalid username or password"  # the same for every failure
    with pytest.raises(authapi.AlreadyExists, match="user 'alice' already exists"):
        await server.users.create(user, "another one")
    with pytest.raises(authapi.BadParameter, match="6 to 128"):
        await server.users.create(users_mod.User("bob"), "short")
    with pytest.raises(authapi.BadParameter, match="invalid user name"):
        await server.users.create(users_mod.User("bad/name"), "long enough")
    assert [u.name for u in await server.users.list()] == ["alice"]
    await server.users.delete("alice")
    with pytest.raises(authapi.NotFound):
        await server.users.get("alice")


def test_password_hashes_verify_and_reject() -> None:
    encoded = users_mod.hash_password("pässwörd", ln=12)
    assert users_mod.verify_password("pässwörd", encoded)
    assert not users_mod.verify_password("password", encoded)
    assert not users_mod.verify_password("pässwörd", encoded.replace("ln=12", "ln=30"))  # cost out of range
    assert not users_mod.verify_password("x", "$bcrypt$whatever")
    assert users_mod.hash_password("same", ln=12) != users_mod.hash_password("same", ln=12)  # salted


async def test_login_issues_certificates_and_refuses_bad_passwords(server: AuthServer) -> None:
    import asyncssh

    from tpemu import identity as ident
    from tpemu import pki

    await server.users.create(users_mod.User("carol", ("access",), {"logins": ("ubuntu",)}), "carol-pass")
    key = pki.generate_key()
    ssh_pub = asyncssh.import_private_key(pki.key_pem(key)).export_public_key()
    body = {"user": "carol", "password": "carol-pass", "ssh_pub_key": authapi.b64(ssh_pub),
            "tls_pub_key": authapi.b64(pki.public_key_pem(key)), "ttl": 3600 * authapi.NS}
    answer = await server.authenticate_ssh_user(body, "127.0.0.1:1")
    identity = ident.from_certificate(x509.load_pem_x509_certificate(authapi.unb64(answer["tls_cert"], "tls_cert")))
    assert identity.username == "carol" and identity.logins == ("ubuntu",)
    assert identity.expires is not None and 3500 < identity.expires.timestamp() - time.time() <= 3600
    assert answer["host_signers"][0]["domain_name"] == "tpemu.local"
    with pytest.raises(authapi.AccessDenied, match="invalid username or password"):
        await server.authenticate_ssh_user({**body, "password": "nope"})
    with pytest.raises(authapi.BadParameter, match="must be set"):
        await server.authenticate_ssh_user({"user": "carol", "password": "carol-pass"})
