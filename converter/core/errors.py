"""Typed errors with one-line messages: what went wrong, where, expected vs found, what to do.

The CLI prints ``str(error)`` as a single line on stderr and exits non-zero, so every message
must stand on its own and must not contain newlines.
"""

from __future__ import annotations

from os import PathLike


class ConverterError(Exception):
    """Base of every error this toolkit raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | PathLike[str] | None = None,
                 key: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.key = key
        where = []
        if self.path is not None:
            where.append(self.path)
        if key is not None:
            where.append(f"[{key}]")
        prefix = " ".join(where)
        text = f"{prefix}: {message}" if prefix else message
        super().__init__(" ".join(text.split("\n")))


class SourceError(ConverterError):
    """A source file cannot be read as a weights container."""


class UnknownFormatError(SourceError):
    """The file is none of the formats we read."""


class CorruptSourceError(SourceError):
    """The file claims a known format but its bytes break the format's rules."""


class UnsupportedSourceError(SourceError):
    """A valid file using a feature we deliberately do not read (sliced tensors, VARIANT...)."""


class UnsafeSourceError(SourceError):
    """The file asks for something dangerous (code in a pickle, HDF5 external links...)."""


class MappingError(ConverterError):
    """Source tensors and target parameters do not line up."""


class OutputError(ConverterError):
    """An output cannot be written safely."""


class ParityError(ConverterError):
    """The TF reference and the PyTorch model cannot be compared."""
