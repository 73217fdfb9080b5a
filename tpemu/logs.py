"""Logging set-up for the CLI, the TRACE level, hexdumps and rate-limited warnings (glue).

Modules log through ``logging.getLogger(__name__)`` with %-style arguments and never configure
logging themselves; :func:`setup` (called by the CLI only) does. Rejected connections are logged
at WARNING through :class:`RateLimiter` so that a flood of garbage cannot flood the log.
"""

from __future__ import annotations

import logging
import sys
import time

#: Below DEBUG: hexdumps of the first bytes of rejected connections.
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {"TRACE": TRACE, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "WARNING": logging.WARNING, "ERROR": logging.ERROR}


def level_from_name(name: str) -> int:
    """Teleport's severities (``DEBUG``, ``INFO``, ``WARN``, ``ERROR``) plus ``TRACE``."""
    try:
        return _LEVELS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown log severity {name!r} (TRACE, DEBUG, INFO, WARN or ERROR)") from None


#: Teleport's JSON level names (``lib/utils/log/slog_json_handler.go``, ``NewSlogJSONHandler``).
_JSON_LEVELS = {TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                logging.ERROR: "error", logging.CRITICAL: "fatal"}
#: The fields ``log.format.extra_fields`` may select; ``level`` and ``message`` are always there.
JSON_FIELDS = ("timestamp", "component", "caller")


class JSONFormatter(logging.Formatter):
    """One JSON object a line with Teleport's field names (``log.format.output: json``): as
    ``lib/utils/log/slog_json_handler.go`` writes them — ``timestamp`` (RFC 3339), ``level``
    (lower case, ``warning`` not ``warn``), ``caller`` (``file:line``), ``message``, ``component``
    (here the logger name without its ``tpemu.`` prefix). ``extra_fields`` keeps only the listed
    optional fields, as Teleport's ``ConfiguredFields`` do; empty means all of them."""

    def __init__(self, extra_fields: tuple[str, ...] = ()) -> None:
        super().__init__()
        unknown = [f for f in extra_fields if f not in (*JSON_FIELDS, "level", "message")]
        if unknown:
            raise ValueError(f"log.format.extra_fields: unknown field(s) {', '.join(unknown)} "
                             f"(choose from {', '.join(JSON_FIELDS)})")
        self.fields = set(extra_fields) if extra_fields else set(JSON_FIELDS)

    def format(self, record: logging.LogRecord) -> str:
        import datetime as dt
        import json
        import os

        out: dict[str, object] = {}
        if "timestamp" in self.fields:
            out["timestamp"] = dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out["level"] = _JSON_LEVELS.get(record.levelno, record.levelname.lower())
        if "caller" in self.fields:
            out["caller"] = f"{os.path.basename(record.pathname)}:{record.lineno}"
        out["message"] = record.getMessage()
        if "component" in self.fields:
            out["component"] = record.name.removeprefix("tpemu.")
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: int | str = logging.INFO, output: str = "stderr", fmt: str = "text",
          extra_fields: tuple[str, ...] = ()) -> None:
    """Configure the root logger once, for the CLI. ``fmt``: ``text`` or ``json``
    (``log.format.output``)."""
    if isinstance(level, str):
        level = level_from_name(level)
    if fmt not in ("text", "json"):
        raise ValueError(f"log.format.output: {fmt!r} is not text or json")
    formatter = JSONFormatter(extra_fields) if fmt == "json" else \
        logging.Formatter("%(asctime)s %(levelname)-5s [%(name)s] %(message)s")
    if output in ("stderr", "stdout"):
        handler: logging.Handler = logging.StreamHandler(sys.stderr if output == "stderr" else sys.stdout)
    else:
        handler = logging.FileHandler(output)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # asyncssh logs every packet at DEBUG; keep it at INFO unless TRACE is asked for.
    logging.getLogger("asyncssh").setLevel(level if level <= TRACE else max(level, logging.WARNING))


def hexdump(data: bytes, width: int = 16, limit: int = 256) -> str:
    """A classic offset/hex/ASCII dump of at most ``limit`` bytes, for TRACE logs."""
    lines = []
    for off in range(0, min(len(data), limit), width):
        chunk = data[off:off + width]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{off:08x}  {hexpart:<{width * 3}} |{text}|")
    if len(data) > limit:
        lines.append(f"… {len(data) - limit} more bytes")
    return "\n".join(lines)


class RateLimiter:
    """At most ``burst`` events per ``period`` seconds per key; counts what it suppresses."""

    def __init__(self, burst: int = 10, period: float = 1.0) -> None:
        self.burst = burst
        self.period = period
        self._window: dict[str, tuple[float, int, int]] = {}  # key -> (start, count, suppressed)

    def allow(self, key: str) -> tuple[bool, int]:
        """``(allowed, suppressed_since_last_allowed)``."""
        now = time.monotonic()
        start, count, suppressed = self._window.get(key, (now, 0, 0))
        if now - start >= self.period:
            self._window[key] = (now, 1, 0)
            if len(self._window) > 1024:
                self._window = {key: self._window[key]}
            return True, suppressed
        if count < self.burst:
            self._window[key] = (start, count + 1, 0)
            return True, suppressed
        self._window[key] = (start, count, suppressed + 1)
        return False, 0

    def warning(self, log: logging.Logger, key: str, msg: str, *args: object) -> None:
        """Log ``msg`` at WARNING unless ``key`` is over its rate; mention what was suppressed."""
        allowed, suppressed = self.allow(key)
        if not allowed:
            return
        if suppressed:
            log.warning(msg + " (%d similar messages suppressed)", *args, suppressed)
        else:
            log.warning(msg, *args)
