"""The cluster's nodes as the proxy finds them by name: what ``proxy:<host>:<port>`` means (glue).

:func:`match_nodes` is Teleport's router matching (by host ID, hostname or address; several
matches are ambiguous); :class:`NodeDirectory` answers it from the inventory the reverse-tunnel
registry keeps (``/v1/nodes``), and says when that inventory may be used without asking the Auth
Service first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from tpemu import authapi
from tpemu.errors import PeerFault

log = logging.getLogger(__name__)

#: Teleport's default SSH port for nodes (``defaults.SSHServerListenPort``).
NODE_PORT = 3022
#: How long the node list from the Auth Service is reused before asking again.
NODE_CACHE_TTL = 1.0


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node as it heartbeats to the Auth Service (Teleport's ``ServerV2``, kind ``node``)."""

    host_id: str
    hostname: str
    addr: str = ""
    use_tunnel: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    last_heartbeat: str = ""

    @classmethod
    def from_resource(cls, obj: Any) -> NodeRecord | None:
        if not isinstance(obj, dict):
            return None
        meta, spec = obj.get("metadata"), obj.get("spec")
        if not isinstance(meta, dict) or not isinstance(spec, dict) or not isinstance(meta.get("name"), str):
            return None
        labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
        status = obj.get("status")
        status = status if isinstance(status, dict) else {}
        return cls(meta["name"], str(spec.get("hostname") or ""), str(spec.get("addr") or ""),
                   bool(spec.get("use_tunnel")), {str(k): str(v) for k, v in (labels or {}).items()},
                   str(status.get("last_heartbeat") or ""))

    def web(self, cluster: str) -> dict[str, Any]:
        """``ui.Server`` (``lib/web/ui/server.go``)."""
        return {"kind": "node", "tunnel": self.use_tunnel, "subKind": "teleport", "id": self.host_id,
                "siteId": cluster, "hostname": self.hostname, "addr": self.addr,
                "tags": [{"name": k, "value": v} for k, v in sorted(self.labels.items())], "sshLogins": [],
                # tpemu: when the node last announced itself to the Auth Service.
                "lastHeartbeat": self.last_heartbeat}


def match_nodes(nodes: list[NodeRecord], host: str, port: int) -> list[NodeRecord]:
    """The nodes ``host`` (and ``port``, if not 0 or 3022) can mean: by host ID, by hostname, or
    by the host of the node's address (then the port must match if it is given)."""
    out = []
    for node in nodes:
        if host in (node.host_id, node.hostname):
            out.append(node)
            continue
        if node.addr:
            node_host, _, node_port = node.addr.rpartition(":")
            if node_host.strip("[]") == host and (port in (0, NODE_PORT) or str(port) == node_port):
                out.append(node)
    by_id = [n for n in out if n.host_id == host]
    return by_id or out


class NodeLookupError(PeerFault):
    """The node a client named is unknown or ambiguous."""


class NodeInventory(Protocol):
    """Where :class:`NodeDirectory` reads nodes: ``TunnelRegistry`` (``ProxyService.tunnels``)."""

    async def node_inventory(self, fresh: bool = False) -> dict[str, Any]:
        """``/v1/nodes``, fetched from the Auth Service first when older than a second (or ``fresh``)."""
        ...

    def kept_nodes(self) -> tuple[list[Any], float]:
        """The ``/v1/nodes`` items last fetched and when (``time.monotonic()``), without asking."""
        ...

    def tunnel_serves_node(self, host_id: str) -> bool:
        """Whether an authenticated tunnel of ``host_id`` that may serve nodes is connected now."""
        ...

    def poll_interval(self) -> float:
        """How often the source refreshes the inventory by itself, in seconds."""
        ...


class NodeDirectory:
    """The cluster's nodes, from the Auth Service's ``/v1/nodes`` as the tunnel registry keeps it.

    Teleport's router finds a node in the proxy's cache, never by asking the Auth Service on the
    session's path (``lib/proxy/router.go`` ``getServerWithResolver``: ``GetNodes`` on the site's
    ``CachingAccessPoint``, which a watcher keeps current). tpemu's registry polls instead
    (:meth:`NodeInventory.poll_interval`: :data:`~tpemu.proxy.tunnels.DIRECT_POLL`, 5 s), so the
    kept inventory is between zero and one poll old. A lookup is answered from it without waiting
    when

    * it is at most :attr:`ttl` old (as before: the node list was reused for a second), or
    * it is at most three polls old and names exactly one node **that is reached through a tunnel
      connected right now** (:meth:`NodeInventory.tunnel_serves_node`: an authenticated tunnel of
      that host ID whose certificate's role may serve nodes, as :meth:`TunnelRegistry.dial
      <tpemu.proxy.tunnels.TunnelRegistry.dial>` checks again). Such a node cannot be a removed
      one: the tunnel is the node, the registry drops it the moment it closes, and the dial goes
      over that tunnel or fails. When the poll is late (the inventory older than one poll and
      :attr:`ttl`), a refresh starts in the background, for the next lookup.

    Anything else waits for a refresh first, as before: a directly joined node (the inventory is
    all that says it is still there), a name that matches several nodes or none, a node whose
    tunnel is not connected, an inventory older than three polls (the Auth Service unreachable:
    the lookup then reports its error). What the kept answer can miss for at most a poll is a
    change that lets nobody in: a node's new labels or hostname (node access is checked by the
    node, on the user's certificate), or a second node taking the same name (the first one is
    still the one the name meant a moment ago).
    """

    def __init__(self, source: NodeInventory, ttl: float = NODE_CACHE_TTL, max_stale: float | None = None) -> None:
        self.source = source
        self.ttl = ttl
        #: ``None``: three polls of the source.
        self.max_stale = max_stale
        self._items: list[Any] | None = None
        self._nodes: list[NodeRecord] = []
        self._lock = asyncio.Lock()
        self._behind: asyncio.Task[None] | None = None
        #: Lookups answered from the kept inventory past :attr:`ttl`, and refreshes started for them.
        self.stats = {"kept": 0, "refreshed_behind": 0}

    def _kept(self) -> tuple[list[NodeRecord], float]:
        items, at = self.source.kept_nodes()
        if items is not self._items:  # the registry replaces the list on every fetch
            self._nodes = [n for n in map(NodeRecord.from_resource, items) if n is not None]
            self._items = items
        return self._nodes, at

    async def nodes(self, fresh: bool = False) -> list[NodeRecord]:
        """The nodes, asked of the Auth Service first when older than :attr:`ttl` (or ``fresh``);
        raises ``AuthAPIError``. One refresh at a time: a lookup waiting behind one reuses it."""
        async with self._lock:
            if fresh or time.monotonic() - self._kept()[1] > self.ttl:
                await self.source.node_inventory(fresh)
            return list(self._kept()[0])

    def _answer_kept(self, host: str, port: int) -> list[NodeRecord] | None:
        """What the kept inventory answers without waiting (see the class), or ``None``."""
        nodes, at = self._kept()
        age = time.monotonic() - at
        found = match_nodes(nodes, host, port)
        if not found:
            return None
        if age <= self.ttl:
            return found
        poll = self.source.poll_interval()
        if age > (self.max_stale if self.max_stale is not None else 3 * poll):
            return None
        if len(found) == 1 and found[0].use_tunnel and self.source.tunnel_serves_node(found[0].host_id):
            self.stats["kept"] += 1
            if age > max(poll, self.ttl):
                self._refresh_behind()  # the poll is late
            return found
        return None

    def _refresh_behind(self) -> None:
        if self._behind is not None and not self._behind.done():
            return

        async def refresh() -> None:
            try:
                await self.nodes()
            except authapi.AuthAPIError as exc:  # the next lookup past max_stale reports it
                log.debug("refreshing the node inventory failed: %s", exc)

        self.stats["refreshed_behind"] += 1
        self._behind = asyncio.get_running_loop().create_task(refresh())

    async def close(self) -> None:
        if self._behind is not None:
            self._behind.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._behind

    async def resolve(self, host: str, port: int) -> NodeRecord:
        """The one node ``host`` names; raises :class:`NodeLookupError` (or ``AuthAPIError``)."""
        found = self._answer_kept(host, port)
        if found is None:
            found = match_nodes(await self.nodes(), host, port)
            if not found:
                found = match_nodes(await self.nodes(fresh=True), host, port)  # it may have just joined
        if len(found) > 1:
            ids = ", ".join(f"{n.hostname} ({n.host_id})" for n in found)
            raise NodeLookupError(f"ambiguous host could match multiple nodes: {ids}; "
                                  "address the node by its unique id (user@host-id)")
        if not found:
            raise NodeLookupError(f"node {host!r} not found: direct dialing to nodes not found in inventory is "
                                  "not supported (no registered node has that name, host ID or address; "
                                  "tpemu ls lists them)")
        return found[0]


__all__ = ["NODE_CACHE_TTL", "NODE_PORT", "NodeDirectory", "NodeInventory", "NodeLookupError", "NodeRecord",
           "match_nodes"]
