"""Toxics: toxiproxy's fault descriptions, validated, in toxiproxy's JSON shape (pure, no I/O).

Spec: Shopify/toxiproxy ``README.md`` ("Toxics") and ``toxics/*.go``: each toxic has a ``name``
(default ``<type>_<stream>``), a ``type``, a ``stream`` (``downstream``: server → client, the
default; ``upstream``: client → server), a ``toxicity`` (the probability, per connection, that it
applies) and ``attributes``:

==============  ==========================================================================
``latency``     ``latency`` ms (+ ``jitter`` ms, uniform ±) added before data is passed on
``bandwidth``   ``rate`` KB/s
``slow_close``  ``delay`` ms before the close is passed on
``timeout``     stop all data; close after ``timeout`` ms (0: never)
``reset_peer``  after ``timeout`` ms (0: at once) end the connection with a TCP RST
``slicer``      slices of ``average_size`` ± ``size_variation`` bytes, ``delay`` µs apart
``limit_data``  close once ``bytes`` bytes have passed
==============  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tpemu.errors import LocalFault

STREAMS = ("upstream", "downstream")
#: The attributes of each type, with toxiproxy's defaults.
TYPES: dict[str, dict[str, int]] = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slow_close": {"delay": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
    "limit_data": {"bytes": 0},
}
MAX_ATTRIBUTE = 10**12


class ToxicError(LocalFault, ValueError):
    """A toxic description that cannot be used; the message names the field (an HTTP 400)."""


@dataclass
class Toxic:
    type: str
    name: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "stream": self.stream, "toxicity": self.toxicity,
                "attributes": dict(self.attributes)}

    def attr(self, key: str) -> int:
        return self.attributes.get(key, TYPES[self.type][key])


def _attributes(kind: str, raw: object, base: dict[str, int] | None = None) -> dict[str, int]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ToxicError("attributes must be an object")
    out = dict(base if base is not None else TYPES[kind])
    for key, value in raw.items():
        if not isinstance(key, str) or key not in TYPES[kind]:
            raise ToxicError(f"unknown attribute {key!r} for toxic type {kind} (known: {', '.join(TYPES[kind])})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_ATTRIBUTE:
            raise ToxicError(f"attribute {key} must be a number between 0 and {MAX_ATTRIBUTE}, got {value!r}")
        out[key] = int(value)
    return out


def parse_toxic(obj: object) -> Toxic:
    """A new toxic from a ``POST /proxies/{proxy}/toxics`` body; raises :class:`ToxicError`."""
    if not isinstance(obj, dict):
        raise ToxicError("the toxic must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in TYPES:
        raise ToxicError(f"invalid toxic type: {kind!r} (known: {', '.join(TYPES)})")
    stream = obj.get("stream") or "downstream"
    if not isinstance(stream, str) or stream not in STREAMS:
        raise ToxicError(f"stream must be upstream or downstream, got {stream!r}")
    toxicity = obj.get("toxicity", 1.0)
    if isinstance(toxicity, bool) or not isinstance(toxicity, int | float) or not 0.0 <= toxicity <= 1.0:
        raise ToxicError(f"toxicity must be between 0 and 1, got {toxicity!r}")
    name = obj.get("name") or f"{kind}_{stream}"
    if not isinstance(name, str) or len(name) > 200:
        raise ToxicError("name must be a string of at most 200 characters")
    return Toxic(str(kind), name, str(stream), float(toxicity), _attributes(str(kind), obj.get("attributes")))


def update_toxic(toxic: Toxic, obj: object) -> Toxic:
    """``POST /proxies/{proxy}/toxics/{toxic}``: new toxicity and/or attributes (type and stream stay)."""
    if not isinstance(obj, dict):
        raise ToxicError("the toxic must be a JSON object")
    toxicity = obj.get("toxicity", toxic.toxicity)
    if isinstance(toxicity, bool) or not isinstance(toxicity, int | float) or not 0.0 <= toxicity <= 1.0:
        raise ToxicError(f"toxicity must be between 0 and 1, got {toxicity!r}")
    attributes = _attributes(toxic.type, obj.get("attributes"), toxic.attributes)
    return Toxic(toxic.type, toxic.name, toxic.stream, float(toxicity), attributes)
