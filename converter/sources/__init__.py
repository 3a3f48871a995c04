"""Readers for every supported weights container, none of which imports TensorFlow or torch.

``open_source(path)`` picks the reader by the file's content (magic bytes), falling back to
the name only where a format has no magic (frozen GraphDef ``.pb``, checkpoint prefixes).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

from facenet_convert.converter.core.errors import SourceError, UnknownFormatError
from facenet_convert.converter.core.inputs import describe_os_error, open_regular
from facenet_convert.converter.sources.base import SourceReader, TensorInfo

__all__ = ["FORMATS", "SourceReader", "TensorInfo", "detect_format", "open_source"]

#: format name -> (module, class): imported only when that format is opened.
FORMATS: dict[str, tuple[str, str]] = {
    "tf-checkpoint": ("facenet_convert.converter.sources.tf_bundle", "TFCheckpointReader"),
    "tf-graphdef": ("facenet_convert.converter.sources.graphdef", "GraphDefReader"),
    "keras-h5": ("facenet_convert.converter.sources.keras_h5", "KerasH5Reader"),
    "mtcnn-npy": ("facenet_convert.converter.sources.mtcnn_npy", "MtcnnNpyReader"),
}

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
_SSTABLE_MAGIC = bytes.fromhex("57fb808b247547db")
_ZIP_MAGIC = b"PK\x03\x04"
_DATA_SHARD = re.compile(r".*\.data-\d{5}-of-\d{5}")
# GraphDef starts with field 1 (node, length-delimited) or field 4 (versions) / 3 (library).
_GRAPHDEF_FIRST_BYTES = {0x0A, 0x1A, 0x22}


def has_hdf5_signature(handle: BinaryIO, size: int) -> bool:
    """HDF5 allows a user block: the superblock may sit at 0, 512, 1024, 2048, ..."""
    offset = 0
    while offset + 8 <= size:
        handle.seek(offset)
        if handle.read(8) == _HDF5_MAGIC:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def detect_format(path: str | os.PathLike[str]) -> str:
    """Name the format of ``path`` (a key of :data:`FORMATS`) from its content."""
    p = Path(path)
    try:
        info = os.stat(p)
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise SourceError(f"cannot read: {describe_os_error(error)}", path=p) from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        return "tf-checkpoint"
    if info is None:
        if Path(f"{p}.index").is_file():
            return "tf-checkpoint"
        raise SourceError("no such file, directory or checkpoint prefix "
                          f"(looked for {p} and {p}.index)", path=p)
    if _DATA_SHARD.fullmatch(p.name):
        return "tf-checkpoint"
    try:
        with open_regular(p, "SOURCE") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            handle.seek(max(size - 8, 0))
            tail = handle.read(8)
            is_hdf5 = has_hdf5_signature(handle, size)
    except OSError as error:
        raise SourceError(f"cannot read: {describe_os_error(error)}", path=p) from None
    if is_hdf5:
        return "keras-h5"
    if head.startswith(_NPY_MAGIC):
        return "mtcnn-npy"
    if size >= 48 and tail == _SSTABLE_MAGIC:
        return "tf-checkpoint"
    if p.suffix == ".index":
        return "tf-checkpoint"  # the reader explains what is wrong with it
    if p.suffix == ".meta":
        raise UnknownFormatError("a .meta file holds the graph, not the weights; give the "
                                 "checkpoint prefix or its directory instead", path=p)
    if head.startswith(_ZIP_MAGIC):
        raise UnknownFormatError("this looks like a PyTorch (zip) file, which is already "
                                 "converted; give a TensorFlow, Keras or MTCNN source", path=p)
    if p.suffix == ".pb" or (head and head[0] in _GRAPHDEF_FIRST_BYTES):
        return "tf-graphdef"
    raise UnknownFormatError(
        "not a format this tool reads (TF checkpoint dir/prefix/.index/.data, frozen "
        "GraphDef .pb, Keras .h5, MTCNN det*.npy)", path=p)


def open_source(path: str | os.PathLike[str], *, format: str | None = None) -> SourceReader:
    """Open ``path`` with the reader its content calls for (or the one ``format`` names)."""
    from importlib import import_module

    name = format or detect_format(path)
    if name not in FORMATS:
        raise UnknownFormatError(f"unknown format {name!r}; expected one of {sorted(FORMATS)}",
                                 path=path)
    module, cls = FORMATS[name]
    reader_cls = getattr(import_module(module), cls)
    return reader_cls(Path(path))
