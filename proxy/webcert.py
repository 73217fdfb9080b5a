"""The certificate the proxy's web routes present: ``https_keypairs``, or Teleport's self-signed one.

Teleport's web listener (and every route its ALPN router terminates with ``WebTLSConfig``)
presents the configured ``proxy_service.https_keypairs``; with none (and no ACME) it makes a
self-signed certificate in its data directory:

* ``lib/config/configuration.go`` ``applyProxyConfig``: the legacy ``https_key_file`` /
  ``https_cert_file`` pair is appended to ``https_keypairs``; each pair must exist ("https private
  key does not exist: %s", "https cert does not exist: %s"); a self-signed chain is accepted with
  the warning "Starting Teleport with a self-signed TLS certificate, …".
* ``lib/service/certreloader.go`` ``CertReloader``: a pair that fails to load stops the start
  ("TLS certificate %v and key %v failed to load"); ``GetCertificate`` returns the only pair, else
  the first the ClientHello supports (its SNI matches), else the first.
* ``lib/service/service.go`` ``initSelfSignedHTTPSCert``: "No TLS Keys provided, using
  self-signed certificate."; reuses ``<data_dir>/webproxy_key.pem`` + ``webproxy_cert.pem``
  (``lib/defaults`` ``SelfSignedKeyPath``/``SelfSignedCertPath``) when they load, else generates
  them for ``[hostname, "localhost", <public_addr hosts>]`` (IP hosts as IP addresses) and writes
  both 0600.
* ``lib/utils/cert/selfsigned.go`` ``GenerateSelfSignedCert``: RSA 2048
  (``native.GenerateRSAPrivateKey``), a random 128-bit serial, subject = issuer = ``CN=localhost,
  C=US, O=localhost``, valid from now for 825 days (macOS's maximum), KeyUsage
  KeyEncipherment|DigitalSignature|CertSign, ExtKeyUsage ServerAuth, a CA (BasicConstraints
  true), DNS names = the hosts + ``localhost.local``, IP addresses = what ``localhost`` resolves
  to + ``::1`` + the IP hosts; the key written as PKCS#1 ``RSA PRIVATE KEY``.

tpemu's deviation (said in the README): without ``https_keypairs`` tpemu's default stays the
proxy's Auth-issued certificate, which tpemu's own clients and agents verify with the cluster CA
(Teleport's would need ``--insecure``); ``tpemu.proxy_service.web_certificate: self-signed`` gives
Teleport's behaviour exactly. Only the web routes (HTTP/1.1, h2, no ALPN) use this certificate;
tpemu's other TLS routes keep the Auth-issued one. ``https_keypairs_reload_interval`` and the
system-store chain check of a non-self-signed pair are not emulated.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import secrets
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tpemu.config import Addr, Config
from tpemu.errors import LocalFault
from tpemu.net.tls import ContextCache

log = logging.getLogger(__name__)

#: lib/defaults SelfSignedKeyPath / SelfSignedCertPath (relative to the data directory).
SELF_SIGNED_KEY = "webproxy_key.pem"
SELF_SIGNED_CERT = "webproxy_cert.pem"
#: lib/utils/cert/selfsigned.go macMaxTLSCertValidityPeriod.
SELF_SIGNED_VALIDITY = dt.timedelta(days=825)


class WebCertError(LocalFault, ValueError):
    """A configured web certificate cannot be used; the message is Teleport's."""


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path
    #: The DNS names and IP addresses of the leaf (lower case), for SNI selection.
    names: tuple[str, ...]


def _leaf_names(cert_pem: bytes) -> tuple[str, ...]:
    leaf = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n.lower() for n in san.get_values_for_type(x509.DNSName)) + tuple(
        str(ip) for ip in san.get_values_for_type(x509.IPAddress))


def _is_self_signed(cert_pem: bytes) -> bool:
    chain = x509.load_pem_x509_certificates(cert_pem)
    return len(chain) == 1 and chain[0].issuer == chain[0].subject


def load_pair(cert: Path, key: Path) -> KeyPair:
    """One ``https_keypairs`` entry, checked as Teleport checks it; raises :class:`WebCertError`."""
    if not key.exists():
        raise WebCertError(f"https private key does not exist: {key}")
    if not cert.exists():
        raise WebCertError(f"https cert does not exist: {cert}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        pem = cert.read_bytes()
        names = _leaf_names(pem)
        self_signed = _is_self_signed(pem)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise WebCertError(f"TLS certificate {cert} and key {key} failed to load: {exc}") from None
    if self_signed:
        log.warning("Starting Teleport with a self-signed TLS certificate, this is not safe for production "
                    "clusters. Using a self-signed certificate opens Teleport users to Man-in-the-Middle attacks.")
    return KeyPair(cert, key, names)


def generate_self_signed(hosts: Sequence[str], ips: Sequence[str]) -> tuple[bytes, bytes]:
    """``(cert PEM, key PEM)`` as ``GenerateSelfSignedCert(hosts, ips)`` makes them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    entity = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    try:
        # net.LookupIP("localhost"); Go then appends ::1 whatever the lookup found.
        resolved = {info[4][0] for info in socket.getaddrinfo("localhost", None, proto=socket.IPPROTO_TCP)}
    except OSError:
        resolved = set()
    if resolved:
        addresses += [ipaddress.ip_address(a) for a in sorted(resolved)] + [ipaddress.ip_address("::1")]
    for ip in ips:
        try:
            addresses.append(ipaddress.ip_address(ip))
        except ValueError:
            raise WebCertError(f"Unable to parse IP address for self-signed certificate ({ip})") from None
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in (*hosts, "localhost.local")]
    san += [x509.IPAddress(a) for a in addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(entity).issuer_name(entity)
            .public_key(key.public_key())
            .serial_number(secrets.randbelow(1 << 128) or 1)
            .not_valid_before(now).not_valid_after(now + SELF_SIGNED_VALIDITY)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_self_signed(data_dir: Path, hostname: str, public_addrs: Sequence[str]) -> KeyPair:
    """``initSelfSignedHTTPSCert``: reuse the pair in ``data_dir`` when it loads, else make it."""
    log.warning("No TLS Keys provided, using self-signed certificate.")
    key_path, cert_path = data_dir / SELF_SIGNED_KEY, data_dir / SELF_SIGNED_CERT
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
        return KeyPair(cert_path, key_path, _leaf_names(cert_path.read_bytes()))
    except FileNotFoundError:
        pass
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise WebCertError(f"unrecognized error reading certs: {exc}") from None  # Teleport's wrap text
    log.warning("Generating self-signed key and cert. key_path=%s cert_path=%s", key_path, cert_path)
    hosts, ips = [hostname, "localhost"], []
    for value in public_addrs:
        try:
            host = Addr.parse(value, default_port=0).host
        except ValueError:
            log.warning("Error parsing proxy.public_address %r, skipping adding to self-signed cert", value)
            continue
        try:
            ipaddress.ip_address(host)
            ips.append(host)
        except ValueError:
            hosts.append(host)
    cert_pem, key_pem = generate_self_signed(hosts, ips)
    data_dir.mkdir(parents=True, exist_ok=True)
    for path, data in ((key_path, key_pem), (cert_path, cert_pem)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return KeyPair(cert_path, key_path, _leaf_names(cert_pem))


def _matches(sni: str, names: tuple[str, ...]) -> bool:
    # Go's x509 VerifyHostname, as ClientHelloInfo.SupportsCertificate uses it: exact, or one
    # leading wildcard label.
    sni = sni.lower().rstrip(".")
    for name in names:
        if name == sni:
            return True
        if name.startswith("*.") and "." in sni and sni.split(".", 1)[1] == name[2:]:
            return True
    return False


class WebCertificates:
    """The web routes' server contexts: one :class:`ContextCache` per key pair."""

    def __init__(self, pairs: Sequence[KeyPair], client_ca: Path | None) -> None:
        if not pairs:
            raise ValueError("no key pairs")
        self.pairs = tuple(pairs)
        self._caches = [ContextCache(p.cert, p.key, client_ca=client_ca) for p in self.pairs]

    def index_for(self, sni: str | None) -> int:
        """``CertReloader.GetCertificate``: the only pair, else the first matching ``sni``, else the first."""
        if len(self.pairs) > 1 and sni:
            for i, pair in enumerate(self.pairs):
                if _matches(sni, pair.names):
                    return i
        return 0

    def get(self, sni: str | None, alpn: Sequence[str]) -> ssl.SSLContext:
        return self._caches[self.index_for(sni)].get(alpn)


def for_config(cfg: Config, data_dir: Path, client_ca: Path | None) -> WebCertificates | None:
    """The web certificates this config asks for, or ``None`` for the Auth-issued proxy certificate."""
    ps = cfg.proxy_service
    pairs = [(Path(p.cert_file).expanduser(), Path(p.key_file).expanduser()) for p in ps.https_keypairs]
    if ps.https_key_file or ps.https_cert_file:  # the legacy pair, appended as Teleport does
        pairs.append((Path(ps.https_cert_file).expanduser(), Path(ps.https_key_file).expanduser()))
    if pairs:
        return WebCertificates([load_pair(cert, key) for cert, key in pairs], client_ca)
    if cfg.tpemu.proxy_service.web_certificate == "self-signed":
        hostname = cfg.teleport.nodename or socket.gethostname()
        return WebCertificates([ensure_self_signed(data_dir, hostname, ps.public_addr)], client_ca)
    return None
