"""``tpemu fault`` and ``tpemu lab plan`` as a user runs them (subprocesses, bounded waits)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

TPEMU = str(Path(sys.executable).with_name("tpemu"))


def test_fault_api_serves_toxiproxy_shapes() -> None:
    proc = subprocess.Popen([TPEMU, "fault", "api", "--api-listen", "127.0.0.1:0", "--proxy",
                             "web=127.0.0.1:0:127.0.0.1:9"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "toxiproxy-compatible API on http://" in line, line + (proc.stderr.read() if proc.stderr else "")
        base = line.split("http://", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(f"http://{base}/version", timeout=10) as r:
            assert r.read().decode() == "2.9.0"
        with urllib.request.urlopen(f"http://{base}/proxies", timeout=10) as r:
            proxies = json.loads(r.read())
        assert proxies["web"]["upstream"] == "127.0.0.1:9" and proxies["web"]["enabled"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0


def test_fault_needs_an_upstream() -> None:
    out = subprocess.run([TPEMU, "fault", "l7-lb"], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and "needs --upstream HOST:PORT" in out.stderr


def test_lab_plan_prints_commands_without_running_them() -> None:
    out = subprocess.run([TPEMU, "lab", "plan"], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0 and "ip netns add tpemu-lab-router" in out.stdout and "policy drop" in out.stdout
