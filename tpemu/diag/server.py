"""The diagnostics HTTP server on ``teleport.diag_addr`` (plain HTTP, as Teleport's).

Endpoints, following Teleport's diagnostic service (``lib/service/service.go``,
``initDiagnosticService``; the shapes from ``lib/service/state.go``, ``readinessHandler``, and the
Health Monitoring guide):

* ``GET /healthz`` → 200 ``{"status": "ok"}`` while the process runs;
* ``GET /readyz`` → 200 ``{"status": "ok", "pid": N}`` when every component is up; 400
  ``{"status": "teleport is starting and hasn't joined the cluster yet", …}`` while an agent has
  not connected yet; 503 ``{"status": "teleport is in a degraded state, check logs for details"}``
  when a reverse tunnel that was up is down;
* ``GET /metrics`` → the Prometheus text exposition (:mod:`tpemu.diag.metrics`);
* ``GET /routing`` → the live routing page; ``/routing/events`` its server-sent events;
  ``/routing/state`` one JSON snapshot (:mod:`tpemu.diag.feed`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from importlib import resources
from typing import Any

from tpemu.config import Addr
from tpemu.diag.feed import DecisionFeed
from tpemu.diag.metrics import Sources, exposition, registry_for
from tpemu.net.http_server import Request, Response, serve_http
from tpemu.net.sockets import format_addr

log = logging.getLogger(__name__)

#: The text exposition format Prometheus 2.x scrapes (prometheus-client >= 0.22 defaults to its
#: 1.0.0 variant, the same text for tpemu's names, which older servers do not announce).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Open pages at once (each costs one batch task); more get a 503.
MAX_SUBSCRIBERS = 16

STARTING = "teleport is starting and hasn't joined the cluster yet"
DEGRADED = "teleport is in a degraded state, check logs for details"


def readiness(sources: Sources) -> tuple[int, str]:
    """Teleport's process state, reduced to what tpemu knows: (HTTP status, status text)."""
    for agent in sources.agents:
        for t in agent.tunnels:
            if not t.state.connected.is_set():
                return (503, DEGRADED) if t.state.connects else (400, STARTING)
    for proxy in sources.proxies:
        if not proxy.door.listeners:
            return 400, STARTING
    return 200, "ok"


class DiagServer:
    def __init__(self, sources: Sources, trace_path: str | None = None) -> None:
        self.sources = sources
        self.registry = registry_for(sources)
        self.trace_path = trace_path
        self.feed: DecisionFeed | None = None
        self.addr: Addr | None = None
        self._server: asyncio.Server | None = None
        self._page = resources.files("tpemu.diag").joinpath("routing.html").read_bytes()

    def attach_proxy(self, proxy: Any) -> None:
        """The proxy whose decisions the page and the trace show (the first one)."""
        if proxy not in self.sources.proxies:
            self.sources.proxies.append(proxy)
        if self.feed is None:
            self.feed = DecisionFeed(proxy, self.trace_path)

    async def start(self, addr: Addr) -> Addr:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            await serve_http(reader, writer, self.app, peer=format_addr(peer) if peer else "-", read_timeout=30.0,
                             max_body=4096)

        self._server = await asyncio.start_server(on_client, addr.host, addr.port)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.addr = Addr(host, port)
        log.info("diagnostics on http://%s (/metrics, /healthz, /readyz, /routing)", self.addr)
        return self.addr

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.feed is not None:
            self.feed.close()

    async def app(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response.error(405, f"{request.method} is not served here; the diagnostics are read-only")
        path = request.path
        if path == "/healthz":
            return Response.json({"status": "ok"})
        if path == "/readyz":
            status, text = readiness(self.sources)
            return Response.json({"status": text, "pid": os.getpid()}, status)
        if path == "/metrics":
            return Response(200, exposition(self.registry), [("Content-Type", CONTENT_TYPE)])
        if path in ("/routing", "/routing/"):
            return Response(200, self._page, [("Content-Type", "text/html; charset=utf-8")])
        if path == "/routing/state":
            if self.feed is None:
                return Response.error(404, "this process runs no proxy: nothing is routed here")
            recent = [self.feed.render(e) for e in list(self.feed.ring)[-50:]]
            return Response.json({"state": self.feed.state(), "connections": recent})
        if path == "/routing/events":
            return self._events()
        return Response.error(404, f"{path}: not found (try /metrics, /healthz, /readyz or /routing)")

    def _events(self) -> Response:
        feed = self.feed
        if feed is None:
            return Response.error(404, "this process runs no proxy: nothing is routed here")
        if feed.subscribers >= MAX_SUBSCRIBERS:
            return Response.error(503, f"{MAX_SUBSCRIBERS} routing pages are open already")

        async def stream(writer: asyncio.StreamWriter) -> None:
            async for batch in feed.batches():
                writer.write(b"data: " + json.dumps(batch, separators=(",", ":")).encode() + b"\n\n")
                await writer.drain()

        return Response(200, headers=[("Content-Type", "text/event-stream")], stream=stream)
