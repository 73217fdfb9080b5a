"""The proxy's ``/webapi/ping`` answer kept per process for a while (glue).

Teleport: ``lib/client/api.go`` ``TeleportClient.Ping`` keeps the first successful answer for the
life of the client ("multiple calls to Ping will return the original response and skip the
round-trip"); ``tsh`` makes one ``TeleportClient`` per command, so every SSH session a command
opens after the first skips the ping, and Teleport Connect keeps one client per cluster for the
life of its daemon. tpemu's client functions have no client object, so the answer is kept per
process, under a key that changes when the answer could be another cluster's:

* the web proxy address of the profile;
* the profile's CA file (path and modification time: a new login, to a new cluster on a reused
  port, is a new key);
* the HTTP proxy environment (``HTTPS_PROXY``/``NO_PROXY``: another path, maybe another answer).

Unlike Teleport's client, an entry expires after :data:`PING_TTL` seconds: a long-lived process (a
test suite, a service using the library) outlives proxy reconfigurations, which a ``tsh`` command
does not. A caller whose connection failed on a kept answer calls :meth:`PingCache.forget` and asks
again (``tpemu.client.ssh.connect_proxy`` does), so a stale answer costs one failed dial, never a
wrong result. Only successful answers are kept, as Teleport does.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any

#: Seconds a kept answer is used (Teleport's client: its whole life; see the module docstring).
PING_TTL = 30.0
#: Entries kept at most (one per profile and proxy environment in practice); all go when full.
MAX_ENTRIES = 64


def _freeze(answer: Any) -> tuple[str, Any]:
    """What is kept of ``answer``: its JSON text when it is plain JSON, as a ping answer is (each
    use decodes it again: a copy of its own, ~10x cheaper than a deep copy), else a deep copy."""
    try:
        text = json.dumps(answer)
        if json.loads(text) == answer:
            return ("json", text)
    except (TypeError, ValueError):
        pass
    return ("copy", copy.deepcopy(answer))


def _thaw(kept: tuple[str, Any]) -> Any:
    kind, value = kept
    return json.loads(value) if kind == "json" else copy.deepcopy(value)


def file_stamp(path: str | Path) -> tuple[str, int, int]:
    """``path`` with its modification time and size (``-1`` when it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), -1, -1)
    return (str(path), st.st_mtime_ns, st.st_size)


class PingCache:
    """Successful ping answers by key, each used for ``ttl`` seconds after it was fetched."""

    def __init__(self, ttl: float = PING_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._kept: dict[Hashable, tuple[float, Any]] = {}
        #: Answers fetched from the proxy and answers served from the cache (for tests and benches).
        self.fetched = 0
        self.served = 0

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """The kept answer for ``key`` if younger than the TTL, else ``await fetch()`` (kept if it
        returns; an exception propagates and nothing is kept), and whether it was a kept one.
        Callers get their own copy."""
        hit = self._kept.get(key)
        if hit is not None and self.clock() - hit[0] < self.ttl:
            self.served += 1
            return _thaw(hit[1]), True
        answer = await fetch()
        self.fetched += 1
        if len(self._kept) >= MAX_ENTRIES:
            self._kept.clear()
        self._kept[key] = (self.clock(), _freeze(answer))
        return answer, False

    def forget(self, key: Hashable) -> bool:
        """Drops the answer kept for ``key``; whether there was one."""
        return self._kept.pop(key, None) is not None

    def clear(self) -> None:
        self._kept.clear()


#: The process's cache (``tpemu.client.ssh`` uses it for the SSH route).
PINGS = PingCache()
