"""Real load balancers in front of tpemu proxies, for tests: nginx (layer 7) and HAProxy (layer 4).

Each runs in its own directory on a free loopback port, with bounded readiness waits, and is
stopped by PID. A missing binary skips the test with the reason.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from tests import realservers
from tpemu import pki

#: The names of the load balancer's own certificate (what the seed's x509 message lists).
LB_NAMES = ("*.lb.tpemu.test", "lb.tpemu.test", "localhost")


@dataclass
class LoadBalancer:
    host: str
    port: int
    ca: Path
    log: Path


def lb_certificate(d: Path) -> tuple[Path, Path, Path]:
    """A CA of the load balancer's own (not the cluster's) and a certificate for :data:`LB_NAMES`."""
    ca_key = pki.generate_key()
    ca = pki.make_ca("tpemu test load balancer CA", ca_key, "LB Inc")
    key = pki.generate_key()
    cert = pki.issue_cert(ca, ca_key, key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                       LB_NAMES[1])]),
                          sans=LB_NAMES, ttl=dt.timedelta(days=1))
    paths = d / "lb-ca.crt", d / "lb.crt", d / "lb.key"
    paths[0].write_bytes(pki.cert_pem(ca))
    paths[1].write_bytes(pki.cert_pem(cert))
    paths[2].write_bytes(pki.key_pem(key))
    return paths


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen {host}:{port} ssl;
    ssl_certificate {d}/lb.crt;
    ssl_certificate_key {d}/lb.key;
    location / {{
      proxy_pass https://{target};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_read_timeout 3600s;
      proxy_ssl_verify off;
    }}
  }}
}}
"""


@contextmanager
def nginx_l7(target: str, host: str = "127.0.0.1") -> Iterator[LoadBalancer]:
    """nginx terminating TLS with its own certificate and proxying HTTP/1.1 to ``target`` (HTTPS)."""
    exe = realservers.binary("nginx")
    with realservers.server_dir("nginx") as d:
        ca, _, _ = lb_certificate(d)
        for attempt in range(3):
            port = realservers.free_port(host)
            (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, host=host, port=port, target=target))
            proc = subprocess.Popen([exe, "-c", str(d / "nginx.conf"), "-p", str(d)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            try:
                realservers.wait_tcp(host, port, proc=proc)
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            yield LoadBalancer(host, port, ca, d / "error.log")
        finally:
            realservers.stop(proc)


HAPROXY_CONF = """
global
  pidfile {d}/haproxy.pid
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  option tcplog
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  retries 3
  option redispatch
{sections}
"""

HAPROXY_FRONTEND = """
frontend {name}
  bind {host}:{port}
  default_backend {name}_servers
backend {name}_servers
{servers}
"""


@dataclass
class L4Frontend:
    """One HAProxy frontend: ``port`` on ``host``, to ``primary`` with ``backups`` for fail-over."""

    name: str
    port: int
    primary: str
    backups: tuple[str, ...] = ()


@contextmanager
def haproxy_l4(frontends: list[L4Frontend], host: str = "127.0.0.1") -> Iterator[Path]:
    """HAProxy in ``mode tcp`` sending PROXY v2 to the proxies, health-checking them every 200 ms
    (so a dead proxy's clients fail over to the backup). Yields its log file."""
    exe = realservers.binary("haproxy")
    with realservers.server_dir("haproxy") as d:
        sections = []
        for fe in frontends:
            servers = []
            for i, target in enumerate((fe.primary, *fe.backups)):
                servers.append(f"  server s{i} {target} send-proxy-v2 check inter 200ms fall 1 rise 1"
                               + (" backup" if i else ""))
            sections.append(HAPROXY_FRONTEND.format(name=fe.name, host=host, port=fe.port, servers="\n".join(servers)))
        (d / "haproxy.cfg").write_text(HAPROXY_CONF.format(d=d, sections="".join(sections)))
        log_path = d / "haproxy.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([exe, "-db", "-f", str(d / "haproxy.cfg")], stdout=out, stderr=subprocess.STDOUT)
        try:
            for fe in frontends:
                realservers.wait_tcp(host, fe.port, proc=proc)
            yield log_path
        finally:
            realservers.stop(proc)
