"""tests.realservers.reap_orphans: a killed test run's servers are stopped by the next run, and
nothing of a live run (or of another user) is touched."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import realservers


def _server(d: Path) -> subprocess.Popen[bytes]:
    # Stands for a server given a path in its folder on its command line (postgres -D <d>/data).
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"{d}/data"],
                            start_new_session=True)


def test_a_dead_owners_servers_are_killed_and_a_live_ones_kept() -> None:
    dead = Path(tempfile.mkdtemp(prefix="tpemu-reaptest-"))
    live = Path(tempfile.mkdtemp(prefix="tpemu-reaptest-"))
    unmarked = Path(tempfile.mkdtemp(prefix="tpemu-reaptest-"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (dead / realservers.OWNER).write_text(f"{gone.pid} 1\n")  # a pid whose process (and start) is gone
    realservers.claim(live)
    procs = [_server(dead), _server(live), _server(unmarked)]
    try:
        reaped = realservers.reap_orphans()
        assert [line for line in reaped if str(dead) in line] == [
            f"{dead} (left by pid {gone.pid}; killed {procs[0].pid})"], reaped
        assert not any(str(live) in line or str(unmarked) in line for line in reaped)
        assert procs[0].wait(10) == -9
        assert not dead.exists()
        time.sleep(0.1)
        assert procs[1].poll() is None and procs[2].poll() is None
        assert live.exists() and unmarked.exists()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for d in (dead, live, unmarked):
            subprocess.run(["rm", "-rf", str(d)], check=False)
