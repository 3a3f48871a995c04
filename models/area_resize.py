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

from facenet_convert.models.kernels import crop_taps, table_crops


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
    (``pad``): the crop spans image rows ``y1 - 1 .. y2 - 1``, zeros outside the image.
    Planning (:func:`models.kernels.crop_taps`) and each part (:func:`models.kernels.
    table_crops`) are compiled loops that release the GIL, so worker threads compute parts
    side by side.
    """

    def __init__(self, source: CropSource, boxes: np.ndarray, size: int) -> None:
        boxes = np.ascontiguousarray(np.asarray(boxes).astype(np.int64).reshape(-1, 4))
        self.count, self.size = boxes.shape[0], size
        table = source.table
        self.ends_y, self.w_y, self.ends_x, self.w_x = crop_taps(
            boxes, size, table.shape[0] - 1, table.shape[1] - 1)
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
