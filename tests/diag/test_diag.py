"""Diagnostics on diag_addr: /metrics checked by Prometheus's own tooling (``promtool check
metrics``) and scraped by a real Prometheus; /healthz and /readyz in Teleport's JSON shape
(``lib/service/state.go``, ``readinessHandler``); ``log.format.output: json`` with Teleport's
field names (``lib/utils/log/slog_json_handler.go``)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests import realservers
from tpemu import logs
from tpemu.agent.tunnel import TunnelState
from tpemu.config import Addr
from tpemu.diag.metrics import Sources
from tpemu.diag.server import DEGRADED, STARTING, readiness
from tpemu.testkit import Cluster
from tpemu.testkit.cluster import wait_for


def get(addr: Addr, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


async def drive(c: Cluster, tls_conns: int = 3) -> None:
    """Real connections of three kinds: TLS with ALPN (routed), an SSH banner, garbage (refused)."""
    ctx = ssl.create_default_context(cafile=str(c.ca))
    ctx.set_alpn_protocols(["http/1.1"])
    for _ in range(tls_conns):
        _, w = await asyncio.open_connection(c.web.host, c.web.port, ssl=ctx, server_hostname="localhost")
        w.close()
    r, w = await asyncio.open_connection(c.web.host, c.web.port)
    w.write(b"garbage\r\n\r\n")
    await w.drain()
    await asyncio.wait_for(r.read(), 5)
    w.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition (the test's own reading, not prometheus-client's)."""
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head == name or (head.startswith(name + "{") and all(f'{k}="{v}"' in head for k, v in labels.items())):
            return float(value)
    raise AssertionError(f"no sample {name}{labels} in the exposition")


async def test_metrics_health_and_promtool(tmp_path: Path) -> None:
    async with Cluster(tmp_path, nodes=(), diag=True) as c:
        diag = c.diag_addr
        await drive(c)
        # Compact, as Teleport's (lib/service: roundtrip.ReplyJSON(w, http.StatusOK, {"status": "ok"})).
        assert await asyncio.to_thread(get, diag, "/healthz") == (200, "application/json", '{"status":"ok"}')
        status, _, body = await asyncio.to_thread(get, diag, "/readyz")
        assert status == 200 and json.loads(body) == {"status": "ok", "pid": os.getpid()}
        status, ctype, text = await asyncio.to_thread(get, diag, "/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        routed = metric(text, "tpemu_proxy_connections_total", listener="web", protocol="tls", route="web")
        assert routed >= 3
        assert metric(text, "tpemu_proxy_connections_refused_total", reason="unknown-protocol") == 1
        assert metric(text, "tpemu_proxy_reverse_tunnels") == 1  # the database agent
        assert metric(text, "tpemu_agent_tunnels_up", agent="db") == 1
        assert metric(text, "tpemu_proxy_sniff_seconds_count") == metric(text, "tpemu_proxy_sniff_seconds_bucket",
                                                                         le="+Inf")
        assert metric(text, "process_resident_memory_bytes") > 0
        # a database connection's bytes are counted per route when it ends
        user = await c.user("alice")
        import asyncpg

        conn = await asyncpg.connect(await user.db_url("pg"), timeout=10)
        await conn.fetchval("select 1")
        await conn.close()
        await wait_for(lambda: c.proxy.db.bytes[("database/postgres", "out")] > 0, what="the relay to end")
        text = (await asyncio.to_thread(get, diag, "/metrics"))[2]
        assert metric(text, "tpemu_proxy_bytes_total", route="database/postgres", direction="out") > 0
        # Prometheus's own linter on the exposition
        promtool = realservers.binary("promtool")
        check = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"], input=text,
                                        capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        assert await asyncio.to_thread(get, diag, "/nope") == (404, "application/json", json.dumps(
            {"error": {"message": "/nope: not found (try /metrics, /healthz, /readyz or /routing)"}}, indent=2) + "\n")


@pytest.mark.e2e
async def test_a_real_prometheus_scrapes_it(tmp_path: Path) -> None:
    exe = realservers.binary("prometheus")
    async with Cluster(tmp_path / "c", nodes=(), databases=(), diag=True) as c:
        await drive(c, tls_conns=5)
        port = realservers.free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(f"global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n"
                       f"  - job_name: tpemu\n    static_configs: [{{targets: ['{c.diag_addr}']}}]\n")
        log = (tmp_path / "prometheus.log").open("wb")
        argv = [exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}"]
        # a server in the background, stopped by its PID below
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
        try:
            def query(q: str) -> list[dict[str, Any]]:
                url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.request.quote(q)}"
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        data = json.loads(r.read())
                except OSError:
                    return []
                result: list[dict[str, Any]] = data["data"]["result"]
                return result

            deadline = time.monotonic() + 60
            found: list[dict[str, Any]] = []
            while time.monotonic() < deadline and proc.poll() is None:
                found = await asyncio.to_thread(query, 'tpemu_proxy_connections_total{route="web"}')
                if found:
                    break
                await asyncio.sleep(0.5)
            assert found, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert found[0]["metric"]["listener"] == "web" and float(found[0]["value"][1]) >= 5
            up = await asyncio.to_thread(query, 'up{job="tpemu"}')
            assert up and up[0]["value"][1] == "1"
            hist = await asyncio.to_thread(query, "tpemu_proxy_sniff_seconds_count")
            assert hist and float(hist[0]["value"][1]) >= 6
        finally:
            realservers.stop(proc)  # type: ignore[arg-type]
            log.close()


async def test_readyz_degraded_when_a_tunnel_drops(tmp_path: Path) -> None:
    async with Cluster(tmp_path, nodes=(), diag=True) as c:
        await c.proxy.close()  # the agents lose their reverse tunnels
        agent = c.agents["db"]
        await wait_for(lambda: not agent.tunnels[0].state.connected.is_set(), what="the tunnel to drop")
        status, _, body = await asyncio.to_thread(get, c.diag_addr, "/readyz")
        assert (status, json.loads(body)) == (503, {"status": DEGRADED, "pid": os.getpid()})


def test_readiness_states() -> None:
    # A tunnel that never connected yet: Teleport's "starting" (400); one that dropped: degraded.
    fresh = TunnelState()
    agent = SimpleNamespace(tunnels=[SimpleNamespace(state=fresh)])
    assert readiness(Sources(agents=[agent])) == (400, STARTING)
    fresh.connects = 1
    assert readiness(Sources(agents=[agent])) == (503, DEGRADED)
    fresh.connected.set()
    assert readiness(Sources(agents=[agent])) == (200, "ok")


def test_json_log_lines_have_teleports_field_names() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JSONFormatter())
    logger = logging.getLogger("tpemu.proxy.frontdoor")
    logger.addHandler(handler)
    try:
        logger.warning("conn=%d refused", 7)
        logger.log(logs.TRACE, "bytes")  # below the logger's level: not written
    finally:
        logger.removeHandler(handler)
    record = json.loads(out.getvalue())
    assert list(record) == ["timestamp", "level", "caller", "message", "component"]
    assert record["level"] == "warning" and record["message"] == "conn=7 refused"
    assert record["component"] == "proxy.frontdoor" and record["caller"].startswith("test_diag.py:")
    assert record["timestamp"].endswith("Z") and "T" in record["timestamp"]
    only = logs.JSONFormatter(("level", "component"))
    rec = logging.LogRecord("tpemu.auth", logging.INFO, __file__, 1, "hi", None, None)
    assert json.loads(only.format(rec)) == {"level": "info", "message": "hi", "component": "auth"}
    with pytest.raises(ValueError, match="unknown field"):
        logs.JSONFormatter(("colour",))


def test_start_logs_json(tmp_path: Path) -> None:
    """``tpemu start`` with ``log.format.output: json`` writes JSON lines from the first one."""
    import sys

    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"teleport:\n  data_dir: {tmp_path / 'data'}\n  log:\n    format: {{output: json}}\n"
                   "auth_service: {listen_addr: '127.0.0.1:0'}\nproxy_service: {enabled: false}\n"
                   "ssh_service: {enabled: false}\n")
    proc = subprocess.Popen([sys.executable, "-m", "tpemu", "start", "-c", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(10)
    record = json.loads(line)
    assert record["level"] == "info" and record["component"].startswith("auth") and "message" in record
