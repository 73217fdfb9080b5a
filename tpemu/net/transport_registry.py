"""uvloop's registry of transports without a Python callback per transport (glue, uvloop only).

uvloop keeps every transport it makes in ``Loop._transports``, a ``weakref.WeakValueDictionary``
keyed by descriptor number (``loop.pyx``: ``_track_transport`` in ``UVBaseTransport._init_protocol``),
for one question: is this descriptor owned by a live transport (``_ensure_fd_no_transport``,
asked by ``add_reader``/``add_writer``/``sock_*``)? Each insert runs three Python frames
(``WeakValueDictionary.__setitem__``, ``KeyedRef.__new__``/``__init__``) and each freed
transport a fourth (the weak reference's removal callback): callgrind counted ~7 % of the
user-space instructions of a pass-through connection there, which makes two transports.

:func:`lean_registry` gives that one dictionary (the attribute is ``cdef``, so it is found among
the loop's referents) the class :class:`LeanRegistry`: the same lookups (``get``/``[]``
dereference the weak reference; a dead one answers as absent, exactly as before), but an insert
stores a plain ``weakref.ref`` with no callback. A dead entry then stays until its descriptor
number is reused (the next transport on that number overwrites it) or until a purge: once the
dictionary holds more than twice the entries it held after the last purge (at least
:data:`PURGE_AT`), the dead ones are dropped, so it never holds more than about twice the live
transports plus :data:`PURGE_AT`. Nothing else in uvloop uses the dictionary (uvloop 0.23:
``_track_transport`` and ``_ensure_fd_no_transport`` only).

It does nothing (and says so at debug level) unless the loop has exactly one empty
``WeakValueDictionary`` among its referents: a uvloop that changes its registry keeps its own.
"""

from __future__ import annotations

import gc
import logging
import weakref
from typing import Any

log = logging.getLogger(__name__)

#: The fewest entries before a purge of dead ones is considered.
PURGE_AT = 1024

_ref = weakref.ref


class LeanRegistry(weakref.WeakValueDictionary):  # type: ignore[type-arg]
    """``WeakValueDictionary`` whose inserts store a callback-less weak reference (see module)."""

    _purge_at = PURGE_AT
    data: dict[Any, weakref.ref[Any]]  # (WeakValueDictionary's own, untyped in typeshed)

    def __setitem__(self, key: Any, value: Any) -> None:
        data = self.data
        data[key] = _ref(value)
        if len(data) > self._purge_at:
            self.purge()

    def purge(self) -> None:
        """Drop the entries whose transport is gone."""
        data = self.data
        for key in [k for k, r in data.items() if r() is None]:
            del data[key]
        self._purge_at = max(PURGE_AT, 2 * len(data))


def lean_registry(loop: object) -> bool:
    """Give uvloop ``loop``'s transport registry the class :class:`LeanRegistry`; whether it did.
    Only a uvloop loop: asyncio's own loops keep theirs (their Python transports are slower anyway)."""
    if not type(loop).__module__.startswith("uvloop"):
        return False
    found = [obj for obj in gc.get_referents(loop) if type(obj) is weakref.WeakValueDictionary]
    if len(found) != 1 or len(found[0]) != 0 or getattr(found[0], "_pending_removals", None):
        log.debug("uvloop's transport registry not found (%d candidates): left as it is", len(found))
        return False
    found[0].__class__ = LeanRegistry
    return True


def new_uvloop() -> Any:
    """A new uvloop event loop with the lean transport registry (``uvloop.run``'s ``loop_factory``)."""
    import uvloop

    loop = uvloop.new_event_loop()
    lean_registry(loop)
    return loop
