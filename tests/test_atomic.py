"""All-or-nothing outputs: what users rely on when a conversion fails half way."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from facenet_convert.converter.core.atomic import atomic_output, staged_outputs
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
