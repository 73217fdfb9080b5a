"""The error hierarchy of the pure codecs in :mod:`tpemu.wire`.

Every parser in ``tpemu.wire`` returns a value, returns ``None`` ("need more bytes") or raises a
:class:`WireError`: the peer sent something wrong. Local faults (a bug, a full disk) are never a
``WireError``. Subclasses carry what the glue needs to answer the peer in its own protocol.
"""

from tpemu.errors import PeerFault


class WireError(PeerFault):
    """The peer sent bytes that do not follow the protocol."""


class LimitExceeded(WireError):
    """The peer's message is larger than this parser accepts (a hard size cap)."""

    def __init__(self, what: str, limit: int, seen: int | None = None) -> None:
        self.what = what
        self.limit = limit
        self.seen = seen
        detail = f" (got {seen})" if seen is not None else ""
        super().__init__(f"{what} exceeds the {limit}-byte limit{detail}")


class UnknownProtocol(WireError):
    """The first bytes of a connection match no protocol this listener knows."""
