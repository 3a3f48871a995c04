"""Similarity alignment from five facial landmarks: rotate, scale and shift a face so that its
eyes, nose and mouth corners land on a template, then warp it into a square crop.

The transform is the least-squares similarity of Umeyama (PAMI 1991), the one
scikit-image's ``SimilarityTransform.estimate`` and insightface's ``estimate_norm`` compute
(tests compare all three to 1e-9); the warp is ``cv2.warpAffine`` with bilinear
interpolation and black borders, as insightface's ``norm_crop``. Coordinates are pixel
indices (the centre of the top-left pixel is ``(0, 0)``), as MTCNN's landmarks and OpenCV's
warp use them.

Templates (``(5, 2)`` points: left eye, right eye, nose, left and right mouth corners):

* ``facenet``: where upstream's box crop (``align_dataset_mtcnn.py``, 160 px, margin 32)
  puts the landmarks of an upright face, on average. Made by
  ``scripts/derive_alignment_template.py`` from real photos (docs/alignment.md says which
  and how); it scales with the crop size about the pixel centres,
  ``(p + 0.5) * size / 160 - 0.5``, as a resize of the 160 px crop would move them. The margin
  does not enter: upstream's margin is in photo pixels, so how much of its crop a face fills
  depends on the face's size, while a template fixes it.
* ``arcface``: insightface 0.7.3's ``arcface_dst`` (112 px), scaled by insightface's own
  rule: a multiple of 112 scales it by ``size / 112``; any other size by ``size / 128`` and
  ``8 * size / 128`` px to the right (insightface's 128 px variant; insightface itself accepts
  only multiples of 112 or 128, and this rule extends it to the others, 160 included).

Landmarks that cannot give a face crop are refused with one :class:`LandmarkError` line: a
shape other than ``(5, 2)``, NaN or infinite values, coincident or collinear points, or a
transform that would magnify the photo more than :data:`MAX_SCALE` times.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import LandmarkError

ALIGNMENTS = ("box", "similarity")
TEMPLATES = ("facenet", "arcface")
POINTS = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")

FACENET_SIZE = 160
#: Mean landmarks of upright faces in upstream's 160 px / margin 32 box crops, written by
#: ``scripts/derive_alignment_template.py`` (tests/test_alignment.py recomputes them).
FACENET_TEMPLATE = (
    (55.6201, 67.6708),
    (110.9447, 67.3775),
    (82.8182, 97.8687),
    (54.4580, 110.3647),
    (110.7641, 110.3381),
)

ARCFACE_SIZE = 112
#: insightface 0.7.3 ``insightface/utils/face_align.py`` ``arcface_dst`` (stored there as
#: float32; here as the decimals it is written with).
ARCFACE_TEMPLATE = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

MAX_SCALE = 64.0
"""Largest magnification allowed (crop pixels per photo pixel): past it a face's landmarks
span a pixel or two of the photo and the crop would be one smeared blob."""

COLLINEAR = 0.02
"""Smallest ratio of the landmarks' two principal spreads (minor / major): below it the five
points lie on a line and fix no face orientation."""


class AlignmentWarning(UserWarning):
    """A face left out of a batch because its landmarks cannot be aligned (the message is the
    :class:`LandmarkError` line)."""


def template(name: str = "facenet", image_size: int = FACENET_SIZE) -> np.ndarray:
    """The ``(5, 2)`` float64 template ``name`` for a crop of ``image_size`` pixels."""
    if name not in TEMPLATES:
        raise LandmarkError(f"unknown alignment template {name!r}; expected one of "
                            f"{', '.join(TEMPLATES)}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or image_size <= 0:
        raise LandmarkError(f"image_size must be a positive integer, found {image_size!r}")
    size = int(image_size)
    if name == "facenet":
        points = np.array(FACENET_TEMPLATE, dtype=np.float64)
        return (points + 0.5) * (size / FACENET_SIZE) - 0.5
    points = np.array(ARCFACE_TEMPLATE, dtype=np.float64)
    if size % ARCFACE_SIZE == 0:                  # insightface estimate_norm's two cases
        return points * (size / ARCFACE_SIZE)
    ratio = size / 128.0
    points = points * ratio
    points[:, 0] += 8.0 * ratio
    return points


def _points(values: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise LandmarkError(f"{what} must be numbers, found {type(values).__name__}") from None
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 2:
        raise LandmarkError(f"{what} must be (N, 2) x, y points, found shape "
                            f"{tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise LandmarkError(f"{what} hold NaN or infinite values: {_short(array)}")
    return array


def _short(array: np.ndarray) -> str:
    return "[" + ", ".join(f"({x:.4g}, {y:.4g})" for x, y in array.tolist()) + "]"


def similarity_transform(src: Any, dst: Any, *, max_scale: float = MAX_SCALE) -> np.ndarray:
    """The ``(2, 3)`` float64 similarity ``M`` that maps ``src`` onto ``dst`` in the least
    squares sense (Umeyama: a rotation, one scale, a shift; never a reflection), so that
    ``dst ≈ src @ M[:, :2].T + M[:, 2]``.

    Raises :class:`LandmarkError` for NaN/Inf, coincident or collinear ``src`` points, and a
    scale over ``max_scale``."""
    source = _points(src, "landmarks")
    target = _points(dst, "template points")
    if source.shape != target.shape:
        raise LandmarkError(f"{source.shape[0]} landmarks for a template of "
                            f"{target.shape[0]} points")
    count = source.shape[0]
    src_mean, dst_mean = source.mean(axis=0), target.mean(axis=0)
    src_c, dst_c = source - src_mean, target - dst_mean
    spread = np.linalg.svd(src_c, compute_uv=False)    # principal spreads, largest first
    if not spread[0] > 0:
        raise LandmarkError(f"landmarks coincide (all at {_short(source[:1])[1:-1]}); "
                            "they fix no face")
    if spread[1] < COLLINEAR * spread[0]:
        raise LandmarkError(f"landmarks are collinear ({_short(source)}); they fix no face "
                            "orientation")
    covariance = dst_c.T @ src_c / count                           # Umeyama's eq. (38)
    sign = np.ones(2)
    if np.linalg.det(covariance) < 0:                              # eq. (39): no reflection
        sign[1] = -1.0
    u, singular, vt = np.linalg.svd(covariance)
    rotation = u @ np.diag(sign) @ vt                              # eq. (40)
    scale = float(singular @ sign) / float(src_c.var(axis=0).sum())   # eq. (42)
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * (rotation @ src_mean)         # eq. (41)
    if not np.isfinite(matrix).all() or not 0 < scale <= max_scale:
        raise LandmarkError(f"aligning these landmarks ({_short(source)}) would scale the "
                            f"photo {scale:.4g} times, over the {max_scale:g} allowed: the "
                            "face is too small or its landmarks are wrong")
    return matrix


def estimate_alignment(landmarks: Any, image_size: int = FACENET_SIZE,
                       template_name: str = "facenet", *,
                       max_scale: float = MAX_SCALE) -> np.ndarray:
    """The ``(2, 3)`` photo -> crop similarity for one face's ``(5, 2)`` landmarks."""
    points = _points(landmarks, "landmarks")
    if points.shape != (len(POINTS), 2):
        raise LandmarkError(f"expected 5 landmarks ({', '.join(POINTS)}) as (5, 2) x, y "
                            f"points, found shape {tuple(points.shape)}")
    return similarity_transform(points, template(template_name, image_size),
                                max_scale=max_scale)


def warp_face(image: np.ndarray, matrix: np.ndarray, image_size: int) -> np.ndarray:
    """``image`` (uint8 ``(H, W, C)``) warped by ``matrix`` into an ``image_size`` square:
    bilinear, black where the crop leaves the photo (insightface's ``norm_crop``)."""
    import cv2

    warped = cv2.warpAffine(np.ascontiguousarray(image), np.asarray(matrix, np.float64),
                            (int(image_size), int(image_size)), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return warped if warped.ndim == image.ndim else warped[:, :, None]


def align_face(image: np.ndarray, landmarks: Any, image_size: int = FACENET_SIZE,
               template_name: str = "facenet", *, max_scale: float = MAX_SCALE) -> np.ndarray:
    """One face of ``image`` (uint8 ``(H, W, C)``) aligned to a template: uint8
    ``(image_size, image_size, C)``."""
    matrix = estimate_alignment(landmarks, image_size, template_name, max_scale=max_scale)
    return warp_face(image, matrix, image_size)


__all__ = ["ALIGNMENTS", "ARCFACE_TEMPLATE", "FACENET_TEMPLATE", "MAX_SCALE", "TEMPLATES",
           "AlignmentWarning", "align_face", "estimate_alignment", "similarity_transform",
           "template", "warp_face"]
