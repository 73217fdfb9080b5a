"""``tpemu start``: run the roles of one process — auth, proxy, node, db — and print what it serves (glue).

Roles come from ``--roles`` (Teleport's flag) or from the config's ``enabled`` keys
(``auth_service``, ``proxy_service``, ``ssh_service`` → node, ``db_service`` → db). Without a
config, ``tpemu start`` is all-in-one: Auth, Proxy, an SSH node and Postgres, MySQL, MongoDB
and Redis databases served by embedded real engines (``uri: embedded``), every part talking to
the others over loopback as separate Teleport processes would: the proxy and the agent join with
tokens the Auth Service of this process mints for them (as an administrator would with ``tpemu
tokens add``), the agent holds reverse tunnels to the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
from typing import Any

from tpemu import TELEPORT_VERSION, __version__
from tpemu.config import Addr, App, AppService, Config, Database, DBService
from tpemu.errors import LocalFault

log = logging.getLogger("tpemu")

ALL_ROLES = ("auth", "proxy", "node", "db", "kube", "app")
AGENT_ROLES = ("node", "db", "kube", "app")
#: The databases of the all-in-one cluster.
EMULATED_DATABASES = (Database(name="pg", protocol="postgres", description="embedded PostgreSQL"),
                      Database(name="mysql", protocol="mysql", description="embedded MySQL (MariaDB)"),
                      Database(name="mongo", protocol="mongodb", description="embedded MongoDB (nx-27017)"),
                      Database(name="redis", protocol="redis", description="embedded Redis"))


#: The applications of the all-in-one cluster.
EMULATED_APPS = (App(name="echo", uri="emulated-echo",
                     description="emulated echo app (shows the request and its JWT)"),)


class StartError(LocalFault):
    """The flags or config do not make a runnable process."""


def apply_start_flags(cfg: Config, args: argparse.Namespace, all_in_one: bool) -> tuple[Config, tuple[str, ...]]:
    """The config with ``--token/--proxy/--auth-server/--ca-pin/--nodename`` applied, and the roles."""
    t = cfg.teleport
    changes: dict[str, Any] = {}
    try:
        if getattr(args, "token", None):
            changes["auth_token"] = args.token
        if getattr(args, "proxy", None):
            changes["proxy_server"] = Addr.parse(args.proxy, default_port=3080)
        if getattr(args, "auth_server", None):
            changes["auth_server"] = Addr.parse(args.auth_server, default_port=3025)
    except ValueError as exc:
        raise StartError(f"bad address: {exc}") from None
    if getattr(args, "ca_pin", None):
        changes["ca_pin"] = tuple(args.ca_pin)
    if getattr(args, "nodename", None):
        changes["nodename"] = args.nodename
    if changes:
        cfg = dataclasses.replace(cfg, teleport=dataclasses.replace(t, **changes))
    if getattr(args, "roles", None):
        roles = tuple(dict.fromkeys(r.strip().lower() for r in args.roles.split(",") if r.strip()))
        bad = [r for r in roles if r not in ALL_ROLES]
        if bad or not roles:
            raise StartError(f"unknown role(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_ROLES)}")
    else:
        roles = tuple(r for r, on in (("auth", cfg.auth_service.enabled), ("proxy", cfg.proxy_service.enabled),
                                      ("node", cfg.ssh_service.enabled and _built("ssh_service")),
                                      ("db", (cfg.db_service.enabled or all_in_one) and _built("db_service")),
                                      ("kube", (cfg.kubernetes_service.enabled or all_in_one)
                                       and _built("kube.service")),
                                      ("app", (cfg.app_service.enabled or all_in_one) and _built("app_service")))
                      if on)
    if "db" in roles and not cfg.db_service.databases:
        cfg = dataclasses.replace(cfg, db_service=DBService(enabled=True, databases=EMULATED_DATABASES))
    if "app" in roles and not cfg.app_service.apps and not cfg.app_service.debug_app:
        # The all-in-one cluster's applications: an emulated echo app (it shows the JWT Teleport adds).
        cfg = dataclasses.replace(cfg, app_service=AppService(enabled=True, apps=EMULATED_APPS))
    agent_roles = [r for r in roles if r in AGENT_ROLES]
    if agent_roles and "proxy" not in roles and cfg.teleport.proxy_server is None and cfg.teleport.auth_server is None:
        raise StartError(f"the {' and '.join(agent_roles)} role(s) need a cluster to join: --proxy HOST:PORT "
                         "(teleport.proxy_server) or, for node only, --auth-server HOST:PORT")
    return cfg, roles


async def run(cfg: Config, roles: tuple[str, ...], all_in_one: bool, trace: str | None = None) -> int:
    """Start every role, print the banner, serve until SIGINT/SIGTERM. ``trace``: a JSON-lines
    file of routing decisions (``tpemu start --trace``)."""
    from tpemu.auth.backend import BackendError
    from tpemu.proxy import workers  # tpemu.proxy is proxy/ (package-dir)
    from tpemu.proxy.auth_routes import AuthLink, JoinError, auth_link_from_config
    from tpemu.proxy.service import ProxyService
    from tpemu.proxy.webcert import WebCertError

    auth: Any = None
    proxy: ProxyService | None = None
    agent: Any = None
    link: AuthLink | None = None
    stack: list[Any] = []
    try:
        worker = workers.worker_from_env()
    except ValueError as exc:
        print(f"tpemu: {exc}", file=sys.stderr)
        return 2
    if worker is not None:
        # A child of proxy_service.workers: the proxy role only, on worker 0's ports.
        roles = ("proxy",)
        if worker.auth_addr:
            link = AuthLink(Addr.parse(worker.auth_addr, default_port=3025), ca_pins=worker.ca_pins)

    async def shutdown() -> None:
        for part in reversed(stack):
            await part.close()

    # SIGINT/SIGTERM are ours from the first moment: one that arrives while the roles start (a
    # bench or a test stopping a cluster it just saw answer) lets the start-up finish and then
    # shuts down what it started, instead of killing the process with nothing closed (worker 0's
    # socket folder, the children's pipes, engines). A second one during start-up quits at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    starting = True

    def on_signal(sig: signal.Signals) -> None:
        if starting and stop.is_set():
            loop.remove_signal_handler(sig)
            os.kill(os.getpid(), sig)  # the default action now
            return
        if starting:
            print(f"tpemu: {sig.name}: stopping once start-up is done ({sig.name} again to quit now)",
                  file=sys.stderr, flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    if "auth" in roles:
        from tpemu.auth.service import AuthService

        auth = AuthService(cfg)
        try:
            await auth.start()
        except OSError as exc:
            print(f"tpemu: auth service cannot listen on {cfg.auth_service.listen_addr}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        except (BackendError, ValueError) as exc:
            print(f"tpemu: auth service: {exc}", file=sys.stderr)
            await auth.close()
            return 1
        stack.append(auth)
        # The proxy of this process joins over the network like any proxy; its token is made here,
        # in-process, only if it has no identity yet (as an administrator would, with tokens add).
        link = AuthLink(auth.addr, ca_pins=(auth.ca_pin,),
                        mint=lambda: auth.mint_token(("Proxy",), ttl=300.0, single_use=True))
    if "proxy" in roles:
        if link is None:
            auth_addr = cfg.teleport.auth_server or (cfg.teleport.auth_servers[0] if cfg.teleport.auth_servers
                                                     else None)
            try:
                link = auth_link_from_config(auth_addr, cfg.teleport.auth_token, cfg.teleport.ca_pin)
            except JoinError as exc:
                print(f"tpemu: {exc}", file=sys.stderr)
                await shutdown()
                return 1
        proxy = ProxyService(cfg, auth=link)
        if worker is not None:
            proxy.reuse_port = True
            proxy.listen_override = worker.listen_override()
        try:
            await proxy.start()
        except OSError as exc:
            print(f"tpemu: cannot listen: {exc.strerror or exc} ({exc.filename or ''})".rstrip(" ()"), file=sys.stderr)
            await proxy.close()
            await shutdown()
            return 1
        except (JoinError, WebCertError) as exc:
            print(f"tpemu: proxy: {exc}", file=sys.stderr)
            await proxy.close()
            await shutdown()
            return 1
        stack.append(proxy)
        count = worker.count if worker is not None else cfg.tpemu.proxy_service.workers
        if count > 1:
            wlink = workers.WorkerLink(proxy, worker.index if worker is not None else 0, count,
                                       worker.sock_dir if worker is not None else None)
            await wlink.start()
            stack.append(wlink)
            if worker is None:
                pool = workers.WorkerPool(count)
                stack.append(pool)
                try:
                    await pool.start(proxy, link.addr if link is not None else None,
                                     link.ca_pins if link is not None else (), wlink.dir)
                except (OSError, RuntimeError, TimeoutError) as exc:
                    print(f"tpemu: proxy workers: {exc}", file=sys.stderr)
                    await shutdown()
                    return 1
    agent_roles = tuple(r for r in roles if r in AGENT_ROLES)
    if agent_roles:
        from tpemu.agent.process import AgentError, AgentOptions, AgentProcess
        from tpemu.agent.services import MAKERS
        from tpemu.net.proxyenv import ProxyConfigError
        from tpemu.net.proxyenv import from_environment as proxy_env_from
        from tpemu.proxy.decide import ListenerKind

        t = cfg.teleport
        token, pins, proxy_server = _read_token(t.auth_token), t.ca_pin, t.proxy_server
        if proxy is not None and proxy_server is None:
            # This process's own proxy: join through it with a token minted here (all-in-one).
            proxy_server = proxy.info.bound[ListenerKind.WEB]
            if auth is not None:
                pins = (auth.ca_pin,)
                if not token and not _has_identities(cfg, agent_roles):
                    token = await auth.mint_token(tuple(r.capitalize() for r in agent_roles), ttl=300.0,
                                                  single_use=False)
        try:
            env = proxy_env_from(dict(__import__("os").environ))
        except ProxyConfigError as exc:
            print(f"tpemu: {exc}", file=sys.stderr)
            await shutdown()
            return 1
        options = AgentOptions(agent_roles, proxy_server=proxy_server,
                               auth_server=None if proxy_server else t.auth_server, token=token, ca_pins=pins,
                               nodename=t.nodename)
        agent = AgentProcess(cfg, options, MAKERS, proxy=env)
        try:
            await agent.start()
        except AgentError as exc:
            print(f"tpemu: agent: {exc}", file=sys.stderr)
            await agent.close()
            await shutdown()
            return 1
        stack.append(agent)
    if not stack:
        print("tpemu: nothing to run: every service is disabled", file=sys.stderr)
        return 2
    diag = None
    # Diagnostics and the trace file belong to worker 0 (the process started by the user): the
    # children would collide on diag_addr. With workers, /metrics and the page show worker 0's
    # connections only.
    if worker is None and (cfg.teleport.diag_addr is not None or trace):
        from tpemu.diag.metrics import Sources
        from tpemu.diag.server import DiagServer

        diag = DiagServer(Sources(agents=[agent] if agent is not None else [], auth=[auth] if auth else []),
                          trace_path=trace)
        if proxy is not None:
            diag.attach_proxy(proxy)
        if cfg.teleport.diag_addr is not None:
            try:
                await diag.start(cfg.teleport.diag_addr)
            except OSError as exc:
                print(f"tpemu: diag_addr {cfg.teleport.diag_addr}: cannot listen: {exc.strerror or exc}",
                      file=sys.stderr)
                await shutdown()
                return 1
        stack.insert(0, diag)
    if worker is not None:
        # Worker 0 reads this line, then nothing more from our stdout: the rest goes to stderr.
        print(workers.READY, flush=True)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        log.info("proxy worker %d of %d (pid %d) accepting", worker.index, worker.count, os.getpid())
        workers.watch_parent(stop)
    else:
        print(banner(cfg, proxy, all_in_one, auth, agent), flush=True)
        if diag is not None and diag.addr is not None:
            print(f"  diagnostics: http://{diag.addr}/metrics  /healthz  /readyz  /routing (live routing page)",
                  flush=True)
    # Everything made at start-up (modules, certificates, route tables: several hundred thousand
    # objects) lives as long as the process: moved out of the collector's generations, a full
    # collection scans only what connections made since. Without it each full collection walked
    # the whole heap and stalled the loop for 25 to 60 ms under load (the p99 tail of issue 13).
    gc.collect()
    gc.freeze()
    # And a young generation of 10,000 objects instead of 700: each young collection promotes the
    # objects of the connections in flight, so with thousands of connections held open the old
    # generation filled ten times faster and its collections (every live connection walked) came
    # back as a p99 of 66 ms at 64 concurrent with 9,700 held; 16 ms with this (bench/growth.py).
    gc.set_threshold(10_000, 10, 10)
    starting = False
    # Freed C-heap pages back to the system after bursts (tpemu.net.heap; issue 16's RSS figure).
    from tpemu.net.heap import HeapTrimmer

    trimmer = HeapTrimmer()
    trimmer.start()
    await stop.wait()
    await trimmer.close()
    if proxy is not None:
        log.info("shutting down; routed %s, refused %s", dict(proxy.door.stats.routed),
                 dict(proxy.door.stats.refused))
    await shutdown()
    return 0


def _built(module: str) -> bool:
    """Whether ``tpemu.agent.<module>`` is part of this build (roles a config merely enables are
    skipped, with a log line, when their service is not)."""
    import importlib.util

    found = importlib.util.find_spec(f"tpemu.agent.{module}") is not None
    if not found:
        log.warning("tpemu.agent.%s is not part of this build: its role is not started", module)
    return found


def _read_token(token: str) -> str:
    if token.startswith("/"):
        try:
            with open(token, encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return token
    return token


def _has_identities(cfg: Config, roles: tuple[str, ...]) -> bool:
    from tpemu import authclient

    return all(authclient.HostIdentity.load(cfg.data_dir() / role) is not None for role in roles)


def banner(cfg: Config, proxy: Any, all_in_one: bool, auth: Any = None, agent: Any = None) -> str:
    from tpemu.proxy.decide import ListenerKind
    from tpemu.proxy.route import RouteKind

    head = (f"tpemu {__version__}: Teleport {TELEPORT_VERSION} network emulation, cluster "
            f"{cfg.auth_service.cluster_name!r}" + (" (all-in-one)" if all_in_one else ""))
    auth_lines = []
    if auth is not None:
        auth_lines = [f"  auth:      {auth.addr} (mTLS API; backend {cfg.teleport.storage.type}; "
                      f"CA pin {auth.ca_pin})"]
    agent_lines = []
    if agent is not None:
        where = (f"reverse tunnels to {agent.opts.proxy_server}" if agent.tunnels else
                 f"direct-dial on {agent.direct_addr}")
        offered = ", ".join(f"{o.resource.kind} {o.resource.name}" + (f" ({o.resource.protocol})"
                                                                       if o.resource.protocol else "")
                            for offers in agent.offers.values() for o in offers)
        agent_lines = [f"  agent:     {agent.nodename}: {offered or 'nothing'}; {where}"]
    if proxy is None:
        lines = [head, f"  data dir:  {cfg.data_dir()}", *auth_lines, *agent_lines]
        if auth is not None:
            lines += ["  try:", "    tpemu tokens add --type=node,db        # then join agents with it",
                      "    tpemu users add alice --logins root --password-file FILE"]
        return "\n".join(lines)
    web = proxy.info.bound[ListenerKind.WEB]
    ca = proxy.tls_files.ca
    mode = "multiplex (TLS routing: every protocol on the web port)" if cfg.multiplex else "separate listeners"
    lines = [head, f"  mode:      {mode}", f"  data dir:  {proxy.data_dir}", f"  cluster CA {ca}", *auth_lines,
             *agent_lines, "  listeners:"]
    for listener in proxy.door.listeners:
        accepts = ", ".join(sorted(p.value for p in listener.policy.accepts)) or "server speaks first"
        lines.append(f"    {listener.kind.value:<9} {listener.addr!s:<22} {accepts}")
    serving = proxy.served()
    served = sorted(k.value for k in serving)
    missing = sorted(k.value for k in RouteKind if k not in serving and k is not RouteKind.REJECT)
    lines.append(f"  serving:   {', '.join(served)}")
    lines.append(f"  answered 'not available in this cluster': {', '.join(missing)}")
    if cfg.tpemu.proxy_service.passthrough:
        lines.append("  pass-through rules:")
        for rule in cfg.tpemu.proxy_service.passthrough:
            lines.append(f"    {rule.name or '-'}: {rule.protocol} alpn={list(rule.alpn)} sni={list(rule.sni)} → "
                         f"{rule.target}")
    lines += [
        "  try:",
        f"    curl --cacert {ca} https://{web}/webapi/ping      (or: curl -sk https://{web}/webapi/ping)",
        f"    tpemu ping --proxy {web}",
        f"    openssl s_client -connect {web} -alpn teleport-proxy-ssh </dev/null",
        "    tpemu inspect 5353482d322e302d4f70656e5353480d0a    # how 'SSH-2.0-OpenSSH' would be routed",
    ]
    if auth is not None:
        lines += [
            "    tpemu users add alice --logins root,alice --db-users alice --db-names postgres,app "
            "--kube-groups system:masters  # asks a password",
            f"    tpemu login --proxy {web} --user alice --ca {ca}",
            "    tpemu status",
        ]
        if agent is not None:
            node = agent.nodename
            lines += [
                "    tpemu ls                                   # the SSH nodes, with their last heartbeat",
                f"    tpemu ssh alice@{node} uname -a",
                f"    tpemu config >> ~/.ssh/config && ssh alice@{node}.{cfg.auth_service.cluster_name}   # OpenSSH",
                "    tpemu db ls",
                "    tpemu db connect pg --db-user alice --db-name postgres",
            ]
            resources = {o.resource.kind: o.resource.name for offers in agent.offers.values() for o in offers}
            if "kube" in resources:
                lines += [f"    tpemu kube login {resources['kube']} && kubectl get ns   # kubectl through the proxy"]
            if "app" in resources:
                lines += [f"    tpemu apps login {resources['app']}   # prints a curl command with the app certificate"]
    return "\n".join(lines)
