"""Upstream ``detect_face`` results for test photos: computed once with TensorFlow, cached."""

from __future__ import annotations

import hashlib
import os
from importlib import metadata

import cv2
import numpy as np
import pytest

from facenet_convert.third_party.wheels import FACENET, cache_dir


def _cache_key(image: np.ndarray) -> str:
    digest = hashlib.sha256()
    versions = [FACENET.sha256, cv2.__version__, np.__version__]
    try:
        versions.append(metadata.version("tensorflow"))
    except metadata.PackageNotFoundError:
        versions.append("no-tf")
    digest.update(repr((image.shape, versions, "minsize20 t.6.7.7 f.709")).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def upstream_results(cases: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Upstream (boxes, points) per case, from the cache or computed with TF and cached."""
    folder = cache_dir() / "detect-upstream"
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    missing = []
    for name, image in cases.items():
        path = folder / f"{_cache_key(image)}.npz"
        if path.is_file():
            with np.load(path) as saved:
                found[name] = (saved["boxes"], saved["points"])
        else:
            missing.append((name, path))
    if missing:
        pytest.importorskip("tensorflow")
        from facenet_convert.third_party.facenet.testing.reference import UpstreamDetector

        folder.mkdir(parents=True, exist_ok=True)
        with UpstreamDetector() as upstream:
            if not upstream.uses_real_cv2:
                pytest.skip("upstream detect_face was loaded with the cv2 stub")
            for name, path in missing:
                boxes, points = upstream.detect(cases[name])
                points = np.asarray(points).reshape(10, -1)
                tmp = path.with_suffix(f".{os.getpid()}.part.npz")   # parallel workers
                np.savez(tmp, boxes=np.asarray(boxes).reshape(-1, 5), points=points)
                tmp.replace(path)
                found[name] = (np.asarray(boxes).reshape(-1, 5), points)
    return found
