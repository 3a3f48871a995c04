"""Real face crops for int8: what its ranges are calibrated on and what it is checked against.

Ranges calibrated on noise fit noise; a face network's activations on faces are what int8 must
hold. The default set is ``converter/data/calibration_faces.png`` (made by
``scripts/make_calibration_faces.py`` from two public-domain photographs: 16 aligned 160 px crops,
the last :data:`HELD_OUT` of which are never calibrated on and serve as the int8 self-check).
``--calibration DIR`` calibrates on the user's own aligned crops instead (every image file in the
folder, recursively, at most :data:`MAX_CALIBRATION_IMAGES`); the self-check stays on the
held-out default crops, so that it never grades the set it was fitted to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facenet_convert.converter.core.errors import EngineError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_FACES = Path(__file__).with_name("data") / "calibration_faces.png"
TILE = 160
HELD_OUT = 4
MIN_CALIBRATION_IMAGES = 4
MAX_CALIBRATION_IMAGES = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def default_faces() -> np.ndarray:
    """The 16 shipped uint8 ``(16, 160, 160, 3)`` face crops, row-major from the mosaic."""
    import numpy as np

    from facenet_convert.models.preprocessing import load_image

    mosaic = load_image(DEFAULT_FACES)
    rows, cols = mosaic.shape[0] // TILE, mosaic.shape[1] // TILE
    if mosaic.shape[:2] != (rows * TILE, cols * TILE) or rows * cols <= HELD_OUT:
        raise EngineError(f"the calibration mosaic is {mosaic.shape[1]}x{mosaic.shape[0]}; "
                          f"expected a grid of {TILE} px tiles; reinstall the package",
                          path=DEFAULT_FACES)
    return np.stack([mosaic[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
                     for r in range(rows) for c in range(cols)])


def folder_faces(folder: str | os.PathLike[str]) -> np.ndarray:
    """The user's aligned face crops (every image file under ``folder``, sorted), resized to
    160 px as ``embed`` would; fewer than :data:`MIN_CALIBRATION_IMAGES` readable images or
    more than :data:`MAX_CALIBRATION_IMAGES` are refused in one line."""
    import numpy as np

    from facenet_convert.models.preprocessing import load_image, resize_uint8

    root = Path(folder)
    if not root.is_dir():
        raise EngineError("--calibration expects a folder of aligned face crops", path=root)
    files = sorted(path for path in root.rglob("*")
                   if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if len(files) > MAX_CALIBRATION_IMAGES:
        raise EngineError(f"{len(files)} images to calibrate on; expected at most "
                          f"{MAX_CALIBRATION_IMAGES} (ranges settle long before): pass a "
                          "smaller folder", path=root)
    if len(files) < MIN_CALIBRATION_IMAGES:
        raise EngineError(f"{len(files)} image files to calibrate on; expected at least "
                          f"{MIN_CALIBRATION_IMAGES} aligned face crops", path=root)
    return np.stack([resize_uint8(load_image(path), TILE) for path in files])


def standardized(crops: np.ndarray, preprocessing: str,
                 size: tuple[int, int] = (TILE, TILE)) -> np.ndarray:
    """float32 NCHW inputs of uint8 NHWC crops, standardized as the model expects."""
    import numpy as np
    import torch

    from facenet_convert.models.preprocessing import resize_uint8, standardize_batch

    if size[0] != size[1]:
        raise EngineError(f"int8 calibration needs square inputs, not {size[0]}x{size[1]}")
    if crops.shape[1:3] != size:
        crops = np.stack([resize_uint8(crop, size[0]) for crop in crops])
    batch = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))
    return standardize_batch(batch, preprocessing).numpy().astype(np.float32)


def calibration_sets(preprocessing: str, folder: str | os.PathLike[str] | None = None,
                     size: tuple[int, int] = (TILE, TILE)) -> tuple[Any, Any]:
    """(calibration inputs, self-check inputs), standardized: the default faces less the held
    out ones (or the folder's faces) and the held-out default faces."""
    faces = default_faces()
    check = standardized(faces[-HELD_OUT:], preprocessing, size)
    chosen = faces[:-HELD_OUT] if folder is None else folder_faces(folder)
    return standardized(chosen, preprocessing, size), check
