"""All-or-nothing file outputs: temp file in the target directory, fsync, exclusive commit.

Either every requested output appears complete, or none does and nothing is left behind:

* every output is compared with every input and every other output after resolving ``..``,
  symlinks and hard links (real path and ``(st_dev, st_ino)``);
* temp files are created through a descriptor of the output's directory, so a directory
  renamed or swapped for a symlink while converting cannot redirect the commit;
* without ``force`` an output is committed with ``link()`` (create-exclusive): when two
  processes race for the same path exactly one wins, the other fails and leaves nothing;
* with ``force`` the old file is kept as a hard-linked backup until the whole set is in place;
  a failure anywhere rolls every output of the set back;
* SIGINT/SIGTERM (when :func:`install_interrupt_handlers` is active) are deferred while temp
  files are created, committed or removed, and a signal that arrived during the commit rolls
  it back, so "interrupted; nothing written" is always true; after a successful commit of a
  command's *final* outputs (``final=True``) the run is no longer interrupted (its outputs are
  complete) and ends normally. Caches and the parts of incremental work (crops, shards) are
  committed with ``final=False``: the run stays interruptible after them.
* a signal is remembered once received: code that swallows the exception it raises (a
  library wrapping it into its own error, a fallback that catches everything) cannot go on to
  commit anything, and the CLI reports the run as interrupted (:func:`received_signal`).
* a signal that lands in code called back from native code (torch.export's tracing, a
  ctypes callback, ``__del__``) is not raised there: an exception crossing C++ can abort the
  process ("terminate called after throwing ..."). The signal is delivered again every
  :data:`REDELIVER_S` until it lands in ordinary Python code; if it has not landed after
  :data:`GRACE_S`, the process ends at once through :func:`exit_now`, which removes staged
  temp files and scratch folders first. Either way the run ends as one interrupted line.
* a run that has not ended :data:`UNWIND_S` after its signal was raised (a library swallowed
  the exception and waits for something that will never come) is ended the same way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from facenet_convert.converter.core.errors import Interrupted, OutputError
from facenet_convert.converter.core.inputs import (
    describe_os_error,
    file_identity,
    kind_of,
    same_file,
)

__all__ = [
    "announce_interrupted",
    "atomic_output",
    "check_output_path",
    "created_folders",
    "critical_section",
    "exit_now",
    "install_interrupt_handlers",
    "interrupted_line",
    "interruption",
    "note_finished_part",
    "raise_if_interrupted",
    "received_signal",
    "reclaim_signal_handlers",
    "scratch_directory",
    "staged_outputs",
    "sweep_stale_temps",
]

#: Temp files alive right now, for :func:`exit_now`.
_LIVE: dict[int, tuple[int, str]] = {}
#: Scratch folders alive right now, for :func:`exit_now`.
_SCRATCH: set[str] = set()
#: Output folders this run created, deepest first, for :func:`exit_now` (removed if empty).
_CREATED: list[Path] = []
#: Held while a critical section runs and while :func:`exit_now` cleans up: the process never
#: ends halfway through a commit or a rollback.
_exit_lock = threading.Lock()


@contextmanager
def scratch_directory(prefix: str = "facenet-convert-",
                      dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A temporary folder, removed when the block ends and also when the process must end at
    once (:func:`exit_now`): nothing is left behind beside the user's files."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=dir) as folder:
        _SCRATCH.add(folder)
        try:
            yield Path(folder)
        finally:
            _SCRATCH.discard(folder)


@contextmanager
def created_folders(folders: list[Path]) -> Iterator[None]:
    """Folders (deepest first) this run created for its outputs: should the process have to
    end at once (:func:`exit_now`) they are removed if still empty, as a failed run's are."""
    _CREATED[:0] = folders
    try:
        yield
    finally:
        for folder in folders:
            with suppress(ValueError):
                _CREATED.remove(folder)


#: How long :func:`exit_now` waits for a running commit or rollback to finish.
COMMIT_WAIT_S = 30.0


def _hold_exit_lock() -> None:
    """Take :data:`_exit_lock` at a moment no critical section runs (entering one needs the
    lock, so none can start after this), or once :data:`COMMIT_WAIT_S` has passed."""
    deadline = time.monotonic() + COMMIT_WAIT_S
    while True:
        _exit_lock.acquire()
        if not _critical_depth or time.monotonic() > deadline:
            return
        _exit_lock.release()
        time.sleep(0.01)


def _end_process(line: str | None, status: int) -> NoReturn:
    for dir_fd, tmp in list(_LIVE.values()):
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
    for folder in list(_SCRATCH):
        shutil.rmtree(folder, ignore_errors=True)
    for made in _CREATED:
        with suppress(OSError):
            made.rmdir()                # only when empty
    if line is not None:
        os.write(_stderr_fd(), f"{line}\n".encode("utf-8", "replace"))
    os._exit(status)


_terminal_stderr: int | None = None


def _stderr_fd() -> int:
    """The stderr the run started with: code may have pointed descriptor 2 elsewhere for a
    while (TF's start-up noise goes to a file), and the last line must still be seen."""
    return 2 if _terminal_stderr is None else _terminal_stderr


def exit_now(line: str, status: int) -> NoReturn:
    """End the process at once: remove staged temp files and scratch folders, print ``line``
    to stderr, exit with ``status``. For a thread that cannot wait for the main thread (which
    may be stuck in native code). A running commit is let finish first."""
    _hold_exit_lock()
    _end_process(line, status)


# ----------------------------------------------------------------------- signal deferral

_critical_depth = 0
_pending: list[int] = []
_exit_line: bytes | None = None
#: Set once a commit succeeded: a signal after that is too late to undo complete outputs, and
#: "nothing written" would be false, so the run finishes (its remaining work is reporting).
_committed = False
#: The first SIGINT/SIGTERM this run received (None: none), whatever became of its exception.
_received: int | None = None
_owner_pid = 0
INTERRUPTED_LINE = "facenet-convert: interrupted; nothing written"
#: When finished parts of resumable work (crops, shards) were committed before the signal.
INTERRUPTED_PARTS_LINE = ("facenet-convert: interrupted; finished parts kept, nothing "
                          "half-written (rerun with --resume to complete)")
#: Parts committed this run (``part=True``).
_parts = 0


#: How long a signal that landed in a native callback may wait to be raised in plain Python.
GRACE_S = 1.0
#: How often it is delivered again meanwhile.
REDELIVER_S = 0.05
#: How long the run may take to unwind once :class:`Interrupted` was raised (shutting Ray
#: down takes about 3 s): a library that swallowed the exception and then waits forever (a
#: queue whose producer is gone) does not keep the process alive past it.
UNWIND_S = 15.0
#: Set when :class:`Interrupted` was raised for the received signal: the redelivery stops.
_delivered = False
_watchdog: threading.Thread | None = None
#: Signals the redelivery sent that the handler has not seen yet: one arriving after the
#: delivery is dropped (a user's later signal still raises).
_redelivered = 0
#: Set once the interrupted line was printed (:func:`announce_interrupted`).
_announced = False


def _interrupt(signum: int) -> Interrupted:
    global _delivered
    _delivered = True
    return Interrupted(signum)


def _on_signal(signum: int, _frame: object) -> None:
    if os.getpid() != _owner_pid:  # a forked worker (DataLoader): its parent reports it
        os._exit(128 + signum)
    global _redelivered
    if _redelivered:
        _redelivered -= 1
        if _delivered:
            return
    if _committed:
        return
    if _exit_line is not None and not _critical_depth:
        os.write(_stderr_fd(), _exit_line)  # still importing: no output can exist yet, leave
        os._exit(128 + signum)
    _receive(signum)
    if _critical_depth:
        _pending.append(signum)
        return
    if _in_foreign_callback(_frame):
        return                  # redelivered by the watchdog until it lands in plain code
    raise _interrupt(signum)


def _receive(signum: int) -> None:
    """Remember the run's first signal and watch that it ends the run."""
    global _received
    if _received is None:
        _received = signum
    _watch_interrupt(signum)


_watchdog_lock = threading.Lock()


def _watch_interrupt(signum: int) -> None:
    global _watchdog
    with _watchdog_lock:
        if _watchdog is not None and _watchdog.is_alive():
            return
        _watchdog = threading.Thread(target=_see_interrupt_through,
                                     args=(signum, threading.main_thread()),
                                     name="interrupt-watchdog", daemon=True)
        _watchdog.start()


#: The process whose signal listener runs (a forked child has none).
_listener_pid = 0


def _listen_for_signals() -> None:
    """Python runs a handler in the main thread only, once that thread runs bytecode again.
    The kernel may deliver the signal to any thread (Ray's, ONNX Runtime's): a main thread
    blocked on a lock without timeout (Ray Data's ``queue.get``) then never runs it, and the
    run hung. Python's C handler also writes the signal number to the wakeup fd: a thread
    reading it starts the watchdog, which sends the signal to the main thread itself."""
    global _listener_pid
    if (_listener_pid == os.getpid()
            or threading.current_thread() is not threading.main_thread()):
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (OSError, ValueError):
        os.close(read_fd)
        os.close(write_fd)
        return
    _listener_pid = os.getpid()
    threading.Thread(target=_read_signals, args=(read_fd,), name="signal-listener",
                     daemon=True).start()


def _read_signals(read_fd: int) -> None:
    while True:
        try:
            numbers = os.read(read_fd, 64)
        except OSError:
            return
        if not numbers:
            return
        for signum in set(numbers) & {signal.SIGINT, signal.SIGTERM}:
            if (os.getpid() == _owner_pid and not _committed and _exit_line is None
                    and signal.getsignal(signum) is _on_signal):
                _watch_interrupt(signum)


def _no_listener_in_child() -> None:
    """A forked child (a DataLoader worker) must not write its signals into the parent's
    listener: the parent would take them for its own."""
    global _listener_pid
    _listener_pid = 0
    with suppress(OSError, ValueError):
        signal.set_wakeup_fd(-1)


os.register_at_fork(after_in_child=_no_listener_in_child)


def _see_interrupt_through(signum: int, main: threading.Thread) -> None:
    """Until the signal's :class:`Interrupted` is raised, send the signal to the main thread
    again (its handler raises it once it lands in plain Python); if it is not raised within
    :data:`GRACE_S`, or the run has not ended :data:`UNWIND_S` after it was, end the process
    through :func:`exit_now`'s clean-up, which waits for a running commit."""
    global _redelivered
    deadline = time.monotonic() + GRACE_S
    raised = False
    while main.ident is not None and main.is_alive():
        time.sleep(REDELIVER_S)
        if _committed:
            return
        if _delivered and not raised:
            raised, deadline = True, time.monotonic() + UNWIND_S
        if time.monotonic() >= deadline:
            _hold_exit_lock()
            if _committed or (_delivered and not raised):   # while we waited for the lock
                _exit_lock.release()
                if _committed:
                    return
                continue
            _end_process(None if _announced else interrupted_line(), 128 + signum)
        if not raised and signal.getsignal(signum) is _on_signal:   # only into our handler
            _redelivered += 1
            signal.pthread_kill(main.ident, signum)


def announce_interrupted() -> None:
    """Print the interrupted line (once) to stderr."""
    global _announced
    if not _announced:
        _announced = True
        sys.stderr.write(f"{interrupted_line()}\n")
        sys.stderr.flush()


#: Packages whose Python code native code calls back (torch.export's and TorchScript's
#: tracers, llvmlite's ctypes callbacks): an exception raised there may not propagate.
_CALLBACK_LIBRARIES = tuple(
    os.path.join(os.sep, *parts, "") for parts in (
        ("llvmlite",), ("ctypes",), ("torch", "onnx"), ("torch", "export"),
        ("torch", "_export"), ("torch", "fx"), ("torch", "_dynamo"), ("torch", "_functorch"),
        ("torch", "_subclasses"), ("torch", "_library"), ("torch", "_higher_order_ops"),
        ("torch", "_inductor"), ("torch", "jit")))
_CALLBACK_FILES = (f"{os.sep}weakref.py", f"{os.sep}_weakrefset.py",
                   os.path.join(os.sep, "torch", "_ops.py"))
_CALLBACK_NAMES = frozenset({"__del__", "__torch_dispatch__", "__torch_function__"})


def _in_foreign_callback(frame: object) -> bool:
    """Whether the signal interrupted code whose exceptions cannot propagate: a callback that
    C code calls (numba's compiler notifying its cache through llvmlite's ctypes callback,
    torch's dispatcher calling a tracer's Python), a weakref callback or a ``__del__`` run by
    the garbage collector. Raised there, an exception is printed as "Exception ignored ..."
    and the work goes on, or it reaches C++ that cannot pass it on and aborts the process."""
    depth = 0
    while frame is not None and depth < 1000:
        code = getattr(frame, "f_code", None)
        filename = getattr(code, "co_filename", "")
        if (getattr(code, "co_name", "") in _CALLBACK_NAMES
                or any(part in filename for part in _CALLBACK_LIBRARIES)
                or filename.endswith(_CALLBACK_FILES)):
            return True
        frame = getattr(frame, "f_back", None)
        depth += 1
    return False


def install_interrupt_handlers(*, exit_at_once: bool = False) -> None:
    """SIGINT/SIGTERM raise :class:`Interrupted` (deferred inside critical sections).

    ``exit_at_once``: print :data:`INTERRUPTED_LINE` and exit 128+signal instead, for the
    moments before the command runs (imports), where raising would print a traceback.
    """
    global _exit_line, _owner_pid, _committed, _received, _parts, _delivered, _redelivered, \
        _announced, _terminal_stderr
    _exit_line = f"{INTERRUPTED_LINE}\n".encode() if exit_at_once else None
    if _terminal_stderr is None or _owner_pid != os.getpid():
        try:
            _terminal_stderr = os.dup(2)
        except OSError:         # no stderr at all: nothing to keep
            _terminal_stderr = None
    _owner_pid = os.getpid()
    _committed = False          # a new run (the CLI may run several in one process)
    _received = None
    _delivered = False
    _redelivered = 0
    _announced = False
    _parts = 0
    _pending.clear()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
    _listen_for_signals()


def interruption(signum: int) -> Interrupted:
    """The :class:`Interrupted` to raise for a signal that a library's own handler caught
    (``ray.init`` turns SIGTERM into ``SystemExit(15)`` while it starts Ray): recorded as if
    this run's handler had received it."""
    _receive(signum)
    return _interrupt(signum)


def reclaim_signal_handlers() -> None:
    """Put this run's SIGINT/SIGTERM handlers back where a library replaced them (``ray.init``
    installs one that exits with status 15 and no line). Keeps the run's state; main thread
    only (elsewhere, and before :func:`install_interrupt_handlers`, it does nothing)."""
    if (os.getpid() != _owner_pid
            or threading.current_thread() is not threading.main_thread()):
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) not in (_on_signal, signal.SIG_IGN):
            signal.signal(signum, _on_signal)


@contextmanager
def critical_section() -> Iterator[None]:
    """Defer interrupts; one that arrived meanwhile is raised when the section ends."""
    global _critical_depth
    with _exit_lock:
        _critical_depth += 1
    try:
        yield
    finally:
        with _exit_lock:
            _critical_depth -= 1
    if not _critical_depth and _pending:
        signum = _pending[0]
        _pending.clear()
        raise _interrupt(signum)


def _interrupt_pending() -> bool:
    return bool(_pending) or _received is not None


def received_signal() -> int | None:
    """The signal this run received and has not finished since (None: none, or the final
    outputs were complete before it came)."""
    return None if _committed else _received


def note_finished_part() -> None:
    """Other processes (Ray actors) may commit finished parts of this run's resumable work
    from now on: an interruption keeps them, and says so instead of "nothing written"."""
    global _parts
    _parts += 1


def interrupted_line() -> str:
    """What an interrupted run says: nothing written, or finished parts kept."""
    return INTERRUPTED_PARTS_LINE if _parts else INTERRUPTED_LINE


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` when a signal was received, even if its exception was
    swallowed on the way: long loops call this between items. A library that replaced the
    run's signal handlers meanwhile loses them here."""
    reclaim_signal_handlers()
    signum = received_signal()
    if signum is not None:
        raise _interrupt(signum)


# ------------------------------------------------------------------------- path checks



def check_output_path(out: str | os.PathLike[str], *, force: bool = False,
                      inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Refuse outputs that are symlinks, inputs, non-regular files, or exist without ``force``."""
    path = Path(out)
    try:
        return _check_output_path(path, force, inputs)
    except OSError as error:
        raise OutputError(f"cannot use this output path: {describe_os_error(error)}",
                          path=path) from None


def _check_output_path(path: Path, force: bool,
                       inputs: Iterable[str | os.PathLike[str]]) -> Path:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise OutputError("output is a symlink; refusing to write through it, "
                          "give a regular file path", path=path)
    identity = file_identity(path)
    for item in inputs:
        if same_file(identity, file_identity(item)):
            raise OutputError(f"output is the same file as input {Path(item)}; "
                              "choose another output path", path=path)
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputError("output is a directory; give a file path", path=path)
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise OutputError(f"output is {kind_of(info.st_mode)}; give a regular file path",
                          path=path)
    if info is not None and not force:
        raise OutputError("output exists; pass --force to overwrite it", path=path)
    if not path.parent.is_dir():
        raise OutputError(f"output directory {path.parent} does not exist; create it first",
                          path=path)
    return path


def _fsync_dir(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass


# ------------------------------------------------------------------------------ staging


@dataclass
class _Staged:
    path: Path
    dir_fd: int
    tmp: str
    handle: BinaryIO
    ino: int
    backup: str | None = None
    committed: bool = False


def _temp_name(path: Path, suffix: str) -> str:
    return f".{path.name}.{secrets.token_hex(4)}.{suffix}"


def _create_temp(path: Path, dir_fd: int) -> tuple[str, int]:
    """Exclusive temp file in ``dir_fd``; mode 0666 & ~umask like any new file. It is locked
    (``flock``) while its run lives, so that a later run can tell it from a killed run's."""
    _sweep_stale_temps(dir_fd)
    for _ in range(100):
        tmp = _temp_name(path, "part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666,
                         dir_fd=dir_fd)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return tmp, fd
    raise OutputError("cannot create a unique temp file", path=path)


_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.part")
#: An empty temp file younger than this is left alone even when unlocked: its run may not
#: have locked it yet (the lock follows the create by microseconds, before any byte).
STALE_AFTER_S = 5.0
#: Folders already swept by this process ((st_dev, st_ino)): a write lists its folder only
#: the first time (the temps of runs killed before this process started are there then).
_SWEPT: set[tuple[int, int]] = set()


def sweep_stale_temps(folder: str | os.PathLike[str]) -> None:
    """:func:`_sweep_stale_temps` of ``folder`` (a command that will not write into every
    folder it owns, such as ``align --resume``, sweeps them up front)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _sweep_stale_temps(fd, once=False)
    finally:
        os.close(fd)


def _sweep_stale_temps(dir_fd: int, *, once: bool = True) -> None:
    """Remove the temp files that killed runs (``kill -9``, power loss) left in this folder:
    ours by name, no longer locked by a live run, and holding bytes (a live run locks its
    temp before writing any) or older than :data:`STALE_AFTER_S`."""
    info = os.fstat(dir_fd)
    if once and (info.st_dev, info.st_ino) in _SWEPT:
        return
    _SWEPT.add((info.st_dev, info.st_ino))
    try:
        with os.scandir(dir_fd) as entries:
            names = [entry.name for entry in entries if _TEMP_NAME.fullmatch(entry.name)]
    except OSError:
        return
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError:
            continue
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode) or (
                    found.st_size == 0 and time.time() - found.st_mtime < STALE_AFTER_S):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue                              # a live run is writing it
            _unlink_if(name, dir_fd, found.st_ino)
        finally:
            os.close(fd)


def _unlink_if(name: str, dir_fd: int, ino: int | None = None) -> None:
    """Remove ``name`` (only if it is still inode ``ino`` when given)."""
    try:
        if ino is not None and os.lstat(name, dir_fd=dir_fd).st_ino != ino:
            return
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _link_exclusive(item: _Staged) -> None:
    """Put the temp file at the output name only if that name is free (no check-then-rename)."""
    name = item.path.name
    try:
        os.link(item.tmp, name, src_dir_fd=item.dir_fd, dst_dir_fd=item.dir_fd,
                follow_symlinks=False)
        return
    except FileExistsError:
        raise OutputError("output exists (another process wrote it meanwhile?); pass --force "
                          "to overwrite it", path=item.path) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
    _rename_noreplace(item)


def _rename_noreplace(item: _Staged) -> None:
    """renameat2(RENAME_NOREPLACE) for file systems without hard links."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OutputError("this file system supports neither hard links nor renameat2; "
                          "cannot commit the output exclusively", path=item.path)
    if renameat2(item.dir_fd, item.tmp.encode(), item.dir_fd, os.fsencode(item.path.name),
                 1) != 0:  # RENAME_NOREPLACE
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise OutputError("output exists (another process wrote it meanwhile?); pass "
                              "--force to overwrite it", path=item.path)
        raise OSError(code, os.strerror(code), str(item.path))
    item.tmp = ""  # moved, nothing left to remove


def _replace(item: _Staged) -> None:
    """Overwrite (``force``): keep the old file as a hard-linked backup for a rollback."""
    name = item.path.name
    try:
        old = os.lstat(name, dir_fd=item.dir_fd)
    except FileNotFoundError:
        old = None
    if old is not None and not stat.S_ISREG(old.st_mode):
        raise OutputError(f"output became {kind_of(old.st_mode)} while writing; refusing",
                          path=item.path)
    if old is not None:
        backup = _temp_name(item.path, "old")
        try:
            os.link(name, backup, src_dir_fd=item.dir_fd, dst_dir_fd=item.dir_fd,
                    follow_symlinks=False)
            item.backup = backup
        except OSError:
            item.backup = None  # no hard links here: the overwrite cannot be undone
    os.replace(item.tmp, name, src_dir_fd=item.dir_fd, dst_dir_fd=item.dir_fd)
    item.tmp = ""


def _rollback(items: list[_Staged]) -> None:
    for item in items:
        if not item.committed:
            continue
        name = item.path.name
        if item.backup is not None:
            try:
                os.replace(item.backup, name, src_dir_fd=item.dir_fd, dst_dir_fd=item.dir_fd)
                item.backup = None
                continue
            except OSError:
                pass
        _unlink_if(name, item.dir_fd, item.ino)
        item.committed = False


def _commit(items: list[_Staged], force: bool) -> None:
    try:
        for item in items:
            if force:
                _replace(item)
            else:
                _link_exclusive(item)
            item.committed = True
        if _interrupt_pending():
            _rollback(items)  # "interrupted; nothing written" must stay true
            raise _interrupt(_received or _pending[0])
    except BaseException:
        _rollback(items)
        raise


@contextmanager
def staged_outputs(outs: Iterable[str | os.PathLike[str]], *, force: bool = False,
                   inputs: Iterable[str | os.PathLike[str]] = (), final: bool = False,
                   part: bool = False) -> Iterator[dict[Path, BinaryIO]]:
    """Open a temp file beside each output; commit them all only on success (see module doc).

    ``final``: these are the command's finished outputs; once committed, a signal no longer
    interrupts the run. ``part``: a finished part of resumable work (a crop, a shard), kept
    when the run is interrupted later. Caches are neither."""
    global _committed, _parts
    raise_if_interrupted()
    input_list = list(inputs)
    paths = [check_output_path(out, force=force, inputs=input_list) for out in outs]
    identities = [file_identity(path) for path in paths]
    for i, one in enumerate(identities):
        for j in range(i):
            if same_file(one, identities[j]):
                raise OutputError(f"the same output path is requested twice (also as "
                                  f"{paths[j]})", path=paths[i])
    staged: list[_Staged] = []
    dir_fds: dict[str, int] = {}
    try:
        with critical_section():
            for path in paths:
                key = os.path.realpath(path.parent)
                try:
                    if key not in dir_fds:
                        dir_fds[key] = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY
                                               | os.O_CLOEXEC)
                    tmp, fd = _create_temp(path, dir_fds[key])
                except OSError as error:
                    raise OutputError(f"cannot create a file in {path.parent}: "
                                      f"{describe_os_error(error)}", path=path) from None
                staged.append(_Staged(path, dir_fds[key], tmp, os.fdopen(fd, "wb"),
                                      os.fstat(fd).st_ino))
                _LIVE[id(staged[-1])] = (dir_fds[key], tmp)
        yield {item.path: item.handle for item in staged}
        for item in staged:
            try:   # kept open, so locked, until committed (see _sweep_stale_temps)
                item.handle.flush()
                os.fsync(item.handle.fileno())
            except OSError as error:
                raise OutputError(f"writing failed: {describe_os_error(error)}",
                                  path=item.path) from None
        with critical_section():
            _commit(staged, force)
            for fd in dir_fds.values():
                _fsync_dir(fd)
            if (final and not _interrupt_pending()
                    and signal.getsignal(signal.SIGTERM) is _on_signal):
                _committed = True
            _parts += part
    except OSError as error:
        where = getattr(error, "filename", None) or (staged[0].path if staged else None)
        raise OutputError(f"writing failed: {describe_os_error(error)}", path=where) from None
    finally:
        with critical_section():
            for item in staged:
                if not item.handle.closed:
                    try:
                        item.handle.close()
                    except OSError:
                        pass
                _LIVE.pop(id(item), None)
                if item.tmp:
                    _unlink_if(item.tmp, item.dir_fd, item.ino)
                if item.backup is not None:
                    _unlink_if(item.backup, item.dir_fd)
            for fd in dir_fds.values():
                os.close(fd)


@contextmanager
def atomic_output(out: str | os.PathLike[str], *, force: bool = False,
                  inputs: Iterable[str | os.PathLike[str]] = (), final: bool = False,
                  part: bool = False) -> Iterator[BinaryIO]:
    """Write one file atomically; see :func:`staged_outputs`."""
    with staged_outputs([out], force=force, inputs=inputs, final=final, part=part) as handles:
        yield next(iter(handles.values()))
