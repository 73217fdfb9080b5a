"""The front door: accept, peek at the first bytes, decide, hand the untouched socket on (glue).

Theory of operation. Each listener is a non-blocking socket watched with ``loop.add_reader``;
on readiness it accepts a bounded batch. A new connection is *peeked* (``recv_into(...,
MSG_PEEK)`` into one shared buffer: the loop is single-threaded and every parse copies what it
keeps), and :func:`tpemu.proxy.decide.classify` says what to do:

* need more bytes → ``SO_RCVLOWAT`` is raised past what is queued, so epoll wakes the reader
  only when more has arrived (no spinning on a partial ClientHello); a wake-up without progress
  is either the peer's FIN (checked with ``TCP_INFO``) or spurious (counted, then re-armed later);
* a PROXY header the listener accepts → exactly its length is consumed, the rest classified;
* routed → the reader is removed, the deadline cancelled, ``SO_RCVLOWAT`` reset, and the socket,
  with every byte still unread in the kernel, goes to the route's handler in its own task;
  pass-through and web sockets go as accepted (blocking, for Python): their handlers give them
  straight to the event loop (``connect_accepted_socket``), which makes the descriptor
  non-blocking itself, so the door does not (one ``ioctl`` less per connection); every other
  handler gets a non-blocking socket;
* refused → the specific answer (TLS alert, HTTP 400 …) is sent, the reason logged (rate-limited
  WARNING, hexdump at TRACE), and the socket closed after draining what was peeked, so the
  kernel sends FIN rather than RST and the peer reads the answer.

A deadline (``sniff_timeout``) bounds the whole detection, a cap (``max_client_hello``) its
size, and ``max_pending`` the number of connections still being sniffed, so slow or hostile
clients cannot delay the others or exhaust memory. At the cap a new connection is still taken:
the connection that has waited longest for its bytes is closed to make room (slowloris clients
shed each other, not the newcomers).
"""

from __future__ import annotations

import _socket
import asyncio
import bisect
import errno
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tpemu.config import Addr
from tpemu.errors import describe as describe_error
from tpemu.logs import TRACE, RateLimiter, hexdump
from tpemu.net.sockets import close_with_answer, format_addr, peer_closed, set_rcvlowat, sockaddr
from tpemu.proxy.decide import ListenerKind, ListenerPolicy, NeedMore, ProxyHeaderSeen, Refused, Routed, classify
from tpemu.proxy.route import Route, RouteKind, RouteTable
from tpemu.wire import sniff as sniffing
from tpemu.wire import tls
from tpemu.wire.proxy_protocol import Command, ProxyHeader
from tpemu.wire.sniff import Protocol

log = logging.getLogger(__name__)

#: Connections accepted per readiness event before yielding to the loop.
ACCEPT_BATCH = 64
#: Teleport's ``missingProxyLineError`` and ``unexpectedPROXYLineError`` (lib/multiplexer/multiplexer.go).
MISSING_PROXY_LINE = ("connection from {0} rejected because PROXY protocol is enabled (proxy_protocol: on) for the "
                      "{1} listener but the required PROXY protocol line wasn't received; only enable it if tpemu "
                      "runs behind an L4 load balancer that sends one")
UNEXPECTED_PROXY_LINE = ("received an unexpected PROXY protocol line (proxy_protocol is unset): the connection is "
                         "allowed with its source port set to 0; set proxy_protocol: on behind a load balancer that "
                         "sends PROXY headers, or off otherwise")
#: Wake-ups without new bytes before falling back to a timer (a guard, SO_RCVLOWAT should hold).
MAX_STALLS = 8
#: Accepted sockets stay blocking for Python until routed (see the module's docstring): every
#: read of the sniffer is non-blocking by its flags instead.
PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class PlainSocket(socket.socket):
    """An accepted socket whose ``family`` and ``type`` are plain ints: the C socket type's own
    getters. ``socket.socket``'s convert to an IntEnum on every read (~0.7 µs each on Python
    3.11), and uvloop's ``connect_accepted_socket`` reads them three times per connection; the
    ints compare equal to the enum members. Everything else is ``socket.socket`` (uvloop
    detaches it when its transport closes the descriptor, as with any ``socket.socket``)."""

    __slots__ = ()
    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]


@dataclass(slots=True)
class Accepted:
    """A routed connection handed to a handler. ``peer`` is the real client (from a PROXY
    header when there was one); ``sock`` still holds every byte the client sent. ``sock`` is
    non-blocking, except on pass-through and web routes (see the module's docstring): a handler
    of those that reads it with Python calls sets it non-blocking first."""

    sock: socket.socket
    conn_id: int
    listener: ListenerKind
    peer: tuple[str, int]
    socket_peer: tuple[str, int]
    protocol: Protocol | None
    route: Route
    hello: tls.ClientHello | None
    proxy_header: ProxyHeader | None

    def local_addr(self) -> tuple[str, int]:
        """The address the client connected to (asked for only when needed: one system call)."""
        try:
            return sockaddr(self.sock.getsockname())
        except OSError:
            return ("", 0)

    @property
    def ctx(self) -> str:
        """The log context: ``conn=12 peer=127.0.0.1:50000 route=web``."""
        return f"conn={self.conn_id} peer={format_addr(self.peer)} route={self.route.name}"


#: A route's handler: returns the coroutine to run in a task of its own, or ``None`` when it has
#: started its work itself without one (pass-through: :func:`tpemu.proxy.passthrough.start_splice`),
#: and then logs, counts and closes what it started itself.
Handler = Callable[[Accepted], Awaitable[None] | None]


#: Upper bounds (seconds) of the sniff-time histogram: most connections are decided on their
#: first peek (microseconds); a slow client's hello spans several reads.
SNIFF_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


class Stats:
    """Counters for routed and refused connections, by route name or refusal category."""

    def __init__(self) -> None:
        self.accepted = 0
        self.routed: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.pending = 0
        #: Handlers running (handshakes, web requests …) and pass-through connections spliced.
        self.active = 0
        self.spliced = 0
        #: Routed connections by (listener, protocol, route); plain dict increments on the hot path,
        #: read at scrape time by :mod:`tpemu.diag.metrics` (a prometheus-client ``labels().inc()``
        #: would cost ~1 µs per connection, this 0.1 µs).
        self.by_route: Counter[tuple[str, str, str]] = Counter()
        #: Time from accept to decision (routed or refused): counts per upper bound of
        #: :data:`SNIFF_BUCKETS` (+Inf last).
        self.sniff_counts = [0] * (len(SNIFF_BUCKETS) + 1)
        self.sniff_sum = 0.0
        #: Bytes relayed by (route, direction ``in`` = client→backend, ``out``), counted when a
        #: connection ends.
        self.bytes: Counter[tuple[str, str]] = Counter()

    def observe_sniff(self, seconds: float) -> None:
        self.sniff_sum += seconds
        self.sniff_counts[bisect.bisect_left(SNIFF_BUCKETS, seconds)] += 1


@dataclass
class Listener:
    policy: ListenerPolicy
    sock: socket.socket
    addr: Addr
    #: ``(family, type, proto)`` of the listening socket as plain ints, read once: every accepted
    #: socket is made with them (``sock.family``/``sock.type`` convert to an IntEnum per read).
    accept_as: tuple[int, int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.accept_as = (int(self.sock.family), int(self.sock.type), self.sock.proto)

    @property
    def kind(self) -> ListenerKind:
        return self.policy.kind


class FrontDoor:
    """Accepts on any number of listeners and routes every connection through one table."""

    def __init__(self, table: RouteTable, handler: Handler, *, sniff_timeout: float = 5.0,
                 max_hello: int = tls.DEFAULT_MAX_HELLO, max_pending: int = 4096) -> None:
        self.table = table
        self.handler = handler
        self.sniff_timeout = sniff_timeout
        self.max_hello = max_hello
        self.max_pending = max_pending
        # Peek window: the hello cap plus record headers (a hello may span several records)
        # plus room for a PROXY v2 header in front of it.
        self.peek_size = max_hello + 4096 + 5 * tls.MAX_HELLO_RECORDS
        self.buf = bytearray(self.peek_size)
        self.view = memoryview(self.buf)
        self.stats = Stats()
        self.listeners: list[Listener] = []
        #: Connections still being sniffed that had to wait for bytes, oldest first (dicts keep
        #: insertion order): the ones shed when ``max_pending`` is reached.
        self.waiting: dict[int, _Sniffer] = {}
        #: Handlers running, with the connection each serves (for the log line if one fails).
        self.tasks: dict[asyncio.Task[None], Accepted] = {}
        self.limiter = RateLimiter()
        #: Who watches decisions (:class:`tpemu.diag.feed.DecisionFeed`): ``None`` costs one
        #: attribute test per connection.
        self.watch: Any = None
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the door accepts on (``None`` before :meth:`listen`)."""
        return self._loop

    async def listen(self, policy: ListenerPolicy, addr: Addr, backlog: int = 4096,
                     reuse_port: bool = False) -> Listener:
        """Bind and start accepting on ``addr``; returns the listener with its bound address."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr_ = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if policy.server_first is None and hasattr(socket, "TCP_DEFER_ACCEPT"):
                # Client-first protocols only: wake accept when the first bytes are in, so the
                # first peek usually decides without arming a reader or a timer.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, round(self.sniff_timeout)))
            sock.bind(sockaddr_)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            # Name the listener: the runner prints filename ("cannot listen: … (kube listener …)").
            raise OSError(exc.errno, exc.strerror, f"{policy.kind.value} listener {addr}") from None
        host, port = sockaddr(sock.getsockname())
        listener = Listener(policy, sock, Addr(host, port))
        self.listeners.append(listener)
        loop.add_reader(sock.fileno(), self._on_accept, listener)
        return listener

    def _on_accept(self, listener: Listener) -> None:
        lsock = listener.sock
        stats = self.stats
        # socket.accept() converts family and type to enums for every connection (a measurable
        # part of the per-connection cost): the raw accept and the listener's ints, read once.
        raw_accept = lsock._accept  # type: ignore[attr-defined]
        family, type_, proto = listener.accept_as
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = raw_accept()
                sock = PlainSocket(family, type_, proto, fileno=fd)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a moment instead of spinning.
                    self.limiter.warning(log, "accept", "accept on %s failed: %s; pausing accepts for 100ms",
                                         listener.addr, exc.strerror)
                    self._pause_accept(listener, 0.1)
                return
            stats.accepted += 1
            if stats.pending >= self.max_pending and not self._shed_oldest():
                stats.refused["too-many-pending"] += 1
                self.limiter.warning(log, "pending", "peer=%s refused: %d connections are already being sniffed "
                                     "(tpemu.proxy_service.max_pending)", format_addr(addr), stats.pending)
                sock.close()
                continue
            # TCP_NODELAY is set by the event loop's transport when a handler takes the socket;
            # O_NONBLOCK by the handler or in _route (not here: see the module's docstring).
            self._next_id += 1
            _Sniffer(self, listener, sock, sockaddr(addr), self._next_id).start()

    def _shed_oldest(self) -> bool:
        """Make room for a new connection by closing the one that has waited longest for its
        first bytes. At accept nothing tells a slowloris client from a good one; time does: a good
        client's hello arrives within a round trip, so the oldest waiting connection is the likeliest
        to be hostile, and a flood of slow clients ends up shedding itself rather than new arrivals."""
        victim = next(iter(self.waiting.values()), None)
        if victim is None:
            return False
        victim._refuse(Refused("shed-oldest", f"closed to make room: {self.stats.pending} connections were being "
                               f"sniffed (tpemu.proxy_service.max_pending) and this one had waited longest "
                               f"({victim.seen} bytes received)"), victim.seen)
        return True

    def adopt(self, sock: socket.socket, peer: tuple[str, int], policy: ListenerPolicy, origin: str) -> int:
        """Sniff and route ``sock`` as if it had been accepted on a listener with ``policy``.

        For streams that arrive inside another connection: the ALPN connection upgrade
        (``/webapi/connectionupgrade``, :mod:`tpemu.proxy.conn_upgrade`) hands over one end of
        a socket pair whose other end carries the upgraded bytes. ``origin`` names it in logs.
        Returns the connection id.
        """
        assert self._loop is not None, "listen() first"
        sock.setblocking(False)
        self.stats.accepted += 1
        self._next_id += 1
        log.debug("conn=%d peer=%s adopted from %s", self._next_id, format_addr(peer), origin)
        _Sniffer(self, Listener(policy, sock, Addr(origin, 0)), sock, peer, self._next_id).start()
        return self._next_id

    def _pause_accept(self, listener: Listener, delay: float) -> None:
        assert self._loop is not None
        self._loop.remove_reader(listener.sock.fileno())

        def resume() -> None:
            if not self._closed and listener in self.listeners:
                assert self._loop is not None
                self._loop.add_reader(listener.sock.fileno(), self._on_accept, listener)

        self._loop.call_later(delay, resume)

    def spawn(self, accepted: Accepted) -> None:
        """Run the handler of ``accepted`` in its own task.

        The handler's coroutine *is* the task (no wrapping coroutine: one frame and one await
        less per connection); its end is seen by :meth:`_handler_done`.
        """
        assert self._loop is not None
        try:
            coro = self.handler(accepted)
        except Exception:
            log.exception("%s: handler failed", accepted.ctx)
            _close_quietly(accepted.sock)
            return
        if coro is None:  # started without a task (see Handler)
            return
        self.run(accepted, coro)

    def run(self, accepted: Accepted, coro: Awaitable[None]) -> None:
        """Run ``coro`` for ``accepted`` as a handler task: counted in ``stats.active``, cancelled
        by :meth:`close`, its failure logged (also for a handler that started without a task and
        needs one later: the web route once its client sends)."""
        assert self._loop is not None
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self.stats.active += 1
        self.tasks[task] = accepted
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self.stats.active -= 1
        accepted = self.tasks.pop(task, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and accepted is not None:
            log.error("%s: handler failed", accepted.ctx, exc_info=exc)
            _close_quietly(accepted.sock)

    async def close(self) -> None:
        """Stop accepting, then cancel the handlers still running."""
        self._closed = True
        for listener in self.listeners:
            if self._loop is not None:
                self._loop.remove_reader(listener.sock.fileno())
            listener.sock.close()
        self.listeners.clear()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class _Sniffer:
    """One connection from accept until it is routed or refused."""

    __slots__ = ("armed", "conn_id", "door", "fd", "header", "listener", "loop", "lowat", "peer", "seen",
                 "sock", "socket_peer", "stalls", "t0", "timer", "waiting")

    def __init__(self, door: FrontDoor, listener: Listener, sock: socket.socket,
                 peer: tuple[str, int], conn_id: int) -> None:
        self.door = door
        self.listener = listener
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.socket_peer = peer
        self.conn_id = conn_id
        self.loop = door._loop
        self.timer: asyncio.TimerHandle | None = None
        self.armed = False
        self.lowat = False
        self.seen = 0
        self.stalls = 0
        self.header: ProxyHeader | None = None
        self.t0 = time.monotonic()
        self.waiting = False

    def start(self) -> None:
        self.door.stats.pending += 1
        policy = self.listener.policy
        if policy.server_first is not None and not policy.proxy_protocol:
            self._route(None, policy.server_first)  # MySQL: the server speaks first
            return
        self._on_readable()

    # -- reading -------------------------------------------------------------------------

    def _arm(self) -> None:
        if not self.armed:
            assert self.loop is not None
            if self.timer is None:
                # The deadline starts when the first wait does: most connections are decided
                # on their first peek and never need a timer or a reader.
                self.timer = self.loop.call_later(self.door.sniff_timeout, self._on_timeout)
                self.door.waiting[self.conn_id] = self
                self.waiting = True
            self.loop.add_reader(self.fd, self._on_readable)
            self.armed = True

    def _disarm(self) -> None:
        if self.armed:
            assert self.loop is not None
            self.loop.remove_reader(self.fd)
            self.armed = False

    def _on_readable(self) -> None:
        door = self.door
        try:
            n = self.sock.recv_into(door.buf, door.peek_size, PEEK)
        except (BlockingIOError, InterruptedError):
            self._arm()
            return
        except OSError as exc:
            self._refuse(Refused("read-error", f"read failed: {describe_error(exc)}"))
            return
        if n == 0:
            self._finish_quiet("closed before sending anything")
            return
        if n == self.seen:
            self._stalled(n)
            return
        self.seen = n
        outcome = classify(door.view[:n], self.listener.policy, door.table, door.max_hello, self.header is not None)
        if isinstance(outcome, NeedMore):
            if n >= door.peek_size:
                self._refuse(Refused("too-large", f"no decision within the first {n} bytes (size cap)"), n)
                return
            set_rcvlowat(self.sock, n + 1)
            self.lowat = True
            self._arm()
        elif isinstance(outcome, Routed):
            if self.header is None and self.listener.policy.proxy_protocol and not self._self_connection():
                self._refuse(Refused("proxy-protocol-missing", MISSING_PROXY_LINE.format(
                    format_addr(self.socket_peer), self.listener.kind.value), outcome.protocol), n)
                return
            self._route(outcome, outcome.route)
        elif isinstance(outcome, ProxyHeaderSeen):
            self._consume_proxy_header(outcome.header)
        else:
            self._refuse(outcome, n)

    def _stalled(self, n: int) -> None:
        if peer_closed(self.sock):
            self._refuse(Refused("truncated", f"peer closed after sending {n} bytes: {self._what(n)} is incomplete"), n)
            return
        self.stalls += 1
        if self.stalls >= MAX_STALLS:
            # SO_RCVLOWAT did not hold: poll on a timer instead of spinning on readiness.
            self._disarm()
            assert self.loop is not None
            self.loop.call_later(0.05, self._retry)
            self.stalls = 0

    def _retry(self) -> None:
        if self.timer is not None:  # still sniffing
            self._on_readable()

    def _what(self, n: int) -> str:
        try:
            proto = sniffing.sniff(self.door.view[:n])
        except Exception:
            return "the first message"
        return {None: "the protocol preamble", Protocol.TLS: "the TLS ClientHello",
                Protocol.PROXY_V1: "the PROXY v1 header", Protocol.PROXY_V2: "the PROXY v2 header",
                Protocol.SSH: "the SSH identification line", Protocol.HTTP: "the HTTP request line",
                Protocol.POSTGRES: "the Postgres startup packet"}[proto]

    def _self_connection(self) -> bool:
        # Teleport's ``Mux.isSelfConnection``: a connection whose source host is the listener's own
        # host did not come through the load balancer (the proxy calling itself), so "on" does not
        # require a header from it. A stream adopted from inside another connection (the ALPN
        # connection upgrade) was checked when that connection arrived (``unwrapMuxConn``).
        if self.listener.sock is self.sock:
            return True
        try:
            local = sockaddr(self.sock.getsockname())
        except OSError:
            return False
        return local[0] == self.socket_peer[0]

    def _untrusted_header(self, header: ProxyHeader) -> bool:
        trusted = self.listener.policy.proxy_trusted
        if not trusted or header.command is Command.LOCAL:
            return False
        try:
            ip = ipaddress.ip_address(self.socket_peer[0])
        except ValueError:
            return True
        return not any(ip in net for net in trusted)

    def _consume_proxy_header(self, header: ProxyHeader) -> None:
        if self._untrusted_header(header):
            self._refuse(Refused("proxy-protocol-untrusted", f"PROXY v{header.version} header from "
                                 f"{self.socket_peer[0]}, which is not a trusted load balancer "
                                 "(tpemu.proxy_service.proxy_protocol_trusted_cidrs)"), self.seen)
            return
        try:
            got = self.sock.recv(header.length, socket.MSG_DONTWAIT)
        except OSError as exc:
            self._refuse(Refused("read-error", f"read failed: {describe_error(exc)}"))
            return
        if len(got) != header.length:  # cannot happen: the bytes were peeked
            self._refuse(Refused("read-error", "PROXY header vanished from the receive queue"))
            return
        self.header = header
        if header.command is Command.PROXY and header.src is not None:
            self.peer = header.src
            if self.listener.policy.proxy_protocol is None:
                # Teleport's unspecified mode: allowed, but marked with source port 0 (so that IP
                # pinning can refuse it) and reported as a likely misconfiguration.
                self.peer = (header.src[0], 0)
                self.door.limiter.warning(log, "pp-unexpected", "conn=%d peer=%s: %s", self.conn_id,
                                          format_addr(self.socket_peer), UNEXPECTED_PROXY_LINE)
        log.debug("conn=%d peer=%s PROXY v%d header: %s client %s → %s", self.conn_id,
                  format_addr(self.socket_peer), header.version, header.family.value,
                  format_addr(header.src) if header.src else "-", format_addr(header.dst) if header.dst else "-")
        self.seen = 0
        server_first = self.listener.policy.server_first
        if server_first is not None:
            self._route(None, server_first)  # the client now waits for the server's greeting
            return
        self._on_readable()

    def _on_timeout(self) -> None:
        self.timer = None
        n = self.seen
        reason = (f"no bytes within {self.door.sniff_timeout:g}s" if n == 0 else
                  f"{self._what(n)} not complete within {self.door.sniff_timeout:g}s ({n} bytes received)")
        self._refuse(Refused("timeout", reason), n)

    # -- endings -------------------------------------------------------------------------

    def _done(self) -> None:
        if self.armed:
            self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.waiting:
            self.waiting = False
            del self.door.waiting[self.conn_id]
        self.door.stats.pending -= 1

    def _route(self, outcome: Routed | None, route: Route) -> None:
        self._done()
        door = self.door
        if self.lowat:
            set_rcvlowat(self.sock, 1)
        route_kind = route.kind
        if route_kind is not RouteKind.PASSTHROUGH and route_kind is not RouteKind.WEB:
            self.sock.setblocking(False)
        stats = door.stats
        stats.routed[route.name] += 1
        hello = outcome.hello if outcome is not None else None
        proto = outcome.protocol if outcome is not None else None
        kind = self.listener.policy.kind
        # ``_value_``: the plain attribute behind Enum's ``value`` property (~0.3 µs less each).
        stats.by_route[(kind._value_, proto._value_ if proto is not None else "-", route.name)] += 1
        seconds = time.monotonic() - self.t0  # (Stats.observe_sniff inline: one call less per connection)
        stats.sniff_sum += seconds
        stats.sniff_counts[bisect.bisect_left(SNIFF_BUCKETS, seconds)] += 1
        if door.watch is not None:  # a live page or a trace file is listening (tpemu.diag.feed)
            door.watch.routed(self, route, proto, hello)
        if log.isEnabledFor(logging.INFO):
            if hello is not None:
                log.info("conn=%d peer=%s listener=%s proto=tls sni=%s alpn=%s route=%s (%s)", self.conn_id,
                         format_addr(self.peer), kind.value, hello.sni or "-",
                         ",".join(hello.alpn) or "-", route.name, route.why)
            else:
                log.info("conn=%d peer=%s listener=%s proto=%s route=%s (%s)", self.conn_id,
                         format_addr(self.peer), kind.value, proto.value if proto else "-",
                         route.name, route.why)
        door.spawn(Accepted(self.sock, self.conn_id, kind, self.peer, self.socket_peer,
                            proto, route, hello, self.header))

    def _refuse(self, refused: Refused, n: int = 0) -> None:
        self._done()
        door = self.door
        door.stats.refused[refused.category] += 1
        door.stats.observe_sniff(time.monotonic() - self.t0)
        if door.watch is not None:
            door.watch.refused(self, refused, n)
        door.limiter.warning(log, refused.category, "conn=%d peer=%s listener=%s refused (%s): %s", self.conn_id,
                             format_addr(self.peer), self.listener.kind.value, refused.category, refused.reason)
        if n and log.isEnabledFor(TRACE):
            log.log(TRACE, "conn=%d first %d bytes:\n%s", self.conn_id, n, hexdump(bytes(door.view[:n])))
        close_with_answer(self.sock, refused.answer)

    def _finish_quiet(self, reason: str) -> None:
        self._done()
        self.door.stats.refused["empty"] += 1
        log.debug("conn=%d peer=%s %s", self.conn_id, format_addr(self.peer), reason)
        self.sock.close()
