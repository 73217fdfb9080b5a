"""X.509 keys and certificates with ``cryptography`` (pure functions, plus file helpers).

Used by the Auth Service to run its certificate authorities and, before a cluster has an Auth
Service, by the proxy to make a bootstrap cluster CA and proxy certificate once into
``data_dir``. Certificates follow RFC 5280 profiles: a CA with ``basicConstraints CA:TRUE`` and
``keyCertSign``; leaf certificates with the SANs Teleport uses (the host's names, ``public_addr``
hosts, ``*.teleport.cluster.local`` and ``<hex(cluster_name)>.teleport.cluster.local``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tpemu.wire.alpn import INTERNAL_DOMAIN, cluster_sni

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: Clock skew allowance: certificates start a minute in the past, as Teleport's do.
BACKDATE = dt.timedelta(minutes=1)


def generate_key(kind: str = "ecdsa") -> PrivateKey:
    """A new private key: ``ecdsa`` (P-256, the default: fast handshakes) or ``rsa`` (2048)."""
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {kind!r} (ecdsa or rsa)")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(common_name: str, key: PrivateKey, organization: str,
            ttl: dt.timedelta = dt.timedelta(days=3650)) -> x509.Certificate:
    """A self-signed CA certificate."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS or IP SAN entries, de-duplicated, in order."""
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for n in names:
        if not n or n in seen:
            continue
        seen.add(n)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def host_names(cluster_name: str, extra: Iterable[str] = ()) -> list[str]:
    """The SANs of a Teleport host certificate for ``cluster_name``, plus ``extra`` names."""
    return [*extra, "localhost", "127.0.0.1", "::1", f"*.{INTERNAL_DOMAIN}", INTERNAL_DOMAIN,
            cluster_sni(cluster_name)]


def issue_cert(ca_cert: x509.Certificate, ca_key: PrivateKey, public_key: object, subject: x509.Name,
               *, sans: Iterable[str] = (), ttl: dt.timedelta = dt.timedelta(days=365),
               server: bool = True, client: bool = True,
               extra_extensions: Iterable[x509.ExtensionType] = ()) -> x509.Certificate:
    """A leaf certificate signed by the CA."""
    now = _now()
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    san = san_entries(sans)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    for ext in extra_extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("unsupported private key type (ECDSA or RSA expected)")
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600 (OpenSSH and libpq refuse wider modes)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a certificate, its key and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def ensure_bootstrap_pki(data_dir: Path, cluster_name: str, extra_names: Iterable[str] = (),
                         key_kind: str = "ecdsa") -> TLSFiles:
    """A cluster CA and a proxy certificate in ``data_dir``, made once and reused.

    Re-issues only the proxy certificate when its SANs no longer cover ``extra_names`` (a new
    ``public_addr``) or it is about to expire; the CA is kept, so clients that pinned it still work.
    """
    pki = data_dir / "pki"
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert_p, ca_key_p = pki / "ca.crt", pki / "ca.key"
    files = TLSFiles(pki / "proxy.crt", pki / "proxy.key", ca_cert_p)
    if ca_cert_p.exists() and ca_key_p.exists():
        ca_key = load_key(ca_key_p.read_bytes())
        ca_cert = x509.load_pem_x509_certificate(ca_cert_p.read_bytes())
    else:
        ca_key = generate_key(key_kind)
        ca_cert = make_ca(cluster_name, ca_key, cluster_name)
        write_private(ca_key_p, key_pem(ca_key))
        write_public(ca_cert_p, cert_pem(ca_cert))
    wanted = host_names(cluster_name, extra_names)
    if files.cert.exists() and files.key.exists():
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        have = {str(v) for v in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)}
        have |= {str(v) for v in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)}
        fresh = cert.not_valid_after_utc - _now() > dt.timedelta(days=7)
        if fresh and cert.issuer == ca_cert.subject and all(
                str(ipaddress.ip_address(n)) in have if _is_ip(n) else n in have for n in wanted):
            return files
    key = generate_key(key_kind)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
                         x509.NameAttribute(NameOID.COMMON_NAME, "proxy")])
    cert = issue_cert(ca_cert, ca_key, key.public_key(), subject, sans=wanted)
    write_private(files.key, key_pem(key))
    write_public(files.cert, cert_pem(cert) + cert_pem(ca_cert))
    return files


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
