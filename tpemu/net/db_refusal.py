"""Refuse a database client in its own protocol, then close (glue over the pure codecs).

Used by the proxy (no certificate, no such database, agent offline) and by the Database Service
(RBAC says no, the database server is down), so a client prints a reason rather than a reset:

* Postgres — an ``ErrorResponse`` (severity FATAL; SQLSTATE 28000 denied, 08006 unavailable,
  08P01 protocol), which psql prints as ``FATAL:  <message>``;
* MySQL — an ``ERR`` packet (1045/28000 denied, 1105/HY000 unavailable, 1043/08S01 protocol)
  with the sequence number the client expects next, printed as ``ERROR 1045 (28000): …``;
* Redis — the client's first command is read (bounded), then ``-ERR <message>`` answers it;
* MongoDB — the client's first message (``hello``/``isMaster``, OP_MSG or OP_QUERY) is read,
  then answered with ``{ok: 0, errmsg, code, codeName}`` (13 Unauthorized, 6 HostUnreachable,
  2 BadValue) in the same opcode, which drivers raise as an ``OperationFailure``.

Reads here are bounded in size and time (:data:`READ_TIMEOUT`); a client that sends nothing
readable just gets the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from enum import Enum

from tpemu.net.streams import Stream
from tpemu.wire import WireError, resp
from tpemu.wire import mongo as mongo_wire
from tpemu.wire import mysql as my
from tpemu.wire import postgres as pg

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0
#: The first Redis command or Mongo message a refusal reads: a hello is far smaller.
MAX_FIRST_MESSAGE = 64 * 1024


class Refusal(Enum):
    """Why a client is refused; picks the error code in each protocol."""

    DENIED = "denied"
    UNAVAILABLE = "unavailable"
    PROTOCOL = "protocol"


_PG_CODES = {Refusal.DENIED: "28000", Refusal.UNAVAILABLE: "08006", Refusal.PROTOCOL: "08P01"}
_MYSQL_CODES = {Refusal.DENIED: (my.ER_ACCESS_DENIED, "28000"), Refusal.UNAVAILABLE: (my.ER_UNKNOWN_ERROR, "HY000"),
                Refusal.PROTOCOL: (my.ER_HANDSHAKE_ERROR, "08S01")}
_MONGO_CODES = {Refusal.DENIED: (13, "Unauthorized"), Refusal.UNAVAILABLE: (6, "HostUnreachable"),
                Refusal.PROTOCOL: (2, "BadValue")}


def postgres_error(message: str, why: Refusal) -> bytes:
    return pg.encode_error_response(message, code=_PG_CODES[why])


def mysql_error(message: str, why: Refusal, seq: int) -> bytes:
    code, state = _MYSQL_CODES[why]
    return my.encode_packet(seq, my.encode_err_payload(code, message, state))


class _Buffered:
    """Exact reads over a :class:`~tpemu.net.streams.Stream` (which may be over ping framing)."""

    def __init__(self, stream: Stream, already: bytes) -> None:
        self.stream = stream
        self.buf = bytearray(already)

    async def fill(self) -> bool:
        chunk = await self.stream.read(4096)
        self.buf += chunk
        return bool(chunk)

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self.fill():
                raise asyncio.IncompleteReadError(bytes(self.buf), n)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


async def _read_redis_command(src: _Buffered) -> bool:
    while len(src.buf) < MAX_FIRST_MESSAGE:
        if src.buf:
            try:
                if resp.parse_command(src.buf) is not None:
                    return True
            except WireError:
                return True  # garbage still gets the answer
        if not await src.fill():
            return False
    return True


async def _read_mongo_message(src: _Buffered) -> mongo_wire.Message | None:
    head = await src.readexactly(mongo_wire.HEADER_SIZE)
    header = mongo_wire.parse_header(head, MAX_FIRST_MESSAGE)
    assert header is not None
    body = await src.readexactly(header.length - mongo_wire.HEADER_SIZE)
    parsed = mongo_wire.parse_message(head + body, MAX_FIRST_MESSAGE)
    return parsed[0] if parsed is not None else None


def mongo_error_reply(request: mongo_wire.Message, message: str, why: Refusal) -> bytes:
    code, name = _MONGO_CODES[why]
    doc = {"ok": 0.0, "errmsg": message, "code": code, "codeName": name}
    request_id = request.header.request_id
    if isinstance(request, mongo_wire.OpQuery):
        return mongo_wire.encode_op_reply(1, request_id, [doc])
    return mongo_wire.encode_op_msg(1, request_id, doc)


async def refuse(protocol: str, client: Stream, message: str, why: Refusal = Refusal.DENIED,
                 mysql_seq: int = 0, already: bytes = b"") -> None:
    """Answer in ``protocol`` (``postgres``, ``mysql``, ``redis``, ``mongodb``) and close; never raises.

    ``already`` holds client bytes read before the refusal was decided (the start of a Redis
    command or Mongo message).
    """
    src = _Buffered(client, already)
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            if protocol == "postgres":
                client.write(postgres_error(message, why))
            elif protocol == "mysql":
                client.write(mysql_error(message, why, mysql_seq))
            elif protocol == "redis":
                if await _read_redis_command(src):
                    client.write(resp.encode(resp.Error("ERR " + " ".join(message.split()))))
            elif protocol == "mongodb":
                request = await _read_mongo_message(src)
                if request is not None and not isinstance(request, mongo_wire.OpReply):
                    client.write(mongo_error_reply(request, message, why))
            await client.drain()
    except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError, WireError, ssl.SSLError) as exc:
        log.debug("refusal in %s not delivered: %s", protocol, exc)
    finally:
        with contextlib.suppress(OSError, ConnectionError, ssl.SSLError, TimeoutError):
            client.write_eof()
            async with asyncio.timeout(1.0):  # let the client read the answer and close first
                while await client.read(4096):
                    pass
        client.close()
        await client.wait_closed()
