"""A real Kubernetes cluster behind the Kubernetes Service (``kubernetes_service.kubeconfig_file``).

Teleport's forwarder (``lib/kube/proxy/forwarder.go``: ``setupImpersonationHeaders``, the
``kubeCreds`` built from the kubeconfig in ``lib/kube/proxy/kube_creds.go``) sends each user's
request to the cluster the kubeconfig names, authenticated as the Kubernetes Service's own
credentials (client certificate and/or bearer token), with ``Impersonate-User`` and one
``Impersonate-Group`` per group saying who the request is for; the API server checks that the
service may impersonate and then authorises the impersonated user. This module is that hop:

* :func:`load_kubeconfig` reads the kubeconfig's current context (or the context named like the
  cluster): ``server``, ``certificate-authority``/``-data``, ``insecure-skip-tls-verify``,
  ``tls-server-name``, ``client-certificate``/``client-key`` (``-data`` too) and ``token``; any
  other way to authenticate (exec plugins, auth providers) is refused by name;
* :class:`RemoteAPI` forwards one HTTP request (the impersonation headers already set by
  :mod:`tpemu.agent.kube.service`), answering with the upstream's status and body — streamed when
  the upstream streams (``watch``, ``logs -f``) — and splicing both directions after a
  ``101 Switching Protocols`` (``kubectl exec``'s websocket / SPDY).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import yaml

from tpemu.agent.kube import http as khttp
from tpemu.agent.kube.status import StatusError
from tpemu.errors import LocalFault

log = logging.getLogger(__name__)

MAX_KUBECONFIG = 1 << 20
MAX_HEAD = 64 * 1024
#: Bodies with a known length up to this are answered whole; longer or unknown ones stream.
MAX_WHOLE = 3 << 20
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
#: Between two chunks of a streamed answer (a quiet ``watch``): the API server's own
#: ``--min-request-timeout`` (1800 s) bounds a watch, so a quiet one must live that long here.
STREAM_TIMEOUT = 1800.0
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                  "upgrade", "host", "content-length", "authorization"})


class KubeconfigError(LocalFault):
    """kubernetes_service.kubeconfig_file cannot be used (unreadable, a missing context, an exec
    plugin); the message says which and why."""


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int
    server_name: str
    tls: ssl.SSLContext | None
    token: str = ""


def _blob(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        try:
            return base64.b64decode(str(entry[f"{key}-data"]), validate=True)
        except ValueError as exc:
            raise KubeconfigError(f"{key}-data is not base64: {exc}") from None
    if entry.get(key):
        path = base / str(entry[key])
        try:
            return path.read_bytes()[:MAX_KUBECONFIG]
        except OSError as exc:
            raise KubeconfigError(f"{key} {path}: {exc.strerror or exc}") from None
    return None


def _named(doc: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    for item in doc.get(section) or []:
        if isinstance(item, dict) and item.get("name") == name:
            inner = item.get(section[:-1])
            if isinstance(inner, dict):
                return inner
    raise KubeconfigError(f"{section[:-1]} {name!r} not found in the kubeconfig")


def load_kubeconfig(path: Path, context: str = "") -> Upstream:
    """The cluster and credentials of ``context`` (default: the current context)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KUBECONFIG:
        raise KubeconfigError(f"kubeconfig {path} is larger than {MAX_KUBECONFIG} bytes")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"kubeconfig {path} is not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError(f"kubeconfig {path} is not a mapping")
    name = context or str(doc.get("current-context") or "")
    if not name:
        raise KubeconfigError(f"kubeconfig {path} has no current-context")
    ctx = _named(doc, "contexts", name)
    cluster = _named(doc, "clusters", str(ctx.get("cluster", "")))
    user = _named(doc, "users", str(ctx.get("user", ""))) if ctx.get("user") else {}
    for unsupported in ("exec", "auth-provider", "username", "password", "tokenFile"):
        if user.get(unsupported):
            raise KubeconfigError(f"kubeconfig user {ctx.get('user')!r}: {unsupported} is not supported "
                                  "(use a client certificate or a token)")
    url = urlsplit(str(cluster.get("server") or ""))
    if url.scheme not in ("https", "http") or not url.hostname:
        raise KubeconfigError(f"cluster {ctx.get('cluster')!r}: server must be an http(s) URL, "
                              f"got {cluster.get('server')!r}")
    base = path.parent
    tls: ssl.SSLContext | None = None
    if url.scheme == "https":
        tls = ssl.create_default_context()
        tls.set_alpn_protocols(["http/1.1"])
        if cluster.get("insecure-skip-tls-verify"):
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        ca = _blob(cluster, "certificate-authority", base)
        if ca is not None:
            try:
                tls.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except ssl.SSLError as exc:
                raise KubeconfigError(f"certificate-authority: {exc}") from None
        cert, key = _blob(user, "client-certificate", base), _blob(user, "client-key", base)
        if (cert is None) != (key is None):
            raise KubeconfigError("client-certificate and client-key go together")
        if cert is not None and key is not None:
            with tempfile.TemporaryDirectory() as tmp:  # ssl loads chains from files only
                cpath, kpath = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
                cpath.write_bytes(cert)
                kpath.write_bytes(key)
                kpath.chmod(0o600)
                try:
                    tls.load_cert_chain(str(cpath), str(kpath))
                except ssl.SSLError as exc:
                    raise KubeconfigError(f"client-certificate/client-key: {exc}") from None
    port = url.port or (443 if url.scheme == "https" else 80)
    return Upstream(url.hostname, port, str(cluster.get("tls-server-name") or url.hostname), tls,
                    str(user.get("token") or ""))


class RemoteAPI:
    """One real cluster: the same ``handle`` as :class:`~tpemu.agent.kube.api.EmulatedAPI`."""

    def __init__(self, name: str, upstream: Upstream) -> None:
        self.name = name
        self.upstream = upstream

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def handle(self, request: khttp.Request) -> khttp.Reply | khttp.Streamed | khttp.Upgraded:
        up = self.upstream
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    up.host, up.port, ssl=up.tls, server_hostname=up.server_name if up.tls else None,
                    limit=MAX_HEAD)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("kube service: cluster %s at %s:%d unreachable: %s", self.name, up.host, up.port, exc)
            raise StatusError(503, f"kubernetes cluster {self.name!r} is unreachable: {exc or 'timeout'}",
                              "ServiceUnavailable") from None
        try:
            return await self._exchange(request, reader, writer)
        except BaseException:
            writer.close()
            raise

    async def _exchange(self, request: khttp.Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> khttp.Reply | khttp.Streamed | khttp.Upgraded:
        upgrade = request.headers.get("upgrade", "")
        headers: list[tuple[str, str]] = [("host", f"{self.upstream.server_name}:{self.upstream.port}")]
        headers += [(k, v) for k, v in request.headers.items() if k not in _HOP and k != "impersonate-group"]
        headers += [("impersonate-group", g) for g in request.multi.get("impersonate-group", [])]
        if self.upstream.token:
            headers.append(("authorization", f"Bearer {self.upstream.token}"))
        if upgrade:
            headers += [("connection", "Upgrade"), ("upgrade", upgrade)]
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        writer.write(conn.send(h11.Request(method=request.method, target=request.target,
                                           headers=[*headers, ("content-length", str(len(request.body)))])))
        writer.write(conn.send(h11.Data(data=request.body)) if request.body else b"")
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        event = await _next(conn, reader)
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            return await self._splice(request, event, conn, reader, writer)
        while isinstance(event, h11.InformationalResponse):
            event = await _next(conn, reader)
        if not isinstance(event, h11.Response):
            raise StatusError(502, f"kubernetes cluster {self.name!r} sent no response", "BadGateway")
        head = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        ctype = head.get("content-type", "application/json")
        length = head.get("content-length", "")
        if length.isdigit() and int(length) <= MAX_WHOLE:
            body = bytearray()
            while not isinstance(ev := await _next(conn, reader), h11.EndOfMessage):
                if isinstance(ev, h11.Data):
                    body += ev.data
            writer.close()
            extra = [(k, v) for k, v in head.items() if k in ("audit-id", "warning", "cache-control")]
            return khttp.Reply(event.status_code, bytes(body), ctype, extra)
        return khttp.Streamed(event.status_code, _chunks(conn, reader, writer), ctype)

    async def _splice(self, request: khttp.Request, event: h11.InformationalResponse, conn: h11.Connection,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> khttp.Upgraded:
        assert request.reader is not None and request.writer is not None
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        await khttp.switch_protocols(request, headers)
        extra, _ = conn.trailing_data
        if extra:
            request.writer.write(extra)
        if request.leftover:
            writer.write(request.leftover)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, RuntimeError):
                if dst.can_write_eof():
                    dst.write_eof()

        try:
            await asyncio.gather(pump(request.reader, writer), pump(reader, request.writer))
        finally:
            writer.close()
        return khttp.Upgraded()


async def _next(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float = READ_TIMEOUT) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            async with asyncio.timeout(timeout):
                data = await reader.read(65536)
            conn.receive_data(data)
            continue
        if event is h11.PAUSED:
            return event
        if isinstance(event, h11.ConnectionClosed):
            raise StatusError(502, "the kubernetes cluster closed the connection mid-response", "BadGateway")
        return event


async def _chunks(conn: h11.Connection, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> AsyncIterator[bytes]:
    try:
        while True:
            try:
                event = await _next(conn, reader, STREAM_TIMEOUT)
            except (StatusError, TimeoutError, OSError, h11.ProtocolError):
                return
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
    finally:
        writer.close()
