"""Compiled loops (numba, ``nogil``) for MTCNN detection's three per-element hot spots.

Each one replaced numpy/torch code that walked the same data many times over, and each gives
the same bits as the code it replaced (tests compare them):

* :func:`table_crops`: candidate crops as 16 weighted prefix sums per output pixel, scaled
  for the nets in the same pass: numpy needs 16 gathers and 32 array passes per chunk of
  boxes, the loop reads each prefix sum once.
* :func:`prelu_max_pool`: PReLU then ceil-mode max pooling of a channels-last map in one
  pass: torch's PReLU on PNet's 10-channel map costs more than the convolution before it.
  Equal values; a zero may come out as -0.0 where torch gives 0.0 or the reverse, which no
  later sum can see. (Measurements: docs/performance.md.)
* :func:`greedy_nms`: upstream's greedy NMS visiting boxes in order, which touches only the
  pairs it needs instead of building the whole pairwise matrix.

The functions release the GIL, so worker threads run them side by side. They compile on
first use and are cached next to this file (numba falls back to a per-user cache directory
where that is read-only, and to compiling in memory when neither is writable); a cached file
is used only when it equals the sha256 recorded when it was written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
from numba.core.caching import FunctionCache

from facenet_convert.converter.core.hashing import sha256_file

_JIT = {"nogil": True, "error_model": "numpy"}   # x / 0 is inf or nan, as numpy


class _VerifiedCache(FunctionCache):
    """numba's on-disk cache, whose files (pickles: whoever can change them runs code) are
    read only when they equal the sha256 recorded when numba wrote them. A file that differs,
    lacks a record, or fails to load is removed with one line on stderr and the function is
    compiled again: a damaged cache is never used and never a crash."""

    def _files(self) -> list[Path]:
        index = Path(self._cache_file._index_path)
        return sorted(index.parent.glob(f"{index.stem}.*.nbc")) + [index]

    def _record_path(self) -> Path:
        return Path(self._cache_file._index_path + ".sha256")

    def _discard(self, why: str) -> None:
        name = getattr(self._py_func, "__qualname__", "a kernel")
        print(f"facenet-convert: numba's cache of {name} {why}; compiling it again",
              file=sys.stderr)
        for path in [*self._files(), self._record_path()]:
            path.unlink(missing_ok=True)

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        files = [path for path in self._files() if path.exists()]
        if not files:
            return None
        try:
            recorded = json.loads(self._record_path().read_text(encoding="utf-8"))
            intact = all(recorded.get(path.name) == sha256_file(path) for path in files)
        except (OSError, ValueError, AttributeError):
            intact = False
        if not intact:
            self._discard("does not match the sha256 recorded when it was written")
            return None
        try:
            return super().load_overload(sig, target_context)
        except Exception as error:  # noqa: BLE001 - unpickling damage raises anything
            self._discard(f"cannot be read ({type(error).__name__})")
            return None

    def save_overload(self, sig: Any, data: Any) -> None:
        super().save_overload(sig, data)
        try:
            record = {path.name: sha256_file(path) for path in self._files() if path.exists()}
            self._record_path().write_text(json.dumps(record), encoding="utf-8")
        except OSError:
            pass                         # no record: the next process compiles again


def _compiled(function: Callable[..., Any]) -> Any:
    """``numba.njit`` with the compiled code cached on disk (verified, see
    :class:`_VerifiedCache`) where numba finds a writable place (next to this file, else a
    per-user cache directory); without one (a read-only install and no user cache) it
    compiles in memory on first use instead of failing."""
    dispatcher = numba.njit(**_JIT)(function)
    try:
        dispatcher._cache = _VerifiedCache(function)
    except RuntimeError:            # numba: "cannot cache function ...: no locator available"
        pass
    return dispatcher


@_compiled
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


@_compiled
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


@_compiled
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


_EDGE = 1e-3      # OpenCV's threshold for a partial edge pixel (computeResizeAreaTab)


@_compiled
def _axis_taps(length: int, size: int, kind: int, ends: np.ndarray,
               weights: np.ndarray) -> None:  # pragma: no cover (compiled)
    """OpenCV's INTER_AREA weights along one axis of ``length`` source pixels resized to
    ``size``, as four signed weights on four prefix-sum positions per output pixel:
    ``-left`` at s1 - 1, ``left - inner`` at s1, ``inner - right`` at s2, ``right`` at
    s2 + 1 for a partial first pixel ``left``, whole pixels ``inner`` and a partial last
    pixel ``right``. kind 0: area-linear (an axis grows), 1: area, 2: resizeAreaFast."""
    src = float(length)
    for d in range(size):
        if kind == 1:
            scale = 1.0 / (size / src)
            fs1 = d * scale
            fs2 = fs1 + scale
            cell = min(scale, src - fs1)
            s2 = min(np.floor(fs2), src - 1)
            s1 = min(np.ceil(fs1), s2)
            left = float(np.float32((s1 - fs1) / cell)) if s1 - fs1 > _EDGE else 0.0
            inner = float(np.float32(1.0 / cell))
            right = 0.0
            if fs2 - s2 > _EDGE:
                right = float(np.float32(min(min(fs2 - s2, 1.0), cell) / cell))
        elif kind == 2:
            k = float(length // size)
            s1 = d * k
            s2 = s1 + k
            left, inner, right = 0.0, 1.0, 0.0
        else:
            inv_scale = size / src
            scale = 1.0 / inv_scale
            s = np.floor(d * scale)
            f = np.float32((d + 1) - (s + 1) * inv_scale)
            f = np.float32(0) if f <= 0 else np.float32(f - np.floor(f))
            if s < 0:
                s, f = 0.0, np.float32(0)
            if s >= src - 1:
                s, f = src - 1, np.float32(0)
            s1 = s + 1                 # taps at s (1 - f) and s + 1 (f): an empty run between
            s2 = s + 1
            left, inner, right = float(np.float32(1) - f), 0.0, float(f)
        ends[d, 0], ends[d, 1], ends[d, 2], ends[d, 3] = s1 - 1, s1, s2, s2 + 1
        weights[d, 0] = -left
        weights[d, 1] = left - inner
        weights[d, 2] = inner - right
        weights[d, 3] = right


@_compiled
def crop_taps(boxes: np.ndarray, size: int, rows: int, cols: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Summed-area table positions and weights of every box's INTER_AREA crop, for
    :func:`table_crops`: boxes are integer ``[x1, y1, x2, y2]`` (1-based, inclusive) in an
    image of ``rows`` x ``cols``; positions are clipped to the image (upstream's zero
    padding outside) and row positions multiplied by the table's row length ``cols + 1``.
    OpenCV's case per box: area-linear when a side grows, resizeAreaFast (weights times
    ``float32(1 / block area)``) when both sides are whole multiples, else area."""
    count = boxes.shape[0]
    ends_y = np.empty((count, size, 4), dtype=np.int64)
    ends_x = np.empty((count, size, 4), dtype=np.int64)
    w_y = np.empty((count, size, 4))
    w_x = np.empty((count, size, 4))
    for b in range(count):
        height = boxes[b, 3] - boxes[b, 1] + 1
        width = boxes[b, 2] - boxes[b, 0] + 1
        kind = 1 if height >= size and width >= size else 0
        factor = 1.0
        if kind == 1 and height % size == 0 and width % size == 0:
            kind = 2
            factor = float(np.float32(1.0 / ((height // size) * (width // size))))
        _axis_taps(height, size, kind, ends_y[b], w_y[b])
        _axis_taps(width, size, kind, ends_x[b], w_x[b])
        for d in range(size):
            for i in range(4):
                row = min(max(ends_y[b, d, i] + boxes[b, 1] - 1, 0), rows)
                ends_y[b, d, i] = row * (cols + 1)
                ends_x[b, d, i] = min(max(ends_x[b, d, i] + boxes[b, 0] - 1, 0), cols)
                w_y[b, d, i] *= factor
    return ends_y, w_y, ends_x, w_x
