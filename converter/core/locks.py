"""One run at a time per output folder, across processes.

A folder a command fills over a run (finetune's checkpoints, align's crops, a Hub folder)
cannot be committed in one step as a file can: two runs into it at once would leave a mix of
both. The command runner (:mod:`facenet_convert.converter.commands.declare`) takes this lock
for every folder output a command declares; a second run into the same folder stops at once,
in one line, before writing anything.

The lock is the kernel's (``flock``) on the folder itself, so it does not depend on the
environment (two runs with different ``TMPDIR`` or users still exclude each other) and a
killed run never leaves it held. A folder that does not exist yet is created for the lock,
and removed again when the run fails and leaves it empty.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from facenet_convert.converter.core.atomic import created_folders
from facenet_convert.converter.core.errors import OutputError
from facenet_convert.converter.core.inputs import describe_os_error

#: Folders this process holds ((st_dev, st_ino) -> depth): the runner holds a folder for the
#: whole command and the library function it calls (``align_dataset``) takes it again. A
#: second ``flock`` from the same process would conflict with the first (locks belong to
#: open files).
_HELD: dict[tuple[int, int], int] = {}
_HELD_LOCK = threading.Lock()


def _create(path: Path) -> list[Path]:
    """Create ``path`` and missing parents; the folders created, deepest first."""
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            missing.remove(folder)           # another run made it meanwhile: not ours
        except OSError as error:
            raise OutputError(f"cannot create the output folder ({describe_os_error(error)})",
                              path=folder) from None
    return missing


def _remove_if_empty(created: list[Path]) -> None:
    for folder in created:                   # deepest first; stops at the first non-empty
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def exclusive_folder(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold the lock of output folder ``path`` (``what`` names it in the error), creating it
    when missing; reentrant within a process."""
    folder = Path(path)
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputError(f"{what} exists and is not a folder; give a folder", path=folder)
    created = _create(folder)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        _remove_if_empty(created)
        raise OutputError(f"cannot open {what} to lock it ({describe_os_error(error)})",
                          path=folder) from None
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    with _HELD_LOCK:
        ours = key not in _HELD
        if ours:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(f"another facenet-convert run is writing into {what} now; "
                                  "wait for it to finish or choose another folder",
                                  path=folder) from None
        _HELD[key] = _HELD.get(key, 0) + 1
    failed = True
    try:
        with created_folders(created):
            yield
        failed = False
    finally:
        with _HELD_LOCK:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        if failed:
            _remove_if_empty(created)       # still locked: no other run is in it
        os.close(fd)
