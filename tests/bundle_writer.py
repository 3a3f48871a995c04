"""A tiny, test-side writer of TF tensor bundles (valid unless told otherwise).

TensorFlow reads its output (see the tf-marked tests in test_tf_bundle_bad_inputs.py); the
hostile-input tests use it to build files with exactly one thing wrong.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from facenet_convert.converter.sources.mtcnn_npy import MtcnnNpyReader
from facenet_convert.converter.sources.sstable import MAGIC, crc32c_extend, mask_crc


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 are written as 10-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_fixed32(number: int, value: int) -> bytes:
    return varint(number << 3 | 5) + struct.pack("<I", value)


def header_proto(num_shards: int = 1, endianness: int = 0, producer: int = 1,
                 min_consumer: int = 0, bad_consumers: tuple[int, ...] = ()) -> bytes:
    version = field_varint(1, producer) + field_varint(2, min_consumer)
    version += b"".join(field_varint(3, b) for b in bad_consumers)
    return (field_varint(1, num_shards) + field_varint(2, endianness)
            + field_bytes(3, version))


def shape_proto(dims: list[int]) -> bytes:
    return b"".join(field_bytes(2, field_varint(1, d)) for d in dims)


def entry_proto(dtype: int, dims: list[int], shard_id: int, offset: int, size: int,
                crc: int, sliced: bool = False) -> bytes:
    out = field_varint(1, dtype) + field_bytes(2, shape_proto(dims))
    out += field_varint(3, shard_id) + field_varint(4, offset) + field_varint(5, size)
    out += field_fixed32(6, mask_crc(crc))
    if sliced:
        out += field_bytes(7, field_bytes(1, field_varint(1, 0) + field_varint(2, 1)))
    return out


def block(pairs: list[tuple[bytes, bytes]], restart_interval: int = 16) -> bytes:
    out = bytearray()
    restarts = []
    previous = b""
    for i, (key, value) in enumerate(pairs):
        shared = 0
        if i % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += varint(shared) + varint(len(key) - shared) + varint(len(value))
        out += key[shared:] + value
        previous = key
    if not restarts:
        restarts = [0]
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def with_trailer(contents: bytes, block_type: int = 0) -> bytes:
    crc = crc32c_extend(crc32c_extend(0, contents), bytes([block_type]))
    return contents + bytes([block_type]) + struct.pack("<I", mask_crc(crc))


def sstable(pairs: list[tuple[bytes, bytes]], per_block: int = 3) -> bytes:
    """A LevelDB table with ``per_block`` entries per data block (keys taken as given)."""
    out = bytearray()
    index = []
    for start in range(0, len(pairs), per_block):
        chunk = pairs[start:start + per_block]
        contents = block(chunk)
        index.append((chunk[-1][0], varint(len(out)) + varint(len(contents))))
        out += with_trailer(contents)
    meta = block([])
    meta_handle = varint(len(out)) + varint(len(meta))
    out += with_trailer(meta)
    index_contents = block(index, restart_interval=1)
    index_handle = varint(len(out)) + varint(len(index_contents))
    out += with_trailer(index_contents)
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", MAGIC)
    return bytes(out + footer)


def string_payload(values: list[bytes], big_endian: bool = False) -> tuple[bytes, int]:
    """TF's string tensor layout and its entry crc (lengths crc'd as uint32)."""
    order = ">" if big_endian else "<"
    lengths = b"".join(varint(len(v)) for v in values)
    crc = 0
    for v in values:
        crc = crc32c_extend(crc, struct.pack(order + "I", len(v)))
    check = struct.pack(order + "I", mask_crc(crc))
    crc = crc32c_extend(crc, check)
    for v in values:
        crc = crc32c_extend(crc, v)
    return lengths + check + b"".join(values), crc


_DTYPE_ENUM = {"float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int16": 5, "int8": 6,
               "complex64": 8, "int64": 9, "bool": 10, "uint16": 17, "complex128": 18,
               "float16": 19, "uint32": 22, "uint64": 23}


def write_bundle(prefix: Path, tensors: dict[str, np.ndarray] | None = None, *,
                 raw_entries: list[tuple[bytes, bytes]] | None = None, data: bytes = b"",
                 big_endian: bool = False, num_shards: int = 1, header: bytes | None = None,
                 sort: bool = True, per_block: int = 3) -> Path:
    """Write PREFIX.index and PREFIX.data-00000-of-0000N (other shards empty)."""
    payload = bytearray(data)
    pairs: list[tuple[bytes, bytes]] = list(raw_entries or [])
    for name, value in (tensors or {}).items():
        if value.dtype == object:
            raw, crc = string_payload(list(value.reshape(-1)), big_endian)
            dtype = 7
        else:
            raw = value.astype(value.dtype.newbyteorder(">" if big_endian else "<")).tobytes()
            crc = crc32c_extend(0, raw)
            dtype = _DTYPE_ENUM[value.dtype.name]
        pairs.append((name.encode(), entry_proto(dtype, list(value.shape), 0, len(payload),
                                                 len(raw), crc)))
        payload += raw
    if sort:
        pairs.sort()
    head = header if header is not None else header_proto(num_shards, int(big_endian))
    Path(f"{prefix}.index").write_bytes(sstable([(b"", head), *pairs], per_block=per_block))
    for shard in range(max(num_shards, 1)):
        Path(f"{prefix}.data-{shard:05d}-of-{max(num_shards, 1):05d}").write_bytes(
            bytes(payload) if shard == 0 else b"")
    return prefix


def first_block_trailer(table: bytes) -> int:
    """Offset of data block 0's type byte: the first position where the crc trailer checks."""
    for end in range(4, len(table) - 48):
        stored = struct.unpack_from("<I", table, end + 1)[0]
        if mask_crc(crc32c_extend(0, table[:end + 1])) == stored:
            return end
    raise AssertionError("no block trailer found")


# ------------------------------------------------- files valid but for one thing (hostile tests)


def pnet_arrays(det_npy: dict[str, Path]) -> dict[str, np.ndarray]:
    """The real PNet weights, to write into files that are valid but for one thing."""
    with MtcnnNpyReader(det_npy["det1"]) as reader:
        return {name: np.array(reader.read(name)) for name in reader.tensors()}


def pnet_bundle(folder: Path, det_npy: dict[str, Path], **kwargs) -> Path:
    return write_bundle(folder / "model.ckpt-1", pnet_arrays(det_npy), **kwargs)


def data_file(prefix: Path) -> Path:
    return Path(f"{prefix}.data-00000-of-00001")


def index_file(prefix: Path) -> Path:
    return Path(f"{prefix}.index")


def one_entry(folder: Path, entry: bytes, data: bytes = b"\0" * 16, *,
              header: bytes | None = None) -> Path:
    prefix = folder / "model.ckpt-1"
    index_file(prefix).write_bytes(sstable([(b"", header or header_proto()),
                                            (b"conv1/weights", entry)]))
    data_file(prefix).write_bytes(data)
    return prefix
