"""``tpemu login`` and ``tpemu status``: password login through the proxy's web API (glue).

What ``tsh login`` does for a local user without MFA (``lib/client/weblogin.go``,
``SSHAgentLogin``): ``GET /webapi/ping`` for the cluster name, a fresh key pair, then
``POST /webapi/ssh/certs`` with ``CreateSSHCertReq`` (``user``, ``password``, ``ssh_pub_key``,
``tls_pub_key``, ``ttl`` in nanoseconds); the answer (``SSHLoginResponse``) holds the SSH and TLS
certificates and the host CA (``host_signers``), all written to the profile
(:mod:`tpemu.client.profile`). One ECDSA P-256 key serves both certificates.

The proxy's certificate is verified against ``--ca``, else the CA of an earlier login to the same
proxy, else this machine's cluster CA (in ``data_dir``) and the system's trust store;
``--insecure`` skips verification, with the warning tsh prints.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from tpemu import authapi, pki, sshcert
from tpemu.client import profile as profile_mod
from tpemu.config import Addr
from tpemu.errors import PeerFault


class LoginError(PeerFault):
    """Login failed; the message is for the user."""


@dataclass(frozen=True)
class Trust:
    ca: Path | None = None
    insecure: bool = False


def _context(trust: Trust) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if trust.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif trust.ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(trust.ca))
        except (OSError, ssl.SSLError) as exc:
            raise LoginError(f"cannot load CA {trust.ca}: {exc}") from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def web_call(proxy: Addr, method: str, path: str, body: Any, trust: Trust, timeout: float = 30.0) -> Any:
    """One JSON request to the proxy's web API; raises :class:`LoginError` with the server's message."""
    conn = http.client.HTTPSConnection(proxy.host, proxy.port, context=_context(trust), timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                       "Accept": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
    except ssl.SSLCertVerificationError as exc:
        raise LoginError(f"cannot verify the proxy's certificate: {exc.verify_message} "
                         "(pass --ca <cluster CA> or --insecure)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise LoginError(f"cannot reach the proxy at {proxy}: {exc}") from None
    finally:
        conn.close()
    try:
        decoded = json.loads(payload) if payload else None
    except ValueError:
        raise LoginError(f"{path} answered {resp.status} with something that is not JSON: {payload[:120]!r}") from None
    if resp.status >= 400:
        message = f"{resp.status} {resp.reason}"
        if isinstance(decoded, dict) and isinstance(decoded.get("error"), dict):
            message = str(decoded["error"].get("message", message))
        raise LoginError(message)
    return decoded


def default_trust(home: Path, proxy: Addr, ca: str | None, insecure: bool, data_dir_ca: Path | None) -> Trust:
    """What to trust for the proxy: see the module docstring."""
    if insecure:
        return Trust(insecure=True)
    if ca:
        return Trust(Path(ca))
    name = profile_mod.profile_name(proxy.host)
    try:
        prof = profile_mod.load(home, name)
        if prof.web_proxy_addr == str(proxy) and prof.ca_path.exists():
            return Trust(prof.ca_path)
    except (OSError, ValueError, KeyError):
        pass
    return Trust(data_dir_ca)


def login(home: Path, proxy: Addr, user: str, password: str, ttl: float, trust: Trust) -> profile_mod.Profile:
    """Log in and write the profile; raises :class:`LoginError`."""
    ping = web_call(proxy, "GET", "/webapi/ping", None, trust)
    cluster = ping.get("cluster_name", "") if isinstance(ping, dict) else ""
    key = pki.generate_key("ecdsa")
    key_pem = pki.key_pem(key)
    ssh_public: bytes = asyncssh.import_private_key(key_pem).export_public_key("openssh")
    body = {"user": user, "password": password, "ssh_pub_key": authapi.b64(ssh_public),
            "tls_pub_key": authapi.b64(pki.public_key_pem(key)), "ttl": int(ttl * authapi.NS)}
    answer = web_call(proxy, "POST", "/webapi/ssh/certs", body, trust)
    if not isinstance(answer, dict):
        raise LoginError("the proxy's login answer is not a JSON object")
    try:
        tls_cert = authapi.unb64(answer.get("tls_cert"), "tls_cert")
        ssh_cert = authapi.unb64(answer.get("cert") or "", "cert")
        ca_pems = b""
        ssh_cas: list[bytes] = []
        for signer in answer.get("host_signers") or []:
            cluster = cluster or str(signer.get("domain_name", ""))
            ca_pems += b"".join(authapi.unb64(c, "tls_certs") for c in signer.get("tls_certs") or [])
            ssh_cas += [authapi.unb64(k, "checking_keys") for k in signer.get("checking_keys") or []]
    except authapi.BadParameter as exc:
        raise LoginError(f"the proxy's login answer is malformed: {exc.message}") from None
    if not tls_cert or not ca_pems:
        raise LoginError("the proxy's login answer has no TLS certificate or no CA")
    # The private key in traditional (SEC1) PEM: what OpenSSH and libpq read without complaint.
    from cryptography.hazmat.primitives import serialization

    sec1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    return profile_mod.save(home, profile_mod.profile_name(proxy.host), str(proxy), str(answer.get("username", user)),
                            cluster or "unknown", sec1, ssh_public, tls_cert, ssh_cert, ca_pems, ssh_cas)


def _human(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


def status_lines(prof: profile_mod.Profile, now: dt.datetime | None = None) -> tuple[list[str], bool]:
    """``tsh status``-style lines for a profile, and whether its certificates are still valid."""
    now = now or dt.datetime.now(dt.UTC)
    identity = prof.identity()
    expires = prof.expires()
    valid = expires > now
    lines = [
        f"> Profile URL:        https://{prof.web_proxy_addr}",
        f"  Logged in as:       {identity.username}",
        f"  Cluster:            {identity.teleport_cluster or prof.cluster}",
        f"  Roles:              {', '.join(identity.roles) or '-'}",
        f"  Logins:             {', '.join(identity.logins) or '-'}",
        f"  Kubernetes:         {'enabled' if identity.kubernetes_users or identity.kubernetes_groups else 'disabled'}",
    ]
    if identity.database_users or identity.database_names:
        lines.append(f"  Database users:     {', '.join(identity.database_users) or '-'}")
        lines.append(f"  Database names:     {', '.join(identity.database_names) or '-'}")
    when = expires.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
    lines.append(f"  Valid until:        {when} "
                 + (f"[valid for {_human(expires - now)}]" if valid else "[EXPIRED]"))
    if prof.ssh_cert_path.exists():
        try:
            ext = sshcert.extensions_of(prof.ssh_cert_path.read_bytes())
            lines.append(f"  Extensions:         {', '.join(sorted(k for k in ext if k.startswith('permit-')))}")
        except ValueError:
            lines.append("  Extensions:         (unreadable SSH certificate)")
    return lines, valid
