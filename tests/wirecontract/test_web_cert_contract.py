"""What the web port presents: ``https_keypairs``, else the self-signed certificate Teleport makes.

Follows ``lib/utils/cert/selfsigned.go`` ``GenerateSelfSignedCert`` (RSA 2048, ``CN=localhost,
C=US, O=localhost`` as subject and issuer, 825 days, KeyUsage KeyEncipherment|DigitalSignature|
CertSign, ExtKeyUsage ServerAuth, a CA, DNS = hosts + ``localhost.local``, IPs = localhost's +
``::1`` + the IP hosts), ``lib/service/service.go`` ``initSelfSignedHTTPSCert`` (hosts
``[hostname, "localhost", public_addr hosts]``, ``<data_dir>/webproxy_{key,cert}.pem`` 0600,
reused when they load), ``lib/service/certreloader.go`` ``CertReloader.GetCertificate`` (the first
pair the ClientHello's SNI matches, else the first) and ``lib/config/configuration.go``
``applyProxyConfig`` ("https private key does not exist: …", "https cert does not exist: …", the
self-signed warning, the legacy ``https_key_file``/``https_cert_file`` pair appended).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import ProxyFactory, web_port
from tests.proxy.test_frontdoor import http_get
from tpemu import config
from tpemu.proxy import webcert
from tpemu.proxy.service import ProxyService
from tpemu.proxy.webcert import WebCertError
from tpemu.wire import alpn as names


async def presented(port: int, sni: str | None, alpn: list[str] | None = None) -> x509.Certificate:
    """The leaf certificate the proxy presents to a client sending ``sni`` (and ``alpn``)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der)


def test_self_signed_certificate_is_made_as_teleport_makes_it() -> None:
    cert_pem, key_pem = webcert.generate_self_signed(["node-a", "localhost", "proxy.example.com"], ["192.0.2.10"])
    assert key_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1, as x509.MarshalPKCS1PrivateKey
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    entity = [(a.oid, a.value) for a in cert.subject]
    assert entity == [(NameOID.COMMON_NAME, "localhost"), (NameOID.COUNTRY_NAME, "US"),
                      (NameOID.ORGANIZATION_NAME, "localhost")]
    assert cert.issuer == cert.subject
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=825)
    assert abs(cert.not_valid_before_utc - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)  # not backdated
    assert 0 < cert.serial_number < 1 << 128
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_encipherment and ku.digital_signature and ku.key_cert_sign and not ku.crl_sign
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-a", "localhost", "proxy.example.com", "localhost.local"]
    ips = san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips and ipaddress.ip_address("::1") in ips
    assert ips[-1] == ipaddress.ip_address("192.0.2.10")
    with pytest.raises(WebCertError, match=r"Unable to parse IP address for self-signed certificate \(nope\)"):
        webcert.generate_self_signed(["h"], ["nope"])


def self_signed_config(data_dir: Path) -> dict[str, Any]:
    return {"teleport": {"nodename": "node-a", "data_dir": str(data_dir)},
            "proxy_service": {"web_listen_addr": "127.0.0.1:0",
                              "public_addr": ["proxy.example.com:443", "192.0.2.10:3080"]},
            "tpemu": {"proxy_service": {"web_certificate": "self-signed"}}}


async def started(cfg: dict[str, Any]) -> ProxyService:
    svc = ProxyService(config.from_dict(cfg))  # the data_dir of cfg (proxy_factory picks its own)
    await svc.start()
    return svc


async def test_web_port_presents_the_self_signed_certificate_and_keeps_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    data = tmp_path / "selfsigned"
    svc = await started(self_signed_config(data))
    try:
        await _check_self_signed(svc, data, caplog)
    finally:
        await svc.close()
    # A restart reuses the pair on disk (initSelfSignedHTTPSCert: "return the existing pair").
    caplog.clear()
    again = await started(self_signed_config(data))
    try:
        assert "Generating self-signed key and cert." not in caplog.text
        on_disk = x509.load_pem_x509_certificate((data / "webproxy_cert.pem").read_bytes())
        assert await presented(web_port(again), "localhost") == on_disk
    finally:
        await again.close()


async def _check_self_signed(svc: ProxyService, data: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert "No TLS Keys provided, using self-signed certificate." in caplog.text
    assert "Generating self-signed key and cert." in caplog.text
    on_disk = x509.load_pem_x509_certificate((data / "webproxy_cert.pem").read_bytes())
    for path in ("webproxy_cert.pem", "webproxy_key.pem"):
        assert (data / path).stat().st_mode & 0o777 == 0o600
    san = on_disk.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-a", "localhost", "proxy.example.com", "localhost.local"]
    assert ipaddress.ip_address("192.0.2.10") in san.get_values_for_type(x509.IPAddress)
    port = web_port(svc)
    for alpn in (["http/1.1"], ["h2", "http/1.1"], None):
        assert await presented(port, "localhost", alpn) == on_disk
    # Trusting the self-signed certificate itself (it is a CA) is enough, as with Teleport.
    status, _, _ = await http_get(port, "/webapi/ping", ssl.create_default_context(
        cafile=str(data / "webproxy_cert.pem")))
    assert status == 200
    # tpemu's other TLS routes keep the Auth-issued certificate (a documented tpemu deviation).
    other = await presented(port, "localhost", [names.POSTGRES])
    assert other != on_disk and other.issuer != other.subject


def _pair(ca: trustme.CA, tmp: Path, name: str) -> dict[str, str]:
    leaf = ca.issue_cert(name)
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return {"key_file": str(key), "cert_file": str(cert)}


async def test_https_keypairs_are_presented_and_chosen_by_sni(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    a, b = _pair(ca, tmp_path, "a.example.com"), _pair(ca, tmp_path, "b.example.com")
    svc = await proxy_factory(https_keypairs=[a, b])
    port = web_port(svc)

    def name_of(cert: x509.Certificate) -> str:
        return str(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                   .get_values_for_type(x509.DNSName)[0])

    assert name_of(await presented(port, "b.example.com")) == "b.example.com"
    assert name_of(await presented(port, "a.example.com")) == "a.example.com"
    assert name_of(await presented(port, "other.example.com")) == "a.example.com"  # none matches: the first
    assert name_of(await presented(port, None)) == "a.example.com"
    # A client trusting only the keypairs' CA verifies the web port by name.
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    status, _, _ = await http_get(port, "/webapi/ping", ctx, host="b.example.com")
    assert status == 200
    # The legacy single pair is appended to the list, as Teleport does.
    legacy = await proxy_factory(https_key_file=b["key_file"], https_cert_file=b["cert_file"])
    assert name_of(await presented(web_port(legacy), None)) == "b.example.com"


async def test_a_self_signed_keypair_is_accepted_with_teleports_warning(
        proxy_factory: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert_pem, key_pem = webcert.generate_self_signed(["web.example"], [])
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    caplog.set_level(logging.WARNING)
    svc = await proxy_factory(https_keypairs=[{"key_file": str(tmp_path / "k.pem"),
                                               "cert_file": str(tmp_path / "c.pem")}])
    assert "Starting Teleport with a self-signed TLS certificate, this is not safe for production" in caplog.text
    assert (await presented(web_port(svc), None)) == x509.load_pem_x509_certificate(cert_pem)


@pytest.mark.parametrize("broken,message", [
    ("no-key", "https private key does not exist: {key}"),
    ("no-cert", "https cert does not exist: {cert}"),
    ("garbage", "TLS certificate {cert} and key {key} failed to load"),
])
async def test_unusable_keypairs_stop_the_start_with_teleports_text(
        proxy_factory: ProxyFactory, tmp_path: Path, broken: str, message: str) -> None:
    pair = _pair(trustme.CA(), tmp_path, "web.example")
    if broken == "no-key":
        Path(pair["key_file"]).unlink()
    elif broken == "no-cert":
        Path(pair["cert_file"]).unlink()
    else:
        Path(pair["cert_file"]).write_text("not a certificate\n")
    with pytest.raises(WebCertError) as info:
        await proxy_factory(https_keypairs=[pair])
    assert str(info.value).startswith(message.format(key=pair["key_file"], cert=pair["cert_file"]))


def test_tpemu_start_reports_an_unusable_keypair_without_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "tpemu.yaml"
    missing = tmp_path / "missing.key"
    cfg.write_text("auth_service:\n  listen_addr: 127.0.0.1:0\nssh_service:\n  enabled: no\n"
                   "proxy_service:\n  web_listen_addr: 127.0.0.1:0\n  https_keypairs:\n"
                   f"    - {{key_file: {missing}, cert_file: {missing}.crt}}\n")
    out = subprocess.run([str(Path(sys.executable).with_name("tpemu")), "start", "--config", str(cfg),
                          "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"tpemu: proxy: https private key does not exist: {missing}" in out.stderr
    assert "Traceback" not in out.stderr
