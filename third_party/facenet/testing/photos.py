"""Real photographs with faces, from PyPI packages (sha256-pinned), for detection tests/benchmarks.

scikit-image's ``astronaut`` (one face), ``camera`` (grayscale, one face), ``coffee`` and
``chelsea`` (no human face); insightface 0.7.3's sdist ``t1.jpg`` (six people) and
``Tom_Hanks_54745.png`` (a tight 112x112 crop whose box leaves the image), fetched with
``pip download --no-deps`` and sha256-checked, never installed. ``variants`` adds rescaled,
flipped and rotated copies (OpenCV INTER_AREA / INTER_LINEAR resizes) for more cases;
``rotated`` turns a photo by any angle (alignment tests and benchmarks).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Callable

import numpy as np
from PIL import Image

from facenet_convert.third_party.wheels import PinnedWheel, cache_dir, fetch_wheel

INSIGHTFACE = PinnedWheel(  # an sdist: only two sample photographs are read from it
    project="insightface", version="0.7.3", filename="insightface-0.7.3.tar.gz",
    sha256="f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7", license="MIT")


def insightface_image(name: str) -> np.ndarray:
    """A sample image of the pinned insightface sdist as uint8 RGB."""
    member = f"insightface-0.7.3/insightface/data/images/{name}"
    dest = cache_dir() / "insightface-0.7.3" / name
    if not dest.is_file():
        archive = fetch_wheel(INSIGHTFACE)
        with tarfile.open(archive) as tar:
            source = tar.extractfile(member)
            if source is None:
                raise FileNotFoundError(member)
            dest.parent.mkdir(parents=True, exist_ok=True)
            # a temp name of its own: parallel test workers may extract the same photo
            handle, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
            with os.fdopen(handle, "wb") as out:
                out.write(source.read())
            os.replace(tmp, dest)
    with Image.open(dest) as image:
        return np.asarray(image.convert("RGB"))


def _gray_to_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return _gray_to_rgb(getattr(data, name)())
    return load


PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "camera": _skimage("camera"),
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "t1": lambda: insightface_image("t1.jpg"),
    "hanks": lambda: insightface_image("Tom_Hanks_54745.png"),
}
EXPECTED_FACES = {"astronaut": 1, "camera": 1, "coffee": 0, "chelsea": 0, "t1": 6, "hanks": 1}


def resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV resize (INTER_AREA to shrink, INTER_LINEAR to grow), as photos get rescaled."""
    import cv2

    grow = width > image.shape[1] or height > image.shape[0]
    return cv2.resize(image, (width, height),
                      interpolation=cv2.INTER_LINEAR if grow else cv2.INTER_AREA)


def rotated(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned ``degrees`` counter-clockwise about its centre onto a canvas that holds
    all of it (bilinear, black corners), and the ``(2, 3)`` matrix that maps its pixel
    coordinates into the new canvas (for landmarks)."""
    import cv2

    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w = int(np.ceil(width * cos + height * sin))
    new_h = int(np.ceil(width * sin + height * cos))
    matrix[0, 2] += (new_w - width) / 2
    matrix[1, 2] += (new_h - height) / 2
    turned = cv2.warpAffine(np.ascontiguousarray(image), matrix, (new_w, new_h),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return turned, matrix


def variants(image: np.ndarray) -> dict[str, np.ndarray]:
    """Rescaled, flipped and rotated copies of one photo (18 cases, the original first)."""
    height, width = image.shape[:2]
    out = {"orig": image, "flip": image[:, ::-1], "vflip": image[::-1],
           "rot90": np.rot90(image), "rot180": np.rot90(image, 2), "rot270": np.rot90(image, 3)}
    for factor in (0.5, 0.62, 0.75, 0.9, 1.1, 1.33, 1.6):
        size = (max(round(width * factor), 12), max(round(height * factor), 12))
        out[f"scale{factor}"] = resized(image, *size)
    out["scale0.75_flip"] = out["scale0.75"][:, ::-1]
    out["scale1.33_flip"] = out["scale1.33"][:, ::-1]
    out["aspect_wide"] = resized(image, int(width * 1.3), height)
    out["aspect_tall"] = resized(image, width, int(height * 1.3))
    out["crop_left"] = image[:, : max(width * 2 // 3, 12)]
    return {name: np.ascontiguousarray(array) for name, array in out.items()}
