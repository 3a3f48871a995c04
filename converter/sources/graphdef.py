"""Frozen TensorFlow GraphDef (``.pb``) reader: the weights are the ``Const`` nodes.

A frozen graph is one serialized ``GraphDef`` protobuf. Every ``Const`` node carries its value
as a ``TensorProto`` in the ``value`` attr, either as raw little-endian ``tensor_content``
(read zero-copy from a memory map) or as a typed repeated ``*_val`` list that TensorFlow
broadcasts to the shape (fewer values than elements: the last value is repeated; none: zeros;
more: the first ``elements`` are used, as the C++ runtime does). Because a one-value list can
claim any shape, the declared size is capped relative to the file size before anything is
allocated. Tensors are keyed by node name.

Field numbers (checked against TF 2.21's generated descriptors):
GraphDef.node = 1; NodeDef{name 1, op 2, input 3, device 4, attr 5 map<string, AttrValue>};
map entry {key 1, value 2}; AttrValue{type 6, shape 7, tensor 8}; TensorShapeProto{dim 2
{size 1, name 2}, unknown_rank 3}; TensorProto{dtype 1, tensor_shape 2, version_number 3,
tensor_content 4, float_val 5, double_val 6, int_val 7, string_val 8, scomplex_val 9,
int64_val 10, bool_val 11, dcomplex_val 12, half_val 13, uint32_val 16, uint64_val 17}.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facenet_convert.converter.core.errors import (
    CorruptSourceError,
    SourceError,
    UnsupportedSourceError,
)
from facenet_convert.converter.core.inputs import open_regular
from facenet_convert.converter.core.protowire import (
    FIXED32,
    FIXED64,
    LENGTH_DELIMITED,
    VARINT,
    as_signed32,
    as_signed64,
    iter_packed_varints,
)
from facenet_convert.converter.core.protowire import iter_field_spans as _fields
from facenet_convert.converter.sources.base import SourceReader, TensorInfo, check_shape
from facenet_convert.converter.sources.tf_dtypes import NUMPY_DTYPES, dtype_label

__all__ = ["MAX_RANK", "GraphDefReader", "expansion_cap"]

#: TensorFlow's own limit on tensor rank (TensorShape::MaxDimensions).
MAX_RANK = 254

# DataType enum -> (numpy dtype, TensorProto *_val field, how that field is decoded).
_F32, _F64, _I32, _I64, _U32, _U64, _BOOL, _HALF, _BYTES = (
    "f32", "f64", "i32", "i64", "u32", "u64", "bool", "half", "bytes")
# DataType -> (TensorProto *_val field, how that field is decoded).
_VAL_FIELD_OF: dict[int, tuple[int, str]] = {
    1: (5, _F32),      # DT_FLOAT: float_val
    2: (6, _F64),      # DT_DOUBLE: double_val
    3: (7, _I32),      # DT_INT32: int_val
    4: (7, _I32),      # DT_UINT8: int_val
    5: (7, _I32),      # DT_INT16: int_val
    6: (7, _I32),      # DT_INT8: int_val
    7: (8, _BYTES),    # DT_STRING: string_val
    8: (9, _F32),      # DT_COMPLEX64: scomplex_val (re, im pairs)
    9: (10, _I64),     # DT_INT64: int64_val
    10: (11, _BOOL),   # DT_BOOL: bool_val
    14: (13, _HALF),   # DT_BFLOAT16: half_val (uint16 bits)
    17: (7, _I32),     # DT_UINT16: int_val
    18: (12, _F64),    # DT_COMPLEX128: dcomplex_val (re, im pairs)
    19: (13, _HALF),   # DT_HALF: half_val (uint16 bits)
    22: (16, _U32),    # DT_UINT32: uint32_val
    23: (17, _U64),    # DT_UINT64: uint64_val
}
_DTYPES: dict[int, tuple[np.dtype, int, str]] = {
    code: (NUMPY_DTYPES[code], field, kind) for code, (field, kind) in _VAL_FIELD_OF.items()}
_VAL_FIELDS = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18}
_VAL_FIELD_NAMES = {5: "float_val", 6: "double_val", 7: "int_val", 8: "string_val",
                    9: "scomplex_val", 10: "int64_val", 11: "bool_val", 12: "dcomplex_val",
                    13: "half_val", 14: "resource_handle_val", 15: "variant_val",
                    16: "uint32_val", 17: "uint64_val", 18: "float8_val"}
_POINTER_BYTES = 8  # what one element of a string (object) array costs before its bytes


def expansion_cap(file_size: int) -> int:
    """Most bytes one broadcast ``*_val`` constant may decode to: 64 x file size + 1 MiB.

    Real graphs broadcast small fills (zeros, ones); a shape bomb claims terabytes from one
    stored value. The cap keeps memory proportional to what the file could plausibly mean.
    """
    return 64 * file_size + (1 << 20)


@dataclass
class _Const:
    """Where one Const node's TensorProto keeps its value (absolute byte spans)."""

    info: TensorInfo
    dtype_code: int
    node_at: int
    content: tuple[int, int] | None = None
    vals: list[tuple[int, int, int | tuple[int, int]]] = field(default_factory=list)


def _expect(wire: int, wanted: int, what: str, at: int) -> None:
    if wire != wanted:
        raise CorruptSourceError(f"{what} at byte {at} has wire type {wire}, expected {wanted}")


def _text(buf: memoryview, span: tuple[int, int], what: str) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorruptSourceError(f"{what} at byte {span[0]} is not UTF-8 ({error.reason})"
                                 ) from None


class GraphDefReader(SourceReader):
    """Reads the ``Const`` tensors of a frozen GraphDef without TensorFlow.

    The file is memory-mapped and indexed once on open (node names, ops, each Const's dtype,
    shape and value location); values are decoded on :meth:`read`. ``tensor_content`` tensors
    come back as read-only arrays viewing the map (copied only when misaligned).
    """

    format = "tf-graphdef"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._map: mmap.mmap | None = None
        self._buf: memoryview | None = None
        self._consts: dict[str, _Const] = {}
        self._ops: dict[str, str] = {}
        try:
            with open_regular(self.path) as handle:
                self._size = os.fstat(handle.fileno()).st_size
                if self._size == 0:
                    raise CorruptSourceError("file is empty; expected a serialized GraphDef",
                                             path=self.path)
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as error:
            raise SourceError(f"cannot read: {error.strerror or error}", path=self.path
                              ) from error
        self._buf = memoryview(self._map)
        try:
            self._index()
        except BaseException:
            self.close()
            raise

    # -- indexing ---------------------------------------------------------------------------

    def _index(self) -> None:
        buf = self._buf
        node_count = 0
        try:
            for number, wire, value, at in _fields(buf, 0, len(buf), "GraphDef"):
                if number != 1:
                    continue  # versions, library (functions), debug info: not weights
                _expect(wire, LENGTH_DELIMITED, f"GraphDef node #{node_count}", at)
                self._index_node(value, node_count, at)
                node_count += 1
        except CorruptSourceError as error:
            if error.path is not None:
                raise
            raise CorruptSourceError(f"not a valid GraphDef: {error}; the file is truncated, "
                                     "damaged or not a frozen graph", path=self.path) from None
        if node_count == 0:
            raise CorruptSourceError("GraphDef has no nodes; expected a frozen graph",
                                     path=self.path)
        self._consts = dict(sorted(self._consts.items()))

    def _index_node(self, span: tuple[int, int], number: int, at: int) -> None:
        buf = self._buf
        what = f"node #{number} (byte {at})"
        name = op = None
        value_span: tuple[int, int] | None = None
        dtype_attr: int | None = None
        attrs: list[tuple[tuple[int, int], int]] = []
        for fnum, wire, value, fat in _fields(buf, span[0], span[1], what):
            if fnum == 1:
                _expect(wire, LENGTH_DELIMITED, f"{what} name", fat)
                name = _text(buf, value, f"{what} name")
            elif fnum == 2:
                _expect(wire, LENGTH_DELIMITED, f"{what} op", fat)
                op = _text(buf, value, f"{what} op")
            elif fnum == 5:
                _expect(wire, LENGTH_DELIMITED, f"{what} attr", fat)
                attrs.append((value, fat))
        if not name:
            raise CorruptSourceError(f"{what} has no name")
        what = f"node {name!r} (byte {at})"
        if name in self._ops:
            raise CorruptSourceError(f"{what}: duplicate node name")
        if op is None:
            raise CorruptSourceError(f"{what} has no op")
        self._ops[name] = op
        if op != "Const":
            return
        for entry, _ in attrs:
            key = None
            attr_value: tuple[int, int] | None = None
            for fnum, wire, value, vat in _fields(buf, entry[0], entry[1], f"{what} attr"):
                if fnum == 1:
                    _expect(wire, LENGTH_DELIMITED, f"{what} attr key", vat)
                    key = _text(buf, value, f"{what} attr key")
                elif fnum == 2:
                    _expect(wire, LENGTH_DELIMITED, f"{what} attr value", vat)
                    attr_value = value
            if key == "value" and attr_value is not None:
                for fnum, wire, value, vat in _fields(buf, *attr_value, f"{what} attr 'value'"):
                    if fnum == 8:
                        _expect(wire, LENGTH_DELIMITED, f"{what} value tensor", vat)
                        value_span = value
            elif key == "dtype" and attr_value is not None:
                for fnum, wire, value, vat in _fields(buf, *attr_value, f"{what} attr 'dtype'"):
                    if fnum == 6:
                        _expect(wire, VARINT, f"{what} dtype", vat)
                        dtype_attr = value
        if value_span is None:
            raise CorruptSourceError(f"{what}: Const node has no 'value' tensor attr")
        const = self._index_tensor(name, value_span, at, what)
        if dtype_attr is not None and dtype_attr != const.dtype_code:
            raise CorruptSourceError(
                f"{what}: 'dtype' attr is {dtype_label(dtype_attr)} but the value tensor is "
                f"{dtype_label(const.dtype_code)}")
        self._consts[name] = const

    def _index_tensor(self, name: str, span: tuple[int, int], node_at: int,
                      what: str) -> _Const:
        buf = self._buf
        dtype_code = 0
        shape: tuple[int, ...] = ()
        content: tuple[int, int] | None = None
        vals: list[tuple[int, int, int | tuple[int, int]]] = []
        for fnum, wire, value, at in _fields(buf, span[0], span[1], f"{what} TensorProto"):
            if fnum == 1:
                _expect(wire, VARINT, f"{what} dtype", at)
                dtype_code = value
            elif fnum == 2:
                _expect(wire, LENGTH_DELIMITED, f"{what} tensor_shape", at)
                shape = self._shape(value, what)
            elif fnum == 4:
                _expect(wire, LENGTH_DELIMITED, f"{what} tensor_content", at)
                content = value
            elif fnum in _VAL_FIELDS:
                vals.append((fnum, wire, value))
        if dtype_code not in _DTYPES:
            raise UnsupportedSourceError(
                f"Const {name!r} (byte {node_at}) has dtype {dtype_label(dtype_code)}, which "
                "this reader does not decode; supported: float/double/half/bfloat16, "
                "(u)int8-64, bool, complex, string", path=self.path, key=name)
        dtype, val_field, _ = _DTYPES[dtype_code]
        count = 1
        for dim in shape:
            count *= dim
        check_shape(shape, dtype.itemsize, self.path, name)
        if count >= 1 << 63:
            raise CorruptSourceError(f"{what}: shape {list(shape)} has more elements than "
                                     "int64 can count")
        info = TensorInfo(name=name, dtype=dtype, shape=shape)
        if content is not None and content[1] > content[0] and count > 0:
            if dtype == np.dtype(object):
                raise UnsupportedSourceError(
                    f"Const {name!r} (byte {node_at}) stores strings in tensor_content; only "
                    "string_val is supported", path=self.path, key=name)
            stored = content[1] - content[0]
            if stored != count * dtype.itemsize:
                raise CorruptSourceError(
                    f"{what}: tensor_content at byte {content[0]} has {stored} bytes, expected "
                    f"{count * dtype.itemsize} for shape {list(shape)} of {dtype.name}")
            return _Const(info=info, dtype_code=dtype_code, node_at=node_at, content=content)
        for fnum, _, _ in vals:
            if fnum != val_field:
                raise CorruptSourceError(
                    f"{what}: {_VAL_FIELD_NAMES[fnum]} does not belong to a "
                    f"{dtype_label(dtype_code)} tensor (expected {_VAL_FIELD_NAMES[val_field]})")
        itemsize = _POINTER_BYTES if dtype == np.dtype(object) else dtype.itemsize
        decoded = count * itemsize
        if decoded > expansion_cap(self._size):
            raise UnsupportedSourceError(
                f"Const {name!r} (byte {node_at}) declares shape {list(shape)} ({decoded} "
                f"bytes of {dtype.name}) from a {_VAL_FIELD_NAMES[val_field]} list in a "
                f"{self._size}-byte file; refusing to expand past {expansion_cap(self._size)} "
                "bytes (64 x file size + 1 MiB): likely a shape bomb", path=self.path, key=name)
        return _Const(info=info, dtype_code=dtype_code, node_at=node_at, vals=vals)

    def _shape(self, span: tuple[int, int], what: str) -> tuple[int, ...]:
        buf = self._buf
        dims: list[int] = []
        for fnum, wire, value, at in _fields(buf, span[0], span[1], f"{what} tensor_shape"):
            if fnum == 3:
                _expect(wire, VARINT, f"{what} unknown_rank", at)
                if value:
                    raise CorruptSourceError(f"{what}: constant has unknown rank (byte {at})")
            elif fnum == 2:
                _expect(wire, LENGTH_DELIMITED, f"{what} dim", at)
                size = 0
                for dnum, dwire, dvalue, dat in _fields(buf, *value, f"{what} dim"):
                    if dnum == 1:
                        _expect(dwire, VARINT, f"{what} dim size", dat)
                        size = as_signed64(dvalue)
                if size < 0:
                    raise CorruptSourceError(
                        f"{what}: dimension {len(dims)} is {size} (byte {at}); constants need "
                        "known, non-negative sizes")
                dims.append(size)
                if len(dims) > MAX_RANK:
                    raise CorruptSourceError(f"{what}: rank exceeds TensorFlow's limit of "
                                             f"{MAX_RANK} (byte {at})")
        return tuple(dims)

    # -- public API -------------------------------------------------------------------------

    def tensors(self) -> dict[str, TensorInfo]:
        """Every Const node's value, keyed and ordered by node name."""
        return {name: const.info for name, const in self._consts.items()}

    def node_names(self) -> list[str]:
        """All node names in file order (Const or not), for model detection."""
        return list(self._ops)

    def ops(self) -> dict[str, str]:
        """Node name -> op type (``Const``, ``Conv2D``, ``Placeholder``...), in file order."""
        return dict(self._ops)

    def read(self, name: str) -> np.ndarray:
        """The value of Const node ``name``, read-only (zero-copy for tensor_content)."""
        const = self._consts.get(name)
        if const is None:
            raise self.missing(name, self._consts)
        if self._buf is None:
            raise SourceError("reader is closed", path=self.path, key=name)
        info = const.info
        try:
            if const.content is not None:
                return self._from_content(const)
            array = self._from_vals(const)
            array.flags.writeable = False  # same contract as the zero-copy path
            return array
        except CorruptSourceError as error:
            if error.path is not None:
                raise
            raise CorruptSourceError(f"Const value (node at byte {const.node_at}): {error}",
                                     path=self.path, key=info.name) from None

    def _from_content(self, const: _Const) -> np.ndarray:
        info = const.info
        start = const.content[0]
        array = np.frombuffer(self._map, dtype=info.dtype, count=info.num_elements,
                              offset=start).reshape(info.shape)
        if start % info.dtype.alignment:
            array = array.copy()
            array.flags.writeable = False
        return array

    def _from_vals(self, const: _Const) -> np.ndarray:
        info = const.info
        count = info.num_elements
        kind = _DTYPES[const.dtype_code][2]
        if count == 0:
            return np.zeros(info.shape, dtype=info.dtype)
        if kind == _BYTES:
            strings = [bytes(self._buf[v[0]:v[1]]) for f, w, v in const.vals
                       if w == LENGTH_DELIMITED]
            if any(w != LENGTH_DELIMITED for _, w, _ in const.vals):
                raise CorruptSourceError("string_val entry is not length-delimited")
            out = np.empty(count, dtype=object)
            if strings:
                kept = strings[:count]
                out[:len(kept)] = kept
                out[len(kept):] = [kept[-1]] * (count - len(kept))
            else:
                out[:] = [b""] * count
            return out.reshape(info.shape)
        values = self._decode(const.vals, kind)
        if info.dtype.kind == "c":
            pairs = values.size // 2  # TF ignores an odd trailing component, as here
            values = values[:2 * pairs].view(info.dtype)
        elif kind == _HALF:
            values = values.astype(np.uint16).view(info.dtype)
        else:
            values = values.astype(info.dtype, casting="unsafe")
        if values.size == 0:
            return np.zeros(info.shape, dtype=info.dtype)
        out = np.empty(count, dtype=info.dtype)
        kept = values[:count]
        out[:kept.size] = kept
        out[kept.size:] = kept[-1]
        return out.reshape(info.shape)

    def _decode(self, vals: list[tuple[int, int, int | tuple[int, int]]], kind: str
                ) -> np.ndarray:
        """Concatenate packed and unpacked encodings of one repeated scalar field."""
        buf = self._buf
        parts: list[np.ndarray] = []
        if kind in (_F32, _F64):
            width, wanted, dtype = ((4, FIXED32, "<f4") if kind == _F32
                                    else (8, FIXED64, "<f8"))
            for _, wire, value in vals:
                if wire == LENGTH_DELIMITED:
                    start, end = value
                    if (end - start) % width:
                        raise CorruptSourceError(
                            f"packed {dtype} list at byte {start} is {end - start} bytes, not "
                            f"a multiple of {width}")
                    parts.append(np.frombuffer(buf[start:end], dtype=dtype))
                elif wire == wanted:
                    parts.append(np.array([value], dtype=f"<u{width}").view(dtype))
                else:
                    raise CorruptSourceError(f"{dtype} value has wire type {wire}")
            return np.concatenate(parts) if parts else np.empty(0, dtype)
        ints: list[int] = []
        for _, wire, value in vals:
            if wire == LENGTH_DELIMITED:
                start, end = value
                ints.extend(iter_packed_varints(buf[start:end],
                                                what=f"packed varint list at byte {start}"))
            elif wire == VARINT:
                ints.append(value)
            else:
                raise CorruptSourceError(f"integer value has wire type {wire}")
        if kind == _I32:
            return np.array([as_signed32(v) for v in ints], dtype=np.int64)
        if kind == _I64:
            return np.array([as_signed64(v) for v in ints], dtype=np.int64)
        if kind == _U32:
            return np.array([v & 0xFFFFFFFF for v in ints], dtype=np.uint64)
        if kind == _U64:
            return np.array(ints, dtype=np.uint64)
        if kind == _BOOL:
            return np.array([v != 0 for v in ints], dtype=bool)
        return np.array([v & 0xFFFF for v in ints], dtype=np.uint16)  # _HALF bit patterns

    def close(self) -> None:
        """Drop the memory map (arrays still viewing it keep it alive until they go)."""
        if self._buf is not None:
            try:
                self._buf.release()
            except BufferError:
                pass
            self._buf = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # arrays returned by read() still view it; it closes when they go
            self._map = None

