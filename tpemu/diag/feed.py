"""Routing decisions as they happen, for the live page and the JSON-lines decision trace.

The front door calls :meth:`DecisionFeed.routed` / :meth:`DecisionFeed.refused` only while
something listens (``door.watch`` is ``None`` otherwise: one attribute test per connection).
What it records per connection is cheap and fixed: a tuple and a copy of at most
:data:`KEEP_BYTES` first bytes into a bounded ring (:data:`RING`); nothing is decoded there.

**How the page stays responsive at 1,000 connections/s**: every subscriber (one per open page)
gets one batch every :data:`BATCH_INTERVAL` seconds with at most :data:`BATCH_MAX` connections —
the newest ones — plus the number it skipped and the route counters. Only the connections sent
are decoded (:func:`tpemu.wire.hello_detail.describe`), so the work per page is bounded by
4 batches of 25 decodes a second whatever the connection rate, and the browser does at most four
DOM updates a second (it also caps its table at 200 rows). The counters are exact; the list of
connections is a sample when the rate is high, and says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import IO, Any

from tpemu.net.sockets import format_addr
from tpemu.wire.hello_detail import describe

log = logging.getLogger(__name__)

KEEP_BYTES = 2048
RING = 512
BATCH_INTERVAL = 0.25
BATCH_MAX = 25

# One ring entry: (seq, unix time, conn id, listener, peer, first bytes, outcome, route or
# category, why or reason, protocol)
Entry = tuple[int, float, int, str, str, bytes, str, str, str, str]


class DecisionFeed:
    def __init__(self, proxy: Any, trace_path: str | None = None) -> None:
        self.proxy = proxy
        self.ring: deque[Entry] = deque(maxlen=RING)
        self.seq = 0
        self.subscribers = 0
        self._trace: IO[str] | None = None
        self._flusher: asyncio.TimerHandle | None = None
        if trace_path:
            self._trace = open(trace_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._update_watch()

    # -- called by the front door (per connection, only while watched) --------------------------------

    def routed(self, sniffer: Any, route: Any, proto: Any, hello: Any) -> None:
        self.seq += 1
        door = sniffer.door
        first = bytes(door.view[:min(sniffer.seen, KEEP_BYTES)])
        entry: Entry = (self.seq, time.time(), sniffer.conn_id, sniffer.listener.kind.value,
                        format_addr(sniffer.peer), first, "routed", route.name, route.why,
                        proto.value if proto is not None else "-")
        self.ring.append(entry)
        if self._trace is not None:
            self._write(entry, {"sni": hello.sni, "alpn": list(hello.alpn)} if hello is not None else {})

    def refused(self, sniffer: Any, refused: Any, n: int) -> None:
        self.seq += 1
        first = bytes(sniffer.door.view[:min(n, KEEP_BYTES)])
        entry: Entry = (self.seq, time.time(), sniffer.conn_id, sniffer.listener.kind.value,
                        format_addr(sniffer.peer), first, "refused", refused.category, refused.reason,
                        refused.protocol.value if refused.protocol is not None else "-")
        self.ring.append(entry)
        if self._trace is not None:
            self._write(entry, {})

    # -- the decision trace (JSON lines) ----------------------------------------------------------------

    def _write(self, e: Entry, extra: dict[str, Any]) -> None:
        assert self._trace is not None
        record = {"time": round(e[1], 6), "conn": e[2], "listener": e[3], "peer": e[4], "protocol": e[9],
                  "decision": e[6], ("route" if e[6] == "routed" else "reason_category"): e[7],
                  ("why" if e[6] == "routed" else "reason"): e[8], **extra, "first_bytes": e[5][:64].hex()}
        self._trace.write(json.dumps(record, separators=(",", ":")) + "\n")
        if self._flusher is None:  # flush at most 4 times a second, not per line
            self._flusher = asyncio.get_running_loop().call_later(BATCH_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._flusher = None
        if self._trace is not None:
            try:
                self._trace.flush()
            except OSError as exc:
                log.warning("decision trace: cannot write: %s", exc)

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._trace is not None:
            self._trace.close()
            self._trace = None
        self.subscribers = 0
        self._update_watch()

    def _update_watch(self) -> None:
        door = self.proxy.door
        door.watch = self if (self.subscribers or self._trace is not None) else None

    # -- the page's view ----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Counters and tunnels (exact, from the proxy's plain counters)."""
        stats = self.proxy.door.stats
        tunnels = []
        registry = getattr(self.proxy, "tunnels", None)
        if registry is not None:
            for agent in registry.agents.values():
                tunnels.append({"host_id": agent.host_id, "hostname": agent.hostname, "ready": agent.transport_ready,
                                "heartbeat_age_s": round(time.monotonic() - agent.last_heartbeat, 1),
                                "serves": [f"{r.kind} {r.name}" for r in agent.resources]})
        return {"accepted": stats.accepted, "sniffing": stats.pending, "active": stats.active,
                "spliced": stats.spliced, "routed": dict(stats.routed), "refused": dict(stats.refused),
                "tunnels": tunnels}

    @staticmethod
    def render(e: Entry) -> dict[str, Any]:
        return {"seq": e[0], "time": e[1], "conn": e[2], "listener": e[3], "peer": e[4], "decision": e[6],
                "route": e[7], "why": e[8], "protocol": e[9], "bytes": len(e[5]), "decoded": describe(e[5])}

    async def batches(self) -> AsyncIterator[dict[str, Any]]:
        """One batch per :data:`BATCH_INTERVAL` for one subscriber, until it goes away."""
        self.subscribers += 1
        self._update_watch()
        last = self.seq
        try:
            yield {"connections": [], "skipped": 0, "state": self.state()}
            while True:
                await asyncio.sleep(BATCH_INTERVAL)
                new = [e for e in self.ring if e[0] > last] if self.seq > last else []
                skipped = (self.seq - last) - min(len(new), BATCH_MAX)
                last = self.seq
                yield {"connections": [self.render(e) for e in new[-BATCH_MAX:]], "skipped": skipped,
                       "state": self.state()}
        finally:
            self.subscribers -= 1
            self._update_watch()
