"""``tpemu apps ls|login`` and ``tpemu proxy app``: the client side of application access (glue).

What ``tsh apps`` does (``tool/tsh/common/app.go``): ``ls`` lists the cluster's ``app_server``
resources (``GET /v1/app_servers`` on the Auth API through the proxy); ``login NAME`` gets a
certificate for the profile's key whose identity routes to the app (``RouteToApp``: name, public
address ``<app>.<proxy host>``, cluster; ``usage:apps``), saved as
``keys/<proxy>/<user>-app/<cluster>/<NAME>-x509.pem``, and prints the curl command that uses it;
``proxy app NAME`` (``tsh proxy app``) serves a plain local port, each connection wrapped in TLS to
the proxy with the app certificate — ALPN ``teleport-tcp`` for TCP apps, SNI ``<app>.<proxy host>``
for HTTP apps.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tpemu import authapi, pki
from tpemu.client import profile as profile_mod
from tpemu.client.db import auth_client
from tpemu.config import Addr
from tpemu.errors import PeerFault
from tpemu.net.pipe import Parked, Pipe, park_streams
from tpemu.wire import alpn

log = logging.getLogger(__name__)


class AppsError(PeerFault):
    """An apps command failed; the message is for the user."""


@dataclass(frozen=True)
class AppInfo:
    name: str
    protocol: str
    description: str
    labels: dict[str, str]
    uri: str


@dataclass(frozen=True)
class AppLogin:
    name: str
    protocol: str
    public_addr: str
    cert_path: str
    key_path: str
    ca_path: str
    proxy: str

    @property
    def proxy_addr(self) -> Addr:
        return Addr.parse(self.proxy, default_port=3080)

    def url(self) -> str:
        return f"https://{self.public_addr}:{self.proxy_addr.port}/"

    def curl(self) -> str:
        resolve = ""
        if _is_ip(self.proxy_addr.host):
            resolve = f" --resolve {self.public_addr}:{self.proxy_addr.port}:{self.proxy_addr.host}"
        return (f"curl --cacert {self.ca_path} --cert {self.cert_path} --key {self.key_path}{resolve} "
                f"{self.url()}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def public_addr(prof: profile_mod.Profile, name: str) -> str:
    """``<app>.<proxy host>``; for a proxy reached by IP or ``localhost``, ``<app>.<cluster name>``
    (the proxy's certificate covers ``*.<cluster name>``; TLS clients refuse ``*.localhost``)."""
    host = Addr.parse(prof.web_proxy_addr, default_port=3080).host
    return f"{name}.{prof.cluster if _is_ip(host) or host == 'localhost' else host}"


def current_profile(home: Path) -> profile_mod.Profile:
    prof = profile_mod.current(home)
    if prof is None:
        raise AppsError("not logged in: run 'tpemu login --proxy HOST:PORT --user NAME' first")
    return prof


async def list_apps(prof: profile_mod.Profile) -> list[AppInfo]:
    try:
        data = await auth_client(prof).call("GET", "/v1/app_servers")
    except authapi.AuthAPIError as exc:
        raise AppsError(f"cannot list applications: {exc.message}") from None
    found: dict[str, AppInfo] = {}
    for item in data.get("items", []) if isinstance(data, dict) else []:
        app = (item.get("spec") or {}).get("app") or {}
        meta = app.get("metadata") or item.get("metadata") or {}
        spec = app.get("spec") or {}
        name = str(meta.get("name") or "")
        if name:
            found[name] = AppInfo(name, str(spec.get("protocol", "http")), str(meta.get("description", "")),
                                  dict(meta.get("labels") or {}), str(spec.get("uri", "")))
    return [found[k] for k in sorted(found)]


def _app_dir(prof: profile_mod.Profile) -> Path:
    return prof.key_dir / f"{prof.username}-app" / prof.cluster


async def app_login(prof: profile_mod.Profile, name: str) -> AppLogin:
    apps = {a.name: a for a in await list_apps(prof)}
    info = apps.get(name)
    if info is None:
        raise AppsError(f"application {name!r} not found (apps: {', '.join(sorted(apps)) or 'none'})")
    addr = public_addr(prof, name)
    key = pki.load_key(prof.key_path.read_bytes())
    body = {"tls_public_key": authapi.b64(pki.public_key_pem(key)),
            "route_to_app": {"name": name, "public_addr": addr, "cluster_name": prof.cluster}}
    try:
        answer = await auth_client(prof).call("POST", f"/v1/users/{quote(prof.username, safe='')}/certs", body)
    except authapi.AuthAPIError as exc:
        raise AppsError(f"cannot get a certificate for app {name!r}: {exc.message}") from None
    cert = authapi.unb64(answer.get("tls") if isinstance(answer, dict) else None, "tls")
    folder = _app_dir(prof)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path = folder / f"{name}-x509.pem"
    pki.write_public(cert_path, cert)
    login = AppLogin(name, info.protocol, addr, str(cert_path), str(prof.key_path), str(prof.ca_path),
                     prof.web_proxy_addr)
    pki.write_public(folder / f"{name}.json", json.dumps(asdict(login), indent=2).encode() + b"\n")
    return login


def find_login(prof: profile_mod.Profile, name: str) -> AppLogin:
    path = _app_dir(prof) / f"{name}.json"
    try:
        return AppLogin(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        raise AppsError(f"not logged in to app {name!r}: run 'tpemu apps login {name}'") from None


def tunnel_context(login: AppLogin) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=login.ca_path)
    ctx.load_cert_chain(login.cert_path, login.key_path)
    ctx.set_alpn_protocols([alpn.TCP if login.protocol == "tcp" else alpn.HTTP11])
    return ctx


async def run_tunnel(login: AppLogin, listen: Addr, ready: Callable[[Addr], None] | None = None,
                     stop: asyncio.Event | None = None) -> None:
    """Serve ``listen`` (plain TCP) until ``stop``, wrapping each connection in TLS to the proxy."""
    ctx = tunnel_context(login)
    proxy = login.proxy_addr
    # TCP apps: the proxy's own name (the certificate routes); HTTP apps: <app>.<host> selects the app.
    server_name = login.public_addr if login.protocol != "tcp" else proxy.host.strip("[]")
    if login.protocol == "tcp" and _is_ip(server_name):
        server_name = "localhost"  # in the proxy's certificate

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(15):
                up, _ = await asyncio.get_running_loop().create_connection(
                    Parked, proxy.host, proxy.port, ssl=ctx, server_hostname=server_name)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("app tunnel: cannot reach the proxy at %s: %s", proxy, exc)
            writer.close()
            return
        Pipe.join(park_streams(reader, writer), up, name="app tunnel")

    server = await asyncio.start_server(on_client, listen.host, listen.port)
    host, port = server.sockets[0].getsockname()[:2]
    if ready is not None:
        ready(Addr(host, port))
    async with server:
        await (stop.wait() if stop is not None else asyncio.Event().wait())


def describe(apps: list[AppInfo]) -> list[dict[str, Any]]:
    return [asdict(a) for a in apps]
