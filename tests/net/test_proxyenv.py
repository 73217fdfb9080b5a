"""HTTPS_PROXY/HTTP_PROXY/NO_PROXY rules (Go's httpproxy and the seed's examples)."""

from __future__ import annotations

import pytest

from tpemu.net.proxyenv import ProxyConfigError, ProxyURL, from_environment, parse_proxy_url


def test_proxy_url_forms() -> None:
    assert parse_proxy_url("http://proxy.example.com:8080/") == ProxyURL("http", "proxy.example.com", 8080,
                                                                         source="HTTPS_PROXY")
    assert parse_proxy_url("proxy.example.com:3128").scheme == "http"  # bare host:port → http
    u = parse_proxy_url("https://al%40ice:s%3Acret@10.0.0.5")
    assert (u.scheme, u.port, u.username, u.password) == ("https", 443, "al@ice", "s:cret")
    assert "s:cret" not in str(u) and str(u) == "https://al@ice:***@10.0.0.5:443"


@pytest.mark.parametrize("value,message", [
    ("http://localhost:3128", "not valid proxy hosts"), ("127.0.0.1:3128", "not valid proxy hosts"),
    ("socks5://proxy:1080", "unsupported proxy scheme"), ("http://:8080", "no proxy host"),
    ("http://proxy:99999", "out of range"),
])
def test_bad_proxy_values(value: str, message: str) -> None:
    with pytest.raises(ProxyConfigError, match=message):
        parse_proxy_url(value)


def test_selection_and_case() -> None:
    s = from_environment({"https_proxy": "http://a.example:1", "HTTP_PROXY": "http://b.example:2"})
    assert s.proxy_for("teleport.example.com", 443) == s.https_proxy and s.https_proxy is not None
    assert s.https_proxy.host == "a.example"
    s = from_environment({"HTTP_PROXY": "http://b.example:2"})
    assert s.proxy_for("teleport.example.com", 3024) is not None and s.proxy_for("x", 1).host == "b.example"  # type: ignore[union-attr]
    assert from_environment({}).proxy_for("x", 1) is None


def test_no_proxy_seed_examples() -> None:
    env = {"HTTPS_PROXY": "http://httpproxy.example.com:8080/", "NO_PROXY": "teleportproxy.example.com:3024"}
    s = from_environment(env)
    assert s.proxy_for("teleportproxy.example.com", 3024) is None  # the SSH tunnel port goes direct
    assert s.proxy_for("teleportproxy.example.com", 3080) is not None  # HTTPS still through the proxy
    s = from_environment({"HTTPS_PROXY": "http://p.example:1",
                          "NO_PROXY": "localhost,127.0.0.1,192.168.0.0/16,172.16.0.0/12,10.0.0.0/8"})
    assert s.proxy_for("10.1.2.3", 443) is None and s.proxy_for("172.20.0.1", 443) is None
    assert s.proxy_for("8.8.8.8", 443) is not None


def test_no_proxy_domains_ips_star() -> None:
    s = from_environment({"HTTPS_PROXY": "p.example:1",
                          "NO_PROXY": " Example.com ,.sub.org,*.wild.net,1.2.3.4,[::2]:443"})
    assert s.proxy_for("example.com", 1) is None and s.proxy_for("a.example.com", 1) is None
    assert s.proxy_for("notexample.com", 1) is not None
    assert s.proxy_for("sub.org", 1) is not None and s.proxy_for("x.sub.org", 1) is None
    assert s.proxy_for("x.wild.net", 1) is None and s.proxy_for("wild.net", 1) is not None
    assert s.proxy_for("1.2.3.4", 9) is None and s.proxy_for("::2", 443) is None and s.proxy_for("::2", 80)
    assert from_environment({"HTTPS_PROXY": "p.example:1", "no_proxy": "*"}).proxy_for("any", 1) is None


def test_loopback_destinations_need_the_switch() -> None:
    s = from_environment({"HTTPS_PROXY": "http://127.0.0.2:3128"})
    assert s.proxy_for("127.0.0.1", 3080) is None and s.proxy_for("localhost", 3080) is None
    assert s.proxy_for("::1", 3080) is None
    s = from_environment({"HTTPS_PROXY": "http://127.0.0.2:3128", "TPEMU_PROXY_LOOPBACK": "yes"})
    assert s.proxy_for("127.0.0.1", 3080) is not None
