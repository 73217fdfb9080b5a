"""Auth + proxy + client end to end: ``tpemu users add``, ``tpemu login``, ``tpemu status``, and the
certificates checked by real tools — ``openssl verify``/``x509``, OpenSSH ``sshd`` with
``TrustedUserCAKeys``, ``curl`` against the Auth API.

The first tests run the Auth Service and the proxy in this process (port 0, SQLite) and the CLI
commands in threads; the last one runs the real ``tpemu start`` twice on one data dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tpemu import authapi, authclient, cli, config, pki
from tpemu import identity as ident
from tpemu.auth.service import AuthService
from tpemu.proxy.auth_routes import AuthLink
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.service import ProxyService

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery"


def need(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if path is None:
        pytest.skip(f"{binary} is not installed (make test installs it on Debian as root)")
    return path


class Cluster:
    def __init__(self, auth: AuthService, proxy: ProxyService, data: Path, tmp: Path) -> None:
        self.auth, self.proxy, self.data, self.tmp = auth, proxy, data, tmp

    @property
    def web(self) -> str:
        return str(self.proxy.info.bound[ListenerKind.WEB])

    @property
    def ca(self) -> Path:
        return self.data / "pki" / "ca.crt"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    data = tmp_path / "data"
    cfg = config.from_dict({"teleport": {"data_dir": str(data)},
                            "auth_service": {"listen_addr": "127.0.0.1:0"},
                            "proxy_service": {"web_listen_addr": "127.0.0.1:0"}})
    auth = AuthService(cfg)
    await auth.start()
    assert auth.addr is not None
    link = AuthLink(auth.addr, ca_pins=(auth.ca_pin,), mint=lambda: auth.mint_token(("Proxy",), 300.0))
    proxy = ProxyService(cfg, auth=link)
    await proxy.start()
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    try:
        yield Cluster(auth, proxy, data, tmp_path)
    finally:
        await proxy.close()
        await auth.close()


async def sh(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a real client without blocking the event loop that serves it."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 60)
    kw.setdefault("check", False)
    return await asyncio.to_thread(subprocess.run, argv, **kw)  # type: ignore[call-overload]


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


async def login_alice(c: Cluster, capsys: pytest.CaptureFixture[str]) -> Path:
    pw = str(c.tmp / "pw")
    code, out, err = await run_cli(capsys, "users", "add", "alice", "--logins", "root,alice", "--db-users", "alice",
                                   "--db-names", "app", "--password-file", pw, "--data-dir", str(c.data))
    assert code == 0, err
    assert "User 'alice' has been created" in out
    home = c.tmp / "home"
    code, out, err = await run_cli(capsys, "login", "--proxy", c.web, "--user", "alice", "--password-file", pw,
                                   "--home", str(home), "--ca", str(c.ca))
    assert code == 0, err
    assert "Logged in as:       alice" in out and "Logins:             root, alice" in out
    return home


async def test_login_status_and_openssl(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    openssl = need("openssl")
    home = await login_alice(cluster, capsys)
    code, out, _ = await run_cli(capsys, "status", "--home", str(home))
    assert code == 0 and re.search(r"Valid until: .* \[valid for 11h59m\d+s\]", out), out

    other_key = pki.generate_key()
    (cluster.tmp / "other-ca.pem").write_bytes(pki.cert_pem(pki.make_ca("other", other_key, "other")))
    code, _, err = await run_cli(capsys, "login", "--proxy", cluster.web, "--user", "alice", "--password-file",
                                 str(cluster.tmp / "pw"), "--home", str(cluster.tmp / "h2"), "--ca",
                                 str(cluster.tmp / "other-ca.pem"))
    assert code == 1 and "cannot verify the proxy's certificate: unable to get local issuer" in err
    (cluster.tmp / "bad").write_text("wrong password")
    code, _, err = await run_cli(capsys, "login", "--proxy", cluster.web, "--user", "alice", "--password-file",
                                 str(cluster.tmp / "bad"), "--home", str(cluster.tmp / "h2"), "--ca", str(cluster.ca))
    assert (code, err.strip()) == (1, "tpemu: login failed: invalid username or password")

    keys = home / "keys" / "127.0.0.1"
    user_ca = cluster.tmp / "user_ca.pem"
    exported = await sh(["curl", "-sS", "--cacert", str(cluster.ca),
                         f"https://{cluster.web}/webapi/auth/export?type=tls-user"], check=True)
    user_ca.write_text(exported.stdout)
    ok = await sh([openssl, "verify", "-CAfile", str(user_ca), str(keys / "alice-x509.pem")])
    assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.stdout + ok.stderr
    wrong = await sh([openssl, "verify", "-CAfile", str(cluster.ca), str(keys / "alice-x509.pem")])
    assert wrong.returncode != 0  # the host CA did not sign user certificates
    text = (await sh([openssl, "x509", "-in", str(keys / "alice-x509.pem"), "-noout", "-text"], check=True)).stdout
    for part in ("Issuer: O = tpemu.local, OU = user CA, CN = tpemu.local", "L = root + L = alice", "O = access",
                 "CN = alice", "1.3.9999.1.7 = tpemu.local", "1.3.9999.2.5 = app", "1.3.9999.2.6 = alice",
                 "TLS Web Client Authentication"):
        assert part in text, text
    proxy_text = (await sh([openssl, "x509", "-in", str(cluster.data / "proxy" / "host.crt"), "-noout", "-text"],
                           check=True)).stdout
    for san in ("DNS:*.teleport.cluster.local", "DNS:7470656d752e6c6f63616c.teleport.cluster.local",
                "IP Address:127.0.0.1", "DNS:localhost"):
        assert san in proxy_text


async def test_ssh_certificate_is_accepted_by_openssh(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    sshd, ssh = need("sshd"), need("ssh")
    home = await login_alice(cluster, capsys)
    keys = home / "keys" / "127.0.0.1"
    work = cluster.tmp / "sshd"
    work.mkdir()
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation dir (absent in containers)
    await sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host")], check=True)
    export = (await sh(["curl", "-sS", "--cacert", str(cluster.ca),
                        f"https://{cluster.web}/webapi/auth/export?type=user"], check=True)).stdout
    assert export.startswith("cert-authority ecdsa-sha2-nistp256 ") and "clustername=tpemu.local&type=user" in export
    (work / "user_ca.pub").write_text(export.split(" ", 1)[1].split(" clustername=")[0] + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (work / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work / 'host'}\nPidFile {work / 'sshd.pid'}\n"
        f"TrustedUserCAKeys {work / 'user_ca.pub'}\nAuthorizedKeysFile none\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel VERBOSE\n")
    log = (work / "sshd.log").open("w")
    proc = await asyncio.create_subprocess_exec(sshd, "-D", "-e", "-f", str(work / "sshd_config"), stderr=log)
    try:
        deadline = time.monotonic() + 5
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline and proc.returncode is None, (work / "sshd.log").read_text()
            await asyncio.sleep(0.05)
        base = [ssh, "-F", "none", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={work / 'kh'}", "-i", str(keys / "alice"),
                "-o", f"CertificateFile={keys / 'alice-ssh' / 'tpemu.local-cert.pub'}", "-p", str(port)]
        ok = await sh([*base, "root@127.0.0.1", "echo ok-$(whoami)"])
        assert ok.stdout.strip() == "ok-root", ok.stderr
        denied = await sh([*base, "nobody@127.0.0.1", "true"])
        assert denied.returncode == 255 and "Permission denied" in denied.stderr  # not one of alice's logins
    finally:
        proc.terminate()
        await proc.wait()
        log.close()
    assert 'Accepted certificate ID "alice"' in (work / "sshd.log").read_text()


async def test_auth_api_through_the_proxy_and_joins_over_the_web_api(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    home = await login_alice(cluster, capsys)
    keys = home / "keys" / "127.0.0.1"
    files = pki.TLSFiles(keys / "alice-x509.pem", keys / "alice", keys / "cas" / "tpemu.local.pem")
    web = config.Addr.parse(cluster.web)
    via_proxy = authclient.AuthClient.with_identity(web, "tpemu.local", files, via_proxy=True)
    ping = await via_proxy.call("GET", "/v1/ping")  # ALPN teleport-auth@, spliced to the Auth API
    assert ping["caller"] == {"kind": "user", "username": "alice", "roles": ["access"],
                              "expires": ping["caller"]["expires"]}
    key = pki.generate_key()
    route = {"service_name": "pg", "protocol": "postgres", "username": "alice", "database": "app"}
    answer = await via_proxy.call("POST", "/v1/users/alice/certs",
                                  {"tls_public_key": authapi.b64(pki.public_key_pem(key)), "route_to_database": route})
    db = ident.from_certificate(x509.load_pem_x509_certificate(authapi.unb64(answer["tls"], "tls")))
    assert db.route_to_database.service_name == "pg" and db.usage == ("usage:db",)

    code, out, err = await run_cli(capsys, "tokens", "add", "--type", "node", "--single-use", "--format", "json",
                                   "--data-dir", str(cluster.data))
    assert code == 0, err
    token = json.loads(out)["metadata"]["name"]
    node_key = pki.generate_key()
    body = authclient.register_request(node_key, token, "Node", "node-7", "node7")
    ctx_args = ["curl", "-sS", "--cacert", str(cluster.ca), "-H", "Content-Type: application/json", "-d", "@-",
                f"https://{cluster.web}/webapi/host/credentials"]
    first = json.loads((await sh(ctx_args, input=json.dumps(body), check=True)).stdout)
    node_cert = x509.load_pem_x509_certificate(authapi.unb64(first["tls"], "tls"))
    assert ident.from_certificate(node_cert).username == "node-7.tpemu.local"
    assert pki.ca_pin(pki.load_certs(authapi.unb64(first["tls_ca_certs"][0], "ca"))[0]) == cluster.auth.ca_pin
    again = (await sh([*ctx_args[:-1], "-w", "\n%{http_code}", ctx_args[-1]], input=json.dumps(body),
                      check=True)).stdout
    payload, status = again.rsplit("\n", 1)
    assert status == "403" and "(single-use)" in json.loads(payload)["error"]["message"]


# -- the real `tpemu start`, twice --------------------------------------------------------------------


def _start(cfg: Path, log: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    out = log.open("w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("tpemu")), "start", "--config", str(cfg)],
                            stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while "  try:" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    text = log.read_text()
    m = re.search(r"  auth:\s+(\S+) .*CA pin (sha256:[0-9a-f]+)", text)
    w = re.search(r"    web\s+(\S+)", text)
    assert m and w, text
    return proc, {"auth": m.group(1), "pin": m.group(2), "web": w.group(1)}


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_tpemu_start_restart_keeps_the_cluster(tmp_path: Path, started: list[subprocess.Popen[str]]) -> None:
    tpemu = str(Path(sys.executable).with_name("tpemu"))
    cfg = tmp_path / "tpemu.yaml"
    cfg.write_text(f"teleport:\n  data_dir: {tmp_path / 'data'}\nauth_service:\n  listen_addr: 127.0.0.1:0\n"
                   "proxy_service:\n  web_listen_addr: 127.0.0.1:0\n")
    proc, first = _start(cfg, tmp_path / "run1.log")
    started.append(proc)
    env = {**os.environ, "TPEMU_PASSWORD": PASSWORD}
    subprocess.run([tpemu, "users", "add", "bob", "--logins", "bob", "--config", str(cfg)], env=env, check=True,
                   capture_output=True)
    token = subprocess.run([tpemu, "tokens", "add", "--type", "node", "--ttl", "1h", "--config", str(cfg)],
                           capture_output=True, text=True, check=True).stdout.split()[3]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "joined cluster tpemu.local" in (tmp_path / "run1.log").read_text()

    proc, second = _start(cfg, tmp_path / "run2.log")
    started.append(proc)
    log2 = (tmp_path / "run2.log").read_text()
    assert second["pin"] == first["pin"]  # the same CAs
    assert "joined cluster" not in log2  # the proxy kept its identity
    listed = subprocess.run([tpemu, "tokens", "ls", "--config", str(cfg)], capture_output=True, text=True,
                            check=True).stdout
    assert token in listed
    home = tmp_path / "home"
    login = subprocess.run([tpemu, "login", "--proxy", second["web"], "--user", "bob", "--home", str(home)],
                           env={**env, "TPEMU_DATA_DIR": str(tmp_path / "data")}, capture_output=True, text=True,
                           check=False)
    assert login.returncode == 0 and "Logged in as:       bob" in login.stdout, login.stderr
    curl = subprocess.run(["curl", "-sS", "--cacert", str(tmp_path / "data" / "pki" / "ca.crt"),
                           f"https://{second['web']}/webapi/ping"], capture_output=True, text=True, check=True)
    assert json.loads(curl.stdout)["cluster_name"] == "tpemu.local"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


async def test_openssl_and_curl_see_the_auth_apis_refusals(tmp_path: Path) -> None:
    """Real TLS clients get the alert that says why their certificate was refused."""
    openssl, curl = need("openssl"), need("curl")
    cfg = config.from_dict({"teleport": {"data_dir": str(tmp_path / "data")},
                            "auth_service": {"listen_addr": "127.0.0.1:0"}})
    auth = AuthService(cfg)
    await auth.start()
    try:
        assert auth.addr is not None and auth.server is not None
        evil_key = pki.generate_key()
        evil_ca = pki.make_ca("tpemu.local", evil_key, "tpemu.local")
        key = pki.generate_key()
        subject = ident.Identity("mallory", groups=("Admin",)).subject()
        (tmp_path / "evil.crt").write_bytes(pki.cert_pem(pki.issue_cert(evil_ca, evil_key, key.public_key(), subject)))
        (tmp_path / "k.pem").write_bytes(pki.key_pem(key))
        ca = str(auth.admin_files.ca)
        s_client = [openssl, "s_client", "-connect", str(auth.addr), "-CAfile", ca, "-verify_return_error",
                    "-servername", ident.cluster_sni("tpemu.local"), "-key", str(tmp_path / "k.pem"), "-ign_eof"]
        out = await sh([*s_client, "-cert", str(tmp_path / "evil.crt")], input="GET /v1/ping HTTP/1.1\r\n\r\n")
        assert "alert unknown ca" in out.stdout + out.stderr, out.stdout + out.stderr
        import datetime as dt

        from tpemu.auth import authority as authority_mod
        from tpemu.auth.authority import CAType

        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
        old = authority_mod.issue_user_tls(auth.server.ca(CAType.USER), key.public_key(),
                                           ident.Identity("alice", groups=("access",)),
                                           not_after=past + dt.timedelta(hours=1), now=past)
        (tmp_path / "old.crt").write_bytes(pki.cert_pem(old))
        out = await sh([*s_client, "-cert", str(tmp_path / "old.crt")], input="GET /v1/ping HTTP/1.1\r\n\r\n")
        assert "alert certificate expired" in out.stdout + out.stderr, out.stdout + out.stderr
        # Without a certificate: in, but only as nobody.
        res = await sh([curl, "-sS", "--cacert", ca, f"https://{auth.addr}/v1/tokens"])
        assert json.loads(res.stdout) == {"error": {"message": "access denied: this call needs a client certificate "
                                                               "issued by the cluster"}}
        res = await sh([curl, "-sS", "--cacert", ca, "--cert", str(auth.admin_files.cert), "--key",
                        str(auth.admin_files.key), f"https://{auth.addr}/v1/tokens"])
        assert json.loads(res.stdout) == {"items": []}
    finally:
        await auth.close()
