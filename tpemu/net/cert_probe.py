"""After a failed certificate check, look at what the server sent and say it as Go does (glue).

Python's ``ssl`` does not keep the certificate of a handshake that failed verification, so
:func:`explain` dials once more without verifying (only on this error path), checks the chain
alone against the same CA, and formats the failure with :mod:`tpemu.net.go_tls_errors`.
"""

from __future__ import annotations

import logging
import ssl

from tpemu.net import go_tls_errors
from tpemu.net.dial import DialError, open_stream
from tpemu.net.proxyenv import ProxySettings
from tpemu.net.tls import new_context

log = logging.getLogger(__name__)


def _same_trust(ctx: ssl.SSLContext, verify: bool) -> ssl.SSLContext:
    probe = new_context(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if verify:
        for der in ctx.get_ca_certs(binary_form=True):
            probe.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(der))
    return probe


async def _peer_der(host: str, port: int, ctx: ssl.SSLContext, sni: str | None,
                    proxy: ProxySettings | None) -> bytes | None:
    _, writer = await open_stream(host, port, ssl_context=ctx, server_hostname=sni or host, proxy=proxy, timeout=5.0)
    try:
        der: bytes | None = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return der
    finally:
        writer.close()


async def explain(host: str, port: int, ctx: ssl.SSLContext, server_hostname: str | None, *,
                  proxy: ProxySettings | None = None, fallback: str | None = None) -> str:
    """``tls: failed to verify certificate: x509: …`` for the server at ``host:port`` (SNI
    ``server_hostname``), or ``fallback`` (OpenSSL's text) if the server cannot be looked at again."""
    name = server_hostname or host
    try:
        der = await _peer_der(host, port, _same_trust(ctx, False), name, proxy)
    except (DialError, OSError) as exc:
        log.debug("second look at %s:%d failed: %s", host, port, exc)
        der = None
    if der is None:
        return fallback or "certificate verification failed"
    try:
        await _peer_der(host, port, _same_trust(ctx, True), name, proxy)
        chain_ok = True
    except (DialError, OSError):
        chain_ok = False
    return go_tls_errors.verify_failure(der, name, chain_ok)
