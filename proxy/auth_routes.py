"""The proxy's side of the Auth Service: its own identity, and the web endpoints that reach Auth (glue).

A proxy joins the cluster like any Teleport host: with a join token (``teleport.auth_token``,
or one the all-in-one ``tpemu start`` mints in-process for it, as an administrator would with
``tpemu tokens add --type=proxy``) it registers at the Auth API over the network
(:func:`tpemu.authclient.join`), checking the Auth Service's CA against ``teleport.ca_pin``. The
identity — key, host certificate (role Proxy; SANs: its names, ``public_addr`` hosts,
localhost and the loopback addresses, ``*.teleport.cluster.local``,
``<hex(cluster)>.teleport.cluster.local``), host CA — is kept in ``<data_dir>/proxy/`` and reused at
the next start while it is valid and still accepted, so the token is needed once, as in Teleport.
The user CA is saved beside it (``user_ca.crt``): TLS the proxy terminates verifies client
certificates against it. The host CA is also written to ``<data_dir>/pki/ca.crt``, where the
bootstrap CA of a proxy without Auth Service lives, so clients find the CA to trust in one place.

Web endpoints (Teleport's ``lib/web``), forwarded to the Auth API with the proxy's identity:

* ``POST /webapi/host/credentials`` — agents joining through the proxy
  (``RegisterUsingTokenRequest`` → ``proto.Certs``); the client's address is passed on;
* ``POST /webapi/ssh/certs`` — ``tsh login`` with a password (``CreateSSHCertReq`` →
  ``SSHLoginResponse``: SSH and TLS certificates and the host CA);
* ``GET /webapi/auth/export?type=…`` — the CAs' public keys (``tctl auth export`` formats).

Connections with ALPN ``teleport-auth@`` are spliced to the Auth API unchanged (Teleport's
``ForwardTLS``): the client's TLS session, and its certificate, reach the Auth Service.
The proxy also announces itself (``/v1/proxies``) every minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpemu import authapi, authclient, pki
from tpemu import identity as ident
from tpemu.config import Addr
from tpemu.errors import PeerFault
from tpemu.net.http_server import Request, Response
from tpemu.proxy.frontdoor import Accepted
from tpemu.proxy.passthrough import splice_to_target

if TYPE_CHECKING:
    from tpemu.proxy.service import ProxyService

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 60.0


@dataclass(frozen=True)
class AuthLink:
    """Where this proxy's Auth Service is and how to join it: a ``token``, or ``mint`` to make one
    when (and only when) a join is needed — the all-in-one process's in-process token."""

    addr: Addr
    token: str = ""
    ca_pins: tuple[str, ...] = ()
    mint: Callable[[], Awaitable[str]] | None = None


class JoinError(PeerFault):
    """The proxy could not get an identity from the Auth Service (the message says why)."""


class AuthRoutes:
    """Owns the proxy's host identity and the Auth-facing web routes of one proxy."""

    def __init__(self, proxy: ProxyService, link: AuthLink) -> None:
        self.proxy = proxy
        self.link = link
        self.folder = proxy.data_dir / "proxy"
        self.identity: authclient.HostIdentity | None = None
        self.files: pki.TLSFiles | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        #: The client :meth:`client` hands out, and the identity and files it was made for.
        self._client_for: tuple[authclient.HostIdentity, pki.TLSFiles, authclient.AuthClient] | None = None
        #: Set by install(): the proxy then routes ``teleport-auth@`` connections to :meth:`forward_auth`.
        self.installed = False

    # -- identity -----------------------------------------------------------------------------------

    async def start(self) -> pki.TLSFiles:
        """Load or obtain the proxy's identity; returns its TLS files (with the user CA as
        ``client_ca``). Raises :class:`JoinError`."""
        cfg = self.proxy.cfg
        # Teleport's additional principals for a proxy: its public addresses, plus localhost and the
        # loopback addresses (getAdditionalPrincipals), so that local clients can verify it too.
        names = [*self.proxy.cert_names(), "localhost", "127.0.0.1", "::1"]
        host_id = await asyncio.to_thread(pki.ensure_host_uuid, self.proxy.data_dir)
        identity = authclient.HostIdentity.load(self.folder)
        why = self._unusable(identity, host_id, names)
        if identity is not None and why is None:
            files = identity.files(self.folder)
            try:
                await self._client(identity, files).call("GET", "/v1/ping")
            except authclient.ClientCertRefused as exc:
                why = f"the Auth Service no longer accepts it ({exc.message})"
            except authclient.ServerCertUntrusted as exc:
                why = f"the Auth Service has another CA now ({exc.message})"
            except authapi.Unavailable as exc:
                log.warning("proxy: Auth Service unreachable (%s); starting with the saved identity", exc.message)
        if identity is None or why is not None:
            if identity is not None:
                log.info("proxy: saved identity not usable (%s); joining again", why)
            token = self.link.token or (await self.link.mint() if self.link.mint is not None else "")
            if not token:
                raise JoinError(f"the proxy has no identity in {self.folder} and no join token "
                                "(set teleport.auth_token, made with: tpemu tokens add --type=proxy)")
            try:
                identity = await authclient.join(self.link.addr, token, ident.ROLE_PROXY, host_id,
                                                 cfg.teleport.nodename or socket.gethostname(),
                                                 cfg.auth_service.cluster_name, principals=names, dns_names=names,
                                                 ca_pins=self.link.ca_pins)
            except authapi.AuthAPIError as exc:
                raise JoinError(f"cannot join the cluster at {self.link.addr}: {exc.message}") from None
            await asyncio.to_thread(identity.save, self.folder)
            log.info("proxy: joined cluster %s as %s (Proxy)", identity.cluster_name, host_id)
        files = identity.files(self.folder)
        client_ca = self.folder / "user_ca.crt"
        try:
            user_ca = await self._client(identity, files).call("GET", "/v1/authorities/user")
            await asyncio.to_thread(pki.write_public, client_ca, "".join(user_ca["tls_certs"]).encode())
        except (authapi.AuthAPIError, KeyError, TypeError) as exc:
            if not client_ca.exists():
                raise JoinError(f"cannot fetch the user CA from the Auth Service: {exc}") from None
        # The cluster CA for clients goes where the bootstrap CA was (data_dir/pki/ca.crt), so that
        # `tpemu ping`, curl --cacert and the banner keep pointing at the one CA to trust.
        cluster_ca = self.proxy.data_dir / "pki" / "ca.crt"
        await asyncio.to_thread(_write_ca, cluster_ca, identity.ca_pems)
        self.identity = identity
        self.files = dataclasses.replace(files, ca=cluster_ca, client_ca=client_ca)
        return self.files

    def _unusable(self, identity: authclient.HostIdentity | None, host_id: str, names: list[str]) -> str | None:
        if identity is None:
            return "none saved"
        if identity.role != ident.ROLE_PROXY or identity.host_id != host_id:
            return f"it is for {identity.role} {identity.host_id}"
        if identity.cluster_name != self.proxy.cfg.auth_service.cluster_name:
            return f"it is for cluster {identity.cluster_name}"
        why = identity.usable()
        if why:
            return why
        have = set(pki.san_strings(identity.cert))
        missing = [n for n in names if n and n not in have]
        return f"its names lack {', '.join(missing)}" if missing else None

    def _client(self, identity: authclient.HostIdentity, files: pki.TLSFiles) -> authclient.AuthClient:
        return authclient.AuthClient.with_identity(self.link.addr, identity.cluster_name, files)

    def client(self) -> authclient.AuthClient:
        """The client of the Auth API with the proxy's identity: one for as long as the identity
        stays, so its TLS context (the certificate, key and CA loaded and parsed) and its kept-alive
        connection serve every call — the 5 s inventory poll, heartbeats, forwarded logins — instead
        of a new context and a new handshake each. A new identity gets a new client."""
        assert self.identity is not None and self.files is not None
        made = self._client_for
        if made is not None and made[0] is self.identity and made[1] == self.files:
            return made[2]
        if made is not None:
            made[2].close()
        client = self._client(self.identity, self.files)
        self._client_for = (self.identity, self.files, client)
        return client

    # -- routes -------------------------------------------------------------------------------------

    def install(self) -> None:
        """Register the web endpoints and the ``teleport-auth@`` route; start heartbeats."""

        web = self.proxy.web
        web.add("POST", "/webapi/host/credentials", self._host_credentials)
        web.add("POST", "/webapi/ssh/certs", self._ssh_certs)
        web.add("GET", "/webapi/auth/export", self._export)
        # apiserver.go: h.GET("/webapi/sites/:site/auth/export", h.authExportPublic), deprecated
        # but served; the :site part is not consulted (authExportPublic exports the local CAs).
        web.add("GET", "/webapi/sites/:site/auth/export", self._export)
        self.installed = True  # the proxy routes teleport-auth@ connections to forward_auth() now
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _forward(self, method: str, path: str, body: Any) -> Response:
        try:
            return Response.json(await self.client().call(method, path, body))
        except authapi.AuthAPIError as exc:
            status = exc.status if exc.status < 500 else 502
            return Response.error(status, exc.message)

    async def _host_credentials(self, request: Request) -> Response:
        body = authapi.body_object(request.json())
        body["remote_addr"] = request.peer  # what the proxy saw, never what the client claims
        return await self._forward("POST", "/v1/tokens/register", body)

    async def _ssh_certs(self, request: Request) -> Response:
        body = authapi.body_object(request.json())
        user = body.get("user")
        if not isinstance(user, str) or not user or "/" in user:
            return Response.error(400, "missing parameter user")
        body["remote_addr"] = request.peer
        return await self._forward("POST", f"/v1/users/{user}/ssh/authenticate", body)

    async def _export(self, request: Request) -> Response:
        kind = (request.query.get("type") or ["tls-host"])[0]
        ca_type = {"tls-host": "host", "tls": "host", "tls-user": "user", "tls-db": "db", "db": "db",
                   "user": "user", "host": "host"}.get(kind)
        if ca_type is None:
            return Response.error(400, f"unknown export type {kind!r} (tls-host, tls-user, tls-db, user, host)")
        try:
            data = await self.client().call("GET", f"/v1/authorities/{ca_type}")
        except authapi.AuthAPIError as exc:
            return Response.error(502, exc.message)
        cluster = self.proxy.cfg.auth_service.cluster_name
        if kind == "user":
            text = "".join(f"cert-authority {k} clustername={cluster}&type=user\n" for k in data["ssh_public_keys"])
        elif kind == "host":
            text = "".join(f"@cert-authority *.{cluster} {k} type=host\n" for k in data["ssh_public_keys"])
        else:
            text = "".join(data["tls_certs"])
        return Response.text(text)

    async def forward_auth(self, acc: Accepted) -> None:
        log.debug("%s: forwarding to the Auth Service at %s", acc.ctx, self.link.addr)
        await splice_to_target(dataclasses.replace(acc, route=dataclasses.replace(acc.route, target=self.link.addr)))

    # -- presence -----------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        from tpemu.proxy.decide import ListenerKind

        wanted = {ListenerKind.WEB}
        if self.proxy.cfg.proxy_service.peer_listen_addr is not None:
            wanted.add(ListenerKind.PEER)
        for _ in range(100):  # announce the addresses the listeners really bound
            if wanted <= self.proxy.info.bound.keys():
                break
            await asyncio.sleep(0.05)
        while True:
            try:
                await self._announce()
            except authapi.AuthAPIError as exc:
                log.warning("proxy heartbeat to the Auth Service failed: %s", exc.message)
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _announce(self) -> None:
        from tpemu.proxy.decide import ListenerKind

        assert self.identity is not None
        info = self.proxy.info
        hostname = self.proxy.cfg.teleport.nodename or socket.gethostname()
        spec = {"addr": info.web_addr(), "hostname": hostname, "public_addr": info.public_addr() or info.web_addr(),
                "version": "tpemu"}
        peer = info.bound.get(ListenerKind.PEER)
        if peer is not None:  # ProxySpecV2.peer_addr: where peers reach this proxy (proxy peering)
            spec["peer_addr"] = str(peer)
        resource = {"kind": "proxy", "version": "v2", "metadata": {"name": self.identity.host_id}, "spec": spec}
        await self.client().call("POST", "/v1/proxies", resource)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._client_for is not None:
            self._client_for[2].close()
            self._client_for = None


def _write_ca(path: Path, pems: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_public(path, pems)


def auth_link_from_config(addr: Addr | None, token: str, ca_pins: tuple[str, ...]) -> AuthLink | None:
    """The link for a proxy configured with ``teleport.auth_server`` (``None`` without one).

    ``token`` may be a path to a file holding the token, as Teleport's ``auth_token`` allows.
    """
    if addr is None:
        return None
    if token.startswith("/"):
        try:
            token = Path(token).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise JoinError(f"cannot read teleport.auth_token file {token}: {exc.strerror}") from None
    return AuthLink(addr, token, ca_pins)
