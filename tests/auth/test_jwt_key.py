"""The cluster's JWT key for application access (``tpemu.auth.jwt_key``, Teleport's ``lib/jwt``):
RS256 compact JWS with Teleport's claims, its JWK, persistence in the backend; the app route in
identities (``tlsca.RouteToApp``); the Application Service's app definitions."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tpemu import identity as ident
from tpemu.agent.app_service import EMULATED_ECHO, AppError, app_defs
from tpemu.auth.backend_sqlite import SQLiteBackend
from tpemu.auth.jwt_key import JWTKey, b64url, ensure_jwt_key
from tpemu.config import App


def _pad(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_token_shape_and_verification() -> None:
    key = JWTKey(rsa.generate_private_key(public_exponent=65537, key_size=2048), "tpemu.local")
    token = key.app_token("alice", ["access"], {"logins": ["root"]}, "http://app:8080", expires=2000.0, now=1000.0)
    header, claims, _ = token.split(".")
    assert json.loads(_pad(header)) == {"alg": "RS256", "typ": "JWT"}
    assert json.loads(_pad(claims)) == {"aud": ["http://app:8080"], "exp": 2000, "iat": 1000, "iss": "tpemu.local",
                                        "nbf": 990, "sub": "alice", "username": "alice", "roles": ["access"],
                                        "traits": {"logins": ["root"]}}
    jwk = key.jwk()
    assert (jwk["kty"], jwk["alg"], jwk["use"], jwk["kid"], jwk["e"]) == ("RSA", "RS256", "sig", "", "AQAB")
    public = jwt.PyJWK(jwk).key
    decoded = jwt.decode(token, public, algorithms=["RS256"], audience="http://app:8080", issuer="tpemu.local",
                         options={"verify_exp": False, "verify_nbf": False, "verify_iat": False})
    assert decoded["username"] == "alice"
    other = JWTKey(rsa.generate_private_key(public_exponent=65537, key_size=2048), "tpemu.local")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, jwt.PyJWK(other.jwk()).key, algorithms=["RS256"], audience="http://app:8080",
                   options={"verify_exp": False})


def test_b64url_has_no_padding() -> None:
    assert b64url(b"\xff") == "_w" and b64url(b"ab") == "YWI"


async def test_key_persists_in_the_backend(tmp_path: Path) -> None:
    backend = await SQLiteBackend.open(tmp_path / "b.db", "OFF")
    try:
        first = await ensure_jwt_key(backend, "c1")
        again = await ensure_jwt_key(backend, "c1")
        assert first.jwk() == again.jwk()
        assert (await ensure_jwt_key(backend, "c2")).jwk() != first.jwk()
    finally:
        await backend.close()


def test_route_to_app_in_subject_and_json() -> None:
    route = ident.RouteToApp("sess-1", "echo.tpemu.local", "tpemu.local", "echo")
    identity = ident.Identity(username="alice", route_to_cluster="tpemu.local", route_to_app=route,
                              usage=(ident.USAGE_APPS_ONLY,))
    assert ident.from_subject(identity.subject()).route_to_app == route
    assert ident.Identity.from_json(identity.to_json()).route_to_app == route
    oids = [attr.oid.dotted_string for attr in identity.subject()]
    assert {"1.3.9999.1.4", "1.3.9999.1.5", "1.3.9999.1.6", "1.3.9999.1.10"} <= set(oids)
    with pytest.raises(ident.IdentityError):
        ident.Identity.from_json({**identity.to_json(), "route_to_app": "x"})


def test_app_definitions() -> None:
    apps = app_defs((App(name="a", uri="http://127.0.0.1:1"), App(name="t", uri="tcp://127.0.0.1:2")), True)
    assert [(a.name, a.kind, a.emulated) for a in apps] == [("a", "http", False), ("t", "tcp", False),
                                                           ("dumper", "http", True)]
    assert apps[2].uri == EMULATED_ECHO
    for bad in (App(name="x", uri="ftp://h"), App(name="", uri="http://h"), App(name="x", uri="")):
        with pytest.raises(AppError):
            app_defs((bad,), False)
