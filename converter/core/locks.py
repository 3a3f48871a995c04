"""One run at a time per output folder, across processes.

A folder a command fills over a run (finetune's checkpoints, align's crops, a Hub folder)
cannot be committed in one step as a file can: two runs into it at once would leave a mix of
both. The command runner (:mod:`facenet_convert.converter.commands.declare`) takes this lock
for every folder output a command declares; a second run into the same folder stops at once,
in one line, before writing anything.

The lock is the kernel's (``flock``) on a file in a private folder of the temp directory,
named by the output's resolved path: it needs no file in the output (which may not exist
yet), and a killed run never leaves it held.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from facenet_convert.converter.core.errors import OutputError
from facenet_convert.converter.core.inputs import describe_os_error


def _lock_folder() -> Path:
    folder = Path(tempfile.gettempdir()) / f"facenet-convert-locks-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError as error:
        raise OutputError(f"cannot create the lock folder ({describe_os_error(error)}); set "
                          "TMPDIR to a writable folder", path=folder) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OutputError("the lock folder is not a folder of this user; remove it or set "
                          "TMPDIR to another folder", path=folder)
    return folder


#: Locks this process holds (key -> depth): the runner holds a folder's lock for the whole
#: command and the library function it calls (``align_dataset``) takes it again. A second
#: ``flock`` from the same process would conflict with the first (locks belong to open files).
_HELD: dict[str, int] = {}
_HELD_LOCK = threading.Lock()


@contextmanager
def exclusive_folder(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold the lock of output folder ``path`` (``what`` names it in the error); reentrant
    within a process."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:32]
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key] += 1
            fd = None
        else:
            fd = _take(key, path, what)
            _HELD[key] = 1
    try:
        yield
    finally:
        with _HELD_LOCK:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        if fd is not None:
            os.close(fd)


def _take(key: str, path: str | os.PathLike[str], what: str) -> int:
    lock = _lock_folder() / f"{key}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise OutputError(f"cannot open the lock of {what} ({describe_os_error(error)})",
                          path=lock) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(f"another facenet-convert run is writing into {what} now; wait for "
                          "it to finish or choose another folder", path=path) from None
    return fd
