"""``tpemu inspect``: explain, step by step, how the router would treat a captured prefix (pure).

It runs the router's own decision function (:func:`tpemu.proxy.decide.classify`) on the bytes,
consuming a PROXY header the way the front door does, so the explanation cannot drift from the
behaviour.
"""

from __future__ import annotations

import dataclasses

from tpemu.config import Config
from tpemu.proxy.decide import ListenerKind, NeedMore, ProxyHeaderSeen, Refused, Routed, classify
from tpemu.proxy.route import RouteTable
from tpemu.proxy.service import listener_plan
from tpemu.wire import sniff, tls
from tpemu.wire.errors import WireError

EXIT_ROUTED, EXIT_REFUSED, EXIT_NEED_MORE = 0, 2, 3


def explain(data: bytes, cfg: Config, listener: str = "web", force_proxy_protocol: bool = False) -> tuple[str, int]:
    """The explanation text and an exit code (0 routed, 2 refused, 3 incomplete)."""
    try:
        kind = ListenerKind(listener)
    except ValueError:
        kinds = ", ".join(k.value for k in ListenerKind)
        return f"unknown listener {listener!r} (one of: {kinds})", EXIT_REFUSED
    plan = {p.kind: p for p, _ in listener_plan(cfg)}
    policy = plan.get(kind)
    if policy is None:
        return (f"the {kind.value} listener is not opened with this config "
                f"(proxy_listener_mode: {cfg.auth_service.proxy_listener_mode}); opened: "
                + ", ".join(k.value for k in plan), EXIT_REFUSED)
    if force_proxy_protocol:
        policy = dataclasses.replace(policy, proxy_protocol=True)
    table = RouteTable(cfg.tpemu.proxy_service.passthrough)
    accepts = ", ".join(sorted(p.value for p in policy.accepts)) or "server speaks first"
    lines = [f"input:    {len(data)} bytes: {data[:16].hex(' ')}{' …' if len(data) > 16 else ''}",
             f"listener: {kind.value} (accepts {accepts}; PROXY protocol "
             f"{ {True: 'on', False: 'off', None: 'unset'}[policy.proxy_protocol] })"]
    if policy.server_first is not None and not policy.proxy_protocol:
        lines.append(f"route:    {policy.server_first.name}: {policy.server_first.why} (the server speaks first; "
                     "nothing is read)")
        return "\n".join(lines), EXIT_ROUTED
    offset = 0
    seen_header = False
    step = 1
    while True:
        prefix = data[offset:]
        try:
            proto = sniff.sniff(prefix)
            lines.append(f"step {step}:   sniff at byte {offset} → {proto.value if proto else 'undecided'}")
        except WireError as exc:
            lines.append(f"step {step}:   sniff at byte {offset} → {exc}")
        step += 1
        outcome = classify(prefix, policy, table, cfg.tpemu.proxy_service.max_client_hello, seen_header)
        if isinstance(outcome, ProxyHeaderSeen):
            h = outcome.header
            src = f"{h.src[0]}:{h.src[1]}" if h.src else "-"
            dst = f"{h.dst[0]}:{h.dst[1]}" if h.dst else "-"
            tlvs = f", TLVs {[hex(k) for k, _ in h.tlvs]}" if h.tlvs else ""
            lines.append(f"step {step}:   PROXY v{h.version} header ({h.length} bytes, consumed): {h.command.name} "
                         f"{h.family.value} client {src} → {dst}{tlvs}")
            step += 1
            offset += h.length
            seen_header = True
            if policy.server_first is not None:
                lines.append(f"route:    {policy.server_first.name}: {policy.server_first.why}")
                return "\n".join(lines), EXIT_ROUTED
            continue
        hello = outcome.hello if isinstance(outcome, Routed | Refused) else None
        if hello is not None:
            versions = ", ".join(tls.version_name(v) for v in hello.versions)
            lines.append(f"step {step}:   ClientHello in {hello.records} record(s), {hello.hello_end} bytes: "
                         f"SNI={hello.sni or '(none)'} ALPN={list(hello.alpn)} versions=[{versions}]")
            step += 1
        if isinstance(outcome, NeedMore):
            lines.append(f"result:   incomplete: the router would wait for more bytes after these {outcome.seen} "
                         f"(until sniff_timeout, {cfg.tpemu.proxy_service.sniff_timeout:g}s)")
            return "\n".join(lines), EXIT_NEED_MORE
        if isinstance(outcome, Refused):
            lines.append(f"result:   refused ({outcome.category}): {outcome.reason}")
            if outcome.answer:
                lines.append(f"answer:   {outcome.answer[:32].hex(' ')} sent before closing")
            return "\n".join(lines), EXIT_REFUSED
        assert isinstance(outcome, Routed)
        route = outcome.route
        lines.append(f"route:    {route.name}")
        lines.append(f"why:      {route.why}")
        if route.target is not None:
            lines.append(f"target:   {route.target} (bytes spliced untouched from byte {offset})"
                         + (f", PROXY {route.send_proxy} header sent first" if route.send_proxy else ""))
        return "\n".join(lines), EXIT_ROUTED
