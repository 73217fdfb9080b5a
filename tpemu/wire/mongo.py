"""MongoDB wire protocol messages (pure, no I/O).

Spec: MongoDB Wire Protocol (https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/)
and the OP_MSG specification (mongodb/specifications ``message/OP_MSG.md``). Every message is a
16-byte header ``int32 messageLength, int32 requestID, int32 responseTo, int32 opCode`` (little
endian, the length includes the header), then an opcode-specific body:

* OP_MSG (2013): ``uint32 flagBits``, sections, optional CRC-32C checksum. Section kind 0 is
  the one command body document; kind 1 is ``int32 size, cstring identifier, documents…``
  (a document sequence, e.g. the ``documents`` of an insert). Flag bits 0-15 are *required*:
  a parser must refuse unknown ones. Bit 0 checksumPresent (the checksum is verified here),
  bit 1 moreToCome (no reply expected), bit 16 exhaustAllowed.
* OP_QUERY (2004), legacy: only the ``isMaster``/``hello`` handshake on ``admin.$cmd`` is still
  sent, by older drivers and shells that do not yet know the server speaks OP_MSG (pymongo 4.20
  already sends its handshake as OP_MSG); answered with OP_REPLY (1).
* OP_COMPRESSED (2012): only its header is parsed, so that the glue can refuse it (the
  emulator never advertises a compressor, so a conforming client never sends one).
* Other legacy opcodes (OP_INSERT, OP_GET_MORE, …; removed in MongoDB 6.0) parse as
  :class:`LegacyOp` with their raw body.

Checksums are verified (CRC-32C, pure Python), which caps checksummed messages at
:data:`MAX_CHECKSUMMED_SIZE` (1 MiB); drivers do not send checksums.

Size cap: MongoDB advertises ``maxMessageSizeBytes`` 48 000 000, but this parser refuses any
message over :data:`MAX_MESSAGE_SIZE` (16 MiB + 64 KiB: one maximal 16 MiB document plus the
command around it), and the emulator advertises that smaller value so drivers split batches
to fit it. Body documents may be up to ``bson.MAX_COMMAND_SIZE`` (16 MiB + 16 KiB, mongod's
internal limit for a command wrapping a maximal document); sequence documents up to 16 MiB.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

from tpemu.wire import bson
from tpemu.wire.errors import LimitExceeded, WireError

OP_REPLY: Final = 1
OP_UPDATE: Final = 2001
OP_INSERT: Final = 2002
OP_QUERY: Final = 2004
OP_GET_MORE: Final = 2005
OP_DELETE: Final = 2006
OP_KILL_CURSORS: Final = 2007
OP_COMPRESSED: Final = 2012
OP_MSG: Final = 2013

OPCODE_NAMES: Final = {
    OP_REPLY: "OP_REPLY", OP_UPDATE: "OP_UPDATE", OP_INSERT: "OP_INSERT", OP_QUERY: "OP_QUERY",
    OP_GET_MORE: "OP_GET_MORE", OP_DELETE: "OP_DELETE", OP_KILL_CURSORS: "OP_KILL_CURSORS",
    OP_COMPRESSED: "OP_COMPRESSED", OP_MSG: "OP_MSG",
}

HEADER_SIZE: Final = 16
#: The largest message this parser accepts (and the emulator advertises as maxMessageSizeBytes):
#: a command document of mongod's internal maximum plus the message framing.
MAX_MESSAGE_SIZE: Final = bson.MAX_DOCUMENT_SIZE + 64 * 1024

# OP_MSG flag bits.
CHECKSUM_PRESENT: Final = 1 << 0
MORE_TO_COME: Final = 1 << 1
EXHAUST_ALLOWED: Final = 1 << 16
_KNOWN_REQUIRED_FLAGS: Final = CHECKSUM_PRESENT | MORE_TO_COME
#: Checksummed messages are verified in pure Python (~8 MB/s), so they get a smaller cap to keep
#: one client from stalling the event loop; drivers never send checksums.
MAX_CHECKSUMMED_SIZE: Final = 1024 * 1024

# OP_REPLY responseFlags.
REPLY_CURSOR_NOT_FOUND: Final = 1 << 0
REPLY_QUERY_FAILURE: Final = 1 << 1
REPLY_AWAIT_CAPABLE: Final = 1 << 3

_HEADER = struct.Struct("<iiii")


class MongoWireError(WireError):
    """A malformed MongoDB message."""


@dataclass(frozen=True, slots=True)
class MsgHeader:
    length: int
    request_id: int
    response_to: int
    opcode: int


@dataclass(frozen=True, slots=True)
class DocumentSequence:
    """An OP_MSG kind-1 section: documents for the body field named ``identifier``."""

    identifier: str
    documents: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class OpMsg:
    header: MsgHeader
    flags: int
    body: dict[str, Any]
    sequences: tuple[DocumentSequence, ...] = ()
    checksum: int | None = None

    @property
    def more_to_come(self) -> bool:
        return bool(self.flags & MORE_TO_COME)

    @property
    def exhaust_allowed(self) -> bool:
        return bool(self.flags & EXHAUST_ALLOWED)

    def command(self) -> dict[str, Any]:
        """The body with every document sequence folded in as an array field (what mongod does).

        Raises :class:`MongoWireError` if a sequence repeats a body field.
        """
        if not self.sequences:
            return self.body
        merged = dict(self.body)
        for seq in self.sequences:
            if seq.identifier in merged:
                raise MongoWireError(f"OP_MSG field {seq.identifier!r} is both in the body and a document sequence")
            merged[seq.identifier] = list(seq.documents)
        return merged


@dataclass(frozen=True, slots=True)
class OpQuery:
    header: MsgHeader
    flags: int
    collection: str
    skip: int
    limit: int
    query: dict[str, Any]
    fields: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class OpReply:
    header: MsgHeader
    flags: int
    cursor_id: int
    starting_from: int
    documents: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class OpCompressed:
    """Only the clear part of OP_COMPRESSED: the emulator refuses the compressed body."""

    header: MsgHeader
    original_opcode: int
    uncompressed_size: int
    compressor_id: int


@dataclass(frozen=True, slots=True)
class LegacyOp:
    """An opcode the emulator does not speak (OP_INSERT, OP_GET_MORE, unknown …), body unparsed."""

    header: MsgHeader
    body: bytes


Message = OpMsg | OpQuery | OpReply | OpCompressed | LegacyOp


def parse_header(data: bytes | bytearray | memoryview, max_size: int = MAX_MESSAGE_SIZE) -> MsgHeader | None:
    """The header at the start of ``data``; ``None`` if fewer than 16 bytes.

    Raises :class:`LimitExceeded` past ``max_size`` and :class:`MongoWireError` for a length
    shorter than the header.
    """
    if len(data) < HEADER_SIZE:
        return None
    length, request_id, response_to, opcode = _HEADER.unpack_from(data, 0)
    if length < HEADER_SIZE:
        raise MongoWireError(f"message length {length} is shorter than the 16-byte header")
    if length > max_size:
        raise LimitExceeded("MongoDB message", max_size, length)
    return MsgHeader(length, request_id, response_to, opcode)


def parse_message(data: bytes | bytearray | memoryview,
                  max_size: int = MAX_MESSAGE_SIZE) -> tuple[Message, int] | None:
    """Parse one message at the start of ``data``: ``(message, bytes used)`` or ``None``."""
    header = parse_header(data, max_size)
    if header is None or len(data) < header.length:
        return None
    body = bytes(data[HEADER_SIZE:header.length])
    match header.opcode:
        case 2013:  # OP_MSG
            msg: Message = _parse_op_msg(header, body, data)
        case 2004:  # OP_QUERY
            msg = _parse_op_query(header, body)
        case 1:  # OP_REPLY
            msg = _parse_op_reply(header, body)
        case 2012:  # OP_COMPRESSED
            if len(body) < 9:
                raise MongoWireError("OP_COMPRESSED shorter than its 9-byte prefix")
            original, size = struct.unpack_from("<ii", body, 0)
            msg = OpCompressed(header, original, size, body[8])
        case _:
            msg = LegacyOp(header, body)
    return msg, header.length


def _parse_op_msg(header: MsgHeader, body: bytes, whole: bytes | bytearray | memoryview) -> OpMsg:
    if len(body) < 4:
        raise MongoWireError("OP_MSG shorter than its flagBits")
    (flags,) = struct.unpack_from("<I", body, 0)
    unknown = flags & 0xFFFF & ~_KNOWN_REQUIRED_FLAGS
    if unknown:
        raise MongoWireError(f"OP_MSG has unknown required flag bits 0x{unknown:04x}")
    end = len(body)
    checksum = None
    if flags & CHECKSUM_PRESENT:
        if end < 8:
            raise MongoWireError("OP_MSG with checksumPresent is too short for its checksum")
        if header.length > MAX_CHECKSUMMED_SIZE:
            raise LimitExceeded("OP_MSG with a checksum", MAX_CHECKSUMMED_SIZE, header.length)
        end -= 4
        (checksum,) = struct.unpack_from("<I", body, end)
        computed = crc32c(bytes(whole[:header.length - 4]))
        if computed != checksum:
            raise MongoWireError(f"OP_MSG checksum mismatch (sent 0x{checksum:08x}, computed 0x{computed:08x})")
    pos = 4
    command: dict[str, Any] | None = None
    sequences: list[DocumentSequence] = []
    while pos < end:
        kind = body[pos]
        pos += 1
        if kind == 0:
            length = bson.document_length(body[:end], pos, bson.MAX_COMMAND_SIZE)
            if length is None or pos + length > end:
                raise MongoWireError("OP_MSG body section runs past the end of the message")
            if command is not None:
                raise MongoWireError("OP_MSG has more than one body (kind 0) section")
            command = bson.decode(body[pos:pos + length], bson.MAX_COMMAND_SIZE)
            pos += length
        elif kind == 1:
            if end - pos < 4:
                raise MongoWireError("OP_MSG document sequence is missing its size")
            (size,) = struct.unpack_from("<i", body, pos)
            if size < 5 or pos + size > end:
                raise MongoWireError(f"OP_MSG document sequence size {size} is out of range")
            section = body[pos + 4:pos + size]
            nul = section.find(b"\x00")
            if nul < 0:
                raise MongoWireError("OP_MSG document sequence identifier is not NUL-terminated")
            try:
                identifier = section[:nul].decode("utf-8")
            except UnicodeDecodeError:
                raise MongoWireError("OP_MSG document sequence identifier is not UTF-8") from None
            sequences.append(DocumentSequence(identifier, tuple(bson.decode_all(section[nul + 1:]))))
            pos += size
        else:
            raise MongoWireError(f"OP_MSG section kind {kind} is not supported (only 0 and 1)")
    if command is None:
        raise MongoWireError("OP_MSG has no body (kind 0) section")
    return OpMsg(header, flags, command, tuple(sequences), checksum)


def _parse_op_query(header: MsgHeader, body: bytes) -> OpQuery:
    if len(body) < 4:
        raise MongoWireError("OP_QUERY shorter than its flags")
    (flags,) = struct.unpack_from("<i", body, 0)
    nul = body.find(b"\x00", 4)
    if nul < 0:
        raise MongoWireError("OP_QUERY collection name is not NUL-terminated")
    try:
        collection = body[4:nul].decode("utf-8")
    except UnicodeDecodeError:
        raise MongoWireError("OP_QUERY collection name is not UTF-8") from None
    pos = nul + 1
    if len(body) - pos < 8:
        raise MongoWireError("OP_QUERY is missing numberToSkip/numberToReturn")
    skip, limit = struct.unpack_from("<ii", body, pos)
    pos += 8
    result = bson.decode_prefix(body[pos:], bson.MAX_COMMAND_SIZE)
    if result is None:
        raise MongoWireError("OP_QUERY query document is truncated")
    query, used = result
    pos += used
    fields = None
    if pos < len(body):
        fields = bson.decode(body[pos:])
    return OpQuery(header, flags, collection, skip, limit, query, fields)


def _parse_op_reply(header: MsgHeader, body: bytes) -> OpReply:
    if len(body) < 20:
        raise MongoWireError("OP_REPLY shorter than its 20-byte prefix")
    flags, cursor_id, starting_from, number = struct.unpack_from("<iqii", body, 0)
    docs = tuple(bson.decode_all(body[20:], bson.MAX_COMMAND_SIZE))
    if len(docs) != number:
        raise MongoWireError(f"OP_REPLY says {number} documents but holds {len(docs)}")
    return OpReply(header, flags, cursor_id, starting_from, docs)


# --------------------------------------------------------------------------- encoding


def _frame(request_id: int, response_to: int, opcode: int, body: bytes) -> bytes:
    return _HEADER.pack(HEADER_SIZE + len(body), request_id, response_to, opcode) + body


def encode_op_msg(request_id: int, response_to: int, body: dict[str, Any], flags: int = 0,
                  sequences: tuple[DocumentSequence, ...] = (), checksum: bool = False) -> bytes:
    """An OP_MSG with one body section and optional document sequences (and CRC-32C)."""
    parts = [struct.pack("<I", flags | (CHECKSUM_PRESENT if checksum else 0)), b"\x00",
             bson.encode(body, bson.MAX_COMMAND_SIZE)]
    for seq in sequences:
        payload = seq.identifier.encode("utf-8") + b"\x00" + b"".join(bson.encode(d) for d in seq.documents)
        parts += [b"\x01", struct.pack("<i", 4 + len(payload)), payload]
    payload = b"".join(parts)
    if not checksum:
        return _frame(request_id, response_to, OP_MSG, payload)
    framed = _HEADER.pack(HEADER_SIZE + len(payload) + 4, request_id, response_to, OP_MSG) + payload
    return framed + struct.pack("<I", crc32c(framed))


def encode_op_query(request_id: int, collection: str, query: dict[str, Any], flags: int = 0,
                    skip: int = 0, limit: int = -1) -> bytes:
    """An OP_QUERY (what old drivers send for the first ``isMaster`` on ``admin.$cmd``)."""
    body = struct.pack("<i", flags) + collection.encode("utf-8") + b"\x00" + struct.pack("<ii", skip, limit)
    return _frame(request_id, 0, OP_QUERY, body + bson.encode(query, bson.MAX_COMMAND_SIZE))


def encode_op_reply(request_id: int, response_to: int, documents: list[dict[str, Any]], flags: int = 0,
                    cursor_id: int = 0, starting_from: int = 0) -> bytes:
    """An OP_REPLY (the answer to an OP_QUERY)."""
    docs = b"".join(bson.encode(d, bson.MAX_COMMAND_SIZE) for d in documents)
    body = struct.pack("<iqii", flags, cursor_id, starting_from, len(documents)) + docs
    return _frame(request_id, response_to, OP_REPLY, body)


# --------------------------------------------------------------------------- CRC-32C


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # reversed Castagnoli polynomial
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), as OP_MSG checksums use (RFC 3720 appendix B.4).

    Pure Python, table-driven: about 8 MB/s. Drivers do not send checksums (only
    server-to-server traffic does), so this runs only for the rare client that asks for it.
    """
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
