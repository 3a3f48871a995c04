"""Minimal protobuf wire-format decoding for the few TF messages we read.

TensorFlow's protos cannot be imported without TensorFlow, and the messages we need (bundle
header/entry, GraphDef, TensorProto) use only a handful of fields, so a strict field walker is
smaller and safer than generated code. Every read is bounds-checked.
"""

from __future__ import annotations

from collections.abc import Iterator

from converter.errors import CorruptSourceError

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def read_varint(buf: bytes | memoryview, pos: int, limit: int | None = None,
                *, what: str = "varint") -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return (value, next position)."""
    end = len(buf) if limit is None else limit
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise CorruptSourceError(f"truncated {what} at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise CorruptSourceError(f"{what} at byte {pos} is longer than 10 bytes")


def iter_fields(buf: bytes | memoryview, *, what: str = "message"
                ) -> Iterator[tuple[int, int, int | bytes | memoryview]]:
    """Yield (field number, wire type, value) for each field of a serialized message.

    Varints come back as int (unsigned, 64-bit), fixed32/fixed64 as unsigned int, and
    length-delimited fields as a slice of ``buf`` (a memoryview when ``buf`` is one).
    """
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos, end, what=f"{what} field key")
        field, wire = key >> 3, key & 7
        if field == 0:
            raise CorruptSourceError(f"{what} has a field numbered 0 at byte {pos}")
        if wire == VARINT:
            value, pos = read_varint(buf, pos, end, what=f"{what} field {field}")
            yield field, wire, value & 0xFFFFFFFFFFFFFFFF
        elif wire == FIXED64:
            if pos + 8 > end:
                raise CorruptSourceError(f"{what} field {field} is truncated (fixed64)")
            yield field, wire, int.from_bytes(bytes(buf[pos:pos + 8]), "little")
            pos += 8
        elif wire == FIXED32:
            if pos + 4 > end:
                raise CorruptSourceError(f"{what} field {field} is truncated (fixed32)")
            yield field, wire, int.from_bytes(bytes(buf[pos:pos + 4]), "little")
            pos += 4
        elif wire == LENGTH_DELIMITED:
            size, pos = read_varint(buf, pos, end, what=f"{what} field {field} length")
            if size > end - pos:
                raise CorruptSourceError(
                    f"{what} field {field} declares {size} bytes but only {end - pos} remain")
            yield field, wire, buf[pos:pos + size]
            pos += size
        else:
            raise CorruptSourceError(f"{what} field {field} has unsupported wire type {wire}")


def as_signed64(value: int) -> int:
    """Reinterpret an unsigned 64-bit varint as int64 (protobuf's int64 encoding)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def as_signed32(value: int) -> int:
    """Reinterpret a varint as int32 (negative int32 are sign-extended to 64 bits)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def iter_packed_varints(buf: bytes | memoryview, *, what: str = "packed field") -> Iterator[int]:
    """Yield the varints of a packed repeated field."""
    pos = 0
    end = len(buf)
    while pos < end:
        value, pos = read_varint(buf, pos, end, what=what)
        yield value
