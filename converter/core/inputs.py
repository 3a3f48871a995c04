"""Opening input files without ever blocking: FIFOs, sockets, devices and folders are refused.

``open()`` on a FIFO blocks until a writer appears and a character device can stream forever,
so every input is checked with ``stat`` first and then opened with ``O_NONBLOCK`` and checked
again with ``fstat`` on the very descriptor that is read (a path swapped in between is caught).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from facenet_convert.converter.core.errors import ConverterError, SourceError

__all__ = ["LIST_SUFFIXES", "describe_os_error", "file_identity", "input_inside", "kind_of",
           "open_regular", "read_input_list", "regular_file_problem", "require_regular",
           "same_file", "unique_files"]

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO (named pipe)", ...)."""
    for test, label in _KINDS:
        if test(mode):
            return label
    return "not a regular file"


def describe_os_error(error: OSError) -> str:
    """A short reason for an OSError (no path: the error's ``path=`` carries it)."""
    if error.errno == errno.ENAMETOOLONG:
        return "the name is too long for the operating system (ENAMETOOLONG)"
    if error.errno == errno.ENOSPC:
        return "no space left on device"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return error.strerror or type(error).__name__


def require_regular(path: str | os.PathLike[str], what: str = "input",
                    error: type[ConverterError] = SourceError) -> os.stat_result:
    """``os.stat(path)`` if it is a regular file, else ``error`` in one line (nothing opened)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise error(f"cannot read {what}: {describe_os_error(exc)}", path=path) from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} is {kind_of(info.st_mode)}, not a regular file; refusing to read "
                    "it", path=path)
    return info


def open_regular(path: str | os.PathLike[str], what: str = "input",
                 error: type[ConverterError] = SourceError) -> BinaryIO:
    """Open a regular file for reading; never blocks on a FIFO or device swapped in."""
    require_regular(path, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise error(f"cannot read {what}: {describe_os_error(exc)}", path=path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} is {kind_of(mode)}, not a regular file; refusing to read it",
                        path=path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_identity(path: str | os.PathLike[str]) -> tuple[str, tuple[int, int] | None]:
    """(real path, (st_dev, st_ino) or None when it does not exist): what "the same file" is."""
    real = os.path.realpath(Path(path))
    try:
        info = os.stat(real)
    except OSError:
        return real, None
    return real, (info.st_dev, info.st_ino)


def same_file(a: tuple[str, tuple[int, int] | None],
              b: tuple[str, tuple[int, int] | None]) -> bool:
    """Whether two :func:`file_identity` results name one file (same real path, or the same
    device and inode: a hard link)."""
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


LIST_SUFFIXES = (".txt", ".parquet")


def read_input_list(list_file: str | os.PathLike[str],
                    error: type[ConverterError] = ConverterError
                    ) -> tuple[list[Path], list[tuple[str, str]]]:
    """Paths of a ``.txt`` (one per line, UTF-8) or ``.parquet`` (column ``path``) list, in
    order; relative paths are relative to the list's folder. Entries that are not regular
    files, or repeat an earlier entry, are returned as ``(entry, reason)`` skips; a list that
    cannot be read raises ``error`` (the caller's class)."""
    path = Path(list_file)
    suffix = path.suffix.lower()
    if suffix not in LIST_SUFFIXES:
        raise error(f"unknown list type {path.suffix or '(none)'}; expected a .txt (one "
                    "path per line) or a .parquet with a 'path' column", path=path)
    try:
        with open_regular(path, "list of inputs", error) as handle:   # never a FIFO
            data = handle.read()
        if suffix == ".txt":
            entries = [line.rstrip("\r") for line in data.decode("utf-8").split("\n")]
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise error("a .parquet list needs pyarrow: pip install pyarrow (the ray extra "
                            "brings it)") from None
            table = pq.read_table(pa.BufferReader(data), columns=["path"])
            entries = [str(v) for v in table.column("path").to_pylist() if v is not None]
    except ConverterError as problem:
        raise error(f"cannot read the list of inputs: {problem}", path=path) from None
    except (OSError, UnicodeDecodeError, KeyError, ValueError) as problem:
        raise error(f"cannot read the list of inputs ({type(problem).__name__}: "
                    f"{' '.join(str(problem).split())[:200]})", path=path) from None
    paths: list[Path] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, 1):
        if not entry.strip():
            continue
        item = Path(entry) if os.path.isabs(entry) else path.parent / entry
        key = str(item)
        if key in seen:
            skipped.append((f"{key}@{number}",
                            f"{key}: listed again (first at entry {seen[key]})"))
            continue
        seen[key] = number
        problem = regular_file_problem(item)
        if problem is not None:
            skipped.append((key, f"{key}: {problem}"))
        else:
            paths.append(item)
    paths, repeated = unique_files(paths)
    return paths, skipped + repeated


def regular_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a regular file to read ("no such file", "a FIFO (named pipe), not
    a regular file", "a dangling link"...), or None; nothing is opened."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "a dangling link" if os.path.islink(path) else "no such file"
    except OSError as error:
        return describe_os_error(error)
    if not stat.S_ISREG(info.st_mode):
        return f"{kind_of(info.st_mode)}, not a regular file; not read"
    return None


def unique_files(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Each file once: a later path naming a file already named (through a symlink, ``..`` or
    a hard link) is returned as a skip, with the first path it repeats."""
    unique: list[Path] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[object, Path] = {}
    for path in paths:
        real, identity = file_identity(path)
        key = identity or real
        if key in seen:
            skipped.append((str(path), f"{path}: the same file as {seen[key]}; used once"))
            continue
        seen[key] = path
        unique.append(path)
    return unique, skipped


def input_inside(folder: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]
                 ) -> str | os.PathLike[str] | None:
    """The first of ``inputs`` that is ``folder`` or lies inside it (paths resolved), else None:
    an output folder must hold no input (a rerun would read its own outputs)."""
    target = Path(folder).resolve()
    for item in inputs:
        path = Path(item).resolve()
        if path == target or target in path.parents:
            return item
    return None
