"""Teleport's client-version rules (pure): semantic versions and the oldest supported client.

Teleport's ``version.go`` sets ``MinClientSemVersion = semver.Version{Major: SemVersion.Major - 1,
PreRelease: "aa"}`` — for 17.x, ``16.0.0-aa``: "aa" sorts before ``alpha``, so 16's alpha, beta,
rc and dev builds are accepted. ``lib/auth/middleware.go`` ``Middleware.ValidateClientVersion``
compares the ``version`` the client sends (gRPC metadata; tpemu's HTTP API reads the header of the
same name) with it when rejection is on (Teleport: ``TELEPORT_UNSTABLE_REJECT_OLD_CLIENTS=yes``),
logs "Terminating connection of client using unsupported version" and closes the connection, which
the client reports as "connection reset by peer". A missing version passes; one that does not
parse is refused ("Failed to determine client version").

Comparison follows SemVer 2.0 §11 (what ``github.com/coreos/go-semver`` implements): numeric
fields, then a release sorts after any of its pre-releases, pre-release identifiers compared one
by one (numeric ones numerically and below alphanumeric ones).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEMVER = re.compile(r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                     r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$")

#: The log line of ``ValidateClientVersion`` for an old client, and the error it returns.
REJECT_LOG = "Terminating connection of client using unsupported version"
UNPARSABLE_LOG = "Failed to determine client version"
REJECT_ERROR = "client version is unsupported"
#: Teleport's switch for the check (``lib/auth`` tests set it; tpemu also has a config key).
REJECT_ENV = "TELEPORT_UNSTABLE_REJECT_OLD_CLIENTS"


@dataclass(frozen=True, slots=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f"-{'.'.join(self.pre)}" if self.pre else "")

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release (no pre-release) sorts after every pre-release of the same version.
        ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, ids)

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()


def parse(text: str) -> Version:
    """A version from ``text``; ``ValueError`` if it is not semver (``v`` prefix allowed)."""
    m = _SEMVER.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a semantic version (e.g. 17.0.0)")
    return Version(int(m[1]), int(m[2]), int(m[3]), tuple(m[4].split(".")) if m[4] else ())


def min_client_version(server_version: str) -> str:
    """``MinClientSemVersion`` for a server version: one major back, pre-release ``aa``."""
    v = parse(server_version)
    return str(Version(v.major - 1, 0, 0, ("aa",)))


def client_too_old(client_version: str, oldest: str) -> bool:
    """Whether ``client_version`` is below ``oldest``; ``ValueError`` if it does not parse."""
    return parse(client_version) < parse(oldest)
