"""HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as Teleport (Go's ``httpproxy``) reads them (pure).

Rules, from the seed ("HTTP CONNECT proxies") and Go's ``golang.org/x/net/http/httpproxy``:

* ``HTTPS_PROXY`` then ``HTTP_PROXY`` (upper case first, then lower case) name the proxy, as
  ``scheme://[user[:password]@]host:port`` with scheme ``http`` or ``https``; a bare ``host:port``
  means ``http``. ``localhost`` and ``127.0.0.1`` are refused as proxy hosts (seed note: "If for
  some reason your proxy runs locally, you'll need to provide some other DNS name or a private
  IP address for it"); another loopback address such as ``127.0.0.2`` is fine.
* ``NO_PROXY`` is a comma-separated list of ``*`` (no proxy at all), IP addresses, CIDRs, domain
  names (``example.com`` matches it and its subdomains, ``.example.com`` only subdomains,
  ``*.example.com`` likewise) and any of these with ``:port`` to exclude one port only (the
  seed's ``NO_PROXY=teleportproxy.example.com:3024``).
* Like Go, destinations that are ``localhost`` or loopback addresses are never proxied. Tests
  and demos where everything runs on loopback turn that off explicitly with
  ``TPEMU_PROXY_LOOPBACK=yes`` (tpemu's own switch, not Teleport's).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from tpemu.errors import LocalFault

LOOPBACK_SWITCH = "TPEMU_PROXY_LOOPBACK"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ProxyConfigError(LocalFault, ValueError):
    """An HTTPS_PROXY/HTTP_PROXY value tpemu (like Teleport) will not use."""


@dataclass(frozen=True)
class ProxyURL:
    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    source: str = ""

    def __str__(self) -> str:
        auth = f"{self.username}:***@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{auth}{host}:{self.port}"


def parse_proxy_url(value: str, source: str = "HTTPS_PROXY") -> ProxyURL:
    """Parse a proxy variable's value; raises :class:`ProxyConfigError` with a clear reason."""
    text = value.strip()
    if not text:
        raise ProxyConfigError(f"{source} is empty")
    if "://" not in text:
        text = "http://" + text  # the seed: "If the value is host:port, Teleport will prepend http"
    parts = urlsplit(text)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ProxyConfigError(f"{source}={value!r}: unsupported proxy scheme {parts.scheme!r} (http or https)")
    try:
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise ProxyConfigError(f"{source}={value!r}: {exc}") from None
    if not host:
        raise ProxyConfigError(f"{source}={value!r}: no proxy host")
    if host in ("localhost", "127.0.0.1"):
        raise ProxyConfigError(
            f"{source}={value!r}: localhost and 127.0.0.1 are not valid proxy hosts (as in Teleport); "
            "give the local proxy another name or address, such as 127.0.0.2")
    return ProxyURL(parts.scheme, host, port or _DEFAULT_PORTS[parts.scheme],
                    unquote(parts.username) if parts.username is not None else None,
                    unquote(parts.password) if parts.password is not None else None, source)


@dataclass(frozen=True)
class _Rule:
    kind: str  # "all", "ip", "cidr", "domain"
    value: str
    port: int | None = None
    match_host: bool = False
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


def parse_no_proxy(value: str) -> tuple[_Rule, ...]:
    """The rules of a NO_PROXY value (entries that cannot be parsed are ignored, as Go does)."""
    rules: list[_Rule] = []
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            rules.append(_Rule("all", "*"))
            continue
        if "/" in entry:
            try:
                rules.append(_Rule("cidr", entry, network=ipaddress.ip_network(entry, strict=False)))
                continue
            except ValueError:
                pass
        host, port = _split_host_port(entry)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            rules.append(_Rule("ip", str(ip), port))
            continue
        if host.startswith("*."):
            host = host[1:]
        match_host = not host.startswith(".")
        if match_host:
            host = "." + host
        rules.append(_Rule("domain", host, port, match_host))
    return tuple(rules)


def _split_host_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:
        host, port = entry, ""
    return host, (int(port) if port.isdigit() else None)


@dataclass(frozen=True)
class ProxySettings:
    """The proxy environment of one process."""

    https_proxy: ProxyURL | None = None
    http_proxy: ProxyURL | None = None
    no_proxy: tuple[_Rule, ...] = ()
    allow_loopback: bool = False

    def proxy_for(self, host: str, port: int) -> ProxyURL | None:
        """The proxy to CONNECT through for ``host:port``, or ``None`` to dial directly."""
        proxy = self.https_proxy or self.http_proxy
        if proxy is None:
            return None
        host = host.strip("[]").lower().rstrip(".")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if not self.allow_loopback and (host == "localhost" or (ip is not None and ip.is_loopback)):
            return None  # Go's httpproxy never proxies loopback destinations
        for rule in self.no_proxy:
            if rule.kind == "all":
                return None
            if rule.port is not None and rule.port != port:
                continue
            if rule.kind == "cidr" and ip is not None and rule.network is not None and ip in rule.network:
                return None
            if rule.kind == "ip" and ip is not None and str(ip) == rule.value:
                return None
            if rule.kind == "domain" and (host.endswith(rule.value) or (rule.match_host and host == rule.value[1:])):
                return None
        return proxy


def from_environment(env: Mapping[str, str]) -> ProxySettings:
    """Read the proxy variables from ``env``; :class:`ProxyConfigError` for unusable values."""

    def get(*names: str) -> tuple[str, str] | None:
        for name in names:
            value = env.get(name)
            if value:
                return name, value
        return None

    https = get("HTTPS_PROXY", "https_proxy")
    http = get("HTTP_PROXY", "http_proxy")
    no_proxy = get("NO_PROXY", "no_proxy")
    allow = env.get(LOOPBACK_SWITCH, "").strip().lower() in ("1", "yes", "true", "on")
    return ProxySettings(
        parse_proxy_url(https[1], https[0]) if https else None,
        parse_proxy_url(http[1], http[0]) if http else None,
        parse_no_proxy(no_proxy[1]) if no_proxy else (),
        allow,
    )
