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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tpemu.errors import PeerFault
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
            ttl: dt.timedelta = dt.timedelta(days=3650), unit: str = "") -> x509.Certificate:
    """A self-signed CA certificate (``unit``: an OU naming the CA's purpose, if given)."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    name = x509.Name(attrs)
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
               extra_extensions: Iterable[x509.ExtensionType] = (),
               not_after: dt.datetime | None = None, now: dt.datetime | None = None) -> x509.Certificate:
    """A leaf certificate signed by the CA, valid from a minute ago until ``not_after`` (or ``ttl``
    from now). NotAfter is capped by the CA's own (a leaf never outlives its issuer)."""
    now = now or _now()
    end = min(not_after or now + ttl, ca_cert.not_valid_after_utc)
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
        .not_valid_before(now - BACKDATE).not_valid_after(end)
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
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover file from an interrupted write
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a certificate, its key and the CA that signed it; ``client_ca``: the CAs that
    client certificates are checked against, when not ``ca`` (a cluster's user CA)."""

    cert: Path
    key: Path
    ca: Path
    client_ca: Path | None = None


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
    ca_key: PrivateKey | None = None
    if ca_cert_p.exists() and ca_key_p.exists():
        ca_key = load_key(ca_key_p.read_bytes())
        ca_cert = x509.load_pem_x509_certificate(ca_cert_p.read_bytes())
        if public_key_pem(ca_key) != ca_cert.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo):
            ca_key = None  # ca.crt was replaced (a proxy that joined an Auth Service writes its CA there)
    if ca_key is None:
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


# -- verification, pins, host ids (used by the Auth Service, the proxy and agents) -----------------


class CertificateError(PeerFault, ValueError):
    """A certificate that does not verify; ``reason`` is a short stable code
    (``unknown-authority``, ``expired``, ``not-yet-valid``, ``bad-signature``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def verify_issued_by(cert: x509.Certificate, cas: Iterable[x509.Certificate],
                     now: dt.datetime | None = None) -> x509.Certificate:
    """The CA in ``cas`` that signed ``cert`` (a leaf directly under a root, as all cluster
    certificates are); raises :class:`CertificateError` with Go's wording otherwise
    (``x509: certificate signed by unknown authority``, ``certificate has expired``)."""
    now = now or _now()
    issuer: x509.Certificate | None = None
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        issuer = ca
        break
    if issuer is None:
        raise CertificateError("unknown-authority", "certificate signed by unknown authority "
                               f"(issuer {cert.issuer.rfc4514_string()!r} is not a CA of this cluster)")
    if now > cert.not_valid_after_utc:
        raise CertificateError("expired", f"certificate expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ} "
                               f"(now {now:%Y-%m-%dT%H:%M:%SZ})")
    if now < cert.not_valid_before_utc:
        raise CertificateError("not-yet-valid", "certificate is not valid before "
                               f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}")
    return issuer


def san_strings(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses (as text) in a certificate's SANs."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def ca_pin(cert: x509.Certificate) -> str:
    """Teleport's CA pin: ``sha256:`` + hex SHA-256 of the CA's SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return "sha256:" + digest.finalize().hex()


def public_key_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(data: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """A PEM public key (PKIX or PKCS#1); raises :class:`ValueError` for other key types."""
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("unsupported public key type (ECDSA or RSA expected)")
    return key


def load_certs(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; raises :class:`ValueError` if there is none."""
    certs = x509.load_pem_x509_certificates(data)
    if not certs:
        raise ValueError("no certificate in PEM data")
    return certs


def ensure_host_uuid(data_dir: Path) -> str:
    """The host's UUID from ``data_dir/host_uuid``, created once (Teleport's ``host_uuid`` file)."""
    import uuid

    path = data_dir / "host_uuid"
    try:
        text = path.read_text(encoding="ascii").strip()
        return str(uuid.UUID(text))
    except (OSError, ValueError):
        pass
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = str(uuid.uuid4())
    write_public(path, value.encode() + b"\n")
    return value
