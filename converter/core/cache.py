"""The toolkit's cache folder, and the one check every cache write goes through.

``$FACENET_CONVERT_CACHE``, else ``~/.cache/facenet-convert``. A cache that cannot be created
or written (a read-only folder, a ``HOME`` that does not exist) is one line that names the
variable to set, never a traceback from deep inside a download or an export.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from facenet_convert.converter.core.errors import CacheError

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


def cache_subdir(name: str) -> Path:
    """A writable folder ``name`` under :func:`cache_dir`."""
    return writable_dir(cache_dir() / name)
