"""Compiled loops (numba, ``nogil``) for MTCNN detection's three per-element hot spots.

Each one replaced numpy/torch code that walked the same data many times over, and each gives
the same bits as the code it replaced (tests compare them):

* :func:`table_crops`: candidate crops as 16 weighted prefix sums per output pixel, scaled
  for the nets in the same pass. numpy needed 16 gathers and 32 array passes per chunk of
  boxes; the loop reads each prefix sum once (1080p photo, 410 large RNet boxes: 41 ms ->
  7 ms); it also replaced two batched matrix products per small box and the scaling after.
* :func:`prelu_max_pool`: PReLU then ceil-mode max pooling of a channels-last map in one
  pass. torch's PReLU on PNet's 10-channel map was slower than the convolution before it
  (largest 1080p level: PReLU + pooling 22 ms -> 5 ms). Equal values; a zero may come out
  as -0.0 where torch gives 0.0 or the reverse, which no later sum can see.
* :func:`greedy_nms`: upstream's greedy NMS visiting boxes in order, which touches only the
  pairs it needs instead of building the whole pairwise matrix.

The functions release the GIL, so worker threads run them side by side. They compile on
first use and are cached next to this file (``cache=True``; numba falls back to a per-user
cache directory where that is read-only).
"""

from __future__ import annotations

import numba
import numpy as np

_JIT = {"nogil": True, "cache": True, "error_model": "numpy"}   # x / 0 is inf or nan, as numpy


@numba.njit(**_JIT)
def table_crops(flat: np.ndarray, ends_y: np.ndarray, w_y: np.ndarray, ends_x: np.ndarray,
                w_x: np.ndarray, offset: float, scale: float,
                out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """``out[b, y, x, c] = (sum_i sum_j (w_y[b, y, i] * w_x[b, x, j]) *
    flat[ends_y[b, y, i] + ends_x[b, x, j], c] - offset) * scale``, summed over i then j in
    order in float64, then stored in ``out``'s dtype.

    ``flat`` is a summed-area table as ``(positions, channels)``; ``ends_y`` are row positions
    already multiplied by the table's row length.
    """
    boxes, size = ends_y.shape[0], ends_y.shape[1]
    channels = flat.shape[1]
    acc = np.zeros(channels)
    for b in range(boxes):
        for y in range(size):
            for x in range(size):
                if channels == 3:          # RGB: three accumulators in registers
                    a0 = 0.0
                    a1 = 0.0
                    a2 = 0.0
                    for i in range(4):
                        row = ends_y[b, y, i]
                        weight_y = w_y[b, y, i]
                        for j in range(4):
                            weight = weight_y * w_x[b, x, j]
                            k = row + ends_x[b, x, j]
                            a0 += flat[k, 0] * weight
                            a1 += flat[k, 1] * weight
                            a2 += flat[k, 2] * weight
                    out[b, y, x, 0] = (a0 - offset) * scale
                    out[b, y, x, 1] = (a1 - offset) * scale
                    out[b, y, x, 2] = (a2 - offset) * scale
                    continue
                acc[:] = 0.0
                for i in range(4):
                    row = ends_y[b, y, i]
                    weight_y = w_y[b, y, i]
                    for j in range(4):
                        weight = weight_y * w_x[b, x, j]
                        k = row + ends_x[b, x, j]
                        for c in range(channels):
                            acc[c] += flat[k, c] * weight
                for c in range(channels):
                    out[b, y, x, c] = (acc[c] - offset) * scale


def pooled_size(length: int, kernel: int, stride: int) -> int:
    """Output length of ceil-mode pooling without padding (a window must start inside)."""
    size = -(-(length - kernel) // stride) + 1
    if (size - 1) * stride >= length:
        size -= 1
    return size


@numba.njit(**_JIT)
def _prelu_max_pool(x: np.ndarray, alpha: np.ndarray, zero: float, kernel: int, stride: int,
                    out: np.ndarray) -> None:  # pragma: no cover (compiled)
    batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    for n in range(batch):
        for oy in range(out_h):
            y0 = oy * stride
            y_end = min(y0 + kernel, height)
            for ox in range(out_w):
                x0 = ox * stride
                x_end = min(x0 + kernel, width)
                best = out[n, oy, ox]
                pixel = x[n, y0, x0]
                # PReLU without a branch (vectorizes): one of the two terms is exactly zero
                for c in range(channels):
                    value = pixel[c]
                    best[c] = max(value, zero) + alpha[c] * min(value, zero)
                for iy in range(y0, y_end):
                    for ix in range(x0, x_end):
                        if iy == y0 and ix == x0:
                            continue
                        pixel = x[n, iy, ix]
                        for c in range(channels):
                            value = pixel[c]
                            value = max(value, zero) + alpha[c] * min(value, zero)
                            best[c] = max(best[c], value)


def prelu_max_pool(x: np.ndarray, alpha: np.ndarray, kernel: int, stride: int,
                   out: np.ndarray | None = None) -> np.ndarray:
    """``max_pool2d(prelu(x, alpha), kernel, stride, ceil_mode=True)`` on a channels-last
    ``(N, H, W, C)`` float array, into ``out`` (allocated when None)."""
    batch, height, width, channels = x.shape
    shape = (batch, pooled_size(height, kernel, stride), pooled_size(width, kernel, stride),
             channels)
    if out is None:
        out = np.empty(shape, dtype=x.dtype)
    elif out.shape != shape:
        raise ValueError(f"prelu_max_pool: out has shape {out.shape}, expected {shape}")
    _prelu_max_pool(x, alpha.astype(x.dtype), x.dtype.type(0), kernel, stride, out)
    return out


@numba.njit(**_JIT)
def _greedy_nms(boxes: np.ndarray, threshold: float, use_min: bool
                ) -> np.ndarray:  # pragma: no cover (compiled)
    count = boxes.shape[0]
    keep = np.zeros(count, dtype=np.bool_)
    dropped = np.zeros(count, dtype=np.bool_)
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    for i in range(count):
        if dropped[i]:
            continue
        keep[i] = True
        x1, y1, x2, y2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        for j in range(i + 1, count):
            if dropped[j]:
                continue
            width = max(0.0, min(x2, boxes[j, 2]) - max(x1, boxes[j, 0]) + 1)
            height = max(0.0, min(y2, boxes[j, 3]) - max(y1, boxes[j, 1]) + 1)
            inter = width * height
            if use_min:
                overlap = inter / min(area[i], area[j])
            else:
                overlap = inter / (area[i] + area[j] - inter)
            if not overlap <= threshold:        # upstream keeps only overlap <= threshold
                dropped[j] = True
    return keep


def greedy_nms(boxes: np.ndarray, threshold: float, use_min: bool) -> np.ndarray:
    """Upstream's greedy picks of ``(n, 4)`` boxes already in visiting order, as a boolean
    mask: a box is kept unless a kept earlier one overlaps it by more than ``threshold``
    (IoU, or intersection over the smaller area when ``use_min``), with upstream's +1 pixel
    sides, evaluated in upstream's operation order (float64)."""
    return _greedy_nms(np.ascontiguousarray(boxes[:, :4], dtype=np.float64), float(threshold),
                       bool(use_min))
