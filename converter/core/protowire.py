"""Minimal protobuf wire-format decoding for the few TF messages we read.

TensorFlow's protos cannot be imported without TensorFlow, and the messages we need (bundle
header/entry, GraphDef, TensorProto) use only a handful of fields, so a strict field walker is
smaller and safer than generated code. Every read is bounds-checked.
"""

from __future__ import annotations

from collections.abc import Iterator

from facenet_convert.converter.core.errors import CorruptSourceError

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


def iter_field_spans(buf: bytes | memoryview, start: int = 0, end: int | None = None,
                     what: str = "message"
                     ) -> Iterator[tuple[int, int, int | tuple[int, int], int]]:
    """Yield (field number, wire type, value, field start) over ``buf[start:end]``.

    Offsets are absolute in ``buf``, so errors can name the byte of the file where they
    happened. Varints come back as int (unsigned, 64-bit), fixed32/fixed64 as unsigned int,
    length-delimited fields as an absolute (start, end) span.
    """
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        at = pos
        key, pos = read_varint(buf, pos, end, what=f"{what} field key")
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CorruptSourceError(f"{what} has a field numbered 0 at byte {at}")
        if wire == VARINT:
            value, pos = read_varint(buf, pos, end, what=f"{what} field {number}")
            yield number, wire, value & 0xFFFFFFFFFFFFFFFF, at
        elif wire in (FIXED64, FIXED32):
            width = 8 if wire == FIXED64 else 4
            if pos + width > end:
                raise CorruptSourceError(
                    f"{what} field {number} at byte {at} is truncated (needs {width} bytes, "
                    f"{end - pos} remain)")
            yield number, wire, int.from_bytes(buf[pos:pos + width], "little"), at
            pos += width
        elif wire == LENGTH_DELIMITED:
            size, pos = read_varint(buf, pos, end, what=f"{what} field {number} length")
            if size > end - pos:
                raise CorruptSourceError(
                    f"{what} field {number} at byte {at} declares {size} bytes but only "
                    f"{end - pos} remain")
            yield number, wire, (pos, pos + size), at
            pos += size
        else:
            raise CorruptSourceError(
                f"{what} field {number} at byte {at} has unsupported wire type {wire}")


def iter_fields(buf: bytes | memoryview, *, what: str = "message"
                ) -> Iterator[tuple[int, int, int | bytes | memoryview]]:
    """Yield (field number, wire type, value) of a serialized message.

    Like :func:`iter_field_spans`, but length-delimited values come back as a slice of
    ``buf`` (a memoryview when ``buf`` is one).
    """
    for number, wire, value, _ in iter_field_spans(buf, what=what):
        if wire == LENGTH_DELIMITED:
            begin, stop = value  # type: ignore[misc]
            yield number, wire, buf[begin:stop]
        else:
            yield number, wire, value


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
