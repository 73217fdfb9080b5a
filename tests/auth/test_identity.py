"""Identity encoding in certificate subjects (tpemu.identity) against Teleport's layout.

Vectors: subjects built by tpemu are decoded by OpenSSL (``openssl x509 -subject``, an independent
parser); subjects built by OpenSSL (``openssl req -subj`` with Teleport's OIDs) are decoded by
tpemu; round trips are fuzzed with hypothesis.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tpemu import identity as ident
from tpemu import pki

ALICE = ident.Identity(
    username="alice", groups=("access", "editor"), principals=("root", "alice"), route_to_cluster="tpemu.local",
    traits={"logins": ("root", "alice"), "db_users": ("alice",)}, teleport_cluster="tpemu.local",
    route_to_database=ident.RouteToDatabase("pg", "postgres", "alice", "app"), database_names=("app",),
    database_users=("alice",), usage=(ident.USAGE_DATABASE_ONLY,), kubernetes_groups=("viewers",),
)


def test_round_trip_keeps_every_field() -> None:
    assert ident.from_subject(ALICE.subject()) == ALICE


def test_subject_layout_follows_go_pkix_name() -> None:
    rdns = ALICE.subject().rdns
    # One RDN per standard attribute type (all values inside), in Go's ToRDNSequence order,
    # then one RDN per extra name.
    first = [sorted(a.oid.dotted_string for a in rdn) for rdn in rdns[:6]]
    assert first == [["2.5.4.7", "2.5.4.7"], ["2.5.4.9"], ["2.5.4.17"], ["2.5.4.10", "2.5.4.10"], ["2.5.4.11"],
                     ["2.5.4.3"]]
    extra = [next(iter(rdn)).oid.dotted_string for rdn in rdns[6:]]
    assert extra == ["1.3.9999.1.2", "1.3.9999.1.7", "1.3.9999.2.1", "1.3.9999.2.2", "1.3.9999.2.3",
                     "1.3.9999.2.4", "1.3.9999.2.5", "1.3.9999.2.6"]


def test_string_types_follow_go_asn1() -> None:
    subject = ALICE.subject()
    types = {a.oid.dotted_string: a._type for a in subject}
    assert types["2.5.4.3"] is _ASN1Type.PrintableString  # "alice"
    assert types["2.5.4.17"] is _ASN1Type.UTF8String  # JSON traits: '{' is not printable
    wild = ident.Identity("x", groups=("a*b",)).subject()
    assert [a._type for a in wild if a.oid == NameOID.ORGANIZATION_NAME] == [_ASN1Type.UTF8String]


def test_traits_are_go_json_and_null_when_empty() -> None:
    assert ident.marshal_traits({"logins": ["b", "a"], "db_users": []}) == '{"db_users":[],"logins":["b","a"]}'
    assert ident.marshal_traits({}) == "null"
    host = ident.Identity("h.c", groups=("Proxy",)).subject()
    assert [a.value for a in host if a.oid == NameOID.POSTAL_CODE] == ["null"]
    with pytest.raises(ident.IdentityError):
        ident.unmarshal_traits('{"logins": "root"}')


def test_long_host_names_are_allowed_as_go_allows_them() -> None:
    name = ident.host_fqdn("0f0e5d4e-1111-2222-3333-444455556666", "a-rather-long-cluster-name.example.com")
    assert len(name) > 64
    assert ident.from_subject(ident.Identity(name, groups=("Node",)).subject()).username == name


def test_unknown_teleport_oids_are_skipped() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bob"),
                      x509.NameAttribute(x509.ObjectIdentifier("1.3.9999.1.8"), "mfa-device"),
                      x509.NameAttribute(x509.ObjectIdentifier("1.3.9999.2.3"), "bob")])
    got = ident.from_subject(name)
    assert got.username == "bob" and got.route_to_database.username == "bob"
    assert "1.3.9999.1.8" in ident.OTHER_TELEPORT_OIDS


def test_cluster_sni_round_trip() -> None:
    sni = ident.cluster_sni("example.teleport.sh")
    assert sni == "6578616d706c652e74656c65706f72742e7368.teleport.cluster.local"  # the seed's example
    assert ident.decode_cluster_sni(sni) == "example.teleport.sh"
    assert ident.decode_cluster_sni("proxy.example.com") is None
    assert ident.decode_cluster_sni("zz.teleport.cluster.local") is None


def test_system_roles_parse_like_tctl() -> None:
    assert ident.parse_system_roles("node,DB, proxy,node") == ("Node", "Db", "Proxy")
    with pytest.raises(ValueError, match="unknown role 'nodes'"):
        ident.parse_system_roles("nodes")


def test_cert_roles_extension() -> None:
    text = ident.marshal_cert_roles(["access"])
    assert text == '{"version":"v1","roles":["access"]}'
    assert ident.unmarshal_cert_roles(text) == ("access",)


_CA_KEY = pki.generate_key()
_CA = pki.make_ca("c", _CA_KEY, "c")
_LEAF_KEY = pki.generate_key().public_key()


def _cert_for(subject: x509.Name) -> x509.Certificate:
    return pki.issue_cert(_CA, _CA_KEY, _LEAF_KEY, subject, server=False,
                          not_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))


@pytest.mark.e2e
def test_openssl_reads_what_tpemu_writes_and_the_reverse(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    pem = tmp_path / "alice.pem"
    pem.write_bytes(pki.cert_pem(_cert_for(ALICE.subject())))
    out = subprocess.run([openssl, "x509", "-in", str(pem), "-noout", "-subject", "-nameopt", "RFC2253"],
                         capture_output=True, text=True, check=True).stdout
    for part in ("CN=alice", "O=access", "O=editor", "L=root", "1.3.9999.2.1=#13027067", "street=tpemu.local",
                 "1.3.9999.1.7=#130B7470656D752E6C6F63616C"):  # 0x13: PrintableString, as Go writes it
        assert part in out, out
    # OpenSSL as the encoder: a subject with Teleport's OIDs (named in an oid_section), decoded by tpemu.
    conf = tmp_path / "oids.cnf"
    conf.write_text("oid_section = teleport_oids\n[ teleport_oids ]\nteleportCluster = 1.3.9999.1.7\n"
                    "dbService = 1.3.9999.2.1\ndbProtocol = 1.3.9999.2.2\ndbUser = 1.3.9999.2.3\n"
                    "[ req ]\ndistinguished_name = dn\nprompt = no\n[ dn ]\n")
    subj = "/CN=bob/O=dev/L=ubuntu/dbService=mydb/dbProtocol=postgres/dbUser=bob/teleportCluster=c1"
    subprocess.run([openssl, "req", "-config", str(conf), "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "bob.pem"), "-subj", subj, "-days", "1"], capture_output=True, check=True)
    bob = ident.from_certificate(x509.load_pem_x509_certificate((tmp_path / "bob.pem").read_bytes()))
    assert (bob.username, bob.groups, bob.logins, bob.teleport_cluster) == ("bob", ("dev",), ("ubuntu",), "c1")
    assert bob.route_to_database == ident.RouteToDatabase("mydb", "postgres", "bob", "")


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)
_list = st.lists(_text, max_size=3).map(tuple)


@settings(max_examples=150, deadline=None)
@given(user=_text, groups=_list, logins=_list, cluster=_text, db=st.tuples(_text, _text, _text, _text),
       db_users=_list, traits=st.dictionaries(_text, _list, max_size=3))
def test_round_trip_fuzz(user: str, groups: tuple[str, ...], logins: tuple[str, ...], cluster: str,
                         db: tuple[str, str, str, str], db_users: tuple[str, ...],
                         traits: dict[str, tuple[str, ...]]) -> None:
    identity = ident.Identity(user, groups=groups, principals=logins, route_to_cluster=cluster, traits=traits,
                              teleport_cluster=cluster, route_to_database=ident.RouteToDatabase(*db),
                              database_users=db_users)
    # Through DER and back: what a peer's certificate would carry. Values of one attribute type
    # share a SET, which DER sorts and which cannot repeat a value (Go's certificates alike).
    got = ident.from_der(_cert_for(identity.subject()).public_bytes(Encoding.DER))

    def norm(values: tuple[str, ...]) -> list[str]:
        return sorted(set(values))

    assert got.username == user and got.route_to_cluster == cluster == got.teleport_cluster
    assert (norm(got.groups), norm(got.principals)) == (norm(groups), norm(logins))
    assert got.route_to_database == ident.RouteToDatabase(*db) and got.database_users == db_users
    assert got.traits == traits
