#!/usr/bin/env python
"""Make ``converter/data/calibration_faces.png``: the real face crops int8 calibrates on.

int8 ranges calibrated on noise fit noise; faces give other activations. The crops are the
faces of scikit-image's ``astronaut`` (NASA, public domain) and ``camera`` (scikit-image's
sample, free of known restrictions), detected by the shipped MTCNN and cropped as upstream
align_dataset_mtcnn does (160 px, margin 32), each from eight versions of the photo: as it is,
mirrored, rotated by -12 and +12 degrees, scaled by 0.7 and 1.4, darker and brighter (gamma 1.5
and 0.6). The 16 crops are stored as one 4x4 PNG mosaic (RGB, lossless); the last row (4
crops) is held out of calibration and used for the engine's self-check.

    .venv/bin/python scripts/make_calibration_faces.py [--out converter/data/calibration_faces.png]

A test rebuilds the mosaic and compares it with the stored file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "converter" / "data" / "calibration_faces.png"


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _scale(image: np.ndarray, factor: float) -> np.ndarray:
    height, width = image.shape[:2]
    size = (round(width * factor), round(height * factor))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else
                      cv2.INTER_LINEAR)


def _gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    table = np.round(255 * (np.arange(256) / 255) ** gamma).astype(np.uint8)
    return table[image]


def versions(photo: np.ndarray) -> list[np.ndarray]:
    return [photo, np.ascontiguousarray(photo[:, ::-1]), _rotate(photo, -12), _rotate(photo, 12),
            _scale(photo, 0.7), _scale(photo, 1.4), _gamma(photo, 1.5), _gamma(photo, 0.6)]


def photos() -> list[np.ndarray]:
    from skimage import data

    camera = data.camera()
    return [data.astronaut(), np.repeat(camera[:, :, None], 3, axis=2)]


def calibration_mosaic() -> np.ndarray:
    """The 640x640 RGB mosaic: row-major 4x4 crops, astronaut's eight then camera's eight,
    reordered so that the held-out last row has two versions of each photo."""
    from facenet_convert.models import MTCNN

    detector = MTCNN(image_size=160, margin=32)
    crops = []
    for photo in photos():
        for version in versions(photo):
            found = detector.detect_faces(version)[0]
            if len(found.boxes) == 0:
                raise SystemExit("no face found in a calibration photo version")
            best = int(np.argmax(found.probs))
            crops.append(detector.extract(version, found.boxes[best:best + 1])[0]
                         .permute(1, 2, 0).numpy())
    # held out (last row): a mirrored and a darker version of each photo
    held_out = [1, 6, 9, 14]
    order = [i for i in range(16) if i not in held_out] + held_out
    rows = [np.concatenate([crops[i] for i in order[r * 4:(r + 1) * 4]], axis=1)
            for r in range(4)]
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    mosaic = calibration_mosaic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mosaic).save(args.out, format="PNG", optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
