"""How the cost-growth bench splits held connections over processes (bench/split.py) and how it
finds the processes that accept on a port (bench/peers.py)."""

from __future__ import annotations

import math
import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import peers, split
from bench.split import Split


def test_processes_for_this_machines_limit() -> None:
    """The hard limit here is 20,000: 9,700 connections fit one process, 10,000 need two, 50,000 six."""
    assert split.capacity(20_000) == 9_700
    assert split.processes_for(1_000, 20_000) == 1
    assert split.processes_for(9_700, 20_000) == 1
    assert split.processes_for(9_701, 20_000) == 2
    assert split.processes_for(10_000, 20_000) == 2
    assert split.processes_for(50_000, 20_000) == 6


@given(count=st.integers(1, 400_000), limit=st.integers(split.SPARE_FDS + 2, 1 << 20))
def test_every_process_keeps_its_headroom_and_no_fewer_would(count: int, limit: int) -> None:
    try:
        w = split.processes_for(count, limit)
    except split.SplitError as exc:
        assert "64" in str(exc) and math.ceil(count * (1 + split.IMBALANCE) / split.capacity(limit)) > 64
        return
    assert 1 <= w <= split.MAX_PROCESSES
    if w == 1:
        assert split.proxy_fds(count) <= limit
    else:
        # With the hash spread's headroom each process still fits; one process fewer would not.
        assert split.proxy_fds(math.ceil(count * (1 + split.IMBALANCE) / w)) <= limit
        assert split.proxy_fds(count) > limit
        if w > 2:
            assert split.proxy_fds(math.ceil(count * (1 + split.IMBALANCE) / (w - 1))) > limit


def test_counts_no_split_holds_say_why() -> None:
    with pytest.raises(split.SplitError, match="more than the 64 workers"):
        split.processes_for(1_000_000, 20_000)
    with pytest.raises(split.SplitError, match="RLIMIT_NOFILE 500 leaves no room"):
        split.processes_for(10, 500)
    with pytest.raises(split.SplitError, match="nothing to hold"):
        split.processes_for(0, 20_000)


def test_groups_keep_each_source_and_loadgen_under_its_limits() -> None:
    assert split.group_size(20_000) == split.PORTS_PER_SOURCE == 15_000
    assert split.group_size(800) == 700  # a small limit: the load generator's own descriptors left free
    assert split.groups_for(50_000, 20_000) == 4 and split.groups_for(15_000, 20_000) == 1
    assert Split(50_000, 6, 4).group_sizes() == [12_500] * 4
    assert Split(1_000, 6, 4).group_sizes() == [250] * 4
    assert Split(10, 1, 3).group_sizes() == [4, 3, 3]
    assert Split(50_000, 6, 4).per_process() == 8_334


def test_plan_adds_the_same_split_series_only_when_the_split_changes() -> None:
    series, skipped = split.plan((1_000, 10_000, 50_000), 20_000)
    assert skipped == {}
    assert series["fit"] == [Split(1_000, 1, 1), Split(10_000, 2, 1), Split(50_000, 6, 4)]
    assert series["same"] == [Split(1_000, 6, 4), Split(10_000, 6, 4), Split(50_000, 6, 4)]
    series, _ = split.plan((1_000, 5_000), 20_000)
    assert series == {"fit": [Split(1_000, 1, 1), Split(5_000, 1, 1)]}
    # With CAP_SYS_RESOURCE (a limit raised to what 50,000 need) one process holds every count.
    series, _ = split.plan((1_000, 10_000, 50_000), split.proxy_fds(50_000))
    assert [s.processes for s in series["fit"]] == [1, 1, 1] and "same" not in series


def test_plan_leaves_out_what_no_split_holds() -> None:
    series, skipped = split.plan((1_000, 2_000_000), 20_000)
    assert series == {"fit": [Split(1_000, 1, 1)]}
    assert "2000000 connections need" in skipped["2000000"]


def test_spread_problems_name_the_process_at_or_past_its_limit() -> None:
    assert split.spread_problems([8_300, 8_400], [16_700, 16_900], 20_000) == []
    problems = split.spread_problems([8_300, 9_999], [16_700, 19_999], 20_000)
    assert len(problems) == 1 and problems[0].startswith("proxy process 1 is at its descriptor limit (19999 open")
    problems = split.spread_problems([9_800], [19_700], 20_000)
    assert problems == ["proxy process 0 holds 9800 connections: 20200 descriptors with its spares, over its "
                        "RLIMIT_NOFILE of 20000 (the rate measurement may see EMFILE)"]
    assert split.spread([5_947, 6_053]) == 1.009
    assert split.spread([500, 500]) == 1.0 and split.spread([]) is None and split.spread([0, 0]) is None


def test_listening_sockets_of_a_reuseport_port_and_their_process() -> None:
    """Two SO_REUSEPORT listeners on one port: both inodes found, both held by this process."""
    a, b = (socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2))
    try:
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        b.bind(("127.0.0.1", port))
        assert peers.listening_inodes(port) == set()  # bound, not listening yet
        a.listen()
        b.listen()
        inodes = peers.listening_inodes(port)
        assert len(inodes) == 2 and inodes <= peers.socket_inodes(os.getpid())
        assert peers.open_fds(os.getpid()) >= 2
    finally:
        a.close()
        b.close()
    assert peers.listening_inodes(port) == set()
    assert peers.socket_inodes(2**22 + 12345) == set() and peers.open_fds(2**22 + 12345) == 0


def test_cpu_user_and_system_time_of_a_busy_child() -> None:
    """A child that burns user time then system time: both show, and their sum is cpu_seconds."""
    import subprocess
    import sys

    code = ("import os\n"
            "n = 0\n"
            "for i in range(3_000_000): n += i\n"  # user time only
            "fd = os.open('/dev/zero', os.O_RDONLY)\n"
            "for _ in range(10_000): os.read(fd, 1 << 20)\n"  # mostly system time (clearing pages)
            "print('done', flush=True)\n"
            "import sys; sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        user, system = peers.cpu_user_system([child.pid])
        assert user >= 0.1 and system >= 0.05, (user, system)
        assert abs(peers.cpu_seconds([child.pid]) - (user + system)) < 0.05
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
        child.stdout.close()  # type: ignore[union-attr]
