"""Go's certificate failure texts (crypto/x509 HostnameError.Error, crypto/tls verifyServerCertificate),
rebuilt from the certificate a server sent."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tpemu import pki
from tpemu.net import go_tls_errors as g


def _cert(sans: tuple[str, ...], cn: str = "lb", days: int = 1) -> bytes:
    key = pki.generate_key()
    ca = pki.make_ca("ca", key, "org")
    cert = pki.issue_cert(ca, key, pki.generate_key().public_key(),
                          x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), sans=sans,
                          ttl=dt.timedelta(days=days))
    return cert.public_bytes(Encoding.DER)


def test_the_seed_message() -> None:
    der = _cert(("*.example.teleport.sh", "example.teleport.sh"))
    host = "6578616d706c652e74656c65706f72742e7368.teleport.cluster.local"
    assert g.GRPC_PREFIX + g.verify_failure(der, host, chain_trusted=False) == (
        "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate is "
        "valid for *.example.teleport.sh, example.teleport.sh, not "
        "6578616d706c652e74656c65706f72742e7368.teleport.cluster.local")


@pytest.mark.parametrize(("sans", "host", "want"), [
    (("*.example.com",), "a.example.com", None),
    (("*.example.com",), "a.b.example.com", "x509: certificate is valid for *.example.com, not a.b.example.com"),
    (("*.example.com",), "example.com", "x509: certificate is valid for *.example.com, not example.com"),
    (("Example.COM",), "example.com.", None),
    (("127.0.0.1",), "127.0.0.1", None),
    (("127.0.0.1",), "127.0.0.2", "x509: certificate is valid for 127.0.0.1, not 127.0.0.2"),
    (("a.example",), "10.0.0.1", "x509: cannot validate certificate for 10.0.0.1 because it doesn't contain any "
                                 "IP SANs"),
    (("127.0.0.1",), "a.example", "x509: certificate is not valid for any names, but wanted to match a.example"),
])
def test_hostname_rules(sans: tuple[str, ...], host: str, want: str | None) -> None:
    cert = x509.load_der_x509_certificate(_cert(sans))
    assert g.hostname_error(cert, host) == want


def test_order_expiry_then_name_then_chain() -> None:
    der = _cert(("ok.example",))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    assert "x509: certificate has expired or is not yet valid: current time" in g.verify_failure(
        der, "other.example", False, now=later)
    assert g.verify_failure(der, "ok.example", False).endswith("x509: certificate signed by unknown authority")
