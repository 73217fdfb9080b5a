"""The decision feed: batches are bounded whatever the rate (sampled, with the skipped count),
nothing is watched when nobody listens, and the JSON-lines decision trace."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

from tpemu.diag import feed as feed_mod
from tpemu.testkit import Cluster
from tpemu.testkit.cluster import wait_for


async def garbage(c: Cluster, n: int) -> None:
    async def one() -> None:
        r, w = await asyncio.open_connection(c.web.host, c.web.port)
        w.write(b"BAD\r\n\r\n")
        await w.drain()
        await r.read()
        w.close()

    await asyncio.gather(*(one() for _ in range(n)))


async def test_batches_are_bounded_and_count_what_they_skip(tmp_path: Path) -> None:
    async with Cluster(tmp_path, nodes=(), databases=(), diag=True) as c:
        feed = c.diag.feed
        assert c.proxy.door.watch is None  # no page open, no trace: the front door does not call out
        batches = feed.batches()
        first = await anext(batches)
        assert first["connections"] == [] and c.proxy.door.watch is feed
        await garbage(c, 120)
        shown = skipped = 0
        while shown + skipped < 120:
            batch = await asyncio.wait_for(anext(batches), 5)
            assert len(batch["connections"]) <= feed_mod.BATCH_MAX
            shown += len(batch["connections"])
            skipped += batch["skipped"]
            for conn in batch["connections"]:
                assert conn["decision"] == "refused" and conn["route"] == "unknown-protocol"
                assert conn["decoded"]["hex"].startswith("42 41 44")
        assert shown + skipped == 120 and skipped > 0
        assert batch["state"]["refused"]["unknown-protocol"] == 120
        await batches.aclose()
        assert feed.subscribers == 0 and c.proxy.door.watch is None


async def test_decision_trace_file(tmp_path: Path) -> None:
    trace = tmp_path / "decisions.jsonl"
    async with Cluster(tmp_path / "c", nodes=(), databases=(), trace=trace) as c:
        ctx = ssl.create_default_context(cafile=str(c.ca))
        ctx.set_alpn_protocols(["http/1.1"])
        _, w = await asyncio.open_connection(c.web.host, c.web.port, ssl=ctx, server_hostname="localhost")
        w.close()
        await garbage(c, 1)
        await wait_for(lambda: trace.exists() and len(trace.read_text().splitlines()) >= 2, what="the trace lines")
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    web = next(r for r in records if r.get("sni") == "localhost")
    assert web["decision"] == "routed" and web["route"] == "web" and web["alpn"] == ["http/1.1"]
    assert web["listener"] == "web" and web["protocol"] == "tls" and web["first_bytes"].startswith("1603")
    bad = next(r for r in records if r["decision"] == "refused")
    assert bad["reason_category"] == "unknown-protocol" and "unrecognized protocol" in bad["reason"]
