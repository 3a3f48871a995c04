"""A source over numpy arrays held in memory: for the Python API and for engine tests.

It behaves like a file reader (same ``tensors()``/``read()`` contract, names in sorted
order) so the mapping engine needs no special case; it has no files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from facenet_convert.converter.core.errors import SourceError
from facenet_convert.converter.sources.base import SourceReader, TensorInfo


class ArraySource(SourceReader):
    """Tensors given as ``{name: array}``; ``files()`` is empty, ``format`` is ``memory``."""

    format = "memory"

    def __init__(self, arrays: Mapping[str, np.ndarray], *, name: str = "<memory>",
                 node_names: list[str] | None = None) -> None:
        super().__init__(Path(name))
        self._arrays: dict[str, np.ndarray] = {}
        for key in sorted(arrays):
            if not isinstance(key, str) or not key:
                raise SourceError(f"tensor names must be non-empty strings, got {key!r}",
                                  path=name)
            value = arrays[key]
            if not isinstance(value, np.ndarray):
                raise SourceError(f"expected a numpy array, got {type(value).__name__}",
                                  path=name, key=key)
            self._arrays[key] = value
        self._infos = {key: TensorInfo(key, value.dtype, tuple(int(d) for d in value.shape))
                       for key, value in self._arrays.items()}
        self._node_names = None if node_names is None else list(node_names)

    def tensors(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def read(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            raise self.missing(name, self._arrays)
        return self._arrays[name]

    def files(self) -> list[Path]:
        return []

    def node_names(self) -> list[str] | None:
        return None if self._node_names is None else list(self._node_names)
