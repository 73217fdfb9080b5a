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

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any

from tpemu.net.pipe import Pipe
from tpemu.net.sockets import close_with_answer
from tpemu.proxy.frontdoor import Accepted, Stats
from tpemu.wire import proxy_protocol

log = logging.getLogger(__name__)


#: How often the connect deadlines of the dials in flight are checked: a deadline fires up to
#: this much late.
DEADLINE_TICK = 0.1


class _Expiry:
    """A dial's connect deadline: cancels what the dial awaits (its task; a :class:`_Driven`
    cancels the future it waits on). Not an ``asyncio.timeout`` context per dial, nor a timer
    of its own: see :class:`_Deadlines`."""

    __slots__ = ("expired", "task")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.expired = False

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def __call__(self) -> None:
        self.expired = True
        self.cancel()


class _Deadlines:
    """The connect deadlines of the dials in flight on one loop, checked every
    :data:`DEADLINE_TICK` by one timer while any is pending: a dial costs a dict entry instead of
    a timer of its own and its cancel (~2 µs, a few per cent of a pass-through connection's
    interpreter time). The same entries are what :func:`close_dials` cancels at shutdown."""

    __slots__ = ("drained", "loop", "pending", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[_Expiry, float] = {}
        self.timer: asyncio.TimerHandle | None = None
        #: Set by :func:`close_dials` while it waits for the cancelled dials to end.
        self.drained: asyncio.Future[None] | None = None

    def add(self, expiry: _Expiry, seconds: float) -> None:
        self.pending[expiry] = self.loop.time() + seconds
        if self.timer is None:
            self.timer = self.loop.call_later(DEADLINE_TICK, self._sweep)

    def remove(self, expiry: _Expiry) -> None:
        self.pending.pop(expiry, None)
        if self.drained is not None and not self.pending and not self.drained.done():
            self.drained.set_result(None)

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


async def close_dials(loop: asyncio.AbstractEventLoop | None) -> None:
    """Cancel the dials still in flight on ``loop`` (shutdown) and wait until they have ended
    (each closes its client). Dials run without a task (:func:`start_splice`), so the front
    door's own ``close`` does not see them."""
    d = _deadlines
    if loop is None or d is None or d.loop is not loop or not d.pending:
        return
    d.drained = loop.create_future()
    for expiry in list(d.pending):
        expiry.cancel()
    try:
        await asyncio.wait_for(asyncio.shield(d.drained), 5.0)
    except TimeoutError:
        log.warning("%d pass-through dials still pending after shutdown", len(d.pending))
    finally:
        d.drained = None


async def splice_to_target(acc: Accepted, connect_timeout: float = 10.0, stats: Stats | None = None,
                           loop: asyncio.AbstractEventLoop | None = None, *,
                           expiry: _Expiry | None = None) -> None:
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
            stats.bytes[(route.name, "in")] += pipe.a.nbytes  # (a_to_b/b_to_a without the property calls)
            stats.bytes[(route.name, "out")] += pipe.b.nbytes
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: closed; %d bytes client→backend, %d bytes backend→client", acc.ctx, pipe.a_to_b,
                      pipe.b_to_a)

    # The header is built before the dial: nothing about the client can fail once a backend
    # socket exists (an IPv6 client on an IPv4 listener once raised here and leaked the socket).
    header = b""
    if route.send_proxy:
        header = proxy_protocol.encode_for_backend(route.send_proxy, acc.peer, acc.local_addr())
    pipe = Pipe(on_close, first_to_b=header)
    if expiry is None:  # awaited in a task (not driven by start_splice): the task is what waits
        expiry = _Expiry(asyncio.current_task(loop))
    deadlines = _deadlines
    if deadlines is None or deadlines.loop is not loop:
        deadlines = _deadlines_of(loop)
    deadlines.add(expiry, connect_timeout)
    try:
        backend, _ = await loop.create_connection(pipe.b, route.target.host, route.target.port)
    except asyncio.CancelledError:
        if not expiry.expired:  # shutdown (close_dials, or the task awaiting this was cancelled)
            close_with_answer(acc.sock)  # (drained first: a FIN, not an RST)
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
        deadlines.remove(expiry)
    if expiry.expired:  # the deadline fired just as the connect completed: treat it as expired
        log.warning("%s: backend %s connected too late (after %gs)", acc.ctx, route.target, connect_timeout)
        backend.close()
        close_with_answer(acc.sock)
        return
    if stats is not None:
        stats.spliced += 1  # on_close takes it back once the client side has been made
    try:
        # (the door's sockets answer family/type with plain ints: see frontdoor.PlainSocket)
        await loop.connect_accepted_socket(pipe.a, acc.sock)
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


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class _Driven(_Expiry):
    """Runs one :func:`splice_to_target` coroutine without an asyncio Task (:func:`start_splice`).

    A Task per pass-through connection costs its creation, its registration in asyncio's
    ``WeakSet`` of tasks, a first step through ``call_soon``, a context per step and a done
    callback (~4 % of a connection's interpreter time in py-spy). This does what a Task's step
    does for a coroutine that only awaits futures (uvloop's ``create_connection`` and
    ``connect_accepted_socket`` waiters): send into it, and resume it from the done callback of
    the future it yields; ``cancel`` cancels that future, which the coroutine then sees as
    ``CancelledError`` from its ``await``, as a Task's cancel does. The coroutine must not need
    ``asyncio.current_task()`` (there is none): it is :func:`splice_to_target`'s connect
    deadline too (its ``expiry``).
    """

    __slots__ = ("acc", "coro", "stats", "waiting")

    def __init__(self, acc: Accepted, stats: Stats | None) -> None:
        self.task = None
        self.expired = False
        self.acc = acc
        self.stats = stats
        self.coro: Coroutine[Any, Any, None] | None = None
        self.waiting: asyncio.Future[Any] | None = None

    def step(self, _: object = None) -> None:
        coro = self.coro
        assert coro is not None
        self.waiting = None
        try:
            fut = coro.send(None)
        except StopIteration:
            self._end()
            return
        except asyncio.CancelledError:  # shutdown: splice_to_target closed the client
            self._end()
            return
        except BaseException as exc:
            self._end()
            log.error("%s: handler failed", self.acc.ctx, exc_info=exc)
            _close_quietly(self.acc.sock)
            if not isinstance(exc, Exception):
                raise
            return
        if fut is None:  # a bare ``yield`` (asyncio.sleep(0)): resume on the next turn
            asyncio.get_running_loop().call_soon(self.step)
            return
        fut._asyncio_future_blocking = False
        self.waiting = fut
        fut.add_done_callback(self.step)

    def cancel(self) -> None:
        if self.waiting is not None:
            self.waiting.cancel()

    def _end(self) -> None:
        self.coro = None
        if self.stats is not None:
            self.stats.active -= 1


def start_splice(acc: Accepted, stats: Stats | None = None, loop: asyncio.AbstractEventLoop | None = None,
                 connect_timeout: float = 10.0) -> None:
    """Start :func:`splice_to_target` for ``acc`` without a task (a front-door handler that
    returns ``None``: see :meth:`tpemu.proxy.frontdoor.FrontDoor.spawn`). It counts in
    ``stats.active`` while it dials; :func:`close_dials` ends the dials in flight at shutdown."""
    driven = _Driven(acc, stats)
    driven.coro = splice_to_target(acc, connect_timeout, stats, loop, expiry=driven)
    if stats is not None:
        stats.active += 1
    driven.step()
