"""Serialize converted state_dicts: ``.pt`` (torch, imported lazily) or ``.safetensors``.

Both writers take numpy arrays in target order and write to an open binary handle (a staged
temp file from ``converter.core.atomic``) through :class:`HashingWriter`, so the sha256 and size
of every output are known without reading it back. ``.safetensors`` never imports torch.
Output bytes depend only on the arrays (and metadata): torch.save is deterministic for equal
inputs and the safetensors writer orders its header itself; the tests check it run after run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from facenet_convert.converter.core.checks import dumps as json_dumps
from facenet_convert.converter.core.errors import OutputError

FORMATS = ("pt", "safetensors")
#: Output extensions that name a format.
EXTENSIONS = {".pt": "pt", ".pth": "pt", ".safetensors": "safetensors"}
#: facenet-pytorch's split: the classifier is every key of the ``logits`` module.
_LOGITS_KEY = re.compile(r"logits\.[^.]+")


class HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._digest.update(view)
        written = self._handle.write(view)
        self.size += view.nbytes
        return view.nbytes if written is None else written

    def flush(self) -> None:
        self._handle.flush()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def resolve_format(output: str | Path, format: str | None) -> str:
    """``format`` if given (and consistent with the extension), else the extension's."""
    suffix = Path(output).suffix.lower()
    from_ext = EXTENSIONS.get(suffix)
    if format is not None:
        if format not in FORMATS:
            raise OutputError(f"unknown format {format!r}; expected one of {list(FORMATS)}",
                              path=output)
        if from_ext is not None and from_ext != format:
            raise OutputError(f"output extension {suffix} disagrees with format {format!r}; "
                              "change one of them", path=output)
        return format
    if from_ext is None:
        raise OutputError(f"cannot tell the output format from extension {suffix or '(none)'}"
                          "; use .pt or .safetensors, or pass --format", path=output)
    return from_ext


def split_paths(output: str | Path) -> tuple[Path, Path]:
    """``<stem>-features<ext>`` and ``<stem>-logits<ext>`` beside ``output``."""
    path = Path(output)
    return (path.with_name(f"{path.stem}-features{path.suffix}"),
            path.with_name(f"{path.stem}-logits{path.suffix}"))


def split_state(arrays: Mapping[str, np.ndarray]
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features (everything but ``logits.*``) and logits (only ``logits.*``), order kept."""
    features = {k: v for k, v in arrays.items() if not _LOGITS_KEY.fullmatch(k)}
    logits = {k: v for k, v in arrays.items() if _LOGITS_KEY.fullmatch(k)}
    return features, logits


def _contiguous(value: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns 0-d arrays (num_batches_tracked) into shape (1,).
    return value if value.flags.c_contiguous else np.array(value, order="C")


def write_pt(arrays: Mapping[str, np.ndarray], handle: BinaryIO) -> None:
    """A plain ``{key: contiguous CPU tensor}`` dict, loadable with ``weights_only=True``."""
    import torch

    state = {key: torch.from_numpy(_contiguous(value)) for key, value in arrays.items()}
    failures: list[OSError] = []

    class _Sink:
        # torch.save turns a failed write into an opaque RuntimeError from its zip writer;
        # keep the OSError (e.g. ENOSPC) so callers can say what really happened.
        def write(self, data: bytes | memoryview) -> int | None:
            try:
                return handle.write(data)
            except OSError as error:
                failures.append(error)
                raise

        def flush(self) -> None:
            handle.flush()

    try:
        torch.save(state, _Sink())
    except RuntimeError:
        if failures:
            raise failures[0] from None
        raise


#: numpy dtype -> safetensors dtype tag.
_ST_DTYPES = {np.dtype("float32"): "F32", np.dtype("float64"): "F64",
              np.dtype("float16"): "F16", np.dtype("int64"): "I64", np.dtype("int32"): "I32",
              np.dtype("int16"): "I16", np.dtype("int8"): "I8", np.dtype("uint8"): "U8",
              np.dtype("bool"): "BOOL"}


def write_safetensors(arrays: Mapping[str, np.ndarray], handle: BinaryIO,
                      metadata: Mapping[str, str]) -> None:
    """safetensors, streamed: 8-byte header length, JSON header, then the raw tensors.

    Written by hand rather than with ``safetensors.numpy.save`` because that library
    serializes ``__metadata__`` from a Rust HashMap whose order changes from run to run;
    here metadata keys are sorted and tensors follow the state_dict order, so equal inputs
    give equal bytes. The header is padded with spaces to 8 bytes as safetensors does.
    """
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise OutputError(f"safetensors metadata must be str -> str; bad keys {bad}")
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {key: metadata[key] for key in sorted(metadata)}
    offset = 0
    blobs = []
    for key, value in arrays.items():
        array = _contiguous(value)
        dtype = array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _ST_DTYPES:
            raise OutputError(f"dtype {array.dtype} cannot be written to safetensors", key=key)
        array = array.astype(dtype.newbyteorder("<"), copy=False)
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(array.shape),
                       "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        blobs.append(array)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    handle.write(len(text).to_bytes(8, "little"))
    handle.write(text)
    for array in blobs:
        if array.nbytes:
            handle.write(memoryview(array.reshape(-1)).cast("B"))


def write_state(arrays: Mapping[str, np.ndarray], handle: BinaryIO, format: str,
                metadata: Mapping[str, str] | None = None) -> None:
    """Dispatch on ``format``."""
    if format == "pt":
        write_pt(arrays, handle)
    elif format == "safetensors":
        write_safetensors(arrays, handle, metadata or {})
    else:
        raise OutputError(f"unknown format {format!r}; expected one of {list(FORMATS)}")


def write_json(document: object, handle: BinaryIO) -> None:
    """Stable JSON (sorted keys, 2-space indent, trailing newline)."""
    handle.write((json_dumps(document, indent=2, sort_keys=True) + "\n").encode())
