"""The proxy's Kubernetes handler: TLS with the user's certificate, then the kube agent's tunnel (glue).

Teleport's kube proxy (``lib/kube/proxy/forwarder.go`` running in the proxy, reached through the
ALPN router by the SNI prefix ``kube-teleport-proxy-alpn.`` — ``constants.KubeTeleportProxyALPNPrefix``
— or on ``kube_listen_addr`` in separate mode): kubectl connects with the certificate of
``tsh kube login``, whose identity names the Kubernetes cluster (``KubernetesCluster``) and carries
the user's ``kubernetes_users``/``kubernetes_groups``. The proxy ends TLS (offering ``http/1.1``
only, so Go's client speaks HTTP/1.1 and ``exec`` upgrades to a WebSocket on the same stream),
checks the certificate against the user CA, finds the agent serving that cluster
(``TunnelRegistry.dial``, ``conn_type: kube``, the identity as JSON) and relays the HTTP stream to
it; the agent's Kubernetes Service authorizes each request and sets the impersonation headers. A
Kubernetes Service joined directly to Auth is reached on its own address instead, each request
carrying the user in ``Teleport-Impersonate-User`` (:meth:`KubeProxy._relay_direct`).

Refusals are Kubernetes ``Status`` replies (kubectl prints them as ``Error from server (…)``):
no client certificate → ``401 Unauthorized``; no cluster named and none or several served →
``404``/``400``; the agent unreachable → ``503 ServiceUnavailable``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Protocol

from tpemu import authapi
from tpemu import identity as ident
from tpemu.config import Addr
from tpemu.logs import RateLimiter
from tpemu.net import kube_http as khttp
from tpemu.net.http_server import Request, Response, serve_http
from tpemu.net.kube_forward import FORWARDED_IP, FORWARDED_USER, RemoteAPI, Upstream
from tpemu.net.kube_status import StatusError
from tpemu.net.pipe import Pipe, park_streams
from tpemu.net.sockets import format_addr
from tpemu.net.tls import ContextCache, accept_stream, new_context, peer_certificate
from tpemu.pki import TLSFiles
from tpemu.proxy.frontdoor import Accepted
from tpemu.wire import alpn
from tpemu.wire.tunnel import DialRequest, Resource

log = logging.getLogger(__name__)
KUBE = "kube"


class Dialer(Protocol):
    async def dial(self, request: DialRequest, timeout: float = 10.0) -> asyncio.Transport: ...

    def resources(self, kind: str | None = None) -> Sequence[tuple[object, Resource]]: ...


def status(code: int, reason: str, message: str) -> Response:
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()
    return Response(code, body, [("Content-Type", "application/json")])


class AuthCaller(Protocol):
    async def call(self, method: str, path: str, body: object = None) -> object: ...


#: For Kubernetes Services joined directly to the Auth Service: the Auth API (their ``kube_server``
#: resources name the address) and the proxy's own TLS files (its host certificate).
Direct = Callable[[], tuple[AuthCaller, TLSFiles] | None]


class KubeProxy:
    def __init__(self, contexts: Callable[[], ContextCache | None], dialer: Callable[[], Dialer | None],
                 handshake_timeout: float = 10.0, dial_timeout: float = 10.0, direct: Direct | None = None) -> None:
        self._contexts = contexts
        self._dialer = dialer
        self._direct = direct
        self.handshake_timeout = handshake_timeout
        self.dial_timeout = dial_timeout
        self.limiter = RateLimiter()
        self.stats = {"relayed": 0, "denied": 0, "unavailable": 0}

    async def handle(self, acc: Accepted) -> None:
        cache = self._contexts()
        assert cache is not None, "the proxy has not started"
        ctx = cache.get((alpn.HTTP11,))
        try:
            reader, writer = await accept_stream(acc.sock, ctx, self.handshake_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.limiter.warning(log, "tls", "%s: kube TLS handshake failed: %s", acc.ctx, exc)
            acc.sock.close()
            return
        der = peer_certificate(writer)
        identity: ident.Identity | None = None
        why = ("Unauthorized: a client certificate is required (run 'tpemu kube login NAME' and use the "
               "kubeconfig context it writes)")
        if der:
            try:
                identity = ident.from_der(der)
            except ident.IdentityError as exc:
                why = f"Unauthorized: the client certificate holds no valid identity: {exc}"
        if identity is None:
            self.stats["denied"] += 1
            self.limiter.warning(log, "kube-auth", "%s: kube request refused: %s", acc.ctx, why)
            await self._answer(acc, reader, writer, status(401, "Unauthorized", why))
            return
        # lib/kube/proxy/server.go NewTLSServer: Middleware with AcceptedUsage UsageKubeOnly (a
        # database-only or app-session certificate is no Kubernetes credential). AccessDenied is a 403.
        refused = ident.usage_refusal(identity.usage, (ident.USAGE_KUBE_ONLY,), "Kubernetes access")
        if refused:
            self.stats["denied"] += 1
            self.limiter.warning(log, "kube-auth", "%s: kube request refused: %s", acc.ctx, refused)
            await self._answer(acc, reader, writer, status(403, "Forbidden", refused))
            return
        cluster = identity.kubernetes_cluster or self._only_cluster()
        if not cluster:
            self.stats["denied"] += 1
            await self._answer(acc, reader, writer, status(
                400, "BadRequest", "no Kubernetes cluster selected: the certificate names none and the cluster "
                "does not serve exactly one (run 'tpemu kube login NAME')"))
            return
        dialer = self._dialer()
        request = DialRequest(conn_type=KUBE, name=cluster, identity=identity.to_json(),
                              client_src_addr=format_addr(acc.peer), client_dst_addr=format_addr(acc.local_addr()))
        agent: asyncio.Transport | None = None
        try:
            if dialer is None:
                raise LookupError("no agent is connected to this proxy (no reverse tunnels)")
            agent = await dialer.dial(request, timeout=self.dial_timeout)
        except Exception as exc:  # the tunnel registry's errors (TunnelError, timeouts) end here
            if "not found" in str(exc) and await self._relay_direct(acc, reader, writer, cluster, identity):
                return
            if agent is None:
                self.stats["unavailable"] += 1
                message = f'kubernetes cluster "{cluster}" is unavailable: {exc}'
                self.limiter.warning(log, "kube-dial", "%s: %s", acc.ctx, message)
                code, reason = (404, "NotFound") if "not found" in str(exc) else (503, "ServiceUnavailable")
                await self._answer(acc, reader, writer, status(code, reason, message))
                return
        self.stats["relayed"] += 1
        log.info("%s: user %s → kubernetes cluster %s through its agent", acc.ctx, identity.username, cluster)

        def closed(pipe: Pipe, exc: BaseException | None) -> None:
            log.debug("%s: kubernetes cluster %s closed; %d bytes up, %d down", acc.ctx, cluster, pipe.a_to_b,
                      pipe.b_to_a)

        Pipe.join(park_streams(reader, writer), agent, on_close=closed)  # the tunnel channel: no socket

    async def _relay_direct(self, acc: Accepted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            cluster: str, identity: ident.Identity) -> bool:
        """A Kubernetes Service joined directly to Auth, reached as Teleport 17's proxy reaches it
        (``lib/kube/proxy/transport.go`` ``newLocalClusterTransport``): the proxy reads the user's
        requests and sends each over mTLS with its *own* host certificate to the address of the
        cluster's ``kube_server`` resource, naming the user in ``Teleport-Impersonate-User`` (the
        identity as JSON) and ``Teleport-Impersonate-IP`` (``lib/kube/internal/http.go``
        ``ImpersonatorRoundTripper``); the client's own headers of those names are dropped.
        (Teleport before 15 had the proxy ask Auth for a user certificate per user for this hop,
        ``ProcessKubeCSR`` in ``lib/auth/kube.go``.) Returns whether such a service exists (the
        relay then ran to the end of the client's connection)."""
        got = self._direct() if self._direct is not None else None
        if got is None:
            return False
        auth, files = got
        try:
            data = await auth.call("GET", "/v1/kube_servers")
        except authapi.AuthAPIError as exc:
            log.debug("kube: listing kube_servers failed: %s", exc.message)
            return False
        items = data.get("items") if isinstance(data, dict) else None
        addrs = [Addr.parse(str((i.get("spec") or {}).get("addr")), default_port=3026) for i in items or []
                 if isinstance(i, dict) and (i.get("metadata") or {}).get("name") == cluster
                 and (i.get("spec") or {}).get("addr") and not (i.get("spec") or {}).get("use_tunnel")]
        if not addrs:
            return False
        ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(files.ca))
        ctx.load_cert_chain(files.cert, files.key)
        ctx.set_alpn_protocols([alpn.HTTP11])
        # The Kubernetes Service's host certificate names *.teleport.cluster.local.
        upstreams = [RemoteAPI(cluster, Upstream(a.host, a.port, f"kube.{alpn.INTERNAL_DOMAIN}", ctx)) for a in addrs]
        forwarded = json.dumps(identity.to_json(), separators=(",", ":"))
        source = format_addr(acc.peer)
        self.stats["relayed"] += 1
        log.info("%s: user %s → kubernetes cluster %s, served directly at %s", acc.ctx, identity.username, cluster,
                 ", ".join(str(a) for a in addrs))

        async def handle(request: khttp.Request) -> khttp.Reply | khttp.Streamed | khttp.Upgraded:
            for name in (FORWARDED_USER, FORWARDED_IP):
                request.headers.pop(name, None)
                request.multi.pop(name, None)
            request.headers[FORWARDED_USER] = forwarded
            request.headers[FORWARDED_IP] = source
            failure = StatusError(503, f'kubernetes cluster "{cluster}" is unavailable', "ServiceUnavailable")
            for upstream in upstreams:  # the next one only when this one cannot be reached
                try:
                    return await upstream.handle(request)
                except StatusError as exc:
                    if exc.code != 503:
                        return khttp.Reply(exc.code, exc.body())
                    failure = exc
                    self.limiter.warning(log, "kube-direct", "%s: %s", acc.ctx, exc.message)
            return khttp.Reply(failure.code, failure.body())

        await khttp.serve(reader, writer, handle, lambda code, message: khttp.Reply(
            code, StatusError(code, message).body()), peer=source)
        return True

    def _only_cluster(self) -> str:
        dialer = self._dialer()
        if dialer is None:
            return ""
        names = {r.name for _, r in dialer.resources(KUBE)}
        return names.pop() if len(names) == 1 else ""

    async def _answer(self, acc: Accepted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      response: Response) -> None:
        async def app(request: Request) -> Response:
            return response

        await serve_http(reader, writer, app, peer=format_addr(acc.peer), read_timeout=10, max_requests=1)
