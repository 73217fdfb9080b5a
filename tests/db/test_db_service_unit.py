"""The Database Service's own checks: RBAC (``check_access``), identity JSON, configuration errors,
and a refusal for a database this agent does not serve — in the database's protocol."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket

import pytest

from tests.helpers import parked
from tpemu import identity as ident
from tpemu.agent.db_service import ACCESS_DENIED, DatabaseService, check_access
from tpemu.config import Database, DatabaseTLS
from tpemu.wire import postgres as pg
from tpemu.wire.tunnel import DialRequest

PG = Database(name="pg", protocol="postgres")
REDIS = Database(name="cache", protocol="redis")


def who(users: tuple[str, ...] = ("alice",), names: tuple[str, ...] = ("app",), service: str = "") -> ident.Identity:
    return ident.Identity("alice", database_users=users, database_names=names,
                          route_to_database=ident.RouteToDatabase(service, "postgres", "alice", "app"))


@pytest.mark.parametrize("identity,db,user,name,reason", [
    (who(), PG, "alice", "app", None),
    (who(), PG, "bob", "app", "database user 'bob' is not allowed for 'alice'; allowed: alice"),
    (who(), PG, "alice", "other", "database name 'other' is not allowed"),
    (who(users=("*",), names=("*",)), PG, "anyone", "anything", None),
    (who(), REDIS, "alice", "other", None),  # Redis has no database names to check
    (who(users=()), PG, "alice", "app", "allowed: none"),
    (who(service="other"), PG, "alice", "app", "the certificate is for database 'other', not 'pg'"),
    (who(), PG, "", "app", "no database user given"),
])
def test_check_access(identity: ident.Identity, db: Database, user: str, name: str, reason: str | None) -> None:
    got = check_access(identity, db, user, name)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(ACCESS_DENIED) and reason in got


def test_identity_json_round_trip_and_errors() -> None:
    x = ident.Identity("alice", groups=("access",), principals=("root",), traits={"logins": ("root",)},
                       database_users=("alice",), database_names=("app",), teleport_cluster="c",
                       route_to_database=ident.RouteToDatabase("pg", "postgres", "alice", "app"),
                       expires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert ident.Identity.from_json(x.to_json()) == x
    assert ident.Identity.from_json(ident.Identity("bob").to_json()) == ident.Identity("bob")
    for bad, field in (([], "JSON object"), ({"username": 5}, "'username'"), ({"groups": "x"}, "'groups'"),
                       ({"route_to_database": []}, "route_to_database"), ({"traits": {"a": [1]}}, "traits"),
                       ({"expires": "soon"}, "expires")):
        with pytest.raises(ident.IdentityError, match=field):
            ident.Identity.from_json(bad)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"databases\[1\].name: database 'pg' is configured twice"):
        DatabaseService([PG, PG])
    with pytest.raises(ValueError, match=r"databases\[0\].tls.mode: must be one of"):
        DatabaseService([Database(name="x", protocol="postgres", uri="127.0.0.1:1", tls=DatabaseTLS(mode="bogus"))])
    svc = DatabaseService([PG, REDIS, Database(name="real", protocol="mysql", uri="mysql://127.0.0.1:3306")])
    assert [(r.kind, r.name, r.protocol, r.addr) for r in svc.resources()] == [
        ("db", "pg", "postgres", "embedded"), ("db", "cache", "redis", "embedded"), ("db", "real", "mysql",
                                                                                     "mysql://127.0.0.1:3306")]
    # uri: embedded (the default) is a real engine, started on the first connection: nothing runs yet.
    engine = svc.engine("pg")
    assert engine is not None and engine.process is None and svc.backend("pg") is None
    assert svc.backend("real") is None and svc.engine("real") is None
    emulated = DatabaseService([Database(name="pg", protocol="postgres", uri="emulated")])
    assert emulated.backend("pg") is not None and emulated.engine("pg") is None


async def test_unknown_database_and_bad_identity_refused_in_protocol() -> None:
    svc = DatabaseService([PG])
    loop = asyncio.get_running_loop()
    for request, expected in (
            (DialRequest(conn_type="db", name="nosuch", identity=who().to_json()),
             b'database "nosuch" is not served by this agent'),
            (DialRequest(conn_type="db", name="pg", identity={"username": 7}),
             b"invalid identity in the dial request")):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        task = asyncio.ensure_future(svc.serve(await parked(theirs), request))
        await loop.sock_sendall(ours, pg.encode_startup({"user": "alice", "database": "app"}))
        data = b""
        async with asyncio.timeout(5):
            while chunk := await loop.sock_recv(ours, 4096):
                data += chunk
        await task
        ours.close()
        assert data[:1] == b"E" and expected in data, data
