"""Pass-through routes: splice the client's untouched bytes, from byte 0, to a backend (glue).

The backend is dialled first while the client's bytes wait in the kernel (natural
backpressure); then the client socket becomes an asyncio transport and the two are spliced
(:class:`tpemu.net.pipe.Pipe`). With ``send_proxy`` the backend first gets a PROXY v1/v2 header
naming the real client, as HAProxy's ``send-proxy`` does.
"""

from __future__ import annotations

import asyncio
import logging

from tpemu.net.pipe import Parked, Pipe
from tpemu.net.sockets import close_with_answer
from tpemu.proxy.frontdoor import Accepted, Stats
from tpemu.wire import proxy_protocol

log = logging.getLogger(__name__)


class _Expiry:
    """A connect deadline that costs one timer, not an ``asyncio.timeout`` context per dial."""

    __slots__ = ("expired", "task")

    def __init__(self, task: asyncio.Task[object] | None) -> None:
        self.task = task
        self.expired = False

    def __call__(self) -> None:
        self.expired = True
        if self.task is not None:
            self.task.cancel()


async def splice_to_target(acc: Accepted, connect_timeout: float = 10.0, stats: Stats | None = None,
                           loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Connect to ``acc.route.target`` and splice; logs a clear line if the backend is down.

    Returns as soon as the two sides are spliced: the connection then lives on in its two
    transports and protocols alone (no task waits for it, which halves the memory an idle routed
    connection costs); its end is logged from the splice's close callback.
    """
    route = acc.route
    assert route.target is not None
    if loop is None:
        loop = asyncio.get_running_loop()

    def on_close(pipe: Pipe, exc: BaseException | None) -> None:
        if stats is not None:
            stats.spliced -= 1
            stats.bytes[(route.name, "in")] += pipe.a_to_b
            stats.bytes[(route.name, "out")] += pipe.b_to_a
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: closed; %d bytes client→backend, %d bytes backend→client", acc.ctx, pipe.a_to_b,
                      pipe.b_to_a)

    # The header is built before the dial: nothing about the client can fail once a backend
    # socket exists (an IPv6 client on an IPv4 listener once raised here and leaked the socket).
    header = b""
    if route.send_proxy:
        header = proxy_protocol.encode_for_backend(route.send_proxy, acc.peer, acc.local_addr())
    expiry = _Expiry(asyncio.current_task(loop))
    timer = loop.call_later(connect_timeout, expiry)
    try:
        backend, _ = await loop.create_connection(Parked, route.target.host, route.target.port)
    except asyncio.CancelledError:
        if not expiry.expired:
            raise
        log.warning("%s: backend %s unreachable: connect timed out after %gs", acc.ctx, route.target,
                    connect_timeout)
        close_with_answer(acc.sock)
        return
    except OSError as exc:
        log.warning("%s: backend %s unreachable: %s", acc.ctx, route.target, exc.strerror or exc)
        close_with_answer(acc.sock)
        return
    finally:
        timer.cancel()
    if expiry.expired:  # the deadline fired just as the connect completed: treat it as expired
        log.warning("%s: backend %s connected too late (after %gs)", acc.ctx, route.target, connect_timeout)
        backend.close()
        close_with_answer(acc.sock)
        return
    try:
        client, _ = await loop.connect_accepted_socket(Parked, acc.sock)
    except OSError as exc:
        log.warning("%s: client socket unusable: %s", acc.ctx, exc)
        backend.close()
        return
    if stats is not None:
        stats.spliced += 1
    Pipe.join(client, backend, first_to_b=header, on_close=on_close)
