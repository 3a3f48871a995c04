"""The one interface every source reader implements.

A reader lists tensors (name, dtype, shape) without reading data, and reads one tensor on
demand as a numpy array (zero-copy from a memory map where the layout allows).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np


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

    def files(self) -> list[Path]:
        """Every file this source reads (for hashing, and to refuse overwriting inputs)."""
        return [self.path]

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
