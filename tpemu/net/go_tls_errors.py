"""Certificate failures in the words Teleport's Go programs use (pure, over ``cryptography``).

Teleport's troubleshooting guide quotes Go's texts, e.g. behind a layer-7 load balancer::

    transport: authentication handshake failed: tls: failed to verify certificate: x509:
    certificate is valid for *.example.teleport.sh, example.teleport.sh, not
    6578616d706c652e74656c65706f72742e7368.teleport.cluster.local

OpenSSL reports the same failure differently (and checks the chain before the name, where Go's
``crypto/x509.Certificate.Verify`` checks the name first), so a user searching for the text in
Teleport's docs would not find tpemu's. :func:`verify_failure` rebuilds Go's message from the
certificate the server sent: ``crypto/x509`` ``HostnameError.Error``, ``UnknownAuthorityError``,
``CertificateInvalidError`` (``Expired``), prefixed as ``crypto/tls`` does (``tls: failed to verify
certificate: ``); gRPC adds ``transport: authentication handshake failed: `` (:data:`GRPC_PREFIX`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509

TLS_PREFIX = "tls: failed to verify certificate: "
GRPC_PREFIX = "transport: authentication handshake failed: "


def _match(pattern: str, host: str) -> bool:
    # crypto/x509 matchHostnames: case-insensitive, a wildcard is a whole leftmost label and
    # stands for exactly one label.
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    p_labels, h_labels = pattern.split("."), host.split(".")
    if len(p_labels) != len(h_labels) or not host:
        return False
    return all(p == h or (i == 0 and p == "*") for i, (p, h) in enumerate(zip(p_labels, h_labels, strict=True)))


def _names(cert: x509.Certificate) -> tuple[list[str], list[str], bool]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], [], False
    dns = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    ips = [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    return dns, ips, True


def hostname_error(cert: x509.Certificate, host: str) -> str | None:
    """Go's ``HostnameError`` text if ``cert`` is not valid for ``host``, else ``None``."""
    dns, ips, has_san = _names(cert)
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        if str(ip) in ips:
            return None
        if not ips:
            return f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
        return f"x509: certificate is valid for {', '.join(ips)}, not {host}"
    if any(_match(name, host) for name in dns):
        return None
    if not has_san:
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if cns and _match(str(cns[0].value), host):
            return "x509: certificate relies on legacy Common Name field, use SANs instead"
    if not dns:
        return f"x509: certificate is not valid for any names, but wanted to match {host}"
    return f"x509: certificate is valid for {', '.join(dns)}, not {host}"


def _go_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verify_failure(der: bytes, host: str, chain_trusted: bool, now: dt.datetime | None = None) -> str:
    """The ``tls: failed to verify certificate: x509: …`` text for a server certificate that did
    not verify, in Go's order of checks (validity period, then name, then chain)."""
    cert = x509.load_der_x509_certificate(der)
    now = now or dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        return (f"{TLS_PREFIX}x509: certificate has expired or is not yet valid: current time {_go_time(now)} "
                f"is after {_go_time(cert.not_valid_after_utc)}")
    if now < cert.not_valid_before_utc:
        return (f"{TLS_PREFIX}x509: certificate has expired or is not yet valid: current time {_go_time(now)} "
                f"is before {_go_time(cert.not_valid_before_utc)}")
    name = hostname_error(cert, host)
    if name is not None:
        return TLS_PREFIX + name
    if not chain_trusted:
        return TLS_PREFIX + "x509: certificate signed by unknown authority"
    return TLS_PREFIX + "x509: certificate verification failed"


#: crypto/tls, when the first bytes from a server (or client) are not a TLS record.
NOT_TLS = "tls: first record does not look like a TLS handshake"
#: Go's text for ECONNRESET (syscall.Errno), as Teleport logs it.
RESET_BY_PEER = "connection reset by peer"
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST",
                    "UNKNOWN_PROTOCOL")


def describe(exc: BaseException) -> str | None:
    """Go's words for a TLS or socket failure Teleport's troubleshooting guide names, else ``None``."""
    import errno
    import ssl

    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLCertVerificationError):
        reason = (exc.reason or "").upper()
        if any(r in reason for r in _NOT_TLS_REASONS):
            return NOT_TLS
    if isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET:
        return "read: " + RESET_BY_PEER
    return None
