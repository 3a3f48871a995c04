"""MTCNN ``det1/2/3.npy`` reader: a pickled dict of arrays, unpickled without running code.

Upstream facenet saved each MTCNN stage under Python 2 as a 0-d object array holding
``{layer: {param: ndarray}}``. ``np.load(allow_pickle=True)`` would run whatever the pickle
asks for, so this reader parses the ``.npy`` header itself and unpickles the payload with an
Unpickler that resolves only numpy's array reconstruction globals; any other global
(``os.system``, ``builtins.eval``...) is refused by name before anything is called.

Canonical tensor names: ``<layer>/<param>`` as stored, e.g. ``conv1/weights``,
``conv1/biases``, ``PReLU1/alpha`` (det1) / ``prelu1/alpha`` (det2, det3),
``conv4-1/weights``; ordered by name.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
from pathlib import Path
from typing import Self

import numpy as np

from facenet_convert.converter.core.errors import (
    CorruptSourceError,
    SourceError,
    UnknownFormatError,
    UnsafeSourceError,
    UnsupportedSourceError,
)
from facenet_convert.converter.core.inputs import open_regular
from facenet_convert.converter.sources.base import MAX_RANK, SourceReader, TensorInfo

__all__ = ["MAX_FILE_BYTES", "MAX_HEADER_BYTES", "MtcnnNpyReader", "parse_npy_header",
           "restricted_loads"]

NPY_MAGIC = b"\x93NUMPY"
#: numpy itself refuses headers over 10000 bytes unless told otherwise; 64 KiB is generous.
MAX_HEADER_BYTES = 64 * 1024
#: det1/2/3.npy are 27 KB to 1.6 MB; the whole file is read, so refuse anything far larger.
MAX_FILE_BYTES = 256 * 1024 * 1024
_NUMERIC_KINDS = "biufc"
_SPEC_KINDS = "biufcOSUa?bBhHlLqQefdgFDG"

# The reconstruction callables numpy's pickles name, taken from live objects so that
# neither the deprecated ``numpy.core`` alias nor any other module is imported here.
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
#: Object arrays only wrap the outer dict; more elements than this is not an MTCNN file.
_MAX_OBJECT_ELEMENTS = 64


class _GuardedArray(np.ndarray):
    """The only array class a payload gets: sizes are checked before numpy allocates.

    numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` followed by
    ``__setstate__((version, shape, dtype, fortran, data))``; a hostile payload could instead
    call ``ndarray(huge_shape)`` or give a huge shape with an object list and make numpy
    allocate before failing. Both paths are checked here first.
    """

    def __new__(cls, *args: object, **kwargs: object) -> Self:
        raise pickle.UnpicklingError("payload constructs an ndarray directly; numpy pickles "
                                     "never do")

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("ndarray state is not a 4- or 5-tuple")
        shape, dtype, _fortran, data = state[-4:]
        if not isinstance(shape, tuple) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise pickle.UnpicklingError(f"ndarray shape {shape!r} is not non-negative ints")
        _check_plain_dtype(dtype)
        count = 1
        for dim in shape:
            count *= dim
        if len(shape) > MAX_RANK or _bounding_bytes(shape, dtype.itemsize) >= 1 << 62:
            raise pickle.UnpicklingError(f"ndarray shape {shape} has more than {MAX_RANK} "
                                         "dimensions or dimensions too large to address")
        if dtype.hasobject:
            if count > _MAX_OBJECT_ELEMENTS or not isinstance(data, list) or len(data) != count:
                raise pickle.UnpicklingError(
                    f"object array of shape {shape} with {_describe(data)} payload; expected "
                    f"a list of exactly its elements (at most {_MAX_OBJECT_ELEMENTS})")
        elif not isinstance(data, (bytes, str)) or len(data) != count * dtype.itemsize:
            size = len(data) if isinstance(data, (bytes, str)) else _describe(data)
            raise pickle.UnpicklingError(
                f"array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} "
                f"bytes of data, found {size}")
        super().__setstate__(state)


def _check_plain_dtype(dtype: object) -> None:
    """Only plain numeric dtypes (or ``object`` for the outer dict) may shape data.

    A pickle can BUILD any state onto a dtype (``dtype.__setstate__``): fields holding
    objects inside a float32, odd sizes, void records. Such a dtype is refused before numpy
    interprets a single byte with it.
    """
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"ndarray dtype is a {type(dtype).__name__}")
    if dtype.kind not in _SPEC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"dtype {dtype!r} is not a plain numeric dtype "
                                     "(structured, void or subarray dtypes are refused)")
    canonical = np.dtype(dtype.str)
    if dtype != canonical or dtype.itemsize != canonical.itemsize or (
            dtype.hasobject and dtype.kind != "O"):
        raise pickle.UnpicklingError(f"dtype {dtype!r} carries a state that differs from "
                                     f"{canonical!r}; refusing it")


def _bounding_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes the shape would span if its zero dimensions were ones (numpy's own overflow)."""
    total = max(itemsize, 1)
    for dim in shape:
        total *= max(dim, 1)
    return total


def _safe_reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    """numpy's ``_reconstruct`` limited to what numpy itself emits: an empty placeholder."""
    if subtype is not _GuardedArray or shape not in ((0,), 0) or dtype not in (b"b", "b"):
        raise pickle.UnpicklingError(
            f"_reconstruct({getattr(subtype, '__name__', subtype)!r}, {shape!r}, {dtype!r}) is "
            "not how numpy pickles arrays")
    return _RECONSTRUCT(_GuardedArray, (0,), b"b")


def _safe_dtype(spec: object, align: object = False, copy: object = False) -> np.dtype:
    """``numpy.dtype`` from a short type string only (what array pickles carry)."""
    if not isinstance(spec, str) or len(spec) > 8:
        raise pickle.UnpicklingError(f"dtype spec {spec!r} is not a short type string")
    if spec.lstrip("<>|=")[:1] not in _SPEC_KINDS:
        raise pickle.UnpicklingError(f"dtype spec {spec!r} is not a numeric or object type")
    return np.dtype(spec, bool(align), bool(copy))


def _safe_scalar(dtype: object, data: object = None) -> object:
    """``numpy.core.multiarray.scalar`` for plain numeric dtypes only."""
    _check_plain_dtype(dtype)
    if (dtype.hasobject
            or not isinstance(data, (bytes, str)) or len(data) != dtype.itemsize):
        raise pickle.UnpicklingError(f"scalar({dtype!r}, ...) is not a plain numeric scalar")
    return _SCALAR(dtype, data)


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("numpy", "ndarray"): _GuardedArray,
    ("numpy", "dtype"): _safe_dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves numpy's array-rebuilding globals and nothing else."""

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> object:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UnsafeSourceError(
                f"the pickle payload asks for {module}.{name}, which could run code; only "
                "numpy array reconstruction is allowed, so the file was not loaded",
                path=self._path)
        return found

    def persistent_load(self, pid: object) -> object:
        raise UnsafeSourceError("the pickle payload uses persistent ids; refusing it",
                                path=self._path)


def restricted_loads(data: bytes, path: Path) -> object:
    """Unpickle ``data`` allowing only numpy reconstruction globals (Python 2 str as latin1)."""
    try:
        return _RestrictedUnpickler(data, path).load()
    except SourceError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of the restricted load is damage
        detail = " ".join(str(error).split()) or type(error).__name__
        raise CorruptSourceError(f"pickle payload is damaged ({type(error).__name__}: "
                                 f"{detail})", path=path) from None


def parse_npy_header(data: bytes, path: Path) -> tuple[dict, int]:
    """Return (header dict, payload offset) of a ``.npy`` file, checking every field."""
    if not data.startswith(NPY_MAGIC):
        raise UnknownFormatError(f"not a .npy file: starts with {data[:6]!r}, expected "
                                 f"{NPY_MAGIC!r}", path=path)
    if len(data) < 10:
        raise CorruptSourceError(f".npy file is {len(data)} bytes, too short for a header",
                                 path=path)
    major, minor = data[6], data[7]
    if major == 1:
        length_bytes, encoding = 2, "latin1"
    elif major in (2, 3):
        length_bytes, encoding = 4, "latin1" if major == 2 else "utf-8"
    else:
        raise UnsupportedSourceError(f".npy format version {major}.{minor} is unknown; "
                                     "expected 1.0, 2.0 or 3.0", path=path)
    start = 8 + length_bytes
    if len(data) < start:
        raise CorruptSourceError(".npy header length is truncated", path=path)
    header_len = int.from_bytes(data[8:start], "little")
    if header_len > MAX_HEADER_BYTES:
        raise CorruptSourceError(f".npy header declares {header_len} bytes, more than the "
                                 f"{MAX_HEADER_BYTES} allowed", path=path)
    if start + header_len > len(data):
        raise CorruptSourceError(f".npy header declares {header_len} bytes but the file has "
                                 f"{len(data) - start} after the preamble; it is truncated",
                                 path=path)
    try:
        text = data[start:start + header_len].decode(encoding)
        header = ast.literal_eval(text)
    except (UnicodeDecodeError, SyntaxError, ValueError, TypeError, MemoryError,
            RecursionError) as error:
        raise CorruptSourceError(f".npy header is not a Python literal ({type(error).__name__})",
                                 path=path) from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        keys = sorted(map(repr, header)) if isinstance(header, dict) else type(header).__name__
        raise CorruptSourceError(f".npy header must be a dict with keys descr, fortran_order, "
                                 f"shape; found {keys}", path=path)
    shape = header["shape"]
    if (not isinstance(shape, tuple)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in shape)):
        raise CorruptSourceError(f".npy header shape {shape!r} is not a tuple of "
                                 "non-negative ints", path=path)
    if not isinstance(header["fortran_order"], bool):
        raise CorruptSourceError(".npy header fortran_order is not a bool", path=path)
    return header, start + header_len


class MtcnnNpyReader(SourceReader):
    """Reads an upstream MTCNN ``det*.npy`` (pickled ``{layer: {param: array}}``) safely."""

    format = "mtcnn-npy"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            with open_regular(self.path) as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > MAX_FILE_BYTES:
                    raise UnsupportedSourceError(
                        f"file is {size} bytes; MTCNN det*.npy files are under 2 MB and this "
                        f"reader refuses more than {MAX_FILE_BYTES}", path=self.path)
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as error:
            raise SourceError(f"cannot read: {error.strerror or error}", path=self.path
                              ) from error
        header, offset = parse_npy_header(data, self.path)
        if header["descr"] != "|O" or header["shape"] != ():
            raise UnsupportedSourceError(
                f"this .npy holds a plain array (descr {header['descr']!r}, shape "
                f"{header['shape']}), not MTCNN weights; expected a 0-d object array (descr "
                "'|O', shape ()) holding a pickled {layer: {param: array}} dict", path=self.path)
        payload = data[offset:]
        if not payload:
            raise CorruptSourceError(f"no pickle payload after the header (byte {offset}); "
                                     "the file is truncated", path=self.path)
        loaded = restricted_loads(payload, self.path)
        self._arrays = self._validate(loaded)
        self._infos = {name: TensorInfo(name=name, dtype=array.dtype, shape=array.shape)
                       for name, array in self._arrays.items()}

    def _validate(self, loaded: object) -> dict[str, np.ndarray]:
        if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ():
            loaded = loaded.item()
        if not isinstance(loaded, dict) or not loaded:
            raise CorruptSourceError(f"payload is {_describe(loaded)}, expected a non-empty "
                                     "{layer: {param: array}} dict", path=self.path)
        arrays: dict[str, np.ndarray] = {}
        for layer, params in loaded.items():
            if not isinstance(layer, str) or not isinstance(params, dict):
                raise CorruptSourceError(f"entry {layer!r} is {_describe(params)}, expected "
                                         "str -> {param: array}", path=self.path)
            for param, value in params.items():
                name = f"{layer}/{param}" if isinstance(param, str) else None
                if name is None or not isinstance(value, np.ndarray):
                    raise CorruptSourceError(f"layer {layer!r} entry {param!r} is "
                                             f"{_describe(value)}, expected str -> ndarray",
                                             path=self.path)
                if value.dtype.kind not in _NUMERIC_KINDS or value.dtype.fields is not None:
                    raise CorruptSourceError(f"{name} has dtype {value.dtype}, expected a "
                                             "numeric array", path=self.path, key=name)
                if name in arrays:
                    raise CorruptSourceError(f"two entries are named {name!r}", path=self.path,
                                             key=name)
                value = value.view(np.ndarray)
                value = value.astype(value.dtype.newbyteorder("="), copy=False)
                value.flags.writeable = False
                arrays[name] = value
        return dict(sorted(arrays.items()))

    def tensors(self) -> dict[str, TensorInfo]:
        """Every ``<layer>/<param>`` array, ordered by name."""
        return dict(self._infos)

    def read(self, name: str) -> np.ndarray:
        """The array ``name`` (read-only; the whole file was decoded on open, it is small)."""
        array = self._arrays.get(name)
        if array is None:
            raise self.missing(name, self._arrays)
        return array


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an ndarray of dtype {value.dtype} and shape {value.shape}"
    return f"a {type(value).__name__}"
