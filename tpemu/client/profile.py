"""The client profile: keys, certificates and the cluster CA of a logged-in user (glue, files).

Laid out like ``tsh``'s ``~/.tsh`` so the files are familiar and work with OpenSSH and libpq as
they are (home: ``--home``, ``$TPEMU_HOME`` or ``~/.tpemu``):

* ``current-profile`` — the name of the active profile (the proxy's host name);
* ``<profile>.yaml`` — proxy address, user, cluster;
* ``keys/<profile>/<user>`` — the private key (PEM, mode 0600), ``<user>.pub`` its SSH public key;
* ``keys/<profile>/<user>-x509.pem`` — the TLS certificate (the identity in its subject);
* ``keys/<profile>/<user>-ssh/<cluster>-cert.pub`` — the SSH certificate;
* ``keys/<profile>/cas/<cluster>.pem`` — the cluster's host CA (verifies the proxy and hosts);
* ``known_hosts`` — ``@cert-authority`` lines for the cluster's SSH host CA.

``ssh -i keys/<p>/<user> -o CertificateFile=keys/<p>/<user>-ssh/<cluster>-cert.pub …`` and
``psql "sslcert=…-x509.pem sslkey=… sslrootcert=cas/<cluster>.pem"`` use the files directly.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509

from tpemu import identity as ident
from tpemu import pki


def default_home() -> Path:
    text = os.environ.get("TPEMU_HOME", "")
    return Path(text).expanduser() if text else Path.home() / ".tpemu"


def profile_name(proxy_host: str) -> str:
    """The profile of a proxy: its host name (as ``tsh`` names profiles)."""
    return proxy_host.strip("[]").replace("/", "_").replace(":", "_") or "default"


@dataclass(frozen=True)
class Profile:
    """One logged-in profile under ``home``."""

    home: Path
    name: str
    web_proxy_addr: str
    username: str
    cluster: str

    @property
    def key_dir(self) -> Path:
        return self.home / "keys" / self.name

    @property
    def key_path(self) -> Path:
        return self.key_dir / self.username

    @property
    def ssh_public_path(self) -> Path:
        return self.key_dir / f"{self.username}.pub"

    @property
    def tls_cert_path(self) -> Path:
        return self.key_dir / f"{self.username}-x509.pem"

    @property
    def ssh_cert_path(self) -> Path:
        return self.key_dir / f"{self.username}-ssh" / f"{self.cluster}-cert.pub"

    @property
    def ca_path(self) -> Path:
        return self.key_dir / "cas" / f"{self.cluster}.pem"

    @property
    def known_hosts_path(self) -> Path:
        return self.home / "known_hosts"

    def tls_files(self) -> pki.TLSFiles:
        return pki.TLSFiles(self.tls_cert_path, self.key_path, self.ca_path)

    def tls_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.tls_cert_path.read_bytes())

    def identity(self) -> ident.Identity:
        return ident.from_certificate(self.tls_cert())

    def expires(self) -> dt.datetime:
        return self.tls_cert().not_valid_after_utc


def save(home: Path, name: str, web_proxy_addr: str, username: str, cluster: str, key_pem: bytes,
         ssh_public: bytes, tls_cert: bytes, ssh_cert: bytes, ca_pems: bytes, ssh_host_cas: list[bytes]) -> Profile:
    """Write a profile and make it current; returns it."""
    profile = Profile(home, name, web_proxy_addr, username, cluster)
    for folder in (home, profile.key_dir, profile.ssh_cert_path.parent, profile.ca_path.parent):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_private(profile.key_path, key_pem)
    pki.write_public(profile.ssh_public_path, ssh_public.strip() + b"\n")
    pki.write_public(profile.tls_cert_path, tls_cert)
    if ssh_cert:
        pki.write_public(profile.ssh_cert_path, ssh_cert.strip() + b"\n")
    pki.write_public(profile.ca_path, ca_pems)
    _update_known_hosts(profile.known_hosts_path, cluster, ssh_host_cas)
    meta = {"web_proxy_addr": web_proxy_addr, "user": username, "cluster": cluster}
    pki.write_public(home / f"{name}.yaml", yaml.safe_dump(meta, sort_keys=False).encode())
    pki.write_public(home / "current-profile", name.encode() + b"\n")
    return profile


def _update_known_hosts(path: Path, cluster: str, keys: list[bytes]) -> None:
    # tsh's format: one @cert-authority line per host CA key, matching the cluster's hosts.
    lines = [line for line in (path.read_text().splitlines() if path.exists() else [])
             if f"clustername={cluster}" not in line and line.strip()]
    for key in keys:
        lines.append(f"@cert-authority *.{cluster},{cluster} {key.decode().strip()} type=host clustername={cluster}")
    pki.write_public(path, ("\n".join(lines) + "\n").encode() if lines else b"")


def current(home: Path) -> Profile | None:
    """The active profile, or ``None`` when not logged in."""
    try:
        name = (home / "current-profile").read_text().strip()
        return load(home, name)
    except (OSError, ValueError):
        return None


def load(home: Path, name: str) -> Profile:
    """The profile ``name``; raises :class:`OSError` or :class:`ValueError`."""
    data = yaml.safe_load((home / f"{name}.yaml").read_text())
    if not isinstance(data, dict):
        raise ValueError(f"profile {name} is not a mapping")
    return Profile(home, name, str(data["web_proxy_addr"]), str(data["user"]), str(data["cluster"]))


def remove(profile: Profile) -> None:
    """Delete a profile's keys and certificates (``tsh logout``)."""
    import shutil

    shutil.rmtree(profile.key_dir, ignore_errors=True)
    for path in (profile.home / f"{profile.name}.yaml",):
        path.unlink(missing_ok=True)
    cur = profile.home / "current-profile"
    if cur.exists() and cur.read_text().strip() == profile.name:
        cur.unlink()
