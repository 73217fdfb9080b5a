"""Pure codecs: bytes in, frozen dataclasses out, no I/O.

Import rule (checked by ``tests/test_layout.py``): nothing here imports asyncio, socket, logging
or anything outside ``tpemu.wire``. Every parser returns a value, ``None`` for "need more bytes",
or raises :class:`~tpemu.wire.errors.WireError`.
"""

from tpemu.wire.errors import LimitExceeded, UnknownProtocol, WireError

__all__ = ["LimitExceeded", "UnknownProtocol", "WireError"]
