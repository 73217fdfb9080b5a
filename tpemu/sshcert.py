"""OpenSSH certificates with arbitrary extensions, signed through asyncssh (pure but for signing).

Follows OpenSSH's ``PROTOCOL.certkeys``. asyncssh can generate certificates but only with the
extensions it knows (``permit-pty`` …); Teleport puts its own in user certificates
(``teleport-roles``, ``teleport-traits``, ``teleport-route-to-cluster``) and host certificates
(``x-teleport-role``, ``x-teleport-authority``), so the to-be-signed blob is built here and only
the signature comes from asyncssh (``SSHKey.sign``). The result is an ``authorized_keys``-style
line that asyncssh and OpenSSH both parse (the tests check both).

Layout (``PROTOCOL.certkeys``): string cert type, string nonce, the key's public fields, uint64
serial, uint32 type (1 user, 2 host), string key id, string principals (a list of strings),
uint64 valid after, uint64 valid before, string critical options, string extensions (both sorted
by name; an empty value is an empty string, a non-empty one a string wrapped in a string, as Go's
``x/crypto/ssh`` marshals them), string reserved, string signature key, string signature.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncssh

USER_CERT = 1
HOST_CERT = 2

#: Infinity for ``valid_before`` (``ssh.CertTimeInfinity``).
FOREVER = 2**64 - 1


def _string(data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def _read_string(data: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", data, pos)
    pos += 4
    if pos + n > len(data):
        raise ValueError("truncated SSH string")
    return data[pos:pos + n], pos + n


def _options(options: Mapping[str, str]) -> bytes:
    out = b""
    for name in sorted(options):
        value = options[name]
        out += _string(name) + (_string(_string(value)) if value else _string(b""))
    return out


def _timestamp(value: dt.datetime | int) -> int:
    if isinstance(value, dt.datetime):
        return max(0, int(value.timestamp()))
    return value


def make_certificate(ca: Any, public_key: Any, *, cert_type: int, key_id: str, principals: Iterable[str],
                     valid_after: dt.datetime | int, valid_before: dt.datetime | int,
                     extensions: Mapping[str, str] | None = None,
                     critical_options: Mapping[str, str] | None = None,
                     serial: int = 0, comment: str = "") -> bytes:
    """Sign ``public_key`` (an ``asyncssh.SSHKey``) with ``ca`` (a private ``asyncssh.SSHKey``).

    Returns the certificate as one ``authorized_keys`` line (``<type>-cert-v01@openssh.com
    <base64> [comment]\\n``), the format of ``*-cert.pub`` files. RSA CAs sign with
    ``rsa-sha2-512`` (OpenSSH ≥ 8.8 refuses SHA-1 ``ssh-rsa`` signatures).
    """
    key_alg, fields = _read_string(public_key.public_data, 0)
    cert_alg = key_alg + b"-cert-v01@openssh.com"
    principal_blob = b"".join(_string(p) for p in principals)
    body = (
        _string(cert_alg) + _string(os.urandom(32)) + public_key.public_data[fields:]
        + struct.pack(">QI", serial, cert_type) + _string(key_id) + _string(principal_blob)
        + struct.pack(">QQ", _timestamp(valid_after), _timestamp(valid_before))
        + _string(_options(critical_options or {})) + _string(_options(extensions or {}))
        + _string(b"") + _string(ca.public_data)
    )
    sig_algs: list[bytes] = list(ca.sig_algorithms)
    sig_alg = b"rsa-sha2-512" if b"rsa-sha2-512" in sig_algs else sig_algs[0]
    blob = body + _string(ca.sign(body, sig_alg))
    line = cert_alg + b" " + base64.b64encode(blob)
    if comment:
        line += b" " + comment.encode("utf-8")
    return line + b"\n"


@dataclass(frozen=True)
class CertificateInfo:
    """The fields of an OpenSSH certificate that asyncssh does not expose (key id, validity) and
    every extension (asyncssh drops the ones it does not know)."""

    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    extensions: dict[str, str]


def certificate_info(cert_line: bytes) -> CertificateInfo:
    """Parse a certificate line (``<type>-cert-v01@openssh.com <base64> [comment]``).

    Raises :class:`ValueError` (also for a bad signature: asyncssh checks it).
    """
    parts = cert_line.split()
    if len(parts) < 2:
        raise ValueError("not an SSH certificate line")
    blob = base64.b64decode(parts[1])
    cert = asyncssh.import_certificate(cert_line)
    # Skip to the fields after the key: everything before them has a known shape once the key is parsed.
    _, pos = _read_string(blob, 0)  # cert type
    _, pos = _read_string(blob, pos)  # nonce
    key_fields = len(cert.key.public_data) - len(_string(cert.key.algorithm))
    pos += key_fields + 8  # public key fields, serial
    (cert_type,) = struct.unpack_from(">I", blob, pos)
    pos += 4
    key_id, pos = _read_string(blob, pos)
    principal_blob, pos = _read_string(blob, pos)
    valid_after, valid_before = struct.unpack_from(">QQ", blob, pos)
    pos += 16
    _, pos = _read_string(blob, pos)  # critical options
    ext_blob, _ = _read_string(blob, pos)
    principals = []
    i = 0
    while i < len(principal_blob):
        name, i = _read_string(principal_blob, i)
        principals.append(name.decode("utf-8"))
    extensions: dict[str, str] = {}
    i = 0
    while i < len(ext_blob):
        name, i = _read_string(ext_blob, i)
        data, i = _read_string(ext_blob, i)
        extensions[name.decode("utf-8")] = _read_string(data, 0)[0].decode("utf-8") if data else ""
    return CertificateInfo(cert_type, key_id.decode("utf-8"), tuple(principals), valid_after, valid_before,
                           extensions)


def extensions_of(cert_line: bytes) -> dict[str, str]:
    """The extensions of a certificate line made by :func:`make_certificate` (or OpenSSH).

    asyncssh drops extensions it does not know; this reads them all. Raises :class:`ValueError`.
    """
    return certificate_info(cert_line).extensions
