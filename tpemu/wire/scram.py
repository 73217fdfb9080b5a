"""SCRAM-SHA-256 and SCRAM-SHA-1, server side (pure, no I/O): the emulated PostgreSQL server's.

Spec: RFC 5802 (SCRAM, SCRAM-SHA-1), RFC 7677 (SCRAM-SHA-256), password normalisation per RFC 4013
(SASLprep) the way PostgreSQL applies it (``src/common/saslprep.c``: a password that is not
valid for SASLprep is used as it is). Channel binding (``-PLUS``) is not offered, so a client
may send the ``n`` or ``y`` GS2 flag but not ``p``. The hash is the secret's (``digest``):
SHA-256 for Postgres; SHA-1 is RFC 5802's own example (MongoDB's SCRAM-SHA-1 would salt the
MONGODB-CR digest instead of the password; no server of tpemu needs it since the in-process
MongoDB emulator was retired for nx-27017).

The exchange, in the server's terms::

    ex = ScramServer(secret)                  # secret from make_secret(password, salt)
    server_first = ex.first(client_first)     # bytes → bytes (raises ScramError)
    server_final = ex.final(client_final)     # raises ScramVerificationFailed on a wrong proof

Nothing here knows about Postgres framing (SASLInitialResponse etc. live in ``postgres.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

from tpemu.wire.errors import WireError

MECHANISM = "SCRAM-SHA-256"
#: SCRAM mechanism name → the hash it uses.
DIGESTS = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}
DEFAULT_ITERATIONS = 4096
#: A client message longer than this is refused (nonces are ~24-32 characters in practice).
MAX_MESSAGE = 4096


class ScramError(WireError):
    """A malformed or unacceptable SCRAM message."""


class ScramVerificationFailed(ScramError):
    """The client's proof does not match the stored secret: wrong password."""


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """What a server stores instead of the password (Postgres' ``SCRAM-SHA-256$i:salt$StoredKey:ServerKey``)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes
    digest: str = "sha256"


def saslprep(password: str) -> str:
    """RFC 4013 SASLprep, falling back to the raw password when it is not valid (as Postgres does)."""
    if password.isascii() and password.isprintable():
        return password  # printable ASCII maps to itself
    chars = []
    for c in password:
        if stringprep.in_table_b1(c):
            continue  # "commonly mapped to nothing"
        chars.append(" " if stringprep.in_table_c12(c) else c)
    out = unicodedata.normalize("NFKC", "".join(chars))
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7,
                  stringprep.in_table_c8, stringprep.in_table_c9, stringprep.in_table_a1)
    if any(check(c) for c in out for check in prohibited):
        return password
    ral = [stringprep.in_table_d1(c) for c in out]
    if any(ral) and (any(stringprep.in_table_d2(c) for c in out) or not (ral[0] and ral[-1])):
        return password
    return out


def make_secret(password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS,
                digest: str = "sha256") -> ScramSecret:
    """Derive the stored secret: SaltedPassword = Hi(SASLprep(password), salt, i); StoredKey = H(ClientKey)."""
    if salt is None:
        salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac(digest, saslprep(password).encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", digest)
    return ScramSecret(salt, iterations, hashlib.new(digest, client_key).digest(),
                       hmac.digest(salted, b"Server Key", digest), digest)


@dataclass(frozen=True, slots=True)
class ClientFirst:
    """client-first-message: GS2 header (``n,,`` / ``y,,``) and the bare part that is signed."""

    gs2_header: str
    cbind_flag: str
    username: str
    nonce: str
    bare: str


@dataclass(frozen=True, slots=True)
class ClientFinal:
    """client-final-message: the channel-binding input, the full nonce and the proof."""

    channel_binding: bytes
    nonce: str
    proof: bytes
    without_proof: str


def _decode(data: bytes, what: str) -> str:
    if len(data) > MAX_MESSAGE:
        raise ScramError(f"SCRAM {what} is longer than {MAX_MESSAGE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError(f"SCRAM {what} is not valid UTF-8") from None
    if not text.isprintable():
        raise ScramError(f"SCRAM {what} contains control characters")
    return text


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ScramError(f"SCRAM {what} is not valid base64") from None


def _valid_nonce(nonce: str) -> bool:
    # printable = %x21-2B / %x2D-7E: printable ASCII except ','
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


def parse_client_first(data: bytes) -> ClientFirst:
    """Parse ``gs2-header client-first-message-bare`` (RFC 5802 §7)."""
    text = _decode(data, "client-first-message")
    parts = text.split(",")
    if len(parts) < 4:
        raise ScramError("SCRAM client-first-message has too few attributes")
    flag, authzid = parts[0], parts[1]
    if flag.startswith("p="):
        raise ScramError("SCRAM channel binding (SCRAM-SHA-256-PLUS) is not supported by the tpemu emulator")
    if flag not in ("n", "y"):
        raise ScramError(f"SCRAM client-first-message has an invalid GS2 flag {flag[:8]!r}")
    if authzid and not authzid.startswith("a="):
        raise ScramError("SCRAM client-first-message has an invalid authzid")
    bare_parts = parts[2:]
    if bare_parts[0].startswith("m="):
        raise ScramError("SCRAM mandatory extensions are not supported")
    if not bare_parts[0].startswith("n="):
        raise ScramError("SCRAM client-first-message lacks the username attribute")
    if not bare_parts[1].startswith("r="):
        raise ScramError("SCRAM client-first-message lacks the nonce attribute")
    nonce = bare_parts[1][2:]
    if not _valid_nonce(nonce):
        raise ScramError("SCRAM client nonce is empty or has invalid characters")
    for ext in bare_parts[2:]:
        if len(ext) < 2 or not ext[0].isalpha() or ext[1] != "=":
            raise ScramError("SCRAM client-first-message has a malformed extension attribute")
    username = bare_parts[0][2:].replace("=2C", ",").replace("=3D", "=")
    return ClientFirst(f"{flag},{authzid},", flag, username, nonce, ",".join(bare_parts))


def parse_client_final(data: bytes) -> ClientFinal:
    """Parse ``c=…,r=…[,ext…],p=…`` (RFC 5802 §7)."""
    text = _decode(data, "client-final-message")
    parts = text.split(",")
    if len(parts) < 3 or not parts[0].startswith("c=") or not parts[1].startswith("r="):
        raise ScramError("SCRAM client-final-message must start with c= and r=")
    if not parts[-1].startswith("p="):
        raise ScramError("SCRAM client-final-message lacks the proof")
    return ClientFinal(_b64(parts[0][2:], "channel binding"), parts[1][2:], _b64(parts[-1][2:], "proof"),
                       ",".join(parts[:-1]))


class ScramServer:
    """One server-side SCRAM exchange (two steps; not reusable), with the secret's hash."""

    def __init__(self, secret: ScramSecret, server_nonce: str | None = None) -> None:
        self.secret = secret
        self.server_nonce = server_nonce or base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        if not _valid_nonce(self.server_nonce):
            raise ValueError("server nonce must be printable ASCII without ','")
        self._client_first: ClientFirst | None = None
        self._server_first = ""

    def first(self, client_first: bytes) -> bytes:
        """client-first-message → server-first-message (``r=…,s=…,i=…``)."""
        if self._client_first is not None:
            raise ScramError("SCRAM client-first-message sent twice")
        cf = parse_client_first(client_first)
        self._client_first = cf
        salt = base64.b64encode(self.secret.salt).decode("ascii")
        self._server_first = f"r={cf.nonce}{self.server_nonce},s={salt},i={self.secret.iterations}"
        return self._server_first.encode("ascii")

    def final(self, client_final: bytes) -> bytes:
        """client-final-message → server-final-message (``v=…``); raises on a wrong proof."""
        cf = self._client_first
        if cf is None:
            raise ScramError("SCRAM client-final-message before client-first-message")
        fin = parse_client_final(client_final)
        if fin.channel_binding != cf.gs2_header.encode("utf-8"):
            raise ScramError("SCRAM channel-binding data does not match the GS2 header")
        if fin.nonce != cf.nonce + self.server_nonce:
            raise ScramError("SCRAM nonce in client-final-message does not match")
        auth_message = f"{cf.bare},{self._server_first},{fin.without_proof}".encode()
        digest = self.secret.digest
        signature = hmac.digest(self.secret.stored_key, auth_message, digest)
        if len(fin.proof) != len(signature):
            raise ScramVerificationFailed("SCRAM proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(fin.proof, signature))
        if not hmac.compare_digest(hashlib.new(digest, client_key).digest(), self.secret.stored_key):
            raise ScramVerificationFailed("SCRAM proof does not match: wrong password")
        server_sig = hmac.digest(self.secret.server_key, auth_message, digest)
        return b"v=" + base64.b64encode(server_sig)


def client_proof(password: str, client_first_bare: str, server_first: str, final_without_proof: str,
                 salt: bytes, iterations: int, digest: str = "sha256") -> bytes:
    """The ClientProof a client computes (for tests and tools): ClientKey XOR HMAC(StoredKey, AuthMessage)."""
    salted = hashlib.pbkdf2_hmac(digest, saslprep(password).encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", digest)
    auth_message = f"{client_first_bare},{server_first},{final_without_proof}".encode()
    signature = hmac.digest(hashlib.new(digest, client_key).digest(), auth_message, digest)
    return bytes(a ^ b for a, b in zip(client_key, signature))
