"""The Auth Service's key-value backend: the interface, items, watches, TTL (glue-free core).

Modelled on Teleport's ``lib/backend`` (``Backend`` interface: Get, Create, Put, Update,
CompareAndSwap, Delete, GetRange, DeleteRange, KeepAlive, NewWatcher): keys are ``/``-separated
strings (``/tokens/<name>``), values bytes, each item may carry an expiry and gets a revision
that grows with every write. Expired items are invisible to reads at once and are swept (deleted,
with a ``delete`` event) periodically, as Teleport's backends do.

Implementations: :mod:`tpemu.auth.backend_sqlite` (embedded default, one file in ``data_dir``)
and :mod:`tpemu.auth.backend_postgres` (a real PostgreSQL server, for several Auth instances).
Every write is one transaction: a crash mid-write leaves the old value or the new one, never a
mix, and a write that returned has been committed (synchronous commit).

Watches: :meth:`Backend.watch` returns a :class:`Watcher` that first yields an ``init`` event,
then every ``put``/``delete`` under its prefixes, in commit order. A watcher that falls more than
``queue_size`` events behind is closed (its iteration raises :class:`WatcherClosed`), as
Teleport closes slow watchers rather than buffer without bound.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from enum import Enum

from tpemu.errors import LocalFault

log = logging.getLogger(__name__)

#: How often expired items are swept (seconds).
SWEEP_INTERVAL = 5.0
#: Events a watcher may fall behind before it is closed.
WATCH_QUEUE = 1024
#: Keys and values have hard limits (Teleport's etcd backend caps requests at 1.5 MiB).
MAX_KEY = 1024
MAX_VALUE = 4 * 1024 * 1024


class BackendError(LocalFault):
    """A backend operation failed; the subclasses are the expected outcomes."""


class NotFound(BackendError):
    pass


class AlreadyExists(BackendError):
    pass


class CompareFailed(BackendError):
    pass


class WatcherClosed(BackendError):
    pass


@dataclass(frozen=True, slots=True)
class Item:
    key: str
    value: bytes
    #: Unix time after which the item is gone, or ``None``.
    expires: float | None = None
    revision: int = 0

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now


class EventType(Enum):
    INIT = "init"
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    item: Item


def check_key(key: str) -> None:
    if not key.startswith("/") or len(key) > MAX_KEY:
        raise ValueError(f"backend keys start with '/' and have at most {MAX_KEY} characters: {key[:80]!r}")


def check_value(value: bytes) -> None:
    if len(value) > MAX_VALUE:
        raise ValueError(f"backend values are at most {MAX_VALUE} bytes, got {len(value)}")


def range_end(prefix: str) -> str:
    """The smallest key greater than every key starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


class Watcher:
    """Events under some prefixes; iterate with ``async for``; close when done."""

    def __init__(self, fanout: Fanout, prefixes: tuple[str, ...], queue_size: int = WATCH_QUEUE) -> None:
        self._fanout = fanout
        self.prefixes = prefixes
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(queue_size)
        self.closed_reason = ""
        self._queue.put_nowait(Event(EventType.INIT, Item("", b"")))

    def matches(self, key: str) -> bool:
        return not self.prefixes or any(key.startswith(p) for p in self.prefixes)

    def _offer(self, event: Event) -> None:
        if self.closed_reason:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._close(f"watcher fell behind (more than {self._queue.maxsize} events queued)")

    def _close(self, reason: str) -> None:
        if self.closed_reason:
            return
        self.closed_reason = reason
        self._fanout.remove(self)
        # Make room for the end marker: the reader learns about the closure next.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def close(self) -> None:
        self._close("closed")

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        event = await self._queue.get()
        if event is None:
            if self.closed_reason == "closed":
                raise StopAsyncIteration
            raise WatcherClosed(self.closed_reason)
        return event

    async def next(self, timeout: float) -> Event:
        """The next event within ``timeout`` seconds (``TimeoutError`` otherwise)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()


class Fanout:
    """Delivers committed events to the watchers whose prefixes match."""

    def __init__(self) -> None:
        self._watchers: list[Watcher] = []

    def add(self, prefixes: Iterable[str], queue_size: int = WATCH_QUEUE) -> Watcher:
        w = Watcher(self, tuple(prefixes), queue_size)
        self._watchers.append(w)
        return w

    def remove(self, w: Watcher) -> None:
        with contextlib.suppress(ValueError):
            self._watchers.remove(w)

    def emit(self, event: Event) -> None:
        for w in list(self._watchers):
            if w.matches(event.item.key):
                w._offer(event)

    def close_all(self, reason: str = "closed") -> None:
        for w in list(self._watchers):
            w._close(reason)


class Backend(abc.ABC):
    """The key-value store the Auth Service keeps everything in."""

    def __init__(self) -> None:
        self.fanout = Fanout()
        self._sweeper: asyncio.Task[None] | None = None
        self.clock = time.time

    # -- the operations --------------------------------------------------------------------

    @abc.abstractmethod
    async def get(self, key: str) -> Item:
        """The live item at ``key``; raises :class:`NotFound`."""

    @abc.abstractmethod
    async def create(self, key: str, value: bytes, expires: float | None = None) -> Item:
        """Write ``key`` only if there is no live item; raises :class:`AlreadyExists`."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, expires: float | None = None) -> Item:
        """Write ``key`` whether or not it exists."""

    @abc.abstractmethod
    async def update(self, key: str, value: bytes, expires: float | None = None) -> Item:
        """Overwrite a live item; raises :class:`NotFound`."""

    @abc.abstractmethod
    async def compare_and_swap(self, key: str, expected: bytes, value: bytes,
                               expires: float | None = None) -> Item:
        """Replace the live item's value if it equals ``expected``; raises :class:`NotFound` or
        :class:`CompareFailed`."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete a live item; raises :class:`NotFound`."""

    @abc.abstractmethod
    async def get_range(self, prefix: str, limit: int = 0) -> list[Item]:
        """Live items whose keys start with ``prefix``, in key order (at most ``limit`` if > 0)."""

    @abc.abstractmethod
    async def delete_range(self, prefix: str) -> int:
        """Delete every live item under ``prefix``; returns how many."""

    @abc.abstractmethod
    async def _sweep(self, now: float) -> list[Item]:
        """Delete items that expired by ``now``; returns them (for ``delete`` events)."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release connections and files."""

    # -- shared behaviour ----------------------------------------------------------------------

    async def keep_alive(self, key: str, expires: float | None) -> Item:
        """Extend a live item's expiry (heartbeats); raises :class:`NotFound`."""
        item = await self.get(key)
        try:
            return await self.compare_and_swap(key, item.value, item.value, expires)
        except CompareFailed:  # written meanwhile: extend whatever is there now
            item = await self.get(key)
            return await self.update(key, item.value, expires)

    def watch(self, prefixes: Iterable[str] = (), queue_size: int = WATCH_QUEUE) -> Watcher:
        """A watcher for changes under ``prefixes`` (everything if none)."""
        return self.fanout.add(prefixes, queue_size)

    def start_sweeper(self, interval: float = SWEEP_INTERVAL) -> None:
        """Delete expired items every ``interval`` seconds (call from a running loop)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(interval))

    async def sweep(self) -> int:
        """One sweep now; returns how many items expired."""
        gone = await self._sweep(self.clock())
        for item in gone:
            self._deleted(item)
        return len(gone)

    async def _sweep_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                n = await self.sweep()
                if n:
                    log.debug("backend: %d expired item(s) removed", n)
            except Exception as exc:  # keep sweeping: a transient database error must not stop it
                log.warning("backend: sweeping expired items failed: %s", exc)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self.fanout.close_all()
        await self._close()

    # Subclasses call these after a commit (the Postgres backend from its notifications).
    def _written(self, item: Item) -> None:
        self.fanout.emit(Event(EventType.PUT, item))

    def _deleted(self, item: Item) -> None:
        self.fanout.emit(Event(EventType.DELETE, item))
