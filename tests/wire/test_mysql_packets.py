"""tpemu.wire.mysql: framing, connection-phase packets, command packets, responses, scrambles.

Provenance of the vectors:
* MARIADB_GREETING was read from mariadbd 10.11.19 (Debian 12 package) over its Unix socket on
  this machine;
* PYMYSQL_/MARIADB_ client packets were captured on this machine from PyMySQL 1.2.4 and the
  mariadb 10.11 CLI (libmariadb 3.3.20) talking to the emulated server, by wrapping its reads;
* the OK/EOF/ERR and ColumnDefinition41 hex is the example in the MySQL protocol documentation
  ("OK_Packet", "EOF_Packet", "ERR_Packet", "Text Resultset");
* the scrambles are checked against PyMySQL's own implementation (``pymysql._auth``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu.wire import LimitExceeded, WireError
from tpemu.wire import mysql as my

MARIADB_GREETING = bytes.fromhex(
    "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100030000005b417135532353580"
    "0fef7080200ff81150000000000001d000000417b6b277d604b346374407d006d7973716c5f6e61746976655f70617373776f726400")
PYMYSQL_RESPONSE = bytes.fromhex(
    "8b000001"
    "0da23a00ffffff002d0000000000000000000000000000000000000000000000616c6963650014e190a9dfa20104fa0faca1ecefacdf2e"
    "70384e6b6462006d7973716c5f6e61746976655f70617373776f726400360c5f636c69656e745f6e616d650770796d7973716c0f5f636c"
    "69656e745f76657273696f6e05312e322e34045f706964053231373639")
MARIADB_RESPONSE = bytes.fromhex(
    "d4000001"
    "8da2bf0000001000210000000000000000000000000000000000000000000000616c6963650014aec4b1aecb74262ab9184c9212949654"
    "7483f13a6462006d7973716c5f6e61746976655f70617373776f7264007f035f6f73054c696e75780c5f636c69656e745f6e616d650a6c"
    "69626d617269616462045f7069640532313738380f5f636c69656e745f76657273696f6e06332e332e3230095f706c6174666f726d0678"
    "38365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31")
PYMYSQL_SET_NAMES = bytes.fromhex("12000000" "03534554204e414d455320757466386d6234")
PYMYSQL_PING = bytes.fromhex("01000000" "0e")
PYMYSQL_INIT_DB = bytes.fromhex("03000000" "026462")
MARIADB_QUIT = bytes.fromhex("01000000" "01")


def three_ways(data: bytes) -> my.Packet:
    whole = my.parse_packet(data)
    assert whole is not None and whole.size == len(data)
    for i in range(len(data)):
        assert my.parse_packet(data[:i]) is None
    assert my.parse_packet(data + b"\x05\x00\x00\x00junk") == whole
    return whole


def test_greeting_from_mariadbd() -> None:
    g = my.parse_handshake_v10(three_ways(MARIADB_GREETING).payload)
    assert g.server_version == "5.5.5-10.11.19-MariaDB-0+deb12u1"
    assert g.connection_id == 3
    assert g.auth_plugin == my.NATIVE_PASSWORD
    assert len(g.nonce) == 20
    assert g.capabilities & my.CLIENT_PROTOCOL_41 and g.capabilities & my.CLIENT_PLUGIN_AUTH


def test_our_greeting_round_trips() -> None:
    nonce = bytes(range(0x30, 0x44))
    caps = my.CLIENT_PROTOCOL_41 | my.CLIENT_PLUGIN_AUTH | my.CLIENT_SSL | my.CLIENT_DEPRECATE_EOF
    payload = my.encode_handshake_v10("8.0.36-tpemu", 7, nonce, caps, my.CACHING_SHA2_PASSWORD)
    g = my.parse_handshake_v10(payload)
    assert (g.server_version, g.connection_id, g.nonce, g.capabilities, g.auth_plugin) == (
        "8.0.36-tpemu", 7, nonce, caps, my.CACHING_SHA2_PASSWORD)


def test_handshake_response_from_pymysql() -> None:
    resp = my.parse_handshake_response(three_ways(PYMYSQL_RESPONSE).payload)
    assert isinstance(resp, my.HandshakeResponse)
    assert (resp.username, resp.database, resp.auth_plugin) == ("alice", "db", my.NATIVE_PASSWORD)
    assert len(resp.auth_response) == 20
    assert ("_client_name", "pymysql") in resp.attributes
    assert my.encode_handshake_response(resp) == PYMYSQL_RESPONSE[4:]


def test_handshake_response_from_mariadb_cli() -> None:
    resp = my.parse_handshake_response(three_ways(MARIADB_RESPONSE).payload)
    assert isinstance(resp, my.HandshakeResponse)
    assert (resp.username, resp.database, resp.auth_plugin) == ("alice", "db", my.NATIVE_PASSWORD)
    assert dict(resp.attributes)["_client_name"] == "libmariadb"
    assert dict(resp.attributes)["program_name"] == "mysql"


def test_ssl_request_is_the_32_byte_head() -> None:
    head = PYMYSQL_RESPONSE[4:36]
    caps = int.from_bytes(head[:4], "little") | my.CLIENT_SSL
    req = my.parse_handshake_response(caps.to_bytes(4, "little") + head[4:])
    assert isinstance(req, my.SSLRequest) and req.capabilities & my.CLIENT_SSL
    with pytest.raises(my.MySQLError):  # without CLIENT_SSL a bare head is a truncated response
        my.parse_handshake_response(head)


def test_pre_41_clients_are_refused() -> None:
    with pytest.raises(my.MySQLError, match="not supported by the tpemu emulator"):
        my.parse_handshake_response(b"\x85\xa4\xff\xff\x00alice\x00")  # HandshakeResponse320


@pytest.mark.parametrize("data,code,arg", [
    (PYMYSQL_SET_NAMES, my.COM_QUERY, b"SET NAMES utf8mb4"),
    (PYMYSQL_PING, my.COM_PING, b""),
    (PYMYSQL_INIT_DB, my.COM_INIT_DB, b"db"),
    (MARIADB_QUIT, my.COM_QUIT, b""),
])
def test_commands(data: bytes, code: int, arg: bytes) -> None:
    cmd = my.parse_command(three_ways(data).payload)
    assert (cmd.code, cmd.arg) == (code, arg)
    assert cmd.name.startswith("COM_")


def test_packet_size_cap_applies_to_the_header() -> None:
    with pytest.raises(LimitExceeded):
        my.parse_packet(b"\x00\x00\x20\x00")  # 2 MiB payload announced
    with pytest.raises(LimitExceeded):
        my.parse_packet(b"\xff\xff\xff\x00", limit=my.MAX_PAYLOAD)  # multi-packet payloads are not accepted
    assert my.parse_packet(b"\x00\x00\x20\x00", limit=4 << 20) is None


def test_responses_match_the_documentation_examples() -> None:
    assert my.encode_packet(2, my.encode_ok()) == bytes.fromhex("0700000200000002000000")
    assert my.encode_packet(5, my.encode_eof()) == bytes.fromhex("05000005fe00000200")
    assert my.encode_packet(1, my.encode_err_payload(1096, "No tables used")) == bytes.fromhex(
        "17000001ff48042348593030304e6f207461626c65732075736564")
    col = my.ColumnDefinition("@@version_comment", my.TYPE_VAR_STRING, 28, charset=8, decimals=0x1F)
    assert my.encode_packet(2, my.encode_column_definition(col)) == bytes.fromhex(
        "27000002036465660000001140407665727369" "6f6e5f636f6d6d656e74000c08001c000000fd00001f0000")
    assert my.encode_text_row([b"1", None, b""]) == b"\x011\xfb\x00"
    assert my.encode_ok(header=0xFE)[:1] == b"\xfe"


def test_lenenc_ints() -> None:
    for n, enc in ((0, "00"), (250, "fa"), (251, "fcfb00"), (65536, "fd000001"), (1 << 24, "fe0000000100000000")):
        assert my.encode_lenenc_int(n).hex() == enc


def test_auth_switch_and_more_data() -> None:
    assert my.encode_auth_switch("mysql_native_password", b"n" * 20 + b"\x00") == (
        b"\xfemysql_native_password\x00" + b"n" * 20 + b"\x00")
    assert my.encode_auth_more_data(b"\x04") == b"\x01\x04"


pymysql_auth = pytest.importorskip("pymysql._auth")


@pytest.mark.parametrize("password", ["pencil", "pässwörd", ""])
def test_scrambles_agree_with_pymysql(password: str) -> None:
    nonce = b"abcdefghij0123456789"
    native = pymysql_auth.scramble_native_password(password.encode(), nonce)
    assert my.native_password_scramble(password, nonce) == native
    assert my.verify_native_password(native, nonce, password)
    assert not my.verify_native_password(native, nonce, password + "x")
    sha2 = pymysql_auth.scramble_caching_sha2(password.encode(), nonce)
    assert my.caching_sha2_scramble(password, nonce) == sha2
    assert my.verify_caching_sha2(sha2, nonce, password)
    assert not my.verify_caching_sha2(sha2, nonce, password + "x")


def test_rsa_xor_is_undone() -> None:
    nonce = b"abcdefghij0123456789"
    xored = pymysql_auth._xor_password(b"secret\x00", nonce)
    assert my.unxor_password(xored, nonce) == b"secret\x00"


def test_text_values() -> None:
    from datetime import date, datetime
    from decimal import Decimal

    assert my.encode_text_value(True) == b"1"
    assert my.encode_text_value(2.5) == b"2.5"
    assert my.encode_text_value(Decimal("1E+3")) == b"1000"
    assert my.encode_text_value(datetime(2024, 1, 2, 3, 4, 5)) == b"2024-01-02 03:04:05"
    assert my.encode_text_value(date(2024, 1, 2)) == b"2024-01-02"


def _only_wire_errors(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except WireError:
        pass


@given(st.binary(max_size=80))
def test_fuzz_parse_packet(data: bytes) -> None:
    _only_wire_errors(lambda: my.parse_packet(data, limit=64))


@given(st.binary(max_size=200))
def test_fuzz_handshake_response(payload: bytes) -> None:
    _only_wire_errors(lambda: my.parse_handshake_response(payload))


@given(st.binary(min_size=36, max_size=120))
def test_fuzz_handshake_response_41(tail: bytes) -> None:
    caps = (my.CLIENT_PROTOCOL_41 | my.CLIENT_PLUGIN_AUTH | my.CLIENT_CONNECT_WITH_DB | my.CLIENT_CONNECT_ATTRS
            | my.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
    _only_wire_errors(lambda: my.parse_handshake_response(caps.to_bytes(4, "little") + tail))


@given(st.binary(max_size=120))
def test_fuzz_greeting_and_command(payload: bytes) -> None:
    _only_wire_errors(lambda: my.parse_handshake_v10(payload))
    _only_wire_errors(lambda: my.parse_command(payload))
