"""OpenCV's ``cv2.resize(..., interpolation=INTER_AREA)`` arithmetic for MTCNN's candidate crops.

Upstream ``detect_face`` cuts each RNet/ONet candidate out of the image into a zero-padded
float64 array and resizes it to 24x24 / 48x48 with ``cv2.resize(..., INTER_AREA)``. Doing that
per box is a Python loop; here all boxes are resampled together.

Per axis, every output pixel of INTER_AREA is a weighted sum over source pixels with at most
three distinct weights: a partial first pixel, a run of whole pixels, a partial last pixel
(OpenCV's ``computeResizeAreaTab``, weights rounded to float32 as OpenCV stores them). When
either axis grows, OpenCV uses two linear taps per axis instead (its "area-linear" coefficients,
also float32). When both scale factors are integers it takes ``resizeAreaFast``: plain block
sums times ``float32(1 / area)``. Each case is written as four signed weights on four
prefix-sum positions per axis, so an output pixel is a 4x4 bilinear form over the image's
summed-area table (exact integers), whatever the box size (:func:`models.kernels.table_crops`
computes all of a part's boxes in one compiled loop). Results equal OpenCV's up to float64
rounding of the large prefix sums (~1e-9 of a pixel level on small photos, ~1e-7 at 1080p,
far below the float32 the nets take); pixels outside the image are the zeros of upstream's
padding.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from facenet_convert.models.kernels import table_crops

_EPS = 1e-3  # OpenCV's threshold for a partial edge pixel


def _area_taps(src: np.ndarray, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Endpoints ``(n, dst, 4)`` and weights ``(n, dst, 4)`` of OpenCV's area shrink weights."""
    src = src.astype(np.float64)[:, None]
    scale = 1.0 / (dst / src)
    fs1 = np.arange(dst, dtype=np.float64)[None, :] * scale
    fs2 = fs1 + scale
    cell = np.minimum(scale, src - fs1)
    s2 = np.minimum(np.floor(fs2), src - 1)
    s1 = np.minimum(np.ceil(fs1), s2)
    left = np.where(s1 - fs1 > _EPS, ((s1 - fs1) / cell).astype(np.float32), 0.0)
    inner = (1.0 / cell).astype(np.float32).astype(np.float64)
    right_w = np.minimum(np.minimum(fs2 - s2, 1.0), cell) / cell
    right = np.where(fs2 - s2 > _EPS, right_w.astype(np.float32), 0.0)
    return _endpoints(s1, s2, left, inner, right)


def _linear_taps(src: np.ndarray, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA coefficients when an axis grows: two float32 taps per output."""
    srcf = src.astype(np.float64)[:, None]
    inv_scale = dst / srcf
    scale = 1.0 / inv_scale
    d = np.arange(dst, dtype=np.float64)[None, :]
    s = np.floor(d * scale)
    f = ((d + 1) - (s + 1) * inv_scale).astype(np.float32)
    f = np.where(f <= 0, np.float32(0), f - np.floor(f)).astype(np.float32)
    low = s < 0
    s = np.where(low, 0, s)
    f = np.where(low, np.float32(0), f)
    high = s >= srcf - 1
    s = np.where(high, srcf - 1, s)
    f = np.where(high, np.float32(0), f)
    one_minus = (np.float32(1) - f).astype(np.float64)
    # taps at s (1 - f) and s + 1 (f): an empty run between them
    return _endpoints(s + 1, s + 1, one_minus, np.zeros_like(one_minus), f.astype(np.float64))


def _endpoints(s1: np.ndarray, s2: np.ndarray, left: np.ndarray, inner: np.ndarray,
               right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``left`` on pixel s1-1, ``inner`` on [s1, s2), ``right`` on pixel s2, as prefix sums.

    ``sum = -left*P[s1-1] + (left-inner)*P[s1] + (inner-right)*P[s2] + right*P[s2+1]``.
    """
    ends = np.stack([s1 - 1, s1, s2, s2 + 1], axis=-1)
    weights = np.stack([-left, left - inner, inner - right, right], axis=-1)
    return ends.astype(np.int64), weights.astype(np.float64)


def _fast_taps(src: np.ndarray, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole blocks of ``src // dst`` pixels with weight 1 (the area is applied afterwards)."""
    k = (src // dst).astype(np.float64)[:, None]
    start = np.arange(dst, dtype=np.float64)[None, :] * k
    zero = np.zeros_like(start)
    return _endpoints(start, start + k, zero, np.ones_like(start), zero)


KIND_TAPS = (_linear_taps, _area_taps, _fast_taps)
"""Tap builders by :func:`box_kinds` case."""


def crop_taps(heights: np.ndarray, widths: np.ndarray, size: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per box: row/column prefix-sum endpoints and weights, and a final per-box factor."""
    heights = heights.astype(np.int64)
    widths = widths.astype(np.int64)
    n = heights.shape[0]
    ends_y = np.zeros((n, size, 4), np.int64)
    ends_x = np.zeros((n, size, 4), np.int64)
    w_y = np.zeros((n, size, 4), np.float64)
    w_x = np.zeros((n, size, 4), np.float64)
    kinds, factor = box_kinds(heights, widths, size)
    for kind, taps in enumerate(KIND_TAPS):
        mask = kinds == kind
        if mask.any():
            ends_y[mask], w_y[mask] = taps(heights[mask], size)
            ends_x[mask], w_x[mask] = taps(widths[mask], size)
    return ends_y, w_y, ends_x, w_x, factor


def box_kinds(heights: np.ndarray, widths: np.ndarray, size: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA case per box (0 area-linear: an axis grows; 1 area; 2
    resizeAreaFast: both sides whole multiples) and its final factor (resizeAreaFast's
    ``float32(1 / block area)``, else 1)."""
    shrink = (heights >= size) & (widths >= size)
    fast = shrink & (heights % size == 0) & (widths % size == 0)
    blocks = np.where(fast, (heights // size) * (widths // size), 1)
    factor = np.where(fast, (1.0 / blocks).astype(np.float32), 1.0)
    return np.where(fast, 2, np.where(shrink, 1, 0)), factor


def summed_area_table(image: np.ndarray) -> np.ndarray:
    """``(H + 1, W + 1, C)`` exact integer prefix sums of an ``(H, W, C)`` uint8 image.

    int32 while every sum fits (images up to about 8.4 million pixels), else int64.
    """
    height, width, channels = image.shape
    dtype = np.int32 if height * width * 255 < 2**31 else np.int64
    table = np.zeros((height + 1, width + 1, channels), dtype=dtype)
    np.cumsum(image, axis=0, dtype=dtype, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table


class CropPlan:
    """Upstream's padded INTER_AREA crops of many boxes of one image, planned once (OpenCV's
    weights and the summed-area table positions of every box) and computed in independent
    parts.

    ``boxes`` are integer ``[x1, y1, x2, y2]`` in upstream's 1-based inclusive convention
    (``pad``): the crop spans image rows ``y1 - 1 .. y2 - 1``, zeros outside the image. Planning
    is small numpy work that holds the GIL, so it runs in the calling thread; each part is one
    compiled loop that releases it (worker threads compute parts side by side).
    """

    def __init__(self, source: CropSource, boxes: np.ndarray, size: int) -> None:
        boxes = np.asarray(boxes).astype(np.int64).reshape(-1, 4)
        self.count, self.size = boxes.shape[0], size
        table = source.table
        rows, cols = table.shape[0] - 1, table.shape[1] - 1
        ends_y, w_y, ends_x, w_x, factor = crop_taps(
            boxes[:, 3] - boxes[:, 1] + 1, boxes[:, 2] - boxes[:, 0] + 1, size)
        self.w_y = w_y * factor[:, None, None]     # resizeAreaFast's 1 / block area
        self.w_x = w_x
        self.ends_y = np.clip(ends_y + (boxes[:, 1, None, None] - 1), 0, rows) * (cols + 1)
        self.ends_x = np.clip(ends_x + (boxes[:, 0, None, None] - 1), 0, cols)
        self.flat = np.ascontiguousarray(table).reshape(-1, table.shape[2])

    def parts(self, count: int) -> list[slice]:
        """The boxes cut into ``count`` runs of near-equal length (none for no boxes)."""
        if self.count == 0:
            return []
        count = max(1, min(count, self.count))
        edges = np.linspace(0, self.count, count + 1).round().astype(int).tolist()
        return [slice(low, high) for low, high in itertools.pairwise(edges)]

    def compute(self, part: slice, offset: float = 0.0, scale: float = 1.0,
                dtype: type[np.floating] = np.float64) -> Tensor:
        """``(k, size, size, C)`` crops of the boxes in ``part`` as ``(crop - offset) *
        scale`` (computed in float64, then rounded to ``dtype``): MTCNN's input scaling
        comes out of the same loop."""
        ends_y = self.ends_y[part]
        out = np.empty((ends_y.shape[0], self.size, self.size, self.flat.shape[1]), dtype=dtype)
        table_crops(self.flat, ends_y, self.w_y[part], self.ends_x[part], self.w_x[part],
                    float(offset), float(scale), out)
        return torch.from_numpy(out)


class CropSource:
    """One uint8 image and, built on first need, its summed-area table."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self._table: np.ndarray | None = None

    @property
    def table(self) -> np.ndarray:
        if self._table is None:
            self._table = summed_area_table(self.image)
        return self._table

    def prepare(self) -> None:
        """Build the summed-area table now, e.g. on a worker thread before crops are planned."""
        _ = self.table


def resize_boxes(source: CropSource | np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """``(n, size, size, C)`` float64: upstream's padded crop of each box, INTER_AREA-resized
    (see :class:`CropPlan`), in one thread."""
    if isinstance(source, np.ndarray):
        source = CropSource(source)
    plan = CropPlan(source, boxes, size)
    if plan.count == 0:
        return np.empty((0, size, size, source.image.shape[2]))
    return plan.compute(slice(0, plan.count)).numpy()
