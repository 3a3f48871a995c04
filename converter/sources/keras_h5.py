"""Keras HDF5 weights reader (h5py): arrays only, never the model config.

Layouts read:

* Keras 2 full model (``model.save("m.h5")``, also written by Keras 3's legacy H5 saver):
  ``/model_weights`` with a ``layer_names`` attribute; each layer group has ``weight_names``
  and the datasets live at ``<layer>/<weight_name>``. Keras 3 adds a
  ``top_level_model_weights`` group (the model's own variables), read when present.
* Keras 2 weights-only (``save_weights("w.h5")``): the same at the root.
* Keras 3 ``.weights.h5`` (``save_weights("w.weights.h5")``): ``layers/<key>/vars/<i>``,
  nested as ``layers/<model>/layers/<key>/vars/<i>`` for sub-models, plus ``vars/<i>`` for the
  model's own variables. Group keys come from class names (``conv2d_3``), not layer names;
  recent Keras writes the layer name as a ``name`` attribute on each ``vars`` group
  (see :meth:`KerasH5Reader.layer_name`).

Canonical tensor names:

* Keras 2 layouts: ``<layer>/<weight name>`` with a trailing ``:0`` removed; when the weight
  name already starts with ``<layer>/`` (the usual case) the layer is not repeated, so both
  Keras 2 (``conv1/kernel:0``) and Keras 3 legacy files (``conv1/kernel``) give
  ``conv1/kernel``; a sub-model's weights read ``<sub-model>/<inner layer>/<weight>``.
  Order: ``layer_names`` then ``weight_names``, the order Keras loads them in.
* Keras 3 layout: the dataset's HDF5 path, e.g. ``layers/conv2d/vars/0`` (Keras stores no
  weight names there, only positions). Order: depth-first, numeric keys in numeric order.

Safety: the model config (which may hold Lambda code) is never read. Every path is walked one
link at a time: soft and external links, external-storage and virtual datasets and
non-builtin filters (which would load plugin libraries) are refused. Declared dataset sizes
are capped by the file size before anything is read (compression or fill-value bombs).
"""

from __future__ import annotations

import mmap
import os
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from facenet_convert.converter.core.atomic import exit_now
from facenet_convert.converter.core.errors import (
    CorruptSourceError,
    SourceError,
    UnknownFormatError,
    UnsafeSourceError,
    UnsupportedSourceError,
    one_line,
)
from facenet_convert.converter.core.inputs import open_regular
from facenet_convert.converter.sources import has_hdf5_signature
from facenet_convert.converter.sources.base import SourceReader, TensorInfo, check_shape

__all__ = ["ALLOWED_FILTERS", "KerasH5Reader", "size_cap"]

#: The filters Keras/h5py write (gzip, shuffle, fletcher32), each at most once. Anything else
#: is refused: other ids would make HDF5 load a plugin, and the rest no weights file needs.
ALLOWED_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32"}
_DEFLATE, _SHUFFLE, _FLETCHER32 = 1, 2, 3
#: Seconds one HDF5 call may run without progress before the process is ended (a corrupt file
#: can make libhdf5 spin). Only when ``FACENET_CONVERT_H5_TIMEOUT`` is set: the CLI sets it to
#: :data:`DEFAULT_H5_TIMEOUT`; a Python program opts in (ending its process is its call).
H5_TIMEOUT_ENV = "FACENET_CONVERT_H5_TIMEOUT"
DEFAULT_H5_TIMEOUT = 120.0
#: Decoded bytes (per dataset and for the whole file) may exceed the file size by this
#: factor (+ 1 MiB); ``FACENET_CONVERT_H5_EXPANSION`` raises it for very compressible files.
H5_EXPANSION_ENV = "FACENET_CONVERT_H5_EXPANSION"
DEFAULT_H5_EXPANSION = 64
_NUMERIC_KINDS = "biufc"
_MAX_DEPTH = 64
_KERAS3_ROOTS = ("layers", "vars")
_H5_ERRORS = (OSError, RuntimeError, ValueError, TypeError, KeyError)


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SourceError(f"{name}={raw!r} is not a positive number")
    return value


def size_cap(file_size: int) -> int:
    """Most bytes one dataset (and all datasets together) may decode to: 64 x file size + 1 MiB
    by default (compression or fill-value bombs)."""
    return int(_env_number(H5_EXPANSION_ENV, DEFAULT_H5_EXPANSION) * file_size) + (1 << 20)


class _Watchdog:
    """Ends the process with one line when an armed HDF5 call makes no progress in time.

    h5py releases the GIL while libhdf5 works, so this thread runs even when a corrupt file
    makes libhdf5 loop; it removes staged temp outputs and exits with status 2.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._deadline: float | None = None
        self._message = ""
        self._thread: threading.Thread | None = None

    @contextmanager
    def armed(self, message: str) -> Iterator[None]:
        if os.environ.get(H5_TIMEOUT_ENV) is None:
            yield
            return
        timeout = _env_number(H5_TIMEOUT_ENV, DEFAULT_H5_TIMEOUT)
        with self._lock:
            previous = (self._deadline, self._message)
            self._deadline, self._message = time.monotonic() + timeout, message
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="h5-watchdog",
                                                daemon=True)
                self._thread.start()
            self._lock.notify()
        try:
            yield
        finally:
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                message = self._message
                self._deadline, self._message = previous
        # A call that outlived its deadline fails even when the thread did not get to run
        # before it returned (a busy machine): the outcome never depends on thread scheduling.
        if late:
            self._fire(message)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._deadline is None:
                    self._lock.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._lock.wait(left)
                    continue
                message = self._message
            self._fire(message)

    _firing = threading.Lock()

    @classmethod
    def _fire(cls, message: str) -> None:
        # the thread and the call's own check may both find the deadline passed: the first
        # ends the process, the other waits here for that
        cls._firing.acquire()
        exit_now(f"facenet-convert: error: {message}", 2)


_WATCHDOG = _Watchdog()


@dataclass(frozen=True)
class _Entry:
    info: TensorInfo
    h5path: str
    layer: str | None


def _numeric_key(key: str) -> tuple[int, int, str]:
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


class KerasH5Reader(SourceReader):
    """Reads the weight arrays of a Keras ``.h5`` / ``.weights.h5`` file, lazily."""

    format = "keras-h5"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._file: h5py.File | None = None
        self._map: mmap.mmap | None = None
        self._entries: dict[str, _Entry] = {}
        self.layout = ""
        self._visited: dict[object, str] = {}
        self._declared_total = 0
        try:
            with open_regular(self.path) as handle:
                info = os.fstat(handle.fileno())
                self._size = info.st_size
                self._identity = (info.st_dev, info.st_ino)
                signed = has_hdf5_signature(handle, self._size)
        except OSError as error:
            raise SourceError(f"cannot read: {error.strerror or error}", path=self.path
                              ) from error
        if not signed:
            raise UnknownFormatError("not an HDF5 file (no HDF5 signature at byte 0, 512, "
                                     "1024, ...); expected a Keras .h5 weights file",
                                     path=self.path)
        try:
            with self._guard("opening the HDF5 file"):
                self._file = h5py.File(self.path, "r")
        except _H5_ERRORS as error:
            raise CorruptSourceError(f"HDF5 file cannot be opened ({_one_line(error)}); it is "
                                     "truncated or damaged", path=self.path) from None
        try:
            opened = os.fstat(self._file.id.get_vfd_handle())
            if (opened.st_dev, opened.st_ino) != self._identity:
                raise SourceError("the file was replaced while it was being opened; retry",
                                  path=self.path)
            with self._guard("indexing the HDF5 file"):
                self._index()
        except _H5_ERRORS as error:
            # Any HDF5 call the index makes can meet damaged metadata; the precise checks
            # below name the place where they can, this catches the rest.
            self.close()
            raise CorruptSourceError(f"HDF5 metadata is damaged ({_one_line(error)}); the "
                                     "file is truncated or corrupt", path=self.path) from None
        except BaseException:
            self.close()
            raise

    def _guard(self, doing: str) -> AbstractContextManager[None]:
        return _WATCHDOG.armed(one_line(
            f"{self.path}: libhdf5 made no progress for "
            f"{_env_number(H5_TIMEOUT_ENV, DEFAULT_H5_TIMEOUT):g} s while {doing}; the file is "
            f"corrupt (set {H5_TIMEOUT_ENV} to wait longer)"))

    # -- safe navigation --------------------------------------------------------------------

    def _child(self, group: h5py.Group, key: str, where: str) -> h5py.Group | h5py.Dataset:
        """``group[key]`` for one path component, refusing anything but a hard link."""
        if key in ("", ".", ".."):
            raise CorruptSourceError(f"empty or relative path component {key!r} in {where!r}",
                                     path=self.path)
        try:
            link = group.get(key, getlink=True)
        except _H5_ERRORS as error:
            raise CorruptSourceError(f"cannot read link {where!r} ({_one_line(error)})",
                                     path=self.path) from None
        if link is None:
            raise CorruptSourceError(f"{where!r} does not exist; the file names it but lacks it",
                                     path=self.path)
        if isinstance(link, h5py.ExternalLink):
            raise UnsafeSourceError(
                f"{where!r} is an external link to {link.path!r} in {link.filename!r}; "
                "refusing to follow links into other files", path=self.path)
        if isinstance(link, h5py.SoftLink):
            raise UnsafeSourceError(
                f"{where!r} is a soft link to {link.path!r}; Keras never writes links, "
                "refusing to follow it", path=self.path)
        if not isinstance(link, h5py.HardLink):
            raise UnsafeSourceError(f"{where!r} is a {type(link).__name__}, not a plain "
                                    "object; refusing it", path=self.path)
        try:
            return group[key]
        except _H5_ERRORS as error:
            raise CorruptSourceError(f"cannot open {where!r} ({_one_line(error)})",
                                     path=self.path) from None

    def _walk(self, group: h5py.Group, rel: str, where: str) -> h5py.Group | h5py.Dataset:
        obj: h5py.Group | h5py.Dataset = group
        done = where
        for part in rel.split("/"):
            if not isinstance(obj, h5py.Group):
                raise CorruptSourceError(f"{done!r} is a dataset, but {where}/{rel!r} goes "
                                         "below it", path=self.path)
            done = f"{done}/{part}" if done else part
            obj = self._child(obj, part, done)
        return obj

    def _strings_attr(self, obj: h5py.HLObject, name: str, where: str) -> list[str] | None:
        """A list-of-strings attribute, joining Keras' chunked ``name0``, ``name1``..."""
        try:
            attrs = obj.attrs
            if name in attrs:
                chunks = [attrs[name]]
            elif f"{name}0" in attrs:
                chunks, index = [], 0
                while f"{name}{index}" in attrs:
                    chunks.append(attrs[f"{name}{index}"])
                    index += 1
            else:
                return None
        except _H5_ERRORS as error:
            raise CorruptSourceError(f"attribute {name!r} of {where!r} cannot be read "
                                     f"({_one_line(error)})", path=self.path) from None
        values: list[str] = []
        for chunk in chunks:
            array = np.asarray(chunk)
            if array.size == 0:
                continue
            for item in array.reshape(-1).tolist():
                if isinstance(item, bytes):
                    try:
                        item = item.decode("utf-8")
                    except UnicodeDecodeError:
                        raise CorruptSourceError(f"attribute {name!r} of {where!r} holds "
                                                 "non-UTF-8 bytes", path=self.path) from None
                if not isinstance(item, str):
                    raise CorruptSourceError(
                        f"attribute {name!r} of {where!r} holds {type(item).__name__}, "
                        "expected strings", path=self.path)
                values.append(item)
        return values

    # -- indexing ---------------------------------------------------------------------------

    def _index(self) -> None:
        root = self._file
        try:
            top = list(root.keys())
            root_has_names = _has_names(root)
        except _H5_ERRORS as error:
            raise CorruptSourceError(f"HDF5 root cannot be listed ({_one_line(error)})",
                                     path=self.path) from None
        if root_has_names:
            self.layout = "keras2-weights"
            self._index_keras2(root, "")
        elif "model_weights" in top:
            group = self._child(root, "model_weights", "model_weights")
            if not isinstance(group, h5py.Group) or not _has_names(group):
                raise CorruptSourceError("'model_weights' has no 'layer_names' attribute; not "
                                         "a Keras model file", path=self.path)
            self.layout = "keras2-model"
            self._index_keras2(group, "model_weights")
        elif any(key in top for key in _KERAS3_ROOTS):
            self.layout = "keras3-weights"
            for key in sorted(top, key=_numeric_key):
                self._index_keras3(root, key, key, 1, set())
        else:
            shown = ", ".join(repr(k) for k in sorted(top)[:8]) or "nothing"
            raise UnknownFormatError(
                f"HDF5 file is not a Keras weights file: its root holds {shown} and no "
                "'layer_names' attribute; expected 'model_weights' (Keras 2 model), root "
                "'layer_names' (Keras 2 weights) or 'layers'/'vars' (Keras 3 .weights.h5)",
                path=self.path)

    def _index_keras2(self, root: h5py.Group, prefix: str) -> None:
        layers = self._strings_attr(root, "layer_names", prefix or "/")
        if layers is None:
            raise CorruptSourceError("missing 'layer_names' attribute", path=self.path)
        if "top_level_model_weights" in root and "top_level_model_weights" not in layers:
            layers = [*layers, "top_level_model_weights"]
        for layer in layers:
            where = f"{prefix}/{layer}" if prefix else layer
            group = self._walk(root, layer, prefix)
            if not isinstance(group, h5py.Group):
                raise CorruptSourceError(f"layer {where!r} is a dataset, expected a group",
                                         path=self.path)
            weights = self._strings_attr(group, "weight_names", where)
            if weights is None:
                raise CorruptSourceError(f"layer group {where!r} has no 'weight_names' "
                                         "attribute", path=self.path)
            for weight in weights:
                dataset = self._walk(group, weight, where)
                stem = weight.removesuffix(":0")
                name = stem if stem.split("/", 1)[0] == layer else f"{layer}/{stem}"
                self._add(name, dataset, f"{where}/{weight}", layer)

    def _index_keras3(self, parent: h5py.Group, key: str, rel: str, depth: int,
                      seen: set) -> None:
        if depth > _MAX_DEPTH:
            raise CorruptSourceError(f"groups nest deeper than {_MAX_DEPTH} at {rel!r}",
                                     path=self.path)
        obj = self._child(parent, key, rel)
        if isinstance(obj, h5py.Dataset):
            layer = None
            if parent.name.endswith("/vars"):
                try:
                    stored = parent.attrs.get("name")
                except _H5_ERRORS:
                    stored = None
                if isinstance(stored, bytes):
                    stored = stored.decode("utf-8", "replace")
                layer = stored if isinstance(stored, str) else None
            self._add(rel, obj, rel, layer)
            return
        if obj.id in seen:
            raise CorruptSourceError(f"group {rel!r} is linked into itself (a cycle)",
                                     path=self.path)
        self._visit_once(obj, rel)
        seen.add(obj.id)
        try:
            keys = list(obj.keys())
        except _H5_ERRORS as error:
            raise CorruptSourceError(f"group {rel!r} cannot be listed ({_one_line(error)})",
                                     path=self.path) from None
        for child in sorted(keys, key=_numeric_key):
            self._index_keras3(obj, child, f"{rel}/{child}", depth + 1, seen)
        seen.discard(obj.id)

    def _visit_once(self, obj: h5py.HLObject, where: str) -> None:
        """Each object once: hard links can make a DAG whose naive walk is exponential."""
        first = self._visited.setdefault(obj.id, where)
        if first != where:
            raise CorruptSourceError(f"{where!r} is the same object as {first!r} (hard-linked "
                                     "twice); Keras never writes that, refusing it",
                                     path=self.path)

    def _add(self, name: str, dataset: h5py.Group | h5py.Dataset, where: str,
             layer: str | None) -> None:
        if not isinstance(dataset, h5py.Dataset):
            raise CorruptSourceError(f"{where!r} is a group, expected a weight dataset",
                                     path=self.path, key=name)
        self._visit_once(dataset, where)
        if name in self._entries:
            raise CorruptSourceError(f"two weights map to the tensor name {name!r} (second at "
                                     f"{where!r})", path=self.path, key=name)
        self._check_dataset(dataset, name, where)
        dtype = dataset.dtype.newbyteorder("=")
        info = TensorInfo(name=name, dtype=dtype, shape=tuple(int(d) for d in dataset.shape))
        self._entries[name] = _Entry(info=info, h5path=dataset.name, layer=layer)

    def _check_dataset(self, dataset: h5py.Dataset, name: str, where: str) -> None:
        try:
            plist = dataset.id.get_create_plist()
            layout = plist.get_layout()
            external = plist.get_external_count()
            filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
            dtype = dataset.dtype
            shape = dataset.shape
        except _H5_ERRORS as error:
            raise CorruptSourceError(f"dataset {where!r} cannot be described "
                                     f"({_one_line(error)})", path=self.path, key=name
                                     ) from None
        if layout == h5py.h5d.VIRTUAL:
            raise UnsafeSourceError(f"dataset {where!r} is a virtual dataset mapping other "
                                    "files; refusing it", path=self.path, key=name)
        if external:
            raise UnsafeSourceError(f"dataset {where!r} keeps its data in {external} external "
                                    "file(s); refusing to read outside this file",
                                    path=self.path, key=name)
        seen_filters: set[int] = set()
        for code, _flags, values, label in filters:
            if code not in ALLOWED_FILTERS:
                raise UnsupportedSourceError(
                    f"dataset {where!r} uses HDF5 filter {code} "
                    f"({label.decode('latin-1', 'replace')!r}), which would load a plugin or "
                    f"is never needed for weights; only {sorted(ALLOWED_FILTERS.values())} are "
                    "read", path=self.path, key=name)
            if code in seen_filters:
                raise UnsupportedSourceError(
                    f"dataset {where!r} applies the {ALLOWED_FILTERS[code]} filter twice; h5py "
                    "never writes that (stacked filters are a decompression bomb)",
                    path=self.path, key=name)
            seen_filters.add(code)
            if code == _DEFLATE and not (len(values) <= 1 and all(0 <= v <= 9 for v in values)):
                raise UnsupportedSourceError(f"dataset {where!r} has deflate parameters "
                                             f"{list(values)}, expected one level 0..9",
                                             path=self.path, key=name)
        if shape is None:
            raise UnsupportedSourceError(f"dataset {where!r} has no dataspace (empty "
                                         "dataset)", path=self.path, key=name)
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype:
            raise UnsupportedSourceError(f"dataset {where!r} has dtype {dtype}; expected a "
                                         "numeric weight array", path=self.path, key=name)
        check_shape(tuple(int(d) for d in shape), dtype.itemsize, self.path, name)
        count = 1
        for dim in shape:
            count *= int(dim)
        if count * dtype.itemsize > size_cap(self._size):
            raise UnsupportedSourceError(
                f"dataset {where!r} declares shape {list(shape)} ({count * dtype.itemsize} "
                f"bytes) in a {self._size}-byte file; refusing more than "
                f"{size_cap(self._size)} bytes (64 x file size + 1 MiB; {H5_EXPANSION_ENV} "
                "raises the factor)",
                path=self.path, key=name)
        if layout == h5py.h5d.CHUNKED:
            chunk_bytes = dtype.itemsize
            try:
                for dim in plist.get_chunk():
                    chunk_bytes *= int(dim)
            except _H5_ERRORS as error:
                raise CorruptSourceError(f"dataset {where!r} has no readable chunk shape "
                                         f"({_one_line(error)})", path=self.path, key=name
                                         ) from None
            if chunk_bytes > size_cap(self._size):
                raise UnsupportedSourceError(
                    f"dataset {where!r} declares {chunk_bytes}-byte chunks in a "
                    f"{self._size}-byte file (libhdf5 allocates a whole chunk to read one); "
                    f"refusing more than {size_cap(self._size)} bytes", path=self.path, key=name)
        self._declared_total += count * dtype.itemsize
        if self._declared_total > size_cap(self._size):
            raise UnsupportedSourceError(
                f"datasets up to {where!r} declare {self._declared_total} bytes in all, in a "
                f"{self._size}-byte file; refusing more than {size_cap(self._size)} bytes "
                f"(set {H5_EXPANSION_ENV} to allow more expansion)", path=self.path, key=name)

    # -- public API -------------------------------------------------------------------------

    def tensors(self) -> dict[str, TensorInfo]:
        """Every weight, keyed by canonical name, in Keras' own order (see module doc)."""
        return {name: entry.info for name, entry in self._entries.items()}

    def layer_name(self, name: str) -> str | None:
        """The Keras layer name a tensor belongs to, where the file records one."""
        return self._entry(name).layer

    def h5_path(self, name: str) -> str:
        """Where tensor ``name`` lives inside the HDF5 file."""
        return self._entry(name).h5path

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise self.missing(name, self._entries)
        return entry

    def read(self, name: str) -> np.ndarray:
        """The array of weight ``name``, read-only (a map view when stored plainly)."""
        entry = self._entry(name)
        if self._file is None:
            raise SourceError("reader is closed", path=self.path, key=name)
        info = entry.info
        try:
            with self._guard(f"reading {entry.h5path!r}"):
                dataset = self._file[entry.h5path]
                array = self._mapped(dataset, info)
                if array is None:
                    self._check_chunks(dataset, info)
                    array = np.asarray(dataset[()])
        except _H5_ERRORS as error:
            raise CorruptSourceError(f"dataset {entry.h5path!r} cannot be read "
                                     f"({_one_line(error)})", path=self.path, key=name
                                     ) from None
        if array.shape != info.shape:
            raise CorruptSourceError(f"dataset {entry.h5path!r} read as shape "
                                     f"{list(array.shape)}, expected {list(info.shape)}",
                                     path=self.path, key=name)
        if array.dtype != info.dtype:
            array = array.astype(info.dtype)
        array.flags.writeable = False  # same contract as the mapped path
        return array

    def _check_chunks(self, dataset: h5py.Dataset, info: TensorInfo) -> None:
        """Decode every filtered chunk here first, bounded, before libhdf5 decodes it.

        libhdf5's deflate filter grows its buffer without limit, so one small chunk can
        inflate to gigabytes. Each stored chunk is read raw and inflated with a cap of the
        chunk's declared size; a chunk that decodes to more (or less) is refused.
        """
        dsid = dataset.id
        plist = dsid.get_create_plist()
        nfilters = plist.get_nfilters()
        if plist.get_layout() != h5py.h5d.CHUNKED or not nfilters:
            return
        pipeline = [plist.get_filter(i)[0] for i in range(nfilters)]
        chunk = plist.get_chunk()
        chunk_bytes = info.dtype.itemsize
        slots = 1
        for dim, size in zip(info.shape, chunk, strict=True):
            chunk_bytes *= size
            slots *= -(-dim // size) if size else 0
        count = dsid.get_num_chunks()
        if count > slots:
            raise CorruptSourceError(f"dataset {dataset.name!r} indexes {count} chunks, its "
                                     f"shape has room for {slots}", path=self.path,
                                     key=info.name)
        for index in range(count):
            stored = dsid.get_chunk_info(index)
            if stored.byte_offset is None or stored.size > self._size or (
                    stored.byte_offset + stored.size > self._size):
                raise CorruptSourceError(f"chunk {index} of {dataset.name!r} lies outside the "
                                         "file", path=self.path, key=info.name)
            mask, raw = dsid.read_direct_chunk(stored.chunk_offset)
            data = raw
            for position in reversed(range(nfilters)):
                if mask & (1 << position):
                    continue
                data = self._unfilter(pipeline[position], data, chunk_bytes, dataset.name,
                                      info.name, index)
            if len(data) != chunk_bytes:
                raise CorruptSourceError(
                    f"chunk {index} of {dataset.name!r} decodes to {len(data)} bytes, its "
                    f"declared chunk size is {chunk_bytes}", path=self.path, key=info.name)

    def _unfilter(self, code: int, data: bytes, limit: int, where: str, key: str,
                  index: int) -> bytes:
        if code == _FLETCHER32:
            if len(data) < 4:
                raise CorruptSourceError(f"chunk {index} of {where!r} is too short for its "
                                         "fletcher32 checksum", path=self.path, key=key)
            return data[:-4]
        if code == _DEFLATE:
            inflater = zlib.decompressobj()
            try:
                out = inflater.decompress(data, limit + 1)
            except zlib.error as error:
                raise CorruptSourceError(f"chunk {index} of {where!r} is not valid deflate "
                                         f"data ({error})", path=self.path, key=key) from None
            if len(out) > limit or inflater.unconsumed_tail:
                raise CorruptSourceError(
                    f"chunk {index} of {where!r} inflates past its declared {limit} bytes; "
                    "refusing a decompression bomb", path=self.path, key=key)
            return out
        return data  # shuffle: same size

    def _mapped(self, dataset: h5py.Dataset, info: TensorInfo) -> np.ndarray | None:
        """Zero-copy view for contiguous, unfiltered, allocated little-endian data."""
        plist = dataset.id.get_create_plist()
        if (plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_nfilters()
                or dataset.dtype != info.dtype or info.num_elements == 0):
            return None
        offset = dataset.id.get_offset()
        if offset is None:
            return None  # never written: HDF5 returns the fill value
        if offset + info.nbytes > self._size:
            raise CorruptSourceError(
                f"dataset {dataset.name!r} spans bytes {offset}..{offset + info.nbytes} but the "
                f"file has {self._size}; it is truncated", path=self.path, key=info.name)
        if self._map is None:
            with open_regular(self.path) as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        if len(self._map) < offset + info.nbytes:
            return None
        array = np.frombuffer(self._map, dtype=info.dtype, count=info.num_elements,
                              offset=offset).reshape(info.shape)
        if offset % info.dtype.alignment:
            array = array.copy()
            array.flags.writeable = False
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def close(self) -> None:
        """Close the HDF5 handle and drop the map (live views keep it until they go)."""
        if self._file is not None:
            try:
                self._file.close()
            except _H5_ERRORS:
                pass
            self._file = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass
            self._map = None


def _has_names(group: h5py.Group) -> bool:
    """Whether a group carries Keras' ``layer_names`` (whole or chunked as ``layer_names0``)."""
    try:
        return "layer_names" in group.attrs or "layer_names0" in group.attrs
    except _H5_ERRORS as error:
        raise CorruptSourceError(f"attributes of {group.name!r} cannot be read "
                                 f"({_one_line(error)})", path=group.file.filename) from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
