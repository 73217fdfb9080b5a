"""Pass-through routes: splice the client's untouched bytes, from byte 0, to a backend (glue).

The backend is dialled first while the client's bytes wait in the kernel (natural
backpressure); then the client socket becomes an asyncio transport and the two are spliced
(:mod:`tpemu.net.splice`). With ``send_proxy`` the backend first gets a PROXY v1/v2 header
naming the real client, as HAProxy's ``send-proxy`` does.
"""

from __future__ import annotations

import asyncio
import logging

from tpemu.net.sockets import close_with_answer
from tpemu.net.splice import Splice
from tpemu.proxy.frontdoor import Accepted
from tpemu.wire import proxy_protocol

log = logging.getLogger(__name__)


async def splice_to_target(acc: Accepted, connect_timeout: float = 10.0) -> None:
    """Connect to ``acc.route.target`` and splice; logs a clear line if the backend is down."""
    route = acc.route
    assert route.target is not None
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def on_close(splice: Splice, exc: Exception | None) -> None:
        if not done.done():
            done.set_result(None)

    splice = Splice(on_close)
    try:
        async with asyncio.timeout(connect_timeout):
            await loop.create_connection(splice.protocol_b, route.target.host, route.target.port)
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        log.warning("%s: backend %s unreachable: %s", acc.ctx, route.target, reason)
        close_with_answer(acc.sock)
        return
    header = b""
    if route.send_proxy:
        encode = proxy_protocol.encode_v1 if route.send_proxy == "v1" else proxy_protocol.encode_v2
        header = encode(acc.peer, acc.local)
    try:
        await loop.connect_accepted_socket(splice.protocol_a, acc.sock)
    except OSError as exc:
        log.warning("%s: client socket unusable: %s", acc.ctx, exc)
        splice.close()
        return
    splice.attach(header)
    await done
    log.debug("%s: closed; %d bytes client→backend, %d bytes backend→client", acc.ctx,
              splice.bytes_a_to_b, splice.bytes_b_to_a)
