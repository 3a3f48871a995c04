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
