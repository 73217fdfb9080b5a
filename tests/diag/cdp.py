"""Headless Chromium driven over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so the page tests need no
WebDriver and no websocket library: the real browser, a few dozen lines of glue."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--remote-debugging-pipe")


class Browser:
    def __init__(self, proc: asyncio.subprocess.Process, to_chrome: int, reader: asyncio.StreamReader) -> None:
        self.proc = proc
        self.to_chrome = to_chrome
        self.reader = reader
        self.next_id = 0
        self.session: str | None = None

    async def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
                   timeout: float = 20.0) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session is not None:
            msg["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.reader.readuntil(b"\0")
                answer = json.loads(raw[:-1])
                if answer.get("id") == self.next_id:  # anything else is an event
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    result: dict[str, Any] = answer.get("result", {})
                    return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path, width: int = 1200, height: int = 620) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                               "deviceScaleFactor": 1, "mobile": False})
        data = await self.call("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(data["data"]))


@contextlib.asynccontextmanager
async def chromium(exe: str, url: str, profile: Path) -> AsyncIterator[Browser]:
    """Chromium showing ``url``, attached to its page; stopped (by its PID) on exit."""
    to_r, to_w = os.pipe()      # we write, Chromium reads on fd 3
    from_r, from_w = os.pipe()  # Chromium writes on fd 4, we read

    # The pipe ends must be fds 3 and 4 in Chromium: bash's redirections put them there, then exec.
    shell = f'exec "$@" 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&-'
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", shell, "chromium", exe, *FLAGS, f"--user-data-dir={profile}", url,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(to_r, from_w))
    os.close(to_r)
    os.close(from_w)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_r, "rb"))
    browser = Browser(proc, to_w, reader)
    try:
        targets = (await browser.call("Target.getTargets", session=False))["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        attached = await browser.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                      session=False)
        browser.session = attached["sessionId"]
        yield browser
    finally:
        with contextlib.suppress(Exception):
            await browser.call("Browser.close", session=False, timeout=5)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        transport.close()
        os.close(to_w)
