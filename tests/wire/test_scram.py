"""tpemu.wire.scram: the server side of SCRAM-SHA-256 and SCRAM-SHA-1.

The main vectors are the example exchanges of RFC 7677 §3 (SHA-256) and RFC 5802 §5 (SHA-1),
both user "user", password "pencil".
Real clients (psql, asyncpg, psycopg) authenticate against it in
tests/agent/backends/test_postgres_backend.py.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu.wire import WireError, scram

RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC7677_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC7677_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC7677_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_exchange(password: str = "pencil") -> scram.ScramServer:
    return scram.ScramServer(scram.make_secret(password, RFC7677_SALT, 4096), RFC7677_SERVER_NONCE)


def test_rfc7677_example() -> None:
    ex = rfc_exchange()
    assert ex.first(RFC7677_CLIENT_FIRST) == RFC7677_SERVER_FIRST
    assert ex.final(RFC7677_CLIENT_FINAL) == RFC7677_SERVER_FINAL


def test_rfc5802_sha1_example() -> None:
    secret = scram.make_secret("pencil", base64.b64decode("QSXCR+Q6sek8bf92"), 4096, scram.DIGESTS["SCRAM-SHA-1"])
    ex = scram.ScramServer(secret, "3rfcNHYJY1ZVvWVs7j")
    assert ex.first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL") == (
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    assert ex.final(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=") == (
        b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
    wrong = scram.ScramServer(scram.make_secret("pencil!", secret.salt, 4096, "sha1"), "3rfcNHYJY1ZVvWVs7j")
    wrong.first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
    with pytest.raises(scram.ScramVerificationFailed):
        wrong.final(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")


def test_wrong_password_fails_verification() -> None:
    ex = rfc_exchange("not pencil")
    ex.first(RFC7677_CLIENT_FIRST)
    with pytest.raises(scram.ScramVerificationFailed):
        ex.final(RFC7677_CLIENT_FINAL)


def test_client_proof_helper_reproduces_the_rfc_proof() -> None:
    proof = scram.client_proof("pencil", "n=user,r=rOprNGfwEbeRWgbNEkqO", RFC7677_SERVER_FIRST.decode(),
                               "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", RFC7677_SALT, 4096)
    assert base64.b64encode(proof) == b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


def test_y_flag_and_postgres_style_empty_username() -> None:
    # libpq sends "n=" (the user comes from the startup packet) and "y,," when it supports channel
    # binding but the server offered none.
    secret = scram.make_secret("pw", b"salt" * 4, 4096)
    ex = scram.ScramServer(secret, "SERVERNONCE")
    first = ex.first(b"y,,n=,r=abc").decode()
    salt_b64 = base64.b64encode(b"salt" * 4).decode()
    assert first == f"r=abcSERVERNONCE,s={salt_b64},i=4096"
    without_proof = "c=eSws,r=abcSERVERNONCE"  # base64("y,,")
    proof = scram.client_proof("pw", "n=,r=abc", first, without_proof, b"salt" * 4, 4096)
    final = ex.final(f"{without_proof},p={base64.b64encode(proof).decode()}".encode())
    assert final.startswith(b"v=")


@pytest.mark.parametrize("message", [
    b"p=tls-server-end-point,,n=,r=abc",  # channel binding requested
    b"x,,n=,r=abc", b"n,,r=abc", b"n,,n=,r=", b"n,,n=,r=a,b", b"n,,m=ext,n=,r=abc", b"\xff\xfe", b"n,,n=,r=\x01",
])
def test_bad_client_first(message: bytes) -> None:
    with pytest.raises(scram.ScramError):
        rfc_exchange().first(message)


@pytest.mark.parametrize("message", [
    b"c=biws,r=wrongnonce,p=AAAA",  # nonce does not match
    b"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",  # "y,," but "n,," was sent
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",  # no proof
    b"c=!!!,r=x,p=AAAA",
])
def test_bad_client_final(message: bytes) -> None:
    ex = rfc_exchange()
    ex.first(RFC7677_CLIENT_FIRST)
    with pytest.raises(scram.ScramError):
        ex.final(message)


def test_final_before_first_and_first_twice() -> None:
    with pytest.raises(scram.ScramError):
        rfc_exchange().final(RFC7677_CLIENT_FINAL)
    ex = rfc_exchange()
    ex.first(RFC7677_CLIENT_FIRST)
    with pytest.raises(scram.ScramError):
        ex.first(RFC7677_CLIENT_FIRST)


def test_saslprep() -> None:
    assert scram.saslprep("pencil") == "pencil"
    assert scram.saslprep("I\u00adX") == "IX"  # soft hyphen is mapped to nothing (RFC 4013 §3 example)
    assert scram.saslprep("\u00aa") == "a"  # NFKC
    assert scram.saslprep("a\u0007b") == "a\u0007b"  # prohibited: Postgres falls back to the raw password


@given(st.binary(max_size=120), st.binary(max_size=160))
def test_fuzz_exchange(first: bytes, final: bytes) -> None:
    ex = rfc_exchange()
    try:
        ex.first(first)
        ex.final(final)
    except WireError:
        pass
