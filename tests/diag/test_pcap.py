"""``tpemu inspect --pcap``: a real loopback capture (tcpdump) of real clients, every TCP stream
explained by the router's own decision function; captures written by dpkt for the edge cases
(retransmissions, out-of-order segments, a capture that starts mid-stream, garbage files)."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from tests import realservers
from tpemu import testing
from tpemu.cli import main
from tpemu.diag.pcap import PcapError, read_streams
from tpemu.testkit import Cluster
from tpemu.testkit.cluster import wait_for

TPEMU = [sys.executable, "-m", "tpemu"]
# The test's clients dial from their own loopback source: the cluster's own connections to the web
# port (the agent's reverse tunnel and its heartbeats) would otherwise be a fourth, SYN-less stream
# in the capture whenever they happen to send during it.
CLIENT = "127.0.0.9"


@pytest.mark.e2e
async def test_capture_of_real_clients(tmp_path: Path) -> None:
    tcpdump = realservers.binary("tcpdump")
    async with Cluster(tmp_path / "c", nodes=(), databases=()) as c:
        cap = tmp_path / "cap.pcap"
        proc = await asyncio.create_subprocess_exec(
            tcpdump, "-i", "lo", "--immediate-mode", "-U", "-w", str(cap), f"host {CLIENT} and tcp port {c.web.port}",
            stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stderr is not None
            line = await asyncio.wait_for(proc.stderr.readline(), 20)  # "listening on lo, …"
            assert b"listening on" in line, line
            ctx = ssl.create_default_context(cafile=str(c.ca))
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            _, w = await asyncio.open_connection(c.web.host, c.web.port, ssl=ctx, server_hostname="localhost",
                                               local_addr=(CLIENT, 0))
            w.close()
            r, w = await asyncio.open_connection(c.web.host, c.web.port, local_addr=(CLIENT, 0))
            w.write(b"SSH-2.0-pcap_test\r\n")
            await w.drain()
            await asyncio.wait_for(r.readline(), 10)
            w.close()
            r, w = await asyncio.open_connection(c.web.host, c.web.port, local_addr=(CLIENT, 0))
            w.write(b"\x00garbage\r\n")
            await w.drain()
            await asyncio.wait_for(r.read(), 10)
            w.close()

            def captured() -> bool:  # the three streams' first bytes are in the file
                try:
                    return sum(1 for st in read_streams(cap) if st.client_bytes()) >= 3
                except PcapError:  # tcpdump is in the middle of a record
                    return False

            # Generous: under load tcpdump may be scheduled late; it writes every packet (-U).
            try:
                await wait_for(captured, timeout=45, what="tcpdump to write the three streams")
                waited_out = False
            except TimeoutError:
                waited_out = True  # reported below with what was captured and tcpdump's own summary
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.stderr is not None
            summary = (await asyncio.wait_for(proc.stderr.read(), 10)).decode()
            await asyncio.wait_for(proc.wait(), 10)
    seen = [(st.client, st.server, st.syn_seen, len(st.client_bytes()), st.back_bytes) for st in read_streams(cap)]
    assert not waited_out, ("tcpdump did not write three streams with client bytes", seen, summary)
    result = await asyncio.to_thread(subprocess.run, [*TPEMU, "inspect", "--pcap", str(cap)], capture_output=True,
                                     text=True, timeout=60)
    out = result.stdout
    assert result.returncode == 2, (result.stderr, out, summary)  # one stream was refused
    assert out.count("stream ") == 3 and "no SYN seen" not in out, (out, summary)
    assert "route:    web" in out and "decoded:  sni=localhost alpn=h2,http/1.1 versions=TLSv1.3,TLSv1.2" in out
    assert "route:    ssh-proxy" in out and "unrecognized protocol" in out


def write_pcap(path: Path, packets: list[tuple[bytes, int, int, int, bytes]]) -> None:
    """(src ip, sport, seq, flags, payload) → dst 127.0.0.1:3080, in an Ethernet pcap."""
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for i, (src, sport, seq, flags, payload) in enumerate(packets):
            tcp = dpkt.tcp.TCP(sport=sport, dport=3080, seq=seq, flags=flags, data=payload)
            ip = dpkt.ip.IP(src=src, dst=bytes([127, 0, 0, 1]), p=dpkt.ip.IP_PROTO_TCP, data=tcp)
            ip.len = len(ip)
            w.writepkt(bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)), ts=1000.0 + i)


def test_reassembly_out_of_order_retransmitted_and_mid_stream(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    hello = testing.client_hello("pcap.test", ["teleport-proxy-ssh"])
    a, b, c3 = hello[:100], hello[100:300], hello[300:]
    local = bytes([127, 0, 0, 1])
    syn, psh = dpkt.tcp.TH_SYN, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    cap = tmp_path / "edge.pcap"
    write_pcap(cap, [
        (local, 40000, 999, syn, b""),
        (local, 40000, 1000 + 100, psh, b),         # out of order
        (local, 40000, 1000, psh, a),
        (local, 40000, 1000, psh, a),               # a retransmission
        (local, 40000, 1000 + 300, psh, c3),
        (bytes([127, 0, 0, 2]), 40001, 5000, psh, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),  # no SYN captured
    ])
    assert main(["inspect", "--pcap", str(cap)]) == 0
    out = capsys.readouterr().out
    assert f"stream 1: 127.0.0.1:40000 → 127.0.0.1:3080 (t=+0.000s; {len(hello)} bytes from the client" in out
    assert "route:    ssh-proxy" in out and "sni=pcap.test" in out
    assert "stream 2: 127.0.0.2:40001 → 127.0.0.1:3080" in out and "no SYN seen" in out


def test_bad_captures_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all" * 10)
    assert main(["inspect", "--pcap", str(junk)]) == 2
    assert capsys.readouterr().err == f"tpemu: {junk} is neither a pcap nor a pcapng capture\n"
    assert main(["inspect", "--pcap", str(tmp_path / "missing.pcap")]) == 2
    assert "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty.pcap"
    write_pcap(empty, [])
    assert main(["inspect", "--pcap", str(empty)]) == 2
    assert "no TCP streams" in capsys.readouterr().out
