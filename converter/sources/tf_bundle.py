"""TensorFlow V2 checkpoints (tensor bundles) read without TensorFlow.

A bundle is ``PREFIX.index`` (an SSTable of BundleEntryProto, see ``sstable.py``) plus data
shards ``PREFIX.data-%05d-of-%05d``. Every entry is validated against the shard sizes when the
bundle is opened, so nothing is allocated or mapped from a declared size the files cannot hold;
data is read zero-copy from a read-only memory map and checked against its crc32c.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facenet_convert.converter.core.errors import (
    CorruptSourceError,
    SourceError,
    UnknownFormatError,
    UnsupportedSourceError,
)
from facenet_convert.converter.core.inputs import kind_of, open_regular
from facenet_convert.converter.core.protowire import (
    FIXED32,
    LENGTH_DELIMITED,
    VARINT,
    as_signed32,
    as_signed64,
    iter_fields,
    iter_packed_varints,
    read_varint,
)
from facenet_convert.converter.sources.base import SourceReader, TensorInfo, check_shape
from facenet_convert.converter.sources.sstable import (
    crc32c_extend,
    read_table,
    unmask_crc,
)
from facenet_convert.converter.sources.tf_dtypes import DT_STRING, NAMES, NUMPY_DTYPES

# TensorFlow's tensor_bundle.cc: kTensorBundleMinProducer = 0, kTensorBundleMinConsumer = 0,
# kTensorBundleVersion = 1 (the consumer version this reader stands for).
TENSOR_BUNDLE_MIN_PRODUCER = 0
TENSOR_BUNDLE_VERSION = 1
MAX_RANK = 254  # TensorShape::MaxDimensions()
#: The ``checkpoint`` state file lists a few paths; anything larger is not one.
MAX_STATE_BYTES = 1 << 20


def _numpy_max_rank() -> int:
    try:
        np.empty((1,) * 64)
    except ValueError:
        return 32  # numpy 1.x
    return 64


NUMPY_MAX_RANK = _numpy_max_rank()
_INT64_MAX = (1 << 63) - 1

_NUMERIC_DTYPES = {code: dtype for code, dtype in NUMPY_DTYPES.items() if code != DT_STRING}
_OBJECT = NUMPY_DTYPES[DT_STRING]
_DATA_RE = re.compile(r"^(?P<prefix>.+)\.data-(?P<shard>\d{5,})-of-(?P<count>\d{5,})$")
# facenet.get_model_filenames: re.match(r'(^model-[\w\- ]+.ckpt-(\d+))', f)
_UPSTREAM_RE = re.compile(r"^model-[\w\- ]+\.ckpt-(\d+)$")
# text_format: a field, an optional colon, then one or more adjacent quoted strings ("..." or
# '...', concatenated), an optional comment.
_STATE_RE = re.compile(r"""^\s*model_checkpoint_path\s*:?\s*((?:"(?:[^"\n\\]|\\.)*"\s*"""
                       r"""|'(?:[^'\n\\]|\\.)*'\s*)+)(?:#.*)?$""")
_STATE_PIECE = re.compile(r""""((?:[^"\n\\]|\\.)*)"|'((?:[^'\n\\]|\\.)*)'""")
_CUNESCAPE_HEX = re.compile(r"(\\+)x([0-9a-fA-F])(?![0-9a-fA-F])")


def data_filename(prefix: str | os.PathLike[str], shard: int, num_shards: int) -> Path:
    """TensorFlow's DataFilename: ``PREFIX.data-%05d-of-%05d``."""
    return Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


@dataclass(frozen=True)
class BundleEntry:
    """One validated BundleEntryProto."""

    name: str
    dtype_enum: int
    dtype: np.dtype
    shape: tuple[int, ...]
    num_elements: int
    shard_id: int
    offset: int
    size: int
    crc32c: int  # unmasked


# --------------------------------------------------------------------------- path resolution


def _cunescape(text: str) -> bytes:
    """protobuf's ``text_encoding.CUnescape``, which TF's ``get_checkpoint_state`` runs.

    Octal, ``\\x`` (one or two digits), ``\\u``/``\\U``, ``\\N{...}`` and C escapes decode
    exactly as there; whatever makes it fail (a truncated escape, a character above U+00FF
    from ``\\N{...}``) raises ValueError, as it makes TensorFlow fail.
    """
    def widen(match: re.Match[str]) -> str:
        if len(match.group(1)) & 1:
            return match.group(1) + "x0" + match.group(2)
        return match.group(0)

    result = _CUNESCAPE_HEX.sub(widen, text)
    result = result.encode("raw_unicode_escape").decode("raw_unicode_escape")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "invalid escape sequence": kept as is, like protobuf
        result = result.encode("utf-8").decode("unicode_escape")
    return result.encode("latin-1")


def _unescape_state(token: str, state: Path) -> str:
    """The string value of ``model_checkpoint_path``'s quoted pieces, as TF reads it."""
    raw = b""
    for piece in _STATE_PIECE.finditer(token):
        text = piece.group(1) if piece.group(1) is not None else piece.group(2)
        try:
            raw += _cunescape(text)
        except ValueError as error:
            raise CorruptSourceError(
                f"model_checkpoint_path holds an escape TensorFlow cannot decode "
                f"({type(error).__name__}: {error}); fix or delete the state file, or pass a "
                "prefix", path=state) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptSourceError(
            "model_checkpoint_path decodes to bytes that are not UTF-8 (TensorFlow refuses "
            "them too); fix or delete the state file, or pass a prefix", path=state) from None


def _prefixes_in(folder: Path) -> list[str]:
    return sorted(p.name[:-len(".index")] for p in folder.iterdir()
                  if p.name.endswith(".index") and p.is_file())


def resolve_prefix(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """(prefix, one line saying which prefix was taken and why) for any accepted path form."""
    p = Path(path)
    if p.is_dir():
        return _resolve_dir(p)
    name = p.name
    if name.endswith(".index") and p.is_file():
        prefix = p.with_name(name[:-len(".index")])
        return prefix, f"prefix {prefix} (given its .index)"
    match = _DATA_RE.match(name)
    if match and p.is_file():
        prefix = p.with_name(match["prefix"])
        return prefix, f"prefix {prefix} (given its data shard {name})"
    if Path(f"{p}.index").is_file():
        return p, f"prefix {p} (given as a prefix)"
    for suffix in (".meta",):
        if name.endswith(suffix) and Path(f"{str(p)[:-len(suffix)]}.index").is_file():
            prefix = Path(str(p)[:-len(suffix)])
            return prefix, f"prefix {prefix} (given its {suffix} graph file)"
    if not p.exists():
        raise SourceError(f"no such file, folder or checkpoint prefix (looked for {p} and "
                          f"{p.name}.index); check the path", path=p)
    raise UnknownFormatError(
        f"not a TensorFlow V2 checkpoint: expected a folder, a prefix with PREFIX.index, the "
        f".index or a .data-NNNNN-of-NNNNN file, found no {p.name}.index; pass one of those",
        path=p)


def _state_file_present(state: Path) -> bool:
    """A ``checkpoint`` entry to read: a folder or dangling link of that name is ignored (as
    before); a FIFO, socket or device is taken, so that reading it is refused in one line."""
    try:
        return not stat.S_ISDIR(os.stat(state).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # unreadable: open_regular says why


def _resolve_dir(folder: Path) -> tuple[Path, str]:
    state = folder / "checkpoint"
    available = _prefixes_in(folder)
    if _state_file_present(state):
        with open_regular(state, "the checkpoint state file") as handle:
            data = handle.read(MAX_STATE_BYTES + 1)
        if len(data) > MAX_STATE_BYTES:
            raise CorruptSourceError(f"checkpoint state file is over {MAX_STATE_BYTES} bytes; "
                                     "TensorFlow writes a few hundred", path=state)
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise CorruptSourceError("checkpoint state file is not UTF-8 text (TensorFlow "
                                     "cannot read it either); fix or delete it, or pass a "
                                     "prefix", path=state) from None
        value = None
        for line in lines:
            match = _STATE_RE.match(line)
            if match:
                value = _unescape_state(match.group(1), state)
                break
        if value is None:
            raise CorruptSourceError(
                "checkpoint state file has no model_checkpoint_path: \"...\" line; fix or delete "
                f"it, or pass a prefix (available: {', '.join(available) or 'none'})",
                path=state)
        # Only the basename, inside this folder: state files carry the training machine's
        # absolute paths (possibly Windows ones), and a hostile one must not leave the folder.
        base = value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        if base in ("", ".", "..") or not (folder / f"{base}.index").is_file():
            raise CorruptSourceError(
                f"checkpoint state file names {value!r}; its basename {base!r} has no .index in "
                f"this folder (available: {', '.join(available) or 'none'}); pass the prefix "
                "you want", path=state)
        prefix = folder / base
        return prefix, (f"prefix {prefix} (the basename of model_checkpoint_path {value!r} in "
                        f"{state}, taken inside the folder)")
    if not available:
        raise UnknownFormatError("folder holds no checkpoint: expected PREFIX.index files or a "
                                 "checkpoint state file; pass the checkpoint's folder or prefix",
                                 path=folder)
    upstream = [(int(m.group(1)), name) for name in available
                if (m := _UPSTREAM_RE.match(name))]
    if upstream:
        step, name = max(upstream)
        return folder / name, (f"prefix {folder / name} (no checkpoint state file; highest step "
                               f"{step} among {len(upstream)} model-*.ckpt-<step> prefixes, as "
                               "facenet.get_model_filenames does)")
    if len(available) == 1:
        return folder / available[0], (f"prefix {folder / available[0]} (no checkpoint state "
                                       "file; the only .index in the folder)")
    raise UnknownFormatError(
        f"folder holds {len(available)} checkpoints and no state file: "
        f"{', '.join(available)}; pass the prefix you want", path=folder)


# ------------------------------------------------------------------------------ proto parsing


def _fields(buf: bytes, what: str, path: str, key: str | None):
    try:
        yield from iter_fields(buf, what=what)
    except CorruptSourceError as exc:
        raise CorruptSourceError(f"{exc}; the .index file is damaged: restore it",
                                 path=path, key=key) from None


def _expect_wire(field: int, wire: int, expected: int, what: str, path: str,
                 key: str | None) -> None:
    if wire != expected:
        raise CorruptSourceError(f"{what} field {field} has wire type {wire}, expected "
                                 f"{expected}; the .index file is damaged", path=path, key=key)


# Wire type of each known field: BundleHeaderProto and BundleEntryProto (slices, 7, repeats).
_HEADER_WIRES = {1: VARINT, 2: VARINT, 3: LENGTH_DELIMITED}
_ENTRY_WIRES = {1: VARINT, 2: LENGTH_DELIMITED, 3: VARINT, 4: VARINT, 5: VARINT, 6: FIXED32}


def _parse_header(value: bytes, path: str) -> tuple[int, int, int, int, list[int]]:
    """(num_shards, endianness, producer, min_consumer, bad_consumers) of BundleHeaderProto."""
    num_shards = endianness = producer = min_consumer = 0
    bad: list[int] = []
    for field, wire, val in _fields(value, "bundle header", path, None):
        if field in _HEADER_WIRES:
            _expect_wire(field, wire, _HEADER_WIRES[field], "bundle header", path, None)
        if field == 1:
            num_shards = as_signed32(val)
        elif field == 2:
            endianness = as_signed32(val)
        elif field == 3:
            for vfield, vwire, vval in _fields(val, "bundle header version", path, None):
                if vfield in (1, 2) and vwire != VARINT:
                    _expect_wire(vfield, vwire, VARINT, "bundle header version", path, None)
                if vfield == 1:
                    producer = as_signed32(vval)
                elif vfield == 2:
                    min_consumer = as_signed32(vval)
                elif vfield == 3 and vwire == VARINT:
                    bad.append(as_signed32(vval))
                elif vfield == 3 and vwire == LENGTH_DELIMITED:
                    try:
                        bad.extend(as_signed32(v) for v in iter_packed_varints(vval))
                    except CorruptSourceError as exc:
                        raise CorruptSourceError(f"bundle header version: {exc}",
                                                 path=path) from None
    return num_shards, endianness, producer, min_consumer, bad


def _parse_shape(buf: bytes, path: str, key: str) -> tuple[int, ...]:
    dims: list[int] = []
    for field, wire, val in _fields(buf, "tensor shape", path, key):
        if field == 2:
            _expect_wire(field, wire, LENGTH_DELIMITED, "tensor shape", path, key)
            size = 0
            for dfield, dwire, dval in _fields(val, "tensor shape dim", path, key):
                if dfield == 1:
                    _expect_wire(dfield, dwire, VARINT, "tensor shape dim", path, key)
                    size = as_signed64(dval)
            if size < 0:
                raise CorruptSourceError(f"shape dimension {len(dims)} is {size}, expected >= 0; "
                                         "the .index file is damaged", path=path, key=key)
            dims.append(size)
            if len(dims) > MAX_RANK:
                raise CorruptSourceError(f"shape has more than {MAX_RANK} dimensions "
                                         "(TensorFlow's limit); the .index file is damaged",
                                         path=path, key=key)
        elif field == 3:
            _expect_wire(field, wire, VARINT, "tensor shape", path, key)
            if val:
                raise CorruptSourceError("shape has unknown rank, expected a fully known shape; "
                                         "the .index file is damaged", path=path, key=key)
    return tuple(dims)


def _parse_entry(name: str, value: bytes, path: str) -> tuple[int, tuple[int, ...], int, int,
                                                                 int, int, bool]:
    dtype = shard = offset = size = crc = 0
    shape: tuple[int, ...] = ()
    sliced = False
    seen: set[int] = set()
    for field, wire, val in _fields(value, "bundle entry", path, name):
        if field in seen and field != 7:
            raise CorruptSourceError(f"bundle entry field {field} appears twice; the .index file "
                                     "is damaged", path=path, key=name)
        seen.add(field)
        if field in _ENTRY_WIRES:
            _expect_wire(field, wire, _ENTRY_WIRES[field], "bundle entry", path, name)
        if field == 1:
            dtype = as_signed32(val)
        elif field == 2:
            shape = _parse_shape(val, path, name)
        elif field == 3:
            shard = as_signed32(val)
        elif field == 4:
            offset = as_signed64(val)
        elif field == 5:
            size = as_signed64(val)
        elif field == 6:
            crc = unmask_crc(val)
        elif field == 7:
            sliced = True
    return dtype, shape, shard, offset, size, crc, sliced


# ------------------------------------------------------------------------------------ reader


class TFCheckpointReader(SourceReader):
    """A TF V2 checkpoint given as a folder, a prefix, its ``.index`` or a ``.data-*`` shard.

    ``prefix`` is the bundle prefix taken and ``resolution`` one line saying why. With
    ``skip_unsupported=True`` entries of dtypes we cannot read (VARIANT, RESOURCE...) are left
    out of ``tensors()`` and listed in ``skipped`` instead of failing the open.
    """

    format = "tf-checkpoint"

    def __init__(self, path: str | os.PathLike[str], *, skip_unsupported: bool = False) -> None:
        super().__init__(Path(path))
        self.prefix, self.resolution = resolve_prefix(path)
        self.index_path = Path(f"{self.prefix}.index")
        self.skipped: dict[str, str] = {}
        self._maps: dict[int, mmap.mmap | None] = {}
        self._open(skip_unsupported)

    # ---- opening: everything static is validated here, before any data is touched
    def _open(self, skip_unsupported: bool) -> None:
        ipath = str(self.index_path)
        pairs = read_table(self.index_path)
        if not pairs or pairs[0][0] != b"":
            raise CorruptSourceError(
                "the first entry is not the bundle header (empty key); expected a "
                "BundleHeaderProto there: the .index is damaged or not a TF bundle", path=ipath)
        num_shards, endianness, producer, min_consumer, bad = _parse_header(pairs[0][1], ipath)
        if producer < TENSOR_BUNDLE_MIN_PRODUCER:
            raise UnsupportedSourceError(
                f"checkpoint producer version {producer} is below the minimum "
                f"{TENSOR_BUNDLE_MIN_PRODUCER}; re-save it with a current TensorFlow",
                path=ipath)
        if min_consumer > TENSOR_BUNDLE_VERSION:
            raise UnsupportedSourceError(
                f"checkpoint needs a consumer version >= {min_consumer}, this reader (like "
                f"TensorFlow) implements bundle version {TENSOR_BUNDLE_VERSION}; re-save it "
                "with a TensorFlow this tool supports", path=ipath)
        if TENSOR_BUNDLE_VERSION in bad:
            raise UnsupportedSourceError(
                f"checkpoint disallows consumer version {TENSOR_BUNDLE_VERSION} (bad_consumers "
                f"{bad}); re-save it with a current TensorFlow", path=ipath)
        if endianness not in (0, 1):
            raise CorruptSourceError(f"header endianness is {endianness}, expected 0 (little) or "
                                     "1 (big); the .index file is damaged", path=ipath)
        self.big_endian = endianness == 1
        n_entries = len(pairs) - 1
        if num_shards < 0 or num_shards > max(1, n_entries):
            raise CorruptSourceError(
                f"header declares {num_shards} data shards, expected 1 to {max(1, n_entries)} "
                f"for {n_entries} tensors; the .index file is damaged", path=ipath)
        self.num_shards = num_shards
        self.shard_paths = [data_filename(self.prefix, i, num_shards) for i in range(num_shards)]
        shard_sizes = []
        for i, shard in enumerate(self.shard_paths):
            try:
                info = shard.stat()
                if not stat.S_ISREG(info.st_mode):
                    raise SourceError(f"data shard {i} is {kind_of(info.st_mode)}, not a "
                                      "regular file; refusing to read it", path=shard)
                shard_sizes.append(info.st_size)
            except FileNotFoundError:
                raise CorruptSourceError(
                    f"data shard {i} of {num_shards} is missing (the checkpoint is incomplete); "
                    f"expected it next to "
                    f"{self.index_path.name}: copy every {self.prefix.name}.data-* file with "
                    "the .index", path=shard) from None
            except OSError as exc:
                raise SourceError(f"cannot stat data shard {i} ({exc.strerror})",
                                  path=shard) from None
        self._shard_sizes = shard_sizes
        entries: dict[str, BundleEntry] = {}
        for raw_key, value in pairs[1:]:
            name = raw_key.decode("utf-8", "backslashreplace")
            entry = self._validate(name, value, ipath, skip_unsupported)
            if entry is not None:
                entries[name] = entry
        self._entries = entries
        self._infos = {name: TensorInfo(name, e.dtype, e.shape) for name, e in entries.items()}

    def _validate(self, name: str, value: bytes, ipath: str,
                  skip_unsupported: bool) -> BundleEntry | None:
        dtype_enum, shape, shard, offset, size, crc, sliced = _parse_entry(name, value, ipath)
        if sliced:
            raise UnsupportedSourceError(
                "entry is a sliced (partitioned) variable, which this reader does not "
                "assemble; re-save the checkpoint with unpartitioned variables", path=ipath,
                key=name)
        if dtype_enum == DT_STRING:
            dtype = _OBJECT
        elif dtype_enum in _NUMERIC_DTYPES:
            dtype = _NUMERIC_DTYPES[dtype_enum]
        else:
            label = f"DT_{NAMES[dtype_enum]}" if dtype_enum in NAMES else "an unknown dtype"
            message = (f"dtype {dtype_enum} ({label}) is not a plain tensor this reader decodes; "
                       "expected a numeric, bool or string dtype; drop it from the checkpoint "
                       "or ignore the entry")
            if skip_unsupported:
                self.skipped[name] = message
                return None
            raise UnsupportedSourceError(message, path=ipath, key=name)
        check_shape(shape, dtype.itemsize, ipath, name)
        count = 1
        for dim in shape:
            count *= dim
            if count > _INT64_MAX:
                raise CorruptSourceError(
                    f"shape {list(shape)} holds more than 2**63-1 elements; the .index file is "
                    "damaged", path=ipath, key=name)
        if len(shape) > NUMPY_MAX_RANK:
            raise UnsupportedSourceError(
                f"tensor has rank {len(shape)}, valid for TensorFlow but above numpy's limit of "
                f"{NUMPY_MAX_RANK} dimensions; reshape it in TensorFlow and re-save",
                path=ipath, key=name)
        if not 0 <= shard < self.num_shards:
            raise CorruptSourceError(
                f"entry points at data shard {shard}, expected 0 to {self.num_shards - 1}; the "
                ".index file is damaged", path=ipath, key=name)
        shard_path = self.shard_paths[shard]
        if offset < 0 or size < 0:
            raise CorruptSourceError(f"entry has offset {offset} and size {size}, expected both "
                                     ">= 0; the .index file is damaged", path=ipath, key=name)
        if dtype is _OBJECT:
            minimum = count + 4 if count else 0
            if size < minimum:
                raise CorruptSourceError(
                    f"string tensor of {count} elements declares {size} bytes, expected at "
                    f"least {minimum}; the .index file is damaged", path=ipath, key=name)
        elif size != count * dtype.itemsize:
            raise CorruptSourceError(
                f"entry declares {size} bytes, expected {count} elements x {dtype.itemsize} "
                f"bytes = {count * dtype.itemsize} for {dtype.name}{list(shape)}; the .index "
                "file is damaged", path=ipath, key=name)
        if offset + size > self._shard_sizes[shard]:
            raise CorruptSourceError(
                f"tensor bytes [{offset}, {offset + size}) end past the shard's "
                f"{self._shard_sizes[shard]} bytes; the shard is truncated or the .index "
                "damaged: restore the checkpoint files", path=shard_path, key=name)
        return BundleEntry(name, dtype_enum, dtype, shape, count, shard, offset, size, crc)

    # ---- SourceReader API
    def tensors(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def files(self) -> list[Path]:
        return [self.index_path, *self.shard_paths]

    def guarded_files(self) -> list[Path]:
        state = self.path / "checkpoint"
        return [*self.files(), state] if _state_file_present(state) else self.files()

    def entry(self, name: str) -> BundleEntry:
        """The validated index entry of ``name`` (shard, offset, size, crc)."""
        try:
            return self._entries[name]
        except KeyError:
            if name in self.skipped:
                raise UnsupportedSourceError(self.skipped[name], path=self.index_path,
                                             key=name) from None
            raise self.missing(name, self._entries, where=self.index_path) from None

    def read(self, name: str) -> np.ndarray:
        """The tensor as a read-only array (a view of the shard's memory map when aligned)."""
        return self._read_entry(self.entry(name))

    def read_many(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) for ``names`` (default: all), read in file order for sequential I/O."""
        chosen = [self.entry(n) for n in (self._entries if names is None else names)]
        chosen.sort(key=lambda e: (e.shard_id, e.offset))
        for entry in chosen:
            yield entry.name, self._read_entry(entry)

    def close(self) -> None:
        maps, self._maps = self._maps, {}
        for mm in maps.values():
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    pass  # arrays handed out still view it; it closes when they are freed

    # ---- data
    def _shard_map(self, shard: int) -> mmap.mmap | None:
        if shard in self._maps:
            return self._maps[shard]
        path = self.shard_paths[shard]
        try:
            with open_regular(path, "data shard") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size != self._shard_sizes[shard]:
                    raise CorruptSourceError(
                        f"shard changed size since the checkpoint was opened ("
                        f"{self._shard_sizes[shard]} -> {size} bytes); reopen it", path=path)
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except FileNotFoundError:
            raise SourceError(f"data shard {shard} of {self.num_shards} disappeared after the "
                              "checkpoint was opened; restore it", path=path) from None
        except OSError as exc:
            raise SourceError(f"cannot map data shard {shard} ({exc.strerror})",
                              path=path) from None
        self._maps[shard] = mm
        return mm

    def _read_entry(self, entry: BundleEntry) -> np.ndarray:
        if entry.size == 0:
            if entry.crc32c != 0:
                raise CorruptSourceError(
                    f"empty tensor's stored crc32c is {entry.crc32c:08x}, expected 00000000; "
                    "the .index file is damaged", path=self.index_path, key=entry.name)
            if entry.dtype is _OBJECT:
                out = np.full(entry.shape, b"", dtype=object)
            else:
                out = np.zeros(entry.shape, dtype=entry.dtype)
            out.flags.writeable = False
            return out
        mm = self._shard_map(entry.shard_id)
        if mm is None or entry.offset + entry.size > len(mm):
            raise CorruptSourceError("tensor bytes end past the shard's end; the shard changed "
                                     "since opening: reopen it",
                                     path=self.shard_paths[entry.shard_id], key=entry.name)
        if entry.dtype is _OBJECT:
            return self._read_strings(entry, mm)
        raw = np.frombuffer(mm, dtype=np.uint8, count=entry.size, offset=entry.offset)
        actual = crc32c_extend(0, raw)
        if actual != entry.crc32c:
            raise CorruptSourceError(
                f"data checksum does not match: stored crc32c {entry.crc32c:08x}, computed "
                f"{actual:08x} over {entry.size} bytes at offset {entry.offset}; the shard is "
                "damaged: restore it", path=self.shard_paths[entry.shard_id], key=entry.name)
        dtype = entry.dtype
        if self.big_endian and dtype.itemsize > 1:
            part = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
            out = raw.view(f">u{part}").astype(f"<u{part}").view(dtype).reshape(entry.shape)
        elif entry.offset % dtype.itemsize:
            out = raw.copy().view(dtype).reshape(entry.shape)  # unaligned: torch wants aligned
        else:
            out = raw.view(dtype).reshape(entry.shape)
        if dtype == np.bool_ and entry.size and raw.max() > 1:
            raise CorruptSourceError("bool tensor holds bytes other than 0 and 1; the shard is "
                                     "damaged", path=self.shard_paths[entry.shard_id],
                                     key=entry.name)
        out.flags.writeable = False
        return out

    def _read_strings(self, entry: BundleEntry, mm: mmap.mmap) -> np.ndarray:
        shard_path = self.shard_paths[entry.shard_id]
        buf = memoryview(mm)[entry.offset:entry.offset + entry.size]
        try:
            return self._decode_strings(entry, buf, shard_path)
        finally:
            buf.release()

    def _decode_strings(self, entry: BundleEntry, buf: memoryview, shard_path: Path
                        ) -> np.ndarray:
        end = len(buf)
        lengths = []
        crc = 0
        pos = 0
        order = "big" if self.big_endian else "little"
        total = 0
        for i in range(entry.num_elements):
            try:
                length, pos = read_varint(buf, pos, end, what=f"string {i} length")
            except CorruptSourceError as exc:
                raise CorruptSourceError(f"{exc}; the shard is damaged: restore it",
                                         path=shard_path, key=entry.name) from None
            width = 4 if length <= 0xFFFFFFFF else 8
            crc = crc32c_extend(crc, length.to_bytes(width, order))
            lengths.append(length)
            total += length
        if pos + 4 > end or total != end - pos - 4:
            raise CorruptSourceError(
                f"string lengths add up to {total} bytes after a {pos}-byte length table, "
                f"expected {end - pos - 4 if pos + 4 <= end else 0} to fill the entry's "
                f"{end} bytes; the shard is damaged (flipped length?): restore it",
                path=shard_path, key=entry.name)
        raw_check = bytes(buf[pos:pos + 4])
        stored = unmask_crc(int.from_bytes(raw_check, order))
        if stored != crc:
            raise CorruptSourceError(
                f"string length checksum does not match: stored {stored:08x}, computed "
                f"{crc:08x}; the shard is damaged: restore it", path=shard_path, key=entry.name)
        crc = crc32c_extend(crc, raw_check)
        pos += 4
        crc = crc32c_extend(crc, buf[pos:end])
        if crc != entry.crc32c:
            raise CorruptSourceError(
                f"data checksum does not match: stored crc32c {entry.crc32c:08x}, computed "
                f"{crc:08x}; the shard is damaged: restore it", path=shard_path, key=entry.name)
        out = np.empty(entry.num_elements, dtype=object)
        for i, length in enumerate(lengths):
            out[i] = bytes(buf[pos:pos + length])
            pos += length
        out = out.reshape(entry.shape)
        out.flags.writeable = False
        return out
