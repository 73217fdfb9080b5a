"""Reverse-tunnel frames: dial requests/responses and heartbeats (whole, byte by byte, trailing, fuzz)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import feed_three_ways
from tpemu.wire import LimitExceeded, WireError
from tpemu.wire import tunnel as t


def test_dial_request_round_trip_keeps_teleport_field_names() -> None:
    req = t.DialRequest(address="@local-node", server_id="1234.tpemu.local", conn_type="node",
                        client_src_addr="192.0.2.1:5000", client_dst_addr="127.0.0.1:3080")
    data = req.encode()
    obj, used = feed_three_ways(t.decode_frame, data, same=lambda a, b: a == b)
    assert used == len(data)
    assert obj == {"address": "@local-node", "server_id": "1234.tpemu.local", "conn_type": "node",
                   "client_src_addr": "192.0.2.1:5000", "client_dst_addr": "127.0.0.1:3080"}
    assert t.DialRequest.from_json(obj) == req
    db = t.DialRequest(conn_type="db", name="pg", identity={"username": "alice"})
    assert t.DialRequest.from_json(t.decode_frame(db.encode())[0]) == db  # type: ignore[index]


@pytest.mark.parametrize("obj,message", [
    ({"conn_type": "node"}, "serverID or address required"),
    ({"conn_type": "bogus", "address": "x"}, "unknown conn_type"),
    ({"address": 5}, "must be a string"),
    ({"address": "x", "identity": []}, "must be an object"),
])
def test_dial_request_errors(obj: dict[str, object], message: str) -> None:
    with pytest.raises(t.TunnelProtocolError, match=message):
        t.DialRequest.from_json(obj)


def test_response_and_heartbeat() -> None:
    assert t.DialResponse.from_json(t.decode_frame(t.DialResponse(False, "no such db").encode())[0]) == \
        t.DialResponse(False, "no such db")  # type: ignore[index]
    hb = t.Heartbeat("h1", "node1", "17.0.0", (t.Resource("node", "node1", {"env": "dev"}, addr="127.0.0.1:3022"),
                                              t.Resource("db", "pg", protocol="postgres")))
    obj = t.decode_frame(hb.encode())
    assert obj is not None and t.Heartbeat.from_json(obj[0]) == hb
    with pytest.raises(t.TunnelProtocolError, match="expected a heartbeat"):
        t.Heartbeat.from_json({"type": "other"})
    with pytest.raises(t.TunnelProtocolError, match="labels"):
        t.Resource.from_json({"kind": "db", "name": "x", "labels": {"a": 1}})


def test_frame_errors_and_cap() -> None:
    with pytest.raises(LimitExceeded):
        t.decode_frame((t.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(t.TunnelProtocolError, match="not JSON"):
        t.decode_frame(b"\x00\x00\x00\x02{x")
    with pytest.raises(t.TunnelProtocolError, match="not a JSON object"):
        t.decode_frame(b"\x00\x00\x00\x02[]")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz(data: bytes) -> None:
    try:
        got = t.decode_frame(data)
        if got is not None:
            t.DialRequest.from_json(got[0])
    except WireError:
        pass
