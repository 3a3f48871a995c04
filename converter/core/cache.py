"""The toolkit's cache folder, and the one check every cache write goes through.

``$FACENET_CONVERT_CACHE``, else ``~/.cache/facenet-convert``. A cache that cannot be created
or written (a read-only folder, a ``HOME`` that does not exist) is one line that names the
variable to set, never a traceback from deep inside a download or an export.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from facenet_convert.converter.core.errors import CacheError, one_line

CACHE_ENV = "FACENET_CONVERT_CACHE"


def cache_dir() -> Path:
    """Where fetched and derived artifacts live (nothing is created here)."""
    root = os.environ.get(CACHE_ENV, "").strip()
    if root:
        return Path(root).expanduser()
    return Path(os.path.expanduser("~")) / ".cache" / "facenet-convert"


def writable_dir(folder: Path, variable: str = CACHE_ENV) -> Path:
    """``folder``, created if needed and proven writable; else :class:`CacheError` naming
    ``variable``, the setting that moves it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CacheError(f"the cache folder cannot be written ({reason}); set ${variable} to "
                         "a writable folder", path=folder) from error
    return folder


RECORD_SUFFIX = ".sha256"


def _record(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def write_cached(path: Path, data: bytes) -> Path:
    """Write a cache entry atomically, its sha256 recorded beside it (``<name>.sha256``)."""
    import hashlib

    from facenet_convert.converter.core.atomic import atomic_output

    writable_dir(path.parent)
    with atomic_output(path, force=True) as handle:
        handle.write(data)
    with atomic_output(_record(path), force=True) as handle:
        handle.write(f"{hashlib.sha256(data).hexdigest()}\n".encode())
    return path


def read_cached(path: Path, what: str) -> bool:
    """Whether the cache entry ``path`` exists and equals its recorded sha256. An entry that
    does not (damaged, tampered, or written without a record) is removed with one line on
    stderr, so that the caller rebuilds it; it is never used."""
    import sys

    from facenet_convert.converter.core.hashing import sha256_file

    if not path.is_file():
        return False
    try:
        recorded = _record(path).read_text(encoding="ascii").strip()
        good = recorded == sha256_file(path)
    except (OSError, UnicodeDecodeError):
        good = False
    if not good:
        print(one_line(f"facenet-convert: {what} {path} does not match its recorded sha256; "
                       "rebuilding it"), file=sys.stderr)
        for stale in (path, _record(path)):
            try:
                stale.unlink()
            except OSError:
                pass
    return good
