"""MTCNN's box maths and NMS, in upstream ``detect_face``'s operation order (float64, its
widths and truncations), so that every box equals upstream's."""

from __future__ import annotations

import itertools

import numpy as np

from facenet_convert.models.kernels import greedy_nms


def upstream_order(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Visiting order of upstream's ``nms`` in every group: ``np.argsort(s)`` reversed.

    ``groups`` must be non-decreasing (each group contiguous). The argsort runs on each group's
    own float64 score array, as upstream calls it, so ties break exactly as there.
    """
    bounds = np.flatnonzero(np.diff(groups)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    ends = np.concatenate([bounds, [groups.shape[0]]]).astype(np.int64)
    parts = [start + np.argsort(np.ascontiguousarray(scores[start:end], dtype=np.float64))[::-1]
             for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float,
                mode: str = "union") -> np.ndarray:
    """Upstream's greedy NMS run independently within each group.

    ``groups`` is non-decreasing. Within a group boxes are visited in :func:`upstream_order`
    and a box is dropped when a kept earlier one overlaps it by more than ``threshold``
    (:func:`models.kernels.greedy_nms`). Returns indices into ``boxes``: by group, then in
    picking order (as upstream's ``pick``).
    """
    if mode not in ("union", "min"):
        raise ValueError(f"NMS mode must be 'union' or 'min', not {mode!r}")
    count = int(boxes.shape[0])
    if count == 0:
        return np.empty(0, dtype=np.int64)
    if groups[0] == groups[-1]:             # one group (a level's candidates, one photo)
        order = np.argsort(np.ascontiguousarray(scores, dtype=np.float64))[::-1]
        return order[greedy_nms(boxes[order], threshold, mode == "min")]
    order = upstream_order(scores, groups)
    sorted_groups = groups[order]
    bounds = np.flatnonzero(np.diff(sorted_groups)) + 1
    kept = []
    for first, last in itertools.pairwise([0, *bounds.tolist(), count]):
        chosen = order[first:last]
        kept.append(chosen[greedy_nms(boxes[chosen], threshold, mode == "min")])
    return np.concatenate(kept)


# --------------------------------------------------------------------------- box helpers

def regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool) -> np.ndarray:
    """Upstream's calibration; PNet's stage uses widths ``x2 - x1``, ``bbreg`` ``x2 - x1 + 1``."""
    extra = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    return np.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                     boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], axis=1)


def rerec(boxes: np.ndarray) -> np.ndarray:
    """Square boxes around their centers with side ``max(w, h)`` (upstream ``rerec``)."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def valid_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes with a positive integer size (upstream would crash on the others)."""
    return ((boxes[:, 2] - boxes[:, 0] + 1) >= 1) & ((boxes[:, 3] - boxes[:, 1] + 1) >= 1)
