"""Database access fixtures on the public test API: a :class:`tpemu.Cluster` whose Database Service
agent serves the emulated databases through a real reverse tunnel, and alice logged in.

Certificates come from the Auth Service as ``tpemu db login`` gets them (``User.db_login``); the
proxy checks them against the cluster's CA. Only the client side of each test is hand-built.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from tpemu.testkit import Cluster

EMULATED = [{"name": "pg", "protocol": "postgres"}, {"name": "my", "protocol": "mysql"},
            {"name": "mongo", "protocol": "mongodb"}, {"name": "cache", "protocol": "redis"}]


async def db_cluster(tmp: Path, tpemu: dict[str, Any] | None = None, **proxy: Any) -> Cluster:
    """A started cluster (the caller closes it) with the emulated databases and alice
    (database users alice, database names app); ``proxy``: proxy_service keys, ``tpemu``: the
    tpemu-only section."""
    c = Cluster(tmp, nodes=(), databases=EMULATED, proxy=proxy, tpemu=tpemu)
    await c.start()
    try:
        await c.user("alice", db_users=("alice",), db_names=("app",))
    except BaseException:
        await c.close()
        raise
    return c


@pytest.fixture
async def dbc(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await db_cluster(tmp_path)
    try:
        yield c
    finally:
        await c.close()


async def route_cert(c: Cluster, db: str, db_user: str = "alice", db_name: str | None = None) -> tuple[Path, Path]:
    """alice's certificate routed to ``db`` (cert path, key path)."""
    login = await c.users["alice"].db_login(db, db_user, db_name)
    return Path(login.cert_path), Path(login.key_path)


def plain_cert(c: Cluster) -> tuple[Path, Path]:
    """alice's login certificate: no database route (the SNI or the client names the database)."""
    prof = c.users["alice"].profile
    return Path(prof.tls_cert_path), Path(prof.key_path)


def client_ctx(c: Cluster, cert: tuple[Path, Path] | None, alpn: Iterable[str] = ()) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(c.ca))
    if cert is not None:
        ctx.load_cert_chain(cert[0], cert[1])
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx
