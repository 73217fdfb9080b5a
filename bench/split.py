"""How the cost-growth bench spreads N held connections over processes (pure functions).

The descriptor limit (``RLIMIT_NOFILE``) is per process: a machine whose hard limit is 20,000 and
that may not raise it (no ``CAP_SYS_RESOURCE``) still holds 50,000 proxied connections when every
party is split over processes that each stay under it:

* the **proxy** (the subject): two descriptors per proxied connection plus :data:`SPARE_FDS`;
  ``W`` processes on one port with ``SO_REUSEPORT`` (tpemu's ``proxy_service.workers``, several
  HAProxy processes), the kernel choosing one by a hash of the 4-tuple, so each gets about
  ``N / W`` and :func:`processes_for` leaves :data:`IMBALANCE` of headroom for the hash's spread;
* the **load generator** and the **backends**: one descriptor per connection; groups of at most
  :func:`group_size` connections, each from its own source address (a source reaches one target
  through ~28,000 ephemeral ports) to its own backend process.

A point is a :class:`Split` (count, proxy processes, groups). :func:`plan` gives two series per
subject: ``fit`` (the fewest processes that hold each count: 1, 2, 6 … — the split changes
along the series) and, when those differ, ``same`` (every count at the largest count's split, so
its growth ratio compares like with like). :func:`spread_problems` says which process a real run
put past (or at) its limit, from the counts per process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tpemu.errors import LocalFault

#: Descriptors a proxy process needs besides the held connections: the 64 concurrent new ones of
#: the rate measurement (two each), listeners, logs, the loop. Too few and the rate measures EMFILE.
SPARE_FDS = 600
#: Headroom for the kernel's SO_REUSEPORT spread: a process may get this much more than N / W.
IMBALANCE = 0.15
#: Held connections per source address (well under one source's ~28,000 ephemeral ports).
PORTS_PER_SOURCE = 15_000
#: Descriptors of a load generator or backend process besides its connections (epoll, pipes, listener).
LOADGEN_SPARE_FDS = 100
#: tpemu's ``proxy_service.workers`` bound (tpemu/config.py).
MAX_PROCESSES = 64


class SplitError(LocalFault, ValueError):
    """A count that no split within :data:`MAX_PROCESSES` processes fits under the limit."""


@dataclass(frozen=True)
class Split:
    """One measured point: ``count`` held connections over ``processes`` proxy processes, opened in
    groups of ``groups`` (each its own source address, load-generator process and backend)."""

    count: int
    processes: int
    groups: int

    def per_process(self) -> int:
        """Connections each proxy process holds when the kernel spreads them evenly."""
        return math.ceil(self.count / self.processes)

    def group_sizes(self) -> list[int]:
        """``count`` in ``groups`` near-equal parts (the first ones one larger)."""
        base, extra = divmod(self.count, self.groups)
        return [base + (1 if k < extra else 0) for k in range(self.groups)]


def proxy_fds(connections: int) -> int:
    """Descriptors a proxy process needs to hold ``connections`` (two each) and do its work."""
    return 2 * connections + SPARE_FDS


def capacity(limit: int) -> int:
    """Proxied connections one process holds under a descriptor limit of ``limit``."""
    return max(0, (limit - SPARE_FDS) // 2)


def processes_for(count: int, limit: int, imbalance: float = IMBALANCE) -> int:
    """The fewest proxy processes that hold ``count`` under ``limit`` each.

    One process when it fits whole; more with ``imbalance`` of headroom each, since the kernel
    places connections by hash and does not count them. Raises :class:`SplitError` past
    :data:`MAX_PROCESSES` or when the limit leaves no room for a single connection.
    """
    if count < 1:
        raise SplitError(f"a count of {count} connections: nothing to hold")
    cap = capacity(limit)
    if cap < 1:
        raise SplitError(f"RLIMIT_NOFILE {limit} leaves no room for a proxied connection "
                         f"(each process needs {SPARE_FDS} spare descriptors)")
    if count <= cap:
        return 1
    w = max(2, math.ceil(count * (1 + imbalance) / cap))
    if w > MAX_PROCESSES:
        raise SplitError(f"{count} connections need {w} proxy processes of at most {cap} connections each "
                         f"(RLIMIT_NOFILE {limit}, two descriptors per connection, {imbalance:.0%} headroom for "
                         f"the SO_REUSEPORT spread): more than the {MAX_PROCESSES} workers tpemu allows")
    return w


def group_size(limit: int) -> int:
    """Connections per load-generator process / backend / source address under ``limit``."""
    size = min(PORTS_PER_SOURCE, limit - LOADGEN_SPARE_FDS)
    if size < 1:
        raise SplitError(f"RLIMIT_NOFILE {limit} leaves no room for a load generator's connections")
    return size


def groups_for(count: int, limit: int) -> int:
    return math.ceil(count / group_size(limit))


def plan(counts: tuple[int, ...], limit: int) -> tuple[dict[str, list[Split]], dict[str, str]]:
    """The series to measure: ``{"fit": [...], "same": [...]}`` and ``{count: why}`` for counts
    that no split holds (left out of both series).

    ``fit``: each count at the fewest processes that hold it. ``same`` (only when ``fit`` changes
    the proxy's process count): every count at the largest count's processes and groups.
    """
    skipped: dict[str, str] = {}
    fit: list[Split] = []
    for count in dict.fromkeys(counts):
        try:
            fit.append(Split(count, processes_for(count, limit), groups_for(count, limit)))
        except SplitError as exc:
            skipped[str(count)] = str(exc)
    series: dict[str, list[Split]] = {"fit": fit}
    if fit:
        top = max(fit, key=lambda s: s.count)
        # The subject's process count decides (the load generator's groups change with the count
        # even in one process, as they always did); the same series also takes the largest's groups.
        if any(s.processes != top.processes for s in fit):
            series["same"] = [Split(s.count, top.processes, top.groups) for s in fit]
    return series, skipped


def spread_problems(held: list[int], fds: list[int], limit: int) -> list[str]:
    """What went wrong per proxy process, from the connections each holds (``held``) and the
    descriptors it has open (``fds``): past its share of the limit, or at the limit itself."""
    problems = []
    for i, (n, open_fds) in enumerate(zip(held, fds, strict=True)):
        if open_fds >= limit - 1:
            problems.append(f"proxy process {i} is at its descriptor limit ({open_fds} open, RLIMIT_NOFILE {limit}) "
                            f"with {n} connections: connections the kernel hashed to it beyond that wait or fail")
        elif proxy_fds(n) > limit:
            problems.append(f"proxy process {i} holds {n} connections: {proxy_fds(n)} descriptors with its spares, "
                            f"over its RLIMIT_NOFILE of {limit} (the rate measurement may see EMFILE)")
    return problems


def spread(held: list[int]) -> float | None:
    """The largest process's share over the even share (1.0: perfectly even)."""
    total = sum(held)
    if not held or total <= 0:
        return None
    return round(max(held) * len(held) / total, 3)
