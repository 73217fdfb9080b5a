"""``tpemu db ls|login|connect|env|config`` and ``tpemu proxy db --tunnel``: the client side of
database access (glue).

What ``tsh db`` does (``tool/tsh/common/db.go``, ``lib/client/db``), through the proxy only:

* ``ls`` — the database servers the cluster knows (``GET /v1/db_servers`` on the Auth API, reached
  through the proxy with ALPN ``teleport-auth@`` and the user's certificate);
* ``login NAME [--db-user U --db-name D]`` — a certificate for the same key whose identity routes to
  the database (``RouteToDatabase``; ``POST /v1/users/<user>/certs`` with ``route_to_database``),
  saved as tsh does: ``keys/<profile>/<user>-db/<cluster>/<NAME>-x509.pem`` (plus ``<NAME>.json``
  with the protocol, user and database);
* ``proxy db --tunnel NAME [--port P]`` — a plain TCP listener on 127.0.0.1 for clients that cannot
  send ALPN or a client certificate (psql to a TLS-routed port, mariadb, mongosh, redis-cli): every
  connection becomes TLS to the proxy with ALPN ``teleport-<protocol>`` and the database
  certificate (:func:`run_tunnel`);
* ``connect NAME`` — starts such a tunnel on a free port and runs the protocol's CLI client on it;
* ``env``/``config`` — connection settings: psql can connect straight to the proxy's port with its
  certificate (SSLRequest, then TLS), every client through the tunnel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import ssl
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tpemu import authapi, authclient, pki
from tpemu.client import profile as profile_mod
from tpemu.config import Addr
from tpemu.errors import PeerFault
from tpemu.net import conn_upgrade
from tpemu.net.pipe import Pipe, park_streams
from tpemu.wire import alpn

log = logging.getLogger(__name__)

#: The ALPN a tunnel offers per protocol (Teleport's names).
TUNNEL_ALPN = {"postgres": alpn.POSTGRES, "mysql": alpn.MYSQL, "mongodb": alpn.MONGODB, "redis": alpn.REDIS}
#: The CLI client per protocol, in order of preference.
CLIENTS = {"postgres": ("psql",), "mysql": ("mariadb", "mysql"), "mongodb": ("mongosh", "mongo"),
           "redis": ("redis-cli",)}
#: Where the CLI clients come from (Debian packages; mongosh is on npm only).
CLIENT_INSTALL = {"postgres": "apt-get install postgresql-client", "mysql": "apt-get install mariadb-client",
                  "mongodb": "npm install -g mongosh", "redis": "apt-get install redis-tools"}


class DBError(PeerFault):
    """A database command failed; the message is for the user."""


@dataclass(frozen=True)
class DatabaseInfo:
    """One database the cluster serves (from its ``db_server`` resources)."""

    name: str
    protocol: str
    uri: str
    description: str
    labels: dict[str, str]
    hosts: tuple[str, ...]
    #: The most recent heartbeat of the agents serving it (RFC 3339), from the Auth Service.
    last_heartbeat: str = ""
    #: Whether the proxy has a live tunnel from an agent serving it (``None``: not known).
    connected: bool | None = None


@dataclass(frozen=True)
class DBLogin:
    """A database certificate saved by ``tpemu db login``."""

    name: str
    protocol: str
    db_user: str
    db_name: str
    cert_path: str
    key_path: str
    ca_path: str
    proxy: str

    @property
    def proxy_addr(self) -> Addr:
        return Addr.parse(self.proxy, default_port=3080)


def _db_dir(prof: profile_mod.Profile) -> Path:
    return prof.key_dir / f"{prof.username}-db" / prof.cluster


def current_profile(home: Path) -> profile_mod.Profile:
    prof = profile_mod.current(home)
    if prof is None:
        raise DBError("not logged in: run 'tpemu login --proxy HOST:PORT --user NAME' first")
    return prof


def auth_client(prof: profile_mod.Profile) -> authclient.AuthClient:
    """The Auth API through the proxy (ALPN ``teleport-auth@``) with the user's certificate."""
    return authclient.AuthClient.with_identity(Addr.parse(prof.web_proxy_addr, default_port=3080), prof.cluster,
                                               prof.tls_files(), via_proxy=True)


async def list_databases(prof: profile_mod.Profile) -> list[DatabaseInfo]:
    """The databases of the cluster, by name; raises :class:`DBError`."""
    try:
        data = await auth_client(prof).call("GET", "/v1/db_servers")
    except authapi.AuthAPIError as exc:
        raise DBError(f"cannot list databases: {exc.message}") from None
    # The proxy knows at once when an agent's tunnel is gone, where the Auth Service's inventory
    # lags by the announce TTL (issue 16): ask it which (host, database) pairs are live. Best
    # effort: behind an L7 load balancer the client certificate does not reach the proxy's web API.
    from tpemu.client.ssh import SSHError, web_get

    live: set[tuple[str, str]] | None = None
    try:
        marked = await web_get(prof, f"/webapi/sites/{prof.cluster}/databases", client_cert=True)
        live = {(str(((i.get("spec") or {}).get("host_id")) or ""),
                 str((((i.get("spec") or {}).get("database") or {}).get("metadata") or {}).get("name") or ""))
                for i in marked.get("items", []) if (i.get("status") or {}).get("connected")}
    except (SSHError, AttributeError, TypeError):
        pass
    found: dict[str, DatabaseInfo] = {}
    for item in data.get("items", []) if isinstance(data, dict) else []:
        spec = item.get("spec") or {}
        db = spec.get("database") or {}
        meta = db.get("metadata") or item.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not name:
            continue
        dspec = db.get("spec") or {}
        host = str(spec.get("hostname") or spec.get("host_id") or "")
        old = found.get(name)
        hosts = (*(old.hosts if old else ()), host) if host else (old.hosts if old else ())
        status = item.get("status")
        status = status if isinstance(status, dict) else {}
        beat = max(str(status.get("last_heartbeat") or ""), old.last_heartbeat if old else "")
        connected = None if live is None else (str(spec.get("host_id") or ""), name) in live
        if old is not None and old.connected is not None:
            connected = bool(old.connected or connected)
        found[name] = DatabaseInfo(name, str(dspec.get("protocol", "")), str(dspec.get("uri", "")),
                                   str(meta.get("description", "")), dict(meta.get("labels") or {}), hosts, beat,
                                   connected)
    return [found[k] for k in sorted(found)]


def logins(prof: profile_mod.Profile) -> dict[str, DBLogin]:
    """The database logins saved in the profile, by database name."""
    out = {}
    folder = _db_dir(prof)
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            data = json.loads(path.read_text())
            out[data["name"]] = DBLogin(**data)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def find_login(prof: profile_mod.Profile, name: str | None) -> DBLogin:
    """The saved login for ``name``, or the only one there is; raises :class:`DBError`."""
    saved = logins(prof)
    if name:
        if name not in saved:
            raise DBError(f"not logged in to database {name!r}: run 'tpemu db login {name}'")
        return saved[name]
    if len(saved) == 1:
        return next(iter(saved.values()))
    if not saved:
        raise DBError("not logged in to any database: run 'tpemu db login NAME'")
    raise DBError(f"logged in to several databases ({', '.join(sorted(saved))}): name one")


async def db_login(prof: profile_mod.Profile, name: str, db_user: str | None, db_name: str | None) -> DBLogin:
    """Get and save a certificate routed to database ``name``; raises :class:`DBError`."""
    databases = {d.name: d for d in await list_databases(prof)}
    info = databases.get(name)
    if info is None:
        known = ", ".join(sorted(databases)) or "none"
        raise DBError(f"database {name!r} not found (databases: {known})")
    identity = prof.identity()
    if not db_user:
        users = [u for u in identity.database_users if u != "*"]
        if len(users) != 1:
            raise DBError(f"--db-user is required: your allowed database users are {', '.join(users) or 'none'}")
        db_user = users[0]
    if not db_name and info.protocol in ("postgres", "mongodb"):
        names = [n for n in identity.database_names if n != "*"]
        if len(names) == 1:
            db_name = names[0]
        elif info.protocol == "mongodb":
            raise DBError(f"--db-name is required for MongoDB: your allowed names are {', '.join(names) or 'none'}")
    key = pki.load_key(prof.key_path.read_bytes())
    body = {"tls_public_key": authapi.b64(pki.public_key_pem(key)), "usage": "database",
            "route_to_database": {"service_name": name, "protocol": info.protocol, "username": db_user,
                                  "database": db_name or ""}}
    try:
        answer = await auth_client(prof).call("POST", f"/v1/users/{quote(prof.username, safe='')}/certs", body)
    except authapi.AuthAPIError as exc:
        raise DBError(f"cannot get a certificate for database {name!r}: {exc.message}") from None
    cert = authapi.unb64(answer.get("tls") if isinstance(answer, dict) else None, "tls")
    folder = _db_dir(prof)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path = folder / f"{name}-x509.pem"
    pki.write_public(cert_path, cert)
    saved = DBLogin(name, info.protocol, db_user, db_name or "", str(cert_path), str(prof.key_path),
                    str(prof.ca_path), prof.web_proxy_addr)
    pki.write_public(folder / f"{name}.json", json.dumps(asdict(saved), indent=2).encode() + b"\n")
    return saved


def db_logout(prof: profile_mod.Profile, name: str | None) -> list[str]:
    """Remove the saved database certificate(s); returns the names removed."""
    removed = []
    for login in logins(prof).values():
        if name in (None, login.name):
            Path(login.cert_path).unlink(missing_ok=True)
            (_db_dir(prof) / f"{login.name}.json").unlink(missing_ok=True)
            removed.append(login.name)
    return removed


# -- the local tunnel ---------------------------------------------------------------------------------


def tunnel_context(login: DBLogin) -> ssl.SSLContext:
    """TLS toward the proxy: its CA, the database certificate, the protocol's ALPN."""
    ctx = ssl.create_default_context(cafile=login.ca_path)
    ctx.load_cert_chain(login.cert_path, login.key_path)
    ctx.set_alpn_protocols([TUNNEL_ALPN[login.protocol]])
    return ctx


async def run_tunnel(login: DBLogin, listen: Addr, ready: Callable[[Addr], None] | None = None,
                     stop: asyncio.Event | None = None) -> None:
    """Serve ``listen`` (plain TCP) until ``stop`` is set, wrapping each connection in TLS to the proxy."""
    ctx = tunnel_context(login)
    proxy = login.proxy_addr
    active: set[asyncio.Task[Any]] = set()
    pipes: set[Pipe] = set()
    outer = conn_upgrade.outer_context(login.ca_path)

    async def upgrade_needed() -> bool:
        # tsh's test dial, once per address (cached by conn_upgrade).
        return await conn_upgrade.upgrade_required(proxy.host.strip("[]"), proxy.port, outer)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            active.add(task)
            task.add_done_callback(active.discard)
        try:
            await serve_one(reader, writer)
        except asyncio.CancelledError:
            writer.close()  # the tunnel is shutting down (the client program has exited)

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(15):
                if await upgrade_needed():
                    # Behind a layer-7 load balancer: TLS with the database ALPN inside the upgrade.
                    up_r, up_w = await conn_upgrade.open_stream_upgraded(
                        proxy.host, proxy.port, outer=outer, inner=ctx, server_hostname=proxy.host.strip("[]"))
                else:
                    up_r, up_w = await asyncio.open_connection(proxy.host, proxy.port, ssl=ctx,
                                                               server_hostname=proxy.host.strip("[]"))
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("tunnel: cannot reach the proxy at %s for %s: %s", proxy, peer, exc)
            writer.close()
            return
        log.debug("tunnel: %s → %s (database %s)", peer, proxy, login.name)
        # From here one Pipe copies both ways; this handler (and its task) ends.
        pipe = Pipe.join(park_streams(reader, writer), park_streams(up_r, up_w),
                         on_close=lambda p, exc: pipes.discard(p))
        if not pipe.closed:
            pipes.add(pipe)

    server = await asyncio.start_server(on_client, listen.host, listen.port)
    sock = server.sockets[0]
    host, port = sock.getsockname()[:2]
    if ready is not None:
        ready(Addr(host, port))
    try:
        async with server:
            if stop is None:
                await asyncio.Event().wait()
            else:
                await stop.wait()
    finally:
        server.close()
        # End the connections still open here, so no task is cancelled later by the loop's
        # shutdown (which would log it as an error).
        for task in list(active):
            task.cancel()
        await asyncio.gather(*active, return_exceptions=True)
        for pipe in list(pipes):
            pipe.close()


# -- client commands and settings ---------------------------------------------------------------------


def client_binary(protocol: str) -> str:
    for name in CLIENTS[protocol]:
        path = shutil.which(name)
        if path:
            return path
    raise DBError(f"no {' or '.join(CLIENTS[protocol])} found in PATH (install it: {CLIENT_INSTALL[protocol]}; "
                  "or run 'tpemu proxy db --tunnel NAME' and point any client at the port it prints)")


def tunnel_command(login: DBLogin, port: int, binary: str | None = None) -> list[str]:
    """The CLI client's command line for a tunnel on 127.0.0.1:``port``."""
    exe = binary or CLIENTS[login.protocol][0]
    if login.protocol == "postgres":
        return [exe, f"host=127.0.0.1 port={port} user={login.db_user} dbname={login.db_name or login.db_user} "
                     "sslmode=disable"]
    if login.protocol == "mysql":
        cmd = [exe, "--no-defaults", "--skip-ssl", "-h", "127.0.0.1", "-P", str(port), "-u", login.db_user]
        return [*cmd, "-D", login.db_name] if login.db_name else cmd
    if login.protocol == "mongodb":
        return [exe, f"mongodb://127.0.0.1:{port}/{login.db_name}?directConnection=true"]
    return [exe, "-h", "127.0.0.1", "-p", str(port)]


def direct_postgres(login: DBLogin) -> dict[str, str]:
    """libpq settings for psql straight to the proxy (SSLRequest on the web port, then TLS)."""
    proxy = login.proxy_addr
    return {"host": proxy.host, "port": str(proxy.port), "user": login.db_user,
            "dbname": login.db_name or login.db_user, "sslmode": "verify-full", "sslrootcert": login.ca_path,
            "sslcert": login.cert_path, "sslkey": login.key_path}


def env_lines(login: DBLogin) -> list[str]:
    """``tpemu db env``: libpq environment variables (Postgres)."""
    if login.protocol != "postgres":
        raise DBError(f"tpemu db env supports Postgres databases; {login.name} is {login.protocol}: "
                      f"use 'tpemu db config {login.name}' or 'tpemu proxy db --tunnel {login.name}'")
    d = direct_postgres(login)
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE", "sslmode": "PGSSLMODE",
             "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY"}
    return [f"export {names[k]}={v}" for k, v in d.items()]


def config_data(login: DBLogin) -> dict[str, Any]:
    """``tpemu db config``: where and how to connect, for every client of the protocol."""
    proxy = login.proxy_addr
    data: dict[str, Any] = {"name": login.name, "protocol": login.protocol, "host": proxy.host, "port": proxy.port,
                            "ca": login.ca_path, "cert": login.cert_path, "key": login.key_path,
                            "user": login.db_user, "database": login.db_name, "alpn": TUNNEL_ALPN[login.protocol]}
    tunnel = f"tpemu proxy db --tunnel {login.name} --port PORT"
    cmds: dict[str, str] = {}
    if login.protocol == "postgres":
        cmds["psql"] = "psql \"" + " ".join(f"{k}={v}" for k, v in direct_postgres(login).items()) + "\""
        cmds["psql (tunnel)"] = _shell(tunnel_command(login, 0, "psql")).replace("port=0", "port=PORT")
    elif login.protocol == "mysql":
        cmds["mariadb (tunnel)"] = _shell(tunnel_command(login, 0, "mariadb")).replace("-P 0", "-P PORT")
    elif login.protocol == "mongodb":
        cmds["mongosh (tunnel)"] = _shell(tunnel_command(login, 0, "mongosh")).replace(":0/", ":PORT/")
    else:
        cmds["redis-cli (tunnel)"] = _shell(tunnel_command(login, 0, "redis-cli")).replace("-p 0", "-p PORT")
    data["commands"] = cmds
    data["tunnel"] = tunnel
    return data


def config_lines(login: DBLogin) -> list[str]:
    data = config_data(login)
    lines = [f"Name:      {data['name']}", f"Protocol:  {data['protocol']}", f"Host:      {data['host']}",
             f"Port:      {data['port']}", f"User:      {data['user']}", f"Database:  {data['database'] or '-'}",
             f"CA:        {data['ca']}", f"Cert:      {data['cert']}", f"Key:       {data['key']}",
             f"ALPN:      {data['alpn']}", "", f"Local tunnel (plain TCP on 127.0.0.1): {data['tunnel']}", ""]
    lines += [f"{k}:\n  {v}" for k, v in data["commands"].items()]
    return lines


def _shell(argv: Sequence[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


async def connect(login: DBLogin, extra: Sequence[str]) -> int:
    """Run the protocol's CLI client through a tunnel on a free port; returns its exit code."""
    binary = client_binary(login.protocol)
    stop = asyncio.Event()
    bound: list[Addr] = []
    task = asyncio.ensure_future(run_tunnel(login, Addr("127.0.0.1", 0), bound.append, stop))
    try:
        for _ in range(100):
            if bound or task.done():
                break
            await asyncio.sleep(0.01)
        if not bound:
            await task  # raises the listener's error
            raise DBError("the local tunnel did not start")
        argv = [*tunnel_command(login, bound[0].port, binary), *extra]
        proc = await asyncio.create_subprocess_exec(*argv)
        return await proc.wait()
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
