"""tpemu's emulated Kubernetes API as a stand-alone HTTPS API server (a "real cluster" for tests).

``python -m tpemu.agent.kube.standalone --data-dir D --cert C --key K --client-ca CA
[--impersonator NAME]... [--listen 127.0.0.1:0]`` serves one emulated cluster over TLS that
*requires* a client certificate signed by ``--client-ca``, as a real API server does with
``--client-ca-file``. As in Kubernetes' impersonation filter
(``k8s.io/apiserver/pkg/endpoints/filters/impersonation.go``), a request carrying
``Impersonate-User``/``Impersonate-Group`` is served as the impersonated user only when the
certificate's user (its CN) may impersonate (``--impersonator``); otherwise 403. A request
without impersonation is refused too: the emulated API knows no users of its own beyond the
impersonated ones. It prints ``listening on HOST:PORT`` once it accepts connections.

This is what ``kubernetes_service.kubeconfig_file`` points at in tpemu's tests
(:mod:`tpemu.agent.kube.remote` forwards to it with the impersonation headers).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
from pathlib import Path

from tpemu.agent.kube.api import EmulatedAPI, status_reply
from tpemu.net import kube_http as khttp
from tpemu.net.kube_status import StatusError
from tpemu.net.tls import new_context

log = logging.getLogger(__name__)


def _peer_user(writer: asyncio.StreamWriter) -> str:
    cert = writer.get_extra_info("peercert") or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


async def serve(api: EmulatedAPI, host: str, port: int, tls: ssl.SSLContext,
                impersonators: frozenset[str]) -> asyncio.Server:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caller = _peer_user(writer)

        async def handle(request: khttp.Request) -> khttp.Reply | khttp.Streamed | khttp.Upgraded:
            asked = request.headers.get("impersonate-user", "")
            if not asked:
                return status_reply(StatusError(403, f'User "{caller}" cannot {request.method.lower()} '
                                                f'{request.path}: only impersonated requests are served here',
                                                "Forbidden"))
            if caller not in impersonators:
                return status_reply(StatusError(403, f'users "{asked}" is forbidden: User "{caller}" cannot '
                                                'impersonate resource "users" in API group "" at the cluster '
                                                'scope', "Forbidden"))
            return await api.handle(request)

        await khttp.serve(reader, writer, handle, lambda code, msg: status_reply(StatusError(code, msg)),
                          peer=str(writer.get_extra_info("peername")))

    return await asyncio.start_server(on_client, host, port, ssl=tls, ssl_handshake_timeout=10.0)


def tls_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    ctx = new_context(ssl.PROTOCOL_TLS_SERVER)  # honours SSLKEYLOGFILE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(client_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def _main(args: argparse.Namespace) -> None:
    api = EmulatedAPI(args.name, Path(args.data_dir))
    api.start()
    host, _, port = args.listen.rpartition(":")
    server = await serve(api, host or "127.0.0.1", int(port), tls_context(args.cert, args.key, args.client_ca),
                         frozenset(args.impersonator))
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    api.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tpemu.agent.kube.standalone", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--client-ca", type=Path, required=True)
    parser.add_argument("--impersonator", action="append", default=[],
                        help="a client certificate CN allowed to impersonate (repeatable)")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--name", default="upstream")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
