"""The ``/metrics`` exposition: a prometheus-client collector that reads tpemu's plain counters
when Prometheus scrapes, so the per-connection path only ever does dict increments.

Measured on this machine (issue 14): a prometheus-client ``labels(...).inc()`` costs about 1 µs,
a ``Counter[key] += 1`` 0.075 µs; the router decides a connection in a few µs, so the labels
call would be a measurable share of it. Names are ``tpemu_*``; the process metrics
(``process_*``, ``python_*``) are prometheus-client's own collectors, as Teleport exports Go's
``process_*``/``go_*`` ones (``lib/service``, ``metrics.RegisterPrometheusCollectors``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from tpemu import TELEPORT_VERSION, __version__


@dataclass
class Sources:
    """What one process runs: read at every scrape (lists may grow while it runs)."""

    proxies: list[Any] = field(default_factory=list)
    agents: list[Any] = field(default_factory=list)
    auth: list[Any] = field(default_factory=list)


class TpemuCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        from tpemu.proxy.frontdoor import SNIFF_BUCKETS

        proxies = self.sources.proxies
        info = GaugeMetricFamily("tpemu_build_info", "tpemu's version and the Teleport version it emulates",
                                 labels=["version", "teleport_version"])
        info.add_metric([__version__, TELEPORT_VERSION], 1)
        yield info

        accepted = CounterMetricFamily("tpemu_proxy_connections_accepted", "TCP connections accepted by the proxy")
        routed = CounterMetricFamily("tpemu_proxy_connections", "Connections routed, by listener, detected protocol "
                                     "and route", labels=["listener", "protocol", "route"])
        refused = CounterMetricFamily("tpemu_proxy_connections_refused", "Connections refused before routing, by "
                                      "reason", labels=["reason"])
        pending = GaugeMetricFamily("tpemu_proxy_connections_sniffing", "Connections whose first bytes are being read")
        active = GaugeMetricFamily("tpemu_proxy_connections_active", "Routed connections whose handler is running "
                                   "(TLS termination, web, SSH, databases)")
        spliced = GaugeMetricFamily("tpemu_proxy_connections_spliced", "Pass-through connections spliced to a backend")
        bytes_ = CounterMetricFamily("tpemu_proxy_bytes", "Bytes relayed when a connection ended, by route and "
                                     "direction (in: client to backend)", labels=["route", "direction"])
        tunnels = GaugeMetricFamily("tpemu_proxy_reverse_tunnels", "Agents connected over reverse tunnels")
        missed = CounterMetricFamily("tpemu_proxy_heartbeats_missed", "Times an agent's heartbeats stopped for "
                                     "keep_alive_count_max intervals")
        by_route: Counter[tuple[str, str, str]] = Counter()
        by_reason: Counter[str] = Counter()
        by_bytes: Counter[tuple[str, str]] = Counter()
        counts = [0] * (len(SNIFF_BUCKETS) + 1)
        total_sum = 0.0
        n_accepted = n_pending = n_active = n_spliced = n_tunnels = n_missed = 0
        for proxy in proxies:
            stats = proxy.door.stats
            n_accepted += stats.accepted
            n_pending += stats.pending
            n_active += stats.active
            n_spliced += stats.spliced
            by_route.update(stats.by_route)
            by_reason.update(stats.refused)
            by_bytes.update(stats.bytes)
            by_bytes.update(getattr(proxy.db, "bytes", {}))
            counts = [a + b for a, b in zip(counts, stats.sniff_counts)]
            total_sum += stats.sniff_sum
            registry = getattr(proxy, "tunnels", None)
            if registry is not None:
                n_tunnels += sum(1 for a in registry.agents.values() if a.transport_ready)
                n_missed += registry.heartbeats_missed
        accepted.add_metric([], n_accepted)
        for route_key, n in sorted(by_route.items()):
            routed.add_metric(list(route_key), n)
        for reason, n in sorted(by_reason.items()):
            refused.add_metric([reason], n)
        pending.add_metric([], n_pending)
        active.add_metric([], n_active)
        spliced.add_metric([], n_spliced)
        for key, n in sorted(by_bytes.items()):
            bytes_.add_metric(list(key), n)
        tunnels.add_metric([], n_tunnels)
        missed.add_metric([], n_missed)
        cumulative, running = [], 0
        for bound, n in zip([*(repr(b) for b in SNIFF_BUCKETS), "+Inf"], counts):
            running += n
            cumulative.append((bound, running))
        sniff = HistogramMetricFamily("tpemu_proxy_sniff_seconds", "Time from accept to the routing decision",
                                      buckets=cumulative, sum_value=total_sum)
        if proxies:
            yield from (accepted, routed, refused, pending, active, spliced, bytes_, tunnels, missed, sniff)

        if self.sources.agents:
            up = GaugeMetricFamily("tpemu_agent_tunnels_up", "Reverse tunnels of this process's agents that are "
                                   "connected, by agent and service", labels=["agent", "service"])
            for agent in self.sources.agents:
                for t in agent.tunnels:
                    up.add_metric([agent.nodename, t.name], 1 if t.state.connected.is_set() else 0)
            yield up


def registry_for(sources: Sources) -> CollectorRegistry:
    """A registry of its own (not the global default): several clusters may share one process."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TpemuCollector(sources))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

