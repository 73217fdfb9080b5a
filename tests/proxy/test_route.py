"""The route table and the pure decision step (ALPN/SNI order, pass-through rules, listeners)."""

from __future__ import annotations

import pytest

from tpemu import testing
from tpemu.config import Addr, PassthroughRule, from_dict
from tpemu.proxy.decide import ListenerKind, ListenerPolicy, NeedMore, ProxyHeaderSeen, Refused, Routed, classify
from tpemu.proxy.route import RouteKind, RouteTable
from tpemu.proxy.service import listener_plan
from tpemu.wire import alpn as names
from tpemu.wire import postgres, proxy_protocol, tls
from tpemu.wire.sniff import Protocol

TABLE = RouteTable()
WEB = ListenerPolicy(ListenerKind.WEB, frozenset({Protocol.TLS, Protocol.SSH, Protocol.HTTP, Protocol.POSTGRES}))


def hello(sni: str | None = None, alpn: tuple[str, ...] = ()) -> tls.ClientHello:
    parsed = tls.parse_client_hello(testing.client_hello(sni, alpn))
    assert parsed is not None
    return parsed


@pytest.mark.parametrize("alpn_name", sorted(names.ALPN_SERVICES))
def test_every_teleport_alpn_name_has_a_route(alpn_name: str) -> None:
    route = TABLE.for_tls(hello("x.example", (alpn_name,)))
    info = names.ALPN_SERVICES[alpn_name]
    assert route.kind is not RouteKind.REJECT and route.alpn == alpn_name
    assert route.db_protocol == info.db_protocol and route.ping == info.ping
    assert alpn_name in route.why


def test_table_holds_the_names_of_teleport_networking_md() -> None:
    for name in ["teleport-proxy-ssh", "teleport-proxy-ssh-grpc", "teleport-reversetunnel",
                 "teleport-auth@", "teleport-proxy-grpc", "teleport-proxy-grpc-mtls",
                 "teleport-tcp", "teleport-postgres", "teleport-mysql", "teleport-mongodb", "teleport-oracle",
                 "teleport-redis", "teleport-sqlserver", "teleport-snowflake", "teleport-cassandra",
                 "teleport-elasticsearch", "teleport-opensearch", "teleport-dynamodb", "teleport-clickhouse",
                 "teleport-spanner", "teleport-postgres-ping", "teleport-tcp-ping", "http/1.1", "h2", "postgresql"]:
        assert name in names.ALPN_SERVICES, name
    # ProtocolReverseTunnelV2 is "only used on the client side" (protocols.go): no handler has it.
    assert "teleport-reversetunnelv2" not in names.ALPN_SERVICES


# Teleport's SupportedProtocols, spelled out from lib/srv/alpnproxy/common/protocols.go
# (WithPingProtocols over [http/1.1, h2, proxy-ssh, reversetunnel, auth@, tcp, proxy-ssh-grpc,
# proxy-grpc, proxy-grpc-mtls] + DatabaseProtocols): the -ping forms first.
_DBS = ["postgres", "mysql", "mongodb", "oracle", "redis", "sqlserver", "snowflake", "cassandra", "elasticsearch",
        "opensearch", "dynamodb", "clickhouse", "spanner"]
TELEPORT_SUPPORTED = (["teleport-tcp-ping"] + [f"teleport-{d}-ping" for d in _DBS]
                      + ["http/1.1", "h2", "teleport-proxy-ssh", "teleport-reversetunnel", "teleport-auth@",
                         "teleport-tcp", "teleport-proxy-ssh-grpc", "teleport-proxy-grpc", "teleport-proxy-grpc-mtls"]
                      + [f"teleport-{d}" for d in _DBS])


def test_supported_protocols_are_teleports_36_in_its_order() -> None:
    assert len(TELEPORT_SUPPORTED) == 36
    assert list(names.SUPPORTED_PROTOCOLS) == TELEPORT_SUPPORTED
    for name in TELEPORT_SUPPORTED:
        assert names.lookup(name) is not None, name


@pytest.mark.parametrize(("offered", "chosen"), [
    (["teleport-postgres", "teleport-postgres-ping"], "teleport-postgres-ping"),   # server order
    (["h2", "http/1.1"], "http/1.1"),           # Teleport lists http/1.1 first (the Chrome comment)
    (["teleport-mysql-8.0.36", "teleport-mysql"], "teleport-mysql"),
    (["teleport-auth@", "h2"], "h2"),
    ([], None),
])
def test_negotiate_is_go_negotiate_alpn_in_server_order(offered: list[str], chosen: str | None) -> None:
    # crypto/tls handshake_server.go negotiateALPN, with NextProtos = SupportedProtocols.
    assert names.negotiate(names.SUPPORTED_PROTOCOLS, offered) == chosen


def test_negotiate_without_overlap_is_an_error_except_the_http11_fallback() -> None:
    with pytest.raises(names.NoOverlap, match="unsupported application protocols"):
        names.negotiate(names.SUPPORTED_PROTOCOLS, ["teleport-mysql-8.0.36"])
    assert names.negotiate(("h2",), ["http/1.1"]) is None


def test_auth_by_prefix_with_the_cluster_route() -> None:
    # lib/service/service.go: MatchByALPNPrefix(ProtocolAuth); api/client ConfigureALPN sends
    # teleport-auth@<hex(cluster)>.teleport.cluster.local before the inner protocol.
    offered = names.auth_protocol("example.teleport.sh")
    assert offered == "teleport-auth@6578616d706c652e74656c65706f72742e7368.teleport.cluster.local"
    r = TABLE.for_tls(hello(None, (offered, "h2")))
    assert r.kind is RouteKind.AUTH and r.server_alpn is None  # ForwardTLS: Auth negotiates


def test_client_order_first_known_wins() -> None:
    assert TABLE.for_tls(hello(None, ("foo", "teleport-proxy-ssh", "h2"))).kind is RouteKind.SSH_PROXY
    assert TABLE.for_tls(hello(None, ("h2", "teleport-proxy-ssh"))).kind is RouteKind.WEB
    v2 = TABLE.for_tls(hello(None, ("teleport-reversetunnelv2", "teleport-reversetunnel")))
    assert v2.kind is RouteKind.REVERSE_TUNNEL


def test_mysql_version_prefix_and_ping() -> None:
    r = TABLE.for_tls(hello(None, ("teleport-mysql-8.0.36",)))
    assert (r.kind, r.db_protocol) == (RouteKind.DATABASE, "mysql")
    r = TABLE.for_tls(hello(None, ("teleport-redis-ping",)))
    assert (r.db_protocol, r.ping) == ("redis", True)


def test_no_alpn_is_web_unknown_alpn_is_rejected_with_teleports_message() -> None:
    assert TABLE.for_tls(hello("a.example")).kind is RouteKind.WEB
    r = TABLE.for_tls(hello("a.example", ("foo", "bar")))
    assert r.kind is RouteKind.REJECT
    # proxy.go getHandleDescBasedOnALPNVal: trace.BadParameter("... %q", clientProtocols)
    assert r.why == 'failed to find ALPN handler based on received client supported protocols ["foo" "bar"]'


def test_kube_sni_before_alpn() -> None:
    assert TABLE.for_tls(hello("kube-teleport-proxy-alpn.tpemu.local", ("h2",))).kind is RouteKind.KUBE
    assert TABLE.for_tls(hello("kube.example.com", ("h2",))).kind is RouteKind.KUBE


def test_passthrough_rules_first_in_config_order() -> None:
    rules = (
        PassthroughRule(name="app", sni=("app.example.com", "*.apps.example.com"), target=Addr("127.0.0.1", 1)),
        PassthroughRule(name="pg", alpn=("teleport-postgres",), target=Addr("127.0.0.1", 2), send_proxy="v2"),
        PassthroughRule(name="both", alpn=("h2",), sni=("grpc.example.com",), target=Addr("127.0.0.1", 3)),
        PassthroughRule(name="sshd", protocol="ssh", target=Addr("127.0.0.1", 22)),
    )
    t = RouteTable(rules)
    assert t.for_tls(hello("app.example.com", ("teleport-postgres",))).name == "passthrough/app"
    assert t.for_tls(hello("x.apps.example.com")).name == "passthrough/app"
    assert t.for_tls(hello("apps.example.com")).kind is RouteKind.WEB  # *.suffix does not match the bare suffix
    pg = t.for_tls(hello("db.example.com", ("teleport-postgres",)))
    assert (pg.name, pg.target, pg.send_proxy) == ("passthrough/pg", Addr("127.0.0.1", 2), "v2")
    assert t.for_tls(hello("grpc.example.com", ("h2",))).name == "passthrough/both"
    assert t.for_tls(hello("other.example.com", ("h2",))).kind is RouteKind.WEB
    assert t.for_plain(Protocol.SSH).name == "passthrough/sshd"
    assert t.for_plain(Protocol.HTTP).kind is RouteKind.WEB_PLAIN_HTTP
    assert any(r == "passthrough/pg" for _, r in t.describe())


def test_classify_tls_ssh_http_postgres() -> None:
    data = testing.client_hello("x.example", ("teleport-proxy-ssh",))
    out = classify(data, WEB, TABLE)
    assert isinstance(out, Routed) and out.route.kind is RouteKind.SSH_PROXY and out.hello is not None
    assert isinstance(classify(data[:100], WEB, TABLE), NeedMore)
    assert isinstance(classify(b"SSH-2.0-x\r\n", WEB, TABLE), Routed)
    out = classify(postgres.SSL_REQUEST, WEB, TABLE)
    assert isinstance(out, Routed) and out.route.db_protocol == "postgres"
    out = classify(b"GET / HTTP/1.1\r\n", WEB, TABLE)
    assert isinstance(out, Routed) and out.route.kind is RouteKind.WEB_PLAIN_HTTP


def test_classify_refusals_carry_answers() -> None:
    out = classify(testing.client_hello(None, ("nope",)), WEB, TABLE)
    assert isinstance(out, Refused) and out.category == "unknown-alpn"
    assert out.answer == b""  # Teleport reads the hello through readOnlyConn (conn.go): no alert
    # A prefix match whose server speaks none of the offered names: Go's no_application_protocol.
    out = classify(testing.client_hello(None, ("teleport-mysql-8.0.36",)), WEB, TABLE)
    assert isinstance(out, Refused) and out.category == "unsupported-alpn"
    assert out.answer == tls.encode_alert(tls.ALERT_NO_APPLICATION_PROTOCOL)
    out = classify(b"\x16\x03\x01\x00\x00", WEB, TABLE)
    assert isinstance(out, Refused) and out.category == "bad-client-hello" and out.answer[:1] == b"\x15"
    out = classify(b"hello world", WEB, TABLE)
    assert isinstance(out, Refused) and out.category == "unknown-protocol"


def test_proxy_header_off_on_and_twice() -> None:
    header = proxy_protocol.encode_v2(("192.0.2.9", 5000), ("127.0.0.1", 3080))
    out = classify(header, WEB, TABLE)
    assert isinstance(out, Refused) and out.category == "proxy-protocol-off" and "proxy_protocol is off" in out.reason
    on = ListenerPolicy(ListenerKind.WEB, WEB.accepts, proxy_protocol=True)
    out = classify(header + b"SSH-2.0-x\r\n", on, TABLE)
    assert isinstance(out, ProxyHeaderSeen) and out.header.src == ("192.0.2.9", 5000)
    assert isinstance(classify(header, on, TABLE, proxy_seen=True), Refused)


def test_tls_only_listener_says_what_go_says() -> None:
    # Go's crypto/tls text everywhere; the HTTP 400 only where Teleport runs a net/http server
    # (the Kubernetes listener), not on the gRPC peer listener.
    peer = ListenerPolicy(ListenerKind.PEER, frozenset({Protocol.TLS}))
    out = classify(b"GET / HTTP/1.1\r\n", peer, TABLE)
    assert isinstance(out, Refused) and out.reason.startswith("tls: first record does not look like a TLS handshake")
    assert out.answer == b""
    kube = ListenerPolicy(ListenerKind.KUBE, frozenset({Protocol.TLS}))
    out = classify(b"GET / HTTP/1.1\r\n", kube, TABLE)
    assert isinstance(out, Refused) and out.answer.startswith(b"HTTP/1.0 400 Bad Request")
    out = classify(b"\x01\x02\x03", peer, TABLE)
    assert isinstance(out, Refused) and out.reason.startswith("tls: first record does not look like a TLS handshake")


def test_listener_plans() -> None:
    multiplex = listener_plan(from_dict({}))
    assert [p.kind for p, _ in multiplex] == [ListenerKind.WEB]
    separate = listener_plan(from_dict({
        "auth_service": {"proxy_listener_mode": "separate"},
        "proxy_service": {"postgres_listen_addr": ":5432", "mysql_listen_addr": "127.0.0.1:3036",
                          "mongo_listen_addr": ":27017", "peer_listen_addr": ":3021"},
        "tpemu": {"proxy_service": {"redis_listen_addr": ":6379"}}}))
    kinds = {p.kind: (p, a) for p, a in separate}
    assert set(kinds) == {ListenerKind.WEB, ListenerKind.SSH, ListenerKind.TUNNEL, ListenerKind.PEER,
                          ListenerKind.POSTGRES, ListenerKind.MYSQL, ListenerKind.MONGO, ListenerKind.REDIS}
    assert kinds[ListenerKind.SSH][1] == Addr("127.0.0.1", 3023) and kinds[ListenerKind.TUNNEL][1].port == 3024
    assert Protocol.POSTGRES not in kinds[ListenerKind.WEB][0].accepts
    assert Protocol.SSH not in kinds[ListenerKind.WEB][0].accepts
    assert kinds[ListenerKind.MYSQL][0].server_first is not None
    assert kinds[ListenerKind.MONGO][0].tls_only
