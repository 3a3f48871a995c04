"""The one interface every source reader implements.

A reader lists tensors (name, dtype, shape) without reading data, and reads one tensor on
demand as a numpy array (zero-copy from a memory map where the layout allows).
"""

from __future__ import annotations

import abc
import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from facenet_convert.converter.core.errors import CorruptSourceError, MissingTensorError

#: TensorFlow's own limit on tensor rank (TensorShape::MaxDimensions); every reader applies it.
MAX_RANK = 254
#: The span a shape may describe with its zero dimensions counted as ones: numpy and torch
#: refuse (with a traceback deep inside) shapes whose strides would overflow 63 bits.
MAX_SPAN_BYTES = 1 << 62


def check_shape(shape: tuple[int, ...], itemsize: int, path: str | Path, key: str) -> None:
    """The limits every reader enforces on a declared shape, with one clean line each."""
    if len(shape) > MAX_RANK:
        raise CorruptSourceError(f"tensor has rank {len(shape)}, above TensorFlow's limit of "
                                 f"{MAX_RANK} dimensions", path=path, key=key)
    span = max(itemsize, 1)
    for dim in shape:
        if dim < 0:
            raise CorruptSourceError(f"shape {list(shape)} has a negative dimension",
                                     path=path, key=key)
        span *= max(dim, 1)
    if 0 in shape and span > MAX_SPAN_BYTES:  # non-empty shapes meet the readers' size caps
        raise CorruptSourceError(
            f"shape {list(shape)} spans more than 2**62 bytes even with its zero dimensions "
            "counted as one (zero-element tensor with huge other dimensions?); refusing it",
            path=path, key=key)


@dataclass(frozen=True)
class TensorInfo:
    """What a source says about one tensor before any data is read.

    ``dtype`` is a numpy dtype (bfloat16 comes from ml_dtypes; strings are ``object``
    arrays of ``bytes``).
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def num_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded array (0 for strings, whose size is not known up front)."""
        if self.dtype == np.dtype(object):
            return 0
        return self.num_elements * self.dtype.itemsize


class SourceReader(abc.ABC):
    """A weights container opened for reading. Use as a context manager."""

    #: Short machine name of the format, e.g. ``tf-checkpoint`` (shown by ``inspect``).
    format: str = ""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.closed = False

    @abc.abstractmethod
    def tensors(self) -> dict[str, TensorInfo]:
        """Every tensor of the source, keyed and ordered by name."""

    @abc.abstractmethod
    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a numpy array; raises KeyError-free typed errors."""

    def missing(self, name: str, known: Iterable[str], *,
                where: Path | None = None) -> MissingTensorError:
        """The one error every reader raises for a tensor it does not hold, with a hint.

        ``where`` names the file that lists the tensors when it is not ``path`` (a checkpoint's
        ``.index``)."""
        known = list(known)
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; nearest: {near[0]!r}" if near else ""
        return MissingTensorError(
            f"no tensor named {name!r} in this {self.format or 'source'} ({len(known)} tensors"
            f"{hint}); list them with `facenet-convert inspect`", path=where or self.path, key=name)

    def files(self) -> list[Path]:
        """Every file this source reads (for hashing, and to refuse overwriting inputs)."""
        return [self.path]

    def guarded_files(self) -> list[Path]:
        """Every file an output must never overwrite: :meth:`files` plus files only consulted
        (a checkpoint state file), which are not hashed into reports."""
        return self.files()

    def node_names(self) -> list[str] | None:
        """Graph node names where the format has a graph (frozen .pb), else None."""
        return None

    def close(self) -> None:
        """Release file handles and memory maps; readers that hold some extend this."""
        self.closed = True

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
