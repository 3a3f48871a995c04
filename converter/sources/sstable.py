"""Strict reader for the LevelDB SSTable that TensorFlow uses as a checkpoint's ``.index``.

TensorFlow's own table reader trusts block handles and key order; we check every handle
against the file size, every block checksum, the restart array and strict key order, so a
damaged or hostile ``.index`` fails with a typed one-line error instead of a crash or a hang.
"""

from __future__ import annotations

import os

import crc32c
import numpy as np

from facenet_convert.converter.core.errors import (
    CorruptSourceError,
    SourceError,
    UnsupportedSourceError,
)
from facenet_convert.converter.core.inputs import open_regular
from facenet_convert.converter.core.protowire import read_varint

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5  # 1 type byte + fixed32 masked crc32c
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF

def crc32c_extend(crc: int, data: bytes | memoryview | np.ndarray) -> int:
    """crc32c of ``data`` continuing from ``crc`` (0 to start).

    The ``crc32c`` package reads any buffer (mmap slices, arrays) in place, with hardware
    acceleration, so verifying a tensor never copies it.
    """
    return crc32c.crc32c(data, value=crc)


def mask_crc(crc: int) -> int:
    """LevelDB/TF masked crc (storing a crc of data that embeds crcs is otherwise weak)."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def unmask_crc(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


# ---------------------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int, end: int, what: str, path: str, max_bits: int) -> tuple[int, int]:
    try:
        value, nxt = read_varint(buf, pos, end, what=what)
    except CorruptSourceError as exc:
        raise CorruptSourceError(f"{exc}; the .index file is damaged: restore it from the "
                                 "original checkpoint", path=path) from None
    if value >> max_bits:
        raise CorruptSourceError(f"{what} at byte {pos} is {value}, expected a {max_bits}-bit "
                                 "value; the .index file is damaged: restore it", path=path)
    return value, nxt


def _decode_handle(buf: bytes, pos: int, end: int, what: str, path: str) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, end, f"{what} offset", path, 64)
    size, pos = _varint(buf, pos, end, f"{what} size", path, 64)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, what: str, path: str) -> bytes:
    """Contents of the block at (offset, size) after checking bounds, type byte and crc."""
    limit = len(data) - FOOTER_SIZE
    if offset > limit or size > limit - offset or BLOCK_TRAILER_SIZE > limit - offset - size:
        raise CorruptSourceError(
            f"{what} handle (offset {offset}, size {size}) plus its {BLOCK_TRAILER_SIZE}-byte "
            f"trailer ends past the table data ({limit} bytes before the footer); the .index "
            "file is truncated or damaged: restore it", path=path)
    contents = data[offset:offset + size]
    block_type = data[offset + size]
    if block_type == 1:
        raise UnsupportedSourceError(
            f"{what} at byte {offset} is Snappy-compressed (type byte 1), expected "
            "uncompressed (0) as TensorFlow writes; re-save the checkpoint with TensorFlow",
            path=path)
    if block_type != 0:
        raise CorruptSourceError(
            f"{what} at byte {offset} has block type {block_type}, expected 0 (uncompressed); "
            "the .index file is damaged: restore it", path=path)
    stored = int.from_bytes(data[offset + size + 1:offset + size + 5], "little")
    actual = crc32c_extend(crc32c_extend(0, contents), data[offset + size:offset + size + 1])
    if unmask_crc(stored) != actual:
        raise CorruptSourceError(
            f"{what} at byte {offset} fails its checksum: stored crc32c {unmask_crc(stored):08x},"
            f" computed {actual:08x}; the .index file is damaged: restore it", path=path)
    return contents


def _parse_block(block: bytes, what: str, path: str) -> list[tuple[bytes, bytes]]:
    """Entries of one block, checking the restart array and strictly increasing keys."""
    n = len(block)
    if n < 4:
        raise CorruptSourceError(f"{what} is {n} bytes, expected at least 4 (restart count); "
                                 "the .index file is damaged: restore it", path=path)
    num_restarts = int.from_bytes(block[n - 4:], "little")
    if num_restarts == 0 or num_restarts > (n - 4) // 4:
        raise CorruptSourceError(
            f"{what} declares {num_restarts} restart points, expected 1 to {(n - 4) // 4} for "
            f"a {n}-byte block; the .index file is damaged: restore it", path=path)
    data_end = n - 4 - 4 * num_restarts
    restarts = [int.from_bytes(block[data_end + 4 * i:data_end + 4 * i + 4], "little")
                for i in range(num_restarts)]
    entries: list[tuple[bytes, bytes]] = []
    starts: dict[int, int] = {}  # entry start offset -> shared length
    pos = 0
    key = b""
    while pos < data_end:
        start = pos
        shared, pos = _varint(block, pos, data_end, f"{what} entry shared length", path, 32)
        non_shared, pos = _varint(block, pos, data_end, f"{what} entry key length", path, 32)
        value_len, pos = _varint(block, pos, data_end, f"{what} entry value length", path, 32)
        if shared > len(key) or non_shared + value_len > data_end - pos:
            raise CorruptSourceError(
                f"{what} entry at byte {start} shares {shared} key bytes (previous key has "
                f"{len(key)}) and declares {non_shared}+{value_len} bytes with "
                f"{data_end - pos} left; the .index file is damaged: restore it", path=path)
        new_key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        if entries and new_key <= key:
            raise CorruptSourceError(
                f"{what} key {new_key!r} at byte {start} does not sort after {key!r}; keys must "
                "be strictly increasing (unsorted or duplicate); the .index file is damaged",
                path=path)
        entries.append((new_key, block[pos:pos + value_len]))
        pos += value_len
        starts[start] = shared
        key = new_key
    previous = -1
    for r in restarts:
        if r <= previous or (r not in starts and not (r == 0 and not entries)) or starts.get(r):
            raise CorruptSourceError(
                f"{what} restart offset {r} is not the start of an entry with an unshared key "
                f"(restarts must increase from 0); the .index file is damaged: restore it",
                path=path)
        previous = r
    if entries and restarts[0] != 0:
        raise CorruptSourceError(f"{what} first restart offset is {restarts[0]}, expected 0; "
                                 "the .index file is damaged: restore it", path=path)
    return entries


def read_table(path: str | os.PathLike[str]) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of the SSTable at ``path``, in key order."""
    path = str(path)
    try:
        with open_regular(path, "the .index file") as handle:
            data = handle.read()
    except OSError as exc:
        raise SourceError(f"cannot read the .index file ({exc.strerror}); check the path and "
                          "permissions", path=path) from None
    return parse_table(data, path)


def parse_table(data: bytes, path: str) -> list[tuple[bytes, bytes]]:
    """Parse an in-memory SSTable; ``path`` is only used in error messages."""
    size = len(data)
    if size < FOOTER_SIZE:
        raise CorruptSourceError(
            f"file is {size} bytes, expected at least {FOOTER_SIZE} (the SSTable footer); it is "
            "empty or truncated: restore the .index from the original checkpoint", path=path)
    footer = data[size - FOOTER_SIZE:]
    magic = int.from_bytes(footer[40:], "little")
    if magic != MAGIC:
        raise CorruptSourceError(
            f"footer magic is {magic:016x}, expected {MAGIC:016x} (a LevelDB table); this is "
            "not a checkpoint .index (a .data shard or another file?): pass the .index or the "
            "prefix", path=path)
    meta_off, meta_size, pos = _decode_handle(footer, 0, 40, "metaindex handle", path)
    index_off, index_size, pos = _decode_handle(footer, pos, 40, "index handle", path)
    if any(footer[pos:40]):
        raise CorruptSourceError("footer padding after the block handles is not zero; the "
                                 ".index file is damaged: restore it", path=path)
    meta = _read_block(data, meta_off, meta_size, "metaindex block", path)
    _parse_block(meta, "metaindex block", path)
    index = _parse_block(_read_block(data, index_off, index_size, "index block", path),
                         "index block", path)
    pairs: list[tuple[bytes, bytes]] = []
    previous_end = 0
    for i, (separator, handle) in enumerate(index):
        what = f"data block {i}"
        offset, bsize, used = _decode_handle(handle, 0, len(handle), f"{what} handle", path)
        if used != len(handle):
            raise CorruptSourceError(f"index entry {i} holds {len(handle)} bytes, expected a "
                                     f"{used}-byte block handle; the .index file is damaged",
                                     path=path)
        if offset < previous_end:
            raise CorruptSourceError(f"{what} at byte {offset} overlaps the previous block "
                                     f"(ends at {previous_end}); the .index file is damaged",
                                     path=path)
        previous_end = offset + bsize + BLOCK_TRAILER_SIZE
        block = _parse_block(_read_block(data, offset, bsize, what, path), what, path)
        if not block:
            raise CorruptSourceError(f"{what} has no entries; the .index file is damaged",
                                     path=path)
        if pairs and block[0][0] <= pairs[-1][0]:
            raise CorruptSourceError(
                f"{what} starts with key {block[0][0]!r}, which does not sort after the previous "
                f"block's last key {pairs[-1][0]!r}; the .index file is damaged", path=path)
        if separator < block[-1][0] or (pairs and index[i - 1][0] >= block[0][0]):
            raise CorruptSourceError(
                f"index key {separator!r} does not separate {what} from its neighbours; the "
                ".index file is damaged: restore it", path=path)
        pairs.extend(block)
    return pairs
