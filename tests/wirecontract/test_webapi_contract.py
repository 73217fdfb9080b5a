"""The proxy's web API and the Auth API's client-version check, as Teleport serves them.

Follows ``lib/web/apiserver.go`` (``NewHandler``'s ``notFoundRoutingHandler``: ``/v1/`` stripped
for known parts, ``/`` → ``/web``; ``bindDefaultEndpoints``: ``/webapi/sites/:site/auth/export``),
``lib/httplib`` ``RouteNotFoundResponse``, ``version.go`` ``MinClientSemVersion`` and
``lib/auth/middleware.go`` ``ValidateClientVersion``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from tests.helpers import unverified_client_context
from tpemu import MIN_CLIENT_VERSION, TELEPORT_VERSION, config, versioncheck
from tpemu.proxy.webapi import SECOND_FACTOR, SECOND_FACTORS_V17
from tpemu.testkit import Cluster

_ctx = unverified_client_context


async def _request(port: int, method: str, path: str, body: bytes = b"",
                   headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_ctx(["http/1.1"]),
                                                   server_hostname="proxy.tpemu.test")
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: proxy\r\nContent-Length: {len(body)}\r\n{extra}"
                 "Connection: close\r\n\r\n".encode() + body)
    async with asyncio.timeout(10):
        data = await reader.read(-1)
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), hdrs, payload


def test_min_client_version_is_teleports_for_17() -> None:
    # version.go: MinClientSemVersion = {Major: SemVersion.Major - 1, PreRelease: "aa"}
    assert TELEPORT_VERSION.startswith("17.")
    assert MIN_CLIENT_VERSION == versioncheck.min_client_version(TELEPORT_VERSION) == "16.0.0-aa"
    # "aa" sorts before alpha/beta/rc/dev: 16's pre-releases pass, 15.x does not.
    for ok in ("16.0.0-alpha.1", "16.0.0-dev", "16.4.2", "17.0.0-rc.1", "v17.1.0"):
        assert not versioncheck.client_too_old(ok, MIN_CLIENT_VERSION), ok
    for old in ("15.4.22", "16.0.0-a", "1.0.0"):
        assert versioncheck.client_too_old(old, MIN_CLIENT_VERSION), old
    with pytest.raises(ValueError):
        versioncheck.parse("sixteen")


async def test_web_api_routes_as_teleport(tmp_path: Path) -> None:
    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        port = cluster.web.port
        status, _, body = await _request(port, "GET", "/webapi/ping")
        ping = json.loads(body)
        assert status == 200 and ping["min_client_version"] == "16.0.0-aa"
        assert ping["auth"]["second_factor"] == SECOND_FACTOR and SECOND_FACTOR in SECOND_FACTORS_V17
        # /v1/ prefix: served again without it (tsh posts /v1/webapi/ssh/certs).
        status, _, body = await _request(port, "GET", "/v1/webapi/ping")
        assert status == 200 and json.loads(body)["cluster_name"] == cluster.cfg.auth_service.cluster_name
        status, _, body = await _request(port, "POST", "/v1/webapi/ssh/certs", b'{"user": "nobody", "password": "x"}')
        assert status in (400, 401, 403) and "error" in json.loads(body)
        # /v1/<unknown part> and unknown paths: RouteNotFoundResponse.
        for path in ("/v1/v2/webapi/ping", "/webapi/nope", "/v1/webapi/nope"):
            status, _, body = await _request(port, "GET", path)
            out = json.loads(body)
            assert status == 404 and out["error"] == {"message": "path not found"}, path
            assert out["fields"]["proxyVersion"]["string"] == TELEPORT_VERSION
        # GET / → 302 /web.
        status, headers, _ = await _request(port, "GET", "/")
        assert status == 302 and headers["location"] == "/web"
        # The deprecated per-site export serves the same CAs as /webapi/auth/export.
        _, _, plain = await _request(port, "GET", "/webapi/auth/export?type=tls-host")
        status, _, site = await _request(port, "GET", "/webapi/sites/anything/auth/export?type=tls-host")
        assert status == 200 and site == plain and b"BEGIN CERTIFICATE" in site
        status, _, site = await _request(port, "GET", "/v1/webapi/sites/x/auth/export?type=tls-host")
        assert status == 200 and site == plain


async def _auth_request(port: int, version: str | None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_ctx(["http/1.1"]),
                                                   server_hostname="tpemu.local")
    extra = f"version: {version}\r\n" if version is not None else ""
    writer.write(f"GET /v1/ping HTTP/1.1\r\nHost: auth\r\n{extra}Connection: close\r\n\r\n".encode())
    try:
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


@pytest.mark.parametrize("switch", ["env", "config"])
async def test_outdated_client_is_reset_as_teleport_resets_it(tmp_path: Path, switch: str,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # lib/auth/middleware.go ValidateClientVersion: log, Conn.Close() → "connection reset by peer".
    caplog.set_level(logging.INFO)
    if switch == "env":
        monkeypatch.setenv(versioncheck.REJECT_ENV, "yes")
    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        assert cluster.auth.api is not None and cluster.auth.addr is not None
        if switch == "config":
            cfg = config.from_dict({"tpemu": {"reject_old_clients": True}})
            assert cfg.tpemu.reject_old_clients
            cluster.auth.api.reject_old_clients = cfg.tpemu.reject_old_clients
        port = cluster.auth.addr.port
        assert b"200 OK" in await _auth_request(port, "17.0.0")
        assert b"200 OK" in await _auth_request(port, None)  # no version: passes, as in Teleport
        with pytest.raises(ConnectionResetError):
            await _auth_request(port, "15.4.0")
        assert versioncheck.REJECT_LOG in caplog.text and "version=15.4.0" in caplog.text
        with pytest.raises(ConnectionResetError):
            await _auth_request(port, "not-a-version")
        assert versioncheck.UNPARSABLE_LOG in caplog.text
