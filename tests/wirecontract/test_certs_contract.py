"""What Teleport puts in user and host certificates, and what tpemu issues.

Follows ``lib/tlsca/ca.go`` ``CertAuthority.GenerateCertificate`` (every leaf: KeyUsage
DigitalSignature|KeyEncipherment, ExtKeyUsage ServerAuth *and* ClientAuth, BasicConstraints
CA=false, NotBefore a minute back), ``lib/auth/keygen`` ``BuildPrincipals`` (SSH host principals:
``<host_id>.<cluster>``, ``<host_id>``, ``<nodename>.<cluster>``, ``<nodename>``, plus loopback
names), ``lib/sshca`` (host extensions ``x-teleport-role``/``x-teleport-authority``; user
certificates: key id = user, principals = logins, ``permit-*`` and ``teleport-roles``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.agent.test_tunnel import join
from tpemu import sshcert
from tpemu.testkit import Cluster


def _leaf_usages(cert: x509.Certificate) -> None:
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca is False
    skew = dt.datetime.now(dt.UTC) - cert.not_valid_before_utc
    assert dt.timedelta(seconds=50) <= skew <= dt.timedelta(minutes=5)


async def test_user_and_host_certificates_as_teleport_issues_them(tmp_path: Path) -> None:
    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        alice = await cluster.user("alice", logins=["root", "alice"])
        user_tls = x509.load_pem_x509_certificate(alice.profile.tls_cert_path.read_bytes())
        _leaf_usages(user_tls)
        assert user_tls.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == "alice"
        with_sans = [e for e in user_tls.extensions if isinstance(e.value, x509.SubjectAlternativeName)]
        assert with_sans == []  # user certificates carry no SANs
        user_ssh = sshcert.certificate_info(alice.profile.ssh_cert_path.read_bytes())
        assert user_ssh.cert_type == sshcert.USER_CERT and user_ssh.key_id == "alice"
        assert user_ssh.principals == ("root", "alice")
        # constants.go CertExtensionTeleportRoles = "teleport-roles".
        assert {"permit-pty", "permit-port-forwarding", "teleport-roles"} <= set(user_ssh.extensions)

        node = await join(cluster, "Node", "web1")
        host_tls = node.cert
        _leaf_usages(host_tls)
        cn = host_tls.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
        assert cn == f"{node.host_id}.{cluster.cluster_name}"
        host_ssh = sshcert.certificate_info(node.ssh_cert)
        assert host_ssh.cert_type == sshcert.HOST_CERT
        assert list(host_ssh.principals[:4]) == [f"{node.host_id}.{cluster.cluster_name}", node.host_id,
                                                  f"web1.{cluster.cluster_name}", "web1"]
        assert host_ssh.extensions["x-teleport-role"] == "Node"
        assert host_ssh.extensions["x-teleport-authority"] == cluster.cluster_name
