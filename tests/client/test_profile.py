"""The client profile on disk and ``tpemu status`` (no network: certificates made here)."""

from __future__ import annotations

import datetime as dt
import io
import stat
from pathlib import Path

import asyncssh
import pytest

from tpemu import cli, pki
from tpemu import identity as ident
from tpemu.auth import authority as authority_mod
from tpemu.auth.authority import CAType
from tpemu.client import login as login_mod
from tpemu.client import profile as profile_mod


def make_profile(home: Path, hours: float = 12.0) -> profile_mod.Profile:
    user_ca = authority_mod.new_authority(CAType.USER, "tpemu.local")
    host_ca = authority_mod.new_authority(CAType.HOST, "tpemu.local")
    key = pki.generate_key()
    now = dt.datetime.now(dt.UTC)
    not_after = (now + dt.timedelta(hours=hours)).replace(microsecond=0)
    identity = ident.Identity("alice", groups=("access",), principals=("root", "alice"), teleport_cluster="tpemu.local",
                              route_to_cluster="tpemu.local", database_users=("alice",), database_names=("app",))
    start = now - dt.timedelta(hours=13) if hours < 0 else None
    tls = authority_mod.issue_user_tls(user_ca, key.public_key(), identity, not_after, now=start)
    ssh_pub = asyncssh.import_private_key(pki.key_pem(key)).export_public_key()
    ssh = authority_mod.issue_user_ssh(user_ca, ssh_pub, "alice", ["root", "alice"], ["access"], {}, "tpemu.local",
                                       not_after if hours > 0 else now + dt.timedelta(minutes=1))
    return profile_mod.save(home, "proxy.example.com", "proxy.example.com:3080", "alice", "tpemu.local",
                            pki.key_pem(key), ssh_pub, pki.cert_pem(tls), ssh, host_ca.tls_cert_pem,
                            [host_ca.ssh_public])


def test_profile_files_and_modes(tmp_path: Path) -> None:
    prof = make_profile(tmp_path)
    assert stat.S_IMODE(prof.key_path.stat().st_mode) == 0o600
    assert prof.ssh_cert_path == tmp_path / "keys/proxy.example.com/alice-ssh/tpemu.local-cert.pub"
    assert (tmp_path / "current-profile").read_text().strip() == "proxy.example.com"
    loaded = profile_mod.current(tmp_path)
    assert loaded == prof and loaded.identity().username == "alice"
    known = prof.known_hosts_path.read_text()
    assert known.startswith("@cert-authority *.tpemu.local,tpemu.local ecdsa-sha2-nistp256 ")
    make_profile(tmp_path)  # a second login replaces the cluster's line instead of adding one
    assert prof.known_hosts_path.read_text().count("@cert-authority") == 1
    assert asyncssh.import_certificate(prof.ssh_cert_path.read_bytes()).principals == ["root", "alice"]


def test_status_lines(tmp_path: Path) -> None:
    prof = make_profile(tmp_path)
    lines, valid = login_mod.status_lines(prof)
    text = "\n".join(lines)
    assert valid
    for part in ("> Profile URL:        https://proxy.example.com:3080", "Logged in as:       alice",
                 "Roles:              access", "Logins:             root, alice", "Database users:     alice",
                 "Extensions:         permit-agent-forwarding, permit-port-forwarding, permit-pty"):
        assert part in text, text
    assert "[valid for 11h59m" in text or "[valid for 12h0m" in text


def test_expired_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prof = make_profile(tmp_path, hours=-1)
    lines, valid = login_mod.status_lines(prof)
    assert not valid and lines[-2].endswith("[EXPIRED]")
    assert cli.main(["status", "--home", str(tmp_path)]) == 1
    assert "[EXPIRED]" in capsys.readouterr().out


def test_status_and_logout_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--home", str(tmp_path)]) == 1
    assert capsys.readouterr().out.strip() == "Not logged in."
    make_profile(tmp_path)
    assert cli.main(["status", "--home", str(tmp_path), "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert '"username": "alice"' in out and '"expired": false' in out
    assert cli.main(["logout", "--home", str(tmp_path)]) == 0
    assert not (tmp_path / "keys" / "proxy.example.com").exists()
    assert cli.main(["status", "--home", str(tmp_path)]) == 1


def test_login_needs_a_password_source(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TPEMU_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO())  # not a terminal
    code = cli.main(["login", "--proxy", "127.0.0.1:1", "--user", "alice", "--home", str(tmp_path), "--insecure"])
    assert code == 2 and "no password: use --password-file" in capsys.readouterr().err
    monkeypatch.setenv("TPEMU_PASSWORD", "whatever")
    code = cli.main(["login", "--proxy", "127.0.0.1:1", "--user", "alice", "--home", str(tmp_path), "--insecure"])
    assert code == 1 and "cannot reach the proxy at 127.0.0.1:1" in capsys.readouterr().err
