"""The Auth Service process part: backend, authorities, the mTLS API, the admin identity (glue).

Start-up, as Teleport's auth server does it: open the backend (``teleport.storage``), load or
create the cluster's CAs, issue the service's own host certificate (role Auth, from the host CA,
for this process's ``host_uuid``), listen on ``auth_service.listen_addr``, and write the admin
identity that the local administration commands (``tpemu tokens``, ``tpemu users`` — Teleport's
``tctl``) use to call the API: ``<data_dir>/auth/admin.{crt,key}``, the host CA as
``ca.crt`` and ``admin.json`` with the address the API really bound (0600 files in a 0700
folder: whoever can read them administers the cluster, as with Teleport's data_dir).

The service also announces itself (``/authservers/<host_uuid>``) with a heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import ssl
from pathlib import Path

from tpemu import authapi, pki
from tpemu import identity as ident
from tpemu.auth import authority as authority_mod
from tpemu.auth.api import AuthAPI
from tpemu.auth.authority import CAType
from tpemu.auth.backend import Backend
from tpemu.auth.server import AuthServer
from tpemu.config import Addr, Config, Storage
from tpemu.net.tls import new_context
from tpemu.wire import alpn

log = logging.getLogger(__name__)

#: The admin identity is re-issued at every start and lives this long.
ADMIN_CERT_TTL = dt.timedelta(days=30)
HEARTBEAT_INTERVAL = 60.0


async def open_backend(storage: Storage, data_dir: Path) -> Backend:
    """The backend ``teleport.storage`` names."""
    if storage.type in ("postgresql", "postgres"):
        from tpemu.auth.backend_postgres import PostgresBackend

        return await PostgresBackend.open(storage.conn_string)
    from tpemu.auth.backend_sqlite import SQLiteBackend

    path = Path(storage.path).expanduser() if storage.path else data_dir / "backend" / "sqlite.db"
    if path.is_dir() or (storage.path and not path.suffix):
        path = path / "sqlite.db"  # Teleport's `path` names the folder
    return await SQLiteBackend.open(path, storage.sync)


class AuthService:
    """Runs the Auth Service of one cluster in this process."""

    def __init__(self, cfg: Config, data_dir: Path | None = None, backend: Backend | None = None) -> None:
        self.cfg = cfg
        self.data_dir = data_dir or cfg.data_dir()
        self.backend = backend
        self._own_backend = backend is None
        self.server: AuthServer | None = None
        self.api: AuthAPI | None = None
        self.addr: Addr | None = None
        self.host_id = ""
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def dir(self) -> Path:
        return self.data_dir / "auth"

    @property
    def admin_files(self) -> pki.TLSFiles:
        return pki.TLSFiles(self.dir / "admin.crt", self.dir / "admin.key", self.dir / "ca.crt")

    async def start(self) -> None:
        """Open the backend, make or load the CAs, listen; raises ``OSError`` if the port is taken."""
        cfg = self.cfg
        if self.backend is None:
            self.backend = await open_backend(cfg.teleport.storage, self.data_dir)
        self.backend.start_sweeper()
        suite = cfg.auth_service.authentication.signature_algorithm_suite
        server = AuthServer(self.backend, cfg.auth_service.cluster_name, authority_mod.SUITE_KEYS[suite],
                            cfg.auth_service.tokens)
        await server.init()
        self.server = server
        self.host_id = await asyncio.to_thread(pki.ensure_host_uuid, self.data_dir)
        ctx = await asyncio.to_thread(self._tls_context)
        self.api = AuthAPI(server, reject_old_clients=cfg.tpemu.reject_old_clients)
        try:
            self.addr = await self.api.listen(cfg.auth_service.listen_addr, ctx)
        except OSError:
            await self.close()
            raise
        await asyncio.to_thread(self._write_admin_identity)
        await self._announce()
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())
        host = server.ca(CAType.HOST)
        log.info("auth service for cluster %s listening on %s (host CA pin %s, backend %s)", server.cluster_name,
                 self.addr, host.pin, type(self.backend).__name__)

    def _names(self) -> list[str]:
        import socket

        names = [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
        if self.cfg.teleport.nodename:
            names.append(self.cfg.teleport.nodename)
        names += [Addr.parse(a, default_port=3025).host for a in self.cfg.auth_service.public_addr]
        return names

    def _tls_context(self) -> ssl.SSLContext:
        assert self.server is not None
        server = self.server
        key = pki.generate_key(server.key_kind)
        cert = authority_mod.issue_host_tls(server.ca(CAType.HOST), key.public_key(), self.host_id,
                                            ident.ROLE_AUTH, self._names(), self._names())
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pki.write_private(self.dir / "auth.key", pki.key_pem(key))
        pki.write_public(self.dir / "auth.crt", pki.cert_pem(cert))
        ctx = new_context(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.dir / "auth.crt", self.dir / "auth.key")
        ctx.load_verify_locations(cadata=(server.ca(CAType.HOST).tls_cert_pem
                                          + server.ca(CAType.USER).tls_cert_pem).decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.set_alpn_protocols([alpn.AUTH, alpn.HTTP11, alpn.HTTP2])
        return ctx

    def _write_admin_identity(self) -> None:
        assert self.server is not None and self.addr is not None
        server = self.server
        key = pki.generate_key(server.key_kind)
        cert = authority_mod.issue_host_tls(server.ca(CAType.HOST), key.public_key(), self.host_id,
                                            ident.ROLE_ADMIN, ttl=ADMIN_CERT_TTL)
        files = self.admin_files
        pki.write_private(files.key, pki.key_pem(key))
        pki.write_private(files.cert, pki.cert_pem(cert))
        pki.write_public(files.ca, server.ca(CAType.HOST).tls_cert_pem)
        info = {"auth_addr": str(self.addr), "cluster_name": server.cluster_name, "host_id": self.host_id,
                "ca_pin": server.ca(CAType.HOST).pin}
        pki.write_private(self.dir / "admin.json", json.dumps(info, indent=2).encode() + b"\n")

    async def _announce(self) -> None:
        assert self.server is not None
        import socket

        resource = {"kind": "auth_server", "version": "v2", "metadata": {"name": self.host_id},
                    "spec": {"addr": str(self.addr), "hostname": self.cfg.teleport.nodename or socket.gethostname(),
                             "version": "tpemu"}}
        await self.server.upsert_server("auth_servers", resource, authapi.SERVER_ANNOUNCE_TTL)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self._announce()
            except Exception as exc:
                log.warning("auth service heartbeat failed: %s", exc)

    async def mint_token(self, roles: tuple[str, ...], ttl: float = 300.0, single_use: bool = True) -> str:
        """A join token made in-process (what an administrator would do with ``tpemu tokens add``)."""
        assert self.server is not None
        return (await self.server.tokens.create(roles, ttl, single_use)).name

    @property
    def ca_pin(self) -> str:
        assert self.server is not None
        return self.server.ca(CAType.HOST).pin

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self.api is not None:
            await self.api.close()
            self.api = None
        if self.backend is not None and self._own_backend:
            await self.backend.close()
            self.backend = None
