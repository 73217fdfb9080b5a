"""``teleport-transport-dial`` payloads, parsed as Teleport's ``lib/reversetunnel/transport.go``
``parseDialReq`` and ``api/utils/sshutils`` ``DialReq.CheckAndSetDefaults`` do, with a size cap."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu.wire import WireError
from tpemu.wire import tunnel as tw
from tpemu.wire.errors import LimitExceeded


def test_dialreq_json_round_trip_with_teleports_field_names() -> None:
    req = tw.DialRequest(address="@local-node", server_id="h1.tpemu.local", conn_type="node",
                         client_src_addr="192.0.2.1:5000", client_dst_addr="127.0.0.1:3080")
    payload = req.to_payload()
    # sshutils.DialReq: omitempty everywhere but conn_type.
    assert json.loads(payload) == {"address": "@local-node", "server_id": "h1.tpemu.local", "conn_type": "node",
                                   "client_src_addr": "192.0.2.1:5000", "client_dst_addr": "127.0.0.1:3080"}
    assert tw.parse_dial_payload(payload) == req
    assert json.loads(tw.DialRequest(server_id="x").to_payload()) == {"server_id": "x", "conn_type": "node"}


def test_conn_type_defaults_to_node_and_a_target_is_required() -> None:
    assert tw.parse_dial_payload(b'{"server_id":"h.c"}').conn_type == "node"
    with pytest.raises(tw.TunnelProtocolError, match="serverID or address required"):
        tw.parse_dial_payload(b'{"conn_type":"node"}')
    with pytest.raises(tw.TunnelProtocolError, match="serverID or address required"):
        tw.parse_dial_payload(b"   ")


def test_legacy_payload_is_the_address() -> None:
    # parseDialReq: "if the request is not a *DialReq, it is just a raw string with the target host".
    assert tw.parse_dial_payload(b"node1:3022") == tw.DialRequest(address="node1:3022")
    # A JSON object whose field has the wrong type fails json.Unmarshal in Go: the legacy form.
    assert tw.parse_dial_payload(b'{"address": 5}').address == '{"address": 5}'


def test_bad_payloads_are_specific_errors() -> None:
    with pytest.raises(tw.TunnelProtocolError, match="neither JSON nor UTF-8"):
        tw.parse_dial_payload(b"\xff\xfe\x00{")
    with pytest.raises(LimitExceeded, match="exceeds the 65536-byte limit"):
        tw.parse_dial_payload(b'{"address":"' + b"x" * tw.MAX_DIAL_PAYLOAD + b'"}')
    with pytest.raises(tw.TunnelProtocolError, match="unknown conn_type"):
        tw.parse_dial_payload(b'{"address":"@local-node","conn_type":"bogus"}')


@given(st.binary(max_size=512))
def test_fuzz_dial_payload(data: bytes) -> None:
    try:
        out = tw.parse_dial_payload(data)
    except WireError:
        return
    assert isinstance(out, tw.DialRequest) and (out.address or out.server_id or out.name)
