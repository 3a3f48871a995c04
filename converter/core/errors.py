"""Typed errors with one-line messages: what went wrong, where, expected vs found, what to do.

The CLI prints ``str(error)`` as a single line on stderr and exits non-zero, so every message
must stand on its own and must not contain newlines.
"""

from __future__ import annotations

from os import PathLike

# Escaped: every character Python does not call printable (C0 and C1 controls, DEL, line and
# paragraph separators, lone surrogates from undecodable bytes of a file name, and format
# characters such as U+202E RIGHT-TO-LEFT OVERRIDE, which could reorder what the terminal shows).


def _escape_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape'd byte of a non-UTF-8 name
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return {"\t": "\\t", "\r": "\\r"}.get(char, f"\\x{code:02x}")
    return f"\\u{code:04x}"


def one_line(text: str) -> str:
    """``text`` as one printable line: newlines become spaces, every other character that is
    not printable is escaped."""
    joined = " ".join(text.split("\n"))
    if joined.isprintable():
        return joined
    return "".join(char if char.isprintable() else _escape_char(char) for char in joined)


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
        super().__init__(one_line(text))


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


class MissingTensorError(MappingError):
    """A tensor asked of a source is not in it (every reader raises this one kind)."""


class OutputError(ConverterError):
    """An output cannot be written safely."""


class ParityError(ConverterError):
    """The TF reference and the PyTorch model cannot be compared."""


# ---------------------------------------------------------------- by what the user was doing

class EvaluationError(ConverterError):
    """A pairs file, image set or evaluation setting that cannot give a result."""


class EmbedError(ConverterError):
    """Embedding cannot proceed (bad options, no usable image)."""


class UnknownReleaseError(ConverterError, ValueError):
    """A ``pretrained`` name is neither a registered release nor an existing file."""


class WeightsNotFoundError(ConverterError, FileNotFoundError):
    """The weights file of a release (or a given path) is not on disk."""


class ChecksumMismatchError(ConverterError):
    """A file's sha256 is not the one the registry (or a trusted manifest) pins."""


class FetchError(ConverterError):
    """A pinned upstream artifact cannot be fetched or does not match its pin."""


class ManifestError(ConverterError):
    """``$FACENET_CONVERT_WEIGHTS_MANIFEST`` names a file that is not a usable hash list."""


class DatasetError(ConverterError):
    """A dataset folder cannot be listed or holds no images."""


class ImageReadError(ConverterError):
    """An image file cannot be opened or decoded."""


class DetectionInputError(ConverterError, ValueError):
    """An image given to MTCNN is not a usable RGB picture (type, dtype or shape)."""


class AlignError(ConverterError):
    """The alignment job cannot start (bad folders or options)."""


class LandmarkError(ConverterError, ValueError):
    """Facial landmarks that give no usable alignment (NaN, coincident or collinear points, a
    transform of huge scale)."""


class EngineError(ConverterError):
    """An inference engine cannot be built as asked (backend, precision, ONNX file)."""


class ScaleError(ConverterError):
    """The Ray engine cannot run as asked (Ray missing, bad list of inputs, bad options)."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived; raised where it cannot be swallowed by ``except Exception``."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


class CacheError(ConverterError):
    """A cache folder that cannot be created or written; the message names the variable."""


class MissingExtraError(ConverterError):
    """An optional feature whose packages (a setup.cfg extra) are not installed."""
