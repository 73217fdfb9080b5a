"""A toxiproxy-compatible HTTP API over :class:`~tpemu.faults.engine.FaultProxy` s (glue).

The shape of Shopify/toxiproxy's ``api.go`` (so its clients, e.g. the ``toxiproxy-python``
package, drive it unchanged), on toxiproxy's port 8474 by default:

==========================================  =====================================================
``GET /version``                            the version, as text
``POST /reset``                             every proxy enabled, every toxic removed (204)
``GET /proxies``                            ``{name: proxy}``
``POST /proxies``                           create ``{name, listen, upstream, enabled}`` (201; 409)
``POST /populate``                          create or replace a list of proxies (201)
``GET|POST|PATCH|DELETE /proxies/{name}``   read, update (enabled/listen/upstream), delete (204)
``GET|POST /proxies/{name}/toxics``         list, add a toxic (200; 409 if the name is taken)
``GET|POST|PATCH|DELETE …/toxics/{toxic}``  read, update (toxicity/attributes), delete (204)
==========================================  =====================================================

Errors are toxiproxy's ``{"error": "...", "status": N}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from tpemu.faults.engine import FaultProxy
from tpemu.faults.toxics import ToxicError, parse_toxic, update_toxic
from tpemu.net.http_server import HTTPError, Request, Response, serve_http

log = logging.getLogger(__name__)

#: The toxiproxy API version this follows.
VERSION = "2.9.0"
DEFAULT_PORT = 8474


def _err(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": message, "status": status}).encode() + b"\n",
                    [("Content-Type", "application/json")])


def _ok(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj).encode() + b"\n", [("Content-Type", "application/json")])


class FaultAPI:
    """The proxies and the HTTP API that manages them."""

    def __init__(self) -> None:
        self.proxies: dict[str, FaultProxy] = {}
        self._server: asyncio.Server | None = None
        self.addr = ""

    async def add_proxy(self, name: str, listen: str, upstream: str, enabled: bool = True) -> FaultProxy:
        proxy = FaultProxy(name, listen, upstream, enabled)
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    async def serve(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> str:
        """Listen for API requests; returns ``host:port`` as bound."""
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            await serve_http(reader, writer, self, peer=f"{peer[0]}:{peer[1]}" if peer else "-",
                             server_header="toxiproxy (tpemu)")

        self._server = await asyncio.start_server(on_conn, host, port)
        bound = self._server.sockets[0].getsockname()
        self.addr = f"{bound[0]}:{bound[1]}"
        log.info("fault API (toxiproxy-compatible) on http://%s", self.addr)
        return self.addr

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for proxy in self.proxies.values():
            await proxy.stop()

    async def __call__(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        method = request.method
        try:
            return await self._route(method, parts, request)
        except (ToxicError, ValueError) as exc:
            return _err(400, str(exc))
        except OSError as exc:
            return _err(500, f"cannot listen: {exc.strerror or exc}")

    async def _route(self, method: str, parts: list[str], request: Request) -> Response:
        match (method, parts):
            case ("GET", ["version"]):
                return Response.text(VERSION)
            case ("POST", ["reset"]):
                for proxy in self.proxies.values():
                    proxy.toxics.clear()
                    await proxy.set_enabled(True)
                    await proxy.notify()
                return Response(204)
            case ("GET", ["proxies"]):
                return _ok({n: p.to_json() for n, p in self.proxies.items()})
            case ("POST", ["proxies"]):
                body = self._object(request)
                name, upstream = body.get("name"), body.get("upstream")
                if not isinstance(name, str) or not name or not isinstance(upstream, str):
                    return _err(400, "missing required field: name and upstream")
                if name in self.proxies:
                    return _err(409, "proxy already exists")
                proxy = await self.add_proxy(name, str(body.get("listen") or "127.0.0.1:0"), upstream,
                                             bool(body.get("enabled", True)))
                return _ok(proxy.to_json(), 201)
            case ("POST", ["populate"]):
                items = request.json()
                if not isinstance(items, list):
                    return _err(400, "populate expects a list of proxies")
                made = []
                for item in items:
                    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                        return _err(400, "each proxy needs a name")
                    old = self.proxies.pop(item["name"], None)
                    if old is not None:
                        await old.stop()
                    made.append((await self.add_proxy(item["name"], str(item.get("listen") or "127.0.0.1:0"),
                                                      str(item.get("upstream") or ""),
                                                      bool(item.get("enabled", True)))).to_json())
                return _ok({"proxies": made}, 201)
        if len(parts) < 2 or parts[0] != "proxies":
            return _err(404, f"{request.path} not found")
        found = self.proxies.get(parts[1])
        if found is None:
            return _err(404, "proxy not found")
        return await self._proxy_route(method, parts[2:], found, request)

    async def _proxy_route(self, method: str, rest: list[str], proxy: FaultProxy, request: Request) -> Response:
        match (method, rest):
            case ("GET", []):
                return _ok(proxy.to_json())
            case ("POST" | "PATCH", []):
                body = self._object(request)
                if "upstream" in body:
                    proxy.upstream = str(body["upstream"])
                if "listen" in body and str(body["listen"]) != proxy.listen:
                    was = proxy.enabled
                    await proxy.set_enabled(False)
                    proxy.listen = str(body["listen"])
                    await proxy.set_enabled(was)
                if "enabled" in body:
                    await proxy.set_enabled(bool(body["enabled"]))
                return _ok(proxy.to_json())
            case ("DELETE", []):
                await proxy.stop()
                del self.proxies[proxy.name]
                return Response(204)
            case ("GET", ["toxics"]):
                return _ok([t.to_json() for t in proxy.toxics.values()])
            case ("POST", ["toxics"]):
                toxic = parse_toxic(self._object(request))
                if toxic.name in proxy.toxics:
                    return _err(409, "toxic already exists")
                proxy.toxics[toxic.name] = toxic
                await proxy.notify()
                log.info("fault proxy %s: toxic %s added (%s, %s, toxicity %g, %s)", proxy.name, toxic.name,
                         toxic.type, toxic.stream, toxic.toxicity, toxic.attributes)
                return _ok(toxic.to_json())
        if len(rest) != 2 or rest[0] != "toxics":
            return _err(404, f"{request.path} not found")
        current = proxy.toxics.get(rest[1])
        if current is None:
            return _err(404, "toxic not found")
        match method:
            case "GET":
                return _ok(current.to_json())
            case "POST" | "PATCH":
                proxy.toxics[current.name] = update_toxic(current, self._object(request))
                await proxy.notify()
                return _ok(proxy.toxics[current.name].to_json())
            case "DELETE":
                del proxy.toxics[current.name]
                await proxy.notify()
                return Response(204)
        return _err(405, f"method {method} not allowed")

    @staticmethod
    def _object(request: Request) -> dict[str, Any]:
        try:
            body = request.json()
        except HTTPError as exc:
            raise ValueError(exc.message) from None
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        return body
