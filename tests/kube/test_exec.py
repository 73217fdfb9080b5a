"""``exec`` on an emulated pod over a real loopback socket, speaking client-go's WebSocket protocol
by hand (``v5.channel.k8s.io``): stdout/stderr channels and the exit-code Status without a terminal;
with one (``tty=true``): a pty, resizes applied, ^D on stdin close; refusals before the upgrade."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube.pod_server import serve_with_running_pod
from tpemu.agent.kube import websocket as ws
from tpemu.agent.kube.api import EmulatedAPI

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"},
       "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    async with serve_with_running_pod(EmulatedAPI("emu", tmp_path), POD) as addr:
        yield addr


async def upgrade(addr: tuple[str, int], query: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection(*addr)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /api/v1/namespaces/default/pods/p1/exec?{query} HTTP/1.1\r\nHost: x\r\n"
                  "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: v5.channel.k8s.io,v4.channel.k8s.io\r\n\r\n")
                 .encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def messages(reader: asyncio.StreamReader) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    buf = bytearray()
    async with asyncio.timeout(10):
        while True:
            found = ws.decode_frame(buf, require_mask=False)
            if found is None:
                chunk = await reader.read(65536)
                if not chunk:
                    return out
                buf += chunk
                continue
            frame, used = found
            del buf[:used]
            if frame.opcode == ws.OP_CLOSE:
                return out
            if frame.payload:
                out[frame.payload[0]] = out.get(frame.payload[0], b"") + frame.payload[1:]


def send(writer: asyncio.StreamWriter, channel: int, data: bytes) -> None:
    writer.write(ws.encode_frame(ws.OP_BINARY, bytes([channel]) + data, mask=True))


async def test_exec_without_terminal(server: tuple[str, int]) -> None:
    query = "command=sh&command=-c&command=echo+out%3B+echo+err+%3E%262%3B+exit+3&stdout=true&stderr=true"
    reader, writer, head = await upgrade(server, query)
    assert head.startswith(b"HTTP/1.1 101") and b"Sec-WebSocket-Protocol: v5.channel.k8s.io" in head
    got = await messages(reader)
    assert got[ws.STDOUT] == b"out\n" and got[ws.STDERR] == b"err\n"
    status: dict[str, Any] = json.loads(got[ws.ERROR])
    assert status["reason"] == "NonZeroExitCode" and status["details"]["causes"] == [
        {"reason": "ExitCode", "message": "3"}]
    writer.close()


async def test_exec_with_terminal(server: tuple[str, int]) -> None:
    query = "command=sh&command=-c&command=read+x%3B+stty+size%3B+tty&stdin=true&stdout=true&tty=true"
    reader, writer, head = await upgrade(server, query)
    assert head.startswith(b"HTTP/1.1 101")
    send(writer, ws.RESIZE, json.dumps({"Width": 101, "Height": 33}).encode())
    send(writer, ws.STDIN, b"go\n")
    got = await messages(reader)
    out = got.get(ws.STDOUT, b"")
    assert b"33 101" in out and b"/dev/pts/" in out, out
    assert ws.STDERR not in got
    assert json.loads(got[ws.ERROR]) == {"metadata": {}, "status": "Success"}
    writer.close()


async def test_refusals_before_the_upgrade(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    writer.write(b"POST /api/v1/namespaces/default/pods/p1/exec?command=ls HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    out = await asyncio.wait_for(reader.read(), 5)
    assert out.startswith(b"HTTP/1.1 400") and b"Upgrade request required" in out
    writer.close()
    reader, writer, head = await upgrade(server, "stdout=true")
    assert head.startswith(b"HTTP/1.1 400")
    writer.close()


@pytest.mark.parametrize("tty", [False, True])
async def test_exec_starts_with_default_signal_dispositions(server: tuple[str, int], tty: bool) -> None:
    # As an SSH session does (issue 16): a signal the agent ignores (SIGINT when tpemu was started in
    # the background by a non-interactive shell) or blocks must not reach the container's process,
    # whose shell could then not trap it. The real-time signals are the ones libuv's spawn leaves as
    # they are (it resets 1-31 only); glibc's own 32/33 cannot be set by any program.
    script = "grep+-E+%27%5ESig%28Ign%7CBlk%29%27+%2Fproc%2Fself%2Fstatus"
    query = f"command=sh&command=-c&command={script}&stdout=true&stderr=true" + ("&tty=true" if tty else "")
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGRTMIN + 5)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGRTMIN + 6})
    try:
        reader, writer, head = await upgrade(server, query)
        assert head.startswith(b"HTTP/1.1 101")
        got = await messages(reader)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    writer.close()
    text = got.get(ws.STDOUT, b"").decode().replace("\r\n", "\n")
    fields = dict(line.split(":\t") for line in text.splitlines())
    settable = sum(1 << (s - 1) for s in signal.valid_signals() if s < 65 and s not in (32, 33))
    assert int(fields["SigIgn"], 16) & settable == 0 and int(fields["SigBlk"], 16) == 0, text
