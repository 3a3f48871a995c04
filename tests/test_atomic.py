"""All-or-nothing outputs: what users rely on when a conversion fails half way."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facenet_convert.converter.core.atomic import (
    GRACE_S,
    INTERRUPTED_LINE,
    atomic_output,
    staged_outputs,
)
from facenet_convert.converter.core.errors import OutputError


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def test_writes_complete_file(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    with atomic_output(out) as handle:
        handle.write(b"weights")
    assert out.read_bytes() == b"weights"
    assert _leftovers(tmp_path) == []


def test_refuses_existing_without_force_and_keeps_it(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="exists; pass --force"), atomic_output(out) as handle:
        handle.write(b"new")
    assert out.read_bytes() == b"old"
    with atomic_output(out, force=True) as handle:
        handle.write(b"new")
    assert out.read_bytes() == b"new"


def test_refuses_symlink_even_with_force(tmp_path: Path) -> None:
    target = tmp_path / "target.pt"
    target.write_bytes(b"keep")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    with pytest.raises(OutputError, match="symlink"), atomic_output(link, force=True) as handle:
        handle.write(b"x")
    assert target.read_bytes() == b"keep"


def test_refuses_output_equal_to_input(tmp_path: Path) -> None:
    source = tmp_path / "det1.npy"
    source.write_bytes(b"input")
    with (pytest.raises(OutputError, match="same file as input"),
          atomic_output(source, force=True, inputs=[source]) as handle):
        handle.write(b"x")
    assert source.read_bytes() == b"input"


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with (pytest.raises(OutputError, match="does not exist"),
          atomic_output(tmp_path / "nope" / "model.pt")):
        pass


def test_error_mid_write_leaves_nothing(tmp_path: Path) -> None:
    outs = [tmp_path / "a.pt", tmp_path / "b.pt"]
    with pytest.raises(RuntimeError), staged_outputs(outs) as handles:
        handles[outs[0]].write(b"complete")
        raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_becomes_output_error(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    with pytest.raises(OutputError, match="no space left on device"), atomic_output(out) as handle:
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_same_output_twice_refused(tmp_path: Path) -> None:
    out = tmp_path / "a.pt"
    with pytest.raises(OutputError, match="twice"), staged_outputs([out, out]):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_filesystem(tmp_path: Path):
    """A 64 KiB tmpfs, so a write really fails with ENOSPC (needs root, as CI has)."""
    import subprocess

    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_real_disk_full_leaves_nothing(tiny_filesystem: Path) -> None:
    out = tiny_filesystem / "model.pt"
    with pytest.raises(OutputError, match="no space left on device"), atomic_output(out) as handle:
        handle.write(b"\0" * (1 << 20))
    assert list(tiny_filesystem.iterdir()) == []


def test_outputs_get_the_usual_permissions(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    old = os.umask(0o022)
    try:
        with atomic_output(out) as handle:
            handle.write(b"x")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


# A run stages an output and fills a scratch folder beside it, then reaches code that native
# code called back (where an exception must not be raised) and stays there ``hold`` seconds.
_CALLBACK_RUN = """
import os, sys, time
from pathlib import Path
from facenet_convert.converter.core.atomic import (install_interrupt_handlers,
                                                   scratch_directory, staged_outputs)
out, hold, where = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
install_interrupt_handlers()

def stay():
    print("in callback", flush=True)
    time.sleep(hold)

class Callback:
    def __del__(self):
        stay()

with scratch_directory(dir=out.parent) as scratch, staged_outputs([out]) as handles:
    (scratch / "pre.onnx").write_bytes(b"scratch")
    handles[out].write(b"half")
    try:
        if where == "torch.export":
            import torch

            class Traced(torch.nn.Module):
                def forward(self, x):
                    stay()
                    return x + 1

            torch.export.export(Traced(), (torch.zeros(2),))
        else:
            if where == "stderr elsewhere":     # as while TF's start-up lines are held back
                os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            Callback()          # deleted at once: __del__ runs here
        while True:             # plain Python: a signal raised here propagates
            pass
    except BaseException as error:
        print(type(error).__name__, flush=True)
        raise
"""


def _interrupt_in_callback(tmp_path: Path, hold: float, where: str
                           ) -> tuple[subprocess.CompletedProcess[str], float]:
    out = tmp_path / "model.onnx"
    process = subprocess.Popen([sys.executable, "-c", _CALLBACK_RUN, str(out), str(hold), where],
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == "in callback\n", process.communicate()
    process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    stdout, stderr = process.communicate(timeout=60)
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return done, time.monotonic() - start


@pytest.mark.parametrize("where", ["__del__", "torch.export", "stderr elsewhere"])
def test_signal_stuck_in_a_native_callback_ends_the_run_cleanly(where: str,
                                                                tmp_path: Path) -> None:
    """Raising inside a callback can abort the process ("terminate called ...") or be
    swallowed: the signal is not raised there; after the grace period the process ends with
    the one interrupted line (on the stderr the run started with), its staged output and
    scratch folder removed."""
    done, elapsed = _interrupt_in_callback(tmp_path, 60.0, where)
    assert done.returncode == 128 + signal.SIGTERM, done
    assert done.stderr == f"{INTERRUPTED_LINE}\n"
    assert done.stdout == ""                    # nothing raised inside the callback
    assert list(tmp_path.iterdir()) == []       # no temp output, no scratch folder
    assert GRACE_S <= elapsed < GRACE_S + 20


def test_signal_in_a_short_callback_is_raised_after_it(tmp_path: Path) -> None:
    """A callback that returns soon: the signal is raised in the plain code after it, so the
    run unwinds normally (its own clean-up runs) rather than ending at once."""
    done, elapsed = _interrupt_in_callback(tmp_path, 0.3, "__del__")
    assert done.stdout == "Interrupted\n", done
    assert "Traceback" in done.stderr           # this bare script prints it; the CLI does not
    assert list(tmp_path.iterdir()) == []
    assert elapsed < GRACE_S + 20


@pytest.mark.parametrize("raised", ["Interrupted", "ImportError"])
def test_captured_tf_start_up_lines_are_replayed_only_for_a_failure(
        raised: str, capfd: pytest.CaptureFixture[str]) -> None:
    """TF's start-up lines are held back while it imports; an import that fails shows them
    (they may say why), a signal during the import does not (the run's one line is the
    interrupted line)."""
    from facenet_convert.converter.core.errors import Interrupted
    from facenet_convert.converter.core.stderr import held_stderr

    error = Interrupted(signal.SIGTERM) if raised == "Interrupted" else ImportError("no TF")
    with pytest.raises(type(error)), held_stderr():
        os.write(2, b"oneDNN custom operations are on\n")
        raise error
    replayed = "oneDNN custom operations are on" in capfd.readouterr().err
    assert replayed == (raised == "ImportError")


_SWALLOWED_RUN = """
import sys, threading
from pathlib import Path
from facenet_convert.converter.core import atomic
out = Path(sys.argv[1])
atomic.UNWIND_S = 2.0           # the test's patience; the mechanism is the same
atomic.install_interrupt_handlers()
with atomic.scratch_directory(dir=out.parent) as scratch, atomic.staged_outputs([out]) as handles:
    (scratch / "pre.onnx").write_bytes(b"scratch")
    handles[out].write(b"half")
    try:
        print("waiting", flush=True)
        threading.Event().wait()
    except BaseException:       # a library's catch-all, then a wait nothing will end
        threading.Event().wait()
"""


def test_signal_swallowed_by_a_library_that_then_waits_forever(tmp_path: Path) -> None:
    """Ray Data lost the exception and waited on a queue forever: the run still ends,
    UNWIND_S after the signal was raised, with the one line and nothing left behind."""
    out = tmp_path / "model.onnx"
    process = subprocess.Popen([sys.executable, "-c", _SWALLOWED_RUN, str(out)], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == "waiting\n", process.communicate()
    process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert stderr == f"{INTERRUPTED_LINE}\n"
    assert list(tmp_path.iterdir()) == []
    assert 2.0 <= time.monotonic() - start < 20


_OTHER_THREAD_RUN = """
import signal, sys, threading, time
from pathlib import Path
from facenet_convert.converter.core import atomic
from facenet_convert.converter.core.errors import Interrupted
out = Path(sys.argv[1])
atomic.install_interrupt_handlers()

def signal_this_thread():       # as the kernel may do: the signal lands in another thread
    time.sleep(0.5)             # the main thread is waiting by then
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    threading.Event().wait()

with atomic.staged_outputs([out]) as handles:
    handles[out].write(b"half")
    threading.Thread(target=signal_this_thread, daemon=True).start()
    try:
        threading.Event().wait()    # the main thread waits on a lock, no timeout
    except Interrupted:
        print("Interrupted", flush=True)
"""


def test_signal_delivered_to_another_thread_still_interrupts_a_waiting_main_thread(
        tmp_path: Path) -> None:
    """Ray's threads received SIGTERM while the main thread waited on Ray Data's queue, and the
    run hung: the signal reaches the main thread all the same and the run unwinds."""
    out = tmp_path / "model.onnx"
    done = subprocess.run([sys.executable, "-c", _OTHER_THREAD_RUN, str(out)], text=True,
                          capture_output=True, timeout=60, check=False)
    assert done.stdout == "Interrupted\n", done
    assert list(tmp_path.iterdir()) == []


def test_temp_files_of_killed_runs_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    """A run killed with SIGKILL leaves its temp file; the next write into that folder removes
    it, at once. A live run's temp (locked while it writes), a young empty one (a run about
    to lock it), a symlink and names that are not ours stay."""
    import fcntl

    hour_ago = time.time() - 3600
    stale = tmp_path / ".checkpoint-2.safetensors.69d2769f.part"
    live = tmp_path / ".model.pt.0123abcd.part"
    young = tmp_path / ".model.pt.89abcdef.part"
    foreign = tmp_path / ".notes.txt.part"
    link = tmp_path / ".x.pt.deadbeef.part"
    for path in (stale, live, foreign):
        path.write_bytes(b"half written")
    young.write_bytes(b"")
    link.symlink_to(stale)
    for path in (stale, live, foreign):
        os.utime(path, (hour_ago, hour_ago))
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        killed = subprocess.Popen(     # a real killed writer: its temp is no longer locked
            [sys.executable, "-c",
             ("import sys, time\n"
             "from facenet_convert.converter.core.atomic import atomic_output\n"
             "with atomic_output(sys.argv[1]) as handle:\n"
             "    handle.write(b'x'); handle.flush(); print('ready', flush=True)\n"
             "    time.sleep(60)\n"), str(tmp_path / "other.pt")],
            stdout=subprocess.PIPE, text=True)
        assert killed.stdout is not None and killed.stdout.readline() == "ready\n"
        killed.kill()
        killed.wait(timeout=30)
        (killed_temp,) = tmp_path.glob(".other.pt.*.part")      # just killed: young
        stale.write_bytes(b"half written")       # the killed writer's own sweep took it
        os.utime(stale, (hour_ago, hour_ago))
        done = subprocess.run(
            [sys.executable, "-c",
             ("import sys\n"
             "from facenet_convert.converter.core.atomic import atomic_output\n"
             "with atomic_output(sys.argv[1]) as handle:\n"
             "    handle.write(b'new')\n"), str(tmp_path / "model.pt")],
            capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.pt").read_bytes() == b"new"
    assert not stale.exists() and not killed_temp.exists()
    assert live.exists() and young.exists() and foreign.exists() and link.is_symlink()
