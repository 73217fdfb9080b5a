"""Certificate authorities and the certificates they issue (X.509 and SSH).

SSH certificates are checked by two independent parsers: asyncssh (``import_certificate``
verifies the CA signature) and OpenSSH's ``ssh-keygen -L``; X.509 ones by cryptography and
``openssl verify``/``openssl x509 -text``.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tpemu import identity as ident
from tpemu import pki, sshcert
from tpemu.auth import authority as authority_mod
from tpemu.auth.authority import CAType
from tpemu.auth.backend import Backend

CLUSTER = "example.teleport.sh"


@pytest.fixture(scope="module")
def cas() -> dict[CAType, authority_mod.CertAuthority]:
    return {t: authority_mod.new_authority(t, CLUSTER) for t in CAType}


async def test_authorities_are_made_once_and_kept(backend: Backend) -> None:
    first = await authority_mod.ensure_authorities(backend, CLUSTER)
    again = await authority_mod.ensure_authorities(backend, CLUSTER)
    for ca_type in CAType:
        assert again[ca_type].tls_cert == first[ca_type].tls_cert
        assert again[ca_type].ssh_public == first[ca_type].ssh_public
    assert first[CAType.DB].ssh_key is None and first[CAType.USER].ssh_key is not None
    assert len({first[t].pin for t in CAType}) == 3
    ou = {t: first[t].tls_cert.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
          for t in CAType}
    assert ou == {CAType.HOST: "host CA", CAType.USER: "user CA", CAType.DB: "db CA"}


def test_legacy_suite_makes_rsa_2048_keys() -> None:
    ca = authority_mod.new_authority(CAType.USER, CLUSTER, authority_mod.SUITE_KEYS["legacy"])
    assert isinstance(ca.tls_key, rsa.RSAPrivateKey) and ca.tls_key.key_size == 2048
    assert ca.ssh_public.startswith(b"ssh-rsa ")
    ecdsa = authority_mod.new_authority(CAType.USER, CLUSTER, authority_mod.SUITE_KEYS["balanced-v1"])
    assert isinstance(ecdsa.tls_key, ec.EllipticCurvePrivateKey)
    assert ecdsa.ssh_public.startswith(b"ecdsa-sha2-nistp256 ")


def test_proxy_host_certificate_has_teleports_sans(cas: dict[CAType, authority_mod.CertAuthority]) -> None:
    key = pki.generate_key()
    cert = authority_mod.issue_host_tls(cas[CAType.HOST], key.public_key(), "host-1", ident.ROLE_PROXY,
                                        ["proxy.example.com", "127.0.0.1"], ["proxy.example.com"])
    sans = pki.san_strings(cert)
    for name in ("proxy.example.com", "127.0.0.1", "*.teleport.cluster.local", "teleport.cluster.local",
                 "6578616d706c652e74656c65706f72742e7368.teleport.cluster.local"):
        assert name in sans
    got = ident.from_certificate(cert)
    assert (got.username, got.groups, got.teleport_cluster) == (f"host-1.{CLUSTER}", ("Proxy",), CLUSTER)
    assert pki.verify_issued_by(cert, [cas[CAType.HOST].tls_cert]) == cas[CAType.HOST].tls_cert


def test_node_certificates_do_not_get_the_api_names(cas: dict[CAType, authority_mod.CertAuthority]) -> None:
    cert = authority_mod.issue_host_tls(cas[CAType.HOST], pki.generate_key().public_key(), "n1", ident.ROLE_NODE,
                                        ["node1"], ["ignored.example.com"])
    assert pki.san_strings(cert) == ["node1"]  # DefaultDNSNamesForRole: none for Node


def test_ssh_host_certificate(cas: dict[CAType, authority_mod.CertAuthority]) -> None:
    host_key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    line = authority_mod.issue_host_ssh(cas[CAType.HOST], host_key.export_public_key(), "uuid-1", "node1",
                                        ident.ROLE_NODE, ["node1.example.com"])
    cert = asyncssh.import_certificate(line)
    assert cert.principals == ["uuid-1.example.teleport.sh", "uuid-1", "node1.example.teleport.sh", "node1",
                               "localhost", "127.0.0.1", "::1", "node1.example.com"]
    assert sshcert.extensions_of(line) == {"x-teleport-authority": CLUSTER, "x-teleport-role": "Node"}
    assert cert.signing_key.public_data == cas[CAType.HOST].ssh_key.public_data


@pytest.mark.parametrize("alg", ["ecdsa-sha2-nistp256", "ssh-rsa", "ssh-ed25519"])
def test_user_ssh_certificates_parse_for_every_ca_key_type(alg: str) -> None:
    ca = asyncssh.generate_private_key(alg)
    user = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    now = dt.datetime.now(dt.UTC)
    line = sshcert.make_certificate(ca, user.convert_to_public(), cert_type=sshcert.USER_CERT, key_id="alice",
                                    principals=["root"], valid_after=now, valid_before=now + dt.timedelta(hours=1),
                                    extensions={"permit-pty": "", "teleport-roles": '{"roles":["a"]}'})
    cert = asyncssh.import_certificate(line)  # verifies the CA signature
    assert cert.principals == ["root"] and cert.options["permit-pty"] is True
    assert sshcert.extensions_of(line)["teleport-roles"] == '{"roles":["a"]}'
    tampered = line.replace(b"AAAA", b"AAAB", 1)
    with pytest.raises((asyncssh.KeyImportError, ValueError)):
        asyncssh.import_certificate(tampered)


def test_user_certificates_carry_the_identity(cas: dict[CAType, authority_mod.CertAuthority]) -> None:
    key = pki.generate_key()
    not_after = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=12)
    identity = ident.Identity("alice", groups=("access",), principals=("root",), route_to_cluster=CLUSTER,
                              teleport_cluster=CLUSTER, database_users=("alice",))
    cert = authority_mod.issue_user_tls(cas[CAType.USER], key.public_key(), identity, not_after)
    got = ident.from_certificate(cert)
    assert got == ident.Identity(**{**identity.__dict__, "expires": not_after})
    # lib/tlsca/ca.go GenerateCertificate: every leaf, user certificates too, has both usages.
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(pki.CertificateError, match="signed by unknown authority") as err:
        pki.verify_issued_by(cert, [cas[CAType.HOST].tls_cert])
    assert err.value.reason == "unknown-authority"
    with pytest.raises(pki.CertificateError, match="certificate expired at"):
        pki.verify_issued_by(cert, [cas[CAType.USER].tls_cert], now=not_after + dt.timedelta(seconds=1))
    ssh_line = authority_mod.issue_user_ssh(cas[CAType.USER], asyncssh.import_private_key(pki.key_pem(key))
                                            .export_public_key(), "alice", ["root", "alice"], ["access"],
                                            {"logins": ["root", "alice"]}, CLUSTER, not_after)
    ext = sshcert.extensions_of(ssh_line)
    assert ident.unmarshal_cert_roles(ext["teleport-roles"]) == ("access",)
    assert ext["teleport-route-to-cluster"] == CLUSTER and "permit-pty" in ext
    assert asyncssh.import_certificate(ssh_line).principals == ["root", "alice"]


def test_database_certificates_come_from_the_db_ca(cas: dict[CAType, authority_mod.CertAuthority]) -> None:
    cert = authority_mod.issue_db_cert(cas[CAType.DB], pki.generate_key().public_key(), "db.example.com",
                                       ["db.example.com", "127.0.0.1"], dt.timedelta(days=30))
    assert pki.verify_issued_by(cert, [cas[CAType.DB].tls_cert]) == cas[CAType.DB].tls_cert
    assert pki.san_strings(cert) == ["db.example.com", "127.0.0.1"]


@pytest.mark.e2e
def test_real_tools_accept_the_certificates(tmp_path: Path, cas: dict[CAType, authority_mod.CertAuthority]) -> None:
    openssl, keygen = shutil.which("openssl"), shutil.which("ssh-keygen")
    if openssl is None or keygen is None:
        pytest.skip("openssl and ssh-keygen are needed")
    key = pki.generate_key()
    cert = authority_mod.issue_host_tls(cas[CAType.HOST], key.public_key(), "h", ident.ROLE_AUTH, ["auth1"])
    (tmp_path / "ca.pem").write_bytes(cas[CAType.HOST].tls_cert_pem)
    (tmp_path / "auth.pem").write_bytes(pki.cert_pem(cert))
    ok = subprocess.run([openssl, "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "auth.pem")],
                        check=False, capture_output=True, text=True)
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stderr
    text = subprocess.run([openssl, "x509", "-in", str(tmp_path / "auth.pem"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:6578616d706c652e74656c65706f72742e7368.teleport.cluster.local" in text
    (tmp_path / "user.pem").write_bytes(cas[CAType.USER].tls_cert_pem)
    bad = subprocess.run([openssl, "verify", "-CAfile", str(tmp_path / "user.pem"), str(tmp_path / "auth.pem")],
                         check=False, capture_output=True, text=True)
    assert bad.returncode != 0 and "unable to get local issuer certificate" in bad.stdout + bad.stderr
    user_key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    line = authority_mod.issue_user_ssh(cas[CAType.USER], user_key.export_public_key(), "alice", ["root"], ["access"],
                                        {}, CLUSTER, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    (tmp_path / "id-cert.pub").write_bytes(line)
    listing = subprocess.run([keygen, "-L", "-f", str(tmp_path / "id-cert.pub")], capture_output=True, text=True,
                             check=True).stdout
    assert 'Key ID: "alice"' in listing and "teleport-roles" in listing and "permit-pty" in listing
