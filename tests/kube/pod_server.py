"""The emulated Kubernetes API served on a loopback port as an admin, with one pod created and Running:
what the exec and port-forward tests (``test_exec.py``, ``test_portforward.py``) talk to."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from tpemu.agent.kube import controller
from tpemu.agent.kube.api import EmulatedAPI, status_reply
from tpemu.net import kube_http as khttp
from tpemu.net.kube_status import StatusError


@contextlib.asynccontextmanager
async def serve_with_running_pod(api: EmulatedAPI, pod: dict[str, Any]) -> AsyncIterator[tuple[str, int]]:
    """Serve ``api`` on 127.0.0.1 (its address is yielded) with ``pod`` created in ``default`` and
    ``Running``; closes the server and ``api`` at the end.

    Every request is made as user ``admin`` in group ``system:masters`` (the Kubernetes Service's
    impersonation headers), or in the group a request names in ``X-Test-Group``. The controller
    starts pods after 0.01 s instead of :data:`~tpemu.agent.kube.controller.START_DELAY` meanwhile.
    """
    delay, controller.START_DELAY = controller.START_DELAY, 0.01

    async def handle(request: khttp.Request) -> khttp.Reply | khttp.Streamed | khttp.Upgraded:
        request.headers["impersonate-user"] = "admin"
        request.multi["impersonate-group"] = [request.headers.get("x-test-group", "system:masters")]
        return await api.handle(request)

    srv = await asyncio.start_server(lambda r, w: khttp.serve(r, w, handle, lambda c, m: status_reply(
        StatusError(c, m))), "127.0.0.1", 0)
    try:
        addr = srv.sockets[0].getsockname()[:2]
        reader, writer = await asyncio.open_connection(*addr)
        body = json.dumps(pod).encode()
        writer.write(b"POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert (await reader.read()).startswith(b"HTTP/1.1 201")
        writer.close()
        name = pod["metadata"]["name"]
        async with asyncio.timeout(5):
            while (api.store.get("pods", "default", name) or {})["status"]["phase"] != "Running":
                await asyncio.sleep(0.01)
        yield addr
    finally:
        srv.close()
        api.close()
        controller.START_DELAY = delay
