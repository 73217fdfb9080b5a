"""Giving freed C-heap memory back to the system after a burst of connections (glue, glibc only).

Every connection leaves memory in the C allocator that Python does not manage: OpenSSL's
handshake and record buffers, uvloop's read buffers, asyncssh's key exchange. When the
connections end it is freed, but glibc's ``malloc`` keeps most freed pages in its heaps (it only
gives back the top of the main heap, and only past ``M_TRIM_THRESHOLD``): after 50,000 mixed
connections the process stayed 17 % above its warm RSS although every descriptor was closed and
the Python heap had not grown (the reliability suite, ``RELIABILITY.md``). ``malloc_trim(0)``
returns the free pages of every heap; :class:`HeapTrimmer` calls it when the RSS has grown past
the level of its last trim, at most every ``interval`` seconds — the Go runtime Teleport is built
on does the same with its background scavenger. Without glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _load_trim() -> Callable[[int], int] | None:
    # The symbols already loaded into this process (``dlopen(NULL)``), not
    # ``ctypes.util.find_library("c")``: that runs ``/sbin/ldconfig -p`` in a child process, a
    # fork of the whole proxy at import time (and a stray child that tests counting the proxy's
    # worker processes saw).
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    result: Callable[[int], int] = trim
    return result


_TRIM = _load_trim()


def rss_bytes() -> int:
    """This process's resident set size (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def release_free_memory() -> bool:
    """``malloc_trim(0)``: whether glibc gave memory back (False without glibc)."""
    return bool(_TRIM(0)) if _TRIM is not None else False


class HeapTrimmer:
    """Trims the C heap when the RSS grew ``growth`` (a fraction) past the level of the last trim."""

    def __init__(self, interval: float = 10.0, growth: float = 0.05) -> None:
        self.interval = interval
        self.growth = growth
        self.trims = 0
        self._level = rss_bytes()
        self._task: asyncio.Task[None] | None = None

    def check(self) -> bool:
        """One check (what the task runs every ``interval``): whether it trimmed."""
        rss = rss_bytes()
        if _TRIM is None or not rss or rss <= self._level * (1 + self.growth):
            return False
        t0 = time.perf_counter()
        release_free_memory()
        after = rss_bytes()
        self.trims += 1
        log.debug("heap trim: RSS %d -> %d KiB in %.1f ms", rss >> 10, after >> 10, (time.perf_counter() - t0) * 1e3)
        self._level = after
        return True

    def start(self) -> None:
        if _TRIM is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="heap-trimmer")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
