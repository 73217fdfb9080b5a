"""The live routing page in a real headless Chromium: real connections arrive and the page shows
each one with its first bytes decoded and the decision, the route counters and the tunnels; at
about 1,000 connections/s it stays responsive (batched, sampled updates: tpemu.diag.feed)."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from tests import realservers
from tests.diag.cdp import chromium
from tpemu.testkit import Cluster
from tpemu.testkit.cluster import wait_for

pytestmark = pytest.mark.e2e

ROWS = """[...document.querySelectorAll('#conns tr')].map(r => ({conn: r.dataset.conn, cls: r.className,
          text: r.innerText}))"""


async def until(browser: Any, expression: str, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await browser.evaluate(expression)
        except RuntimeError:  # the page is still loading (no body yet)
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never showed {what}")
        await asyncio.sleep(0.1)


async def test_page_shows_connections_as_they_arrive(tmp_path: Path) -> None:
    exe = realservers.binary("chromium")
    async with Cluster(tmp_path / "c", diag=True) as c:
        feed = c.diag.feed
        url = f"http://{c.diag_addr}/routing"
        async with chromium(exe, url, tmp_path / "profile") as browser:
            await until(browser, "document.body && document.body.dataset.live === '1'", "the event stream open")
            await wait_for(lambda: feed.subscribers == 1, what="the page to subscribe")
            assert await browser.evaluate("document.querySelectorAll('#conns tr').length") == 0
            # A TLS client with SNI and ALPN (routed to the web API), an SSH client, garbage.
            ctx = ssl.create_default_context(cafile=str(c.ca))
            ctx.check_hostname = False
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            _, w = await asyncio.open_connection(c.web.host, c.web.port, ssl=ctx, server_hostname="live-page.test")
            w.close()
            r, w = await asyncio.open_connection(c.web.host, c.web.port)
            w.write(b"SSH-2.0-page_test\r\n")
            await w.drain()
            assert (await asyncio.wait_for(r.readline(), 10)).startswith(b"SSH-2.0-")
            w.close()
            r, w = await asyncio.open_connection(c.web.host, c.web.port)
            w.write(b"hello? \x00\x01\r\n\r\n")
            await w.drain()
            await asyncio.wait_for(r.read(), 10)
            w.close()
            rows = await until(browser, f"(() => {{ const rows = {ROWS}; "
                               "return rows.some(r => r.text.includes('SNI live-page.test')) && "
                               "rows.some(r => r.cls === 'refused') && rows.some(r => r.text.includes('ssh')) "
                               "&& rows; })()", "the three connections")
            tls_row = next(r for r in rows if "SNI live-page.test" in r["text"])
            # the decoded ClientHello: record header, ALPN list, versions, key shares; the decision
            for part in ("TLS record TLSv1.0", "ALPN", "h2", "http/1.1", "versions", "TLSv1.3", "key shares",
                         "x25519", "web"):
                assert part in tls_row["text"], (part, tls_row["text"])
            ssh_row = next(r for r in rows if "SSH-2.0-page_test" in r["text"])
            assert "ssh-proxy" in ssh_row["text"]
            refused = next(r for r in rows if r["cls"] == "refused")
            assert "refused: unknown-protocol" in refused["text"] and "unrecognized protocol" in refused["text"]
            routes = await browser.evaluate("Object.fromEntries([...document.querySelectorAll('#routes tr')]"
                                            ".map(r => [r.dataset.key, +r.querySelector('.count').textContent]))")
            assert routes["ssh-proxy"] >= 1 and routes["web"] >= 1
            tunnels = await browser.evaluate("document.querySelectorAll('#tunnels tr[data-host]').length")
            assert tunnels == 2  # node1 and the database agent
            shot = tmp_path / "routing.png"
            await browser.screenshot(shot)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("TPEMU_SCREENSHOT"):
                Path(os.environ["TPEMU_SCREENSHOT"]).write_bytes(shot.read_bytes())


async def test_page_stays_responsive_at_1000_connections_per_second(tmp_path: Path) -> None:
    exe = realservers.binary("chromium")
    async with Cluster(tmp_path / "c", nodes=(), databases=(), diag=True) as c:
        feed = c.diag.feed
        async with chromium(exe, f"http://{c.diag_addr}/routing", tmp_path / "profile") as browser:
            await until(browser, "document.body && document.body.dataset.live === '1'", "the event stream open")
            await wait_for(lambda: feed.subscribers == 1, what="the page to subscribe")

            async def one() -> None:
                r, w = await asyncio.open_connection(c.web.host, c.web.port)
                w.write(b"GARBAGE\r\n\r\n")
                await w.drain()
                await r.read()
                w.close()

            total, started = 2000, time.monotonic()
            latencies = []
            for i in range(0, total, 100):  # a bounded load: 2,000 connections, 100 at a time
                await asyncio.gather(*(one() for _ in range(100)))
                if i % 500 == 0:  # how long the page takes to answer while it is being fed
                    t = time.monotonic()
                    await browser.evaluate("document.querySelectorAll('#conns tr').length")
                    latencies.append(time.monotonic() - t)
            rate = total / (time.monotonic() - started)
            await until(browser, f"+document.getElementById('accepted').textContent >= {total}", "the exact counter")
            rows = await browser.evaluate("document.querySelectorAll('#conns tr').length")
            print(f"\nrouting page under load: {rate:.0f} conn/s, page answered in "
                  f"{max(latencies) * 1000:.0f} ms at worst, {rows} rows kept")
            assert rows <= 200  # the table is capped; the counters are exact
            assert max(latencies) < 2.0
            assert rate > 100, f"the load generator only reached {rate:.0f} conn/s on this machine"
