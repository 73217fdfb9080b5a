"""Pass-through routes: splice the client's untouched bytes, from byte 0, to a backend (glue).

The backend is dialled first while the client's bytes wait in the kernel (natural
backpressure), straight into side ``b`` of a :class:`tpemu.net.pipe.Pipe`; then the client
socket becomes a transport straight into side ``a`` (no parking, no hand-over: the pipe keeps
whatever the backend says before the client side exists). With ``send_proxy`` the backend
first gets a PROXY v1/v2 header naming the real client, as HAProxy's ``send-proxy`` does, in
the same write as the client's first bytes (a pass-through route is chosen from those bytes,
which wait in the kernel, so the header never waits for the client; no server-first listener
routes to pass-through).
"""

from __future__ import annotations

import _socket
import asyncio
import logging
import socket

from tpemu.net.pipe import Pipe
from tpemu.net.sockets import close_with_answer
from tpemu.proxy.frontdoor import Accepted, Stats
from tpemu.wire import proxy_protocol

log = logging.getLogger(__name__)


#: How often the connect deadlines of the dials in flight are checked: a deadline fires up to
#: this much late.
DEADLINE_TICK = 0.1


class _Expiry:
    """A dial's connect deadline: cancels the dialling task (not an ``asyncio.timeout`` context
    per dial, nor a timer of its own: see :class:`_Deadlines`)."""

    __slots__ = ("expired", "task")

    def __init__(self, task: asyncio.Task[object] | None) -> None:
        self.task = task
        self.expired = False

    def __call__(self) -> None:
        self.expired = True
        if self.task is not None:
            self.task.cancel()


class _Deadlines:
    """The connect deadlines of the dials in flight on one loop, checked every
    :data:`DEADLINE_TICK` by one timer while any is pending: a dial costs a dict entry instead of
    a timer of its own and its cancel (~2 µs, a few per cent of a pass-through connection's
    interpreter time)."""

    __slots__ = ("loop", "pending", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[_Expiry, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def add(self, expiry: _Expiry, seconds: float) -> None:
        self.pending[expiry] = self.loop.time() + seconds
        if self.timer is None:
            self.timer = self.loop.call_later(DEADLINE_TICK, self._sweep)

    def _sweep(self) -> None:
        self.timer = None
        now = self.loop.time()
        for expiry in [e for e, due in self.pending.items() if due <= now]:
            del self.pending[expiry]
            expiry()
        if self.pending:
            self.timer = self.loop.call_later(DEADLINE_TICK, self._sweep)


#: The deadlines of the loop that dialled last (one loop per process outside tests; a loop's
#: pending deadlines stay swept by their own timer when another loop takes this place).
_deadlines: _Deadlines | None = None


def _deadlines_of(loop: asyncio.AbstractEventLoop) -> _Deadlines:
    global _deadlines
    d = _deadlines
    if d is None or d.loop is not loop:
        d = _deadlines = _Deadlines(loop)
    return d


_UVLoop: type[asyncio.AbstractEventLoop] | None
try:
    import uvloop

    _UVLoop = uvloop.Loop
except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio's loop works too
    _UVLoop = None

#: The C socket type's own ``family``/``type`` getters: plain ints, no enum conversion.
_FAMILY = _socket.socket.family.__get__
_TYPE = _socket.socket.type.__get__
#: The C ``detach`` (``socket.socket.detach`` is a Python wrapper that also sets ``_closed``).
_DETACH = _socket.socket.detach


class _Handed:
    """The accepted socket as uvloop's ``loop.connect_accepted_socket`` is given it.

    (The same as :class:`tpemu.net.sockets.Handed`, which the TLS routes use: to be replaced by
    ``handed_to`` once the pass-through rework of issue 13k has landed, to spare it a conflict.)

    uvloop reads ``type`` once and ``family`` twice — on a ``socket.socket`` each is an IntEnum
    conversion, ~0.7 µs in Python 3.11, ~2 µs per connection — then ``fileno()``, and calls
    ``close()`` once its transport has closed the descriptor. This answers with plain ints and,
    on that close, detaches the Python socket (what uvloop does with a real one), so that the
    number is never closed twice. Until then the Python socket owns the descriptor as before.
    (asyncio's own loop gets the socket itself: its transport reads and writes through it.)
    """

    __slots__ = ("family", "sock", "type")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.family: int = _FAMILY(sock)
        self.type: int = _TYPE(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        sock = self.sock
        sock._closed = True  # type: ignore[attr-defined]  # (what socket.socket.detach does first)
        _DETACH(sock)


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
    pipe = Pipe(on_close, first_to_b=header)
    expiry = _Expiry(asyncio.current_task(loop))
    deadlines = _deadlines_of(loop)
    deadlines.add(expiry, connect_timeout)
    try:
        backend, _ = await loop.create_connection(pipe.b, route.target.host, route.target.port)
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
        deadlines.pending.pop(expiry, None)
    if expiry.expired:  # the deadline fired just as the connect completed: treat it as expired
        log.warning("%s: backend %s connected too late (after %gs)", acc.ctx, route.target, connect_timeout)
        backend.close()
        close_with_answer(acc.sock)
        return
    if stats is not None:
        stats.spliced += 1  # on_close takes it back once the client side has been made
    try:
        handed = _Handed(acc.sock) if type(loop) is _UVLoop else acc.sock
        await loop.connect_accepted_socket(pipe.a, handed)  # type: ignore[arg-type]
    except BaseException as exc:
        if pipe.a.transport is None:  # never made: on_close cannot come
            if stats is not None:
                stats.spliced -= 1
            backend.close()
            try:
                acc.sock.close()  # (detached already if the loop took the descriptor)
            except OSError:
                pass
        if not isinstance(exc, OSError):
            raise
        log.warning("%s: client socket unusable: %s", acc.ctx, exc)
