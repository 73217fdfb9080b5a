"""``port-forward`` to an emulated pod over a real loopback socket, speaking client-go's side by hand:
SPDY/3.1 in WebSocket binary messages (``SPDY/3.1+portforward.k8s.io``) and after a plain
``Upgrade: SPDY/3.1``; stream pairs to a real loopback server, the kubelet's error-stream texts,
refused streams, the stream-creation timeout, pings, bad frames (GOAWAY, no fd left open) and the
upgrade refusals of the API server and ``httpstream.Handshake``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.kube.pod_server import serve_with_running_pod
from tpemu.agent.kube import portforward as pf
from tpemu.agent.kube.api import EmulatedAPI
from tpemu.config import Addr, PodPort
from tpemu.wire import spdy
from tpemu.wire import websocket as wsf

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "labels": {"app": "web"}},
       "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]}}
PATH = "/api/v1/namespaces/default/pods/p1/portforward"
SPDY_UPGRADE = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io"
TUNNEL = "Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io"


@dataclass
class Env:
    addr: tuple[str, int]
    api: EmulatedAPI
    echo_addr: tuple[str, int]
    echoed: list[bytes] = field(default_factory=list)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    echoed: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The "container": answers every chunk upper-cased, closes after the client's EOF.
        while data := await reader.read(65536):
            echoed.append(data)
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    echo_srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    echo_addr = echo_srv.sockets[0].getsockname()[:2]
    api = EmulatedAPI("emu", tmp_path, pod_ports=[
        PodPort(port=80, target=Addr(*echo_addr), pod_labels={"app": "web"}),
        PodPort(port=82, target=Addr(*echo_addr), pod_labels={"app": "other"})])
    try:
        async with serve_with_running_pod(api, POD) as addr:
            yield Env(addr, api, echo_addr, echoed)
    finally:
        echo_srv.close()


class Client:
    """client-go's side of a port-forward connection (streams with odd ids, one zlib context)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tunnelled: bool,
                 leftover: bytes) -> None:
        self.reader, self.writer, self.tunnelled = reader, writer, tunnelled
        self.enc, self.dec = spdy.Encoder(), spdy.Decoder()
        self.ws = wsf.FrameDecoder(require_mask=False)
        self.frames: list[spdy.Frame] = []
        self.next_id = 1
        self._feed(leftover)

    def _feed(self, data: bytes) -> None:
        if self.tunnelled:
            for frame in self.ws.feed(data):
                if frame.opcode in (wsf.OP_BINARY, wsf.OP_CONTINUATION):
                    self.frames += self.dec.feed(frame.payload)
        else:
            self.frames += self.dec.feed(data)

    def send(self, data: bytes) -> None:
        self.writer.write(wsf.encode_frame(wsf.OP_BINARY, data, os.urandom(4)) if self.tunnelled else data)

    def open(self, headers: dict[str, str], stream_id: int | None = None) -> int:
        sid = self.next_id if stream_id is None else stream_id
        self.next_id = max(self.next_id, sid + 2)
        self.send(self.enc.syn_stream(sid, tuple(headers.items())))
        return sid

    def pair(self, port: int, request_id: str) -> tuple[int, int]:
        error = self.open({"streamtype": "error", "port": str(port), "requestid": request_id})
        self.send(spdy.encode_data(error, b"", fin=True))  # client-go: errorStream.Close() at once
        data = self.open({"streamtype": "data", "port": str(port), "requestid": request_id})
        return error, data

    async def frame(self, timeout: float = 10.0) -> spdy.Frame | None:
        """The next frame from the server, ``None`` at the end of the connection."""
        async with asyncio.timeout(timeout):
            while not self.frames:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self._feed(data)
        return self.frames.pop(0)

    async def until(self, done: Any, timeout: float = 10.0) -> list[spdy.Frame]:
        """Frames until ``done(frames)`` holds (or the connection ends)."""
        got: list[spdy.Frame] = []
        async with asyncio.timeout(timeout):
            while not done(got):
                frame = await self.frame(timeout)
                if frame is None:
                    break
                got.append(frame)
        return got


def _finished(*ids: int) -> Any:
    return lambda frames: all(any(isinstance(f, spdy.Data) and f.stream_id == i and f.fin for f in frames)
                              or any(isinstance(f, spdy.RstStream) and f.stream_id == i for f in frames)
                              for i in ids)


def _data(frames: list[spdy.Frame], sid: int) -> bytes:
    return b"".join(f.data for f in frames if isinstance(f, spdy.Data) and f.stream_id == sid)


async def connect(env: Env, tunnelled: bool, headers: str = "", path: str = PATH) -> tuple[Client, bytes]:
    reader, writer = await asyncio.open_connection(*env.addr)
    if tunnelled:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                      f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
                      f"{headers or TUNNEL}\r\n\r\n").encode())
    else:
        writer.write((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{headers or SPDY_UPGRADE}\r\n\r\n")
                     .encode())
    buf = b""
    async with asyncio.timeout(10):
        while b"\r\n\r\n" not in buf:
            chunk = await reader.read(65536)
            assert chunk, buf
            buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 101"):
        return Client(reader, writer, tunnelled, rest), head + b"\r\n\r\n"
    return Client(reader, writer, tunnelled, b""), buf  # a refusal: its body follows the head


@pytest.mark.parametrize("tunnelled", [True, False], ids=["websocket-tunnel", "spdy"])
async def test_two_connections_forwarded(env: Env, tunnelled: bool) -> None:
    client, head = await connect(env, tunnelled)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    if tunnelled:
        assert b"Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n" in head
    else:
        assert b"Upgrade: SPDY/3.1\r\n" in head and b"X-Stream-Protocol-Version: portforward.k8s.io\r\n" in head
    e0, d0 = client.pair(80, "0")
    e1, d1 = client.pair(80, "1")
    client.send(spdy.encode_data(d0, b"hello "))
    client.send(spdy.encode_data(d1, b"world"))
    client.send(spdy.encode_data(d0, b"again", fin=True))
    client.send(spdy.encode_data(d1, b"", fin=True))
    frames = await client.until(_finished(e0, d0, e1, d1))
    assert {f.stream_id for f in frames if isinstance(f, spdy.SynReply)} == {e0, d0, e1, d1}
    assert _data(frames, d0) == b"HELLO AGAIN" and _data(frames, d1) == b"WORLD"
    assert _data(frames, e0) == b"" and _data(frames, e1) == b""  # nothing went wrong
    client.send(spdy.encode_ping(1))
    assert await client.until(lambda fs: spdy.Ping(1) in fs) == [spdy.Ping(1)]  # the client's ping, echoed
    client.send(spdy.encode_goaway(d1))
    assert await client.frame() is None  # GOAWAY ends the session
    client.writer.close()


@pytest.mark.parametrize("tunnelled", [True, False], ids=["websocket-tunnel", "spdy"])
async def test_port_nothing_serves_gets_the_kubelets_error(env: Env, tunnelled: bool) -> None:
    client, _ = await connect(env, tunnelled)
    for port in (81, 82):  # 82 is served, but not for this pod's labels
        error, data = client.pair(port, str(port))
        frames = await client.until(_finished(error, data))
        sandbox = pf.sandbox_id(env.api.store.get("pods", "default", "p1") or {})
        text = _data(frames, error).decode()
        assert text == (f"error forwarding port {port} to pod {sandbox}, uid : failed to execute portforward in "
                        f'network namespace "/var/run/netns/cni-{sandbox[:8]}-{sandbox[8:12]}-{sandbox[12:16]}-'
                        f'{sandbox[16:20]}-{sandbox[20:32]}": failed to connect to localhost:{port} inside namespace '
                        f'"{sandbox}", IPv4: dial tcp4 127.0.0.1:{port}: connect: connection refused IPv6 dial tcp6 '
                        f"[::1]:{port}: connect: connection refused ")
    client.writer.close()


async def test_a_served_target_that_refuses(env: Env, unused_tcp_port: int) -> None:
    env.api.pod_ports = (PodPort(port=80, target=Addr("127.0.0.1", unused_tcp_port)),)
    client, _ = await connect(env, True)
    error, data = client.pair(80, "0")
    text = _data(await client.until(_finished(error, data)), error).decode()
    assert "IPv4: dial tcp4 127.0.0.1:80: connect: connection refused" in text
    client.writer.close()


async def test_bad_streams_are_refused_as_the_kubelet_does(env: Env) -> None:
    client, _ = await connect(env, True)
    refused = [client.open({"streamtype": "data", "requestid": "0"}),  # no port
               client.open({"streamtype": "data", "port": "http", "requestid": "0"}),
               client.open({"streamtype": "data", "port": "0", "requestid": "0"}),
               client.open({"port": "80", "requestid": "0"}),  # no streamType
               client.open({"streamtype": "stdin", "port": "80", "requestid": "0"})]
    frames = await client.until(lambda fs: len(fs) >= len(refused))
    assert frames == [spdy.RstStream(i, spdy.CANCEL) for i in refused]
    client.open({"streamtype": "error", "port": "80", "requestid": "0"}, stream_id=3)  # ids go up only
    assert await client.frame() == spdy.RstStream(3, spdy.PROTOCOL_ERROR)
    error = client.open({"streamtype": "error", "port": "80", "requestid": "7"})
    again = client.open({"streamtype": "error", "port": "80", "requestid": "7"})
    frames = await client.until(lambda fs: _data(fs, error))
    assert _data(frames, error) == b"error processing stream for request 7: error stream already assigned"
    assert {f.stream_id for f in frames if isinstance(f, spdy.SynReply)} == {error, again}
    client.writer.close()


async def test_a_half_pair_times_out(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pf, "STREAM_CREATION_TIMEOUT", 0.3)
    client, _ = await connect(env, False)
    error = client.open({"streamtype": "error", "port": "80", "requestid": "0"})
    frames = await client.until(lambda fs: _data(fs, error))
    assert _data(frames, error).endswith(b", request=0) timed out waiting for streams")
    client.writer.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(("tunnelled", "garbage"), [
    (False, bytes.fromhex("8003000500000000")),  # an unknown control frame type
    (False, bytes.fromhex("0000000100ffffff")),  # a data frame past the size limit
    (True, bytes.fromhex("8002000600000004" "00000001")),  # SPDY/2
    (True, None),  # a text message in the tunnel
], ids=["unknown-control", "oversized", "spdy2", "ws-text"])
async def test_bad_frames_end_the_session_cleanly(env: Env, tunnelled: bool, garbage: bytes | None,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    before = _fds()
    client, _ = await connect(env, tunnelled)
    _, data = client.pair(80, "0")
    client.send(spdy.encode_data(data, b"x"))
    await client.until(lambda fs: _data(fs, data) == b"X")
    if garbage is None:
        client.writer.write(wsf.encode_frame(wsf.OP_TEXT, b"hello", os.urandom(4)))
    else:
        client.send(garbage)
    frames = await client.until(lambda fs: False)  # to the end of the connection
    assert spdy.GoAway(3, spdy.GOAWAY_PROTOCOL_ERROR) in frames
    assert "bad frame from the client" in caplog.text and "Traceback" not in caplog.text
    client.writer.close()
    async with asyncio.timeout(10):  # the session, its pair and the pod connection all closed
        while _fds() > before or env.api.portforward_sessions:
            await asyncio.sleep(0.02)


async def test_client_vanishing_mid_forward_leaves_nothing_open(env: Env) -> None:
    before = _fds()
    client, _ = await connect(env, False)
    _, data = client.pair(80, "0")
    client.send(spdy.encode_data(data, b"x"))
    await client.until(lambda fs: _data(fs, data) == b"X")
    client.writer.transport.abort()
    async with asyncio.timeout(10):
        while _fds() > before or env.api.portforward_sessions:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(("tunnelled", "headers", "status", "text"), [
    (True, "Sec-WebSocket-Protocol: v4.channel.k8s.io", 400, "unable to upgrade: no tunneling spdy protocols provided"),
    (True, "Sec-WebSocket-Protocol: SPDY/3.1+v9.portforward.k8s.io", 403,
     "unable to upgrade: unable to negotiate protocol: client supports [v9.portforward.k8s.io], server accepts "
     "[portforward.k8s.io]"),
    (False, "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v2.portforward.k8s.io", 403,
     "unable to upgrade: unable to negotiate protocol: client supports [v2.portforward.k8s.io], server accepts "
     "[portforward.k8s.io]"),
    (False, "Connection: Upgrade\r\nUpgrade: SPDY/3.1", 400,
     "unable to upgrade: X-Stream-Protocol-Version is required"),
    (False, "Connection: close\r\nX-Stream-Protocol-Version: portforward.k8s.io", 400,
     "unable to upgrade: missing upgrade headers in request: http.Header{\"Connection\":[]string{\"close\"}"),
])
async def test_upgrade_refusals(env: Env, tunnelled: bool, headers: str, status: int, text: str) -> None:
    client, reply = await connect(env, tunnelled, headers)
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply
    assert b"Content-Type: text/plain; charset=utf-8" in reply
    rest = reply.partition(b"\r\n\r\n")[2] + await asyncio.wait_for(client.reader.read(), 5)
    assert rest.decode().startswith(text)
    if status == 403:
        assert b"X-Accepted-Stream-Protocol-Versions: portforward.k8s.io" in reply
    client.writer.close()


async def test_unknown_pod_and_rbac_are_status_errors(env: Env) -> None:
    _, reply = await connect(env, True, path="/api/v1/namespaces/default/pods/nope/portforward")
    assert reply.startswith(b"HTTP/1.1 404 ")
    body = json.loads(reply.partition(b"\r\n\r\n")[2] or b"{}")
    assert body["message"] == 'pods "nope" not found'
    _, reply = await connect(env, True, "Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\nX-Test-Group: view")
    assert reply.startswith(b"HTTP/1.1 403 ")
    assert (b'User \\"admin\\" cannot get resource \\"pods/portforward\\" in API group \\"\\" in the namespace '
            b'\\"default\\"') in reply


def test_pod_target_matches_port_namespace_and_labels() -> None:
    a, b, c = Addr("127.0.0.1", 1), Addr("127.0.0.2", 2), Addr("127.0.0.3", 3)
    ports = [PodPort(80, a, {"app": "web"}, "prod"), PodPort(80, b, {"app": "web"}), PodPort(80, c)]
    pod: dict[str, Any] = {"metadata": {"name": "x", "namespace": "prod", "labels": {"app": "web", "tier": "1"}}}
    assert pf.pod_target(ports, pod, 80) == a
    assert pf.pod_target(ports, {"metadata": {**pod["metadata"], "namespace": "dev"}}, 80) == b
    assert pf.pod_target(ports, {"metadata": {"namespace": "dev"}}, 80) == c
    assert pf.pod_target(ports, pod, 81) is None
