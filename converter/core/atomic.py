"""All-or-nothing file outputs: temp file in the target directory, fsync, rename.

Either every requested output appears complete, or none does and nothing is left behind.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from facenet_convert.converter.core.errors import OutputError


def check_output_path(out: str | os.PathLike[str], *, force: bool = False,
                      inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Refuse outputs that are symlinks, inputs, directories, or exist without ``force``."""
    path = Path(out)
    if path.is_symlink():
        raise OutputError("output is a symlink; refusing to write through it, "
                          "give a regular file path", path=path)
    for item in inputs:
        item_path = Path(item)
        same = (path.exists() and item_path.exists() and os.path.samefile(path, item_path)) \
            or path.resolve() == item_path.resolve()
        if same:
            raise OutputError(f"output is the same file as input {item_path}; "
                              "choose another output path", path=path)
    if path.is_dir():
        raise OutputError("output is a directory; give a file path", path=path)
    if path.exists() and not force:
        raise OutputError("output exists; pass --force to overwrite it", path=path)
    if not path.parent.is_dir():
        raise OutputError(f"output directory {path.parent} does not exist; create it first",
                          path=path)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _describe(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on device"
    return error.strerror or str(error)


@contextmanager
def staged_outputs(outs: Iterable[str | os.PathLike[str]], *, force: bool = False,
                   inputs: Iterable[str | os.PathLike[str]] = ()
                   ) -> Iterator[dict[Path, BinaryIO]]:
    """Open a temp file beside each output; rename them all into place only on success."""
    input_list = list(inputs)
    paths = [check_output_path(out, force=force, inputs=input_list) for out in outs]
    if len(set(paths)) != len(paths):
        raise OutputError("the same output path is requested twice", path=paths[0])
    staged: dict[Path, tuple[str, BinaryIO]] = {}
    try:
        for path in paths:
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part",
                                           dir=path.parent)
            except OSError as error:
                raise OutputError(f"cannot create a file in {path.parent}: {_describe(error)}",
                                  path=path) from error
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 is not what users expect
            staged[path] = (tmp, os.fdopen(fd, "wb"))
        yield {path: handle for path, (_, handle) in staged.items()}
        for path, (_tmp, handle) in staged.items():
            try:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            except OSError as error:
                raise OutputError(f"writing failed: {_describe(error)}", path=path) from error
        for path, (tmp, _) in staged.items():
            if path.is_symlink():
                raise OutputError("output became a symlink while writing; refusing", path=path)
            os.replace(tmp, path)
        for directory in {path.parent for path in staged}:
            _fsync_dir(directory)
    except OSError as error:
        raise OutputError(f"writing failed: {_describe(error)}",
                          path=getattr(error, "filename", None)) from error
    finally:
        for tmp, handle in staged.values():
            if not handle.closed:
                handle.close()
            if os.path.exists(tmp):
                os.unlink(tmp)


@contextmanager
def atomic_output(out: str | os.PathLike[str], *, force: bool = False,
                  inputs: Iterable[str | os.PathLike[str]] = ()) -> Iterator[BinaryIO]:
    """Write one file atomically; see :func:`staged_outputs`."""
    with staged_outputs([out], force=force, inputs=inputs) as handles:
        yield next(iter(handles.values()))
