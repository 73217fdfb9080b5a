"""Application access end to end: an agent's Application Service over its reverse tunnel, the proxy
routing ``https://<app>.<cluster>`` by SNI and ``teleport-tcp`` by ALPN, unmodified curl with the
certificate of ``tpemu apps login``, and the JWT Teleport adds (``teleport-jwt-assertion``, RS256 by
the cluster's JWT key) verified with PyJWT against the proxy's ``/.well-known/jwks.json`` — Teleport's
``lib/jwt`` claims: ``iss`` = cluster, ``sub``/``username`` = the user, ``aud`` = the app's URI."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import kube_env
from tests.conftest import need
from tpemu.agent import access

pytestmark = pytest.mark.e2e


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[kube_env.KubeEnv]:
    e = await kube_env.start(tmp_path, apps=True, users={"alice": {"kubernetes_groups": ["system:masters"]}})
    try:
        yield e
    finally:
        await kube_env.stop(e)


async def jwks(env: kube_env.KubeEnv) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=str(env.data / "pki" / "ca.crt"))
    addr = env.proxy.info.bound[kube_env.ListenerKind.WEB]
    reader, writer = await asyncio.open_connection(addr.host, addr.port, ssl=ctx, server_hostname="localhost")
    writer.write(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    out: dict[str, object] = json.loads(body)
    return out


async def test_curl_to_the_echo_app_and_the_jwt(env: kube_env.KubeEnv) -> None:
    import jwt  # PyJWT

    curl = need("curl")
    code, out, err = await env.run("alice", "tpemu", "apps", "ls")
    assert code == 0 and "echo" in out and "dumper" in out, err
    code, out, err = await env.run("alice", "tpemu", "apps", "login", "echo")
    assert code == 0, err
    command = out.strip().splitlines()[-1].split()
    assert command[0] == "curl" and command[-1].startswith("https://echo.tpemu.local:")
    code, out, err = await env.run("alice", curl, "-sS", *command[1:-1], command[-1] + "hello?x=1")
    assert code == 0, err
    echoed = json.loads(out)
    assert echoed["path"] == "/hello?x=1" and echoed["headers"]["x-forwarded-proto"] == "https"
    token = echoed["headers"]["teleport-jwt-assertion"]
    keys = await jwks(env)
    key = jwt.PyJWK(keys["keys"][0])  # type: ignore[index]
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="emulated-echo", issuer="tpemu.local")
    assert claims["sub"] == claims["username"] == "alice" and claims["roles"] == ["access"]
    header, _, signature = token.split(".")
    tampered = jwt.utils.base64url_encode(json.dumps({**claims, "username": "mallory"}).encode()).decode()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{header}.{tampered}.{signature}", key.key, algorithms=["RS256"], audience="emulated-echo")
    # a client-supplied assertion never reaches the app
    code, out, err = await env.run("alice", curl, "-sS", "-H", "teleport-jwt-assertion: forged", *command[1:])
    assert json.loads(out)["headers"]["teleport-jwt-assertion"] != "forged"
    # without the app certificate: refused, and the app never sees the request
    no_cert = [a for i, a in enumerate(command[1:-1]) if a not in ("--cert", "--key") and command[i] not in (
        "--cert", "--key")]
    code, out, err = await env.run("alice", curl, "-sS", "-w", "%{http_code}", *no_cert, command[-1])
    assert out.endswith("403") and "tpemu apps login" in out, (out, err)


async def test_tcp_app_through_a_local_tunnel(tmp_path: Path) -> None:
    async def echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    backend = await asyncio.start_server(echo_upper, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    original = kube_env.start

    env = await original(tmp_path, apps=True, users={"alice": {}}, app_list=[
        {"name": "upper", "uri": f"tcp://127.0.0.1:{port}"}])
    tunnel = None
    try:
        code, out, err = await env.run("alice", "tpemu", "apps", "login", "upper")
        assert code == 0 and "tpemu proxy app upper" in out, err
        tunnel = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("tpemu")), "proxy", "app", "upper", stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env.env("alice"))
        assert tunnel.stdout is not None
        line = (await asyncio.wait_for(tunnel.stdout.readline(), 20)).decode()
        host, local = line.rsplit(" ", 1)[1].strip().rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(local))
        writer.write(b"hello tcp app")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(13), 10) == b"HELLO TCP APP"
        writer.close()
    finally:
        if tunnel is not None:
            tunnel.terminate()
            await tunnel.wait()
        await kube_env.stop(env)
        backend.close()


async def test_roles_app_labels_decide_which_app_certificates_are_issued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A role allowing only ``env: dev`` apps: ``tpemu apps login`` gets a certificate for the dev
    app, Auth refuses one for the prod app (Teleport's app_labels check, ``lib/services/role.go``),
    and the dev certificate does not open the prod app at the proxy."""
    curl = need("curl")
    env = await kube_env.start(tmp_path, apps=True, users={"dave": {"roles": ["dev-apps"]}, "erin": {
        "roles": ["access", "no-prod"]}}, app_list=[
        {"name": "echo", "uri": "emulated-echo", "labels": {"env": "dev"}},
        {"name": "prod", "uri": "emulated-echo", "labels": {"env": "prod"}}])
    try:
        admin = kube_env.admin_client(env.data)
        await admin.call("PUT", "/v1/roles/dev-apps", {"kind": "role", "metadata": {"name": "dev-apps"},
                                                       "spec": {"allow": {"app_labels": {"env": "dev"}}}})
        await admin.call("PUT", "/v1/roles/no-prod", {"kind": "role", "metadata": {"name": "no-prod"},
                                                      "spec": {"deny": {"app_labels": {"env": ["prod"]}}}})
        code, out, err = await env.run("dave", "tpemu", "apps", "login", "echo")
        assert code == 0, err
        command = out.strip().splitlines()[-1].split()
        code, out, err = await env.run("dave", "tpemu", "apps", "login", "prod")
        assert code != 0 and "access to application 'prod' denied" in out + err, (out, err)
        code, out, err = await env.run("erin", "tpemu", "apps", "login", "prod")
        assert code != 0 and "denied by role 'no-prod'" in out + err, (out, err)
        code, out, err = await env.run("erin", "tpemu", "apps", "login", "echo")
        assert code == 0, err
        prod_url = command[-1].replace("https://echo.", "https://prod.")
        prod_args = [a.replace("echo.", "prod.") if command[i].startswith("--resolve") or a.startswith("echo.")
                     else a for i, a in enumerate(command[1:-1])]
        code, out, err = await env.run("dave", curl, "-sS", "-w", "%{http_code}", *prod_args, prod_url)
        assert out.endswith("403") and "not 'prod'" in out, (out, err)
        code, out, err = await env.run("dave", curl, "-sS", *command[1:])
        assert code == 0 and json.loads(out)["app"] == "echo", (out, err)
        # The agent checks the roles per connection (lib/srv/app authorize): once the role no longer
        # allows env=dev, the certificate dave already holds stops opening the app.
        monkeypatch.setattr(access, "TTL", 0.2)
        await admin.call("PUT", "/v1/roles/dev-apps", {"kind": "role", "metadata": {"name": "dev-apps"},
                                                       "spec": {"allow": {"app_labels": {"env": "staging"}}}})
        async with asyncio.timeout(20):
            while True:
                code, out, err = await env.run("dave", curl, "-sS", "-w", "%{http_code}", *command[1:])
                if out.endswith("403"):
                    break
                await asyncio.sleep(0.1)
        assert "access denied to application 'echo'" in out, out
    finally:
        await kube_env.stop(env)


async def test_http_app_bodies_stream_both_ways(tmp_path: Path) -> None:
    """Bodies are relayed as they arrive (Teleport forwards with a reverse proxy, never holding a
    body): a 24 MiB upload and a 24 MiB download (past the old 10 MiB buffer) pass with curl, and
    the first line of a response reaches curl while the app still holds back the rest."""
    curl = need("curl")
    release = asyncio.Event()
    big = 24 << 20

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        path = head.split()[1]
        if path == "/upload":
            length = int(next(h.split(":", 1)[1] for h in head.split("\r\n") if h.lower().startswith("content-length")))
            seen = 0
            while seen < length:
                seen += len(await reader.read(1 << 16))
            body = f"received {seen}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif path == "/download":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % big)
            for _ in range(big >> 20):
                writer.write(b"x" * (1 << 20))
                await writer.drain()
        else:  # /slow: chunked, the second chunk only once the test has seen the first
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
            await writer.drain()
            await asyncio.wait_for(release.wait(), 20)
            writer.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(app, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = await kube_env.start(tmp_path, apps=True, users={"alice": {}},
                               app_list=[{"name": "files", "uri": f"http://127.0.0.1:{port}"},
                                         {"name": "gone", "uri": "http://127.0.0.1:1"}])
    try:
        code, out, err = await env.run("alice", "tpemu", "apps", "login", "files")
        assert code == 0, err
        command = out.strip().splitlines()[-1].split()
        upload = tmp_path / "upload.bin"
        upload.write_bytes(b"u" * big)
        code, out, err = await env.run("alice", curl, "-sS", "--data-binary", f"@{upload}", *command[1:-1],
                                       command[-1] + "upload")
        assert code == 0 and out == f"received {big}", (out[:200], err)
        code, out, err = await env.run("alice", curl, "-sS", "-o", str(tmp_path / "down.bin"), "-w",
                                       "%{size_download}", *command[1:-1], command[-1] + "download")
        assert code == 0 and out == str(big), (out, err)
        slow = await asyncio.create_subprocess_exec(curl, "-sSN", *command[1:-1], command[-1] + "slow",
                                                    stdout=subprocess.PIPE, env=env.env("alice"))
        assert slow.stdout is not None
        assert await asyncio.wait_for(slow.stdout.readline(), 20) == b"first\n"
        release.set()
        assert await asyncio.wait_for(slow.stdout.read(), 20) == b"second\n"
        assert await slow.wait() == 0
        code, out, err = await env.run("alice", "tpemu", "apps", "login", "gone")
        assert code == 0, err
        gone = out.strip().splitlines()[-1].split()
        code, out, err = await env.run("alice", curl, "-sS", "-w", "%{http_code}", *gone[1:])
        assert out.endswith("502") and "application 'gone' is unreachable" in out, (out, err)
    finally:
        await kube_env.stop(env)
        server.close()


async def test_rewrite_headers_and_redirect_with_curl(tmp_path: Path) -> None:
    """``rewrite`` as Teleport's app agent applies it (``lib/srv/app/transport.go`` rewriteHeaders,
    rewriteRedirect): the app sees the configured ``Host``, one ``X-Logins`` per login of the user
    (``{{internal.logins}}``), ``{{external.team}}`` with a prefix, the client's own ``X-Logins``
    replaced, a header whose trait is missing not set; a redirect to a listed host comes back to
    curl pointing at the app's public address on the proxy's port."""
    curl = need("curl")

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        lines = head.split("\r\n")
        if lines[0].split()[1] == "/redir":
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: http://grafana.internal:3000/login?next=%2F\r\n"
                         b"Content-Length: 0\r\n\r\n")
        else:
            body = json.dumps([line.split(":", 1)[0].lower() + ":" + line.split(":", 1)[1].strip()
                               for line in lines[1:] if ":" in line]).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(app, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rewrite = {"headers": ["Host: grafana.example.com", "X-Logins: {{internal.logins}}",
                           "X-Team: team-{{external.team}}", "X-Missing: {{external.nope}}"],
               "redirect": ["grafana.internal"]}
    env = await kube_env.start(tmp_path, apps=True, users={"alice": {"team": ["blue"]}},
                               app_list=[{"name": "grafana", "uri": f"http://127.0.0.1:{port}", "rewrite": rewrite}])
    try:
        code, out, err = await env.run("alice", "tpemu", "apps", "login", "grafana")
        assert code == 0, err
        command = out.strip().splitlines()[-1].split()
        code, out, err = await env.run("alice", curl, "-sS", "-H", "X-Logins: forged", *command)
        assert code == 0, (out, err)
        seen = json.loads(out)
        assert "host:grafana.example.com" in seen and "x-logins:alice" in seen and "x-team:team-blue" in seen, seen
        assert "x-logins:forged" not in seen and not any(h.startswith("x-missing") for h in seen), seen
        code, out, err = await env.run("alice", curl, "-sS", "-o", "/dev/null", "-w", "%{redirect_url}",
                                       *command[1:-1], command[-1] + "redir")
        web = env.proxy.info.bound[kube_env.ListenerKind.WEB]
        assert code == 0 and out == f"https://grafana.{kube_env.CLUSTER}:{web.port}/login?next=%2F", (out, err)
    finally:
        await kube_env.stop(env)
        server.close()
