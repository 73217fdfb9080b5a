"""``kubectl port-forward`` to an emulated pod: the upgrade, the stream pairs, the pod's ports (glue).

**The request** (``/api/v1/namespaces/<ns>/pods/<name>/portforward``) comes two ways from kubectl
1.32 (client-go ``tools/portforward``: ``NewFallbackDialer(tunnelingDialer, spdyDialer)``):

* a WebSocket ``GET`` offering ``SPDY/3.1+portforward.k8s.io`` (feature PortForwardWebsockets, on
  since 1.31): answered ``101`` with that sub-protocol and SPDY inside the binary messages, as the
  API server's ``util/proxy/streamtunnel.go`` ``TunnelingHandler`` does; a WebSocket offering no
  such protocol gets its ``400 unable to upgrade: no tunneling spdy protocols provided``;
* the fallback, ``POST`` with ``Upgrade: SPDY/3.1`` and ``X-Stream-Protocol-Version:
  portforward.k8s.io``: ``httpstream.Handshake`` (``403`` "unable to negotiate protocol" with
  ``X-Accepted-Stream-Protocol-Versions`` when no version matches, ``400`` when none is sent) and
  ``spdy.responseUpgrader`` (``400`` "missing upgrade headers"), then ``101`` with
  ``Upgrade: SPDY/3.1``.

These refusals are plain text, as ``http.Error`` writes them; client-go shows them after
"unable to upgrade connection: ".

**The streams** are the kubelet's (``pkg/kubelet/cri/streaming/portforward/httpstream.go``): each
forwarded TCP connection is a pair, an *error* and a *data* stream with the headers ``port``,
``streamType`` and ``requestID``; a stream without a valid ``port`` or ``streamType`` is refused
with the kubelet's message; a pair not complete within :data:`STREAM_CREATION_TIMEOUT` gets
"timed out waiting for streams" on its error stream. A complete pair dials the pod's port; the
outcome of a failure is written to the error stream as "error forwarding port P to pod <sandbox>,
uid : …" with containerd's own text (``internal/cri/server/sandbox_portforward_linux.go``:
"failed to execute portforward in network namespace …: failed to connect to localhost:P inside
namespace …, IPv4: … IPv6 … "), which kubectl prints as "an error occurred forwarding L -> P: …"
and then ends ("lost connection to pod"). Data is copied both ways; when one way ends the other
has a second to finish (containerd's grace), then both streams are closed.

**The pod's ports.** An emulated pod runs no process: its port P is a real listener on the agent's
host that ``tpemu.kubernetes_service.pod_ports`` names (loopback only, 127.0.0.0/8), chosen by port,
namespace and pod labels (:func:`pod_target`). A port no entry names is a port nothing listens
on: the refusal above, with "connect: connection refused".

**Teleport's forwarder** (``lib/kube/proxy/forwarder.go`` ``portForward``, ``portforward.go``) emits
a ``port_forward`` audit event per stream pair (``addr`` = ``<pod>:<port>``, success or
``port_forward.failure``); here it is an INFO log line with the same fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errnos
import hashlib
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tpemu.agent.kube.spdy_session import RawChannel, Session, Stream, TunnelChannel
from tpemu.config import Addr, PodPort
from tpemu.errors import PeerFault
from tpemu.net.kube_http import Reply, Request, Upgraded, switch_protocols
from tpemu.wire import websocket as wsf

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
#: client-go's ``constants.WebsocketsSPDYTunnelingPrefix``.
TUNNEL_PREFIX = "SPDY/3.1+"
SPDY31 = "SPDY/3.1"
#: The kubelet's streamCreationTimeout (``DefaultStreamCreationTimeout``).
STREAM_CREATION_TIMEOUT = 30.0
#: The kubelet's ``--streaming-connection-idle-timeout`` default (4 h): a session with no frame in
#: that long ends (kubectl pings every 5 s over SPDY and 10 s through the tunnel).
IDLE_TIMEOUT = 4 * 3600.0
CONNECT_TIMEOUT = 5.0
#: containerd: when one direction ends, the other has this long to finish.
CLOSE_GRACE = 1.0


def _plain(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    """What Go's ``http.Error`` writes."""
    return Reply(status, (message + "\n").encode(), "text/plain; charset=utf-8",
                 [("X-Content-Type-Options", "nosniff"), *headers])


def _values(request: Request, name: str) -> list[str]:
    return [p.strip() for v in request.multi.get(name, []) for p in v.split(",") if p.strip()]


def _go_header(request: Request) -> str:
    # %#v of an http.Header, near enough for a human: http.Header{"Name":[]string{"v"}, …}.
    items = ", ".join(f'"{"-".join(w.capitalize() for w in k.split("-"))}":[]string{{'
                      + ", ".join(f'"{v}"' for v in vs) + "}" for k, vs in sorted(request.multi.items()))
    return "http.Header{" + items + "}"


def pod_target(pod_ports: Sequence[PodPort], pod: Mapping[str, Any], port: int) -> Addr | None:
    """The listener that serves ``port`` of ``pod`` (the first matching entry), or ``None``."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    for entry in pod_ports:
        if entry.port != port or (entry.namespace and entry.namespace != meta.get("namespace")):
            continue
        if all(labels.get(k) == v for k, v in entry.pod_labels.items()):
            return entry.target
    return None


def sandbox_id(pod: Mapping[str, Any]) -> str:
    """The pod's sandbox id as containerd names it (64 hex digits), stable for the pod's uid."""
    return hashlib.sha256(str((pod.get("metadata") or {}).get("uid", "")).encode()).hexdigest()


def _netns(sandbox: str) -> str:
    return f"/var/run/netns/cni-{uuid.UUID(sandbox[:32])}"


def _go_dial_error(network: str, addr: str, exc: BaseException) -> str:
    """Go's ``net.Dial`` error text: ``dial tcp4 127.0.0.1:80: connect: connection refused``."""
    if isinstance(exc, TimeoutError):
        return f"dial {network} {addr}: i/o timeout"
    code = getattr(exc, "errno", None)
    text = os.strerror(code) if isinstance(code, int) else str(exc)
    if code == errnos.ECONNREFUSED:
        text = "connection refused"
    return f"dial {network} {addr}: connect: {text[:1].lower() + text[1:]}"


class UpgradeRefused(PeerFault):
    """The request cannot be upgraded: ``reply`` says why, in the protocol's own words."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.body.decode(errors="replace").strip())
        self.reply = reply


def negotiate(request: Request) -> tuple[bool, list[tuple[str, str]]]:
    """Which upgrade a port-forward request asks for: ``(tunnelled, 101 headers)``; raises
    :class:`UpgradeRefused` with the API server's / kubelet's answer when it cannot be served."""
    upgrade = request.headers.get("upgrade", "").lower()
    connection = request.headers.get("connection", "").lower()
    if upgrade == "websocket" and "upgrade" in connection:
        offered = _values(request, "sec-websocket-protocol")
        spdy_protocols = [p.removeprefix(TUNNEL_PREFIX) for p in offered
                          if p.startswith(TUNNEL_PREFIX) and p.endswith(".k8s.io")]
        key = request.headers.get("sec-websocket-key", "")
        if not spdy_protocols:
            raise UpgradeRefused(_plain(400, "unable to upgrade: no tunneling spdy protocols provided"))
        if not key or request.headers.get("sec-websocket-version", "") != "13":
            raise UpgradeRefused(_plain(400, "Bad Request: websocket: not a websocket handshake: "
                                             "'Sec-WebSocket-Key' or 'Sec-WebSocket-Version' missing or wrong"))
        _handshake(spdy_protocols)
        return True, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                      ("Sec-WebSocket-Accept", wsf.accept_key(key)),
                      ("Sec-WebSocket-Protocol", TUNNEL_PREFIX + PROTOCOL)]
    _handshake(_values(request, "x-stream-protocol-version"))
    if "upgrade" not in connection or SPDY31.lower() not in upgrade:
        raise UpgradeRefused(_plain(400, f"unable to upgrade: missing upgrade headers in request: "
                                         f"{_go_header(request)}"))
    return False, [("Connection", "Upgrade"), ("Upgrade", SPDY31), ("X-Stream-Protocol-Version", PROTOCOL)]


def _handshake(client: list[str]) -> None:
    # apimachinery httpstream.Handshake.
    if not client:
        raise UpgradeRefused(_plain(400, "unable to upgrade: X-Stream-Protocol-Version is required"))
    if PROTOCOL not in client:
        raise UpgradeRefused(_plain(403, f"unable to upgrade: unable to negotiate protocol: client supports "
                                         f"[{' '.join(client)}], server accepts [{PROTOCOL}]",
                                    [("X-Accepted-Stream-Protocol-Versions", PROTOCOL)]))


@dataclass
class _Pair:
    request_id: str
    data: Stream | None = None
    error: Stream | None = None
    complete: asyncio.Event = field(default_factory=asyncio.Event)


class PortForward:
    """One upgraded port-forward connection to one pod."""

    def __init__(self, pod: Mapping[str, Any], pod_ports: Sequence[PodPort], user: str, peer: str = "") -> None:
        meta = pod.get("metadata") or {}
        self.pod_name = str(meta.get("name", ""))
        self.namespace = str(meta.get("namespace", ""))
        self.pod = pod
        self.pod_ports = pod_ports
        self.user = user
        self.sandbox = sandbox_id(pod)
        self.name = f"{self.namespace}/{self.pod_name} user={user}" + (f" peer={peer}" if peer else "")
        self._pairs: dict[str, _Pair] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, request: Request, tunnelled: bool, headers: list[tuple[str, str]]) -> Upgraded:
        assert request.reader is not None and request.writer is not None
        await switch_protocols(request, headers)
        channel = (TunnelChannel if tunnelled else RawChannel)(request.reader, request.writer, request.leftover)
        session = Session(channel, self._accept, self._accepted, IDLE_TIMEOUT, self.name)
        log.info("kube port-forward %s: %s session started", self.name, "WebSocket-tunnelled SPDY" if tunnelled
                 else "SPDY")
        why = await session.run()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("kube port-forward %s: session ended: %s", self.name, why)
        return Upgraded()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the kubelet's httpStreamReceived and run loop --

    @staticmethod
    def _accept(stream: Stream) -> str | None:
        port = stream.header("port")
        if not port:
            return '"port" header is required'
        if not port.isdigit() or int(port) > 65535:
            return f'unable to parse "{port}" as a port: strconv.ParseUint: parsing "{port}": invalid syntax'
        if int(port) < 1:
            return f'port "{port}" must be > 0'
        kind = stream.header("streamtype")
        if not kind:
            return '"streamType" header is required'
        if kind not in ("error", "data"):
            return f'invalid stream type "{kind}"'
        return None

    def _accepted(self, stream: Stream) -> None:
        request_id = stream.header("requestid")
        kind = stream.header("streamtype")
        if not request_id:  # an old client: the kubelet derives an id from the stream id
            request_id = str(stream.id if kind == "error" else stream.id - 2)
        pair = self._pairs.get(request_id)
        if pair is None:
            pair = self._pairs[request_id] = _Pair(request_id)
            self._spawn(self._monitor(pair))
        if getattr(pair, kind) is not None:
            message = f"error processing stream for request {request_id}: {kind} stream already assigned"
            log.warning("kube port-forward %s: %s", self.name, message)
            if pair.error is not None:
                self._spawn(self._print(pair.error, message))
            return
        setattr(pair, kind, stream)
        if pair.data is not None and pair.error is not None:
            pair.complete.set()
            self._spawn(self._forward(pair))

    async def _monitor(self, pair: _Pair) -> None:
        try:
            await asyncio.wait_for(pair.complete.wait(), STREAM_CREATION_TIMEOUT)
        except TimeoutError:
            message = f"(conn={self.name}, request={pair.request_id}) timed out waiting for streams"
            log.warning("kube port-forward %s: %s", self.name, message)
            if pair.error is not None:
                await self._print(pair.error, message)
        finally:
            self._pairs.pop(pair.request_id, None)

    @staticmethod
    async def _print(stream: Stream, message: str) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await stream.write(message.encode())

    # -- the kubelet's portForward and containerd's PortForward --

    async def _forward(self, pair: _Pair) -> None:
        data, error = pair.data, pair.error
        assert data is not None and error is not None
        port = int(data.header("port"))
        addr = f"{self.pod_name}:{port}"
        try:
            failure = await self._port_forward(port, data)
        except asyncio.CancelledError:
            failure = None
            raise
        finally:
            if failure is not None:
                message = f"error forwarding port {port} to pod {self.sandbox}, uid : {failure}"
                log.info("kube port-forward %s: port_forward.failure addr=%s: %s", self.name, addr, failure)
                await self._print(error, message)
            data.close()
            error.close()

    async def _port_forward(self, port: int, data: Stream) -> str | None:
        """Forward one connection; returns containerd's error text, or ``None``."""
        target = pod_target(self.pod_ports, self.pod, port)
        local = f"127.0.0.1:{port}"
        try:
            if target is None:
                raise ConnectionRefusedError(errnos.ECONNREFUSED, os.strerror(errnos.ECONNREFUSED))
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(target.host, target.port)
        except (OSError, TimeoutError) as exc:
            v4 = _go_dial_error("tcp4", local, exc)
            v6 = _go_dial_error("tcp6", f"[::1]:{port}", exc)
            return (f'failed to execute portforward in network namespace "{_netns(self.sandbox)}": failed to connect '
                    f'to localhost:{port} inside namespace "{self.sandbox}", IPv4: {v4} IPv6 {v6} ')
        log.info("kube port-forward %s: port_forward addr=%s%s → %s", self.name, self.pod_name, f":{port}", target)

        async def to_client() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while True:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        chunk = await reader.read(32 * 1024)
                    if not chunk:
                        break
                    await data.write(chunk)

        async def to_pod() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while chunk := await data.read(IDLE_TIMEOUT):
                    writer.write(chunk)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()

        loop = asyncio.get_running_loop()
        tasks = {loop.create_task(to_client()), loop.create_task(to_pod())}
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                await asyncio.wait(pending, timeout=CLOSE_GRACE)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError, ConnectionError, OSError):
                    await task
            writer.close()
            with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        return None
