"""HTTP/1.x request-line parser (pure, no I/O).

Spec: RFC 9112 §3: ``request-line = method SP request-target SP HTTP-version CRLF``. The router
only needs the first line to tell plain HTTP apart and to explain what it saw; full request
parsing is h11's job in the glue. Bare LF is accepted as RFC 9112 §2.2 allows.
"""

from dataclasses import dataclass

from tpemu.wire.errors import LimitExceeded, WireError

#: Methods that identify plain HTTP in the first bytes (the set Teleport's multiplexer checks).
METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
#: Cap on the request line: servers commonly refuse lines past 8 KiB with 414.
MAX_REQUEST_LINE = 8192

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class HTTPLineError(WireError):
    """A malformed HTTP request line."""


@dataclass(frozen=True, slots=True)
class RequestLine:
    """A parsed request line; ``length`` counts the line terminator."""

    method: str
    target: str
    version: str
    length: int


def starts_with_method(prefix: bytes | bytearray | memoryview) -> bool | None:
    """Whether ``prefix`` starts with a known method and a space; ``None`` if too short to tell."""
    head = bytes(prefix[:8])
    undecided = False
    for m in METHODS:
        word = m + b" "
        if head.startswith(word):
            return True
        if word.startswith(head):
            undecided = True
    return None if undecided else False


def parse_request_line(data: bytes | bytearray | memoryview) -> RequestLine | None:
    """Parse the request line at the start of ``data``; ``None`` if more bytes are needed."""
    head = bytes(data[:MAX_REQUEST_LINE])
    end = head.find(b"\n")
    if end < 0:
        if len(head) >= MAX_REQUEST_LINE:
            raise LimitExceeded("HTTP request line", MAX_REQUEST_LINE)
        return None
    line = head[:end]
    if line.endswith(b"\r"):
        line = line[:-1]
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HTTPLineError(f"malformed HTTP request line {line[:80]!r}")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN:
        raise HTTPLineError(f"bad HTTP method {method[:20]!r}")
    if not target or not target.isascii() or any(c < 0x21 or c == 0x7F for c in target):
        raise HTTPLineError("bad HTTP request target")
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise HTTPLineError(f"unsupported HTTP version {version[:20]!r}")
    return RequestLine(method.decode("ascii"), target.decode("ascii"), version.decode("ascii"), end + 1)
