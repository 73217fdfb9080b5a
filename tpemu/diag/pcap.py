"""``tpemu inspect --pcap FILE``: explain every TCP stream of a capture the way the router would.

The capture is read with dpkt (an optional extra: ``pip install 'tpemu[pcap]'``), pcap or pcapng,
Ethernet / Linux loopback / cooked / raw IP link types. Each TCP connection's client-to-server
bytes are reassembled in sequence order from its SYN (or its first segment when the capture
started mid-way), capped at :data:`MAX_BYTES`, then handed to :func:`tpemu.proxy.explain.explain`
— the router's own decision function — and to the learner's decoder
(:func:`tpemu.wire.hello_detail.describe`). With ``SSLKEYLOGFILE`` set while capturing,
Wireshark decrypts the same capture.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpemu.errors import LocalFault

#: Client bytes kept per stream: enough for the largest ClientHello the router accepts.
MAX_BYTES = 32 * 1024
#: Streams explained at most (a capture of a load test has thousands: the first ones are shown).
MAX_STREAMS = 1000


class PcapError(LocalFault):
    """The capture cannot be read (the message says why)."""


@dataclass
class TCPStream:
    client: tuple[str, int]
    server: tuple[str, int]
    first_ts: float
    syn_seen: bool = False
    isn: int | None = None
    segments: dict[int, bytes] = field(default_factory=dict)
    back_bytes: int = 0

    def client_bytes(self) -> bytes:
        """The client's bytes in order, from its ISN + 1 (or the lowest sequence number seen)."""
        if not self.segments:
            return b""
        start = (self.isn + 1) & 0xFFFFFFFF if self.isn is not None else min(self.segments)
        out = bytearray()
        pos = start
        for seq in sorted(self.segments, key=lambda s: (s - start) & 0xFFFFFFFF):
            data = self.segments[seq]
            offset = (pos - seq) & 0xFFFFFFFF
            if offset >= 0x80000000:  # a gap: what follows was not captured
                break
            if offset < len(data):  # skip what a retransmission repeats
                out += data[offset:]
                pos = (pos + len(data) - offset) & 0xFFFFFFFF
            if len(out) >= MAX_BYTES:
                break
        return bytes(out[:MAX_BYTES])


def _addr(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def _frames(path: Path) -> list[tuple[float, Any]]:
    try:
        import dpkt
    except ImportError:
        raise PcapError("reading captures needs dpkt: pip install 'tpemu[pcap]'") from None
    try:
        f = path.open("rb")
    except OSError as exc:
        raise PcapError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        try:
            reader: Any = dpkt.pcap.Reader(f)
        except ValueError:
            f.seek(0)
            try:
                reader = dpkt.pcapng.Reader(f)
            except ValueError:
                raise PcapError(f"{path} is neither a pcap nor a pcapng capture") from None
        link = reader.datalink()
        decoders = {dpkt.pcap.DLT_EN10MB: dpkt.ethernet.Ethernet, dpkt.pcap.DLT_LINUX_SLL: dpkt.sll.SLL,
                    dpkt.pcap.DLT_NULL: dpkt.loopback.Loopback, dpkt.pcap.DLT_LOOP: dpkt.loopback.Loopback,
                    dpkt.pcap.DLT_RAW: dpkt.ip.IP, 12: dpkt.ip.IP}
        decode = decoders.get(link)
        if decode is None:
            raise PcapError(f"{path}: link type {link} is not supported (Ethernet, loopback, cooked or raw IP)")
        out = []
        try:
            for ts, buf in reader:
                try:
                    frame = decode(buf)
                except (dpkt.UnpackError, IndexError):
                    continue
                out.append((float(ts), frame))
        except (dpkt.NeedData, ValueError) as exc:
            if not out:
                raise PcapError(f"{path}: truncated or corrupt capture ({exc})") from None
    return out


def read_streams(path: Path) -> list[TCPStream]:
    import dpkt

    streams: dict[frozenset[tuple[str, int]], TCPStream] = {}
    order: list[TCPStream] = []
    for ts, frame in _frames(path):
        ip = frame if isinstance(frame, dpkt.ip.IP | dpkt.ip6.IP6) else getattr(frame, "data", None)
        if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        tcp = ip.data
        src, dst = (_addr(ip.src), tcp.sport), (_addr(ip.dst), tcp.dport)
        key = frozenset((src, dst))
        syn = bool(tcp.flags & dpkt.tcp.TH_SYN)
        ack = bool(tcp.flags & dpkt.tcp.TH_ACK)
        stream = streams.get(key)
        if stream is None or (syn and not ack and stream.syn_seen and stream.client == src and stream.segments):
            if len(order) >= MAX_STREAMS:
                continue
            # A new connection: the SYN's sender is the client; without one, the first sender.
            stream = TCPStream(src, dst, ts)
            streams[key] = stream
            order.append(stream)
        if syn and not ack and src == stream.client:
            stream.syn_seen, stream.isn = True, tcp.seq
        if not tcp.data:
            continue
        if src == stream.client:
            if len(stream.segments) < 4096:
                stream.segments.setdefault(tcp.seq, bytes(tcp.data))
        else:
            stream.back_bytes += len(tcp.data)
    return order


def explain_capture(path: Path, cfg: Any, listener: str = "web", force_proxy_protocol: bool = False) -> tuple[str, int]:
    """The text for every stream, and an exit code: 0 all routed, 2 any refused, 3 any incomplete."""
    from tpemu.proxy.explain import explain
    from tpemu.wire.hello_detail import describe

    streams = read_streams(path)
    if not streams:
        return f"{path}: no TCP streams in the capture", 2
    t0 = streams[0].first_ts
    parts, worst = [], 0
    for i, s in enumerate(streams, 1):
        data = s.client_bytes()
        nosyn = "" if s.syn_seen else ", no SYN seen"
        head = (f"stream {i}: {s.client[0]}:{s.client[1]} → {s.server[0]}:{s.server[1]} "
                f"(t=+{s.first_ts - t0:.3f}s; {len(data)} bytes from the client{nosyn}, {s.back_bytes} back)")
        if not data:
            parts.append(f"{head}\n  no bytes from the client (the server speaks first, or nothing was sent)")
            continue
        text, code = explain(data, cfg, listener, force_proxy_protocol=force_proxy_protocol)
        worst = max(worst, code)
        d = describe(data)
        summary = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in (
            ("sni", d.get("sni")), ("alpn", d.get("alpn")), ("versions", d.get("supported_versions")),
            ("key_shares", [f"{k['group']}" for k in d.get("key_shares", [])])) if v]
        body = "\n".join("  " + line for line in text.splitlines())
        parts.append(head + "\n" + body + (f"\n  decoded:  {' '.join(summary)}" if summary else ""))
    return "\n\n".join(parts), worst
