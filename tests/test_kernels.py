"""The compiled loops of models/kernels.py where detection's own tests do not reach."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_kernels_work_without_a_writable_cache() -> None:
    """A read-only install with no user cache directory: numba finds no place to cache the
    compiled code, and the kernels compile in memory instead of failing at import."""
    code = textwrap.dedent("""
        import numba.core.caching as caching
        caching.CacheImpl._locator_classes = []          # no cache location anywhere
        import numpy as np
        from facenet_convert.models import kernels
        boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [30, 30, 40, 40]], dtype=float)
        print(kernels.greedy_nms(boxes, 0.5, False).tolist(),
              type(kernels._greedy_nms._cache).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[True,", "False,", "True]", "NullCache"], result.stdout


_NMS = textwrap.dedent("""
    import numpy as np
    from facenet_convert.models import kernels
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [30, 30, 40, 40]], dtype=float)
    print(kernels.greedy_nms(boxes, 0.5, False).tolist())
""")


def _nms(cache: Path) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-c", _NMS], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, check=False,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(cache)})


def test_damaged_or_tampered_numba_cache_is_rebuilt_never_run(tmp_path: Path) -> None:
    """numba's index and data files are pickles: one that differs from the sha256 recorded
    when it was written (garbage, or a crafted pickle) is removed with one line and the kernel
    compiled again; the crafted pickle never runs."""
    import pickle

    cache = tmp_path / "numba"
    assert _nms(cache).returncode == 0
    index = next(cache.rglob("*_greedy_nms*.nbi"))
    assert index.with_name(index.name + ".sha256").is_file()
    index.write_bytes(b"garbage")
    again = _nms(cache)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "[True, False, True]"
    assert again.stderr.count("numba's cache of _greedy_nms") == 1, again.stderr

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (open, (str(marker), "w"))

    index = next(cache.rglob("*_greedy_nms*.nbi"))
    import numba

    index.write_bytes(pickle.dumps(numba.__version__) + pickle.dumps(Payload()))
    crafted = _nms(cache)
    assert crafted.returncode == 0, crafted.stderr
    assert not marker.exists()
    assert "does not match the sha256 recorded" in crafted.stderr
    clean = _nms(cache)
    assert clean.returncode == 0 and "numba's cache" not in clean.stderr
