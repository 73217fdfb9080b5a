"""SSH identification string parser (pure, no I/O).

Spec: RFC 4253 §4.2: ``SSH-protoversion-softwareversion SP comments CR LF``, at most 255 bytes
including CR LF; protoversion ``2.0`` (or ``1.99`` from servers that also speak SSH-1, §5.1).
A *client* must send this line first: unlike servers it may not send other lines before it,
so the router takes the first line as the identification.
"""

from dataclasses import dataclass

from tpemu.wire.errors import LimitExceeded, WireError

PREFIX = b"SSH-"
MAX_LINE = 255


class SSHIdentError(WireError):
    """A malformed or unsupported SSH identification line."""


@dataclass(frozen=True, slots=True)
class SSHIdent:
    """A parsed identification line; ``length`` counts the line terminator."""

    proto_version: str
    software: str
    comments: str
    length: int


def parse_ssh_ident(data: bytes | bytearray | memoryview) -> SSHIdent | None:
    """Parse the identification line at the start of ``data``; ``None`` if more bytes are needed.

    Accepts a bare LF terminator as OpenSSH does. Raises :class:`SSHIdentError` for a line that
    is not ``SSH-2.0-…``/``SSH-1.99-…`` and :class:`LimitExceeded` past 255 bytes.
    """
    head = bytes(data[:MAX_LINE])
    if not head.startswith(PREFIX[: len(head)]):
        raise SSHIdentError("SSH identification must start with 'SSH-'")
    end = head.find(b"\n")
    if end < 0:
        if len(head) >= MAX_LINE:
            raise LimitExceeded("SSH identification line", MAX_LINE)
        return None
    line = head[:end]
    if line.endswith(b"\r"):
        line = line[:-1]
    if b"\x00" in line or not line.isascii():
        raise SSHIdentError("SSH identification line contains NUL or non-ASCII bytes")
    text = line.decode("ascii")
    rest = text[4:]
    proto, sep, software = rest.partition("-")
    if not sep or not software:
        raise SSHIdentError(f"malformed SSH identification {text!r}")
    if proto not in ("2.0", "1.99"):
        raise SSHIdentError(f"unsupported SSH protocol version {proto!r} (only 2.0 is supported)")
    software, _, comments = software.partition(" ")
    return SSHIdent(proto, software, comments, end + 1)


def encode_ssh_ident(software: str, comments: str = "") -> bytes:
    """An identification line for ``software`` (``SSH-2.0-<software>[ <comments>]\\r\\n``)."""
    line = f"SSH-2.0-{software}" + (f" {comments}" if comments else "")
    if len(line) + 2 > MAX_LINE or not line.isascii() or "\n" in line or "\r" in line:
        raise ValueError("identification line too long or not plain ASCII")
    return line.encode("ascii") + b"\r\n"


# ---------------------------------------------------------------------------------------------
# Unencrypted binary packets (RFC 4253 §6): before key exchange the cipher and MAC are "none",
# so a server can refuse a client cleanly with SSH_MSG_DISCONNECT right after its own
# identification line; OpenSSH prints "Received disconnect from …: <code>: <description>".

MSG_DISCONNECT = 1
DISCONNECT_HOST_NOT_ALLOWED_TO_CONNECT = 1
DISCONNECT_PROTOCOL_ERROR = 2
DISCONNECT_SERVICE_NOT_AVAILABLE = 7
DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE = 14


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def encode_plain_packet(payload: bytes, block: int = 8) -> bytes:
    """Frame ``payload`` as an unencrypted packet: length, padding length, payload, padding.

    RFC 4253 §6: at least 4 bytes of padding, and the whole packet (without the MAC) a multiple
    of the block size (8 for "none"). Zero padding is fine unencrypted.
    """
    pad = block - (5 + len(payload)) % block
    if pad < 4:
        pad += block
    return (1 + len(payload) + pad).to_bytes(4, "big") + bytes((pad,)) + payload + b"\x00" * pad


def encode_disconnect(reason: int, description: str) -> bytes:
    """An unencrypted SSH_MSG_DISCONNECT packet (RFC 4253 §11.1)."""
    payload = (bytes((MSG_DISCONNECT,)) + reason.to_bytes(4, "big") + _ssh_string(description.encode("utf-8"))
               + _ssh_string(b""))
    return encode_plain_packet(payload)
