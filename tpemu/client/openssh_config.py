"""``tpemu config``: the OpenSSH ``ssh_config`` block for a profile, as ``tsh config`` prints it.

Teleport's ``lib/config/openssh``: a ``Host *.<cluster> <proxy>`` block with the profile's
known_hosts (the host CA as ``@cert-authority``), key and SSH certificate, and for every node a
``ProxyCommand`` running ``tpemu proxy ssh`` (:func:`tpemu.client.ssh.proxy_stdio`), OpenSSH's
tokens quoted as ``ssh_config(5)`` wants. No network: it reads only the profile.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tpemu.client.profile import Profile
from tpemu.client.ssh import NODE_PORT, host_ca_keys
from tpemu.config import Addr

#: ``HostKeyAlgorithms`` for ``tpemu config``: certificates only (so OpenSSH asks for the host
#: certificate and checks it against the ``@cert-authority`` line), ECDSA first — the key type of
#: every tpemu host — then the RSA forms ``tsh config`` lists.
HOST_KEY_ALGORITHMS = ("ecdsa-sha2-nistp256-cert-v01@openssh.com,rsa-sha2-512-cert-v01@openssh.com,"
                       "rsa-sha2-256-cert-v01@openssh.com")


def tpemu_command() -> str:
    """How to run this tpemu from a ProxyCommand (the installed script, else ``python -m tpemu``)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "tpemu" and argv0.exists():
        return _quote(str(argv0.resolve()))
    return f"{_quote(sys.executable)} -m tpemu"


def _quote(text: str) -> str:
    # ssh_config tokens: double quotes protect spaces; % starts a ProxyCommand expansion.
    return '"' + text.replace("%", "%%") + '"' if any(c in text for c in ' "%\t') or not text else text


def openssh_config(profile: Profile, executable: str | None = None, port: int = NODE_PORT,
                   login: str | None = None) -> str:
    """The ``ssh_config`` block ``tsh config`` prints (``lib/config/openssh``), for this profile."""
    web = Addr.parse(profile.web_proxy_addr, default_port=3080)
    cluster = profile.cluster
    exe = executable or tpemu_command()
    cert = profile.ssh_cert_path
    host_ca_keys(profile)  # fail early, with the reason, when the profile has no host CA
    user = f'\n    User "{login}"' if login else ""
    home = _quote(str(profile.home))
    return (
        f"# Begin generated tpemu configuration for {web.host} by tpemu\n"
        f"\n"
        f"# Common flags for all {cluster} hosts\n"
        f"Host *.{cluster} {web.host}\n"
        f'    UserKnownHostsFile "{profile.known_hosts_path}"\n'
        f'    IdentityFile "{profile.key_path}"\n'
        f'    CertificateFile "{cert}"\n'
        f"    HostKeyAlgorithms {HOST_KEY_ALGORITHMS}{user}\n"
        f"\n"
        f"# Flags for all {cluster} hosts except the proxy\n"
        f"Host *.{cluster} !{web.host}\n"
        f"    Port {port}\n"
        f"    ProxyCommand {exe} proxy ssh --home={home} --cluster={cluster} --proxy={web} %r@%h:%p{user}\n"
        f"\n"
        f"# End generated tpemu configuration\n"
    )


__all__ = ["HOST_KEY_ALGORITHMS", "openssh_config", "tpemu_command"]
