"""``tpemu ssh``, ``tpemu proxy ssh``, ``tpemu ls``: the tsh side of SSH, up to the node (glue).

What ``tsh`` does (``lib/client/api.go``, ``tool/tsh``), with the profile ``tpemu login`` wrote:

1. ``GET /webapi/ping`` tells whether the proxy routes by TLS (``tls_routing_enabled``) and where its
   SSH listener is (``proxy.ssh.listen_addr``).
2. An SSH connection to the proxy — TLS with ALPN ``teleport-proxy-ssh`` to the web address, or
   plain SSH to ``listen_addr`` (3023) — authenticated with the user's SSH certificate, logging in
   as its first principal (``getProxySSHPrincipal``); the proxy's host certificate must be signed
   by the cluster's host CA.
3. A session channel asking for the subsystem ``proxy:<node>:<port>@<cluster>``; the user's own SSH
   connection to the node runs inside it, end to end (the node's host certificate is checked
   against the host CA and the name typed; the node checks the user's certificate and login).

Every dial goes through :func:`tpemu.net.dial.dial`, so ``HTTPS_PROXY``/``NO_PROXY`` apply
(an HTTP CONNECT proxy between the client and the Teleport proxy). ``tpemu proxy ssh`` stops at
step 3 and splices the channel to stdin/stdout, which makes it OpenSSH's ``ProxyCommand``;
``tpemu config`` prints the ``ssh_config`` block that uses it, as ``tsh config`` does
(:mod:`tpemu.client.openssh_config`). Once the node's session channel is open, our stdio is its
business: :mod:`tpemu.client.terminal` (pty, raw mode, window size, exit code).

Exit codes: the remote command's status; 255 when the SSH connection itself failed (or the remote
side was killed by a signal), as OpenSSH's ``ssh`` does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from tpemu import authapi, sshcert
from tpemu.authclient import AuthClient
from tpemu.client import pingcache
from tpemu.client.profile import Profile
from tpemu.client.terminal import CHANNEL_SIZES, EXIT_CONNECTION, StdioSession, run_session
from tpemu.config import Addr
from tpemu.errors import PeerFault
from tpemu.errors import describe as describe_error
from tpemu.net import conn_upgrade, ssh_lean
from tpemu.net.dial import DialError, SSHTunnel, settings_from
from tpemu.net.tls import reused_context
from tpemu.wire import alpn

log = logging.getLogger(__name__)

#: Teleport's node port (``defaults.SSHServerListenPort``): what ``tsh config`` writes.
NODE_PORT = 3022
MAX_WEB_ANSWER = 4 * 1024 * 1024
STDERR_KEEP = 8 * 1024
TIMEOUT = 30.0
#: AES-GCM first (the client's order decides): asyncssh's ChaCha20-Poly1305 builds two cipher
#: contexts per packet, AES-GCM one — measured, it halves the crypto time of a bulk transfer.
ENCRYPTION_ALGS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes256-ctr", "aes192-ctr", "aes128-ctr")


class SSHError(PeerFault):
    """An SSH operation failed; the message is for the user, ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_CONNECTION) -> None:
        super().__init__(message)
        self.code = self.exit_code = code


# -- targets --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    login: str
    host: str
    port: int


def parse_target(text: str, cluster: str, login: str | None = None, port: int | None = None) -> Target:
    """``[login@]host[:port]`` → :class:`Target`; a ``.<cluster>`` suffix on the host is dropped
    (``node1.tpemu.local`` names the node ``node1``, what ``tsh config``'s ``Host *.<cluster>`` yields).

    The login defaults to ``login``, else the local user name (as ``ssh`` and ``tsh`` do).
    Raises :class:`SSHError` (exit code 2) for a malformed target.
    """
    user, at, hostport = text.rpartition("@")
    if not at:
        user, hostport = "", text
    host, parsed_port = hostport, None
    if hostport.startswith("["):
        inner, _, rest = hostport[1:].partition("]")
        host = inner
        if rest.startswith(":") and rest[1:].isdigit():
            parsed_port = int(rest[1:])
    elif hostport.count(":") == 1:
        h, _, p = hostport.partition(":")
        if p.isdigit():
            host, parsed_port = h, int(p)
    if not host:
        raise SSHError(f"no host in {text!r} (expected [login@]host[:port])", 2)
    suffix = "." + cluster
    if cluster and host.endswith(suffix) and len(host) > len(suffix):
        host = host[: -len(suffix)]
    user = user or login or _local_user()
    return Target(user, host, port if port is not None else (parsed_port or 0))


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root"


# -- credentials ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A profile's key and SSH certificate, and the host CA keys it trusts."""

    profile: Profile
    key: Any
    cert: Any
    info: sshcert.CertificateInfo
    host_cas: list[Any]

    @classmethod
    def load(cls, profile: Profile) -> Credentials:
        try:
            key = asyncssh.import_private_key(profile.key_path.read_bytes())
            line = profile.ssh_cert_path.read_bytes()
            cert = asyncssh.import_certificate(line)
            info = sshcert.certificate_info(line)
        except (OSError, asyncssh.KeyImportError, ValueError) as exc:
            raise SSHError(f"profile {profile.name} has no usable SSH key or certificate ({exc}); "
                           f"log in again: tpemu login --proxy {profile.web_proxy_addr}", 1) from None
        return cls(profile, key, cert, info, host_ca_keys(profile))

    @property
    def principals(self) -> list[str]:
        return list(self.info.principals)

    @property
    def logins(self) -> list[str]:
        return [p for p in self.info.principals if not p.startswith("-")]

    @property
    def expires(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(min(self.info.valid_before, 253402300799), dt.UTC)  # ≤ year 9999

    def check_valid(self, now: dt.datetime | None = None) -> None:
        """Raise :class:`SSHError` if the certificate is not valid now."""
        now = now or dt.datetime.now(dt.UTC)
        if self.expires <= now:
            raise SSHError(f"your certificate for {self.profile.username} expired at "
                           f"{self.expires:%Y-%m-%d %H:%M:%S} UTC; log in again: "
                           f"tpemu login --proxy {self.profile.web_proxy_addr} --user {self.profile.username}", 1)

    def check_login(self, login: str, host: str) -> None:
        """Raise :class:`SSHError` if ``login`` is not one of the certificate's logins."""
        if login not in self.principals or login.startswith("-"):
            have = ", ".join(self.logins) or "none"
            raise SSHError(f"access denied to {login} connecting to {host}: {login!r} is not one of the logins "
                           f"of {self.profile.username} (allowed: {have})", 1)

    def client_keys(self) -> list[tuple[Any, Any]]:
        return [(self.key, self.cert)]


def host_ca_keys(profile: Profile) -> list[Any]:
    """The cluster's SSH host CA keys, from the profile's ``known_hosts`` ``@cert-authority`` lines."""
    keys = []
    try:
        lines = profile.known_hosts_path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "@cert-authority" and f"clustername={profile.cluster}" in line:
            with contextlib.suppress(asyncssh.KeyImportError, ValueError):
                keys.append(asyncssh.import_public_key(f"{parts[2]} {parts[3]}"))
    if not keys:
        raise SSHError(f"no host CA for cluster {profile.cluster} in {profile.known_hosts_path}; log in again", 1)
    return keys


# -- the web API ------------------------------------------------------------------------------------


def _web_context(profile: Profile, client_cert: bool) -> ssl.SSLContext:
    if client_cert:
        return reused_context("web-client-cert", lambda: _build_web_context(profile, True), profile.ca_path,
                              profile.tls_cert_path, profile.key_path)
    return reused_context("web", lambda: _build_web_context(profile, False), profile.ca_path)


def _build_web_context(profile: Profile, client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(profile.ca_path))
    # The system's roots too (SSL_CERT_FILE applies), as tsh: a load balancer in front of the
    # proxy may present a publicly signed certificate for the web API.
    ctx.load_default_certs()
    ctx.set_alpn_protocols([alpn.HTTP11])
    if client_cert:
        ctx.load_cert_chain(profile.tls_cert_path, profile.key_path)
    return ctx


async def web_get(profile: Profile, path: str, client_cert: bool = False, timeout: float = TIMEOUT) -> Any:
    """``GET path`` on the proxy's web API (through ``HTTPS_PROXY`` if set); the decoded JSON.

    Raises :class:`SSHError` with the proxy's error message.
    """
    addr = Addr.parse(profile.web_proxy_addr, default_port=3080)
    try:
        ctx = _web_context(profile, client_cert)
    except (OSError, ssl.SSLError) as exc:
        raise SSHError(f"cannot load the profile's certificates: {exc}", 1) from None
    # The Auth API's JSON client speaks to any JSON endpoint: here the proxy's web API.
    client = AuthClient(addr, ctx, addr.host, timeout=timeout, what="the proxy", proxy=settings_from())
    try:
        return await client.call("GET", path)
    except authapi.AuthAPIError as exc:
        raise SSHError(exc.message, 1 if exc.status < 500 else 255) from None


# -- the proxy ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyRoute:
    """Where the proxy's SSH service is: ``tls`` (ALPN on the web port) or plain SSH."""

    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{Addr(self.host, self.port)} ({'TLS, ALPN teleport-proxy-ssh' if self.tls else 'SSH'})"


def route_from_ping(ping: Any, web: Addr) -> ProxyRoute:
    """The SSH route a ``/webapi/ping`` answer describes (``tsh``'s choice)."""
    proxy = ping.get("proxy") if isinstance(ping, dict) else None
    if not isinstance(proxy, dict):
        raise SSHError("the proxy's /webapi/ping answer has no proxy settings")
    if proxy.get("tls_routing_enabled"):
        return ProxyRoute(web.host, web.port, True)
    ssh = proxy.get("ssh")
    if not isinstance(ssh, dict):
        ssh = {}
    text = ssh.get("ssh_public_addr") or ssh.get("listen_addr")
    if not isinstance(text, str) or not text:
        raise SSHError("the proxy advertises no SSH listener (proxy_service.listen_addr)")
    addr = Addr.parse(text, default_port=3023)
    host = web.host if addr.host in ("0.0.0.0", "::", "") else addr.host
    return ProxyRoute(host, addr.port, False)


def _ping_key(profile: Profile) -> tuple[Any, ...]:
    return (profile.web_proxy_addr, pingcache.file_stamp(profile.ca_path), settings_from())


async def proxy_route(profile: Profile, use_cache: bool = True) -> tuple[ProxyRoute, bool]:
    """The SSH route of the profile's proxy from its ``/webapi/ping`` answer, kept per process as
    ``TeleportClient.Ping`` keeps it (``lib/client/api.go``; see :mod:`tpemu.client.pingcache`),
    and whether it came from a kept answer. An answer that describes no route is not kept."""
    web = Addr.parse(profile.web_proxy_addr, default_port=3080)
    key = _ping_key(profile)
    if not use_cache:
        pingcache.PINGS.forget(key)

    async def fetch() -> Any:
        answer = await web_get(profile, "/webapi/ping")
        route_from_ping(answer, web)  # raises SSHError before anything is kept
        return answer

    answer, kept = await pingcache.PINGS.get(key, fetch)
    return route_from_ping(answer, web), kept


async def connect_proxy(creds: Credentials, route: ProxyRoute | None = None,
                        timeout: float = TIMEOUT) -> asyncssh.SSHClientConnection:
    """An authenticated SSH connection to the proxy of ``creds.profile``; raises :class:`SSHError`.

    Without ``route``, the route comes from the proxy's ping answer, kept per process
    (:func:`proxy_route`). When the connection fails on a kept answer, the answer is dropped and the
    proxy asked again: if it now describes another route (the proxy was reconfigured), that route is
    tried once; otherwise the first failure is the error, as a client without the cache would see."""
    if route is not None:
        return await _connect_proxy(creds, route, timeout)
    profile = creds.profile
    route, kept = await proxy_route(profile)
    try:
        return await _connect_proxy(creds, route, timeout)
    except SSHError:
        if not kept:
            raise  # the answer was fresh: nothing to ask again
        try:
            fresh, _ = await proxy_route(profile, use_cache=False)
        except SSHError:
            fresh = route
        if fresh == route:
            raise
        log.info("the proxy at %s now describes another SSH route (%s, was %s): trying it", profile.web_proxy_addr,
                 fresh, route)
    return await _connect_proxy(creds, fresh, timeout)


async def _connect_proxy(creds: Credentials, route: ProxyRoute, timeout: float) -> asyncssh.SSHClientConnection:
    profile = creds.profile
    ctx = None
    if route.tls:

        def build() -> ssl.SSLContext:
            made = ssl.create_default_context(cafile=str(profile.ca_path))
            made.set_alpn_protocols([alpn.PROXY_SSH])
            return made

        ctx = reused_context("proxy-ssh", build, profile.ca_path)
    tunnel: SSHTunnel | conn_upgrade.UpgradedSSHTunnel = SSHTunnel(
        route.host, route.port, ssl_context=ctx, server_hostname=route.host, timeout=timeout)
    if ctx is not None:
        # tsh's test dial: behind a layer-7 load balancer, go through /webapi/connectionupgrade.
        outer = conn_upgrade.outer_context(str(profile.ca_path))
        try:
            upgrade = await conn_upgrade.upgrade_required(route.host, route.port, outer, proxy=settings_from())
        except DialError:
            upgrade = False
        if upgrade:
            tunnel = conn_upgrade.UpgradedSSHTunnel(route.host, route.port, outer=outer, inner=ctx,
                                                    server_hostname=route.host, proxy=settings_from(),
                                                    timeout=timeout)
    try:
        return await ssh_lean.connect_client(
            route.host, route.port, tunnel=tunnel, username=creds.principals[0] if creds.principals else "-",
            client_keys=creds.client_keys(), known_hosts=([], creds.host_cas, []), agent_path=None, config=None,
            preferred_auth=["publickey"], connect_timeout=timeout, login_timeout=timeout,
            encryption_algs=ENCRYPTION_ALGS)
    except asyncssh.PermissionDenied:
        raise SSHError(f"the proxy at {route} refused the certificate of {profile.username} (expired, or from "
                       f"another cluster?); log in again: tpemu login --proxy {profile.web_proxy_addr}", 1) from None
    except asyncssh.HostKeyNotVerifiable as exc:
        raise SSHError(f"the proxy at {route} is not trusted: {exc.reason} (its host certificate must be "
                       f"signed by the host CA of {profile.cluster})") from None
    except DialError as exc:
        raise SSHError(f"cannot reach the proxy's SSH service at {route}: {exc}") from None
    except ssl.SSLCertVerificationError as exc:
        raise SSHError(f"cannot verify the proxy's certificate: {exc.verify_message}") from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise SSHError(f"SSH to the proxy at {route} failed: {describe_error(exc)}") from None


class _SubsystemChannel(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """Carries a session object (an SSH connection, or stdio) over the ``proxy:`` subsystem;
    stderr (the proxy's error message) is kept aside, never mixed into the byte stream."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stderr = bytearray()

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self.inner.connection_made(chan)

    def session_started(self) -> None:
        starter = getattr(self.inner, "session_started", None)
        if starter is not None:
            starter()

    def data_received(self, data: bytes, datatype: Any) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            if len(self.stderr) < STDERR_KEEP:
                self.stderr += data[: STDERR_KEEP - len(self.stderr)]
            return
        self.inner.data_received(data, None)

    def eof_received(self) -> bool:
        return bool(self.inner.eof_received())

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def error(self) -> str:
        text = self.stderr.decode("utf-8", "replace").strip()
        return text.removeprefix("ERROR: ")


def subsystem_name(host: str, port: int, cluster: str) -> str:
    return f"proxy:{host}:{port or NODE_PORT}@{cluster}" if ":" not in host else \
        f"proxy:[{host}]:{port or NODE_PORT}@{cluster}"


class SubsystemTunnel:
    """An asyncssh ``tunnel=``: a connection to a node through the proxy's ``proxy:`` subsystem."""

    def __init__(self, proxy: asyncssh.SSHClientConnection, cluster: str) -> None:
        self.proxy = proxy
        self.cluster = cluster
        self.channel: _SubsystemChannel | None = None

    async def create_connection(self, session_factory: Callable[[], Any], host: str,
                                port: int) -> tuple[Any, Any]:
        wrapper = _SubsystemChannel(session_factory())
        self.channel = wrapper
        chan, _ = await self.proxy.create_session(lambda: wrapper, subsystem=subsystem_name(host, port, self.cluster),
                                                  encoding=None, **CHANNEL_SIZES)
        return chan, wrapper.inner

    def error(self) -> str:
        return self.channel.error() if self.channel is not None else ""


async def connect_node(proxy: asyncssh.SSHClientConnection, creds: Credentials, target: Target,
                       timeout: float = TIMEOUT) -> asyncssh.SSHClientConnection:
    """The user's SSH connection to ``target`` inside the proxy's subsystem; raises :class:`SSHError`."""
    tunnel = SubsystemTunnel(proxy, creds.profile.cluster)
    try:
        return await ssh_lean.connect_client(
            target.host, target.port or NODE_PORT, tunnel=tunnel, username=target.login,
            client_keys=creds.client_keys(), known_hosts=([], creds.host_cas, []), agent_path=None, config=None,
            preferred_auth=["publickey"], connect_timeout=timeout, login_timeout=timeout,
            encryption_algs=ENCRYPTION_ALGS)
    except asyncssh.PermissionDenied:
        raise SSHError(f"access denied to {target.login} connecting to {target.host} (the node refused the "
                       "certificate for this login)", 1) from None
    except asyncssh.HostKeyNotVerifiable as exc:
        raise SSHError(f"node {target.host} is not trusted: {exc.reason} (its host certificate must be signed by "
                       f"the host CA of {creds.profile.cluster} and name {target.host!r})") from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise SSHError(tunnel.error() or f"SSH to node {target.host} failed: {describe_error(exc)}") from None


async def ssh(creds: Credentials, target: Target, command: str | None, pty: bool | None = None) -> int:
    """``tpemu ssh``: checks, proxy, node, session; returns the exit code (raises :class:`SSHError`)."""
    creds.check_valid()
    creds.check_login(target.login, target.host)
    proxy = await connect_proxy(creds)
    try:
        node = await connect_node(proxy, creds, target)
        try:
            return await run_session(node, command, pty)
        finally:
            node.close()
            await node.wait_closed()
    finally:
        proxy.close()
        await proxy.wait_closed()


async def proxy_stdio(creds: Credentials, target: Target) -> int:
    """``tpemu proxy ssh``: the ``proxy:`` subsystem spliced to stdin/stdout (OpenSSH's ProxyCommand)."""
    creds.check_valid()
    proxy = await connect_proxy(creds)
    try:
        stdio = StdioSession()
        wrapper = _SubsystemChannel(stdio)
        try:
            chan, _ = await proxy.create_session(
                lambda: wrapper, subsystem=subsystem_name(target.host, target.port, creds.profile.cluster),
                encoding=None, **CHANNEL_SIZES)
        except asyncssh.ChannelOpenError as exc:
            raise SSHError(f"the proxy refused the channel: {exc.reason}") from None
        await stdio.closed
        await chan.wait_closed()
        status = chan.get_exit_status()
        if status:
            raise SSHError(wrapper.error() or f"the proxy ended the connection with status {status}", status)
        return 0
    finally:
        proxy.close()
        await proxy.wait_closed()


# -- tpemu ls --------------------------------------------------------------------------------------------


async def list_nodes(profile: Profile) -> list[dict[str, Any]]:
    """``GET /webapi/sites/<cluster>/nodes`` with the user's certificate."""
    data = await web_get(profile, f"/webapi/sites/{profile.cluster}/nodes", client_cert=True)
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise SSHError("the proxy's node list is malformed", 1)
    return [i for i in items if isinstance(i, dict)]


def heartbeat_age(stamp: str, now: dt.datetime | None = None) -> str:
    """``3s ago`` for an RFC 3339 time (``-`` when unknown)."""
    if not stamp:
        return "-"
    try:
        when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    secs = max(0, int(((now or dt.datetime.now(dt.UTC)) - when).total_seconds()))
    return f"{secs}s ago" if secs < 120 else f"{secs // 60}m ago"


def format_nodes(items: list[dict[str, Any]], verbose: bool = False) -> str:
    """``tsh ls``'s table: Node Name, Address (``⟵ Tunnel`` for tunnelled nodes), Labels."""
    rows = []
    for item in items:
        addr = "⟵ Tunnel" if item.get("tunnel") else str(item.get("addr", ""))
        labels = ",".join(f"{t.get('name')}={t.get('value')}" for t in item.get("tags") or [])
        row = [str(item.get("hostname", ""))]
        if verbose:
            row.append(str(item.get("id", "")))
        beat = "disconnected" if item.get("connected") is False else heartbeat_age(str(item.get("lastHeartbeat") or ""))
        rows.append([*row, addr, labels, beat])
    head = ["Node Name", *(["Node ID"] if verbose else []), "Address", "Labels", "Last heartbeat"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = [" ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
             " ".join("-" * w for w in widths)]
    lines += [" ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def join_command(words: list[str]) -> str | None:
    """The remote command line from ``tpemu ssh``'s trailing words (as ``ssh`` joins them)."""
    if not words:
        return None
    return " ".join(words) if len(words) > 1 else words[0]


__all__ = ["Credentials", "ProxyRoute", "SSHError", "SubsystemTunnel", "Target", "connect_node", "connect_proxy",
           "format_nodes", "join_command", "list_nodes", "parse_target", "proxy_route",
           "proxy_stdio", "route_from_ping", "ssh", "web_get"]

