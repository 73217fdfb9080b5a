"""TLS termination: full handshakes per second, ECDSA P-256 against RSA 2048 (glue).

Subjects, side by side in one run:

* ``tpemu-ecdsa`` / ``tpemu-rsa``: ``tpemu start`` (Auth + Proxy, uvloop) whose cluster CAs —
  and so the proxy's certificate — are ECDSA P-256 (the default, Teleport's ``balanced-v1``) or
  RSA 2048 (``signature_algorithm_suite: legacy``); the handshake goes to the web route, which
  terminates TLS with ALPN ``http/1.1``;
* ``haproxy-ecdsa`` / ``haproxy-rsa``: HAProxy terminating TLS (``bind … ssl crt``) with a
  certificate of the same kind, one thread, ``mode tcp`` to a backend that is never reached.

The client is ``openssl s_time -new`` (a new full handshake per connection, no resumption,
TLS 1.3, X25519), in ``clients`` parallel processes. Figures: handshakes per second (with the
ratio of each tpemu figure to HAProxy's with the same key type) and the server's CPU time per
handshake (its process tree, from /proc), with RSA's CPU cost as a ratio to ECDSA's. On two
shared CPUs the openssl clients themselves bound the rate, so the CPU per handshake is the
steadier figure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import peers
from tpemu import pki

Log = Callable[[str], None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


def _start_tpemu(kind: str, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    cfg = work / f"tpemu-{kind}.yaml"
    suite = "legacy" if kind == "rsa" else "balanced-v1"
    cfg.write_text(f"""teleport: {{data_dir: {work / ('data-' + kind)}, log: {{severity: WARN}}}}
auth_service:
  listen_addr: 127.0.0.1:0
  authentication: {{signature_algorithm_suite: {suite}}}
proxy_service: {{web_listen_addr: 127.0.0.1:{port}}}
ssh_service: {{enabled: no}}
""")
    tpemu = Path(sys.executable).with_name("tpemu")
    proc = subprocess.Popen([str(tpemu), "start", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(work / f"tpemu-{kind}.log", "wb"))  # noqa: SIM115
    _wait_port(port, proc)
    return proc, port


#: OpenSSL configuration for a HAProxy that sends no session tickets, as Teleport's proxy (and tpemu):
#: HAProxy 2.6's ``no-tls-tickets`` sets ``SSL_OP_NO_TICKET``, which in TLS 1.3 only turns OpenSSL's
#: two stateless tickets into two stateful ones; ``NumTickets = 0`` (``SSL_CTX_set_num_tickets``,
#: which HAProxy has no keyword for) in the default SSL_CTX settings sends none.
NO_TICKETS_CNF = """openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
NumTickets = 0
"""


def _start_haproxy(kind: str, work: Path, tickets: bool = True,
                   answer: bool = False) -> tuple[subprocess.Popen[bytes], int] | str:
    """HAProxy terminating TLS with a ``kind`` certificate; ``tickets=False``: it sends no session
    tickets (TLS 1.3 or 1.2), so its handshakes do the same work as tpemu's and Teleport's.
    ``answer``: ``mode http`` answering every request itself (``http-request return``, a small
    JSON body as tpemu's ``/webapi/ping``), for clients that send a request after the handshake."""
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if exe is None:
        return "haproxy is not installed"
    key = pki.generate_key("rsa" if kind == "rsa" else "ecdsa")
    ca_key = pki.generate_key("ecdsa")
    ca = pki.make_ca("bench CA", ca_key, "bench")
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = pki.issue_cert(ca, ca_key, key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                       "localhost")]),
                          sans=["localhost", "127.0.0.1"])
    name = f"haproxy-{kind}" + ("" if tickets else "-notickets") + ("-answer" if answer else "")
    pem = work / f"{name}.pem"
    pem.write_bytes(pki.cert_pem(cert) + pki.key_pem(key))
    port = _free_port()
    conf = work / f"{name}.cfg"
    serve = ('    http-request return status 200 content-type application/json string "{\\"ok\\":true}"\n'
             if answer else "")
    conf.write_text(f"""global
    nbthread 1
defaults
    mode {"http" if answer else "tcp"}
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1{"" if tickets else " no-tls-tickets"}
{serve}    default_backend nowhere
backend nowhere
    server s 127.0.0.1:9
""")
    env = None
    if not tickets:
        cnf = work / f"{name}-openssl.cnf"
        cnf.write_text(NO_TICKETS_CNF)
        env = {**os.environ, "OPENSSL_CONF": str(cnf)}
    proc = subprocess.Popen([exe, "-db", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    _wait_port(port, proc)
    return proc, port


def _s_time(port: int, seconds: float, clients: int, www: str | None = None) -> tuple[float, int]:
    """Handshakes per second summed over ``clients`` parallel ``openssl s_time -new`` runs, and
    the number of handshakes. ``www``: after each handshake the client sends ``GET <www> HTTP/1.0``
    and reads the answer to its end (``s_time -www``)."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(max(1, round(seconds)))]
    if www is not None:
        cmd += ["-www", www]
    started = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(clients)]
    count = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 30)
        # s_time prints "N connections in X.XXs" (X: the client's own CPU time) and "N connections in
        # T real seconds" (T: whole seconds); the rate uses the wall time measured here instead.
        m = re.search(r"(\d+) connections in \d+ real seconds", out)
        if m:
            count += int(m.group(1))
    return count / (time.perf_counter() - started), count


def run_tls(profile: str = "quick", log: Log = print) -> dict[str, Any]:
    """``{"handshakes": {"c1": {subject: {"handshakes_per_s", …}}, "c4": …}, "subjects": {…}}``."""
    if shutil.which("openssl") is None:
        return {"skipped": "openssl is not installed"}
    seconds = 2.0 if profile == "quick" else 5.0
    result: dict[str, Any] = {"handshakes": {}, "subjects": {}}
    with tempfile.TemporaryDirectory(prefix="tpemu-bench-tls-") as tmp:
        work = Path(tmp)
        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for kind in ("ecdsa", "rsa"):
                procs[f"tpemu-{kind}"] = _start_tpemu(kind, work)
                result["subjects"][f"tpemu-{kind}"] = {"skipped": None, "notes": "tpemu start, uvloop, web route"}
                started = _start_haproxy(kind, work)
                if isinstance(started, str):
                    result["subjects"][f"haproxy-{kind}"] = {"skipped": started}
                else:
                    procs[f"haproxy-{kind}"] = started
                    result["subjects"][f"haproxy-{kind}"] = {"skipped": None, "notes": "nbthread 1, bind ssl crt"}
            for clients in (1, 4):
                point: dict[str, Any] = {}
                for name, (proc, port) in procs.items():
                    pids = peers.process_tree([proc.pid])
                    cpu0 = peers.cpu_seconds(pids)
                    rate, count = _s_time(port, seconds, clients)
                    cpu_us = (peers.cpu_seconds(pids) - cpu0) / max(count, 1) * 1e6
                    point[name] = {"handshakes_per_s": round(rate, 1), "server_cpu_us_per_handshake": round(cpu_us)}
                    log(f"tls c{clients} {name}: {rate:,.0f} handshakes/s, server CPU {cpu_us:,.0f} µs/handshake "
                        "(the openssl client shares the 2 CPUs and bounds the rate)")
                for kind in ("ecdsa", "rsa"):
                    mine, theirs = point.get(f"tpemu-{kind}"), point.get(f"haproxy-{kind}")
                    if mine and theirs and theirs["handshakes_per_s"]:
                        mine["ratio_to_haproxy"] = round(mine["handshakes_per_s"] / theirs["handshakes_per_s"], 3)
                for who in ("tpemu", "haproxy"):
                    ec, rsa = point.get(f"{who}-ecdsa"), point.get(f"{who}-rsa")
                    if ec and rsa and ec["server_cpu_us_per_handshake"]:
                        # How much more server CPU an RSA 2048 handshake costs than an ECDSA P-256 one.
                        rsa["cpu_ratio_to_ecdsa"] = round(rsa["server_cpu_us_per_handshake"]
                                                          / ec["server_cpu_us_per_handshake"], 2)
                result["handshakes"][f"c{clients}"] = point
        finally:
            peers.stop_processes((proc for proc, _ in procs.values()), 10)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run_tls(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
